//! A user's first steps, with the real `raftkv` binary: `cluster up --detach`
//! starts three nodes and a router, put/get/status and `leader transfer` work through the router,
//! `cluster down` stops everything, and a second `cluster up` on the same data
//! directory finds the data again; `cluster up --tls` does the same with TLS, making its
//! certificates once.

use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::common::{self, binary, run_to_end, Finished};

/// How long one CLI command may run (`cluster up` waits for an election).
const COMMAND_TIMEOUT: Duration = Duration::from_secs(60);

/// Stops the detached cluster in `dir` when dropped, also when the test fails.
pub(crate) struct DetachedCluster {
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
    // The whole span is claimed: base..=base+3 for gRPC, base+100..=base+103 for metrics.
    common::free_port_block(104)
}

async fn raftkv(args: &[&str]) -> Finished {
    run_to_end(&binary("raftkv"), args, COMMAND_TIMEOUT).await
}

/// `cluster up --detach` in `dir` with the router on `base_port`; panics when it fails.
pub(crate) async fn up(dir: &Path, base_port: u16) -> DetachedCluster {
    up_with(dir, base_port, &[]).await.0
}

/// `cluster up --detach` with `extra` flags; the cluster and what `up` printed.
async fn up_with(dir: &Path, base_port: u16, extra: &[&str]) -> (DetachedCluster, Finished) {
    let base = base_port.to_string();
    let mut args = vec![
        "cluster",
        "up",
        "--detach",
        "--data-dir",
        dir.to_str().unwrap(),
        "--base-port",
        &base,
    ];
    args.extend_from_slice(extra);
    let run = raftkv(&args).await;
    let cluster = DetachedCluster {
        dir: dir.to_path_buf(),
        base_port,
        printed: run.stdout.clone(),
    };
    assert!(run.status.success(), "cluster up failed: {run:?}");
    (cluster, run)
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

    // Every process serves its metrics 100 ports above its own, and `cluster up` says where:
    // the router's first, then the nodes'. (Each is checked by a family it always has: a node
    // that has answered no request yet, as a follower the router has not read from may be, has
    // no `raftkv_requests_total` sample, and so no such family.)
    for offset in 0..=3 {
        let metrics = format!("127.0.0.1:{}", cluster.base_port + 100 + offset);
        assert!(
            cluster.printed.contains(&format!("http://{metrics}/metrics")),
            "{metrics} not printed:\n{}",
            cluster.printed
        );
        let text = common::scrape::scrape(&metrics).await;
        let family = match offset {
            0 => "# TYPE raftkv_router_leader_id gauge",
            _ => "# TYPE raftkv_raft_term gauge",
        };
        assert!(text.contains(family), "{metrics} lacks {family}:\n{text}");
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

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cluster_up_with_tls_makes_certificates_once_and_serves_the_cli_it_points_at_them() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("data");
    let base_port = free_port_block();
    let (cluster, run) = up_with(&dir, base_port, &["--tls"]).await;
    let endpoint = format!("127.0.0.1:{}", cluster.base_port);
    // `up` prints the settings that point the CLI at the certificates; take them from there.
    let exports = run
        .stdout
        .lines()
        .find_map(|line| line.trim().strip_prefix("export "))
        .unwrap_or_else(|| panic!("no export line in {run:?}"));
    let setting = |name: &str| {
        exports
            .split_whitespace()
            .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
            .unwrap_or_else(|| panic!("no {name} in {exports}"))
            .to_string()
    };
    let (ca, cert, key) = (setting("RAFTKV_CACERT"), setting("RAFTKV_CERT"), setting("RAFTKV_KEY"));
    let tls = ["--cacert", &ca, "--cert", &cert, "--key", &key];
    let with_tls = |command: &[&'static str]| {
        let mut args = vec!["--endpoint", endpoint.as_str()];
        args.extend_from_slice(&tls);
        args.extend_from_slice(command);
        args.into_iter().map(str::to_string).collect::<Vec<_>>()
    };
    let args = with_tls(&["put", "greeting", "hello"]);
    let run = raftkv(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert!(run.status.success(), "{run:?}");
    let run = raftkv(&["--endpoint", &endpoint, "--timeout", "300ms", "get", "greeting"]).await;
    assert_eq!(run.status.code(), Some(3), "plaintext is refused: {run:?}");
    assert!(run.stderr.contains("serves TLS"), "{run:?}");
    let ca_before = std::fs::read(&ca).unwrap();

    let run = raftkv(&["cluster", "down", "--data-dir", dir.to_str().unwrap()]).await;
    assert!(run.status.success(), "cluster down stops a TLS cluster: {run:?}");
    drop(cluster);
    let (_cluster, _) = up_with(&dir, base_port, &["--tls"]).await;
    assert_eq!(
        std::fs::read(&ca).unwrap(),
        ca_before,
        "the second up reuses the certificates"
    );
    let args = with_tls(&["get", "greeting"]);
    let run = raftkv(&args.iter().map(String::as_str).collect::<Vec<_>>()).await;
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "hello\n"),
        "{run:?}"
    );
}
