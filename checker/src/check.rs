//! The entry points ([`check`], [`check_with_initial`], [`check_detailed`]) and the
//! pipeline that each key goes through.
//!
//! A history of independent registers is linearizable iff each key's sub-history is
//! (P-compositionality), so the history is split per key and the keys are checked on
//! their own, on [`Budget::threads`] threads. A key's check compiles its operations,
//! runs the cheap pre-pass for impossible values, then the search, and puts a failure
//! into words; the overall verdict is the first key's failure in key order, else its
//! first inconclusive search.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

use crate::budget::{Budget, Limits};
use crate::compile::Compiled;
use crate::explain::{explain, impossible_values};
use crate::operation::Operation;
use crate::search::{search, SearchResult};
use crate::verdict::{KeyReport, KeyResult, Report, Verdict};

/// Checks `history` (all keys initially absent).
pub fn check(history: &[Operation], budget: &Budget) -> Verdict {
    check_detailed(history, &BTreeMap::new(), budget).verdict
}

/// Checks `history` where the keys in `initial` start with the given values.
pub fn check_with_initial(history: &[Operation], initial: &BTreeMap<Vec<u8>, Vec<u8>>, budget: &Budget) -> Verdict {
    check_detailed(history, initial, budget).verdict
}

/// Checks `history` and reports per-key statistics.
pub fn check_detailed(history: &[Operation], initial: &BTreeMap<Vec<u8>, Vec<u8>>, budget: &Budget) -> Report {
    let invalid = history
        .iter()
        .enumerate()
        .find_map(|(i, o)| o.validate().err().map(|e| (i, e)));
    if let Some((index, reason)) = invalid {
        return Report {
            verdict: Verdict::InvalidHistory { index, reason },
            keys: Vec::new(),
        };
    }
    let start = Instant::now();
    let total_deadline = budget.time_limit_total.map(|d| start + d);

    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_slice()).or_default().push(i);
    }
    let keys: Vec<(&[u8], Vec<usize>)> = by_key.into_iter().collect();

    let check_one = |k: usize| -> KeyReport {
        let (key, indices) = &keys[k];
        let init = initial.get(*key).map(|v| v.as_slice());
        check_key(history, key, indices, init, budget, total_deadline)
    };

    let threads = budget.threads.max(1).min(keys.len().max(1));
    let reports: Vec<KeyReport> = if threads <= 1 {
        (0..keys.len()).map(check_one).collect()
    } else {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<KeyReport>>> = (0..keys.len()).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= keys.len() {
                        break;
                    }
                    let report = check_one(k);
                    *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
                });
            }
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("every key is checked")
            })
            .collect()
    };

    let verdict = overall_verdict(&reports);
    Report { verdict, keys: reports }
}

/// The first key's violation in key order, else its first inconclusive search.
fn overall_verdict(reports: &[KeyReport]) -> Verdict {
    for r in reports {
        if let KeyResult::NotLinearizable { explanation, involved } = &r.result {
            return Verdict::NotLinearizable {
                key: r.key.clone(),
                explanation: explanation.clone(),
                involved: involved.clone(),
            };
        }
    }
    for r in reports {
        if let KeyResult::Inconclusive(reason) = &r.result {
            return Verdict::Inconclusive {
                key: r.key.clone(),
                reason: reason.clone(),
            };
        }
    }
    Verdict::Linearizable
}

/// Checks the operations of `key` (at `indices` of `history`).
fn check_key(
    history: &[Operation],
    key: &[u8],
    indices: &[usize],
    initial: Option<&[u8]>,
    budget: &Budget,
    total_deadline: Option<Instant>,
) -> KeyReport {
    let start = Instant::now();
    let c = Compiled::build(history, indices, initial);
    let mut report = KeyReport {
        key: key.to_vec(),
        ops: c.ops.len(),
        unknown_ops: c.ops.len() - c.required,
        dropped_ops: c.dropped,
        steps: 0,
        cache_entries: 0,
        elapsed: Duration::ZERO,
        result: KeyResult::Linearizable,
    };

    if let Some(result) = impossible_values(history, key, &c) {
        report.result = result;
        report.elapsed = start.elapsed();
        return report;
    }
    let limits = Limits::for_key(budget, start, total_deadline);
    if limits.deadline.is_some_and(|d| Instant::now() >= d) {
        report.result = KeyResult::Inconclusive("time limit reached before this key was checked".to_string());
        report.elapsed = start.elapsed();
        return report;
    }
    let (result, stats) = search(&c, &limits, budget.dfs_percent);
    report.steps = stats.steps;
    report.cache_entries = stats.cache_entries;
    report.result = match result {
        SearchResult::Linearizable => KeyResult::Linearizable,
        SearchResult::Exhausted(reason) => KeyResult::Inconclusive(reason),
        SearchResult::NotLinearizable(f) => explain(history, key, &c, &f),
    };
    report.elapsed = start.elapsed();
    report
}
