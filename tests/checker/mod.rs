//! A linearizability checker for key-value histories, for Jepsen-style tests.
//!
//! Self-contained: it needs only `std` and `serde_json` (a dev-dependency, used for
//! dumping and re-loading histories). Include it from a test file with `mod checker;`.
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

// Test files that include this module use different parts of its API.
#![allow(dead_code, unused_imports)]

mod history;

pub use history::{from_json, read_json, to_json, write_json, History, Pending};

use std::collections::{BTreeMap, HashMap, HashSet};
use std::fmt;
use std::hash::{BuildHasherDefault, Hasher};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::{Duration, Instant};

// ---------------------------------------------------------------------------------------
// Public types
// ---------------------------------------------------------------------------------------

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
}

/// Bounds on the search. Each key gets its own step and memory budget.
#[derive(Clone, Debug)]
pub struct Budget {
    /// Maximum search steps (entries visited) for one key.
    pub max_steps_per_key: u64,
    /// Maximum memory of one key's configuration cache, in bytes (approximate).
    pub max_cache_bytes_per_key: usize,
    /// Wall-clock limit for one key.
    pub time_limit_per_key: Option<Duration>,
    /// Wall-clock limit for the whole check; keys not finished by then are inconclusive.
    pub time_limit_total: Option<Duration>,
    /// Keys checked in parallel (1 = on the calling thread).
    pub threads: usize,
    /// Share (percent) of each key's step and time budget for the depth-first pass,
    /// which finds linearizations fast; if it does not finish, the layered pass, which
    /// refutes much faster when unknown operations abound, gets the rest. Either pass
    /// alone decides the key when it finishes. 100 = depth-first only, 0 = layered only.
    pub dfs_percent: u32,
}

impl Default for Budget {
    /// 1G steps, 1 GiB of cache and 60 s per key (3% of it for the depth-first pass);
    /// no total limit; one thread.
    fn default() -> Self {
        Budget {
            max_steps_per_key: 1_000_000_000,
            max_cache_bytes_per_key: 1 << 30,
            time_limit_per_key: Some(Duration::from_secs(60)),
            time_limit_total: None,
            threads: 1,
            dfs_percent: 3,
        }
    }
}

impl Budget {
    /// No limits at all (may run forever on a pathological history).
    pub fn unlimited() -> Self {
        Budget {
            max_steps_per_key: u64::MAX,
            max_cache_bytes_per_key: usize::MAX,
            time_limit_per_key: None,
            time_limit_total: None,
            threads: 1,
            dfs_percent: 3,
        }
    }

    /// The default budget with a given number of steps per key.
    pub fn with_max_steps(steps: u64) -> Self {
        Budget {
            max_steps_per_key: steps,
            ..Budget::default()
        }
    }
}

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
        reason: String,
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

/// Per-key outcome of [`check_detailed`].
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

// ---------------------------------------------------------------------------------------
// Entry points
// ---------------------------------------------------------------------------------------

/// Checks `history` (all keys initially absent).
pub fn check(history: &[Operation], budget: &Budget) -> Verdict {
    check_detailed(history, &BTreeMap::new(), budget).verdict
}

/// Checks `history` where the keys in `initial` start with the given values.
pub fn check_with_initial(history: &[Operation], initial: &BTreeMap<Vec<u8>, Vec<u8>>, budget: &Budget) -> Verdict {
    check_detailed(history, initial, budget).verdict
}

/// Checks `history` and reports per-key statistics.
pub fn check_detailed(history: &[Operation], initial: &BTreeMap<Vec<u8>, Vec<u8>>, budget: &Budget) -> Report {
    if let Err((index, reason)) = validate(history) {
        return Report {
            verdict: Verdict::InvalidHistory { index, reason },
            keys: Vec::new(),
        };
    }
    let start = Instant::now();
    let total_deadline = budget.time_limit_total.map(|d| start + d);

    let mut by_key: BTreeMap<&[u8], Vec<usize>> = BTreeMap::new();
    for (i, op) in history.iter().enumerate() {
        by_key.entry(op.key.as_slice()).or_default().push(i);
    }
    let keys: Vec<(&[u8], Vec<usize>)> = by_key.into_iter().collect();

    let check_one = |k: usize| -> KeyReport {
        let (key, indices) = &keys[k];
        let init = initial.get(*key).map(|v| v.as_slice());
        check_key(history, key, indices, init, budget, total_deadline)
    };

    let threads = budget.threads.max(1).min(keys.len().max(1));
    let reports: Vec<KeyReport> = if threads <= 1 {
        (0..keys.len()).map(check_one).collect()
    } else {
        let next = AtomicUsize::new(0);
        let slots: Vec<Mutex<Option<KeyReport>>> = (0..keys.len()).map(|_| Mutex::new(None)).collect();
        std::thread::scope(|s| {
            for _ in 0..threads {
                s.spawn(|| loop {
                    let k = next.fetch_add(1, Ordering::Relaxed);
                    if k >= keys.len() {
                        break;
                    }
                    let report = check_one(k);
                    *slots[k].lock().unwrap_or_else(|e| e.into_inner()) = Some(report);
                });
            }
        });
        slots
            .into_iter()
            .map(|m| {
                m.into_inner()
                    .unwrap_or_else(|e| e.into_inner())
                    .expect("every key is checked")
            })
            .collect()
    };

    let verdict = overall_verdict(&reports);
    Report { verdict, keys: reports }
}

fn overall_verdict(reports: &[KeyReport]) -> Verdict {
    for r in reports {
        if let KeyResult::NotLinearizable { explanation, involved } = &r.result {
            return Verdict::NotLinearizable {
                key: r.key.clone(),
                explanation: explanation.clone(),
                involved: involved.clone(),
            };
        }
    }
    for r in reports {
        if let KeyResult::Inconclusive(reason) = &r.result {
            return Verdict::Inconclusive {
                key: r.key.clone(),
                reason: reason.clone(),
            };
        }
    }
    Verdict::Linearizable
}

fn validate(history: &[Operation]) -> Result<(), (usize, String)> {
    for (i, o) in history.iter().enumerate() {
        if let Outcome::Ok(result) = &o.outcome {
            let fits = matches!(
                (&o.op, result),
                (Op::Read, OpResult::Read(_))
                    | (Op::Write(_), OpResult::Written)
                    | (Op::Delete, OpResult::Deleted { .. })
                    | (Op::Cas { .. }, OpResult::Cas(_))
                    | (Op::DeleteIf { .. }, OpResult::DeleteIf(_))
            );
            if !fits {
                return Err((i, format!("result {result:?} does not fit operation {:?}", o.op)));
            }
        }
        if !matches!(o.outcome, Outcome::Unknown) && o.complete < o.invoke {
            return Err((
                i,
                format!("completes ({}) before it is invoked ({})", o.complete, o.invoke),
            ));
        }
    }
    Ok(())
}

// ---------------------------------------------------------------------------------------
// Per-key compilation: values interned to u32 ids, ops to model steps
// ---------------------------------------------------------------------------------------

/// Register state: 0 = absent, 1 = some value that no operation ever compares against,
/// otherwise an interned value id.
type State = u32;
const ABSENT: State = 0;
const UNOBSERVED: State = 1;
const NIL: u32 = u32::MAX;

/// An operation with its outcome folded in: what it requires of the state and does.
/// `ok: None` = unknown outcome (only ever linearized where it has an effect).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
enum Step {
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
    fn apply(self, s: State) -> Option<State> {
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
    fn requires(self) -> Option<State> {
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
    fn produces(self) -> Option<State> {
        match self {
            Step::Read(_) => None,
            Step::Write(v) => Some(v),
            Step::Delete { .. } => Some(ABSENT),
            Step::Cas { new, ok, .. } => (ok != Some(false)).then_some(new),
            Step::DeleteIf { ok, .. } => (ok != Some(false)).then_some(ABSENT),
        }
    }
}

struct KeyOp {
    /// Index into the full history.
    hist: usize,
    invoke: u64,
    /// `None` = unknown outcome (return at +infinity, optional).
    complete: Option<u64>,
    step: Step,
}

struct Compiled<'a> {
    /// Known-outcome ops first (by invoke time), then unknown ones; the index is the
    /// op's bit in the linearized set.
    ops: Vec<KeyOp>,
    /// Number of known-outcome ops (= index of the first unknown one).
    required: usize,
    /// For an unknown op: the previous unknown op (in invocation order) with the same
    /// step, or NIL. Such ops are interchangeable once both are invoked (same effect,
    /// same +infinity return), so the search only ever linearizes the first pending
    /// one of each class: the linearized members of a class are always a prefix.
    sym_prev: Vec<u32>,
    /// Value of id `i >= 2` is `values[i - 2]`.
    values: Vec<&'a [u8]>,
    initial: State,
    initial_value: Option<&'a [u8]>,
    dropped: usize,
}

impl<'a> Compiled<'a> {
    fn build(history: &'a [Operation], indices: &[usize], initial: Option<&'a [u8]>) -> Compiled<'a> {
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

    fn show_state(&self, s: State) -> String {
        match s {
            ABSENT => "absent".to_string(),
            UNOBSERVED => "holding a value no operation reads or expects".to_string(),
            _ => show_bytes(self.values[s as usize - 2]),
        }
    }
}

// ---------------------------------------------------------------------------------------
// The search
// ---------------------------------------------------------------------------------------

/// The set of linearized ops, with its canonical compact form maintained incrementally:
/// `lo` = first word not all ones, `hi` = one past the last non-zero word. Two sets are
/// equal iff their `(lo, words[lo..hi])` are.
struct Bits {
    words: Vec<u64>,
    lo: usize,
    hi: usize,
}

impl Bits {
    fn new(n: usize) -> Bits {
        Bits {
            words: vec![0; n.div_ceil(64)],
            lo: 0,
            hi: 0,
        }
    }

    #[inline]
    fn set(&mut self, i: usize) {
        let w = i >> 6;
        self.words[w] |= 1u64 << (i & 63);
        if w >= self.hi {
            self.hi = w + 1;
        }
        while self.lo < self.words.len() && self.words[self.lo] == u64::MAX {
            self.lo += 1;
        }
    }

    #[inline]
    fn clear(&mut self, i: usize) {
        let w = i >> 6;
        self.words[w] &= !(1u64 << (i & 63));
        if w < self.lo {
            self.lo = w;
        }
        while self.hi > 0 && self.words[self.hi - 1] == 0 {
            self.hi -= 1;
        }
    }

    #[inline]
    fn window(&self) -> &[u64] {
        &self.words[self.lo..self.hi.max(self.lo)]
    }
}

#[inline]
fn fmix64(mut x: u64) -> u64 {
    x ^= x >> 33;
    x = x.wrapping_mul(0xff51_afd7_ed55_8ccd);
    x ^= x >> 33;
    x = x.wrapping_mul(0xc4ce_b9fe_1a85_ec53);
    x ^ (x >> 33)
}

#[inline]
fn config_hash(lo: usize, window: &[u64], tag: u64) -> u64 {
    let mut h = fmix64(fmix64(tag) ^ (lo as u64) ^ (window.len() as u64) << 40);
    for &w in window {
        h = (h.rotate_left(5) ^ w).wrapping_mul(0x517c_c1b7_2722_0a95);
    }
    fmix64(h)
}

/// Hasher for keys that are already well-mixed hashes.
#[derive(Default)]
struct IdHasher(u64);

impl Hasher for IdHasher {
    fn finish(&self) -> u64 {
        self.0
    }
    fn write(&mut self, bytes: &[u8]) {
        for &b in bytes {
            self.0 = (self.0 << 8) | b as u64;
        }
    }
    fn write_u64(&mut self, n: u64) {
        self.0 = n;
    }
}

/// A visited configuration, and how it was reached (a trie of paths: `parent` and the
/// ops from there, `path_len` ops at `path_off` in the path arena).
#[derive(Clone, Copy)]
struct CacheRec {
    /// Next record with the same hash, or NIL.
    next: u32,
    lo: u32,
    len: u32,
    state: State,
    dead: u32,
    /// Offset in the arena of the known window words, followed by the unknown words.
    off: usize,
    parent: u32,
    path_off: u32,
    path_len: u32,
    /// On the search's current path.
    on_path: bool,
}

/// The configurations visited so far: hash buckets (on the known part and state)
/// chaining records whose words live in one arena (no allocation per record).
///
/// A configuration is *dominated* by a visited one with the same linearized known ops
/// and canonical state, a subset of its linearized unknown ops (minus dead writes) and
/// no more dead writes linearized: the visited one has every option this one has, and
/// more, and it is (or will be) explored, so this one need not be.
struct Cache {
    heads: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    recs: Vec<CacheRec>,
    arena: Vec<u64>,
    paths: Vec<u32>,
    unknown_words: usize,
}

impl Cache {
    fn new(unknown_words: usize) -> Cache {
        Cache {
            heads: HashMap::default(),
            recs: Vec::new(),
            arena: Vec::new(),
            paths: Vec::new(),
            unknown_words,
        }
    }

    /// The first record other than `skip` dominating the configuration, if any.
    fn dominating(
        &self,
        lo: usize,
        window: &[u64],
        state: State,
        unknown: &[u64],
        dead: u32,
        skip: u32,
    ) -> Option<u32> {
        let h = config_hash(lo, window, state as u64);
        let uw = self.unknown_words;
        let mut r = *self.heads.get(&h)?;
        while r != NIL {
            let rec = &self.recs[r as usize];
            let this = r;
            r = rec.next;
            if this == skip
                || rec.state != state
                || rec.dead > dead
                || rec.lo as usize != lo
                || rec.len as usize != window.len()
            {
                continue;
            }
            let (kw, ru) = self.arena[rec.off..rec.off + window.len() + uw].split_at(window.len());
            if kw == window && ru.iter().zip(unknown).all(|(a, b)| a & !b == 0) {
                return Some(this);
            }
        }
        None
    }

    /// Records the configuration unless it is dominated; returns its record.
    fn visit(
        &mut self,
        known: &Bits,
        state: State,
        unknown: &[u64],
        dead: u32,
        parent: u32,
        path: &[u32],
    ) -> Option<u32> {
        let window = known.window();
        if self.dominating(known.lo, window, state, unknown, dead, NIL).is_some() {
            return None;
        }
        let h = config_hash(known.lo, window, state as u64);
        let off = self.arena.len();
        self.arena.extend_from_slice(window);
        self.arena.extend_from_slice(unknown);
        let path_off = self.paths.len() as u32;
        self.paths.extend_from_slice(path);
        let idx = self.recs.len() as u32;
        let first = self.heads.insert(h, idx).unwrap_or(NIL);
        self.recs.push(CacheRec {
            next: first,
            lo: known.lo as u32,
            len: window.len() as u32,
            state,
            dead,
            off,
            parent,
            path_off,
            path_len: path.len() as u32,
            on_path: false,
        });
        Some(idx)
    }

    fn len(&self) -> usize {
        self.recs.len()
    }

    fn bytes(&self) -> usize {
        self.heads.capacity() * (8 + 4 + 1)
            + self.recs.capacity() * std::mem::size_of::<CacheRec>()
            + self.arena.capacity() * 8
            + self.paths.capacity() * 4
    }
}

/// The canonical form of a configuration, maintained incrementally.
///
/// A value is *dead* once every operation that compares the register against it has
/// been linearized: from then on no remaining operation can tell it apart from any
/// other dead value (a bisimulation), so a dead state is recorded as UNOBSERVED, and
/// the unknown writes of dead values are interchangeable (all enabled, same effect,
/// return at +infinity): what matters is how many of them were linearized, not which.
struct Canon {
    required: usize,
    /// Every linearized op.
    lin: Vec<bool>,
    /// Linearized known ops.
    known: Bits,
    /// Linearized unknown ops (bit `op - required`), minus the writes of dead values.
    unknown: Vec<u64>,
    /// Linearized unknown writes of dead values.
    dead: u32,
    /// Per value id: observers (ops comparing against it) not yet linearized.
    observers_left: Vec<u32>,
    /// Per op: the value it compares against (never ABSENT or UNOBSERVED), or NIL.
    observes: Vec<u32>,
    /// Per op: for an unknown write, its value id (UNOBSERVED or a value), else NIL.
    unknown_write_of: Vec<u32>,
    /// Per value id: the unknown writes of it.
    unknown_writers: Vec<Vec<u32>>,
}

impl Canon {
    fn new(c: &Compiled<'_>) -> Canon {
        let n = c.ops.len();
        let ids = c.values.len() + 2;
        let mut canon = Canon {
            required: c.required,
            lin: vec![false; n],
            known: Bits::new(c.required),
            unknown: vec![0; (n - c.required).div_ceil(64)],
            dead: 0,
            observers_left: vec![0; ids],
            observes: vec![NIL; n],
            unknown_write_of: vec![NIL; n],
            unknown_writers: vec![Vec::new(); ids],
        };
        for (i, o) in c.ops.iter().enumerate() {
            let observed = match o.step {
                Step::Read(v) | Step::Cas { expect: v, .. } | Step::DeleteIf { expect: v, .. } => v,
                Step::Write(_) | Step::Delete { .. } => ABSENT,
            };
            if observed > UNOBSERVED {
                canon.observes[i] = observed;
                canon.observers_left[observed as usize] += 1;
            }
            if let (None, Step::Write(v)) = (o.complete, o.step) {
                if v != ABSENT {
                    canon.unknown_write_of[i] = v;
                    canon.unknown_writers[v as usize].push(i as u32);
                }
            }
        }
        canon
    }

    #[inline]
    fn dead_value(&self, v: State) -> bool {
        v == UNOBSERVED || (v != ABSENT && self.observers_left[v as usize] == 0)
    }

    /// The canonical form of register state `s`.
    #[inline]
    fn canonical(&self, s: State) -> State {
        if self.dead_value(s) {
            UNOBSERVED
        } else {
            s
        }
    }

    #[inline]
    fn flip_unknown(&mut self, op: u32) {
        let i = op as usize - self.required;
        self.unknown[i >> 6] ^= 1u64 << (i & 63);
    }

    /// Whether `op` (linearized) is counted in `dead` rather than in `unknown`.
    #[inline]
    fn counted_dead(&self, op: u32) -> bool {
        let w = self.unknown_write_of[op as usize];
        w != NIL && self.observers_left[w as usize] == 0
    }

    fn linearize(&mut self, op: u32) {
        self.lin[op as usize] = true;
        let v = self.observes[op as usize];
        if v != NIL {
            self.observers_left[v as usize] -= 1;
            if self.observers_left[v as usize] == 0 {
                for k in 0..self.unknown_writers[v as usize].len() {
                    let w = self.unknown_writers[v as usize][k];
                    if self.lin[w as usize] {
                        self.flip_unknown(w);
                        self.dead += 1;
                    }
                }
            }
        }
        if (op as usize) < self.required {
            self.known.set(op as usize);
        } else if self.counted_dead(op) {
            self.dead += 1;
        } else {
            self.flip_unknown(op);
        }
    }

    /// Undoes `linearize(op)`; must be called in LIFO order.
    fn unlinearize(&mut self, op: u32) {
        if (op as usize) < self.required {
            self.known.clear(op as usize);
        } else if self.counted_dead(op) {
            self.dead -= 1;
        } else {
            self.flip_unknown(op);
        }
        let v = self.observes[op as usize];
        if v != NIL {
            if self.observers_left[v as usize] == 0 {
                for k in 0..self.unknown_writers[v as usize].len() {
                    let w = self.unknown_writers[v as usize][k];
                    if self.lin[w as usize] {
                        self.flip_unknown(w);
                        self.dead -= 1;
                    }
                }
            }
            self.observers_left[v as usize] += 1;
        }
        self.lin[op as usize] = false;
    }
}

struct Limits {
    max_steps: u64,
    max_cache_bytes: usize,
    deadline: Option<Instant>,
}

/// Where the deepest dead end of a failed search was.
struct Failure {
    /// Ops linearized there, in order.
    linearized: Vec<u32>,
    /// The state after them.
    state: State,
    /// The completed op that could not be linearized in time.
    blocked: u32,
    /// The ops that could have been linearized next there (all refuted).
    pending: Vec<u32>,
}

enum SearchResult {
    Linearizable,
    NotLinearizable(Failure),
    Exhausted(String),
}

struct SearchStats {
    steps: u64,
    cache_entries: usize,
}

struct Frame {
    op: u32,
    /// Register state before `op`.
    before: State,
    /// Record of the configuration after `op`, or NIL inside a run of unknown ops.
    rec: u32,
}

/// The search state of one key.
///
/// Known ops live in a doubly linked list of call (`2i`) and return (`2i + 1`) entries
/// sorted by time, head sentinel `2 * required`; pending unknown ops in their own list in
/// invocation order (node = op index, head sentinel `n`). Linearizing an op unlinks it,
/// backtracking re-links it (dancing links, LIFO). At a configuration, the known ops
/// that may come next are those whose call entry precedes the first return entry; the
/// unknown ops that may are the pending ones invoked by that return's time.
///
/// The search goes in layers: layer L holds the configurations reached with L unknown
/// ops linearized. Each layer is a depth-first search over known ops only, from the
/// layer's seeds (the initial configuration for layer 0). At each configuration it
/// visits, it also enumerates the runs of unknown ops that make some blocked known op
/// possible, and records "configuration + run + that op" as a seed of a later layer.
/// Exploring configurations with fewer unknown ops first means the ones that only
/// differ by having consumed more unknown ops are dominated when they come up.
///
/// Runs of unknown ops are only linearized to enable the known op right after them.
/// This loses no solution: in any linearization, a run of unknown ops followed by a
/// known op `k` that is possible in the state `s0` before the run can be moved after
/// `k` (if `k` keeps the state) or dropped (if `k` overwrites it unconditionally, or is
/// a successful conditional op, whose condition then pins both ends of the run to the
/// same state); moving unknown ops later never breaks real-time order, and a run at the
/// very end can be dropped. Likewise, within a run an unconditional op (write, delete)
/// makes everything before it useless, so it can only come first, and a run that
/// returns to a state it had before can be shortened.
struct Searcher<'c, 'a> {
    c: &'c Compiled<'a>,
    next: Vec<u32>,
    prev: Vec<u32>,
    head: u32,
    unext: Vec<u32>,
    uprev: Vec<u32>,
    uhead: u32,
    canon: Canon,
    cache: Cache,
    state: State,
    stack: Vec<Frame>,
    /// Record of the initial configuration (always on the path).
    root: u32,
    required_left: usize,
    /// Unknown ops on the current path.
    unknown_used: usize,
    /// Seeds (records) per layer.
    layers: Vec<Vec<u32>>,
    best: Option<Failure>,
    steps: u64,
    /// Whether some unknown op is a conditional one (only those can extend a run).
    has_conditional_unknown: bool,
}

/// What the runs of unknown ops enumerated at one configuration share.
struct RunContext<'b> {
    /// Time of the first return entry: unknown ops invoked later are not enabled.
    t: u64,
    /// The known candidates impossible in the configuration's state.
    blocked: &'b [u32],
    /// Record of the configuration.
    parent: u32,
    limits: &'b Limits,
}

/// How a search ended early.
enum Stop {
    Linearizable,
    Exhausted(String),
}

impl<'c, 'a> Searcher<'c, 'a> {
    fn new(c: &'c Compiled<'a>) -> Self {
        let n = c.ops.len();
        let req = c.required;
        let mut order: Vec<(u64, u8, u32)> = Vec::with_capacity(2 * req);
        for (i, o) in c.ops[..req].iter().enumerate() {
            order.push((o.invoke, 0, 2 * i as u32));
            order.push((o.complete.expect("known"), 1, 2 * i as u32 + 1));
        }
        order.sort_unstable();
        let head = 2 * req as u32;
        let mut next = vec![NIL; 2 * req + 1];
        let mut prev = vec![NIL; 2 * req + 1];
        let mut last = head;
        for &(_, _, e) in &order {
            next[last as usize] = e;
            prev[e as usize] = last;
            last = e;
        }
        let uhead = n as u32;
        let mut unext = vec![NIL; n + 1];
        let mut uprev = vec![NIL; n + 1];
        let mut last = uhead;
        for u in req as u32..n as u32 {
            unext[last as usize] = u;
            uprev[u as usize] = last;
            last = u;
        }
        let canon = Canon::new(c);
        let mut cache = Cache::new((n - req).div_ceil(64));
        let root = cache
            .visit(
                &canon.known,
                canon.canonical(c.initial),
                &canon.unknown,
                canon.dead,
                NIL,
                &[],
            )
            .expect("the cache is empty");
        cache.recs[root as usize].on_path = true;
        Searcher {
            c,
            next,
            prev,
            head,
            unext,
            uprev,
            uhead,
            canon,
            cache,
            state: c.initial,
            stack: Vec::new(),
            root,
            required_left: req,
            unknown_used: 0,
            layers: Vec::new(),
            best: None,
            steps: 0,
            has_conditional_unknown: c.ops[req..]
                .iter()
                .any(|o| matches!(o.step, Step::Cas { .. } | Step::DeleteIf { .. })),
        }
    }

    fn unlink(next: &mut [u32], prev: &mut [u32], e: u32) {
        let (p, nx) = (prev[e as usize], next[e as usize]);
        next[p as usize] = nx;
        if nx != NIL {
            prev[nx as usize] = p;
        }
    }

    /// Re-links a node unlinked by `unlink` (in LIFO order).
    fn relink(next: &mut [u32], prev: &mut [u32], e: u32) {
        let (p, nx) = (prev[e as usize], next[e as usize]);
        next[p as usize] = e;
        if nx != NIL {
            prev[nx as usize] = e;
        }
    }

    fn current_rec(&self) -> u32 {
        self.stack
            .iter()
            .rev()
            .find(|f| f.rec != NIL)
            .map_or(self.root, |f| f.rec)
    }

    /// Linearizes `op` on the path (its step must be possible); `canon` already has it
    /// when `canon_done`.
    fn push(&mut self, op: u32, rec: u32, canon_done: bool) {
        let o = &self.c.ops[op as usize];
        let new_state = o.step.apply(self.state).expect("a recorded path is valid");
        if !canon_done {
            self.canon.linearize(op);
        }
        self.stack.push(Frame {
            op,
            before: self.state,
            rec,
        });
        if rec != NIL {
            self.cache.recs[rec as usize].on_path = true;
        }
        self.state = new_state;
        if o.complete.is_none() {
            Self::unlink(&mut self.unext, &mut self.uprev, op);
            self.unknown_used += 1;
        } else {
            Self::unlink(&mut self.next, &mut self.prev, 2 * op);
            Self::unlink(&mut self.next, &mut self.prev, 2 * op + 1);
            self.required_left -= 1;
        }
    }

    fn pop(&mut self) -> Frame {
        let f = self.stack.pop().expect("not at the root");
        if f.rec != NIL {
            self.cache.recs[f.rec as usize].on_path = false;
        }
        self.state = f.before;
        if self.c.ops[f.op as usize].complete.is_none() {
            Self::relink(&mut self.unext, &mut self.uprev, f.op);
            self.unknown_used -= 1;
        } else {
            Self::relink(&mut self.next, &mut self.prev, 2 * f.op + 1);
            Self::relink(&mut self.next, &mut self.prev, 2 * f.op);
            self.required_left += 1;
        }
        self.canon.unlinearize(f.op);
        f
    }

    /// Tries to linearize known op `op` next; true if it was (a new configuration).
    fn try_known(&mut self, op: u32) -> bool {
        let Some(new_state) = self.c.ops[op as usize].step.apply(self.state) else {
            return false;
        };
        self.canon.linearize(op);
        let parent = self.current_rec();
        let rec = self.cache.visit(
            &self.canon.known,
            self.canon.canonical(new_state),
            &self.canon.unknown,
            self.canon.dead,
            parent,
            &[op],
        );
        match rec {
            Some(rec) => {
                self.push(op, rec, true);
                true
            }
            None => {
                self.canon.unlinearize(op);
                false
            }
        }
    }

    /// Moves the current path to the configuration of record `target`.
    fn move_to(&mut self, target: u32) {
        let mut down = Vec::new();
        let mut r = target;
        while !self.cache.recs[r as usize].on_path {
            down.push(r);
            r = self.cache.recs[r as usize].parent;
        }
        while self.stack.last().map_or(self.root, |f| f.rec) != r {
            self.pop();
        }
        for &rec in down.iter().rev() {
            let (off, len) = {
                let x = &self.cache.recs[rec as usize];
                (x.path_off as usize, x.path_len as usize)
            };
            for i in 0..len {
                let op = self.cache.paths[off + i];
                self.push(op, if i + 1 == len { rec } else { NIL }, false);
            }
        }
    }

    fn count_step(&mut self, limits: &Limits) -> Result<(), Stop> {
        self.steps += 1;
        if self.steps & 0x3ff != 0 {
            return Ok(());
        }
        let why = if self.steps >= limits.max_steps {
            format!("step budget of {} exhausted", limits.max_steps)
        } else if self.cache.bytes() > limits.max_cache_bytes {
            format!("cache memory budget of {} bytes exhausted", limits.max_cache_bytes)
        } else if limits.deadline.is_some_and(|d| Instant::now() >= d) {
            "time limit reached".to_string()
        } else {
            return Ok(());
        };
        let deepest = self
            .best
            .as_ref()
            .map_or(0, |b| b.linearized.len())
            .max(self.stack.len());
        let n = self.c.ops.len();
        Err(Stop::Exhausted(format!(
            "{why} after {} steps on {n} operations ({} with unknown outcome); {} configurations cached, deepest partial linearization {deepest} operations, {} unknown operations in it",
            self.steps,
            n - self.c.required,
            self.cache.len(),
            self.best.as_ref().map_or(0, |b| b.linearized.iter().filter(|&&o| o as usize >= self.c.required).count()),
        )))
    }

    /// Layered pass: depth-first search over known ops from the current configuration,
    /// never going back above it; records seeds for later layers on the way.
    fn explore_layer(&mut self, limits: &Limits) -> Result<(), Stop> {
        let floor = self.stack.len();
        let mut cur = self.next[self.head as usize];
        loop {
            self.count_step(limits)?;
            debug_assert!(
                cur != NIL,
                "the known list ends with a return entry while known ops remain"
            );
            if cur & 1 == 0 {
                if self.try_known(cur >> 1) {
                    if self.required_left == 0 {
                        return Err(Stop::Linearizable);
                    }
                    cur = self.next[self.head as usize];
                } else {
                    cur = self.next[cur as usize];
                }
                continue;
            }
            // `cur` is the first return entry: every candidate known op was tried.
            let mut seeds = Vec::new();
            self.seed_runs(cur, limits, &mut seeds)?;
            for (rec, layer) in seeds {
                if self.layers.len() <= layer {
                    self.layers.resize_with(layer + 1, Vec::new);
                }
                self.layers[layer].push(rec);
            }
            self.note_dead_end(cur);
            if self.stack.len() == floor {
                return Ok(());
            }
            let f = self.pop();
            cur = self.next[2 * f.op as usize];
        }
    }

    /// Records, as seeds of later layers, the configurations "current + run of unknown
    /// ops + known op k" for every known candidate `k` impossible now but possible
    /// after the run. `ret` is the first return entry.
    fn seed_runs(&mut self, ret: u32, limits: &Limits, out: &mut Vec<(u32, usize)>) -> Result<(), Stop> {
        let mut blocked = Vec::new();
        let mut e = self.next[self.head as usize];
        while e != ret {
            if e & 1 == 0 && self.c.ops[(e >> 1) as usize].step.apply(self.state).is_none() {
                blocked.push(e >> 1);
            }
            e = self.next[e as usize];
        }
        if blocked.is_empty() || self.unext[self.uhead as usize] == NIL {
            return Ok(());
        }
        let t = self.c.ops[(ret >> 1) as usize].complete.expect("known");
        let parent = self.current_rec();
        let ctx = RunContext {
            t,
            blocked: &blocked,
            parent,
            limits,
        };
        let mut run: Vec<(u32, State)> = Vec::new();
        self.extend_run(&ctx, self.state, &mut run, out)
    }

    /// Extends `run` (ops and the state before each), now in state `s`, by one more
    /// unknown op in every useful way, recording the seeds it makes possible.
    fn extend_run(
        &mut self,
        ctx: &RunContext<'_>,
        s: State,
        run: &mut Vec<(u32, State)>,
        out: &mut Vec<(u32, usize)>,
    ) -> Result<(), Stop> {
        let (t, blocked, parent, limits) = (ctx.t, ctx.blocked, ctx.parent, ctx.limits);
        let mut u = self.unext[self.uhead as usize];
        let mut tried_dead_write = false;
        while u != NIL && self.c.ops[u as usize].invoke <= t {
            let this = u;
            u = self.unext[u as usize];
            self.count_step(limits)?;
            if self.canon.lin[this as usize] {
                continue; // already in this run
            }
            let step = self.c.ops[this as usize].step;
            if !run.is_empty() && matches!(step, Step::Write(_) | Step::Delete { .. }) {
                continue; // an unconditional op makes the run before it useless
            }
            let sym = self.c.sym_prev[this as usize];
            if sym != NIL && !self.canon.lin[sym as usize] {
                continue; // an interchangeable op invoked earlier is still pending
            }
            let Some(s1) = step.apply(s) else { continue };
            if s1 == self.state || run.iter().any(|&(_, before)| before == s1) {
                continue; // back to a state of this run: the loop can be cut out
            }
            if self.canon.counted_dead(this) {
                // Writes of dead values are interchangeable: only try one.
                if tried_dead_write {
                    continue;
                }
                tried_dead_write = true;
            }
            if !self.has_conditional_unknown
                && !blocked.iter().any(|&k| self.c.ops[k as usize].step.apply(s1).is_some())
            {
                continue; // enables nothing, and nothing could follow it in a run
            }
            self.canon.linearize(this);
            if self.canon.canonical(s1) == self.canon.canonical(s) {
                self.canon.unlinearize(this);
                continue; // changes nothing any remaining op can see
            }
            run.push((this, s));
            for &k in blocked {
                let Some(s2) = self.c.ops[k as usize].step.apply(s1) else {
                    continue;
                };
                if self.required_left == 1 {
                    self.canon.unlinearize(this);
                    return Err(Stop::Linearizable);
                }
                self.canon.linearize(k);
                let path: Vec<u32> = run.iter().map(|&(op, _)| op).chain([k]).collect();
                let rec = self.cache.visit(
                    &self.canon.known,
                    self.canon.canonical(s2),
                    &self.canon.unknown,
                    self.canon.dead,
                    parent,
                    &path,
                );
                self.canon.unlinearize(k);
                if let Some(rec) = rec {
                    out.push((rec, self.unknown_used + run.len()));
                }
            }
            let r = self.extend_run(ctx, s1, run, out);
            run.pop();
            self.canon.unlinearize(this);
            r?;
        }
        Ok(())
    }

    /// Depth-first pass: like the layered pass, but runs of unknown ops are explored
    /// right away, as children of the configuration (after its known children).
    fn explore_dfs(&mut self, limits: &Limits) -> Result<(), Stop> {
        struct Seeds {
            depth: usize,
            ret: u32,
            recs: Vec<u32>,
            next: usize,
        }
        let mut pending: Vec<Seeds> = Vec::new();
        let mut cur = self.next[self.head as usize];
        loop {
            self.count_step(limits)?;
            debug_assert!(
                cur != NIL,
                "the known list ends with a return entry while known ops remain"
            );
            if cur & 1 == 0 {
                if self.try_known(cur >> 1) {
                    if self.required_left == 0 {
                        return Err(Stop::Linearizable);
                    }
                    cur = self.next[self.head as usize];
                } else {
                    cur = self.next[cur as usize];
                }
                continue;
            }
            // Every known child was tried; now the runs of unknown ops.
            let depth = self.stack.len();
            if pending.last().map(|p| p.depth) != Some(depth) {
                let mut seeds = Vec::new();
                self.seed_runs(cur, limits, &mut seeds)?;
                pending.push(Seeds {
                    depth,
                    ret: cur,
                    recs: seeds.into_iter().map(|(rec, _)| rec).collect(),
                    next: 0,
                });
            }
            let top = pending.last_mut().expect("pushed above");
            if top.next < top.recs.len() {
                let seed = top.recs[top.next];
                top.next += 1;
                self.move_to(seed);
                cur = self.next[self.head as usize];
                continue;
            }
            pending.pop();
            self.note_dead_end(cur);
            if self.stack.is_empty() {
                return Ok(());
            }
            let f = self.pop();
            if self.cache.recs[f.rec as usize].path_len > 1 {
                // Back from a run of unknown ops: undo the run, then the parent's next run.
                while self.stack.last().is_some_and(|f| f.rec == NIL) {
                    self.pop();
                }
                cur = pending.last().expect("the parent's runs").ret;
            } else {
                cur = self.next[2 * f.op as usize];
            }
        }
    }

    /// Records the current configuration as the deepest dead end, if it is.
    fn note_dead_end(&mut self, ret: u32) {
        if self.best.as_ref().map(|b| b.linearized.len()) < Some(self.stack.len()) {
            self.best = Some(Failure {
                linearized: self.stack.iter().map(|f| f.op).collect(),
                state: self.state,
                blocked: ret >> 1,
                pending: self.candidates(ret),
            });
        }
    }

    /// The candidates of the current configuration (for explanations).
    fn candidates(&self, ret: u32) -> Vec<u32> {
        let mut out = Vec::new();
        let mut e = self.next[self.head as usize];
        while e != ret && e != NIL {
            if e & 1 == 0 {
                out.push(e >> 1);
            }
            e = self.next[e as usize];
        }
        let t = self.c.ops[(ret >> 1) as usize].complete.expect("known");
        let mut u = self.unext[self.uhead as usize];
        while u != NIL && self.c.ops[u as usize].invoke <= t {
            out.push(u);
            u = self.unext[u as usize];
        }
        out
    }

    fn run_dfs(&mut self, limits: &Limits) -> Result<(), Stop> {
        self.explore_dfs(limits)
    }

    fn run_layered(&mut self, limits: &Limits) -> Result<(), Stop> {
        self.explore_layer(limits)?;
        let mut layer = 1;
        while layer < self.layers.len() {
            let mut i = 0;
            while i < self.layers[layer].len() {
                let seed = self.layers[layer][i];
                i += 1;
                self.count_step(limits)?;
                // Skip it if a configuration recorded after it dominates it.
                let r = self.cache.recs[seed as usize];
                let (kw, uw) = (r.len as usize, self.cache.unknown_words);
                let (window, unknown) = self.cache.arena[r.off..r.off + kw + uw].split_at(kw);
                if self
                    .cache
                    .dominating(r.lo as usize, window, r.state, unknown, r.dead, seed)
                    .is_some()
                {
                    continue;
                }
                self.move_to(seed);
                self.explore_layer(limits)?;
            }
            self.layers[layer] = Vec::new();
            layer += 1;
        }
        Ok(())
    }
}

/// Runs the depth-first pass with `dfs_percent` of the budget, then, if it did not
/// finish, the layered pass with the rest. Both are complete searches.
fn search(c: &Compiled<'_>, limits: &Limits, dfs_percent: u32) -> (SearchResult, SearchStats) {
    let mut stats = SearchStats {
        steps: 0,
        cache_entries: 0,
    };
    if c.required == 0 {
        return (SearchResult::Linearizable, stats);
    }
    assert!(c.ops.len() < (NIL as usize - 2) / 2, "too many operations on one key");
    let start = Instant::now();
    let share = dfs_percent.min(100) as u64;
    let mut outcome = None;
    if share > 0 {
        let first = Limits {
            max_steps: if share == 100 {
                limits.max_steps
            } else {
                (limits.max_steps / 100).saturating_mul(share)
            },
            max_cache_bytes: limits.max_cache_bytes,
            deadline: limits
                .deadline
                .map(|d| start + d.saturating_duration_since(start).mul_f64(share as f64 / 100.0)),
        };
        let mut s = Searcher::new(c);
        let r = s.run_dfs(&first);
        stats.steps += s.steps;
        stats.cache_entries = s.cache.len();
        match r {
            Err(Stop::Exhausted(_)) if share < 100 => {}
            r => outcome = Some((r, s.best.take())),
        }
    }
    let (result, best) = match outcome {
        Some(o) => o,
        None => {
            let rest = Limits {
                max_steps: limits.max_steps.saturating_sub(stats.steps),
                max_cache_bytes: limits.max_cache_bytes,
                deadline: limits.deadline,
            };
            let mut s = Searcher::new(c);
            let r = s.run_layered(&rest);
            stats.steps += s.steps;
            stats.cache_entries = s.cache.len();
            (r, s.best.take())
        }
    };
    let result = match result {
        Ok(()) => SearchResult::NotLinearizable(best.expect("at least one dead end")),
        Err(Stop::Linearizable) => SearchResult::Linearizable,
        Err(Stop::Exhausted(reason)) => SearchResult::Exhausted(reason),
    };
    (result, stats)
}

fn check_key(
    history: &[Operation],
    key: &[u8],
    indices: &[usize],
    initial: Option<&[u8]>,
    budget: &Budget,
    total_deadline: Option<Instant>,
) -> KeyReport {
    let start = Instant::now();
    let c = Compiled::build(history, indices, initial);
    let mut report = KeyReport {
        key: key.to_vec(),
        ops: c.ops.len(),
        unknown_ops: c.ops.len() - c.required,
        dropped_ops: c.dropped,
        steps: 0,
        cache_entries: 0,
        elapsed: Duration::ZERO,
        result: KeyResult::Linearizable,
    };

    if let Some(result) = impossible_values(history, key, &c) {
        report.result = result;
        report.elapsed = start.elapsed();
        return report;
    }
    let deadline = match (budget.time_limit_per_key.map(|d| start + d), total_deadline) {
        (Some(a), Some(b)) => Some(a.min(b)),
        (a, b) => a.or(b),
    };
    if deadline.is_some_and(|d| Instant::now() >= d) {
        report.result = KeyResult::Inconclusive("time limit reached before this key was checked".to_string());
        report.elapsed = start.elapsed();
        return report;
    }
    let limits = Limits {
        max_steps: budget.max_steps_per_key,
        max_cache_bytes: budget.max_cache_bytes_per_key,
        deadline,
    };
    let (result, stats) = search(&c, &limits, budget.dfs_percent);
    report.steps = stats.steps;
    report.cache_entries = stats.cache_entries;
    report.result = match result {
        SearchResult::Linearizable => KeyResult::Linearizable,
        SearchResult::Exhausted(reason) => KeyResult::Inconclusive(reason),
        SearchResult::NotLinearizable(f) => explain(history, key, &c, &f),
    };
    report.elapsed = start.elapsed();
    report
}

/// Pre-pass: a known-outcome op that needs the register to hold a value that no
/// operation on this key could ever produce (and that is not the initial value).
fn impossible_values(history: &[Operation], key: &[u8], c: &Compiled<'_>) -> Option<KeyResult> {
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

const EXPLAIN_TAIL: usize = 12;

fn explain(history: &[Operation], key: &[u8], c: &Compiled<'_>, f: &Failure) -> KeyResult {
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

// ---------------------------------------------------------------------------------------
// Formatting
// ---------------------------------------------------------------------------------------

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

fn describe(history: &[Operation], i: usize) -> String {
    format!("#{i} {}", history[i])
}
