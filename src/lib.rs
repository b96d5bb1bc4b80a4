//! raftkv's generated gRPC API and the one client library, with what the client, the router
//! and the node share:
//!
//! - [`pb`] and [`raft_pb`]: the generated public API and internal Raft RPCs;
//! - [`client`]: the client library (connections, retries, deadlines, write ids) used by the
//!   CLI, the router and the tests;
//! - [`wire`]: the rules the client, the router and the node all follow on the wire (leader
//!   hints, request deadlines, transport-error classes, the shutdown grace);
//! - [`batch`]: the `KvBatch` call's limits, how an item's error travels in it, and the
//!   `KvBatcher` that sends it;
//! - [`limits`]: the key and value size limits;
//! - `metrics` (feature `metrics`): the /metrics and /health endpoint and the gRPC call
//!   metrics the node and the router share;
//! - [`runtime`]: the async runtime the node and the router run on;
//! - [`snapshot_format`]: the snapshot (and backup) file format, read without a node;
//! - [`serving`]: the limits every gRPC server puts on its clients (connections, streams,
//!   stalled frames, keepalive);
//! - [`tls`]: TLS for every connection (certificates, the node rule, development certificates);
//! - [`usage`]: one-line usage errors shared by the binaries;
//! - `testing` (feature `test-support`): a fake node for the client's and the router's tests.

/// The public API (`proto/raftkv.proto`): the Kv and Cluster services and their messages.
pub mod pb {
    tonic::include_proto!("raftkv.v1");

    /// A node role as people read it ("leader", "follower", …); "unknown" for a value this
    /// version does not know.
    pub fn role_name(role: i32) -> &'static str {
        match Role::try_from(role) {
            Ok(Role::Leader) => "leader",
            Ok(Role::Follower) => "follower",
            Ok(Role::Candidate) => "candidate",
            Ok(Role::Learner) => "learner",
            Ok(Role::Shutdown) => "shutdown",
            Ok(Role::Unknown) | Err(_) => "unknown",
        }
    }
}
/// The internal Raft RPCs and on-disk records (`proto/raft.proto`); used by the nodes only.
pub mod raft_pb {
    tonic::include_proto!("raftkv.raft.v1");
}

pub mod batch;
pub mod client;
pub mod limits;
#[cfg(feature = "metrics")]
pub mod metrics;
pub mod runtime;
pub mod serving;
pub mod snapshot_format;
#[cfg(any(test, feature = "test-support"))]
pub mod testing;
pub mod tls;
pub mod usage;
pub mod wire;
pub mod write_behind;
