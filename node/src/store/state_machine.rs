//! The replicated key-value state, its snapshots, and the reads served from it.
//!
//! Tree `state_machine` holds user data under the prefix `d` and the applied
//! log id and membership under `m:`; each `apply` call writes its data and the
//! new applied log id in one atomic sled batch, so a crash never leaves data
//! applied without the marker (or the reverse). Snapshots are one file,
//! `snapshot.bin` in the data directory, written to a temporary name, fsynced
//! and renamed, then installed into the tree in one batch.

use std::collections::HashMap;
use std::io::{Cursor, Write};
use std::path::{Path, PathBuf};

use bytes::{Buf, Bytes};
use openraft::storage::RaftStateMachine;
use openraft::{AnyError, EntryPayload, OptionalSend, RaftSnapshotBuilder, StorageIOError};
use prost::Message;
use raftkv::raft_pb as pb;

use crate::convert;
use crate::types::{
    BatchResult, Command, CommandResult, Entry, LogId, Snapshot, SnapshotMeta, StorageError, StoredMembership, TypeConfig,
};

const DATA_PREFIX: u8 = b'd';
const APPLIED_KEY: &[u8] = b"m:applied";
const MEMBERSHIP_KEY: &[u8] = b"m:membership";
const SNAPSHOT_FILE: &str = "snapshot.bin";

fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

fn sm_read_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::read_state_machine(AnyError::new(&e)).into()
}

fn sm_write_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_state_machine(AnyError::new(&e)).into()
}

fn snap_err(e: impl std::error::Error + 'static) -> StorageError {
    StorageIOError::write_snapshot(None, AnyError::new(&e)).into()
}

fn join_err(e: tokio::task::JoinError) -> StorageError {
    StorageIOError::write_state_machine(AnyError::error(format!("storage task failed: {e}"))).into()
}

/// Read access to the state machine's data for the KV service. Reads see
/// every entry applied so far; whether that is recent enough is the caller's
/// business (see `kv_service.rs`).
#[derive(Clone)]
pub struct KvReader {
    tree: sled::Tree,
}

impl KvReader {
    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, sled::Error> {
        Ok(self.tree.get(data_key(key))?.map(|v| Bytes::copy_from_slice(&v)))
    }
}

/// openraft's state machine on sled.
pub struct StateMachine {
    db: sled::Db,
    tree: sled::Tree,
    dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
}

impl StateMachine {
    /// Opens the state machine in `dir` and makes it agree with the newest
    /// snapshot: if a crash came between writing a received snapshot and
    /// installing it, the install is finished here.
    pub fn open(db: &sled::Db, dir: &Path) -> Result<StateMachine, String> {
        let tree = db.open_tree("state_machine").map_err(|e| format!("cannot open the state machine: {e}"))?;
        let applied = match tree.get(APPLIED_KEY).map_err(|e| e.to_string())? {
            Some(v) => Some(
                pb::LogId::decode(v.as_ref())
                    .map_err(|e| e.to_string())
                    .and_then(|m| convert::log_id_from_pb(m).map_err(|e| e.to_string()))
                    .map_err(|e| format!("state machine's applied marker is corrupt: {e}"))?,
            ),
            None => None,
        };
        let membership = match tree.get(MEMBERSHIP_KEY).map_err(|e| e.to_string())? {
            Some(v) => pb::StoredMembership::decode(v.as_ref())
                .map_err(|e| e.to_string())
                .and_then(|m| convert::stored_membership_from_pb(Some(m)).map_err(|e| e.to_string()))
                .map_err(|e| format!("state machine's membership record is corrupt: {e}"))?,
            None => StoredMembership::default(),
        };
        let mut sm = StateMachine { db: db.clone(), tree, dir: dir.to_path_buf(), applied, membership };
        if let Some((meta, body)) = read_snapshot_file(&sm.snapshot_path())? {
            if meta.last_log_id > sm.applied {
                sm.install_into_tree(&meta, &body).map_err(|e| format!("cannot install the snapshot: {e}"))?;
            }
        }
        Ok(sm)
    }

    pub fn reader(&self) -> KvReader {
        KvReader { tree: self.tree.clone() }
    }

    fn snapshot_path(&self) -> PathBuf {
        self.dir.join(SNAPSHOT_FILE)
    }

    /// Replaces all data with the snapshot's, and sets applied and membership,
    /// in one atomic batch.
    fn install_into_tree(&mut self, meta: &SnapshotMeta, body: &[u8]) -> Result<(), StorageError> {
        let mut batch = sled::Batch::default();
        for kv in self.tree.scan_prefix([DATA_PREFIX]) {
            let (k, _) = kv.map_err(sm_read_err)?;
            batch.remove(k);
        }
        for pair in SnapshotRecords::new(body) {
            let pair = pair.map_err(sm_read_err)?;
            batch.insert(data_key(&pair.key), pair.value.as_ref());
        }
        set_markers(&mut batch, &meta.last_log_id, Some(&meta.last_membership));
        self.tree.apply_batch(batch).map_err(sm_write_err)?;
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        Ok(())
    }
}

fn set_markers(batch: &mut sled::Batch, applied: &Option<LogId>, membership: Option<&StoredMembership>) {
    if let Some(applied) = applied {
        batch.insert(APPLIED_KEY, convert::log_id_to_pb(applied).encode_to_vec());
    }
    if let Some(m) = membership {
        batch.insert(MEMBERSHIP_KEY, convert::stored_membership_to_pb(m).encode_to_vec());
    }
}

/// Iterates the length-delimited `KeyValue` records of a snapshot body.
struct SnapshotRecords<'a> {
    buf: &'a [u8],
}

impl<'a> SnapshotRecords<'a> {
    fn new(buf: &'a [u8]) -> Self {
        SnapshotRecords { buf }
    }
}

impl Iterator for SnapshotRecords<'_> {
    type Item = Result<pb::KeyValue, prost::DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if !self.buf.has_remaining() {
            return None;
        }
        Some(pb::KeyValue::decode_length_delimited(&mut self.buf))
    }
}

/// Serialises every key-value pair, in key order, as a snapshot body.
fn encode_body(tree: &sled::Tree) -> Result<Vec<u8>, StorageError> {
    let mut body = Vec::new();
    for kv in tree.scan_prefix([DATA_PREFIX]) {
        let (k, v) = kv.map_err(sm_read_err)?;
        let record = pb::KeyValue { key: Bytes::copy_from_slice(&k[1..]), value: Bytes::copy_from_slice(&v) };
        record.encode_length_delimited(&mut body).map_err(snap_err)?;
    }
    Ok(body)
}

/// Writes `meta` then `body` to `path` durably: temporary file, fsync, rename,
/// fsync of the directory.
fn write_snapshot_file(path: &Path, meta: &SnapshotMeta, body: &[u8]) -> std::io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = std::fs::File::create(&tmp)?;
        f.write_all(&convert::snapshot_meta_to_pb(meta).encode_length_delimited_to_vec())?;
        f.write_all(body)?;
        f.sync_all()?;
    }
    std::fs::rename(&tmp, path)?;
    if let Some(dir) = path.parent() {
        std::fs::File::open(dir)?.sync_all()?;
    }
    Ok(())
}

fn read_snapshot_file(path: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, String> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(format!("cannot read {}: {e}", path.display())),
    };
    let mut buf = bytes.as_slice();
    let meta = pb::SnapshotMeta::decode_length_delimited(&mut buf)
        .map_err(|e| e.to_string())
        .and_then(|m| convert::snapshot_meta_from_pb(Some(m)).map_err(|e| e.to_string()))
        .map_err(|e| format!("snapshot file {} is corrupt: {e}", path.display()))?;
    let body = buf.to_vec();
    if let Some(Err(e)) = SnapshotRecords::new(&body).find(|r| r.is_err()) {
        return Err(format!("snapshot file {} is corrupt: {e}", path.display()));
    }
    Ok(Some((meta, body)))
}

/// Builds a snapshot from a copy of the state taken when the builder was made,
/// so concurrent applies cannot tear it.
pub struct SnapshotBuilder {
    dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    body: Vec<u8>,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    async fn build_snapshot(&mut self) -> Result<Snapshot, StorageError> {
        let snapshot_id = match &self.applied {
            Some(id) => format!("{}-{}-{}", id.leader_id.term, id.index, std::process::id()),
            None => format!("empty-{}", std::process::id()),
        };
        let meta = SnapshotMeta { last_log_id: self.applied, last_membership: self.membership.clone(), snapshot_id };
        let body = std::mem::take(&mut self.body);
        let path = self.dir.join(SNAPSHOT_FILE);
        let (meta2, body) = tokio::task::spawn_blocking(move || {
            write_snapshot_file(&path, &meta, &body).map(|_| (meta, body))
        })
        .await
        .map_err(join_err)?
        .map_err(snap_err)?;
        tracing::info!(last_log_id = ?meta2.last_log_id, bytes = body.len(), "snapshot built");
        Ok(Snapshot { meta: meta2, snapshot: Box::new(Cursor::new(body)) })
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> Result<(Option<LogId>, StoredMembership), StorageError> {
        Ok((self.applied, self.membership.clone()))
    }

    async fn apply<I>(&mut self, entries: I) -> Result<Vec<BatchResult>, StorageError>
    where
        I: IntoIterator<Item = Entry> + OptionalSend,
        I::IntoIter: OptionalSend,
    {
        let mut batch = sled::Batch::default();
        // What this call has written so far, so later commands see earlier ones.
        let mut written: HashMap<Bytes, bool> = HashMap::new();
        let mut results = Vec::new();
        let mut applied = self.applied;
        let mut membership = None;
        for entry in entries {
            debug_assert!(Some(entry.log_id) > applied, "log applied out of order");
            applied = Some(entry.log_id);
            match entry.payload {
                EntryPayload::Blank => results.push(BatchResult::default()),
                EntryPayload::Membership(m) => {
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    results.push(BatchResult::default());
                }
                EntryPayload::Normal(cmds) => {
                    let mut out = Vec::with_capacity(cmds.commands.len());
                    for cmd in cmds.commands {
                        match cmd {
                            Command::Put { key, value } => {
                                batch.insert(data_key(&key), value.as_ref());
                                written.insert(key, true);
                                out.push(CommandResult::Put);
                            }
                            Command::Delete { key } => {
                                let dk = data_key(&key);
                                let existed = match written.get(&key) {
                                    Some(present) => *present,
                                    None => self.tree.contains_key(&dk).map_err(sm_read_err)?,
                                };
                                batch.remove(dk);
                                written.insert(key, false);
                                out.push(CommandResult::Delete { existed });
                            }
                        }
                    }
                    results.push(BatchResult { results: out });
                }
            }
        }
        set_markers(&mut batch, &applied, membership.as_ref());
        self.tree.apply_batch(batch).map_err(sm_write_err)?;
        self.applied = applied;
        if let Some(m) = membership {
            self.membership = m;
        }
        Ok(results)
    }

    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        // Runs in openraft's state-machine task, between applies: the copy is consistent.
        let tree = self.tree.clone();
        let body = match tokio::task::spawn_blocking(move || encode_body(&tree)).await {
            Ok(Ok(body)) => body,
            // The builder trait cannot fail here; an empty body would be wrong, so stop loudly.
            Ok(Err(e)) => panic!("cannot read the state machine to build a snapshot: {e}"),
            Err(e) => panic!("snapshot encoding task failed: {e}"),
        };
        SnapshotBuilder { dir: self.dir.clone(), applied: self.applied, membership: self.membership.clone(), body }
    }

    async fn begin_receiving_snapshot(&mut self) -> Result<Box<Cursor<Vec<u8>>>, StorageError> {
        Ok(Box::new(Cursor::new(Vec::new())))
    }

    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: Box<Cursor<Vec<u8>>>) -> Result<(), StorageError> {
        let body = snapshot.into_inner();
        if let Some(Err(e)) = SnapshotRecords::new(&body).find(|r| r.is_err()) {
            return Err(StorageIOError::read_snapshot(Some(meta.signature()), AnyError::new(&e)).into());
        }
        // File first: if we crash before the tree is updated, `open` finishes the install.
        let path = self.snapshot_path();
        let meta2 = meta.clone();
        let body = tokio::task::spawn_blocking(move || write_snapshot_file(&path, &meta2, &body).map(|_| body))
            .await
            .map_err(join_err)?
            .map_err(snap_err)?;
        self.install_into_tree(meta, &body)?;
        self.db.flush_async().await.map_err(sm_write_err)?;
        tracing::info!(last_log_id = ?meta.last_log_id, bytes = body.len(), "snapshot installed");
        Ok(())
    }

    async fn get_current_snapshot(&mut self) -> Result<Option<Snapshot>, StorageError> {
        let path = self.snapshot_path();
        let found = tokio::task::spawn_blocking(move || read_snapshot_file(&path)).await.map_err(join_err)?;
        match found {
            Ok(Some((meta, body))) => Ok(Some(Snapshot { meta, snapshot: Box::new(Cursor::new(body)) })),
            Ok(None) => Ok(None),
            Err(e) => Err(StorageIOError::read_snapshot(None, AnyError::error(e)).into()),
        }
    }
}
