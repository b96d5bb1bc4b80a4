//! raftkv-node: one member of a raftkv cluster.
//!
//! `app` wires the pieces: `store` (the Raft log's files and the state
//! machine on fjall or sled), `network` and `raft_service` (Raft RPCs out and in), `proposer`
//! (group commit), `read_index` (ReadIndex rounds for linearizable reads),
//! `kv_service` and `cluster_service` (the public API, with `backup` for backups). `types` declares the
//! openraft type configuration and `convert` maps it to our protobuf messages.

pub mod app;
pub mod backup;
pub mod cluster_identity;
pub mod cluster_service;
pub mod convert;
#[cfg(test)]
mod fuzz_requests;
pub mod handover;
pub mod kv_service;
pub mod member_addresses;
pub mod membership;
pub mod memory;
pub mod metrics;
pub mod network;
pub mod proposer;
pub mod raft_service;
pub mod raft_watch;
pub mod read_index;
pub mod snapshot_policy;
pub mod store;
pub mod types;
