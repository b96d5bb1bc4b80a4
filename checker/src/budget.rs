//! How much a check may spend: [`Budget`], what the caller grants (steps, cache memory,
//! wall time, threads, and the share of the depth-first pass), and [`Limits`], what one
//! search of one key gets of it.
//!
//! A budget exists because linearizability checking is NP-complete: a pathological
//! history must end in an inconclusive verdict, not in a hung test.

use std::time::{Duration, Instant};

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

/// The bounds of one search of one key, derived from a [`Budget`].
pub(crate) struct Limits {
    pub(crate) max_steps: u64,
    pub(crate) max_cache_bytes: usize,
    /// When the search must stop: the key's own time limit or the whole check's,
    /// whichever comes first.
    pub(crate) deadline: Option<Instant>,
}

impl Limits {
    /// The limits of the key whose check started at `start`.
    pub(crate) fn for_key(budget: &Budget, start: Instant, total_deadline: Option<Instant>) -> Limits {
        let deadline = match (budget.time_limit_per_key.map(|d| start + d), total_deadline) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        };
        Limits {
            max_steps: budget.max_steps_per_key,
            max_cache_bytes: budget.max_cache_bytes_per_key,
            deadline,
        }
    }

    /// `percent` (at most 100) of the steps and of the time left from `now`, for a first
    /// pass; the cache memory bound is not shared (each pass starts with an empty cache).
    pub(crate) fn share(&self, percent: u64, now: Instant) -> Limits {
        Limits {
            max_steps: if percent == 100 {
                self.max_steps
            } else {
                (self.max_steps / 100).saturating_mul(percent)
            },
            max_cache_bytes: self.max_cache_bytes,
            deadline: self
                .deadline
                .map(|d| now + d.saturating_duration_since(now).mul_f64(percent as f64 / 100.0)),
        }
    }

    /// What a second pass gets once a first one took `steps_used` steps.
    pub(crate) fn rest(&self, steps_used: u64) -> Limits {
        Limits {
            max_steps: self.max_steps.saturating_sub(steps_used),
            max_cache_bytes: self.max_cache_bytes,
            deadline: self.deadline,
        }
    }
}
