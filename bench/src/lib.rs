//! raftkv's load generator: a closed-loop benchmark that measures the throughput and latency of
//! raftkv, or of etcd v3 under the identical workload.
//!
//! It exists so that performance work is measured, not guessed: one workload definition, one
//! closed loop and one histogram for every system compared. Its library is what `raftkv bench`
//! (the CLI) runs against raftkv; this crate's `raftkv-bench` binary runs the same against
//! raftkv or etcd (bench/compare-etcd.sh), so that etcd's client stays out of the user-facing
//! CLI, as etcd keeps its own benchmark tool apart from etcdctl. How a run goes:
//! 1. for workloads that read, the keyspace is written first (bounded concurrency), unless
//!    `--no-preload` says it is there already;
//! 2. `--clients` tasks each keep exactly one request in flight (closed loop) for the warm-up
//!    plus `--duration`; only operations completing inside the measured window are recorded;
//! 3. the recorders are merged and printed as a report (text or one JSON object).
//!
//! A fill (`--workload fill`) instead writes every key of the keyspace exactly once, its
//! `--clients` taking the next key of one shared sequence, and reports the whole fill: how a
//! scale run loads its data (millions of keys; they are named as they are written, so the load
//! generator's memory does not grow with the keyspace).
//!
//! Connections: by default all clients share one connection (one HTTP/2 connection per
//! endpoint, requests multiplexed), which is how an application would use raftkv and which
//! measured best (BENCHMARKS.md); `--connections N` spreads them over N independent ones.
//! raftkv's client library sends the requests of its tasks that are ready together as one
//! batch call; `--unbatched` makes every request a call of its own. The load generator runs on
//! its own Tokio runtime with `--threads` worker threads (default 1), so that on a small machine
//! it leaves the other cores to the system under test; the report's `load_generator_cpu_cores`
//! says when it is the bottleneck.

mod args;
mod error;
mod measurement;
mod progress;
mod report;
mod run;
mod target;
mod workload;

pub use args::{BenchArgs, MAX_CLIENTS, MAX_CONNECTIONS, MAX_DURATION, MAX_THREADS};
pub use error::{BenchError, KeyNotWritten, OperationError};
pub use report::{Report, ReportFormat};
pub use run::{run, run_against_raftkv};
pub use target::{one_line, RaftkvTarget, Target, TargetKind};
pub use workload::{FillOrder, WorkloadKind, KEY_BYTES, KEY_PREFIX, MAX_KEYS};
