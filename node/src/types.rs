//! The application types openraft is parameterised over: what a log entry
//! carries (a batch of client commands) and what applying it returns.
//!
//! One log entry holds every write that arrived while the previous proposal was
//! in flight (group commit, see `proposer.rs`), so `D` is a batch and `R` holds
//! one result per command, in order.

use std::io::Cursor;

use bytes::Bytes;
use serde::{Deserialize, Serialize};

/// Node ids are 1-based; 0 is never a valid id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// raftkv's openraft type configuration.
    pub TypeConfig:
        D = Batch,
        R = BatchResult,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        Entry = openraft::Entry<TypeConfig>,
        SnapshotData = Cursor<Vec<u8>>,
        AsyncRuntime = openraft::TokioRuntime,
);

pub type Raft = openraft::Raft<TypeConfig>;
pub type LogId = openraft::LogId<NodeId>;
pub type Vote = openraft::Vote<NodeId>;
pub type Entry = openraft::Entry<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StoredMembership = openraft::StoredMembership<NodeId, openraft::BasicNode>;
pub type SnapshotMeta = openraft::SnapshotMeta<NodeId, openraft::BasicNode>;
pub type Snapshot = openraft::Snapshot<TypeConfig>;
pub type StorageError = openraft::StorageError<NodeId>;
pub type RaftMetrics = openraft::RaftMetrics<NodeId, openraft::BasicNode>;

/// One client write.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum Command {
    Put { key: Bytes, value: Bytes },
    Delete { key: Bytes },
}

/// The writes proposed together as one log entry.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Batch {
    pub commands: Vec<Command>,
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum CommandResult {
    Put,
    Delete { existed: bool },
}

/// One result per command of the applied batch, in order. Empty for blank
/// and membership entries.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct BatchResult {
    pub results: Vec<CommandResult>,
}
