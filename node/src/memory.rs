//! Giving the memory the node has freed back to the operating system.
//!
//! glibc's malloc keeps what a thread frees for later allocations instead of returning it,
//! except at the very top of a heap. A node's big transient allocations (a snapshot installed
//! or sent chunk by chunk, the engine's flushes and compactions, bursts of requests) leave free
//! holes in the middle of its heaps that count in its RSS until something reuses them: at 1 GB,
//! a node that had installed a snapshot and served gets and puts held 202 MB from the system
//! with 140 MB in use, and `malloc_trim` took it from 207 to 155 MB of RSS (BENCHMARKS.md, "At
//! scale"). So a thread of its own looks every [`TRIM_EVERY`] and trims once the process's
//! resident anonymous memory exceeds what the allocator has handed out by [`TRIM_WHEN_FREE`]
//! or more: freed memory still resident (after a trim the two meet again).
//!
//! A trim holds each arena's lock while it walks that arena (1.4–7.6 ms, measured under
//! 64-client puts at 1 GB), and the pages it returns fault back in when they are used again;
//! under a steady load, whose freed memory is soon reused, there is little to gain, hence the
//! threshold. The thread runs at the normal priority: at a low one it could be preempted
//! holding a lock the runtime waits for.

use std::time::{Duration, Instant};

/// How often the thread looks at the freed memory still resident.
pub const TRIM_EVERY: Duration = Duration::from_secs(10);

/// How much freed memory must still be resident before a trim is worth it.
pub const TRIM_WHEN_FREE: usize = 32 << 20;

/// The name of the thread that trims.
const THREAD_NAME: &str = "raftkv-trim";

/// Starts the thread that looks every [`TRIM_EVERY`], for as long as the process runs, and
/// trims when [`TRIM_WHEN_FREE`] or more of freed memory is still resident. Without glibc
/// there is nothing to trim and no thread.
pub fn spawn_trimmer() -> std::io::Result<()> {
    if cfg!(all(target_os = "linux", target_env = "gnu")) {
        std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(|| loop {
                std::thread::sleep(TRIM_EVERY);
                let retained = resident_but_free();
                if retained >= TRIM_WHEN_FREE {
                    let took = trim();
                    tracing::debug!(
                        retained_mib = retained >> 20,
                        took_ms = took.as_secs_f64() * 1e3,
                        "freed memory returned to the system"
                    );
                }
            })?;
    }
    Ok(())
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

/// Roughly how much of the process's resident anonymous memory the allocator holds free: the
/// resident pages not backed by a file, less what the allocator has handed out (0 without
/// glibc, or if /proc cannot be read). Thread stacks count as free here: a few MiB.
fn resident_but_free() -> usize {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    {
        // SAFETY: mallinfo2 takes nothing and returns the allocator's statistics by value.
        let info = unsafe { libc::mallinfo2() };
        anonymous_resident().saturating_sub(info.uordblks + info.hblkhd)
    }
    #[cfg(not(all(target_os = "linux", target_env = "gnu")))]
    0
}

/// Resident pages not backed by a file (`/proc/self/statm`: resident less shared), in bytes;
/// 0 if it cannot be read.
fn anonymous_resident() -> usize {
    let Ok(statm) = std::fs::read_to_string("/proc/self/statm") else {
        return 0;
    };
    let pages: Vec<usize> = statm.split_whitespace().filter_map(|f| f.parse().ok()).collect();
    // SAFETY: sysconf takes an integer and reads a constant of the system.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) } as usize;
    match pages.as_slice() {
        [_, resident, shared, ..] => resident.saturating_sub(*shared) * page,
        _ => 0,
    }
}

#[cfg(all(test, target_os = "linux", target_env = "gnu"))]
mod tests {
    use super::{anonymous_resident as rss, resident_but_free, trim};

    #[test]
    fn memory_freed_in_the_middle_of_a_heap_is_seen_and_goes_back_to_the_system() {
        const BLOCK: usize = 64 << 10; // below glibc's mmap threshold: from a heap
        const BLOCKS: usize = 768; // 48 MiB
                                   // Each block is followed by a small one that stays, so the freed blocks are holes in the
                                   // middle of the heap that free() alone never returns. Filled, so every page is resident.
        let mut freed = Vec::with_capacity(BLOCKS);
        let mut kept = Vec::with_capacity(BLOCKS);
        for _ in 0..BLOCKS {
            freed.push(vec![0xa5u8; BLOCK]);
            kept.push(vec![0x5au8; 64]);
        }
        drop(freed);
        let seen = resident_but_free();
        let before = rss();
        trim();
        let after = rss();
        assert!(
            seen >= BLOCKS * BLOCK / 2,
            "only {} KiB of the 48 MiB freed was seen resident",
            seen >> 10
        );
        assert!(
            before.saturating_sub(after) >= BLOCKS * BLOCK / 2,
            "trimming returned {} KiB of the 48 MiB freed (RSS {} KiB -> {} KiB)",
            before.saturating_sub(after) >> 10,
            before >> 10,
            after >> 10
        );
        assert!(
            resident_but_free() + BLOCKS * BLOCK / 2 <= seen,
            "after a trim, little freed memory is left resident"
        );
        assert_eq!(
            kept.iter().map(|k| k[63]).max(),
            Some(0x5a),
            "what is kept is untouched"
        );
    }
}
