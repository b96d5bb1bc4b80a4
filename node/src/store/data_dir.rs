//! Decides whether a data directory may be used by this node, and opens it.
//!
//! A directory records which node and which initial cluster it belongs to the
//! first time it is used. Later starts check both and refuse a mismatch, and
//! refuse a directory that is unreadable or corrupt, with a one-line reason.
//! Nothing here ever deletes or re-initialises data.

use std::path::{Path, PathBuf};

use crate::store::log_store::LogStoreOpenError;
use crate::store::state_machine::StateMachineOpenError;
use crate::store::{wal, LogStore, StateMachine};

const IDENTITY_TREE: &str = "identity";
const NODE_ID_KEY: &[u8] = b"node_id";
const CLUSTER_KEY: &[u8] = b"initial_cluster";
const FORMAT_KEY: &[u8] = b"format";
/// Bumped whenever the on-disk layout changes incompatibly; a directory of any other
/// format is refused, never converted (no raftkv was released before format 3).
/// 1: the Raft log in sled. 2: the Raft log in its own files (`wal.rs`). 3: a client
/// session's results in records of their own beside its meta (`keys.rs`).
const FORMAT_VERSION: u64 = 3;
/// The Raft log's directory, inside the data directory.
const WAL_DIR: &str = "raft-log";
/// sled's segment size. sled writes any item larger than a quarter of a segment to a
/// separate "blob" file that it never fsyncs; with 8 MiB segments every value the state
/// machine stores (at most one 1 MiB command, or a 1 MiB write group of them, plus framing)
/// stays in the main file, which `LogStore` fsyncs before it purges log entries.
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;

/// Why a data directory cannot be used. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data directory {dir}: {reason}")]
    Unusable { dir: PathBuf, reason: String },
    #[error(
        "data directory {dir} belongs to node {found}, not node {expected}; use the right --id or another --data-dir"
    )]
    OtherNode { dir: PathBuf, found: u64, expected: u64 },
    #[error("data directory {dir} belongs to another cluster (initial cluster {found}, not {expected})")]
    OtherCluster {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error("data directory {dir} is corrupt: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
    #[error("data directory {dir} is corrupt: {reason}")]
    CorruptLog { dir: PathBuf, reason: LogStoreOpenError },
    #[error("data directory {dir} is corrupt: {reason}")]
    CorruptStateMachine {
        dir: PathBuf,
        reason: StateMachineOpenError,
    },
}

/// An opened, checked data directory.
pub struct DataDir {
    pub log_store: LogStore,
    pub state_machine: StateMachine,
    /// True when the directory has never held Raft state: only then may the
    /// node bootstrap the initial cluster.
    pub pristine: bool,
}

/// Opens `dir` for node `node_id` of the cluster described by `cluster`
/// (a canonical string of the initial members and addresses).
pub fn open(dir: &Path, node_id: u64, cluster: &str) -> Result<DataDir, DataDirError> {
    let unusable = |reason: String| DataDirError::Unusable {
        dir: dir.to_path_buf(),
        reason,
    };
    let corrupt = |reason: String| DataDirError::Corrupt {
        dir: dir.to_path_buf(),
        reason,
    };

    std::fs::create_dir_all(dir).map_err(|e| unusable(e.to_string()))?;
    let db_path = dir.join("db");
    let fresh = !db_path.exists();
    let db = sled::Config::new()
        .path(&db_path)
        .segment_size(SLED_SEGMENT_BYTES)
        .open()
        .map_err(|e| match e {
            sled::Error::Io(io) if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") => {
                unusable("another process is using it".to_string())
            }
            sled::Error::Corruption { at, .. } => corrupt(match at {
                Some(offset) => format!("the database files hold corrupted data (at {offset})"),
                None => "the database files hold corrupted data".to_string(),
            }),
            other => unusable(other.to_string()),
        })?;
    let identity = db.open_tree(IDENTITY_TREE).map_err(|e| corrupt(e.to_string()))?;

    match identity.get(NODE_ID_KEY).map_err(|e| corrupt(e.to_string()))? {
        None => {
            // Only a directory we just created may be claimed; a sled database
            // without our identity is not ours to adopt.
            let has_other_state = db.tree_names().iter().any(|n| {
                n.as_ref() != b"__sled__default"
                    && n.as_ref() != IDENTITY_TREE.as_bytes()
                    && db.open_tree(n).map(|t| !t.is_empty()).unwrap_or(true)
            });
            if !fresh && has_other_state {
                return Err(corrupt("it holds data but no node identity".to_string()));
            }
            // The log's directory exists before the identity that says it must.
            std::fs::create_dir_all(dir.join(WAL_DIR))
                .and_then(|_| std::fs::File::open(dir)?.sync_all())
                .map_err(|e| unusable(format!("cannot create the raft log directory: {e}")))?;
            identity
                .insert(NODE_ID_KEY, &node_id.to_be_bytes())
                .map_err(|e| unusable(e.to_string()))?;
            identity
                .insert(CLUSTER_KEY, cluster.as_bytes())
                .map_err(|e| unusable(e.to_string()))?;
            identity
                .insert(FORMAT_KEY, &FORMAT_VERSION.to_be_bytes())
                .map_err(|e| unusable(e.to_string()))?;
            db.flush().map_err(|e| unusable(e.to_string()))?;
        }
        Some(found) => {
            let found = u64::from_be_bytes(
                found
                    .as_ref()
                    .try_into()
                    .map_err(|_| corrupt("malformed node id record".to_string()))?,
            );
            if found != node_id {
                return Err(DataDirError::OtherNode {
                    dir: dir.to_path_buf(),
                    found,
                    expected: node_id,
                });
            }
            let format = identity.get(FORMAT_KEY).map_err(|e| corrupt(e.to_string()))?;
            let format = format
                .as_deref()
                .and_then(|f| <[u8; 8]>::try_from(f).ok())
                .map(u64::from_be_bytes);
            if format != Some(FORMAT_VERSION) {
                return Err(unusable("it was written by an incompatible raftkv version".to_string()));
            }
            let stored = identity
                .get(CLUSTER_KEY)
                .map_err(|e| corrupt(e.to_string()))?
                .unwrap_or_default();
            let stored = String::from_utf8_lossy(&stored).to_string();
            if stored != cluster {
                return Err(DataDirError::OtherCluster {
                    dir: dir.to_path_buf(),
                    found: stored,
                    expected: cluster.to_string(),
                });
            }
        }
    }

    // sled "flushes" with sync_file_range, which neither flushes the device's write cache nor
    // the file's metadata; the log store fsyncs sled's file itself through this handle.
    let sled_file =
        std::fs::File::open(db_path.join("db")).map_err(|e| unusable(format!("cannot open sled's file: {e}")))?;
    let wal_dir = dir.join(WAL_DIR);
    if !wal_dir.is_dir() {
        return Err(corrupt(format!("its raft log directory {WAL_DIR} is missing")));
    }
    let log_store =
        LogStore::open(&db, sled_file, &wal_dir, wal::SEGMENT_BYTES).map_err(|reason| DataDirError::CorruptLog {
            dir: dir.to_path_buf(),
            reason,
        })?;
    let pristine = log_store.is_pristine().map_err(|e| corrupt(e.to_string()))?;
    let state_machine = StateMachine::open(&db, dir).map_err(|reason| DataDirError::CorruptStateMachine {
        dir: dir.to_path_buf(),
        reason,
    })?;
    Ok(DataDir {
        log_store,
        state_machine,
        pristine,
    })
}

/// For tests: [`open`], waiting (up to a deadline) while sled's background threads of
/// an instance this process just dropped still hold the directory's lock.
#[cfg(test)]
pub(crate) fn open_when_released(dir: &Path, node_id: u64, cluster: &str) -> Result<DataDir, DataDirError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        match open(dir, node_id, cluster) {
            Err(DataDirError::Unusable { reason, .. })
                if reason.contains("another process") && std::time::Instant::now() < deadline =>
            {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            other => return other,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "1=127.0.0.1:1,2=127.0.0.1:2,3=127.0.0.1:3";

    #[test]
    fn a_directory_of_another_node_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        let err = open_when_released(dir.path(), 2, CLUSTER).err().unwrap();
        assert!(
            matches!(
                err,
                DataDirError::OtherNode {
                    found: 1,
                    expected: 2,
                    ..
                }
            ),
            "{err}"
        );
    }

    #[test]
    fn a_directory_of_an_unknown_format_is_refused_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        {
            // The directory's own sled, as a newer raftkv would have left it.
            let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
            let db = loop {
                match sled::Config::new()
                    .path(dir.path().join("db"))
                    .segment_size(SLED_SEGMENT_BYTES)
                    .open()
                {
                    Ok(db) => break db,
                    Err(_) if std::time::Instant::now() < deadline => {
                        std::thread::sleep(std::time::Duration::from_millis(2))
                    }
                    Err(e) => panic!("{e}"),
                }
            };
            let identity = db.open_tree(IDENTITY_TREE).unwrap();
            identity
                .insert(FORMAT_KEY, &(FORMAT_VERSION + 1).to_be_bytes())
                .unwrap();
            db.flush().unwrap();
        }
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains("incompatible raftkv version"), "{err}");
        // Refusing changed nothing: the same answer again.
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains("incompatible raftkv version"), "{err}");
    }

    #[test]
    fn a_directory_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        let err = open_when_released(dir.path(), 1, "1=127.0.0.1:1").err().unwrap();
        assert!(matches!(err, DataDirError::OtherCluster { .. }), "{err}");
    }

    #[test]
    fn reopening_the_same_node_works_and_is_not_pristine_after_a_vote() {
        let dir = tempfile::tempdir().unwrap();
        let d = open_when_released(dir.path(), 1, CLUSTER).unwrap();
        assert!(d.pristine);
        drop(d);
        assert!(open_when_released(dir.path(), 1, CLUSTER).is_ok());
    }

    #[test]
    fn the_largest_state_machine_value_stays_in_sleds_fsynced_file_not_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let opened = open_when_released(dir.path(), 1, CLUSTER).unwrap();
        drop(opened);
        let db = sled::Config::new()
            .path(dir.path().join("db"))
            .segment_size(SLED_SEGMENT_BYTES)
            .open()
            .unwrap();
        // One command at the limits, and a full write group, with generous framing.
        let biggest = raftkv::limits::MAX_VALUE_BYTES + raftkv::limits::MAX_KEY_BYTES + 64 * 1024;
        let biggest = biggest.max(crate::proposer::MAX_GROUP_BYTES + 64 * 1024);
        db.open_tree("state_machine")
            .unwrap()
            .insert(b"k", vec![7u8; biggest])
            .unwrap();
        db.flush().unwrap();
        let blobs = std::fs::read_dir(dir.path().join("db").join("blobs")).unwrap().count();
        assert_eq!(
            blobs, 0,
            "sled wrote a {biggest}-byte entry to a blob file, which it never fsyncs"
        );
    }

    #[test]
    fn a_missing_raft_log_is_refused_not_recreated() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        std::fs::remove_dir_all(dir.path().join(WAL_DIR)).unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(
            matches!(err, DataDirError::Corrupt { .. }) && err.to_string().contains(WAL_DIR),
            "{err}"
        );
        assert!(!dir.path().join(WAL_DIR).exists());
    }

    #[test]
    fn garbage_in_the_database_is_refused_without_touching_it() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        let conf = dir.path().join("db").join("conf");
        std::fs::write(&conf, b"not a sled config").unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains(&dir.path().display().to_string()), "{err}");
        assert_eq!(std::fs::read(&conf).unwrap(), b"not a sled config");
    }
}
