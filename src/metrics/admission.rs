//! What a server's admission by bytes ([`crate::serving::admission`]) holds and refuses, read
//! from its [`RequestBytes`] at each scrape: `raftkv_request_bytes_held` against
//! `raftkv_request_bytes_limit`, and `raftkv_requests_refused_busy_total`. A server whose held
//! bytes sit at the limit, or whose refusals climb, is taking more than it can write.

use prometheus::core::{Collector, Desc};
use prometheus::proto::MetricFamily;
use prometheus::{IntCounter, IntGauge, Opts, Registry};

use super::{must_register, raise_to, NAMESPACE};
use crate::serving::RequestBytes;

/// The collector: three metrics, brought up to date from the budget when scraped.
struct AdmissionMetrics {
    budget: RequestBytes,
    held: IntGauge,
    limit: IntGauge,
    refused: IntCounter,
}

impl Collector for AdmissionMetrics {
    fn desc(&self) -> Vec<&Desc> {
        [self.held.desc(), self.limit.desc(), self.refused.desc()].concat()
    }

    fn collect(&self) -> Vec<MetricFamily> {
        self.held.set(i64::try_from(self.budget.held()).unwrap_or(i64::MAX));
        raise_to(&self.refused, self.budget.refused());
        [self.held.collect(), self.limit.collect(), self.refused.collect()].concat()
    }
}

/// Registers the admission metrics of `budget` in `registry`.
pub fn register(registry: &Registry, budget: &RequestBytes) {
    let opts = |name: &str, help: &str| Opts::new(name, help).namespace(NAMESPACE);
    let metrics = AdmissionMetrics {
        budget: budget.clone(),
        held: IntGauge::with_opts(opts(
            "request_bytes_held",
            "Bytes of Kv and KvBatch requests being served (read, not yet answered).",
        ))
        .expect("a valid metric definition"),
        limit: IntGauge::with_opts(opts(
            "request_bytes_limit",
            "Bytes of Kv and KvBatch requests the server serves at once; a request past them waits, unread.",
        ))
        .expect("a valid metric definition"),
        refused: IntCounter::with_opts(opts(
            "requests_refused_busy_total",
            "Kv and KvBatch requests answered UNAVAILABLE unread, after waiting in vain for room among the request bytes held.",
        ))
        .expect("a valid metric definition"),
    };
    metrics.limit.set(i64::try_from(budget.limit()).unwrap_or(i64::MAX));
    must_register(registry, metrics);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_shows_what_the_budget_holds_and_its_limit() {
        let registry = Registry::new();
        let budget = RequestBytes::new(32 << 20);
        register(&registry, &budget);
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &registry.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        for (line, kind) in [
            ("raftkv_request_bytes_held 0\n", "gauge"),
            ("raftkv_request_bytes_limit 33554432\n", "gauge"),
            ("raftkv_requests_refused_busy_total 0\n", "counter"),
        ] {
            let name = line.split(' ').next().unwrap();
            assert!(text.contains(line), "{text}");
            assert!(text.contains(&format!("# TYPE {name} {kind}\n")), "{text}");
        }
    }
}
