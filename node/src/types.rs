//! The application types openraft is parameterised over: what a log entry
//! carries (a write group: client commands proposed together) and what applying
//! it returns.
//!
//! One log entry holds every write that arrived while the previous proposal was
//! in flight (group commit, see `proposer.rs`), so `D` is a [`WriteGroup`] and `R`
//! holds one result per command, in order.

use std::fmt;

use bytes::Bytes;
use openraft::type_config::alias;

/// Node ids are 1-based; 0 is never a valid id.
pub type NodeId = u64;

openraft::declare_raft_types!(
    /// raftkv's openraft type configuration. Every type left out is openraft's default: terms
    /// are u64, a leader id is (term, node id) and a vote is (leader id, committed) — the same
    /// fields as in openraft 0.9, so our protobuf encodings of them (`convert.rs`) are unchanged.
    pub TypeConfig:
        D = WriteGroup,
        R = WriteGroupResults,
        NodeId = NodeId,
        Node = openraft::BasicNode,
        AsyncRuntime = openraft_rt_tokio::TokioRuntime,
);

/// What a snapshot's data is while it is built, sent, received and installed: a view of the
/// state machine, written into a file when it is sent, or an open snapshot file
/// (`store/snapshot_file.rs`), never the snapshot in memory. The one place that names it
/// (the state machine, its snapshot builder and the network must agree on it).
pub type SnapshotData = crate::store::SnapshotData;

pub type Raft = openraft::Raft<TypeConfig, crate::store::StateMachine>;
pub type LeaderId = alias::LeaderIdOf<TypeConfig>;
pub type LogId = alias::LogIdOf<TypeConfig>;
pub type Vote = alias::VoteOf<TypeConfig>;
pub type Entry = alias::EntryOf<TypeConfig>;
pub type EntryPayload = alias::PayloadOf<TypeConfig>;
pub type Membership = openraft::Membership<NodeId, openraft::BasicNode>;
pub type StoredMembership = alias::StoredMembershipOf<TypeConfig>;
pub type SnapshotMeta = alias::SnapshotMetaOf<TypeConfig>;
pub type Snapshot = alias::SnapshotOf<TypeConfig, SnapshotData>;
pub type RaftMetrics = openraft::RaftMetrics<TypeConfig>;

/// Names one write of one client, for exactly-once retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct WriteId {
    pub client_id: u64,
    pub sequence: u64,
}

/// What a write does.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Op {
    Put {
        key: Bytes,
        value: Bytes,
    },
    /// Deletes the key; with `expect`, only if its value equals it.
    Delete {
        key: Bytes,
        expect: Option<Bytes>,
    },
    /// Sets `new_value` if the current value equals `expect` (`None`: absent).
    Cas {
        key: Bytes,
        expect: Option<Bytes>,
        new_value: Bytes,
    },
}

impl Op {
    /// Key and value bytes, for the size limit of a write group.
    pub fn payload_bytes(&self) -> usize {
        match self {
            Op::Put { key, value } => key.len() + value.len(),
            Op::Delete { key, expect } => key.len() + expect.as_ref().map_or(0, |e| e.len()),
            Op::Cas { key, expect, new_value } => key.len() + expect.as_ref().map_or(0, |e| e.len()) + new_value.len(),
        }
    }
}

/// One client write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Command {
    pub op: Op,
    pub write_id: Option<WriteId>,
}

/// The writes proposed together as one log entry (group commit).
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteGroup {
    /// The proposing leader's wall clock (ms since the Unix epoch); only
    /// used to expire idle client sessions, the same way on every node.
    pub proposed_at_ms: u64,
    pub commands: Vec<Command>,
}

/// openraft logs entries by their payload's `Display`: a summary, never the keys and values.
impl fmt::Display for WriteGroup {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "write group of {} commands proposed at {} ms",
            self.commands.len(),
            self.proposed_at_ms
        )
    }
}

/// The outcome of applying one command.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CommandResult {
    Put,
    Delete {
        existed: bool,
        deleted: bool,
        current: Option<Bytes>,
    },
    Cas {
        swapped: bool,
        current: Option<Bytes>,
    },
    /// A retry of a write so old that its result was forgotten: it was not
    /// applied again, and its first outcome is unknown.
    Forgotten,
}

/// One result per command of the applied write group, in order. Empty for blank
/// and membership entries.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct WriteGroupResults {
    pub results: Vec<CommandResult>,
}
