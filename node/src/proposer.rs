//! Group commit above openraft.
//!
//! openraft makes each client write an entry of its own (it appends the writes queued
//! together in one call, but each still costs a log record, its share of every
//! AppendEntries, an apply and an answer). The proposer instead gathers the writes
//! that arrive while earlier proposals are in flight and proposes them as one entry
//! (a `WriteGroup`), then hands each caller its own result.

use std::sync::Arc;

use openraft::errors::{ClientWriteError, ForwardReason};
use openraft::impls::ProgressResponder;
use tokio::sync::{mpsc, oneshot, Semaphore};
use tonic::Status;
use tracing::Instrument;

use crate::raft_service::not_leader;
use crate::types::{Command, CommandResult, LogId, Raft, TypeConfig, WriteGroup};

/// Most commands in one log entry.
pub const MAX_GROUP_COMMANDS: usize = 4096;
/// Most key+value bytes in one log entry; a single command may be larger (up to the
/// key and value limits). Keeps every entry inline in sled's file (see `store/engine/sled.rs`).
pub const MAX_GROUP_BYTES: usize = 1 << 20;
/// Proposals handed to openraft and not yet answered. One: even with the leader's append
/// no longer waiting for its fdatasync, 2 or 4 groups in flight measured no faster at 64
/// clients and slower at one (issue 12): one larger group per round costs less than
/// overlapping smaller ones.
pub const MAX_PROPOSALS_IN_FLIGHT: usize = 1;
/// The longest a write group waits for more writes; only when recent groups were larger.
/// 2 ms measured best (BENCHMARKS.md, "Batching for openraft 0.9").
pub const MAX_LINGER: std::time::Duration = std::time::Duration::from_micros(2000);
/// How many recent group sizes set the size a group waits to reach.
const RECENT_GROUPS: usize = 8;
/// Writes waiting to join a group; callers wait for room beyond this.
pub const PROPOSAL_QUEUE_LEN: usize = 16 * 1024;

/// The outcome of a proposed command: its result and the entry it was applied in.
pub type Proposed = Result<(CommandResult, LogId), Status>;

struct Proposal {
    command: Command,
    reply: oneshot::Sender<Proposed>,
}

#[derive(Clone)]
pub struct Proposer {
    queue: mpsc::Sender<Proposal>,
}

fn command_bytes(c: &Command) -> usize {
    c.op.payload_bytes()
}

fn now_ms() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

impl Proposer {
    /// Starts the task that gathers and proposes the groups, in the current span (the
    /// node's); it ends when every `Proposer` clone is dropped.
    pub fn start(raft: Raft) -> Proposer {
        let (queue, rx) = mpsc::channel(PROPOSAL_QUEUE_LEN);
        tokio::spawn(run(raft, rx).in_current_span());
        Proposer { queue }
    }

    /// Proposes `command` and waits until it is applied on this leader.
    pub async fn propose(&self, command: Command) -> Proposed {
        let (reply, answer) = oneshot::channel();
        self.queue
            .send(Proposal { command, reply })
            .await
            .map_err(|_| Status::unavailable("node is shutting down"))?;
        answer
            .await
            .unwrap_or_else(|_| Err(Status::unavailable("node is shutting down")))
    }
}

/// Whether the caller of `p` has gone (its deadline passed, or its call was cancelled): such a
/// write is not proposed. Its caller was told the outcome is unknown, and not applying it is
/// one of the outcomes; a retry with the same write id is then applied once. Under a load
/// beyond what the cluster writes within the clients' timeouts (256 clients putting 1 MiB
/// values), proposing the writes whose callers had already given up left nothing for the
/// others: 2.9 puts a second, every other one timed out.
fn abandoned(p: &Proposal) -> bool {
    p.reply.is_closed()
}

async fn run(raft: Raft, mut rx: mpsc::Receiver<Proposal>) {
    let in_flight = Arc::new(Semaphore::new(MAX_PROPOSALS_IN_FLIGHT));
    let mut held_over: Option<Proposal> = None;
    let mut recent_sizes = [0usize; RECENT_GROUPS];
    let mut next_slot = 0;
    loop {
        let first = match held_over.take() {
            Some(p) => p,
            None => match rx.recv().await {
                Some(p) => p,
                None => return,
            },
        };
        // Wait for room first, so that everything arriving meanwhile joins this group.
        let Ok(permit) = in_flight.clone().acquire_owned().await else {
            return;
        };
        if abandoned(&first) {
            continue;
        }
        let mut bytes = command_bytes(&first.command);
        let mut proposals = vec![first];
        // Under load the clients answered by the last group send their next writes a
        // moment after it completes; waiting briefly for them (never longer than
        // MAX_LINGER, and only while the group is smaller than recent ones) merges them
        // into this group instead of leaving them for the next round trip.
        let expected = recent_sizes.iter().copied().max().unwrap_or(1);
        let opened = tokio::time::Instant::now();
        let linger_until = opened + MAX_LINGER;
        while proposals.len() < MAX_GROUP_COMMANDS {
            let p = match rx.try_recv() {
                Ok(p) => p,
                Err(_) if proposals.len() >= expected => break,
                Err(_) => match tokio::time::timeout_at(linger_until, rx.recv()).await {
                    Ok(Some(p)) => p,
                    Ok(None) | Err(_) => break,
                },
            };
            if abandoned(&p) {
                continue;
            }
            let size = command_bytes(&p.command);
            if bytes + size > MAX_GROUP_BYTES {
                // Too big for this group: it opens the next one.
                held_over = Some(p);
                break;
            }
            bytes += size;
            proposals.push(p);
        }
        recent_sizes[next_slot] = proposals.len();
        next_slot = (next_slot + 1) % RECENT_GROUPS;
        let (commands, replies): (Vec<Command>, Vec<_>) = proposals.into_iter().map(|p| (p.command, p.reply)).unzip();
        // Answered by the state machine once the group is applied (or by openraft when it
        // refuses or discards the entry); dropped unanswered when raft stops.
        let (responder, receiver) = ProgressResponder::complete_only();
        let group = WriteGroup {
            proposed_at_ms: now_ms(),
            commands,
        };
        match raft.client_write_ff(group, Some(responder)).await {
            Ok(()) => {}
            Err(fatal) => {
                for reply in replies {
                    let _ = reply.send(Err(Status::unavailable(format!("raft is stopped: {fatal}"))));
                }
                continue;
            }
        };
        let size = replies.len();
        let proposed_at = std::time::Instant::now();
        let gathered_us = opened.elapsed().as_micros() as u64;
        let answer = async move {
            let outcome = receiver.await;
            drop(permit);
            // The term the group was committed in, when it was.
            let term = outcome
                .as_ref()
                .ok()
                .and_then(|r| r.as_ref().ok())
                .map(|w| w.log_id.leader_id.term);
            tracing::debug!(
                commands = size,
                term,
                gathered_us,
                elapsed_us = proposed_at.elapsed().as_micros() as u64,
                "write group answered"
            );
            match outcome {
                Ok(Ok(written)) => {
                    assert_eq!(
                        written.data.results.len(),
                        replies.len(),
                        "write group {} applied with a result count unlike its command count",
                        written.log_id
                    );
                    for (result, reply) in written.data.results.into_iter().zip(replies) {
                        let _ = reply.send(Ok((result, written.log_id)));
                    }
                }
                Ok(Err(e)) => {
                    let status = write_error(e);
                    for reply in replies {
                        let _ = reply.send(Err(status.clone()));
                    }
                }
                Err(_) => {
                    for reply in replies {
                        let _ = reply.send(Err(outcome_unknown()));
                    }
                }
            }
        };
        tokio::spawn(answer.in_current_span());
    }
}

/// Why a leader refused a write without appending it while no quorum answered it within its
/// lease; [`is_lease_refusal`] tells it apart.
const LEASE_REFUSAL: &str =
    "this node leads but no quorum has answered it lately (just elected, or cut off); nothing was applied";

/// Whether `status` is a leader's refusal for want of a quorum's recent answer: nothing was
/// appended, so the write may be proposed again once the quorum answers.
pub fn is_lease_refusal(status: &Status) -> bool {
    status.code() == tonic::Code::Unavailable && status.message() == LEASE_REFUSAL
}

/// A write that may or may not have been committed: the leader lost its
/// leadership or stopped after accepting it.
fn outcome_unknown() -> Status {
    Status::aborted("leadership changed while the write was in flight; it may or may not have been applied")
}

fn write_error(e: ClientWriteError<TypeConfig>) -> Status {
    match e {
        // Refused before it was appended: nothing was applied, as for a refusal in
        // `KvService` before proposing. A leader refuses new writes while no quorum has
        // answered it within its lease (just elected, or cut off from the others).
        ClientWriteError::ForwardToLeader(f) if f.reason == ForwardReason::LeaseExpired => {
            Status::unavailable(LEASE_REFUSAL)
        }
        ClientWriteError::ForwardToLeader(f) => not_leader(f.leader_id, f.leader_node.as_ref()),
        // The entry was in the log and left it when leadership changed; it may have been
        // committed by the next leader: the outcome is unknown.
        ClientWriteError::LogEntryDiscarded(f) => {
            let hint = not_leader(f.leader_id, f.leader_node.as_ref());
            let mut status = outcome_unknown();
            *status.metadata_mut() = hint.metadata().clone();
            status
        }
        ClientWriteError::ChangeMembershipError(e) => Status::internal(e.to_string()),
        ClientWriteError::PreconditionFailed(e) => Status::internal(e.to_string()),
    }
}
