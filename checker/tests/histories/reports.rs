//! Explanations, the per-key decomposition, and budgets.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftkv_checker::{check, check_detailed, Budget, KeyResult, Operation, Verdict};

use crate::support::{b, cas, on_key, read, unknown_write, verdict, write, K};

#[test]
fn the_explanation_names_the_operation_that_cannot_be_linearized() {
    let history = [
        write(1, "a", 0, 10),
        write(1, "b", 20, 30),
        cas(2, Some("b"), "c", true, 40, 50),
        read(3, Some("b"), 60, 70),
    ];
    match verdict(&history) {
        Verdict::NotLinearizable {
            key,
            explanation,
            involved,
        } => {
            assert_eq!(key, b(K));
            assert_eq!(involved.first(), Some(&3), "{explanation}");
            assert!(explanation.contains("leaves the key \"c\""), "{explanation}");
            assert!(
                explanation.contains("#3 client 3 key \"k\": read => \"b\""),
                "{explanation}"
            );
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_violation_on_one_key_is_found_among_many_clean_keys() {
    let mut history = Vec::new();
    for k in 0..200u64 {
        let key = format!("key-{k:03}");
        let t = k * 3;
        history.push(on_key(write(k, "a", t, t + 50), &key));
        history.push(on_key(read(1000 + k, Some("a"), t + 60, t + 70), &key));
        history.push(on_key(write(k, "b", t + 80, t + 200), &key));
        history.push(on_key(read(1000 + k, Some("b"), t + 100, t + 110), &key));
        // The violation: key-137 reads a again after having read b.
        let last = if k == 137 { "a" } else { "b" };
        history.push(on_key(read(1000 + k, Some(last), t + 120, t + 130), &key));
    }
    let report = check_detailed(&history, &BTreeMap::new(), &Budget::default());
    match &report.verdict {
        Verdict::NotLinearizable { key, .. } => assert_eq!(key, &b("key-137")),
        other => panic!("{other}"),
    }
    assert_eq!(report.keys.len(), 200);
    let bad: Vec<_> = report
        .keys
        .iter()
        .filter(|r| r.result != KeyResult::Linearizable)
        .collect();
    assert_eq!(bad.len(), 1);
    assert_eq!(bad[0].key, b("key-137"));
    // The same on several threads.
    let parallel = Budget {
        threads: 2,
        ..Budget::default()
    };
    assert_eq!(check(&history, &parallel), report.verdict);
}

/// A history whose refutation takes exponential time: `n` unknown writes, each of them
/// observed by a long read concurrent with all the others (so they may have happened in
/// any order), then reads seeing v0, v1, v0 again, which no order explains.
fn exponential_history(key: &str, n: u64) -> Vec<Operation> {
    let mut history = Vec::new();
    for i in 0..n {
        let v = format!("v{i}");
        history.push(on_key(unknown_write(i, &v, i), key));
        history.push(on_key(read(100 + i, Some(&v), 100, 100_000), key));
    }
    for (j, v) in ["v0", "v1", "v0"].iter().enumerate() {
        let t = 200_000 + 20 * j as u64;
        history.push(on_key(read(999, Some(v), t, t + 10), key));
    }
    history
}

#[test]
fn a_violation_is_reported_even_if_another_key_is_inconclusive() {
    // Key "a-hard" (checked first) needs far more steps than allowed; key "b-bad" is
    // plainly broken.
    let mut history = exponential_history("a-hard", 20);
    history.push(on_key(read(100, Some("written-by-nobody"), 100, 110), "b-bad"));
    let report = check_detailed(&history, &BTreeMap::new(), &Budget::with_max_steps(20_000));
    assert!(
        matches!(report.keys[0].result, KeyResult::Inconclusive(_)),
        "{:?}",
        report.keys[0]
    );
    match report.verdict {
        Verdict::NotLinearizable { key, .. } => assert_eq!(key, b("b-bad")),
        other => panic!("{other}"),
    }
}

#[test]
fn an_exhausted_search_budget_gives_an_inconclusive_verdict_instead_of_hanging() {
    let history = exponential_history(K, 20);
    let started = Instant::now();
    let v = check(&history, &Budget::with_max_steps(100_000));
    assert!(v.is_inconclusive(), "{v}");
    assert!(started.elapsed() < Duration::from_secs(10));
    if let Verdict::Inconclusive { reason, .. } = &v {
        assert!(reason.contains("step budget"), "{reason}");
    }

    let timed = Budget {
        time_limit_per_key: Some(Duration::from_millis(300)),
        ..Budget::unlimited()
    };
    let started = Instant::now();
    let v = check(&history, &timed);
    assert!(v.is_inconclusive(), "{v}");
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());
    if let Verdict::Inconclusive { reason, .. } = &v {
        assert!(reason.contains("time limit"), "{reason}");
    }

    let total = Budget {
        time_limit_total: Some(Duration::from_millis(300)),
        ..Budget::unlimited()
    };
    let started = Instant::now();
    assert!(check(&history, &total).is_inconclusive());
    assert!(started.elapsed() < Duration::from_secs(5), "{:?}", started.elapsed());

    // A small version of the same history is refuted outright.
    assert!(check(&exponential_history(K, 4), &Budget::default()).is_not_linearizable());
}
