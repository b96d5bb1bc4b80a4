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

/// How far below the serving threads' the CPU priority of background work is, as an increment
/// of the nice value (19 at most): a snapshot built while clients write gets the cores that
/// serving leaves, so the build takes longer and the writes do not wait for it.
pub const BACKGROUND_NICE_INCREMENT: i32 = 10;

/// Runs `work` on a new thread named `name` at a lower CPU priority (on Linux, its nice value
/// raised by [`BACKGROUND_NICE_INCREMENT`]; elsewhere as is) and returns its result. A thread
/// of its own, not tokio's blocking pool: an unprivileged process cannot raise a thread's
/// priority back, and a pool thread would carry the lower one into later work (applies).
pub async fn spawn_background<T: Send + 'static>(
    name: &str,
    work: impl FnOnce() -> T + Send + 'static,
) -> std::io::Result<T> {
    let (done, result) = tokio::sync::oneshot::channel();
    std::thread::Builder::new().name(name.to_string()).spawn(move || {
        lower_this_threads_priority();
        let _ = done.send(work());
    })?;
    result
        .await
        .map_err(|_| std::io::Error::other("a background thread ended without its result"))
}

#[cfg(target_os = "linux")]
fn lower_this_threads_priority() {
    // SAFETY: gettid and setpriority take and return plain integers and touch no memory of
    // ours. On Linux PRIO_PROCESS with a thread id sets that one thread's nice value.
    let failed = unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS, thread, BACKGROUND_NICE_INCREMENT) != 0
    };
    if failed {
        tracing::debug!(
            "cannot lower a background thread's priority: {}",
            std::io::Error::last_os_error()
        );
    }
}

#[cfg(not(target_os = "linux"))]
fn lower_this_threads_priority() {}

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
