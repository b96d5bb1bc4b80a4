//! Decides whether a data directory may be used by this node, and opens it.
//!
//! A directory records which node and which initial cluster it belongs to the
//! first time it is used. Later starts check both and refuse a mismatch, and
//! refuse a directory that is unreadable or corrupt, with a one-line reason.
//! Nothing here ever deletes or re-initialises data.
//!
//! It also records the cluster's id (`raftkv::wire::ClusterId`): the one it was claimed with
//! ([`open_with_cluster_id`]), which a node of the initial cluster derives from its flags; once
//! recorded it is the directory's for good, whatever the flags of a later start.
//!
//! A node that joins a running cluster (`--join`) records an empty initial cluster and no
//! cluster id: it never bootstraps, and records the id its cluster's first message carries
//! ([`record_cluster_id`]). A node that saw itself removed from the membership records it ([`record_removal`]),
//! and the directory is refused from then on: a removed node's state must not come back.

use std::path::{Path, PathBuf};

use prost::Message;
use raftkv::raft_pb as pb;
use raftkv::wire::{ClusterId, DEFAULT_CLUSTER_TOKEN};

use crate::store::engine::{self, EngineError, EngineKind, EngineOptions};
use crate::store::log_store::LogStoreOpenError;
use crate::store::state_file::{self, StateFileError};
use crate::store::state_machine::StateMachineOpenError;
use crate::store::{wal, LogStore, StateMachine};

/// Bumped whenever the on-disk layout changes incompatibly; a directory of any other
/// format is refused, never converted (no raftkv was released before format 4).
/// 1: the Raft log in sled. 2: the Raft log in its own files (`wal.rs`). 3: a client
/// session's results in records of their own beside its meta (`keys.rs`). 4: the
/// identity, the vote and the log's markers in small files of their own
/// (`state_file.rs`), the state machine alone in `sm/`. 5: the snapshot file with a magic
/// and a checksummed trailer (`snapshot_file.rs`). 6: the identity records the cluster's id.
const FORMAT_VERSION: u64 = 6;
/// What the directory belongs to (`pb::DataDirIdentity` in a state file).
const IDENTITY_FILE: &str = "identity";
/// Written when the node saw itself removed from the cluster: the log index of the
/// membership that removed it, as a decimal number.
const REMOVED_FILE: &str = "removed";
/// The Raft log's directory, inside the data directory, with the vote and the log's
/// markers beside its segments (`raft_state.rs`).
const WAL_DIR: &str = "raft-log";
/// The state machine's directory, inside the data directory.
const SM_DIR: &str = "sm";
/// Before format 4 everything lived in one sled database, here.
const FORMAT_3_DATABASE: &str = "db";
/// What a directory that is claimed may already hold: the skeleton of a claim a crash
/// cut short (empty, see [`claim`]), and a file system's own directory at a mount point.
const CLAIMABLE: [&str; 4] = [WAL_DIR, SM_DIR, "identity.tmp", "lost+found"];

/// Why a data directory cannot be used. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum DataDirError {
    #[error("cannot use data directory {dir}: {reason}")]
    Unusable { dir: PathBuf, reason: String },
    #[error(
        "data directory {dir} belongs to node {found}, not node {expected}; use the right --id or another --data-dir"
    )]
    OtherNode { dir: PathBuf, found: u64, expected: u64 },
    #[error(
        "node {node} was removed from the cluster at log index {index}; to rejoin, start it with an empty data dir and --join and add it under a new id"
    )]
    Removed { node: u64, index: u64 },
    #[error("data directory {dir} belongs to a node that joined a running cluster; start it with --join, not --initial-cluster")]
    Joined { dir: PathBuf },
    #[error("data directory {dir} belongs to another cluster (initial cluster {found}, not {expected})")]
    OtherCluster {
        dir: PathBuf,
        found: String,
        expected: String,
    },
    #[error(
        "data directory {dir} was created with engine {found}, not {expected}; start it with --engine {found} (a directory keeps the engine it was created with)"
    )]
    OtherEngine {
        dir: PathBuf,
        found: String,
        expected: EngineKind,
    },
    #[error("data directory {dir} is corrupt: {reason}")]
    Corrupt { dir: PathBuf, reason: String },
    #[error("cannot use data directory {dir}: {error}")]
    Identity { dir: PathBuf, error: StateFileError },
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
    /// The id of the cluster the directory belongs to; None for a node that joined and has not
    /// heard from its cluster yet.
    pub cluster_id: Option<ClusterId>,
}

/// [`open_with_cluster_id`] with the id derived from `cluster` and the default token (none
/// when `cluster` is empty: a node that joins).
pub fn open(dir: &Path, node_id: u64, cluster: &str, options: &EngineOptions) -> Result<DataDir, DataDirError> {
    let cluster_id = (!cluster.is_empty()).then(|| ClusterId::derive(cluster, DEFAULT_CLUSTER_TOKEN));
    open_with_cluster_id(dir, node_id, cluster, cluster_id, options)
}

/// Opens `dir` for node `node_id` of the cluster described by `cluster`
/// (a canonical string of the initial members and addresses), with its state machine in
/// the engine `options` names (a new directory records it; an existing one must have it).
///
/// A directory claimed now records `cluster_id` (None: a node that joins; it records its
/// cluster's id later, [`record_cluster_id`]). One that already has an id keeps it: the id it
/// was claimed with is the cluster's, whatever the token of a later start. So a tool that
/// makes a data directory for a new cluster (a restore) claims it with the new cluster's id,
/// and the nodes started on it later need only their usual flags.
pub fn open_with_cluster_id(
    dir: &Path,
    node_id: u64,
    cluster: &str,
    cluster_id: Option<ClusterId>,
    options: &EngineOptions,
) -> Result<DataDir, DataDirError> {
    let unusable = |reason: String| DataDirError::Unusable {
        dir: dir.to_path_buf(),
        reason,
    };
    let corrupt = |reason: String| DataDirError::Corrupt {
        dir: dir.to_path_buf(),
        reason,
    };

    std::fs::create_dir_all(dir).map_err(|e| unusable(e.to_string()))?;
    let expected = identity(node_id, cluster, cluster_id, options);
    let recorded = match read_identity(dir)? {
        None => {
            claim(dir, &expected)?;
            expected
        }
        Some(found) => {
            check_identity(dir, &found, &expected)?;
            found
        }
    };
    if let Some(index) = removed_at(dir)? {
        return Err(DataDirError::Removed { node: node_id, index });
    }

    // What the engine finds wrong reaches the person as the one line of the refusal, not as
    // the engine's own log lines besides.
    let _engine_lines_left_out = engine::open_log::opening();
    let wal_dir = dir.join(WAL_DIR);
    let sm_dir = dir.join(SM_DIR);
    for needed in [WAL_DIR, SM_DIR] {
        if !dir.join(needed).is_dir() {
            return Err(corrupt(format!("its directory {needed} is missing")));
        }
    }
    let sm_was_empty = is_empty_dir(&sm_dir).map_err(|e| unusable(format!("cannot list {SM_DIR}: {e}")))?;
    let engine = engine::open(&sm_dir, options).map_err(|e| match e {
        EngineError::Locked => unusable(e.to_string()),
        EngineError::Io(e) => unusable(format!("cannot open its state machine: {e}")),
        other => corrupt(other.to_string()),
    })?;
    let persisted = engine.clone();
    let persist_state_machine = Box::new(move || Ok(persisted.persist()?));
    let log_store = LogStore::open(&wal_dir, wal::SEGMENT_BYTES, persist_state_machine).map_err(|reason| {
        DataDirError::CorruptLog {
            dir: dir.to_path_buf(),
            reason,
        }
    })?;
    let pristine = log_store.is_pristine();
    if sm_was_empty && !pristine {
        // Nothing may silently start the state machine over while the log says it held
        // state: the node would answer from an empty store.
        return Err(corrupt(format!(
            "its state machine ({SM_DIR}) is empty but its raft log is not"
        )));
    }
    let state_machine = StateMachine::open(engine, dir).map_err(|reason| DataDirError::CorruptStateMachine {
        dir: dir.to_path_buf(),
        reason,
    })?;
    // The log is purged only once the state machine made every entry up to the purge
    // point durable (`wal_writer.rs`), so a state machine behind it lost applies that the
    // log no longer holds (an engine that rolled back at recovery, or damage): refused,
    // never served. One behind the commit marker but not the purge point is a crash's
    // ordinary lag: the log still holds what it needs, and openraft applies it again.
    if let Some(purged) = log_store.purged_index() {
        let applied = state_machine.applied_index();
        if applied.is_none_or(|applied| applied < purged) {
            let applied = applied.map_or("no entry".to_string(), |index| format!("entry {index}"));
            return Err(corrupt(format!(
                "its state machine ({SM_DIR}) has applied only up to {applied}, but the raft log was purged through entry {purged}, which it had applied: the state machine lost writes (rolled back or damaged)"
            )));
        }
    }
    Ok(DataDir {
        log_store,
        state_machine,
        pristine,
        cluster_id: recorded.cluster_id.map(ClusterId),
    })
}

/// What a directory of node `node_id` of the cluster `cluster` (the canonical initial cluster
/// string) with id `cluster_id` (None: a node that joins), on the engine `options` names,
/// records as its identity: the one place an identity is made, for a directory claimed at a
/// node's first start ([`open`]) and for one made by a restore ([`claim_for_restore`]).
fn identity(
    node_id: u64,
    cluster: &str,
    cluster_id: Option<ClusterId>,
    options: &EngineOptions,
) -> pb::DataDirIdentity {
    pb::DataDirIdentity {
        format: FORMAT_VERSION,
        node_id,
        initial_cluster: cluster.to_string(),
        engine: options.kind.name().to_string(),
        cluster_id: cluster_id.map(|id| id.0),
    }
}

/// Claims the empty directory `dir` for a node of a cluster restored from a backup
/// (`store/restore.rs`), exactly as [`open`] claims one at a node's first start, with the new
/// cluster's id `cluster_id`; returns where its Raft log and its state machine go.
pub(super) fn claim_for_restore(
    dir: &Path,
    node_id: u64,
    cluster: &str,
    cluster_id: ClusterId,
    options: &EngineOptions,
) -> Result<(PathBuf, PathBuf), DataDirError> {
    claim(dir, &identity(node_id, cluster, Some(cluster_id), options))?;
    Ok((dir.join(WAL_DIR), dir.join(SM_DIR)))
}

/// The identity stored in `dir`, if it has one.
fn read_identity(dir: &Path) -> Result<Option<pb::DataDirIdentity>, DataDirError> {
    let read = state_file::read(&dir.join(IDENTITY_FILE)).map_err(|error| DataDirError::Identity {
        dir: dir.to_path_buf(),
        error,
    });
    let Some(bytes) = read? else {
        return Ok(None);
    };
    pb::DataDirIdentity::decode(bytes.as_slice())
        .map(Some)
        .map_err(|e| DataDirError::Corrupt {
            dir: dir.to_path_buf(),
            reason: format!("its identity record does not decode: {e}"),
        })
}

/// Claims a directory without an identity for `identity`: only one that holds nothing
/// (at most the empty skeleton of a claim a crash cut short). The skeleton is made first
/// and the identity written last, durably, so a directory with an identity has both.
fn claim(dir: &Path, identity: &pb::DataDirIdentity) -> Result<(), DataDirError> {
    let unusable = |reason: String| DataDirError::Unusable {
        dir: dir.to_path_buf(),
        reason,
    };
    let entries = std::fs::read_dir(dir).map_err(|e| unusable(format!("cannot list it: {e}")))?;
    for entry in entries {
        let entry = entry.map_err(|e| unusable(format!("cannot list it: {e}")))?;
        let name = entry.file_name();
        let name = name.to_string_lossy();
        if name == FORMAT_3_DATABASE {
            return Err(unusable("it was written by an incompatible raftkv version".to_string()));
        }
        let skeleton = [WAL_DIR, SM_DIR].contains(&name.as_ref());
        let claimable = CLAIMABLE.contains(&name.as_ref())
            && (!skeleton || is_empty_dir(&entry.path()).map_err(|e| unusable(format!("cannot list {name}: {e}")))?);
        if !claimable {
            return Err(DataDirError::Corrupt {
                dir: dir.to_path_buf(),
                reason: format!("it holds data ({name}) but no node identity"),
            });
        }
    }
    for sub in [WAL_DIR, SM_DIR] {
        std::fs::create_dir_all(dir.join(sub)).map_err(|e| unusable(format!("cannot create {sub}: {e}")))?;
    }
    state_file::sync_parent(&dir.join(WAL_DIR))
        .and_then(|_| state_file::replace(&dir.join(IDENTITY_FILE), &identity.encode_to_vec()))
        .map_err(|e| unusable(format!("cannot write its identity: {e}")))
}

/// Refuses a directory whose identity is not `expected`.
fn check_identity(dir: &Path, found: &pb::DataDirIdentity, expected: &pb::DataDirIdentity) -> Result<(), DataDirError> {
    if found.format != expected.format {
        return Err(DataDirError::Unusable {
            dir: dir.to_path_buf(),
            reason: "it was written by an incompatible raftkv version".to_string(),
        });
    }
    if found.node_id != expected.node_id {
        return Err(DataDirError::OtherNode {
            dir: dir.to_path_buf(),
            found: found.node_id,
            expected: expected.node_id,
        });
    }
    // A node of the initial cluster may be restarted with --join (it has its state; joining
    // only means it never bootstraps), but a joined node must not bootstrap a cluster of its own.
    if found.initial_cluster.is_empty() && !expected.initial_cluster.is_empty() {
        return Err(DataDirError::Joined { dir: dir.to_path_buf() });
    }
    if !expected.initial_cluster.is_empty() && found.initial_cluster != expected.initial_cluster {
        return Err(DataDirError::OtherCluster {
            dir: dir.to_path_buf(),
            found: found.initial_cluster.clone(),
            expected: expected.initial_cluster.clone(),
        });
    }
    // Only a node that joined waits for its cluster's id; the others were claimed with it.
    if found.cluster_id.is_none() && !found.initial_cluster.is_empty() {
        return Err(DataDirError::Corrupt {
            dir: dir.to_path_buf(),
            reason: "its identity names an initial cluster but no cluster id".to_string(),
        });
    }
    if found.engine != expected.engine {
        return Err(DataDirError::OtherEngine {
            dir: dir.to_path_buf(),
            found: found.engine.clone(),
            expected: EngineKind::from_name(&expected.engine).expect("we name engines we know"),
        });
    }
    Ok(())
}

/// Records, durably, the id of the cluster a node that joined was added to (the id its
/// cluster's first message carried). A directory that already has an id keeps it: recording
/// another is refused.
pub fn record_cluster_id(dir: &Path, cluster_id: ClusterId) -> Result<(), DataDirError> {
    let mut identity = read_identity(dir)?.ok_or_else(|| DataDirError::Corrupt {
        dir: dir.to_path_buf(),
        reason: "its identity is gone".to_string(),
    })?;
    match identity.cluster_id.map(ClusterId) {
        Some(recorded) if recorded == cluster_id => return Ok(()),
        Some(recorded) => {
            return Err(DataDirError::Unusable {
                dir: dir.to_path_buf(),
                reason: format!("it already belongs to cluster {recorded}, not {cluster_id}"),
            })
        }
        None => identity.cluster_id = Some(cluster_id.0),
    }
    state_file::replace(&dir.join(IDENTITY_FILE), &identity.encode_to_vec()).map_err(|e| DataDirError::Unusable {
        dir: dir.to_path_buf(),
        reason: format!("cannot record its cluster id: {e}"),
    })
}

/// Records, durably, that this node was removed from the cluster by the membership at log
/// `index`: the directory is refused from then on.
pub fn record_removal(dir: &Path, index: u64) -> std::io::Result<()> {
    state_file::replace(&dir.join(REMOVED_FILE), index.to_string().as_bytes())
}

/// The log index at which this directory's node was removed, if it was.
fn removed_at(dir: &Path) -> Result<Option<u64>, DataDirError> {
    let read = state_file::read(&dir.join(REMOVED_FILE)).map_err(|error| DataDirError::Identity {
        dir: dir.to_path_buf(),
        error,
    })?;
    let Some(bytes) = read else { return Ok(None) };
    let index = std::str::from_utf8(&bytes)
        .ok()
        .and_then(|text| text.parse().ok())
        .ok_or_else(|| DataDirError::Corrupt {
            dir: dir.to_path_buf(),
            reason: format!("its {REMOVED_FILE} record is not a log index"),
        })?;
    Ok(Some(index))
}

fn is_empty_dir(path: &Path) -> std::io::Result<bool> {
    Ok(std::fs::read_dir(path)?.next().is_none())
}

/// For tests: [`open`] on the default engine, waiting (up to a deadline) while an engine
/// this process just dropped still holds the directory's lock.
#[cfg(test)]
pub(crate) fn open_when_released(dir: &Path, node_id: u64, cluster: &str) -> Result<DataDir, DataDirError> {
    open_with_engine_when_released(dir, node_id, cluster, EngineKind::default())
}

/// For tests: [`open_when_released`] with engine `kind`.
#[cfg(test)]
pub(crate) fn open_with_engine_when_released(
    dir: &Path,
    node_id: u64,
    cluster: &str,
    kind: EngineKind,
) -> Result<DataDir, DataDirError> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let options = EngineOptions {
        kind,
        cache_bytes: 8 << 20,
    };
    loop {
        match open(dir, node_id, cluster, &options) {
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

    fn rewrite_identity(dir: &Path, change: impl FnOnce(&mut pb::DataDirIdentity)) {
        let mut identity = read_identity(dir).unwrap().expect("an identity");
        change(&mut identity);
        state_file::replace(&dir.join(IDENTITY_FILE), &identity.encode_to_vec()).unwrap();
    }

    fn save_a_vote(d: &mut DataDir) {
        use openraft::storage::RaftLogStorage;
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(d.log_store.save_vote(&crate::types::Vote::new(1, 1)))
            .unwrap();
    }

    #[test]
    fn a_joined_directory_never_bootstraps_and_a_removed_one_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 4, "").unwrap());
        // A node that joined must not be restarted as the bootstrapper of a cluster of its own.
        let err = open_when_released(dir.path(), 4, CLUSTER).err().unwrap();
        assert!(matches!(err, DataDirError::Joined { .. }), "{err}");
        drop(open_when_released(dir.path(), 4, "").unwrap());

        record_removal(dir.path(), 17).unwrap();
        let err = open_when_released(dir.path(), 4, "").err().unwrap();
        assert_eq!(
            err.to_string(),
            "node 4 was removed from the cluster at log index 17; to rejoin, start it with an empty data dir and --join and add it under a new id"
        );
    }

    #[test]
    fn a_directory_keeps_the_cluster_id_it_was_claimed_with() {
        let dir = tempfile::tempdir().unwrap();
        let restored = ClusterId::derive(CLUSTER, "restored-1234");
        let options = EngineOptions::default();
        let d = open_with_cluster_id(dir.path(), 1, CLUSTER, Some(restored), &options).unwrap();
        assert_eq!(d.cluster_id, Some(restored));
        drop(d);
        // Started later with the usual flags (the default token), it is still the restored cluster.
        assert_eq!(
            open_when_released(dir.path(), 1, CLUSTER).unwrap().cluster_id,
            Some(restored)
        );
        assert_eq!(
            open_when_released(dir.path(), 1, "").unwrap().cluster_id,
            Some(restored)
        );
        // Recording the same id again changes nothing; another is refused.
        record_cluster_id(dir.path(), restored).unwrap();
        let other = ClusterId::derive(CLUSTER, DEFAULT_CLUSTER_TOKEN);
        let err = record_cluster_id(dir.path(), other).unwrap_err().to_string();
        assert!(err.contains(&format!("already belongs to cluster {restored}")), "{err}");
    }

    #[test]
    fn a_joined_directory_records_the_id_of_the_cluster_it_joined_once() {
        let dir = tempfile::tempdir().unwrap();
        assert_eq!(open_when_released(dir.path(), 4, "").unwrap().cluster_id, None);
        let id = ClusterId(0x0123_4567_89ab_cdef);
        record_cluster_id(dir.path(), id).unwrap();
        assert_eq!(open_when_released(dir.path(), 4, "").unwrap().cluster_id, Some(id));
        assert!(record_cluster_id(dir.path(), ClusterId(7)).is_err());
        assert_eq!(open_when_released(dir.path(), 4, "").unwrap().cluster_id, Some(id));
    }

    #[test]
    fn an_identity_with_an_initial_cluster_but_no_cluster_id_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        rewrite_identity(dir.path(), |identity| identity.cluster_id = None);
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap().to_string();
        assert!(err.contains("no cluster id"), "{err}");
    }

    #[test]
    fn a_node_of_the_initial_cluster_may_restart_with_join() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        drop(open_when_released(dir.path(), 1, "").unwrap());
    }

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
        rewrite_identity(dir.path(), |identity| identity.format = FORMAT_VERSION + 1);
        let before = std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains("incompatible raftkv version"), "{err}");
        // Refusing changed nothing: the same answer again.
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains("incompatible raftkv version"), "{err}");
        assert_eq!(std::fs::read(dir.path().join(IDENTITY_FILE)).unwrap(), before);
    }

    #[test]
    fn a_format_3_directory_is_refused_as_another_version_and_left_as_it_is() {
        let dir = tempfile::tempdir().unwrap();
        // Format 3 kept everything in one sled database, `db`.
        std::fs::create_dir(dir.path().join(FORMAT_3_DATABASE)).unwrap();
        std::fs::write(dir.path().join(FORMAT_3_DATABASE).join("conf"), b"sled").unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains("incompatible raftkv version"), "{err}");
        let names: Vec<_> = std::fs::read_dir(dir.path())
            .unwrap()
            .map(|e| e.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from(FORMAT_3_DATABASE)]);
    }

    #[test]
    fn a_directory_holding_data_but_no_identity_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("notes.txt"), b"mine").unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(
            err.to_string().contains("holds data (notes.txt) but no node identity"),
            "{err}"
        );

        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        std::fs::remove_file(dir.path().join(IDENTITY_FILE)).unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains("but no node identity"), "{err}");
    }

    #[test]
    fn a_claim_a_crash_cut_short_is_finished() {
        let dir = tempfile::tempdir().unwrap();
        for sub in [WAL_DIR, SM_DIR] {
            std::fs::create_dir(dir.path().join(sub)).unwrap();
        }
        std::fs::write(dir.path().join("identity.tmp"), b"half").unwrap();
        assert!(open_when_released(dir.path(), 1, CLUSTER).unwrap().pristine);
    }

    #[test]
    fn a_damaged_identity_is_refused_in_one_line() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        let path = dir.path().join(IDENTITY_FILE);
        let mut bytes = std::fs::read(&path).unwrap();
        *bytes.last_mut().unwrap() ^= 0x40;
        std::fs::write(&path, &bytes).unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap().to_string();
        assert!(err.contains("identity is corrupt") && !err.contains('\n'), "{err}");
    }

    #[test]
    fn a_directory_of_another_cluster_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        drop(open_when_released(dir.path(), 1, CLUSTER).unwrap());
        let err = open_when_released(dir.path(), 1, "1=127.0.0.1:1").err().unwrap();
        assert!(matches!(err, DataDirError::OtherCluster { .. }), "{err}");
    }

    #[test]
    fn a_directory_is_pristine_until_its_first_vote() {
        let dir = tempfile::tempdir().unwrap();
        let d = open_when_released(dir.path(), 1, CLUSTER).unwrap();
        assert!(d.pristine);
        drop(d);
        let mut d = open_when_released(dir.path(), 1, CLUSTER).unwrap();
        assert!(d.pristine, "nothing happened yet");
        save_a_vote(&mut d);
        drop(d);
        assert!(!open_when_released(dir.path(), 1, CLUSTER).unwrap().pristine);
    }

    #[test]
    fn an_emptied_state_machine_beside_a_raft_log_is_refused_not_started_over() {
        let dir = tempfile::tempdir().unwrap();
        let mut d = open_when_released(dir.path(), 1, CLUSTER).unwrap();
        save_a_vote(&mut d);
        drop(d);
        std::fs::remove_dir_all(dir.path().join(SM_DIR)).unwrap();
        std::fs::create_dir(dir.path().join(SM_DIR)).unwrap();
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap();
        assert!(err.to_string().contains("is empty but its raft log is not"), "{err}");
    }

    #[test]
    fn a_state_machine_behind_the_purged_log_is_refused_as_having_lost_writes() {
        use openraft::storage::RaftLogStorage;
        let dir = tempfile::tempdir().unwrap();
        let mut d = open_when_released(dir.path(), 1, CLUSTER).unwrap();
        save_a_vote(&mut d);
        // The log purged through entry 5, as after a snapshot, and a state machine that
        // applied nothing: what an engine that rolled back at recovery would show.
        let purged = crate::types::LogId::new(crate::types::LeaderId { term: 1, node_id: 1 }, 5);
        tokio::runtime::Builder::new_current_thread()
            .build()
            .unwrap()
            .block_on(d.log_store.purge(purged))
            .unwrap();
        drop(d);
        let err = open_when_released(dir.path(), 1, CLUSTER).err().unwrap().to_string();
        assert!(
            err.contains("applied only up to no entry") && err.contains("purged through entry 5"),
            "{err}"
        );
        assert_eq!(err.lines().count(), 1, "{err}");
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
    fn garbage_in_the_engines_files_is_refused_without_touching_it() {
        // A file each engine reads first when it opens.
        for (kind, file) in [(EngineKind::Sled, "conf"), (EngineKind::Fjall, "version")] {
            let dir = tempfile::tempdir().unwrap();
            drop(open_with_engine_when_released(dir.path(), 1, CLUSTER, kind).unwrap());
            let garbage = dir.path().join(SM_DIR).join(kind.name()).join(file);
            std::fs::write(&garbage, b"not what the engine wrote").unwrap();
            let err = open_with_engine_when_released(dir.path(), 1, CLUSTER, kind)
                .err()
                .unwrap();
            let err = err.to_string();
            assert!(
                err.contains(&dir.path().display().to_string()) && !err.contains('\n'),
                "{kind}: {err}"
            );
            assert_eq!(std::fs::read(&garbage).unwrap(), b"not what the engine wrote");
        }
    }

    #[test]
    fn a_directory_of_another_engine_is_refused_and_says_which() {
        for (made, asked) in [
            (EngineKind::Sled, EngineKind::Fjall),
            (EngineKind::Fjall, EngineKind::Sled),
        ] {
            let dir = tempfile::tempdir().unwrap();
            drop(open_with_engine_when_released(dir.path(), 1, CLUSTER, made).unwrap());
            let err = open_with_engine_when_released(dir.path(), 1, CLUSTER, asked)
                .err()
                .unwrap();
            assert!(matches!(err, DataDirError::OtherEngine { .. }), "{err}");
            assert!(
                err.to_string().contains(&format!("start it with --engine {made}")),
                "{err}"
            );
            assert!(
                !dir.path().join(SM_DIR).join(asked.name()).exists(),
                "nothing of {asked} was made"
            );
            assert!(open_with_engine_when_released(dir.path(), 1, CLUSTER, made).is_ok());
        }
    }
}
