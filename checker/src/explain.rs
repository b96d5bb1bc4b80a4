//! Why a key is not linearizable, in words a person can act on.
//!
//! Two sources: the pre-pass, which catches an operation needing a value no operation on
//! the key could have produced (a direct, short explanation), and a failed search, whose
//! deepest partial linearization, the completed operation it could not get past and the
//! alternatives there are spelled out with the actual values.

use std::collections::HashSet;

use crate::compile::{Compiled, State, ABSENT};
use crate::operation::{describe, show_bytes, Op, Operation};
use crate::search::Failure;
use crate::verdict::KeyResult;

/// Pre-pass: a known-outcome op that needs the register to hold a value that no
/// operation on this key could ever produce (and that is not the initial value).
pub(crate) fn impossible_values(history: &[Operation], key: &[u8], c: &Compiled<'_>) -> Option<KeyResult> {
    let mut produced: HashSet<State> = c.ops.iter().filter_map(|o| o.step.produces()).collect();
    produced.insert(c.initial);
    let bad = c.ops[..c.required]
        .iter()
        .find(|o| o.step.requires().is_some_and(|v| !produced.contains(&v)))?;
    let v = bad.step.requires().expect("found above");
    let what = if v == ABSENT {
        "the key to be absent, but it starts present and no operation on it could have deleted it".to_string()
    } else {
        format!(
            "the value {}, which no operation on this key could have written (nor is it the initial value)",
            c.show_state(v)
        )
    };
    let explanation = format!(
        "key {}: operation {} requires {what}",
        show_bytes(key),
        describe(history, bad.hist)
    );
    Some(KeyResult::NotLinearizable {
        explanation,
        involved: vec![bad.hist],
    })
}

/// How many operations of the partial linearization an explanation shows (its last ones).
const EXPLAIN_TAIL: usize = 12;

/// The explanation of a failed search: the deepest dead end it reached.
pub(crate) fn explain(history: &[Operation], key: &[u8], c: &Compiled<'_>, f: &Failure) -> KeyResult {
    use std::fmt::Write as _;
    let blocked = &c.ops[f.blocked as usize];
    // The actual value after the partial linearization (the search state may merge
    // values nobody compares against).
    let mut value: Option<&[u8]> = c.initial_value;
    for &l in &f.linearized {
        let o = &history[c.ops[l as usize].hist];
        value = match &o.op {
            Op::Read => value,
            Op::Write(v) => Some(v),
            Op::Delete => None,
            Op::Cas { expect, new } => {
                if value == expect.as_deref() {
                    Some(new)
                } else {
                    value
                }
            }
            Op::DeleteIf { expect } => {
                if value == Some(expect.as_slice()) {
                    None
                } else {
                    value
                }
            }
        };
    }
    let mut s = String::new();
    let _ = writeln!(
        s,
        "key {}: no linearization exists for its {} operations ({} with unknown outcome; initial value {}).",
        show_bytes(key),
        c.ops.len(),
        c.ops.len() - c.required,
        c.initial_value.map_or("absent".to_string(), show_bytes),
    );
    let _ = writeln!(
        s,
        "The deepest partial linearization found has {} operations and leaves the key {}; it cannot be extended past the completion of",
        f.linearized.len(),
        value.map_or("absent".to_string(), show_bytes),
    );
    let _ = writeln!(s, "    {}", describe(history, blocked.hist));
    if blocked.step.apply(f.state).is_none() {
        let _ = writeln!(s, "  which is impossible in that state.");
    } else {
        let _ = writeln!(
            s,
            "  (possible in that state, but every such order leads to a dead end later)."
        );
    }
    let others: Vec<u32> = f.pending.iter().copied().filter(|&p| p != f.blocked).collect();
    if !others.is_empty() {
        let _ = writeln!(
            s,
            "Other operations that could have been linearized next there (all lead to dead ends):"
        );
        for &p in &others {
            let o = &c.ops[p as usize];
            let note = if o.step.apply(f.state).is_some() {
                ""
            } else {
                "   [impossible in that state]"
            };
            let _ = writeln!(s, "    {}{note}", describe(history, o.hist));
        }
    }
    if !f.linearized.is_empty() {
        let skip = f.linearized.len().saturating_sub(EXPLAIN_TAIL);
        let _ = writeln!(
            s,
            "Last {} linearized operations of that partial linearization (oldest first):",
            f.linearized.len() - skip
        );
        for &l in &f.linearized[skip..] {
            let _ = writeln!(s, "    {}", describe(history, c.ops[l as usize].hist));
        }
    }
    let mut involved = vec![blocked.hist];
    involved.extend(others.iter().map(|&p| c.ops[p as usize].hist));
    KeyResult::NotLinearizable {
        explanation: s,
        involved,
    }
}
