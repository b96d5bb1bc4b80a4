//! The redo record: how the writes of one apply take effect as a unit in sled without a
//! sled batch.
//!
//! A sled batch makes sled write out and sync its log buffer twice, waking its I/O
//! threads, on every apply (measured costly: BENCHMARKS.md, "No sled batches in the
//! state machine"). Instead an
//! apply's writes ([`Writes`]) go first into one redo record under one key
//! (`REDO_KEY`), then to their own keys, one by one. sled recovers a prefix of its
//! log, so after a crash either the record is missing, and so are all the writes
//! after it (openraft applies the entries again from the Raft log, as the applied
//! marker says), or it is there and [`finish_latest`] makes its writes again at
//! open.
//!
//! Invariant: every write of a record sets a final value (an insert or a remove,
//! never a read-modify-write), so making them a second time is harmless.

use prost::Message;
use raftkv::raft_pb as pb;

use super::Writes;
use crate::store::keys::REDO_KEY;

/// Makes `writes` take effect in `tree` as a unit: the redo record first, then each write.
/// Readers see the writes in order, as they happen.
pub(super) fn commit(tree: &sled::Tree, writes: Writes) -> Result<(), sled::Error> {
    let record = pb::RedoRecord {
        writes: writes.into_writes(),
    };
    tree.insert(REDO_KEY, record.encode_to_vec())?;
    make_writes(tree, record.writes)
}

/// Why the latest apply cannot be finished at open. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum RedoError {
    #[error(transparent)]
    Read(sled::Error),
    #[error("state machine's redo record is corrupt: {0}")]
    Corrupt(prost::DecodeError),
    #[error("cannot redo the latest apply: {0}")]
    Write(sled::Error),
}

/// At open: makes the writes of the latest redo record again, since a crash may have cut
/// them short.
pub(super) fn finish_latest(tree: &sled::Tree) -> Result<(), RedoError> {
    let Some(redo) = tree.get(REDO_KEY).map_err(RedoError::Read)? else {
        return Ok(());
    };
    let redo = pb::RedoRecord::decode(redo.as_ref()).map_err(RedoError::Corrupt)?;
    make_writes(tree, redo.writes).map_err(RedoError::Write)
}

/// Makes `writes` in `tree` one by one.
fn make_writes(tree: &sled::Tree, writes: Vec<pb::RedoWrite>) -> Result<(), sled::Error> {
    for w in writes {
        match w.value {
            Some(v) => tree.insert(w.key.as_ref(), v.as_ref())?,
            None => tree.remove(w.key.as_ref())?,
        };
    }
    Ok(())
}
