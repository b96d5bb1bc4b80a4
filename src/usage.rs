//! Command-line parsing outcomes shared by the binaries (`raftkv`,
//! `raftkv-node`, `raftkv-router`): help and version as clap renders them
//! (exit 0), and a usage error as one readable line on stderr (exit 2) where
//! clap would print several lines with a usage block. Also the flag values more than one
//! binary takes: a positive duration, and how fresh a read must be.

use std::process::ExitCode;
use std::time::Duration;

use crate::pb;

/// Parses the command line, or prints what clap has to say and returns the exit code:
/// 0 after `--help`/`--version`, 2 after a usage error (help shown for a missing
/// subcommand, else one line).
pub fn parse_or_exit<P: clap::Parser>() -> Result<P, ExitCode> {
    parse_from_or_exit(std::env::args_os())
}

/// [`parse_or_exit`] of `args` (the program's name first), for a command that is parsed in two
/// steps (`raftkv-node restore …`).
pub fn parse_from_or_exit<P: clap::Parser>(
    args: impl IntoIterator<Item = impl Into<std::ffi::OsString> + Clone>,
) -> Result<P, ExitCode> {
    use clap::error::ErrorKind;
    P::try_parse_from(args).map_err(|error| match error.kind() {
        ErrorKind::DisplayHelp | ErrorKind::DisplayVersion => {
            let _ = error.print();
            ExitCode::SUCCESS
        }
        ErrorKind::DisplayHelpOnMissingArgumentOrSubcommand => {
            let _ = error.print();
            ExitCode::from(2)
        }
        _ => {
            eprintln!("{}", one_line(&error.render().to_string()));
            ExitCode::from(2)
        }
    })
}

/// Folds a rendered clap error into one line, without the usage block and the
/// "For more information" footer, ending with a pointer to `--help`.
pub fn one_line(rendered: &str) -> String {
    let line = rendered
        .lines()
        .map(str::trim)
        .filter(|line| !line.is_empty() && !line.starts_with("Usage:") && !line.starts_with("For more information"))
        .collect::<Vec<_>>()
        .join(" ");
    format!("{line} (try --help)")
}

/// Parses a duration flag (`300ms`, `2s`) that must be more than zero.
pub fn parse_positive_duration(text: &str) -> Result<Duration, String> {
    let duration = humantime::parse_duration(text).map_err(|error| format!("{error} (e.g. 300ms, 2s)"))?;
    if duration.is_zero() {
        return Err("must be more than zero".to_string());
    }
    Ok(duration)
}

/// How fresh a read must be, as the `--consistency` flag of `raftkv get`, `scan` and `bench`
/// takes it.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReadConsistency {
    /// Observes every write acknowledged before the read started.
    Linearizable,
    /// Answered from the serving node's local state; may be stale (never older than a write that node answered).
    Stale,
    /// Linearizable while the nodes' clocks run at about the same rate: the leader vouches
    /// for its leadership from its lease instead of a round of heartbeats.
    Lease,
}

impl ReadConsistency {
    /// The flag's value, as reports print it.
    pub fn name(self) -> &'static str {
        match self {
            ReadConsistency::Linearizable => "linearizable",
            ReadConsistency::Stale => "stale",
            ReadConsistency::Lease => "lease",
        }
    }
}

impl From<ReadConsistency> for pb::Consistency {
    fn from(consistency: ReadConsistency) -> Self {
        match consistency {
            ReadConsistency::Linearizable => pb::Consistency::Linearizable,
            ReadConsistency::Stale => pb::Consistency::Stale,
            ReadConsistency::Lease => pb::Consistency::Lease,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn durations_must_be_positive_and_readable() {
        assert_eq!(parse_positive_duration("300ms"), Ok(Duration::from_millis(300)));
        assert_eq!(parse_positive_duration("2s"), Ok(Duration::from_secs(2)));
        assert!(parse_positive_duration("0s").is_err());
        assert!(parse_positive_duration("soon").is_err());
    }

    #[test]
    fn a_multi_line_clap_error_becomes_one_line() {
        let rendered = "error: unrecognized subcommand 'frobnicate'\n\nUsage: raftkv <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(rendered),
            "error: unrecognized subcommand 'frobnicate' (try --help)"
        );
    }
}
