//! One key's operations compiled for the search: values interned to small register
//! states, and each operation, with its outcome folded in, turned into a [`Step`] on them.
//!
//! Comparing `u32` states instead of byte strings is what makes the search's inner loop
//! cheap; merging the values no operation compares against into one state, and noting
//! which unknown operations are interchangeable, is what keeps it small.

use std::collections::{HashMap, HashSet};

use crate::operation::{show_bytes, Op, OpResult, Operation, Outcome};

/// Register state: 0 = absent, 1 = some value that no operation ever compares against,
/// otherwise an interned value id.
pub(crate) type State = u32;
pub(crate) const ABSENT: State = 0;
pub(crate) const UNOBSERVED: State = 1;
/// "None" in the search's `u32` links and indexes: no op, no record, no value.
pub(crate) const NIL: u32 = u32::MAX;

/// An operation with its outcome folded in: what it requires of the state and does.
/// `ok: None` = unknown outcome (only ever linearized where it has an effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub(crate) enum Step {
    Read(State),
    Write(State),
    Delete {
        existed: Option<bool>,
    },
    Cas {
        expect: State,
        new: State,
        ok: Option<bool>,
    },
    DeleteIf {
        expect: State,
        ok: Option<bool>,
    },
}

impl Step {
    /// The state after linearizing this step in state `s`, or `None` if it cannot be.
    #[inline]
    pub(crate) fn apply(self, s: State) -> Option<State> {
        match self {
            Step::Read(v) => (s == v).then_some(s),
            Step::Write(v) => Some(v),
            Step::Delete { existed: None } => Some(ABSENT),
            Step::Delete { existed: Some(e) } => ((s != ABSENT) == e).then_some(ABSENT),
            Step::Cas {
                expect,
                new,
                ok: Some(true) | None,
            } => (s == expect).then_some(new),
            Step::Cas {
                expect,
                ok: Some(false),
                ..
            } => (s != expect).then_some(s),
            Step::DeleteIf {
                expect,
                ok: Some(true) | None,
            } => (s == expect).then_some(ABSENT),
            Step::DeleteIf {
                expect,
                ok: Some(false),
            } => (s != expect).then_some(s),
        }
    }

    /// A value the step needs the register to hold for a *known* outcome, if any.
    pub(crate) fn requires(self) -> Option<State> {
        match self {
            Step::Read(v) => Some(v),
            Step::Cas {
                expect, ok: Some(true), ..
            } => Some(expect),
            Step::DeleteIf { expect, ok: Some(true) } => Some(expect),
            Step::Delete { existed: Some(false) } => Some(ABSENT),
            _ => None,
        }
    }

    /// The state the step may produce, if it may change the register.
    pub(crate) fn produces(self) -> Option<State> {
        match self {
            Step::Read(_) => None,
            Step::Write(v) => Some(v),
            Step::Delete { .. } => Some(ABSENT),
            Step::Cas { new, ok, .. } => (ok != Some(false)).then_some(new),
            Step::DeleteIf { ok, .. } => (ok != Some(false)).then_some(ABSENT),
        }
    }
}

/// One operation of the key, as the search sees it.
pub(crate) struct KeyOp {
    /// Index into the full history.
    pub(crate) hist: usize,
    pub(crate) invoke: u64,
    /// `None` = unknown outcome (return at +infinity, optional).
    pub(crate) complete: Option<u64>,
    pub(crate) step: Step,
}

/// One key's operations, compiled for the search.
pub(crate) struct Compiled<'a> {
    /// Known-outcome ops first (by invoke time), then unknown ones; the index is the
    /// op's bit in the linearized set.
    pub(crate) ops: Vec<KeyOp>,
    /// Number of known-outcome ops (= index of the first unknown one).
    pub(crate) required: usize,
    /// For an unknown op: the previous unknown op (in invocation order) with the same
    /// step, or NIL. Such ops are interchangeable once both are invoked (same effect,
    /// same +infinity return), so the search only ever linearizes the first pending
    /// one of each class: the linearized members of a class are always a prefix.
    pub(crate) sym_prev: Vec<u32>,
    /// Value of id `i >= 2` is `values[i - 2]`.
    pub(crate) values: Vec<&'a [u8]>,
    pub(crate) initial: State,
    pub(crate) initial_value: Option<&'a [u8]>,
    pub(crate) dropped: usize,
}

impl<'a> Compiled<'a> {
    pub(crate) fn build(history: &'a [Operation], indices: &[usize], initial: Option<&'a [u8]>) -> Compiled<'a> {
        // Values some operation compares the register against. All other values are
        // indistinguishable to every operation (a bisimulation), so they share one
        // state, UNOBSERVED: fewer distinct configurations, and more symmetric ops.
        let mut compared: HashSet<&'a [u8]> = HashSet::new();
        for &i in indices {
            let o = &history[i];
            match (&o.op, &o.outcome) {
                (_, Outcome::Failed) => {}
                (Op::Read, Outcome::Ok(OpResult::Read(Some(v)))) => {
                    compared.insert(v);
                }
                (Op::Cas { expect: Some(v), .. } | Op::DeleteIf { expect: v }, _) => {
                    compared.insert(v);
                }
                _ => {}
            }
        }
        let mut ids: HashMap<&'a [u8], State> = HashMap::new();
        let mut values: Vec<&'a [u8]> = Vec::new();
        let mut intern = |v: &'a [u8]| -> State {
            if !compared.contains(v) {
                return UNOBSERVED;
            }
            *ids.entry(v).or_insert_with(|| {
                values.push(v);
                values.len() as State + 1
            })
        };
        let initial_value = initial;
        let initial = initial.map_or(ABSENT, &mut intern);
        let mut known = Vec::new();
        let mut unknown = Vec::new();
        let mut dropped = 0;
        for &i in indices {
            let o = &history[i];
            let ok = match &o.outcome {
                Outcome::Failed => {
                    dropped += 1;
                    continue;
                }
                Outcome::Unknown => None,
                Outcome::Ok(r) => Some(r),
            };
            let step = match (&o.op, ok) {
                (Op::Read, None) => {
                    dropped += 1;
                    continue;
                }
                (Op::Read, Some(OpResult::Read(v))) => Step::Read(v.as_deref().map_or(ABSENT, &mut intern)),
                (Op::Write(v), _) => Step::Write(intern(v)),
                (Op::Delete, Some(OpResult::Deleted { existed })) => Step::Delete { existed: *existed },
                (Op::Delete, _) => Step::Delete { existed: None },
                (Op::Cas { expect, new }, r) => Step::Cas {
                    expect: expect.as_deref().map_or(ABSENT, &mut intern),
                    new: intern(new),
                    ok: match r {
                        Some(OpResult::Cas(b)) => Some(*b),
                        _ => None,
                    },
                },
                (Op::DeleteIf { expect }, r) => Step::DeleteIf {
                    expect: intern(expect),
                    ok: match r {
                        Some(OpResult::DeleteIf(b)) => Some(*b),
                        _ => None,
                    },
                },
                (op, Some(r)) => unreachable!("validated: {op:?} -> {r:?}"),
            };
            let key_op = KeyOp {
                hist: i,
                invoke: o.invoke,
                complete: ok.map(|_| o.complete),
                step,
            };
            if key_op.complete.is_some() {
                known.push(key_op);
            } else {
                unknown.push(key_op);
            }
        }
        known.sort_by_key(|o| (o.invoke, o.hist));
        unknown.sort_by_key(|o| (o.invoke, o.hist));
        let required = known.len();
        known.extend(unknown);
        let mut sym_prev = vec![NIL; known.len()];
        let mut last_of_class: HashMap<Step, u32> = HashMap::new();
        for (i, o) in known.iter().enumerate().skip(required) {
            if let Some(j) = last_of_class.insert(o.step, i as u32) {
                sym_prev[i] = j;
            }
        }
        Compiled {
            ops: known,
            required,
            sym_prev,
            values,
            initial,
            initial_value,
            dropped,
        }
    }

    /// A state for humans (explanations).
    pub(crate) fn show_state(&self, s: State) -> String {
        match s {
            ABSENT => "absent".to_string(),
            UNOBSERVED => "holding a value no operation reads or expects".to_string(),
            _ => show_bytes(self.values[s as usize - 2]),
        }
    }
}
