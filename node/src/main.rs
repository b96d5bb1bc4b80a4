//! `raftkv-node`: parses flags, sets up logging and signals, runs the node.

use std::collections::BTreeMap;
use std::net::{SocketAddr, ToSocketAddrs};
use std::path::PathBuf;
use std::process::ExitCode;

use clap::Parser;
use raftkv_node::app::{self, Settings};
use raftkv_node::store::engine::{open_log, EngineKind, EngineOptions, DEFAULT_CACHE_MB};

mod restore_command;

/// The longest --initial-cluster-token, in bytes.
const MAX_CLUSTER_TOKEN_BYTES: usize = 256;

const EXAMPLE: &str = "\
Example (three nodes on one machine; run each in its own terminal):
  raftkv-node --id 1 --listen 127.0.0.1:7001 --data-dir data/node-1 \\
      --initial-cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003

With --metrics-listen 127.0.0.1:7101, Prometheus scrapes http://127.0.0.1:7101/metrics and a
load balancer checks http://127.0.0.1:7101/health (200 ok, or 503 and the reason).
With TLS (certificates from `raftkv certs create --dir certs`), add to every node:
  --cert certs/node.pem --key certs/node-key.pem --ca certs/ca.pem

The initial cluster is used once, to bootstrap an empty data directory; a restarted
node keeps its data and never re-initialises. `raftkv cluster up` does all of this for you.

Adding a node to a running cluster (it waits, empty, until the leader adds it):
  raftkv-node --id 4 --listen 127.0.0.1:7004 --data-dir data/node-4 --join
  raftkv member add 4 127.0.0.1:7004
Making a data directory of a new cluster from a backup: `raftkv-node restore --help`.";

/// A raftkv server node: one member of a Raft-replicated key-value store.
///
/// Serves the key-value API, the cluster status API and Raft traffic between
/// nodes on one gRPC port. Its Raft log is fsynced to its own files before a write is
/// acknowledged; its data lives in a storage engine (fjall by default).
#[derive(Parser, Debug)]
#[command(name = "raftkv-node", version, after_help = EXAMPLE)]
struct Flags {
    /// This node's id (a positive integer, one of those in --initial-cluster, or with --join one
    /// never used in the cluster before).
    #[arg(long, env = "RAFTKV_ID", value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// Address to listen on, HOST:PORT.
    #[arg(long, env = "RAFTKV_LISTEN", value_parser = parse_socket_addr)]
    listen: SocketAddr,
    /// Address other nodes and clients use to reach this node [default: this node's address in
    /// --initial-cluster; with --join, --listen unless it is a wildcard address].
    #[arg(long, env = "RAFTKV_ADVERTISE", value_parser = parse_host_port)]
    advertise: Option<String>,
    /// Directory for this node's data; created if missing.
    #[arg(long, env = "RAFTKV_DATA_DIR")]
    data_dir: PathBuf,
    /// Every initial member as ID=HOST:PORT, comma separated.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER", value_parser = parse_cluster, required_unless_present = "join")]
    initial_cluster: Option<InitialCluster>,
    /// With --initial-cluster, what the new cluster's id is derived from besides its members
    /// (as etcd's flag of the same name): two clusters bootstrapped from the same
    /// --initial-cluster with different tokens never accept each other's Raft messages. Used
    /// once, when the data directory is new; a directory keeps the id it was created with.
    #[arg(long, env = "RAFTKV_INITIAL_CLUSTER_TOKEN", default_value = raftkv::wire::DEFAULT_CLUSTER_TOKEN, conflicts_with = "join", value_parser = parse_token)]
    initial_cluster_token: String,
    /// Join a running cluster instead of bootstrapping one: start with an empty data directory
    /// and wait until the leader adds this node (`raftkv member add ID ADDRESS`).
    #[arg(long, env = "RAFTKV_JOIN", conflicts_with = "initial_cluster")]
    join: bool,
    /// Leader heartbeat interval in milliseconds; must be well below the election timeout.
    /// openraft also uses it as the timeout of each AppendEntries and of each leadership
    /// check behind a linearizable read, so too small a value fails them under load.
    #[arg(long, env = "RAFTKV_HEARTBEAT_MS", default_value_t = 25, value_parser = clap::value_parser!(u64).range(1..))]
    heartbeat_ms: u64,
    /// Minimum election timeout in milliseconds (the maximum is 1.5 times this). Tuned for a
    /// LAN or loopback: a dead leader is replaced after about 2.5 to 3 times this (openraft
    /// waits out the leader's lease, then an election timeout), and a follower stands only
    /// after that long without word from the leader (at the default, 6 heartbeats).
    #[arg(long, env = "RAFTKV_ELECTION_TIMEOUT_MS", default_value_t = 60, value_parser = clap::value_parser!(u64).range(2..))]
    election_timeout_ms: u64,
    /// Take a snapshot (a point the log may be purged up to; it writes no file) after this many
    /// log entries since the last one, or sooner once the log since holds an eighth of the state
    /// machine's size on disk (8 MiB at least); from 64 MiB of state on, the eighth alone decides.
    #[arg(long, env = "RAFTKV_SNAPSHOT_AFTER_LOGS", default_value_t = 5000, value_parser = clap::value_parser!(u64).range(1..))]
    snapshot_after_logs: u64,
    /// Log entries kept behind a snapshot so slow followers can catch up without one; never
    /// more of them than an eighth of the state machine's size on disk (8 MiB at least), so the
    /// log on disk stays within about a quarter of the state's size (16 MiB while it is small).
    #[arg(long, env = "RAFTKV_KEEP_LOGS_AFTER_SNAPSHOT", default_value_t = 1000)]
    keep_logs_after_snapshot: u64,
    /// Local IP address that connections to other nodes leave from [default: chosen by the OS].
    /// Lets firewall rules or a test's fault-injecting proxy tell the nodes apart.
    #[arg(long, env = "RAFTKV_SOURCE_ADDRESS")]
    source_address: Option<std::net::IpAddr>,
    /// The state machine's storage engine. fjall (the default) is an LSM tree whose memory is
    /// bounded (by --cache-mb and its own limits) at any data size. sled, the engine raftkv
    /// started with, does not bound its memory: it was measured at 12 GB of RSS for 0.5 GB
    /// of data. A data directory keeps the engine it was created with.
    #[arg(long, env = "RAFTKV_ENGINE", default_value = "fjall", value_parser = parse_engine)]
    engine: EngineKind,
    /// The storage engine's cache, in MiB (fjall's block cache; sled's cache_capacity, which
    /// does not bound sled's memory).
    #[arg(long, env = "RAFTKV_CACHE_MB", default_value_t = DEFAULT_CACHE_MB, value_parser = clap::value_parser!(u64).range(1..=1 << 20))]
    cache_mb: u64,
    /// Threads running the node's async work (Raft, gRPC) [default: the machine's cores]. One
    /// suits a small machine shared with other nodes (fewer thread hand-offs per request;
    /// storage I/O has threads of its own), as `raftkv cluster up` does.
    #[arg(long, env = "RAFTKV_WORKER_THREADS", value_parser = clap::value_parser!(u16).range(1..=256))]
    worker_threads: Option<u16>,
    /// Serve Prometheus metrics at /metrics and a health check at /health on this HOST:PORT
    /// (plain HTTP) [default: not served].
    #[arg(long, env = "RAFTKV_METRICS_LISTEN", value_parser = parse_socket_addr)]
    metrics_listen: Option<SocketAddr>,
    #[command(flatten)]
    tls: raftkv::tls::ServerTlsFlags,
}

#[derive(Debug, Clone)]
struct InitialCluster(BTreeMap<u64, String>);

fn parse_socket_addr(s: &str) -> Result<SocketAddr, String> {
    s.to_socket_addrs()
        .map_err(|e| format!("{s:?} is not a HOST:PORT address ({e})"))?
        .next()
        .ok_or_else(|| format!("{s:?} does not resolve to an address"))
}

fn parse_engine(s: &str) -> Result<EngineKind, String> {
    EngineKind::from_name(s).ok_or_else(|| {
        let names: Vec<_> = EngineKind::ALL.iter().map(|k| k.name()).collect();
        format!("{s:?} is not an engine (one of: {})", names.join(", "))
    })
}

fn parse_host_port(s: &str) -> Result<String, String> {
    raftkv::client::check_address(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

fn parse_token(s: &str) -> Result<String, String> {
    if s.is_empty() || s.len() > MAX_CLUSTER_TOKEN_BYTES || !s.chars().all(|c| c.is_ascii_graphic()) {
        return Err(format!(
            "{s:?} is not a cluster token (1 to {MAX_CLUSTER_TOKEN_BYTES} printable ASCII characters, no spaces)"
        ));
    }
    Ok(s.to_string())
}

fn parse_cluster(s: &str) -> Result<InitialCluster, String> {
    let mut members = BTreeMap::new();
    for part in s.split(',').map(str::trim).filter(|p| !p.is_empty()) {
        let (id, addr) = part
            .split_once('=')
            .ok_or_else(|| format!("{part:?} is not ID=HOST:PORT"))?;
        let id: u64 = id
            .trim()
            .parse()
            .map_err(|_| format!("{id:?} in {part:?} is not a node id"))?;
        if id == 0 {
            return Err("node ids start at 1".to_string());
        }
        let addr = parse_host_port(addr.trim())?;
        if members.insert(id, addr).is_some() {
            return Err(format!("node {id} appears twice"));
        }
    }
    if members.is_empty() {
        return Err("the initial cluster needs at least one member".to_string());
    }
    Ok(InitialCluster(members))
}

fn settings(flags: Flags) -> Result<Settings, String> {
    if flags.heartbeat_ms >= flags.election_timeout_ms {
        return Err(format!(
            "--heartbeat-ms ({}) must be below --election-timeout-ms ({})",
            flags.heartbeat_ms, flags.election_timeout_ms
        ));
    }
    let (members, advertise) = match flags.initial_cluster {
        Some(InitialCluster(members)) => {
            let own = members.get(&flags.id).ok_or_else(|| {
                format!(
                    "node {} is not in --initial-cluster ({} members)",
                    flags.id,
                    members.len()
                )
            })?;
            let advertise = flags.advertise.unwrap_or_else(|| own.clone());
            (members, advertise)
        }
        // Joining: no initial cluster (an empty one is what `Settings` calls joining).
        None => {
            let advertise = match flags.advertise {
                Some(advertise) => advertise,
                None if flags.listen.ip().is_unspecified() => {
                    return Err(format!(
                        "--join with --listen {} needs --advertise: the address the others reach this node at",
                        flags.listen
                    ))
                }
                None => flags.listen.to_string(),
            };
            (BTreeMap::new(), advertise)
        }
    };
    let tls = flags.tls.load().map_err(|error| error.to_string())?;
    Ok(Settings {
        id: flags.id,
        listen: flags.listen,
        advertise,
        data_dir: flags.data_dir,
        initial_cluster: members,
        initial_cluster_token: flags.initial_cluster_token,
        heartbeat_interval_ms: flags.heartbeat_ms,
        election_timeout_min_ms: flags.election_timeout_ms,
        election_timeout_max_ms: flags.election_timeout_ms * 3 / 2,
        snapshot_after_logs: flags.snapshot_after_logs,
        keep_logs_after_snapshot: flags.keep_logs_after_snapshot,
        source_address: flags.source_address,
        engine: EngineOptions {
            kind: flags.engine,
            cache_bytes: flags.cache_mb << 20,
        },
        metrics_listen: flags.metrics_listen,
        tls,
    })
}

/// Resolves on the first SIGINT or SIGTERM.
async fn stop_signal() {
    use tokio::signal::unix::{signal, SignalKind};
    let mut term = signal(SignalKind::terminate()).expect("cannot install a SIGTERM handler");
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = term.recv() => {}
    }
}

fn main() -> ExitCode {
    raftkv_node::memory::limit_malloc_arenas();
    raftkv::runtime::abort_on_panic();
    let mut args = std::env::args_os().skip(1);
    if args.next().is_some_and(|first| first == "restore") {
        return restore_command::run(args);
    }
    let flags: Flags = match raftkv::usage::parse_or_exit() {
        Ok(flags) => flags,
        Err(code) => return code,
    };
    use tracing_subscriber::layer::SubscriberExt;
    use tracing_subscriber::util::SubscriberInitExt;
    use tracing_subscriber::Layer;
    let levels = tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| {
        tracing_subscriber::EnvFilter::new(
            "info,openraft=error,openraft::replication=off,sled=warn,fjall=warn,lsm_tree=warn,h2=warn,tower=warn",
        )
    });
    // A storage engine's lines while the data directory opens: the refusal says it, in one line.
    let engine_opening = tracing_subscriber::filter::filter_fn(|metadata| !open_log::is_quieted(metadata.target()));
    tracing_subscriber::registry()
        .with(levels)
        .with(
            tracing_subscriber::fmt::layer()
                .with_writer(std::io::stderr)
                .with_ansi(false)
                .with_filter(engine_opening),
        )
        .init();
    let worker_threads = raftkv::runtime::worker_threads_or_cores(flags.worker_threads);
    let settings = match settings(flags) {
        Ok(s) => s,
        Err(e) => {
            eprintln!("error: {e}");
            return ExitCode::from(2);
        }
    };
    if let Err(e) = raftkv_node::memory::spawn_trimmer() {
        eprintln!("error: cannot start the thread that returns freed memory: {e}");
        return ExitCode::FAILURE;
    }
    let runtime = match raftkv::runtime::build(worker_threads) {
        Ok(r) => r,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::FAILURE;
        }
    };
    match runtime.block_on(app::run(settings, stop_signal())) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            // One line: the outermost context and its causes.
            eprintln!("error: {}", format!("{e:#}").replace('\n', " "));
            ExitCode::FAILURE
        }
    }
}
