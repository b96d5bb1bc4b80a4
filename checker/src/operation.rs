//! The history model: what an operation on a key is, how it ended, what makes one
//! malformed, and how operations print in explanations.
//!
//! Everything a caller builds a history from lives here; the checker's own
//! representation of a key's operations is in `compile`.

use std::fmt;

use thiserror::Error;

/// An operation on one key.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Op {
    Read,
    Write(Vec<u8>),
    Delete,
    /// Compare-and-swap: `expect: None` means "expect the key to be absent".
    Cas {
        expect: Option<Vec<u8>>,
        new: Vec<u8>,
    },
    /// Delete the key only if it holds `expect`.
    DeleteIf {
        expect: Vec<u8>,
    },
}

/// What a successfully completed operation returned. Must match the [`Op`] kind.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum OpResult {
    /// The value observed by a `Read` (`None` = absent).
    Read(Option<Vec<u8>>),
    /// A `Write` was acknowledged.
    Written,
    /// A `Delete` was acknowledged; `existed` is whether the key was present, if the
    /// client reported it.
    Deleted { existed: Option<bool> },
    /// Whether a `Cas` swapped.
    Cas(bool),
    /// Whether a `DeleteIf` deleted.
    DeleteIf(bool),
}

/// How an operation ended.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum Outcome {
    /// Took effect exactly once within `[invoke, complete]`, returning this.
    Ok(OpResult),
    /// Certainly did not take effect.
    Failed,
    /// May have taken effect at any instant after `invoke`, or never.
    Unknown,
}

/// One operation of a history.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub struct Operation {
    /// The client / process that issued it (informational: only times matter).
    pub client: u64,
    pub key: Vec<u8>,
    pub op: Op,
    /// Time just before the request was sent.
    pub invoke: u64,
    /// Time just after the response arrived. Ignored for `Outcome::Unknown`.
    pub complete: u64,
    pub outcome: Outcome,
}

impl Operation {
    /// A completed operation.
    pub fn ok(client: u64, key: impl Into<Vec<u8>>, op: Op, invoke: u64, complete: u64, result: OpResult) -> Self {
        Operation {
            client,
            key: key.into(),
            op,
            invoke,
            complete,
            outcome: Outcome::Ok(result),
        }
    }

    /// An operation that certainly did not take effect.
    pub fn failed(client: u64, key: impl Into<Vec<u8>>, op: Op, invoke: u64, complete: u64) -> Self {
        Operation {
            client,
            key: key.into(),
            op,
            invoke,
            complete,
            outcome: Outcome::Failed,
        }
    }

    /// An operation with an unknown outcome (its completion is +infinity).
    pub fn unknown(client: u64, key: impl Into<Vec<u8>>, op: Op, invoke: u64) -> Self {
        Operation {
            client,
            key: key.into(),
            op,
            invoke,
            complete: u64::MAX,
            outcome: Outcome::Unknown,
        }
    }

    /// Whether the operation is well-formed: an `Ok` result of the operation's kind, and
    /// (unless the outcome is unknown) a completion no earlier than the invocation.
    pub fn validate(&self) -> Result<(), InvalidOperation> {
        if let Outcome::Ok(result) = &self.outcome {
            let fits = matches!(
                (&self.op, result),
                (Op::Read, OpResult::Read(_))
                    | (Op::Write(_), OpResult::Written)
                    | (Op::Delete, OpResult::Deleted { .. })
                    | (Op::Cas { .. }, OpResult::Cas(_))
                    | (Op::DeleteIf { .. }, OpResult::DeleteIf(_))
            );
            if !fits {
                return Err(InvalidOperation::ResultDoesNotFit {
                    op: self.op.clone(),
                    result: result.clone(),
                });
            }
        }
        if !matches!(self.outcome, Outcome::Unknown) && self.complete < self.invoke {
            return Err(InvalidOperation::CompletesBeforeInvoked {
                invoke: self.invoke,
                complete: self.complete,
            });
        }
        Ok(())
    }
}

/// Why an operation makes a history malformed (see [`Operation::validate`]).
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum InvalidOperation {
    /// An `Ok` result of another kind than the operation, e.g. `Written` for a read.
    #[error("result {result:?} does not fit operation {op:?}")]
    ResultDoesNotFit { op: Op, result: OpResult },
    /// A known outcome whose completion time is before its invocation time.
    #[error("completes ({complete}) before it is invoked ({invoke})")]
    CompletesBeforeInvoked { invoke: u64, complete: u64 },
}

/// A value for humans: a quoted string if it is printable UTF-8, hex otherwise;
/// long values are shortened.
pub fn show_bytes(b: &[u8]) -> String {
    const MAX: usize = 40;
    let shown = &b[..b.len().min(MAX)];
    let mut s = match std::str::from_utf8(shown) {
        Ok(t) if !t.chars().any(|c| c.is_control()) => format!("{t:?}"),
        _ => {
            let mut h = String::from("0x");
            for x in shown {
                h.push_str(&format!("{x:02x}"));
            }
            h
        }
    };
    if b.len() > MAX {
        s.push_str(&format!("...({} bytes)", b.len()));
    }
    s
}

fn show_opt(v: &Option<Vec<u8>>) -> String {
    v.as_deref().map_or("absent".to_string(), show_bytes)
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Op::Read => write!(f, "read"),
            Op::Write(v) => write!(f, "write {}", show_bytes(v)),
            Op::Delete => write!(f, "delete"),
            Op::Cas { expect, new } => write!(f, "cas {} -> {}", show_opt(expect), show_bytes(new)),
            Op::DeleteIf { expect } => write!(f, "delete-if {}", show_bytes(expect)),
        }
    }
}

impl fmt::Display for Operation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "client {} key {}: {}", self.client, show_bytes(&self.key), self.op)?;
        match &self.outcome {
            Outcome::Ok(r) => {
                match r {
                    OpResult::Read(v) => write!(f, " => {}", show_opt(v))?,
                    OpResult::Written => write!(f, " => ok")?,
                    OpResult::Deleted { existed: None } => write!(f, " => ok")?,
                    OpResult::Deleted { existed: Some(e) } => write!(f, " => ok (existed: {e})")?,
                    OpResult::Cas(b) | OpResult::DeleteIf(b) => {
                        write!(f, " => {}", if *b { "ok" } else { "not done" })?
                    }
                }
                write!(f, "  [{} .. {}]", self.invoke, self.complete)
            }
            Outcome::Failed => write!(f, " => FAILED  [{} .. {}]", self.invoke, self.complete),
            Outcome::Unknown => write!(f, " => UNKNOWN  [{} .. inf)", self.invoke),
        }
    }
}

/// Operation `i` of `history` as explanations name it: `#i client … => result  [invoke .. complete]`.
pub(crate) fn describe(history: &[Operation], i: usize) -> String {
    format!("#{i} {}", history[i])
}
