//! Exactly-once writes across failover: a write whose reply is lost and that is
//! retried with the same write id — after a leader kill, through another node,
//! even after every node restarted — takes effect once and is answered with its
//! first result.

use std::time::Duration;

use bytes::Bytes;
use raftkv::pb::{self, Consistency};

use crate::common::{self, TestCluster};

const CLIENT_ID: u64 = 0x5eed_cafe;

fn cas(key: &str, expect: &str, new: &str, sequence: u64) -> pb::CompareAndSwapRequest {
    pb::CompareAndSwapRequest {
        key: Bytes::from(key.to_string()),
        expect: Some(Bytes::from(expect.to_string())),
        new_value: Bytes::from(new.to_string()),
        write_id: Some(pb::WriteId {
            client_id: CLIENT_ID,
            sequence,
        }),
    }
}

async fn value_of(cluster: &TestCluster, key: &str) -> Bytes {
    cluster
        .client()
        .get(Bytes::from(key.to_string()), Consistency::Linearizable)
        .await
        .expect("a read")
        .value
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_retried_compare_and_swap_takes_effect_once_across_a_leader_kill() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    client
        .put(Bytes::from_static(b"counter"), Bytes::from_static(b"0"))
        .await
        .unwrap();

    // The CAS reaches the leader and is applied; its reply is "lost" (ignored here).
    let leader = cluster.leader().await;
    let request = cas("counter", "0", "1", 1);
    let first = cluster
        .raw_kv(leader)
        .compare_and_swap(request.clone())
        .await
        .expect("first attempt")
        .into_inner();
    assert!(first.swapped, "the first attempt swaps");

    // The leader dies; the client retries the same write (same write id) elsewhere.
    cluster.kill9(leader);
    let new_leader = cluster.new_leader_other_than(leader).await;
    // A leader just elected refuses writes (UNAVAILABLE, nothing applied) until a quorum has
    // acknowledged it; a client resends the same write then, as this does.
    let retry = common::wait_until(Duration::from_secs(10), "the new leader answers the retry", || {
        let mut kv = cluster.raw_kv(new_leader);
        let request = request.clone();
        async move {
            match kv.compare_and_swap(request).await {
                Ok(reply) => Some(reply.into_inner()),
                Err(status) if status.code() == tonic::Code::Unavailable => None,
                Err(status) => panic!("retry: {status}"),
            }
        }
    })
    .await;
    assert!(
        retry.swapped,
        "the retry is answered with the first result, not a failed comparison"
    );
    assert_eq!(value_of(&cluster, "counter").await, Bytes::from_static(b"1"));

    // A retry through the router after the old leader is back is still a duplicate.
    cluster.restart(leader).await;
    let via_router = cluster
        .raw_router_kv()
        .compare_and_swap(request.clone())
        .await
        .expect("router retry")
        .into_inner();
    assert!(via_router.swapped);

    // A new write of the same client (next sequence number) is applied normally.
    let next = cluster
        .raw_router_kv()
        .compare_and_swap(cas("counter", "1", "2", 2))
        .await
        .unwrap()
        .into_inner();
    assert!(next.swapped);
    assert_eq!(value_of(&cluster, "counter").await, Bytes::from_static(b"2"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_memory_of_applied_writes_survives_restarting_every_node() {
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    client
        .put(Bytes::from_static(b"doomed"), Bytes::from_static(b"x"))
        .await
        .unwrap();
    let delete = pb::DeleteRequest {
        key: Bytes::from_static(b"doomed"),
        write_id: Some(pb::WriteId {
            client_id: CLIENT_ID,
            sequence: 7,
        }),
        expect: None,
    };
    let first = cluster
        .raw_router_kv()
        .delete(delete.clone())
        .await
        .unwrap()
        .into_inner();
    assert!(first.existed && first.deleted);

    for id in cluster.ids() {
        cluster.kill9(id);
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    cluster.leader().await;
    // Someone else recreates the key; the old delete's retry must not remove it.
    client
        .put(Bytes::from_static(b"doomed"), Bytes::from_static(b"reborn"))
        .await
        .unwrap();
    let retry = cluster.raw_router_kv().delete(delete).await.unwrap().into_inner();
    assert!(retry.existed && retry.deleted, "the retry gets the first answer");
    assert_eq!(
        value_of(&cluster, "doomed").await,
        Bytes::from_static(b"reborn"),
        "and deletes nothing"
    );
}

/// A write whose caller gave up before the leader proposed it is not proposed at all: its
/// caller was told the outcome is unknown, and a leader that proposed every such write after
/// the fact, under an overload, spent itself on writes nobody waited for.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_write_whose_caller_gave_up_before_it_was_proposed_is_never_applied() {
    // Elections slow enough that followers paused for a moment neither lose the leader nor
    // take its lease away.
    let mut cluster = common::TestCluster::start_with(
        common::ClusterOptions::default()
            .without_router()
            .with_metrics()
            .node_args(&["--heartbeat-ms", "200", "--election-timeout-ms", "3000"]),
    )
    .await;
    let leader = cluster.leader().await;
    // The request bytes the leader holds for calls it is serving: a call's share goes when its
    // answer is ready or when it is dropped, whichever comes first, and with it the handler.
    let metrics = cluster.metrics_address(leader).to_string();
    let held_bytes = || async {
        let text = common::scrape::scrape(&metrics).await;
        common::scrape::metric(&text, "raftkv_request_bytes_held", &[]).expect("the leader reports the bytes it holds")
    };
    let put = |key: &'static str| pb::PutRequest {
        key: Bytes::from_static(key.as_bytes()),
        value: Bytes::from_static(b"v"),
        write_id: None,
    };
    cluster
        .raw_kv(leader)
        .put(put("warm-up"))
        .await
        .expect("the leader serves");
    let followers: Vec<u64> = cluster.ids().into_iter().filter(|id| *id != leader).collect();
    let before = cluster.status(leader).await.unwrap().last_log_index.unwrap_or(0);
    for id in &followers {
        cluster.pause(*id);
    }
    // Proposed, and held there: no follower can acknowledge it.
    let mut first = cluster.raw_kv(leader);
    let held = tokio::spawn(async move { first.put(put("held")).await });
    common::wait_until(
        Duration::from_secs(10),
        "the first write is in the leader's log",
        || async {
            let status = cluster.status(leader).await.ok()?;
            (status.last_log_index.unwrap_or(0) > before).then_some(())
        },
    )
    .await;
    let held_alone = held_bytes().await;
    // Queued behind it (one write group in flight at a time); its caller gives up. The
    // deadline goes to the server alone (`grpc-timeout`, no timer of the client's own), so the
    // call ends when the server gives up on it: had the client's own timer ended it, the
    // server could learn of that only later (a busy machine), and a write whose caller the
    // server still sees waiting is proposed once the first one commits, as it should be.
    let mut request = tonic::Request::new(put("given-up"));
    request
        .metadata_mut()
        .insert("grpc-timeout", tonic::metadata::MetadataValue::from_static("200m"));
    let given_up = cluster.raw_kv(leader).put(request).await;
    // tonic's server ends a call past its `grpc-timeout` (Cancelled), unless the handler's own
    // deadline does first (DeadlineExceeded); either way the handler is gone.
    let code = given_up
        .expect_err("nothing commits while the followers are paused")
        .code();
    assert!(
        matches!(code, tonic::Code::DeadlineExceeded | tonic::Code::Cancelled),
        "{code:?}"
    );
    // hyper's HTTP/2 server sends a call's answer before it drops the handler (and with it
    // the queued write): a thread preempted in between (three CPU hogs on two cores) left the
    // write waiting when the first one committed, and it was proposed. Wait until the leader
    // holds only the first write's bytes again.
    common::wait_until(
        Duration::from_secs(10),
        "the leader let go of the write whose caller gave up",
        || async { (held_bytes().await == held_alone).then_some(()) },
    )
    .await;
    for id in &followers {
        cluster.resume(*id);
    }
    held.await
        .unwrap()
        .expect("the first write commits once the followers are back");
    cluster
        .raw_kv(leader)
        .put(put("after"))
        .await
        .expect("a write after them");
    let read = cluster
        .raw_kv(leader)
        .get(pb::GetRequest {
            key: Bytes::from_static(b"given-up"),
            consistency: Consistency::Linearizable as i32,
        })
        .await;
    assert_eq!(
        read.map(|r| r.into_inner().value).map_err(|s| s.code()),
        Err(tonic::Code::NotFound),
        "the write whose caller gave up was applied"
    );
}
