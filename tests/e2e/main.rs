//! End-to-end tests of raftkv: real `raftkv-node`, `raftkv-router` and `raftkv` processes
//! on loopback, one module per scenario, all in one test binary so that the harness
//! (`common/`) and the fault-injecting proxy (`nemesis`) are compiled once.
//!
//! Run them all with `cargo test -p raftkv --test e2e`, one scenario with a filter
//! (`cargo test -p raftkv --test e2e jepsen`). Tests run in parallel: each cluster takes
//! ports of its own from `common::free_port`, and each proxied cluster a loopback subnet
//! of its own.

mod common;
mod nemesis;

mod backup;
mod catch_up;
mod cluster_identity;
mod disk_full;
mod durability;
mod engines;
mod exactly_once;
mod failover;
mod hostile;
mod input_validation;
mod integrity;
mod jepsen;
mod large_values;
mod local_cluster;
mod membership;
mod metrics;
mod partition;
mod pre_vote;
mod replication;
mod silent_leader;
mod tls;
