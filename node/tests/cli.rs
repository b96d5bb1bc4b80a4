//! The `raftkv-node` command line: usage errors are one line with exit code 2,
//! and `--help` explains the command with an example.

use std::process::Command;

fn node(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_raftkv-node"))
        .args(args)
        .env_remove("RAFTKV_ID")
        .env_remove("RAFTKV_LISTEN")
        .env_remove("RAFTKV_DATA_DIR")
        .env_remove("RAFTKV_INITIAL_CLUSTER")
        .env_remove("RAFTKV_ENGINE")
        .env_remove("RAFTKV_CACHE_MB")
        .output()
        .expect("run raftkv-node")
}

#[test]
fn help_explains_the_command_with_an_example() {
    let out = node(&["--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Example") && help.contains("--initial-cluster"), "{help}");
    // The choice of engine says what sled's memory costs.
    assert!(help.contains("--engine") && help.contains("--cache-mb"), "{help}");
    assert!(help.contains("12 GB of RSS for 0.5 GB"), "{help}");
}

#[test]
fn restore_explains_itself_with_an_example_and_refuses_bad_flags_in_one_line() {
    let out = node(&["restore", "--help"]);
    assert!(out.status.success());
    let help = String::from_utf8_lossy(&out.stdout);
    assert!(help.contains("Example") && help.contains("--initial-cluster"), "{help}");
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().join("node-1");
    let data = data.to_str().unwrap();
    let restore = |backup: Option<&str>, id: &str, cluster: &str| {
        let mut args = vec!["restore"];
        args.extend(backup);
        args.extend(["--id", id, "--data-dir", data, "--initial-cluster", cluster]);
        node(&args)
    };
    for (backup, id, cluster) in [
        (Some("backup.db"), "1", "nonsense"),
        (Some("backup.db"), "0", "1=127.0.0.1:1"),
        (None, "1", "1=127.0.0.1:1"),
    ] {
        let out = restore(backup, id, cluster);
        assert_eq!(out.status.code(), Some(2), "{backup:?} {id} {cluster}");
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(stderr.trim().lines().count(), 1, "{stderr}");
    }
    let out = restore(Some("missing.db"), "1", "1=127.0.0.1:1");
    assert_eq!(out.status.code(), Some(3));
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(
        stderr.contains("does not exist") && stderr.trim().lines().count() == 1,
        "{stderr}"
    );
    assert!(
        !std::path::Path::new(data).exists(),
        "a refused restore creates nothing"
    );
}

#[test]
fn malformed_flags_are_one_line_usage_errors() {
    let dir = tempfile::tempdir().unwrap();
    let data = dir.path().to_str().unwrap();
    // A start that is valid but for one flag: id, listen address, initial cluster, more flags.
    let start = |id: &'static str, listen: &'static str, cluster: &'static str, more: &[&'static str]| {
        let mut args = vec![
            "--id",
            id,
            "--listen",
            listen,
            "--data-dir",
            data,
            "--initial-cluster",
            cluster,
        ];
        args.extend_from_slice(more);
        args
    };
    for args in [
        start("0", "127.0.0.1:1", "1=127.0.0.1:1", &[]),
        start("1", "nowhere", "1=127.0.0.1:1", &[]),
        start("1", "127.0.0.1:1", "1=127.0.0.1", &[]),
        start("4", "127.0.0.1:1", "1=127.0.0.1:1", &[]),
        start("1", "127.0.0.1:1", "1=a:1,1=b:2", &[]),
        start("1", "127.0.0.1:1", "1=127.0.0.1:1", &["--engine", "rocksdb"]),
    ] {
        let out = node(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert_eq!(stderr.trim().lines().count(), 1, "{args:?}: {stderr}");
        assert!(stderr.starts_with("error:"), "{args:?}: {stderr}");
    }
    // Nothing was written for a refused start.
    assert_eq!(std::fs::read_dir(dir.path()).unwrap().count(), 0);
}
