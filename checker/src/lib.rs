//! A linearizability checker for key-value histories, for Jepsen-style tests.
//!
//! A crate of its own so that it is compiled once, tested on its own (`checker/tests/`),
//! and used by raftkv's end-to-end tests as a dev-dependency. It needs only `std`,
//! `serde_json` (dumping and re-loading histories) and `thiserror`.
//!
//! # Model
//!
//! Every key is an independent register holding `Option<Vec<u8>>` (`None` = absent).
//! Keys start absent unless [`check_with_initial`] says otherwise. Operations:
//!
//! | [`Op`]                    | [`OpResult`] when `Outcome::Ok`    | effect / constraint                              |
//! |---------------------------|-------------------------------------|--------------------------------------------------|
//! | `Read`                    | `Read(observed)`                    | `observed` must equal the register               |
//! | `Write(v)`                | `Written`                           | register := `Some(v)`                            |
//! | `Delete`                  | `Deleted { existed }`               | register := `None`; `existed`, if `Some`, must say whether it was present |
//! | `Cas { expect, new }`     | `Cas(swapped)`                      | `swapped` iff register == `expect`; if so register := `Some(new)` |
//! | `DeleteIf { expect }`     | `DeleteIf(deleted)`                 | `deleted` iff register == `Some(expect)`; if so register := `None` |
//!
//! Each [`Operation`] has an [`Outcome`]:
//! * `Ok(result)`: it took effect exactly once, at some instant in `[invoke, complete]`.
//! * `Failed`: it certainly did **not** take effect (e.g. refused before it was sent, or
//!   the server said so definitively). It is dropped. Only use this when it is certain:
//!   a `Failed` write that did in fact happen makes correct histories look broken.
//! * `Unknown`: timeout, lost connection, ...: it took effect at most once, at any instant
//!   after `invoke` (its completion is +infinity), or never. `complete` is ignored.
//!   `Failed` and `Unknown` reads constrain nothing and are dropped.
//!
//! Times are `u64` on one monotonic clock (nanoseconds since the [`History`] start, say).
//! Operation A precedes B in real time iff `A.complete < B.invoke`; intervals that merely
//! touch (`A.complete == B.invoke`) are treated as concurrent, which can only make the
//! checker more permissive, never produce a false alarm.
//!
//! # Algorithm
//!
//! Wing & Gong's search with Lowe's improvements (the "WGL" algorithm of porcupine and
//! Knossos' `linear`), plus reductions that keep operations with unknown outcomes from
//! blowing the search up:
//! * **P-compositionality**: a history of independent registers is linearizable iff each
//!   key's sub-history is, so every key is checked on its own (optionally on several
//!   threads, see [`Budget::threads`]).
//! * **Entry list**: a key's operations with known outcomes become call and return
//!   entries in a doubly linked list sorted by time. At a configuration, the operations
//!   that may be linearized next are those whose call entry precedes the first return
//!   entry; linearizing one unlinks ("lifts") its two entries, backtracking re-links
//!   them. Reaching a return entry means a completed operation was not linearized in
//!   time: a dead end.
//! * **Memoization**: a configuration is (linearized set, register state). Every one
//!   reached is recorded (bitsets compared exactly, not just hashed) and reaching it again
//!   prunes the branch. Beyond WGL's equality, a configuration is pruned when a recorded
//!   one *dominates* it: same linearized known operations and state, but a subset of its
//!   linearized unknown operations (so every option it has, and more).
//! * **Unknown operations** are optional and may take effect at any time after their
//!   invocation (return at +infinity): the key is accepted as soon as every operation
//!   with a known outcome is linearized. They are only linearized in *runs* that enable
//!   the next known operation (one impossible in the state before the run). This loses
//!   no linearization: a run followed by a known operation possible without it can
//!   always be moved after that operation or dropped (see `Searcher`).
//! * **Canonical states**: values that no operation ever compares against (reads,
//!   `Cas`/`DeleteIf` expectations) are indistinguishable and share one state; so do
//!   values whose comparing operations are all linearized already ("dead" values), and
//!   the pending unknown writes of dead values are interchangeable, only their number
//!   matters. Identical pending unknown operations are interchangeable too: only the
//!   earliest invoked one is tried.
//! * **Two passes**: a depth-first pass (runs of unknown operations tried right after a
//!   configuration's known children) finds linearizations fast; if it does not finish
//!   within its share of the budget ([`Budget::dfs_percent`]), a layered pass starts
//!   over, exploring configurations by increasing number of unknown operations
//!   linearized, so that the ones that merely consumed more of them are dominated. It
//!   refutes histories with many unknown operations much faster. Both are complete.
//! * A **budget** (steps, cache memory, wall time) bounds each key's search; exceeding it
//!   gives [`Verdict::Inconclusive`] instead of hanging.
//!
//! A quick pre-pass rejects reads (and successful `Cas`/`DeleteIf`) that depend on a
//! value no operation on the key could ever have produced, with a direct explanation.
//!
//! When a key is not linearizable, the explanation shows the deepest partial
//! linearization the search reached, the completed operation it could not get past, and
//! the operations that could have come next there.
//!
//! # Code map
//!
//! * `operation`: the history model ([`Operation`], [`Op`], [`OpResult`], [`Outcome`]),
//!   what makes a history malformed, and how operations print.
//! * `history`: [`History`], a recorder of the operations of concurrent clients.
//! * `json`: dumping and loading histories as JSON.
//! * `budget`: [`Budget`], the bounds on a search.
//! * `verdict`: what a check answers ([`Verdict`], [`Report`]).
//! * `check`: the entry points, the split per key and the per-key pipeline.
//! * `compile`: one key's operations turned into steps on interned register states.
//! * `search`: the WGL search itself (`search/`: the configuration cache, the canonical
//!   states, the runs of unknown operations, the depth-first and the layered passes).
//! * `explain`: why a key is not linearizable, in words.

mod budget;
mod check;
mod compile;
mod explain;
mod history;
mod json;
mod operation;
mod search;
mod verdict;

pub use budget::Budget;
pub use check::{check, check_detailed, check_with_initial};
pub use history::{History, Pending};
pub use json::{from_json, read_json, to_json, write_json, HistoryJsonError, OperationJsonError};
pub use operation::{show_bytes, InvalidOperation, Op, OpResult, Operation, Outcome};
pub use verdict::{KeyReport, KeyResult, Report, Verdict};
