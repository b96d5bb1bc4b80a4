//! The public `Cluster` service: this node's status, once or as a stream that
//! pushes every change of role, term, leader or membership at once (the
//! router learns of a new leader this way, without polling), and the status
//! every [`WATCH_STATUS_INTERVAL`] even when nothing changed (the router takes
//! a stream that falls silent for a node that did). Leadership transfers and membership
//! changes are served here too, by `handover.rs` and `membership.rs`.

use std::pin::Pin;
use std::sync::Arc;
use std::time::Duration;

use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use raftkv::pb;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status};
use tracing::Instrument;

use crate::app::App;
use crate::backup::{BackupStream, Backups};
use crate::handover;
use crate::membership::{self, MemberChanges};

/// The most a transfer request's answer keeps back from the caller's deadline.
const TRANSFER_ANSWER_MARGIN: Duration = Duration::from_millis(50);
/// The most a membership change's answer keeps back from the caller's deadline: its answer
/// may be the one line saying what state a change that ran out of time left a node in, which
/// must reach the caller (through a router) before it gives up on its own.
const MEMBERSHIP_ANSWER_MARGIN: Duration = Duration::from_millis(250);

/// A watcher gets the status at least once per this interval, changed or not, and while
/// only indexes move, at most once.
pub const WATCH_STATUS_INTERVAL: Duration = Duration::from_millis(raftkv::wire::STATUS_PUSH_INTERVAL_MS);

pub struct ClusterService {
    app: App,
    member_changes: Arc<MemberChanges>,
    backups: Arc<Backups>,
}

impl ClusterService {
    pub fn new(app: App) -> Self {
        let member_changes = Arc::new(MemberChanges::new(
            app.raft.clone(),
            app.reader.clone(),
            app.read_index.clone(),
        ));
        let backups = Arc::new(Backups::new(app.clone()));
        ClusterService {
            app,
            member_changes,
            backups,
        }
    }
}

/// How long a request may work so that it answers before the caller's deadline: the caller
/// then gets this node's reason rather than its own transport's timeout.
fn answer_within(metadata: &tonic::metadata::MetadataMap, margin: Duration) -> Duration {
    let timeout = raftkv::wire::request_timeout(metadata);
    timeout - (timeout / 10).min(margin)
}

fn change_response(changed: membership::Changed) -> Response<pb::MemberChangeResponse> {
    Response::new(pb::MemberChangeResponse {
        members: changed.members,
        log_index: changed.log_index,
    })
}

/// This node's status as the API reports it. Role, term, leader and members come from
/// openraft's server metrics, which change only with them: a watcher woken by their change
/// (they are published before the full metrics) finds it here.
pub fn node_status(app: &App) -> pb::NodeStatus {
    let server = app.raft.server_metrics();
    let s = server.borrow_watched();
    let metrics = app.raft.metrics();
    let m = metrics.borrow_watched();
    let membership = s.membership_config.membership();
    let is_voter = membership.voter_ids().any(|id| id == app.id);
    let role = match s.state {
        ServerState::Leader => pb::Role::Leader,
        ServerState::Candidate => pb::Role::Candidate,
        ServerState::Follower => pb::Role::Follower,
        ServerState::Learner if is_voter => pb::Role::Follower,
        ServerState::Learner => pb::Role::Learner,
        ServerState::Shutdown => pb::Role::Shutdown,
    };
    let leader_address = s
        .current_leader
        .and_then(|id| membership.get_node(&id))
        .map(|n| n.addr.clone())
        .unwrap_or_default();
    pb::NodeStatus {
        id: app.id,
        address: app.address.clone(),
        role: role as i32,
        term: s.vote.leader_id().term,
        leader_id: s.current_leader,
        leader_address,
        last_log_index: m.last_log_index,
        commit_index: m.local_committed.map(|l| l.index),
        applied_index: m.last_applied.map(|l| l.index),
        // How far behind each member is moves with every write: MemberList says it, the
        // status (pushed on every change of role, term, leader or members) does not.
        members: membership::members_in(membership),
        pid: std::process::id(),
        snapshot_index: m.snapshot.map(|l| l.index),
        purged_index: m.purged.map(|l| l.index),
        membership_index: s.membership_config.log_id().map(|l| l.index),
        cluster_id: app.cluster_identity.id().map(|id| id.to_string()).unwrap_or_default(),
    }
}

/// Whether `b` differs from `a` in something a watcher must learn at once.
fn changed_shape(a: &pb::NodeStatus, b: &pb::NodeStatus) -> bool {
    a.role != b.role || a.term != b.term || a.leader_id != b.leader_id || a.members != b.members
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterService {
    async fn status(&self, _request: Request<pb::StatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        Ok(Response::new(node_status(&self.app)))
    }

    /// Hands leadership over (see `handover.rs`) and answers once another node leads, within
    /// the request's deadline. A request meant for a leadership that has already ended (its
    /// term is older than this node's) moves nothing: it is answered with who leads now.
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let within = answer_within(request.metadata(), TRANSFER_ANSWER_MARGIN);
        let pb::TransferLeaderRequest { to, term } = request.into_inner();
        let current_term = self.app.raft.metrics().borrow_watched().current_term;
        let new_leader = match term {
            Some(term) if term < current_term => handover::leader_after(&self.app.raft, term, within).await?,
            _ => handover::hand_over(&self.app.raft, &self.app.read_index, to, within).await?,
        };
        Ok(Response::new(pb::TransferLeaderResponse {
            leader_id: new_leader.id,
            leader_address: new_leader.address,
            term: new_leader.term,
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Ok(Response::new(self.member_changes.list()?))
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let within = answer_within(request.metadata(), MEMBERSHIP_ANSWER_MARGIN);
        let pb::MemberAddRequest { id, address, learner } = request.into_inner();
        let changed = self.member_changes.add(id, address, learner, within).await?;
        Ok(change_response(changed))
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let within = answer_within(request.metadata(), MEMBERSHIP_ANSWER_MARGIN);
        let changed = self.member_changes.promote(request.into_inner().id, within).await?;
        Ok(change_response(changed))
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        let within = answer_within(request.metadata(), MEMBERSHIP_ANSWER_MARGIN);
        let changed = self.member_changes.remove(request.into_inner().id, within).await?;
        Ok(change_response(changed))
    }

    type WatchStatusStream = Pin<Box<dyn Stream<Item = Result<pb::NodeStatus, Status>> + Send>>;

    async fn watch_status(
        &self,
        _request: Request<pb::StatusRequest>,
    ) -> Result<Response<Self::WatchStatusStream>, Status> {
        let (tx, rx) = mpsc::channel(16);
        let app = self.app.clone();
        let span = app.span.clone();
        let watch = async move {
            // Woken only by a change of role, term, leader or members (the server metrics);
            // the indexes ride along with those and with the periodic push.
            let mut server = app.raft.server_metrics();
            let mut shutdown = app.shutdown.clone();
            server.borrow_and_update();
            let mut last = node_status(&app);
            if tx.send(Ok(last.clone())).await.is_err() {
                return;
            }
            let mut tick = tokio::time::interval(WATCH_STATUS_INTERVAL);
            tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
            loop {
                tokio::select! {
                    changed = server.changed() => {
                        if changed.is_err() { return; }
                        let now = node_status(&app);
                        if changed_shape(&last, &now) {
                            if tx.send(Ok(now.clone())).await.is_err() { return; }
                            last = now;
                        }
                    }
                    _ = tick.tick() => {
                        // Sent even unchanged: a subscriber tells a live node from a silent
                        // one by these.
                        let now = node_status(&app);
                        if tx.send(Ok(now.clone())).await.is_err() { return; }
                        last = now;
                    }
                    _ = shutdown.changed() => return,
                    _ = tx.closed() => return,
                }
            }
        };
        tokio::spawn(watch.instrument(span));
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    type SnapshotSaveStream = BackupStream;

    /// A backup (see `backup.rs`): the request's deadline covers taking the point in time,
    /// not the stream.
    async fn snapshot_save(&self, request: Request<pb::SnapshotSaveRequest>) -> Result<Response<BackupStream>, Status> {
        let timeout = raftkv::wire::request_timeout(request.metadata());
        Ok(Response::new(self.backups.save(timeout).await?))
    }
}
