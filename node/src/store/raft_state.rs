//! The durable Raft state beside the log, in the log's directory: one small checksummed
//! file each (`state_file.rs`).
//!
//! - `vote`: the vote, replaced durably before `save_vote` returns. Damaged: the node
//!   refuses to start (it might otherwise vote twice in a term).
//! - `purged`: the purge point, replaced durably before any log segment is deleted.
//!   Damaged: refused (the log's start would be unknown).
//! - `committed`: the commit marker, rewritten in place without a sync after the log's
//!   appends are durable, never beyond them. It may lag or be lost: missing or damaged,
//!   it is read as none, which is safe because openraft only uses it at startup to
//!   re-apply entries it knows are committed; without it a restarted node applies them
//!   once the leader tells it the commit index again.
//!
//! All writes come from the log's writer thread (`wal_writer.rs`), in the order asked.

use std::io;
use std::path::{Path, PathBuf};

use prost::Message;

use crate::convert;
use crate::store::state_file::{self, Overwriter, StateFileError};
use crate::types::{LogId, Vote};

const VOTE_FILE: &str = "vote";
const PURGED_FILE: &str = "purged";
const COMMITTED_FILE: &str = "committed";

/// Why the Raft state cannot be read. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum RaftStateError {
    #[error(transparent)]
    File(#[from] StateFileError),
    #[error("stored vote is corrupt: {0}")]
    CorruptVote(convert::DecodeError),
    #[error("stored purge point is corrupt: {0}")]
    CorruptPurged(convert::DecodeError),
    #[error("cannot open the commit marker: {0}")]
    Committed(io::Error),
}

/// What the state files held at open.
#[derive(Debug, Default)]
pub(super) struct Stored {
    pub(super) vote: Option<Vote>,
    pub(super) purged: Option<LogId>,
    pub(super) committed: Option<LogId>,
}

/// Writes the state files of one log directory.
pub(super) struct RaftStateFiles {
    dir: PathBuf,
    committed: Overwriter,
}

impl RaftStateFiles {
    /// Reads the state files in `dir` and opens them for writing.
    pub(super) fn open(dir: &Path) -> Result<(RaftStateFiles, Stored), RaftStateError> {
        let vote = match state_file::read(&dir.join(VOTE_FILE))? {
            Some(bytes) => {
                Some(convert::decode(&bytes, |v| convert::vote_from_pb(Some(v))).map_err(RaftStateError::CorruptVote)?)
            }
            None => None,
        };
        let purged = match state_file::read(&dir.join(PURGED_FILE))? {
            Some(bytes) => Some(decode_log_id(&bytes).map_err(RaftStateError::CorruptPurged)?),
            None => None,
        };
        let committed_path = dir.join(COMMITTED_FILE);
        let committed = match state_file::read(&committed_path) {
            Ok(Some(bytes)) => match decode_log_id(&bytes) {
                Ok(id) => Some(id),
                Err(error) => {
                    tracing::warn!(%error, "the commit marker does not decode; read as none (it may lag)");
                    None
                }
            },
            Ok(None) => None,
            Err(error) => {
                tracing::warn!(%error, "the commit marker is unreadable; read as none (it may lag)");
                None
            }
        };
        let files = RaftStateFiles {
            dir: dir.to_path_buf(),
            committed: Overwriter::open(&committed_path).map_err(RaftStateError::Committed)?,
        };
        Ok((
            files,
            Stored {
                vote,
                purged,
                committed,
            },
        ))
    }

    /// Replaces the vote, durably.
    pub(super) fn save_vote(&self, vote: &Vote) -> io::Result<()> {
        state_file::replace(&self.dir.join(VOTE_FILE), &convert::vote_to_pb(vote).encode_to_vec())
    }

    /// Replaces the purge point, durably.
    pub(super) fn save_purged(&self, purged: &LogId) -> io::Result<()> {
        state_file::replace(
            &self.dir.join(PURGED_FILE),
            &convert::log_id_to_pb(purged).encode_to_vec(),
        )
    }

    /// Rewrites the commit marker, without a sync.
    pub(super) fn save_committed(&self, committed: &LogId) -> io::Result<()> {
        self.committed.write(&convert::log_id_to_pb(committed).encode_to_vec())
    }
}

fn decode_log_id(bytes: &[u8]) -> Result<LogId, convert::DecodeError> {
    convert::decode(bytes, convert::log_id_from_pb)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::LeaderId;

    fn log_id(term: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: 1 }, index)
    }

    #[test]
    fn saved_state_reads_back_at_the_next_open() {
        let dir = tempfile::tempdir().unwrap();
        let (files, stored) = RaftStateFiles::open(dir.path()).unwrap();
        assert!(stored.vote.is_none() && stored.purged.is_none() && stored.committed.is_none());
        files.save_vote(&Vote::new(3, 2)).unwrap();
        files.save_purged(&log_id(2, 10)).unwrap();
        files.save_committed(&log_id(3, 1_000_000)).unwrap();
        files.save_committed(&log_id(3, 12)).unwrap();
        drop(files);
        let (_, stored) = RaftStateFiles::open(dir.path()).unwrap();
        assert_eq!(stored.vote, Some(Vote::new(3, 2)));
        assert_eq!(stored.purged, Some(log_id(2, 10)));
        assert_eq!(stored.committed, Some(log_id(3, 12)));
    }

    #[test]
    fn a_damaged_vote_or_purge_point_is_refused_and_a_damaged_commit_marker_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let (files, _) = RaftStateFiles::open(dir.path()).unwrap();
        files.save_vote(&Vote::new(3, 2)).unwrap();
        files.save_purged(&log_id(2, 10)).unwrap();
        files.save_committed(&log_id(3, 12)).unwrap();
        drop(files);
        let cut = |name: &str| {
            let path = dir.path().join(name);
            let bytes = std::fs::read(&path).unwrap();
            std::fs::write(&path, &bytes[..bytes.len() - 1]).unwrap();
        };

        cut(COMMITTED_FILE);
        let (_, stored) = RaftStateFiles::open(dir.path()).unwrap();
        assert_eq!(stored.committed, None, "a torn commit marker is none");

        cut(PURGED_FILE);
        let err = RaftStateFiles::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("purged is corrupt"), "{err}");

        cut(VOTE_FILE);
        let err = RaftStateFiles::open(dir.path()).err().unwrap();
        assert!(err.to_string().contains("vote is corrupt"), "{err}");
        assert!(!err.to_string().contains('\n'));
    }
}
