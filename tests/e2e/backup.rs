//! End to end: backups and disaster recovery, the README's walkthrough. A real cluster takes
//! writes, `raftkv snapshot save` (the CLI binary) backs it up through the router, more writes
//! follow; then every node is killed and its data directory deleted, a new cluster (new
//! addresses) is restored from the backup with `raftkv snapshot restore`, and it serves every
//! key saved, with the values they had at the save, and none written after. A damaged or
//! truncated backup is refused by `status` and `restore` with one line, and nothing is created.

use std::path::Path;
use std::time::Duration;

use raftkv::client::Error;
use raftkv::pb::Consistency;

use crate::common::{self, key, value, ClusterOptions, Finished, TestCluster};

/// Keys in the backup: small data (CI), in several snapshot records and sessions.
const SAVED_KEYS: usize = 300;
/// Keys written after the save, which the restored cluster must not have.
const LATER_KEYS: usize = 20;
/// How long one CLI command may run.
const COMMAND_WITHIN: Duration = Duration::from_secs(60);

async fn cli(args: &[&str]) -> Finished {
    common::run_to_end(&common::binary("raftkv"), args, COMMAND_WITHIN).await
}

/// Saves a backup of `cluster` (through its router when it has one, else its nodes) to `file`.
async fn save(endpoints: &str, file: &Path) -> Finished {
    let run = cli(&["--endpoint", endpoints, "snapshot", "save", &file.display().to_string()]).await;
    assert!(run.status.success(), "snapshot save failed: {run:?}");
    assert!(run.stdout.starts_with("saved "), "{run:?}");
    let mut part = file.as_os_str().to_os_string();
    part.push(".part");
    assert!(!Path::new(&part).exists(), "the partial file is renamed, not left");
    run
}

/// `raftkv snapshot status FILE --output json`, parsed.
async fn status_json(file: &Path) -> serde_json::Value {
    let run = cli(&["snapshot", "status", &file.display().to_string(), "--output", "json"]).await;
    assert!(run.status.success(), "snapshot status failed: {run:?}");
    serde_json::from_str(run.stdout.trim()).unwrap_or_else(|e| panic!("not JSON ({e}): {run:?}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_restored_from_a_backup_after_losing_every_node_serves_every_key_saved_and_none_written_after() {
    let backups = tempfile::tempdir().expect("a temp dir");
    let backup = backups.path().join("backup.db");
    let old = TestCluster::start(3).await;
    let client = old.client();
    for i in 0..SAVED_KEYS {
        client.put(key("saved", i), value("saved", i)).await.expect("put");
    }
    save(old.router_address(), &backup).await;
    // After the save: new keys, and a saved key overwritten and another deleted.
    for i in 0..LATER_KEYS {
        client.put(key("later", i), value("later", i)).await.expect("put");
    }
    client.put(key("saved", 0), value("overwritten", 0)).await.expect("put");
    client.delete(key("saved", 1)).await.expect("delete");

    let status = status_json(&backup).await;
    assert_eq!(status["keys"], SAVED_KEYS as u64, "{status}");
    assert_eq!(status["checksum_ok"], true, "{status}");
    assert!(status["index"].as_u64().unwrap() >= SAVED_KEYS as u64, "{status}");
    assert!(status["term"].as_u64().unwrap() >= 1, "{status}");
    assert_eq!(status["members"].as_array().unwrap().len(), 3, "{status}");
    assert_eq!(status["crc32"].as_str().unwrap().len(), 8, "{status}");

    // Disaster: every node killed, every data directory gone (dropping the cluster kills its
    // processes and deletes its directories).
    let old_addresses = old.addresses();
    drop(old);

    let restored = TestCluster::start_with(ClusterOptions::default().restored_from(&backup)).await;
    // A new cluster: its own addresses, and its membership is the new initial cluster.
    let leader = restored.leader().await;
    let members = restored.status(leader).await.expect("status").members;
    let mut addresses: Vec<String> = members.iter().map(|m| m.address.clone()).collect();
    addresses.sort();
    let mut expected = restored.addresses();
    expected.sort();
    assert_eq!(addresses, expected, "the restored membership is the new cluster's");
    assert!(old_addresses.iter().all(|a| !addresses.contains(a)));

    let client = restored.client();
    for i in 0..SAVED_KEYS {
        let got = client.get(key("saved", i), Consistency::Linearizable).await;
        let got = got.unwrap_or_else(|e| panic!("saved key {i}: {e}"));
        assert_eq!(got.value, value("saved", i), "saved key {i} has its value at the save");
    }
    for i in 0..LATER_KEYS {
        let got = client.get(key("later", i), Consistency::Linearizable).await;
        assert_eq!(got.err(), Some(Error::NotFound), "key {i} written after the save");
    }
    // And it takes writes.
    client
        .put(key("new", 0), value("new", 0))
        .await
        .expect("a write to the restored cluster");
    let got = client.get(key("new", 0), Consistency::Linearizable).await.expect("get");
    assert_eq!(got.value, value("new", 0));
}

/// `raftkv snapshot restore BACKUP` into `data_dir` for node 1 of a one-node cluster.
async fn restore_one(backup: &Path, data_dir: &Path) -> Finished {
    cli(&[
        "snapshot",
        "restore",
        &backup.display().to_string(),
        "--id",
        "1",
        "--data-dir",
        &data_dir.display().to_string(),
        "--initial-cluster",
        "1=127.0.0.1:1",
    ])
    .await
}

/// The one line a refused command printed; panics unless it failed with exactly one line.
fn refusal(run: &Finished, what: &str) -> String {
    assert!(!run.status.success(), "{what} succeeded: {run:?}");
    let line = run.stderr.trim().to_string();
    assert_eq!(line.lines().count(), 1, "{what}: one line expected: {run:?}");
    assert!(line.starts_with("error: "), "{what}: {line}");
    line
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_damaged_or_truncated_backup_is_refused_in_one_line_and_restore_creates_nothing() {
    let dir = tempfile::tempdir().expect("a temp dir");
    let good = dir.path().join("good.db");
    let cluster = TestCluster::start_with(ClusterOptions::default().without_router()).await;
    let client = cluster.nodes_client();
    for i in 0..50 {
        client.put(key("k", i), value("k", i)).await.expect("put");
    }
    save(&cluster.addresses().join(","), &good).await;
    drop(cluster);
    let status = status_json(&good).await;
    assert_eq!(status["keys"], 50, "{status}");

    let bytes = std::fs::read(&good).expect("the backup");
    let truncated = dir.path().join("truncated.db");
    std::fs::write(&truncated, &bytes[..bytes.len() / 2]).expect("write");
    let damaged = dir.path().join("damaged.db");
    let mut flipped = bytes.clone();
    flipped[bytes.len() / 2] ^= 0x40;
    std::fs::write(&damaged, &flipped).expect("write");

    let restores = dir.path().join("restores");
    std::fs::create_dir(&restores).expect("mkdir");
    for bad in [&truncated, &damaged] {
        let name = bad.display().to_string();
        let line = refusal(&cli(&["snapshot", "status", &name]).await, "status of a bad backup");
        assert!(line.contains(&name), "{line}");
        let run = restore_one(bad, &restores.join("node-1")).await;
        let line = refusal(&run, "restore of a bad backup");
        assert!(line.contains("backup refused"), "{line}");
        let left: Vec<_> = std::fs::read_dir(&restores).expect("list").collect();
        assert!(left.is_empty(), "a refused restore left {left:?} behind");
    }

    // A directory that holds anything is never restored into.
    let occupied = restores.join("occupied");
    std::fs::create_dir(&occupied).expect("mkdir");
    std::fs::write(occupied.join("precious"), b"data").expect("write");
    let run = restore_one(&good, &occupied).await;
    let line = refusal(&run, "restore into a non-empty directory");
    assert!(line.contains("not empty"), "{line}");
    assert_eq!(std::fs::read(occupied.join("precious")).expect("read"), b"data");
}
