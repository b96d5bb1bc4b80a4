//! The history recorder, and histories dumped to JSON and read back.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use raftkv_checker::{from_json, read_json, to_json, write_json, Budget, History, Op, OpResult, Operation, Outcome};

use crate::support::{b, cas, delete, delete_if, read, some, write, Rng, K};

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
