//! Large generated histories: accepted quickly, rejected once a read is corrupted.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use raftkv_checker::{check, check_detailed, Budget, Op, OpResult, Operation, Outcome, Verdict};

use crate::support::{b, some, Rng};

pub struct GenParams {
    pub ops: usize,
    pub keys: usize,
    pub clients: usize,
    /// Maximum distance between an op's invocation / completion and its linearization
    /// point; linearization points are on average 5 apart, so the typical number of
    /// overlapping ops is about 2 * spread / 5 (across all keys).
    pub spread: u64,
    pub unknown_percent: u64,
    pub failed_percent: u64,
}

/// A linearizable history: a sequential execution whose linearization points are
/// spread out into random overlapping intervals. Every written value is unique.
pub fn generate(seed: u64, p: &GenParams) -> Vec<Operation> {
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

pub fn ok_read_indices(history: &[Operation]) -> Vec<usize> {
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
