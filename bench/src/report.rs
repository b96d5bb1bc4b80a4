//! The result of a benchmark run: what was run and what was measured, as text for a person or
//! as one JSON object for scripts (`--output json`).
//!
//! It exists so that every figure is computed once, here, and the two renderings cannot
//! disagree; the JSON field names are an interface (bench/compare-etcd.sh reads them).

use std::collections::BTreeMap;
use std::ffi::OsString;
use std::fmt::Write as _;
use std::time::Duration;

use clap::ValueEnum;
use serde::Serialize;

use crate::measurement::Recorder;
use crate::target::TargetKind;
use crate::workload::{WorkloadKind, KEY_BYTES};

/// How the report is printed.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReportFormat {
    /// Lines for people.
    Text,
    /// One JSON object on one line, for scripts.
    Json,
}

/// What was run: the flags that shape the load, and the command line itself.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct RunDescription {
    pub target: TargetKind,
    pub endpoints: Vec<String>,
    pub workload: WorkloadKind,
    /// `linearizable` or `stale` for workloads that read, absent for `put`.
    pub consistency: Option<&'static str>,
    /// The share of reads, for the `mixed` workload only.
    pub read_ratio: Option<f64>,
    pub clients: u32,
    pub connections: u32,
    /// Whether the client library sent the requests that were ready together as one call
    /// (raftkv only; `--unbatched` turns it off).
    pub batched: bool,
    pub threads: u16,
    pub keys: u64,
    pub value_size: u64,
    /// Whether every put wrote random bytes (`--random-values`) rather than one repeated value.
    pub random_values: bool,
    /// 0 for a fill, which records every write.
    pub warmup_s: f64,
    /// `random` or `sequential`, for the `fill` workload only.
    pub fill_order: Option<&'static str>,
    /// Whether every key was written before the measured run (get and mixed, unless
    /// `--no-preload`).
    pub preloaded: bool,
    /// The exact command line, quoted for a POSIX shell.
    pub command: String,
}

/// Everything a benchmark run reports.
#[derive(Serialize, Clone, Debug, PartialEq)]
pub struct Report {
    #[serde(flatten)]
    pub run: RunDescription,
    /// The measured window (after the warm-up), in seconds; for a fill, the time it took.
    pub duration_s: f64,
    /// Successful operations in the window.
    pub ops: u64,
    pub reads: u64,
    pub writes: u64,
    /// Failed operations in the window.
    pub errors: u64,
    /// Failed operations by error message.
    pub error_kinds: BTreeMap<String, u64>,
    /// Successful operations per second of the window.
    pub ops_per_sec: f64,
    /// Megabytes (10^6 bytes) of keys and values the successful puts wrote.
    pub written_mb: f64,
    /// `written_mb` per second of the window.
    pub written_mb_per_sec: f64,
    /// Latency percentiles of the successful operations, in milliseconds.
    pub p50_ms: f64,
    pub p90_ms: f64,
    pub p99_ms: f64,
    pub p999_ms: f64,
    pub max_ms: f64,
    pub mean_ms: f64,
    /// The longest time without a successful completion, in milliseconds (10 ms resolution).
    pub longest_stall_ms: f64,
    /// CPU time the benchmark process itself used, in cores (1.0 = one core busy all the
    /// time): near the runtime's thread count means the load generator is the bottleneck.
    pub load_generator_cpu_cores: f64,
    /// Successful operations in each second of the window.
    pub ops_per_second: Vec<u64>,
}

impl Report {
    /// The report of `run` from what `recorder` measured over `measured`, during which the
    /// process used `cpu_time` of CPU.
    pub fn new(run: RunDescription, recorder: &Recorder, measured: Duration, cpu_time: Duration) -> Report {
        let seconds = measured.as_secs_f64().max(f64::MIN_POSITIVE);
        let written_mb = recorder.writes() as f64 * (KEY_BYTES as u64 + run.value_size) as f64 / 1e6;
        Report {
            run,
            duration_s: round(measured.as_secs_f64(), 3),
            ops: recorder.operations(),
            reads: recorder.reads(),
            writes: recorder.writes(),
            errors: recorder.errors(),
            error_kinds: recorder.error_kinds().clone(),
            ops_per_sec: round(recorder.operations() as f64 / seconds, 1),
            written_mb: round(written_mb, 6),
            written_mb_per_sec: round(written_mb / seconds, 3),
            p50_ms: round(recorder.latency_ms_at(0.50), 3),
            p90_ms: round(recorder.latency_ms_at(0.90), 3),
            p99_ms: round(recorder.latency_ms_at(0.99), 3),
            p999_ms: round(recorder.latency_ms_at(0.999), 3),
            max_ms: round(recorder.max_latency_ms(), 3),
            mean_ms: round(recorder.mean_latency_ms(), 3),
            longest_stall_ms: recorder.longest_stall().as_millis() as f64,
            load_generator_cpu_cores: round(cpu_time.as_secs_f64() / seconds, 2),
            ops_per_second: recorder.operations_per_second(),
        }
    }

    /// The report in `format`, ending with a newline.
    pub fn render(&self, format: ReportFormat) -> String {
        match format {
            ReportFormat::Text => self.to_text(),
            ReportFormat::Json => self.to_json() + "\n",
        }
    }

    /// One JSON object on one line.
    pub fn to_json(&self) -> String {
        serde_json::to_string(self).expect("a report has only plain fields")
    }

    /// Lines for people.
    pub fn to_text(&self) -> String {
        let run = &self.run;
        let mut text = String::new();
        let workload = match (run.workload, run.consistency, run.read_ratio) {
            (WorkloadKind::Mixed, Some(consistency), Some(ratio)) => {
                format!("mixed ({:.0}% {consistency} gets, the rest puts)", ratio * 100.0)
            }
            (WorkloadKind::Get, Some(consistency), _) => format!("get ({consistency})"),
            (WorkloadKind::Fill, _, _) => format!("fill ({} order)", run.fill_order.unwrap_or("random")),
            (workload, _, _) => format!("{workload:?}").to_lowercase(),
        };
        let timing = if run.workload == WorkloadKind::Fill {
            format!("all written in {} s", self.duration_s)
        } else {
            format!(
                "{} s measured after a {} s warm-up{}",
                self.duration_s,
                run.warmup_s,
                if run.workload.reads() && !run.preloaded {
                    " (keyspace not preloaded)"
                } else {
                    ""
                }
            )
        };
        let target = format!("{:?}", run.target).to_lowercase();
        let _ = writeln!(
            text,
            "raftkv bench: {workload} against {target} at {}",
            run.endpoints.join(",")
        );
        let _ = writeln!(
            text,
            "  {} {} on {} {}{}, {} keys, {}-byte {}values, {timing}",
            run.clients,
            plural(run.clients as u64, "client", "clients"),
            run.connections,
            plural(run.connections as u64, "connection", "connections"),
            if run.batched { " (requests batched)" } else { "" },
            run.keys,
            run.value_size,
            if run.random_values { "random " } else { "" },
        );
        let _ = writeln!(text, "  command: {}", run.command);
        let _ = writeln!(
            text,
            "throughput:    {:.1} ops/s ({} ops, {} {})",
            self.ops_per_sec,
            self.ops,
            self.errors,
            plural(self.errors, "error", "errors")
        );
        let _ = writeln!(
            text,
            "latency (ms):  p50 {:.3}  p90 {:.3}  p99 {:.3}  p99.9 {:.3}  max {:.3}  (mean {:.3})",
            self.p50_ms, self.p90_ms, self.p99_ms, self.p999_ms, self.max_ms, self.mean_ms
        );
        if self.writes > 0 {
            let _ = writeln!(
                text,
                "written:       {:.1} MB of keys and values, {:.1} MB/s",
                self.written_mb, self.written_mb_per_sec
            );
        }
        let _ = writeln!(
            text,
            "longest stall: {} ms; load generator CPU: {:.2} of a core",
            self.longest_stall_ms, self.load_generator_cpu_cores
        );
        if !self.error_kinds.is_empty() {
            let _ = writeln!(text, "errors:");
            let mut kinds: Vec<_> = self.error_kinds.iter().collect();
            kinds.sort_by(|a, b| b.1.cmp(a.1).then(a.0.cmp(b.0)));
            for (message, count) in kinds {
                let _ = writeln!(text, "  {count:>8}  {message}");
            }
        }
        text
    }
}

fn plural(count: u64, one: &'static str, many: &'static str) -> &'static str {
    if count == 1 {
        one
    } else {
        many
    }
}

fn round(value: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (value * scale).round() / scale
}

/// `arguments` as one line a POSIX shell would split back into the same arguments.
pub fn shell_command_line(arguments: impl IntoIterator<Item = OsString>) -> String {
    arguments
        .into_iter()
        .map(|argument| {
            let argument = argument.to_string_lossy().into_owned();
            let plain = !argument.is_empty()
                && argument
                    .chars()
                    .all(|c| c.is_ascii_alphanumeric() || "_-./:=,@%+".contains(c));
            if plain {
                argument
            } else {
                format!("'{}'", argument.replace('\'', r"'\''"))
            }
        })
        .collect::<Vec<_>>()
        .join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::measurement::OperationKind;

    fn example() -> Report {
        let mut recorder = Recorder::new(Duration::from_secs(2));
        // Below 2048 µs the histogram is exact.
        for micros in [800, 900, 1000, 1200, 2000] {
            recorder.record_success(
                OperationKind::Write,
                Duration::from_micros(micros),
                Duration::from_millis(100),
            );
        }
        recorder.record_error("timed out: no answer within 5s");
        let run = RunDescription {
            target: TargetKind::Raftkv,
            endpoints: vec!["127.0.0.1:7000".to_string()],
            workload: WorkloadKind::Put,
            consistency: None,
            read_ratio: None,
            clients: 64,
            connections: 1,
            batched: true,
            threads: 1,
            keys: 10_000,
            value_size: 256,
            random_values: false,
            warmup_s: 1.0,
            fill_order: None,
            preloaded: false,
            command: "raftkv bench --workload put --clients 64".to_string(),
        };
        Report::new(run, &recorder, Duration::from_secs(2), Duration::from_millis(500))
    }

    #[test]
    fn json_is_one_object_on_one_line_with_the_documented_fields() {
        let json = example().to_json();
        assert!(!json.contains('\n'));
        let value: serde_json::Value = serde_json::from_str(&json).unwrap();
        let object = value.as_object().expect("an object");
        for field in [
            "ops_per_sec",
            "p50_ms",
            "p90_ms",
            "p99_ms",
            "p999_ms",
            "max_ms",
            "errors",
            "ops",
            "duration_s",
            "workload",
            "clients",
            "target",
            "command",
            "endpoints",
            "error_kinds",
            "ops_per_second",
            "written_mb",
            "written_mb_per_sec",
            "fill_order",
            "preloaded",
        ] {
            assert!(object.contains_key(field), "missing {field} in {json}");
        }
        assert_eq!(value["workload"], "put");
        assert_eq!(value["target"], "raftkv");
        assert_eq!(value["clients"], 64);
        assert_eq!(value["ops"], 5);
        assert_eq!(value["errors"], 1);
        assert_eq!(value["ops_per_sec"], 2.5);
        assert_eq!(value["duration_s"], 2.0);
        assert_eq!(value["p50_ms"], 1.0);
        assert_eq!(value["max_ms"], 2.0);
        assert_eq!(value["load_generator_cpu_cores"], 0.25);
        assert_eq!(value["consistency"], serde_json::Value::Null);
        assert_eq!(value["error_kinds"]["timed out: no answer within 5s"], 1);
        // 5 puts of a 14-byte key and a 256-byte value, over 2 s.
        assert_eq!(value["written_mb"], 0.00135);
        assert_eq!(value["written_mb_per_sec"], 0.001);
        assert_eq!(value["fill_order"], serde_json::Value::Null);
        assert_eq!(value["preloaded"], false);
    }

    #[test]
    fn a_fill_reports_how_long_it_took_and_what_it_wrote() {
        let mut recorder = Recorder::new(Duration::from_secs(4));
        for at in 0..4_000u64 {
            recorder.record_success(
                OperationKind::Write,
                Duration::from_millis(2),
                Duration::from_millis(at),
            );
        }
        let mut run = example().run;
        run.workload = WorkloadKind::Fill;
        run.keys = 4_000;
        run.warmup_s = 0.0;
        run.fill_order = Some("random");
        let report = Report::new(run, &recorder, Duration::from_secs(4), Duration::from_secs(1));
        let text = report.to_text();
        assert!(
            text.starts_with("raftkv bench: fill (random order) against raftkv at 127.0.0.1:7000\n"),
            "{text}"
        );
        assert!(
            text.contains("4000 keys, 256-byte values, all written in 4 s"),
            "{text}"
        );
        assert!(
            text.contains("throughput:    1000.0 ops/s (4000 ops, 0 errors)"),
            "{text}"
        );
        assert!(
            text.contains("written:       1.1 MB of keys and values, 0.3 MB/s"),
            "{text}"
        );
        let json: serde_json::Value = serde_json::from_str(&report.to_json()).unwrap();
        assert_eq!(json["workload"], "fill");
        assert_eq!(json["fill_order"], "random");
        assert_eq!(json["written_mb"], 1.08);
        assert_eq!(json["written_mb_per_sec"], 0.27);
    }

    #[test]
    fn a_read_run_over_a_keyspace_written_before_says_so() {
        let mut report = example();
        report.run.workload = WorkloadKind::Get;
        report.run.consistency = Some("linearizable");
        assert!(report.to_text().contains("warm-up (keyspace not preloaded)"));
        report.run.preloaded = true;
        assert!(!report.to_text().contains("not preloaded"));
    }

    #[test]
    fn text_names_the_run_and_every_figure() {
        let text = example().render(ReportFormat::Text);
        assert!(
            text.starts_with("raftkv bench: put against raftkv at 127.0.0.1:7000\n"),
            "{text}"
        );
        assert!(
            text.contains("64 clients on 1 connection (requests batched), 10000 keys, 256-byte values, 2 s measured after a 1 s warm-up"),
            "{text}"
        );
        assert!(
            text.contains("command: raftkv bench --workload put --clients 64"),
            "{text}"
        );
        assert!(text.contains("throughput:    2.5 ops/s (5 ops, 1 error)"), "{text}");
        assert!(
            text.contains("p50 1.000  p90 2.000  p99 2.000  p99.9 2.000  max 2.000"),
            "{text}"
        );
        assert!(text.contains("       1  timed out: no answer within 5s"), "{text}");
    }

    #[test]
    fn reading_workloads_say_their_consistency() {
        let mut report = example();
        report.run.workload = WorkloadKind::Mixed;
        report.run.consistency = Some("stale");
        report.run.read_ratio = Some(0.9);
        assert!(report
            .to_text()
            .starts_with("raftkv bench: mixed (90% stale gets, the rest puts) against"));
        report.run.workload = WorkloadKind::Get;
        report.run.read_ratio = None;
        assert!(report.to_text().starts_with("raftkv bench: get (stale) against"));
        assert_eq!(
            serde_json::from_str::<serde_json::Value>(&report.to_json()).unwrap()["workload"],
            "get"
        );
    }

    #[test]
    fn json_output_ends_with_a_newline() {
        assert!(example().render(ReportFormat::Json).ends_with("}\n"));
    }

    #[test]
    fn command_lines_are_quoted_for_a_shell() {
        let arguments = [
            "raftkv",
            "bench",
            "--endpoint",
            "a:1,b:2",
            "--duration",
            "10s",
            "it's",
            "",
        ];
        assert_eq!(
            shell_command_line(arguments.map(OsString::from)),
            r"raftkv bench --endpoint a:1,b:2 --duration 10s 'it'\''s' ''"
        );
    }
}
