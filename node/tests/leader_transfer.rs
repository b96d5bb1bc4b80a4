//! Leader transfer, node side: three nodes run in this process (each the real node, on its
//! own loopback port and data directory), and the test asks the leader's openraft to hand
//! leadership over (`Raft::trigger().transfer_leader`). That travels as our
//! `Raft.TransferLeader` RPC and the new leader's election as `Raft.Vote` with
//! `leadership_transfer` set; the test checks that the chosen node leads and that writes
//! go on through it.

use std::collections::BTreeMap;
use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use openraft::ServerState;
use raftkv::client::Client;
use raftkv::pb::Consistency;
use raftkv_node::app::{self, App, Settings};
use tokio::sync::oneshot;

/// How long an election or a transfer may take before the test gives up.
const LEADER_TIMEOUT: Duration = Duration::from_secs(15);
/// How often a wait re-checks its condition.
const POLL_INTERVAL: Duration = Duration::from_millis(20);
/// The bound on each client call.
const CLIENT_TIMEOUT: Duration = Duration::from_secs(10);

/// Nodes 1..=n of one cluster, running as tasks of the test's runtime.
struct Nodes {
    apps: BTreeMap<u64, App>,
    addresses: Vec<String>,
    stops: Vec<oneshot::Sender<()>>,
    runs: Vec<tokio::task::JoinHandle<anyhow::Result<()>>>,
    _data: tempfile::TempDir,
}

fn free_port() -> u16 {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("its address").port()
}

/// Polls `probe` until it returns `Some`, within `within`; panics naming `what` otherwise.
async fn wait_until<T, Fut: Future<Output = Option<T>>>(what: &str, mut probe: impl FnMut() -> Fut) -> T {
    let deadline = tokio::time::Instant::now() + LEADER_TIMEOUT;
    loop {
        if let Some(value) = probe().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out after {LEADER_TIMEOUT:?} waiting until {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

impl Nodes {
    async fn start(n: u64) -> Nodes {
        let data = tempfile::tempdir().expect("a temp dir");
        let initial_cluster: BTreeMap<u64, String> =
            (1..=n).map(|id| (id, format!("127.0.0.1:{}", free_port()))).collect();
        let mut nodes = Nodes {
            apps: BTreeMap::new(),
            addresses: initial_cluster.values().cloned().collect(),
            stops: Vec::new(),
            runs: Vec::new(),
            _data: data,
        };
        for (&id, address) in &initial_cluster {
            let settings = Settings {
                id,
                listen: address.parse().expect("a socket address"),
                advertise: address.clone(),
                data_dir: nodes._data.path().join(format!("node-{id}")),
                initial_cluster: initial_cluster.clone(),
                initial_cluster_token: raftkv::wire::DEFAULT_CLUSTER_TOKEN.to_string(),
                heartbeat_interval_ms: 25,
                election_timeout_min_ms: 60,
                election_timeout_max_ms: 90,
                snapshot_after_logs: 5000,
                keep_logs_after_snapshot: 1000,
                source_address: None,
                engine: Default::default(),
                metrics_listen: None,
                tls: None,
            };
            let (stop, stopped) = oneshot::channel::<()>();
            let (serving, app) = oneshot::channel();
            let run = app::run_with(
                settings,
                async move {
                    let _ = stopped.await;
                },
                move |app| {
                    let _ = serving.send(app);
                },
            );
            nodes.runs.push(tokio::spawn(run));
            nodes.stops.push(stop);
            nodes.apps.insert(id, app.await.expect("the node serves"));
        }
        nodes
    }

    /// The leader every node names, when they all agree and it says it leads.
    fn agreed_leader(&self) -> Option<(u64, u64)> {
        let mut named = self.apps.values().map(|app| {
            let metrics = app.raft.metrics();
            let m = metrics.borrow_watched();
            (m.current_leader, m.current_term, m.state)
        });
        let (leader, term, _) = named.next()?;
        let leader = leader?;
        let all_agree = named.all(|(l, t, _)| l == Some(leader) && t == term);
        let leads = self.apps[&leader].raft.metrics().borrow_watched().state == ServerState::Leader;
        (all_agree && leads).then_some((leader, term))
    }

    async fn stop(self) {
        for stop in self.stops {
            let _ = stop.send(());
        }
        for run in self.runs {
            run.await.expect("a node task").expect("a node stops cleanly");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_transfer_moves_leadership_to_the_chosen_node_and_writes_go_on() {
    let nodes = Nodes::start(3).await;
    let (leader, term) = wait_until("every node names the same leader", || async { nodes.agreed_leader() }).await;
    let client = Client::new(nodes.addresses.clone(), CLIENT_TIMEOUT).expect("a client");
    client
        .put(Bytes::from_static(b"before"), Bytes::from_static(b"1"))
        .await
        .expect("a write before the transfer");

    let to = *nodes.apps.keys().find(|&&id| id != leader).expect("a follower");
    nodes.apps[&leader]
        .raft
        .trigger()
        .transfer_leader(to)
        .await
        .expect("the leader takes the transfer");
    let (new_leader, new_term) = wait_until(&format!("node {to} leads"), || async {
        nodes.agreed_leader().filter(|(id, _)| *id == to)
    })
    .await;
    assert_eq!(new_leader, to);
    assert!(
        new_term > term,
        "the new leader was elected in a new term ({new_term} after {term})"
    );

    let written = client
        .put(Bytes::from_static(b"after"), Bytes::from_static(b"2"))
        .await
        .expect("a write after the transfer");
    assert_eq!(
        written.header.map(|h| h.node_id),
        Some(to),
        "the new leader applied the write"
    );
    for (key, value) in [(&b"before"[..], &b"1"[..]), (b"after", b"2")] {
        let read = client
            .get(Bytes::copy_from_slice(key), Consistency::Linearizable)
            .await
            .expect("a linearizable read");
        assert_eq!(read.value, Bytes::copy_from_slice(value));
    }
    nodes.stop().await;
}
