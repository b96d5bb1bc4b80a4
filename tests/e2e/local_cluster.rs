//! A user's first steps, with the real `raftkv` binary: `cluster up --detach`
//! starts three nodes and a router, put/get/status and `leader transfer` work through the router,
//! `cluster down` stops everything, and a second `cluster up` on the same data
//! directory finds the data again.

use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, binary, run_to_end, Finished};

/// How long one CLI command may run (`cluster up` waits for an election).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops the detached cluster in `dir` when dropped, also when the test fails.
struct DetachedCluster {
    dir: PathBuf,
    base_port: u16,
    /// What `cluster up` printed.
    printed: String,
}

impl Drop for DetachedCluster {
    fn drop(&mut self) {
        let _ = std::process::Command::new(binary("raftkv"))
            .args(["cluster", "down", "--data-dir", self.dir.to_str().unwrap()])
            .stdin(std::process::Stdio::null())
            .output();
    }
}

/// A base port whose next three ports are free as well (router on base, nodes on base+1..3),
/// and so are their metrics ports, 100 above them.
fn free_port_block() -> u16 {
    for _ in 0..200 {
        let base = common::free_port();
        if base > u16::MAX - 104 {
            continue;
        }
        let others = (1..=3).chain(100..=103);
        if others
            .into_iter()
            .all(|i| TcpListener::bind(("127.0.0.1", base + i)).is_ok())
        {
            return base;
        }
    }
    panic!("no block of four free ports");
}

async fn raftkv(args: &[&str]) -> Finished {
    run_to_end(&binary("raftkv"), args, COMMAND_TIMEOUT).await
}

async fn up(dir: &Path, base_port: u16) -> DetachedCluster {
    let base = base_port.to_string();
    let run = raftkv(&[
        "cluster",
        "up",
        "--detach",
        "--data-dir",
        dir.to_str().unwrap(),
        "--base-port",
        &base,
    ])
    .await;
    let cluster = DetachedCluster {
        dir: dir.to_path_buf(),
        base_port,
        printed: run.stdout.clone(),
    };
    assert!(run.status.success(), "cluster up failed: {run:?}");
    cluster
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_serves_the_cli_and_a_second_run_keeps_the_data() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let cluster = up(&dir, free_port_block()).await;
    let endpoint = format!("127.0.0.1:{}", cluster.base_port);

    let run = raftkv(&["--endpoint", &endpoint, "put", "greeting", "hello"]).await;
    assert!(run.status.success(), "{run:?}");
    let run = raftkv(&["--endpoint", &endpoint, "get", "greeting"]).await;
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "hello\n"),
        "{run:?}"
    );
    let run = raftkv(&["--endpoint", &endpoint, "get", "nothing-here"]).await;
    assert_eq!(run.status.code(), Some(1), "a missing key exits 1: {run:?}");

    // Every process serves its metrics 100 ports above its own, and `cluster up` says where.
    for offset in 0..=3 {
        let metrics = format!("127.0.0.1:{}", cluster.base_port + 100 + offset);
        assert!(
            cluster.printed.contains(&format!("http://{metrics}/metrics")),
            "{metrics} not printed:\n{}",
            cluster.printed
        );
        let text = common::scrape::scrape(&metrics).await;
        assert!(text.contains("# TYPE raftkv_requests_total counter"), "{text}");
    }

    let run = raftkv(&["--endpoint", &endpoint, "status", "--output", "json"]).await;
    assert!(run.status.success(), "{run:?}");
    let status: serde_json::Value = serde_json::from_str(&run.stdout).expect("status --output json is JSON");
    let nodes = status["nodes"].as_array().expect("a nodes array");
    assert_eq!(nodes.len(), 3, "{status}");
    assert_eq!(nodes.iter().filter(|n| n["role"] == "leader").count(), 1, "{status}");
    assert!(
        nodes
            .iter()
            .all(|n| n["reachable"] == true && n["pid"].as_u64().is_some()),
        "{status}"
    );

    // Leadership moves on request, to a chosen node or to the most up-to-date one; the
    // command returns once the new leader serves.
    let leader_of = |status: &serde_json::Value| {
        status["nodes"]
            .as_array()
            .and_then(|nodes| nodes.iter().find(|n| n["role"] == "leader"))
            .and_then(|n| n["id"].as_u64())
    };
    let before = leader_of(&status).expect("a leader");
    let target = if before == 1 { 2 } else { 1 };
    let run = raftkv(&[
        "--endpoint",
        &endpoint,
        "leader",
        "transfer",
        "--to",
        &target.to_string(),
    ])
    .await;
    assert!(run.status.success(), "{run:?}");
    assert!(run.stdout.starts_with(&format!("node {target} at ")), "{run:?}");
    let run = raftkv(&["--endpoint", &endpoint, "put", "greeting", "hello"]).await;
    assert!(run.status.success(), "a write after the transfer: {run:?}");
    let run = raftkv(&["--endpoint", &endpoint, "leader", "transfer"]).await;
    assert!(run.status.success(), "{run:?}");
    assert!(
        !run.stdout.starts_with(&format!("node {target} at ")),
        "it moved: {run:?}"
    );
    let run = raftkv(&["--endpoint", &endpoint, "leader", "transfer", "--to", "9"]).await;
    assert_eq!(run.status.code(), Some(2), "an unknown node is a usage error: {run:?}");
    assert!(
        run.stderr.contains("not a voter") && run.stderr.lines().count() == 1,
        "{run:?}"
    );

    // A second `up` on a running cluster's directory refuses instead of starting another.
    let run = raftkv(&[
        "cluster",
        "up",
        "--detach",
        "--data-dir",
        dir.to_str().unwrap(),
        "--base-port",
        &cluster.base_port.to_string(),
    ])
    .await;
    assert!(
        !run.status.success(),
        "a second cluster up on a running cluster must refuse: {run:?}"
    );

    let run = raftkv(&["cluster", "down", "--data-dir", dir.to_str().unwrap()]).await;
    assert!(run.status.success(), "cluster down failed: {run:?}");
    let run = raftkv(&["--endpoint", &endpoint, "--timeout", "300ms", "get", "greeting"]).await;
    assert_eq!(
        run.status.code(),
        Some(3),
        "nothing answers after cluster down: {run:?}"
    );
    let base_port = cluster.base_port;
    drop(cluster);

    // The same directory and ports again (the nodes' addresses are part of the cluster's
    // identity): the data is still there.
    let cluster = up(&dir, base_port).await;
    let endpoint = format!("127.0.0.1:{}", cluster.base_port);
    let run = raftkv(&["--endpoint", &endpoint, "get", "greeting"]).await;
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "hello\n"),
        "{run:?}"
    );
}
