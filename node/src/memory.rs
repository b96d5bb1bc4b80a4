//! The node's use of glibc's malloc: how many arenas it may have, and giving the memory it
//! has freed back to the operating system.
//!
//! glibc's malloc keeps what a thread frees for later allocations instead of returning it,
//! except at the very top of a heap. A node's big transient allocations (a snapshot installed
//! or sent chunk by chunk, the engine's flushes and compactions, bursts of requests) leave free
//! holes in the middle of its heaps that count in its RSS until something reuses them: at 1 GB,
//! a node that had installed a snapshot and served gets and puts held 202 MB from the system
//! with 140 MB in use, and `malloc_trim` took it from 207 to 155 MB of RSS (BENCHMARKS.md, "At
//! scale"). So a thread of its own looks every [`TRIM_EVERY`] and trims once the process's
//! resident memory has grown by [`TRIM_AFTER_GROWTH`] or more since its last trim (or its
//! start). Under a steady load, whose freed memory is soon reused, the RSS stays level and
//! nothing is trimmed; a trim costs each arena's lock while it walks that arena (1.4–7.6 ms,
//! measured under 64-client puts at 1 GB) and page faults when the pages are used again.
//! Growth that is memory in use (the block cache filling) moves the mark up with it, so it is
//! not trimmed again and again. The thread runs at the normal priority: at a low one it could
//! be preempted holding a lock the runtime waits for.

use std::time::{Duration, Instant};

/// How often the thread looks at the process's resident memory.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// How much the resident memory must have grown since the last trim for the next one.
pub const TRIM_AFTER_GROWTH: usize = 32 << 20;

/// The name of the thread that trims.
const THREAD_NAME: &str = "raftkv-trim";

/// glibc malloc arenas the node may use, unless `MALLOC_ARENA_MAX` says otherwise. glibc gives
/// each thread that meets contention an arena of its own (up to 8 per core), and memory freed
/// in one is kept for that arena: the engine's flush and compaction threads, the WAL thread and
/// each snapshot build left their own high-water marks. With 1 GB loaded, after 60 s of
/// linearizable gets and 90 s of puts with a snapshot build on each node, the nodes' RSS peaked
/// at 184-211 MB with the default and 150-172 MB with 2 (two runs each; BENCHMARKS.md, "At
/// scale"); throughput was the same within the noise.
#[cfg(all(target_os = "linux", target_env = "gnu"))]
const MALLOC_ARENAS: libc::c_int = 2;

/// Caps glibc's malloc arenas at [`MALLOC_ARENAS`]; first thing in `main`, before any thread.
pub fn limit_malloc_arenas() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    if std::env::var_os("MALLOC_ARENA_MAX").is_none() {
        // SAFETY: mallopt takes two integers and changes only the allocator's own settings; no
        // other thread exists yet to allocate meanwhile.
        unsafe {
            libc::mallopt(libc::M_ARENA_MAX, MALLOC_ARENAS);
        }
    }
}

/// Starts the thread that looks every [`TRIM_EVERY`], for as long as the process runs, and
/// trims when the resident memory has grown by [`TRIM_AFTER_GROWTH`] since the last trim.
/// Without glibc there is nothing to trim and no thread.
pub fn spawn_trimmer() -> std::io::Result<()> {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        std::thread::Builder::new().name(THREAD_NAME.to_string()).spawn(|| {
            let mut mark = resident();
            loop {
                std::thread::sleep(TRIM_EVERY);
                let now = resident();
                if trim_due(now, mark) {
                    let took = trim();
                    mark = resident();
                    tracing::debug!(
                        before_mib = now >> 20,
                        after_mib = mark >> 20,
                        took_ms = took.as_secs_f64() * 1e3,
                        "freed memory returned to the system"
                    );
                }
            }
        })?;
    }
    Ok(())
}

/// Whether resident memory `now` has grown enough past `mark` (the resident memory after the
/// last trim) for a trim.
fn trim_due(now: usize, mark: usize) -> bool {
    now >= mark.saturating_add(TRIM_AFTER_GROWTH)
}

/// Returns to the system the whole pages that the allocator holds free, in every arena; says
/// how long that took.
pub fn trim() -> Duration {
    let started = Instant::now();
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: malloc_trim takes an integer and only changes the allocator's own state, under
    // its own locks.
    unsafe {
        libc::malloc_trim(0);
    }
    started.elapsed()
}

/// The process's resident memory (`/proc/self/statm`), in bytes; 0 if it cannot be read.
pub fn resident() -> usize {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let resident: usize = statm
        .split_whitespace()
        .nth(1)
        .and_then(|f| f.parse().ok())
        .unwrap_or(0);
    // SAFETY: sysconf takes an integer and reads a constant of the system.
    resident * unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize
}

#[cfg(test)]
mod tests {
    use super::{trim_due, TRIM_AFTER_GROWTH};

    #[test]
    fn a_trim_is_due_once_the_resident_memory_grew_enough_since_the_last() {
        let mark = 150 << 20;
        assert!(!trim_due(mark, mark), "level: nothing to do");
        assert!(!trim_due(mark + TRIM_AFTER_GROWTH - 1, mark));
        assert!(trim_due(mark + TRIM_AFTER_GROWTH, mark));
        assert!(!trim_due(mark - (64 << 20), mark), "shrunk: nothing to do");
        assert!(trim_due(TRIM_AFTER_GROWTH, 0), "from nothing");
    }
}
