//! The process set-up the node and the router share: the async runtime, and what a panic
//! does.

/// Builds the runtime for `worker_threads` threads. One thread means tokio's
/// current-thread scheduler: unlike the multi-thread one it has no "LIFO slot",
/// which runs a task woken by another (such as an HTTP/2 connection woken by each
/// reply) right away. Woken tasks queue behind the ones already ready, so a
/// connection writes the replies of a whole burst of requests in one `writev`
/// instead of one or more per reply (BENCHMARKS.md has the measurement).
pub fn build(worker_threads: usize) -> std::io::Result<tokio::runtime::Runtime> {
    if worker_threads <= 1 {
        tokio::runtime::Builder::new_current_thread().enable_all().build()
    } else {
        tokio::runtime::Builder::new_multi_thread()
            .worker_threads(worker_threads)
            .enable_all()
            .build()
    }
}

/// The worker threads asked for, or else one per core of the machine (a node or a router on
/// a machine of its own); one if the core count cannot be read.
pub fn worker_threads_or_cores(asked: Option<u16>) -> usize {
    asked
        .map(usize::from)
        .unwrap_or_else(|| std::thread::available_parallelism().map_or(1, |cores| cores.get()))
}

/// Makes any panic, on any thread, end the process (after the usual panic message) instead
/// of ending only the task or thread it happened in. A panic here is a broken invariant (a
/// gap in the log, an apply out of order): a node that kept serving without its Raft task
/// would answer every request with an error, or worse limp on; stopping loudly lets a
/// supervisor restart it from its durable state. Call it first thing in `main`.
pub fn abort_on_panic() {
    let report = std::panic::take_hook();
    std::panic::set_hook(Box::new(move |info| {
        report(info);
        eprintln!("error: internal error (a bug): the process stops");
        std::process::abort();
    }));
}
