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
        if CATCHING_PANICS.with(std::cell::Cell::get) > 0 {
            // `catch_panic` on this thread turns it into an error.
            return;
        }
        report(info);
        eprintln!("error: internal error (a bug): the process stops");
        std::process::abort();
    }));
}

thread_local! {
    /// How many [`catch_panic`] calls are running on this thread.
    static CATCHING_PANICS: std::cell::Cell<u32> = const { std::cell::Cell::new(0) };
}

/// Runs `work`, turning a panic in it (on this thread) into `Err` with the panic's message
/// instead of ending the process. Only for a library that panics on damaged input where it
/// should return an error (fjall's journal recovery asserts a checksum): the caller refuses
/// the input with one line.
pub fn catch_panic<T>(work: impl FnOnce() -> T) -> Result<T, String> {
    CATCHING_PANICS.with(|n| n.set(n.get() + 1));
    let result = std::panic::catch_unwind(std::panic::AssertUnwindSafe(work));
    CATCHING_PANICS.with(|n| n.set(n.get() - 1));
    result.map_err(|payload| {
        payload
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| payload.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "a panic without a message".to_string())
    })
}

#[cfg(test)]
mod catch_panic_tests {
    use super::catch_panic;

    #[test]
    fn a_panic_inside_becomes_an_error_with_its_message_and_work_that_returns_is_untouched() {
        assert_eq!(catch_panic(|| 7), Ok(7));
        let caught: Result<(), String> = catch_panic(|| panic!("checksum mismatch at {}", 190));
        assert_eq!(caught, Err("checksum mismatch at 190".to_string()));
        assert_eq!(catch_panic(|| 8), Ok(8), "the thread goes on as before");
    }
}
