//! openraft's log storage: the entries in our own write-ahead log (`wal.rs`),
//! the vote and the commit/purge markers in sled.
//!
//! Each entry is a protobuf `Entry` in one WAL record. Every append call (a
//! leader's batch entry, or a follower's AppendEntries batch) costs one write
//! and one fdatasync, before openraft is told it is durable. Tree `raft_state`
//! holds `vote`, `committed` and `last_purged`. The vote is made durable with
//! a sled flush plus an fdatasync of sled's file (sled's own flush uses
//! sync_file_range, which is not a durability barrier); the commit marker may
//! lag (sled writes it out in the background); `last_purged` is made durable
//! before any segment is deleted.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use prost::Message;
use raftkv::raft_pb as pb;

use crate::convert;
use crate::store::wal::{Wal, WalReader};
use crate::types::{Entry, LogId, StorageError, TypeConfig, Vote};

const VOTE_KEY: &[u8] = b"vote";
const COMMITTED_KEY: &[u8] = b"committed";
const LAST_PURGED_KEY: &[u8] = b"last_purged";

/// `u64::MAX` stands for "nothing committed yet" in [`CommitIndex`].
const NO_INDEX: u64 = u64::MAX;

/// The commit index as last saved by openraft, shared with the status API
/// (openraft 0.9's metrics do not carry it).
#[derive(Clone, Debug)]
pub struct CommitIndex(Arc<AtomicU64>);

impl CommitIndex {
    pub fn get(&self) -> Option<u64> {
        match self.0.load(Ordering::Relaxed) {
            NO_INDEX => None,
            i => Some(i),
        }
    }
    fn set(&self, id: &Option<LogId>) {
        self.0.store(id.map(|l| l.index).unwrap_or(NO_INDEX), Ordering::Relaxed);
    }
}

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
    commit_index: CommitIndex,
    /// The committed log id openraft last saved, and the one last written to sled
    /// (see `save_committed`).
    committed: Arc<std::sync::Mutex<(Option<LogId>, Option<LogId>)>>,
}

fn read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_logs(AnyError::new(&e)).into()
}

fn write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_logs(AnyError::new(&e)).into()
}

fn decode_entry(bytes: &[u8]) -> Result<Entry, StorageError> {
    let msg = pb::Entry::decode(bytes).map_err(read_err)?;
    convert::entry_from_pb(msg).map_err(read_err)
}

fn read_log_id(state: &sled::Tree, key: &[u8]) -> Result<Option<LogId>, StorageError> {
    match state.get(key).map_err(read_err)? {
        Some(v) => Ok(Some(decode_log_id(&v)?)),
        None => Ok(None),
    }
}

fn decode_log_id(bytes: &[u8]) -> Result<LogId, StorageError> {
    let msg = pb::LogId::decode(bytes).map_err(read_err)?;
    convert::log_id_from_pb(msg).map_err(read_err)
}

impl LogStore {
    /// Opens the log in `wal_dir` (recovering it after a crash) and the markers in `db`,
    /// and checks that every stored record decodes. Errors are one line.
    pub fn open(
        db: &sled::Db,
        sled_file: std::fs::File,
        wal_dir: &std::path::Path,
        segment_bytes: u64,
    ) -> Result<LogStore, String> {
        let state = db
            .open_tree("raft_state")
            .map_err(|e| format!("cannot open the raft state: {e}"))?;
        let stored = |key| read_log_id(&state, key).map_err(|e| format!("raft state record is corrupt: {e}"));
        stored(COMMITTED_KEY)?;
        let purged = stored(LAST_PURGED_KEY)?;
        if let Some(v) = state.get(VOTE_KEY).map_err(|e| e.to_string())? {
            let msg = pb::Vote::decode(v.as_ref()).map_err(|e| format!("stored vote is corrupt: {e}"))?;
            convert::vote_from_pb(Some(msg)).map_err(|e| format!("stored vote is corrupt: {e}"))?;
        }
        let wal = Wal::open(wal_dir, purged.map(|p| p.index), segment_bytes)?;
        let store = LogStore {
            db: db.clone(),
            sled_file: Arc::new(sled_file),
            log: wal.reader(),
            wal: Arc::new(std::sync::Mutex::new(wal)),
            state,
            commit_index: CommitIndex(Arc::new(AtomicU64::new(NO_INDEX))),
            committed: Arc::new(std::sync::Mutex::new((None, None))),
        };
        store.verify()?;
        Ok(store)
    }

    pub fn commit_index(&self) -> CommitIndex {
        self.commit_index.clone()
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
    fn verify(&self) -> Result<(), String> {
        let Some((first, last)) = self.log.bounds() else {
            return Ok(());
        };
        const CHUNK: u64 = 256;
        for from in (first..=last).step_by(CHUNK as usize) {
            let records = self
                .log
                .read(from, (from + CHUNK).min(last + 1))
                .map_err(|e| format!("cannot read the raft log: {e}"))?;
            for (index, bytes) in records {
                let entry = decode_entry(&bytes).map_err(|e| format!("raft log entry {index} is corrupt: {e}"))?;
                if entry.log_id.index != index {
                    return Err(format!(
                        "raft log entry stored at {index} says it is {}",
                        entry.log_id.index
                    ));
                }
            }
        }
        Ok(())
    }

    /// Writes the commit index openraft last saved, if it moved since the last write.
    fn store_commit_marker(&self) -> Result<(), StorageError> {
        let mut committed = self.committed.lock().expect("commit marker lock");
        let (latest, stored) = *committed;
        if latest == stored {
            return Ok(());
        }
        if let Some(id) = &latest {
            self.state
                .insert(COMMITTED_KEY, convert::log_id_to_pb(id).encode_to_vec())
                .map_err(write_err)?;
        }
        committed.1 = latest;
        Ok(())
    }

    /// Makes everything written to sled so far durable: sled's flush writes its
    /// buffers, fdatasync makes them survive a power loss.
    async fn flush_sled(&self) -> Result<(), sled::Error> {
        let db = self.db.clone();
        let file = self.sled_file.clone();
        tokio::task::spawn_blocking(move || {
            db.flush()?;
            file.sync_data()?;
            Ok(())
        })
        .await
        .map_err(|e| sled::Error::Io(std::io::Error::other(e)))?
    }

    /// Runs `f` on the log writer, on a blocking thread.
    async fn with_wal<T: Send + 'static>(
        &self,
        f: impl FnOnce(&mut Wal) -> std::io::Result<T> + Send + 'static,
    ) -> std::io::Result<T> {
        let wal = self.wal.clone();
        tokio::task::spawn_blocking(move || f(&mut wal.lock().expect("raft log writer lock")))
            .await
            .map_err(std::io::Error::other)?
    }

    fn entries(&self, from: u64, to: u64) -> Result<Vec<Entry>, StorageError> {
        let records = self.log.read(from, to).map_err(read_err)?;
        records.iter().map(|(_, bytes)| decode_entry(bytes)).collect()
    }
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
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
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = read_log_id(&self.state, LAST_PURGED_KEY)?;
        let last = match self.log.bounds() {
            Some((_, last)) => match self.entries(last, last + 1)?.pop() {
                Some(entry) => Some(entry.log_id),
                None => return Err(read_err(std::io::Error::other("the last raft log entry vanished"))),
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

    async fn save_vote(&mut self, vote: &Vote) -> Result<(), StorageError> {
        let bytes = convert::vote_to_pb(vote).encode_to_vec();
        let io_err = |e: sled::Error| -> StorageError { StorageIOError::write_vote(AnyError::new(&e)).into() };
        self.state.insert(VOTE_KEY, bytes).map_err(io_err)?;
        self.flush_sled().await.map_err(io_err)?;
        Ok(())
    }

    async fn read_vote(&mut self) -> Result<Option<Vote>, StorageError> {
        let io_err =
            |e: &dyn std::error::Error| -> StorageError { StorageIOError::read_vote(AnyError::error(e)).into() };
        match self.state.get(VOTE_KEY).map_err(|e| io_err(&e))? {
            Some(v) => {
                let msg = pb::Vote::decode(v.as_ref()).map_err(|e| io_err(&e))?;
                Ok(Some(convert::vote_from_pb(Some(msg)).map_err(|e| io_err(&e))?))
            }
            None => Ok(None),
        }
    }

    async fn save_committed(&mut self, committed: Option<LogId>) -> Result<(), StorageError> {
        // Only remembered here; `append` writes it to sled (unflushed: sled writes it out
        // in the background) with the next entries. A stored commit index that lags is
        // safe: a restarted node re-learns the rest from the leader.
        self.commit_index.set(&committed);
        self.committed.lock().expect("commit marker lock").0 = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = read_log_id(&self.state, COMMITTED_KEY)?;
        *self.committed.lock().expect("commit marker lock") = (committed, committed);
        self.commit_index.set(&committed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let records: Vec<(u64, Vec<u8>)> = entries
            .into_iter()
            .map(|e| (e.log_id.index, convert::entry_to_pb(&e).encode_to_vec()))
            .collect();
        self.store_commit_marker()?;
        // One write and one fdatasync for the whole batch; openraft is told only after it.
        let written = self
            .with_wal(move |wal| wal.append(records.iter().map(|(i, bytes)| (*i, bytes.as_slice()))))
            .await;
        let result = written
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::new(e.kind(), e.to_string()));
        callback.log_io_completed(result);
        written.map_err(write_err)?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Remove [log_id.index, ..): entries that conflict with the leader's log.
        self.with_wal(move |wal| wal.truncate(log_id.index))
            .await
            .map_err(write_err)
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The state machine lives in sled, which is flushed only now and then: one flush
        // makes its applied state (which covers these entries) durable together with the
        // new purge marker, before any entry disappears, so a restart never needs a
        // purged entry and knows where the log starts.
        self.state
            .insert(LAST_PURGED_KEY, convert::log_id_to_pb(&log_id).encode_to_vec())
            .map_err(write_err)?;
        self.flush_sled().await.map_err(write_err)?;
        self.with_wal(move |wal| wal.purge(log_id.index))
            .await
            .map_err(write_err)
    }
}
