//! The processes of a test: where the workspace's binaries are, starting one with its
//! output in a log, running one to its end, signals, a graceful stop, and free ports for
//! them to listen on.
//!
//! Every process starts without the developer's `RAFTKV_*` environment, so it runs with
//! exactly the flags the test passes.

use std::fs::{File, OpenOptions};
use std::io::Write;
use std::net::TcpListener;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use tokio::time::Instant;

use super::{POLL_INTERVAL, STOP_TIMEOUT};

/// Ports are handed out from this range, below Linux's ephemeral range (32768+), so an outgoing
/// connection never takes a port that a stopped node needs back on restart.
const PORT_RANGE: std::ops::Range<u32> = 20_000..32_000;

/// The path of a workspace binary, built next to this test executable. Panics when it is missing.
pub fn binary(name: &str) -> PathBuf {
    // The test runs as target/<profile>/deps/<test>-<hash>; binaries are in target/<profile>/.
    let exe = std::env::current_exe().expect("cannot find the test executable");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("the test executable is in target/<profile>/deps");
    let path = dir.join(name);
    assert!(
        path.is_file(),
        "{name} not found at {}: run `cargo build --workspace` first (`cargo test --workspace` builds it too)",
        path.display()
    );
    path
}

/// What a process that ran to its end printed, and how it exited.
#[derive(Debug)]
pub struct Finished {
    pub status: ExitStatus,
    pub stdout: String,
    pub stderr: String,
}

/// Runs `raftkv-node` with `args` where it must refuse to start: panics unless it exits with
/// an error and one line on stderr; returns that line.
pub async fn node_refusal(args: &[&str]) -> String {
    let run = run_to_end(&binary("raftkv-node"), args, Duration::from_secs(10)).await;
    assert!(!run.status.success(), "raftkv-node started with {args:?}: {run:?}");
    let message = run.stderr.trim().to_string();
    assert_eq!(
        message.lines().count(),
        1,
        "one line expected on stderr, got:\n{message}"
    );
    message
}

/// Runs `program` with `args` to its end, with output captured. Panics (after killing it) when
/// it is still running after `within`.
pub async fn run_to_end(program: &Path, args: &[&str], within: Duration) -> Finished {
    let scratch = tempfile::tempdir().expect("a temp dir");
    let stdout_path = scratch.path().join("stdout");
    let stderr_path = scratch.path().join("stderr");
    let mut child = command_without_raftkv_env(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(File::create(&stdout_path).expect("a stdout file"))
        .stderr(File::create(&stderr_path).expect("a stderr file"))
        .spawn()
        .unwrap_or_else(|error| panic!("cannot run {}: {error}", program.display()));
    let deadline = Instant::now() + within;
    let status = loop {
        if let Some(status) = child.try_wait().expect("cannot wait for a child") {
            break status;
        }
        if Instant::now() >= deadline {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
            panic!(
                "{} {args:?} was still running after {within:?}; stderr so far:\n{}",
                program.display(),
                std::fs::read_to_string(&stderr_path).unwrap_or_default()
            );
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    };
    Finished {
        status,
        stdout: std::fs::read_to_string(&stdout_path).unwrap_or_default(),
        stderr: std::fs::read_to_string(&stderr_path).unwrap_or_default(),
    }
}

/// A loopback port that is free now and that no other test of this process gets.
pub fn free_port() -> u16 {
    free_port_block(1)
}

/// The first of `count` consecutive loopback ports that are all free now and that no other
/// test of this process gets (a whole block is claimed at once, so a test that derives ports
/// from a base, as `cluster up --base-port` does, never shares them with another test).
///
/// Ports come from [`PORT_RANGE`], starting at an offset derived from the process id so that
/// test binaries running side by side rarely probe the same ports, and each is checked by
/// binding it.
pub fn free_port_block(count: u32) -> u16 {
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = PORT_RANGE.end - PORT_RANGE.start;
    let _ = NEXT.compare_exchange(
        u32::MAX,
        (std::process::id().wrapping_mul(7919)) % span,
        Ordering::SeqCst,
        Ordering::SeqCst,
    );
    for _ in 0..span {
        let offset = NEXT.fetch_add(count, Ordering::SeqCst) % span;
        if offset + count > span {
            continue;
        }
        let base = PORT_RANGE.start + offset;
        if (base..base + count).all(|port| TcpListener::bind(("127.0.0.1", port as u16)).is_ok()) {
            return base as u16;
        }
    }
    panic!("no block of {count} free ports in {PORT_RANGE:?}");
}

/// Starts `program` with stdout and stderr appended to `log`, after a line that says how.
pub(super) fn spawn_logged(program: &Path, args: &[String], log: &Path) -> Child {
    let mut file = OpenOptions::new()
        .create(true)
        .append(true)
        .open(log)
        .expect("cannot open a log file");
    let _ = writeln!(file, "===== starting {} {}", program.display(), args.join(" "));
    let stderr = file.try_clone().expect("cannot clone a log file handle");
    command_without_raftkv_env(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(file)
        .stderr(stderr)
        .spawn()
        .unwrap_or_else(|error| panic!("cannot start {}: {error}", program.display()))
}

/// A command for `program` whose environment has no `RAFTKV_*` variables: every flag of our
/// binaries can also come from one, and a test must run with the flags it passes, not with
/// whatever the developer's shell has set.
fn command_without_raftkv_env(program: &Path) -> Command {
    let mut command = Command::new(program);
    for (name, _) in std::env::vars_os() {
        if name.to_string_lossy().starts_with("RAFTKV_") {
            command.env_remove(name);
        }
    }
    command
}

/// SIGTERM, then waits up to [`STOP_TIMEOUT`] for the exit; kills and panics past it.
pub(super) async fn stop_process(mut child: Child, name: &str) -> ExitStatus {
    signal(&child, libc::SIGCONT); // A paused process could not act on SIGTERM.
    signal(&child, libc::SIGTERM);
    let deadline = Instant::now() + STOP_TIMEOUT;
    loop {
        if let Some(status) = child.try_wait().expect("cannot wait for a child") {
            return status;
        }
        if Instant::now() >= deadline {
            signal(&child, libc::SIGKILL);
            let _ = child.wait();
            panic!("{name} did not exit within {STOP_TIMEOUT:?} of SIGTERM");
        }
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}

/// Sends `signal` to `child` (a child not reaped yet).
pub(super) fn signal(child: &Child, signal: libc::c_int) {
    let pid = libc::pid_t::try_from(child.id()).expect("a pid fits pid_t");
    // SAFETY: plain kill(2) on a child we have not reaped yet, so the pid is still ours.
    unsafe {
        libc::kill(pid, signal);
    }
}

/// The last `lines` lines of a text file (or why it cannot be read).
pub(super) fn tail(path: &Path, lines: usize) -> String {
    match std::fs::read(path) {
        Ok(bytes) => {
            let text = String::from_utf8_lossy(&bytes);
            let all: Vec<&str> = text.lines().collect();
            all[all.len().saturating_sub(lines)..].join("\n")
        }
        Err(error) => format!("(cannot read {}: {error})", path.display()),
    }
}
