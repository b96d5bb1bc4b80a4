//! The one client library for raftkv's public API, used by the CLI, the router and the tests.
//!
//! It exists so that leader discovery, retries and deadlines are done one way everywhere:
//! - a [`Client`] keeps one long-lived, lazily connecting HTTP/2 connection per address
//!   (`connection.rs`);
//! - the Kv requests of the tasks sharing a client that are ready together go to the server
//!   as one `KvBatch.Batch` call, each item with its own deadline and its own answer
//!   ([`crate::batch`]), unless the client was made with [`Client::new_unbatched`];
//! - every call has a deadline (the client's timeout, retries included), sent to the server
//!   (as the gRPC `grpc-timeout` header, or as a batch item's timeout), so nobody works on
//!   an answer no one waits for;
//! - a failed attempt is retried by the rules of [`retry`], shared with the router: an
//!   UNAVAILABLE answer that carries a leader hint ([`crate::wire::leader_hint`]) sends the
//!   next attempt to the hinted address at once; a connection failure moves on to the next
//!   endpoint after a jittered backoff;
//! - every write carries a [`pb::WriteId`] ([`WriteIds`]: this client's random id and the
//!   next sequence number), and the state machine applies each write id at most once and
//!   answers a retry with the first result. So a write is retried like a read — after a
//!   broken connection or a leadership change too — and still takes effect exactly once; only
//!   when the deadline passes is its outcome unknown.

mod backup;
mod connection;
mod error;
mod members;
pub mod retry;
#[cfg(test)]
mod tests;
mod write_ids;

use std::collections::HashMap;
use std::future::Future;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::Status;

pub use self::connection::{channel, check_address, endpoint, CONNECT_TIMEOUT, KEEPALIVE_INTERVAL, KEEPALIVE_TIMEOUT};
pub use self::error::Error;
pub use self::write_ids::WriteIds;

use self::connection::Connection;
use self::retry::{Backoff, Retry, MAX_ATTEMPTS_PER_REQUEST};
use crate::limits;
use crate::pb;
use crate::pb::cluster_client::ClusterClient;
use crate::pb::kv_client::KvClient;
use crate::tls::ClientTls;
use crate::wire::{is_connect_error, is_timeout, is_transport_error};

/// Leader hints followed in a row without pausing; past this the client backs off, so two
/// nodes with stale views pointing at each other cannot make it spin.
const MAX_HINT_HOPS_WITHOUT_PAUSE: usize = 3;
/// Connections cached for addresses that are not endpoints (leader hints, `status_of`).
const MAX_CACHED_CONNECTIONS: usize = 64;

/// What the client does after an attempt failed, by the shared rules ([`retry::decide`]).
#[derive(Debug, PartialEq)]
enum NextStep {
    /// Go to the hinted leader now.
    FollowHint(String),
    /// Pause, then try the next endpoint (this address did not answer, or lost leadership).
    NextEndpoint,
    /// Pause, then try the same address again (it answered but cannot serve yet).
    SameAddress,
    /// Give up with this error.
    Fail(Error),
}

/// Decides whether and where a failed attempt that was sent to `tried` is retried.
fn next_step(status: &Status, tried: &str) -> NextStep {
    match retry::decide(status, tried) {
        Retry::GiveUp | Retry::Final => NextStep::Fail(Error::from_status(status)),
        Retry::ServerUnreachable | Retry::LeadershipLost => NextStep::NextEndpoint,
        Retry::FollowHint(hint) => NextStep::FollowHint(hint.address),
        Retry::SamePlace => NextStep::SameAddress,
    }
}

/// A raftkv client: cheap to clone (clones share connections and what was learnt about the
/// leader), one long-lived connection per address.
#[derive(Clone)]
pub struct Client {
    shared: Arc<Shared>,
}

struct Shared {
    endpoints: Vec<String>,
    timeout: Duration,
    connections: Mutex<HashMap<String, Connection>>,
    /// Where the next call goes first: the last address that answered or that a hint named.
    target: Mutex<String>,
    write_ids: WriteIds,
    /// Whether Kv requests go in batches (see [`Connection`]).
    batching: bool,
    /// TLS for every connection, when the servers serve TLS.
    tls: Option<ClientTls>,
}

/// How a [`Client`] talks to its servers, beyond where and how long.
#[derive(Clone, Debug)]
pub struct ClientOptions {
    /// Whether the Kv requests of tasks that are ready together go as one `KvBatch.Batch`
    /// call (see [`Client::new`]); without, each is a call of its own.
    pub batching: bool,
    /// TLS for every connection (the servers' CA, and this client's certificate when they
    /// ask for one); None: plaintext.
    pub tls: Option<ClientTls>,
}

impl Default for ClientOptions {
    fn default() -> ClientOptions {
        ClientOptions {
            batching: true,
            tls: None,
        }
    }
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
        Client::with_options(endpoints, timeout, ClientOptions::default())
    }

    /// As [`Client::new`], but every Kv request is a call of its own, as it would be from
    /// separate processes.
    pub fn new_unbatched(endpoints: Vec<String>, timeout: std::time::Duration) -> Result<Client, Error> {
        let options = ClientOptions {
            batching: false,
            ..ClientOptions::default()
        };
        Client::with_options(endpoints, timeout, options)
    }

    /// As [`Client::new`], with `options` saying whether requests are batched and whether
    /// connections are TLS.
    pub fn with_options(endpoints: Vec<String>, timeout: Duration, options: ClientOptions) -> Result<Client, Error> {
        let ClientOptions { batching, tls } = options;
        if endpoints.is_empty() {
            return Err(Error::InvalidArgument("no endpoint given".to_string()));
        }
        if timeout.is_zero() {
            return Err(Error::InvalidArgument("the timeout must be more than zero".to_string()));
        }
        let mut connections = HashMap::new();
        for address in &endpoints {
            connections.insert(address.clone(), Connection::open(address, batching, tls.as_ref())?);
        }
        let first = endpoints[0].clone();
        Ok(Client {
            shared: Arc::new(Shared {
                endpoints,
                timeout,
                connections: Mutex::new(connections),
                target: Mutex::new(first),
                write_ids: WriteIds::default(),
                batching,
                tls,
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

    /// What this client was made with, besides endpoints and timeout; a client made with
    /// the same options talks to servers the same way.
    pub fn options(&self) -> ClientOptions {
        ClientOptions {
            batching: self.shared.batching,
            tls: self.shared.tls.clone(),
        }
    }

    /// Writes `value` under `key`.
    pub async fn put(&self, key: Bytes, value: Bytes) -> Result<pb::PutResponse, Error> {
        limits::check_key(&key)?;
        limits::check_value(&value)?;
        let request = pb::PutRequest {
            key,
            value,
            write_id: Some(self.next_write_id()),
        };
        self.call(move |connection, time_left| {
            connection.send(request.clone(), time_left, |mut kv, request| async move {
                kv.put(request).await
            })
        })
        .await
    }

    /// Reads `key`; [`Error::NotFound`] when it does not exist.
    pub async fn get(&self, key: Bytes, consistency: pb::Consistency) -> Result<pb::GetResponse, Error> {
        limits::check_key(&key)?;
        let request = pb::GetRequest {
            key,
            consistency: consistency as i32,
        };
        self.call(move |connection, time_left| {
            connection.send(request.clone(), time_left, |mut kv, request| async move {
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
        limits::check_value(&expect)?;
        self.delete_with(key, Some(expect)).await
    }

    async fn delete_with(&self, key: Bytes, expect: Option<Bytes>) -> Result<pb::DeleteResponse, Error> {
        limits::check_key(&key)?;
        let request = pb::DeleteRequest {
            key,
            write_id: Some(self.next_write_id()),
            expect,
        };
        self.call(move |connection, time_left| {
            connection.send(request.clone(), time_left, |mut kv, request| async move {
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
        limits::check_key(&key)?;
        if let Some(expect) = &expect {
            limits::check_value(expect)?;
        }
        limits::check_value(&new_value)?;
        let request = pb::CompareAndSwapRequest {
            key,
            expect,
            new_value,
            write_id: Some(self.next_write_id()),
        };
        self.call(move |connection, time_left| {
            connection.send(request.clone(), time_left, |mut kv, request| async move {
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
            limits::check_key(&prefix)?;
        }
        let request = pb::ScanRequest {
            prefix,
            limit,
            consistency: consistency as i32,
            start_after,
        };
        self.call(move |connection, time_left| {
            let mut request = tonic::Request::new(request.clone());
            request.set_timeout(time_left);
            let channel = connection.channel.clone();
            async move { KvClient::new(channel).scan(request).await }
        })
        .await
    }

    /// Hands leadership to node `to`, or (None) to the voter whose log is most up to date, and
    /// answers who leads once the old leader has seen the new one elected. Sent to the leader
    /// like a write (a router forwards it there). Asking for the node that already leads
    /// succeeds at once.
    pub async fn transfer_leader(&self, to: Option<u64>) -> Result<pb::TransferLeaderResponse, Error> {
        let request = pb::TransferLeaderRequest { to, term: None };
        self.call(move |connection, time_left| {
            let mut request = tonic::Request::new(request);
            request.set_timeout(time_left);
            let channel = connection.channel.clone();
            async move { ClusterClient::new(channel).transfer_leader(request).await }
        })
        .await
    }

    /// Status of the node at `address` (any HOST:PORT, need not be one of the endpoints).
    /// One attempt, bounded by the client's timeout: a node that does not answer is reported
    /// as such rather than waited for.
    pub async fn status_of(&self, address: &str) -> Result<pb::NodeStatus, Error> {
        let channel = self.channel_for(address)?;
        let deadline = Instant::now() + self.shared.timeout;
        status_once(channel, deadline).await.map_err(StatusError::into_error)
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
                Err(StatusError::Answered(status)) => {
                    if let Some(error) = self.wants_tls(&status, address, deadline).await {
                        return Err(error);
                    }
                    let error = Error::from_status(&status);
                    if let Error::Tls(_) = error {
                        return Err(error);
                    }
                    last_error = Some(format!("{address}: {error}"));
                }
                Err(StatusError::Late(error)) => last_error = Some(format!("{address}: {error}")),
            }
        }
        Err(Error::Unavailable {
            message: format!(
                "no endpoint answered within {}: {}",
                retry::format_timeout(self.shared.timeout),
                last_error.unwrap_or_else(|| "no attempt was made".to_string())
            ),
            leader: None,
        })
    }

    /// The stream of status changes of the node at `address` (Cluster.WatchStatus): its
    /// status now, then one whenever it changes, and one every
    /// [`STATUS_PUSH_INTERVAL_MS`](crate::wire::STATUS_PUSH_INTERVAL_MS) changed or not. No
    /// deadline: it lasts until the node stops or the stream is dropped.
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
        Ok(self.connection(address)?.channel)
    }

    /// The cached connection to `address`, made on first use.
    fn connection(&self, address: &str) -> Result<Connection, Error> {
        let mut connections = self
            .shared
            .connections
            .lock()
            .unwrap_or_else(|poison| poison.into_inner());
        if let Some(connection) = connections.get(address) {
            return Ok(connection.clone());
        }
        let new_connection = Connection::open(address, self.shared.batching, self.shared.tls.as_ref())?;
        if connections.len() >= self.shared.endpoints.len() + MAX_CACHED_CONNECTIONS {
            let endpoints = &self.shared.endpoints;
            connections.retain(|cached, _| endpoints.contains(cached));
        }
        connections.insert(address.to_string(), new_connection.clone());
        Ok(new_connection)
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
    /// documentation for the rules. `attempt` gets the connection to send on and the time left.
    async fn call<T, A, F>(&self, attempt: A) -> Result<T, Error>
    where
        A: Fn(&Connection, Duration) -> F,
        F: Future<Output = Result<tonic::Response<T>, Status>>,
    {
        let deadline = Instant::now() + self.shared.timeout;
        let mut backoff = Backoff::new();
        let mut hint_hops = 0;
        let mut last_error: Option<Error> = None;
        // Whether a server was asked if it wants TLS ([`Client::wants_tls`]); once per call.
        let mut probed = false;
        for _ in 0..MAX_ATTEMPTS_PER_REQUEST {
            let now = Instant::now();
            if now >= deadline {
                break;
            }
            let address = self.target();
            let connection = self.connection(&address)?;
            let status = match tokio::time::timeout_at(deadline, attempt(&connection, deadline - now)).await {
                Ok(Ok(response)) => return Ok(response.into_inner()),
                Ok(Err(status)) => status,
                Err(_elapsed) => break,
            };
            let step = next_step(&status, &address);
            tracing::debug!(%address, code = ?status.code(), message = status.message(), ?step, "attempt failed");
            if step == NextStep::NextEndpoint && !probed {
                probed = true;
                if let Some(error) = self.wants_tls(&status, &address, deadline).await {
                    return Err(error);
                }
            }
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
            let pause = backoff.next_pause();
            tokio::time::sleep_until(deadline.min(Instant::now() + pause)).await;
        }
        let within = retry::format_timeout(self.shared.timeout);
        Err(Error::Timeout(match last_error {
            Some(error) => format!("no answer within {within}; last error: {error}"),
            None => format!("no answer within {within}"),
        }))
    }
}

impl Client {
    /// When this client's connection to `address` was cut without an answer, asks the server
    /// with a TLS handshake whether TLS is why ([`crate::tls::probe`]: a TLS server closes a
    /// plaintext connection without a word, and its refusal of a client's certificate can
    /// lose the race with the closing connection), within [`CONNECT_TIMEOUT`] and
    /// `deadline`. The error that says so, or None for any other failure.
    async fn wants_tls(&self, status: &Status, address: &str, deadline: Instant) -> Option<Error> {
        if !is_transport_error(status) || is_connect_error(status) || is_timeout(status) {
            return None;
        }
        let within = deadline.saturating_duration_since(Instant::now()).min(CONNECT_TIMEOUT);
        if within.is_zero() {
            return None;
        }
        match &self.shared.tls {
            None => crate::tls::probe::speaks_tls(address, within).await.then(|| {
                Error::Tls(format!(
                    "{address} serves TLS and this client connects in plaintext (give it the servers' CA: --cacert)"
                ))
            }),
            Some(tls) => crate::tls::probe::refused_by(address, tls, within)
                .await
                .map(|error| Error::Tls(crate::tls::probe::describe(&error))),
        }
    }
}

/// How one Cluster.Status call failed.
enum StatusError {
    /// It ended with this status (sent by the server, or made by the transport).
    Answered(Status),
    /// The deadline passed first.
    Late(Error),
}

impl StatusError {
    fn into_error(self) -> Error {
        match self {
            StatusError::Answered(status) => Error::from_status(status),
            StatusError::Late(error) => error,
        }
    }
}

/// One Cluster.Status call that must be answered by `deadline`.
async fn status_once(channel: Channel, deadline: Instant) -> Result<pb::NodeStatus, StatusError> {
    let time_left = deadline.saturating_duration_since(Instant::now());
    let mut request = tonic::Request::new(pb::StatusRequest {});
    request.set_timeout(time_left);
    match tokio::time::timeout_at(deadline, ClusterClient::new(channel).status(request)).await {
        Ok(Ok(response)) => Ok(response.into_inner()),
        Ok(Err(status)) => Err(StatusError::Answered(status)),
        Err(_elapsed) => Err(StatusError::Late(Error::Timeout(format!(
            "no answer within {}",
            retry::format_timeout(time_left)
        )))),
    }
}
