//! The depth-first pass: from each configuration, its known children first, then the
//! runs of unknown operations right after them.
//!
//! It finds a linearization fast when there is one, so it runs first, with
//! [`Budget::dfs_percent`](crate::Budget::dfs_percent) of the budget; if it does not
//! finish, the layered pass takes over.

use super::{Searcher, Stop};
use crate::budget::Limits;
use crate::compile::NIL;

impl Searcher<'_, '_> {
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
            if let Some(next) = self.step_known(cur, limits)? {
                cur = next;
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

    /// Runs the depth-first pass from the initial configuration.
    pub(super) fn run_dfs(&mut self, limits: &Limits) -> Result<(), Stop> {
        self.explore_dfs(limits)
    }
}
