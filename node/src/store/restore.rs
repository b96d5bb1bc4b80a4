//! Restoring a backup (`raftkv snapshot restore`, `raftkv-node restore`): makes, from a backup
//! file (`raftkv snapshot save`, a snapshot file), the data directory of one node of a *new*
//! cluster, which then starts with `raftkv-node --initial-cluster …` as usual and serves the
//! backup's data. Every node of the new cluster is restored from the same file, each with its
//! own id and directory, so they all start from the same state.
//!
//! What a restored directory holds, and why:
//! - the identity of a new cluster, made by `data_dir.rs` as at any node's first start (the
//!   initial cluster given, not the backup's), with a cluster id derived from that initial
//!   cluster and the backup's checksum ([`RESTORED_CLUSTER_TOKEN_PREFIX`]): every node restored
//!   from one backup gets the same id, and no node of the old cluster, or of one bootstrapped
//!   afresh, takes its Raft messages;
//! - the state machine filled from the backup, at the backup's log position (term T, index I),
//!   with the new initial cluster as its membership, and without the old cluster's removed
//!   members, made durable;
//! - a Raft log with nothing in it, purged through (T, I), and a vote in term T: the log's
//!   position continues the backup's, and the first election is in term T + 1, so every entry
//!   the new cluster appends comes after the backup's, as Raft requires. Such a log is not
//!   pristine, so the node never bootstraps over it.
//!
//! All or nothing: the directory is built beside the target (`DIR.restoring-PID`) and renamed
//! into place only once complete and durable; any failure (a damaged or truncated backup is
//! found out at the latest when its checksum is checked at the end of the install) removes it.
//! A target that exists and holds anything is refused.

use raftkv::snapshot_format::sync_parent;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use openraft::BasicNode;
use raftkv::wire::ClusterId;

use crate::store::data_dir::{self, DataDirError};
use crate::store::engine::{self, EngineOptions};
use crate::store::raft_state::RaftStateFiles;
use crate::store::snapshot_file::{SnapshotFile, SnapshotFileError};
use crate::store::state_machine;
use crate::types::{Membership, NodeId, SnapshotMeta, StoredMembership, Vote};

/// A restored cluster's id is derived with this token prefix and the backup's checksum (as 8
/// hex digits) instead of `--initial-cluster-token`: `restored-1a2b3c4d`.
pub const RESTORED_CLUSTER_TOKEN_PREFIX: &str = "restored-";

/// Why a restore did not happen. Each message is one line; nothing was created.
#[derive(Debug, thiserror::Error)]
pub enum RestoreError {
    #[error("data directory {0} exists and is not empty; a restore makes a new one (remove it, or choose another --data-dir)")]
    NotEmpty(PathBuf),
    #[error("cannot read backup {0}: it does not exist")]
    NoBackup(PathBuf),
    #[error("backup refused: {0}")]
    Backup(#[from] SnapshotFileError),
    /// Found damaged while it was read whole.
    #[error("backup refused: {0}")]
    Damaged(String),
    #[error("node {0} is not in the initial cluster")]
    NotAMember(NodeId),
    #[error(transparent)]
    DataDir(#[from] DataDirError),
    #[error("cannot restore into {dir}: {error}")]
    Io { dir: PathBuf, error: std::io::Error },
}

/// What a restore made.
#[derive(Debug)]
pub struct Restored {
    /// The backup's log position, which the new cluster continues from.
    pub last_log_id: Option<crate::types::LogId>,
    /// The backup file's checksum (its trailer's crc32).
    pub checksum: u32,
}

/// What a restored node is: its id, the new cluster (id → address) and its canonical string
/// (`Settings::cluster_identity`, which `data_dir::open` will compare), and its engine.
pub struct RestoreTarget<'a> {
    pub node_id: NodeId,
    pub initial_cluster: &'a BTreeMap<NodeId, String>,
    pub cluster_identity: &'a str,
    pub engine: &'a EngineOptions,
}

/// Makes data directory `dir` for `target` from the backup file `backup` (see the module
/// documentation). Blocks on disk I/O for as long as the backup takes to read.
pub fn restore(backup: &Path, dir: &Path, target: &RestoreTarget<'_>) -> Result<Restored, RestoreError> {
    if !target.initial_cluster.contains_key(&target.node_id) {
        return Err(RestoreError::NotAMember(target.node_id));
    }
    if std::fs::read_dir(dir).is_ok_and(|mut entries| entries.next().is_some()) {
        return Err(RestoreError::NotEmpty(dir.to_path_buf()));
    }
    let (meta, file) = SnapshotFile::open(backup)?.ok_or_else(|| RestoreError::NoBackup(backup.to_path_buf()))?;
    let building = building_path(dir);
    let io_error = |error| RestoreError::Io {
        dir: dir.to_path_buf(),
        error,
    };
    // What a failure removes: the building directory, and the parents made for it.
    let first_created = first_missing_ancestor(&building);
    let built = std::fs::create_dir_all(&building)
        .map_err(io_error)
        .and_then(|()| build(&building, &meta, &file, target))
        .and_then(|restored| {
            // An empty target directory is replaced whole by the rename.
            std::fs::rename(&building, dir)
                .and_then(|()| sync_parent(dir))
                .map_err(io_error)?;
            Ok(restored)
        });
    if built.is_err() {
        let _ = std::fs::remove_dir_all(&first_created);
    }
    built
}

/// The outermost of `path` and its ancestors that does not exist yet.
fn first_missing_ancestor(path: &Path) -> PathBuf {
    let mut first = path.to_path_buf();
    for ancestor in path.ancestors().skip(1) {
        if ancestor.as_os_str().is_empty() || ancestor.exists() {
            break;
        }
        first = ancestor.to_path_buf();
    }
    first
}

/// Where the directory is built: beside the target, so that the rename stays on its file system.
fn building_path(dir: &Path) -> PathBuf {
    let mut name = dir.file_name().map(|n| n.to_os_string()).unwrap_or_default();
    name.push(format!(".restoring-{}", std::process::id()));
    dir.with_file_name(name)
}

fn build(
    dir: &Path,
    backup_meta: &SnapshotMeta,
    backup: &SnapshotFile,
    target: &RestoreTarget<'_>,
) -> Result<Restored, RestoreError> {
    let io_error = |error: std::io::Error| RestoreError::Io {
        dir: dir.to_path_buf(),
        error,
    };
    // A restored cluster must not get the id a fresh bootstrap of the same initial cluster
    // would: its token names the backup, so every node restored from it derives the same id,
    // and no node of the old cluster (or of a fresh one) takes its Raft messages.
    let cluster_id = ClusterId::derive(
        target.cluster_identity,
        &format!("{RESTORED_CLUSTER_TOKEN_PREFIX}{:08x}", backup.checksum()),
    );
    let (wal_dir, sm_dir) =
        data_dir::claim_for_restore(dir, target.node_id, target.cluster_identity, cluster_id, target.engine)?;
    let last_log_id = backup_meta.last_log_id;
    let voters = target.initial_cluster.keys().copied().collect();
    let nodes = target
        .initial_cluster
        .iter()
        .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
        .collect::<BTreeMap<_, _>>();
    let membership = Membership::new(vec![voters], nodes).expect("every voter is one of the nodes");
    let meta = SnapshotMeta {
        last_log_id,
        last_membership: StoredMembership::new(last_log_id, membership),
    };
    let engine = engine::open(&sm_dir, target.engine).map_err(|e| io_error(std::io::Error::other(e.to_string())))?;
    state_machine::restore_into(engine.as_ref(), &meta, backup).map_err(|error| match error.kind() {
        std::io::ErrorKind::InvalidData => RestoreError::Damaged(error.to_string()),
        _ => io_error(error),
    })?;
    drop(engine);
    if let Some(last) = last_log_id {
        let (files, _) = RaftStateFiles::open(&wal_dir).map_err(|e| io_error(std::io::Error::other(e.to_string())))?;
        files.save_purged(&last).map_err(io_error)?;
        files
            .save_vote(&Vote::new(last.leader_id.term, target.node_id))
            .map_err(io_error)?;
    }
    sync_tree(dir).map_err(io_error)?;
    Ok(Restored {
        last_log_id,
        checksum: backup.checksum(),
    })
}

/// Makes every directory of the tree at `dir` durable (the files in it were synced as they
/// were written: state files, the engine's persist).
fn sync_tree(dir: &Path) -> std::io::Result<()> {
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_type()?.is_dir() {
            sync_tree(&entry.path())?;
        }
    }
    std::fs::File::open(dir)?.sync_all()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir::open_with_engine_when_released;
    use crate::store::engine::EngineKind;
    use crate::types::{Command, Entry, EntryPayload, LeaderId, LogId, Op, WriteGroup};
    use bytes::Bytes;
    use openraft::storage::RaftStateMachine;

    const OLD_CLUSTER: &str = "1=127.0.0.1:1";
    const KEYS: u64 = 40;

    fn put(index: u64) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId { term: 7, node_id: 1 }, index),
            payload: EntryPayload::Normal(WriteGroup {
                proposed_at_ms: 1000,
                commands: vec![Command {
                    op: Op::Put {
                        key: Bytes::from(format!("key-{index}")),
                        value: Bytes::from(format!("value-{index}")),
                    },
                    write_id: None,
                }],
            }),
        }
    }

    /// A backup of a one-node store holding `KEYS` keys (applied at term 7), written to `path`.
    async fn backup_of_a_store(dir: &Path, kind: EngineKind, path: &Path) {
        let mut source = open_with_engine_when_released(dir, 1, OLD_CLUSTER, kind)
            .unwrap()
            .state_machine;
        source.apply_entries((1..=KEYS).map(put)).unwrap();
        let builder = source.get_snapshot_builder().await;
        let (_, file) = builder.build_backup(1, Default::default()).await.unwrap();
        let mut bytes = vec![0u8; file.len() as usize];
        file.read_at(&mut bytes, 0).unwrap();
        std::fs::write(path, bytes).unwrap();
    }

    fn new_cluster() -> BTreeMap<NodeId, String> {
        [(2, "127.0.0.1:2".to_string()), (3, "127.0.0.1:3".to_string())].into()
    }

    #[tokio::test]
    async fn a_restored_directory_opens_as_a_node_of_the_new_cluster_with_the_backups_data_on_both_engines() {
        for kind in EngineKind::ALL {
            let dir = tempfile::tempdir().unwrap();
            let backup = dir.path().join("backup.db");
            backup_of_a_store(&dir.path().join("old"), kind, &backup).await;
            let members = new_cluster();
            let identity = crate::app::cluster_identity(&members);
            let engine = EngineOptions {
                kind,
                cache_bytes: 8 << 20,
            };
            let target = RestoreTarget {
                node_id: 3,
                initial_cluster: &members,
                cluster_identity: &identity,
                engine: &engine,
            };
            let restored_dir = dir.path().join("new/node-3");
            let restored = restore(&backup, &restored_dir, &target).unwrap();
            let last = LogId::new(LeaderId { term: 7, node_id: 1 }, KEYS);
            assert_eq!(restored.last_log_id, Some(last));

            let mut opened = open_with_engine_when_released(&restored_dir, 3, &identity, kind).unwrap();
            // A cluster id of its own, whatever token the node is later started with.
            let fresh = ClusterId::derive(&identity, raftkv::wire::DEFAULT_CLUSTER_TOKEN);
            assert!(
                opened.cluster_id.is_some_and(|id| id != fresh),
                "{kind:?}: {:?}",
                opened.cluster_id
            );
            assert!(
                !opened.pristine,
                "{kind:?}: a restored directory is never bootstrapped over"
            );
            assert_eq!(opened.log_store.purged_index(), Some(KEYS));
            let (applied, membership) = opened.state_machine.applied_state().await.unwrap();
            assert_eq!(applied, Some(last));
            let voters: Vec<NodeId> = membership.membership().voter_ids().collect();
            assert_eq!(voters, vec![2, 3], "{kind:?}: the membership is the new cluster's");
            let reader = opened.state_machine.reader();
            for index in 1..=KEYS {
                let value = reader.get(format!("key-{index}").as_bytes()).unwrap();
                assert_eq!(value, Some(Bytes::from(format!("value-{index}"))));
            }
            let entries: Vec<String> = std::fs::read_dir(dir.path().join("new"))
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            assert_eq!(entries, vec!["node-3"], "nothing is left beside the restored directory");
        }
    }

    #[tokio::test]
    async fn a_damaged_backup_is_refused_and_leaves_nothing_behind() {
        let dir = tempfile::tempdir().unwrap();
        let backup = dir.path().join("backup.db");
        backup_of_a_store(&dir.path().join("old"), EngineKind::default(), &backup).await;
        let mut bytes = std::fs::read(&backup).unwrap();
        let middle = bytes.len() / 2;
        bytes[middle] ^= 0x01;
        std::fs::write(&backup, &bytes).unwrap();
        let members = new_cluster();
        let identity = crate::app::cluster_identity(&members);
        let engine = EngineOptions {
            kind: EngineKind::default(),
            cache_bytes: 8 << 20,
        };
        let target = RestoreTarget {
            node_id: 2,
            initial_cluster: &members,
            cluster_identity: &identity,
            engine: &engine,
        };
        let error = restore(&backup, &dir.path().join("new/deeper/node-2"), &target).unwrap_err();
        assert!(error.to_string().starts_with("backup refused: "), "{error}");
        assert!(!error.to_string().contains('\n'));
        assert!(!dir.path().join("new").exists(), "a refused restore creates nothing");
    }
}
