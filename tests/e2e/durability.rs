//! End to end: what a node acknowledged is on disk, survives kill -9 of every node at once, and
//! a node never adopts (or damages) a data directory that is not its own.

use std::time::Duration;

use bytes::Bytes;
use raftkv::client::Error;
use raftkv::pb::{self, Consistency};

use crate::common::{self, key, value, ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_acknowledged_write_survives_killing_all_nodes() {
    const WRITERS: usize = 4;
    const WRITES_PER_WRITER: usize = 25;
    let mut cluster = TestCluster::start_with(ClusterOptions::default().without_router()).await;
    let client = cluster.nodes_client();

    // Concurrent writers, so that writes also share log entries and flushes (group commit).
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..WRITERS {
        let client = client.clone();
        writers.spawn(async move {
            let prefix = format!("writer-{writer}");
            for i in 0..WRITES_PER_WRITER {
                client.put(key(&prefix, i), value(&prefix, i)).await.expect("put");
            }
        });
    }
    while let Some(finished) = writers.join_next().await {
        finished.expect("a writer failed");
    }
    client
        .put(key("overwritten", 0), Bytes::from_static(b"first"))
        .await
        .expect("put");
    client
        .put(key("overwritten", 0), Bytes::from_static(b"last"))
        .await
        .expect("overwrite");
    client
        .put(key("deleted", 0), Bytes::from_static(b"doomed"))
        .await
        .expect("put");
    assert!(client.delete(key("deleted", 0)).await.expect("delete").existed);

    // No pause for the followers to catch up: only what was acknowledged is promised.
    for id in cluster.ids() {
        cluster.kill9(id);
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    cluster.leader().await;

    for writer in 0..WRITERS {
        let prefix = format!("writer-{writer}");
        for i in 0..WRITES_PER_WRITER {
            let got = client.get(key(&prefix, i), Consistency::Linearizable).await;
            assert_eq!(
                got.map(|reply| reply.value),
                Ok(value(&prefix, i)),
                "acknowledged write {prefix} #{i}"
            );
        }
    }
    let got = client
        .get(key("overwritten", 0), Consistency::Linearizable)
        .await
        .expect("get");
    assert_eq!(got.value, Bytes::from_static(b"last"));
    assert_eq!(
        client
            .get(key("deleted", 0), Consistency::Linearizable)
            .await
            .unwrap_err(),
        Error::NotFound
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_data_dir_of_another_node() {
    let mut cluster = TestCluster::start_with(ClusterOptions::default().without_router()).await;
    let client = cluster.nodes_client();
    client.put(key("precious", 0), value("precious", 0)).await.expect("put");
    let applied = {
        let leader = cluster.leader().await;
        cluster
            .status(leader)
            .await
            .expect("leader status")
            .applied_index
            .expect("applied")
    };
    let before = cluster.wait_for_applied(1, applied, Duration::from_secs(10)).await;
    assert!(cluster.stop(1).await.success());

    // Node 2's identity on node 1's directory (on a port of its own, so that only the data
    // directory can be the reason to refuse).
    let data_dir = cluster.data_dir(1).display().to_string();
    let port = format!("127.0.0.1:{}", common::free_port());
    let args = [
        "--id",
        "2",
        "--listen",
        &port,
        "--data-dir",
        &data_dir,
        "--initial-cluster",
        cluster.initial_cluster(),
    ];
    let message = common::node_refusal(&args).await;
    assert!(
        message.contains(&data_dir),
        "the message names the directory {data_dir}: {message}"
    );

    // Node 1's data is intact: restarted alone (no one to learn from), it still has it.
    cluster.stop(2).await;
    cluster.stop(3).await;
    cluster.restart(1).await;
    // Its very first status shows the whole log: a node serves only once its Raft core has
    // reported the log it loaded (its first status once said none, on a loaded machine).
    let after = cluster.status(1).await.expect("node 1's status once it answers");
    assert!(
        after.last_log_index >= before.last_log_index,
        "node 1's first status after its restart shows its log at {:?}, before {:?}",
        after.last_log_index,
        before.last_log_index
    );
    let request = pb::GetRequest {
        key: key("precious", 0),
        consistency: Consistency::Stale as i32,
    };
    let got = cluster
        .raw_kv(1)
        .get(request)
        .await
        .expect("stale get on node 1")
        .into_inner();
    assert_eq!(got.value, value("precious", 0));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_refuses_a_corrupt_data_dir_and_leaves_it_untouched() {
    let mut cluster = TestCluster::start_with(ClusterOptions::default().without_router()).await;
    cluster
        .nodes_client()
        .put(key("k", 0), value("k", 0))
        .await
        .expect("put");
    let follower = cluster.follower().await;
    assert!(cluster.stop(follower).await.success());

    // A snapshot file that does not decode: the node must refuse, not ignore or replace it.
    let snapshot = cluster.data_dir(follower).join("snapshot.bin");
    std::fs::write(&snapshot, b"this is not a snapshot").unwrap();
    let args = cluster.node_args(follower);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let run = common::run_to_end(&common::binary("raftkv-node"), &args, Duration::from_secs(10)).await;
    assert!(
        !run.status.success(),
        "raftkv-node started on a corrupt data dir: {run:?}"
    );
    let message = run.stderr.trim().lines().last().unwrap_or_default().to_string();
    assert!(
        message.starts_with("error:") && message.contains("corrupt"),
        "{message}"
    );
    assert_eq!(
        std::fs::read(&snapshot).unwrap(),
        b"this is not a snapshot",
        "the file was left as it was"
    );

    // Removing the bad file by hand is the operator's call; then the node starts and catches up.
    std::fs::remove_file(&snapshot).unwrap();
    cluster.restart(follower).await;
    let leader = cluster.leader().await;
    let applied = cluster.status(leader).await.unwrap().applied_index.unwrap();
    cluster
        .wait_for_applied(follower, applied, Duration::from_secs(10))
        .await;
}
