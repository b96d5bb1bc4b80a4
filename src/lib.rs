//! raftkv's generated gRPC API and the one client library.
pub mod pb {
    tonic::include_proto!("raftkv.v1");
}
pub mod raft_pb {
    tonic::include_proto!("raftkv.raft.v1");
}

/// The client library (leader hints, retries, deadlines) used by the CLI, the router and the tests.
pub mod client;
/// The key and value size limits, shared by the nodes and the clients.
pub mod limits;
