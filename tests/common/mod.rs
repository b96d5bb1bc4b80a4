//! A local raftkv cluster of real processes, for end-to-end tests.
//!
//! It exists so that every end-to-end test (and later a Jepsen-style test) starts, breaks and
//! inspects a cluster the same way: [`TestCluster`] runs `raftkv-node` processes (and optionally
//! a `raftkv-router`) on free loopback ports with a temporary data directory each, and offers
//! the faults a test needs — kill -9, SIGTERM, SIGSTOP/SIGCONT, restart — plus clients and
//! status polling. Waiting is always a poll of a condition with a deadline ([`wait_until`]),
//! never a bare sleep.
//!
//! Dropping a [`TestCluster`] (also while a test panics) kills every process it started and
//! removes the data directories; when the test failed it first prints the tail of every
//! process's log, which is usually the quickest way to see why.
//!
//! The binaries are the ones cargo built next to the test executable (`target/<profile>/`);
//! `cargo test --workspace` builds them, `cargo build --workspace` does too.
#![allow(dead_code)] // Each test file uses a different part of the harness.

use std::collections::BTreeMap;
use std::fs::{File, OpenOptions};
use std::future::Future;
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use bytes::Bytes;
use raftkv::client::{self, Client};
use raftkv::pb::{self, kv_client::KvClient};
use tempfile::TempDir;
use tokio::time::Instant;
use tonic::transport::Channel;

/// How often [`wait_until`] re-checks its condition.
pub const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// How long a started or restarted process may take to answer its first request.
pub const PROCESS_READY_TIMEOUT: Duration = Duration::from_secs(15);
/// How long an election may take before [`TestCluster::leader`] gives up.
pub const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How long a SIGTERMed process may take to exit before [`TestCluster::stop`] gives up.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on each call of the clients handed out by [`TestCluster::client`] and friends.
pub const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);
/// The bound on one status request while polling; a paused or dying node must not stall a poll.
pub const STATUS_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Lines of each log printed when a test fails.
pub const LOG_TAIL_LINES: usize = 40;
/// When this environment variable is set, a failed test leaves its data directories and
/// whole logs behind (their path is printed) instead of removing them.
pub const KEEP_DATA_ENV: &str = "RAFTKV_E2E_KEEP_DATA";

/// Ports are handed out from this range, below Linux's ephemeral range (32768+), so an outgoing
/// connection never takes a port that a stopped node needs back on restart.
const PORT_RANGE: std::ops::Range<u32> = 20_000..32_000;

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
}

impl Default for ClusterOptions {
    fn default() -> Self {
        ClusterOptions {
            nodes: 3,
            router: true,
            node_args: Vec::new(),
            addresses: None,
        }
    }
}

impl ClusterOptions {
    /// Adds extra flags for every node.
    pub fn node_args(mut self, args: &[&str]) -> Self {
        self.node_args.extend(args.iter().map(|arg| arg.to_string()));
        self
    }

    /// Starts no router.
    pub fn without_router(mut self) -> Self {
        self.router = false;
        self
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
    data_dir: PathBuf,
    log: PathBuf,
    child: Option<Child>,
    paused: bool,
}

/// The router, running or not.
struct RouterProcess {
    address: String,
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
    /// Short-timeout client used only for status probes.
    probe: Client,
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
                    address,
                    data_dir: root.path().join(format!("node-{id}")),
                    log: root.path().join(format!("node-{id}.log")),
                    child: None,
                    paused: false,
                };
                (id, node)
            })
            .collect();
        let initial_cluster = nodes
            .values()
            .map(|node| format!("{}={}", node.id, node.address))
            .collect::<Vec<_>>()
            .join(",");
        let router = RouterProcess {
            address: format!("127.0.0.1:{}", free_port()),
            log: root.path().join("router.log"),
            child: None,
        };
        let probe = Client::new(vec![nodes[&1].address.clone()], STATUS_PROBE_TIMEOUT).expect("a status client");
        let mut cluster = TestCluster {
            root,
            nodes,
            router,
            initial_cluster,
            node_args: options.node_args,
            probe,
        };
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
        self.nodes.len() / 2 + 1
    }

    /// The HOST:PORT node `id` serves on.
    pub fn address(&self, id: u64) -> &str {
        &self.node(id).address
    }

    /// Every node's HOST:PORT, in id order.
    pub fn addresses(&self) -> Vec<String> {
        self.nodes.values().map(|node| node.address.clone()).collect()
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

    /// The ids of the nodes that have a process and are not paused.
    pub fn live_ids(&self) -> Vec<u64> {
        self.nodes
            .values()
            .filter(|node| node.child.is_some() && !node.paused)
            .map(|node| node.id)
            .collect()
    }

    /// The process id of node `id`, when it runs.
    pub fn pid(&self, id: u64) -> Option<u32> {
        self.node(id).child.as_ref().map(Child::id)
    }

    // ---- clients ----

    /// A client that goes through the router.
    pub fn client(&self) -> Client {
        Client::new(vec![self.router.address.clone()], CLIENT_TIMEOUT).expect("a router client")
    }

    /// A client whose only endpoint is node `id` (it still follows leader hints).
    pub fn node_client(&self, id: u64) -> Client {
        Client::new(vec![self.address(id).to_string()], CLIENT_TIMEOUT).expect("a node client")
    }

    /// A client with every node as an endpoint and no router.
    pub fn nodes_client(&self) -> Client {
        Client::new(self.addresses(), CLIENT_TIMEOUT).expect("a nodes client")
    }

    /// A raw gRPC Kv client for node `id`: no validation, no retries, no hint following.
    pub fn raw_kv(&self, id: u64) -> KvClient<Channel> {
        KvClient::new(client::channel(self.address(id)).expect("a node channel"))
    }

    /// A raw gRPC Kv client for the router.
    pub fn raw_router_kv(&self) -> KvClient<Channel> {
        KvClient::new(client::channel(&self.router.address).expect("a router channel"))
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

    // ---- the router ----

    /// Starts the router in front of every node and waits until it answers a status request.
    pub async fn start_router(&mut self) {
        assert!(self.router.child.is_none(), "the router already runs");
        let args = vec![
            "--listen".to_string(),
            self.router.address.clone(),
            "--nodes".to_string(),
            self.addresses().join(","),
        ];
        let child = spawn_logged(&binary("raftkv-router"), &args, &self.router.log);
        self.router.child = Some(child);
        let address = self.router.address.clone();
        let router = Client::new(vec![address.clone()], STATUS_PROBE_TIMEOUT).expect("a router client");
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

    /// Kills the router with SIGKILL.
    pub fn kill_router(&mut self) {
        let mut child = self.router.child.take().expect("the router is not running");
        signal(&child, libc::SIGKILL);
        child.wait().expect("cannot reap the router");
    }

    /// Sends the router SIGTERM and waits until it exits.
    pub async fn stop_router(&mut self) -> ExitStatus {
        let child = self.router.child.take().expect("the router is not running");
        stop_process(child, "the router").await
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
            "--initial-cluster".to_string(),
            self.initial_cluster.clone(),
        ];
        if let Some(source) = node.source {
            args.extend(["--source-address".to_string(), source.to_string()]);
        }
        args.extend(self.node_args.iter().cloned());
        args
    }

    fn spawn_node(&mut self, id: u64) {
        let args = self.node_args(id);
        let node = self.nodes.get_mut(&id).expect("a known node");
        node.child = Some(spawn_logged(&binary("raftkv-node"), &args, &node.log));
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

/// Polls `probe` every [`POLL_INTERVAL`] until it returns `Some`, and returns that.
/// Panics, saying `what` was awaited, when that takes longer than `within`.
pub async fn wait_until<T, F, Fut>(within: Duration, what: &str, mut probe: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = Instant::now() + within;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {within:?} waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// The path of a workspace binary, built next to this test executable. Panics when it is missing.
pub fn binary(name: &str) -> PathBuf {
    // The test runs as target/<profile>/deps/<test>-<hash>; binaries are in target/<profile>/.
    let exe = std::env::current_exe().expect("cannot find the test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run `cargo build --workspace` first (`cargo test --workspace` builds it too)",
        path.display()
    );
    path
}

/// What a process that ran to its end printed, and how it exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `program` with `args` to its end, with output captured. Panics (after killing it) when
/// it is still running after `within`.
pub async fn run_to_end(program: &Path, args: &[&str], within: Duration) -> Finished {
    let scratch = tempfile::tempdir().expect("a temp dir");
    let stdout_path = scratch.path().join("stdout");
    let stderr_path = scratch.path().join("stderr");
    let mut child = command_without_raftkv_env(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("a stdout file"))
        .stderr(File::create(&stderr_path).expect("a stderr file"))
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "{} {args:?} was still running after {within:?}; stderr so far:\n{}",
                program.display(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// A key for test data: `prefix-0042`.
pub fn key(prefix: &str, i: usize) -> Bytes {
    Bytes::from(format!("{prefix}-{i:04}"))
}

/// A value that is different for every key and writer: `value-of-<prefix>-0042`.
pub fn value(prefix: &str, i: usize) -> Bytes {
    Bytes::from(format!("value-of-{prefix}-{i:04}"))
}

/// A loopback port that is free now and that no other test of this process gets.
///
/// Ports come from [`PORT_RANGE`], starting at an offset derived from the process id so that
/// test binaries running side by side rarely probe the same ports, and each is checked by
/// binding it.
pub fn free_port() -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let port = (PORT_RANGE.start + NEXT.fetch_add(1, Ordering::SeqCst) % span) as u16;
        if TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {PORT_RANGE:?}");
}

/// Starts `program` with stdout and stderr appended to `log`, after a line that says how.
fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Child {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("cannot open a log file");
    let _ = writeln!(file, "===== starting {} {}", program.display(), args.join(" "));
    let stderr = file.try_clone().expect("cannot clone a log file handle");
    command_without_raftkv_env(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()))
}

/// A command for `program` whose environment has no `RAFTKV_*` variables: every flag of our
/// binaries can also come from one, and a test must run with the flags it passes, not with
/// whatever the developer's shell has set.
fn command_without_raftkv_env(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RAFTKV_") {
            command.env_remove(name);
        }
    }
    command
}

/// SIGTERM, then waits up to [`STOP_TIMEOUT`] for the exit; kills and panics past it.
async fn stop_process(mut child: Child, name: &str) -> ExitStatus {
    signal(&child, libc::SIGCONT); // A paused process could not act on SIGTERM.
    signal(&child, libc::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for a child") {
            return status;
        }
        if Instant::now() >= deadline {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
            panic!("{name} did not exit within {STOP_TIMEOUT:?} of SIGTERM");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: plain kill(2) on a child we have not reaped yet, so the pid is still ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The last `lines` lines of a text file (or why it cannot be read).
pub fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}
