//! The commands a person types into a foreground `cluster up`: their grammar, their help,
//! and the thread that reads them from standard input.
//!
//! Standard input is read on a plain thread rather than with tokio, because a read blocked
//! on a terminal cannot be cancelled and would otherwise hold up the CLI's exit.

use tokio::sync::mpsc;

/// Lines of input buffered before the reader waits for the console to catch up.
const INPUT_LINES_BUFFERED: usize = 16;

/// Which process a console command is about.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Target {
    Node(u64),
    /// Whichever node leads when the command runs.
    Leader,
    Router,
}

/// One console command.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConsoleCommand {
    /// SIGKILL: the process dies at once, as in a crash.
    Kill(Target),
    /// SIGTERM: the process shuts down gracefully.
    Stop(Target),
    /// Start a stopped process again with the same flags.
    Restart(Target),
    /// Hand leadership to this node, or to the most up-to-date voter.
    Transfer(Option<u64>),
    /// Start a new node with `--join` and add it to the cluster.
    Add,
    /// Remove a node from the cluster and stop it.
    Remove(u64),
    Status,
    Help,
    Quit,
}

/// What the console understands, for `help`.
pub const HELP: &str = "commands:
  kill N|leader|router     SIGKILL the process (a crash)
  stop N|leader|router     SIGTERM the process (graceful stop)
  restart N|router         start a stopped process again with the same flags
  transfer [N]             hand leadership to node N (default: the most up-to-date voter)
  add                      start a new node (the next id, with --join) and add it to the cluster
  remove N                 remove node N from the cluster and stop it (its data dir is then refused)
  status                   show every node's status
  help                     show this
  quit                     stop the whole cluster and exit (as Ctrl-C does)";

/// Parses one line; `Ok(None)` for a blank line.
pub fn parse(line: &str) -> Result<Option<ConsoleCommand>, String> {
    let words: Vec<&str> = line.split_whitespace().collect();
    let command = match words.as_slice() {
        [] => return Ok(None),
        ["kill", target] => ConsoleCommand::Kill(parse_target(target)?),
        ["stop", target] => ConsoleCommand::Stop(parse_target(target)?),
        ["restart", "leader"] => return Err("the leader is running; restart takes a node id or `router`".to_string()),
        ["restart", target] => ConsoleCommand::Restart(parse_target(target)?),
        ["transfer"] => ConsoleCommand::Transfer(None),
        ["transfer", id] => match id.parse::<u64>() {
            Ok(id) => ConsoleCommand::Transfer(Some(id)),
            Err(_) => {
                return Err(format!(
                    "`{id}` is not a node id; `transfer` takes a node id or nothing"
                ))
            }
        },
        ["add"] => ConsoleCommand::Add,
        ["remove", id] => match id.parse::<u64>() {
            Ok(id) => ConsoleCommand::Remove(id),
            Err(_) => return Err(format!("`{id}` is not a node id; `remove` takes a node id")),
        },
        ["add", ..] => return Err("`add` takes nothing: the new node gets the next id".to_string()),
        ["remove", ..] => return Err("`remove` takes one node id".to_string()),
        ["status"] => ConsoleCommand::Status,
        ["help"] | ["?"] => ConsoleCommand::Help,
        ["quit"] | ["exit"] => ConsoleCommand::Quit,
        ["transfer", ..] => return Err("`transfer` takes a node id or nothing".to_string()),
        [verb @ ("kill" | "stop" | "restart"), ..] => {
            return Err(format!("`{verb}` takes one target: a node id, `leader` or `router`"))
        }
        [other, ..] => return Err(format!("unknown command `{other}`; type `help`")),
    };
    Ok(Some(command))
}

fn parse_target(word: &str) -> Result<Target, String> {
    match word {
        "leader" => Ok(Target::Leader),
        "router" => Ok(Target::Router),
        id => id
            .parse::<u64>()
            .map(Target::Node)
            .map_err(|_| format!("`{id}` is not a node id, `leader` or `router`")),
    }
}

/// Starts the thread that reads standard input; the receiver yields one line at a time
/// and ends when standard input does.
pub fn read_stdin_lines() -> std::io::Result<mpsc::Receiver<String>> {
    let (sender, receiver) = mpsc::channel(INPUT_LINES_BUFFERED);
    std::thread::Builder::new()
        .name("console-input".to_string())
        .spawn(move || {
            let stdin = std::io::stdin();
            let mut line = String::new();
            loop {
                line.clear();
                match stdin.read_line(&mut line) {
                    Ok(0) | Err(_) => break,
                    Ok(_) => {
                        if sender.blocking_send(line.clone()).is_err() {
                            break;
                        }
                    }
                }
            }
        })?;
    Ok(receiver)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_and_targets_parse() {
        assert_eq!(parse("kill leader"), Ok(Some(ConsoleCommand::Kill(Target::Leader))));
        assert_eq!(parse("  kill 2 "), Ok(Some(ConsoleCommand::Kill(Target::Node(2)))));
        assert_eq!(parse("stop router"), Ok(Some(ConsoleCommand::Stop(Target::Router))));
        assert_eq!(parse("restart 3"), Ok(Some(ConsoleCommand::Restart(Target::Node(3)))));
        assert_eq!(parse("transfer"), Ok(Some(ConsoleCommand::Transfer(None))));
        assert_eq!(parse("transfer 3"), Ok(Some(ConsoleCommand::Transfer(Some(3)))));
        assert_eq!(parse("status"), Ok(Some(ConsoleCommand::Status)));
        assert_eq!(parse("add"), Ok(Some(ConsoleCommand::Add)));
        assert_eq!(parse("remove 2"), Ok(Some(ConsoleCommand::Remove(2))));
        assert_eq!(parse("quit"), Ok(Some(ConsoleCommand::Quit)));
        assert_eq!(parse(""), Ok(None));
    }

    #[test]
    fn mistakes_get_a_one_line_explanation() {
        for wrong in [
            "kill",
            "kill 1 2",
            "kill two",
            "restart leader",
            "transfer two",
            "transfer 1 2",
            "add 4",
            "remove",
            "remove two",
            "dance",
        ] {
            let error = parse(wrong).unwrap_err();
            assert!(!error.contains('\n'), "{error}");
        }
    }
}
