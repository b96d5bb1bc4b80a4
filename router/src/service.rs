//! The router's gRPC services: Kv and Cluster, served by forwarding each request to a node.
//!
//! Where a request goes is decided from the [`LeaderTracker`]'s current view, never by trying
//! nodes one by one: writes go to the leader, reads round-robin over the healthy nodes,
//! status requests to the leader or else any healthy node. When the view has no suitable
//! node (the leader died and no new one is elected yet) the request waits on the view's
//! watch channel and is sent the instant the tracker learns of one, until the request's
//! deadline (see [`crate::deadline`]). A failed attempt is retried by the rules the client
//! library follows too ([`raftkv::client::retry`]), with the same caps and backoff; what the
//! router adds is what it tells its tracker:
//! - a broken connection takes the node out of the rotation, and the request is sent again
//!   to where the new view points;
//! - an attempt still waiting on a node is given up when the view says the request belongs
//!   elsewhere (a write: another leader, of a higher term; a read: its node is no longer
//!   healthy), and the request is sent again there: a silent node (host down, link cut)
//!   resets no connection, so nothing else would end the attempt before HTTP/2 keepalive;
//! - UNAVAILABLE from a node (not the leader, no leader, cannot serve now) is retried, after a
//!   write's leader hint has been given to the tracker, or after a short jittered pause;
//! - every other answer (NOT_FOUND, INVALID_ARGUMENT, ...) is passed back with its code and
//!   message unchanged.
//!
//! The router keeps no data of its own: any number of routers can run side by side.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use futures::{Stream, StreamExt};
use prometheus::IntGauge;
use raftkv::batch;
use raftkv::client;
use raftkv::client::retry::{self, Retry};
use raftkv::pb;
use raftkv::pb::cluster_client::ClusterClient;
use raftkv::pb::kv_client::KvClient;
use tokio::sync::watch;
use tokio::time::Instant;
use tonic::{Request, Response, Status};

use crate::deadline::RequestDeadline;
use crate::leader_tracker::{ClusterView, LeaderTracker, Node};

/// Which node a request may be served by.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Route {
    /// Only the leader: writes.
    Leader,
    /// Any healthy node, in turn: reads.
    AnyHealthy,
    /// The leader when known, else any healthy node: status.
    PreferLeader,
}

/// Whose turn it is to serve reads. Every read picks the node whose turn it is, and the turn
/// passes to the next node when a read that picked it comes back. So the reads that arrive
/// together (picked before any of them is answered) go to one node as one batch, which
/// confirms them all with one ReadIndex round, while consecutive bursts, and reads one at a
/// time, go to the nodes in turn (more reads per second than a turn per read: BENCHMARKS.md).
#[derive(Default)]
struct ReadTurns {
    turn: AtomicUsize,
    /// Whether a read has picked the current turn since it last passed.
    taken: AtomicBool,
}

impl ReadTurns {
    /// The current turn, for a read about to be sent.
    fn take(&self) -> usize {
        self.taken.store(true, Ordering::Release);
        self.turn.load(Ordering::Acquire)
    }

    /// A read came back: the turn passes, once per burst.
    fn read_answered(&self) {
        if self.taken.swap(false, Ordering::AcqRel) {
            self.turn.fetch_add(1, Ordering::AcqRel);
        }
    }
}

/// Sends requests to nodes by the tracker's view; shared by the Kv and Cluster services.
pub struct Forwarder {
    tracker: Arc<LeaderTracker>,
    /// The read rotation's position.
    reads: ReadTurns,
    /// Turns true when the router stops: held requests give up at once.
    shutdown: watch::Receiver<bool>,
    /// How many requests wait for a node to take them now (`raftkv_router_held_requests`).
    held: IntGauge,
}

/// One request counted as held while this lives.
struct Held<'a>(&'a IntGauge);

impl<'a> Held<'a> {
    fn new(gauge: &'a IntGauge) -> Held<'a> {
        gauge.inc();
        Held(gauge)
    }
}

impl Drop for Held<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

impl Forwarder {
    /// A forwarder over `tracker`'s nodes.
    pub fn new(tracker: Arc<LeaderTracker>, shutdown: watch::Receiver<bool>) -> Arc<Forwarder> {
        Arc::new(Forwarder {
            tracker,
            reads: ReadTurns::default(),
            shutdown,
            held: crate::metrics::held_requests_gauge(),
        })
    }

    /// The gauge of held requests, to register.
    pub fn held_requests(&self) -> IntGauge {
        self.held.clone()
    }

    /// The node a request on `route` goes to now, if any.
    fn pick(&self, route: Route, view: &ClusterView) -> Option<usize> {
        let any_healthy = || {
            if view.healthy.is_empty() {
                return None;
            }
            let turn = self.reads.take();
            Some(view.healthy[turn % view.healthy.len()])
        };
        match route {
            Route::Leader => view.leader.as_ref().map(|leader| leader.node),
            Route::AnyHealthy => any_healthy(),
            Route::PreferLeader => view.leader.as_ref().map(|leader| leader.node).or_else(any_healthy),
        }
    }

    /// Waits until the view changes or `until` passes, whichever is first; fails when the
    /// router is shutting down.
    async fn wait_for_view_change(
        &self,
        views: &mut watch::Receiver<ClusterView>,
        until: Instant,
    ) -> Result<(), Status> {
        let mut shutdown = self.shutdown.clone();
        if *shutdown.borrow_and_update() {
            return Err(Status::unavailable("the router is shutting down"));
        }
        tokio::select! {
            changed = views.changed() => changed.map_err(|_| Status::unavailable("the router is shutting down")),
            _ = tokio::time::sleep_until(until) => Ok(()),
            _ = shutdown.changed() => Err(Status::unavailable("the router is shutting down")),
        }
    }

    /// Forwards `request` on `route` until a node answers for good or `deadline` passes.
    /// `call` sends one attempt to a node, which has the given time left to answer.
    async fn forward<Req, Resp, Call, Fut>(
        &self,
        route: Route,
        deadline: RequestDeadline,
        request: Req,
        call: Call,
    ) -> Result<Response<Resp>, Status>
    where
        Req: Clone,
        Call: Fn(&Node, Req, Duration) -> Fut,
        Fut: Future<Output = Result<Response<Resp>, Status>>,
    {
        let mut views = self.tracker.subscribe();
        let mut backoff = retry::Backoff::new();
        let mut last_failure: Option<String> = None;
        for _ in 0..retry::MAX_ATTEMPTS_PER_REQUEST {
            if deadline.passed() {
                break;
            }
            let view = views.borrow_and_update().clone();
            let Some(node) = self.pick(route, &view) else {
                // Nobody to send it to yet: hold it until the tracker learns of someone.
                let _held = Held::new(&self.held);
                self.wait_for_view_change(&mut views, deadline.answer_by).await?;
                continue;
            };
            let target = self.tracker.node(node);
            let attempt = call(&target, request.clone(), deadline.time_left());
            // A node that went silent (host down, link cut) resets nothing, so its attempt
            // would end only at HTTP/2 keepalive's verdict or the deadline. When the view says
            // the request belongs elsewhere now, it is sent there without waiting for that.
            let answer = tokio::select! {
                biased;
                answer = attempt => Some(answer),
                () = until_outdated(route, node, &view, &mut views) => None,
                () = tokio::time::sleep_until(deadline.answer_by) => break,
            };
            if route == Route::AnyHealthy {
                self.reads.read_answered();
            }
            let address = &target.address;
            let status = match answer {
                Some(Ok(response)) => return Ok(Response::new(response.into_inner())),
                Some(Err(status)) => status,
                None => {
                    // Safe for a write too: it carries a write id, so if the abandoned attempt
                    // was applied after all, the retry is answered with its first result.
                    tracing::debug!(%address, ?route, "the view moved on while an attempt waited; sending it again");
                    last_failure = Some(format!("{address}: no answer before the view moved on"));
                    continue;
                }
            };
            let failure = client::Error::from_status(&status).to_string();
            // Every write forwarded carries a write id (the client's, or one the router adds),
            // so sending it again is safe whatever happened to the attempt.
            match retry::decide(&status, address) {
                // The node itself answered that time ran out: its reason (what state a
                // membership change was left in, say) is the answer, as it gave it.
                Retry::GiveUp if status.code() == tonic::Code::DeadlineExceeded => return Err(pass_through(status)),
                Retry::GiveUp => {
                    last_failure = Some(format!("{address} did not answer in time"));
                    break;
                }
                Retry::Final => return Err(pass_through(status)),
                // The node is down or cut off: out of the rotation until its stream is back.
                Retry::ServerUnreachable => self.tracker.report_unreachable(node, &failure),
                // Only a write's refusal is about leadership; a read's hint may be stale.
                Retry::FollowHint(hint) if route == Route::Leader => self.tracker.report_hint(&hint),
                // Sent again to where the tracker's view points.
                Retry::FollowHint(_) | Retry::LeadershipLost | Retry::SamePlace => {}
            }
            tracing::debug!(%address, ?route, %failure, "attempt failed; retrying");
            last_failure = Some(format!("{address}: {failure}"));
            // A changed view (a hint taken, a node gone) wakes this at once; otherwise pause.
            let pause = backoff.next_pause();
            let until = deadline.answer_by.min(Instant::now() + pause);
            self.wait_for_view_change(&mut views, until).await?;
        }
        let view = views.borrow().clone();
        Err(give_up(route, &deadline, &view, last_failure))
    }
}

/// Resolves when `views` shows that an attempt sent to `node` by `sent_by` no longer belongs
/// there (see [`outdated`]); never resolves otherwise.
async fn until_outdated(route: Route, node: usize, sent_by: &ClusterView, views: &mut watch::Receiver<ClusterView>) {
    loop {
        if views.changed().await.is_err() {
            // The tracker is gone (the router is stopping): nothing will outdate it any more.
            return std::future::pending().await;
        }
        if outdated(route, node, sent_by, &views.borrow_and_update()) {
            return;
        }
    }
}

/// Whether an attempt on `route` sent to `node` by the view `sent_by` should be given up for
/// the view `now`:
/// - a write when `now` names another leader of a higher term: the node it went to has been
///   deposed (and may be silent), and only the new leader can serve it. A view with no
///   leader is no reason: the node may still answer, and there is nowhere better to go;
/// - a read (or a status request) when its node has left the healthy nodes.
fn outdated(route: Route, node: usize, sent_by: &ClusterView, now: &ClusterView) -> bool {
    match route {
        Route::Leader => {
            let sent_in_term = sent_by.leader.as_ref().map_or(0, |leader| leader.term);
            now.leader
                .as_ref()
                .is_some_and(|leader| leader.node != node && leader.term > sent_in_term)
        }
        Route::AnyHealthy | Route::PreferLeader => !now.healthy.contains(&node),
    }
}

/// `message` as a call that the node must answer within `time_left`.
fn timed<T>(message: T, time_left: Duration) -> Request<T> {
    let mut request = Request::new(message);
    request.set_timeout(time_left);
    request
}

/// The error a node gave, with its code, message and details, without transport metadata.
fn pass_through(status: Status) -> Status {
    Status::with_details(status.code(), status.message(), status.details().to_vec().into())
}

/// The answer when the deadline came first: UNAVAILABLE when there was nobody to ask,
/// DEADLINE_EXCEEDED when the nodes were asked but did not answer in time.
fn give_up(route: Route, deadline: &RequestDeadline, view: &ClusterView, last_failure: Option<String>) -> Status {
    let within = retry::format_timeout(deadline.timeout);
    let last = last_failure
        .map(|failure| format!("; last error: {failure}"))
        .unwrap_or_default();
    match route {
        Route::Leader if view.leader.is_none() => Status::unavailable(format!("no leader known within {within}{last}")),
        Route::AnyHealthy | Route::PreferLeader if view.healthy.is_empty() => {
            Status::unavailable(format!("no node reachable within {within}{last}"))
        }
        _ => Status::deadline_exceeded(format!("no answer within {within}{last}")),
    }
}

/// The Kv service: writes to the leader, reads spread over the healthy nodes.
pub struct KvRouter {
    forwarder: Arc<Forwarder>,
    /// Write ids for writes that arrive without one, so the router's own retries are
    /// applied at most once.
    write_ids: client::WriteIds,
}

impl KvRouter {
    /// The Kv service over `forwarder`.
    pub fn new(forwarder: Arc<Forwarder>) -> KvRouter {
        KvRouter {
            forwarder,
            write_ids: client::WriteIds::default(),
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvRouter {
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let mut request = request.into_inner();
        request.write_id.get_or_insert_with(|| self.write_ids.next());
        self.forwarder
            .forward(Route::Leader, deadline, request, |node, request, time_left| {
                node.batcher.call(request, time_left)
            })
            .await
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let request = request.into_inner();
        self.forwarder
            .forward(Route::AnyHealthy, deadline, request, |node, request, time_left| {
                node.batcher.call(request, time_left)
            })
            .await
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let mut request = request.into_inner();
        request.write_id.get_or_insert_with(|| self.write_ids.next());
        self.forwarder
            .forward(Route::Leader, deadline, request, |node, request, time_left| {
                node.batcher.call(request, time_left)
            })
            .await
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let mut request = request.into_inner();
        request.write_id.get_or_insert_with(|| self.write_ids.next());
        self.forwarder
            .forward(Route::Leader, deadline, request, |node, request, time_left| {
                node.batcher.call(request, time_left)
            })
            .await
    }

    async fn scan(&self, request: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let request = request.into_inner();
        self.forwarder
            .forward(Route::AnyHealthy, deadline, request, |node, request, time_left| {
                let channel = node.channel.clone();
                async move { KvClient::new(channel).scan(timed(request, time_left)).await }
            })
            .await
    }
}

/// A batch of Kv requests (what the client library sends): each item is served as its own
/// Kv call to the router would be, side by side, and answered on its own.
#[tonic::async_trait]
impl pb::kv_batch_server::KvBatch for KvRouter {
    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        batch::serve_as_calls(self, request.into_inner().items)
            .await
            .map(Response::new)
    }
}

/// The Cluster service: a node's status, from the leader when known.
pub struct ClusterRouter {
    forwarder: Arc<Forwarder>,
}

impl ClusterRouter {
    /// Relays a server stream of one node (the leader when known) until it ends or the router
    /// stops. The stream has no deadline of its own: it lives as long as the caller wants it;
    /// the wait for a node to relay from has the request's.
    async fn relay_stream<Q, T, F, Fut>(
        &self,
        request: Request<Q>,
        call: F,
    ) -> Result<Response<Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>>, Status>
    where
        Q: Clone,
        T: Send + 'static,
        F: Fn(ClusterClient<tonic::transport::Channel>, Q) -> Fut,
        Fut: Future<Output = Result<Response<tonic::Streaming<T>>, Status>>,
    {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let request = request.into_inner();
        let response = self
            .forwarder
            .forward(Route::PreferLeader, deadline, request, |node, request, _time_left| {
                call(ClusterClient::new(node.channel.clone()), request)
            })
            .await?;
        let mut shutdown = self.forwarder.shutdown.clone();
        let stopped = async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        };
        Ok(Response::new(Box::pin(response.into_inner().take_until(stopped))))
    }

    /// The Cluster service over `forwarder`.
    pub fn new(forwarder: Arc<Forwarder>) -> ClusterRouter {
        ClusterRouter { forwarder }
    }
}

/// A node's status stream, relayed until it ends or the router stops.
pub type StatusStream = Pin<Box<dyn Stream<Item = Result<pb::NodeStatus, Status>> + Send>>;

/// A node's backup stream, relayed until it ends or the router stops.
pub type SnapshotSaveStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotSaveChunk, Status>> + Send>>;

#[tonic::async_trait]
impl pb::cluster_server::Cluster for ClusterRouter {
    async fn status(&self, request: Request<pb::StatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let request = request.into_inner();
        self.forwarder
            .forward(Route::PreferLeader, deadline, request, |node, request, time_left| {
                let channel = node.channel.clone();
                async move { ClusterClient::new(channel).status(timed(request, time_left)).await }
            })
            .await
    }

    type WatchStatusStream = StatusStream;

    /// Relays the status stream of one node (the leader when known). The stream has no
    /// deadline of its own; the wait for a node to relay from does.
    async fn watch_status(&self, request: Request<pb::StatusRequest>) -> Result<Response<StatusStream>, Status> {
        self.relay_stream(request, |mut cluster, request| async move {
            cluster.watch_status(request).await
        })
        .await
    }

    /// Goes to the leader, as a write does: only the leader can hand leadership over. The
    /// request carries the term of the leader it is meant for, so that sending it again to
    /// the next leader (the view moved on, or the answer was lost) does not move leadership
    /// a second time.
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let mut request = request.into_inner();
        if request.term.is_none() {
            request.term = self
                .forwarder
                .tracker
                .subscribe()
                .borrow()
                .leader
                .as_ref()
                .map(|leader| leader.term);
        }
        self.forwarder
            .forward(Route::Leader, deadline, request, |node, request, time_left| {
                let channel = node.channel.clone();
                async move {
                    ClusterClient::new(channel)
                        .transfer_leader(timed(request, time_left))
                        .await
                }
            })
            .await
    }

    async fn member_list(
        &self,
        request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        self.to_leader(request, |mut cluster, request| async move {
            cluster.member_list(request).await
        })
        .await
    }

    async fn member_add(
        &self,
        request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.to_leader(request, |mut cluster, request| async move {
            cluster.member_add(request).await
        })
        .await
    }

    async fn member_promote(
        &self,
        request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.to_leader(request, |mut cluster, request| async move {
            cluster.member_promote(request).await
        })
        .await
    }

    async fn member_remove(
        &self,
        request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        self.to_leader(request, |mut cluster, request| async move {
            cluster.member_remove(request).await
        })
        .await
    }

    type SnapshotSaveStream = SnapshotSaveStream;

    /// Relays the backup stream of one node (the leader when known, whose read index needs no
    /// extra round trip). Like a status stream, it has no deadline of its own (it grows with
    /// the data); the node and the client each give up on a stream that goes idle.
    async fn snapshot_save(
        &self,
        request: Request<pb::SnapshotSaveRequest>,
    ) -> Result<Response<SnapshotSaveStream>, Status> {
        self.relay_stream(request, |mut cluster, request| async move {
            cluster.snapshot_save(request).await
        })
        .await
    }
}

impl ClusterRouter {
    /// Forwards a membership request to the leader, as a write is: only the leader changes
    /// the membership, and one that hands leadership over (removing itself) answers with the
    /// new leader's hint, which the retry follows.
    async fn to_leader<Q, A, F, Fut>(&self, request: Request<Q>, call: F) -> Result<Response<A>, Status>
    where
        Q: Clone,
        F: Fn(ClusterClient<tonic::transport::Channel>, Request<Q>) -> Fut,
        Fut: Future<Output = Result<Response<A>, Status>>,
    {
        let deadline = RequestDeadline::of(request.metadata(), Instant::now());
        let request = request.into_inner();
        self.forwarder
            .forward(Route::Leader, deadline, request, move |node, request, time_left| {
                call(ClusterClient::new(node.channel.clone()), timed(request, time_left))
            })
            .await
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use pb::cluster_server::Cluster;
    use pb::kv_server::Kv;
    use pb::Role::{Follower, Leader as Leads, Shutdown};
    use raftkv::testing::{FakeNode, Writes};
    use std::collections::BTreeSet;
    use tonic::Code;

    /// The router's services over fake nodes, without its gRPC server in front.
    struct Router {
        tracker: Arc<LeaderTracker>,
        held: IntGauge,
        kv: KvRouter,
        cluster: ClusterRouter,
        stop: watch::Sender<bool>,
    }

    fn router(nodes: &[FakeNode]) -> Arc<Router> {
        let nodes = nodes
            .iter()
            .map(|node| {
                Node::new(
                    node.address.clone(),
                    crate::leader_tracker::node_channel(&node.address, None).unwrap(),
                )
            })
            .collect();
        let tracker = LeaderTracker::new(nodes);
        let (stop, shutdown) = watch::channel(false);
        tracker.start(shutdown.clone());
        let forwarder = Forwarder::new(Arc::clone(&tracker), shutdown);
        Arc::new(Router {
            tracker,
            held: forwarder.held_requests(),
            kv: KvRouter::new(Arc::clone(&forwarder)),
            cluster: ClusterRouter::new(forwarder),
            stop,
        })
    }

    /// Three fake nodes, node `leader` (1-based) leading in `term`.
    fn cluster_led_by(leader: usize, term: u64) -> [FakeNode; 3] {
        let nodes = [FakeNode::start(1), FakeNode::start(2), FakeNode::start(3)];
        for (index, node) in nodes.iter().enumerate() {
            let role = if index + 1 == leader { Leads } else { Follower };
            node.set_status(role, term, Some(&nodes[leader - 1]));
        }
        nodes
    }

    /// Waits (at most 5 s) until the router's view satisfies `condition`.
    async fn until(router: &Router, condition: impl FnMut(&ClusterView) -> bool) {
        let mut views = router.tracker.subscribe();
        tokio::time::timeout(Duration::from_secs(5), views.wait_for(condition))
            .await
            .expect("the router's view reaches the condition within 5 s")
            .unwrap();
    }

    fn leader_id(view: &ClusterView) -> Option<u64> {
        view.leader.as_ref().map(|leader| leader.id)
    }

    fn with_timeout<T>(message: T, timeout: Duration) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        request
    }

    fn put(timeout: Duration) -> Request<pb::PutRequest> {
        with_timeout(
            pb::PutRequest {
                key: "k".into(),
                value: "v".into(),
                write_id: None,
            },
            timeout,
        )
    }

    /// A put through `router` with `timeout`, running on its own.
    fn spawn_put(
        router: &Arc<Router>,
        timeout: Duration,
    ) -> tokio::task::JoinHandle<Result<Response<pb::PutResponse>, Status>> {
        let router = Arc::clone(router);
        tokio::spawn(async move { router.kv.put(put(timeout)).await })
    }

    fn get(key: &'static str) -> Request<pb::GetRequest> {
        with_timeout(
            pb::GetRequest {
                key: key.into(),
                consistency: 0,
            },
            Duration::from_secs(5),
        )
    }

    fn served_by<T>(response: Result<Response<T>, Status>, header: impl Fn(&T) -> Option<pb::ReplyHeader>) -> u64 {
        header(response.unwrap().get_ref()).unwrap().node_id
    }

    async fn readers(router: &Router, reads: usize) -> BTreeSet<u64> {
        let mut ids = BTreeSet::new();
        for _ in 0..reads {
            ids.insert(served_by(router.kv.get(get("k")).await, |response| response.header));
        }
        ids
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writes_go_to_the_leader_the_status_streams_announce() {
        let nodes = cluster_led_by(2, 1);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(2)).await;
        assert_eq!(
            served_by(router.kv.put(put(Duration::from_secs(5))).await, |r| r.header),
            2
        );
        let delete = with_timeout(
            pb::DeleteRequest {
                key: "k".into(),
                ..Default::default()
            },
            Duration::from_secs(5),
        );
        assert_eq!(served_by(router.kv.delete(delete).await, |r| r.header), 2);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn concurrent_writes_reach_the_leader_in_fewer_calls_than_requests() {
        let nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(1)).await;
        let writes: Vec<_> = (0..64)
            .map(|_| {
                let router = Arc::clone(&router);
                tokio::spawn(async move { router.kv.put(put(Duration::from_secs(5))).await })
            })
            .collect();
        for write in writes {
            assert_eq!(served_by(write.await.unwrap(), |r| r.header), 1);
        }
        let (calls, items) = nodes[0].batches();
        assert_eq!(items, 64);
        assert!(calls < 64, "64 concurrent writes took {calls} calls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_batch_from_a_client_gets_each_items_own_answer_in_order() {
        use pb::batch_item::Request as Item;
        use pb::batch_item_result::Result as Answer;
        use pb::kv_batch_server::KvBatch;
        let nodes = cluster_led_by(2, 1);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(2) && view.healthy.len() == 3).await;
        let item = |request| pb::BatchItem {
            timeout_us: 5_000_000,
            request: Some(request),
        };
        let get = |key: &'static str| {
            Item::Get(pb::GetRequest {
                key: key.into(),
                consistency: 0,
            })
        };
        let batch = pb::BatchRequest {
            items: vec![
                item(Item::Put(put(Duration::from_secs(5)).into_inner())),
                item(get("missing")),
                item(get("k")),
                item(get("bad")),
            ],
        };
        let results: Vec<_> = router
            .kv
            .batch(Request::new(batch))
            .await
            .unwrap()
            .into_inner()
            .results
            .into_iter()
            .map(|result| result.result.unwrap())
            .collect();
        assert!(
            matches!(&results[0], Answer::Put(reply) if reply.header.unwrap().node_id == 2),
            "the write goes to the leader: {results:?}"
        );
        assert!(
            matches!(&results[1], Answer::Error(e) if e.code == Code::NotFound as i32),
            "{results:?}"
        );
        assert!(matches!(&results[2], Answer::Get(_)), "{results:?}");
        assert!(
            matches!(&results[3], Answer::Error(e) if e.code == Code::InvalidArgument as i32 && e.message == "key is bad"),
            "{results:?}"
        );
    }

    /// Reads sent together, as `readers` but all at once.
    async fn burst_readers(router: &Arc<Router>, reads: usize) -> BTreeSet<u64> {
        let reads: Vec<_> = (0..reads)
            .map(|_| {
                let router = Arc::clone(router);
                tokio::spawn(async move { router.kv.get(get("k")).await })
            })
            .collect();
        let mut ids = BTreeSet::new();
        for read in reads {
            ids.insert(served_by(read.await.unwrap(), |response| response.header));
        }
        ids
    }

    #[tokio::test(flavor = "current_thread")]
    async fn reads_sent_together_go_to_one_node_and_the_next_burst_to_another() {
        let nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| view.healthy.len() == 3).await;
        let first = burst_readers(&router, 30).await;
        assert_eq!(first.len(), 1, "one burst, one node: {first:?}");
        let second = burst_readers(&router, 30).await;
        assert_eq!(second.len(), 1, "one burst, one node: {second:?}");
        assert_ne!(first, second, "the next burst goes to the next node");
        let batches: usize = nodes.iter().map(|node| node.batches().0).sum();
        assert!(batches < 60, "60 reads took {batches} calls");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_held_while_there_is_no_leader_goes_to_the_new_leader_once_it_is_pushed() {
        let mut nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(1) && view.healthy.len() == 3).await;

        nodes[0].kill();
        until(&router, |view| view.leader.is_none()).await;
        let held = spawn_put(&router, Duration::from_secs(5));
        let gauge_deadline = Instant::now() + Duration::from_secs(5);
        while router.held.get() != 1 {
            assert!(Instant::now() < gauge_deadline, "the held write is not counted as held");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        nodes[1].set_status(Follower, 2, Some(&nodes[2]));
        nodes[2].set_status(Leads, 2, Some(&nodes[2]));
        assert_eq!(served_by(held.await.unwrap(), |r| r.header), 3);
        assert_eq!(router.held.get(), 0, "a write sent on is no longer held");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_leader_before_the_deadline_is_unavailable_answered_within_the_deadline() {
        let nodes = [FakeNode::start(1), FakeNode::start(2)];
        let router = router(&nodes);
        until(&router, |view| view.healthy.len() == 2).await;
        let started = Instant::now();
        let status = router.kv.put(put(Duration::from_millis(300))).await.unwrap_err();
        assert!(
            started.elapsed() < Duration::from_millis(300),
            "{:?}",
            started.elapsed()
        );
        assert_eq!(status.code(), Code::Unavailable, "{status:?}");
        assert!(status.message().contains("no leader"), "{status:?}");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_hint_in_a_refusal_sends_the_write_to_the_hinted_node() {
        // Node 1 still reports leading, but has been deposed and says node 2 leads now.
        let nodes = cluster_led_by(1, 4);
        nodes[0].set_writes(Writes::Refuse(Some(nodes[1].as_hint())));
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(1) && view.healthy.len() == 3).await;
        assert_eq!(
            served_by(router.kv.put(put(Duration::from_secs(5))).await, |r| r.header),
            2
        );
        assert_eq!(leader_id(&router.tracker.subscribe().borrow()), Some(2));
    }

    #[test]
    fn a_write_is_sent_again_only_for_a_newer_leader_and_a_read_when_its_node_leaves() {
        use crate::leader_tracker::Leader;
        let view = |leader: Option<(usize, u64)>, healthy: &[usize]| ClusterView {
            leader: leader.map(|(node, term)| Leader {
                node,
                id: node as u64 + 1,
                term,
            }),
            healthy: healthy.to_vec(),
        };
        let sent_by = view(Some((0, 5)), &[0, 1, 2]);
        assert!(outdated(Route::Leader, 0, &sent_by, &view(Some((1, 6)), &[0, 1, 2])));
        // No leader known: the node may still answer, and there is nowhere better to go.
        assert!(!outdated(Route::Leader, 0, &sent_by, &view(None, &[1, 2])));
        // The same node in a newer term, or another node named in the same term (a hint).
        assert!(!outdated(Route::Leader, 0, &sent_by, &view(Some((0, 6)), &[0, 1, 2])));
        assert!(!outdated(Route::Leader, 0, &sent_by, &view(Some((1, 5)), &[0, 1, 2])));
        assert!(outdated(Route::AnyHealthy, 2, &sent_by, &view(Some((0, 5)), &[0, 1])));
        assert!(!outdated(Route::AnyHealthy, 2, &sent_by, &view(Some((1, 6)), &[1, 2])));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_waiting_on_a_leader_that_went_silent_goes_to_the_leader_elected_after_it() {
        let nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(1) && view.healthy.len() == 3).await;
        nodes[0].stop_answering();
        let write = spawn_put(&router, Duration::from_secs(5));
        nodes[0].until_unanswered(1).await;
        // Nodes 2 and 3 elect node 2; node 1 still says it leads, in the older term.
        nodes[1].set_status(Leads, 2, Some(&nodes[1]));
        nodes[2].set_status(Follower, 2, Some(&nodes[1]));
        assert_eq!(served_by(write.await.unwrap(), |r| r.header), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_read_waiting_on_a_node_that_left_the_healthy_nodes_is_served_by_another() {
        let nodes = [FakeNode::start(1), FakeNode::start(2)];
        let router = router(&nodes);
        until(&router, |view| view.healthy.len() == 2).await;
        // The router's first read goes to the first healthy node: node 1.
        nodes[0].stop_answering();
        let read = tokio::spawn({
            let router = Arc::clone(&router);
            async move { router.kv.get(get("k")).await }
        });
        nodes[0].until_unanswered(1).await;
        nodes[0].set_status(Shutdown, 1, None);
        assert_eq!(served_by(read.await.unwrap(), |r| r.header), 2);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_node_whose_status_stream_falls_silent_leaves_the_healthy_nodes_though_its_connection_stays_open() {
        let nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| view.healthy.len() == 3).await;
        nodes[1].go_silent();
        until(&router, |view| view.healthy == [0, 2]).await;
        assert_eq!(readers(&router, 4).await, BTreeSet::from([1, 3]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_write_in_flight_when_the_leader_falls_silent_is_served_by_the_leader_elected_next() {
        let nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(1) && view.healthy.len() == 3).await;
        nodes[0].go_silent();
        let write = spawn_put(&router, Duration::from_secs(5));
        nodes[0].until_unanswered(1).await;
        // The followers still name node 1: only its silence tells that it is gone.
        until(&router, |view| view.leader.is_none()).await;
        nodes[1].set_status(Follower, 2, Some(&nodes[2]));
        nodes[2].set_status(Leads, 2, Some(&nodes[2]));
        assert_eq!(served_by(write.await.unwrap(), |r| r.header), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn reads_rotate_over_healthy_nodes_and_a_dead_node_leaves_and_rejoins_the_rotation() {
        let mut nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| view.healthy.len() == 3).await;
        assert_eq!(readers(&router, 6).await, BTreeSet::from([1, 2, 3]));

        nodes[1].kill();
        until(&router, |view| view.healthy == [0, 2]).await;
        assert_eq!(readers(&router, 6).await, BTreeSet::from([1, 3]));

        nodes[1].restart();
        until(&router, |view| view.healthy.len() == 3).await;
        assert_eq!(readers(&router, 6).await, BTreeSet::from([1, 2, 3]));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn not_found_and_invalid_argument_pass_through_unchanged() {
        let nodes = cluster_led_by(1, 1);
        let router = router(&nodes);
        until(&router, |view| view.healthy.len() == 3).await;
        let status = router.kv.get(get("missing")).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::NotFound, "no such key"));
        let status = router.kv.get(get("bad")).await.unwrap_err();
        assert_eq!((status.code(), status.message()), (Code::InvalidArgument, "key is bad"));
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn status_comes_from_the_leader_and_watch_relays_its_stream() {
        let nodes = cluster_led_by(3, 2);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(3)).await;
        let status = router.cluster.status(Request::new(pb::StatusRequest {})).await.unwrap();
        assert_eq!(status.get_ref().id, 3);
        let mut stream = router
            .cluster
            .watch_status(Request::new(pb::StatusRequest {}))
            .await
            .unwrap()
            .into_inner();
        assert_eq!(stream.next().await.unwrap().unwrap().id, 3);
        nodes[2].set_status(Leads, 3, Some(&nodes[2]));
        // Statuses that change nothing may come first: the node pushes one every 100 ms.
        let relayed_change = async {
            while let Some(status) = stream.next().await {
                if status.unwrap().term == 3 {
                    return;
                }
            }
            panic!("the relayed stream ended before the change");
        };
        tokio::time::timeout(Duration::from_secs(5), relayed_change)
            .await
            .expect("the change is relayed within 5 s");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_leader_transfer_is_sent_to_the_leader() {
        let nodes = cluster_led_by(2, 3);
        let router = router(&nodes);
        until(&router, |view| leader_id(view) == Some(2) && view.healthy.len() == 3).await;
        let request = with_timeout(
            pb::TransferLeaderRequest {
                to: Some(3),
                term: None,
            },
            Duration::from_secs(5),
        );
        let moved = router.cluster.transfer_leader(request).await.unwrap().into_inner();
        // The fake names the node the request reached in the address it answers with.
        assert_eq!(moved.leader_address, nodes[1].address);
        assert_eq!(moved.leader_id, 3);
        // The router named the term of the leadership to end (3): the fake answers the next.
        assert_eq!(moved.term, 4);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn held_requests_give_up_when_the_router_stops() {
        let nodes = [FakeNode::start(1)];
        let router = router(&nodes);
        until(&router, |view| view.healthy.len() == 1).await;
        let held = spawn_put(&router, Duration::from_secs(30));
        router.stop.send(true).unwrap();
        let status = held.await.unwrap().unwrap_err();
        assert_eq!(status.code(), Code::Unavailable);
        assert!(status.message().contains("shutting down"), "{status:?}");
    }
}
