//! When a node builds a snapshot: after `--snapshot-after-logs` entries since the last one, and,
//! once snapshots are large, only after the log since the last one holds a set share of the
//! last snapshot's size.
//!
//! A snapshot is the whole state machine: building one reads every key and writes a file as
//! large as the data. openraft's own policy counts entries only, so with 1 GB loaded and 64
//! clients a node rebuilt a ~1 GB snapshot every few seconds, the scan and the write competing
//! with the puts for the cores and the disk. Like etcd's snapshot-count, but aware of the size:
//! the rule below bounds the snapshot work to [`SNAPSHOT_WORK_PER_LOG_BYTE`] bytes per byte
//! logged, and the log kept beyond a snapshot to a quarter of it (the disk budget is 2.5× the
//! data; see BENCHMARKS.md, "At scale").
//!
//! openraft runs with `SnapshotPolicy::Never`; [`run`] watches the node's metrics and calls
//! `raft.trigger().snapshot()` when [`SnapshotRule::should_snapshot`] says so. Log purging is
//! openraft's, as before: only behind a snapshot it has built (durable) or installed.
//!
//! [`LogVolume`] is what the state machine tells the rule: the bytes of log entries applied
//! since the last snapshot's point, and that snapshot's size.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::raft_watch::Sampled;
use crate::types::Raft;

/// Below this snapshot size only the entry count decides: such a snapshot is cheap to rebuild,
/// and small clusters (tests pass `--snapshot-after-logs 20`) keep snapshotting every N entries.
pub const SIZE_RULE_FROM_SNAPSHOT_BYTES: u64 = 64 << 20;
/// Above [`SIZE_RULE_FROM_SNAPSHOT_BYTES`], the log since the last snapshot must hold at least
/// the last snapshot's size divided by this before the next one is built: each snapshot then
/// costs at most this many bytes written (and read) per byte logged, and the log kept beyond a
/// snapshot is at most this share of it.
pub const SNAPSHOT_WORK_PER_LOG_BYTE: u64 = 4;

/// How often, at most, the rule is checked against the applied index (a snapshot asked for
/// this much later makes no difference; a check at every apply woke the task several times a
/// write).
const CHECK_INTERVAL: Duration = Duration::from_millis(100);

/// When to build a snapshot, from what has happened since the last one.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SnapshotRule {
    /// Entries applied since the last snapshot before the next (`--snapshot-after-logs`).
    pub after_entries: u64,
}

/// What has happened since the last snapshot, as the rule sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SinceLastSnapshot {
    /// Entries applied since the last snapshot (or the last one asked for).
    pub entries: u64,
    /// Bytes of the log entries applied since the last snapshot's point.
    pub log_bytes: u64,
    /// The size of the last snapshot's file (0: none yet).
    pub snapshot_bytes: u64,
}

impl SnapshotRule {
    /// The log bytes needed since a snapshot of `snapshot_bytes` before the next one.
    pub fn log_bytes_needed(snapshot_bytes: u64) -> u64 {
        if snapshot_bytes < SIZE_RULE_FROM_SNAPSHOT_BYTES {
            0
        } else {
            snapshot_bytes / SNAPSHOT_WORK_PER_LOG_BYTE
        }
    }

    /// Whether to build a snapshot now.
    pub fn should_snapshot(&self, since: SinceLastSnapshot) -> bool {
        since.entries >= self.after_entries && since.log_bytes >= Self::log_bytes_needed(since.snapshot_bytes)
    }
}

/// The log volume since the last snapshot, kept by the state machine, read by [`run`].
#[derive(Debug, Default)]
pub struct LogVolume {
    /// Bytes of every log entry applied since the node started.
    applied_bytes: AtomicU64,
    /// `applied_bytes` at the point of the last snapshot built or installed.
    applied_bytes_at_snapshot: AtomicU64,
    /// The size of the last snapshot's file.
    snapshot_bytes: AtomicU64,
}

impl LogVolume {
    /// A volume for a node whose current snapshot file holds `snapshot_bytes`. Entries applied
    /// before the node started are not counted: after a restart the next snapshot may come up
    /// to one interval late.
    pub fn new(snapshot_bytes: u64) -> Arc<LogVolume> {
        let volume = LogVolume::default();
        volume.snapshot_bytes.store(snapshot_bytes, Ordering::Relaxed);
        Arc::new(volume)
    }

    /// Counts `bytes` of log entries applied.
    pub fn applied(&self, bytes: u64) {
        self.applied_bytes.fetch_add(bytes, Ordering::Relaxed);
    }

    /// The mark of the state applied so far, to give [`LogVolume::snapshot_taken`] once a
    /// snapshot of that state is built.
    pub fn mark(&self) -> u64 {
        self.applied_bytes.load(Ordering::Relaxed)
    }

    /// A snapshot of the state at `mark` is now the node's, its file `snapshot_bytes` long.
    pub fn snapshot_taken(&self, mark: u64, snapshot_bytes: u64) {
        if self.applied_bytes_at_snapshot.fetch_max(mark, Ordering::Relaxed) <= mark {
            self.snapshot_bytes.store(snapshot_bytes, Ordering::Relaxed);
        }
    }

    /// Log bytes applied since the last snapshot's point.
    pub fn since_snapshot(&self) -> u64 {
        self.mark()
            .saturating_sub(self.applied_bytes_at_snapshot.load(Ordering::Relaxed))
    }

    /// The last snapshot's size.
    pub fn snapshot_bytes(&self) -> u64 {
        self.snapshot_bytes.load(Ordering::Relaxed)
    }
}

/// Asks openraft for a snapshot whenever `rule` says so, until raft stops.
pub async fn run(raft: Raft, volume: Arc<LogVolume>, rule: SnapshotRule) {
    let mut metrics = Sampled::new(&raft, CHECK_INTERVAL);
    // The applied index a snapshot was last asked for: while it is being built, the entry
    // count starts from there (as openraft's own policy does), so it is not asked for again
    // at every apply.
    let mut asked_at: Option<u64> = None;
    loop {
        let (applied, snapshot) = {
            let m = metrics.latest();
            (m.last_applied.map(|l| l.index), m.snapshot.map(|l| l.index))
        };
        if let Some(applied) = applied {
            let since = SinceLastSnapshot {
                entries: entries_since(applied, snapshot.max(asked_at)),
                log_bytes: volume.since_snapshot(),
                snapshot_bytes: volume.snapshot_bytes(),
            };
            if rule.should_snapshot(since) {
                tracing::debug!(?since, "asking for a snapshot");
                if raft.trigger().snapshot().await.is_err() {
                    return;
                }
                asked_at = Some(applied);
            }
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}

/// Entries applied after index `base` (all of them up to `applied` when there is none: log
/// indexes start at 0).
fn entries_since(applied: u64, base: Option<u64>) -> u64 {
    match base {
        Some(base) => applied.saturating_sub(base),
        None => applied + 1,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MIB: u64 = 1 << 20;

    fn since(entries: u64, log_bytes: u64, snapshot_bytes: u64) -> SinceLastSnapshot {
        SinceLastSnapshot {
            entries,
            log_bytes,
            snapshot_bytes,
        }
    }

    #[test]
    fn small_snapshots_are_taken_every_n_entries_whatever_the_log_bytes() {
        let rule = SnapshotRule { after_entries: 20 };
        assert!(!rule.should_snapshot(since(19, 0, 0)));
        assert!(rule.should_snapshot(since(20, 0, 0)));
        assert!(rule.should_snapshot(since(20, 1, 10 * MIB)));
        assert!(rule.should_snapshot(since(500, 0, 64 * MIB - 1)));
    }

    #[test]
    fn large_snapshots_wait_for_a_quarter_of_their_size_of_log_and_n_entries() {
        let rule = SnapshotRule { after_entries: 5000 };
        let gib = 1024 * MIB;
        assert!(!rule.should_snapshot(since(1_000_000, gib / 4 - 1, gib)));
        assert!(rule.should_snapshot(since(5000, gib / 4, gib)));
        assert!(
            !rule.should_snapshot(since(4999, gib, gib)),
            "the entry count still applies"
        );
        assert!(!rule.should_snapshot(since(5000, 15 * MIB, 64 * MIB)));
        assert!(rule.should_snapshot(since(5000, 16 * MIB, 64 * MIB)));
    }

    #[test]
    fn the_snapshot_work_per_log_byte_is_bounded_above_the_size_floor() {
        for snapshot_bytes in [64 * MIB, 300 * MIB, 1 << 30, 100 << 30] {
            let needed = SnapshotRule::log_bytes_needed(snapshot_bytes);
            assert!(
                snapshot_bytes / needed <= SNAPSHOT_WORK_PER_LOG_BYTE,
                "{snapshot_bytes}"
            );
        }
    }

    #[test]
    fn the_volume_counts_from_the_point_of_the_last_snapshot() {
        let volume = LogVolume::new(100);
        assert_eq!(volume.snapshot_bytes(), 100);
        volume.applied(10);
        let mark = volume.mark();
        volume.applied(5);
        assert_eq!(volume.since_snapshot(), 15);
        volume.snapshot_taken(mark, 200);
        assert_eq!((volume.since_snapshot(), volume.snapshot_bytes()), (5, 200));
        // An older snapshot finishing after a newer one does not move the point back.
        volume.snapshot_taken(0, 150);
        assert_eq!((volume.since_snapshot(), volume.snapshot_bytes()), (5, 200));
    }

    #[test]
    fn entries_are_counted_from_the_snapshot_or_the_last_request() {
        assert_eq!(entries_since(9, None), 10);
        assert_eq!(entries_since(9, Some(4)), 5);
        assert_eq!(entries_since(3, Some(4)), 0);
    }
}
