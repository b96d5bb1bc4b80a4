//! Pre-vote: a follower cut off from its peers cannot win an election, so it must not raise
//! its term while it is away, and when the partition heals the healthy leader keeps leading
//! in the same term (without pre-vote, the returning node's higher term would unseat it).
//! The cut is made by the fault-injecting proxy in front of every node (see `nemesis.rs`).

use std::time::Duration;

use bytes::Bytes;

use crate::common::{wait_until, TestCluster, POLL_INTERVAL};
use crate::nemesis::{own_subnet, test_runtime, FaultyNetwork};

/// How long the follower stays cut off: many election timeouts at the default settings
/// (60 to 90 ms), each of which would raise its term without pre-vote.
const ISOLATION: Duration = Duration::from_secs(2);

#[test]
fn a_follower_back_from_a_partition_does_not_raise_the_term_or_unseat_the_leader() {
    let net = FaultyNetwork::start(3, own_subnet(6));
    test_runtime().block_on(async {
        let cluster = TestCluster::start_with(net.cluster_options()).await;
        let leader = cluster.leader().await;
        let follower = cluster.follower().await;
        let term = cluster.status(leader).await.unwrap().term;
        let writer = cluster.node_client(leader);
        writer
            .put(Bytes::from_static(b"k"), Bytes::from_static(b"before"))
            .await
            .unwrap();

        let held_before = net.held_back();
        net.isolate(follower);
        // The whole time it is away, the follower keeps its term (it asks whether it could
        // win, hears from no one, and stays), and the others go on without it.
        let away = tokio::time::Instant::now();
        while away.elapsed() < ISOLATION {
            let status = cluster.status(follower).await.unwrap();
            assert_eq!(
                status.term,
                term,
                "the cut-off follower raised its term after {:?}",
                away.elapsed()
            );
            tokio::time::sleep(POLL_INTERVAL).await;
        }
        writer
            .put(Bytes::from_static(b"k"), Bytes::from_static(b"during"))
            .await
            .unwrap();
        let cut = net.held_back() - held_before;
        assert!(cut > 0, "no traffic was held back: the partition was not made");

        net.heal();
        // Back, the follower catches up under the same leader, in the same term on every node.
        wait_until(
            Duration::from_secs(10),
            "the follower caught up under the old leader",
            || async {
                let leader_applied = cluster.status(leader).await.ok()?.applied_index;
                let follower_applied = cluster.status(follower).await.ok()?.applied_index;
                let same_leader = cluster.agreed_leader().await == Some(leader);
                (same_leader && follower_applied >= leader_applied).then_some(())
            },
        )
        .await;
        for id in cluster.ids() {
            assert_eq!(
                cluster.status(id).await.unwrap().term,
                term,
                "node {id}: the term moved"
            );
        }
        writer
            .put(Bytes::from_static(b"k"), Bytes::from_static(b"after"))
            .await
            .unwrap();
    });
}
