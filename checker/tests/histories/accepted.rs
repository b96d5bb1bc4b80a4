//! Histories that must be accepted.

use std::collections::BTreeMap;

use raftkv_checker::{check, check_with_initial, Budget, Op, OpResult, Operation, Verdict};

use crate::support::{
    assert_linearizable, assert_not_linearizable, b, cas, delete, delete_if, read, some, unknown_write, verdict, write,
    K,
};

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
