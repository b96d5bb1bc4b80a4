//! End to end: writes are replicated to every node, reach nodes that were down (from the log or,
//! when the log was compacted, by a snapshot), and followers serve reads but refuse writes.

use std::time::Duration;

use bytes::Bytes;
use raftkv::client::Error;
use raftkv::pb::{self, Consistency};
use raftkv::wire;
use tonic::Code;

use crate::common::{key, value, ClusterOptions, TestCluster};

/// How long a restarted node may take to catch up.
const CATCH_UP_TIMEOUT: Duration = Duration::from_secs(15);

/// Reads `key` from node `id`'s local state (consistency STALE), straight from that node.
/// `None` when the node says the key does not exist.
async fn stale_read(cluster: &TestCluster, id: u64, key: &Bytes) -> Option<Bytes> {
    let request = pb::GetRequest {
        key: key.clone(),
        consistency: Consistency::Stale as i32,
    };
    match cluster.raw_kv(id).get(request).await {
        Ok(response) => {
            let response = response.into_inner();
            let served_by = response.header.as_ref().map(|header| header.node_id);
            assert_eq!(served_by, Some(id), "a stale read must be answered by the node asked");
            Some(response.value)
        }
        Err(status) if status.code() == Code::NotFound => None,
        Err(status) => panic!("stale read of {key:?} on node {id} failed: {status:?}"),
    }
}

/// The leader's applied index: every write acknowledged so far is at or below it.
async fn leader_applied_index(cluster: &TestCluster) -> u64 {
    let leader = cluster.leader().await;
    let status = cluster.status(leader).await.expect("the leader answers");
    status.applied_index.expect("a leader has applied something")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_and_reads_go_through_the_router() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();

    for i in 0..10 {
        client
            .put(key("router", i), value("router", i))
            .await
            .expect("put through the router");
    }
    for i in 0..10 {
        let got = client
            .get(key("router", i), Consistency::Linearizable)
            .await
            .expect("get through the router");
        assert_eq!(got.value, value("router", i));
    }

    // Overwrite, then delete: reads through the router see each change at once.
    client
        .put(key("router", 0), Bytes::from_static(b"second"))
        .await
        .expect("overwrite");
    let got = client
        .get(key("router", 0), Consistency::Linearizable)
        .await
        .expect("get after overwrite");
    assert_eq!(got.value, Bytes::from_static(b"second"));
    let deleted = client
        .delete(key("router", 1))
        .await
        .expect("delete through the router");
    assert!(deleted.existed, "the deleted key existed");
    assert_eq!(
        client
            .get(key("router", 1), Consistency::Linearizable)
            .await
            .unwrap_err(),
        Error::NotFound
    );
    assert_eq!(
        client
            .get(key("never-written", 0), Consistency::Linearizable)
            .await
            .unwrap_err(),
        Error::NotFound
    );
    let deleted_again = client.delete(key("router", 1)).await.expect("delete of an absent key");
    assert!(!deleted_again.existed, "the key was already gone");

    // The router answers status too, for one of the cluster's nodes.
    let status = client.status().await.expect("status through the router");
    assert!(
        cluster.ids().contains(&status.id),
        "status of node {} through the router",
        status.id
    );

    // Every node holds the writes.
    let applied = leader_applied_index(&cluster).await;
    for id in cluster.ids() {
        cluster.wait_for_applied(id, applied, CATCH_UP_TIMEOUT).await;
        assert_eq!(
            stale_read(&cluster, id, &key("router", 0)).await,
            Some(Bytes::from_static(b"second")),
            "node {id}"
        );
        assert_eq!(stale_read(&cluster, id, &key("router", 1)).await, None, "node {id}");
        for i in 2..10 {
            assert_eq!(
                stale_read(&cluster, id, &key("router", i)).await,
                Some(value("router", i)),
                "node {id}"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn killed_node_restarts_and_catches_up() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    client
        .put(key("before", 0), value("before", 0))
        .await
        .expect("put before the kill");

    let killed = cluster.leader().await;
    cluster.kill9(killed);
    cluster.new_leader_other_than(killed).await;
    for i in 0..20 {
        client
            .put(key("while-down", i), value("while-down", i))
            .await
            .expect("put while a node is down");
    }
    let applied = leader_applied_index(&cluster).await;

    cluster.restart(killed).await;
    let status = cluster.wait_for_applied(killed, applied, CATCH_UP_TIMEOUT).await;
    assert!(status.applied_index >= Some(applied));

    assert_eq!(
        stale_read(&cluster, killed, &key("before", 0)).await,
        Some(value("before", 0))
    );
    for i in 0..20 {
        assert_eq!(
            stale_read(&cluster, killed, &key("while-down", i)).await,
            Some(value("while-down", i)),
            "write {i}, made while node {killed} was down"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn node_behind_a_compacted_log_catches_up_by_snapshot() {
    const SNAPSHOT_AFTER_LOGS: u64 = 20;
    /// openraft's `purge_batch_size` as raftkv-node sets it: log entries are purged only in
    /// batches of this many, however small --keep-logs-after-snapshot is.
    const NODE_PURGE_BATCH_ENTRIES: usize = 256;
    let options = ClusterOptions::default().without_router().node_args(&[
        "--snapshot-after-logs",
        &SNAPSHOT_AFTER_LOGS.to_string(),
        "--keep-logs-after-snapshot",
        "0",
    ]);
    let mut cluster = TestCluster::start_with(options).await;
    let client = cluster.nodes_client();
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;

    for i in 0..3 {
        client
            .put(key("early", i), value("early", i))
            .await
            .expect("put before the stop");
    }
    let applied = leader_applied_index(&cluster).await;
    let at_stop = cluster.wait_for_applied(follower, applied, CATCH_UP_TIMEOUT).await;
    let follower_last_index = at_stop.last_log_index.expect("the follower has a log");
    assert!(
        cluster.stop(follower).await.success(),
        "node {follower} stopped cleanly"
    );

    // Sequential writes are one log entry each. The node purges in batches of
    // NODE_PURGE_BATCH_ENTRIES, so the log is compacted only once a snapshot covers that many.
    let writes = NODE_PURGE_BATCH_ENTRIES + 2 * SNAPSHOT_AFTER_LOGS as usize;
    for i in 0..writes {
        client
            .put(key("late", i), value("late", i))
            .await
            .expect("put while the follower is down");
    }
    let leader_status = cluster
        .wait_for_status(
            leader,
            CATCH_UP_TIMEOUT,
            "the log is purged past the stopped follower's last entry",
            |status| status.purged_index.is_some_and(|purged| purged > follower_last_index),
        )
        .await;
    let purged = leader_status.purged_index.expect("purged");
    assert!(
        purged > follower_last_index,
        "leader purged through {purged}, follower had {follower_last_index}"
    );
    let applied = leader_applied_index(&cluster).await;

    cluster.restart(follower).await;
    let caught_up = cluster
        .wait_for_status(
            follower,
            CATCH_UP_TIMEOUT,
            "a snapshot is installed and everything applied",
            |status| status.snapshot_index.is_some() && status.applied_index >= Some(applied),
        )
        .await;
    // The follower's own log ended at follower_last_index; anything beyond that which it
    // holds in a snapshot can only have come from the leader's snapshot.
    let snapshot_index = caught_up.snapshot_index.expect("a snapshot");
    assert!(
        snapshot_index > follower_last_index,
        "snapshot at {snapshot_index} should cover entries past the follower's old last index {follower_last_index}"
    );

    for i in 0..3 {
        assert_eq!(
            stale_read(&cluster, follower, &key("early", i)).await,
            Some(value("early", i))
        );
    }
    for i in 0..writes {
        assert_eq!(
            stale_read(&cluster, follower, &key("late", i)).await,
            Some(value("late", i)),
            "write {i}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follower_serves_linearizable_reads_and_refuses_writes_with_a_leader_hint() {
    let cluster = TestCluster::start_with(ClusterOptions::default().without_router()).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;
    let the_key = key("hinted", 0);

    cluster
        .raw_kv(leader)
        .put(pb::PutRequest {
            key: the_key.clone(),
            value: Bytes::from_static(b"from-the-leader"),
            ..Default::default()
        })
        .await
        .expect("put on the leader");

    // Read at once, without waiting for the follower to apply: ReadIndex makes it wait itself.
    let read = cluster
        .raw_kv(follower)
        .get(pb::GetRequest {
            key: the_key.clone(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .expect("linearizable get on a follower")
        .into_inner();
    assert_eq!(read.value, Bytes::from_static(b"from-the-leader"));
    assert_eq!(
        read.header.map(|header| header.node_id),
        Some(follower),
        "served by the follower itself"
    );

    let refused = cluster
        .raw_kv(follower)
        .put(pb::PutRequest {
            key: the_key.clone(),
            value: Bytes::from_static(b"from-the-follower"),
            ..Default::default()
        })
        .await
        .expect_err("a follower refuses a write");
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    let metadata = refused.metadata();
    let leader_id = metadata
        .get(wire::LEADER_ID_METADATA)
        .and_then(|value| value.to_str().ok());
    let leader_address = metadata
        .get(wire::LEADER_ADDR_METADATA)
        .and_then(|value| value.to_str().ok());
    assert_eq!(leader_id, Some(leader.to_string().as_str()), "{refused:?}");
    assert_eq!(leader_address, Some(cluster.address(leader)), "{refused:?}");
    assert_eq!(
        wire::leader_hint(&refused),
        Some(wire::LeaderHint {
            id: leader,
            address: cluster.address(leader).to_string()
        })
    );

    // The refused write changed nothing.
    let read = cluster
        .raw_kv(leader)
        .get(pb::GetRequest {
            key: the_key.clone(),
            consistency: Consistency::Linearizable as i32,
        })
        .await
        .expect("get on the leader")
        .into_inner();
    assert_eq!(read.value, Bytes::from_static(b"from-the-leader"));
}

/// A raw KvBatch client for node `id` (what the router uses).
fn raw_batch(cluster: &TestCluster, id: u64) -> pb::kv_batch_client::KvBatchClient<tonic::transport::Channel> {
    pb::kv_batch_client::KvBatchClient::new(cluster.channel(cluster.address(id)))
}

fn item(request: pb::batch_item::Request) -> pb::BatchItem {
    pb::BatchItem {
        timeout_us: 5_000_000,
        request: Some(request),
    }
}

/// The item's own status, as the router rebuilds it from the batch reply.
fn item_failure(result: &pb::BatchItemResult) -> tonic::Status {
    match &result.result {
        Some(pb::batch_item_result::Result::Error(error)) => raftkv::batch::item_status(error.clone()),
        other => panic!("expected an error, got {other:?}"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_answers_each_item_as_its_own_call_would() {
    use pb::batch_item::Request as Item;
    use pb::batch_item_result::Result as Answer;
    let cluster = TestCluster::start_with(ClusterOptions::default().without_router()).await;
    let leader = cluster.leader().await;
    let follower = cluster.follower().await;
    // The raw batch below is not retried: make sure the new leader serves first (it refuses
    // writes until a quorum has acknowledged it, which a busy machine can delay).
    cluster
        .node_client(leader)
        .put(key("batched-warm-up", 0), Bytes::from_static(b"1"))
        .await
        .expect("the leader serves");
    let put = |key: Bytes, value: &'static [u8]| {
        item(Item::Put(pb::PutRequest {
            key,
            value: Bytes::from_static(value),
            ..Default::default()
        }))
    };

    // On the leader: a good put, a bad one, a get of a missing key and a compare-and-swap.
    let results = raw_batch(&cluster, leader)
        .batch(pb::BatchRequest {
            items: vec![
                put(key("batched", 0), b"one"),
                put(Bytes::new(), b"no key"),
                item(Item::Get(pb::GetRequest {
                    key: key("batched-missing", 0),
                    consistency: Consistency::Linearizable as i32,
                })),
                item(Item::CompareAndSwap(pb::CompareAndSwapRequest {
                    key: key("batched", 1),
                    expect: None,
                    new_value: Bytes::from_static(b"created"),
                    ..Default::default()
                })),
            ],
        })
        .await
        .expect("a batch on the leader")
        .into_inner()
        .results;
    assert_eq!(results.len(), 4, "{results:?}");
    assert!(
        matches!(&results[0].result, Some(Answer::Put(r)) if r.header.as_ref().map(|h| h.node_id) == Some(leader)),
        "{results:?}"
    );
    let bad = item_failure(&results[1]);
    assert_eq!((bad.code(), bad.message()), (Code::InvalidArgument, "key is empty"));
    assert_eq!(item_failure(&results[2]).code(), Code::NotFound);
    assert!(
        matches!(&results[3].result, Some(Answer::CompareAndSwap(r)) if r.swapped),
        "{results:?}"
    );

    // On a follower: a write is refused with the leader hint its own call would carry; a
    // linearizable read sees the writes above.
    let results = raw_batch(&cluster, follower)
        .batch(pb::BatchRequest {
            items: vec![
                put(key("batched", 0), b"from-a-follower"),
                item(Item::Get(pb::GetRequest {
                    key: key("batched", 0),
                    consistency: Consistency::Linearizable as i32,
                })),
            ],
        })
        .await
        .expect("a batch on a follower")
        .into_inner()
        .results;
    let refused = item_failure(&results[0]);
    assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
    assert_eq!(
        wire::leader_hint(&refused),
        Some(wire::LeaderHint {
            id: leader,
            address: cluster.address(leader).to_string()
        })
    );
    assert!(
        matches!(&results[1].result, Some(Answer::Get(r)) if r.value == Bytes::from_static(b"one")),
        "{results:?}"
    );

    // Over the item limit: the whole call is refused and nothing is written.
    let too_many = (0..=raftkv::batch::MAX_BATCH_ITEMS)
        .map(|i| put(key("over-the-limit", i), b"x"))
        .collect();
    let refused = raw_batch(&cluster, leader)
        .batch(pb::BatchRequest { items: too_many })
        .await
        .expect_err("a batch over the item limit");
    assert_eq!(refused.code(), Code::InvalidArgument, "{refused:?}");
    assert_eq!(stale_read(&cluster, leader, &key("over-the-limit", 0)).await, None);
}
