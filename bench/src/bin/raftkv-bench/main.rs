//! `raftkv-bench`: the load generator of `raftkv bench` as a binary of its own, which drives
//! raftkv or, with `--target etcd`, an etcd v3 cluster under the identical workload.
//!
//! It exists for side-by-side comparisons (bench/compare-etcd.sh): the same flags, workloads,
//! closed loop and report for both systems, while etcd's client stays out of the user-facing
//! `raftkv` CLI. Exit codes as the CLI's: 0 success, 2 usage error, 3 the benchmark failed (or
//! no operation succeeded; the report is printed all the same).

mod etcd;

use std::process::ExitCode;
use std::time::Duration;

use clap::Parser;
use raftkv::usage::parse_positive_duration;
use raftkv_bench::{one_line, BenchArgs, BenchError, TargetKind};

use etcd::EtcdTarget;

/// Exit code: the benchmark ran and some operations succeeded.
const EXIT_SUCCESS: u8 = 0;
/// Exit code: the command line was wrong (clap uses the same code for its own errors).
const EXIT_USAGE: u8 = 2;
/// Exit code: the benchmark failed, or no operation succeeded.
const EXIT_FAILED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "raftkv-bench",
    version,
    about = "Closed-loop load generator for raftkv, and for etcd v3 under the identical workload",
    long_about = "Measure throughput and latency: --clients tasks each keep one request in flight \
        (closed loop) for a warm-up plus --duration, against --endpoint. For get and mixed, every key \
        is written first (--no-preload: it is there already). --workload fill writes every key of \
        --keys once (a scale run's data: --keys 4000000 --value-size 256 is about 1 GB) and ends \
        when all are written. Prints throughput, errors, latency percentiles (p50/p90/p99/p99.9/max, \
        from an HDR histogram) and MB written; a live progress line is shown on a terminal.\n\
        The same load generator as `raftkv bench`; this binary also drives an etcd v3 cluster \
        (--target etcd), for comparisons (bench/compare-etcd.sh).\n\
        Exit codes: 0 success, 2 usage error, 3 the benchmark failed or no operation succeeded.",
    after_help = "Examples:\n  \
        raftkv-bench --workload put --clients 64 --duration 10s\n  \
        raftkv-bench --target etcd --endpoint 127.0.0.1:2379,127.0.0.1:22379,127.0.0.1:32379 --workload put --clients 64\n  \
        raftkv-bench --target etcd --endpoint 127.0.0.1:2379 --workload get --consistency stale --output json"
)]
struct Cli {
    /// The system's endpoints, HOST:PORT, separated by commas: raftkv routers or nodes, or etcd
    /// members.
    #[arg(
        long,
        default_value = "127.0.0.1:7000",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    endpoint: Vec<String>,

    /// How long one request may take, retries included (e.g. 300ms, 2s).
    #[arg(long, default_value = "5s", value_parser = parse_positive_duration, value_name = "DURATION")]
    timeout: Duration,

    #[command(flatten)]
    bench: BenchArgs,
}

fn main() -> ExitCode {
    // Help and version are printed as clap renders them; a usage error is one line, exit 2.
    let cli: Cli = match raftkv::usage::parse_or_exit() {
        Ok(cli) => cli,
        Err(code) => return code,
    };
    // The benchmark runs on a thread and a Tokio runtime of its own; this thread only waits.
    match futures::executor::block_on(run(cli)) {
        Ok(()) => ExitCode::from(EXIT_SUCCESS),
        Err(error) => {
            let code = match error {
                BenchError::Endpoints(_) => EXIT_USAGE,
                _ => EXIT_FAILED,
            };
            // `{:#}` joins the error's chain of causes with ": ".
            eprintln!("error: {}", one_line(&format!("{:#}", anyhow::Error::new(error))));
            ExitCode::from(code)
        }
    }
}

async fn run(cli: Cli) -> Result<(), BenchError> {
    let Cli {
        endpoint: endpoints,
        timeout,
        bench,
    } = cli;
    match bench.target {
        TargetKind::Raftkv => raftkv_bench::run_against_raftkv(endpoints, timeout, None, bench).await,
        TargetKind::Etcd => {
            let addresses = endpoints.clone();
            raftkv_bench::run(endpoints, bench, move || EtcdTarget::open(&addresses, timeout)).await
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    // A tokio test: opening a channel, even lazily, spawns its worker on the runtime.
    #[tokio::test]
    async fn etcd_endpoints_must_be_host_and_port() {
        let open = |endpoints: &[&str]| {
            let endpoints: Vec<String> = endpoints.iter().map(|endpoint| endpoint.to_string()).collect();
            EtcdTarget::open(&endpoints, Duration::from_secs(1))
        };
        assert!(open(&[]).is_err());
        assert!(open(&["127.0.0.1"]).is_err());
        assert!(open(&["127.0.0.1:2379", "127.0.0.1:22379"]).is_ok());
    }
}
