//! Following openraft's state without being woken at each of its steps.
//!
//! openraft publishes its whole [`RaftMetrics`](openraft::RaftMetrics) after every step of its
//! core (an append, an apply, a replication answer, a heartbeat): several times per write. A
//! task that awaits each change is woken that often, and waking a parked worker thread is a
//! context switch. Five such followers per node cost a three-node cluster about one and a half
//! cores at 500 puts/s from one client, and 18 % of a core while idle. So:
//! - a follower of leadership or membership waits on openraft's server metrics
//!   (`Raft::server_metrics`), which change only with the vote, the role, the leader or the
//!   membership;
//! - a follower of the indexes waits on the full metrics through [`Sampled`]: at most once per
//!   interval, seeing the latest state each time.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::type_config::alias::WatchReceiverOf;
use openraft::RaftMetrics;
use tokio::time::Instant;

use crate::types::{Raft, TypeConfig};

/// openraft's core has exited (its metrics' senders are gone).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RaftStopped;

/// The full metrics, looked at most once per interval.
pub struct Sampled {
    metrics: WatchReceiverOf<TypeConfig, RaftMetrics<TypeConfig>>,
    every: Duration,
    next: Option<Instant>,
}

impl Sampled {
    pub fn new(raft: &Raft, every: Duration) -> Self {
        Sampled {
            metrics: raft.metrics(),
            every,
            next: None,
        }
    }

    /// The latest metrics, marked as seen.
    pub fn latest(&mut self) -> tokio::sync::watch::Ref<'_, RaftMetrics<TypeConfig>> {
        self.metrics.borrow_and_update()
    }

    /// Waits until the metrics have changed since [`Sampled::latest`] and the interval has
    /// passed since the last wait ended (changes in between are seen together, as the latest).
    pub async fn changed(&mut self) -> Result<(), RaftStopped> {
        self.metrics.changed().await.map_err(|_| RaftStopped)?;
        if let Some(next) = self.next {
            tokio::time::sleep_until(next).await;
        }
        self.next = Some(Instant::now() + self.every);
        Ok(())
    }
}

/// The reason openraft's core stopped, once it has: it records the reason in the metrics as it
/// exits, and its exit drops the metrics' senders.
pub async fn core_stopped(raft: &Raft) -> String {
    let mut server = raft.server_metrics();
    while server.changed().await.is_ok() {}
    match &raft.metrics().borrow_watched().running_state {
        Err(fatal) => fatal.to_string(),
        Ok(()) => "its core exited".to_string(),
    }
}
