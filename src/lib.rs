//! raftkv's generated gRPC API and the one client library.
pub mod pb {
    tonic::include_proto!("raftkv.v1");
}
pub mod raft_pb {
    tonic::include_proto!("raftkv.raft.v1");
}
