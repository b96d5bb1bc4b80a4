//! Large values (up to the 1 MiB limit) at the sizes counts were made for.
//!
//! The log kept behind a snapshot is bounded in bytes, not only in entries (issue 13, space).
//! `--keep-logs-after-snapshot` (1 000 by default) counts entries, and an entry is a write
//! group of up to 1 MiB: with large values, 1 000 of them were up to a GiB of log on every
//! node beside a few MB of data. Now a node keeps no more than an eighth of its state machine's
//! size behind a snapshot (8 MiB at least), and snapshots once that much log has accumulated:
//! its log stays within about twice that, a quarter of the state.
//!
//! A batch reply holds a bounded share of values (`raftkv::batch::BATCH_REPLY_BYTES`): 256 gets
//! of 1 MiB values were one 256 MiB reply, and 256 clients reading such values held ~1 GB in
//! the nodes and the router and stalled the nodes' heartbeats into elections. The gets left out
//! are answered "send again", which the client library and the router do.
//!
//! A server reads requests only while those it is serving leave room for them
//! (`raftkv::serving::admission`): 256 clients writing 1 MiB values made the router hold ~900 MB
//! and the leader ~470 MB. Past the room, a write waits a moment, then is answered "busy"
//! (UNAVAILABLE, retried by clients after a pause) without having been read.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raftkv::batch::BATCH_REPLY_BYTES;
use raftkv::limits::MAX_VALUE_BYTES;
use raftkv::pb::{self, Consistency};
use raftkv::serving::admission::ADMISSION_WAIT;
use raftkv::serving::admission::GRPC_PREFIX_BYTES;
use raftkv::serving::REQUEST_BYTES_IN_FLIGHT;

use crate::common::{wait_until, TestCluster};

/// Each value: two make a write group of about the largest size.
const VALUE_BYTES: usize = 512 << 10;
/// The keys written, over and over: the data stays at 4 MiB while 96 MiB of log go by.
const KEYS: usize = 8;
/// Values written in all (96 MiB).
const PUTS: usize = 192;
/// Puts in flight at once.
const WRITERS: usize = 4;
/// What a node's log may hold once the writes are over: what is kept behind the last snapshot
/// (8 MiB), the log since it (8 MiB more at most before the next), and the slack of its 4 MiB
/// segments (only whole ones are deleted; the one written to and a spare are allocated ahead).
const LOG_LIMIT_BYTES: u64 = 32 << 20;
/// How long the nodes may take to purge once the writes are over (a debug build): a deadline
/// to wait with, not a figure the test measures.
const PURGE_TIMEOUT: Duration = Duration::from_secs(60);

fn value(round: usize) -> Bytes {
    let mut value = format!("round {round} ").into_bytes();
    value.resize(VALUE_BYTES, b'a' + (round % 26) as u8);
    Bytes::from(value)
}

fn dir_bytes(dir: &Path) -> u64 {
    std::fs::read_dir(dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|entry| entry.unwrap().metadata().unwrap().len())
        .sum()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_large_values_the_log_kept_behind_snapshots_stays_bounded_in_bytes() {
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();
    for first in (0..PUTS).step_by(WRITERS) {
        let puts = (first..first + WRITERS).map(|round| {
            let client = client.clone();
            async move {
                let key = Bytes::from(format!("large-{}", round % KEYS));
                client
                    .put(key, value(round))
                    .await
                    .unwrap_or_else(|e| panic!("put {round}: {e}"))
            }
        });
        futures::future::join_all(puts).await;
    }
    let logs = || -> Vec<(u64, u64)> {
        cluster
            .ids()
            .into_iter()
            .map(|id| (id, dir_bytes(&cluster.data_dir(id).join("raft-log"))))
            .collect()
    };
    let what = format!("every node's log holds at most {LOG_LIMIT_BYTES} bytes");
    wait_until(PURGE_TIMEOUT, &what, || async {
        let sizes = logs();
        sizes
            .iter()
            .all(|(_, bytes)| *bytes <= LOG_LIMIT_BYTES)
            .then_some(())
            .or_else(|| {
                eprintln!("raft-log bytes by node: {sizes:?}");
                None
            })
    })
    .await;
    // Purged behind snapshots, nothing lost: every node serves the last value of every key.
    for id in cluster.ids() {
        for round in PUTS - KEYS..PUTS {
            let got = cluster
                .node_client(id)
                .get(Bytes::from(format!("large-{}", round % KEYS)), Consistency::Stale)
                .await
                .unwrap_or_else(|e| panic!("node {id}, round {round}: {e}"));
            assert!(got.value == value(round), "node {id} lacks round {round}'s value");
        }
    }
}

/// Values of the largest size read in one batch: three times what one reply may hold.
const LARGEST_VALUES: usize = 3 * BATCH_REPLY_BYTES / MAX_VALUE_BYTES;

fn largest_value(i: usize) -> Bytes {
    let mut value = format!("largest {i} ").into_bytes();
    value.resize(MAX_VALUE_BYTES, b'a' + (i % 26) as u8);
    Bytes::from(value)
}

fn largest_key(i: usize) -> Bytes {
    Bytes::from(format!("largest-{i}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_batch_reply_holds_a_bounded_share_of_large_values_and_every_get_is_still_answered() {
    use pb::batch_item::Request as Item;
    use pb::batch_item_result::Result as Answer;
    let cluster = TestCluster::start(3).await;
    let client = cluster.client();
    for i in 0..LARGEST_VALUES {
        client
            .put(largest_key(i), largest_value(i))
            .await
            .unwrap_or_else(|e| panic!("put {i}: {e}"));
    }
    // One raw batch of every get, to the leader and to the router: each reply holds values up
    // to the bound (and one more, the value that crossed it) and asks for the rest again.
    let leader = cluster.leader().await;
    for (server, address) in [
        ("the leader", cluster.address(leader)),
        ("the router", cluster.router_address()),
    ] {
        let items = (0..LARGEST_VALUES)
            .map(|i| pb::BatchItem {
                timeout_us: 10_000_000,
                request: Some(Item::Get(pb::GetRequest {
                    key: largest_key(i),
                    consistency: Consistency::Linearizable as i32,
                })),
            })
            .collect();
        let reply = pb::kv_batch_client::KvBatchClient::new(cluster.channel(address))
            .max_decoding_message_size(usize::MAX)
            .batch(pb::BatchRequest { items })
            .await
            .unwrap_or_else(|e| panic!("a batch to {server}: {e}"))
            .into_inner();
        let (mut held, mut resent) = (0, 0);
        for (i, result) in reply.results.iter().enumerate() {
            match &result.result {
                Some(Answer::Get(get)) => {
                    assert!(get.value == largest_value(i), "{server}: the value of get {i}");
                    held += get.value.len();
                }
                Some(Answer::Error(error)) if error.resend => resent += 1,
                other => panic!("{server}: get {i} answered {other:?}"),
            }
        }
        assert!(
            held > 0 && held <= BATCH_REPLY_BYTES + MAX_VALUE_BYTES,
            "{server}: a reply held {held} bytes of values"
        );
        assert!(
            resent > 0,
            "{server}: every get was answered in one reply of {held} bytes"
        );
    }
    // Through the client library, which batches them the same way: every get comes back.
    let gets = (0..LARGEST_VALUES).map(|i| {
        let client = client.clone();
        async move {
            let got = client
                .get(largest_key(i), Consistency::Linearizable)
                .await
                .unwrap_or_else(|e| panic!("get {i}: {e}"));
            assert!(got.value == largest_value(i), "the value of get {i}");
        }
    });
    futures::future::join_all(gets).await;
}

/// Largest-value puts that fit in a server's room for requests in flight, counting by value
/// alone (each request is a little more than its value, so one fewer fits).
const PUTS_ADMITTED_AT_MOST: usize = REQUEST_BYTES_IN_FLIGHT / MAX_VALUE_BYTES;
/// Largest-value puts sent at once: the room's worth and 16 more.
const PUTS_AT_ONCE: usize = PUTS_ADMITTED_AT_MOST + 16;

/// The largest-value put `i`.
fn largest_put(i: usize) -> pb::PutRequest {
    pb::PutRequest {
        key: largest_key(i),
        value: largest_value(i),
        write_id: None,
    }
}

/// How many of [`PUTS_AT_ONCE`] largest-value puts a server's room holds: each takes its
/// message and the gRPC prefix before it (the longest key of them is counted for all).
fn puts_admitted() -> usize {
    use prost::Message;
    let request_bytes = largest_put(PUTS_AT_ONCE - 1).encoded_len() + GRPC_PREFIX_BYTES;
    REQUEST_BYTES_IN_FLIGHT / request_bytes
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_server_holds_a_bounded_share_of_large_writes_and_answers_the_rest_busy() {
    use tonic::Code;
    let mut cluster = TestCluster::start(3).await;
    cluster
        .client()
        .put(largest_key(0), largest_value(0))
        .await
        .expect("a put before the nodes are paused");
    // Nodes that answer nothing: the router holds every write it has read.
    for id in cluster.ids() {
        cluster.pause(id);
    }
    let kv = cluster.raw_router_kv();
    let puts: Vec<_> = (0..PUTS_AT_ONCE)
        .map(|i| {
            let mut kv = kv.clone();
            tokio::spawn(async move {
                let mut request = tonic::Request::new(largest_put(i));
                request.set_timeout(Duration::from_secs(60));
                kv.put(request).await
            })
        })
        .collect();
    // Those beyond the room are answered while the nodes are still paused: they were never read.
    // (Each is answered when its own wait ends, so all of them are waited for: a write still
    // waiting when the nodes come back may be admitted then, or answered busy.)
    let beyond_the_room = PUTS_AT_ONCE - puts_admitted();
    let busy_within = ADMISSION_WAIT + Duration::from_secs(20);
    let busy = wait_until(busy_within, "the writes beyond the router's room are answered", || {
        let finished = puts.iter().filter(|put| put.is_finished()).count();
        std::future::ready((finished >= beyond_the_room).then_some(finished))
    })
    .await;
    assert!(
        busy <= PUTS_AT_ONCE - PUTS_ADMITTED_AT_MOST / 2,
        "{busy} of {PUTS_AT_ONCE} writes were refused: the router held fewer than half its room"
    );
    let mut waiting = Vec::new();
    for put in puts {
        if put.is_finished() {
            let status = put
                .await
                .unwrap()
                .expect_err("a write answered while every node is paused");
            assert_eq!(status.code(), Code::Unavailable, "{status:?}");
            assert!(status.message().contains("busy"), "{status:?}");
        } else {
            waiting.push(put);
        }
    }
    // The writes it held are served once the nodes are back.
    for id in cluster.ids() {
        cluster.resume(id);
    }
    for put in waiting {
        put.await
            .unwrap()
            .expect("a write the router held, once the nodes are back");
    }
}
