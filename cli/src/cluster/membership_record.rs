//! DIR/membership.json: the nodes the console's `add` and `remove` changed, so that a later
//! `cluster up` in the same DIR starts the added nodes again (with `--join`) and leaves the
//! removed ones stopped (a removed node's data directory is refused anyway).
//!
//! cluster.json lives as long as the processes; this file lives as long as the data, and is
//! only there once the membership has changed. It also keeps the node count the cluster was
//! made with: the added nodes' ids follow it, so a later `--nodes` must be the same.

use std::path::{Path, PathBuf};

use anyhow::Context;
use serde::{Deserialize, Serialize};

use super::state_file::replace_atomically;

/// What DIR/membership.json holds.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct MembershipRecord {
    /// `--nodes` of the cluster: nodes 1..=N were its initial members.
    pub initial_nodes: u16,
    /// Nodes added with the console's `add`, in the order they were added.
    pub joined: Vec<u64>,
    /// Nodes removed with the console's `remove`.
    pub removed: Vec<u64>,
}

/// The record of the cluster whose data is in `data_dir`.
pub fn record_file_in(data_dir: &Path) -> PathBuf {
    data_dir.join("membership.json")
}

/// Reads `path`; `None` when there is no such file (the membership never changed).
pub fn read(path: &Path) -> anyhow::Result<Option<MembershipRecord>> {
    let text = match std::fs::read_to_string(path) {
        Ok(text) => text,
        Err(error) if error.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(error) => return Err(error).with_context(|| format!("cannot read {}", path.display())),
    };
    let record =
        serde_json::from_str(&text).with_context(|| format!("{} is not a raftkv membership record", path.display()))?;
    Ok(Some(record))
}

/// Replaces `path` with `record`, atomically.
pub fn write(path: &Path, record: &MembershipRecord) -> anyhow::Result<()> {
    let text = serde_json::to_string_pretty(record).context("cannot encode the membership record")?;
    replace_atomically(path, &text)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_record_survives_a_write_and_a_read_and_a_missing_one_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_file_in(dir.path());
        assert_eq!(read(&path).unwrap(), None);
        let record = MembershipRecord {
            initial_nodes: 3,
            joined: vec![4, 5],
            removed: vec![1],
        };
        write(&path, &record).unwrap();
        assert_eq!(read(&path).unwrap(), Some(record));
    }

    #[test]
    fn a_corrupt_record_is_an_error_not_an_unchanged_cluster() {
        let dir = tempfile::tempdir().unwrap();
        let path = record_file_in(dir.path());
        std::fs::write(&path, "{\"joined\":").unwrap();
        assert!(read(&path).is_err());
    }
}
