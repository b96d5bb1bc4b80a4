//! ReadIndex in rounds: one leadership confirmation (a round) serves every
//! linearizable read that arrived before it started.
//!
//! A round confirms leadership one of two ways ([`ReadKind`]): with a quorum
//! (ReadIndex, the default), or from the leader's lease (`lease` reads: the leader
//! vouches for itself when a quorum acknowledged it within the lease, one election
//! timeout, so no round trip is needed; this assumes the nodes' clocks advance at
//! about the same rate, since a follower keeps its own lease by its own clock). A
//! lease that has run out falls back to a quorum round, so a lease read is never
//! refused for it. Once the leader begins to hand leadership over
//! ([`ReadIndexRounds::stop_lease_reads`]), its lease no longer vouches for it: the voters
//! let the transfer's target win at once, lease or not.
//!
//! Each `Raft::get_read_log_id(ReadPolicy::ReadIndex)` on the leader waits for a
//! quorum to answer an AppendEntries (a heartbeat, or replication) sent after it
//! began, and on a follower a round is one `Raft.ReadIndex` RPC to the leader. Under many
//! concurrent reads that is one round per read. Here reads queue up; a task
//! takes every read queued so far, runs one round, and answers them all with
//! its read index. A read that arrives while a round is running waits for the
//! next one — a round that began before the read arrived may predate writes
//! the read must see.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use openraft::errors::{LinearizableReadError, RaftError};
use openraft::ReadPolicy;
use tokio::sync::{mpsc, oneshot};
use tonic::{Request, Status};
use tracing::Instrument;

use crate::network::{Lane, Network};
use crate::raft_service::{linearizable_read_error, not_leader, Leadership};
use crate::types::Raft;

/// Reads waiting for the next round; callers wait for room beyond this.
pub const READ_QUEUE_LEN: usize = 16 * 1024;
/// The longest one round (a quorum check or a ReadIndex RPC) may take. A follower whose
/// leader does not confirm within this is likely cut off: it fails the read (UNAVAILABLE)
/// rather than keep the client waiting.
pub const READ_ROUND_TIMEOUT: Duration = Duration::from_secs(1);

/// The pause before repeating a leadership check that a quorum did not confirm in time.
const RETRY_PAUSE: Duration = Duration::from_millis(5);

/// The log index a linearizable read must wait for (None: nothing to wait for).
pub type ReadIndex = Result<Option<u64>, Status>;

/// How a round confirms the leadership behind a read.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadKind {
    /// A quorum acknowledges the leader after the read arrived (ReadIndex).
    Quorum,
    /// The leader's lease vouches for it; a quorum round when the lease has run out.
    Lease,
}

/// The queues of reads waiting for a round, one per [`ReadKind`], and the tasks that run
/// the rounds.
#[derive(Clone)]
pub struct ReadIndexRounds {
    quorum: mpsc::Sender<oneshot::Sender<ReadIndex>>,
    lease: mpsc::Sender<oneshot::Sender<ReadIndex>>,
    /// The term whose leadership this node is handing over (0: none): in it, lease reads
    /// are confirmed by a quorum.
    lease_off_in_term: Arc<AtomicU64>,
}

impl ReadIndexRounds {
    /// Starts the tasks that run the rounds, in the current span (the node's); they end
    /// when every clone is dropped.
    pub fn start(raft: Raft, network: Network) -> ReadIndexRounds {
        let lease_off_in_term = Arc::new(AtomicU64::new(0));
        let queue = |kind| {
            let (queue, rx) = mpsc::channel(READ_QUEUE_LEN);
            let round = Round {
                raft: raft.clone(),
                network: network.clone(),
                kind,
                lease_off_in_term: lease_off_in_term.clone(),
            };
            tokio::spawn(run(round, rx).in_current_span());
            queue
        };
        ReadIndexRounds {
            quorum: queue(ReadKind::Quorum),
            lease: queue(ReadKind::Lease),
            lease_off_in_term,
        }
    }

    /// From now until the end of `term`'s leadership, lease reads are confirmed by a quorum:
    /// called before this leader hands leadership over.
    pub fn stop_lease_reads(&self, term: u64) {
        self.lease_off_in_term.store(term, Ordering::SeqCst);
    }

    /// A read index confirmed, the way `kind` says, by a round that started after this call.
    pub async fn read_index(&self, kind: ReadKind) -> ReadIndex {
        let queue = match kind {
            ReadKind::Quorum => &self.quorum,
            ReadKind::Lease => &self.lease,
        };
        let (reply, answer) = oneshot::channel();
        queue
            .send(reply)
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("node is shutting down")))
    }
}

/// What one queue's rounds need.
struct Round {
    raft: Raft,
    network: Network,
    kind: ReadKind,
    lease_off_in_term: Arc<AtomicU64>,
}

impl Round {
    /// Whether the lease may vouch for this leader in `term`.
    fn lease_allowed(&self, term: u64) -> bool {
        self.kind == ReadKind::Lease && self.lease_off_in_term.load(Ordering::SeqCst) != term
    }
}

async fn run(round: Round, mut rx: mpsc::Receiver<oneshot::Sender<ReadIndex>>) {
    while let Some(first) = rx.recv().await {
        let mut waiting = vec![first];
        while let Ok(more) = rx.try_recv() {
            waiting.push(more);
        }
        let result = match tokio::time::timeout(READ_ROUND_TIMEOUT, one_round(&round)).await {
            Ok(r) => r,
            Err(_) => Err(Status::unavailable(
                "could not confirm leadership with a quorum in time",
            )),
        };
        for reply in waiting {
            let _ = reply.send(result.clone());
        }
    }
}

/// One leadership confirmation: locally when this node leads, else by asking the leader.
async fn one_round(round: &Round) -> ReadIndex {
    let Round {
        raft, network, kind, ..
    } = round;
    let Leadership {
        is_leader,
        leader,
        term,
    } = Leadership::of(raft);
    if is_leader {
        if round.lease_allowed(term) {
            match raft.get_read_log_id(ReadPolicy::LeaseRead).await {
                // Checked again: a handover that began meanwhile may have let another node win
                // before openraft looked at the lease.
                Ok((read_log_id, _)) if round.lease_allowed(term) => return Ok(Some(read_log_id.index())),
                Ok(_) => {}
                // The lease ran out (no quorum acknowledged the leader lately): ask a quorum.
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {}
                Err(e) => return Err(linearizable_read_error(e)),
            }
        }
        // openraft waits up to its leader lease (the maximum election timeout) for a quorum
        // to answer; when the answers were merely slow (QuorumNotEnough) the check is
        // repeated, within READ_ROUND_TIMEOUT.
        loop {
            match raft.get_read_log_id(ReadPolicy::ReadIndex).await {
                Ok((read_log_id, _)) => return Ok(Some(read_log_id.index())),
                Err(RaftError::APIError(LinearizableReadError::QuorumNotEnough(_))) => {
                    tokio::time::sleep(RETRY_PAUSE).await
                }
                Err(e) => return Err(linearizable_read_error(e)),
            }
        }
    }
    let Some((leader_id, address)) = leader else {
        return Err(not_leader(None, None));
    };
    let mut client = network
        .client(&address, Lane::Replication)
        .map_err(|e| Status::unavailable(e.to_string()))?;
    let mut request = Request::new(raftkv::raft_pb::ReadIndexRequest {
        lease: *kind == ReadKind::Lease,
    });
    request.set_timeout(READ_ROUND_TIMEOUT);
    let reply = client.read_index(request).await.map_err(|s| match s.code() {
        tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => {
            Status::unavailable(format!(
                "cannot confirm a linearizable read with leader {leader_id} at {address}: {}",
                s.message()
            ))
        }
        _ => s,
    })?;
    Ok(reply.into_inner().read_index)
}
