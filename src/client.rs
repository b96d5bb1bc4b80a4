//! The one client library for raftkv's public API, used by the CLI, the router and the tests.
//!
//! It exists so that leader discovery, retries and deadlines are done one way everywhere:
//! - a [`Client`] keeps one long-lived, lazily connecting HTTP/2 channel per address;
//! - the Kv requests of the tasks sharing a client that are ready together go to the server
//!   as one `KvBatch.Batch` call, each item with its own deadline and its own answer
//!   ([`crate::batch`]), unless the client was made with [`Client::new_unbatched`];
//! - every call has a deadline (the client's timeout, retries included), sent to the server
//!   (as the gRPC `grpc-timeout` header, or as a batch item's timeout), so nobody works on
//!   an answer no one waits for;
//! - an UNAVAILABLE answer that carries a leader hint (metadata [`LEADER_ID_METADATA`] and
//!   [`LEADER_ADDR_METADATA`]) sends the next attempt to the hinted address at once;
//! - a connection failure moves on to the next endpoint after a jittered backoff;
//! - every write carries a [`pb::WriteId`] (this client's random id and the next sequence
//!   number), and the state machine applies each write id at most once and answers a retry
//!   with the first result. So a write is retried like a read — after a broken connection or a
//!   leadership change too — and still takes effect exactly once; only when the deadline
//!   passes is its outcome unknown.
//!
//! It also holds the small helpers that servers share with clients: [`leader_hint`] and
//! [`unavailable`] (the two halves of the leader-hint convention), [`channel`], and the
//! classification of transport errors ([`is_connect_error`], [`is_transport_error`],
//! [`is_timeout`]).

use std::borrow::Borrow;
use std::collections::HashMap;
use std::error::Error as StdError;
use std::future::Future;
use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBuilder};
use bytes::Bytes;
use futures::future::Either;
use tokio::time::Instant;
use tonic::metadata::MetadataValue;
use tonic::transport::{Channel, Endpoint};
use tonic::{Code, Status};

use crate::batch::{Batchable, Batcher};
use crate::limits;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;

/// Metadata key of an UNAVAILABLE status that names the leader's node id (decimal).
pub const LEADER_ID_METADATA: &str = "raftkv-leader-id";
/// Metadata key of an UNAVAILABLE status that names the leader's address (HOST:PORT).
pub const LEADER_ADDR_METADATA: &str = "raftkv-leader-addr";

/// How long opening a TCP connection to a node may take before the attempt fails.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(1);
/// How often an open connection is probed with an HTTP/2 PING, even while idle, so that a
/// silently dead peer is noticed without waiting for a request to time out.
pub const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(1);
/// How long a PING may stay unanswered before the connection is declared dead.
pub const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(2);

/// The first pause between two attempts of one call; it doubles (plus jitter) up to
/// [`RETRY_MAX_DELAY`].
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(10);
/// The longest pause between two attempts of one call.
pub const RETRY_MAX_DELAY: Duration = Duration::from_millis(500);
/// Upper bound on the attempts of one call, whatever its deadline.
pub const MAX_ATTEMPTS_PER_CALL: usize = 200;
/// Leader hints followed in a row without pausing; past this the client backs off, so two
/// nodes with stale views pointing at each other cannot make it spin.
const MAX_HINT_HOPS_WITHOUT_PAUSE: usize = 3;
/// Channels cached for addresses that are not endpoints (leader hints, `status_of`).
const MAX_CACHED_CHANNELS: usize = 64;

/// Who leads the cluster, as said by a node that does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: u64,
    /// The leader's address, HOST:PORT.
    pub address: String,
}

/// Reads the leader hint from an UNAVAILABLE status, if it has one (both metadata keys,
/// well-formed). Other codes never carry a hint.
pub fn leader_hint(status: &Status) -> Option<LeaderHint> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let metadata = status.metadata();
    let id = metadata.get(LEADER_ID_METADATA)?.to_str().ok()?.trim().parse().ok()?;
    let address = metadata.get(LEADER_ADDR_METADATA)?.to_str().ok()?.trim();
    if address.is_empty() {
        return None;
    }
    Some(LeaderHint {
        id,
        address: address.to_string(),
    })
}

/// An UNAVAILABLE status with `message`, and with the leader hint metadata when the leader is
/// known. This is how a node (or the router) says "not me, ask there".
pub fn unavailable(message: impl Into<String>, leader: Option<&LeaderHint>) -> Status {
    let mut status = Status::unavailable(message);
    if let Some(leader) = leader {
        // An address that is not valid header text cannot be sent; then the hint is left off
        // entirely rather than sent half.
        if let (Ok(id), Ok(address)) = (
            MetadataValue::try_from(leader.id.to_string()),
            MetadataValue::try_from(leader.address.as_str()),
        ) {
            status.metadata_mut().insert(LEADER_ID_METADATA, id);
            status.metadata_mut().insert(LEADER_ADDR_METADATA, address);
        }
    }
    status
}

/// Checks that `address` is HOST:PORT (a non-empty host without a scheme, and a port number).
pub fn check_address(address: &str) -> Result<(), Error> {
    let invalid = |why: &str| {
        Err(Error::InvalidArgument(format!(
            "address {address:?} {why}; expected HOST:PORT, e.g. 127.0.0.1:7000"
        )))
    };
    let Some((host, port)) = address.rsplit_once(':') else {
        return invalid("has no port");
    };
    if host.is_empty() {
        return invalid("has no host");
    }
    if host.contains('/') || host.contains(char::is_whitespace) {
        return invalid("is not a host and port");
    }
    match port.parse::<u16>() {
        Ok(0) | Err(_) => invalid("has no valid port"),
        Ok(_) => Ok(()),
    }
}

/// A lazily connecting channel to HOST:PORT (plain HTTP/2): TCP_NODELAY, HTTP/2 keepalive
/// every [`KEEPALIVE_INTERVAL`] even while idle, and a [`CONNECT_TIMEOUT`]. Nothing is
/// connected until the first request, and a broken connection is re-opened by the next one.
pub fn channel(address: &str) -> Result<Channel, Error> {
    Ok(endpoint(address)?.connect_lazy())
}

/// The endpoint [`channel`] connects to, for callers that need to adjust it (a node binds
/// its outgoing connections to its own address, for example).
pub fn endpoint(address: &str) -> Result<Endpoint, Error> {
    check_address(address)?;
    Ok(Endpoint::from_shared(format!("http://{address}"))
        .map_err(|error| Error::InvalidArgument(format!("address {address:?}: {error}")))?
        .tcp_nodelay(true)
        .connect_timeout(CONNECT_TIMEOUT)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        .keep_alive_while_idle(true))
}

/// Whether the request behind `status` certainly never reached the server: the connection
/// could not be opened. Such a request, even a write, is safe to send again.
pub fn is_connect_error(status: &Status) -> bool {
    source_chain(status).any(|error| error.is::<tonic::ConnectError>())
}

/// Whether `status` was made by this side's transport (connection refused, reset, HTTP/2
/// error, local timeout) rather than sent by the server as a gRPC status.
pub fn is_transport_error(status: &Status) -> bool {
    status.source().is_some()
}

/// Whether `status` says the call's deadline passed: DEADLINE_EXCEEDED, or the CANCELLED that
/// tonic makes when a `grpc-timeout` expires (on either side of the connection).
pub fn is_timeout(status: &Status) -> bool {
    match status.code() {
        Code::DeadlineExceeded => true,
        Code::Cancelled => {
            status.message() == "Timeout expired"
                || source_chain(status).any(|error| error.is::<tonic::TimeoutExpired>())
        }
        _ => false,
    }
}

fn source_chain(status: &Status) -> impl Iterator<Item = &(dyn StdError + 'static)> {
    std::iter::successors(status.source(), |error| (*error).source())
}

/// The status's message on one line, with the transport's underlying causes appended
/// (tonic's own message for a refused connection is just "tcp connect error").
fn describe(status: &Status) -> String {
    let mut text = status.message().to_string();
    if text.is_empty() {
        text = status.code().description().to_string();
    }
    for cause in source_chain(status) {
        let cause = cause.to_string();
        if !cause.is_empty() && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    one_line(&text)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Why a call failed, by what the caller can do about it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Get of a key that does not exist (gRPC NOT_FOUND).
    #[error("key not found")]
    NotFound,
    /// The request is malformed: empty or oversized key or value, bad address
    /// (gRPC INVALID_ARGUMENT). Retrying cannot help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster could not serve the request (gRPC UNAVAILABLE), with the leader when known.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What went wrong, one line.
        message: String,
        /// Who leads, when the answering node said so.
        leader: Option<LeaderHint>,
    },
    /// The deadline passed (gRPC DEADLINE_EXCEEDED). For a write the outcome is unknown.
    #[error("timed out: {0}")]
    Timeout(String),
    /// Any other failure, as one line.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Maps a gRPC status to the error a caller acts on. Accepts a `Status` or a `&Status`.
    pub fn from_status(status: impl Borrow<Status>) -> Error {
        let status = status.borrow();
        if is_timeout(status) {
            return Error::Timeout(describe(status));
        }
        match status.code() {
            Code::NotFound => Error::NotFound,
            Code::InvalidArgument => Error::InvalidArgument(describe(status)),
            Code::Unavailable => Error::Unavailable {
                message: describe(status),
                leader: leader_hint(status),
            },
            code => Error::Other(format!("{}: {}", code.description(), describe(status))),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        Error::from_status(status)
    }
}

/// Whether a call may change state, which decides where it may be sent again.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum CallKind {
    /// Get, Scan: served by any node.
    Read,
    /// Put, Delete, CompareAndSwap: carries a write id, so a retry is applied at most once.
    Write,
}

/// What to do after an attempt failed.
#[derive(Debug, PartialEq)]
enum NextStep {
    /// Go to the hinted leader now.
    FollowHint(String),
    /// Pause, then try the next endpoint (this address did not answer).
    NextEndpoint,
    /// Pause, then try the same address again (it answered but cannot serve yet).
    SameAddress,
    /// Give up with this error.
    Fail(Error),
}

/// Decides whether and where a failed attempt of `kind` that was sent to `tried` is retried.
fn next_step(status: &Status, kind: CallKind, tried: &str) -> NextStep {
    if is_timeout(status) {
        return NextStep::Fail(Error::from_status(status));
    }
    if is_transport_error(status) {
        // Reads are free to repeat and writes carry a write id: either way, try elsewhere.
        let _ = kind;
        return NextStep::NextEndpoint;
    }
    if status.code() == Code::Aborted {
        // A leader lost its leadership with the write in flight: its outcome is decided by the
        // next leader, which will answer the retry (same write id) with the first result.
        return match leader_hint(status) {
            Some(hint) if hint.address != tried => NextStep::FollowHint(hint.address),
            _ => NextStep::NextEndpoint,
        };
    }
    if status.code() == Code::Unavailable {
        // Sent by a node (or router) that refused to start the request: nothing was applied.
        return match leader_hint(status) {
            Some(hint) if hint.address != tried => NextStep::FollowHint(hint.address),
            _ => NextStep::SameAddress,
        };
    }
    NextStep::Fail(Error::from_status(status))
}

/// One server (router or node) as a client reaches it: its channel, and (unless the client
/// was made with [`Client::new_unbatched`]) the batcher that sends the Kv requests of all the
/// client's tasks that are ready together as one `KvBatch.Batch` call over it (see
/// [`crate::batch`]).
#[derive(Clone)]
struct Server {
    channel: Channel,
    batcher: Option<Batcher>,
    /// Set once the server answered a batch with UNIMPLEMENTED (a raftkv-router from before
    /// it took batches): its requests then go one call each.
    takes_no_batches: Arc<AtomicBool>,
}

impl Server {
    fn new(address: &str, batching: bool) -> Result<Server, Error> {
        let channel = channel(address)?;
        Ok(Server {
            batcher: batching.then(|| Batcher::start(channel.clone())),
            channel,
            takes_no_batches: Arc::default(),
        })
    }

    /// Whether requests to this server go in batches now.
    fn batching(&self) -> bool {
        self.batcher.is_some() && !self.takes_no_batches.load(Ordering::Relaxed)
    }

    /// After a batch was answered UNIMPLEMENTED: from now on, one call per request.
    fn stop_batching(&self) {
        if !self.takes_no_batches.swap(true, Ordering::Relaxed) {
            tracing::info!("the server takes no KvBatch calls; sending it one call per request");
        }
    }

    /// Sends `request`, which the server must answer within `time_left`: in the next batch, or
    /// without batching (or to a server that takes none) as its own call, made by `direct`.
    fn send<R, D, F>(
        &self,
        request: R,
        time_left: Duration,
        direct: D,
    ) -> impl Future<Output = Result<tonic::Response<R::Reply>, Status>>
    where
        R: Batchable,
        R::Reply: Send,
        D: FnOnce(KvClient<Channel>, tonic::Request<R>) -> F,
        F: Future<Output = Result<tonic::Response<R::Reply>, Status>>,
    {
        match &self.batcher {
            Some(batcher) if self.batching() => Either::Left(batcher.call(request, time_left)),
            _ => {
                let mut request = tonic::Request::new(request);
                request.set_timeout(time_left);
                Either::Right(direct(KvClient::new(self.channel.clone()), request))
            }
        }
    }
}

/// A raftkv client: cheap to clone (clones share channels and what was learnt about the
/// leader), one long-lived channel per address.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    endpoints: Vec<String>,
    timeout: Duration,
    servers: Mutex<HashMap<String, Server>>,
    /// Where the next call goes first: the last address that answered or that a hint named.
    target: Mutex<String>,
    write_ids: WriteIds,
    /// Whether Kv requests go in batches (see [`Server`]).
    batching: bool,
}

/// Hands out write ids for one client: a random client id, so that clients need no
/// registration, and sequence numbers from 1 up.
#[derive(Debug)]
pub struct WriteIds {
    client_id: u64,
    last_sequence: AtomicU64,
}

impl Default for WriteIds {
    fn default() -> Self {
        WriteIds {
            client_id: random_client_id(),
            last_sequence: AtomicU64::new(0),
        }
    }
}

impl WriteIds {
    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The next write id.
    pub fn next(&self) -> pb::WriteId {
        pb::WriteId {
            client_id: self.client_id,
            sequence: self.last_sequence.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

/// A random 64-bit client id, from the standard library's per-process random hasher keys,
/// mixed with the time and process id so that two processes never share one in practice.
fn random_client_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}

impl std::fmt::Debug for Client {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Client")
            .field("endpoints", &self.shared.endpoints)
            .field("timeout", &self.shared.timeout)
            .finish_non_exhaustive()
    }
}

impl Client {
    /// endpoints: one or more HOST:PORT (router or nodes). `timeout` bounds each call incl. retries.
    ///
    /// Connects nothing yet, but must be called inside a Tokio runtime (each channel starts a
    /// background task).
    ///
    /// The Kv requests of tasks sharing this client (or its clones) that are ready at the same
    /// moment go to the server as one `KvBatch.Batch` call, each with its own deadline and its
    /// own answer: under concurrency this costs the client, the router and the nodes far less
    /// than a call each (see BENCHMARKS.md).
    pub fn new(endpoints: Vec<String>, timeout: std::time::Duration) -> Result<Client, Error> {
        Client::build(endpoints, timeout, true)
    }

    /// As [`Client::new`], but every Kv request is a call of its own, as it would be from
    /// separate processes.
    pub fn new_unbatched(endpoints: Vec<String>, timeout: std::time::Duration) -> Result<Client, Error> {
        Client::build(endpoints, timeout, false)
    }

    fn build(endpoints: Vec<String>, timeout: Duration, batching: bool) -> Result<Client, Error> {
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoint given".to_string()));
        }
        if timeout.is_zero() {
            return Err(Error::InvalidArgument("the timeout must be more than zero".to_string()));
        }
        let mut servers = HashMap::new();
        for address in &endpoints {
            servers.insert(address.clone(), Server::new(address, batching)?);
        }
        let first = endpoints[0].clone();
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints,
                timeout,
                servers: Mutex::new(servers),
                target: Mutex::new(first),
                write_ids: WriteIds::default(),
                batching,
            }),
        })
    }

    /// This client's id, as its write ids carry it.
    pub fn client_id(&self) -> u64 {
        self.shared.write_ids.client_id()
    }

    /// A new write id: this client's id and the next sequence number.
    pub fn next_write_id(&self) -> pb::WriteId {
        self.shared.write_ids.next()
    }

    /// The endpoints this client was made with.
    pub fn endpoints(&self) -> &[String] {
        &self.shared.endpoints
    }

    /// The bound on each call, retries included.
    pub fn timeout(&self) -> Duration {
        self.shared.timeout
    }

    /// Writes `value` under `key`.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<pb::PutResponse, Error> {
        limits::check_key(&key).map_err(Error::InvalidArgument)?;
        limits::check_value(&value).map_err(Error::InvalidArgument)?;
        let request = pb::PutRequest {
            key,
            value,
            write_id: Some(self.next_write_id()),
        };
        self.call(CallKind::Write, move |server, time_left| {
            server.send(request.clone(), time_left, |mut kv, request| async move {
                kv.put(request).await
            })
        })
        .await
    }

    /// Reads `key`; [`Error::NotFound`] when it does not exist.
    pub async fn get(&self, key: Bytes, consistency: pb::Consistency) -> Result<pb::GetResponse, Error> {
        limits::check_key(&key).map_err(Error::InvalidArgument)?;
        let request = pb::GetRequest {
            key,
            consistency: consistency as i32,
        };
        self.call(CallKind::Read, move |server, time_left| {
            server.send(request.clone(), time_left, |mut kv, request| async move {
                kv.get(request).await
            })
        })
        .await
    }

    /// Deletes `key`; the answer says whether it existed.
    pub async fn delete(&self, key: Bytes) -> Result<pb::DeleteResponse, Error> {
        self.delete_with(key, None).await
    }

    /// Deletes `key` only if its value is `expect`; the answer says whether it did, and what it
    /// found when it did not.
    pub async fn delete_if(&self, key: Bytes, expect: Bytes) -> Result<pb::DeleteResponse, Error> {
        limits::check_value(&expect).map_err(Error::InvalidArgument)?;
        self.delete_with(key, Some(expect)).await
    }

    async fn delete_with(&self, key: Bytes, expect: Option<Bytes>) -> Result<pb::DeleteResponse, Error> {
        limits::check_key(&key).map_err(Error::InvalidArgument)?;
        let request = pb::DeleteRequest {
            key,
            write_id: Some(self.next_write_id()),
            expect,
        };
        self.call(CallKind::Write, move |server, time_left| {
            server.send(request.clone(), time_left, |mut kv, request| async move {
                kv.delete(request).await
            })
        })
        .await
    }

    /// Sets `key` to `new_value` only if it now holds `expect` (`None`: only if it is absent).
    /// The answer says whether it swapped, and what it found when it did not.
    pub async fn compare_and_swap(
        &self,
        key: Bytes,
        expect: Option<Bytes>,
        new_value: Bytes,
    ) -> Result<pb::CompareAndSwapResponse, Error> {
        limits::check_key(&key).map_err(Error::InvalidArgument)?;
        if let Some(expect) = &expect {
            limits::check_value(expect).map_err(Error::InvalidArgument)?;
        }
        limits::check_value(&new_value).map_err(Error::InvalidArgument)?;
        let request = pb::CompareAndSwapRequest {
            key,
            expect,
            new_value,
            write_id: Some(self.next_write_id()),
        };
        self.call(CallKind::Write, move |server, time_left| {
            server.send(request.clone(), time_left, |mut kv, request| async move {
                kv.compare_and_swap(request).await
            })
        })
        .await
    }

    /// Up to `limit` keys under `prefix` (which may be empty: all keys) in key order, starting
    /// after `start_after` (empty: from the first); `more` in the answer says whether there is
    /// a next page. `limit` 0 means the server's default.
    pub async fn scan(
        &self,
        prefix: Bytes,
        start_after: Bytes,
        limit: u32,
        consistency: pb::Consistency,
    ) -> Result<pb::ScanResponse, Error> {
        if !prefix.is_empty() {
            limits::check_key(&prefix).map_err(Error::InvalidArgument)?;
        }
        let request = pb::ScanRequest {
            prefix,
            limit,
            consistency: consistency as i32,
            start_after,
        };
        self.call(CallKind::Read, move |server, time_left| {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(time_left);
            let channel = server.channel.clone();
            async move { KvClient::new(channel).scan(request).await }
        })
        .await
    }

    /// Status of the node at `address` (any HOST:PORT, need not be one of the endpoints).
    /// One attempt, bounded by the client's timeout: a node that does not answer is reported
    /// as such rather than waited for.
    pub async fn status_of(&self, address: &str) -> Result<pb::NodeStatus, Error> {
        let channel = self.channel_for(address)?;
        let deadline = Instant::now() + self.shared.timeout;
        status_once(channel, deadline).await
    }

    /// Status from the first endpoint that answers.
    pub async fn status(&self) -> Result<pb::NodeStatus, Error> {
        let deadline = Instant::now() + self.shared.timeout;
        let mut last_error = None;
        for address in &self.shared.endpoints {
            if Instant::now() >= deadline {
                break;
            }
            match status_once(self.channel_for(address)?, deadline).await {
                Ok(status) => return Ok(status),
                Err(error) => last_error = Some(format!("{address}: {error}")),
            }
        }
        Err(Error::Unavailable {
            message: format!(
                "no endpoint answered within {}: {}",
                humanize(self.shared.timeout),
                last_error.unwrap_or_else(|| "no attempt was made".to_string())
            ),
            leader: None,
        })
    }

    /// The stream of status changes of the node at `address` (Cluster.WatchStatus): its
    /// status now, then one whenever it changes. No deadline: it lasts until the node stops
    /// or the stream is dropped.
    pub async fn watch_status_of(&self, address: &str) -> Result<tonic::Streaming<pb::NodeStatus>, Error> {
        let channel = self.channel_for(address)?;
        let response = ClusterClient::new(channel)
            .watch_status(pb::StatusRequest {})
            .await
            .map_err(Error::from_status)?;
        Ok(response.into_inner())
    }

    /// The cached channel for `address`, opened (lazily) on first use.
    fn channel_for(&self, address: &str) -> Result<Channel, Error> {
        Ok(self.server(address)?.channel)
    }

    /// The cached channel and batcher for `address`, made on first use.
    fn server(&self, address: &str) -> Result<Server, Error> {
        let mut servers = self.shared.servers.lock().unwrap_or_else(|poison| poison.into_inner());
        if let Some(server) = servers.get(address) {
            return Ok(server.clone());
        }
        let new_server = Server::new(address, self.shared.batching)?;
        if servers.len() >= self.shared.endpoints.len() + MAX_CACHED_CHANNELS {
            let endpoints = &self.shared.endpoints;
            servers.retain(|cached, _| endpoints.contains(cached));
        }
        servers.insert(address.to_string(), new_server.clone());
        Ok(new_server)
    }

    fn target(&self) -> String {
        self.shared
            .target
            .lock()
            .unwrap_or_else(|poison| poison.into_inner())
            .clone()
    }

    fn set_target(&self, address: String) {
        *self.shared.target.lock().unwrap_or_else(|poison| poison.into_inner()) = address;
    }

    /// Moves the target to the endpoint after `failed` (or the first one when `failed` is not an
    /// endpoint, e.g. a hinted leader that has died), unless another call already moved it.
    fn move_past(&self, failed: &str) {
        let endpoints = &self.shared.endpoints;
        let next = match endpoints.iter().position(|address| address == failed) {
            Some(index) => endpoints[(index + 1) % endpoints.len()].clone(),
            None => endpoints[0].clone(),
        };
        let mut target = self.shared.target.lock().unwrap_or_else(|poison| poison.into_inner());
        if *target == failed {
            *target = next;
        }
    }

    /// Runs `attempt` until it succeeds, fails for good, or the deadline passes; see the module
    /// documentation for the rules. `attempt` gets the server to send to and the time left.
    async fn call<T, A, F>(&self, kind: CallKind, attempt: A) -> Result<T, Error>
    where
        A: Fn(&Server, Duration) -> F,
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.shared.timeout;
        let mut pauses = retry_backoff();
        let mut hint_hops = 0;
        let mut last_error: Option<Error> = None;
        for _ in 0..MAX_ATTEMPTS_PER_CALL {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let address = self.target();
            let server = self.server(&address)?;
            let batched = server.batching();
            let status = match tokio::time::timeout_at(deadline, attempt(&server, deadline - now)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_elapsed) => break,
            };
            if batched && status.code() == Code::Unimplemented {
                // A server from before KvBatch (nothing was served): send it again on its own.
                server.stop_batching();
                continue;
            }
            let step = next_step(&status, kind, &address);
            tracing::debug!(%address, code = ?status.code(), message = status.message(), ?step, "attempt failed");
            match step {
                NextStep::Fail(error) => return Err(error),
                NextStep::FollowHint(leader) if hint_hops < MAX_HINT_HOPS_WITHOUT_PAUSE => {
                    hint_hops += 1;
                    self.set_target(leader);
                    last_error = Some(Error::from_status(&status));
                    continue;
                }
                NextStep::FollowHint(leader) => self.set_target(leader),
                NextStep::NextEndpoint => self.move_past(&address),
                NextStep::SameAddress => {}
            }
            hint_hops = 0;
            last_error = Some(Error::from_status(&status));
            let pause = pauses.next().unwrap_or(RETRY_MAX_DELAY);
            tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
        }
        Err(Error::Timeout(match last_error {
            Some(error) => format!(
                "no answer within {}; last error: {error}",
                humanize(self.shared.timeout)
            ),
            None => format!("no answer within {}", humanize(self.shared.timeout)),
        }))
    }
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit, H M S m u n (hours, minutes,
/// seconds, milliseconds, microseconds, nanoseconds). None when malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(amount * 3600)),
        "M" => Some(Duration::from_secs(amount * 60)),
        "S" => Some(Duration::from_secs(amount)),
        "m" => Some(Duration::from_millis(amount)),
        "u" => Some(Duration::from_micros(amount)),
        "n" => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

/// One Cluster.Status call that must be answered by `deadline`.
async fn status_once(channel: Channel, deadline: Instant) -> Result<pb::NodeStatus, Error> {
    let time_left = deadline.saturating_duration_since(Instant::now());
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(time_left);
    match tokio::time::timeout_at(deadline, ClusterClient::new(channel).status(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(Error::from_status(status)),
        Err(_elapsed) => Err(Error::Timeout(format!("no answer within {}", humanize(time_left)))),
    }
}

/// The pauses between attempts: exponential from [`RETRY_MIN_DELAY`] to [`RETRY_MAX_DELAY`],
/// jittered so that many clients retrying at once do not arrive in step.
pub fn retry_backoff() -> impl Iterator<Item = Duration> {
    ExponentialBuilder::new()
        .with_min_delay(RETRY_MIN_DELAY)
        .with_max_delay(RETRY_MAX_DELAY)
        .with_factor(2.0)
        .with_jitter()
        .without_max_times()
        .build()
}

fn humanize(duration: Duration) -> String {
    if duration.subsec_millis() == 0 && duration.as_secs() > 0 {
        format!("{}s", duration.as_secs())
    } else {
        format!("{}ms", duration.as_millis())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(id: u64, address: &str) -> LeaderHint {
        LeaderHint {
            id,
            address: address.to_string(),
        }
    }

    #[test]
    fn leader_hint_survives_a_round_trip_through_status_metadata() {
        let leader = hint(2, "127.0.0.1:7002");
        let status = unavailable("not the leader", Some(&leader));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "not the leader");
        assert_eq!(leader_hint(&status), Some(leader));
    }

    #[test]
    fn leader_hint_survives_the_wire_encoding_of_a_status() {
        let leader = hint(3, "node-3.example:7003");
        let response = unavailable("no", Some(&leader)).into_http::<()>();
        let decoded = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(leader_hint(&decoded), Some(leader));
    }

    #[test]
    fn unavailable_without_a_leader_has_no_hint() {
        assert_eq!(leader_hint(&unavailable("no leader yet", None)), None);
    }

    #[test]
    fn malformed_or_partial_hint_metadata_is_no_hint() {
        let mut status = Status::unavailable("x");
        status.metadata_mut().insert(LEADER_ID_METADATA, "two".parse().unwrap());
        status
            .metadata_mut()
            .insert(LEADER_ADDR_METADATA, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(leader_hint(&status), None);

        let mut status = Status::unavailable("x");
        status.metadata_mut().insert(LEADER_ID_METADATA, "2".parse().unwrap());
        assert_eq!(leader_hint(&status), None);
    }

    #[test]
    fn only_unavailable_carries_a_hint() {
        let mut status = Status::not_found("x");
        status.metadata_mut().insert(LEADER_ID_METADATA, "2".parse().unwrap());
        status
            .metadata_mut()
            .insert(LEADER_ADDR_METADATA, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(leader_hint(&status), None);
    }

    #[test]
    fn status_codes_map_to_the_errors_callers_act_on() {
        assert!(matches!(
            Error::from_status(Status::not_found("no such key")),
            Error::NotFound
        ));
        match Error::from_status(Status::invalid_argument("key is empty")) {
            Error::InvalidArgument(message) => assert_eq!(message, "key is empty"),
            other => panic!("{other:?}"),
        }
        let leader = hint(1, "127.0.0.1:7001");
        match Error::from(unavailable("not the leader", Some(&leader))) {
            Error::Unavailable {
                message,
                leader: Some(got),
            } => {
                assert_eq!(message, "not the leader");
                assert_eq!(got, leader);
            }
            other => panic!("{other:?}"),
        }
        let late = Status::deadline_exceeded("late");
        assert!(
            matches!(Error::from_status(&late), Error::Timeout(_)),
            "a &Status maps too"
        );
        assert_eq!(late.code(), Code::DeadlineExceeded);
        assert!(matches!(
            Error::from_status(Status::cancelled("Timeout expired")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from_status(Status::cancelled("client went away")),
            Error::Other(_)
        ));
        match Error::from_status(Status::internal("disk on fire\nline two")) {
            Error::Other(message) => assert_eq!(message, "Internal error: disk on fire line two"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_are_one_readable_line() {
        let error = Error::from_status(Status::unavailable("no leader\nyet"));
        assert_eq!(error.to_string(), "unavailable: no leader yet");
        assert_eq!(Error::NotFound.to_string(), "key not found");
    }

    #[test]
    fn grpc_timeout_values_in_every_unit_are_understood() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_refused() {
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", " 5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

    #[test]
    fn addresses_must_be_host_and_port() {
        for good in ["127.0.0.1:7000", "localhost:1", "[::1]:7000", "node-1.example:65535"] {
            assert!(check_address(good).is_ok(), "{good}");
        }
        for bad in [
            "notanaddress",
            ":7000",
            "127.0.0.1:",
            "127.0.0.1:0",
            "127.0.0.1:70000",
            "http://h:1",
            "a b:1",
        ] {
            assert!(matches!(check_address(bad), Err(Error::InvalidArgument(_))), "{bad}");
        }
    }

    #[test]
    fn server_unavailable_with_a_hint_elsewhere_is_followed_at_once() {
        let status = unavailable("not the leader", Some(&hint(2, "127.0.0.1:7002")));
        assert_eq!(
            next_step(&status, CallKind::Write, "127.0.0.1:7001"),
            NextStep::FollowHint("127.0.0.1:7002".to_string())
        );
        // A hint naming the address just tried is stale: wait and ask again.
        let aborted = Status::aborted("leadership changed");
        assert_eq!(next_step(&aborted, CallKind::Write, "a:1"), NextStep::NextEndpoint);
        assert_eq!(
            next_step(&status, CallKind::Write, "127.0.0.1:7002"),
            NextStep::SameAddress
        );
        assert_eq!(
            next_step(&unavailable("no leader", None), CallKind::Write, "a:1"),
            NextStep::SameAddress
        );
    }

    #[test]
    fn not_found_and_invalid_argument_are_not_retried() {
        assert!(matches!(
            next_step(&Status::not_found("x"), CallKind::Read, "a:1"),
            NextStep::Fail(Error::NotFound)
        ));
        assert!(matches!(
            next_step(&Status::invalid_argument("x"), CallKind::Write, "a:1"),
            NextStep::Fail(Error::InvalidArgument(_))
        ));
    }

    #[test]
    fn backoff_pauses_grow_but_stay_bounded() {
        let pauses: Vec<Duration> = retry_backoff().take(20).collect();
        assert_eq!(pauses.len(), 20);
        assert!(pauses.iter().all(|pause| *pause <= RETRY_MAX_DELAY * 2), "{pauses:?}");
        assert!(pauses[0] < Duration::from_millis(100));
    }

    #[tokio::test]
    async fn invalid_key_is_refused_without_sending_anything() {
        // Port 9 (discard) is never a raftkv node: if a request were sent, this would fail
        // with Unavailable or Timeout, not InvalidArgument.
        let client = Client::new(vec!["127.0.0.1:9".to_string()], Duration::from_secs(1)).unwrap();
        let error = client.put(Bytes::new(), Bytes::from_static(b"v")).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
        let big = Bytes::from(vec![0u8; limits::MAX_VALUE_BYTES + 1]);
        let error = client.put(Bytes::from_static(b"k"), big).await.unwrap_err();
        assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    }

    #[test]
    fn client_needs_endpoints_that_are_addresses() {
        assert!(Client::new(vec![], Duration::from_secs(1)).is_err());
        assert!(Client::new(vec!["nope".to_string()], Duration::from_secs(1)).is_err());
    }

    /// The client against in-process fake nodes on loopback ports: hint following, endpoint
    /// rotation, refused connections.
    mod against_fake_nodes {
        use super::*;
        use std::net::SocketAddr;
        use std::sync::atomic::{AtomicUsize, Ordering};
        use tokio::net::TcpListener;
        use tokio::sync::oneshot;

        /// A Kv server that accepts every write, or refuses them all pointing at a leader.
        #[derive(Clone)]
        struct FakeNode {
            refuse_with_hint: Option<LeaderHint>,
            /// When set, a put is answered only once this is notified.
            hold_puts: Option<Arc<tokio::sync::Notify>>,
            puts: Arc<AtomicUsize>,
            batches: Arc<AtomicUsize>,
        }

        /// Each item is served by the fake's Kv methods.
        #[tonic::async_trait]
        impl pb::kv_batch_server::KvBatch for FakeNode {
            async fn batch(
                &self,
                request: tonic::Request<pb::BatchRequest>,
            ) -> Result<tonic::Response<pb::BatchResponse>, Status> {
                self.batches.fetch_add(1, Ordering::SeqCst);
                crate::batch::serve_as_calls(self, request.into_inner().items)
                    .await
                    .map(tonic::Response::new)
            }
        }

        #[tonic::async_trait]
        impl pb::kv_server::Kv for FakeNode {
            async fn put(
                &self,
                request: tonic::Request<pb::PutRequest>,
            ) -> Result<tonic::Response<pb::PutResponse>, Status> {
                assert!(request.metadata().get("grpc-timeout").is_some(), "the deadline is sent");
                if let Some(leader) = &self.refuse_with_hint {
                    return Err(unavailable("not the leader", Some(leader)));
                }
                if let Some(hold) = &self.hold_puts {
                    hold.notified().await;
                }
                self.puts.fetch_add(1, Ordering::SeqCst);
                Ok(tonic::Response::new(pb::PutResponse::default()))
            }
            async fn get(&self, _: tonic::Request<pb::GetRequest>) -> Result<tonic::Response<pb::GetResponse>, Status> {
                Err(Status::not_found("no such key"))
            }
            async fn delete(
                &self,
                _: tonic::Request<pb::DeleteRequest>,
            ) -> Result<tonic::Response<pb::DeleteResponse>, Status> {
                Err(Status::invalid_argument("bad key"))
            }
            async fn compare_and_swap(
                &self,
                _: tonic::Request<pb::CompareAndSwapRequest>,
            ) -> Result<tonic::Response<pb::CompareAndSwapResponse>, Status> {
                Err(Status::unimplemented("not in this fake"))
            }
            async fn scan(
                &self,
                _: tonic::Request<pb::ScanRequest>,
            ) -> Result<tonic::Response<pb::ScanResponse>, Status> {
                Err(Status::unimplemented("not in this fake"))
            }
        }

        /// A running fake node; stops when dropped.
        struct RunningNode {
            address: String,
            puts: Arc<AtomicUsize>,
            batches: Arc<AtomicUsize>,
            _stop: oneshot::Sender<()>,
        }

        async fn start(refuse_with_hint: Option<LeaderHint>) -> RunningNode {
            start_with(refuse_with_hint, None, true).await
        }

        /// `serve_batches`: false for a server from before `KvBatch`.
        async fn start_with(
            refuse_with_hint: Option<LeaderHint>,
            hold_puts: Option<Arc<tokio::sync::Notify>>,
            serve_batches: bool,
        ) -> RunningNode {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address = listener.local_addr().unwrap().to_string();
            let node = FakeNode {
                refuse_with_hint,
                hold_puts,
                puts: Arc::default(),
                batches: Arc::default(),
            };
            let (puts, batches) = (node.puts.clone(), node.batches.clone());
            let (stop, stopped) = oneshot::channel();
            tokio::spawn(
                tonic::transport::Server::builder()
                    .add_service(pb::kv_server::KvServer::new(node.clone()))
                    .add_optional_service(serve_batches.then(|| pb::kv_batch_server::KvBatchServer::new(node)))
                    .serve_with_incoming_shutdown(tokio_stream::wrappers::TcpListenerStream::new(listener), async {
                        let _ = stopped.await;
                    }),
            );
            RunningNode {
                address,
                puts,
                batches,
                _stop: stop,
            }
        }

        /// An address on which nothing listens (bound, then released).
        async fn closed_address() -> String {
            let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
            let address: SocketAddr = listener.local_addr().unwrap();
            drop(listener);
            address.to_string()
        }

        #[tokio::test]
        async fn write_to_a_follower_follows_the_leader_hint() {
            let leader = start(None).await;
            let follower = start(Some(hint(1, &leader.address))).await;
            let client = Client::new(vec![follower.address.clone()], Duration::from_secs(5)).unwrap();
            client
                .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
                .await
                .unwrap();
            assert_eq!(leader.puts.load(Ordering::SeqCst), 1);
            assert_eq!(follower.puts.load(Ordering::SeqCst), 0);
            // The leader is remembered: the next write goes straight there.
            assert_eq!(client.target(), leader.address);
        }

        #[tokio::test]
        async fn refused_connection_is_a_connect_error_and_the_next_endpoint_is_tried() {
            let dead = closed_address().await;
            let status = KvClient::new(channel(&dead).unwrap())
                .put(pb::PutRequest {
                    key: Bytes::from_static(b"k"),
                    ..Default::default()
                })
                .await
                .unwrap_err();
            assert!(is_connect_error(&status), "{status:?}");
            assert!(is_transport_error(&status));
            assert!(matches!(Error::from_status(&status), Error::Unavailable { .. }));

            let live = start(None).await;
            let client = Client::new(vec![dead, live.address.clone()], Duration::from_secs(5)).unwrap();
            client
                .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
                .await
                .unwrap();
            assert_eq!(live.puts.load(Ordering::SeqCst), 1);
        }

        #[tokio::test]
        async fn nothing_listening_ends_in_a_timeout_naming_the_last_error() {
            let client = Client::new(vec![closed_address().await], Duration::from_millis(300)).unwrap();
            match client
                .get(Bytes::from_static(b"k"), pb::Consistency::Linearizable)
                .await
            {
                Err(Error::Timeout(message)) => {
                    assert!(message.contains("300ms"), "{message}");
                    assert!(message.contains("connect"), "{message}");
                }
                other => panic!("{other:?}"),
            }
        }

        #[tokio::test]
        async fn not_found_and_invalid_argument_come_back_unchanged() {
            let node = start(None).await;
            let client = Client::new(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
            let error = client
                .get(Bytes::from_static(b"k"), pb::Consistency::Stale)
                .await
                .unwrap_err();
            assert_eq!(error, Error::NotFound);
            let error = client.delete(Bytes::from_static(b"k")).await.unwrap_err();
            assert_eq!(error, Error::InvalidArgument("bad key".to_string()));
        }

        #[tokio::test(flavor = "current_thread")]
        async fn requests_of_tasks_sharing_a_client_go_together_each_with_its_own_answer() {
            let node = start(None).await;
            let client = Client::new(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
            let puts: Vec<_> = (0..64)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move { client.put(Bytes::from_static(b"k"), Bytes::from_static(b"v")).await })
                })
                .collect();
            let gets: Vec<_> = (0..8)
                .map(|_| {
                    let client = client.clone();
                    tokio::spawn(async move { client.get(Bytes::from_static(b"k"), pb::Consistency::Stale).await })
                })
                .collect();
            for put in puts {
                put.await.unwrap().unwrap();
            }
            for get in gets {
                assert_eq!(get.await.unwrap().unwrap_err(), Error::NotFound);
            }
            assert_eq!(node.puts.load(Ordering::SeqCst), 64);
            let calls = node.batches.load(Ordering::SeqCst);
            assert!(calls < 64, "72 concurrent requests took {calls} calls");
        }

        #[tokio::test]
        async fn an_unbatched_client_sends_each_request_as_its_own_call() {
            let node = start(None).await;
            let client = Client::new_unbatched(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
            client
                .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
                .await
                .unwrap();
            let error = client.delete(Bytes::from_static(b"k")).await.unwrap_err();
            assert_eq!(error, Error::InvalidArgument("bad key".to_string()));
            assert_eq!(node.puts.load(Ordering::SeqCst), 1);
            assert_eq!(node.batches.load(Ordering::SeqCst), 0);
        }

        #[tokio::test(flavor = "current_thread")]
        async fn a_read_sent_with_a_write_is_not_held_up_by_it() {
            let hold = Arc::new(tokio::sync::Notify::new());
            let node = start_with(None, Some(hold.clone()), true).await;
            let client = Client::new(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
            let put = tokio::spawn({
                let client = client.clone();
                async move { client.put(Bytes::from_static(b"k"), Bytes::from_static(b"v")).await }
            });
            let get = tokio::spawn({
                let client = client.clone();
                async move { client.get(Bytes::from_static(b"k"), pb::Consistency::Stale).await }
            });
            let answer = tokio::time::timeout(Duration::from_secs(3), get)
                .await
                .expect("the read is answered while the write is still held");
            assert_eq!(answer.unwrap().unwrap_err(), Error::NotFound);
            assert!(!put.is_finished());
            hold.notify_one();
            put.await.unwrap().unwrap();
        }

        #[tokio::test]
        async fn a_server_that_takes_no_batches_gets_one_call_per_request() {
            let node = start_with(None, None, false).await;
            let client = Client::new(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
            for _ in 0..2 {
                client
                    .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
                    .await
                    .unwrap();
            }
            assert_eq!(node.puts.load(Ordering::SeqCst), 2);
        }
    }
}
