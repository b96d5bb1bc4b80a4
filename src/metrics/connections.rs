//! What a server's connection budget ([`crate::serving::connection_budget`]) holds and refuses,
//! read at each scrape: `raftkv_connections_open{peer}`, `raftkv_connections_refused_total{reason}`
//! and `raftkv_connection_shuns_total`. Refusals that climb mean a host connects in a loop or
//! holds too many connections (the log names it); shuns mean one kept on connecting after it was
//! refused, and its connection requests are being dropped ([`crate::serving::shun`]).

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry};

use super::{must_register, raise_to, NAMESPACE};
use crate::serving::ConnectionBudget;

/// The collector: brought up to date from the budget when scraped.
struct ConnectionMetrics {
    budget: ConnectionBudget,
    open: IntGaugeVec,
    refused: IntCounterVec,
    shuns: IntCounter,
}

impl Collector for ConnectionMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [self.open.desc(), self.refused.desc(), self.shuns.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        let counts = self.budget.counts();
        for (peer, open) in [("client", counts.clients_open), ("member", counts.members_open)] {
            self.open
                .with_label_values(&[peer])
                .set(i64::try_from(open).unwrap_or(i64::MAX));
        }
        for (reason, total) in [
            ("over_limit", counts.refused_over_limit),
            ("too_fast", counts.refused_too_fast),
        ] {
            raise_to(&self.refused.with_label_values(&[reason]), total);
        }
        raise_to(&self.shuns, counts.shuns);
        [self.open.collect(), self.refused.collect(), self.shuns.collect()].concat()
    }
}

/// Registers the connection metrics of `budget` in `registry`.
pub fn register(registry: &Registry, budget: &ConnectionBudget) {
    let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
    let metrics = ConnectionMetrics {
        budget: budget.clone(),
        open: IntGaugeVec::new(
            opts(
                "connections_open",
                "gRPC connections the server holds, by peer: a client, or a member of the cluster.",
            ),
            &["peer"],
        )
        .expect("a valid metric definition"),
        refused: IntCounterVec::new(
            opts(
                "connections_refused_total",
                "Connections closed as soon as they were accepted, by reason: over_limit (too many held, by one address or in all), too_fast (too many new ones a second from one address).",
            ),
            &["reason"],
        )
        .expect("a valid metric definition"),
        shuns: IntCounter::with_opts(opts(
            "connection_shuns_total",
            "Times an address refused 128 times within a second was shunned: its connection requests dropped by the kernel for 5 s.",
        ))
        .expect("a valid metric definition"),
    };
    must_register(registry, metrics);
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use tokio::time::Instant;

    use super::*;

    #[test]
    fn the_exposition_shows_what_the_budget_holds_and_refused() {
        let registry = Registry::new();
        let member: std::net::IpAddr = [10, 0, 0, 9].into();
        let budget = ConnectionBudget::new(Arc::new(move |address| address == member));
        register(&registry, &budget);
        let now = Instant::now();
        let _client = budget.admit([10, 0, 0, 1].into(), now).unwrap();
        let _member = budget.admit(member, now).unwrap();
        let looping = [10, 0, 0, 2].into();
        let refused = (0..300).filter(|_| budget.admit(looping, now).is_err()).count();
        budget.note_shun();
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for (line, kind) in [
            ("raftkv_connections_open{peer=\"client\"} 1\n".to_string(), "gauge"),
            ("raftkv_connections_open{peer=\"member\"} 1\n".to_string(), "gauge"),
            (
                "raftkv_connections_refused_total{reason=\"over_limit\"} 0\n".to_string(),
                "counter",
            ),
            (
                format!("raftkv_connections_refused_total{{reason=\"too_fast\"}} {refused}\n"),
                "counter",
            ),
            ("raftkv_connection_shuns_total 1\n".to_string(), "counter"),
        ] {
            let name = line.split(['{', ' ']).next().unwrap();
            assert!(text.contains(&line), "{line} in {text}");
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
        }
        assert_eq!(refused, 300 - 256, "the burst of 256 was taken (and closed at once)");
    }
}
