//! raftkv's generated gRPC API and the one client library.

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

/// The `KvBatch` call's limits and how an item's error travels in it.
pub mod batch;
/// The client library (leader hints, retries, deadlines) used by the CLI, the router and the tests.
pub mod client;
/// The key and value size limits, shared by the nodes and the clients.
pub mod limits;
/// The async runtime the node and the router run on.
pub mod runtime;
/// One-line usage errors shared by the binaries.
pub mod usage;
