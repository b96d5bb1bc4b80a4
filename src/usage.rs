//! Command-line parsing outcomes shared by the binaries (`raftkv`,
//! `raftkv-node`, `raftkv-router`): help and version as clap renders them
//! (exit 0), and a usage error as one readable line on stderr (exit 2) where
//! clap would print several lines with a usage block.

use std::process::ExitCode;

/// Parses the command line, or prints what clap has to say and returns the exit code:
/// 0 after `--help`/`--version`, 2 after a usage error (help shown for a missing
/// subcommand, else one line).
pub fn parse_or_exit<P: clap::Parser>() -> Result<P, ExitCode> {
    use clap::error::ErrorKind;
    P::try_parse().map_err(|error| match error.kind() {
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

#[cfg(test)]
mod tests {
    #[test]
    fn a_multi_line_clap_error_becomes_one_line() {
        let rendered = "error: unrecognized subcommand 'frobnicate'\n\nUsage: raftkv <COMMAND>\n\nFor more information, try '--help'.\n";
        assert_eq!(
            super::one_line(rendered),
            "error: unrecognized subcommand 'frobnicate' (try --help)"
        );
    }
}
