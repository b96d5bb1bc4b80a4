//! The async runtime of the node and the router.

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
