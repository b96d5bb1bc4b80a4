//! `raftkv-router`: one address for clients in front of a raftkv cluster.
//!
//! This file is the binary's edge: flags, logging, startup and graceful shutdown. Who leads is
//! tracked in [`leader_tracker`], requests are forwarded in [`service`], and a request's
//! deadline is read in [`deadline`].

mod deadline;
mod leader_tracker;
mod metrics;
mod service;

use std::io::IsTerminal;
use std::process::ExitCode;
use std::sync::Arc;

use anyhow::Context;
use clap::Parser;
use raftkv::serving::{self, ConnectionBudget};
use raftkv::tls::ServerTls;
use raftkv::wire::SHUTDOWN_GRACE;
use tokio::net::TcpListener;
use tokio::sync::watch;

use crate::leader_tracker::{node_channel, LeaderTracker, Node};
use crate::metrics::RouterMetrics;
use crate::service::{ClusterRouter, Forwarder, KvRouter};

/// mimalloc instead of glibc's malloc: hyper, h2 and tonic allocate and free several small
/// objects per forwarded request, and it costs the router less CPU per put (BENCHMARKS.md).
/// The nodes measured no difference and keep the system allocator.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The most nodes the router forwards to.
const MAX_NODES: usize = 64;

/// Serves raftkv's Kv API in front of a cluster: writes go to the current leader, reads are
/// spread over the healthy nodes. It learns who leads from the nodes' status streams, and
/// holds requests while a new leader is elected (until each request's deadline, 10 s when
/// the client sets none). It stores nothing; several routers can run side by side.
#[derive(Debug, Parser)]
#[command(
    name = "raftkv-router",
    version,
    after_help = "Example:\n  raftkv-router --listen 127.0.0.1:7000 --nodes 127.0.0.1:7001,127.0.0.1:7002,127.0.0.1:7003 \\\n      --metrics-listen 127.0.0.1:7100   # Prometheus: http://127.0.0.1:7100/metrics, health: /health\n\nWith TLS, add --cert certs/node.pem --key certs/node-key.pem --ca certs/ca.pem (the nodes must run TLS too).\n\nLogs go to stderr; RUST_LOG (e.g. RUST_LOG=debug) sets how much. SIGINT/SIGTERM stop it gracefully."
)]
struct Args {
    /// Address to serve clients on (port 0: any free port, logged at startup).
    #[arg(long, env = "RAFTKV_LISTEN", value_name = "HOST:PORT", default_value = "127.0.0.1:7000", value_parser = parse_listen_address)]
    listen: String,

    /// The cluster's nodes, comma-separated.
    #[arg(long, env = "RAFTKV_NODES", value_name = "HOST:PORT,...", required = true, value_delimiter = ',', value_parser = parse_address)]
    nodes: Vec<String>,

    /// Threads serving requests [default: the machine's cores]. One suits a small machine
    /// shared with the nodes (fewer thread hand-offs per request), as `raftkv cluster up` does.
    #[arg(long, env = "RAFTKV_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,

    /// Serve Prometheus metrics at /metrics and a health check at /health on this HOST:PORT
    /// (plain HTTP; port 0: any free port, logged at startup) [default: not served].
    #[arg(long, env = "RAFTKV_METRICS_LISTEN", value_name = "HOST:PORT", value_parser = parse_listen_address)]
    metrics_listen: Option<String>,

    #[command(flatten)]
    tls: raftkv::tls::ServerTlsFlags,
}

fn parse_address(text: &str) -> Result<String, String> {
    let address = text.trim();
    raftkv::client::check_address(address).map_err(|error| match error {
        raftkv::client::Error::InvalidArgument(why) => why,
        other => other.to_string(),
    })?;
    Ok(address.to_string())
}

/// Like [`parse_address`], but port 0 (any free port) is allowed.
fn parse_listen_address(text: &str) -> Result<String, String> {
    let address = text.trim();
    match address.strip_suffix(":0") {
        Some(host) => parse_address(&format!("{host}:1"))
            .map(|_| address.to_string())
            .map_err(|why| why.replace(&format!("{host}:1"), address)),
        None => parse_address(address),
    }
}

fn main() -> ExitCode {
    raftkv::runtime::abort_on_panic();
    let args: Args = match raftkv::usage::parse_or_exit() {
        Ok(args) => args,
        Err(code) => return code,
    };
    if let Err(why) = check_nodes(&args.nodes) {
        eprintln!("error: {why} (try --help)");
        return ExitCode::from(2);
    }
    let tls = match args.tls.load() {
        Ok(tls) => tls,
        Err(error) => {
            eprintln!("error: {error}");
            return ExitCode::from(2);
        }
    };
    tracing_subscriber::fmt()
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .init();
    let runtime = match raftkv::runtime::build(raftkv::runtime::worker_threads_or_cores(args.worker_threads)) {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(run(args, tls)) {
        Ok(()) => ExitCode::SUCCESS,
        Err(error) => {
            eprintln!("error: {error:#}");
            ExitCode::FAILURE
        }
    }
}

fn check_nodes(nodes: &[String]) -> Result<(), String> {
    if nodes.len() > MAX_NODES {
        return Err(format!(
            "--nodes lists {} nodes, more than the limit of {MAX_NODES}",
            nodes.len()
        ));
    }
    for (index, address) in nodes.iter().enumerate() {
        if nodes[..index].contains(address) {
            return Err(format!("--nodes lists {address} twice"));
        }
    }
    Ok(())
}

async fn run(args: Args, tls: Option<ServerTls>) -> anyhow::Result<()> {
    // The router presents its own certificate to the nodes, and checks theirs against the CA.
    let node_tls = tls.as_ref().map(ServerTls::client);
    let nodes = args
        .nodes
        .iter()
        .map(|address| {
            let channel = node_channel(address, node_tls.as_ref()).with_context(|| format!("node {address}"))?;
            Ok(Node::new(address.clone(), channel))
        })
        .collect::<anyhow::Result<Vec<_>>>()?;
    let listener = TcpListener::bind(&args.listen)
        .await
        .with_context(|| format!("cannot listen on {}", args.listen))?;
    let local_address = listener.local_addr().context("cannot read the listening address")?;
    let metrics_listener = match &args.metrics_listen {
        Some(address) => Some(
            TcpListener::bind(address)
                .await
                .with_context(|| format!("cannot listen for metrics on {address}"))?,
        ),
        None => None,
    };

    let (stop, shutdown) = watch::channel(false);
    let tracker = LeaderTracker::new(nodes);
    if let Some(node_tls) = node_tls {
        tracker.connect_members_with(node_tls);
    }
    let trackers = tracker.start(shutdown.clone());
    let forwarder = Forwarder::new(Arc::clone(&tracker), shutdown.clone());
    let metrics = RouterMetrics::new(forwarder.held_requests());
    metrics.start(&tracker);
    if let Some(listener) = metrics_listener {
        serve_metrics(listener, &metrics, &tracker, shutdown.clone());
    }

    tracing::info!(
        "raftkv-router listening on {local_address} ({}), forwarding to {}",
        if tls.is_some() { "TLS" } else { "plaintext" },
        args.nodes.join(",")
    );
    tokio::spawn(async move {
        let signal = stop_signal().await;
        tracing::info!("{signal} received; shutting down");
        let _ = stop.send(true);
    });

    let kv = Arc::new(KvRouter::new(Arc::clone(&forwarder)));
    let mut until_stopped = shutdown.clone();
    // Kv and KvBatch requests are read only while those being served leave room for them.
    let request_bytes = serving::RequestBytes::new(serving::REQUEST_BYTES_IN_FLIGHT);
    raftkv::metrics::admission::register(&metrics.registry, &request_bytes);
    // Every connection is a client's: one budget, closed at once beyond it.
    let budget = ConnectionBudget::clients_only();
    raftkv::metrics::connections::register(&metrics.registry, &budget);
    let mut server = serving::with_limits(tonic::transport::Server::builder());
    if let Some(tls) = &tls {
        server = server.tls_config(tls.server_config()).context("cannot serve TLS")?;
    }
    let server = server
        .layer(metrics.requests.clone())
        .add_service(serving::kv_server(Arc::clone(&kv), &request_bytes))
        .add_service(serving::kv_batch_server(kv, &request_bytes))
        .add_service(serving::cluster_server(ClusterRouter::new(forwarder)))
        .serve_with_incoming_shutdown(
            serving::guarded_incoming(listener, budget).context("cannot accept connections")?,
            async move {
                let _ = until_stopped.wait_for(|stop| *stop).await;
            },
        );
    tokio::pin!(server);

    let mut stopped = shutdown.clone();
    tokio::select! {
        served = &mut server => served.context("serving failed")?,
        _ = async {
            let _ = stopped.wait_for(|stop| *stop).await;
            tokio::time::sleep(SHUTDOWN_GRACE).await;
        } => tracing::warn!("requests still in flight after {SHUTDOWN_GRACE:?}; stopping anyway"),
    }
    for task in trackers {
        task.abort();
    }
    tracing::info!("raftkv-router stopped");
    Ok(())
}

/// Serves `/metrics` and `/health` on `listener` until the router stops.
fn serve_metrics(
    listener: TcpListener,
    metrics: &RouterMetrics,
    tracker: &Arc<LeaderTracker>,
    mut shutdown: watch::Receiver<bool>,
) {
    if let Ok(address) = listener.local_addr() {
        tracing::info!("serving /metrics and /health on {address}");
    }
    let endpoint = raftkv::metrics::serve(
        listener,
        metrics.registry.clone(),
        metrics::health_check(Arc::clone(tracker)),
        async move {
            let _ = shutdown.wait_for(|stop| *stop).await;
        },
    );
    tokio::spawn(async move {
        if let Err(error) = endpoint.await {
            tracing::warn!("the metrics endpoint failed: {error}");
        }
    });
}

/// Resolves when SIGINT or SIGTERM arrives, with the signal's name.
async fn stop_signal() -> &'static str {
    use tokio::signal::unix::{signal, SignalKind};
    let mut terminate = match signal(SignalKind::terminate()) {
        Ok(terminate) => terminate,
        Err(error) => {
            tracing::warn!("cannot listen for SIGTERM ({error}); only Ctrl-C stops the router");
            let _ = tokio::signal::ctrl_c().await;
            return "SIGINT";
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => "SIGINT",
        _ = terminate.recv() => "SIGTERM",
    }
}
