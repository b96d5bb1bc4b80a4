//! `raftkv bench`: the load generator of the raftkv-bench crate, driving raftkv.
//!
//! It exists to keep the CLI's side of the benchmark small: the flags, the run and the report
//! are the library's (shared with the `raftkv-bench` binary, which also drives etcd); here the
//! library's failures become the CLI's exit codes, and `--target etcd` is pointed at the binary
//! that has etcd's client, which the CLI does not carry.

use std::time::Duration;

use raftkv::tls::ClientTls;
use raftkv_bench::{BenchArgs, BenchError, TargetKind};

use crate::CliError;

/// The one-line reason `raftkv bench --target etcd` is refused, and where to find it instead.
const ETCD_IS_IN_RAFTKV_BENCH: &str = "--target etcd is driven by the raftkv-bench binary, not the raftkv CLI: \
    cargo build --release -p raftkv-bench, then target/release/raftkv-bench --target etcd with the same flags";

/// `raftkv bench`: runs the benchmark against raftkv at `endpoints` and prints its report.
pub async fn run(
    endpoints: Vec<String>,
    timeout: Duration,
    tls: Option<ClientTls>,
    args: BenchArgs,
) -> Result<(), CliError> {
    check_target(args.target)?;
    raftkv_bench::run_against_raftkv(endpoints, timeout, tls, args)
        .await
        .map_err(|error| match error {
            BenchError::Endpoints(error) => CliError::Usage(error.to_string()),
            error => CliError::Failed(error.into()),
        })
}

/// Refuses every target but raftkv.
fn check_target(target: TargetKind) -> Result<(), CliError> {
    match target {
        TargetKind::Raftkv => Ok(()),
        TargetKind::Etcd => Err(CliError::Usage(ETCD_IS_IN_RAFTKV_BENCH.to_string())),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn etcd_is_refused_with_where_to_find_it() {
        assert!(check_target(TargetKind::Raftkv).is_ok());
        let error = check_target(TargetKind::Etcd).expect_err("the CLI drives raftkv only");
        assert_eq!(error.exit_code(), 2);
        let message = error.message();
        assert!(message.contains("cargo build --release -p raftkv-bench"), "{message}");
        assert!(!message.contains('\n'));
    }
}
