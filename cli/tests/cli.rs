//! The `raftkv` binary's contract with scripts when no cluster is involved: exit codes,
//! one-line errors, and help texts with examples.
//!
//! These tests also make cargo build the `raftkv` binary, which the workspace's end-to-end
//! tests run.

use std::io::Read;
use std::net::TcpListener;
use std::path::Path;
use std::process::{Child, Command, ExitStatus, Stdio};
use std::time::{Duration, Instant};

/// How long one CLI run may take before the test gives up on it (and kills it).
const RUN_DEADLINE: Duration = Duration::from_secs(30);
/// How often a running CLI is checked for having exited.
const EXIT_POLL_INTERVAL: Duration = Duration::from_millis(10);

/// What a finished `raftkv` run left behind.
struct Run {
    status: ExitStatus,
    stdout: String,
    stderr: String,
}

/// Kills the child if the test ends (or panics) while it runs.
struct KillOnDrop(Child);

impl Drop for KillOnDrop {
    fn drop(&mut self) {
        if let Ok(None) = self.0.try_wait() {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs `raftkv` with `args`, with RAFTKV_ENDPOINT unset, and waits for it (with a deadline).
fn raftkv(args: &[&str]) -> Run {
    let child = Command::new(env!("CARGO_BIN_EXE_raftkv"))
        .args(args)
        .env_remove("RAFTKV_ENDPOINT")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("raftkv starts");
    let mut child = KillOnDrop(child);
    let stdout = read_in_background(child.0.stdout.take().unwrap());
    let stderr = read_in_background(child.0.stderr.take().unwrap());
    let deadline = Instant::now() + RUN_DEADLINE;
    let status = loop {
        if let Some(status) = child.0.try_wait().unwrap() {
            break status;
        }
        assert!(
            Instant::now() < deadline,
            "raftkv {args:?} did not finish within {RUN_DEADLINE:?}"
        );
        std::thread::sleep(EXIT_POLL_INTERVAL);
    };
    Run {
        status,
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
    }
}

fn read_in_background(mut pipe: impl Read + Send + 'static) -> std::thread::JoinHandle<String> {
    std::thread::spawn(move || {
        let mut text = String::new();
        let _ = pipe.read_to_string(&mut text);
        text
    })
}

/// Asserts that stderr is exactly one line starting with "error: ".
fn assert_one_error_line(run: &Run) {
    let lines: Vec<&str> = run.stderr.lines().collect();
    assert_eq!(lines.len(), 1, "stderr should be one line: {:?}", run.stderr);
    assert!(lines[0].starts_with("error: "), "{:?}", run.stderr);
    assert!(!run.stderr.contains("panicked"), "{:?}", run.stderr);
}

/// A port on 127.0.0.1 that nothing listens on (it was free a moment ago).
fn closed_port() -> u16 {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.local_addr().unwrap().port()
}

#[test]
fn unknown_subcommand_is_a_usage_error() {
    let run = raftkv(&["frobnicate"]);
    assert_eq!(run.status.code(), Some(2), "{:?}", run.stderr);
    assert!(run.stderr.contains("frobnicate"), "{:?}", run.stderr);
}

#[test]
fn bad_flag_values_are_usage_errors() {
    for args in [
        &["get", "k", "--timeout", "soon"][..],
        &["get", "k", "--timeout", "0s"],
        &["get", "k", "--consistency", "eventual"],
        &["get", "k", "--output", "yaml"],
        &["status", "--output", "yaml"],
        &["put", "k"],
        &["put", "k", "v", "--file", "/dev/null"],
        &["cluster", "up", "--nodes", "three"],
    ] {
        let run = raftkv(args);
        assert_eq!(run.status.code(), Some(2), "raftkv {args:?}: {:?}", run.stderr);
    }
}

#[test]
fn empty_key_is_refused_locally_without_sending_a_request() {
    // A listener that would see any connection the CLI made.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();

    let run = raftkv(&["put", "", "v", "--endpoint", &endpoint]);

    assert_eq!(run.status.code(), Some(2), "{:?}", run.stderr);
    assert_one_error_line(&run);
    assert!(run.stderr.contains("key is empty"), "{:?}", run.stderr);
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI connected to the endpoint: {accepted:?}"
    );
}

#[test]
fn unreachable_endpoint_fails_with_exit_code_3_and_one_line() {
    let endpoint = format!("127.0.0.1:{}", closed_port());
    let started = Instant::now();

    let run = raftkv(&["get", "k", "--endpoint", &endpoint, "--timeout", "300ms"]);

    assert_eq!(run.status.code(), Some(3), "{:?}", run.stderr);
    assert_one_error_line(&run);
    assert!(run.stdout.is_empty(), "{:?}", run.stdout);
    assert!(
        started.elapsed() < Duration::from_secs(10),
        "the timeout was not honoured: {:?}",
        started.elapsed()
    );
}

#[test]
fn a_save_that_cannot_reach_the_cluster_fails_in_one_line_and_leaves_no_file() {
    let dir = tempfile::tempdir().unwrap();
    let file = dir.path().join("backup.db");
    let endpoint = format!("127.0.0.1:{}", closed_port());
    let run = raftkv(&[
        "snapshot",
        "save",
        file.to_str().unwrap(),
        "--endpoint",
        &endpoint,
        "--timeout",
        "300ms",
    ]);
    assert_eq!(run.status.code(), Some(3), "{:?}", run.stderr);
    assert_one_error_line(&run);
    let left: Vec<_> = std::fs::read_dir(dir.path()).unwrap().collect();
    assert!(left.is_empty(), "a failed save left {left:?}");
}

#[test]
fn status_of_an_unreachable_endpoint_fails_with_exit_code_3() {
    let endpoint = format!("127.0.0.1:{}", closed_port());
    let run = raftkv(&[
        "status",
        "--endpoint",
        &endpoint,
        "--timeout",
        "300ms",
        "--output",
        "json",
    ]);
    assert_eq!(run.status.code(), Some(3), "{:?}", run.stderr);
    assert_one_error_line(&run);
}

#[test]
fn an_endpoint_that_is_not_host_and_port_is_a_usage_error() {
    let run = raftkv(&["get", "k", "--endpoint", "not-an-address"]);
    assert_eq!(run.status.code(), Some(2), "{:?}", run.stderr);
    assert_one_error_line(&run);
}

#[test]
fn every_command_explains_itself_with_an_example() {
    for command in [
        &["--help"][..],
        &["put", "--help"],
        &["get", "--help"],
        &["delete", "--help"],
        &["cas", "--help"],
        &["scan", "--help"],
        &["status", "--help"],
        &["cluster", "--help"],
        &["cluster", "up", "--help"],
        &["cluster", "down", "--help"],
        &["snapshot", "--help"],
        &["snapshot", "save", "--help"],
        &["snapshot", "status", "--help"],
        &["snapshot", "restore", "--help"],
    ] {
        let run = raftkv(command);
        assert_eq!(run.status.code(), Some(0), "raftkv {command:?}: {:?}", run.stderr);
        assert!(
            run.stdout.contains("Example"),
            "raftkv {command:?} has no example:\n{}",
            run.stdout
        );
    }
}

#[test]
fn cluster_down_without_a_recorded_cluster_has_nothing_to_do() {
    let dir = tempfile::tempdir().unwrap();
    let data_dir = dir.path().to_str().unwrap();
    let run = raftkv(&["cluster", "down", "--data-dir", data_dir]);
    assert_eq!(run.status.code(), Some(0), "{:?}", run.stderr);
    assert!(run.stderr.contains("nothing to stop"), "{:?}", run.stderr);
    assert!(!Path::new(data_dir).join("cluster.json").exists());
}

#[test]
fn cluster_up_refuses_ports_beyond_65535() {
    let dir = tempfile::tempdir().unwrap();
    let run = raftkv(&[
        "cluster",
        "up",
        "--base-port",
        "65534",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    assert_eq!(run.status.code(), Some(2), "{:?}", run.stderr);
    assert_one_error_line(&run);
}

#[test]
fn cas_needs_exactly_one_expectation() {
    for args in [
        &["cas", "k", "new"][..],
        &["cas", "k", "--expect", "old", "--expect-absent", "new"],
        &["cas", "k", "--expect", "old"],
        &["cas", "k", "--expect-absent"],
        &["cas", "--expect-absent", "new"],
        &["cas", "k", "--expect-absent", "new", "--output", "yaml"],
    ] {
        let run = raftkv(args);
        assert_eq!(run.status.code(), Some(2), "raftkv {args:?}: {:?}", run.stderr);
        assert!(run.stdout.is_empty(), "raftkv {args:?}: {:?}", run.stdout);
    }
}

#[test]
fn scan_limits_outside_the_documented_range_are_usage_errors() {
    for args in [
        &["scan", "p", "--limit", "0"][..],
        &["scan", "p", "--limit", "100001"],
        &["scan", "p", "--limit", "many"],
        &["scan", "p", "--consistency", "eventual"],
        &["scan", "p", "--output", "yaml"],
        &["delete", "k", "--expect"],
    ] {
        let run = raftkv(args);
        assert_eq!(run.status.code(), Some(2), "raftkv {args:?}: {:?}", run.stderr);
    }
}

#[test]
fn scan_help_states_the_default_limit_and_the_escaping() {
    let run = raftkv(&["scan", "--help"]);
    assert_eq!(run.status.code(), Some(0), "{:?}", run.stderr);
    assert!(run.stdout.contains("[default: 100]"), "{}", run.stdout);
    assert!(run.stdout.contains("\\xHH"), "{}", run.stdout);
}

#[test]
fn oversized_expectations_and_prefixes_are_refused_locally() {
    // A listener that would see any connection the CLI made.
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    listener.set_nonblocking(true).unwrap();
    let endpoint = listener.local_addr().unwrap().to_string();
    let long_key = "k".repeat(4097);

    for args in [
        &["cas", "", "--expect-absent", "v"][..],
        &["cas", &long_key, "--expect", "old", "new"],
        &["delete", "", "--expect", "old"],
        &["scan", &long_key],
    ] {
        let mut args = args.to_vec();
        args.extend(["--endpoint", &endpoint]);
        let run = raftkv(&args);
        assert_eq!(run.status.code(), Some(2), "raftkv {:?}: {:?}", &args[..2], run.stderr);
        assert_one_error_line(&run);
    }
    let accepted = listener.accept();
    assert!(
        matches!(&accepted, Err(error) if error.kind() == std::io::ErrorKind::WouldBlock),
        "the CLI connected to the endpoint: {accepted:?}"
    );
}

#[test]
fn new_commands_against_an_unreachable_endpoint_fail_with_exit_code_3() {
    let endpoint = format!("127.0.0.1:{}", closed_port());
    for args in [
        &["cas", "k", "--expect-absent", "v"][..],
        &["delete", "k", "--expect", "v"],
        &["scan", "k"],
        &["get", "k", "--output", "json"],
    ] {
        let mut args = args.to_vec();
        args.extend(["--endpoint", &endpoint, "--timeout", "300ms"]);
        let run = raftkv(&args);
        assert_eq!(run.status.code(), Some(3), "raftkv {args:?}: {:?}", run.stderr);
        assert_one_error_line(&run);
        assert!(run.stdout.is_empty(), "raftkv {args:?}: {:?}", run.stdout);
    }
}
