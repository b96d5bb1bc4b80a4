//! The search for a linearization of one key: Wing & Gong's algorithm with Lowe's
//! improvements (WGL, as in porcupine and Knossos), made to cope with many operations of
//! unknown outcome.
//!
//! This file holds the [`Searcher`]'s state and its moves (linearize an op, undo it,
//! jump to a recorded configuration, count a step against the budget), and [`search`],
//! which runs the two passes. The rest of the search is split by concern:
//! * `canon`: the canonical form of a configuration (dead values merged);
//! * `cache`: the configurations visited, and domination between them;
//! * `unknown_runs`: which runs of unknown operations are worth linearizing;
//! * `depth_first`: the pass that finds linearizations fast;
//! * `layered`: the pass that refutes histories full of unknown operations fast.

mod cache;
mod canon;
mod depth_first;
mod layered;
mod unknown_runs;

use std::time::Instant;

use crate::budget::Limits;
use crate::compile::{Compiled, State, Step, NIL};
use cache::Cache;
use canon::Canon;

/// Where the deepest dead end of a failed search was.
pub(crate) struct Failure {
    /// Ops linearized there, in order.
    pub(crate) linearized: Vec<u32>,
    /// The state after them.
    pub(crate) state: State,
    /// The completed op that could not be linearized in time.
    pub(crate) blocked: u32,
    /// The ops that could have been linearized next there (all refuted).
    pub(crate) pending: Vec<u32>,
}

/// How the search of one key ended.
pub(crate) enum SearchResult {
    Linearizable,
    NotLinearizable(Failure),
    Exhausted(String),
}

/// What the search of one key cost.
pub(crate) struct SearchStats {
    pub(crate) steps: u64,
    pub(crate) cache_entries: usize,
}

/// One linearized op on the current path.
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

    /// One step of a pass over the known candidates, at entry `cur` of the known list: a
    /// call entry's op is tried, and the entry to look at next is returned (the first
    /// one again if the op was linearized); at a return entry every candidate was tried,
    /// and `None` leaves it to the pass.
    #[inline]
    fn step_known(&mut self, cur: u32, limits: &Limits) -> Result<Option<u32>, Stop> {
        self.count_step(limits)?;
        debug_assert!(
            cur != NIL,
            "the known list ends with a return entry while known ops remain"
        );
        if cur & 1 != 0 {
            return Ok(None);
        }
        if self.try_known(cur >> 1) {
            if self.required_left == 0 {
                return Err(Stop::Linearizable);
            }
            Ok(Some(self.next[self.head as usize]))
        } else {
            Ok(Some(self.next[cur as usize]))
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
}

/// Runs the depth-first pass with `dfs_percent` of the budget, then, if it did not
/// finish, the layered pass with the rest. Both are complete searches.
pub(crate) fn search(c: &Compiled<'_>, limits: &Limits, dfs_percent: u32) -> (SearchResult, SearchStats) {
    let mut stats = SearchStats {
        steps: 0,
        cache_entries: 0,
    };
    if c.required == 0 {
        return (SearchResult::Linearizable, stats);
    }
    assert!(c.ops.len() < (NIL as usize - 2) / 2, "too many operations on one key");
    let share = dfs_percent.min(100) as u64;
    let mut outcome = None;
    if share > 0 {
        let first = limits.share(share, Instant::now());
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
            let rest = limits.rest(stats.steps);
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
