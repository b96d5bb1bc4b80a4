//! End to end: what a monitoring system sees. Every node and the router serve Prometheus
//! metrics and a health check over real HTTP; the values move with writes and with a leader
//! change, and health follows whether a leader is known.

use std::time::Duration;

use raftkv::pb;

use crate::common::scrape::{http_get, metric, scrape};
use crate::common::{key, value, wait_until, ClusterOptions, TestCluster, LEADER_TIMEOUT};

/// Writes the test makes between two scrapes.
const WRITES: usize = 20;
/// How long a process may take to report what the test waits for.
const SETTLE_TIMEOUT: Duration = Duration::from_secs(15);

async fn healthy(address: &str) -> Option<()> {
    matches!(http_get(address, "/health").await, Ok((200, _))).then_some(())
}

async fn wait_healthy(address: &str, who: &str) {
    wait_until(SETTLE_TIMEOUT, &format!("{who}'s /health answers 200"), || {
        healthy(address)
    })
    .await;
}

fn value_of(text: &str, name: &str) -> f64 {
    metric(text, name, &[]).unwrap_or_else(|| panic!("no {name} in:\n{text}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_and_health_move_with_writes_and_a_leader_change() {
    // Snapshots often enough that the writes below build one.
    let options = ClusterOptions::default()
        .with_metrics()
        .node_args(&["--snapshot-after-logs", "5"]);
    let mut cluster = TestCluster::start_with(options).await;
    let leader = cluster.leader().await;
    let router_metrics = cluster.router_metrics_address().to_string();
    for id in cluster.ids() {
        wait_healthy(cluster.metrics_address(id), &format!("node {id}")).await;
    }
    wait_healthy(&router_metrics, "the router").await;

    // Exactly one node says it leads, the one the cluster agrees on, and the router routes to it.
    let leaders: Vec<u64> = {
        let mut leaders = Vec::new();
        for id in cluster.ids() {
            if value_of(&scrape(cluster.metrics_address(id)).await, "raftkv_raft_is_leader") == 1.0 {
                leaders.push(id);
            }
        }
        leaders
    };
    assert_eq!(leaders, [leader], "the nodes whose raftkv_raft_is_leader is 1");
    let router_before = scrape(&router_metrics).await;
    assert_eq!(value_of(&router_before, "raftkv_router_leader_id"), leader as f64);
    assert_eq!(value_of(&router_before, "raftkv_router_held_requests"), 0.0);

    let leader_before = scrape(cluster.metrics_address(leader)).await;
    let mut applied_before = Vec::new();
    for id in cluster.ids() {
        applied_before.push(value_of(
            &scrape(cluster.metrics_address(id)).await,
            "raftkv_raft_applied_index",
        ));
    }
    let client = cluster.client();
    for i in 0..WRITES {
        client.put(key("metrics", i), value("metrics", i)).await.expect("a put");
    }

    // Calls were counted, OK, by the router and by the leader it forwarded them to.
    let router_after = scrape(&router_metrics).await;
    let router_ok = |text: &str| metric(text, "raftkv_requests_total", &["code=\"OK\""]).unwrap_or(0.0);
    assert!(
        router_ok(&router_after) >= router_ok(&router_before) + 1.0,
        "the router's OK calls did not move:\n{router_after}"
    );
    let leader_after = scrape(cluster.metrics_address(leader)).await;
    assert!(
        router_ok(&leader_after) > router_ok(&leader_before),
        "the leader's OK calls did not move:\n{leader_after}"
    );
    assert!(
        metric(&leader_after, "raftkv_request_duration_seconds_count", &[]).unwrap_or(0.0) > 0.0,
        "no call duration observed:\n{leader_after}"
    );
    assert!(
        value_of(&leader_after, "raftkv_wal_fsync_duration_seconds_count") > 0.0,
        "the leader's log was never fsynced:\n{leader_after}"
    );
    assert!(value_of(&leader_after, "raftkv_storage_bytes") > 0.0, "{leader_after}");
    // Every write answered: neither holds any request bytes, and both show their limit.
    let limit = raftkv::serving::REQUEST_BYTES_IN_FLIGHT as f64;
    for (server, text) in [("the router", &router_after), ("the leader", &leader_after)] {
        assert_eq!(value_of(text, "raftkv_request_bytes_held"), 0.0, "{server}:\n{text}");
        assert_eq!(value_of(text, "raftkv_request_bytes_limit"), limit, "{server}:\n{text}");
        assert_eq!(
            value_of(text, "raftkv_requests_refused_busy_total"),
            0.0,
            "{server}:\n{text}"
        );
    }
    // The connections each holds: the router the test's client (every connection is a client's
    // there), the leader the router's (from 127.0.0.1, the members' address, so a member's); none
    // refused, no address shunned.
    let open = |text: &str, peer: &str| metric(text, "raftkv_connections_open", &[&format!("peer=\"{peer}\"")]);
    assert!(open(&router_after, "client") >= Some(1.0), "{router_after}");
    assert!(open(&leader_after, "member") >= Some(1.0), "{leader_after}");
    for (server, text) in [("the router", &router_after), ("the leader", &leader_after)] {
        for reason in ["over_limit", "too_fast"] {
            let refused = metric(
                text,
                "raftkv_connections_refused_total",
                &[&format!("reason=\"{reason}\"")],
            );
            assert_eq!(refused, Some(0.0), "{server}:\n{text}");
        }
        assert_eq!(
            value_of(text, "raftkv_connection_shuns_total"),
            0.0,
            "{server}:\n{text}"
        );
    }
    let leader_address = cluster.metrics_address(leader).to_string();
    wait_until(SETTLE_TIMEOUT, "the leader reports a snapshot", || async {
        let text = scrape(&leader_address).await;
        (value_of(&text, "raftkv_raft_snapshot_index") > 0.0).then_some(())
    })
    .await;
    // Every node applies the writes (the followers shortly after the leader).
    for (id, before) in cluster.ids().into_iter().zip(applied_before) {
        let address = cluster.metrics_address(id).to_string();
        wait_until(SETTLE_TIMEOUT, &format!("node {id}'s applied index moves"), || async {
            let text = scrape(&address).await;
            let applied = value_of(&text, "raftkv_raft_applied_index");
            (applied >= before + 1.0 && value_of(&text, "raftkv_raft_commit_index") >= applied).then_some(())
        })
        .await;
    }

    // The leader dies: a follower learns of a new leader, the dead one's port is gone, and the
    // survivors (and the router) are healthy again once the new leader is known.
    let mut changes_before = Vec::new();
    for id in cluster.ids().into_iter().filter(|&id| id != leader) {
        let text = scrape(cluster.metrics_address(id)).await;
        changes_before.push((id, value_of(&text, "raftkv_raft_leader_changes_total")));
    }
    let dead_metrics = cluster.metrics_address(leader).to_string();
    cluster.kill9(leader);
    let new_leader = cluster.new_leader_other_than(leader).await;
    for (id, before) in changes_before {
        let address = cluster.metrics_address(id).to_string();
        wait_until(
            LEADER_TIMEOUT,
            &format!("node {id}'s leader_changes_total moves"),
            || async {
                let text = scrape(&address).await;
                (value_of(&text, "raftkv_raft_leader_changes_total") > before).then_some(())
            },
        )
        .await;
        wait_healthy(&address, &format!("node {id}")).await;
    }
    assert!(
        http_get(&dead_metrics, "/metrics").await.is_err(),
        "the killed leader's metrics port still answers"
    );
    wait_until(SETTLE_TIMEOUT, "the router routes to the new leader", || async {
        let text = scrape(&router_metrics).await;
        (value_of(&text, "raftkv_router_leader_id") == new_leader as f64).then_some(())
    })
    .await;
    wait_healthy(&router_metrics, "the router").await;
}

/// Waits until `/health` at `address` answers 503, and returns its reason.
async fn unhealthy_reason(address: &str, who: &str) -> String {
    let reason = wait_until(LEADER_TIMEOUT, &format!("{who}'s /health answers 503"), || async {
        match http_get(address, "/health").await {
            Ok((503, body)) => Some(body),
            _ => None,
        }
    })
    .await;
    assert_eq!(
        reason.trim_end().lines().count(),
        1,
        "{who}: a one-line reason: {reason:?}"
    );
    reason
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_cut_off_from_the_majority_is_unhealthy_leader_or_not() {
    for survivor_leads in [true, false] {
        // On a loaded machine leadership can move between finding the leader and the kills:
        // the case is then tried again on a new cluster (the reason is checked against the
        // role the survivor has once alone, which no longer changes).
        let mut attempts = 0;
        loop {
            attempts += 1;
            let mut cluster = TestCluster::start_with(ClusterOptions::default().with_metrics()).await;
            let leader = cluster.leader().await;
            let survivor = if survivor_leads {
                leader
            } else {
                cluster.ids().into_iter().find(|&id| id != leader).expect("a follower")
            };
            let address = cluster.metrics_address(survivor).to_string();
            wait_healthy(&address, &format!("node {survivor}")).await;
            // Alone it is no majority: openraft may go on naming the last leader (pre-vote keeps
            // it from campaigning), but it hears from no leader, or no quorum acknowledges it.
            for id in cluster.ids().into_iter().filter(|&id| id != survivor) {
                cluster.kill9(id);
            }
            let reason = unhealthy_reason(&address, &format!("node {survivor}")).await;
            let status = cluster.status(survivor).await.expect("the survivor's status");
            let leads = status.role == pb::Role::Leader as i32;
            let expected = if leads { "quorum" } else { "leader" };
            assert!(
                reason.contains(expected),
                "node {survivor} (leader: {leads}): {reason:?}"
            );
            if leads == survivor_leads {
                break;
            }
            assert!(
                attempts < 3,
                "leadership moved before the kills in {attempts} attempts (leader wanted: {survivor_leads})"
            );
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_router_with_no_node_left_is_unhealthy_with_a_reason() {
    let mut cluster = TestCluster::start_with(ClusterOptions::default().with_metrics()).await;
    let router_metrics = cluster.router_metrics_address().to_string();
    wait_healthy(&router_metrics, "the router").await;
    for id in cluster.ids() {
        cluster.kill9(id);
    }
    let reason = unhealthy_reason(&router_metrics, "the router").await;
    assert!(reason.contains("leader"), "{reason:?}");
}
