//! Durable storage for one node, in its data directory: the Raft log in its own
//! segment files (`wal.rs`), a sled database holding the vote, the log's markers and
//! the state machine, and the snapshot file. `data_dir.rs` decides whether a
//! directory may be used at all.

pub mod data_dir;
pub mod log_store;
pub mod sessions;
pub mod state_machine;
pub mod wal;

pub use log_store::{CommitIndex, LogStore};
pub use state_machine::{KvReader, StateMachine};
