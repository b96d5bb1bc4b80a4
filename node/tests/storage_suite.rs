//! openraft's own storage test suite, run against our log store (`wal.rs`) and the state
//! machine on each engine (fjall, sled): it checks the contract openraft relies on (log
//! state, vote, append/truncate/purge, apply, snapshots) case by case.

use openraft::testing::log::{StoreBuilder, Suite};
use openraft::StorageError;
use raftkv_node::store::data_dir;
use raftkv_node::store::engine::{EngineKind, EngineOptions};
use raftkv_node::store::{LogStore, StateMachine};
use raftkv_node::types::TypeConfig;
use tempfile::TempDir;

/// A fresh data directory per case, its state machine on `0`.
struct StoreOn(EngineKind);

impl StoreBuilder<TypeConfig, LogStore, StateMachine, TempDir> for StoreOn {
    async fn build(&self) -> Result<(TempDir, LogStore, StateMachine), StorageError<TypeConfig>> {
        let dir = TempDir::new().expect("temp dir");
        let options = EngineOptions {
            kind: self.0,
            cache_bytes: 8 << 20,
        };
        let opened = data_dir::open(dir.path(), 1, "1=127.0.0.1:1", &options).expect("open a fresh data dir");
        Ok((dir, opened.log_store, opened.state_machine))
    }
}

/// The suite is one async function; its cases share the runtime made here.
fn run_suite(kind: EngineKind) -> Result<(), StorageError<TypeConfig>> {
    tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a runtime for the suite")
        .block_on(Suite::test_all(StoreOn(kind)))
}

#[test]
fn fjall_store_passes_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    run_suite(EngineKind::Fjall)
}

#[test]
fn sled_store_passes_openraft_storage_suite() -> Result<(), StorageError<TypeConfig>> {
    run_suite(EngineKind::Sled)
}
