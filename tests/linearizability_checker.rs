//! Unit tests of the linearizability checker in `tests/checker/`.
//!
//! Run with `cargo test -p raftkv --test linearizability_checker` (add `-- --nocapture`
//! to see the timings of the generated histories).

mod checker;

use checker::{
    check, check_detailed, check_with_initial, from_json, read_json, to_json, write_json, Budget, History, KeyResult,
    Op, OpResult, Operation, Outcome, Verdict,
};
use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Helpers: one-line constructors. Times are plain numbers.
// ---------------------------------------------------------------------------------------

const K: &str = "k";

fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

fn some(s: &str) -> Option<Vec<u8>> {
    Some(b(s))
}

fn write(client: u64, v: &str, invoke: u64, complete: u64) -> Operation {
    Operation::ok(client, K, Op::Write(b(v)), invoke, complete, OpResult::Written)
}

fn read(client: u64, v: Option<&str>, invoke: u64, complete: u64) -> Operation {
    Operation::ok(client, K, Op::Read, invoke, complete, OpResult::Read(v.map(b)))
}

fn delete(client: u64, existed: Option<bool>, invoke: u64, complete: u64) -> Operation {
    Operation::ok(client, K, Op::Delete, invoke, complete, OpResult::Deleted { existed })
}

fn cas(client: u64, expect: Option<&str>, new: &str, swapped: bool, invoke: u64, complete: u64) -> Operation {
    Operation::ok(
        client,
        K,
        Op::Cas {
            expect: expect.map(b),
            new: b(new),
        },
        invoke,
        complete,
        OpResult::Cas(swapped),
    )
}

fn delete_if(client: u64, expect: &str, deleted: bool, invoke: u64, complete: u64) -> Operation {
    Operation::ok(
        client,
        K,
        Op::DeleteIf { expect: b(expect) },
        invoke,
        complete,
        OpResult::DeleteIf(deleted),
    )
}

fn unknown_write(client: u64, v: &str, invoke: u64) -> Operation {
    Operation::unknown(client, K, Op::Write(b(v)), invoke)
}

fn on_key(mut op: Operation, key: &str) -> Operation {
    op.key = b(key);
    op
}

fn verdict(history: &[Operation]) -> Verdict {
    check(history, &Budget::default())
}

#[track_caller]
fn assert_linearizable(history: &[Operation]) {
    let v = verdict(history);
    assert!(v.is_linearizable(), "expected linearizable, got: {v}");
}

#[track_caller]
fn assert_not_linearizable(history: &[Operation]) -> String {
    match verdict(history) {
        Verdict::NotLinearizable { explanation, .. } => explanation,
        other => panic!("expected NOT linearizable, got: {other}"),
    }
}

// ---------------------------------------------------------------------------------------
// Histories that must be rejected
// ---------------------------------------------------------------------------------------

#[test]
fn a_read_returning_a_value_never_written_is_rejected() {
    let explanation = assert_not_linearizable(&[write(1, "a", 0, 10), read(2, Some("zzz"), 20, 30)]);
    assert!(explanation.contains("\"zzz\""), "{explanation}");
}

#[test]
fn a_read_of_a_value_on_a_fresh_key_is_rejected() {
    assert_not_linearizable(&[read(1, Some("a"), 0, 10)]);
}

#[test]
fn a_stale_read_after_a_completed_write_is_rejected() {
    // x=0 is written, then x=1 is written and acknowledged; a read invoked afterwards
    // still sees 0.
    let explanation =
        assert_not_linearizable(&[write(1, "0", 0, 10), write(1, "1", 20, 30), read(2, Some("0"), 40, 50)]);
    assert!(
        explanation.contains("#2 client 2"),
        "the stale read should be blamed: {explanation}"
    );
}

#[test]
fn a_read_of_absent_after_a_completed_write_is_rejected() {
    assert_not_linearizable(&[write(1, "1", 0, 10), read(2, None, 11, 20)]);
}

#[test]
fn two_sequential_reads_seeing_the_new_then_the_old_value_are_rejected() {
    // A slow write of 1 is concurrent with both reads, but the reads are ordered:
    // once one read has seen 1, a later read cannot see 0 again.
    assert_not_linearizable(&[
        write(1, "0", 0, 10),
        write(2, "1", 20, 200),
        read(3, Some("1"), 30, 40),
        read(4, Some("0"), 50, 60),
    ]);
}

#[test]
fn the_same_two_reads_in_the_old_then_new_order_are_accepted() {
    assert_linearizable(&[
        write(1, "0", 0, 10),
        write(2, "1", 20, 200),
        read(3, Some("0"), 30, 40),
        read(4, Some("1"), 50, 60),
    ]);
}

#[test]
fn a_cas_that_succeeded_although_the_value_did_not_match_is_rejected() {
    assert_not_linearizable(&[write(1, "a", 0, 10), cas(2, Some("b"), "c", true, 20, 30)]);
}

#[test]
fn a_cas_expecting_absent_that_succeeded_on_a_present_key_is_rejected() {
    assert_not_linearizable(&[write(1, "a", 0, 10), cas(2, None, "c", true, 20, 30)]);
}

#[test]
fn a_cas_that_failed_although_the_value_matched_is_rejected() {
    assert_not_linearizable(&[write(1, "a", 0, 10), cas(2, Some("a"), "c", false, 20, 30)]);
}

#[test]
fn a_lost_update_where_two_cas_from_the_same_expected_value_both_succeed_is_rejected() {
    // Two concurrent increments 0 -> 1 and 0 -> 2: at most one can succeed.
    assert_not_linearizable(&[
        write(1, "0", 0, 10),
        cas(2, Some("0"), "1", true, 20, 50),
        cas(3, Some("0"), "2", true, 25, 45),
    ]);
}

#[test]
fn two_concurrent_cas_from_the_same_expected_value_where_one_fails_are_accepted() {
    assert_linearizable(&[
        write(1, "0", 0, 10),
        cas(2, Some("0"), "1", true, 20, 50),
        cas(3, Some("0"), "2", false, 25, 45),
        read(1, Some("1"), 60, 70),
    ]);
}

#[test]
fn a_write_that_failed_cannot_be_observed() {
    let history = [
        Operation::failed(1, K, Op::Write(b("a")), 0, 10),
        read(2, Some("a"), 20, 30),
    ];
    assert_not_linearizable(&history);
}

#[test]
fn a_read_cannot_see_a_write_invoked_after_the_read_completed() {
    assert_not_linearizable(&[read(1, Some("a"), 0, 10), write(2, "a", 20, 30)]);
}

#[test]
fn a_delete_reporting_that_an_absent_key_existed_is_rejected() {
    assert_not_linearizable(&[delete(1, Some(true), 0, 10)]);
    assert_not_linearizable(&[write(1, "a", 0, 10), delete(2, Some(false), 20, 30)]);
}

#[test]
fn a_read_of_the_old_value_after_a_completed_delete_is_rejected() {
    assert_not_linearizable(&[
        write(1, "a", 0, 10),
        delete(2, None, 20, 30),
        read(3, Some("a"), 40, 50),
    ]);
}

#[test]
fn a_delete_if_that_deleted_a_different_value_is_rejected() {
    assert_not_linearizable(&[write(1, "a", 0, 10), delete_if(2, "b", true, 20, 30)]);
    assert_not_linearizable(&[
        write(1, "a", 0, 10),
        delete_if(2, "a", true, 20, 30),
        read(3, Some("a"), 40, 50),
    ]);
}

#[test]
fn an_unknown_write_cannot_take_effect_before_it_was_invoked() {
    assert_not_linearizable(&[read(1, Some("a"), 0, 10), unknown_write(2, "a", 20)]);
}

#[test]
fn an_unknown_write_takes_effect_at_most_once() {
    // a, then the unknown write of b is observed, then a later write of c; b cannot
    // reappear after c.
    assert_not_linearizable(&[
        write(1, "a", 0, 10),
        unknown_write(2, "b", 20),
        read(3, Some("b"), 30, 40),
        write(1, "c", 50, 60),
        read(3, Some("b"), 70, 80),
    ]);
}

#[test]
fn a_value_seen_cannot_be_unseen_when_the_only_other_writer_completed_earlier() {
    // w1 [0,100] and w2 [10,20] overlap. A read at [30,40] sees 1, so w1 is after w2.
    // A read after w1 completes seeing 2 would need w2 after w1: impossible.
    assert_not_linearizable(&[
        write(1, "1", 0, 100),
        write(2, "2", 10, 20),
        read(3, Some("1"), 30, 40),
        read(3, Some("2"), 110, 120),
    ]);
}

// ---------------------------------------------------------------------------------------
// Histories that must be accepted
// ---------------------------------------------------------------------------------------

#[test]
fn an_empty_history_is_linearizable() {
    assert_linearizable(&[]);
}

#[test]
fn a_history_of_only_failed_and_unknown_operations_is_linearizable() {
    assert_linearizable(&[
        Operation::failed(1, K, Op::Write(b("a")), 0, 10),
        Operation::unknown(2, K, Op::Read, 5),
        unknown_write(3, "b", 7),
    ]);
}

#[test]
fn a_sequential_history_following_the_register_semantics_is_accepted() {
    assert_linearizable(&[
        read(1, None, 0, 1),
        delete(1, Some(false), 2, 3),
        cas(1, None, "a", true, 4, 5),
        read(1, Some("a"), 6, 7),
        cas(1, Some("b"), "c", false, 8, 9),
        cas(1, Some("a"), "b", true, 10, 11),
        write(1, "c", 12, 13),
        delete_if(1, "b", false, 14, 15),
        delete_if(1, "c", true, 16, 17),
        read(1, None, 18, 19),
        write(1, "d", 20, 21),
        delete(1, Some(true), 22, 23),
        read(1, None, 24, 25),
    ]);
}

#[test]
fn a_read_concurrent_with_a_write_may_see_either_value() {
    let base = || vec![write(1, "old", 0, 10), write(2, "new", 20, 40)];
    for seen in ["old", "new"] {
        let mut h = base();
        h.push(read(3, Some(seen), 25, 35));
        assert_linearizable(&h);
    }
    let mut h = base();
    h.push(read(3, Some("other"), 25, 35));
    assert_not_linearizable(&h);
}

#[test]
fn a_read_concurrent_with_the_first_write_may_see_absent() {
    assert_linearizable(&[write(1, "a", 0, 20), read(2, None, 5, 15), read(3, Some("a"), 6, 16)]);
}

#[test]
fn an_unknown_outcome_write_that_is_observed_later_is_accepted() {
    assert_linearizable(&[
        write(1, "a", 0, 10),
        unknown_write(2, "b", 20),
        read(3, Some("a"), 30, 40),
        read(3, Some("b"), 1_000, 1_010),
    ]);
}

#[test]
fn an_unknown_outcome_write_that_is_never_observed_is_accepted() {
    assert_linearizable(&[
        write(1, "a", 0, 10),
        unknown_write(2, "b", 20),
        read(3, Some("a"), 30, 40),
        read(3, Some("a"), 1_000, 1_010),
    ]);
}

#[test]
fn an_unknown_outcome_write_may_take_effect_long_after_later_writes() {
    // The unknown write of b lingers (e.g. in a deposed leader's log) and lands after
    // the acknowledged write of c.
    assert_linearizable(&[
        write(1, "a", 0, 10),
        unknown_write(2, "b", 20),
        write(1, "c", 30, 40),
        read(3, Some("c"), 50, 60),
        read(3, Some("b"), 70, 80),
    ]);
}

#[test]
fn an_unknown_cas_is_linearized_only_if_it_could_swap() {
    // The unknown cas a->b could only have swapped while the key held a.
    assert_linearizable(&[
        write(1, "a", 0, 10),
        Operation::unknown(
            2,
            K,
            Op::Cas {
                expect: some("a"),
                new: b("b"),
            },
            20,
        ),
        read(3, Some("b"), 30, 40),
    ]);
    assert_not_linearizable(&[
        write(1, "x", 0, 10),
        Operation::unknown(
            2,
            K,
            Op::Cas {
                expect: some("a"),
                new: b("b"),
            },
            20,
        ),
        read(3, Some("b"), 30, 40),
    ]);
}

#[test]
fn an_unknown_delete_may_explain_an_absent_read() {
    assert_linearizable(&[
        write(1, "a", 0, 10),
        Operation::unknown(2, K, Op::Delete, 20),
        read(3, None, 30, 40),
        write(1, "b", 50, 60),
        read(3, Some("b"), 70, 80),
    ]);
}

#[test]
fn touching_intervals_are_treated_as_concurrent() {
    // The write completes at 10 and the read is invoked at 10: they may be in either
    // order.
    assert_linearizable(&[write(1, "a", 0, 10), read(2, None, 10, 20)]);
    assert_not_linearizable(&[write(1, "a", 0, 10), read(2, None, 11, 20)]);
}

#[test]
fn overlapping_operations_in_a_tricky_order_are_accepted() {
    // Linearization: w2(2) r(2) w3(3) w1(1) r(1) r(1) cas(1->4) r(4); w1 is invoked
    // first but takes effect last among the writes.
    assert_linearizable(&[
        write(1, "1", 0, 100),
        write(2, "2", 5, 15),
        read(3, Some("2"), 16, 30),
        write(4, "3", 20, 60),
        read(5, Some("1"), 70, 80),
        read(3, Some("1"), 35, 110),
        cas(6, Some("1"), "4", true, 90, 130),
        read(5, Some("4"), 120, 140),
    ]);
}

#[test]
fn concurrent_reads_pinning_down_the_order_of_concurrent_writes_are_accepted() {
    // Three fully concurrent writes; reads during them fix the order c, a, b.
    assert_linearizable(&[
        write(1, "a", 0, 100),
        write(2, "b", 0, 100),
        write(3, "c", 0, 100),
        read(4, Some("c"), 10, 20),
        read(4, Some("a"), 30, 40),
        read(4, Some("b"), 50, 60),
        read(4, Some("b"), 110, 120),
    ]);
    // ... and then seeing a again is impossible.
    assert_not_linearizable(&[
        write(1, "a", 0, 100),
        write(2, "b", 0, 100),
        write(3, "c", 0, 100),
        read(4, Some("c"), 10, 20),
        read(4, Some("a"), 30, 40),
        read(4, Some("b"), 50, 60),
        read(4, Some("a"), 110, 120),
    ]);
}

#[test]
fn initial_values_are_respected() {
    let initial: BTreeMap<Vec<u8>, Vec<u8>> = [(b(K), b("init"))].into_iter().collect();
    let history = [read(1, Some("init"), 0, 10), cas(2, Some("init"), "x", true, 20, 30)];
    assert!(check_with_initial(&history, &initial, &Budget::default()).is_linearizable());
    assert!(check(&history, &Budget::default()).is_not_linearizable());
    assert!(check_with_initial(&[read(1, None, 0, 10)], &initial, &Budget::default()).is_not_linearizable());
}

#[test]
fn non_utf8_keys_and_values_work() {
    let key = vec![0xff, 0x00, 0x80];
    let v = vec![0xc3, 0x28];
    let history = [
        Operation::ok(1, key.clone(), Op::Write(v.clone()), 0, 10, OpResult::Written),
        Operation::ok(2, key.clone(), Op::Read, 20, 30, OpResult::Read(Some(vec![0xc3]))),
    ];
    match verdict(&history) {
        Verdict::NotLinearizable {
            key: k, explanation, ..
        } => {
            assert_eq!(k, key);
            assert!(explanation.contains("0xc3"), "{explanation}");
        }
        other => panic!("{other}"),
    }
}

#[test]
fn a_malformed_history_is_reported_as_invalid() {
    let bad_result = Operation::ok(1, K, Op::Read, 0, 10, OpResult::Written);
    assert!(matches!(
        verdict(&[bad_result]),
        Verdict::InvalidHistory { index: 0, .. }
    ));
    let backwards = read(1, None, 10, 5);
    assert!(matches!(
        verdict(&[write(1, "a", 0, 1), backwards]),
        Verdict::InvalidHistory { index: 1, .. }
    ));
}

// ---------------------------------------------------------------------------------------
// Explanations, per-key decomposition, budgets
// ---------------------------------------------------------------------------------------

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

// ---------------------------------------------------------------------------------------
// History recorder and JSON
// ---------------------------------------------------------------------------------------

#[test]
fn a_history_dumped_to_json_reads_back_identically() {
    let history = vec![
        write(1, "a", 0, 10),
        read(2, None, 1, 2),
        delete(3, Some(true), 3, 4),
        delete(3, None, 3, 4),
        cas(4, None, "x", false, 5, 6),
        cas(4, Some("a"), "x", true, 5, 6),
        delete_if(5, "x", true, 7, 8),
        Operation::failed(6, vec![0xff, 0xfe], Op::Write(vec![0, 159, 146, 150]), 9, 10),
        Operation::unknown(
            7,
            K,
            Op::Cas {
                expect: None,
                new: b("z"),
            },
            11,
        ),
        Operation::unknown(7, K, Op::Read, 12),
    ];
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("history.json");
    write_json(&history, &path).unwrap();
    assert_eq!(read_json(&path).unwrap(), history);
    assert_eq!(from_json(&to_json(&history)).unwrap(), history);
}

#[test]
fn the_recorder_captures_a_linearizable_history_from_concurrent_threads() {
    // Clients hammer an in-memory store guarded by a mutex (trivially linearizable);
    // some of their operations "time out" and are recorded as unknown although applied.
    let history = Arc::new(History::new());
    let store: Arc<Mutex<HashMap<Vec<u8>, Vec<u8>>>> = Arc::default();
    let threads: Vec<_> = (0..4u64)
        .map(|client| {
            let (history, store) = (history.clone(), store.clone());
            std::thread::spawn(move || {
                let mut rng = Rng(client + 1);
                for i in 0..300u64 {
                    let key = format!("k{}", rng.below(3)).into_bytes();
                    let value = format!("c{client}-{i}").into_bytes();
                    let op = match rng.below(4) {
                        0 => Op::Read,
                        1 => Op::Write(value),
                        2 => Op::Delete,
                        _ => {
                            // Usually the current value, so that most CASes swap.
                            let expect = store.lock().unwrap().get(&key).cloned();
                            Op::Cas { expect, new: value }
                        }
                    };
                    let p = history.invoke(client, key.clone(), op.clone());
                    let result = {
                        let mut s = store.lock().unwrap();
                        match &op {
                            Op::Read => OpResult::Read(s.get(&key).cloned()),
                            Op::Write(v) => {
                                s.insert(key.clone(), v.clone());
                                OpResult::Written
                            }
                            Op::Delete => OpResult::Deleted {
                                existed: Some(s.remove(&key).is_some()),
                            },
                            Op::Cas { expect, new } => {
                                let swap = s.get(&key) == expect.as_ref();
                                if swap {
                                    s.insert(key.clone(), new.clone());
                                }
                                OpResult::Cas(swap)
                            }
                            Op::DeleteIf { .. } => unreachable!(),
                        }
                    };
                    if rng.below(20) == 0 {
                        history.complete(p, Outcome::Unknown);
                    } else {
                        history.complete(p, Outcome::Ok(result));
                    }
                }
            })
        })
        .collect();
    for t in threads {
        t.join().unwrap();
    }
    assert_eq!(history.len(), 1200);
    let v = history.check(&Budget::default());
    assert!(v.is_linearizable(), "{v}");
}

#[test]
fn a_pending_operation_whose_token_is_dropped_stays_unknown() {
    let history = History::new();
    let p = history.invoke(1, K, Op::Write(b("a")));
    drop(p);
    let p = history.invoke(2, K, Op::Read);
    history.complete(p, Outcome::Ok(OpResult::Read(some("a"))));
    let ops = history.operations();
    assert_eq!(ops[0].outcome, Outcome::Unknown);
    assert!(ops[0].invoke <= ops[1].invoke && ops[1].invoke <= ops[1].complete);
    assert!(history.check(&Budget::default()).is_linearizable());
}

// ---------------------------------------------------------------------------------------
// Generated histories
// ---------------------------------------------------------------------------------------

/// splitmix64: a small deterministic generator, no dependency needed.
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}

struct GenParams {
    ops: usize,
    keys: usize,
    clients: usize,
    /// Maximum distance between an op's invocation / completion and its linearization
    /// point; linearization points are on average 5 apart, so the typical number of
    /// overlapping ops is about 2 * spread / 5 (across all keys).
    spread: u64,
    unknown_percent: u64,
    failed_percent: u64,
}

/// A linearizable history: a sequential execution whose linearization points are
/// spread out into random overlapping intervals. Every written value is unique.
fn generate(seed: u64, p: &GenParams) -> Vec<Operation> {
    let mut rng = Rng(seed);
    let mut state: Vec<Option<Vec<u8>>> = vec![None; p.keys];
    // Values written so far per key, to make CASes and DeleteIfs that sometimes fail.
    let mut written: Vec<Vec<Vec<u8>>> = vec![Vec::new(); p.keys];
    let mut busy_until = vec![0u64; p.clients];
    let mut client_id: Vec<u64> = (0..p.clients as u64).collect();
    let mut next_client_id = p.clients as u64;
    let mut history = Vec::with_capacity(p.ops);
    let mut t = 0u64;
    while history.len() < p.ops {
        t += 1 + rng.below(9);
        let c = rng.below(p.clients as u64) as usize;
        if busy_until[c] >= t {
            continue;
        }
        let k = rng.below(p.keys as u64) as usize;
        let key = format!("key{k}").into_bytes();
        let value = format!("v{}", history.len()).into_bytes();
        let cur = state[k].clone();
        let pick_other = |rng: &mut Rng, written: &Vec<Vec<u8>>| -> Option<Vec<u8>> {
            if written.is_empty() || rng.chance(20) {
                None
            } else {
                Some(written[rng.below(written.len() as u64) as usize].clone())
            }
        };
        let op = match rng.below(100) {
            0..=39 => Op::Read,
            40..=64 => Op::Write(value.clone()),
            65..=74 => Op::Delete,
            75..=92 => {
                let expect = if rng.chance(60) {
                    cur.clone()
                } else {
                    pick_other(&mut rng, &written[k])
                };
                Op::Cas {
                    expect,
                    new: value.clone(),
                }
            }
            _ => {
                let expect = match (&cur, rng.chance(60)) {
                    (Some(v), true) => v.clone(),
                    _ => pick_other(&mut rng, &written[k]).unwrap_or_else(|| b("never")),
                };
                Op::DeleteIf { expect }
            }
        };
        // The effect and result at the linearization point t.
        let (new_state, result) = match &op {
            Op::Read => (cur.clone(), OpResult::Read(cur.clone())),
            Op::Write(v) => (Some(v.clone()), OpResult::Written),
            Op::Delete => (
                None,
                OpResult::Deleted {
                    existed: Some(cur.is_some()),
                },
            ),
            Op::Cas { expect, new } => {
                if &cur == expect {
                    (Some(new.clone()), OpResult::Cas(true))
                } else {
                    (cur.clone(), OpResult::Cas(false))
                }
            }
            Op::DeleteIf { expect } => {
                if cur.as_ref() == Some(expect) {
                    (None, OpResult::DeleteIf(true))
                } else {
                    (cur.clone(), OpResult::DeleteIf(false))
                }
            }
        };
        let invoke = (busy_until[c] + 1).max(t.saturating_sub(rng.below(p.spread + 1)));
        let complete = t + rng.below(p.spread + 1);
        let roll = rng.below(100);
        let outcome = if roll < p.unknown_percent {
            // Took effect or not, nobody knows; the client moves on as a new process.
            if rng.chance(50) {
                state[k] = new_state;
            }
            if let Op::Write(v) | Op::Cas { new: v, .. } = &op {
                written[k].push(v.clone());
            }
            Outcome::Unknown
        } else if roll < p.unknown_percent + p.failed_percent {
            Outcome::Failed
        } else {
            state[k] = new_state;
            if let Op::Write(v) | Op::Cas { new: v, .. } = &op {
                written[k].push(v.clone());
            }
            Outcome::Ok(result)
        };
        let unknown = outcome == Outcome::Unknown;
        history.push(Operation {
            client: client_id[c],
            key,
            op,
            invoke,
            complete: if unknown { u64::MAX } else { complete },
            outcome,
        });
        if unknown {
            client_id[c] = next_client_id;
            next_client_id += 1;
            busy_until[c] = t;
        } else {
            busy_until[c] = complete;
        }
    }
    history
}

fn effectful_ok(o: &Operation) -> bool {
    matches!(
        o.outcome,
        Outcome::Ok(OpResult::Written | OpResult::Deleted { .. } | OpResult::Cas(true) | OpResult::DeleteIf(true))
    )
}

fn value_written_by(o: &Operation) -> Option<&Vec<u8>> {
    match (&o.op, &o.outcome) {
        (Op::Write(v), Outcome::Ok(_)) | (Op::Cas { new: v, .. }, Outcome::Ok(OpResult::Cas(true))) => Some(v),
        _ => None,
    }
}

/// Index of a late successful read, and a value it certainly cannot see: one written
/// by W, where W completed before some other effectful write W2 was invoked and W2
/// completed before the read was invoked. Values are unique, so no order fixes that.
fn stale_corruption(history: &[Operation]) -> Option<(usize, Vec<u8>)> {
    for (ri, r) in history.iter().enumerate().rev() {
        let Outcome::Ok(OpResult::Read(seen)) = &r.outcome else {
            continue;
        };
        for w2 in history
            .iter()
            .filter(|o| o.key == r.key && effectful_ok(o) && o.complete < r.invoke)
        {
            let stale = history.iter().find(|w| {
                w.key == r.key
                    && w.complete < w2.invoke
                    && value_written_by(w).is_some_and(|v| Some(v) != seen.as_ref())
            });
            if let Some(w) = stale {
                return Some((ri, value_written_by(w).unwrap().clone()));
            }
        }
    }
    None
}

fn ok_read_indices(history: &[Operation]) -> Vec<usize> {
    (0..history.len())
        .filter(|&i| matches!(history[i].outcome, Outcome::Ok(OpResult::Read(_))))
        .collect()
}

fn run_generated(name: &str, seed: u64, p: &GenParams, time_limit: Duration) {
    let history = generate(seed, p);
    let started = Instant::now();
    let report = check_detailed(&history, &BTreeMap::new(), &Budget::default());
    let elapsed = started.elapsed();
    let steps: u64 = report.keys.iter().map(|k| k.steps).sum();
    let max_key_ops = report.keys.iter().map(|k| k.ops).max().unwrap_or(0);
    let unknown: usize = report.keys.iter().map(|k| k.unknown_ops).sum();
    eprintln!(
        "{name}: {} ops, {} keys (max {} ops/key searched), {} unknown: {} in {:?} ({} steps)",
        history.len(),
        report.keys.len(),
        max_key_ops,
        unknown,
        report.verdict,
        elapsed,
        steps
    );
    assert!(report.verdict.is_linearizable(), "{}", report.verdict);
    assert!(elapsed < time_limit, "took {elapsed:?}");

    // One read corrupted to a value never written: rejected.
    let reads = ok_read_indices(&history);
    let mut rng = Rng(seed ^ 0xdead);
    let victim = reads[reads.len() / 2 + rng.below(reads.len() as u64 / 2) as usize];
    let mut corrupted = history.clone();
    corrupted[victim].outcome = Outcome::Ok(OpResult::Read(some("corrupted")));
    match check(&corrupted, &Budget::default()) {
        Verdict::NotLinearizable { key, involved, .. } => {
            assert_eq!(key, history[victim].key);
            assert_eq!(involved, vec![victim]);
        }
        other => panic!("{name}: corrupted read not rejected: {other}"),
    }

    // One read corrupted to a stale value (written before a later completed write):
    // rejected by the search itself, not by the pre-pass.
    let (victim, stale) = stale_corruption(&history).expect("a stale value to plant");
    let mut corrupted = history.clone();
    corrupted[victim].outcome = Outcome::Ok(OpResult::Read(Some(stale.clone())));
    let started = Instant::now();
    let v = check(&corrupted, &Budget::default());
    eprintln!(
        "{name}: stale read #{victim} of {:?} rejected in {:?}",
        String::from_utf8_lossy(&stale),
        started.elapsed()
    );
    match v {
        Verdict::NotLinearizable { key, explanation, .. } => {
            assert_eq!(key, history[victim].key);
            assert!(explanation.contains("deepest partial linearization"), "{explanation}");
            assert!(explanation.contains(&format!("#{victim} ")), "{explanation}");
            eprintln!("{name}: explanation:\n{explanation}");
        }
        other => panic!("{name}: stale read not rejected: {other}"),
    }
}

#[test]
fn a_large_generated_linearizable_history_is_accepted_quickly_and_rejected_once_a_read_is_corrupted() {
    let p = GenParams {
        ops: 20_000,
        keys: 20,
        clients: 16,
        spread: 60,
        unknown_percent: 2,
        failed_percent: 2,
    };
    run_generated("many keys", 1, &p, Duration::from_secs(20));
}

#[test]
fn a_long_single_key_history_with_high_concurrency_is_accepted_quickly_and_rejected_once_a_read_is_corrupted() {
    let p = GenParams {
        ops: 5_000,
        keys: 1,
        clients: 10,
        spread: 25,
        unknown_percent: 3,
        failed_percent: 2,
    };
    run_generated("one key", 2, &p, Duration::from_secs(20));
}

#[test]
fn generated_histories_from_many_seeds_are_accepted() {
    for seed in 0..40 {
        let p = GenParams {
            ops: 400,
            keys: 3,
            clients: 6,
            spread: 20,
            unknown_percent: 5,
            failed_percent: 5,
        };
        let history = generate(seed, &p);
        let v = check(&history, &Budget::default());
        assert!(v.is_linearizable(), "seed {seed}: {v}");
    }
}

// ---------------------------------------------------------------------------------------
// Cross-check against a brute-force search on small random histories
// ---------------------------------------------------------------------------------------

/// Linearizability by trying every order (small histories only), written independently
/// of the checker: known ops must all be placed, unknown ones may be; an op may be
/// placed once every known op that completed before its invocation is placed.
fn brute_force(history: &[Operation]) -> bool {
    let ops: Vec<&Operation> = history
        .iter()
        .filter(|o| !matches!((&o.op, &o.outcome), (_, Outcome::Failed) | (Op::Read, Outcome::Unknown)))
        .collect();
    fn known(o: &Operation) -> bool {
        matches!(o.outcome, Outcome::Ok(_))
    }
    /// Applies `o` to `s`: the new state, or `None` if its result contradicts `s`.
    fn apply(o: &Operation, s: &Option<Vec<u8>>) -> Option<Option<Vec<u8>>> {
        let result = match &o.outcome {
            Outcome::Ok(r) => Some(r),
            _ => None,
        };
        match &o.op {
            Op::Read => match result {
                Some(OpResult::Read(v)) if v == s => Some(s.clone()),
                _ => None,
            },
            Op::Write(v) => Some(Some(v.clone())),
            Op::Delete => match result {
                Some(OpResult::Deleted { existed: Some(e) }) if *e != s.is_some() => None,
                _ => Some(None),
            },
            Op::Cas { expect, new } => {
                let matches = s == expect;
                match result {
                    Some(OpResult::Cas(ok)) if *ok != matches => None,
                    _ => Some(if matches { Some(new.clone()) } else { s.clone() }),
                }
            }
            Op::DeleteIf { expect } => {
                let matches = s.as_ref() == Some(expect);
                match result {
                    Some(OpResult::DeleteIf(ok)) if *ok != matches => None,
                    _ => Some(if matches { None } else { s.clone() }),
                }
            }
        }
    }
    fn go(ops: &[&Operation], placed: &mut Vec<bool>, s: &Option<Vec<u8>>) -> bool {
        if ops.iter().zip(placed.iter()).all(|(o, p)| *p || !known(o)) {
            return true;
        }
        for i in 0..ops.len() {
            if placed[i] {
                continue;
            }
            let ready = (0..ops.len()).all(|j| placed[j] || !known(ops[j]) || ops[j].complete >= ops[i].invoke);
            if !ready {
                continue;
            }
            if let Some(next) = apply(ops[i], s) {
                placed[i] = true;
                if go(ops, placed, &next) {
                    return true;
                }
                placed[i] = false;
            }
        }
        false
    }
    go(&ops, &mut vec![false; ops.len()], &None)
}

/// Small random histories: `max_ops` operations at most, `unknown_percent` of them
/// (and as many again) with an unknown (failed) outcome.
fn random_small_history(rng: &mut Rng, max_ops: u64, unknown_percent: u64) -> Vec<Operation> {
    let n = 1 + rng.below(max_ops) as usize;
    let vals = ["a", "b", "c"];
    let val = |rng: &mut Rng| b(vals[rng.below(3) as usize]);
    let opt_val = |rng: &mut Rng| if rng.chance(25) { None } else { Some(val(rng)) };
    (0..n)
        .map(|i| {
            let invoke = rng.below(20);
            let complete = invoke + rng.below(12);
            let op = match rng.below(6) {
                0 | 1 => Op::Read,
                2 => Op::Write(val(rng)),
                3 => Op::Delete,
                4 => Op::Cas {
                    expect: opt_val(rng),
                    new: val(rng),
                },
                _ => Op::DeleteIf { expect: val(rng) },
            };
            let roll = rng.below(100);
            let outcome = match roll {
                _ if roll < unknown_percent => Outcome::Unknown,
                _ if roll < 2 * unknown_percent => Outcome::Failed,
                _ => Outcome::Ok(match &op {
                    Op::Read => OpResult::Read(opt_val(rng)),
                    Op::Write(_) => OpResult::Written,
                    Op::Delete => OpResult::Deleted {
                        existed: [None, Some(true), Some(false)][rng.below(3) as usize],
                    },
                    Op::Cas { .. } => OpResult::Cas(rng.chance(50)),
                    Op::DeleteIf { .. } => OpResult::DeleteIf(rng.chance(50)),
                }),
            };
            Operation {
                client: i as u64,
                key: b(K),
                op,
                invoke,
                complete,
                outcome,
            }
        })
        .collect()
}

#[test]
fn the_checker_agrees_with_a_brute_force_search_on_small_random_histories() {
    cross_check(42, 20_000, 7, 10);
}

#[test]
fn the_checker_agrees_with_a_brute_force_search_on_histories_full_of_unknown_outcomes() {
    cross_check(7, 20_000, 9, 35);
}

fn cross_check(seed: u64, cases: usize, max_ops: u64, unknown_percent: u64) {
    let mut rng = Rng(seed);
    let (mut accepted, mut rejected) = (0, 0);
    for case in 0..cases {
        let history = random_small_history(&mut rng, max_ops, unknown_percent);
        let expected = brute_force(&history);
        for dfs_percent in [100, 0] {
            let got = check(
                &history,
                &Budget {
                    dfs_percent,
                    ..Budget::unlimited()
                },
            );
            assert_eq!(
                got.is_linearizable(),
                expected,
                "case {case}, dfs_percent {dfs_percent}: brute force says {expected}, checker says {got}\n{history:#?}"
            );
            assert!(got.is_linearizable() || got.is_not_linearizable(), "{got}");
        }
        if expected {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    eprintln!(
        "brute-force cross-check ({max_ops} ops, {unknown_percent}% unknown): {accepted} linearizable, {rejected} not"
    );
    assert!(
        accepted > cases / 10 && rejected > cases / 10,
        "{accepted} / {rejected}"
    );
}

#[test]
fn the_depth_first_and_layered_searches_agree_on_medium_histories_with_many_unknowns() {
    let (mut accepted, mut rejected) = (0, 0);
    for seed in 0..300 {
        let p = GenParams {
            ops: 80,
            keys: 1,
            clients: 5,
            spread: 30,
            unknown_percent: 20,
            failed_percent: 5,
        };
        let mut history = generate(seed, &p);
        let mut rng = Rng(seed + 1000);
        if rng.chance(60) {
            // Corrupt a read to some value written on the key, or to absent.
            let reads = ok_read_indices(&history);
            let values: Vec<Vec<u8>> = history
                .iter()
                .filter_map(|o| match &o.op {
                    Op::Write(v) | Op::Cas { new: v, .. } => Some(v.clone()),
                    _ => None,
                })
                .collect();
            if !reads.is_empty() && !values.is_empty() {
                let victim = reads[rng.below(reads.len() as u64) as usize];
                let seen = if rng.chance(20) {
                    None
                } else {
                    Some(values[rng.below(values.len() as u64) as usize].clone())
                };
                history[victim].outcome = Outcome::Ok(OpResult::Read(seen));
            }
        }
        let dfs = check(
            &history,
            &Budget {
                dfs_percent: 100,
                ..Budget::unlimited()
            },
        );
        let layered = check(
            &history,
            &Budget {
                dfs_percent: 0,
                ..Budget::unlimited()
            },
        );
        assert_eq!(
            dfs.is_linearizable(),
            layered.is_linearizable(),
            "seed {seed}: {dfs} / {layered}"
        );
        assert!(!dfs.is_inconclusive() && !layered.is_inconclusive());
        if dfs.is_linearizable() {
            accepted += 1;
        } else {
            rejected += 1;
        }
    }
    eprintln!("depth-first vs layered: {accepted} linearizable, {rejected} not");
    assert!(accepted > 50 && rejected > 50, "{accepted} / {rejected}");
}
