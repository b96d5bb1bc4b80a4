//! The layered pass: configurations explored by increasing number of unknown operations
//! linearized (layer L holds those reached with L of them).
//!
//! Exploring the configurations with fewer unknown operations first means that the ones
//! that merely consumed more of them are dominated by the time they come up, which
//! refutes histories full of unknown outcomes much faster than the depth-first pass.

use super::{Searcher, Stop};
use crate::budget::Limits;

impl Searcher<'_, '_> {
    /// Layered pass: depth-first search over known ops from the current configuration,
    /// never going back above it; records seeds for later layers on the way.
    fn explore_layer(&mut self, limits: &Limits) -> Result<(), Stop> {
        let floor = self.stack.len();
        let mut cur = self.next[self.head as usize];
        loop {
            if let Some(next) = self.step_known(cur, limits)? {
                cur = next;
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

    /// Runs the layered pass from the initial configuration.
    pub(super) fn run_layered(&mut self, limits: &Limits) -> Result<(), Stop> {
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
