//! Cross-checks: the checker against a brute-force search on small random histories, and
//! its two passes against each other.

use raftkv_checker::{check, Budget, Op, OpResult, Operation, Outcome};

use crate::generated::{generate, ok_read_indices, GenParams};
use crate::support::{b, Rng, K};

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
