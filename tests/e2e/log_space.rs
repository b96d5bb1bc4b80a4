//! The log kept behind a snapshot is bounded in bytes, not only in entries (issue 13, space).
//!
//! `--keep-logs-after-snapshot` (1 000 by default) counts entries, and an entry is a write
//! group of up to 1 MiB: with large values, 1 000 of them were up to a GiB of log on every
//! node beside a few MB of data. Now a node keeps no more than a quarter of its state machine's
//! size behind a snapshot (16 MiB at least), and snapshots once that much log has
//! accumulated: its log stays within about twice that.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use raftkv::pb::Consistency;

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
/// (16 MiB), the log since it (16 MiB more at most before the next), and the slack of its 4 MiB
/// segments (only whole ones are deleted; the one written to and a spare are allocated ahead).
const LOG_LIMIT_BYTES: u64 = 48 << 20;
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
