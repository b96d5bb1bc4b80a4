//! The Raft log, the vote and the commit/purge markers, kept in sled.
//!
//! Layout: tree `raft_log` maps a big-endian u64 index to a protobuf `Entry`;
//! tree `raft_state` holds `vote`, `committed` and `last_purged`. The vote and
//! every appended batch are made durable (one sled flush plus one fdatasync
//! per append call, so a follower's AppendEntries batch costs one of each)
//! before openraft is told they are. sled's own flush uses sync_file_range,
//! which is not a durability barrier, hence the explicit fdatasync.

use std::fmt::Debug;
use std::ops::{Bound, RangeBounds};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use openraft::storage::{LogFlushed, LogState, RaftLogStorage};
use openraft::{AnyError, OptionalSend, RaftLogReader, StorageIOError};
use prost::Message;
use raftkv::raft_pb as pb;

use crate::convert;
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

/// openraft's log storage on sled. Cheap to clone: clones share the trees.
#[derive(Clone)]
pub struct LogStore {
    db: sled::Db,
    /// sled's data file, to fdatasync after sled's flush.
    sled_file: Arc<std::fs::File>,
    log: sled::Tree,
    state: sled::Tree,
    commit_index: CommitIndex,
    /// The committed log id openraft last saved, and the one last written to sled
    /// (see `save_committed`).
    committed: Arc<std::sync::Mutex<(Option<LogId>, Option<LogId>)>>,
}

fn index_key(index: u64) -> [u8; 8] {
    index.to_be_bytes()
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

fn decode_log_id(bytes: &[u8]) -> Result<LogId, StorageError> {
    let msg = pb::LogId::decode(bytes).map_err(read_err)?;
    convert::log_id_from_pb(msg).map_err(read_err)
}

impl LogStore {
    pub fn open(db: &sled::Db, sled_file: std::fs::File) -> Result<LogStore, sled::Error> {
        let store = LogStore {
            db: db.clone(),
            sled_file: Arc::new(sled_file),
            log: db.open_tree("raft_log")?,
            state: db.open_tree("raft_state")?,
            commit_index: CommitIndex(Arc::new(AtomicU64::new(NO_INDEX))),
            committed: Arc::new(std::sync::Mutex::new((None, None))),
        };
        Ok(store)
    }

    pub fn commit_index(&self) -> CommitIndex {
        self.commit_index.clone()
    }

    /// True when nothing was ever written: no vote and no log. Only such a
    /// store may be bootstrapped with the initial cluster.
    pub fn is_pristine(&self) -> Result<bool, sled::Error> {
        Ok(self.state.get(VOTE_KEY)?.is_none() && self.log.is_empty() && self.state.get(LAST_PURGED_KEY)?.is_none())
    }

    /// Reads every stored record once so that a corrupt log refuses to start
    /// the node with a clear reason, instead of failing inside openraft later.
    pub fn verify(&self) -> Result<(), String> {
        let mut prev: Option<u64> = None;
        for kv in self.log.iter() {
            let (k, v) = kv.map_err(|e| format!("cannot read the raft log: {e}"))?;
            let index = u64::from_be_bytes(
                k.as_ref()
                    .try_into()
                    .map_err(|_| "raft log has a malformed key".to_string())?,
            );
            let entry = decode_entry(&v).map_err(|e| format!("raft log entry {index} is corrupt: {e}"))?;
            if entry.log_id.index != index {
                return Err(format!(
                    "raft log entry stored at {index} says it is {}",
                    entry.log_id.index
                ));
            }
            if let Some(p) = prev {
                if p + 1 != index {
                    return Err(format!("raft log has a gap between {p} and {index}"));
                }
            }
            prev = Some(index);
        }
        for key in [COMMITTED_KEY, LAST_PURGED_KEY] {
            if let Some(v) = self.state.get(key).map_err(|e| e.to_string())? {
                decode_log_id(&v).map_err(|e| format!("raft state record is corrupt: {e}"))?;
            }
        }
        if let Some(v) = self.state.get(VOTE_KEY).map_err(|e| e.to_string())? {
            let msg = pb::Vote::decode(v.as_ref()).map_err(|e| format!("stored vote is corrupt: {e}"))?;
            convert::vote_from_pb(Some(msg)).map_err(|e| format!("stored vote is corrupt: {e}"))?;
        }
        Ok(())
    }

    fn read_log_id(&self, key: &[u8]) -> Result<Option<LogId>, StorageError> {
        match self.state.get(key).map_err(read_err)? {
            Some(v) => Ok(Some(decode_log_id(&v)?)),
            None => Ok(None),
        }
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
    async fn flush(&self) -> Result<(), sled::Error> {
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
}

impl RaftLogReader<TypeConfig> for LogStore {
    async fn try_get_log_entries<RB: RangeBounds<u64> + Clone + Debug + OptionalSend>(
        &mut self,
        range: RB,
    ) -> Result<Vec<Entry>, StorageError> {
        let start = match range.start_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let end = match range.end_bound() {
            Bound::Included(i) => Bound::Included(index_key(*i)),
            Bound::Excluded(i) => Bound::Excluded(index_key(*i)),
            Bound::Unbounded => Bound::Unbounded,
        };
        let mut entries = Vec::new();
        for kv in self.log.range::<[u8; 8], _>((start, end)) {
            let (_, v) = kv.map_err(read_err)?;
            entries.push(decode_entry(&v)?);
        }
        Ok(entries)
    }
}

impl RaftLogStorage<TypeConfig> for LogStore {
    type LogReader = LogStore;

    async fn get_log_state(&mut self) -> Result<LogState<TypeConfig>, StorageError> {
        let last_purged_log_id = self.read_log_id(LAST_PURGED_KEY)?;
        let last = match self.log.last().map_err(read_err)? {
            Some((_, v)) => Some(decode_entry(&v)?.log_id),
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
        self.flush().await.map_err(io_err)?;
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
        // Only remembered here; `append` writes it to sled with the next entries, so it
        // costs no sled write (and sync) of its own. A stored commit index that lags is
        // safe: a restarted node re-learns the rest from the leader.
        self.commit_index.set(&committed);
        self.committed.lock().expect("commit marker lock").0 = committed;
        Ok(())
    }

    async fn read_committed(&mut self) -> Result<Option<LogId>, StorageError> {
        let committed = self.read_log_id(COMMITTED_KEY)?;
        *self.committed.lock().expect("commit marker lock") = (committed, committed);
        self.commit_index.set(&committed);
        Ok(committed)
    }

    async fn append<I>(&mut self, entries: I, callback: LogFlushed<TypeConfig>) -> Result<(), StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        // Plain inserts, not a sled batch: a batch makes sled write and sync its log once
        // more, and atomicity is not needed here — sled recovers a prefix of its log, so a
        // crash keeps a prefix of these entries, which is what Raft allows.
        for entry in entries {
            self.log
                .insert(
                    index_key(entry.log_id.index),
                    convert::entry_to_pb(&entry).encode_to_vec(),
                )
                .map_err(write_err)?;
        }
        self.store_commit_marker()?;
        // One fsync for the whole batch; openraft is told only after it.
        let flushed = self.flush().await;
        let result = flushed
            .as_ref()
            .map(|_| ())
            .map_err(|e| std::io::Error::other(e.to_string()));
        callback.log_io_completed(result);
        flushed.map_err(write_err)?;
        Ok(())
    }

    async fn truncate(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // Remove [log_id.index, ..): entries that conflict with the leader's log.
        let mut batch = sled::Batch::default();
        for kv in self.log.range(index_key(log_id.index)..) {
            let (k, _) = kv.map_err(write_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }

    async fn purge(&mut self, log_id: LogId) -> Result<(), StorageError> {
        // The state machine lives in the same sled database; flushing first makes
        // its applied state (which covers these entries) durable before the
        // entries disappear, so a restart never needs a purged entry.
        self.flush().await.map_err(write_err)?;
        self.state
            .insert(LAST_PURGED_KEY, convert::log_id_to_pb(&log_id).encode_to_vec())
            .map_err(write_err)?;
        let mut batch = sled::Batch::default();
        for kv in self.log.range(..=index_key(log_id.index)) {
            let (k, _) = kv.map_err(write_err)?;
            batch.remove(k);
        }
        self.log.apply_batch(batch).map_err(write_err)?;
        Ok(())
    }
}
