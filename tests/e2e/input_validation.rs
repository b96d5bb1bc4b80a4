//! End to end: bad input — an empty or oversized key, an oversized value, an unknown command —
//! is refused with the documented error wherever it enters (client library, node, router,
//! CLI), and changes nothing.

use std::time::Duration;

use bytes::Bytes;
use raftkv::client::Error;
use raftkv::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use raftkv::pb::{self, kv_client::KvClient, Consistency};
use tonic::transport::Channel;
use tonic::Code;

use crate::common::{self, TestCluster};

/// How long one CLI run may take.
const CLI_TIMEOUT: Duration = Duration::from_secs(20);
/// The most pairs one Scan may ask for (proto/raftkv.proto, ScanRequest.limit).
const MAX_SCAN_LIMIT: u32 = 10_000;

fn oversized_value() -> Bytes {
    Bytes::from(vec![b'v'; MAX_VALUE_BYTES + 1])
}

fn oversized_key() -> Bytes {
    Bytes::from(vec![b'k'; MAX_KEY_BYTES + 1])
}

/// Sends every kind of bad request as raw gRPC (no client-side checks) and expects the server
/// to refuse each with INVALID_ARGUMENT.
async fn assert_server_refuses_bad_requests(mut kv: KvClient<Channel>, who: &str) {
    let put = |key: Bytes, value: Bytes| pb::PutRequest {
        key,
        value,
        ..Default::default()
    };
    let refusals = [
        (
            "put with an empty key",
            kv.put(put(Bytes::new(), Bytes::from_static(b"v"))).await.map(drop),
        ),
        (
            "put with an oversized key",
            kv.put(put(oversized_key(), Bytes::from_static(b"v"))).await.map(drop),
        ),
        (
            "put with an oversized value",
            kv.put(put(Bytes::from_static(b"existing"), oversized_value()))
                .await
                .map(drop),
        ),
        (
            "get with an empty key",
            kv.get(pb::GetRequest {
                key: Bytes::new(),
                consistency: Consistency::Linearizable as i32,
            })
            .await
            .map(drop),
        ),
        (
            "delete with an empty key",
            kv.delete(pb::DeleteRequest {
                key: Bytes::new(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "compare-and-swap with an empty key",
            kv.compare_and_swap(pb::CompareAndSwapRequest {
                key: Bytes::new(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "compare-and-swap to an oversized value",
            kv.compare_and_swap(pb::CompareAndSwapRequest {
                key: Bytes::from_static(b"existing"),
                expect: Some(Bytes::from_static(b"before")),
                new_value: oversized_value(),
                ..Default::default()
            })
            .await
            .map(drop),
        ),
        (
            "scan over the maximum limit",
            kv.scan(pb::ScanRequest {
                limit: MAX_SCAN_LIMIT + 1,
                ..Default::default()
            })
            .await
            .map(drop),
        ),
    ];
    for (what, result) in refusals {
        match result {
            Err(status) => assert_eq!(status.code(), Code::InvalidArgument, "{who}: {what}: {status:?}"),
            Ok(()) => panic!("{who} accepted a {what}"),
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_input_is_rejected_and_changes_nothing() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();

    // The limits are inclusive: a value of exactly the limit, and an empty one, are fine.
    let largest = Bytes::from(vec![b'x'; MAX_VALUE_BYTES]);
    client
        .put(Bytes::from_static(b"largest"), largest.clone())
        .await
        .expect("a value of exactly the limit");
    let got = client
        .get(Bytes::from_static(b"largest"), Consistency::Linearizable)
        .await
        .expect("get of the largest value");
    // Not assert_eq!: a failure would print a mebibyte.
    assert!(
        got.value == largest,
        "the largest value came back as {} other bytes",
        got.value.len()
    );
    client
        .put(Bytes::from(vec![b'k'; MAX_KEY_BYTES]), Bytes::new())
        .await
        .expect("a key of exactly the limit, empty value");

    client
        .put(Bytes::from_static(b"existing"), Bytes::from_static(b"before"))
        .await
        .expect("put");
    let leader = cluster.leader().await;
    let before = cluster.status(leader).await.expect("leader status");

    // The client library refuses without sending anything.
    let refused = [
        client.put(Bytes::new(), Bytes::from_static(b"v")).await.map(drop),
        client.put(oversized_key(), Bytes::from_static(b"v")).await.map(drop),
        client
            .put(Bytes::from_static(b"existing"), oversized_value())
            .await
            .map(drop),
        client.get(Bytes::new(), Consistency::Linearizable).await.map(drop),
        client.delete(Bytes::new()).await.map(drop),
    ];
    for result in refused {
        assert!(matches!(result, Err(Error::InvalidArgument(_))), "{result:?}");
    }

    // The servers refuse too, for clients that do not check.
    assert_server_refuses_bad_requests(cluster.raw_kv(leader), &format!("leader node {leader}")).await;
    assert_server_refuses_bad_requests(cluster.raw_router_kv(), "the router").await;

    // The CLI: a usage error (exit 2) for an unknown command and for input the limits refuse.
    let cli = common::binary("raftkv");
    let endpoint = cluster.router_address();
    let run = common::run_to_end(&cli, &["--endpoint", endpoint, "frobnicate"], CLI_TIMEOUT).await;
    assert_eq!(run.status.code(), Some(2), "unknown command: {run:?}");
    assert!(
        run.stdout.is_empty()
            && run.stderr.starts_with("error:")
            && run.stderr.contains("frobnicate")
            && run.stderr.trim().lines().count() == 1,
        "unknown command: one line on stderr expected: {run:?}"
    );
    let run = common::run_to_end(&cli, &["--endpoint", endpoint, "put", "", "v"], CLI_TIMEOUT).await;
    assert_eq!(run.status.code(), Some(2), "put with an empty key: {run:?}");
    let big_file = cluster.temp_dir().join("oversized-value");
    std::fs::write(&big_file, oversized_value()).expect("write a file");
    let big_file = big_file.display().to_string();
    let run = common::run_to_end(
        &cli,
        &["--endpoint", endpoint, "put", "existing", "--file", &big_file],
        CLI_TIMEOUT,
    )
    .await;
    assert_eq!(run.status.code(), Some(2), "put of an oversized value: {run:?}");
    assert!(!run.stderr.contains("panicked"), "{run:?}");

    // Nothing changed: the value is the same, and (barring an election, which appends an
    // entry of its own) the leader's log did not grow.
    let got = client
        .get(Bytes::from_static(b"existing"), Consistency::Linearizable)
        .await
        .expect("get");
    assert_eq!(got.value, Bytes::from_static(b"before"));
    let run = common::run_to_end(&cli, &["--endpoint", endpoint, "get", "existing"], CLI_TIMEOUT).await;
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "before\n"),
        "{run:?}"
    );
    let after = cluster.status(leader).await.expect("leader status");
    if after.term == before.term {
        assert_eq!(after.last_log_index, before.last_log_index, "the leader's log grew");
    } else {
        eprintln!(
            "an election happened (term {} -> {}); log growth not checked",
            before.term, after.term
        );
    }
}
