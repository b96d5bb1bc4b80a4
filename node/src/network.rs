//! Outgoing Raft traffic: openraft's `RaftNetworkV2` over our tonic `Raft`
//! service, with long-lived HTTP/2 connections to each peer: one for replication,
//! votes and transfers, one for heartbeats, one for snapshots ([`Lane`]). A heartbeat
//! must not queue behind megabytes of entries or of a snapshot in the same TCP
//! connection: a follower that stops hearing from its leader stands for election.
//!
//! AppendEntries (replication's and heartbeats') go on one long-lived `AppendEntriesStream`
//! call per connection, one request at a time ([`Appends`]): a unary call costs the sender two
//! writes (hyper's HTTP/2 client sends a new stream's headers, then its message) and both
//! sides a call's setup; on the stream a request is one write. At one client that took a put's
//! p50 from 0.94–0.98 ms to 0.74–0.76 ms and the servers' CPU per put down by 29 %
//! (BENCHMARKS.md, "Where the time goes", item 25).
//!
//! An AppendEntries larger than `MAX_APPEND_ENTRIES_BYTES` sends the entries that fit
//! and reports a partial success, and openraft goes on from there. openraft gives every
//! AppendEntries one heartbeat interval; one that carries entries gets the time its
//! bytes need on a slow link too (`append_timeout`). A snapshot goes as one
//! client-streaming call: a header chunk, then the snapshot file's bytes in
//! `SNAPSHOT_CHUNK_BYTES` pieces, written from the state machine's view as the call takes
//! them (a node keeps no snapshot file, see `store/snapshot_file.rs`; the scan runs on a
//! blocking thread, a few chunks ahead of the call). The call is given up when no chunk moves
//! for `SNAPSHOT_IDLE_TIMEOUT`, or no answer comes within the time its size needs once it is
//! all sent (`snapshot_timeout`: the follower installs it first), and cancelled when openraft
//! closes the replication stream.
//!
//! Every call carries this node's cluster id (`cluster_identity.rs`), stamped on by the client
//! every peer connection uses ([`RaftPeerClient`]).

use std::collections::HashMap;
use std::future::Future;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use futures::{SinkExt, Stream, StreamExt};
use openraft::base::{BoxFuture, BoxStream};
use openraft::errors::{NetworkError, RPCError, ReplicationClosed, StreamingError, Unreachable};
use openraft::network::{stream_append_sequential, Backoff, RPCOption};
use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, SnapshotResponse, StreamAppendResult, TransferLeaderRequest,
    TransferLeaderResponse, VoteRequest, VoteResponse,
};
use openraft::{BasicNode, OptionalSend, RaftNetworkFactory, RaftNetworkV2};
use prost::Message;
use raftkv::raft_pb as pb;
use raftkv::raft_pb::raft_client::RaftClient;
use raftkv::tls::ClientTls;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use crate::cluster_identity::{ClusterIdentity, StampClusterId};
use crate::convert;
use crate::store::UnwrittenSnapshot;
use crate::types::{NodeId, Snapshot, SnapshotData, TypeConfig, Vote};

/// The largest gRPC message a node sends or accepts on the Raft port.
pub const MAX_RAFT_MESSAGE_BYTES: usize = 64 << 20;
/// An AppendEntries above this size sends only the entries that fit (at least one) and
/// reports a partial success; openraft sends the rest next. Small enough that a follower
/// catching up acknowledges progress often.
pub const MAX_APPEND_ENTRIES_BYTES: usize = 4 << 20;
/// The least time an AppendEntries that carries entries is given, whatever openraft's
/// (heartbeat-length) deadline: the follower writes them to disk before it answers.
pub const APPEND_TIMEOUT_FLOOR: Duration = Duration::from_millis(500);
/// The slowest link an AppendEntries' deadline allows for, in bytes per second: its bytes
/// at this rate are added to [`APPEND_TIMEOUT_FLOOR`].
pub const APPEND_MIN_BYTES_PER_SEC: u64 = 8 << 20;
/// A snapshot is sent in pieces of this size.
pub const SNAPSHOT_CHUNK_BYTES: usize = 1 << 20;
/// Chunks written ahead of the call that sends them: with the one being filled and the one
/// being sent, what a transfer holds in memory.
const SNAPSHOT_CHUNKS_AHEAD: usize = 2;
/// A snapshot transfer that moves no chunk for this long is given up (the follower, the link
/// or the scan stalled); openraft tries again later.
pub const SNAPSHOT_IDLE_TIMEOUT: Duration = SNAPSHOT_TIMEOUT_FLOOR;
/// The least time a follower is given to answer once a snapshot is all sent: it installs the
/// snapshot before it answers.
pub const SNAPSHOT_TIMEOUT_FLOOR: Duration = Duration::from_secs(10);
/// The slowest install the answer's deadline allows for, in bytes per second: the snapshot's
/// bytes at this rate are added to [`SNAPSHOT_TIMEOUT_FLOOR`].
pub const SNAPSHOT_MIN_BYTES_PER_SEC: u64 = 4 << 20;
/// How long openraft waits before retrying a peer it could not reach.
pub const UNREACHABLE_BACKOFF: Duration = Duration::from_millis(200);
/// The same for a snapshot: each try takes a view of the state machine first, and a snapshot
/// is not sent to a peer that answers nothing (a heartbeat it answers lets the next try go).
pub const SNAPSHOT_UNREACHABLE_BACKOFF: Duration = Duration::from_secs(1);

/// Which connection to a peer a kind of traffic uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Lane {
    /// Replication, votes, leader transfers, ReadIndex.
    Replication,
    /// Heartbeats, which must get through while the other lanes carry megabytes.
    Heartbeat,
    /// Snapshots, which may take long.
    Snapshot,
}

/// A Raft client to one peer: every call it makes carries this node's cluster id.
pub type RaftPeerClient = RaftClient<InterceptedService<Channel, StampClusterId>>;

/// Hands out Raft clients; channels are cached per address and [`Lane`], so a
/// reconnecting replication stream reuses its HTTP/2 connection.
#[derive(Clone)]
pub struct Network {
    channels: Arc<Mutex<HashMap<(String, Lane), Channel>>>,
    reachability: Reachability,
    /// The local address outgoing connections are bound to, when set.
    source_address: Option<IpAddr>,
    /// TLS for every connection to a peer (this node's certificate, which names a node, and
    /// the CA), when the cluster runs TLS.
    tls: Option<ClientTls>,
    /// The cluster id every call carries.
    identity: ClusterIdentity,
}

/// What each peer's last RPC, on any connection, came to: whether it could be reached, so that
/// losing and regaining contact is logged once per change instead of once per retry; and whether
/// it answered, which a snapshot waits for.
#[derive(Clone)]
struct Reachability {
    seen: Arc<Mutex<HashMap<NodeId, Seen>>>,
    /// The node's span: openraft calls us from tasks it spawns without one.
    span: tracing::Span,
}

/// A peer's last RPC, as [`Reachability`] keeps it.
#[derive(Clone, Copy)]
struct Seen {
    /// Not refused as unreachable ([`is_unreachable`]).
    reachable: bool,
    /// Answered: a reply or a gRPC error from the peer itself; not a refused or failed
    /// connection, nor a deadline passed. A paused or silent peer's heartbeats keep this false
    /// until it answers again.
    answered: bool,
}

impl Reachability {
    fn update(&self, target: NodeId, address: &str, result: &Result<impl Sized, tonic::Status>) {
        let now = Seen {
            reachable: !matches!(result, Err(s) if is_unreachable(s)),
            answered: !matches!(result, Err(s) if is_unreachable(s) || s.code() == tonic::Code::DeadlineExceeded),
        };
        let was = self
            .seen
            .lock()
            .expect("reachability map poisoned")
            .insert(target, now)
            .map(|seen| seen.reachable);
        match (was, result) {
            (Some(false), _) if now.reachable => {
                tracing::info!(parent: &self.span, peer = target, "node {target} at {address} is reachable again")
            }
            (None | Some(true), Err(e)) if !now.reachable => {
                let e = e.message();
                tracing::warn!(parent: &self.span, peer = target, "cannot reach node {target} at {address}: {e}")
            }
            _ => {}
        }
    }

    /// Whether `target` answered its last call (true for a peer not called yet).
    fn answering(&self, target: NodeId) -> bool {
        let seen = self.seen.lock().expect("reachability map poisoned");
        seen.get(&target).is_none_or(|seen| seen.answered)
    }
}

impl Network {
    /// Connections to peers leave from `source_address` when given, else from
    /// whatever address the OS picks, and are TLS when `tls` is given. What it logs carries
    /// the span current now (the node's), whichever task openraft calls it from. Every call
    /// carries `identity`'s cluster id.
    pub fn new(source_address: Option<IpAddr>, tls: Option<ClientTls>, identity: ClusterIdentity) -> Network {
        Network {
            channels: Arc::default(),
            reachability: Reachability {
                seen: Arc::default(),
                span: tracing::Span::current(),
            },
            source_address,
            tls,
            identity,
        }
    }

    /// A Raft client for the node at `address`, on the connection of `lane`.
    pub fn client(&self, address: &str, lane: Lane) -> Result<RaftPeerClient, raftkv::client::Error> {
        let mut channels = self.channels.lock().expect("channel cache poisoned");
        let channel = match channels.get(&(address.to_string(), lane)) {
            Some(c) => c.clone(),
            None => {
                let c = raftkv::client::endpoint(address, self.tls.as_ref())?
                    .local_address(self.source_address)
                    .connect_lazy();
                channels.insert((address.to_string(), lane), c.clone());
                c
            }
        };
        Ok(
            RaftClient::with_interceptor(channel, StampClusterId(self.identity.clone()))
                .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
                .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES),
        )
    }
}

impl Network {
    fn peer(&self, target: NodeId, node: &BasicNode, lane: Lane) -> PeerConnection {
        PeerConnection {
            target,
            address: node.addr.clone(),
            client: self.client(&node.addr, lane).map_err(|e| e.to_string()),
            reachability: self.reachability.clone(),
            lane,
            appends: Appends::Unopened,
        }
    }
}

impl RaftNetworkFactory<TypeConfig> for Network {
    type Network = PeerConnection;

    async fn new_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        self.peer(target, node, Lane::Replication)
    }

    async fn new_heartbeat_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        self.peer(target, node, Lane::Heartbeat)
    }

    async fn new_snapshot_client(&mut self, target: NodeId, node: &BasicNode) -> PeerConnection {
        self.peer(target, node, Lane::Snapshot)
    }
}

/// The connection to one peer, as openraft's replication and election use it.
pub struct PeerConnection {
    target: NodeId,
    address: String,
    client: Result<RaftPeerClient, String>,
    reachability: Reachability,
    /// The kind of traffic this connection carries.
    lane: Lane,
    /// How this connection sends AppendEntries.
    appends: Appends,
}

/// How a [`PeerConnection`] sends AppendEntries: on one `AppendEntriesStream` call, opened
/// at the first and again after any failure, or one call each to a peer without it.
enum Appends {
    /// No call open: the next AppendEntries opens one.
    Unopened,
    Open(Box<AppendCall>),
    /// The peer answered UNIMPLEMENTED (a node from before the call existed).
    Unary,
}

/// An open `AppendEntriesStream` call. Requests go one at a time: each is sent once the
/// answer to the one before has come, so the next answer is always the last request's. A
/// call is taken out of its [`PeerConnection`] while a request is on it and put back only
/// once the answer has come: a caller that gives up before (openraft dropped the request)
/// drops the call with its answer still to come.
struct AppendCall {
    requests: futures::channel::mpsc::Sender<pb::AppendEntriesRequest>,
    answers: tonic::Streaming<pb::AppendEntriesResponse>,
}

impl AppendCall {
    /// Sends `message` and reads its answer.
    async fn exchange(
        &mut self,
        message: pb::AppendEntriesRequest,
    ) -> Result<pb::AppendEntriesResponse, tonic::Status> {
        self.requests
            .send(message)
            .await
            .map_err(|_| tonic::Status::unavailable("the AppendEntries call is closed"))?;
        self.answers
            .message()
            .await?
            .ok_or_else(|| tonic::Status::unavailable("the peer ended the AppendEntries call"))
    }
}

#[derive(Debug, thiserror::Error)]
#[error("{0}")]
struct TransportError(String);

type RpcError = RPCError<TypeConfig>;

/// Whether a peer's answer means it cannot be reached for now: it is down or stopping
/// (UNAVAILABLE), or it belongs to another cluster and refuses every call
/// (FAILED_PRECONDITION, `cluster_identity.rs`; no other Raft call answers it). openraft then
/// waits [`UNREACHABLE_BACKOFF`] between tries instead of retrying at once.
fn is_unreachable(status: &tonic::Status) -> bool {
    matches!(
        status.code(),
        tonic::Code::Unavailable | tonic::Code::FailedPrecondition
    )
}

fn rpc_error(target: NodeId, address: &str, status: tonic::Status) -> RpcError {
    let err = TransportError(format!("node {target} at {address}: {}", status.message()));
    if is_unreachable(&status) {
        RPCError::Unreachable(Unreachable::new(&err))
    } else {
        RPCError::Network(NetworkError::new(&err))
    }
}

impl PeerConnection {
    /// Notes whether the peer answered; a gRPC error status is an answer, unless it says the
    /// peer cannot be reached for now ([`is_unreachable`]).
    fn observe<T>(&self, result: &Result<T, tonic::Status>) {
        self.reachability.update(self.target, &self.address, result);
    }

    fn client(&self) -> Result<RaftPeerClient, RpcError> {
        self.client
            .clone()
            .map_err(|e| RPCError::Unreachable(Unreachable::new(&TransportError(e))))
    }

    /// One unary Raft RPC: `message` sent by `send` within `timeout`, the peer's
    /// reachability noted, the reply decoded by `decode`.
    async fn unary<M, R, T, Sent>(
        &self,
        message: M,
        timeout: Duration,
        send: impl FnOnce(RaftPeerClient, tonic::Request<M>) -> Sent,
        decode: impl FnOnce(R) -> Result<T, convert::MalformedMessage>,
    ) -> Result<T, RpcError>
    where
        Sent: Future<Output = Result<tonic::Response<R>, tonic::Status>>,
    {
        let mut request = tonic::Request::new(message);
        request.set_timeout(timeout);
        let reply = send(self.client()?, request).await;
        self.observe(&reply);
        let reply = reply.map_err(|s| rpc_error(self.target, &self.address, s))?;
        decode(reply.into_inner()).map_err(malformed)
    }
}

impl PeerConnection {
    /// One AppendEntries within `timeout`: on this connection's `AppendEntriesStream` call
    /// (opened first if none is), or as a call of its own to a peer without it. A call that
    /// fails or times out is closed; the next AppendEntries opens a new one.
    async fn append(
        &mut self,
        message: pb::AppendEntriesRequest,
        timeout: Duration,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        let deadline = tokio::time::Instant::now() + timeout;
        let late = || tonic::Status::deadline_exceeded(format!("no answer to AppendEntries within {timeout:?}"));
        let call = match std::mem::replace(&mut self.appends, Appends::Unopened) {
            Appends::Unary => return self.append_unary(message, timeout).await,
            Appends::Open(call) => Ok(call),
            Appends::Unopened => tokio::time::timeout_at(deadline, self.open_append_call())
                .await
                .unwrap_or_else(|_| Err(late())),
        };
        let reply = match call {
            Err(status) if status.code() == tonic::Code::Unimplemented => {
                self.appends = Appends::Unary;
                let left = deadline.saturating_duration_since(tokio::time::Instant::now());
                return self.append_unary(message, left).await;
            }
            Err(status) => Err(status),
            Ok(mut call) => {
                let reply = tokio::time::timeout_at(deadline, call.exchange(message))
                    .await
                    .unwrap_or_else(|_| Err(late()));
                if reply.is_ok() {
                    self.appends = Appends::Open(call);
                }
                reply
            }
        };
        self.observe(&reply);
        let reply = reply.map_err(|s| rpc_error(self.target, &self.address, s))?;
        convert::append_response_from_pb(reply).map_err(malformed)
    }

    /// One AppendEntries as a call of its own.
    async fn append_unary(
        &self,
        message: pb::AppendEntriesRequest,
        timeout: Duration,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        let send = |mut client: RaftPeerClient, request| async move { client.append_entries(request).await };
        self.unary(message, timeout, send, convert::append_response_from_pb)
            .await
    }

    /// Opens an `AppendEntriesStream` call on this connection.
    async fn open_append_call(&self) -> Result<Box<AppendCall>, tonic::Status> {
        let mut client = self.client().map_err(|e| tonic::Status::unavailable(e.to_string()))?;
        let (requests, outgoing) = futures::channel::mpsc::channel(1);
        let answers = client.append_entries_stream(outgoing).await?.into_inner();
        Ok(Box::new(AppendCall { requests, answers }))
    }
}

fn malformed(e: convert::MalformedMessage) -> RpcError {
    RPCError::Network(NetworkError::new(&e))
}

/// The deadline of an AppendEntries of `bytes` that openraft gave `deadline`: that for a
/// heartbeat; for entries at least [`APPEND_TIMEOUT_FLOOR`] plus their bytes at
/// [`APPEND_MIN_BYTES_PER_SEC`].
fn append_timeout(deadline: Duration, entries: usize, bytes: usize) -> Duration {
    if entries == 0 {
        return deadline;
    }
    let transfer = Duration::from_micros(bytes as u64 * 1_000_000 / APPEND_MIN_BYTES_PER_SEC);
    deadline.max(APPEND_TIMEOUT_FLOOR + transfer)
}

/// The time a follower is given to answer once a snapshot of `bytes` is all sent:
/// [`SNAPSHOT_TIMEOUT_FLOOR`] plus its bytes at [`SNAPSHOT_MIN_BYTES_PER_SEC`].
fn snapshot_timeout(bytes: u64) -> Duration {
    SNAPSHOT_TIMEOUT_FLOOR + Duration::from_millis(bytes.saturating_mul(1000) / SNAPSHOT_MIN_BYTES_PER_SEC)
}

/// How far a snapshot transfer is, for its deadlines.
struct TransferProgress {
    /// When the last chunk was taken by the call, the bytes taken so far, and whether the
    /// last one was.
    state: Mutex<(tokio::time::Instant, u64, bool)>,
}

impl TransferProgress {
    fn new() -> Arc<TransferProgress> {
        Arc::new(TransferProgress {
            state: Mutex::new((tokio::time::Instant::now(), 0, false)),
        })
    }

    fn moved(&self, bytes: usize) {
        let mut state = self.state.lock().expect("transfer progress lock poisoned");
        *state = (tokio::time::Instant::now(), state.1 + bytes as u64, false);
    }

    fn ended(&self) {
        let mut state = self.state.lock().expect("transfer progress lock poisoned");
        *state = (tokio::time::Instant::now(), state.1, true);
    }

    fn bytes(&self) -> u64 {
        self.state.lock().expect("transfer progress lock poisoned").1
    }

    /// When the transfer is overdue, and what it is waiting for.
    fn deadline(&self) -> (tokio::time::Instant, &'static str) {
        let (at, bytes, ended) = *self.state.lock().expect("transfer progress lock poisoned");
        if ended {
            (
                at + snapshot_timeout(bytes),
                "its answer (it installs the snapshot first)",
            )
        } else {
            (at + SNAPSHOT_IDLE_TIMEOUT, "the next chunk to go")
        }
    }
}

/// Resolves once the transfer `progress` follows is overdue, with what it was waiting for.
async fn overdue(progress: &TransferProgress) -> &'static str {
    loop {
        let (deadline, waiting_for) = progress.deadline();
        if tokio::time::Instant::now() >= deadline {
            return waiting_for;
        }
        tokio::time::sleep_until(deadline).await;
    }
}

/// Bytes written into it go to a transfer as chunks of [`SNAPSHOT_CHUNK_BYTES`] (`flush`
/// sends what is left). Once the transfer is gone, writes fail, which stops the scan.
struct ChunkWriter {
    chunk: Vec<u8>,
    to: tokio::sync::mpsc::Sender<Bytes>,
}

impl ChunkWriter {
    fn new(to: tokio::sync::mpsc::Sender<Bytes>) -> ChunkWriter {
        ChunkWriter {
            chunk: Vec::with_capacity(SNAPSHOT_CHUNK_BYTES),
            to,
        }
    }

    /// Hands the chunk over, waiting while the transfer is [`SNAPSHOT_CHUNKS_AHEAD`] behind.
    /// Runs on a blocking thread.
    fn send(&mut self) -> std::io::Result<()> {
        let chunk = std::mem::replace(&mut self.chunk, Vec::with_capacity(SNAPSHOT_CHUNK_BYTES));
        self.to
            .blocking_send(Bytes::from(chunk))
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::BrokenPipe, "the transfer ended"))
    }
}

impl std::io::Write for ChunkWriter {
    fn write(&mut self, bytes: &[u8]) -> std::io::Result<usize> {
        let n = bytes.len().min(SNAPSHOT_CHUNK_BYTES - self.chunk.len());
        self.chunk.extend_from_slice(&bytes[..n]);
        if self.chunk.len() == SNAPSHOT_CHUNK_BYTES {
            self.send()?;
        }
        Ok(n)
    }

    fn flush(&mut self) -> std::io::Result<()> {
        if self.chunk.is_empty() {
            Ok(())
        } else {
            self.send()
        }
    }
}

/// Where the scan behind [`snapshot_chunks`] is.
enum Scan {
    /// Not started: the call has not asked for data yet (it may never connect).
    Waiting(UnwrittenSnapshot, Box<dyn FnOnce() + Send>),
    /// Writing chunks into the channel, a blocking task.
    Running(
        tokio::sync::mpsc::Receiver<Bytes>,
        tokio::task::JoinHandle<std::io::Result<()>>,
    ),
}

/// The data chunks of `snapshot`, written from its view as the call takes them: once the
/// call first asks for data (`started` is called then), a blocking thread scans the view into
/// chunks, at most [`SNAPSHOT_CHUNKS_AHEAD`] ahead of the call, and stops once the stream is
/// dropped. Each chunk taken moves `progress`. If the scan fails, the stream ends before the
/// snapshot's trailer (the follower refuses what it got), and why is put in `failure`.
fn snapshot_chunks(
    snapshot: UnwrittenSnapshot,
    started: impl FnOnce() + Send + 'static,
    progress: Arc<TransferProgress>,
    failure: Arc<Mutex<Option<String>>>,
) -> impl Stream<Item = pb::SnapshotChunk> + Send + 'static {
    let waiting = Scan::Waiting(snapshot, Box::new(started));
    futures::stream::unfold(Some(waiting), move |state| {
        let (progress, failure) = (progress.clone(), failure.clone());
        async move {
            let (mut from, writing) = match state? {
                Scan::Running(from, writing) => (from, writing),
                Scan::Waiting(snapshot, started) => {
                    started();
                    let (to, from) = tokio::sync::mpsc::channel(SNAPSHOT_CHUNKS_AHEAD);
                    let writing = tokio::task::spawn_blocking(move || {
                        let never = std::sync::atomic::AtomicBool::new(false);
                        snapshot.write_into(ChunkWriter::new(to), &never).map(drop)
                    });
                    (from, writing)
                }
            };
            if let Some(bytes) = from.recv().await {
                progress.moved(bytes.len());
                let chunk = pb::SnapshotChunk {
                    kind: Some(pb::snapshot_chunk::Kind::Data(bytes)),
                };
                return Some((chunk, Some(Scan::Running(from, writing))));
            }
            // The scan is over: whether it wrote the snapshot to its end.
            let why = match writing.await {
                Ok(Ok(())) => {
                    progress.ended();
                    return None;
                }
                Ok(Err(e)) => e.to_string(),
                Err(e) => format!("its task failed: {e}"),
            };
            *failure.lock().expect("snapshot failure lock poisoned") =
                Some(format!("cannot write the snapshot: {why}; it was cut short"));
            None
        }
    })
}

/// How many of `entries`, from the first, fit in one AppendEntries of at most
/// `MAX_APPEND_ENTRIES_BYTES` (always at least one).
fn entries_that_fit(entries: &[pb::Entry]) -> usize {
    let mut bytes = 0;
    for (n, entry) in entries.iter().enumerate() {
        let len = entry.encoded_len();
        // The entry's tag and length prefix in the request (a few bytes).
        bytes += len + prost::length_delimiter_len(len) + 1;
        if n > 0 && bytes > MAX_APPEND_ENTRIES_BYTES {
            return n;
        }
    }
    entries.len()
}

impl RaftNetworkV2<TypeConfig> for PeerConnection {
    type SnapshotData = SnapshotData;

    /// Replication one AppendEntries at a time: the next request is taken from openraft only
    /// after openraft has handled the answer to the one before. openraft dates a follower's
    /// acknowledgement by the sending time of the requests it drains from its in-flight queue,
    /// and an answer drains every queued request that ends at or below the index it matched,
    /// so with requests pipelined, an empty one (a commit-index update) queued behind was
    /// credited with an acknowledgement the follower never gave it. A leader cut off while its
    /// followers elected another then took that stamp as a fresh quorum and served lease (and
    /// ReadIndex) reads from its stale state (ARCHITECTURE.md, "Read safety").
    fn stream_append<'s, S>(
        &'s mut self,
        input: S,
        option: RPCOption,
    ) -> BoxFuture<'s, Result<BoxStream<'s, Result<StreamAppendResult<TypeConfig>, RpcError>>, RpcError>>
    where
        S: Stream<Item = AppendEntriesRequest<TypeConfig>> + OptionalSend + Unpin + 'static,
    {
        stream_append_sequential(self, input, option)
    }

    async fn append_entries(
        &mut self,
        rpc: AppendEntriesRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<AppendEntriesResponse<TypeConfig>, RpcError> {
        if rpc.entries.is_empty() {
            // An empty AppendEntries: most often the one that tells a follower the commit index
            // moved, sent as soon as it moves, woken on this thread just before the tasks that
            // apply the entry and answer its clients. Letting the work already queued run first
            // answers those clients sooner, and this leaves a moment later
            // (BENCHMARKS.md, "Heartbeats after answers": puts faster, reads unchanged).
            tokio::task::yield_now().await;
        }
        let mut message = convert::append_entries_to_pb(&rpc);
        let fit = entries_that_fit(&message.entries);
        let cut = fit < message.entries.len();
        if cut {
            message.entries.truncate(fit);
        }
        let timeout = append_timeout(option.hard_ttl(), message.entries.len(), message.encoded_len());
        let response = self.append(message, timeout).await?;
        Ok(match response {
            // The follower took the entries sent, which end before the ones left out.
            AppendEntriesResponse::Success if cut => {
                AppendEntriesResponse::PartialSuccess(Some(rpc.entries[fit - 1].log_id))
            }
            other => other,
        })
    }

    async fn vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        let send = |mut client: RaftPeerClient, request| async move { client.vote(request).await };
        let message = convert::vote_request_to_pb(&rpc);
        self.unary(message, option.hard_ttl(), send, convert::vote_response_from_pb)
            .await
    }

    /// An error here (the peer is unreachable, say) is not a grant: a node cut off from the
    /// others gets no quorum of pre-votes and does not raise its term.
    async fn pre_vote(
        &mut self,
        rpc: VoteRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<VoteResponse<TypeConfig>, RpcError> {
        let send = |mut client: RaftPeerClient, request| async move { client.pre_vote(request).await };
        let message = convert::vote_request_to_pb(&rpc);
        self.unary(message, option.hard_ttl(), send, convert::vote_response_from_pb)
            .await
    }

    async fn transfer_leader(
        &mut self,
        req: TransferLeaderRequest<TypeConfig>,
        option: RPCOption,
    ) -> Result<TransferLeaderResponse<TypeConfig>, RpcError> {
        let send = |mut client: RaftPeerClient, request| async move { client.transfer_leader(request).await };
        let message = convert::transfer_leader_request_to_pb(&req);
        self.unary(
            message,
            option.hard_ttl(),
            send,
            convert::transfer_leader_response_from_pb,
        )
        .await
    }

    /// Streams the snapshot file to the peer on the snapshot lane, a chunk at a time.
    async fn full_snapshot(
        &mut self,
        vote: Vote,
        snapshot: Snapshot,
        cancel: impl Future<Output = ReplicationClosed> + OptionalSend + 'static,
        _option: RPCOption,
    ) -> Result<SnapshotResponse<TypeConfig>, StreamingError<TypeConfig>> {
        if !self.reachability.answering(self.target) {
            // A peer that is down, paused or cut off: the call would wait for a connection or
            // an answer (seconds) while holding the snapshot's view, which on sled holds this
            // node's applies back. Heartbeats keep calling it; once one is answered, openraft's
            // next try (every SNAPSHOT_UNREACHABLE_BACKOFF) sends.
            let why = TransportError(format!(
                "snapshot to node {} at {}: not sent, the node answered none of the last calls",
                self.target, self.address
            ));
            return Err(StreamingError::Unreachable(Unreachable::new(&why)));
        }
        let Snapshot { meta, snapshot } = snapshot;
        let SnapshotData::Unwritten(unwritten) = snapshot else {
            // openraft sends what the state machine's `get_current_snapshot` gives: its view.
            let why = TransportError("a received snapshot file is never sent on".to_string());
            return Err(StreamingError::Network(NetworkError::new(&why)));
        };
        let header = pb::SnapshotHeader {
            vote: Some(convert::vote_to_pb(&vote)),
            meta: Some(convert::snapshot_meta_to_pb(&meta)),
            // Not known before it is written: its trailer says where it ends.
            data_len: 0,
        };
        let header = pb::SnapshotChunk {
            kind: Some(pb::snapshot_chunk::Kind::Header(header)),
        };
        let progress = TransferProgress::new();
        let failure = Arc::new(Mutex::new(None));
        // Logged once the call asks for data: a peer that cannot be reached is retried every
        // few hundred ms, and says so in a line of its own.
        let (span, peer, last_log_id) = (self.reachability.span.clone(), self.target, meta.last_log_id);
        let sending = move || tracing::info!(parent: &span, peer, ?last_log_id, "sending snapshot");
        let chunks = futures::stream::once(async move { header }).chain(snapshot_chunks(
            unwritten,
            sending,
            progress.clone(),
            failure.clone(),
        ));
        let started = std::time::Instant::now();
        let mut client = self.client()?;
        let reply = tokio::select! {
            reply = client.install_snapshot(tonic::Request::new(chunks)) => reply,
            waiting_for = overdue(&progress) => {
                let why = format!(
                    "snapshot to node {} at {}: gave up waiting for {waiting_for} after {} bytes",
                    self.target,
                    self.address,
                    progress.bytes()
                );
                tracing::warn!(parent: &self.reachability.span, "{why}");
                return Err(StreamingError::Network(NetworkError::new(&TransportError(why))));
            }
            closed = cancel => return Err(StreamingError::Closed(closed)),
        };
        if let Some(why) = failure.lock().expect("snapshot failure lock poisoned").take() {
            tracing::error!(parent: &self.reachability.span, peer = self.target, "{why}");
            return Err(StreamingError::Network(NetworkError::new(&TransportError(why))));
        }
        if reply.is_ok() {
            let seconds = started.elapsed().as_secs_f64();
            crate::metrics::SNAPSHOT_LAST_SEND_SECONDS.set(seconds);
            tracing::info!(parent: &self.reachability.span, peer = self.target, bytes = progress.bytes(), seconds, "snapshot sent and installed");
        }
        self.observe(&reply);
        let reply = reply.map_err(|s| {
            let err = TransportError(format!(
                "snapshot to node {} at {}: {}",
                self.target,
                self.address,
                s.message()
            ));
            if is_unreachable(&s) {
                StreamingError::Unreachable(Unreachable::new(&err))
            } else {
                StreamingError::Network(NetworkError::new(&err))
            }
        })?;
        let vote = convert::vote_from_pb(reply.into_inner().vote)
            .map_err(|e| StreamingError::Network(NetworkError::new(&e)))?;
        Ok(SnapshotResponse { vote })
    }

    fn backoff(&self) -> Option<Backoff> {
        let wait = match self.lane {
            Lane::Snapshot => SNAPSHOT_UNREACHABLE_BACKOFF,
            Lane::Replication | Lane::Heartbeat => UNREACHABLE_BACKOFF,
        };
        Some(Backoff::new(std::iter::repeat(wait)))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_heartbeat_keeps_openraft_s_deadline_and_entries_get_the_time_their_bytes_need() {
        let heartbeat = Duration::from_millis(25);
        assert_eq!(append_timeout(heartbeat, 0, 64), heartbeat);
        assert_eq!(append_timeout(heartbeat, 1, 0), APPEND_TIMEOUT_FLOOR);
        let full = append_timeout(heartbeat, 100, MAX_APPEND_ENTRIES_BYTES);
        assert_eq!(full, APPEND_TIMEOUT_FLOOR + Duration::from_millis(500));
        // A longer deadline from openraft is kept.
        assert_eq!(append_timeout(Duration::from_secs(5), 1, 100), Duration::from_secs(5));
    }

    /// An entry whose encoding is about `bytes` long, at `index`.
    fn entry_of(index: u64, bytes: usize) -> crate::types::Entry {
        use crate::types::{Command, EntryPayload, LeaderId, LogId, Op, WriteGroup};
        let command = Command {
            op: Op::Put {
                key: Bytes::from_static(b"k"),
                value: Bytes::from(vec![0u8; bytes]),
            },
            write_id: None,
        };
        crate::types::Entry {
            log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
            payload: EntryPayload::Normal(WriteGroup {
                proposed_at_ms: 0,
                commands: vec![command],
            }),
        }
    }

    #[test]
    fn a_large_append_sends_the_entries_that_fit_and_always_one() {
        let entries: Vec<pb::Entry> = (10..20)
            .map(|index| convert::entry_to_pb(&entry_of(index, MAX_APPEND_ENTRIES_BYTES / 4)))
            .collect();
        let fit = entries_that_fit(&entries);
        assert!(
            (1..entries.len()).contains(&fit),
            "{fit} of {} entries fit",
            entries.len()
        );
        let bytes: usize = entries[..fit].iter().map(|e| e.encoded_len()).sum();
        assert!(bytes <= MAX_APPEND_ENTRIES_BYTES, "{bytes} bytes in one AppendEntries");
        // One entry larger than the limit still goes, alone.
        let huge = vec![convert::entry_to_pb(&entry_of(1, 2 * MAX_APPEND_ENTRIES_BYTES))];
        assert_eq!(entries_that_fit(&huge), 1);
        assert_eq!(entries_that_fit(&[]), 0);
    }

    #[test]
    fn a_snapshot_gets_the_time_its_size_needs() {
        assert_eq!(snapshot_timeout(0), SNAPSHOT_TIMEOUT_FLOOR);
        assert_eq!(
            snapshot_timeout(100 * SNAPSHOT_MIN_BYTES_PER_SEC),
            SNAPSHOT_TIMEOUT_FLOOR + Duration::from_secs(100)
        );
    }

    /// The snapshot of a state machine holding 20 000 pairs (over 2 MB).
    async fn a_snapshot(dir: &std::path::Path) -> crate::store::StateMachine {
        use crate::store::data_dir;
        let options = crate::store::engine::EngineOptions::default();
        let mut sm = data_dir::open(dir, 1, "1=127.0.0.1:1", &options).unwrap().state_machine;
        let puts = (0..20_000u64).map(|i| crate::types::Command {
            op: crate::types::Op::Put {
                key: Bytes::from(format!("key/{i:08}")),
                value: Bytes::from(vec![b'v'; 90]),
            },
            write_id: None,
        });
        let mut entry = entry_of(1, 0);
        if let crate::types::EntryPayload::Normal(group) = &mut entry.payload {
            group.commands = puts.collect();
        }
        sm.apply_entries([entry]).unwrap();
        sm
    }

    /// The state machine's current snapshot, not written.
    async fn unwritten(sm: &mut crate::store::StateMachine) -> UnwrittenSnapshot {
        use openraft::storage::RaftStateMachine;
        match sm.get_current_snapshot().await.unwrap().expect("a snapshot").snapshot {
            SnapshotData::Unwritten(unwritten) => unwritten,
            SnapshotData::File(_) => panic!("a state machine's snapshot is written only when it is sent"),
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_snapshot_is_streamed_as_its_file_would_be_and_received_without_knowing_its_length() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = a_snapshot(dir.path()).await;
        let path = unwritten(&mut sm)
            .await
            .write_to(dir.path().join("sent.snapshot"))
            .unwrap();
        let whole = std::fs::read(&path).unwrap();
        assert!(whole.len() > 2 * SNAPSHOT_CHUNK_BYTES, "{} bytes", whole.len());

        let progress = TransferProgress::new();
        let failure = Arc::new(Mutex::new(None));
        // The scan starts when the call first asks for data, not before (a call to a peer that
        // cannot be reached never does).
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let flag = started.clone();
        let on_start = move || flag.store(true, std::sync::atomic::Ordering::SeqCst);
        let stream = snapshot_chunks(unwritten(&mut sm).await, on_start, progress.clone(), failure.clone());
        tokio::task::yield_now().await;
        assert!(
            !started.load(std::sync::atomic::Ordering::SeqCst),
            "the scan started unasked"
        );
        let chunks: Vec<Bytes> = stream
            .map(|chunk| match chunk.kind {
                Some(pb::snapshot_chunk::Kind::Data(bytes)) => bytes,
                other => panic!("a data chunk, not {other:?}"),
            })
            .collect()
            .await;
        assert_eq!(failure.lock().unwrap().take(), None);
        assert!(started.load(std::sync::atomic::Ordering::SeqCst));
        let (last, full) = chunks.split_last().unwrap();
        assert!(full.iter().all(|c| c.len() == SNAPSHOT_CHUNK_BYTES));
        assert!(!last.is_empty() && last.len() <= SNAPSHOT_CHUNK_BYTES);
        let sent: Vec<u8> = chunks.iter().flat_map(|c| c.iter().copied()).collect();
        assert!(sent == whole, "the stream is not the file's bytes");
        assert_eq!(progress.bytes(), whole.len() as u64);
        assert!(progress.deadline().1.contains("answer"), "the end was seen");

        let incoming = dir.path().join("received.snapshot");
        let mut receiving = crate::store::IncomingSnapshot::create(incoming, None).unwrap();
        for chunk in &chunks {
            receiving.write(chunk).unwrap();
        }
        receiving
            .finish()
            .expect("a whole snapshot of unknown length checks out");
    }

    #[tokio::test]
    async fn a_transfer_is_overdue_when_no_chunk_moves_and_then_when_its_answer_is_late() {
        let progress = TransferProgress::new();
        progress.moved(SNAPSHOT_CHUNK_BYTES);
        let (deadline, waiting_for) = progress.deadline();
        let moved = progress.state.lock().unwrap().0;
        assert_eq!(
            (deadline, waiting_for),
            (moved + SNAPSHOT_IDLE_TIMEOUT, "the next chunk to go")
        );
        progress.moved(SNAPSHOT_CHUNK_BYTES);
        progress.ended();
        let (deadline, waiting_for) = progress.deadline();
        let ended = progress.state.lock().unwrap().0;
        assert_eq!(deadline, ended + snapshot_timeout(2 * SNAPSHOT_CHUNK_BYTES as u64));
        assert!(waiting_for.contains("answer"), "{waiting_for}");
        // A deadline passed resolves at once.
        *progress.state.lock().unwrap() = (tokio::time::Instant::now() - SNAPSHOT_IDLE_TIMEOUT, 0, false);
        assert_eq!(overdue(&progress).await, "the next chunk to go");
    }

    /// A peer that answers each AppendEntries with a partial success naming the request's
    /// `prev_log_id`, so that an answer says which request it answers; on one call per
    /// connection, or (without it) one call each. The answer to the request whose
    /// `prev_log_id` index is `slow_index` comes after 300 ms.
    #[derive(Clone, Default)]
    struct EchoPeer {
        without_stream: bool,
        slow_index: Option<u64>,
        stream_calls: Arc<std::sync::atomic::AtomicUsize>,
        unary_calls: Arc<std::sync::atomic::AtomicUsize>,
    }

    impl EchoPeer {
        async fn answer(&self, request: pb::AppendEntriesRequest) -> pb::AppendEntriesResponse {
            let index = request.prev_log_id.as_ref().map(|id| id.index);
            if index.is_some() && index == self.slow_index {
                tokio::time::sleep(Duration::from_millis(300)).await;
            }
            pb::AppendEntriesResponse {
                result: Some(pb::append_entries_response::Result::PartialSuccess(
                    pb::PartialSuccess {
                        matching: request.prev_log_id,
                    },
                )),
            }
        }
    }

    #[tonic::async_trait]
    impl pb::raft_server::Raft for EchoPeer {
        async fn append_entries(
            &self,
            request: tonic::Request<pb::AppendEntriesRequest>,
        ) -> Result<tonic::Response<pb::AppendEntriesResponse>, tonic::Status> {
            self.unary_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            Ok(tonic::Response::new(self.answer(request.into_inner()).await))
        }

        type AppendEntriesStreamStream =
            futures::stream::BoxStream<'static, Result<pb::AppendEntriesResponse, tonic::Status>>;

        async fn append_entries_stream(
            &self,
            request: tonic::Request<tonic::Streaming<pb::AppendEntriesRequest>>,
        ) -> Result<tonic::Response<Self::AppendEntriesStreamStream>, tonic::Status> {
            if self.without_stream {
                return Err(tonic::Status::unimplemented("not here"));
            }
            self.stream_calls.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            let peer = self.clone();
            let answers = request.into_inner().then(move |request| {
                let peer = peer.clone();
                async move { Ok(peer.answer(request?).await) }
            });
            Ok(tonic::Response::new(answers.boxed()))
        }

        async fn vote(
            &self,
            _: tonic::Request<pb::VoteRequest>,
        ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn pre_vote(
            &self,
            _: tonic::Request<pb::VoteRequest>,
        ) -> Result<tonic::Response<pb::VoteResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn install_snapshot(
            &self,
            _: tonic::Request<tonic::Streaming<pb::SnapshotChunk>>,
        ) -> Result<tonic::Response<pb::InstallSnapshotResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn read_index(
            &self,
            _: tonic::Request<pb::ReadIndexRequest>,
        ) -> Result<tonic::Response<pb::ReadIndexResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }

        async fn transfer_leader(
            &self,
            _: tonic::Request<pb::TransferLeaderRequest>,
        ) -> Result<tonic::Response<pb::TransferLeaderResponse>, tonic::Status> {
            Err(tonic::Status::unimplemented("not in this test"))
        }
    }

    /// Serves `peer` on a port of its own; returns the connection a leader's replication uses.
    async fn connection_to(peer: EchoPeer) -> PeerConnection {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap().to_string();
        tokio::spawn(
            tonic::transport::Server::builder()
                .add_service(pb::raft_server::RaftServer::new(peer))
                .serve_with_incoming(tokio_stream::wrappers::TcpListenerStream::new(listener)),
        );
        let network = Network::new(None, None, ClusterIdentity::new(1, std::path::PathBuf::new(), None));
        network.peer(2, &BasicNode { addr }, Lane::Replication)
    }

    /// An entry-less AppendEntries whose `prev_log_id` is at `index`, and the answer [`EchoPeer`]
    /// gives it.
    fn request_at(index: u64) -> (AppendEntriesRequest<TypeConfig>, AppendEntriesResponse<TypeConfig>) {
        let at = crate::types::LogId::new(crate::types::LeaderId { term: 1, node_id: 1 }, index);
        let request = AppendEntriesRequest {
            vote: Vote::new_committed(1, 1),
            prev_log_id: Some(at),
            leader_commit: None,
            entries: Vec::new(),
        };
        (request, AppendEntriesResponse::PartialSuccess(Some(at)))
    }

    const ENOUGH: Duration = Duration::from_secs(5);

    #[tokio::test]
    async fn appends_go_on_one_call_and_each_gets_its_own_answer() {
        let peer = EchoPeer::default();
        let mut connection = connection_to(peer.clone()).await;
        for index in 1..=3 {
            let (request, answer) = request_at(index);
            assert_eq!(
                connection
                    .append_entries(request, RPCOption::new(ENOUGH))
                    .await
                    .unwrap(),
                answer
            );
        }
        assert_eq!(peer.stream_calls.load(std::sync::atomic::Ordering::SeqCst), 1);
        assert_eq!(peer.unary_calls.load(std::sync::atomic::Ordering::SeqCst), 0);
    }

    #[tokio::test]
    async fn a_peer_without_the_streamed_call_gets_one_call_per_append() {
        let peer = EchoPeer {
            without_stream: true,
            ..EchoPeer::default()
        };
        let mut connection = connection_to(peer.clone()).await;
        for index in 1..=3 {
            let (request, answer) = request_at(index);
            assert_eq!(
                connection
                    .append_entries(request, RPCOption::new(ENOUGH))
                    .await
                    .unwrap(),
                answer
            );
        }
        assert_eq!(peer.unary_calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test]
    async fn an_append_given_up_never_lends_its_late_answer_to_the_next() {
        let peer = EchoPeer {
            slow_index: Some(2),
            ..EchoPeer::default()
        };
        let mut connection = connection_to(peer.clone()).await;
        let (first, answer) = request_at(1);
        assert_eq!(
            connection.append_entries(first, RPCOption::new(ENOUGH)).await.unwrap(),
            answer
        );
        // Timed out here; and below, dropped by its caller before the answer came.
        let (slow, _) = request_at(2);
        assert!(connection
            .append_entries(slow, RPCOption::new(Duration::from_millis(50)))
            .await
            .is_err());
        let (next, answer) = request_at(3);
        assert_eq!(
            connection.append_entries(next, RPCOption::new(ENOUGH)).await.unwrap(),
            answer
        );
        let (slow, _) = request_at(2);
        let given_up = tokio::time::timeout(
            Duration::from_millis(50),
            connection.append_entries(slow, RPCOption::new(ENOUGH)),
        );
        assert!(given_up.await.is_err());
        let (next, answer) = request_at(4);
        assert_eq!(
            connection.append_entries(next, RPCOption::new(ENOUGH)).await.unwrap(),
            answer
        );
        assert_eq!(peer.stream_calls.load(std::sync::atomic::Ordering::SeqCst), 3);
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn no_snapshot_is_sent_to_a_peer_whose_last_call_went_unanswered() {
        let peer = EchoPeer {
            slow_index: Some(2),
            ..EchoPeer::default()
        };
        let mut connection = connection_to(peer).await;
        let dir = tempfile::tempdir().unwrap();
        let mut sm = a_snapshot(dir.path()).await;
        let mut send = async |connection: &mut PeerConnection| {
            let snapshot = Snapshot {
                meta: openraft::storage::RaftStateMachine::get_current_snapshot(&mut sm)
                    .await
                    .unwrap()
                    .unwrap()
                    .meta,
                snapshot: SnapshotData::Unwritten(unwritten(&mut sm).await),
            };
            let cancel = std::future::pending::<ReplicationClosed>();
            let option = RPCOption::new(ENOUGH);
            match connection
                .full_snapshot(Vote::new_committed(1, 1), snapshot, cancel, option)
                .await
            {
                Ok(_) => "sent".to_string(),
                Err(e) => e.to_string(),
            }
        };
        // A heartbeat the peer does not answer in time (it answers index 2 after 300 ms).
        let (late, _) = request_at(2);
        connection
            .append_entries(late, RPCOption::new(Duration::from_millis(50)))
            .await
            .unwrap_err();
        let refused = send(&mut connection).await;
        assert!(refused.contains("not sent"), "{refused}");
        // Answered again: the snapshot goes (this peer refuses it, after it was sent).
        let (answered, _) = request_at(1);
        connection
            .append_entries(answered, RPCOption::new(ENOUGH))
            .await
            .unwrap();
        let sent = send(&mut connection).await;
        assert!(sent.contains("not in this test"), "{sent}");
    }

    #[tokio::test]
    async fn heartbeats_replication_and_snapshots_travel_on_connections_of_their_own() {
        let identity = ClusterIdentity::new(1, std::path::PathBuf::new(), None);
        let network = Network::new(None, None, identity);
        for lane in [Lane::Replication, Lane::Heartbeat, Lane::Snapshot, Lane::Heartbeat] {
            network.client("127.0.0.1:7001", lane).unwrap();
        }
        network.client("127.0.0.1:7002", Lane::Replication).unwrap();
        assert_eq!(network.channels.lock().unwrap().len(), 4);
    }
}
