//! What a node tells Prometheus (`--metrics-listen`): its Raft state, the WAL's fdatasync
//! times, the last snapshot's index, the time the last snapshot sent took and the data
//! directory's size, next to the gRPC call
//! metrics every server has ([`raftkv::metrics::RequestMetricsLayer`]); and when it calls
//! itself healthy.
//!
//! The Raft gauges are copied from openraft's metrics watch by a task of their own, so the
//! request path never touches them. The WAL thread and the snapshot sender cannot be handed a
//! registry without threading it through the store, so their two metrics are process-wide
//! statics that [`NodeMetrics::new`] registers.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, LazyLock};
use std::time::{Duration, Instant};

use openraft::async_runtime::WatchReceiver;
use prometheus::{Gauge, Histogram, HistogramOpts, IntCounter, IntGauge, Opts, Registry};
use raftkv::metrics::{must_register, HealthCheck, NAMESPACE};
use tokio::net::TcpListener;
use tokio::sync::watch;
use tracing::Instrument;

use crate::raft_watch::Sampled;
use crate::types::{NodeId, Raft};

/// A node calls itself healthy while its state machine is at most this many entries behind
/// what it knows is committed: it then answers reads without a noticeable wait.
pub const MAX_HEALTHY_APPLY_LAG_ENTRIES: u64 = 1000;
/// A node calls itself healthy only while it heard from the leader (a follower: the leader's
/// AppendEntries; the leader: a quorum's acknowledgement) within this many of its longest
/// election timeouts. openraft keeps naming the last leader on a follower cut off from the
/// others (with pre-vote it never campaigns), so "a leader is known" alone would stay true.
pub const LEADER_CONTACT_LIMIT_ELECTION_TIMEOUTS: u32 = 2;
/// How often the data directory's size is measured (a walk of its files, off the runtime).
pub const STORAGE_SAMPLE_INTERVAL: Duration = Duration::from_secs(10);
/// How often, at most, the index gauges follow openraft's (a scrape every few seconds sees
/// them at most this stale).
pub const INDEX_SAMPLE_INTERVAL: Duration = Duration::from_millis(100);
/// fdatasync duration buckets, in seconds: 50 µs doubling up to about 1.6 s.
const FSYNC_BUCKET_FIRST_SECONDS: f64 = 0.000_05;
const FSYNC_BUCKET_COUNT: usize = 16;

fn opts(name: &str, help: &str) -> Opts {
    Opts::new(name, help).namespace(NAMESPACE)
}

/// How long each fdatasync of the Raft log took (observed by the WAL writer thread).
pub static WAL_FSYNC_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    Histogram::with_opts(
        HistogramOpts::new(
            "wal_fsync_duration_seconds",
            "Time each fdatasync of the Raft log took.",
        )
        .namespace(NAMESPACE)
        .buckets(
            prometheus::exponential_buckets(FSYNC_BUCKET_FIRST_SECONDS, 2.0, FSYNC_BUCKET_COUNT)
                .expect("valid buckets"),
        ),
    )
    .expect("a valid metric definition")
});

/// How long the last snapshot sent to a follower took, from the first record read to the
/// follower's answer (it is written as it is sent, and installed before the answer).
pub static SNAPSHOT_LAST_SEND_SECONDS: LazyLock<Gauge> = LazyLock::new(|| {
    Gauge::with_opts(opts(
        "snapshot_last_send_seconds",
        "Time the last snapshot sent to a follower took, from the first record read to the follower having installed it.",
    ))
    .expect("a valid metric definition")
});

/// The node's registry and the gauges only it sets.
#[derive(Clone)]
pub struct NodeMetrics {
    pub registry: Registry,
    raft: RaftGauges,
    storage_bytes: IntGauge,
}

#[derive(Clone)]
struct RaftGauges {
    term: IntGauge,
    is_leader: IntGauge,
    leader_changes: IntCounter,
    commit_index: IntGauge,
    applied_index: IntGauge,
    last_log_index: IntGauge,
    snapshot_index: IntGauge,
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    let gauge = IntGauge::with_opts(opts(name, help)).expect("a valid metric definition");
    must_register(registry, gauge.clone());
    gauge
}

impl NodeMetrics {
    /// A registry with every node metric in it, the gRPC call metrics included.
    pub fn new() -> (NodeMetrics, raftkv::metrics::RequestMetricsLayer) {
        let registry = Registry::new();
        let leader_changes = IntCounter::with_opts(opts(
            "raft_leader_changes_total",
            "Times this node learnt of a new leader (a leader it did not know before).",
        ))
        .expect("a valid metric definition");
        must_register(&registry, leader_changes.clone());
        let raft = RaftGauges {
            term: gauge(&registry, "raft_term", "The Raft term this node is in."),
            is_leader: gauge(&registry, "raft_is_leader", "1 while this node is the leader, else 0."),
            leader_changes,
            commit_index: gauge(
                &registry,
                "raft_commit_index",
                "The last log index this node knows is committed.",
            ),
            applied_index: gauge(
                &registry,
                "raft_applied_index",
                "The last log index applied to the state machine.",
            ),
            last_log_index: gauge(
                &registry,
                "raft_last_log_index",
                "The last index in this node's Raft log.",
            ),
            snapshot_index: gauge(
                &registry,
                "raft_snapshot_index",
                "The log index of the last snapshot taken or installed: the log may be purged up to it.",
            ),
        };
        let storage_bytes = gauge(
            &registry,
            "storage_bytes",
            "Size of the node's data directory (Raft log, state machine, snapshot files being sent or received), sampled periodically.",
        );
        must_register(&registry, WAL_FSYNC_SECONDS.clone());
        must_register(&registry, SNAPSHOT_LAST_SEND_SECONDS.clone());
        let mut paths = raftkv::metrics::grpc_requests::PUBLIC_API_PATHS.to_vec();
        paths.extend_from_slice(raftkv::metrics::grpc_requests::RAFT_PATHS);
        let requests = raftkv::metrics::RequestMetricsLayer::new(&registry, &paths);
        (
            NodeMetrics {
                registry,
                raft,
                storage_bytes,
            },
            requests,
        )
    }

    /// Keeps the metrics current until the node stops, and serves them and the health check
    /// on `listener` when there is one.
    pub fn start(
        self,
        listener: Option<TcpListener>,
        health: HealthCheck,
        id: NodeId,
        raft: Raft,
        data_dir: PathBuf,
        shutdown: watch::Receiver<bool>,
    ) {
        if let Some(listener) = listener {
            let address = listener.local_addr().map(|a| a.to_string()).unwrap_or_default();
            tracing::info!(metrics = %address, "serving /metrics and /health");
            let mut stopping = shutdown.clone();
            let stop = async move {
                let _ = stopping.wait_for(|stop| *stop).await;
            };
            let endpoint = raftkv::metrics::serve(listener, self.registry.clone(), health, stop);
            tokio::spawn(
                async move {
                    if let Err(error) = endpoint.await {
                        tracing::warn!(%error, "the metrics endpoint failed");
                    }
                }
                .in_current_span(),
            );
        }
        tokio::spawn(self.clone().sample_storage(data_dir, shutdown).in_current_span());
        tokio::spawn(self.follow_raft(id, raft).in_current_span());
    }

    /// Copies openraft's state into the gauges until raft stops: leadership at every change,
    /// the indexes at most every [`INDEX_SAMPLE_INTERVAL`] (they move several times a write).
    pub async fn follow_raft(self, id: NodeId, raft: Raft) {
        let gauges = self.raft;
        let mut server = raft.server_metrics();
        let mut data = Sampled::new(&raft, INDEX_SAMPLE_INTERVAL);
        let mut known_leader = None;
        loop {
            {
                let s = server.borrow_and_update();
                gauges.term.set(to_gauge(s.vote.leader_id().term));
                gauges.is_leader.set(i64::from(s.current_leader == Some(id)));
                if s.current_leader.is_some() && s.current_leader != known_leader {
                    known_leader = s.current_leader;
                    gauges.leader_changes.inc();
                }
            }
            {
                let m = data.latest();
                gauges
                    .commit_index
                    .set(to_gauge(m.local_committed.map_or(0, |l| l.index)));
                gauges
                    .applied_index
                    .set(to_gauge(m.last_applied.map_or(0, |l| l.index)));
                gauges.last_log_index.set(to_gauge(m.last_log_index.unwrap_or(0)));
                gauges.snapshot_index.set(to_gauge(m.snapshot.map_or(0, |l| l.index)));
            }
            let stopped = tokio::select! {
                changed = server.changed() => changed.is_err(),
                changed = data.changed() => changed.is_err(),
            };
            if stopped {
                return;
            }
        }
    }

    /// Measures the data directory's size every [`STORAGE_SAMPLE_INTERVAL`] until `stop`.
    pub async fn sample_storage(self, data_dir: PathBuf, mut stop: watch::Receiver<bool>) {
        loop {
            let dir = data_dir.clone();
            if let Ok(bytes) = tokio::task::spawn_blocking(move || directory_bytes(&dir)).await {
                self.storage_bytes.set(to_gauge(bytes));
            }
            tokio::select! {
                _ = tokio::time::sleep(STORAGE_SAMPLE_INTERVAL) => {}
                _ = stop.wait_for(|stop| *stop) => return,
            }
        }
    }
}

fn to_gauge(value: u64) -> i64 {
    i64::try_from(value).unwrap_or(i64::MAX)
}

/// The bytes of every file under `dir`; files that vanish while it walks (a segment purged, a
/// compaction) are skipped.
fn directory_bytes(dir: &Path) -> u64 {
    let Ok(entries) = std::fs::read_dir(dir) else {
        return 0;
    };
    entries
        .flatten()
        .map(|entry| match entry.file_type() {
            Ok(kind) if kind.is_dir() => directory_bytes(&entry.path()),
            Ok(kind) if kind.is_file() => entry.metadata().map_or(0, |m| m.len()),
            _ => 0,
        })
        .sum()
}

/// Binds the metrics endpoint's address, if the node has one.
pub async fn bind(address: Option<SocketAddr>) -> anyhow::Result<Option<TcpListener>> {
    let Some(address) = address else {
        return Ok(None);
    };
    let listener = TcpListener::bind(address)
        .await
        .map_err(|error| anyhow::anyhow!("cannot listen for metrics on {address}: {error}"))?;
    Ok(Some(listener))
}

/// When this node last heard from a leader of its term: every AppendEntries it accepts (not
/// one from a deposed leader) is a word from the leader. Cheap to clone; one atomic store per
/// message.
#[derive(Clone)]
pub struct LeaderContact {
    origin: Instant,
    /// Milliseconds from `origin` to the last word, plus one; 0 for never.
    last_heard_millis: Arc<AtomicU64>,
}

impl LeaderContact {
    pub fn new() -> LeaderContact {
        LeaderContact {
            origin: Instant::now(),
            last_heard_millis: Arc::new(AtomicU64::new(0)),
        }
    }

    /// A leader's AppendEntries arrived.
    pub fn heard(&self) {
        let millis = u64::try_from(self.origin.elapsed().as_millis()).unwrap_or(u64::MAX - 1) + 1;
        self.last_heard_millis.store(millis, Ordering::Relaxed);
    }

    /// How long since the last word from a leader; None if none ever came.
    pub fn silent_for(&self) -> Option<Duration> {
        match self.last_heard_millis.load(Ordering::Relaxed) {
            0 => None,
            millis => Some(self.origin.elapsed().saturating_sub(Duration::from_millis(millis - 1))),
        }
    }
}

impl Default for LeaderContact {
    fn default() -> Self {
        LeaderContact::new()
    }
}

/// Healthy while the node knows a leader it has heard from lately (within
/// [`LEADER_CONTACT_LIMIT_ELECTION_TIMEOUTS`] of `election_timeout_max`) and has applied within
/// [`MAX_HEALTHY_APPLY_LAG_ENTRIES`] of what it knows the cluster committed.
pub fn health_check(raft: Raft, contact: LeaderContact, election_timeout_max: Duration) -> HealthCheck {
    let contact_limit = election_timeout_max * LEADER_CONTACT_LIMIT_ELECTION_TIMEOUTS;
    Arc::new(move || {
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        let Some(leader) = m.current_leader else {
            return Err(format!("no leader known in term {}", m.current_term));
        };
        if leader == m.id {
            if let Some(acked) = &m.last_quorum_acked {
                let silence = openraft::Instant::elapsed(&**acked);
                if silence > contact_limit {
                    return Err(format!(
                        "this node leads term {} but no quorum has acknowledged it for {} ms",
                        m.current_term,
                        silence.as_millis()
                    ));
                }
            }
        } else {
            match contact.silent_for() {
                Some(silence) if silence <= contact_limit => {}
                Some(silence) => {
                    return Err(format!(
                        "no word from leader {leader} for {} ms (term {})",
                        silence.as_millis(),
                        m.current_term
                    ))
                }
                None => return Err(format!("no word yet from leader {leader} (term {})", m.current_term)),
            }
        }
        // What the leader reported committed, when this node has not received that far yet: a
        // follower catching up is behind the cluster, not only behind its own log.
        let committed = m.local_committed.max(m.cluster_committed).map_or(0, |l| l.index);
        let applied = m.last_applied.map_or(0, |l| l.index);
        let lag = committed.saturating_sub(applied);
        if lag > MAX_HEALTHY_APPLY_LAG_ENTRIES {
            return Err(format!(
                "applied index {applied} is {lag} entries behind commit index {committed} (limit {MAX_HEALTHY_APPLY_LAG_ENTRIES})"
            ));
        }
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_exposition_names_and_types_every_node_metric() {
        let (metrics, _requests) = NodeMetrics::new();
        metrics.raft.leader_changes.inc();
        WAL_FSYNC_SECONDS.observe(0.001);
        let mut text = Vec::new();
        prometheus::Encoder::encode(&prometheus::TextEncoder::new(), &metrics.registry.gather(), &mut text).unwrap();
        let text = String::from_utf8(text).unwrap();
        let families = parse_exposition(&text);
        for (name, kind) in [
            ("raftkv_raft_term", "gauge"),
            ("raftkv_raft_is_leader", "gauge"),
            ("raftkv_raft_leader_changes_total", "counter"),
            ("raftkv_raft_commit_index", "gauge"),
            ("raftkv_raft_applied_index", "gauge"),
            ("raftkv_raft_last_log_index", "gauge"),
            ("raftkv_raft_snapshot_index", "gauge"),
            ("raftkv_wal_fsync_duration_seconds", "histogram"),
            ("raftkv_snapshot_last_send_seconds", "gauge"),
            ("raftkv_storage_bytes", "gauge"),
        ] {
            assert_eq!(families.get(name).map(String::as_str), Some(kind), "{name} in:\n{text}");
        }
        assert!(text.contains("raftkv_raft_leader_changes_total 1\n"), "{text}");
        assert!(text.contains("raftkv_wal_fsync_duration_seconds_count "), "{text}");
    }

    /// Reads the text format strictly enough to catch a broken exposition: every sample
    /// belongs to a family announced by a HELP and then a TYPE line, and its value is a number.
    /// Returns each family's type.
    fn parse_exposition(text: &str) -> std::collections::BTreeMap<String, String> {
        let mut helped = std::collections::BTreeSet::new();
        let mut types = std::collections::BTreeMap::new();
        for line in text.lines() {
            if let Some(rest) = line.strip_prefix("# HELP ") {
                let (name, help) = rest.split_once(' ').expect("a HELP line has a name and a text");
                assert!(!help.trim().is_empty(), "{name} has an empty HELP");
                helped.insert(name.to_string());
            } else if let Some(rest) = line.strip_prefix("# TYPE ") {
                let (name, kind) = rest.split_once(' ').expect("a TYPE line has a name and a type");
                assert!(helped.contains(name), "TYPE before HELP for {name}");
                assert!(["counter", "gauge", "histogram"].contains(&kind), "{line}");
                types.insert(name.to_string(), kind.to_string());
            } else if !line.is_empty() {
                let (series, value) = line.rsplit_once(' ').expect("a sample has a value");
                value
                    .parse::<f64>()
                    .unwrap_or_else(|_| panic!("{line}: the value is not a number"));
                let name = series.split('{').next().unwrap();
                let family = ["_bucket", "_sum", "_count"]
                    .iter()
                    .find_map(|suffix| {
                        name.strip_suffix(suffix)
                            .filter(|base| types.get(*base).is_some_and(|k| k == "histogram"))
                    })
                    .unwrap_or(name);
                assert!(types.contains_key(family), "{line}: no TYPE for {family}");
                assert!(name.starts_with("raftkv_"), "{name} is outside the raftkv namespace");
            }
        }
        types
    }

    #[test]
    fn leader_contact_is_never_until_heard_then_a_silence_that_grows() {
        let contact = LeaderContact::new();
        assert_eq!(contact.silent_for(), None);
        contact.heard();
        let first = contact.silent_for().expect("heard once");
        assert!(first < Duration::from_secs(60), "{first:?}");
    }

    #[test]
    fn a_directory_s_size_is_the_sum_of_its_files_at_any_depth() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), [0u8; 10]).unwrap();
        std::fs::create_dir(dir.path().join("sub")).unwrap();
        std::fs::write(dir.path().join("sub/b"), [0u8; 5]).unwrap();
        assert_eq!(directory_bytes(dir.path()), 15);
        assert_eq!(directory_bytes(&dir.path().join("missing")), 0);
    }
}
