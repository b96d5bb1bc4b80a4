//! The live progress line of a benchmark: one line on stderr, rewritten in place, and only
//! when stderr is a terminal (a script or a pipe gets just the final report).

use std::io::{IsTerminal, Write};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::time::Instant;

/// How often the progress line is redrawn.
pub const REFRESH_INTERVAL: Duration = Duration::from_millis(500);

/// Counters the clients bump as operations complete, read by the progress line.
#[derive(Debug, Default)]
pub struct Counters {
    succeeded: AtomicU64,
    failed: AtomicU64,
}

impl Counters {
    /// Counts one completed operation.
    pub fn count(&self, success: bool) {
        let counter = if success { &self.succeeded } else { &self.failed };
        counter.fetch_add(1, Ordering::Relaxed);
    }

    fn read(&self) -> (u64, u64) {
        (
            self.succeeded.load(Ordering::Relaxed),
            self.failed.load(Ordering::Relaxed),
        )
    }
}

/// A line on stderr that is redrawn in place; does nothing when stderr is not a terminal.
#[derive(Debug, Clone, Copy)]
pub struct ProgressLine {
    enabled: bool,
}

impl ProgressLine {
    /// A progress line on stderr, shown only if stderr is a terminal.
    pub fn on_stderr() -> ProgressLine {
        ProgressLine {
            enabled: std::io::stderr().is_terminal(),
        }
    }

    /// Replaces the line with `text`.
    pub fn show(&self, text: &str) {
        if self.enabled {
            let mut stderr = std::io::stderr().lock();
            // A terminal that went away is no reason to stop a benchmark.
            let _ = write!(stderr, "\r\x1b[2K{text}");
            let _ = stderr.flush();
        }
    }

    /// Removes the line, so the report starts on a clean line.
    pub fn clear(&self) {
        self.show("");
    }

    /// Redraws the run's progress every [`REFRESH_INTERVAL`] until `end`: elapsed time, the
    /// phase, and the throughput of the measured window so far (of the warm-up, before it).
    pub async fn follow_run(self, counters: &Counters, start: Instant, measure_from: Instant, end: Instant) {
        if !self.enabled {
            return;
        }
        let total = end - start;
        // The counters when the measured window began (as first seen after it began).
        let mut window_start: Option<(Instant, u64, u64)> = None;
        let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let now = Instant::now();
            if now >= end {
                break;
            }
            let (succeeded, failed) = counters.read();
            let (phase, since, base_succeeded, base_failed) = if now < measure_from {
                ("warming up", start, 0, 0)
            } else {
                let (since, base_succeeded, base_failed) = *window_start.get_or_insert((now, succeeded, failed));
                ("measuring", since, base_succeeded, base_failed)
            };
            let seconds = (now - since).as_secs_f64();
            if seconds < 0.01 {
                continue;
            }
            self.show(&format!(
                "{:>6.1}s/{:.0}s  {phase}  {:.0} ops/s so far  {} errors",
                (now - start).as_secs_f64(),
                total.as_secs_f64(),
                (succeeded - base_succeeded) as f64 / seconds,
                failed - base_failed,
            ));
        }
        self.clear();
    }

    /// Redraws the progress of a write of a whole keyspace (a fill or a preload) every
    /// [`REFRESH_INTERVAL`], until the task running it is aborted: keys written of `total`, MB
    /// of keys and values written, the rate, errors, and the time left at that rate.
    pub async fn follow_fill(
        self,
        what: &'static str,
        counters: Arc<Counters>,
        total: u64,
        bytes_per_key: u64,
        start: Instant,
    ) {
        if !self.enabled {
            return;
        }
        let mut ticks = tokio::time::interval(REFRESH_INTERVAL);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            let (written, failed) = counters.read();
            self.show(&fill_line(what, written, failed, total, bytes_per_key, start.elapsed()));
        }
    }
}

/// The progress line of a keyspace write: `what` has written `written` of `total` keys of
/// `bytes_per_key` bytes each in `elapsed`, and `failed` puts failed.
fn fill_line(what: &str, written: u64, failed: u64, total: u64, bytes_per_key: u64, elapsed: Duration) -> String {
    let megabytes = |keys: u64| (keys * bytes_per_key) as f64 / 1e6;
    let seconds = elapsed.as_secs_f64().max(1e-3);
    let keys_per_second = written as f64 / seconds;
    let left = if written == 0 {
        "?".to_string()
    } else {
        let seconds_left = (total.saturating_sub(written) as f64 / keys_per_second).round() as u64;
        humantime::format_duration(Duration::from_secs(seconds_left)).to_string()
    };
    format!(
        "{:>6.1}s  {what}: {written}/{total} keys ({:.1}%), {:.1}/{:.1} MB, {:.1} MB/s ({:.0} keys/s), {failed} errors, {left} left",
        elapsed.as_secs_f64(),
        written as f64 * 100.0 / total.max(1) as f64,
        megabytes(written),
        megabytes(total),
        megabytes(written) / seconds,
        keys_per_second,
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_fill_line_says_keys_megabytes_rate_and_time_left() {
        let line = fill_line("fill", 1_000_000, 3, 4_000_000, 270, Duration::from_secs(10));
        assert_eq!(
            line,
            "  10.0s  fill: 1000000/4000000 keys (25.0%), 270.0/1080.0 MB, 27.0 MB/s (100000 keys/s), 3 errors, 30s left"
        );
    }

    #[test]
    fn a_fill_line_before_the_first_write_has_no_estimate() {
        let line = fill_line("preloading the keyspace", 0, 0, 10, 270, Duration::ZERO);
        assert!(
            line.contains("preloading the keyspace: 0/10 keys (0.0%), 0.0/0.0 MB"),
            "{line}"
        );
        assert!(line.ends_with("? left"), "{line}");
    }
}
