//! What a benchmark records while it runs: a latency histogram, operation and error counts,
//! and completions over time.
//!
//! It exists to keep recording cheap and bounded, whatever the number of clients: clients
//! record into a fixed number of [`Recorder`] shards (an HDR histogram is about 140 KiB, too
//! much to give each of thousands of clients its own), and the shards are merged once at the end.

use std::collections::BTreeMap;
use std::time::Duration;

use hdrhistogram::Histogram;

/// Resolution of the completions timeline, and so of [`Recorder::longest_stall`].
pub const TICK: Duration = Duration::from_millis(10);
/// Latencies are recorded in microseconds between 1 µs and this; longer ones count as this.
const HIGHEST_LATENCY_MICROS: u64 = 600_000_000;
/// Significant decimal digits the histogram keeps (0.1 % relative error).
const SIGNIFICANT_DIGITS: u8 = 3;
/// Distinct error messages kept; later ones are counted under [`OTHER_ERRORS`].
pub const MAX_ERROR_KINDS: usize = 8;
/// The error kind that counts messages beyond the first [`MAX_ERROR_KINDS`].
pub const OTHER_ERRORS: &str = "(other errors)";

/// Whether an operation read or wrote.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum OperationKind {
    Read,
    Write,
}

/// The measurements of some clients over the measured window (the warm-up is not recorded).
#[derive(Clone, Debug)]
pub struct Recorder {
    /// Latency of each successful operation, in microseconds.
    latency_micros: Histogram<u64>,
    reads: u64,
    writes: u64,
    errors: u64,
    error_kinds: BTreeMap<String, u64>,
    /// Ticks of [`TICK`] in the window.
    window_ticks: usize,
    /// Successful operations completed in each [`TICK`] of the window, up to the last tick
    /// with a completion (the rest of the window had none): grown as operations complete, so
    /// that a window sized for the longest run costs memory only for the time it lasts.
    completions_per_tick: Vec<u64>,
}

impl Recorder {
    /// An empty recorder for a measured window of `window`; completions after it count in its
    /// last tick.
    pub fn new(window: Duration) -> Recorder {
        let window_ticks = window.as_nanos().div_ceil(TICK.as_nanos()).max(1) as usize;
        Recorder {
            latency_micros: Histogram::new_with_bounds(1, HIGHEST_LATENCY_MICROS, SIGNIFICANT_DIGITS)
                .expect("the histogram bounds are valid constants"),
            reads: 0,
            writes: 0,
            errors: 0,
            error_kinds: BTreeMap::new(),
            window_ticks,
            completions_per_tick: Vec::new(),
        }
    }

    /// Records a successful operation that took `latency` and completed `at` after the window
    /// began.
    pub fn record_success(&mut self, kind: OperationKind, latency: Duration, at: Duration) {
        let micros = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX).max(1);
        self.latency_micros.saturating_record(micros);
        match kind {
            OperationKind::Read => self.reads += 1,
            OperationKind::Write => self.writes += 1,
        }
        let tick = (at.as_nanos() / TICK.as_nanos()) as usize;
        self.count_completions(tick, 1);
    }

    /// Adds `count` completions to tick `tick` (the window's last tick when it is past it).
    fn count_completions(&mut self, tick: usize, count: u64) {
        let tick = tick.min(self.window_ticks - 1);
        if tick >= self.completions_per_tick.len() {
            self.completions_per_tick.resize(tick + 1, 0);
        }
        self.completions_per_tick[tick] += count;
    }

    /// Records a failed operation and why it failed (one line).
    pub fn record_error(&mut self, message: &str) {
        self.errors += 1;
        self.count_error_kind(message, 1);
    }

    fn count_error_kind(&mut self, message: &str, count: u64) {
        if let Some(seen) = self.error_kinds.get_mut(message) {
            *seen += count;
            return;
        }
        let named_kinds = self.error_kinds.len() - usize::from(self.error_kinds.contains_key(OTHER_ERRORS));
        let kind = if named_kinds < MAX_ERROR_KINDS {
            message
        } else {
            OTHER_ERRORS
        };
        *self.error_kinds.entry(kind.to_string()).or_default() += count;
    }

    /// Adds `other`'s measurements to these; those past the end of this window count in its
    /// last tick (a fill's clients record into windows as long as the longest run, and are
    /// merged into one as long as the fill took).
    pub fn merge(&mut self, other: &Recorder) {
        self.latency_micros
            .add(&other.latency_micros)
            .expect("histograms of one benchmark have the same bounds");
        self.reads += other.reads;
        self.writes += other.writes;
        self.errors += other.errors;
        for (message, &count) in &other.error_kinds {
            self.count_error_kind(message, count);
        }
        for (tick, &completions) in other.completions_per_tick.iter().enumerate() {
            if completions > 0 {
                self.count_completions(tick, completions);
            }
        }
    }

    /// Successful operations.
    pub fn operations(&self) -> u64 {
        self.reads + self.writes
    }

    /// Successful reads.
    pub fn reads(&self) -> u64 {
        self.reads
    }

    /// Successful writes.
    pub fn writes(&self) -> u64 {
        self.writes
    }

    /// Failed operations.
    pub fn errors(&self) -> u64 {
        self.errors
    }

    /// How often each error message was seen (at most [`MAX_ERROR_KINDS`] messages, plus
    /// [`OTHER_ERRORS`]).
    pub fn error_kinds(&self) -> &BTreeMap<String, u64> {
        &self.error_kinds
    }

    /// The latency at quantile `quantile` (0..=1) of the successful operations, in
    /// milliseconds; 0 when there were none.
    pub fn latency_ms_at(&self, quantile: f64) -> f64 {
        if self.latency_micros.is_empty() {
            return 0.0;
        }
        micros_to_ms(self.latency_micros.value_at_quantile(quantile))
    }

    /// The highest latency, in milliseconds; 0 when there were no successful operations.
    pub fn max_latency_ms(&self) -> f64 {
        if self.latency_micros.is_empty() {
            return 0.0;
        }
        micros_to_ms(self.latency_micros.max())
    }

    /// The mean latency, in milliseconds; 0 when there were no successful operations.
    pub fn mean_latency_ms(&self) -> f64 {
        if self.latency_micros.is_empty() {
            return 0.0;
        }
        self.latency_micros.mean() / 1000.0
    }

    /// The longest stretch of the window in which no operation completed successfully, to
    /// [`TICK`] resolution: how long the service stalled (e.g. across a leader change).
    pub fn longest_stall(&self) -> Duration {
        let mut longest = 0u32;
        let mut current = 0u32;
        for tick in 0..self.window_ticks {
            let completions = self.completions_per_tick.get(tick).copied().unwrap_or(0);
            current = if completions == 0 { current + 1 } else { 0 };
            longest = longest.max(current);
        }
        TICK * longest
    }

    /// Successful operations in each whole or partial second of the window.
    pub fn operations_per_second(&self) -> Vec<u64> {
        let ticks_per_second = (Duration::from_secs(1).as_nanos() / TICK.as_nanos()) as usize;
        (0..self.window_ticks.div_ceil(ticks_per_second))
            .map(|second| {
                let ticks = second * ticks_per_second..((second + 1) * ticks_per_second).min(self.window_ticks);
                ticks.filter_map(|tick| self.completions_per_tick.get(tick)).sum()
            })
            .collect()
    }
}

fn micros_to_ms(micros: u64) -> f64 {
    micros as f64 / 1000.0
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ms(value: u64) -> Duration {
        Duration::from_millis(value)
    }

    #[test]
    fn percentiles_come_from_the_histogram() {
        let mut recorder = Recorder::new(ms(1000));
        for latency_ms in 1..=1000 {
            recorder.record_success(OperationKind::Write, ms(latency_ms), ms(0));
        }
        // Three significant digits: each figure within 0.1 % of the exact one.
        let close = |actual: f64, expected: f64| (actual - expected).abs() <= expected * 0.001 + 1e-9;
        assert!(
            close(recorder.latency_ms_at(0.5), 500.0),
            "{}",
            recorder.latency_ms_at(0.5)
        );
        assert!(
            close(recorder.latency_ms_at(0.9), 900.0),
            "{}",
            recorder.latency_ms_at(0.9)
        );
        assert!(
            close(recorder.latency_ms_at(0.99), 990.0),
            "{}",
            recorder.latency_ms_at(0.99)
        );
        assert!(
            close(recorder.latency_ms_at(0.999), 999.0),
            "{}",
            recorder.latency_ms_at(0.999)
        );
        assert!(
            close(recorder.max_latency_ms(), 1000.0),
            "{}",
            recorder.max_latency_ms()
        );
        assert!(
            close(recorder.mean_latency_ms(), 500.5),
            "{}",
            recorder.mean_latency_ms()
        );
        assert_eq!(recorder.operations(), 1000);
    }

    #[test]
    fn sub_millisecond_latencies_keep_microsecond_precision() {
        let mut recorder = Recorder::new(ms(1000));
        recorder.record_success(OperationKind::Read, Duration::from_micros(123), ms(0));
        assert_eq!(recorder.latency_ms_at(0.5), 0.123);
        recorder.record_success(OperationKind::Read, Duration::from_nanos(10), ms(0));
        assert_eq!(recorder.latency_ms_at(0.0), 0.001);
    }

    #[test]
    fn an_empty_recording_reports_zeros_not_garbage() {
        let recorder = Recorder::new(ms(1000));
        assert_eq!(recorder.latency_ms_at(0.99), 0.0);
        assert_eq!(recorder.max_latency_ms(), 0.0);
        assert_eq!(recorder.mean_latency_ms(), 0.0);
        assert_eq!(recorder.longest_stall(), ms(1000));
    }

    #[test]
    fn merging_adds_counts_histograms_and_timelines() {
        let mut first = Recorder::new(ms(2000));
        let mut second = Recorder::new(ms(2000));
        first.record_success(OperationKind::Read, ms(1), ms(5));
        second.record_success(OperationKind::Write, ms(3), ms(1500));
        second.record_error("timed out");
        first.merge(&second);
        assert_eq!((first.reads(), first.writes(), first.errors()), (1, 1, 1));
        assert!((first.max_latency_ms() - 3.0).abs() < 0.01);
        assert_eq!(first.operations_per_second(), vec![1, 1]);
    }

    #[test]
    fn error_kinds_are_bounded() {
        let mut recorder = Recorder::new(ms(100));
        for index in 0..20 {
            recorder.record_error(&format!("error {index}"));
        }
        recorder.record_error("error 0");
        assert_eq!(recorder.errors(), 21);
        assert_eq!(recorder.error_kinds().len(), MAX_ERROR_KINDS + 1);
        assert_eq!(recorder.error_kinds()["error 0"], 2);
        assert_eq!(recorder.error_kinds()[OTHER_ERRORS], 12);

        let mut merged = Recorder::new(ms(100));
        merged.merge(&recorder);
        assert_eq!(merged.errors(), 21);
        assert_eq!(merged.error_kinds(), recorder.error_kinds());
    }

    #[test]
    fn the_longest_stall_is_the_longest_run_without_completions() {
        let mut recorder = Recorder::new(ms(1000));
        for at in [0, 10, 20, 300, 310, 990] {
            recorder.record_success(OperationKind::Write, ms(1), ms(at));
        }
        // Nothing completed from 30 ms to 300 ms, and from 320 ms to 990 ms.
        assert_eq!(recorder.longest_stall(), ms(670));
    }

    #[test]
    fn a_long_window_costs_memory_only_for_the_time_used_and_merges_into_a_short_one() {
        let mut shard = Recorder::new(Duration::from_secs(3_600));
        shard.record_success(OperationKind::Write, ms(1), ms(1_250));
        assert_eq!(shard.completions_per_tick.len(), 126);
        let mut fill = Recorder::new(ms(1_300));
        fill.merge(&shard);
        let mut late = Recorder::new(Duration::from_secs(3_600));
        late.record_success(OperationKind::Write, ms(1), ms(1_400));
        fill.merge(&late);
        assert_eq!(fill.operations_per_second(), vec![0, 2]);
        assert_eq!(fill.longest_stall(), ms(1_250));
    }

    #[test]
    fn completions_after_the_window_count_in_its_last_tick() {
        let mut recorder = Recorder::new(ms(100));
        recorder.record_success(OperationKind::Write, ms(1), ms(150));
        assert_eq!(recorder.operations_per_second(), vec![1]);
    }
}
