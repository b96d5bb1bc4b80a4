//! One-line constructors of operations (times are plain numbers) and the assertions the
//! other modules share, plus a small deterministic random generator.

use raftkv_checker::{check, Budget, Op, OpResult, Operation, Verdict};

pub const K: &str = "k";

pub fn b(s: &str) -> Vec<u8> {
    s.as_bytes().to_vec()
}

pub fn some(s: &str) -> Option<Vec<u8>> {
    Some(b(s))
}

pub fn write(client: u64, v: &str, invoke: u64, complete: u64) -> Operation {
    Operation::ok(client, K, Op::Write(b(v)), invoke, complete, OpResult::Written)
}

pub fn read(client: u64, v: Option<&str>, invoke: u64, complete: u64) -> Operation {
    Operation::ok(client, K, Op::Read, invoke, complete, OpResult::Read(v.map(b)))
}

pub fn delete(client: u64, existed: Option<bool>, invoke: u64, complete: u64) -> Operation {
    Operation::ok(client, K, Op::Delete, invoke, complete, OpResult::Deleted { existed })
}

pub fn cas(client: u64, expect: Option<&str>, new: &str, swapped: bool, invoke: u64, complete: u64) -> Operation {
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

pub fn delete_if(client: u64, expect: &str, deleted: bool, invoke: u64, complete: u64) -> Operation {
    Operation::ok(
        client,
        K,
        Op::DeleteIf { expect: b(expect) },
        invoke,
        complete,
        OpResult::DeleteIf(deleted),
    )
}

pub fn unknown_write(client: u64, v: &str, invoke: u64) -> Operation {
    Operation::unknown(client, K, Op::Write(b(v)), invoke)
}

pub fn on_key(mut op: Operation, key: &str) -> Operation {
    op.key = b(key);
    op
}

pub fn verdict(history: &[Operation]) -> Verdict {
    check(history, &Budget::default())
}

#[track_caller]
pub fn assert_linearizable(history: &[Operation]) {
    let v = verdict(history);
    assert!(v.is_linearizable(), "expected linearizable, got: {v}");
}

#[track_caller]
pub fn assert_not_linearizable(history: &[Operation]) -> String {
    match verdict(history) {
        Verdict::NotLinearizable { explanation, .. } => explanation,
        other => panic!("expected NOT linearizable, got: {other}"),
    }
}

/// splitmix64: a small deterministic generator, no dependency needed.
pub struct Rng(pub u64);

impl Rng {
    pub fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^ (z >> 31)
    }
    pub fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
    pub fn chance(&mut self, percent: u64) -> bool {
        self.below(100) < percent
    }
}
