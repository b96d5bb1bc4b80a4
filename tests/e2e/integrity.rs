//! End to end: a damaged data directory is refused or served whole, never served wrong.
//! Every file of a stopped node's data directory (the Raft log's segments, its vote, purge
//! point and commit marker, the identity, the state machine engine's files; a node keeps no
//! snapshot file at rest, and a damaged one an install left is `durability.rs`'s case)
//! gets 64 bytes of damage at the start, the middle and the end of its used part, one case at
//! a time on a fresh copy of the whole stopped cluster; the node, started alone, either
//! refuses to start with one line, or starts, and once the others are back answers every key
//! with the value the cluster acknowledged (linearizable reads it serves from its own state
//! machine). The test prints what each case did (`--nocapture` shows it).

use std::path::{Path, PathBuf};
use std::time::Duration;

use raftkv::pb::{self, Consistency};
use tonic::Code;

use crate::common::{self, key, value, ClusterOptions, TestCluster};

/// Keys written before the damage, enough for snapshots and a purged log (see the flags).
const KEYS: usize = 60;
/// Bytes of damage in each case.
const DAMAGE_BYTES: usize = 64;
/// How long a node that started may take to answer a key.
const SERVE_WITHIN: Duration = Duration::from_secs(30);
/// The node whose directory is damaged.
const DAMAGED: u64 = 3;

/// Where in a file's used part the damage goes.
#[derive(Clone, Copy, Debug)]
enum Place {
    Start,
    Middle,
    End,
}

/// What a node did with one damaged directory.
#[derive(Debug)]
enum Outcome {
    /// It refused to start, printing this.
    Refused(String),
    /// It started and answered every key right.
    Served,
    /// It started and answered a key wrong, or not at all.
    ServedWrong(String),
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_file_of_a_data_dir_damaged_at_start_middle_and_end_is_refused_or_served_whole() {
    let options = ClusterOptions::default().without_router().node_args(&[
        "--snapshot-after-logs",
        "20",
        "--keep-logs-after-snapshot",
        "5",
    ]);
    let mut cluster = TestCluster::start_with(options).await;
    let client = cluster.nodes_client();
    for i in 0..KEYS {
        client
            .put(key("integrity", i), value("integrity", i))
            .await
            .expect("put");
    }
    let leader = cluster.leader().await;
    let applied = cluster.status(leader).await.expect("the leader's status").applied_index;
    for id in cluster.ids() {
        cluster
            .wait_for_applied(id, applied.expect("an applied index"), SERVE_WITHIN)
            .await;
    }
    for id in cluster.ids() {
        assert!(cluster.stop(id).await.success(), "node {id} stops");
    }

    // The whole cluster as it stopped: every case starts from it, so no node ever sees
    // another's log go back in time.
    let root = cluster.temp_dir().to_path_buf();
    let pristine = |id: u64| root.join(format!("pristine-{id}"));
    for id in cluster.ids() {
        copy_dir(cluster.data_dir(id), &pristine(id));
    }
    let dir = cluster.data_dir(DAMAGED).to_path_buf();
    let files = files_under(&pristine(DAMAGED));
    for needed in ["identity", "raft-log/vote", "raft-log/committed"] {
        assert!(files.iter().any(|f| f == Path::new(needed)), "{needed} in {files:?}");
    }

    let mut report = Vec::new();
    for file in &files {
        for place in [Place::Start, Place::Middle, Place::End] {
            for id in cluster.ids() {
                copy_dir(&pristine(id), cluster.data_dir(id));
            }
            let offset = damage(&dir.join(file), place);
            // Alone first: whether it refuses to start is its own decision.
            let outcome = match cluster.restart_or_refusal(DAMAGED).await {
                Err(printed) => Outcome::Refused(printed),
                Ok(()) => {
                    for id in cluster.ids().into_iter().filter(|id| *id != DAMAGED) {
                        cluster.restart(id).await;
                    }
                    let outcome = serves_every_key(&cluster).await;
                    for id in cluster.ids() {
                        cluster.stop(id).await;
                    }
                    outcome
                }
            };
            report.push((file.display().to_string(), place, offset, outcome));
        }
    }

    eprintln!("file\tplace\toffset\toutcome");
    for (file, place, offset, outcome) in &report {
        eprintln!("{file}\t{place:?}\t{offset}\t{outcome:?}");
    }
    let wrong: Vec<_> = report
        .iter()
        .filter(|(.., outcome)| match outcome {
            Outcome::Refused(printed) => refusal_lines(printed) != 1,
            Outcome::Served => false,
            Outcome::ServedWrong(why) => !why.is_empty(),
        })
        .collect();
    assert!(
        wrong.is_empty(),
        "served wrong, or refused with other than one line: {wrong:#?}"
    );
}

/// The lines of what a refusing node printed other than its INFO lines (what it did before it
/// found the damage): the refusal must be one line, with no warning or error besides (not even
/// the storage engine's own, which it logs before it returns the error the node prints).
fn refusal_lines(printed: &str) -> usize {
    printed.lines().filter(|line| !line.contains(" INFO ")).count()
}

/// Whether node [`DAMAGED`], back in its cluster, answers every key with its value:
/// linearizable reads that it serves from its own state machine once that has applied what
/// the leader committed (the node does not follow leader hints: `raw_kv`).
async fn serves_every_key(cluster: &TestCluster) -> Outcome {
    let kv = cluster.raw_kv(DAMAGED);
    for i in 0..KEYS {
        let request = pb::GetRequest {
            key: key("integrity", i),
            consistency: Consistency::Linearizable as i32,
        };
        let answer = common::wait_until(SERVE_WITHIN, "an answer from the damaged node", || {
            let (mut kv, request) = (kv.clone(), request.clone());
            async move {
                match kv.get(request).await {
                    Err(status) if status.code() == Code::Unavailable => None,
                    answer => Some(answer),
                }
            }
        })
        .await;
        match answer {
            Ok(reply) if reply.get_ref().value == value("integrity", i) => {}
            Ok(reply) => return Outcome::ServedWrong(format!("key {i}: {:?}", reply.get_ref().value)),
            Err(status) => return Outcome::ServedWrong(format!("key {i}: {status}")),
        }
    }
    Outcome::Served
}

/// Writes [`DAMAGE_BYTES`] of damage (every byte changed) into `path` at `place` of its used
/// part (up to its last byte that is not zero: log segments and fjall's journal are files of
/// zeros written from the start); returns the offset.
fn damage(path: &Path, place: Place) -> usize {
    let mut bytes = std::fs::read(path).unwrap();
    let used = bytes.iter().rposition(|b| *b != 0).map_or(bytes.len(), |last| last + 1);
    let length = DAMAGE_BYTES.min(used);
    let offset = match place {
        Place::Start => 0,
        Place::Middle => (used - length) / 2,
        Place::End => used - length,
    };
    let mut state = (offset as u64) << 8 | used as u64 | 1;
    for byte in &mut bytes[offset..offset + length] {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        *byte ^= (state as u8) | 1;
    }
    std::fs::write(path, &bytes).unwrap();
    offset
}

/// The files under `dir` that hold anything, relative to it, in order.
fn files_under(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(at) = pending.pop() {
        for entry in std::fs::read_dir(&at).unwrap() {
            let path = entry.unwrap().path();
            if path.is_dir() {
                pending.push(path);
            } else if std::fs::metadata(&path).unwrap().len() > 0 {
                files.push(path.strip_prefix(dir).unwrap().to_path_buf());
            }
        }
    }
    files.sort();
    files
}

/// Makes `to` an exact copy of `from` (what was in `to` goes).
fn copy_dir(from: &Path, to: &Path) {
    if to.exists() {
        std::fs::remove_dir_all(to).unwrap();
    }
    std::fs::create_dir_all(to).unwrap();
    let entries = std::fs::read_dir(from).unwrap_or_else(|e| panic!("cannot list {}: {e}", from.display()));
    for entry in entries {
        let path = entry.unwrap().path();
        let target = to.join(path.file_name().unwrap());
        if path.is_dir() {
            copy_dir(&path, &target);
        } else {
            std::fs::copy(&path, &target).unwrap_or_else(|e| panic!("cannot copy {}: {e}", path.display()));
        }
    }
}
