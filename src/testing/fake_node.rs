//! A stand-in for a raftkv node: it serves Kv, KvBatch and Cluster on a real loopback port,
//! with behaviour the test sets (what it does with writes, the status it reports and pushes
//! to WatchStatus subscribers, on every change and every
//! [`STATUS_PUSH_INTERVAL_MS`](crate::wire::STATUS_PUSH_INTERVAL_MS) as a node does), counts
//! what it served, and can be killed (every connection dropped at once, as with kill -9) and
//! started again on the same port, or stop answering requests with its connections left open,
//! its status streams too if need be (a host cut off from the network: nothing is reset, and
//! HTTP/2 pings are still answered, so no keepalive ends the calls waiting on it).
//!
//! Its answers, by key: "missing" is NOT_FOUND ("no such key"), "bad" is INVALID_ARGUMENT
//! ("key is bad"); a get of any other key returns the node's id as the value. Every answer's
//! header names the node.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::sync::{mpsc, watch, Notify};
use tokio_stream::wrappers::{ReceiverStream, TcpListenerStream};
use tonic::{Request, Response, Status};

use crate::pb;
use crate::wire::{unavailable, LeaderHint, STATUS_PUSH_INTERVAL_MS};

/// What the fake does with a write (put, delete, compare-and-swap).
#[derive(Clone, Debug)]
pub enum Writes {
    /// Accepts it.
    Accept,
    /// Refuses it with UNAVAILABLE, with this hint.
    Refuse(Option<LeaderHint>),
    /// Accepts it, but answers only once this is notified (one notification per write).
    Hold(Arc<Notify>),
}

struct Behaviour {
    id: u64,
    status: watch::Sender<pb::NodeStatus>,
    writes: Mutex<Writes>,
    /// Puts accepted.
    puts: AtomicUsize,
    /// KvBatch calls served, and the items in them.
    batches: AtomicUsize,
    batched_items: AtomicUsize,
    /// Whether requests are answered; when not, each waits for good.
    answering: AtomicBool,
    /// Requests waiting for good because it stopped answering.
    unanswered: watch::Sender<usize>,
    /// Whether its status streams have stopped sending.
    streams_silent: AtomicBool,
}

/// One fake node; killed when dropped.
pub struct FakeNode {
    /// Where it listens, HOST:PORT.
    pub address: String,
    behaviour: Arc<Behaviour>,
    runtime: Option<tokio::runtime::Runtime>,
}

impl FakeNode {
    /// Starts a fake node with id `id` on a free loopback port, as a follower knowing no
    /// leader, accepting writes.
    pub fn start(id: u64) -> FakeNode {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let address = listener.local_addr().unwrap();
        let status = pb::NodeStatus {
            id,
            address: address.to_string(),
            role: pb::Role::Follower as i32,
            ..Default::default()
        };
        let behaviour = Arc::new(Behaviour {
            id,
            status: watch::Sender::new(status),
            writes: Mutex::new(Writes::Accept),
            puts: AtomicUsize::new(0),
            batches: AtomicUsize::new(0),
            batched_items: AtomicUsize::new(0),
            answering: AtomicBool::new(true),
            unanswered: watch::Sender::new(0),
            streams_silent: AtomicBool::new(false),
        });
        let mut node = FakeNode {
            address: address.to_string(),
            behaviour,
            runtime: None,
        };
        node.serve(listener);
        node
    }

    /// Serves on `listener` in a runtime of its own, so that killing it drops every connection.
    fn serve(&mut self, listener: std::net::TcpListener) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .unwrap();
        let service = FakeService(Arc::clone(&self.behaviour));
        runtime.spawn(async move {
            listener.set_nonblocking(true).unwrap();
            let listener = tokio::net::TcpListener::from_std(listener).unwrap();
            tonic::transport::Server::builder()
                .add_service(pb::kv_server::KvServer::new(service.clone()))
                .add_service(pb::kv_batch_server::KvBatchServer::new(service.clone()))
                .add_service(pb::cluster_server::ClusterServer::new(service))
                .serve_with_incoming(TcpListenerStream::new(listener))
                .await
                .unwrap();
        });
        self.runtime = Some(runtime);
    }

    /// Drops the listener and every open connection at once.
    pub fn kill(&mut self) {
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }

    /// Starts serving again on the same port.
    pub fn restart(&mut self) {
        assert!(self.runtime.is_none(), "restart of a running fake node");
        let address: SocketAddr = self.address.parse().unwrap();
        self.serve(std::net::TcpListener::bind(address).unwrap());
    }

    /// Sets the status it reports (pushed to WatchStatus subscribers).
    pub fn set_status(&self, role: pb::Role, term: u64, leader: Option<&FakeNode>) {
        self.behaviour.status.send_modify(|status| {
            status.role = role as i32;
            status.term = term;
            status.leader_id = leader.map(|leader| leader.behaviour.id);
            status.leader_address = leader.map(|leader| leader.address.clone()).unwrap_or_default();
        });
    }

    /// Sets what it does with writes.
    pub fn set_writes(&self, writes: Writes) {
        *self.behaviour.writes.lock().unwrap() = writes;
    }

    /// From now on every request it receives (Kv, KvBatch, Cluster) waits for good, its
    /// connection left open. The status streams already open go on.
    pub fn stop_answering(&self) {
        self.behaviour.answering.store(false, Ordering::SeqCst);
    }

    /// Stops answering (see [`Self::stop_answering`]) and its open status streams send
    /// nothing more: a node whose host lost its network, as seen from the other side.
    pub fn go_silent(&self) {
        self.stop_answering();
        self.behaviour.streams_silent.store(true, Ordering::SeqCst);
    }

    /// Waits (at most 5 s) until `requests` requests wait unanswered since [`Self::stop_answering`].
    pub async fn until_unanswered(&self, requests: usize) {
        let mut unanswered = self.behaviour.unanswered.subscribe();
        tokio::time::timeout(Duration::from_secs(5), unanswered.wait_for(|count| *count >= requests))
            .await
            .unwrap_or_else(|_| panic!("{requests} requests reach fake node {} within 5 s", self.behaviour.id))
            .unwrap();
    }

    /// How many puts it has accepted.
    pub fn puts(&self) -> usize {
        self.behaviour.puts.load(Ordering::SeqCst)
    }

    /// How many KvBatch calls it has served, and how many items they held.
    pub fn batches(&self) -> (usize, usize) {
        (
            self.behaviour.batches.load(Ordering::SeqCst),
            self.behaviour.batched_items.load(Ordering::SeqCst),
        )
    }

    /// A hint naming this node.
    pub fn as_hint(&self) -> LeaderHint {
        LeaderHint {
            id: self.behaviour.id,
            address: self.address.clone(),
        }
    }
}

impl Drop for FakeNode {
    fn drop(&mut self) {
        self.kill();
    }
}

#[derive(Clone)]
struct FakeService(Arc<Behaviour>);

impl FakeService {
    /// Returns at once while the fake answers; otherwise never (see [`FakeNode::stop_answering`]).
    async fn answer_if_answering(&self) {
        if self.0.answering.load(Ordering::SeqCst) {
            return;
        }
        self.0.unanswered.send_modify(|count| *count += 1);
        std::future::pending::<()>().await;
    }

    fn header(&self) -> Option<pb::ReplyHeader> {
        Some(pb::ReplyHeader {
            node_id: self.0.id,
            applied_index: 0,
        })
    }

    /// Refuses the key "bad", as a node refuses a key over the limits.
    fn check_key(key: &[u8]) -> Result<(), Status> {
        match key {
            b"bad" => Err(Status::invalid_argument("key is bad")),
            _ => Ok(()),
        }
    }

    /// Applies [`Writes`] to a write: waits for it to be let through, or refuses it.
    async fn check_write(&self) -> Result<(), Status> {
        let writes = self.0.writes.lock().unwrap().clone();
        match writes {
            Writes::Accept => Ok(()),
            Writes::Refuse(hint) => Err(unavailable("not the leader", hint.as_ref())),
            Writes::Hold(release) => {
                release.notified().await;
                Ok(())
            }
        }
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for FakeService {
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        self.answer_if_answering().await;
        assert!(request.metadata().get("grpc-timeout").is_some(), "the deadline is sent");
        FakeService::check_key(&request.get_ref().key)?;
        self.check_write().await?;
        self.0.puts.fetch_add(1, Ordering::SeqCst);
        Ok(Response::new(pb::PutResponse { header: self.header() }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        self.answer_if_answering().await;
        FakeService::check_key(&request.get_ref().key)?;
        match &request.get_ref().key[..] {
            b"missing" => Err(Status::not_found("no such key")),
            _ => Ok(Response::new(pb::GetResponse {
                value: self.0.id.to_string().into(),
                header: self.header(),
            })),
        }
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        self.answer_if_answering().await;
        FakeService::check_key(&request.get_ref().key)?;
        self.check_write().await?;
        Ok(Response::new(pb::DeleteResponse {
            existed: true,
            deleted: true,
            header: self.header(),
            current: None,
        }))
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        self.answer_if_answering().await;
        FakeService::check_key(&request.get_ref().key)?;
        self.check_write().await?;
        Ok(Response::new(pb::CompareAndSwapResponse {
            swapped: true,
            current: None,
            header: self.header(),
        }))
    }

    async fn scan(&self, _: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        self.answer_if_answering().await;
        Ok(Response::new(pb::ScanResponse {
            pairs: vec![],
            more: false,
            header: self.header(),
        }))
    }
}

/// Each item is answered by the fake's Kv methods.
#[tonic::async_trait]
impl pb::kv_batch_server::KvBatch for FakeService {
    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        self.answer_if_answering().await;
        let items = request.into_inner().items;
        self.0.batches.fetch_add(1, Ordering::SeqCst);
        self.0.batched_items.fetch_add(items.len(), Ordering::SeqCst);
        crate::batch::serve_as_calls(self, items).await.map(Response::new)
    }
}

#[tonic::async_trait]
impl pb::cluster_server::Cluster for FakeService {
    async fn status(&self, _: Request<pb::StatusRequest>) -> Result<Response<pb::NodeStatus>, Status> {
        self.answer_if_answering().await;
        Ok(Response::new(self.0.status.borrow().clone()))
    }

    type WatchStatusStream = Pin<Box<dyn Stream<Item = Result<pb::NodeStatus, Status>> + Send>>;

    async fn watch_status(&self, _: Request<pb::StatusRequest>) -> Result<Response<Self::WatchStatusStream>, Status> {
        self.answer_if_answering().await;
        let (statuses, sent) = mpsc::channel(16);
        let behaviour = Arc::clone(&self.0);
        // On the fake's runtime: killing the fake ends it.
        tokio::spawn(async move {
            let mut status = behaviour.status.subscribe();
            let mut every = tokio::time::interval(Duration::from_millis(STATUS_PUSH_INTERVAL_MS));
            loop {
                tokio::select! {
                    changed = status.changed() => if changed.is_err() { return },
                    _ = every.tick() => {}
                    () = statuses.closed() => return,
                }
                if behaviour.streams_silent.load(Ordering::SeqCst) {
                    continue;
                }
                let now = status.borrow_and_update().clone();
                if statuses.send(Ok(now)).await.is_err() {
                    return;
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(sent))))
    }

    /// Changes nothing: answers that `to` leads now, with this fake's address (so a test sees
    /// which node the request reached), in the term after the one the request named (0 when
    /// it named none).
    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        self.answer_if_answering().await;
        let status = self.0.status.borrow().clone();
        let request = request.into_inner();
        Ok(Response::new(pb::TransferLeaderResponse {
            leader_id: request.to.unwrap_or(status.id),
            leader_address: status.address,
            term: request.term.map_or(0, |term| term + 1),
        }))
    }

    async fn member_list(
        &self,
        _request: Request<pb::MemberListRequest>,
    ) -> Result<Response<pb::MemberListResponse>, Status> {
        Err(Status::unimplemented("a fake node has no membership changes"))
    }

    async fn member_add(
        &self,
        _request: Request<pb::MemberAddRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("a fake node has no membership changes"))
    }

    async fn member_promote(
        &self,
        _request: Request<pb::MemberPromoteRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("a fake node has no membership changes"))
    }

    async fn member_remove(
        &self,
        _request: Request<pb::MemberRemoveRequest>,
    ) -> Result<Response<pb::MemberChangeResponse>, Status> {
        Err(Status::unimplemented("a fake node has no membership changes"))
    }

    type SnapshotSaveStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotSaveChunk, Status>> + Send>>;

    async fn snapshot_save(
        &self,
        _request: Request<pb::SnapshotSaveRequest>,
    ) -> Result<Response<Self::SnapshotSaveStream>, Status> {
        Err(Status::unimplemented("a fake node has no data to back up"))
    }
}
