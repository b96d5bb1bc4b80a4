//! `raftkv-node restore`: makes a data directory of a new cluster from a backup
//! (`store/restore.rs`). `raftkv snapshot restore` runs it; it lives in the node's binary
//! because the data directory's format is the node's.

use std::path::PathBuf;
use std::process::ExitCode;

use raftkv_node::app::cluster_identity;
use raftkv_node::store::engine::{EngineKind, EngineOptions, DEFAULT_CACHE_MB};
use raftkv_node::store::restore::{self, RestoreTarget};

use crate::{parse_cluster, parse_engine, InitialCluster};

const EXAMPLE: &str = "\
Example (all three nodes lost; restore each from the same backup, then start them):
  raftkv-node restore backup.db --id 1 --data-dir data/node-1 \\
      --initial-cluster 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001
  raftkv-node --id 1 --listen 10.0.0.1:7001 --data-dir data/node-1 \\
      --initial-cluster 1=10.0.0.1:7001,2=10.0.0.2:7001,3=10.0.0.3:7001";

/// Make the data directory of one node of a new cluster from a backup (`raftkv snapshot
/// save`). Restore every node of the new cluster from the same file, each with its own --id
/// and --data-dir and the same --initial-cluster, then start them as usual: they elect a
/// leader and serve the backup's data. The directory must not exist or be empty; a damaged or
/// truncated backup is refused and nothing is created.
#[derive(clap::Parser, Debug)]
#[command(name = "raftkv-node restore", after_help = EXAMPLE)]
struct RestoreFlags {
    /// The backup file.
    backup: PathBuf,
    /// The id of the node this directory is for (one of --initial-cluster).
    #[arg(long, value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// The directory to make (absent or empty).
    #[arg(long)]
    data_dir: PathBuf,
    /// Every member of the new cluster as ID=HOST:PORT, comma separated (the same on every node,
    /// and when the nodes start).
    #[arg(long, value_parser = parse_cluster)]
    initial_cluster: InitialCluster,
    /// The state machine's storage engine (the node must start with the same one).
    #[arg(long, default_value = "fjall", value_parser = parse_engine)]
    engine: EngineKind,
}

/// Runs `raftkv-node restore ARGS…` (the arguments after `restore`).
pub fn run(args: impl Iterator<Item = std::ffi::OsString>) -> ExitCode {
    let flags: RestoreFlags =
        match raftkv::usage::parse_from_or_exit(std::iter::once("raftkv-node restore".into()).chain(args)) {
            Ok(flags) => flags,
            Err(code) => return code,
        };
    let InitialCluster(members) = flags.initial_cluster;
    let engine = EngineOptions {
        kind: flags.engine,
        cache_bytes: DEFAULT_CACHE_MB << 20,
    };
    let identity = cluster_identity(&members);
    let target = RestoreTarget {
        node_id: flags.id,
        initial_cluster: &members,
        cluster_identity: &identity,
        engine: &engine,
    };
    match restore::restore(&flags.backup, &flags.data_dir, &target) {
        Ok(restored) => {
            let (term, index) = restored.last_log_id.map_or((0, 0), |id| (id.leader_id.term, id.index));
            println!(
                "restored {} into {} for node {} (log position term {term} index {index}, crc32 {:08x})",
                flags.backup.display(),
                flags.data_dir.display(),
                flags.id,
                restored.checksum
            );
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            ExitCode::from(3)
        }
    }
}
