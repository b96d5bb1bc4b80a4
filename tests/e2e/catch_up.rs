//! Catch-up without harm (issue 13): a follower that missed a log the leader has since
//! compacted gets a snapshot of tens of MB and catches up while the cluster keeps serving —
//! the healthy nodes keep their term, no write fails — and a full-cluster restart with such a
//! lagging node serves writes.
//!
//! The nodes snapshot often and keep little log behind a snapshot, so that the writes made
//! while the follower is down are purged past it: it can only catch up from a snapshot.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv::client::Client;

use crate::common::{wait_until, ClusterOptions, TestCluster};

/// Each loaded value's size: few puts make many MB, and each is well under the value limit.
const LOADED_VALUE_BYTES: usize = 64 << 10;
/// How many values are loaded before the follower is killed (about 20 MB).
const LOADED_BEFORE: usize = 320;
/// How many more are loaded while it is down, at least (about 10 MB); then more, a round at a
/// time, until the leader's log is purged past the follower. How many entries a number of puts
/// makes depends on how the leader batches them, so a fixed number is not always enough for
/// the snapshots and purges this needs.
const LOADED_WHILE_DOWN: usize = 160;
/// The puts of one more round while waiting for the purge.
const LOAD_ROUND: usize = 16;
/// How long loading may go on before the purge past the follower is given up on.
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);
/// How many puts load the cluster at once.
const LOADERS: usize = 8;
/// How long the follower may take to catch up (a debug build on a busy machine): a deadline
/// to wait with, not a figure the test measures.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(120);
/// How long a restarted cluster may take to serve a write again.
const SERVE_AGAIN_TIMEOUT: Duration = Duration::from_secs(60);

/// Snapshots every 20 entries, 5 entries kept behind one. An election timeout of a second
/// (heartbeats every 100 ms): a debug build loading tens of MB on a busy CI machine misses
/// the default 60 ms now and then, and an election for that reason is not what this tests.
fn options() -> ClusterOptions {
    ClusterOptions::default().node_args(&[
        "--snapshot-after-logs",
        "20",
        "--keep-logs-after-snapshot",
        "5",
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "1000",
    ])
}

/// A value of [`LOADED_VALUE_BYTES`] that differs for every key.
fn loaded_value(i: usize) -> Bytes {
    let mut value = format!("value of load-{i:06} ").into_bytes();
    value.resize(LOADED_VALUE_BYTES, b'a' + (i % 26) as u8);
    Bytes::from(value)
}

/// Puts keys `range` through `client`, [`LOADERS`] at a time.
async fn load(client: &Client, range: std::ops::Range<usize>) {
    let mut next = range.start;
    while next < range.end {
        let batch = next..(next + LOADERS).min(range.end);
        next = batch.end;
        let puts = batch.map(|i| {
            let client = client.clone();
            async move {
                client
                    .put(Bytes::from(format!("load-{i:06}")), loaded_value(i))
                    .await
                    .unwrap_or_else(|e| panic!("loading key {i}: {e}"))
            }
        });
        futures::future::join_all(puts).await;
    }
}

/// Kills a follower, loads more until the leader's log no longer reaches where the follower
/// stopped, and returns the follower, the leader and the number of values loaded (keys
/// `load-000000` up to that).
async fn leave_a_follower_behind_a_compacted_log(cluster: &mut TestCluster) -> (u64, u64, usize) {
    let client = cluster.client();
    load(&client, 0..LOADED_BEFORE).await;
    let follower = cluster.follower().await;
    // Its log may hold entries beyond what it applied: the leader must purge past those too,
    // or it could send the follower the rest of the log instead of a snapshot.
    let last_index = cluster.status(follower).await.unwrap().last_log_index.unwrap_or(0);
    cluster.kill9(follower);
    let mut loaded = LOADED_BEFORE + LOADED_WHILE_DOWN;
    load(&client, LOADED_BEFORE..loaded).await;
    let deadline = Instant::now() + PURGE_TIMEOUT;
    loop {
        let leader = cluster.leader().await;
        let purged = cluster.status(leader).await.ok().and_then(|status| status.purged_index);
        if purged.unwrap_or(0) > last_index {
            return (follower, leader, loaded);
        }
        assert!(
            Instant::now() < deadline,
            "node {leader} (leader) has not purged its log past index {last_index}, where the killed \
             follower stopped, after {loaded} values loaded: purged up to {purged:?}"
        );
        load(&client, loaded..loaded + LOAD_ROUND).await;
        loaded += LOAD_ROUND;
    }
}

/// Puts through the router, one after another, until `stop`: how many succeeded, and the
/// errors of those that failed.
fn start_probe_writer(client: Client, stop: Arc<AtomicBool>) -> tokio::task::JoinHandle<(usize, Vec<String>)> {
    tokio::spawn(async move {
        let (mut done, mut failed) = (0, Vec::new());
        let mut i = 0usize;
        while !stop.load(Ordering::Relaxed) {
            match client.put(Bytes::from(format!("probe-{i:06}")), Bytes::from("p")).await {
                Ok(_) => done += 1,
                Err(e) => failed.push(format!("probe {i}: {e}")),
            }
            i += 1;
        }
        (done, failed)
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_behind_a_compacted_log_catches_up_from_a_snapshot_without_harm() {
    let mut cluster = TestCluster::start_with(options()).await;
    let (follower, leader, loaded) = leave_a_follower_behind_a_compacted_log(&mut cluster).await;
    let healthy: Vec<u64> = cluster.live_ids();
    let term = cluster.status(leader).await.unwrap().term;

    let stop = Arc::new(AtomicBool::new(false));
    let writer = start_probe_writer(cluster.client(), stop.clone());
    cluster.restart(follower).await;
    // Caught up: it has applied what the leader had applied when it came back, which it can
    // only have from a snapshot.
    let target = cluster.status(leader).await.unwrap().applied_index.unwrap_or(0);
    let status = cluster.wait_for_applied(follower, target, CATCH_UP_TIMEOUT).await;
    let log = std::fs::read_to_string(cluster.log_path(follower)).unwrap();
    assert!(
        log.contains("snapshot installed"),
        "the follower caught up without installing a snapshot: {status:?}"
    );
    // The writer keeps going a little after the catch-up: until one more put went through.
    let after = cluster.status(leader).await.unwrap().applied_index.unwrap_or(0) + 1;
    cluster.wait_for_applied(leader, after, CATCH_UP_TIMEOUT).await;
    stop.store(true, Ordering::Relaxed);
    let (done, failed) = writer.await.unwrap();

    assert!(
        failed.is_empty(),
        "writes failed while the follower caught up: {failed:?}"
    );
    assert!(done > 0, "the probe writer wrote nothing");
    for id in healthy {
        let status = cluster.status(id).await.unwrap();
        assert_eq!(
            status.term, term,
            "node {id}: the term moved while the follower caught up"
        );
        assert_eq!(status.leader_id, Some(leader), "node {id}: the leader changed");
    }
    // The snapshot carried the data: the follower holds the last value loaded.
    let last = loaded - 1;
    let value = cluster
        .node_client(follower)
        .get(Bytes::from(format!("load-{last:06}")), raftkv::pb::Consistency::Stale)
        .await
        .unwrap();
    assert!(
        value.value[..] == loaded_value(last)[..],
        "the follower lacks the last value loaded"
    );
    // No node keeps a copy of the data beside its state once the transfers are over: the
    // leader streams a snapshot from its state machine without writing a file, and a follower
    // removes the one it received once its engine holds it (or once a transfer ends without
    // an install). One may still be on its way (the leader purges on while the follower
    // installs the first): wait for the transfers to end.
    let snapshot_files = || {
        let mut kept = Vec::new();
        for id in cluster.ids() {
            for entry in std::fs::read_dir(cluster.data_dir(id)).unwrap() {
                let name = entry.unwrap().file_name().to_string_lossy().into_owned();
                if name.starts_with("snapshot") {
                    kept.push(format!("node {id}: {name}"));
                }
            }
        }
        kept
    };
    wait_until(CATCH_UP_TIMEOUT, "no node keeps a snapshot file", || async {
        snapshot_files().is_empty().then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_restart_with_a_lagging_node_serves_writes_and_the_node_catches_up() {
    let mut cluster = TestCluster::start_with(options()).await;
    let (follower, _, _) = leave_a_follower_behind_a_compacted_log(&mut cluster).await;
    for id in cluster.live_ids() {
        cluster.kill9(id);
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    let client = cluster.client();
    wait_until(SERVE_AGAIN_TIMEOUT, "the restarted cluster takes a write", || async {
        client.put(Bytes::from("after-restart"), Bytes::from("1")).await.ok()
    })
    .await;
    let leader = cluster.leader().await;
    let target = cluster.status(leader).await.unwrap().applied_index.unwrap_or(0);
    cluster.wait_for_applied(follower, target, CATCH_UP_TIMEOUT).await;
}
