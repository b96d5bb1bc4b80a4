//! Durable storage for one node: a single sled database in the data
//! directory holding the Raft log, the vote and the state machine, plus the
//! snapshot file. `data_dir.rs` decides whether a directory may be used at all.

pub mod data_dir;
pub mod log_store;
pub mod sessions;
pub mod state_machine;

pub use log_store::{CommitIndex, LogStore};
pub use state_machine::{KvReader, StateMachine};
