//! The run of a benchmark: preload, the closed-loop clients, the measured window, and the
//! report at the end; or a fill, which writes every key once and reports how fast it went.
//!
//! It exists so that both binaries run exactly the same loop, whatever the target: this module
//! is generic over [`Target`], and the load generator gets a Tokio runtime of its own, sized by
//! `--threads`, on a thread of its own, whatever runtime its caller has.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use raftkv::client::{self, ClientOptions};
use raftkv::tls::ClientTls;
use tokio::time::Instant;

use crate::args::BenchArgs;
use crate::error::{BenchError, KeyNotWritten, OperationError};
use crate::measurement::{OperationKind, Recorder};
use crate::progress::{Counters, ProgressLine};
use crate::report::{self, Report, RunDescription};
use crate::target::{self, one_line, RaftkvTarget, Target, TargetKind};
use crate::workload::{key_name, FillOrder, FillSequence, Operation, Workload, WorkloadKind};

/// Recorders the clients record into; bounded so that memory does not grow with the clients.
const RECORDER_SHARDS: usize = 16;
/// Puts in flight while the keyspace is preloaded.
const PRELOAD_CONCURRENCY: usize = 64;
/// Pause after a failed operation, so a refused connection does not become a busy loop.
const PAUSE_AFTER_ERROR: Duration = Duration::from_millis(10);
/// Puts of one key a fill or preload makes before it gives up (a put is idempotent: a retry of
/// one whose outcome is unknown writes the same value again).
const ATTEMPTS_PER_KEY: u32 = 10;
/// The longest fill whose completions timeline (ops per second, longest stall) is kept whole;
/// later completions count in its last tick. Memory grows only with the time a fill takes.
const FILL_TIMELINE: Duration = Duration::from_secs(24 * 3_600);

/// Runs the benchmark against raftkv at `endpoints` (each request may take up to `timeout`,
/// retries included; connections are TLS when `tls` is given) and prints its report: what
/// `raftkv bench` does.
pub async fn run_against_raftkv(
    endpoints: Vec<String>,
    timeout: Duration,
    tls: Option<ClientTls>,
    args: BenchArgs,
) -> Result<(), BenchError> {
    let options = ClientOptions {
        batching: !args.unbatched,
        tls,
    };
    let addresses = endpoints.clone();
    run(endpoints, args, move || {
        RaftkvTarget::open(&addresses, timeout, options.clone())
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
    let workload = Arc::new(
        Workload::new(args.workload, args.read_ratio, consistency, args.keys, value_size)
            .with_random_values(args.random_values),
    );
    let connections = (0..args.connections)
        .map(|_| open())
        .collect::<Result<Vec<_>, _>>()
        .map_err(BenchError::Endpoints)?;
    let progress = ProgressLine::on_stderr();

    if args.workload == WorkloadKind::Fill {
        return fill(endpoints, args, command, &connections, workload, progress).await;
    }
    if args.workload.reads() && !args.no_preload {
        preload(&connections, &workload, progress).await?;
    }

    let clients = args.clients as usize;
    let recorders = shard_recorders(clients, args.duration);
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

    let merged = merge(&recorders, args.duration);
    let run = describe(endpoints, &args, command);
    Ok(Report::new(run, &merged, args.duration, cpu_time))
}

/// A fill: `--clients` clients write every key of the keyspace once, in `--fill-order`, and
/// the report covers the whole fill (no warm-up: every write counts).
async fn fill<T: Target>(
    endpoints: Vec<String>,
    args: BenchArgs,
    command: String,
    connections: &[T],
    workload: Arc<Workload>,
    progress: ProgressLine,
) -> Result<Report, BenchError> {
    let cpu_before = process_cpu_time();
    let write = Arc::new(KeyspaceWrite::new(
        workload,
        args.fill_order,
        shard_recorders(args.clients as usize, FILL_TIMELINE),
    ));
    write
        .run(connections, args.clients as usize, "fill", progress, BenchError::Fill)
        .await?;
    let elapsed = write.start.elapsed();
    let cpu_time = process_cpu_time().saturating_sub(cpu_before);
    let merged = merge(&write.recorders, elapsed);
    let run = describe(endpoints, &args, command);
    Ok(Report::new(run, &merged, elapsed, cpu_time))
}

/// What was run, for the report.
fn describe(endpoints: Vec<String>, args: &BenchArgs, command: String) -> RunDescription {
    let fill = args.workload == WorkloadKind::Fill;
    RunDescription {
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
        random_values: args.random_values,
        warmup_s: if fill { 0.0 } else { args.warmup.as_secs_f64() },
        fill_order: fill.then_some(args.fill_order.name()),
        preloaded: args.workload.reads() && !args.no_preload,
        command,
    }
}

/// Recorders for `clients` clients to share, each with a window of `window`.
fn shard_recorders(clients: usize, window: Duration) -> Arc<Vec<Mutex<Recorder>>> {
    Arc::new(
        (0..clients.clamp(1, RECORDER_SHARDS))
            .map(|_| Mutex::new(Recorder::new(window)))
            .collect(),
    )
}

/// The shards' measurements together, over a window of `window`.
fn merge(recorders: &[Mutex<Recorder>], window: Duration) -> Recorder {
    let mut merged = Recorder::new(window);
    for recorder in recorders {
        merged.merge(&recorder.lock().unwrap_or_else(|poison| poison.into_inner()));
    }
    merged
}

/// When operations count: those that complete in `from..to`.
#[derive(Clone, Copy, Debug)]
struct MeasuredWindow {
    from: Instant,
    to: Instant,
}

/// Writes every key of the keyspace once, in key order, [`PRELOAD_CONCURRENCY`] at a time, so
/// that gets find values. A key that cannot be written stops the benchmark: reads of missing
/// keys would measure nothing.
async fn preload<T: Target>(
    connections: &[T],
    workload: &Arc<Workload>,
    progress: ProgressLine,
) -> Result<(), BenchError> {
    // Nothing of the preload is reported: one small recorder takes its measurements.
    let write = Arc::new(KeyspaceWrite::new(
        workload.clone(),
        FillOrder::Sequential,
        shard_recorders(1, Duration::from_secs(1)),
    ));
    write
        .run(
            connections,
            PRELOAD_CONCURRENCY,
            "preloading the keyspace",
            progress,
            BenchError::Preload,
        )
        .await
}

/// One write of every key of a keyspace (a fill, or a preload), shared by its clients: the
/// order of the writes, the next one to take, whether a client gave up (then the others stop
/// too), and where the puts are recorded and counted.
struct KeyspaceWrite {
    workload: Arc<Workload>,
    sequence: FillSequence,
    next_position: AtomicU64,
    stopped: AtomicBool,
    recorders: Arc<Vec<Mutex<Recorder>>>,
    counters: Arc<Counters>,
    /// When the write began: completion times are counted from here.
    start: Instant,
}

impl KeyspaceWrite {
    /// A write of `workload`'s keyspace in `order`, recorded into `recorders`; it begins now.
    fn new(workload: Arc<Workload>, order: FillOrder, recorders: Arc<Vec<Mutex<Recorder>>>) -> KeyspaceWrite {
        KeyspaceWrite {
            sequence: FillSequence::new(workload.keys(), order),
            workload,
            next_position: AtomicU64::new(0),
            stopped: AtomicBool::new(false),
            recorders,
            counters: Arc::new(Counters::default()),
            start: Instant::now(),
        }
    }

    /// Writes every key once, `clients` puts in flight, with `what` on the progress line. A
    /// failed put is recorded and retried, up to [`ATTEMPTS_PER_KEY`] times; a key that still
    /// fails stops every client, and is the error (as `failed` makes it).
    async fn run<T: Target>(
        self: &Arc<Self>,
        connections: &[T],
        clients: usize,
        what: &'static str,
        progress: ProgressLine,
        failed: fn(KeyNotWritten) -> BenchError,
    ) -> Result<(), BenchError> {
        let progress_task = tokio::spawn(progress.follow_fill(
            what,
            self.counters.clone(),
            self.sequence.len(),
            self.workload.bytes_per_put(),
            self.start,
        ));
        let tasks: Vec<_> = (0..clients)
            .map(|client| {
                let connection = connections[client % connections.len()].clone();
                tokio::spawn(self.clone().client(client, connection))
            })
            .collect();
        let mut outcome = Ok(());
        for task in tasks {
            let finished = match task.await {
                Ok(written) => written.map_err(failed),
                Err(panicked) => Err(BenchError::Client(panicked)),
            };
            outcome = outcome.and(finished);
        }
        progress_task.abort();
        progress.clear();
        outcome
    }

    /// One client: takes the next key of the sequence and writes it, until none is left.
    async fn client<T: Target>(self: Arc<Self>, client: usize, connection: T) -> Result<(), KeyNotWritten> {
        let recorder = &self.recorders[client % self.recorders.len()];
        while !self.stopped.load(Ordering::Relaxed) {
            let position = self.next_position.fetch_add(1, Ordering::Relaxed);
            if position >= self.sequence.len() {
                break;
            }
            let key = key_name(self.sequence.key_number(position));
            let mut attempts = 0;
            loop {
                attempts += 1;
                let operation = Operation::Put {
                    key: key.clone(),
                    value: self.workload.value_for(|| position),
                };
                let started = Instant::now();
                let outcome = target::execute(&connection, operation, client, 0).await;
                let finished = Instant::now();
                self.counters.count(outcome.is_ok());
                let error = {
                    let mut recorder = recorder.lock().unwrap_or_else(|poison| poison.into_inner());
                    match outcome {
                        Ok(()) => {
                            recorder.record_success(OperationKind::Write, finished - started, finished - self.start);
                            break;
                        }
                        Err(error) => {
                            recorder.record_error(&tallied_message(&error));
                            error
                        }
                    }
                };
                if attempts >= ATTEMPTS_PER_KEY {
                    self.stopped.store(true, Ordering::Relaxed);
                    return Err(KeyNotWritten {
                        key: String::from_utf8_lossy(&key).into_owned(),
                        attempts,
                        error,
                    });
                }
                tokio::time::sleep(PAUSE_AFTER_ERROR).await;
            }
        }
        Ok(())
    }
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
    use std::collections::HashMap;

    use bytes::Bytes;
    use raftkv::pb::Consistency;
    use raftkv::usage::ReadConsistency;

    use super::*;
    use crate::report::ReportFormat;

    /// An in-memory target that counts the puts of every key, and fails the puts `fails` says.
    #[derive(Clone)]
    struct FakeStore {
        puts: Arc<Mutex<HashMap<Bytes, u32>>>,
        calls: Arc<AtomicU64>,
        fails: fn(call: u64, key: &[u8]) -> bool,
    }

    impl FakeStore {
        fn new(fails: fn(u64, &[u8]) -> bool) -> FakeStore {
            FakeStore {
                puts: Arc::default(),
                calls: Arc::default(),
                fails,
            }
        }

        fn puts(&self) -> HashMap<Bytes, u32> {
            self.puts.lock().unwrap().clone()
        }
    }

    impl Target for FakeStore {
        async fn put(&self, _client: usize, key: Bytes, _value: Bytes) -> Result<(), OperationError> {
            let call = self.calls.fetch_add(1, Ordering::Relaxed);
            if (self.fails)(call, &key) {
                return Err(OperationError::NoAnswer(Duration::from_millis(1)));
            }
            *self.puts.lock().unwrap().entry(key).or_default() += 1;
            Ok(())
        }

        async fn get(&self, _client: usize, key: Bytes, _consistency: Consistency) -> Result<Bytes, OperationError> {
            match self.puts.lock().unwrap().get(&key) {
                Some(_) => Ok(Bytes::from(vec![b'v'; 8])),
                None => Err(OperationError::NoAnswer(Duration::from_millis(1))),
            }
        }
    }

    fn args(workload: WorkloadKind, keys: u64) -> BenchArgs {
        BenchArgs {
            workload,
            read_ratio: 0.9,
            consistency: ReadConsistency::Linearizable,
            clients: 8,
            duration: Duration::from_millis(300),
            warmup: Duration::ZERO,
            keys,
            value_size: 8,
            output: ReportFormat::Json,
            target: TargetKind::Raftkv,
            connections: 2,
            unbatched: false,
            fill_order: FillOrder::Random,
            no_preload: false,
            random_values: false,
            threads: 1,
        }
    }

    async fn run_on(store: &FakeStore, args: BenchArgs) -> Result<Report, BenchError> {
        let store = store.clone();
        benchmark(vec!["fake:1".to_string()], args, "test".to_string(), move || {
            Ok(store.clone())
        })
        .await
    }

    #[tokio::test]
    async fn a_fill_writes_every_key_exactly_once_and_reports_it() {
        let store = FakeStore::new(|_, _| false);
        let report = run_on(&store, args(WorkloadKind::Fill, 1_000)).await.unwrap();
        let puts = store.puts();
        assert_eq!(puts.len(), 1_000);
        assert!(puts.values().all(|&count| count == 1));
        assert!((0..1_000).all(|index| puts.contains_key(&key_name(index))));
        assert_eq!((report.ops, report.writes, report.errors), (1_000, 1_000, 0));
        assert_eq!(report.written_mb, 1_000.0 * (14.0 + 8.0) / 1e6);
        assert_eq!(report.run.fill_order, Some("random"));
        assert_eq!(report.run.warmup_s, 0.0);
        assert!(!report.run.preloaded);
    }

    #[tokio::test]
    async fn a_fill_retries_a_failed_put_and_counts_the_failure() {
        // Every seventh call fails: each key is still written once.
        let store = FakeStore::new(|call, _| call % 7 == 3);
        let report = run_on(&store, args(WorkloadKind::Fill, 500)).await.unwrap();
        assert_eq!(store.puts().len(), 500);
        assert_eq!(report.writes, 500);
        assert!(report.errors >= 500 / 7, "{} errors", report.errors);
        assert_eq!(report.error_kinds.len(), 1);
    }

    #[tokio::test]
    async fn a_key_that_cannot_be_written_stops_the_fill_and_is_named() {
        let store = FakeStore::new(|_, key| key == b"bench/00000042");
        let error = run_on(&store, args(WorkloadKind::Fill, 100_000)).await.unwrap_err();
        let BenchError::Fill(KeyNotWritten { key, attempts, .. }) = &error else {
            panic!("{error:?}");
        };
        assert_eq!((key.as_str(), *attempts), ("bench/00000042", ATTEMPTS_PER_KEY));
        // The other clients stopped too, long before the end of the keyspace.
        assert!(store.puts().len() < 100_000);
    }

    #[tokio::test]
    async fn gets_without_preload_read_the_keyspace_as_it_is() {
        let store = FakeStore::new(|_, _| false);
        run_on(&store, args(WorkloadKind::Fill, 200)).await.unwrap();
        let mut gets = args(WorkloadKind::Get, 200);
        gets.no_preload = true;
        gets.value_size = 8;
        let report = run_on(&store, gets).await.unwrap();
        assert!(store.puts().values().all(|&count| count == 1), "nothing written again");
        assert!(report.reads > 0);
        assert_eq!(report.errors, 0);
        assert!(!report.run.preloaded);

        let preloaded = run_on(&store, args(WorkloadKind::Get, 200)).await.unwrap();
        assert!(
            store.puts().values().all(|&count| count == 2),
            "every key written again"
        );
        assert!(preloaded.run.preloaded);
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
