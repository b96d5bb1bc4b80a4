//! A node cut off from its peers: it refuses linearizable and lease reads instead of
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
fn an_isolated_follower_refuses_linearizable_and_lease_reads_but_serves_stale_ones() {
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
        // A lease read needs the leader's word as much as a linearizable one.
        let refused = get(Consistency::Lease)
            .await
            .expect_err("a cut-off follower must not serve a lease read");
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
        for consistency in [Consistency::Linearizable, Consistency::Lease] {
            let read = get(consistency).await.expect("served again after healing").into_inner();
            assert_eq!(read.value, Bytes::from_static(b"after"), "{consistency:?}");
        }
    });
}

/// A leader cut off from its peers stops vouching for its own leadership from its lease
/// before the others can elect a new leader (its lease is shorter than their election
/// timeout): once the new leader has taken a write, a lease read at the old one fails
/// instead of answering with the value from before.
#[test]
fn an_isolated_leader_serves_no_lease_read_once_a_new_leader_has_taken_writes() {
    let net = FaultyNetwork::start(3, own_subnet(5));
    test_runtime().block_on(async {
        let cluster = TestCluster::start_with(net.cluster_options()).await;
        let old_leader = cluster.leader().await;
        let key = Bytes::from_static(b"leased");
        cluster
            .node_client(old_leader)
            .put(key.clone(), Bytes::from_static(b"before"))
            .await
            .unwrap();

        net.isolate(old_leader);
        let others: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old_leader).collect();
        let new_leader = crate::common::wait_until(Duration::from_secs(15), "the others elect a leader", || async {
            let mut named = Vec::new();
            for &id in &others {
                named.push(cluster.status(id).await.ok()?.leader_id?);
            }
            (named.iter().all(|&leader| leader == named[0] && leader != old_leader)).then_some(named[0])
        })
        .await;
        cluster
            .node_client(new_leader)
            .put(key.clone(), Bytes::from_static(b"after"))
            .await
            .expect("the majority takes a write");

        let mut request = tonic::Request::new(pb::GetRequest {
            key: key.clone(),
            consistency: Consistency::Lease as i32,
        });
        request.set_timeout(Duration::from_secs(2));
        match cluster.raw_kv(old_leader).get(request).await {
            Ok(reply) => panic!(
                "the cut-off old leader served a lease read: {:?}",
                reply.into_inner().value
            ),
            Err(status) => assert!(
                matches!(
                    status.code(),
                    Code::Unavailable | Code::DeadlineExceeded | Code::Cancelled
                ),
                "{status:?}"
            ),
        }
        net.heal();
    });
}
