//! The snapshot file, `snapshot.bin` in the data directory: the newest snapshot this
//! node built or received, and the format of a snapshot's body, which is also what a
//! leader sends a follower.
//!
//! The file holds a length-delimited `pb::SnapshotMeta`, then the body: length-delimited
//! `pb::SnapshotRecord`s, every key-value pair in key order, then every client session
//! whole (its results inside).
//!
//! Invariants: the file is only ever replaced whole (written under a temporary name,
//! fsynced, renamed, the directory fsynced), so a crash leaves the old snapshot or the
//! new one, never part of one; a body is checked record by record before it is
//! written or installed.

use std::io::Write;
use std::path::{Path, PathBuf};

use bytes::Buf;
use prost::Message;
use raftkv::raft_pb as pb;

use crate::convert;
use crate::store::engine::{EngineError, View};
use crate::store::keys::{removed_member, user_key, DATA_PREFIX, REMOVED_MEMBER_PREFIX};
use crate::types::SnapshotMeta;

const SNAPSHOT_FILE: &str = "snapshot.bin";

/// Where the snapshot file of data directory `dir` is.
pub(super) fn path_in(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Iterates the length-delimited `SnapshotRecord`s of a snapshot body.
pub(super) struct SnapshotRecords<'a> {
    buf: &'a [u8],
}

impl<'a> SnapshotRecords<'a> {
    pub(super) fn new(buf: &'a [u8]) -> Self {
        SnapshotRecords { buf }
    }
}

impl Iterator for SnapshotRecords<'_> {
    type Item = Result<pb::SnapshotRecord, prost::DecodeError>;
    fn next(&mut self) -> Option<Self::Item> {
        if !self.buf.has_remaining() {
            return None;
        }
        Some(pb::SnapshotRecord::decode_length_delimited(&mut self.buf))
    }
}

/// Whether every record of `body` decodes: the first error if not.
pub(super) fn check_body(body: &[u8]) -> Result<(), prost::DecodeError> {
    match SnapshotRecords::new(body).find(|r| r.is_err()) {
        Some(Err(e)) => Err(e),
        _ => Ok(()),
    }
}

/// Serialises every key-value pair `view` shows, in key order, then the client
/// `sessions`, as a snapshot body.
pub(super) fn encode_body(view: &dyn View, sessions: Vec<pb::ClientSession>) -> Result<Vec<u8>, EngineError> {
    use pb::snapshot_record::Record;
    let mut body = Vec::new();
    let mut append = |record: Record| {
        pb::SnapshotRecord { record: Some(record) }
            .encode_length_delimited(&mut body)
            .expect("a Vec has room for any message")
    };
    for pair in view.prefix(&[DATA_PREFIX]) {
        let (k, value) = pair?;
        append(Record::Pair(pb::KeyValue {
            key: user_key(&k),
            value,
        }));
    }
    for session in sessions {
        append(Record::Session(session));
    }
    for pair in view.prefix(&[REMOVED_MEMBER_PREFIX]) {
        let (k, v) = pair?;
        if let Some((id, log_index)) = removed_member(&k, &v) {
            append(Record::RemovedMember(pb::RemovedMember { id, log_index }));
        }
    }
    Ok(body)
}

/// Writes `meta` then `body` to `path` durably: temporary file, fsync, rename,
/// fsync of the directory.
pub(super) fn write(path: &Path, meta: &SnapshotMeta, body: &[u8]) -> std::io::Result<()> {
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

/// Why the snapshot file cannot be read. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("cannot read {path}: {error}")]
    Unreadable { path: PathBuf, error: std::io::Error },
    #[error("snapshot file {path} is corrupt: {error}")]
    Corrupt { path: PathBuf, error: convert::DecodeError },
}

/// The snapshot in the file at `path`, checked, or `None` when there is no file.
pub(super) fn read(path: &Path) -> Result<Option<(SnapshotMeta, Vec<u8>)>, SnapshotFileError> {
    let bytes = match std::fs::read(path) {
        Ok(b) => b,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(SnapshotFileError::Unreadable {
                path: path.to_path_buf(),
                error,
            })
        }
    };
    let corrupt = |error: convert::DecodeError| SnapshotFileError::Corrupt {
        path: path.to_path_buf(),
        error,
    };
    let mut buf = bytes.as_slice();
    let meta = pb::SnapshotMeta::decode_length_delimited(&mut buf).map_err(|e| corrupt(e.into()))?;
    let meta = convert::snapshot_meta_from_pb(Some(meta)).map_err(|e| corrupt(e.into()))?;
    let body = buf.to_vec();
    check_body(&body).map_err(|e| corrupt(e.into()))?;
    Ok(Some((meta, body)))
}
