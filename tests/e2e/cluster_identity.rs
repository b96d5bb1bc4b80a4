//! Two clusters that share an address by mistake: cluster B's `--initial-cluster` lists, as its
//! third member, the address of one of cluster A's nodes. Every Raft call carries its cluster's
//! id, so A's node refuses B's calls (one warning line per sender, naming it and both ids), A
//! goes on serving in the same term under the same leader, and B elects among its two real
//! nodes. Without the id, B's leader (in a higher term) would take A's node over and unseat A's
//! leader. B's router, which learns B's members from the statuses, never sends B's requests
//! to A's node either.

use std::time::Duration;

use raftkv::client::Error;
use raftkv::pb::Consistency;
use tokio::time::Instant;

use crate::common::{binary, key, run_to_end, value, wait_until, ClusterOptions, TestCluster};

/// The text of the line a node logs when it refuses a Raft call of another cluster.
const REFUSAL: &str = "refused a Raft call";
/// How long a refusal may take to show up in the log once B runs (its first calls go out
/// within an election timeout).
const REFUSAL_TIMEOUT: Duration = Duration::from_secs(15);
/// At most how often the node names one sender (`cluster_identity::REFUSAL_WARNING_INTERVAL`).
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);
/// Reads through B's router: enough that its turns pass over every node it takes for healthy.
const ROUTED_READS: usize = 30;
/// How many leader transfers B may make to reach a term above A's.
const TERM_RAISING_TRANSFERS: usize = 10;

/// The lines of node `id`'s log that refuse a Raft call.
fn refusal_lines(cluster: &TestCluster, id: u64) -> Vec<String> {
    std::fs::read_to_string(cluster.log_path(id))
        .unwrap_or_default()
        .lines()
        .filter(|line| line.contains(REFUSAL))
        .map(str::to_string)
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_listed_in_two_clusters_serves_only_its_own() {
    // A's nodes wait long before they stand for election: what this test shows is that B cannot
    // move A's term, and a machine busy with other tests must not move it either. (B's calls,
    // were they taken, would move it at once, whatever the timeouts: they carry a higher term.)
    let a = TestCluster::start_with(ClusterOptions::default().without_router().node_args(&[
        "--heartbeat-ms",
        "100",
        "--election-timeout-ms",
        "2000",
    ]))
    .await;
    let a_leader = a.leader().await;
    let a_status = a.status(a_leader).await.unwrap();
    let a_cluster_id = a_status.cluster_id.clone();
    assert_eq!(a_cluster_id.len(), 16, "{a_status:?}");
    // The node listed in both: a follower of A, so that B's calls reach a node that listens.
    let shared = a.ids().into_iter().find(|id| *id != a_leader).unwrap();
    let a_client = a.nodes_client();
    a_client.put(key("a", 0), value("a", 0)).await.unwrap();

    let b_started = Instant::now();
    let b = TestCluster::start_with(
        ClusterOptions {
            nodes: 2,
            ..ClusterOptions::default()
        }
        .with_foreign_member(3, a.address(shared)),
    )
    .await;
    let b_leader = b.leader().await;
    assert!(
        [1, 2].contains(&b_leader),
        "B elects among its own nodes, not {b_leader}"
    );
    let b_cluster_id = b.status(b_leader).await.unwrap().cluster_id;
    assert_eq!(b_cluster_id.len(), 16);
    assert_ne!(b_cluster_id, a_cluster_id, "two clusters, two ids");

    // B's leader moves back and forth until B's term is above A's: a call of B that A's node took
    // would then make it follow B's leader and unseat A's.
    let b_client = b.nodes_client();
    for _ in 0..TERM_RAISING_TRANSFERS {
        if b.status(b.leader().await).await.unwrap().term > a_status.term + 1 {
            break;
        }
        let from = b.leader().await;
        // One that fails (a busy machine) is simply tried again.
        let _ = b_client.transfer_leader(Some(3 - from)).await;
    }
    let b_term = b.status(b.leader().await).await.unwrap().term;
    assert!(
        b_term > a_status.term,
        "B's term {b_term} did not pass A's {}",
        a_status.term
    );

    // A's node says why it refuses B's calls, naming the sender and both clusters.
    let refusal = wait_until(
        REFUSAL_TIMEOUT,
        "A's shared node logs a refusal of B's calls",
        || async { refusal_lines(&a, shared).into_iter().next() },
    )
    .await;
    assert!(
        refusal.contains(&format!("comes from cluster {b_cluster_id}"))
            && refusal.contains(&format!("belongs to cluster {a_cluster_id}"))
            && (refusal.contains("from node 1 at 127.0.0.1:") || refusal.contains("from node 2 at 127.0.0.1:")),
        "{refusal}"
    );

    // Both clusters serve writes, each its own.
    for i in 1..50 {
        a_client.put(key("a", i), value("a", i)).await.unwrap();
        b_client.put(key("b", i), value("b", i)).await.unwrap();
    }
    let shared_reader = a.node_client(shared);
    let read = shared_reader.get(key("b", 1), Consistency::Linearizable).await;
    assert!(matches!(read, Err(Error::NotFound)), "{read:?}");
    assert_eq!(
        shared_reader
            .get(key("a", 49), Consistency::Linearizable)
            .await
            .unwrap()
            .value,
        value("a", 49)
    );
    let read = b_client.get(key("a", 1), Consistency::Linearizable).await;
    assert!(matches!(read, Err(Error::NotFound)), "{read:?}");
    // B's router spreads reads over B's healthy nodes, and A's node is not one of them.
    let b_router = b.client();
    for _ in 0..ROUTED_READS {
        let read = b_router.get(key("b", 1), Consistency::Linearizable).await.unwrap();
        let served_by = read.header.as_ref().map(|header| header.node_id);
        assert!(matches!(served_by, Some(1 | 2)), "served by {served_by:?}");
        assert_eq!(read.value, value("b", 1));
    }

    // A never changed leader or term, on any node.
    for id in a.ids() {
        let status = a.status(id).await.unwrap();
        assert_eq!(
            (status.term, status.leader_id, status.cluster_id.as_str()),
            (a_status.term, Some(a_leader), a_cluster_id.as_str()),
            "node {id} of A"
        );
    }

    // B's calls were refused all along, yet each of B's two nodes was named at most once per
    // interval.
    let elapsed = b_started.elapsed();
    let lines = refusal_lines(&a, shared);
    let allowed = 2 * (elapsed.as_secs() / REFUSAL_WARNING_INTERVAL.as_secs() + 1) as usize;
    assert!(
        lines.len() <= allowed,
        "{} refusal lines in {elapsed:?}:\n{}",
        lines.len(),
        lines.join("\n")
    );

    // `raftkv status` on B names each cluster: B's members, and A's node listed in B.
    let endpoint = b.address(b_leader).to_string();
    let run = run_to_end(
        &binary("raftkv"),
        &["--endpoint", &endpoint, "status"],
        Duration::from_secs(20),
    )
    .await;
    assert!(run.status.success(), "{run:?}");
    assert!(
        run.stdout.contains(&format!("node 3: {a_cluster_id}"))
            && run.stdout.contains(&format!("node 1: {b_cluster_id}"))
            && run.stdout.contains("belongs to another cluster"),
        "{}",
        run.stdout
    );
}
