//! raftkv's generated gRPC API and the one client library.

/// The public API (`proto/raftkv.proto`): the Kv and Cluster services and their messages.
pub mod pb {
    tonic::include_proto!("raftkv.v1");
}
/// The internal Raft RPCs and on-disk records (`proto/raft.proto`); used by the nodes only.
pub mod raft_pb {
    tonic::include_proto!("raftkv.raft.v1");
}

/// The client library (leader hints, retries, deadlines) used by the CLI, the router and the tests.
pub mod client;
/// The key and value size limits, shared by the nodes and the clients.
pub mod limits;
/// One-line usage errors shared by the binaries.
pub mod usage;
