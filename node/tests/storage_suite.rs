//! openraft's own storage test suite, run against our log store (`wal.rs`) and sled
//! state machine: it checks the contract openraft relies on (log state, vote,
//! append/truncate/purge, apply, snapshots) case by case.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use raftkv_node::store::{data_dir, LogStore, StateMachine};
use raftkv_node::types::TypeConfig;
use tempfile::TempDir;

struct SledStoreBuilder;

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for SledStoreBuilder {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let opened = data_dir::open(dir.path(), 1, "1=127.0.0.1:1").expect("open a fresh data dir");
        Ok((dir, opened.log_store, opened.state_machine))
    }
}

/// The suite is one async function; its cases share the runtime made here.
#[test]
fn sled_store_passes_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the suite")
        .block_on(Suite::test_all(SledStoreBuilder))
}
