//! Membership changes on the leader: listing the members, adding a node (as a learner, then,
//! once it has caught up, as a voter), promoting a learner and removing a member — the leader
//! too, by handing leadership over first.
//!
//! openraft does the protocol (`add_learner`, `change_membership`: joint consensus). This
//! module owns what openraft leaves to us: which changes are allowed (ids and addresses are
//! unique), when a learner is close enough to the leader to vote without stalling commits, one
//! change at a time on this leader, and saying in one line what state a change that did not
//! finish left the node in.

use std::collections::BTreeSet;
use std::time::Duration;

use openraft::async_runtime::WatchReceiver;
use openraft::errors::{ChangeMembershipError, ClientWriteError, RaftError};
use openraft::{BasicNode, ChangeMembers};
use raftkv::pb;
use tonic::Status;

use crate::handover::{self, HandOverError};
use crate::raft_service::not_leader;
use crate::read_index::ReadIndexRounds;
use crate::store::KvReader;
use crate::types::{Membership, NodeId, Raft, RaftMetrics, TypeConfig};

/// A learner is made a voter only once it is at most this many log entries behind the leader:
/// a voter far behind would count toward no quorum until it caught up, so a cluster that then
/// lost one other voter would stall.
pub const PROMOTE_MAX_LAG_ENTRIES: u64 = 256;

/// How long removing a voter waits for it to receive the membership that makes it a learner,
/// before it is removed altogether (a dead node never does: it is removed all the same).
pub const DEMOTED_RECEIVE_WAIT: Duration = Duration::from_secs(1);
/// How often a node that has been a member asks the others whether it still is: a removed
/// node does not hear of its removal from the leader, which stops replicating to it.
pub const REMOVAL_CHECK_INTERVAL: Duration = Duration::from_secs(1);
/// How long one of those questions may take.
const REMOVAL_CHECK_TIMEOUT: Duration = Duration::from_millis(500);

/// Why a membership change was not made. Each message is one line a person can act on.
#[derive(Debug, thiserror::Error)]
pub enum MembershipError {
    /// This node does not lead; the status carries the leader hint.
    #[error("{}", .0.message())]
    NotLeader(Status),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("node {0} is not a member of the cluster")]
    NoSuchMember(NodeId),
    #[error("node {id} is already a {role} at {address}")]
    IdTaken {
        id: NodeId,
        role: &'static str,
        address: String,
    },
    #[error(
        "node {id} was removed from the cluster at log index {index} and ids are never reused; start the node with an empty data dir and --join and add it under a new id"
    )]
    IdRetired { id: NodeId, index: u64 },
    #[error("address {address} is already used by node {id}")]
    AddressTaken { address: String, id: NodeId },
    #[error("another membership change is in progress ({0}); try again when it has finished")]
    InProgress(String),
    #[error("cannot remove node {0}: it is the only voter")]
    LastVoter(NodeId),
    #[error(
        "node {id} is a learner {behind} entries behind the leader and did not catch up within {within:?}; \
         it stays a learner: run `raftkv member promote {id}` once it has caught up, or `raftkv member remove {id}`"
    )]
    NotCaughtUp { id: NodeId, behind: u64, within: Duration },
    #[error("{0}")]
    Rejected(String),
    #[error("raft is stopped: {0}")]
    Stopped(String),
}

impl From<MembershipError> for Status {
    fn from(error: MembershipError) -> Status {
        use MembershipError as E;
        match error {
            E::NotLeader(status) => status,
            E::InvalidArgument(_) => Status::invalid_argument(error.to_string()),
            E::NoSuchMember(_) => Status::not_found(error.to_string()),
            E::IdTaken { .. } | E::IdRetired { .. } | E::AddressTaken { .. } => {
                Status::already_exists(error.to_string())
            }
            E::InProgress(_) | E::LastVoter(_) | E::Rejected(_) => Status::failed_precondition(error.to_string()),
            E::NotCaughtUp { .. } => Status::deadline_exceeded(error.to_string()),
            E::Stopped(_) => Status::unavailable(error.to_string()),
        }
    }
}

/// The membership changes this node makes when it leads. One change at a time: a second
/// request while one runs is refused rather than queued, so its caller knows at once.
pub struct MemberChanges {
    raft: Raft,
    /// The state machine, which records every node ever removed.
    reader: KvReader,
    /// Told when this leader hands leadership over before its removal.
    reads: ReadIndexRounds,
    /// What the change in progress does, for the refusal of another.
    busy: tokio::sync::Mutex<()>,
    current: std::sync::Mutex<String>,
}

/// The membership as it stands after a committed change.
pub struct Changed {
    pub members: Vec<pb::Member>,
    pub log_index: u64,
}

impl MemberChanges {
    pub fn new(raft: Raft, reader: KvReader, reads: ReadIndexRounds) -> MemberChanges {
        MemberChanges {
            raft,
            reader,
            reads,
            busy: tokio::sync::Mutex::new(()),
            current: std::sync::Mutex::new(String::new()),
        }
    }

    /// Every member with its role and how far behind the leader it is. Served by the leader
    /// only: only it knows how far each member has got.
    pub fn list(&self) -> Result<pb::MemberListResponse, MembershipError> {
        let m = leader_metrics(&self.raft)?;
        Ok(pb::MemberListResponse {
            members: members_of(&m),
            leader_id: m.id,
            last_log_index: m.last_log_index.unwrap_or(0),
        })
    }

    /// Adds node `id` at `address` as a learner and, unless `learner`, makes it a voter once
    /// it has caught up (within `within`). A learner already added at the same address (an
    /// add that timed out before) is only promoted; a node that already is what was asked
    /// (a retry whose first answer was lost) is answered with the membership as it is.
    pub async fn add(
        &self,
        id: NodeId,
        address: String,
        learner: bool,
        within: Duration,
    ) -> Result<Changed, MembershipError> {
        if id == 0 {
            return Err(MembershipError::InvalidArgument("node ids start at 1".to_string()));
        }
        raftkv::client::check_address(&address).map_err(|e| MembershipError::InvalidArgument(e.to_string()))?;
        let _busy = self.start(format!("adding node {id}"))?;
        let deadline = tokio::time::Instant::now() + within;
        let m = leader_metrics(&self.raft)?;
        let membership = m.membership_config.membership();
        let is_voter = membership.voter_ids().any(|v| v == id);
        let already_learner = match membership.get_node(&id) {
            Some(node) if node.addr != address => return Err(id_taken(&m, id)),
            Some(_) if is_voter || learner => {
                let index = m.membership_config.log_id().map_or(0, |l| l.index);
                return Ok(self.changed(index));
            }
            Some(_) => true,
            None => false,
        };
        match self.reader.removed_at(id) {
            Ok(Some(index)) => return Err(MembershipError::IdRetired { id, index }),
            Ok(None) => {}
            Err(error) => {
                return Err(MembershipError::Stopped(format!(
                    "cannot read the state machine: {error}"
                )))
            }
        }
        if let Some((other, _)) = membership
            .nodes()
            .find(|(other, node)| **other != id && node.addr == address)
        {
            return Err(MembershipError::AddressTaken { address, id: *other });
        }
        if !already_learner {
            tracing::info!(node = id, %address, "adding a learner");
            let added = self
                .raft
                .add_learner(id, BasicNode { addr: address }, false)
                .await
                .map_err(change_error)?;
            if learner {
                return Ok(self.changed(added.log_id.index));
            }
        }
        self.promote_locked(id, deadline.saturating_duration_since(tokio::time::Instant::now()))
            .await
    }

    /// Makes learner `id` a voter once it is at most [`PROMOTE_MAX_LAG_ENTRIES`] behind,
    /// waiting up to `within` for that. A voter already is one: that is answered at once.
    pub async fn promote(&self, id: NodeId, within: Duration) -> Result<Changed, MembershipError> {
        let _busy = self.start(format!("promoting node {id}"))?;
        self.promote_locked(id, within).await
    }

    async fn promote_locked(&self, id: NodeId, within: Duration) -> Result<Changed, MembershipError> {
        let m = leader_metrics(&self.raft)?;
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            return Err(MembershipError::NoSuchMember(id));
        }
        if membership.voter_ids().any(|v| v == id) {
            // Already what was asked: a retry whose first answer was lost, say.
            return Ok(self.changed(m.membership_config.log_id().map_or(0, |l| l.index)));
        }
        let caught_up = self
            .raft
            .wait(Some(within))
            .metrics(|m| !m.state.is_leader() || caught_up(m, id), "the learner caught up")
            .await;
        match caught_up {
            Ok(m) if !m.state.is_leader() => return Err(MembershipError::NotLeader(not_leader_status(&m))),
            Ok(_) => {}
            Err(openraft::metrics::WaitError::Timeout(..)) => {
                let behind = behind(&self.raft.metrics().borrow_watched(), id).unwrap_or(u64::MAX);
                return Err(MembershipError::NotCaughtUp { id, behind, within });
            }
            Err(openraft::metrics::WaitError::ShuttingDown) => {
                return Err(MembershipError::Stopped("shutting down".to_string()))
            }
        }
        tracing::info!(node = id, "promoting a learner to voter");
        let promoted = self
            .raft
            .change_membership(ChangeMembers::AddVoterIds(BTreeSet::from([id])), false)
            .await
            .map_err(change_error)?;
        Ok(self.changed(promoted.log_id.index))
    }

    /// Removes member `id`. When it is this node (the leader), leadership is handed to the
    /// most up-to-date other voter first and the answer is UNAVAILABLE naming it: the caller's
    /// retry goes there, and the new leader removes this node.
    pub async fn remove(&self, id: NodeId, within: Duration) -> Result<Changed, MembershipError> {
        let _busy = self.start(format!("removing node {id}"))?;
        let m = leader_metrics(&self.raft)?;
        let membership = m.membership_config.membership();
        if membership.get_node(&id).is_none() {
            // Removed already: a retry whose first answer was lost.
            return match self.reader.removed_at(id) {
                Ok(Some(index)) => Ok(self.changed(index)),
                _ => Err(MembershipError::NoSuchMember(id)),
            };
        }
        let is_voter = membership.voter_ids().any(|v| v == id);
        if is_voter && membership.voter_ids().count() == 1 {
            return Err(MembershipError::LastVoter(id));
        }
        if id == m.id {
            tracing::info!("removing this node, the leader: handing leadership over first");
            let new_leader = handover::hand_over(&self.raft, &self.reads, None, within)
                .await
                .map_err(|e| match e {
                    HandOverError::NotLeader(status) => MembershipError::NotLeader(status),
                    HandOverError::Stopped(reason) => MembershipError::Stopped(reason),
                    other => MembershipError::Rejected(format!("cannot hand leadership over before removal: {other}")),
                })?;
            return Err(MembershipError::NotLeader(not_leader(
                Some(new_leader.id),
                Some(&BasicNode {
                    addr: new_leader.address,
                }),
            )));
        }
        if is_voter {
            // A voter is made a learner first, and given a moment to receive that membership:
            // a node removed outright never hears of it (the leader stops replicating to it), so
            // it would stand for election again and again; a learner never does.
            tracing::info!(node = id, "removing a voter: making it a learner first");
            let demoted = self
                .raft
                .change_membership(ChangeMembers::RemoveVoters(BTreeSet::from([id])), true)
                .await
                .map_err(change_error)?;
            let index = demoted.log_id.index;
            let _ = self
                .raft
                .wait(Some(within.min(DEMOTED_RECEIVE_WAIT)))
                .metrics(
                    |m| {
                        m.replication
                            .as_ref()
                            .and_then(|r| r.get(&id))
                            .is_some_and(|matched| matched.is_some_and(|l| l.index >= index))
                    },
                    "the removed voter has the membership that makes it a learner",
                )
                .await;
        }
        tracing::info!(node = id, "removing a member");
        let removed = self
            .raft
            .change_membership(ChangeMembers::RemoveNodes(BTreeSet::from([id])), false)
            .await
            .map_err(|error| match change_error(error) {
                // A retry goes to the leader, which finishes the removal.
                not_leader @ MembershipError::NotLeader(_) => not_leader,
                other if is_voter => MembershipError::Rejected(format!(
                    "node {id} was made a learner but not removed ({other}); run `raftkv member remove {id}` again"
                )),
                other => other,
            })?;
        Ok(self.changed(removed.log_id.index))
    }

    /// Takes the one-change-at-a-time lock, or says what holds it.
    fn start(&self, what: String) -> Result<tokio::sync::MutexGuard<'_, ()>, MembershipError> {
        let mut current = self.current.lock().expect("poisoned");
        match self.busy.try_lock() {
            Ok(guard) => {
                *current = what;
                Ok(guard)
            }
            Err(_) => Err(MembershipError::InProgress(current.clone())),
        }
    }

    fn changed(&self, log_index: u64) -> Changed {
        Changed {
            members: members_of(&self.raft.metrics().borrow_watched()),
            log_index,
        }
    }
}

/// The index of the last log entry member `id` is known to hold, when this node leads and has
/// heard from it (the leader holds its whole log).
fn matched(m: &RaftMetrics, id: NodeId) -> Option<u64> {
    if id == m.id {
        return m.last_log_index;
    }
    m.replication.as_ref()?.get(&id)?.as_ref().map(|l| l.index)
}

/// How many entries member `id` is behind the leader's last log entry, when this node leads
/// (a member it has not heard from yet is behind by the whole log).
pub fn behind(m: &RaftMetrics, id: NodeId) -> Option<u64> {
    if !m.state.is_leader() {
        return None;
    }
    let last = m.last_log_index.unwrap_or(0);
    Some(last.saturating_sub(matched(m, id).unwrap_or(0)))
}

/// Whether learner `id` is close enough to the leader to be made a voter: it has answered,
/// and is at most [`PROMOTE_MAX_LAG_ENTRIES`] behind.
fn caught_up(m: &RaftMetrics, id: NodeId) -> bool {
    matched(m, id).is_some() && behind(m, id).is_some_and(|b| b <= PROMOTE_MAX_LAG_ENTRIES)
}

/// The members as the API shows them, with how far behind each is when this node leads.
pub fn members_of(m: &RaftMetrics) -> Vec<pb::Member> {
    members_in(m.membership_config.membership())
        .into_iter()
        .map(|member| pb::Member {
            behind: behind(m, member.id),
            ..member
        })
        .collect()
}

/// The members of `membership`, without how far behind they are.
pub fn members_in(membership: &Membership) -> Vec<pb::Member> {
    membership
        .nodes()
        .map(|(id, node)| pb::Member {
            id: *id,
            address: node.addr.clone(),
            voter: membership.voter_ids().any(|v| v == *id),
            behind: None,
        })
        .collect()
}

fn id_taken(m: &RaftMetrics, id: NodeId) -> MembershipError {
    let membership = m.membership_config.membership();
    MembershipError::IdTaken {
        id,
        role: if membership.voter_ids().any(|v| v == id) {
            "voter"
        } else {
            "learner"
        },
        address: membership.get_node(&id).map(|n| n.addr.clone()).unwrap_or_default(),
    }
}

/// This node's metrics when it leads; otherwise "not the leader" with the hint.
fn leader_metrics(raft: &Raft) -> Result<RaftMetrics, MembershipError> {
    let m = raft.metrics().borrow_watched().clone();
    if m.state.is_leader() {
        Ok(m)
    } else {
        Err(MembershipError::NotLeader(not_leader_status(&m)))
    }
}

fn not_leader_status(m: &RaftMetrics) -> Status {
    let leader = m.current_leader;
    let node = leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
    not_leader(leader, node.as_ref())
}

/// What openraft's refusal of a change means to the caller.
fn change_error(error: RaftError<TypeConfig, ClientWriteError<TypeConfig>>) -> MembershipError {
    match error {
        RaftError::APIError(ClientWriteError::ForwardToLeader(f) | ClientWriteError::LogEntryDiscarded(f)) => {
            MembershipError::NotLeader(not_leader(f.leader_id, f.leader_node.as_ref()))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::InProgress(p))) => {
            MembershipError::InProgress(format!(
                "the membership change at log index {} is not committed yet",
                p.membership_log_id.map_or(0, |l| l.index)
            ))
        }
        RaftError::APIError(ClientWriteError::ChangeMembershipError(ChangeMembershipError::LearnerNotFound(l))) => {
            MembershipError::NoSuchMember(l.node_id)
        }
        RaftError::APIError(e) => MembershipError::Rejected(e.to_string()),
        RaftError::Fatal(f) => MembershipError::Stopped(f.to_string()),
    }
}

/// Finds out that this node was removed from the cluster, records it durably in its data
/// directory (which is refused from then on), says so once, and stops Raft here, so that a
/// removed node (or one started again from a removed node's data) never stands for election.
///
/// A node sees its removal in its own log only if the leader replicated that far to it, which
/// it need not; so, once it has been a member, it also asks the others every
/// [`REMOVAL_CHECK_INTERVAL`] for their membership: one whose committed membership is newer
/// than this node's and leaves it out settles the question.
pub async fn record_own_removal(
    id: NodeId,
    raft: Raft,
    data_dir: std::path::PathBuf,
    tls: Option<raftkv::tls::ClientTls>,
    cluster: crate::cluster_identity::ClusterIdentity,
) {
    let mut was_member = false;
    // One channel per peer, kept: a question a second must not open a connection each time.
    let mut channels = std::collections::HashMap::new();
    let mut tick = tokio::time::interval(REMOVAL_CHECK_INTERVAL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let removed_at = loop {
        tick.tick().await;
        let (own_view, peers) = {
            let metrics = raft.metrics();
            let m = metrics.borrow_watched();
            if m.state == openraft::ServerState::Shutdown {
                return;
            }
            let membership = m.membership_config.membership();
            let is_member = membership.get_node(&id).is_some();
            was_member |= is_member;
            let own_index = m.membership_config.log_id().map_or(0, |l| l.index);
            if was_member && !is_member {
                break own_index;
            }
            let peers: Vec<String> = membership
                .nodes()
                .filter(|(peer, _)| **peer != id)
                .map(|(_, node)| node.addr.clone())
                .collect();
            (
                own_index,
                if was_member && !m.state.is_leader() {
                    peers
                } else {
                    Vec::new()
                },
            )
        };
        let asked = Peers {
            addresses: &peers,
            cluster: cluster.id(),
            tls: tls.as_ref(),
        };
        if let Some(index) = removal_seen_by_peers(id, own_view, asked, &mut channels).await {
            break index;
        }
    };
    match crate::store::data_dir::record_removal(&data_dir, removed_at) {
        Ok(()) => tracing::warn!(
            index = removed_at,
            "this node was removed from the cluster at log index {removed_at}; stopping raft here (its data directory cannot be used again)"
        ),
        Err(error) => tracing::error!(%error, index = removed_at, "this node was removed from the cluster but cannot record it"),
    }
    if let Err(error) = raft.shutdown().await {
        tracing::warn!(%error, "raft did not stop cleanly");
    }
}

/// The peers a node asks whether it was removed.
struct Peers<'a> {
    addresses: &'a [String],
    /// This node's cluster: only a peer of the same cluster is believed (an address may belong
    /// to a node of another cluster, listed by mistake).
    cluster: Option<raftkv::wire::ClusterId>,
    tls: Option<&'a raftkv::tls::ClientTls>,
}

/// The index of a committed membership newer than `own_index` that leaves node `id` out, as
/// the first of `peers` that answers and knows one says.
async fn removal_seen_by_peers(
    id: NodeId,
    own_index: u64,
    peers: Peers<'_>,
    channels: &mut std::collections::HashMap<String, tonic::transport::Channel>,
) -> Option<u64> {
    let Peers {
        addresses,
        cluster,
        tls,
    } = peers;
    let cluster = cluster?.to_string();
    for address in addresses {
        let channel = match channels.get(address) {
            Some(channel) => channel.clone(),
            None => match raftkv::client::channel(address, tls) {
                Ok(channel) => channels.entry(address.clone()).or_insert(channel).clone(),
                Err(_) => continue,
            },
        };
        let mut request = tonic::Request::new(pb::StatusRequest {});
        request.set_timeout(REMOVAL_CHECK_TIMEOUT);
        let status = tokio::time::timeout(
            REMOVAL_CHECK_TIMEOUT,
            pb::cluster_client::ClusterClient::new(channel).status(request),
        )
        .await;
        let Ok(Ok(status)) = status else { continue };
        let status = status.into_inner();
        if status.cluster_id != cluster {
            continue;
        }
        let (Some(index), Some(committed)) = (status.membership_index, status.commit_index) else {
            continue;
        };
        if index > own_index && committed >= index && status.members.iter().all(|m| m.id != id) {
            return Some(index);
        }
    }
    None
}
