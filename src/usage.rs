//! One-line usage errors for the binaries (`raftkv`, `raftkv-node`,
//! `raftkv-router`): clap renders an error over several lines with a usage
//! block; our rule is one readable line on stderr.

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
