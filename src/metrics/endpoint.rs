//! The monitoring endpoint of a node or a router: a small HTTP/1 server on its own port
//! (`--metrics-listen`) with two routes. `/metrics` writes the process's registry in the
//! Prometheus text exposition format; `/health` answers 200 "ok" while the process can serve,
//! and 503 with a one-line reason otherwise. It runs on the process's runtime, apart from the
//! gRPC port, so a scrape never competes with a client's call on the same connection.

use std::future::Future;
use std::sync::Arc;

use axum::http::{header, StatusCode};
use axum::response::IntoResponse;
use axum::routing::get;
use axum::Router;
use prometheus::{Encoder, Registry, TextEncoder};
use tokio::net::TcpListener;

/// Says whether the process can serve: `Err` carries the one-line reason it cannot.
pub type HealthCheck = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Serves `/metrics` and `/health` on `listener` until `stop` resolves.
pub async fn serve(
    listener: TcpListener,
    registry: Registry,
    health: HealthCheck,
    stop: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let routes = Router::new()
        .route("/metrics", get(move || std::future::ready(exposition(&registry))))
        .route("/health", get(move || std::future::ready(health_response(&health))));
    axum::serve(listener, routes).with_graceful_shutdown(stop).await
}

fn exposition(registry: &Registry) -> axum::response::Response {
    let encoder = TextEncoder::new();
    let mut text = Vec::new();
    match encoder.encode(&registry.gather(), &mut text) {
        Ok(()) => ([(header::CONTENT_TYPE, encoder.format_type().to_string())], text).into_response(),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            format!("cannot encode the metrics: {error}\n"),
        )
            .into_response(),
    }
}

fn health_response(health: &HealthCheck) -> (StatusCode, String) {
    match health() {
        Ok(()) => (StatusCode::OK, "ok\n".to_string()),
        Err(reason) => (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("{}\n", reason.replace('\n', " ")),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_is_ok_or_unavailable_with_one_line() {
        let healthy: HealthCheck = Arc::new(|| Ok(()));
        assert_eq!(health_response(&healthy), (StatusCode::OK, "ok\n".to_string()));
        let sick: HealthCheck = Arc::new(|| Err("no leader known\nsince term 3".to_string()));
        assert_eq!(
            health_response(&sick),
            (
                StatusCode::SERVICE_UNAVAILABLE,
                "no leader known since term 3\n".to_string()
            )
        );
    }
}
