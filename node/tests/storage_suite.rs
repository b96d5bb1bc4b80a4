//! openraft's own storage test suite, run against our log store (`wal.rs`) and sled
//! state machine: it checks the contract openraft relies on (log state, vote,
//! append/truncate/purge, apply, snapshots) case by case.

use openraft::testing::{StoreBuilder, Suite};
use raftkv_node::store::{data_dir, LogStore, StateMachine};
use raftkv_node::types::{StorageError, TypeConfig};
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError> {
        let dir = TempDir::new().expect("temp dir");
        let opened = data_dir::open(dir.path(), 1, "1=127.0.0.1:1").expect("open a fresh data dir");
        Ok((dir, opened.log_store, opened.state_machine))
    }
}

#[test]
fn sled_store_passes_openraft_storage_suite() -> Result<(), StorageError> {
    Suite::test_all(SledStoreBuilder)?;
    Ok(())
}
