//! openraft's log storage: the entries in our own write-ahead log (`wal.rs`),
//! the vote and the commit/purge markers in small files beside it (`raft_state.rs`).
//!
//! Each entry is a protobuf `Entry` in one WAL record. An append returns as soon as its
//! entries are in the log's in-memory tail ([`RecentEntries`]), readable at once; the
//! writer thread (`wal_writer.rs`) writes them, and makes every append queued meanwhile
//! durable with one fdatasync, before openraft is told through the append's callback.
//! Saving the vote, truncating and purging queue behind the appends before them and
//! are durable when they return. The vote is kept in memory too: every replication read
//! asks for it; the commit marker may lag; the purge point is made durable, after the
//! state machine, before any segment is deleted.
//!
//! Errors are `io::Error`, as openraft's storage traits want them; openraft stops the node
//! for good on any of them, so they are returned only for real I/O failures.
//!
//! Invariants: the log has no holes, and every entry it holds is either durable in its
//! files or in the tail; an append that would leave a hole panics (`LogStore::append`,
//! `RecentEntries::appended`, `Wal::write`).

use std::fmt::Debug;
use std::io;
use std::ops::{Bound, RangeBounds};
use std::sync::Arc;

use openraft::storage::{IOFlushed, LogState, RaftLogReader, RaftLogStorage};
use openraft::OptionalSend;
use prost::Message;

use crate::convert;
use crate::store::raft_state::RaftStateFiles;
use crate::store::recent_entries::RecentEntries;
use crate::store::wal::{Wal, WalOpenError, WalReader};
use crate::store::wal_writer::{CommitMarker, Flushed, PersistStateMachine, RaftState, Records, WalWriter};
use crate::types::{Entry, LogId, TypeConfig, Vote};

/// openraft's log storage. Cheap to clone: clones share the log, its writer and the tail.
#[derive(Clone)]
pub struct LogStore {
    /// Every write to the log and the durable Raft state, in order, off the async runtime.
    writer: WalWriter,
    log: WalReader,
    /// The vote last made durable (what `read_vote` answers without reading its file).
    vote: Arc<std::sync::Mutex<Option<Vote>>>,
    /// The purge point last made durable.
    purged: Arc<std::sync::Mutex<Option<LogId>>>,
    committed: Arc<CommitMarker>,
    /// The log's tail in memory: see [`RecentEntries`].
    recent: Arc<std::sync::Mutex<RecentEntries>>,
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

/// Why the log store cannot be opened: its state files or the log's files are
/// unreadable or damaged. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum LogStoreOpenError {
    #[error(transparent)]
    State(#[from] crate::store::RaftStateError),
    #[error(transparent)]
    Wal(#[from] WalOpenError),
    #[error("cannot read the raft log: {0}")]
    LogRead(std::io::Error),
    #[error("raft log entry {index} is corrupt: {error}")]
    CorruptEntry { index: u64, error: convert::DecodeError },
    #[error("raft log entry stored at {index} says it is {claimed}")]
    MisplacedEntry { index: u64, claimed: u64 },
    #[error("cannot start the raft log's writer thread: {0}")]
    Writer(io::Error),
}

impl LogStore {
    /// Opens the log in `wal_dir` (recovering it after a crash) and the state files beside
    /// it, checks that every stored record decodes, and starts the log's writer thread.
    /// `persist_state_machine` is called before every purge. Errors are one line.
    pub fn open(
        wal_dir: &std::path::Path,
        segment_bytes: u64,
        persist_state_machine: PersistStateMachine,
    ) -> Result<LogStore, LogStoreOpenError> {
        let (files, stored) = RaftStateFiles::open(wal_dir)?;
        let wal = Wal::open(wal_dir, stored.purged.map(|p| p.index), segment_bytes)?;
        let log = wal.reader();
        verify(&log)?;
        let committed = Arc::new(CommitMarker::default());
        committed.loaded(stored.committed);
        let raft_state = RaftState {
            files,
            persist_state_machine,
        };
        let writer = WalWriter::start(wal, raft_state, committed.clone()).map_err(LogStoreOpenError::Writer)?;
        Ok(LogStore {
            writer,
            log,
            vote: Arc::new(std::sync::Mutex::new(stored.vote)),
            purged: Arc::new(std::sync::Mutex::new(stored.purged)),
            committed,
            recent: Arc::default(),
        })
    }

    /// True when nothing was ever written: no vote and no log. Only such a
    /// store may be bootstrapped with the initial cluster.
    pub fn is_pristine(&self) -> bool {
        self.vote.lock().expect("vote lock").is_none()
            && self.log.bounds().is_none()
            && self.recent().last_log_id().is_none()
            && self.purged.lock().expect("purge point lock").is_none()
    }

    /// The index of the last entry purged from the log, if any: the state machine had made
    /// every entry up to it durable before (see `wal_writer.rs`).
    pub fn purged_index(&self) -> Option<u64> {
        self.purged.lock().expect("purge point lock").map(|id| id.index)
    }

    /// A reader of the log's durable records (for the purge rule, which counts their bytes).
    pub fn log_reader(&self) -> WalReader {
        self.log.clone()
    }

    fn recent(&self) -> std::sync::MutexGuard<'_, RecentEntries> {
        self.recent.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    /// The entries in `[from, to)` that the log holds: from the tail where it has them, the
    /// older ones (all durable) from the log's files.
    fn entries(&self, from: u64, to: u64) -> io::Result<Vec<Entry>> {
        if from >= to {
            return Ok(Vec::new());
        }
        let (tail, end) = {
            let recent = self.recent();
            if let Some(entries) = recent.get(from, to) {
                return Ok(entries);
            }
            match recent.first_index() {
                // The range starts before the tail: the files have what comes before it.
                Some(first) if from < first => (recent.get(first, to).unwrap_or_default(), first.min(to)),
                _ => (Vec::new(), to),
            }
        };
        let records = self.log.read(from, end)?;
        let mut entries: Vec<Entry> = records
            .iter()
            .map(|(_, bytes)| read_entry(bytes))
            .collect::<io::Result<_>>()?;
        // The files' part ends right before the tail (or is empty: purged), unless a
        // truncation ran meanwhile: then only the part without a gap is the answer.
        let follows = match (entries.last(), tail.first()) {
            (Some(last), Some(next)) => last.log_id.index + 1 == next.log_id.index,
            _ => true,
        };
        if follows {
            entries.extend(tail);
        }
        Ok(entries)
    }
}

/// Decodes every entry once, so that a corrupt log refuses to start the node with a
/// clear reason instead of failing inside openraft later.
fn verify(log: &WalReader) -> Result<(), LogStoreOpenError> {
    let Some((first, last)) = log.bounds() else {
        return Ok(());
    };
    const CHUNK: u64 = 256;
    for from in (first..=last).step_by(CHUNK as usize) {
        let records = log
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
        let last_purged_log_id = *self.purged.lock().expect("purge point lock");
        let tail_last = self.recent().last_log_id();
        let last = match (tail_last, self.log.bounds()) {
            (Some(last), _) => Some(last),
            (None, Some((_, last))) => match self.entries(last, last + 1)?.pop() {
                Some(entry) => Some(entry.log_id),
                None => return Err(io::Error::other("the last raft log entry vanished")),
            },
            (None, None) => last_purged_log_id,
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
        self.writer.save_vote(*vote).await?;
        *self.vote.lock().expect("vote lock") = Some(*vote);
        Ok(())
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> io::Result<()> {
        // Only remembered here; the writer stores it in its file after a later sync of the
        // log (see `CommitMarker`).
        self.committed.saved(committed);
        Ok(())
    }

    async fn read_committed(&mut self) -> io::Result<Option<LogId>> {
        // What was saved last; at startup, what the file held.
        Ok(self.committed.latest())
    }

    /// Returns once the entries are in the tail (readable); the writer thread makes them
    /// durable and then calls `callback`.
    async fn append<I>(&mut self, entries: I, callback: IOFlushed<TypeConfig>) -> io::Result<()>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Entries at or below the purge point are covered by a snapshot: the log skips them.
        // A purge is queued, not awaited: until the writer thread has made it, the log's own
        // bounds still show the entries before it, so the purge point recorded here counts too
        // (after a snapshot install the purge goes past the log's end, and the leader's next
        // entry follows the snapshot, not the log).
        let after_purge = self.purged_index().map(|index| index + 1);
        let kept_from = self.log.first_unpurged().max(after_purge);
        let entries: Vec<Entry> = entries
            .into_iter()
            .filter(|e| kept_from.is_none_or(|first| e.log_id.index >= first))
            .collect();
        let records: Records = entries
            .iter()
            .map(|e| (e.log_id.index, convert::entry_to_pb(e).encode_to_vec()))
            .collect();
        let sizes: Vec<usize> = records.iter().map(|(_, bytes)| bytes.len()).collect();
        let append = {
            let mut recent = self.recent();
            if let Some(first) = entries.first() {
                let next = match recent.last_log_id() {
                    Some(last) => Some(last.index + 1),
                    None => self.log.next_index().max(after_purge),
                };
                if let Some(next) = next {
                    assert!(
                        first.log_id.index <= next,
                        "raft log append of entry {} where {next} was expected: a hole in the log",
                        first.log_id.index
                    );
                }
                // Should the entries start inside the log, the log replaces the ones they
                // overlap: forget those first, like a truncation.
                recent.truncated(first.log_id.index);
            }
            recent.appended(entries.into_iter().zip(sizes))
        };
        let recent = self.recent.clone();
        let flushed = Flushed {
            callback,
            on_durable: Box::new(move || recent.lock().unwrap_or_else(|p| p.into_inner()).durable(append)),
        };
        self.writer.append(records, flushed)
    }

    async fn truncate_after(&mut self, last_log_id: Option<LogId>) -> io::Result<()> {
        // Keep [.., last_log_id]; remove the entries after it, which conflict with the leader's log.
        let from = last_log_id.map_or(0, |id| id.index + 1);
        self.recent().truncated(from);
        self.writer.truncate(from).await
    }

    async fn purge(&mut self, log_id: LogId) -> io::Result<()> {
        self.recent().purged(log_id.index);
        // Queued, not awaited: see `wal_writer.rs` for why a purge must not hold the core.
        self.writer.purge(log_id)?;
        *self.purged.lock().expect("purge point lock") = Some(log_id);
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir;
    use crate::store::testing::blank_entry as entry;
    use openraft::type_config::TypeConfigExt;

    fn open(dir: &std::path::Path) -> LogStore {
        match data_dir::open_when_released(dir, 1, "1=127.0.0.1:1") {
            Ok(d) => d.log_store,
            Err(e) => panic!("{e}"),
        }
    }

    /// A callback for an append, and where its outcome arrives.
    fn callback() -> (IOFlushed<TypeConfig>, tokio::sync::oneshot::Receiver<io::Result<()>>) {
        let (tx, rx) = TypeConfig::oneshot();
        (IOFlushed::signal(tx), rx)
    }

    /// Appends `entries` and waits until the writer thread reports them durable.
    async fn append_durably<I>(store: &mut LogStore, entries: I)
    where
        I: IntoIterator<Item = Entry> + Send,
        I::IntoIter: Send,
    {
        let (flushed, outcome) = callback();
        store.append(entries, flushed).await.unwrap();
        outcome.await.unwrap().unwrap();
    }

    fn indexes(entries: &[Entry]) -> Vec<u64> {
        entries.iter().map(|e| e.log_id.index).collect()
    }

    #[tokio::test]
    async fn an_entry_appended_and_not_yet_durable_is_readable_and_its_callback_waits() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let held = store.writer.hold();
        let (flushed, mut outcome) = callback();
        store.append((0..3).map(|i| entry(1, i)), flushed).await.unwrap();
        assert_eq!(indexes(&store.try_get_log_entries(0..10).await.unwrap()), vec![0, 1, 2]);
        assert_eq!(
            store.get_log_state().await.unwrap().last_log_id.map(|id| id.index),
            Some(2)
        );
        assert!(store.log.bounds().is_none(), "the log's files do not have them yet");
        assert!(outcome.try_recv().is_err(), "not durable, not reported");
        drop(held);
        outcome.await.unwrap().unwrap();
        assert_eq!(store.log.bounds(), Some((0, 2)));
    }

    #[tokio::test]
    async fn a_truncation_after_an_append_waits_until_the_append_is_durable() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let held = store.writer.hold();
        let (flushed, mut outcome) = callback();
        store.append((0..5).map(|i| entry(1, i)), flushed).await.unwrap();
        let truncate = {
            let mut store = store.clone();
            tokio::spawn(async move { store.truncate_after(Some(entry(1, 1).log_id)).await })
        };
        tokio::task::yield_now().await;
        assert!(!truncate.is_finished(), "the truncation waits behind the append");
        // The log as openraft sees it changes at once.
        assert_eq!(indexes(&store.try_get_log_entries(0..10).await.unwrap()), vec![0, 1]);
        drop(held);
        truncate.await.unwrap().unwrap();
        assert!(
            matches!(outcome.try_recv(), Ok(Ok(()))),
            "the append was durable and reported before the truncation returned"
        );
        assert_eq!(store.log.bounds(), Some((0, 1)));
        // Entries appended again after the truncation are the log's, durable once reported.
        append_durably(&mut store, (2..4).map(|i| entry(2, i))).await;
        let terms: Vec<u64> = store
            .try_get_log_entries(0..10)
            .await
            .unwrap()
            .iter()
            .map(|e| e.log_id.leader_id.term)
            .collect();
        assert_eq!(terms, vec![1, 1, 2, 2]);
        drop(store);
        let mut reopened = open(dir.path());
        assert_eq!(
            indexes(&reopened.try_get_log_entries(0..10).await.unwrap()),
            vec![0, 1, 2, 3]
        );
    }

    #[tokio::test]
    async fn a_vote_saved_after_an_append_is_durable_after_it_and_survives_a_restart() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let held = store.writer.hold();
        let (flushed, mut outcome) = callback();
        store.append([entry(1, 0)], flushed).await.unwrap();
        let vote = Vote::new(3, 2);
        let save = {
            let mut store = store.clone();
            tokio::spawn(async move { store.save_vote(&vote).await })
        };
        tokio::task::yield_now().await;
        assert!(!save.is_finished(), "the vote waits behind the append");
        drop(held);
        save.await.unwrap().unwrap();
        assert!(matches!(outcome.try_recv(), Ok(Ok(()))));
        assert_eq!(store.read_vote().await.unwrap(), Some(vote));
        drop(store);
        assert_eq!(open(dir.path()).read_vote().await.unwrap(), Some(vote));
    }

    #[tokio::test]
    async fn entries_read_across_the_files_and_the_tail_come_back_whole() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        let n = crate::store::recent_entries::RECENT_ENTRIES as u64 * 2;
        for i in 0..n {
            append_durably(&mut store, [entry(1, i)]).await;
        }
        let held = store.writer.hold();
        let (flushed, _outcome) = callback();
        store.append((n..n + 3).map(|i| entry(1, i)), flushed).await.unwrap();
        // The oldest come from the files, the newest (not durable yet) from the tail.
        assert_eq!(
            indexes(&store.try_get_log_entries(0..n + 10).await.unwrap()),
            (0..n + 3).collect::<Vec<_>>()
        );
        assert_eq!(indexes(&store.try_get_log_entries(5..8).await.unwrap()), vec![5, 6, 7]);
        drop(held);
    }

    #[tokio::test]
    async fn an_append_right_after_a_purge_past_the_end_of_the_log_follows_the_purge_point() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        append_durably(&mut store, (0..3).map(|i| entry(1, i))).await;
        // As after a snapshot install up to 8: the purge passes the log's end, and the writer
        // thread has not made it yet when the leader's next entry, 9, arrives.
        let held = store.writer.hold();
        store.purge(entry(1, 8).log_id).await.unwrap();
        let (flushed, outcome) = callback();
        store.append([entry(1, 9)], flushed).await.unwrap();
        drop(held);
        outcome.await.unwrap().unwrap();
        assert_eq!(indexes(&store.try_get_log_entries(0..20).await.unwrap()), vec![9]);
        let state = store.get_log_state().await.unwrap();
        assert_eq!(state.last_purged_log_id.map(|id| id.index), Some(8));
        assert_eq!(state.last_log_id.map(|id| id.index), Some(9));
    }

    #[tokio::test]
    #[should_panic(expected = "raft log append of entry 9 where 3 was expected")]
    async fn an_append_that_leaves_a_hole_is_a_bug() {
        let dir = tempfile::tempdir().unwrap();
        let mut store = open(dir.path());
        append_durably(&mut store, (0..3).map(|i| entry(1, i))).await;
        let (flushed, _) = callback();
        store.append([entry(1, 9)], flushed).await.unwrap();
    }
}
