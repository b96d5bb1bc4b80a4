//! What the node and the router share to be watched by Prometheus: the HTTP endpoint that
//! serves `/metrics` and `/health` ([`endpoint`]), the per-call metrics of a gRPC server
//! ([`grpc_requests`]), what its admission by bytes holds and refuses ([`admission`]) and what
//! its connection budget holds and refuses ([`connections`]). Each process owns one [`prometheus::Registry`] and registers its own
//! metrics in it; every metric's name starts with [`NAMESPACE`].

pub mod admission;
pub mod connections;
pub mod endpoint;
pub mod grpc_requests;

pub use endpoint::{serve, HealthCheck};
pub use grpc_requests::RequestMetricsLayer;
pub use prometheus;

/// The prefix of every metric raftkv exports (`raftkv_requests_total`, …).
pub const NAMESPACE: &str = "raftkv";

/// Raises `counter` to `total`, a count kept elsewhere that only goes up (a collector copies it
/// at each scrape).
pub fn raise_to(counter: &prometheus::IntCounter, total: u64) {
    counter.inc_by(total.saturating_sub(counter.get()));
}

/// How a metric or label definition that is fixed in the source failed to register: two with
/// one name. A bug, caught by the first test that builds the registry.
pub fn must_register(registry: &prometheus::Registry, metric: impl prometheus::core::Collector + 'static) {
    if let Err(error) = registry.register(Box::new(metric)) {
        panic!("a metric defined in raftkv's source cannot be registered: {error}");
    }
}
