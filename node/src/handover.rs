//! Handing leadership to another voter on purpose: for `raftkv leader transfer`, and when
//! the leader is asked to stop (SIGTERM), so that a rolling restart costs the time of one
//! transfer instead of an election timeout plus an election.
//!
//! openraft does the protocol (`Trigger::transfer_leader`: the leader stops taking writes,
//! tells every voter, and the target stands for election at once once its log has caught up
//! with the leader's). This module picks the target and waits until the new leader is known.

use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use tonic::Status;

use crate::raft_service::not_leader;
use crate::read_index::ReadIndexRounds;
use crate::types::{NodeId, Raft, RaftMetrics};

/// Who leads after a transfer, as the API reports it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct NewLeader {
    pub id: NodeId,
    pub address: String,
    pub term: u64,
}

/// Why a transfer was not made.
#[derive(Debug, thiserror::Error)]
pub enum HandOverError {
    /// This node does not lead; the status carries the leader hint.
    #[error("{}", .0.message())]
    NotLeader(Status),
    #[error("node {0} is not a voter of this cluster")]
    NotAVoter(NodeId),
    #[error("no other voter to hand leadership to")]
    NoOtherVoter,
    /// `to` is 0 when no target was chosen (waiting for a transfer made earlier).
    #[error("no new leader within {within:?} (handing over to node {to})")]
    TimedOut { to: NodeId, within: Duration },
    #[error("raft is stopped: {0}")]
    Stopped(String),
}

impl From<HandOverError> for Status {
    fn from(error: HandOverError) -> Status {
        match error {
            HandOverError::NotLeader(status) => status,
            HandOverError::NotAVoter(_) | HandOverError::NoOtherVoter => Status::invalid_argument(error.to_string()),
            HandOverError::TimedOut { .. } => Status::deadline_exceeded(error.to_string()),
            HandOverError::Stopped(_) => Status::unavailable(error.to_string()),
        }
    }
}

/// The voter (other than this node) whose log the leader knows to be the most up to date:
/// it needs the least to catch up before it can stand. None when there is no other voter.
pub fn most_up_to_date_voter(metrics: &RaftMetrics) -> Option<NodeId> {
    let matched = metrics.replication.as_ref();
    metrics
        .membership_config
        .membership()
        .voter_ids()
        .filter(|id| *id != metrics.id)
        .max_by_key(|id| {
            let index = matched
                .and_then(|m| m.get(id))
                .and_then(|m| m.as_ref())
                .map(|l| l.index);
            // Prefer the highest matched index; among equals, the lowest id (deterministic).
            (index.map_or(0, |i| i + 1), std::cmp::Reverse(*id))
        })
}

/// Who leads now (id, address, term), if a leader is known.
fn leader_now(metrics: &RaftMetrics) -> Option<NewLeader> {
    let id = metrics.current_leader?;
    let node = metrics.membership_config.membership().get_node(&id)?;
    Some(NewLeader {
        id,
        address: node.addr.clone(),
        term: metrics.current_term,
    })
}

/// Hands leadership from this node (which must lead) to `to`, or to the most up-to-date
/// voter, and returns once this node sees another node leading in a later term. Asking for
/// this very node is answered at once: it already leads. From the moment it begins, `reads`
/// no longer trusts this leader's lease.
pub async fn hand_over(
    raft: &Raft,
    reads: &ReadIndexRounds,
    to: Option<NodeId>,
    within: Duration,
) -> Result<NewLeader, HandOverError> {
    let (target, term) = {
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        if !m.state.is_leader() {
            let leader = m.current_leader.and_then(|id| {
                m.membership_config
                    .membership()
                    .get_node(&id)
                    .map(|node| (id, node.clone()))
            });
            return Err(HandOverError::NotLeader(not_leader(
                leader.as_ref().map(|l| l.0),
                leader.as_ref().map(|l| &l.1),
            )));
        }
        let target = match to {
            Some(id) if id == m.id => return Ok(leader_now(&m).expect("a leader knows itself")),
            Some(id) if m.membership_config.membership().voter_ids().any(|v| v == id) => id,
            Some(id) => return Err(HandOverError::NotAVoter(id)),
            None => most_up_to_date_voter(&m).ok_or(HandOverError::NoOtherVoter)?,
        };
        (target, m.current_term)
    };
    tracing::info!(to = target, term, "handing leadership over");
    reads.stop_lease_reads(term);
    raft.trigger()
        .transfer_leader(target)
        .await
        .map_err(|e| HandOverError::Stopped(e.to_string()))?;
    let own_id = *raft.node_id();
    let moved = raft
        .wait(Some(within))
        .metrics(
            |m| m.current_term > term && m.current_leader.is_some_and(|leader| leader != own_id),
            "another node leads",
        )
        .await
        .map_err(|e| wait_error(e, target, within))?;
    Ok(leader_now(&moved).expect("the wait ended with a known leader"))
}

fn wait_error(error: openraft::metrics::WaitError, to: NodeId, within: Duration) -> HandOverError {
    match error {
        openraft::metrics::WaitError::Timeout(..) => HandOverError::TimedOut { to, within },
        openraft::metrics::WaitError::ShuttingDown => HandOverError::Stopped("shutting down".to_string()),
    }
}

/// Waits until some node is known to lead in a term after `term`, and names it: the answer
/// to a transfer request whose leadership has already ended.
pub async fn leader_after(raft: &Raft, term: u64, within: Duration) -> Result<NewLeader, HandOverError> {
    let moved = raft
        .wait(Some(within))
        .metrics(
            |m| m.current_term > term && m.current_leader.is_some(),
            "a leader in a later term",
        )
        .await
        .map_err(|e| wait_error(e, 0, within))?;
    Ok(leader_now(&moved).expect("the wait ended with a known leader"))
}
