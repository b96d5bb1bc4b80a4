//! A local raftkv cluster of real processes, for end-to-end tests.
//!
//! It exists so that every end-to-end test (the Jepsen-style one too) starts, breaks and
//! inspects a cluster the same way: [`TestCluster`] runs `raftkv-node` processes (and optionally
//! a `raftkv-router`) on free loopback ports with a temporary data directory each, and offers
//! the faults a test needs — kill -9, SIGTERM, SIGSTOP/SIGCONT, restart — plus clients and
//! status polling. Waiting is always a poll of a condition with a deadline ([`wait_until`]),
//! never a bare sleep.
//!
//! Dropping a [`TestCluster`] (also while a test panics) kills every process it started and
//! removes the data directories; when the test failed it first prints the tail of every
//! process's log, which is usually the quickest way to see why.
//!
//! The binaries are the ones cargo built next to the test executable (`target/<profile>/`);
//! `cargo test --workspace` builds them, `cargo build --workspace` does too.
//!
//! `cluster` holds [`TestCluster`]; `process` runs and stops the processes and finds free
//! ports for them; `scrape` reads a process's /metrics and /health; this file holds the limits the harness waits with and the small helpers
//! every test uses.

mod cluster;
mod process;
pub mod scrape;

pub use cluster::{ClusterOptions, NodeAddresses, TestCluster};
pub use process::{binary, free_port, free_port_block, node_refusal, run_to_end, Finished};

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a started or restarted process may take to answer its first request.
pub const PROCESS_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an election may take before [`TestCluster::leader`] gives up.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a SIGTERMed process may take to exit before [`TestCluster::stop`] gives up.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on each call of the clients handed out by [`TestCluster::client`] and friends.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on one status request while polling; a paused or dying node must not stall a poll.
pub const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lines of each log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;
/// When this environment variable is set, a failed test leaves its data directories and
/// whole logs behind (their path is printed) instead of removing them.
pub const KEEP_DATA_ENV: &str = "RAFTKV_E2E_KEEP_DATA";

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns that.
/// Panics, saying `what` was awaited, when that takes longer than `within`.
pub async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// A key for test data: `prefix-0042`.
pub fn key(prefix: &str, i: usize) -> Bytes {
    Bytes::from(format!("{prefix}-{i:04}"))
}

/// A value that is different for every key and writer: `value-of-<prefix>-0042`.
pub fn value(prefix: &str, i: usize) -> Bytes {
    Bytes::from(format!("value-of-{prefix}-{i:04}"))
}
