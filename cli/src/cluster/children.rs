//! The processes `cluster up` starts: finding the binaries, spawning them with their output
//! in log files, signalling them, and noticing when they exit.
//!
//! Supervised children (foreground `cluster up`) get their own process group, so a Ctrl-C in
//! the terminal reaches only the CLI, which then stops them in order; and on Linux they are
//! sent SIGTERM by the kernel if the CLI dies without stopping them. Detached children get
//! their own session, so they outlive the CLI and its terminal.

use std::ffi::OsString;
use std::fmt;
use std::io::Write;
use std::os::unix::process::ExitStatusExt;
use std::path::{Path, PathBuf};
use std::process::{ExitStatus, Stdio};
use std::time::Duration;

use anyhow::Context;
use tokio::time::Instant;

/// How often a stop waits re-checks whether processes it does not own are gone.
const GONE_POLL_INTERVAL: Duration = Duration::from_millis(20);
/// Log lines shown when a child dies early (the reason is usually the last line).
const LOG_TAIL_BYTES: u64 = 4096;

/// Environment variables the node and router read as flag defaults. They are removed from
/// the children's environment, so a variable meant for something else (say RAFTKV_ADVERTISE
/// in the user's shell) cannot change what the flags `cluster up` passes say.
const CHILD_ENV_VARS_REMOVED: [&str; 9] = [
    "RAFTKV_ID",
    "RAFTKV_LISTEN",
    "RAFTKV_DATA_DIR",
    "RAFTKV_INITIAL_CLUSTER",
    "RAFTKV_ADVERTISE",
    "RAFTKV_NODES",
    // The CLI's own client certificate (RAFTKV_CERT, RAFTKV_KEY) must not become a node's.
    "RAFTKV_CERT",
    "RAFTKV_KEY",
    "RAFTKV_CA",
];

/// Whether children live and die with the CLI.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Lifetime {
    /// Foreground: stopped by the CLI, and sent SIGTERM if the CLI dies (Linux).
    Supervised,
    /// `--detach`: own session, survives the CLI; `cluster down` stops it.
    Detached,
}

/// Which of the cluster's processes a child is.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub enum Role {
    Router,
    Node(u64),
}

impl fmt::Display for Role {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Role::Router => write!(f, "router"),
            Role::Node(id) => write!(f, "node {id}"),
        }
    }
}

/// How to start one child: program, arguments and where its output goes.
#[derive(Clone, Debug)]
pub struct LaunchPlan {
    pub role: Role,
    pub program: PathBuf,
    pub args: Vec<OsString>,
    pub log: PathBuf,
}

/// A started child process.
#[derive(Debug)]
pub struct ChildProcess {
    pub role: Role,
    pub pid: u32,
    child: tokio::process::Child,
    exit: Option<ExitStatus>,
}

/// The binary `name` next to the running `raftkv` executable if it is there, else just
/// `name`, to be looked up in PATH.
pub fn locate_binary(name: &str) -> PathBuf {
    let beside_us = std::env::current_exe()
        .ok()
        .and_then(|exe| exe.parent().map(|dir| dir.join(name)))
        .filter(|path| path.is_file());
    beside_us.unwrap_or_else(|| PathBuf::from(name))
}

/// Starts `plan`'s program with stdin from /dev/null and stdout+stderr appended to its log
/// (after a line saying when and how it was started).
pub fn spawn(plan: &LaunchPlan, lifetime: Lifetime) -> anyhow::Result<ChildProcess> {
    let mut log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(&plan.log)
        .with_context(|| format!("cannot open the log file {}", plan.log.display()))?;
    let command_line: Vec<String> = std::iter::once(plan.program.to_string_lossy().into_owned())
        .chain(plan.args.iter().map(|arg| arg.to_string_lossy().into_owned()))
        .collect();
    writeln!(
        log,
        "=== raftkv cluster up: {} started at {}: {}",
        plan.role,
        crate::status::time_of_day(),
        command_line.join(" ")
    )
    .with_context(|| format!("cannot write the log file {}", plan.log.display()))?;
    let stderr_log = log
        .try_clone()
        .with_context(|| format!("cannot reopen the log file {}", plan.log.display()))?;

    let mut command = tokio::process::Command::new(&plan.program);
    command
        .args(&plan.args)
        .stdin(Stdio::null())
        .stdout(Stdio::from(log))
        .stderr(Stdio::from(stderr_log));
    for name in CHILD_ENV_VARS_REMOVED {
        command.env_remove(name);
    }
    match lifetime {
        Lifetime::Supervised => {
            command.process_group(0);
            #[cfg(target_os = "linux")]
            {
                let supervisor = std::process::id() as libc::pid_t;
                // SAFETY: runs in the forked child before exec and only makes async-signal-safe
                // system calls (prctl, getppid, kill).
                unsafe {
                    command.pre_exec(move || {
                        if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGTERM as libc::c_ulong, 0, 0, 0) != 0 {
                            return Err(std::io::Error::last_os_error());
                        }
                        // The supervisor may have died between fork and prctl.
                        if libc::getppid() != supervisor {
                            libc::kill(libc::getpid(), libc::SIGTERM);
                        }
                        Ok(())
                    });
                }
            }
        }
        Lifetime::Detached => {
            // SAFETY: runs in the forked child before exec; setsid is async-signal-safe.
            unsafe {
                command.pre_exec(|| {
                    if libc::setsid() < 0 {
                        return Err(std::io::Error::last_os_error());
                    }
                    Ok(())
                });
            }
        }
    }
    let child = command.spawn().with_context(|| {
        format!(
            "cannot start {} ({}); build it with `cargo build`, or put it in PATH or next to raftkv",
            plan.role,
            plan.program.display()
        )
    })?;
    let pid = child.id().context("the started process has no pid")?;
    Ok(ChildProcess {
        role: plan.role,
        pid,
        child,
        exit: None,
    })
}

impl ChildProcess {
    /// Notices whether the child has exited; returns its exit status the first time it is seen.
    pub fn poll_exit(&mut self) -> Option<ExitStatus> {
        if self.exit.is_some() {
            return None;
        }
        match self.child.try_wait() {
            Ok(Some(status)) => {
                self.exit = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    /// Whether the child is still running (as far as the last look could tell).
    pub fn is_running(&mut self) -> bool {
        self.poll_exit();
        self.exit.is_none()
    }

    /// The pid while the child runs; `None` once it has exited.
    pub fn running_pid(&mut self) -> Option<u32> {
        self.is_running().then_some(self.pid)
    }

    /// Sends `signal` to a running child; one that has exited (and whose pid may already
    /// belong to another process) is left alone.
    pub fn signal(&mut self, signal: libc::c_int) -> bool {
        if !self.is_running() {
            return false;
        }
        send_signal(self.pid, signal).is_ok()
    }

    /// Waits for the child to exit until `deadline`; returns the exit status if it did.
    pub async fn wait_until(&mut self, deadline: Instant) -> Option<ExitStatus> {
        if let Some(status) = self.exit {
            return Some(status);
        }
        match tokio::time::timeout_at(deadline, self.child.wait()).await {
            Ok(Ok(status)) => {
                self.exit = Some(status);
                Some(status)
            }
            _ => None,
        }
    }

    /// The exit status, once it has exited.
    pub fn exit_status(&self) -> Option<ExitStatus> {
        self.exit
    }
}

/// Sends `signal` to `pid`.
pub fn send_signal(pid: u32, signal: libc::c_int) -> std::io::Result<()> {
    let pid = libc::pid_t::try_from(pid).map_err(|_| std::io::Error::other("pid out of range"))?;
    if pid <= 0 {
        return Err(std::io::Error::other("refusing to signal a process group"));
    }
    // SAFETY: kill has no memory-safety preconditions.
    if unsafe { libc::kill(pid, signal) } == 0 {
        Ok(())
    } else {
        Err(std::io::Error::last_os_error())
    }
}

/// Whether `pid` is a live (not zombie) process.
pub fn is_alive(pid: u32) -> bool {
    let Ok(pid_t) = libc::pid_t::try_from(pid) else {
        return false;
    };
    if pid_t <= 0 {
        return false;
    }
    // SAFETY: signal 0 only checks that the process exists and may be signalled.
    let exists =
        unsafe { libc::kill(pid_t, 0) } == 0 || std::io::Error::last_os_error().raw_os_error() == Some(libc::EPERM);
    if !exists {
        return false;
    }
    // A zombie has finished; only its parent's wait is missing.
    match std::fs::read_to_string(format!("/proc/{pid}/stat")) {
        Ok(stat) => stat
            .rsplit_once(')')
            .map(|(_, rest)| !rest.trim_start().starts_with('Z'))
            .unwrap_or(true),
        Err(_) => true,
    }
}

/// Whether `pid` is a live process whose program name starts with "raftkv" — so that a pid
/// recorded long ago, and since reused by an unrelated process, is never signalled. Where
/// /proc cannot tell, liveness alone decides.
pub fn is_live_raftkv_process(pid: u32) -> bool {
    if !is_alive(pid) {
        return false;
    }
    match std::fs::read(format!("/proc/{pid}/cmdline")) {
        Ok(cmdline) => {
            let program = cmdline.split(|byte| *byte == 0).next().unwrap_or_default();
            let name = program.rsplit(|byte| *byte == b'/').next().unwrap_or_default();
            name.starts_with(b"raftkv")
        }
        Err(_) => true,
    }
}

/// Waits until none of `pids` is alive, or `deadline`; returns those still alive.
pub async fn wait_until_gone(pids: &[u32], deadline: Instant) -> Vec<u32> {
    loop {
        let alive: Vec<u32> = pids.iter().copied().filter(|pid| is_alive(*pid)).collect();
        if alive.is_empty() || Instant::now() >= deadline {
            return alive;
        }
        tokio::time::sleep(GONE_POLL_INTERVAL).await;
    }
}

/// "exited with code 1", "killed by SIGKILL", ...
pub fn describe_exit(status: ExitStatus) -> String {
    if let Some(code) = status.code() {
        return format!("exited with code {code}");
    }
    match status.signal() {
        Some(signal) => format!("killed by {}", signal_name(signal)),
        None => "exited".to_string(),
    }
}

/// The name of a signal a child is commonly stopped by.
pub fn signal_name(signal: libc::c_int) -> String {
    match signal {
        libc::SIGKILL => "SIGKILL".to_string(),
        libc::SIGTERM => "SIGTERM".to_string(),
        libc::SIGINT => "SIGINT".to_string(),
        libc::SIGHUP => "SIGHUP".to_string(),
        libc::SIGSEGV => "SIGSEGV".to_string(),
        libc::SIGABRT => "SIGABRT".to_string(),
        libc::SIGBUS => "SIGBUS".to_string(),
        other => format!("signal {other}"),
    }
}

/// The last non-empty line a child wrote to the log at `path`, for saying why it died.
pub fn last_log_line(path: &Path) -> Option<String> {
    use std::io::{Read, Seek, SeekFrom};
    let mut file = std::fs::File::open(path).ok()?;
    let length = file.metadata().ok()?.len();
    file.seek(SeekFrom::Start(length.saturating_sub(LOG_TAIL_BYTES))).ok()?;
    let mut tail = Vec::new();
    file.read_to_end(&mut tail).ok()?;
    let text = String::from_utf8_lossy(&tail);
    text.lines()
        .map(strip_terminal_escapes)
        .map(|line| line.trim().to_string())
        .rfind(|line| !line.is_empty() && !line.starts_with("=== raftkv cluster up:"))
}

/// Removes ANSI colour sequences (ESC [ ... letter), which loggers write even to files.
fn strip_terminal_escapes(line: &str) -> String {
    let mut plain = String::with_capacity(line.len());
    let mut chars = line.chars();
    while let Some(c) = chars.next() {
        if c == '\u{1b}' {
            if chars.next() == Some('[') {
                for c in chars.by_ref() {
                    if c.is_ascii_alphabetic() {
                        break;
                    }
                }
            }
        } else {
            plain.push(c);
        }
    }
    plain
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn colour_codes_are_removed_from_log_lines() {
        assert_eq!(
            strip_terminal_escapes("\u{1b}[31mERROR\u{1b}[0m bad dir"),
            "ERROR bad dir"
        );
    }

    #[test]
    fn the_reason_a_child_died_is_the_last_line_it_logged() {
        let dir = tempfile::tempdir().unwrap();
        let log = dir.path().join("node-1.log");
        std::fs::write(
            &log,
            "=== raftkv cluster up: node 1 started\nstarting\nerror: data dir belongs to node 2\n\n",
        )
        .unwrap();
        assert_eq!(
            last_log_line(&log).as_deref(),
            Some("error: data dir belongs to node 2")
        );
    }

    #[test]
    fn exit_statuses_read_like_a_person_would_say_them() {
        assert_eq!(describe_exit(ExitStatus::from_raw(1 << 8)), "exited with code 1");
        assert_eq!(describe_exit(ExitStatus::from_raw(libc::SIGKILL)), "killed by SIGKILL");
    }

    #[test]
    fn this_process_is_alive_and_a_free_pid_is_not() {
        assert!(is_alive(std::process::id()));
        assert!(!is_alive(0));
        assert!(!is_alive(u32::MAX));
    }

    #[tokio::test]
    async fn a_supervised_child_is_spawned_signalled_and_reaped() {
        let dir = tempfile::tempdir().unwrap();
        let plan = LaunchPlan {
            role: Role::Node(1),
            program: PathBuf::from("sleep"),
            args: vec!["30".into()],
            log: dir.path().join("node-1.log"),
        };
        let mut child = spawn(&plan, Lifetime::Supervised).unwrap();
        assert!(child.is_running());
        assert!(child.signal(libc::SIGKILL));
        let status = child
            .wait_until(Instant::now() + Duration::from_secs(10))
            .await
            .expect("child exits");
        assert_eq!(describe_exit(status), "killed by SIGKILL");
        assert!(!child.signal(libc::SIGKILL), "an exited child is never signalled");
        let log = std::fs::read_to_string(&plan.log).unwrap();
        assert!(log.starts_with("=== raftkv cluster up: node 1 started at"), "{log}");
    }
}
