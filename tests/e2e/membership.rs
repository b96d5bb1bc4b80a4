//! End to end: changing the membership of a running cluster — replacing a killed node with a
//! new one, growing and shrinking under write load, removing the leader — and what a removed
//! node's data directory does afterwards (it refuses to start).

use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use raftkv::client::{self, Client, Error};
use raftkv::pb::{self, cluster_client::ClusterClient, Consistency};
use tonic::Code;

use crate::common::{self, key, value, wait_until, TestCluster};

/// How long a membership change may take in these tests (a learner copies a few hundred keys).
const CHANGE_TIMEOUT: Duration = Duration::from_secs(20);

fn change_client(cluster: &TestCluster) -> Client {
    Client::new(vec![cluster.router_address().to_string()], CHANGE_TIMEOUT).expect("a client")
}

/// The members as the leader lists them: (id, voter).
async fn members(client: &Client) -> Vec<(u64, bool)> {
    let list = client.member_list().await.expect("member list");
    let mut members: Vec<(u64, bool)> = list.members.iter().map(|m| (m.id, m.voter)).collect();
    members.sort();
    members
}

async fn write_keys(client: &Client, prefix: &str, count: usize) {
    for i in 0..count {
        client.put(key(prefix, i), value(prefix, i)).await.expect("a put");
    }
}

/// Every key written by [`write_keys`] is on node `id`, read from its own state machine.
async fn assert_node_has_keys(cluster: &TestCluster, id: u64, prefix: &str, count: usize) {
    let node = cluster.node_client(id);
    for i in 0..count {
        let got = node
            .get(key(prefix, i), Consistency::Stale)
            .await
            .unwrap_or_else(|e| panic!("node {id} lacks {prefix} key {i}: {e}"));
        assert_eq!(got.value, value(prefix, i));
    }
}

/// Waits until node `id` has applied everything the leader had committed when called.
async fn wait_caught_up(cluster: &TestCluster, id: u64) {
    let leader = cluster.leader().await;
    let committed = cluster
        .status(leader)
        .await
        .expect("leader status")
        .commit_index
        .unwrap_or(0);
    cluster.wait_for_applied(id, committed, CHANGE_TIMEOUT).await;
}

/// The walkthrough of README's "Replacing a dead node", with snapshots taken often and the log
/// purged behind them, so that the new node gets the state (the record that node 3 was
/// removed included) from a snapshot rather than from the log.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_node_is_replaced_by_a_new_one_that_gets_every_key() {
    let options = common::ClusterOptions::default().node_args(&[
        "--snapshot-after-logs",
        "10",
        "--keep-logs-after-snapshot",
        "0",
    ]);
    let mut cluster = TestCluster::start_with(options).await;
    let client = change_client(&cluster);
    write_keys(&client, "before", 200).await;

    cluster.kill9(3);
    let removed = client.member_remove(3).await.expect("remove the dead node");
    assert!(removed.members.iter().all(|m| m.id != 3), "{removed:?}");
    cluster.forget(3);
    // Moves the snapshots (and the purged log) past the removal.
    write_keys(&client, "between", 50).await;

    let new = cluster.start_joining_node().await;
    assert_eq!(new, 4);
    let joining = cluster.status(new).await.expect("the joining node's status");
    assert!(
        joining.members.is_empty(),
        "a joining node is in no cluster yet: {joining:?}"
    );

    let added = client
        .member_add(new, cluster.address(new), false)
        .await
        .expect("add node 4");
    assert!(added.members.iter().any(|m| m.id == new && m.voter), "{added:?}");
    assert_eq!(members(&client).await, vec![(1, true), (2, true), (4, true)]);

    write_keys(&client, "after", 50).await;
    wait_caught_up(&cluster, new).await;
    assert_node_has_keys(&cluster, new, "before", 200).await;
    assert_node_has_keys(&cluster, new, "between", 50).await;
    assert_node_has_keys(&cluster, new, "after", 50).await;

    // Node 4 learnt from its snapshot that node 3 was removed: leading, it refuses the id.
    // The router, given only nodes 1 to 3, learnt node 4 from the membership: it routes there.
    // (On a machine loaded by the other tests, node 4 may lose the leadership again before
    // the put: then it is handed over again.)
    wait_until(
        CHANGE_TIMEOUT,
        "a put through the router is answered by node 4, leading",
        || async {
            client
                .transfer_leader(Some(new))
                .await
                .expect("hand leadership to node 4");
            let written = client
                .put(key("led-by-4", 0), value("led-by-4", 0))
                .await
                .expect("a put while node 4 leads");
            (written.header.map(|header| header.node_id) == Some(new)).then_some(())
        },
    )
    .await;
    let again = format!("127.0.0.1:{}", common::free_port());
    match cluster.node_client(new).member_add(3, &again, false).await {
        Err(Error::Other(message)) => assert!(
            message.starts_with("node 3 was removed from the cluster at log index") && message.contains("never reused"),
            "{message}"
        ),
        other => panic!("expected the reused id to be refused, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_is_removed_and_its_data_dir_then_refuses_to_start() {
    let mut cluster = TestCluster::start(3).await;
    let client = change_client(&cluster);
    write_keys(&client, "before", 20).await;
    let old_leader = cluster.leader().await;
    let args = cluster.node_args(old_leader);
    let data_dir = cluster.data_dir(old_leader).to_path_buf();

    client.member_remove(old_leader).await.expect("remove the leader");
    let left: Vec<u64> = members(&client).await.into_iter().map(|(id, _)| id).collect();
    assert_eq!(left.len(), 2, "{left:?}");
    assert!(!left.contains(&old_leader), "{left:?}");

    // The removed node finds out and records it; then it is left out of the cluster.
    wait_until(CHANGE_TIMEOUT, "the removed node records its removal", || {
        let marker = data_dir.join("removed");
        async move { marker.exists().then_some(()) }
    })
    .await;
    cluster.forget(old_leader);
    let new_leader = cluster.leader().await;
    assert_ne!(new_leader, old_leader);
    write_keys(&client, "after", 20).await;

    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let refusal = common::node_refusal(&args).await;
    assert!(
        refusal.contains(&format!("node {old_leader} was removed from the cluster at log index"))
            && refusal.contains("--join"),
        "{refusal}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn membership_refusals_have_their_code_and_one_line() {
    let mut cluster = TestCluster::start(3).await;
    let leader = cluster.leader().await;
    let mut raw = ClusterClient::new(client::channel(cluster.address(leader), None).expect("a channel"));

    let unknown = raw.member_remove(pb::MemberRemoveRequest { id: 9 }).await.unwrap_err();
    assert_eq!(unknown.code(), Code::NotFound, "{unknown:?}");
    assert_eq!(unknown.message(), "node 9 is not a member of the cluster");

    let taken_id = pb::MemberAddRequest {
        id: 2,
        address: "127.0.0.1:1".to_string(),
        learner: false,
    };
    let taken = raw.member_add(taken_id).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert!(taken.message().starts_with("node 2 is already a voter"), "{taken:?}");

    let taken_address = pb::MemberAddRequest {
        id: 7,
        address: cluster.address(2).to_string(),
        learner: true,
    };
    let taken = raw.member_add(taken_address).await.unwrap_err();
    assert_eq!(taken.code(), Code::AlreadyExists, "{taken:?}");
    assert_eq!(
        taken.message(),
        format!("address {} is already used by node 2", cluster.address(2))
    );

    let bad = pb::MemberAddRequest {
        id: 7,
        address: "no-port".to_string(),
        learner: true,
    };
    assert_eq!(raw.member_add(bad).await.unwrap_err().code(), Code::InvalidArgument);

    // Through the router and the client library: the leader's reason, not "key not found".
    let client = change_client(&cluster);
    match client.member_promote(9).await {
        Err(Error::Other(message)) => assert_eq!(message, "node 9 is not a member of the cluster"),
        other => panic!("expected a refusal, got {other:?}"),
    }
    // A follower sends the caller to the leader (the client follows the hint).
    let follower = cluster.follower().await;
    let via_follower = cluster.node_client(follower);
    assert_eq!(members(&via_follower).await, vec![(1, true), (2, true), (3, true)]);
    // A learner that cannot catch up (nothing listens at its address) is not promoted, and
    // the answer says it stays a learner.
    let short = Client::new(vec![cluster.router_address().to_string()], Duration::from_millis(1500)).unwrap();
    let dead = format!("127.0.0.1:{}", common::free_port());
    match short.member_add(8, &dead, false).await {
        Err(Error::Timeout(message)) => assert!(message.contains("it stays a learner"), "{message}"),
        other => panic!("expected a timeout, got {other:?}"),
    }
    assert!(members(&client).await.contains(&(8, false)));
    client.member_remove(8).await.expect("remove the learner");
    cluster.forget(8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn growing_to_five_and_shrinking_back_to_three_under_load_fails_no_write() {
    let mut cluster = TestCluster::start(3).await;
    let client = change_client(&cluster);
    let stop = Arc::new(AtomicBool::new(false));
    let written = Arc::new(AtomicUsize::new(0));
    let mut writers = Vec::new();
    for writer in 0..4 {
        let (client, stop, written) = (cluster.client(), stop.clone(), written.clone());
        writers.push(tokio::spawn(async move {
            let prefix = format!("load-{writer}");
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                client
                    .put(key(&prefix, i), value(&prefix, i))
                    .await
                    .unwrap_or_else(|e| panic!("write {i} of writer {writer} failed: {e}"));
                written.fetch_add(1, Ordering::Relaxed);
                i += 1;
            }
            i
        }));
    }
    let at_least = |n: usize| {
        let written = written.clone();
        async move {
            wait_until(CHANGE_TIMEOUT, "the writers make progress", || {
                let written = written.clone();
                async move { (written.load(Ordering::Relaxed) >= n).then_some(()) }
            })
            .await
        }
    };
    at_least(50).await;
    for _ in 0..2 {
        let id = cluster.start_joining_node().await;
        client
            .member_add(id, cluster.address(id), false)
            .await
            .expect("add a node");
    }
    assert_eq!(members(&client).await.len(), 5);
    let before_shrink = written.load(Ordering::Relaxed);
    at_least(before_shrink + 50).await;
    for id in [4, 5] {
        client.member_remove(id).await.expect("remove a node");
    }
    assert_eq!(members(&client).await, vec![(1, true), (2, true), (3, true)]);
    let after_shrink = written.load(Ordering::Relaxed);
    at_least(after_shrink + 50).await;
    stop.store(true, Ordering::Relaxed);
    let mut counts = Vec::new();
    for writer in writers {
        counts.push(writer.await.expect("a writer task"));
    }
    for id in [4, 5] {
        cluster.forget(id);
    }
    // Every acknowledged write is there.
    let leader = cluster.leader().await;
    for (writer, count) in counts.into_iter().enumerate() {
        assert_node_has_keys(&cluster, leader, &format!("load-{writer}"), count).await;
    }
}

/// `raftkv` with `args`, run to its end.
async fn raftkv(args: &[&str]) -> common::Finished {
    common::run_to_end(
        &common::binary("raftkv"),
        args,
        CHANGE_TIMEOUT + Duration::from_secs(10),
    )
    .await
}

/// The `raftkv member` commands as a script uses them: output, progress and exit codes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_member_commands_print_progress_and_exit_with_the_documented_codes() {
    let mut cluster = TestCluster::start(3).await;
    let endpoint = cluster.router_address().to_string();
    let run = raftkv(&["--endpoint", &endpoint, "member", "list", "--output", "json"]).await;
    assert!(run.status.success(), "{run:?}");
    let expected: Vec<String> = (1..=3)
        .map(|id| {
            format!(
                "{{\"id\":{id},\"address\":\"{}\",\"role\":\"voter\"}}",
                cluster.address(id)
            )
        })
        .collect();
    assert_eq!(run.stdout, format!("{{\"members\":[{}]}}\n", expected.join(",")));

    let new = cluster.start_joining_node().await;
    let address = cluster.address(new).to_string();
    let run = raftkv(&[
        "--endpoint",
        &endpoint,
        "--timeout",
        "20s",
        "member",
        "add",
        &new.to_string(),
        &address,
    ])
    .await;
    assert!(run.status.success(), "{run:?}");
    let lines: Vec<&str> = run.stdout.lines().collect();
    assert_eq!(
        lines.first(),
        Some(&format!("adding node {new} at {address} as a learner").as_str()),
        "{run:?}"
    );
    assert!(
        lines
            .last()
            .is_some_and(|l| l.starts_with(&format!("node {new} is a voter"))),
        "{run:?}"
    );
    // `raftkv status` shows the new member and its role.
    let run = raftkv(&["--endpoint", &endpoint, "status", "--output", "json"]).await;
    assert!(run.status.success() && run.stdout.contains(&address), "{run:?}");

    // A node that never answers: exit 3, one line saying it stays a learner.
    let dead = format!("127.0.0.1:{}", common::free_port());
    let run = raftkv(&["--endpoint", &endpoint, "--timeout", "2s", "member", "add", "8", &dead]).await;
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(run.stderr.contains("it stays a learner"), "{run:?}");
    let run = raftkv(&["--endpoint", &endpoint, "member", "list"]).await;
    assert!(
        run.stdout.lines().any(|l| l.starts_with("8 ") && l.contains("learner")),
        "{run:?}"
    );
    let run = raftkv(&["--endpoint", &endpoint, "member", "remove", "8"]).await;
    assert!(run.status.success(), "{run:?}");

    let run = raftkv(&["--endpoint", &endpoint, "member", "remove", "9"]).await;
    assert_eq!(run.status.code(), Some(3), "{run:?}");
    assert_eq!(run.stderr, "error: node 9 is not a member of the cluster\n");
    let run = raftkv(&["--endpoint", &endpoint, "member", "add", "9", "no-port"]).await;
    assert_eq!(run.status.code(), Some(2), "{run:?}");
    let run = raftkv(&["member", "add", "--help"]).await;
    assert!(run.status.success() && run.stdout.contains("Examples:"), "{run:?}");
}

/// A foreground `raftkv cluster up`, its console fed through a pipe, its output in a file;
/// killed (with its nodes, which die with it) if the test ends without `quit`.
struct ConsoleCluster {
    child: std::process::Child,
    output: std::path::PathBuf,
}

impl ConsoleCluster {
    fn type_line(&mut self, line: &str) {
        use std::io::Write;
        let stdin = self.child.stdin.as_mut().expect("a piped stdin");
        writeln!(stdin, "{line}").expect("write to the console");
    }

    async fn wait_for_output(&self, text: &str) {
        let what = format!("cluster up prints {text:?}");
        wait_until(CHANGE_TIMEOUT * 2, &what, || {
            let printed = std::fs::read_to_string(&self.output).unwrap_or_default();
            async move { printed.contains(text).then_some(()) }
        })
        .await;
    }
}

impl Drop for ConsoleCluster {
    fn drop(&mut self) {
        if self.child.try_wait().ok().flatten().is_none() {
            let _ = self.child.kill();
            let _ = self.child.wait();
        }
        if std::thread::panicking() {
            eprintln!("{}", std::fs::read_to_string(&self.output).unwrap_or_default());
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_cluster_up_console_adds_and_removes_nodes() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let output = scratch.path().join("console.out");
    // The router, five node ports and their metrics ports, 100 above them.
    let base = common::free_port_block(106);
    let child = std::process::Command::new(common::binary("raftkv"))
        .args([
            "cluster",
            "up",
            "--data-dir",
            dir.to_str().unwrap(),
            "--base-port",
            &base.to_string(),
        ])
        .stdin(std::process::Stdio::piped())
        .stdout(std::fs::File::create(&output).unwrap())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start cluster up");
    let mut console = ConsoleCluster { child, output };
    console.wait_for_output("try: raftkv").await;
    let endpoint = format!("127.0.0.1:{base}");
    let client = Client::new(vec![endpoint.clone()], CHANGE_TIMEOUT).unwrap();

    console.type_line("add");
    console.wait_for_output("node 4 added as a voter").await;
    assert_eq!(members(&client).await, vec![(1, true), (2, true), (3, true), (4, true)]);

    console.type_line("remove 1");
    console.wait_for_output("node 1 removed").await;
    assert_eq!(members(&client).await, vec![(2, true), (3, true), (4, true)]);
    client
        .put(key("after", 0), value("after", 0))
        .await
        .expect("a put after the changes");

    console.type_line("quit");
    let exited = wait_until(CHANGE_TIMEOUT, "cluster up exits", || {
        let exited = console.child.try_wait().ok().flatten();
        async move { exited }
    })
    .await;
    assert!(exited.success(), "cluster up exited with {exited}");
    let printed = std::fs::read_to_string(&console.output).unwrap();
    assert!(printed.contains("cluster stopped"), "{printed}");

    // The next `cluster up` in the same directory brings the added node back and leaves the
    // removed one stopped (its data directory would be refused).
    let _again = crate::local_cluster::up(&dir, base).await;
    assert_eq!(members(&client).await, vec![(2, true), (3, true), (4, true)]);
    let got = client
        .get(key("after", 0), Consistency::Linearizable)
        .await
        .expect("the data is still there");
    assert_eq!(got.value, value("after", 0));
    let probe = Client::new(vec![endpoint.clone()], Duration::from_millis(500)).unwrap();
    for id in [2, 3, 4] {
        let address = format!("127.0.0.1:{}", base + id);
        let status = probe
            .status_of(&address)
            .await
            .unwrap_or_else(|e| panic!("node {id} was not started again: {e}"));
        assert_eq!(status.id, u64::from(id));
    }
    let removed = format!("127.0.0.1:{}", base + 1);
    assert!(
        probe.status_of(&removed).await.is_err(),
        "the removed node 1 was started again"
    );
    let state = std::fs::read_to_string(dir.join("cluster.json")).expect("cluster.json");
    let state: serde_json::Value = serde_json::from_str(&state).expect("cluster.json is JSON");
    let recorded: Vec<u64> = state["nodes"]
        .as_array()
        .expect("nodes")
        .iter()
        .filter_map(|node| node["id"].as_u64())
        .collect();
    assert_eq!(recorded, [2, 3, 4], "{state}");
}
