//! DIR/cluster.json: the record of which processes serve the cluster in DIR, so that
//! `cluster down` can stop a detached cluster and a second `cluster up` in the same DIR
//! refuses to start while the first one runs.
//!
//! The file is replaced atomically (write a temporary file, then rename), so a reader never
//! sees half of it.

use std::io::Write;
use std::path::Path;

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::children::is_live_raftkv_process;

/// What cluster.json holds.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct ClusterState {
    /// The data directory (absolute).
    pub data_dir: String,
    pub base_port: u16,
    /// The foreground `raftkv cluster up` that supervises the children; absent when detached.
    pub supervisor_pid: Option<u32>,
    pub router: RecordedProcess,
    pub nodes: Vec<RecordedNode>,
}

/// The router's process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedProcess {
    pub address: String,
    /// Absent once it is known to have stopped.
    pub pid: Option<u32>,
}

/// A node's process.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordedNode {
    pub id: u64,
    pub address: String,
    /// Absent once it is known to have stopped.
    pub pid: Option<u32>,
}

impl ClusterState {
    /// Every recorded process as (what it is, pid): the supervisor first, then the router,
    /// then the nodes — the order they should be stopped in.
    pub fn processes(&self) -> Vec<(String, u32)> {
        let mut processes = Vec::new();
        if let Some(pid) = self.supervisor_pid {
            processes.push(("supervising raftkv".to_string(), pid));
        }
        if let Some(pid) = self.router.pid {
            processes.push(("router".to_string(), pid));
        }
        for node in &self.nodes {
            if let Some(pid) = node.pid {
                processes.push((format!("node {}", node.id), pid));
            }
        }
        processes
    }

    /// The recorded processes that still run (and are still raftkv processes).
    pub fn live_processes(&self) -> Vec<(String, u32)> {
        self.processes()
            .into_iter()
            .filter(|(_, pid)| is_live_raftkv_process(*pid))
            .collect()
    }
}

/// Reads `path`; `None` when there is no such file.
pub fn read(path: &Path) -> anyhow::Result<Option<ClusterState>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let state = serde_json::from_str(&text)
        .with_context(|| format!("{} is not a raftkv cluster state file", path.display()))?;
    Ok(Some(state))
}

/// Replaces `path` with `state`, atomically.
pub fn write(path: &Path, state: &ClusterState) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(state).context("cannot encode the cluster state")?;
    replace_atomically(path, &text)
}

/// Replaces `path` with `text` and a newline: written to a temporary file beside it, synced,
/// then renamed over it, so a reader sees the old text or the new, never half of either.
pub fn replace_atomically(path: &Path, text: &str) -> anyhow::Result<()> {
    let temporary = path.with_extension("json.tmp");
    let mut file =
        std::fs::File::create(&temporary).with_context(|| format!("cannot create {}", temporary.display()))?;
    file.write_all(text.as_bytes())
        .and_then(|()| file.write_all(b"\n"))
        .and_then(|()| file.sync_all())
        .with_context(|| format!("cannot write {}", temporary.display()))?;
    std::fs::rename(&temporary, path).with_context(|| format!("cannot replace {}", path.display()))
}

/// Removes `path`; one already gone is fine.
pub fn remove(path: &Path) -> anyhow::Result<()> {
    match std::fs::remove_file(path) {
        Ok(()) => Ok(()),
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => Ok(()),
        Err(error) => Err(error).with_context(|| format!("cannot remove {}", path.display())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> ClusterState {
        ClusterState {
            data_dir: "/data".to_string(),
            base_port: 7000,
            supervisor_pid: None,
            router: RecordedProcess {
                address: "127.0.0.1:7000".to_string(),
                pid: Some(10),
            },
            nodes: vec![
                RecordedNode {
                    id: 1,
                    address: "127.0.0.1:7001".to_string(),
                    pid: Some(11),
                },
                RecordedNode {
                    id: 2,
                    address: "127.0.0.1:7002".to_string(),
                    pid: None,
                },
            ],
        }
    }

    #[test]
    fn state_survives_a_write_and_a_read_and_removal_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        assert_eq!(read(&path).unwrap(), None);
        write(&path, &sample()).unwrap();
        assert_eq!(read(&path).unwrap(), Some(sample()));
        remove(&path).unwrap();
        remove(&path).unwrap();
        assert_eq!(read(&path).unwrap(), None);
    }

    #[test]
    fn a_corrupt_state_file_is_an_error_not_an_empty_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("cluster.json");
        std::fs::write(&path, "{not json").unwrap();
        assert!(read(&path).is_err());
    }

    #[test]
    fn processes_are_listed_in_stopping_order_and_stopped_ones_are_left_out() {
        let mut state = sample();
        state.supervisor_pid = Some(9);
        let pids: Vec<u32> = state.processes().into_iter().map(|(_, pid)| pid).collect();
        assert_eq!(pids, [9, 10, 11]);
    }

    #[test]
    fn recorded_pids_of_processes_that_are_gone_are_not_live() {
        let mut state = sample();
        state.router.pid = Some(u32::MAX);
        state.nodes.clear();
        assert!(state.live_processes().is_empty());
    }
}
