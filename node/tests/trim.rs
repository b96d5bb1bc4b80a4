//! `raftkv_node::memory::trim` returns freed memory to the system. A test binary of its own:
//! other tests allocating beside it in the same process would move the RSS it measures.

#[cfg(all(target_os = "linux", target_env = "gnu"))]
#[test]
fn memory_freed_in_the_middle_of_a_heap_goes_back_to_the_system() {
    use raftkv_node::memory::{resident, trim};
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
    let before = resident();
    trim();
    let after = resident();
    assert!(
        before.saturating_sub(after) >= BLOCKS * BLOCK / 2,
        "trimming returned {} KiB of the 48 MiB freed (RSS {} KiB -> {} KiB)",
        before.saturating_sub(after) >> 10,
        before >> 10,
        after >> 10
    );
    assert_eq!(
        kept.iter().map(|k| k[63]).max(),
        Some(0x5a),
        "what is kept is untouched"
    );
}
