//! What the router tells Prometheus (`--metrics-listen`): the calls it answered (the shared
//! [`raftkv::metrics::RequestMetricsLayer`]), the requests it holds while no node can take them
//! (counted by the `Forwarder`), and the leader it routes writes to; and when it calls itself
//! healthy: while it knows a leader it can reach.

use std::sync::Arc;

use prometheus::{IntGauge, Opts, Registry};
use raftkv::metrics::{must_register, HealthCheck, RequestMetricsLayer, NAMESPACE};
use tokio::sync::watch;

use crate::leader_tracker::{ClusterView, LeaderTracker};

/// The router's registry and the gauge only this module sets.
pub struct RouterMetrics {
    pub registry: Registry,
    pub requests: RequestMetricsLayer,
    leader_id: IntGauge,
}

/// A gauge of the requests waiting for a node to send them to (no leader known for a write, no
/// healthy node for a read); the `Forwarder` moves it.
pub fn held_requests_gauge() -> IntGauge {
    IntGauge::with_opts(
        Opts::new(
            "router_held_requests",
            "Requests the router holds until a node can take them (a leader for writes, any healthy node for reads).",
        )
        .namespace(NAMESPACE),
    )
    .expect("a valid metric definition")
}

impl RouterMetrics {
    /// Registers every router metric, `held_requests` (the forwarder's) included.
    pub fn new(held_requests: IntGauge) -> RouterMetrics {
        let registry = Registry::new();
        let leader_id = IntGauge::with_opts(
            Opts::new(
                "router_leader_id",
                "Id of the node the router sends writes to; 0 while it knows no leader it can reach.",
            )
            .namespace(NAMESPACE),
        )
        .expect("a valid metric definition");
        must_register(&registry, leader_id.clone());
        must_register(&registry, held_requests);
        let requests = RequestMetricsLayer::new(&registry, raftkv::metrics::grpc_requests::PUBLIC_API_PATHS);
        RouterMetrics {
            registry,
            requests,
            leader_id,
        }
    }

    /// Keeps the leader gauge equal to the tracker's view until the view's sender is gone.
    pub async fn follow_leader(leader_id: IntGauge, mut views: watch::Receiver<ClusterView>) {
        loop {
            let id = views.borrow_and_update().leader.as_ref().map_or(0, |leader| leader.id);
            leader_id.set(i64::try_from(id).unwrap_or(i64::MAX));
            if views.changed().await.is_err() {
                return;
            }
        }
    }

    /// Starts following the tracker's leader.
    pub fn start(&self, tracker: &LeaderTracker) {
        tokio::spawn(Self::follow_leader(self.leader_id.clone(), tracker.subscribe()));
    }
}

/// Healthy while the tracker knows a leader it can reach.
pub fn health_check(tracker: Arc<LeaderTracker>) -> HealthCheck {
    Arc::new(move || match tracker.subscribe().borrow().leader {
        Some(_) => Ok(()),
        None => Err("no reachable leader known".to_string()),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_and_types_every_router_metric() {
        let held = held_requests_gauge();
        let metrics = RouterMetrics::new(held.clone());
        held.inc();
        metrics.leader_id.set(2);
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &metrics.registry.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for (name, kind) in [
            ("raftkv_router_held_requests", "gauge"),
            ("raftkv_router_leader_id", "gauge"),
        ] {
            assert!(
                text.contains(&format!("# HELP {name} ")),
                "{name} has no HELP line:\n{text}"
            );
            assert!(
                text.contains(&format!("# TYPE {name} {kind}\n")),
                "{name} has no TYPE line:\n{text}"
            );
        }
        assert!(text.contains("raftkv_router_held_requests 1\n"), "{text}");
        assert!(text.contains("raftkv_router_leader_id 2\n"), "{text}");
    }
}
