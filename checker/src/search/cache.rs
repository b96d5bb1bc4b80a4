//! Memoization of the search: every configuration visited, recorded so that reaching
//! it again, or reaching one that a visited configuration dominates, prunes the branch.
//!
//! Records also remember how they were reached (a trie of paths), so that the search can
//! move its current path to any recorded configuration (a seed of a later layer).

use std::collections::HashMap;
use std::hash::{BuildHasherDefault, Hasher};

use super::canon::Bits;
use crate::compile::{State, NIL};

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
pub(super) struct CacheRec {
    /// Next record with the same hash, or NIL.
    next: u32,
    pub(super) lo: u32,
    pub(super) len: u32,
    pub(super) state: State,
    pub(super) dead: u32,
    /// Offset in the arena of the known window words, followed by the unknown words.
    pub(super) off: usize,
    pub(super) parent: u32,
    pub(super) path_off: u32,
    pub(super) path_len: u32,
    /// On the search's current path.
    pub(super) on_path: bool,
}

/// The configurations visited so far: hash buckets (on the known part and state)
/// chaining records whose words live in one arena (no allocation per record).
///
/// A configuration is *dominated* by a visited one with the same linearized known ops
/// and canonical state, a subset of its linearized unknown ops (minus dead writes) and
/// no more dead writes linearized: the visited one has every option this one has, and
/// more, and it is (or will be) explored, so this one need not be.
pub(super) struct Cache {
    heads: HashMap<u64, u32, BuildHasherDefault<IdHasher>>,
    pub(super) recs: Vec<CacheRec>,
    pub(super) arena: Vec<u64>,
    pub(super) paths: Vec<u32>,
    pub(super) unknown_words: usize,
}

impl Cache {
    pub(super) fn new(unknown_words: usize) -> Cache {
        Cache {
            heads: HashMap::default(),
            recs: Vec::new(),
            arena: Vec::new(),
            paths: Vec::new(),
            unknown_words,
        }
    }

    /// The first record other than `skip` dominating the configuration, if any.
    pub(super) fn dominating(
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
    pub(super) fn visit(
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

    pub(super) fn len(&self) -> usize {
        self.recs.len()
    }

    pub(super) fn bytes(&self) -> usize {
        self.heads.capacity() * (8 + 4 + 1)
            + self.recs.capacity() * std::mem::size_of::<CacheRec>()
            + self.arena.capacity() * 8
            + self.paths.capacity() * 4
    }
}
