//! `raftkv bench`: a closed-loop load generator that measures throughput and latency of raftkv
//! (or, built with the `etcd` feature, of etcd v3 under the identical workload).
//!
//! It exists so that performance work is measured, not guessed: one tool, one workload
//! definition and one histogram for every system compared (bench/compare-etcd.sh runs it
//! against both). How a run goes:
//! 1. for workloads that read, the keyspace is written first (bounded concurrency);
//! 2. `--clients` tasks each keep exactly one request in flight (closed loop) for the warm-up
//!    plus `--duration`; only operations completing inside the measured window are recorded;
//! 3. the recorders are merged and printed as a report (text or one JSON object).
//!
//! Connections: by default all clients share one client (one HTTP/2 connection per endpoint,
//! requests multiplexed), which is how an application would use raftkv and which measured
//! best (BENCHMARKS.md); `--connections N` spreads them over N independent ones. raftkv's
//! client library sends the requests of its tasks that are ready together as one batch call;
//! `--unbatched` makes every request a call of its own. The load generator runs on its own Tokio runtime with
//! `--threads` worker threads (default 1), so that on a small machine it leaves the other cores
//! to the system under test; the report's `load_generator_cpu_cores` says when it is the
//! bottleneck.

mod measurement;
mod progress;
mod report;
mod target;
mod workload;

#[cfg(feature = "etcd")]
mod etcd;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use anyhow::anyhow;
use clap::Args;
use futures::StreamExt;
use raftkv::limits::MAX_VALUE_BYTES;
use tokio::time::Instant;

use crate::{CliError, ConsistencyArg};
use measurement::{OperationKind, Recorder};
use progress::{Counters, ProgressLine};
use report::{Report, ReportFormat, RunDescription};
use target::{Connection, TargetKind};
use workload::{Operation, Workload, WorkloadKind, MAX_KEYS};

/// The most concurrent clients one benchmark runs.
pub const MAX_CLIENTS: u32 = 10_000;
/// The most independent connections (client instances) one benchmark opens.
pub const MAX_CONNECTIONS: u32 = 1_024;
/// The most worker threads of the load generator's runtime.
pub const MAX_THREADS: u16 = 64;
/// The longest measured window (the completions timeline grows with it).
pub const MAX_DURATION: Duration = Duration::from_secs(3_600);
/// Recorders the clients record into; bounded so that memory does not grow with the clients.
const RECORDER_SHARDS: usize = 16;
/// Puts in flight while the keyspace is preloaded.
const PRELOAD_CONCURRENCY: usize = 64;
/// Pause after a failed operation, so a refused connection does not become a busy loop.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(10);

/// The flags of `raftkv bench`.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which operations to send: put, get, or mixed (gets and puts, see --read-ratio).
    #[arg(long, value_enum)]
    workload: WorkloadKind,
    /// Share of gets in the mixed workload, 0 to 1.
    #[arg(long, default_value_t = 0.9, value_parser = parse_ratio, value_name = "RATIO")]
    read_ratio: f64,
    /// Consistency of the gets (stale: etcd's serializable reads).
    #[arg(long, value_enum, default_value_t = ConsistencyArg::Linearizable)]
    consistency: ConsistencyArg,
    /// Concurrent clients, each with exactly one request in flight.
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CLIENTS as i64))]
    clients: u32,
    /// How long to measure, after the warm-up (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_measured_duration, value_name = "DURATION")]
    duration: Duration,
    /// How long to run before measuring; nothing of the warm-up is recorded (0s: none).
    #[arg(long, default_value = "1s", value_parser = parse_warmup, value_name = "DURATION")]
    warmup: Duration,
    /// Size of the keyspace: keys bench/00000000, bench/00000001, ...; each operation picks one
    /// uniformly at random.
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=MAX_KEYS))]
    keys: u64,
    /// Bytes per value written (and expected by gets).
    #[arg(long, default_value_t = 256, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(0..=MAX_VALUE_BYTES as u64))]
    value_size: u64,
    /// Report format.
    #[arg(long, short, value_enum, default_value_t = ReportFormat::Text)]
    output: ReportFormat,
    /// The system to drive: raftkv (router or nodes) or etcd (needs --features etcd).
    #[arg(long, value_enum, default_value_t = TargetKind::Raftkv)]
    target: TargetKind,
    /// Independent connections the clients are spread over (each one HTTP/2 connection per
    /// endpoint; clients on one connection multiplex their requests over it).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    connections: u32,
    /// Send every raftkv request as its own call, as separate client processes would,
    /// instead of letting the client library batch the requests that are ready together.
    #[arg(long)]
    unbatched: bool,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64))]
    threads: u16,
}

/// `raftkv bench`: runs the benchmark against `endpoints` and prints its report.
pub async fn run(endpoints: Vec<String>, timeout: Duration, args: BenchArgs) -> Result<(), CliError> {
    let command = report::shell_command_line(std::env::args_os());
    let format = args.output;
    let threads = args.threads;
    // The load generator gets a runtime of its own, sized by --threads, on a thread of its own.
    let (done, outcome) = tokio::sync::oneshot::channel();
    std::thread::Builder::new()
        .name("raftkv-bench".to_string())
        .spawn(move || {
            let runtime = if threads == 1 {
                tokio::runtime::Builder::new_current_thread().enable_all().build()
            } else {
                tokio::runtime::Builder::new_multi_thread()
                    .worker_threads(threads.into())
                    .enable_all()
                    .build()
            };
            let result = match runtime {
                Ok(runtime) => runtime.block_on(benchmark(endpoints, timeout, args, command)),
                Err(error) => Err(CliError::Failed(anyhow!(
                    "cannot start the benchmark's runtime: {error}"
                ))),
            };
            let _ = done.send(result);
        })
        .map_err(|error| CliError::Failed(anyhow!("cannot start the benchmark's thread: {error}")))?;
    let report = outcome
        .await
        .map_err(|_| CliError::Failed(anyhow!("the benchmark's thread stopped unexpectedly")))??;
    print!("{}", report.render(format));
    if report.ops == 0 {
        return Err(CliError::Failed(anyhow!(
            "no operation succeeded ({} failed)",
            report.errors
        )));
    }
    Ok(())
}

/// Preloads (if needed), runs the clients, and builds the report.
async fn benchmark(
    endpoints: Vec<String>,
    timeout: Duration,
    args: BenchArgs,
    command: String,
) -> Result<Report, CliError> {
    let consistency = raftkv::pb::Consistency::from(args.consistency);
    let value_size = args.value_size as usize;
    let workload = Arc::new(Workload::new(
        args.workload,
        args.read_ratio,
        consistency,
        args.keys,
        value_size,
    ));
    let connections = (0..args.connections)
        .map(|_| Connection::open(args.target, &endpoints, timeout, !args.unbatched))
        .collect::<Result<Vec<_>, _>>()
        .map_err(CliError::Usage)?;
    let progress = ProgressLine::on_stderr();

    if args.workload.reads() {
        preload(&connections, &workload, progress).await?;
    }

    let clients = args.clients as usize;
    let recorders: Arc<Vec<Mutex<Recorder>>> = Arc::new(
        (0..clients.min(RECORDER_SHARDS))
            .map(|_| Mutex::new(Recorder::new(args.duration)))
            .collect(),
    );
    let counters = Arc::new(Counters::default());
    let start = Instant::now();
    let window = MeasuredWindow {
        from: start + args.warmup,
        to: start + args.warmup + args.duration,
    };
    let cpu_in_window = tokio::spawn(async move {
        tokio::time::sleep_until(window.from).await;
        let before = process_cpu_time();
        tokio::time::sleep_until(window.to).await;
        process_cpu_time().saturating_sub(before)
    });
    let tasks: Vec<_> = (0..clients)
        .map(|client| {
            let connection = connections[client % connections.len()].clone();
            tokio::spawn(run_client(
                client,
                connection,
                workload.clone(),
                recorders.clone(),
                counters.clone(),
                window,
                value_size,
            ))
        })
        .collect();
    progress.follow_run(&counters, start, window.from, window.to).await;
    for task in tasks {
        task.await
            .map_err(|error| CliError::Failed(anyhow!("a benchmark client failed: {error}")))?;
    }
    let cpu_time = cpu_in_window.await.unwrap_or_default();

    let mut merged = Recorder::new(args.duration);
    for recorder in recorders.iter() {
        merged.merge(&recorder.lock().unwrap_or_else(|poison| poison.into_inner()));
    }
    let run = RunDescription {
        target: args.target,
        endpoints,
        workload: args.workload,
        consistency: args.workload.reads().then_some(match args.consistency {
            ConsistencyArg::Linearizable => "linearizable",
            ConsistencyArg::Stale => "stale",
        }),
        read_ratio: (args.workload == WorkloadKind::Mixed).then_some(args.read_ratio),
        clients: args.clients,
        connections: args.connections,
        batched: args.target == TargetKind::Raftkv && !args.unbatched,
        threads: args.threads,
        keys: args.keys,
        value_size: args.value_size,
        warmup_s: args.warmup.as_secs_f64(),
        command,
    };
    Ok(Report::new(run, &merged, args.duration, cpu_time))
}

/// When operations count: those that complete in `from..to`.
#[derive(Clone, Copy, Debug)]
struct MeasuredWindow {
    from: Instant,
    to: Instant,
}

/// Writes every key of the keyspace once, [`PRELOAD_CONCURRENCY`] at a time, so that gets
/// find values. Any failure stops the benchmark: reads of missing keys would measure nothing.
async fn preload(connections: &[Connection], workload: &Workload, progress: ProgressLine) -> Result<(), CliError> {
    let total = workload.keys().len();
    let mut puts = futures::stream::iter(workload.keys().iter().enumerate())
        .map(|(index, key)| {
            let operation = Operation::Put {
                key: key.clone(),
                value: workload.value().clone(),
            };
            connections[index % connections.len()].execute(operation, index, 0)
        })
        .buffer_unordered(PRELOAD_CONCURRENCY);
    let mut written = 0;
    while let Some(outcome) = puts.next().await {
        outcome.map_err(|error| CliError::Failed(anyhow!("preloading the keyspace failed: {error}")))?;
        written += 1;
        if written % 1_000 == 0 || written == total {
            progress.show(&format!("preloading the keyspace: {written}/{total} keys"));
        }
    }
    progress.clear();
    Ok(())
}

/// One closed-loop client: sends its operations one at a time until the window ends, and
/// records those that complete inside it.
async fn run_client(
    client: usize,
    connection: Connection,
    workload: Arc<Workload>,
    recorders: Arc<Vec<Mutex<Recorder>>>,
    counters: Arc<Counters>,
    window: MeasuredWindow,
    value_size: usize,
) {
    let recorder = &recorders[client % recorders.len()];
    for operation in workload.operations(client as u64) {
        let started = Instant::now();
        if started >= window.to {
            break;
        }
        let kind = match operation {
            Operation::Put { .. } => OperationKind::Write,
            Operation::Get { .. } => OperationKind::Read,
        };
        // An operation still in flight when the window ends is abandoned, not recorded.
        let Ok(outcome) = tokio::time::timeout_at(window.to, connection.execute(operation, client, value_size)).await
        else {
            break;
        };
        let finished = Instant::now();
        counters.count(outcome.is_ok());
        if finished >= window.from {
            let mut recorder = recorder.lock().unwrap_or_else(|poison| poison.into_inner());
            match &outcome {
                Ok(()) => recorder.record_success(kind, finished - started, finished - window.from),
                Err(message) => recorder.record_error(message),
            }
        }
        if outcome.is_err() {
            tokio::time::sleep(PAUSE_AFTER_ERROR).await;
        }
    }
}

/// CPU time (user + system) this process has used so far, all threads together.
fn process_cpu_time() -> Duration {
    // SAFETY: getrusage only writes into the struct we pass, which is zero-initialised plain data.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let seconds = |time: libc::timeval| Duration::new(time.tv_sec as u64, time.tv_usec as u32 * 1_000);
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// Parses a share between 0 and 1 (`0.9`).
fn parse_ratio(text: &str) -> Result<f64, String> {
    match text.parse::<f64>() {
        Ok(ratio) if (0.0..=1.0).contains(&ratio) => Ok(ratio),
        _ => Err("must be a number from 0 to 1, e.g. 0.9".to_string()),
    }
}

/// Parses the measured duration: more than zero and at most [`MAX_DURATION`].
fn parse_measured_duration(text: &str) -> Result<Duration, String> {
    let duration = crate::parse_positive_duration(text)?;
    if duration > MAX_DURATION {
        return Err(format!("must be at most {}", humantime::format_duration(MAX_DURATION)));
    }
    Ok(duration)
}

/// Parses the warm-up: zero or more, at most [`MAX_DURATION`].
fn parse_warmup(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| format!("{error} (e.g. 1s, 500ms, 0s)"))?;
    if duration > MAX_DURATION {
        return Err(format!("must be at most {}", humantime::format_duration(MAX_DURATION)));
    }
    Ok(duration)
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::Parser;

    #[derive(Parser, Debug)]
    struct BenchCommandLine {
        #[command(flatten)]
        args: BenchArgs,
    }

    fn parse(arguments: &[&str]) -> Result<BenchArgs, clap::Error> {
        BenchCommandLine::try_parse_from(std::iter::once("bench").chain(arguments.iter().copied()))
            .map(|line| line.args)
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let args = parse(&["--workload", "put"]).unwrap();
        assert_eq!(args.workload, WorkloadKind::Put);
        assert_eq!(args.read_ratio, 0.9);
        assert_eq!(args.consistency, ConsistencyArg::Linearizable);
        assert_eq!(args.clients, 16);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.warmup, Duration::from_secs(1));
        assert_eq!(args.keys, 10_000);
        assert_eq!(args.value_size, 256);
        assert_eq!(args.output, ReportFormat::Text);
        assert_eq!(args.target, TargetKind::Raftkv);
        assert_eq!(args.connections, 1);
        assert_eq!(args.threads, 1);
    }

    #[test]
    fn every_flag_of_the_issue_is_accepted() {
        let args = parse(&[
            "--workload",
            "mixed",
            "--read-ratio",
            "0.75",
            "--consistency",
            "stale",
            "--clients",
            "64",
            "--duration",
            "30s",
            "--keys",
            "1000",
            "--value-size",
            "1024",
            "--output",
            "json",
            "--target",
            "etcd",
            "--warmup",
            "0s",
            "--connections",
            "4",
            "--threads",
            "2",
        ])
        .unwrap();
        assert_eq!(args.workload, WorkloadKind::Mixed);
        assert_eq!(args.read_ratio, 0.75);
        assert_eq!(args.consistency, ConsistencyArg::Stale);
        assert_eq!(args.clients, 64);
        assert_eq!(args.duration, Duration::from_secs(30));
        assert_eq!(args.warmup, Duration::ZERO);
        assert_eq!(args.keys, 1000);
        assert_eq!(args.value_size, 1024);
        assert_eq!(args.output, ReportFormat::Json);
        assert_eq!(args.target, TargetKind::Etcd);
        assert_eq!((args.connections, args.threads), (4, 2));
    }

    #[test]
    fn the_workload_is_required() {
        assert!(parse(&[]).is_err());
        assert!(parse(&["--workload", "scan"]).is_err());
    }

    #[test]
    fn out_of_range_flags_are_usage_errors() {
        for bad in [
            &["--workload", "put", "--clients", "0"][..],
            &["--workload", "put", "--clients", "10001"],
            &["--workload", "put", "--keys", "0"],
            &["--workload", "put", "--duration", "0s"],
            &["--workload", "put", "--duration", "2h"],
            &["--workload", "put", "--duration", "ten"],
            &["--workload", "mixed", "--read-ratio", "1.5"],
            &["--workload", "mixed", "--read-ratio", "-0.1"],
            &["--workload", "put", "--value-size", "1048577"],
            &["--workload", "get", "--consistency", "eventual"],
            &["--workload", "put", "--target", "redis"],
            &["--workload", "put", "--output", "yaml"],
        ] {
            let error = parse(bad).expect_err(&format!("{bad:?} should be refused"));
            assert_eq!(error.exit_code(), 2, "{bad:?}");
        }
        assert!(parse(&["--workload", "put", "--value-size", "1048576"]).is_ok());
        assert!(parse(&["--workload", "put", "--value-size", "0"]).is_ok());
    }

    #[test]
    fn ratios_must_be_between_zero_and_one() {
        assert_eq!(parse_ratio("0"), Ok(0.0));
        assert_eq!(parse_ratio("1"), Ok(1.0));
        assert!(parse_ratio("NaN").is_err());
        assert!(parse_ratio("2").is_err());
    }

    #[test]
    fn process_cpu_time_never_goes_backwards() {
        let first = process_cpu_time();
        let mut spin = 0u64;
        for value in 0..100_000u64 {
            spin = spin.wrapping_add(value * value);
        }
        std::hint::black_box(spin);
        assert!(process_cpu_time() >= first);
    }
}
