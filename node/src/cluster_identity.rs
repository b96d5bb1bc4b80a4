//! Which cluster this node belongs to, on the wire: every Raft call it sends carries its
//! cluster's id ([`StampClusterId`], a client interceptor), and every Raft call it receives is
//! checked for it in one place ([`RequireClusterId`], a tower service in front of the Raft
//! service) before any handler runs. A call of another cluster, or one without an id, is
//! refused with FAILED_PRECONDITION, and logged as one warning line per sender at most every
//! [`REFUSAL_WARNING_INTERVAL`]. So two clusters that share an address by mistake (a node
//! listed in both) do not disturb each other: votes, AppendEntries and snapshots of one never
//! reach the other's openraft.
//!
//! A call is checked once, by its headers: a streaming call (a snapshot upload) carries
//! the id once, for every message on it.
//!
//! A node that joins (`--join`) has no id until its cluster first reaches it: it takes the id
//! the first call carries, records it durably in its data directory before that call is
//! served, and refuses every other id from then on. That is trust on first use: whoever reaches
//! a joining node first decides its cluster (with TLS, only a holder of a node certificate).

use std::collections::HashMap;
use std::net::{IpAddr, SocketAddr};
use std::path::PathBuf;
use std::sync::{Arc, Mutex, OnceLock};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use raftkv::wire::{ClusterId, CLUSTER_ID_METADATA, SENDER_ID_METADATA};
use tonic::codegen::{http, BoxFuture, Service};
use tonic::metadata::{Ascii, MetadataValue};
use tonic::server::NamedService;
use tonic::transport::server::{TcpConnectInfo, TlsConnectInfo};
use tonic::Status;

use crate::store::data_dir;
use crate::types::NodeId;

/// A sender whose calls are refused is named in the log at most once per this interval.
pub const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// The most senders whose last refusal warning is remembered; past it the oldest are forgotten
/// (a flood of made-up senders costs a bounded map and, at worst, more warnings).
const REFUSAL_SENDERS_TRACKED: usize = 1024;

/// This node's cluster id, once known, shared by everything that sends or receives Raft calls.
/// Cheap to clone.
#[derive(Clone)]
pub struct ClusterIdentity {
    inner: Arc<Inner>,
}

struct Inner {
    node_id: NodeId,
    /// Where a joining node records the id it takes.
    data_dir: PathBuf,
    known: OnceLock<KnownId>,
    /// Held while a joining node records the id it takes, so two first calls record one id.
    adopting: tokio::sync::Mutex<()>,
    /// When each refused sender was last named in the log.
    warned: Mutex<HashMap<Sender, Instant>>,
    /// This node's id, as the sender metadata of the calls it sends.
    sender_metadata: MetadataValue<Ascii>,
    /// The node's span: calls are served in tasks that do not carry it.
    span: tracing::Span,
}

/// The id, and the metadata value that carries it (made once, compared as bytes).
struct KnownId {
    id: ClusterId,
    metadata: MetadataValue<Ascii>,
}

/// Who sent a refused call, as far as this node can tell: the connection's address, and the
/// node id the call claims (untrusted, only to name it).
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
struct Sender {
    ip: Option<IpAddr>,
    node: Option<String>,
}

/// What to do with a call, decided from its headers alone.
enum Admission {
    Admitted,
    Refused(Status),
    /// This node has no id yet: take this one, then serve the call.
    Adopt(ClusterId),
}

impl ClusterIdentity {
    /// Node `node_id`'s identity: `known` is the id its data directory `data_dir` records (None
    /// for a node that joined and has not been reached by its cluster yet).
    pub fn new(node_id: NodeId, data_dir: PathBuf, known: Option<ClusterId>) -> ClusterIdentity {
        let identity = ClusterIdentity {
            inner: Arc::new(Inner {
                node_id,
                data_dir,
                known: OnceLock::new(),
                adopting: tokio::sync::Mutex::new(()),
                warned: Mutex::default(),
                sender_metadata: MetadataValue::from(node_id),
                span: tracing::Span::current(),
            }),
        };
        if let Some(id) = known {
            identity.set(id);
        }
        identity
    }

    /// The cluster's id, once known.
    pub fn id(&self) -> Option<ClusterId> {
        self.inner.known.get().map(|known| known.id)
    }

    fn set(&self, id: ClusterId) {
        let _ = self.inner.known.set(KnownId {
            id,
            metadata: id.to_metadata(),
        });
    }

    /// Puts this node's cluster id (when known) and node id on an outgoing call.
    fn stamp(&self, metadata: &mut tonic::metadata::MetadataMap) {
        if let Some(known) = self.inner.known.get() {
            metadata.insert(CLUSTER_ID_METADATA, known.metadata.clone());
        }
        metadata.insert(SENDER_ID_METADATA, self.inner.sender_metadata.clone());
    }

    /// Decides from a call's headers whether it is of this node's cluster.
    fn admission(&self, headers: &http::HeaderMap, remote: Option<SocketAddr>, method: &str) -> Admission {
        let carried = headers.get(CLUSTER_ID_METADATA);
        if let (Some(known), Some(carried)) = (self.inner.known.get(), carried) {
            // The common case: one comparison of 16 bytes.
            if carried.as_bytes() == known.metadata.as_bytes() {
                return Admission::Admitted;
            }
        }
        let theirs = carried
            .and_then(|value| value.to_str().ok())
            .and_then(|text| text.parse::<ClusterId>().ok());
        match (self.id(), theirs) {
            (None, Some(theirs)) => Admission::Adopt(theirs),
            (ours, theirs) => Admission::Refused(self.refuse(ours, theirs, headers, remote, method)),
        }
    }

    /// The status a refused call gets, after naming its sender in the log (at most once per
    /// [`REFUSAL_WARNING_INTERVAL`] per sender).
    fn refuse(
        &self,
        ours: Option<ClusterId>,
        theirs: Option<ClusterId>,
        headers: &http::HeaderMap,
        remote: Option<SocketAddr>,
        method: &str,
    ) -> Status {
        let ours = ours.map_or("no cluster yet (it waits to be added)".to_string(), |id| {
            format!("cluster {id}")
        });
        let theirs = theirs.map_or("carries no cluster id".to_string(), |id| {
            format!("comes from cluster {id}")
        });
        let sender = Sender {
            ip: remote.map(|address| address.ip()),
            node: headers
                .get(SENDER_ID_METADATA)
                .and_then(|value| value.to_str().ok())
                .map(|node| node.chars().take(20).collect()),
        };
        if self.should_warn(&sender) {
            let node = sender.node.as_deref().unwrap_or("?");
            let address = remote.map_or("an unknown address".to_string(), |address| address.to_string());
            tracing::warn!(
                parent: &self.inner.span,
                "refused a Raft call ({method}) from node {node} at {address}: it {theirs}, this node belongs to {ours} (a node listed in two clusters? further refusals of this sender are not logged for {REFUSAL_WARNING_INTERVAL:?})"
            );
        }
        Status::failed_precondition(format!(
            "node {} belongs to {ours}; this call {theirs}",
            self.inner.node_id
        ))
    }

    /// Whether `sender`'s refusal is to be logged now, and if so notes that it was.
    fn should_warn(&self, sender: &Sender) -> bool {
        let now = Instant::now();
        let mut warned = self.inner.warned.lock().expect("refusal log poisoned");
        if warned
            .get(sender)
            .is_some_and(|last| now.duration_since(*last) < REFUSAL_WARNING_INTERVAL)
        {
            return false;
        }
        if warned.len() >= REFUSAL_SENDERS_TRACKED {
            warned.retain(|_, last| now.duration_since(*last) < REFUSAL_WARNING_INTERVAL);
            if warned.len() >= REFUSAL_SENDERS_TRACKED {
                warned.clear();
            }
        }
        warned.insert(sender.clone(), now);
        true
    }

    /// Takes `id` as this node's cluster id, recorded durably first; the first call that
    /// carries an id decides (trust on first use). A call racing it with another id is refused
    /// after it.
    async fn adopt(&self, id: ClusterId) -> Result<(), Status> {
        let _one_at_a_time = self.inner.adopting.lock().await;
        if let Some(known) = self.id() {
            return if known == id {
                Ok(())
            } else {
                Err(Status::failed_precondition(format!(
                    "node {} belongs to cluster {known}; this call comes from cluster {id}",
                    self.inner.node_id
                )))
            };
        }
        let dir = self.inner.data_dir.clone();
        let recorded = tokio::task::spawn_blocking(move || data_dir::record_cluster_id(&dir, id))
            .await
            .map_err(|e| e.to_string())
            .and_then(|recorded| recorded.map_err(|e| e.to_string()));
        if let Err(error) = recorded {
            tracing::error!(parent: &self.inner.span, "cannot record the cluster id {id}: {error}");
            return Err(Status::unavailable(format!(
                "cannot record the cluster id {id}: {error}"
            )));
        }
        self.set(id);
        tracing::info!(parent: &self.inner.span, "joined cluster {id}");
        Ok(())
    }
}

/// Stamps every outgoing Raft call with this node's cluster id (see [`ClusterIdentity`]).
#[derive(Clone)]
pub struct StampClusterId(pub ClusterIdentity);

impl tonic::service::Interceptor for StampClusterId {
    fn call(&mut self, mut request: tonic::Request<()>) -> Result<tonic::Request<()>, Status> {
        self.0.stamp(request.metadata_mut());
        Ok(request)
    }
}

/// The Raft service `S` behind the cluster id check: the one place incoming Raft calls are
/// checked.
#[derive(Clone)]
pub struct RequireClusterId<S> {
    inner: S,
    identity: ClusterIdentity,
}

impl<S> RequireClusterId<S> {
    pub fn new(inner: S, identity: ClusterIdentity) -> Self {
        RequireClusterId { inner, identity }
    }
}

/// The address a call came from, as the server recorded its connection.
fn remote_address<B>(request: &http::Request<B>) -> Option<SocketAddr> {
    let extensions = request.extensions();
    extensions
        .get::<TcpConnectInfo>()
        .and_then(TcpConnectInfo::remote_addr)
        .or_else(|| {
            extensions
                .get::<TlsConnectInfo<TcpConnectInfo>>()
                .and_then(|tls| tls.get_ref().remote_addr())
        })
}

impl<S, B> Service<http::Request<B>> for RequireClusterId<S>
where
    S: Service<http::Request<B>, Response = http::Response<tonic::body::Body>> + Clone + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Send + 'static,
    B: Send + 'static,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = BoxFuture<S::Response, S::Error>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<B>) -> Self::Future {
        let remote = remote_address(&request);
        match self.identity.admission(request.headers(), remote, request.uri().path()) {
            Admission::Admitted => Box::pin(self.inner.call(request)),
            Admission::Refused(status) => Box::pin(std::future::ready(Ok(status.into_http()))),
            Admission::Adopt(id) => {
                // The service that was made ready is the one that serves the call (tower's rule).
                let clone = self.inner.clone();
                let mut inner = std::mem::replace(&mut self.inner, clone);
                let identity = self.identity.clone();
                Box::pin(async move {
                    match identity.adopt(id).await {
                        Ok(()) => inner.call(request).await,
                        Err(status) => Ok(status.into_http()),
                    }
                })
            }
        }
    }
}

impl<S: NamedService> NamedService for RequireClusterId<S> {
    const NAME: &'static str = S::NAME;
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A Raft service that answers every call it is handed with an empty OK.
    #[derive(Clone, Default)]
    struct Served(Arc<Mutex<u32>>);

    impl Service<http::Request<()>> for Served {
        type Response = http::Response<tonic::body::Body>;
        type Error = std::convert::Infallible;
        type Future = std::future::Ready<Result<Self::Response, Self::Error>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, _: http::Request<()>) -> Self::Future {
            *self.0.lock().unwrap() += 1;
            std::future::ready(Ok(http::Response::new(tonic::body::Body::empty())))
        }
    }

    /// A call stamped by `sender` (or by no one), as the receiving node's service sees it.
    fn call_from(sender: Option<&ClusterIdentity>) -> http::Request<()> {
        use tonic::service::Interceptor;
        let metadata = match sender {
            Some(sender) => StampClusterId(sender.clone())
                .call(tonic::Request::new(()))
                .unwrap()
                .metadata()
                .clone(),
            None => tonic::metadata::MetadataMap::new(),
        };
        let mut request = http::Request::builder()
            .uri("/raftkv.raft.v1.Raft/Vote")
            .body(())
            .unwrap();
        *request.headers_mut() = metadata.into_headers();
        request
    }

    /// The gRPC status of `request` served behind the check of `receiver`; OK when served.
    async fn serve(receiver: &ClusterIdentity, served: &Served, request: http::Request<()>) -> tonic::Code {
        let mut guard = RequireClusterId::new(served.clone(), receiver.clone());
        let response = guard.call(request).await.unwrap();
        Status::from_header_map(response.headers()).map_or(tonic::Code::Ok, |status| status.code())
    }

    fn node(id: NodeId, cluster: Option<ClusterId>) -> (ClusterIdentity, tempfile::TempDir) {
        let dir = tempfile::tempdir().unwrap();
        (ClusterIdentity::new(id, dir.path().to_path_buf(), cluster), dir)
    }

    #[tokio::test]
    async fn a_call_of_another_cluster_or_without_an_id_is_refused_before_it_is_served() {
        let a = ClusterId::derive("1=a:1", "raftkv");
        let b = ClusterId::derive("1=a:1", "other");
        let (receiver, _dir) = node(1, Some(a));
        let served = Served::default();
        let (same, _) = node(2, Some(a));
        let (other, _) = node(2, Some(b));
        let (joining, _) = node(3, None);
        assert_eq!(serve(&receiver, &served, call_from(Some(&same))).await, tonic::Code::Ok);
        for refused in [call_from(Some(&other)), call_from(Some(&joining)), call_from(None)] {
            assert_eq!(
                serve(&receiver, &served, refused).await,
                tonic::Code::FailedPrecondition
            );
        }
        assert_eq!(
            *served.0.lock().unwrap(),
            1,
            "only the call of the same cluster was served"
        );
        assert_eq!(receiver.id(), Some(a));
    }

    #[tokio::test]
    async fn a_joining_node_takes_the_first_id_it_is_sent_records_it_and_refuses_others() {
        let a = ClusterId(0xa);
        let (joining, dir) = node(4, None);
        // The directory of a node that joined: an identity without a cluster id.
        let options = crate::store::engine::EngineOptions::default();
        drop(data_dir::open(dir.path(), 4, "", &options).unwrap());
        let served = Served::default();
        let (leader, _) = node(1, Some(a));
        let (stranger, _) = node(1, Some(ClusterId(0xb)));
        assert_eq!(
            serve(&joining, &served, call_from(None)).await,
            tonic::Code::FailedPrecondition
        );
        assert_eq!(joining.id(), None, "a call without an id decides nothing");
        assert_eq!(
            serve(&joining, &served, call_from(Some(&leader))).await,
            tonic::Code::Ok
        );
        assert_eq!(joining.id(), Some(a));
        assert_eq!(
            serve(&joining, &served, call_from(Some(&stranger))).await,
            tonic::Code::FailedPrecondition
        );
        let reopened = data_dir::open_with_engine_when_released(dir.path(), 4, "", options.kind).unwrap();
        assert_eq!(reopened.cluster_id, Some(a), "the id taken is recorded");
    }

    /// The cost of the check on an admitted call, printed (not asserted: timing never decides a
    /// test). `cargo test -p raftkv-node --lib cost_of_the_check -- --ignored --nocapture`
    #[tokio::test]
    #[ignore = "a measurement, run by hand"]
    async fn cost_of_the_check_on_an_admitted_call() {
        const CALLS: u32 = 1_000_000;
        let id = ClusterId(0x1234_5678_9abc_def0);
        let (receiver, _dir) = node(1, Some(id));
        let (sender, _dir2) = node(2, Some(id));
        let served = Served::default();
        let headers = call_from(Some(&sender)).headers().clone();
        let started = Instant::now();
        for _ in 0..CALLS {
            assert!(matches!(
                receiver.admission(std::hint::black_box(&headers), None, "/raftkv.raft.v1.Raft/Vote"),
                Admission::Admitted
            ));
        }
        let check = started.elapsed() / CALLS;
        let mut guard = RequireClusterId::new(served.clone(), receiver.clone());
        let mut bare = served.clone();
        let request = || {
            let mut request = http::Request::new(());
            *request.headers_mut() = headers.clone();
            request
        };
        let started = Instant::now();
        for _ in 0..CALLS {
            bare.call(request()).await.unwrap();
        }
        let without = started.elapsed() / CALLS;
        let started = Instant::now();
        for _ in 0..CALLS {
            guard.call(request()).await.unwrap();
        }
        let with = started.elapsed() / CALLS;
        let mut stamp = StampClusterId(sender.clone());
        let started = Instant::now();
        for _ in 0..CALLS {
            use tonic::service::Interceptor;
            std::hint::black_box(stamp.call(tonic::Request::new(())).unwrap());
        }
        let stamping = started.elapsed() / CALLS;
        println!(
            "per call: header check {check:?}; a served call {without:?} bare, {with:?} behind the check; stamping an outgoing call {stamping:?}"
        );
    }

    #[test]
    fn a_sender_s_refusals_are_logged_once_per_interval() {
        let (receiver, _dir) = node(1, Some(ClusterId(1)));
        let b1 = Sender {
            ip: Some(IpAddr::from([127, 0, 0, 1])),
            node: Some("1".to_string()),
        };
        let b2 = Sender {
            node: Some("2".to_string()),
            ..b1.clone()
        };
        assert!(receiver.should_warn(&b1));
        assert!(!receiver.should_warn(&b1));
        assert!(receiver.should_warn(&b2));
        receiver
            .inner
            .warned
            .lock()
            .unwrap()
            .insert(b1.clone(), Instant::now() - REFUSAL_WARNING_INTERVAL);
        assert!(receiver.should_warn(&b1), "logged again once the interval passed");
    }
}
