//! Wiring of one node: opens the data directory, starts openraft with our
//! storage and network, bootstraps the initial cluster exactly once, serves
//! the gRPC services on one port, and shuts all of it down in order.
//!
//! All of a node's work runs in its tracing span, `node{id=N}`, so every line it
//! logs says whose it is. `tokio::spawn` does not carry a span: the tasks we spawn
//! are instrumented with it, and openraft's core task takes it from `Raft::new`.
//! Tasks openraft spawns without a span (state machine worker, replication) and
//! blocking threads reach our code too: the storage and the network keep the span
//! current when they were made and name it as the parent of the lines they log.

use std::collections::BTreeMap;
use std::future::Future;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{InitializeError, RaftError};
use openraft::storage::RaftLogStorage;
use openraft::{BasicNode, SnapshotPolicy};
use raftkv::raft_pb::raft_server::RaftServer;
use raftkv::serving::{self, ConnectionBudget};
use raftkv::tls::{require_node_certificate, ServerTls};
use raftkv::wire::{ClusterId, SHUTDOWN_GRACE};
use tokio::sync::watch;
use tonic::service::interceptor::InterceptedService;
use tracing::Instrument;

use crate::cluster_identity::{ClusterIdentity, RequireClusterId};
use crate::cluster_service::ClusterService;
use crate::handover::{self, HandOverError};
use crate::kv_service::KvService;
use crate::member_addresses::MemberAddresses;
use crate::metrics::{LeaderContact, NodeMetrics};
use crate::network::{Network, MAX_RAFT_MESSAGE_BYTES};
use crate::proposer::Proposer;
use crate::raft_service::RaftService;
use crate::read_index::ReadIndexRounds;
use crate::snapshot_policy::{KeepRule, SnapshotRule};
use crate::store::engine::EngineOptions;
use crate::store::{data_dir, KvReader};
use crate::types::{NodeId, Raft};

/// How long a leader asked to stop tries to hand leadership over before it stops anyway, in
/// election timeouts: a transfer takes a few round trips and one election, well within one,
/// and when the whole cluster stops together (the target too) the wait must stay short.
pub const HANDOVER_ON_STOP_ELECTION_TIMEOUTS: u32 = 4;
/// The least time a stopping leader gives the handover, for a machine too busy to run one
/// within a few election timeouts.
pub const HANDOVER_ON_STOP_MIN: Duration = Duration::from_secs(1);

/// Everything a node needs to start, already validated.
#[derive(Debug, Clone)]
pub struct Settings {
    pub id: NodeId,
    pub listen: SocketAddr,
    /// The address peers and clients use to reach this node.
    pub advertise: String,
    pub data_dir: PathBuf,
    /// The members to bootstrap a pristine data directory with; empty for a node that joins a
    /// running cluster (`--join`): it never bootstraps and waits to be added.
    pub initial_cluster: BTreeMap<NodeId, String>,
    /// With the initial cluster, what a new cluster's id is derived from
    /// (`--initial-cluster-token`, `raftkv::wire::ClusterId::derive`).
    pub initial_cluster_token: String,
    pub heartbeat_interval_ms: u64,
    pub election_timeout_min_ms: u64,
    pub election_timeout_max_ms: u64,
    /// Build a snapshot after this many applied entries since the last one.
    pub snapshot_after_logs: u64,
    /// Entries kept in the log behind a snapshot, for slow followers.
    pub keep_logs_after_snapshot: u64,
    /// Local address for connections to peers (None: the OS picks).
    pub source_address: Option<std::net::IpAddr>,
    /// The state machine's engine and its cache.
    pub engine: EngineOptions,
    /// Where `/metrics` and `/health` are served (None: nowhere).
    pub metrics_listen: Option<SocketAddr>,
    /// TLS for every connection in and out, clients' and peers' certificates required
    /// (None: plaintext).
    pub tls: Option<ServerTls>,
}

impl Settings {
    /// The initial cluster as one canonical string; it identifies the cluster
    /// a data directory belongs to. Empty for a node that joins.
    pub fn cluster_identity(&self) -> String {
        cluster_identity(&self.initial_cluster)
    }
}

/// [`Settings::cluster_identity`] of the initial cluster `members` (a restore records it too).
pub fn cluster_identity(members: &BTreeMap<NodeId, String>) -> String {
    members
        .iter()
        .map(|(id, addr)| format!("{id}={addr}"))
        .collect::<Vec<_>>()
        .join(",")
}

/// Shared handles for the services. Cheap to clone.
#[derive(Clone)]
pub struct App {
    pub id: NodeId,
    pub address: String,
    pub raft: Raft,
    pub reader: KvReader,
    pub proposer: Proposer,
    pub read_index: ReadIndexRounds,
    /// The cluster this node belongs to.
    pub cluster_identity: ClusterIdentity,
    /// Flips to true when the node begins to stop; long-lived streams end then.
    pub shutdown: watch::Receiver<bool>,
    /// The node's span, for tasks spawned where it is not current (in request handlers:
    /// tonic runs each connection in a task of its own, without it).
    pub span: tracing::Span,
}

/// Runs the node until `stop` resolves, then stops gracefully, all of it in the node's span.
pub async fn run(settings: Settings, stop: impl Future<Output = ()>) -> anyhow::Result<()> {
    run_with(settings, stop, |_| {}).await
}

/// [`run`], handing `serving` the node's handles once it listens (tests drive openraft
/// through them).
pub async fn run_with(
    settings: Settings,
    stop: impl Future<Output = ()>,
    serving: impl FnOnce(App),
) -> anyhow::Result<()> {
    let span = tracing::info_span!("node", id = settings.id);
    serve(settings, stop, serving).instrument(span).await
}

/// The longest a node waits for its Raft core to report the log it loaded before it serves
/// anyway (the core reports it as soon as it runs: this only guards a machine that is stuck).
const LOADED_LOG_REPORT_WAIT: Duration = Duration::from_secs(30);

/// Waits until `raft`'s metrics show the log it loaded (up to `loaded`). Until its core first
/// reports, they say "no log": a status answered then told a client, or an operator, that a
/// node just restarted with its data had none.
async fn wait_for_loaded_log(raft: &Raft, loaded: Option<u64>) {
    if loaded.is_none() {
        return;
    }
    let reported = raft
        .wait(Some(LOADED_LOG_REPORT_WAIT))
        .metrics(
            |m| m.last_log_index >= loaded,
            "the raft core reports the log it loaded",
        )
        .await;
    if let Err(error) = reported {
        tracing::warn!(%error, "serving before the raft core reported the log it loaded; status may show less log than there is for now");
    }
}

async fn serve(settings: Settings, stop: impl Future<Output = ()>, serving: impl FnOnce(App)) -> anyhow::Result<()> {
    let metrics_listener = crate::metrics::bind(settings.metrics_listen).await?;
    // A new cluster's id, which a directory claimed now records; an existing directory keeps
    // the one it has. A node that joins learns it from its cluster's first message.
    let new_cluster_id = (!settings.initial_cluster.is_empty())
        .then(|| ClusterId::derive(&settings.cluster_identity(), &settings.initial_cluster_token));
    let dir = data_dir::open_with_cluster_id(
        &settings.data_dir,
        settings.id,
        &settings.cluster_identity(),
        new_cluster_id,
        &settings.engine,
    )?;
    let cluster_identity = ClusterIdentity::new(settings.id, settings.data_dir.clone(), dir.cluster_id);
    match dir.cluster_id {
        Some(id) => tracing::info!("member of cluster {id}"),
        None => tracing::info!("no cluster id yet: this node takes the one its cluster's first message carries"),
    }
    let listener = tokio::net::TcpListener::bind(settings.listen)
        .await
        .with_context(|| format!("cannot listen on {}", settings.listen))?;

    let config = openraft::Config {
        cluster_name: "raftkv".to_string(),
        // openraft also uses this as the timeout of every AppendEntries (replication and
        // heartbeats).
        heartbeat_interval: settings.heartbeat_interval_ms,
        election_timeout_min: settings.election_timeout_min_ms,
        election_timeout_max: settings.election_timeout_max_ms,
        // Our own policy (snapshot_policy.rs) asks for snapshots: openraft counts entries only.
        snapshot_policy: SnapshotPolicy::Never,
        // Purging is ours too (snapshot_policy.rs), bounded in bytes as well as entries:
        // openraft's own, by count alone, never purges.
        max_in_snapshot_log_to_keep: u64::MAX,
        install_snapshot_timeout: 10_000,
        // A leader restarted quickly would otherwise resume leading without an election.
        // openraft warns that this is unsafe unless the state machine is durable when apply
        // returns or the commit index is saved synchronously; neither holds here (the engine
        // writes applies out in the background, the commit marker lags), so such a leader could
        // serve reads from a state older than what it acknowledged. An election costs little.
        enable_leader_restore: Some(false),
        // A node that cannot win an election (cut off, restarted, behind) first asks whether
        // it would win, and raises its term only then: coming back, it does not unseat a
        // healthy leader with a higher term.
        enable_pre_vote: Some(true),
        ..Default::default()
    };
    let config = Arc::new(config.validate().context("invalid raft settings")?);
    let network = Network::new(
        settings.source_address,
        settings.tls.as_ref().map(ServerTls::client),
        cluster_identity.clone(),
    );
    let reader = dir.state_machine.reader();
    let log = dir.log_store.log_reader();
    let log_volume = dir.state_machine.log_volume();
    let mut log_store = dir.log_store;
    let loaded_log = log_store
        .get_log_state()
        .await
        .context("cannot read the log's bounds")?
        .last_log_id
        .map(|id| id.index);
    let raft = Raft::new(settings.id, config, network.clone(), log_store, dir.state_machine)
        .await
        .context("cannot start raft")?;
    wait_for_loaded_log(&raft, loaded_log).await;

    if dir.pristine && settings.initial_cluster.is_empty() {
        tracing::info!(advertise = %settings.advertise, "waiting to be added to a cluster (raftkv member add)");
    } else if dir.pristine {
        let members: BTreeMap<NodeId, BasicNode> = settings
            .initial_cluster
            .iter()
            .map(|(id, addr)| (*id, BasicNode { addr: addr.clone() }))
            .collect();
        match raft.initialize(members).await {
            Ok(()) => tracing::info!(cluster = %settings.cluster_identity(), "bootstrapped the initial cluster"),
            // A peer's leader reached us first: we are already part of the cluster.
            Err(RaftError::APIError(InitializeError::NotAllowed(_))) => {}
            Err(e) => return Err(anyhow::anyhow!("cannot bootstrap the cluster: {e}")),
        }
    }

    let (shutdown_tx, shutdown) = watch::channel(false);
    let app = App {
        id: settings.id,
        address: settings.advertise.clone(),
        raft: raft.clone(),
        reader,
        proposer: Proposer::start(raft.clone()),
        read_index: ReadIndexRounds::start(raft.clone(), network),
        cluster_identity: cluster_identity.clone(),
        shutdown,
        span: tracing::Span::current(),
    };
    tokio::spawn(log_leader_changes(settings.id, raft.clone()).in_current_span());
    let snapshot_rule = SnapshotRule {
        after_entries: settings.snapshot_after_logs,
    };
    let keep = KeepRule {
        entries: settings.keep_logs_after_snapshot,
    };
    tokio::spawn(crate::snapshot_policy::run(raft.clone(), log_volume, snapshot_rule, keep, log).in_current_span());
    tokio::spawn(
        crate::membership::record_own_removal(
            settings.id,
            raft.clone(),
            settings.data_dir.clone(),
            settings.tls.as_ref().map(ServerTls::client),
            cluster_identity.clone(),
        )
        .in_current_span(),
    );
    let (metrics, request_metrics) = NodeMetrics::new();
    let leader_contact = LeaderContact::new();
    let health = crate::metrics::health_check(
        raft.clone(),
        leader_contact.clone(),
        Duration::from_millis(settings.election_timeout_max_ms),
    );
    // Kv and KvBatch requests are read only while those being served leave room for them.
    let request_bytes = serving::RequestBytes::new(serving::REQUEST_BYTES_IN_FLIGHT);
    raftkv::metrics::admission::register(&metrics.registry, &request_bytes);
    let members = MemberAddresses::follow(raft.clone(), settings.initial_cluster.values().cloned()).await;
    // Connections beyond the budget are closed at once; members have a budget of their own.
    let budget = ConnectionBudget::new(members.is_member());
    raftkv::metrics::connections::register(&metrics.registry, &budget);
    metrics.start(
        metrics_listener,
        health,
        settings.id,
        raft.clone(),
        settings.data_dir.clone(),
        app.shutdown.clone(),
    );

    let kv = KvService::new(app.clone());
    let tls = if settings.tls.is_some() { "TLS" } else { "plaintext" };
    tracing::info!(listen = %settings.listen, advertise = %settings.advertise, "serving ({tls})");
    serving(app.clone());
    let mut server = serving::with_limits(tonic::transport::Server::builder()).timeout(serving::NODE_REQUEST_TIMEOUT);
    if let Some(tls) = &settings.tls {
        server = server.tls_config(tls.server_config()).context("cannot serve TLS")?;
    }
    let raft_service = RaftServer::new(RaftService::new(
        raft.clone(),
        app.read_index.clone(),
        leader_contact,
        &settings.data_dir,
        app.shutdown.clone(),
    ))
    .max_decoding_message_size(MAX_RAFT_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_RAFT_MESSAGE_BYTES);
    // Raft calls of another cluster (or without a cluster id) are refused before any handler.
    let raft_service = RequireClusterId::new(raft_service, cluster_identity);
    // Over TLS, every client and peer has a certificate the CA signed; Raft messages are taken
    // only from those that name a node (raftkv::tls::node_identity). In plaintext there is
    // nothing to check.
    let tls_enabled = settings.tls.is_some();
    let raft_service = InterceptedService::new(raft_service, move |request: tonic::Request<()>| {
        if tls_enabled {
            require_node_certificate(&request)?;
        }
        Ok(request)
    });
    let server = server
        .layer(request_metrics)
        .add_service(serving::kv_server(Arc::new(kv.clone()), &request_bytes))
        .add_service(serving::kv_batch_server(Arc::new(kv), &request_bytes))
        .add_service(serving::cluster_server(ClusterService::new(app.clone())))
        .add_service(raft_service)
        .serve_with_incoming_shutdown(
            serving::guarded_incoming(listener, budget).context("cannot accept connections")?,
            {
                let raft = raft.clone();
                let reads = app.read_index.clone();
                let handover_timeout = (Duration::from_millis(settings.election_timeout_max_ms)
                    * HANDOVER_ON_STOP_ELECTION_TIMEOUTS)
                    .max(HANDOVER_ON_STOP_MIN);
                async move {
                    stop.await;
                    hand_over_before_stopping(&raft, &reads, handover_timeout).await;
                    tracing::info!("stopping");
                    let _ = shutdown_tx.send(true);
                }
            },
        );
    // Requests still in flight when the stop comes get SHUTDOWN_GRACE to finish; a request
    // waiting for a quorum that is gone must not keep the node from stopping.
    let mut stopping = app.shutdown.clone();
    let served = tokio::select! {
        served = server => served,
        fatal = crate::raft_watch::core_stopped(&raft) => {
            // openraft stops its core on a storage failure it cannot recover from (a full
            // disk, a failed fsync): a node whose Raft has stopped cannot serve anything, so
            // it exits with the reason rather than linger as a process that answers UNAVAILABLE.
            let _ = tokio::time::timeout(SHUTDOWN_GRACE, raft.shutdown()).await;
            return Err(anyhow::anyhow!("raft stopped: {fatal}"));
        }
        _ = async {
            let _ = stopping.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => {
            tracing::warn!(node = settings.id, "requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway");
            Ok(())
        }
    };
    if let Err(e) = tokio::time::timeout(SHUTDOWN_GRACE, raft.shutdown()).await {
        tracing::warn!("raft did not stop in time: {e}");
    }
    served.context("gRPC server failed")?;
    tracing::info!("stopped");
    Ok(())
}

/// A leader asked to stop first hands leadership to the most up-to-date voter, still serving
/// meanwhile (writes it refuses during the transfer name the new leader, and the writes it
/// took are committed by it): a rolling restart then costs one transfer, not an election
/// timeout plus an election. Past `within` it stops anyway.
async fn hand_over_before_stopping(raft: &Raft, reads: &ReadIndexRounds, within: Duration) {
    if !raft.is_leader() {
        return;
    }
    match handover::hand_over(raft, reads, None, within).await {
        Ok(new_leader) => tracing::info!(
            to = new_leader.id,
            term = new_leader.term,
            "handed leadership over before stopping"
        ),
        Err(HandOverError::NoOtherVoter | HandOverError::NotLeader(_)) => {}
        Err(error) => tracing::warn!(%error, "could not hand leadership over before stopping"),
    }
}

/// One INFO line per leadership change, for a person to grep, with the new term.
async fn log_leader_changes(id: NodeId, raft: Raft) {
    let mut metrics = raft.server_metrics();
    let mut last = None;
    loop {
        let now = {
            let m = metrics.borrow_and_update();
            let leader_addr = m
                .current_leader
                .and_then(|l| m.membership_config.membership().get_node(&l).map(|n| n.addr.clone()));
            (m.current_leader, leader_addr, m.vote.leader_id().term)
        };
        if last.as_ref().map(|l: &(Option<u64>, Option<String>, u64)| (l.0, l.2)) != Some((now.0, now.2)) {
            match &now {
                (Some(l), _, term) if *l == id => tracing::info!(term, "leader changed: this node leads"),
                (Some(l), addr, term) => tracing::info!(
                    term,
                    "leader changed: node {l} at {} leads",
                    addr.as_deref().unwrap_or("?")
                ),
                (None, _, term) => tracing::info!(term, "leader changed: no leader"),
            }
            last = Some(now);
        }
        if metrics.changed().await.is_err() {
            return;
        }
    }
}
