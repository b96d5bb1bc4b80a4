//! Runs of operations with unknown outcomes: the search linearizes them only in runs that
//! enable a blocked known operation, and enumerates those runs here.
//!
//! This is the reduction that keeps unknown outcomes (timeouts, lost connections) from
//! blowing the search up: an unknown operation may take effect at any time after its
//! invocation, or never, so trying each one everywhere is hopeless. Why runs lose no
//! linearization is argued on [`Searcher`]; the pruning rules are noted where they apply.

use super::{Searcher, Stop};
use crate::budget::Limits;
use crate::compile::{State, Step, NIL};

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

impl Searcher<'_, '_> {
    /// Records, as seeds of later layers, the configurations "current + run of unknown
    /// ops + known op k" for every known candidate `k` impossible now but possible
    /// after the run. `ret` is the first return entry.
    pub(super) fn seed_runs(&mut self, ret: u32, limits: &Limits, out: &mut Vec<(u32, usize)>) -> Result<(), Stop> {
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
}
