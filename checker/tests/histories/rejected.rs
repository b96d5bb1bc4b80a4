//! Histories that must be rejected.

use raftkv_checker::{Op, Operation};

use crate::support::{
    assert_linearizable, assert_not_linearizable, b, cas, delete, delete_if, read, unknown_write, write, K,
};

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
