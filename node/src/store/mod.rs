//! Durable storage for one node, in its data directory: the Raft log in its own
//! segment files (`wal.rs`, behind openraft's log storage in `log_store.rs`) with the
//! vote and the log's markers beside them (`raft_state.rs`), the state machine
//! (`state_machine.rs`: its key layout in `keys.rs`, its client sessions in
//! `sessions.rs`) in a storage engine (`engine/`), and the snapshot files sent,
//! received and backed up (`snapshot_file.rs`, written behind: `raftkv::write_behind`). `data_dir.rs` decides whether a directory may be
//! used at all, `restore.rs` makes one from a backup; `state_file.rs` is how every small checksummed file is kept.

pub mod data_dir;
pub mod engine;
#[cfg(test)]
mod fuzz_records;
#[cfg(test)]
mod fuzz_wal;
mod keys;
pub mod log_store;
mod raft_state;
mod recent_entries;
pub mod restore;
pub mod sessions;
mod snapshot_file;
mod state_file;
pub mod state_machine;
pub mod wal;
mod wal_writer;

pub use engine::{EngineError, EngineKind, RedoError};
pub use log_store::LogStore;
pub use raft_state::RaftStateError;
pub use snapshot_file::{
    incoming_path_in, IncomingSnapshot, SnapshotData, SnapshotFile, SnapshotFileError, UnwrittenSnapshot,
};
pub use state_file::StateFileError;
pub use state_machine::{KvReader, StateMachine};

/// For the store's unit tests.
#[cfg(test)]
pub(crate) mod testing {
    use crate::types::{Entry, EntryPayload, LeaderId, LogId};

    /// A blank entry at `index`, proposed by node 1 in `term`.
    pub(crate) fn blank_entry(term: u64, index: u64) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId { term, node_id: 1 }, index),
            payload: EntryPayload::Blank,
        }
    }
}
