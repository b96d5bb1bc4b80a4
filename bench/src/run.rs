//! The run of a benchmark: preload, the closed-loop clients, the measured window, and the
//! report at the end.
//!
//! It exists so that both binaries run exactly the same loop, whatever the target: this module
//! is generic over [`Target`], and the load generator gets a Tokio runtime of its own, sized by
//! `--threads`, on a thread of its own, whatever runtime its caller has.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::StreamExt;
use raftkv::client;
use tokio::time::Instant;

use crate::args::BenchArgs;
use crate::error::{BenchError, OperationError};
use crate::measurement::{OperationKind, Recorder};
use crate::progress::{Counters, ProgressLine};
use crate::report::{self, Report, RunDescription};
use crate::target::{self, one_line, RaftkvTarget, Target, TargetKind};
use crate::workload::{Operation, Workload, WorkloadKind};

/// Recorders the clients record into; bounded so that memory does not grow with the clients.
const RECORDER_SHARDS: usize = 16;
/// Puts in flight while the keyspace is preloaded.
const PRELOAD_CONCURRENCY: usize = 64;
/// Pause after a failed operation, so a refused connection does not become a busy loop.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(10);

/// Runs the benchmark against raftkv at `endpoints` (each request may take up to `timeout`,
/// retries included) and prints its report: what `raftkv bench` does.
pub async fn run_against_raftkv(endpoints: Vec<String>, timeout: Duration, args: BenchArgs) -> Result<(), BenchError> {
    let batched = !args.unbatched;
    let addresses = endpoints.clone();
    run(endpoints, args, move || {
        RaftkvTarget::open(&addresses, timeout, batched)
    })
    .await
}

/// Runs the benchmark against the system `open` connects to (it is called once per
/// `--connections`, on the load generator's runtime; connections open lazily) and prints its
/// report on stdout. A run in which no operation succeeded prints its report and fails.
pub async fn run<T, Open>(endpoints: Vec<String>, args: BenchArgs, open: Open) -> Result<(), BenchError>
where
    T: Target,
    Open: Fn() -> Result<T, client::Error> + Send + 'static,
{
    let command = report::shell_command_line(std::env::args_os());
    let format = args.output;
    let threads = args.threads;
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
                Ok(runtime) => runtime.block_on(benchmark(endpoints, args, command, open)),
                Err(error) => Err(BenchError::Runtime(error)),
            };
            let _ = done.send(result);
        })
        .map_err(BenchError::Thread)?;
    let report = outcome.await.map_err(|_| BenchError::ThreadStopped)??;
    print!("{}", report.render(format));
    if report.ops == 0 {
        return Err(BenchError::NothingSucceeded { errors: report.errors });
    }
    Ok(())
}

/// Preloads (if needed), runs the clients, and builds the report.
async fn benchmark<T: Target>(
    endpoints: Vec<String>,
    args: BenchArgs,
    command: String,
    open: impl Fn() -> Result<T, client::Error>,
) -> Result<Report, BenchError> {
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
        .map(|_| open())
        .collect::<Result<Vec<_>, _>>()
        .map_err(BenchError::Endpoints)?;
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
        task.await.map_err(BenchError::Client)?;
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
        consistency: args.workload.reads().then_some(args.consistency.name()),
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
async fn preload<T: Target>(connections: &[T], workload: &Workload, progress: ProgressLine) -> Result<(), BenchError> {
    let total = workload.keys().len();
    let mut puts = futures::stream::iter(workload.keys().iter().enumerate())
        .map(|(index, key)| {
            let operation = Operation::Put {
                key: key.clone(),
                value: workload.value().clone(),
            };
            target::execute(&connections[index % connections.len()], operation, index, 0)
        })
        .buffer_unordered(PRELOAD_CONCURRENCY);
    let mut written = 0;
    while let Some(outcome) = puts.next().await {
        outcome.map_err(BenchError::Preload)?;
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
async fn run_client<T: Target>(
    client: usize,
    connection: T,
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
        let execution = target::execute(&connection, operation, client, value_size);
        let Ok(outcome) = tokio::time::timeout_at(window.to, execution).await else {
            break;
        };
        let finished = Instant::now();
        counters.count(outcome.is_ok());
        if finished >= window.from {
            let mut recorder = recorder.lock().unwrap_or_else(|poison| poison.into_inner());
            match &outcome {
                Ok(()) => recorder.record_success(kind, finished - started, finished - window.from),
                Err(error) => recorder.record_error(&tallied_message(error)),
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
    // SAFETY: `usage` is a valid, exclusively borrowed rusage for getrusage to fill.
    if unsafe { libc::getrusage(libc::RUSAGE_SELF, &mut usage) } != 0 {
        return Duration::ZERO;
    }
    let seconds = |time: libc::timeval| Duration::new(time.tv_sec as u64, time.tv_usec as u32 * 1_000);
    seconds(usage.ru_utime) + seconds(usage.ru_stime)
}

/// An operation's error as the report tallies it: its message on one line.
fn tallied_message(error: &OperationError) -> String {
    one_line(&error.to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

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
