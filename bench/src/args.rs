//! The flags of a benchmark run, as `raftkv bench` and `raftkv-bench` both take them.
//!
//! It exists so that the two binaries cannot drift apart: the same flags, defaults, limits and
//! help text, parsed by clap into one [`BenchArgs`] that the run loop reads.

use std::time::Duration;

use clap::Args;
use raftkv::limits::MAX_VALUE_BYTES;
use raftkv::usage::{parse_positive_duration, ReadConsistency};

use crate::report::ReportFormat;
use crate::target::TargetKind;
use crate::workload::{FillOrder, WorkloadKind, MAX_KEYS};

/// The most concurrent clients one benchmark runs.
pub const MAX_CLIENTS: u32 = 10_000;
/// The most independent connections (client instances) one benchmark opens.
pub const MAX_CONNECTIONS: u32 = 1_024;
/// The most worker threads of the load generator's runtime.
pub const MAX_THREADS: u16 = 64;
/// The longest measured window (the completions timeline grows with it).
pub const MAX_DURATION: Duration = Duration::from_secs(3_600);

/// The flags of a benchmark run.
#[derive(Args, Debug, Clone)]
pub struct BenchArgs {
    /// Which operations to send: put, get, mixed (gets and puts, see --read-ratio), or fill
    /// (write every key once, then stop).
    #[arg(long, value_enum)]
    pub workload: WorkloadKind,
    /// Share of gets in the mixed workload, 0 to 1.
    #[arg(long, default_value_t = 0.9, value_parser = parse_ratio, value_name = "RATIO")]
    pub read_ratio: f64,
    /// Consistency of the gets (stale: etcd's serializable reads).
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    pub consistency: ReadConsistency,
    /// Concurrent clients, each with exactly one request in flight.
    #[arg(long, default_value_t = 16, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CLIENTS as i64))]
    pub clients: u32,
    /// How long to measure, after the warm-up (e.g. 10s, 1m).
    #[arg(long, default_value = "10s", value_parser = parse_measured_duration, value_name = "DURATION")]
    pub duration: Duration,
    /// How long to run before measuring; nothing of the warm-up is recorded (0s: none).
    #[arg(long, default_value = "1s", value_parser = parse_warmup, value_name = "DURATION")]
    pub warmup: Duration,
    /// Size of the keyspace: keys bench/00000000, bench/00000001, ...; each operation picks one
    /// uniformly at random (a fill writes each once).
    #[arg(long, default_value_t = 10_000, value_name = "N",
          value_parser = clap::value_parser!(u64).range(1..=MAX_KEYS))]
    pub keys: u64,
    /// Bytes per value written (and expected by gets).
    #[arg(long, default_value_t = 256, value_name = "BYTES",
          value_parser = clap::value_parser!(u64).range(0..=MAX_VALUE_BYTES as u64))]
    pub value_size: u64,
    /// Report format.
    #[arg(long, short, value_enum, default_value_t = ReportFormat::Text)]
    pub output: ReportFormat,
    /// The system to drive: raftkv (router or nodes) or etcd (only the raftkv-bench binary drives etcd).
    #[arg(long, value_enum, default_value_t = TargetKind::Raftkv)]
    pub target: TargetKind,
    /// Independent connections the clients are spread over (each one HTTP/2 connection per
    /// endpoint; clients on one connection multiplex their requests over it).
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u32).range(1..=MAX_CONNECTIONS as i64))]
    pub connections: u32,
    /// Send every raftkv request as its own call, as separate client processes would,
    /// instead of letting the client library batch the requests that are ready together.
    #[arg(long)]
    pub unbatched: bool,
    /// Order in which a fill writes the keys: random (a fixed pseudo-random permutation, as an
    /// application's writes land) or sequential (in key order, the easy case for a storage engine).
    #[arg(long, value_enum, default_value_t = FillOrder::Random)]
    pub fill_order: FillOrder,
    /// Do not write every key before a get or mixed run: the keyspace is there already (from a
    /// fill, or an earlier run, with the same --keys and --value-size).
    #[arg(long)]
    pub no_preload: bool,
    /// Write incompressible values (random bytes, a different value for every put) instead of
    /// one printable value repeated: data that compresses like most real data does not.
    #[arg(long)]
    pub random_values: bool,
    /// Worker threads of the load generator.
    #[arg(long, default_value_t = 1, value_name = "N",
          value_parser = clap::value_parser!(u16).range(1..=MAX_THREADS as i64))]
    pub threads: u16,
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
    let duration = parse_positive_duration(text)?;
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
        assert_eq!(args.consistency, ReadConsistency::Linearizable);
        assert_eq!(args.clients, 16);
        assert_eq!(args.duration, Duration::from_secs(10));
        assert_eq!(args.warmup, Duration::from_secs(1));
        assert_eq!(args.keys, 10_000);
        assert_eq!(args.value_size, 256);
        assert_eq!(args.output, ReportFormat::Text);
        assert_eq!(args.target, TargetKind::Raftkv);
        assert_eq!(args.connections, 1);
        assert_eq!(args.threads, 1);
        assert_eq!(args.fill_order, FillOrder::Random);
        assert!(!args.no_preload);
    }

    #[test]
    fn a_scale_run_fills_the_keyspace_then_reads_it_without_writing_it_again() {
        let fill = parse(&[
            "--workload",
            "fill",
            "--keys",
            "4000000",
            "--value-size",
            "256",
            "--clients",
            "64",
            "--fill-order",
            "sequential",
        ])
        .unwrap();
        assert_eq!(fill.workload, WorkloadKind::Fill);
        assert_eq!((fill.keys, fill.value_size, fill.clients), (4_000_000, 256, 64));
        assert_eq!(fill.fill_order, FillOrder::Sequential);

        let gets = parse(&["--workload", "get", "--keys", "4000000", "--no-preload"]).unwrap();
        assert!(gets.no_preload);
        assert!(parse(&["--workload", "fill", "--keys", &MAX_KEYS.to_string()]).is_ok());
        assert!(parse(&["--workload", "fill", "--keys", &(MAX_KEYS + 1).to_string()]).is_err());
        assert!(parse(&["--workload", "fill", "--fill-order", "backwards"]).is_err());
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
        assert_eq!(args.consistency, ReadConsistency::Stale);
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
}
