//! openraft's log storage: the entries in our own write-ahead log (`wal.rs`),
//! the vote and the commit/purge markers in sled.
//!
//! Each entry is a protobuf `Entry` in one WAL record. Every append call (a
//! leader's write group entry, or all the entries of a follower's
//! AppendEntries) costs one write and one fdatasync, before openraft is told it
//! is durable. Tree `raft_state` holds `vote`, `committed` and `last_purged`.
//! The vote is made durable with a sled flush plus an fdatasync of sled's file
//! (sled's own flush uses sync_file_range, which is not a durability barrier),
//! and kept in memory too: every replication read asks for it;
//! the commit marker may lag (sled writes it out in the background);
//! `last_purged` is made durable before any segment is deleted. The newest
//! entries are also kept in memory as appended ([`RecentEntries`]), for
//! openraft's reads right after an append.
//!
//! Errors are `io::Error`, as openraft's storage traits want them; openraft stops the node
//! for good on any of them, so they are returned only for real I/O failures.
//!
//! Invariant: the log has no holes; an append that would leave one panics
//! (`Wal::append`, `RecentEntries::appended`).

use std::collections::VecDeque;
use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use prost::Message;

use crate::convert;
use crate::store::sled_err;
use crate::store::wal::{Wal, WalOpenError, WalReader};
use crate::types::{Entry, LogId, TypeConfig, Vote};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

/// openraft's log storage. Cheap to clone: clones share the log and the trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// sled's data file, to fdatasync after sled's flush.
    sled_file: Arc<std::fs::File>,
    /// Appends, truncation and purges: one at a time, off the async runtime.
    wal: Arc<std::sync::Mutex<Wal>>,
    log: WalReader,
    state: sled::Tree,
    /// The vote last made durable (what `read_vote` answers without reading sled).
    vote: Arc<std::sync::Mutex<Option<Vote>>>,
    /// The committed log id openraft last saved, and the one last written to sled
    /// (see `save_committed`).
    committed: Arc<std::sync::Mutex<(Option<LogId>, Option<LogId>)>>,
    /// The newest entries, kept as appended: see [`RecentEntries`].
    recent: Arc<std::sync::Mutex<RecentEntries>>,
}

/// Most bytes (as encoded in the log) of entries [`RecentEntries`] keeps.
const RECENT_ENTRIES_BYTES: usize = 4 << 20;
/// Most entries [`RecentEntries`] keeps.
const RECENT_ENTRIES: usize = 64;

/// The newest entries of the log, as they were appended. openraft reads every entry back
/// right after it is appended: on the leader once per follower to replicate it and once to
/// apply it, on a follower once to apply it. Served from here, those reads are clones
/// (which share the keys and values) instead of a read of the log file and a decode each.
///
/// Invariant: the entries are consecutive and the last one is the log's last entry; so a
/// range that starts among them is answered exactly as the log file would answer it. Every
/// change to the log changes this first (a truncation or purge) or right after the write
/// (an append), under the same rules. An append that does not follow the newest entry
/// would break it, and is a bug (ours or openraft's): it panics.
#[derive(Default)]
struct RecentEntries {
    /// Each entry with its size in the log.
    entries: VecDeque<(Entry, usize)>,
    bytes: usize,
}

impl RecentEntries {
    fn appended(&mut self, entries: impl IntoIterator<Item = (Entry, usize)>) {
        for (entry, size) in entries {
            if let Some((last, _)) = self.entries.back() {
                assert_eq!(
                    entry.log_id.index,
                    last.log_id.index + 1,
                    "raft log entry {} appended after entry {}: a hole in the newest entries",
                    entry.log_id.index,
                    last.log_id.index
                );
            }
            self.bytes += size;
            self.entries.push_back((entry, size));
        }
        while self.bytes > RECENT_ENTRIES_BYTES || self.entries.len() > RECENT_ENTRIES {
            self.pop_front();
        }
    }

    /// Forgets the entries from index `from` on.
    fn truncated(&mut self, from: u64) {
        while self.entries.back().is_some_and(|(e, _)| e.log_id.index >= from) {
            let (_, size) = self.entries.pop_back().expect("checked above");
            self.bytes -= size;
        }
    }

    /// Forgets the entries up to index `upto`, included.
    fn purged(&mut self, upto: u64) {
        while self.entries.front().is_some_and(|(e, _)| e.log_id.index <= upto) {
            self.pop_front();
        }
    }

    fn pop_front(&mut self) {
        if let Some((_, size)) = self.entries.pop_front() {
            self.bytes -= size;
        }
    }

    /// The entries in `[from, to)`, if `from` is one of those kept (the log holds nothing
    /// after the last one, so `to` may reach past it); `None` means: read the log file.
    fn get(&self, from: u64, to: u64) -> Option<Vec<Entry>> {
        let first = self.entries.front()?.0.log_id.index;
        let last = self.entries.back()?.0.log_id.index;
        if from < first || from > last || to <= from {
            return None;
        }
        let end = to.min(last + 1);
        Some(
            self.entries
                .range((from - first) as usize..(end - first) as usize)
                .map(|(entry, _)| entry.clone())
                .collect(),
        )
    }
}

/// Stored bytes that do not decode: corruption, as an I/O error.
fn corrupt(what: &str, e: convert::DecodeError) -> io::Error {
    io::Error::new(io::ErrorKind::InvalidData, format!("{what} is corrupt: {e}"))
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, convert::DecodeError> {
    convert::decode(bytes, convert::entry_from_pb)
}

fn read_entry(bytes: &[u8]) -> io::Result<Entry> {
    decode_entry(bytes).map_err(|e| corrupt("a raft log entry", e))
}

fn read_log_id(state: &sled::Tree, key: &[u8]) -> io::Result<Option<LogId>> {
    match state.get(key).map_err(sled_err)? {
        Some(v) => Ok(Some(decode_log_id(&v).map_err(|e| corrupt("a raft state record", e))?)),
        None => Ok(None),
    }
}

fn decode_log_id(bytes: &[u8]) -> Result<LogId, convert::DecodeError> {
    convert::decode(bytes, convert::log_id_from_pb)
}

fn decode_vote(bytes: &[u8]) -> Result<Vote, convert::DecodeError> {
    convert::decode(bytes, |v| convert::vote_from_pb(Some(v)))
}

/// Why the log store cannot be opened: its records in sled or the log's files are
/// unreadable or damaged. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreOpenError {
    #[error("cannot open the raft state: {0}")]
    StateTree(sled::Error),
    #[error(transparent)]
    StateRead(sled::Error),
    #[error("raft state record is corrupt: {0}")]
    CorruptMarker(convert::DecodeError),
    #[error("stored vote is corrupt: {0}")]
    CorruptVote(convert::DecodeError),
    #[error(transparent)]
    Wal(#[from] WalOpenError),
    #[error("cannot read the raft log: {0}")]
    LogRead(std::io::Error),
    #[error("raft log entry {index} is corrupt: {error}")]
    CorruptEntry { index: u64, error: convert::DecodeError },
    #[error("raft log entry stored at {index} says it is {claimed}")]
    MisplacedEntry { index: u64, claimed: u64 },
}

impl LogStore {
    /// Opens the log in `wal_dir` (recovering it after a crash) and the markers in `db`,
    /// and checks that every stored record decodes. Errors are one line.
    pub fn open(
        db: &sled::Db,
        sled_file: std::fs::File,
        wal_dir: &std::path::Path,
        segment_bytes: u64,
    ) -> Result<LogStore, LogStoreOpenError> {
        let state = db.open_tree("raft_state").map_err(LogStoreOpenError::StateTree)?;
        let stored = |key| match state.get(key).map_err(LogStoreOpenError::StateRead)? {
            Some(v) => decode_log_id(&v).map(Some).map_err(LogStoreOpenError::CorruptMarker),
            None => Ok(None),
        };
        stored(COMMITTED_KEY)?;
        let purged = stored(LAST_PURGED_KEY)?;
        let vote = match state.get(VOTE_KEY).map_err(LogStoreOpenError::StateRead)? {
            Some(v) => Some(decode_vote(&v).map_err(LogStoreOpenError::CorruptVote)?),
            None => None,
        };
        let wal = Wal::open(wal_dir, purged.map(|p| p.index), segment_bytes)?;
        let store = LogStore {
            db: db.clone(),
            sled_file: Arc::new(sled_file),
            log: wal.reader(),
            wal: Arc::new(std::sync::Mutex::new(wal)),
            state,
            vote: Arc::new(std::sync::Mutex::new(vote)),
            committed: Arc::new(std::sync::Mutex::new((None, None))),
            recent: Arc::default(),
        };
        store.verify()?;
        Ok(store)
    }

    /// True when nothing was ever written: no vote and no log. Only such a
    /// store may be bootstrapped with the initial cluster.
    pub fn is_pristine(&self) -> Result<bool, sled::Error> {
        Ok(self.state.get(VOTE_KEY)?.is_none()
            && self.log.bounds().is_none()
            && self.state.get(LAST_PURGED_KEY)?.is_none())
    }

    /// Decodes every entry once, so that a corrupt log refuses to start the node with a
    /// clear reason instead of failing inside openraft later.
    fn verify(&self) -> Result<(), LogStoreOpenError> {
        let Some((first, last)) = self.log.bounds() else {
            return Ok(());
        };
        const CHUNK: u64 = 256;
        for from in (first..=last).step_by(CHUNK as usize) {
            let records = self
                .log
                .read(from, (from + CHUNK).min(last + 1))
                .map_err(LogStoreOpenError::LogRead)?;
            for (index, bytes) in records {
                let entry = decode_entry(&bytes).map_err(|error| LogStoreOpenError::CorruptEntry { index, error })?;
                if entry.log_id.index != index {
                    return Err(LogStoreOpenError::MisplacedEntry {
                        index,
                        claimed: entry.log_id.index,
                    });
                }
            }
        }
        Ok(())
    }

    /// Writes the commit index openraft last saved, if it moved since the last write.
    fn store_commit_marker(&self) -> io::Result<()> {
        let mut committed = self.committed.lock().expect("commit marker lock");
        let (latest, stored) = *committed;
        if latest == stored {
            return Ok(());
        }
        if let Some(id) = &latest {
            self.state
                .insert(COMMITTED_KEY, convert::log_id_to_pb(id).encode_to_vec())
                .map_err(sled_err)?;
        }
        committed.1 = latest;
        Ok(())
    }

    /// Makes everything written to sled so far durable: sled's flush writes its
    /// buffers, fdatasync makes them survive a power loss.
    async fn flush_sled(&self) -> io::Result<()> {
        let db = self.db.clone();
        let file = self.sled_file.clone();
        tokio::task::spawn_blocking(move || {
            db.flush().map_err(sled_err)?;
            file.sync_data()
        })
        .await
        .map_err(io::Error::other)?
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// Runs `f` on the log writer, on a blocking thread. A panic there (a broken invariant
    /// of the log) goes on in the caller, not disguised as an I/O error.
    async fn with_wal<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Wal) -> io::Result<T> + Send + 'static,
    ) -> io::Result<T> {
        let wal = self.wal.clone();
        match tokio::task::spawn_blocking(move || f(&mut wal.lock().expect("raft log writer lock"))).await {
            Ok(result) => result,
            Err(e) if e.is_panic() => std::panic::resume_unwind(e.into_panic()),
            Err(e) => Err(io::Error::other(e)),
        }
    }

    fn entries(&self, from: u64, to: u64) -> io::Result<Vec<Entry>> {
        if let Some(entries) = self.recent().get(from, to) {
            return Ok(entries);
        }
        let records = self.log.read(from, to)?;
        records.iter().map(|(_, bytes)| read_entry(bytes)).collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> io::Result<Vec<Entry>> {
        let from = match range.start_bound() {
            Bound::Included(i) => *i,
            Bound::Excluded(i) => i.saturating_add(1),
            Bound::Unbounded => 0,
        };
        let to = match range.end_bound() {
            Bound::Included(i) => i.saturating_add(1),
            Bound::Excluded(i) => *i,
            Bound::Unbounded => u64::MAX,
        };
        self.entries(from, to)
    }

    /// From memory: every replication read asks for it (openraft checks, before and after
    /// reading entries for a follower, that the leadership they belong to still holds).
    async fn read_vote(&mut self) -> io::Result<Option<Vote>> {
        Ok(*self.vote.lock().expect("vote lock"))
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> io::Result<LogState<TypeConfig>> {
        let last_purged_log_id = read_log_id(&self.state, LAST_PURGED_KEY)?;
        let last = match self.log.bounds() {
            Some((_, last)) => match self.entries(last, last + 1)?.pop() {
                Some(entry) => Some(entry.log_id),
                None => return Err(io::Error::other("the last raft log entry vanished")),
            },
            None => last_purged_log_id,
        };
        Ok(LogState {
            last_purged_log_id,
            last_log_id: last,
        })
    }

    async fn get_log_reader(&mut self) -> Self::LogReader {
        self.clone()
    }

    async fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        let bytes = convert::vote_to_pb(vote).encode_to_vec();
        self.state.insert(VOTE_KEY, bytes).map_err(sled_err)?;
        self.flush_sled().await?;
        *self.vote.lock().expect("vote lock") = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Only remembered here; `append` writes it to sled (unflushed: sled writes it out
        // in the background) with the next entries. A stored commit index that lags is
        // safe: a restarted node re-learns the rest from the leader.
        self.committed.lock().expect("commit marker lock").0 = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        let committed = read_log_id(&self.state, COMMITTED_KEY)?;
        *self.committed.lock().expect("commit marker lock") = (committed, committed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let entries: Vec<Entry> = entries.into_iter().collect();
        let records: Vec<(u64, Vec<u8>)> = entries
            .iter()
            .map(|e| (e.log_id.index, convert::entry_to_pb(e).encode_to_vec()))
            .collect();
        self.store_commit_marker()?;
        // Should the entries start inside the log, the log replaces the ones they overlap:
        // forget those first, like a truncation.
        if let Some(first) = entries.first() {
            self.recent().truncated(first.log_id.index);
        }
        // One write and one fdatasync for all the entries; openraft is told only after it.
        let written = self
            .with_wal(move |wal| {
                let written_from = wal.append(records.iter().map(|(i, bytes)| (*i, bytes.as_slice())))?;
                Ok((written_from, records))
            })
            .await;
        if let Ok((Some(written_from), records)) = &written {
            // The log skips entries at or below its purge point; so does the copy.
            let sizes = records.iter().map(|(_, bytes)| bytes.len());
            let kept = entries
                .into_iter()
                .zip(sizes)
                .filter(|(e, _)| e.log_id.index >= *written_from);
            self.recent().appended(kept);
        }
        let result = written
            .as_ref()
            .map(|_| ())
            .map_err(|e| io::Error::new(e.kind(), e.to_string()));
        callback.io_completed(result);
        written.map(|_| ())
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        // Keep [.., last_log_id]; remove the entries after it, which conflict with the leader's log.
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.recent().truncated(from);
        self.with_wal(move |wal| wal.truncate(from)).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        // The state machine lives in sled, which is flushed only now and then: one flush
        // makes its applied state (which covers these entries) durable together with the
        // new purge marker, before any entry disappears, so a restart never needs a
        // purged entry and knows where the log starts.
        self.state
            .insert(LAST_PURGED_KEY, convert::log_id_to_pb(&log_id).encode_to_vec())
            .map_err(sled_err)?;
        self.flush_sled().await?;
        self.recent().purged(log_id.index);
        self.with_wal(move |wal| wal.purge(log_id.index)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{EntryPayload, LeaderId};

    fn entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId { term, node_id: 1 }, index),
            payload: EntryPayload::Blank,
        }
    }

    fn kept(from: u64, to: u64, term: u64) -> RecentEntries {
        let mut recent = RecentEntries::default();
        recent.appended((from..to).map(|i| (entry(term, i), 10)));
        recent
    }

    fn ids(entries: Option<Vec<Entry>>) -> Option<Vec<(u64, u64)>> {
        entries.map(|es| es.iter().map(|e| (e.log_id.leader_id.term, e.log_id.index)).collect())
    }

    #[test]
    fn serves_ranges_that_start_among_the_newest_entries_and_nothing_else() {
        let recent = kept(5, 10, 1);
        assert_eq!(ids(recent.get(5, 7)), Some(vec![(1, 5), (1, 6)]));
        // The log ends at 9: a range reaching past it ends there too.
        assert_eq!(ids(recent.get(8, u64::MAX)), Some(vec![(1, 8), (1, 9)]));
        // Older entries, entries not written yet and empty ranges are the log file's to answer.
        assert_eq!(ids(recent.get(4, 7)), None);
        assert_eq!(ids(recent.get(10, 11)), None);
        assert_eq!(ids(recent.get(6, 6)), None);
        assert_eq!(ids(RecentEntries::default().get(0, 1)), None);
    }

    #[test]
    fn a_truncation_and_the_appends_after_it_replace_the_conflicting_entries() {
        let mut recent = kept(5, 10, 1);
        recent.truncated(7);
        assert_eq!(ids(recent.get(5, 100)), Some(vec![(1, 5), (1, 6)]));
        recent.appended([(entry(2, 7), 10)]);
        assert_eq!(ids(recent.get(6, 100)), Some(vec![(1, 6), (2, 7)]));
        recent.truncated(0);
        assert_eq!(ids(recent.get(5, 100)), None);
    }

    #[test]
    fn a_purge_forgets_the_purged_entries() {
        let mut recent = kept(5, 10, 1);
        recent.purged(6);
        assert_eq!(ids(recent.get(6, 8)), None);
        assert_eq!(ids(recent.get(7, 8)), Some(vec![(1, 7)]));
        recent.purged(9);
        assert_eq!(recent.bytes, 0);
        assert_eq!(ids(recent.get(9, 10)), None);
    }

    #[test]
    fn keeps_a_bounded_number_of_the_newest_entries() {
        let recent = kept(0, RECENT_ENTRIES as u64 + 10, 1);
        assert_eq!(recent.entries.len(), RECENT_ENTRIES);
        assert_eq!(ids(recent.get(9, 10)), None);
        assert_eq!(ids(recent.get(10, 11)), Some(vec![(1, 10)]));

        let mut big = RecentEntries::default();
        big.appended((0..3).map(|i| (entry(1, i), RECENT_ENTRIES_BYTES / 2)));
        assert_eq!(ids(big.get(0, 3)), None);
        assert_eq!(ids(big.get(1, 3)), Some(vec![(1, 1), (1, 2)]));
    }

    #[test]
    #[should_panic(expected = "raft log entry 20 appended after entry 9")]
    fn an_append_that_does_not_follow_the_newest_entry_is_a_bug() {
        let mut recent = kept(5, 10, 1);
        recent.appended([(entry(1, 20), 10)]);
    }
}
