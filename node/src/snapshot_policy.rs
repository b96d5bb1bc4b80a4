//! When a node takes a snapshot: after `--snapshot-after-logs` entries since the last one while
//! the state machine is small, and whenever the log since the last one holds a set share of the
//! state machine's size on disk (of [`SIZE_RULE_FROM_STATE_BYTES`] at least), whatever the count.
//!
//! Taking a snapshot writes nothing (`store/snapshot_file.rs`): it marks the point openraft may
//! purge the log up to, the log store making the engine durable first. What a snapshot costs is
//! later: a follower that falls behind the purged log gets the whole state machine (a scan and
//! a file as large as the data, then the transfer), where one within the log catches up from
//! it. So, like etcd's snapshot-count but aware of the size, the log on disk is a bounded share
//! of the state machine's size: up to an eighth of it kept behind the last snapshot, and up to
//! an eighth more before the next, a quarter in all. A follower that missed less than the log
//! kept catches up from it; and the log takes at most a quarter of the state's size on disk
//! beside it (the disk budget is 2.5× the data; see BENCHMARKS.md, "At scale").
//!
//! openraft runs with `SnapshotPolicy::Never`; [`run`] watches the node's metrics and calls
//! `raft.trigger().snapshot()` when [`SnapshotRule::should_snapshot`] says so.
//!
//! Purging is [`run`]'s too (openraft's own, by entry count alone, is off): once a snapshot is
//! taken or installed, the log is purged up to it but for what [`KeepRule`] keeps behind it,
//! `--keep-logs-after-snapshot` entries and no more than the same byte cap. An entry is a write
//! group of up to 1 MiB, so 1 000 entries kept by count alone could be a GiB of log beside a
//! few MB of data. openraft purges only logs a snapshot holds, and a leader only once no
//! replication still reads them.
//!
//! [`LogVolume`] is what the state machine tells the rule: the bytes of log entries applied
//! since the last snapshot's point, and the state machine's size on disk then.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::raft_watch::Sampled;
use crate::store::wal::WalReader;
use crate::types::Raft;

/// Below this state machine size the entry count decides (or the log's bytes, at most a
/// [`STATE_BYTES_PER_LOG_BYTE`]th of this size): such a state is cheap to send whole, and small
/// clusters (tests pass `--snapshot-after-logs 20`) keep snapshotting every N entries.
pub const SIZE_RULE_FROM_STATE_BYTES: u64 = 64 << 20;
/// The log since the last snapshot holds the state machine's size (at least
/// [`SIZE_RULE_FROM_STATE_BYTES`]) divided by this when the next one is taken, however many
/// entries that is; and the log kept behind a snapshot is at most as much. So the log on disk
/// is up to twice this share of the state, a quarter of it (with a quarter each, the log was
/// up to half the state, ~50 MB at 100 MB of data: issue 13's space budget is 2.5× the data
/// for everything). Above [`SIZE_RULE_FROM_STATE_BYTES`] it is also the least: fewer entries
/// than that wait.
pub const STATE_BYTES_PER_LOG_BYTE: u64 = 8;

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
    /// The state machine's size on disk at the last snapshot (0: none yet).
    pub state_bytes: u64,
}

impl SnapshotRule {
    /// The log bytes since a snapshot of a state machine of `state_bytes` at which the next one
    /// is taken whatever the entry count: with large entries (a write group at 64 clients is tens
    /// of KiB) `--snapshot-after-logs` entries alone are many times the state.
    pub fn log_bytes_cap(state_bytes: u64) -> u64 {
        state_bytes.max(SIZE_RULE_FROM_STATE_BYTES) / STATE_BYTES_PER_LOG_BYTE
    }

    /// Whether to build a snapshot now: the log bytes decide, and below
    /// [`SIZE_RULE_FROM_STATE_BYTES`] of state the entry count may decide sooner.
    pub fn should_snapshot(&self, since: SinceLastSnapshot) -> bool {
        let small = since.state_bytes < SIZE_RULE_FROM_STATE_BYTES;
        since.log_bytes >= Self::log_bytes_cap(since.state_bytes) || (small && since.entries >= self.after_entries)
    }
}

/// How much log is kept behind a snapshot, for followers that are a little behind to catch
/// up from: at most [`KeepRule::entries`] entries and at most
/// [`SnapshotRule::log_bytes_cap`] bytes, whichever is less.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeepRule {
    /// `--keep-logs-after-snapshot`.
    pub entries: u64,
}

impl KeepRule {
    /// The first index the entry count keeps behind a snapshot up to `snapshot`.
    pub fn first_by_count(&self, snapshot: u64) -> u64 {
        (snapshot + 1).saturating_sub(self.entries)
    }

    /// The index to purge the log up to (inclusive) behind a snapshot up to `snapshot`, given
    /// `first_within_bytes`: the lowest index from which the log up to `snapshot` fits in the
    /// byte cap. None: nothing to purge.
    pub fn purge_upto(&self, snapshot: u64, first_within_bytes: u64) -> Option<u64> {
        let first_kept = self.first_by_count(snapshot).max(first_within_bytes).min(snapshot + 1);
        first_kept.checked_sub(1)
    }
}

/// The log volume since the last snapshot, kept by the state machine, read by [`run`].
#[derive(Debug, Default)]
pub struct LogVolume {
    /// Bytes of every log entry applied since the node started.
    applied_bytes: AtomicU64,
    /// `applied_bytes` at the point of the last snapshot built or installed.
    applied_bytes_at_snapshot: AtomicU64,
    /// The state machine's size on disk at the last snapshot.
    state_bytes: AtomicU64,
}

impl LogVolume {
    /// A volume for a node whose state machine takes `state_bytes` on disk. Entries applied
    /// before the node started are not counted: after a restart the next snapshot may come up
    /// to one interval late.
    pub fn new(state_bytes: u64) -> Arc<LogVolume> {
        let volume = LogVolume::default();
        volume.state_bytes.store(state_bytes, Ordering::Relaxed);
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

    /// A snapshot of the state at `mark` is now the node's, the state machine `state_bytes` on disk.
    pub fn snapshot_taken(&self, mark: u64, state_bytes: u64) {
        if self.applied_bytes_at_snapshot.fetch_max(mark, Ordering::Relaxed) <= mark {
            self.state_bytes.store(state_bytes, Ordering::Relaxed);
        }
    }

    /// Log bytes applied since the last snapshot's point, or since `asked` (a [`LogVolume::mark`]
    /// taken when a snapshot not yet built was asked for) if that is later.
    pub fn since_snapshot(&self, asked: Option<u64>) -> u64 {
        let base = self.applied_bytes_at_snapshot.load(Ordering::Relaxed);
        self.mark().saturating_sub(base.max(asked.unwrap_or(0)))
    }

    /// The state machine's size on disk at the last snapshot.
    pub fn state_bytes(&self) -> u64 {
        self.state_bytes.load(Ordering::Relaxed)
    }
}

/// Asks openraft for a snapshot whenever `rule` says so, and to purge the log behind each
/// snapshot as `keep` says, until raft stops. `log` is the node's log, whose records' sizes
/// the purge rule counts.
pub async fn run(raft: Raft, volume: Arc<LogVolume>, rule: SnapshotRule, keep: KeepRule, log: WalReader) {
    let mut metrics = Sampled::new(&raft, CHECK_INTERVAL);
    // The applied index and the log volume's mark when a snapshot was last asked for: while it
    // is being built, the entries and bytes are counted from there (as openraft's own policy
    // does), so it is not asked for again at every apply.
    let mut asked_at: Option<u64> = None;
    let mut asked_mark: Option<u64> = None;
    // The snapshot whose purge was last asked for: once per snapshot (a leader's purge that
    // replication holds back is openraft's to retry).
    let mut purged_behind: Option<u64> = None;
    loop {
        let (applied, snapshot, purged) = {
            let m = metrics.latest();
            (
                m.last_applied.map(|l| l.index),
                m.snapshot.map(|l| l.index),
                m.purged.map(|l| l.index),
            )
        };
        if let Some(snapshot) = snapshot.filter(|s| Some(*s) != purged_behind) {
            let bytes = SnapshotRule::log_bytes_cap(volume.state_bytes());
            let within = log.first_within_bytes(keep.first_by_count(snapshot), snapshot, bytes);
            let upto = keep.purge_upto(snapshot, within);
            if let Some(upto) = upto.filter(|u| Some(*u) > purged) {
                tracing::debug!(snapshot, upto, "purging the log behind a snapshot");
                if raft.trigger().purge_log(upto).await.is_err() {
                    return;
                }
            }
            purged_behind = Some(snapshot);
        }
        if let Some(applied) = applied {
            let since = SinceLastSnapshot {
                entries: entries_since(applied, snapshot.max(asked_at)),
                log_bytes: volume.since_snapshot(asked_mark),
                state_bytes: volume.state_bytes(),
            };
            if rule.should_snapshot(since) {
                tracing::debug!(?since, "asking for a snapshot");
                if raft.trigger().snapshot().await.is_err() {
                    return;
                }
                asked_at = Some(applied);
                asked_mark = Some(volume.mark());
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

    fn since(entries: u64, log_bytes: u64, state_bytes: u64) -> SinceLastSnapshot {
        SinceLastSnapshot {
            entries,
            log_bytes,
            state_bytes,
        }
    }

    #[test]
    fn small_snapshots_are_taken_every_n_entries_or_8_mib_of_log() {
        let rule = SnapshotRule { after_entries: 20 };
        assert!(!rule.should_snapshot(since(19, 0, 0)));
        assert!(rule.should_snapshot(since(20, 0, 0)));
        assert!(rule.should_snapshot(since(20, 1, 10 * MIB)));
        assert!(rule.should_snapshot(since(500, 0, 64 * MIB - 1)));
        let rule = SnapshotRule { after_entries: 5000 };
        assert!(!rule.should_snapshot(since(100, 8 * MIB - 1, 10 * MIB)));
        assert!(
            rule.should_snapshot(since(100, 8 * MIB, 10 * MIB)),
            "100 entries of 80 KiB: the bytes decide"
        );
    }

    #[test]
    fn large_states_wait_for_an_eighth_of_their_size_of_log_whatever_the_entries() {
        let rule = SnapshotRule { after_entries: 5000 };
        let gib = 1024 * MIB;
        assert!(!rule.should_snapshot(since(1_000_000, gib / 8 - 1, gib)));
        assert!(rule.should_snapshot(since(5000, gib / 8, gib)));
        assert!(
            rule.should_snapshot(since(4999, gib / 8, gib)),
            "the bytes decide even before the entry count"
        );
        assert!(!rule.should_snapshot(since(5000, 8 * MIB - 1, 64 * MIB)));
        assert!(rule.should_snapshot(since(5000, 8 * MIB, 64 * MIB)));
        // 100 MB of data (~150 MB of tables) with write groups of ~20 KiB: ~19 MB of log.
        assert!(!rule.should_snapshot(since(900, 18 * MIB, 150 * MIB)));
        assert!(rule.should_snapshot(since(1000, 19 * MIB, 150 * MIB)));
    }

    #[test]
    fn the_log_on_disk_is_at_most_a_quarter_of_the_state_above_the_size_floor() {
        for state_bytes in [64 * MIB, 150 * MIB, 300 * MIB, 1 << 30, 100 << 30] {
            // What is kept behind a snapshot and what comes before the next one.
            let kept_and_since = 2 * SnapshotRule::log_bytes_cap(state_bytes);
            assert!(kept_and_since <= state_bytes / 4, "{state_bytes}");
            assert!(kept_and_since > state_bytes / 5, "{state_bytes}: a share, not less");
        }
        assert_eq!(SnapshotRule::log_bytes_cap(0), 8 * MIB);
    }

    #[test]
    fn the_volume_counts_from_the_point_of_the_last_snapshot() {
        let volume = LogVolume::new(100);
        assert_eq!(volume.state_bytes(), 100);
        volume.applied(10);
        let mark = volume.mark();
        volume.applied(5);
        assert_eq!(volume.since_snapshot(None), 15);
        assert_eq!(
            volume.since_snapshot(Some(mark)),
            5,
            "counted from a snapshot asked for"
        );
        volume.snapshot_taken(mark, 200);
        assert_eq!((volume.since_snapshot(None), volume.state_bytes()), (5, 200));
        // An older snapshot finishing after a newer one does not move the point back.
        volume.snapshot_taken(0, 150);
        assert_eq!((volume.since_snapshot(Some(0)), volume.state_bytes()), (5, 200));
    }

    #[test]
    fn the_log_kept_behind_a_snapshot_is_bounded_in_entries_and_in_bytes() {
        let keep = KeepRule { entries: 1000 };
        // Small entries: the count decides (the bytes would keep everything from index 0).
        assert_eq!(keep.purge_upto(5000, 0), Some(4000));
        // Entries of 1 MiB: a 16 MiB byte cap (128 MiB of state) keeps 16 of them, not 1 000.
        assert_eq!(keep.purge_upto(5000, 4985), Some(4984));
        // Fewer entries than the count: nothing to purge, unless the bytes say so.
        assert_eq!(keep.purge_upto(500, 0), None);
        assert_eq!(keep.purge_upto(500, 400), Some(399));
        // Not even the snapshot's last entry fits: all of it goes.
        assert_eq!(keep.purge_upto(500, 501), Some(500));
        assert_eq!(KeepRule { entries: 0 }.purge_upto(7, 0), Some(7));
    }

    #[test]
    fn entries_are_counted_from_the_snapshot_or_the_last_request() {
        assert_eq!(entries_since(9, None), 10);
        assert_eq!(entries_since(9, Some(4)), 5);
        assert_eq!(entries_since(3, Some(4)), 0);
    }
}
