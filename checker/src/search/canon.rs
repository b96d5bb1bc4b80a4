//! The canonical form of a search configuration: which operations are linearized, and
//! the register state, with everything no remaining operation can tell apart merged.
//!
//! The cache compares configurations in this form, so the merges here (dead values,
//! interchangeable writes of them) are what let it prune configurations that differ only
//! in ways that cannot matter any more.

use crate::compile::{Compiled, State, Step, ABSENT, NIL, UNOBSERVED};

/// The set of linearized ops, with its canonical compact form maintained incrementally:
/// `lo` = first word not all ones, `hi` = one past the last non-zero word. Two sets are
/// equal iff their `(lo, words[lo..hi])` are.
pub(super) struct Bits {
    words: Vec<u64>,
    pub(super) lo: usize,
    hi: usize,
}

impl Bits {
    pub(super) fn new(n: usize) -> Bits {
        Bits {
            words: vec![0; n.div_ceil(64)],
            lo: 0,
            hi: 0,
        }
    }

    #[inline]
    pub(super) fn set(&mut self, i: usize) {
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
    pub(super) fn clear(&mut self, i: usize) {
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
    pub(super) fn window(&self) -> &[u64] {
        &self.words[self.lo..self.hi.max(self.lo)]
    }
}

/// The canonical form of a configuration, maintained incrementally.
///
/// A value is *dead* once every operation that compares the register against it has
/// been linearized: from then on no remaining operation can tell it apart from any
/// other dead value (a bisimulation), so a dead state is recorded as UNOBSERVED, and
/// the unknown writes of dead values are interchangeable (all enabled, same effect,
/// return at +infinity): what matters is how many of them were linearized, not which.
pub(super) struct Canon {
    required: usize,
    /// Every linearized op.
    pub(super) lin: Vec<bool>,
    /// Linearized known ops.
    pub(super) known: Bits,
    /// Linearized unknown ops (bit `op - required`), minus the writes of dead values.
    pub(super) unknown: Vec<u64>,
    /// Linearized unknown writes of dead values.
    pub(super) dead: u32,
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
    pub(super) fn new(c: &Compiled<'_>) -> Canon {
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
    pub(super) fn canonical(&self, s: State) -> State {
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
    pub(super) fn counted_dead(&self, op: u32) -> bool {
        let w = self.unknown_write_of[op as usize];
        w != NIL && self.observers_left[w as usize] == 0
    }

    pub(super) fn linearize(&mut self, op: u32) {
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
    pub(super) fn unlinearize(&mut self, op: u32) {
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
