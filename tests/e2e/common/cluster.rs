//! [`TestCluster`]: a cluster of real `raftkv-node` processes (and optionally a
//! `raftkv-router`) on loopback, with the faults a test needs, clients, and status polling.
//!
//! Dropping it (also while a test panics) kills every process it started and removes the
//! data directories, after printing the tail of every log when the test failed.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::{Child, ExitStatus};
use std::time::Duration;

use raftkv::client::{self, Client, ClientOptions};
use raftkv::pb::{self, kv_client::KvClient};
use raftkv::tls::dev_certs::{self, DevCa, DevCertificates, Validity};
use raftkv::tls::ClientTls;
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::Channel;

use super::process::{binary, free_port, run_to_end, signal, spawn_logged, stop_process, tail};
use super::{
    wait_until, CLIENT_TIMEOUT, KEEP_DATA_ENV, LEADER_TIMEOUT, LOG_TAIL_LINES, POLL_INTERVAL, PROCESS_READY_TIMEOUT,
    STATUS_PROBE_TIMEOUT,
};

/// What cluster to start. `ClusterOptions::default()` is three nodes and a router.
#[derive(Clone, Debug)]
pub struct ClusterOptions {
    /// How many nodes (ids 1..=nodes).
    pub nodes: usize,
    /// Whether to start a router in front of them.
    pub router: bool,
    /// Extra flags for every `raftkv-node`, e.g. `--snapshot-after-logs 20`.
    pub node_args: Vec<String>,
    /// Where each node listens and how it is reached, when not simply a free port on
    /// 127.0.0.1 (a test that puts a fault-injecting proxy in front of every node).
    pub addresses: Option<BTreeMap<u64, NodeAddresses>>,
    /// Whether every process serves /metrics and /health (`--metrics-listen`, a free port each).
    pub metrics: bool,
    /// Whether every connection is TLS: a development CA of the cluster's own signs a node
    /// certificate (for 127.0.0.1) that the nodes and the router serve with, and a client
    /// certificate that the cluster's clients present.
    pub tls: bool,
    /// A backup every node's data directory is restored from (`raftkv snapshot restore`, with
    /// this cluster's own initial cluster) before the nodes start: a new cluster with its data.
    pub restore_from: Option<PathBuf>,
    /// Members listed in `--initial-cluster` that this cluster does not run, by id (above the
    /// cluster's own ids) and address: an address that belongs to a node of another cluster,
    /// listed by mistake.
    pub foreign_members: BTreeMap<u64, String>,
}

/// How one node is placed on the network.
#[derive(Clone, Debug)]
pub struct NodeAddresses {
    /// The address in the initial cluster: what peers and clients connect to.
    pub advertise: String,
    /// The address the node listens on.
    pub listen: String,
    /// The local address the node's connections to peers leave from.
    pub source: Option<std::net::IpAddr>,
    /// The network namespace the node runs in (`ip netns exec`), when not the test's own.
    pub netns: Option<String>,
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            router: true,
            node_args: Vec::new(),
            addresses: None,
            metrics: false,
            tls: false,
            restore_from: None,
            foreign_members: BTreeMap::new(),
        }
    }
}

impl ClusterOptions {
    /// Adds extra flags for every node.
    pub fn node_args(mut self, args: &[&str]) -> Self {
        self.node_args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    /// Has every process serve /metrics and /health on a port of its own.
    pub fn with_metrics(mut self) -> Self {
        self.metrics = true;
        self
    }

    /// Starts no router.
    pub fn without_router(mut self) -> Self {
        self.router = false;
        self
    }

    /// Restores every node's data directory from `backup` before it starts.
    pub fn restored_from(mut self, backup: &Path) -> Self {
        self.restore_from = Some(backup.to_path_buf());
        self
    }

    /// Runs every connection with TLS (see [`ClusterOptions::tls`]).
    pub fn with_tls(mut self) -> Self {
        self.tls = true;
        self
    }

    /// Lists `address` in the initial cluster as member `id`, which this cluster does not run
    /// (see [`ClusterOptions::foreign_members`]).
    pub fn with_foreign_member(mut self, id: u64, address: &str) -> Self {
        assert!(
            id > self.nodes as u64,
            "a foreign member's id comes after the cluster's own"
        );
        self.foreign_members.insert(id, address.to_string());
        self
    }
}

/// A TLS cluster's certificates: its CA (kept, to sign more in a test) and the files the
/// processes and the CLI are given.
pub struct ClusterTls {
    /// The cluster's CA.
    pub ca: DevCa,
    /// Where ca.pem, node.pem, node-key.pem, client.pem and client-key.pem are.
    pub dir: PathBuf,
    /// What the cluster's clients connect with: the CA and the client certificate.
    pub client: ClientTls,
}

impl ClusterTls {
    fn create(dir: PathBuf) -> ClusterTls {
        let validity = Validity::from_now(Duration::from_secs(24 * 3600));
        let ca = DevCa::new("raftkv test CA", validity).expect("a CA");
        DevCertificates::signed_by(&ca, &["127.0.0.1".to_string()], validity)
            .expect("certificates")
            .write(&dir, false)
            .expect("certificates written");
        let client = ClientTls::load(
            &dir.join(dev_certs::CA_FILE),
            Some((
                &dir.join(dev_certs::CLIENT_CERT_FILE),
                &dir.join(dev_certs::CLIENT_KEY_FILE),
            )),
        )
        .expect("the client's TLS");
        ClusterTls { ca, dir, client }
    }

    /// `--cert --key --ca` for a node or the router.
    fn server_args(&self) -> Vec<String> {
        self.file_flags([
            ("--cert", dev_certs::NODE_CERT_FILE),
            ("--key", dev_certs::NODE_KEY_FILE),
            ("--ca", dev_certs::CA_FILE),
        ])
    }

    /// `--cacert --cert --key` for the CLI.
    pub fn cli_args(&self) -> Vec<String> {
        self.file_flags([
            ("--cacert", dev_certs::CA_FILE),
            ("--cert", dev_certs::CLIENT_CERT_FILE),
            ("--key", dev_certs::CLIENT_KEY_FILE),
        ])
    }

    /// Each flag followed by the path of its file in the certificates' directory.
    fn file_flags(&self, flags: [(&str, &str); 3]) -> Vec<String> {
        flags
            .into_iter()
            .flat_map(|(flag, name)| [flag.to_string(), self.dir.join(name).display().to_string()])
            .collect()
    }
}

/// One `raftkv-node` of the cluster, running or not.
struct NodeProcess {
    id: u64,
    /// What peers and clients connect to.
    address: String,
    /// What the node listens on (the same as `address` unless a proxy sits in front).
    listen: String,
    source: Option<std::net::IpAddr>,
    netns: Option<String>,
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
    /// Where it serves /metrics and /health, if it does.
    metrics: Option<String>,
    /// Started with --join (added to the cluster later) instead of --initial-cluster.
    joins: bool,
}

/// The router, running or not.
struct RouterProcess {
    address: String,
    /// Where it serves /metrics and /health, if it does.
    metrics: Option<String>,
    log: PathBuf,
    child: Option<Child>,
}

/// A cluster of real `raftkv-node` processes (and optionally a `raftkv-router`) on loopback.
/// Node ids are 1..=n. Dropping it kills every process and removes the data.
pub struct TestCluster {
    /// Holds every data directory and log; removed on drop.
    root: TempDir,
    nodes: BTreeMap<u64, NodeProcess>,
    router: RouterProcess,
    initial_cluster: String,
    node_args: Vec<String>,
    /// The certificates, when every connection is TLS.
    tls: Option<ClusterTls>,
    /// Short-timeout client used only for status probes.
    probe: Client,
    /// The highest node id ever used, forgotten nodes included: ids are never reused.
    last_id: u64,
    /// How many members the initial cluster lists that this cluster does not run.
    foreign_members: usize,
}

impl TestCluster {
    /// Starts `nodes` nodes and a router, and waits until every node names the same leader.
    pub async fn start(nodes: usize) -> TestCluster {
        TestCluster::start_with(ClusterOptions {
            nodes,
            ..ClusterOptions::default()
        })
        .await
    }

    /// Starts the cluster `options` describe, and waits until every node names the same leader.
    pub async fn start_with(options: ClusterOptions) -> TestCluster {
        assert!(options.nodes > 0, "a cluster needs at least one node");
        let root = tempfile::Builder::new()
            .prefix("raftkv-e2e-")
            .tempdir()
            .expect("cannot create a temp dir");
        let nodes: BTreeMap<u64, NodeProcess> = (1..=options.nodes as u64)
            .map(|id| {
                let placed = options
                    .addresses
                    .as_ref()
                    .map(|all| all.get(&id).expect("an address for every node").clone());
                let address = placed
                    .as_ref()
                    .map(|p| p.advertise.clone())
                    .unwrap_or_else(|| format!("127.0.0.1:{}", free_port()));
                let node = NodeProcess {
                    id,
                    listen: placed
                        .as_ref()
                        .map(|p| p.listen.clone())
                        .unwrap_or_else(|| address.clone()),
                    source: placed.as_ref().and_then(|p| p.source),
                    netns: placed.as_ref().and_then(|p| p.netns.clone()),
                    address,
                    data_dir: root.path().join(format!("node-{id}")),
                    log: root.path().join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                    metrics: options.metrics.then(|| format!("127.0.0.1:{}", free_port())),
                    joins: false,
                };
                (id, node)
            })
            .collect();
        let initial_cluster = nodes
            .values()
            .map(|node| (node.id, &node.address))
            .chain(options.foreign_members.iter().map(|(id, address)| (*id, address)))
            .map(|(id, address)| format!("{id}={address}"))
            .collect::<Vec<_>>()
            .join(",");
        let router = RouterProcess {
            address: format!("127.0.0.1:{}", free_port()),
            metrics: options.metrics.then(|| format!("127.0.0.1:{}", free_port())),
            log: root.path().join("router.log"),
            child: None,
        };
        let tls = options.tls.then(|| ClusterTls::create(root.path().join("certs")));
        let client_options = ClientOptions {
            tls: tls.as_ref().map(|tls| tls.client.clone()),
            ..ClientOptions::default()
        };
        let probe = Client::with_options(vec![nodes[&1].address.clone()], STATUS_PROBE_TIMEOUT, client_options)
            .expect("a status client");
        let mut cluster = TestCluster {
            root,
            nodes,
            router,
            initial_cluster,
            node_args: options.node_args,
            tls,
            probe,
            last_id: options
                .foreign_members
                .keys()
                .copied()
                .fold(options.nodes as u64, u64::max),
            foreign_members: options.foreign_members.len(),
        };
        if let Some(backup) = &options.restore_from {
            for id in cluster.ids() {
                cluster.restore_node(id, backup).await;
            }
        }
        for id in cluster.ids() {
            cluster.spawn_node(id);
        }
        for id in cluster.ids() {
            cluster.wait_until_node_answers(id).await;
        }
        if options.router {
            cluster.start_router().await;
        }
        cluster.leader().await;
        cluster
    }

    // ---- what the cluster is ----

    /// The node ids, 1..=n.
    pub fn ids(&self) -> Vec<u64> {
        self.nodes.keys().copied().collect()
    }

    /// The number of nodes that make a majority of the whole cluster.
    pub fn majority(&self) -> usize {
        (self.nodes.len() + self.foreign_members) / 2 + 1
    }

    /// The HOST:PORT node `id` serves on.
    pub fn address(&self, id: u64) -> &str {
        &self.node(id).address
    }

    /// Every node's HOST:PORT, in id order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.values().map(|node| node.address.clone()).collect()
    }

    /// Where node `id` serves /metrics and /health (the cluster was started `with_metrics`).
    pub fn metrics_address(&self, id: u64) -> &str {
        self.node(id)
            .metrics
            .as_deref()
            .expect("a cluster started with metrics")
    }

    /// Where the router serves /metrics and /health (the cluster was started `with_metrics`).
    pub fn router_metrics_address(&self) -> &str {
        self.router.metrics.as_deref().expect("a cluster started with metrics")
    }

    /// The router's HOST:PORT (whether or not it runs).
    pub fn router_address(&self) -> &str {
        &self.router.address
    }

    /// The `--initial-cluster` value every node was started with.
    pub fn initial_cluster(&self) -> &str {
        &self.initial_cluster
    }

    /// Node `id`'s data directory.
    pub fn data_dir(&self, id: u64) -> &Path {
        &self.node(id).data_dir
    }

    /// Node `id`'s log file (stdout and stderr of every run of it).
    pub fn log_path(&self, id: u64) -> &Path {
        &self.node(id).log
    }

    /// A scratch directory that is removed with the cluster.
    pub fn temp_dir(&self) -> &Path {
        self.root.path()
    }

    /// Whether node `id` has a process (running or paused).
    pub fn is_running(&self, id: u64) -> bool {
        self.node(id).child.is_some()
    }

    /// How node `id` exited, if its process has ended on its own (it is then reaped and no
    /// longer counts as running); `None` while it runs.
    pub fn exit_status(&mut self, id: u64) -> Option<ExitStatus> {
        let node = self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"));
        let status = node.child.as_mut()?.try_wait().expect("cannot poll a node's process")?;
        node.child = None;
        Some(status)
    }

    /// The ids of the nodes that have a process and are not paused.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.child.is_some() && !node.paused)
            .map(|node| node.id)
            .collect()
    }

    // ---- clients ----

    /// The certificates, when the cluster runs TLS.
    pub fn tls(&self) -> Option<&ClusterTls> {
        self.tls.as_ref()
    }

    /// How the cluster's clients connect: TLS with the client certificate when the cluster
    /// runs TLS.
    pub fn client_options(&self) -> ClientOptions {
        ClientOptions {
            tls: self.tls.as_ref().map(|tls| tls.client.clone()),
            ..ClientOptions::default()
        }
    }

    /// A client that goes through the router.
    pub fn client(&self) -> Client {
        Client::with_options(vec![self.router.address.clone()], CLIENT_TIMEOUT, self.client_options())
            .expect("a router client")
    }

    /// A client whose only endpoint is node `id` (it still follows leader hints).
    pub fn node_client(&self, id: u64) -> Client {
        Client::with_options(
            vec![self.address(id).to_string()],
            CLIENT_TIMEOUT,
            self.client_options(),
        )
        .expect("a node client")
    }

    /// A client with every node as an endpoint and no router.
    pub fn nodes_client(&self) -> Client {
        Client::with_options(self.addresses(), CLIENT_TIMEOUT, self.client_options()).expect("a nodes client")
    }

    /// A channel to `address` as the cluster's clients connect.
    pub fn channel(&self, address: &str) -> Channel {
        client::channel(address, self.tls.as_ref().map(|tls| &tls.client)).expect("a channel")
    }

    /// A raw gRPC Kv client for node `id`: no validation, no retries, no hint following.
    pub fn raw_kv(&self, id: u64) -> KvClient<Channel> {
        KvClient::new(self.channel(self.address(id)))
    }

    /// A raw gRPC Kv client for the router.
    pub fn raw_router_kv(&self) -> KvClient<Channel> {
        KvClient::new(self.channel(&self.router.address))
    }

    // ---- status ----

    /// Node `id`'s status, asked once with a short timeout.
    pub async fn status(&self, id: u64) -> Result<pb::NodeStatus, client::Error> {
        self.probe.status_of(self.address(id)).await
    }

    /// Waits until node `id`'s status satisfies `condition` and returns that status.
    pub async fn wait_for_status(
        &self,
        id: u64,
        within: Duration,
        what: &str,
        condition: impl Fn(&pb::NodeStatus) -> bool,
    ) -> pb::NodeStatus {
        let condition = &condition;
        wait_until(within, &format!("node {id}: {what}"), || async move {
            self.status(id).await.ok().filter(|status| condition(status))
        })
        .await
    }

    /// Waits until node `id` has applied at least `index`.
    pub async fn wait_for_applied(&self, id: u64, index: u64, within: Duration) -> pb::NodeStatus {
        self.wait_for_status(id, within, &format!("applied index reaches {index}"), |status| {
            status.applied_index.unwrap_or(0) >= index
        })
        .await
    }

    /// The leader that a majority of the cluster agrees on right now, if any: a node that says
    /// it leads, and enough live nodes (itself included) that name it in the same term. Other
    /// live nodes may not have heard of it yet.
    pub async fn current_leader(&self) -> Option<u64> {
        let statuses = self.live_statuses().await;
        let leader = statuses
            .iter()
            .filter(|status| status.role() == pb::Role::Leader)
            .max_by_key(|status| status.term)?;
        let agreeing = statuses
            .iter()
            .filter(|status| status.term == leader.term && status.leader_id == Some(leader.id))
            .count();
        (agreeing >= self.majority()).then_some(leader.id)
    }

    /// The leader that every live node names right now, if they all agree: it says it leads,
    /// and every other live node answers and names it in the same term. A live node that does
    /// not answer (still starting, say) means no agreement yet.
    pub async fn agreed_leader(&self) -> Option<u64> {
        let live = self.live_ids();
        let statuses = self.live_statuses().await;
        if statuses.len() < live.len() || statuses.len() < self.majority() {
            return None;
        }
        let leader = statuses.iter().find(|status| status.role() == pb::Role::Leader)?;
        statuses
            .iter()
            .all(|status| status.term == leader.term && status.leader_id == Some(leader.id))
            .then_some(leader.id)
    }

    /// Waits until every live node names the same leader (see [`Self::agreed_leader`]), so
    /// that any of them can be asked about it, and returns it.
    pub async fn leader(&self) -> u64 {
        wait_until(LEADER_TIMEOUT, "every live node names the same leader", || {
            self.agreed_leader()
        })
        .await
    }

    /// Waits until every live node names the same leader, other than `old`, and returns it.
    pub async fn new_leader_other_than(&self, old: u64) -> u64 {
        let what = format!("every live node names the same leader, other than node {old}");
        wait_until(LEADER_TIMEOUT, &what, || async move {
            self.agreed_leader().await.filter(|&id| id != old)
        })
        .await
    }

    /// The statuses of the live nodes that answer.
    async fn live_statuses(&self) -> Vec<pb::NodeStatus> {
        let mut statuses = Vec::new();
        for id in self.live_ids() {
            if let Ok(status) = self.status(id).await {
                statuses.push(status);
            }
        }
        statuses
    }

    /// A node that is live and is not the current leader.
    pub async fn follower(&self) -> u64 {
        let leader = self.leader().await;
        self.live_ids()
            .into_iter()
            .find(|&id| id != leader)
            .expect("a live follower")
    }

    // ---- faults ----

    /// Kills node `id` with SIGKILL and reaps it.
    pub fn kill9(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"));
        let mut child = node.child.take().unwrap_or_else(|| panic!("node {id} is not running"));
        node.paused = false;
        signal(&child, libc::SIGKILL);
        child.wait().expect("cannot reap a killed node");
    }

    /// Sends node `id` SIGTERM and waits until it exits; returns how it exited.
    /// Panics when it is still running after [`STOP_TIMEOUT`] (and kills it).
    pub async fn stop(&mut self, id: u64) -> ExitStatus {
        let node = self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"));
        let child = node.child.take().unwrap_or_else(|| panic!("node {id} is not running"));
        node.paused = false;
        stop_process(child, &format!("node {id}")).await
    }

    /// Starts node `id` again with its data directory and flags, and waits until it answers.
    pub async fn restart(&mut self, id: u64) {
        assert!(
            !self.is_running(id),
            "node {id} is still running; kill or stop it first"
        );
        self.spawn_node(id);
        self.wait_until_node_answers(id).await;
    }

    /// Starts node `id` again, as [`TestCluster::restart`], where it may refuse to start: waits
    /// until it answers (`Ok`) or exits (`Err` with what it printed since it started).
    pub async fn restart_or_refusal(&mut self, id: u64) -> Result<(), String> {
        assert!(
            !self.is_running(id),
            "node {id} is still running; kill or stop it first"
        );
        self.spawn_node(id);
        let deadline = Instant::now() + PROCESS_READY_TIMEOUT;
        loop {
            let node = self.nodes.get_mut(&id).expect("a known node");
            if let Some(child) = node.child.as_mut() {
                if child.try_wait().ok().flatten().is_some() {
                    node.child = None;
                    let log = std::fs::read_to_string(&node.log).unwrap_or_default();
                    let since_start = log.rsplit_once("===== starting").map_or("", |(_, run)| run);
                    let printed = since_start.split_once('\n').map_or("", |(_, printed)| printed);
                    return Err(printed.trim().to_string());
                }
            }
            if self.status(id).await.is_ok() {
                return Ok(());
            }
            assert!(
                Instant::now() < deadline,
                "node {id} neither answered nor exited within {PROCESS_READY_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    /// Freezes node `id` with SIGSTOP: it holds its connections but answers nothing.
    pub fn pause(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"));
        let child = node
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(child, libc::SIGSTOP);
        node.paused = true;
    }

    /// Lets a paused node `id` run again with SIGCONT.
    pub fn resume(&mut self, id: u64) {
        let node = self.nodes.get_mut(&id).unwrap_or_else(|| panic!("no node {id}"));
        let child = node
            .child
            .as_ref()
            .unwrap_or_else(|| panic!("node {id} is not running"));
        signal(child, libc::SIGCONT);
        node.paused = false;
    }

    // ---- membership ----

    /// Starts a new node (the next id) with `--join` and an empty data directory, and waits
    /// until it answers; it is not a member until someone adds it. Returns its id.
    pub async fn start_joining_node(&mut self) -> u64 {
        self.start_joining_node_placed(|_| None).await
    }

    /// As [`TestCluster::start_joining_node`], with the node placed where `place` says given
    /// its id (behind a fault-injecting proxy, say); `None` is a free port on 127.0.0.1.
    pub async fn start_joining_node_placed(&mut self, place: impl FnOnce(u64) -> Option<NodeAddresses>) -> u64 {
        self.last_id += 1;
        let id = self.last_id;
        let placed = place(id).unwrap_or_else(|| {
            let address = format!("127.0.0.1:{}", free_port());
            NodeAddresses {
                advertise: address.clone(),
                listen: address,
                source: None,
                netns: None,
            }
        });
        let node = NodeProcess {
            id,
            listen: placed.listen,
            address: placed.advertise,
            source: placed.source,
            netns: placed.netns,
            data_dir: self.root.path().join(format!("node-{id}")),
            log: self.root.path().join(format!("node-{id}.log")),
            child: None,
            paused: false,
            metrics: None,
            joins: true,
        };
        self.nodes.insert(id, node);
        self.spawn_node(id);
        self.wait_until_node_answers(id).await;
        id
    }

    /// Leaves node `id` out of the cluster's picture (after it was removed from the
    /// membership): it is killed if it still runs; its data directory and log stay.
    pub fn forget(&mut self, id: u64) {
        if let Some(mut node) = self.nodes.remove(&id) {
            if let Some(mut child) = node.child.take() {
                signal(&child, libc::SIGKILL);
                let _ = child.wait();
            }
        }
    }

    // ---- the router ----

    /// Starts the router in front of every node and waits until it answers a status request.
    pub async fn start_router(&mut self) {
        assert!(self.router.child.is_none(), "the router already runs");
        let mut args = vec![
            "--listen".to_string(),
            self.router.address.clone(),
            "--nodes".to_string(),
            self.addresses().join(","),
        ];
        if let Some(metrics) = &self.router.metrics {
            args.extend(["--metrics-listen".to_string(), metrics.clone()]);
        }
        args.extend(self.tls.iter().flat_map(ClusterTls::server_args));
        let child = spawn_logged(&binary("raftkv-router"), &args, &self.router.log);
        self.router.child = Some(child);
        let address = self.router.address.clone();
        let router = Client::with_options(vec![address.clone()], STATUS_PROBE_TIMEOUT, self.client_options())
            .expect("a router client");
        let deadline = Instant::now() + PROCESS_READY_TIMEOUT;
        loop {
            if let Some(exit) = self
                .router
                .child
                .as_mut()
                .and_then(|child| child.try_wait().ok().flatten())
            {
                self.router.child = None;
                panic!(
                    "the router exited at start ({exit}):\n{}",
                    tail(&self.router.log, LOG_TAIL_LINES)
                );
            }
            if router.status().await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "the router at {address} did not answer within {PROCESS_READY_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }

    // ---- logs ----

    /// Prints the last lines of every log (nodes and router) to stderr.
    pub fn print_log_tails(&self) {
        for node in self.nodes.values() {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of node {} ({}) -----",
                node.id,
                node.log.display()
            );
            eprintln!("{}", tail(&node.log, LOG_TAIL_LINES));
        }
        if self.router.log.exists() {
            eprintln!(
                "----- last {LOG_TAIL_LINES} lines of the router ({}) -----",
                self.router.log.display()
            );
            eprintln!("{}", tail(&self.router.log, LOG_TAIL_LINES));
        }
    }

    // ---- internals ----

    fn node(&self, id: u64) -> &NodeProcess {
        self.nodes
            .get(&id)
            .unwrap_or_else(|| panic!("no node {id} (the cluster has {:?})", self.ids()))
    }

    /// The flags node `id` runs with.
    pub fn node_args(&self, id: u64) -> Vec<String> {
        let node = self.node(id);
        let mut args = vec![
            "--id".to_string(),
            id.to_string(),
            "--listen".to_string(),
            node.listen.clone(),
            "--advertise".to_string(),
            node.address.clone(),
            "--data-dir".to_string(),
            node.data_dir.display().to_string(),
        ];
        if node.joins {
            args.push("--join".to_string());
        } else {
            args.extend(["--initial-cluster".to_string(), self.initial_cluster.clone()]);
        }
        if let Some(source) = node.source {
            args.extend(["--source-address".to_string(), source.to_string()]);
        }
        if let Some(metrics) = &node.metrics {
            args.extend(["--metrics-listen".to_string(), metrics.clone()]);
        }
        args.extend(self.tls.iter().flat_map(ClusterTls::server_args));
        args.extend(self.node_args.iter().cloned());
        args
    }

    /// Makes node `id`'s data directory from `backup` with the CLI; panics if it fails.
    async fn restore_node(&self, id: u64, backup: &Path) {
        let data_dir = self.node(id).data_dir.display().to_string();
        let args = [
            "snapshot",
            "restore",
            &backup.display().to_string(),
            "--id",
            &id.to_string(),
            "--data-dir",
            &data_dir,
            "--initial-cluster",
            &self.initial_cluster,
        ];
        let run = run_to_end(&binary("raftkv"), &args, PROCESS_READY_TIMEOUT).await;
        assert!(run.status.success(), "restoring node {id} failed: {run:?}");
    }

    fn spawn_node(&mut self, id: u64) {
        let args = self.node_args(id);
        let node = self.nodes.get_mut(&id).expect("a known node");
        let child = match &node.netns {
            // `ip netns exec` execs the node in the namespace: the child is the node itself.
            Some(netns) => {
                let mut wrapped = vec!["netns".to_string(), "exec".to_string(), netns.clone()];
                wrapped.push(binary("raftkv-node").display().to_string());
                wrapped.extend(args);
                spawn_logged(Path::new("ip"), &wrapped, &node.log)
            }
            None => spawn_logged(&binary("raftkv-node"), &args, &node.log),
        };
        node.child = Some(child);
        node.paused = false;
    }

    async fn wait_until_node_answers(&mut self, id: u64) {
        let deadline = Instant::now() + PROCESS_READY_TIMEOUT;
        loop {
            let node = self.nodes.get_mut(&id).expect("a known node");
            if let Some(exit) = node.child.as_mut().and_then(|child| child.try_wait().ok().flatten()) {
                node.child = None;
                panic!(
                    "node {id} exited at start ({exit}):\n{}",
                    tail(&node.log, LOG_TAIL_LINES)
                );
            }
            if self.status(id).await.is_ok() {
                return;
            }
            assert!(
                Instant::now() < deadline,
                "node {id} did not answer within {PROCESS_READY_TIMEOUT:?}"
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        let children = self
            .nodes
            .values_mut()
            .map(|node| &mut node.child)
            .chain(std::iter::once(&mut self.router.child));
        for child in children.filter_map(Option::take) {
            let mut child = child;
            // SIGKILL also ends a SIGSTOPped process.
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
        }
        if std::thread::panicking() {
            eprintln!(
                "===== the test failed; logs of cluster {} =====",
                self.root.path().display()
            );
            self.print_log_tails();
            if std::env::var_os(KEEP_DATA_ENV).is_some() {
                self.root.disable_cleanup(true);
                eprintln!(
                    "===== {KEEP_DATA_ENV} is set: kept {} =====",
                    self.root.path().display()
                );
            }
        }
    }
}
