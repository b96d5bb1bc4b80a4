//! The router binary's command line, run as a real process: usage errors are one line with
//! exit code 2, and `--help` says what it does with an example.
//!
//! (Having an integration test here also makes `cargo test` build the `raftkv-router` binary,
//! which the workspace's end-to-end tests run.)

use std::process::{Command, Output};

fn router(args: &[&str]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_raftkv-router"))
        .args(args)
        .env_remove("RAFTKV_LISTEN")
        .env_remove("RAFTKV_NODES")
        .output()
        .expect("the router binary runs")
}

fn assert_one_line_usage_error(output: &Output, mentions: &str) {
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(2), "stderr: {stderr}");
    assert_eq!(stderr.trim_end().lines().count(), 1, "one line expected, got: {stderr}");
    assert!(stderr.starts_with("error: "), "{stderr}");
    assert!(stderr.contains(mentions), "{stderr:?} should mention {mentions:?}");
    assert!(output.stdout.is_empty());
}

#[test]
fn a_node_that_is_not_an_address_is_a_one_line_usage_error() {
    let output = router(&["--listen", "127.0.0.1:0", "--nodes", "notanaddress"]);
    assert_one_line_usage_error(&output, "notanaddress");
}

#[test]
fn one_bad_node_among_good_ones_is_a_usage_error() {
    let output = router(&["--nodes", "127.0.0.1:7001,127.0.0.1:notaport"]);
    assert_one_line_usage_error(&output, "127.0.0.1:notaport");
}

#[test]
fn missing_nodes_is_a_one_line_usage_error() {
    let output = router(&["--listen", "127.0.0.1:0"]);
    assert_one_line_usage_error(&output, "--nodes");
}

#[test]
fn a_node_listed_twice_is_a_usage_error() {
    let output = router(&["--nodes", "127.0.0.1:7001,127.0.0.1:7001"]);
    assert_one_line_usage_error(&output, "twice");
}

#[test]
fn an_unknown_flag_is_a_one_line_usage_error() {
    let output = router(&["--nodes", "127.0.0.1:7001", "--frobnicate"]);
    assert_one_line_usage_error(&output, "--frobnicate");
}

#[test]
fn help_says_what_it_does_with_an_example() {
    let output = router(&["--help"]);
    assert_eq!(output.status.code(), Some(0));
    let help = String::from_utf8_lossy(&output.stdout);
    assert!(help.contains("leader"), "{help}");
    assert!(help.contains("Example:"), "{help}");
    assert!(help.contains("raftkv-router --listen 127.0.0.1:7000 --nodes"), "{help}");
    assert!(help.contains("RAFTKV_NODES"), "{help}");
}
