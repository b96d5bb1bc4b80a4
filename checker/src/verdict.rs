//! What a check answers: the overall [`Verdict`], and a [`Report`] with each key's
//! [`KeyResult`] and search statistics (for tests that want to see how hard a history was).

use std::fmt;
use std::time::Duration;

use crate::operation::{show_bytes, InvalidOperation};

/// The result of a check.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Linearizable,
    /// Some key's sub-history has no linearization. Reported for the first such key in
    /// key order (even if other keys were inconclusive).
    NotLinearizable {
        key: Vec<u8>,
        /// Human-readable: the deepest partial linearization and where it got stuck.
        explanation: String,
        /// Indices into the checked history of the operations the explanation is about:
        /// the completed operation that could not be linearized first, then the
        /// operations pending at that point.
        involved: Vec<usize>,
    },
    /// No violation found, but the search of this key (the first such, in key order)
    /// ran out of budget.
    Inconclusive {
        key: Vec<u8>,
        reason: String,
    },
    /// The history itself is malformed (result kind not matching the op, complete
    /// before invoke, ...).
    InvalidHistory {
        index: usize,
        reason: InvalidOperation,
    },
}

impl Verdict {
    pub fn is_linearizable(&self) -> bool {
        matches!(self, Verdict::Linearizable)
    }
    pub fn is_not_linearizable(&self) -> bool {
        matches!(self, Verdict::NotLinearizable { .. })
    }
    pub fn is_inconclusive(&self) -> bool {
        matches!(self, Verdict::Inconclusive { .. })
    }
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Linearizable => write!(f, "linearizable"),
            Verdict::NotLinearizable { explanation, .. } => write!(f, "NOT linearizable: {explanation}"),
            Verdict::Inconclusive { key, reason } => {
                write!(f, "inconclusive: key {}: {reason}", show_bytes(key))
            }
            Verdict::InvalidHistory { index, reason } => write!(f, "invalid history: operation #{index}: {reason}"),
        }
    }
}

/// Per-key outcome of [`check_detailed`](crate::check_detailed).
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KeyResult {
    Linearizable,
    NotLinearizable { explanation: String, involved: Vec<usize> },
    Inconclusive(String),
}

/// Statistics and result for one key.
#[derive(Clone, Debug)]
pub struct KeyReport {
    pub key: Vec<u8>,
    /// Operations searched (after dropping failed operations and failed/unknown reads).
    pub ops: usize,
    /// How many of `ops` have an unknown outcome.
    pub unknown_ops: usize,
    /// Operations of this key dropped before the search.
    pub dropped_ops: usize,
    /// Search steps taken.
    pub steps: u64,
    /// Configurations in the cache at the end.
    pub cache_entries: usize,
    pub elapsed: Duration,
    pub result: KeyResult,
}

/// Verdict plus per-key statistics (keys in ascending order).
#[derive(Clone, Debug)]
pub struct Report {
    pub verdict: Verdict,
    pub keys: Vec<KeyReport>,
}
