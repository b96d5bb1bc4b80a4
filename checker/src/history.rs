//! Recording a history from concurrent clients: [`History`] timestamps each operation's
//! invocation and completion on one clock shared by all of them.
//!
//! A test records what its clients did here, then checks it or dumps it (see `json`).

use std::io;
use std::path::Path;
use std::sync::Mutex;
use std::time::Instant;

use crate::budget::Budget;
use crate::check::check;
use crate::json::write_json;
use crate::operation::{Op, Operation, Outcome};
use crate::verdict::Verdict;

/// A thread-safe recorder of a history, with one clock shared by all clients.
///
/// ```ignore
/// let history = Arc::new(History::new());
/// let p = history.invoke(client_id, key.clone(), Op::Write(value.clone()));
/// match client.put(key, value).await {
///     Ok(_) => history.complete(p, Outcome::Ok(OpResult::Written)),
///     Err(e) if definitely_not_applied(&e) => history.complete(p, Outcome::Failed),
///     Err(_) => history.complete(p, Outcome::Unknown),
/// }
/// ```
///
/// An operation whose [`Pending`] token is dropped without being completed (a
/// cancelled task, a panic) stays `Unknown`, which is always a safe assumption.
pub struct History {
    start: Instant,
    ops: Mutex<Vec<Operation>>,
}

/// The token of an invoked, not yet completed operation.
#[must_use = "complete the operation, or drop the token to leave its outcome unknown"]
#[derive(Debug)]
pub struct Pending {
    index: usize,
}

impl Pending {
    /// Index of the operation in the history.
    pub fn index(&self) -> usize {
        self.index
    }
}

impl Default for History {
    fn default() -> Self {
        History::new()
    }
}

impl History {
    /// A new empty history whose clock starts now.
    pub fn new() -> History {
        History {
            start: Instant::now(),
            ops: Mutex::new(Vec::new()),
        }
    }

    /// Nanoseconds since the history started.
    pub fn now(&self) -> u64 {
        self.start.elapsed().as_nanos() as u64
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Vec<Operation>> {
        // A panicking client thread must not make the history unreadable.
        self.ops.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Records the invocation of `op`; call it just before sending the request.
    pub fn invoke(&self, client: u64, key: impl Into<Vec<u8>>, op: Op) -> Pending {
        let key = key.into();
        let mut ops = self.lock();
        // Timestamp taken under the lock so that the ops are in invocation order.
        let invoke = self.now();
        ops.push(Operation {
            client,
            key,
            op,
            invoke,
            complete: u64::MAX,
            outcome: Outcome::Unknown,
        });
        Pending { index: ops.len() - 1 }
    }

    /// Records the outcome of an invoked operation; call it just after the response
    /// (or the error) arrived.
    pub fn complete(&self, pending: Pending, outcome: Outcome) {
        let complete = self.now();
        let mut ops = self.lock();
        let op = &mut ops[pending.index];
        op.complete = complete;
        op.outcome = outcome;
    }

    /// Adds an already complete operation (times are on this history's clock).
    pub fn push(&self, op: Operation) {
        self.lock().push(op);
    }

    /// A copy of the operations so far (those still pending are `Unknown`).
    pub fn operations(&self) -> Vec<Operation> {
        self.lock().clone()
    }

    pub fn len(&self) -> usize {
        self.lock().len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Checks the operations so far.
    pub fn check(&self, budget: &Budget) -> Verdict {
        check(&self.operations(), budget)
    }

    /// Dumps the operations so far to `path` (see [`write_json`] for the format).
    pub fn write_json(&self, path: impl AsRef<Path>) -> io::Result<()> {
        write_json(&self.operations(), path)
    }
}
