//! A node cut off from its peers: it refuses linearizable reads instead of
//! answering from stale state, still answers stale reads, and catches up once
//! the partition heals. The cut is made by the fault-injecting proxy in front
//! of every node (see `nemesis.rs`).

use std::time::Duration;

use bytes::Bytes;
use raftkv::pb::{self, Consistency};
use tonic::Code;

use crate::common::TestCluster;
use crate::nemesis::{own_subnet, test_runtime, FaultyNetwork};

#[test]
fn an_isolated_follower_refuses_linearizable_reads_but_serves_stale_ones() {
    let net = FaultyNetwork::start(3, own_subnet(3));
    test_runtime().block_on(async {
        let cluster = TestCluster::start_with(net.cluster_options()).await;
        let leader = cluster.leader().await;
        let follower = cluster.follower().await;
        let key = Bytes::from_static(b"partitioned");
        cluster
            .node_client(leader)
            .put(key.clone(), Bytes::from_static(b"before"))
            .await
            .unwrap();
        let applied = cluster.status(leader).await.unwrap().applied_index.unwrap();
        cluster
            .wait_for_applied(follower, applied, Duration::from_secs(10))
            .await;

        let held_before = net.held_back();
        net.isolate(follower);
        // The majority keeps working and moves on without the follower.
        cluster
            .node_client(leader)
            .put(key.clone(), Bytes::from_static(b"after"))
            .await
            .unwrap();

        let get = |consistency: Consistency| {
            let mut kv = cluster.raw_kv(follower);
            let key = key.clone();
            async move {
                let mut request = tonic::Request::new(pb::GetRequest {
                    key,
                    consistency: consistency as i32,
                });
                request.set_timeout(Duration::from_secs(3));
                kv.get(request).await
            }
        };
        let refused = get(Consistency::Linearizable)
            .await
            .expect_err("a cut-off follower must not serve a linearizable read");
        assert_eq!(refused.code(), Code::Unavailable, "{refused:?}");
        let stale = get(Consistency::Stale)
            .await
            .expect("a stale read is served locally")
            .into_inner();
        assert_eq!(
            stale.value,
            Bytes::from_static(b"before"),
            "the follower has not seen the new write"
        );
        assert!(
            net.held_back() > held_before,
            "the partition held no traffic back: the fault was not injected"
        );

        net.heal();
        let applied = cluster.status(leader).await.unwrap().applied_index.unwrap();
        cluster
            .wait_for_applied(follower, applied, Duration::from_secs(10))
            .await;
        let read = get(Consistency::Linearizable)
            .await
            .expect("served again after healing")
            .into_inner();
        assert_eq!(read.value, Bytes::from_static(b"after"));
    });
}
