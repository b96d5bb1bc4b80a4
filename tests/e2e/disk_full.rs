//! End to end: a node whose disk fills up stops with the reason in its log, rather than
//! linger as a process that answers nothing useful, and the rest of the cluster keeps
//! serving every write it acknowledged. Needs root (it mounts a small tmpfs under one node's
//! data directory); not run otherwise.

use std::path::Path;
use std::process::Command;
use std::time::Duration;

use raftkv::pb::Consistency;

use crate::common::{self, key, value, TestCluster};

/// Room left on the full node's file system: a few appends' worth.
const FREE_BYTES_LEFT: u64 = 2 * 1024 * 1024;
const TMPFS_BYTES: u64 = 64 * 1024 * 1024;
/// Writes of this size fill what is left within a few hundred puts.
const VALUE_BYTES: usize = 16 * 1024;

/// A tmpfs mounted over a directory, unmounted on drop (also when the test fails).
struct Tmpfs<'a>(&'a Path);

impl<'a> Tmpfs<'a> {
    fn mount(at: &'a Path, bytes: u64) -> Self {
        run(
            "mount",
            &[
                "-t",
                "tmpfs",
                "-o",
                &format!("size={bytes}"),
                "tmpfs",
                &at.to_string_lossy(),
            ],
        );
        Tmpfs(at)
    }
}

impl Drop for Tmpfs<'_> {
    fn drop(&mut self) {
        let _ = Command::new("umount").arg("-l").arg(self.0).status();
    }
}

fn run(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed: {status}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_node_whose_disk_fills_up_stops_and_the_others_keep_serving() {
    // SAFETY: geteuid has no preconditions and cannot fail.
    if unsafe { libc::geteuid() } != 0 {
        eprintln!("disk_full: not run: mounting a tmpfs needs root");
        return;
    }
    let mut cluster = TestCluster::start(3).await;
    let client = cluster.client();
    client
        .put(key("before", 0), value("before", 0))
        .await
        .expect("put before the disk fills");

    // Move a follower's data onto a small file system of its own and fill it but for a little.
    let full = cluster.follower().await;
    cluster.stop(full).await;
    let dir = cluster.data_dir(full).to_path_buf();
    let saved = cluster.temp_dir().join(format!("node-{full}-saved"));
    std::fs::rename(&dir, &saved).expect("move the data dir aside");
    std::fs::create_dir(&dir).expect("recreate the data dir");
    let _tmpfs = Tmpfs::mount(&dir, TMPFS_BYTES);
    run("cp", &["-a", &format!("{}/.", saved.display()), &dir.to_string_lossy()]);
    let used: u64 = fs_used_bytes(&dir);
    let ballast = TMPFS_BYTES.saturating_sub(used + FREE_BYTES_LEFT);
    std::fs::write(dir.join("ballast"), vec![0u8; ballast as usize]).expect("write the ballast");
    cluster.restart(full).await;

    // Write until the full node gives up; every write must still succeed on the other two.
    let mut written = 0;
    let deadline = tokio::time::Instant::now() + Duration::from_secs(60);
    let status = loop {
        if let Some(status) = cluster.exit_status(full) {
            break status;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "node {full} still runs with a full disk"
        );
        let big = bytes::Bytes::from(vec![b'x'; VALUE_BYTES]);
        client
            .put(key("filling", written), big)
            .await
            .expect("a write while one node's disk is full");
        written += 1;
    };
    assert!(
        !status.success(),
        "node {full} exited with success on a full disk: {status}"
    );
    let log = std::fs::read_to_string(cluster.log_path(full)).expect("read the node's log");
    assert!(
        log.lines()
            .any(|line| line.starts_with("error: raft stopped") && line.contains("No space left on device")),
        "the full node's log has no one-line error naming the full disk"
    );

    // The survivors serve every acknowledged write.
    let got = client
        .get(key("before", 0), Consistency::Linearizable)
        .await
        .expect("get");
    assert_eq!(got.value, value("before", 0));
    for i in 0..written {
        let got = client
            .get(key("filling", i), Consistency::Linearizable)
            .await
            .expect("get");
        assert_eq!(got.value.len(), VALUE_BYTES, "key {i}");
    }
    common::wait_until(Duration::from_secs(10), "a write after the node stopped", || async {
        client.put(key("after", 0), value("after", 0)).await.ok()
    })
    .await;
}

/// Bytes in use on the file system holding `dir` (statvfs).
fn fs_used_bytes(dir: &Path) -> u64 {
    let path = std::ffi::CString::new(dir.to_string_lossy().as_bytes()).expect("a path without NUL");
    // SAFETY: an all-zero statvfs is a valid value of this plain C struct.
    let mut stat: libc::statvfs = unsafe { std::mem::zeroed() };
    // SAFETY: statvfs writes into the struct we own; the path is a valid C string.
    let result = unsafe { libc::statvfs(path.as_ptr(), &mut stat) };
    assert_eq!(result, 0, "statvfs failed");
    (stat.f_blocks - stat.f_bfree) * stat.f_frsize
}
