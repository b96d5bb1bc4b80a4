//! Property tests of the record readers of a data directory's small files: a state file (the
//! vote, the purge point, the commit marker, the identity) and the snapshot file. Whatever their
//! bytes — arbitrary, or a good record with bytes flipped or cut off — reading them returns the
//! record or a one-line refusal, never a panic, and never allocates more than the file holds.

use proptest::prelude::*;

use super::{snapshot_file, state_file};

/// Cases per property; each writes one small file.
const CASES: u32 = 256;
/// The longest arbitrary file tried, in bytes.
const MAX_FILE_BYTES: usize = 1024;

fn damaged(mut bytes: Vec<u8>, flips: Vec<(prop::sample::Index, u8)>, cut: Option<prop::sample::Index>) -> Vec<u8> {
    if !bytes.is_empty() {
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
    }
    if let Some(cut) = cut {
        let at = cut.index(bytes.len() + 1);
        bytes.truncate(at);
    }
    bytes
}

/// Reads `bytes` as a state file: a record, none, or a one-line refusal.
fn read_state_file(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state");
    std::fs::write(&path, bytes).expect("write a state file");
    match state_file::read(&path) {
        Ok(Some(payload)) => assert!(payload.len() <= bytes.len()),
        Ok(None) => {}
        Err(refusal) => assert!(!refusal.to_string().contains('\n'), "{refusal}"),
    }
}

/// Reads `bytes` as a snapshot file: a snapshot, or a one-line refusal.
fn read_snapshot_file(bytes: &[u8]) {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = snapshot_file::path_in(dir.path());
    std::fs::write(&path, bytes).expect("write a snapshot file");
    match snapshot_file::SnapshotFile::open(&path) {
        Ok(Some((_, file))) => {
            assert!(file.len() <= bytes.len() as u64);
            for record in file.records() {
                if let Err(refusal) = record {
                    assert!(!refusal.to_string().contains('\n'), "{refusal}");
                    break;
                }
            }
        }
        Ok(None) => {}
        Err(refusal) => assert!(!refusal.to_string().contains('\n'), "{refusal}"),
    }
}

/// A good state file holding `payload`, as the node writes it.
fn good_state_file(payload: &[u8]) -> Vec<u8> {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("state");
    state_file::replace(&path, payload).expect("write a state file");
    std::fs::read(&path).expect("read it back")
}

/// A good snapshot file of a few pairs, as the node writes it.
fn good_snapshot_file(pairs: &[(Vec<u8>, Vec<u8>)]) -> Vec<u8> {
    use crate::types::{LeaderId, LogId, Membership, SnapshotMeta, StoredMembership};
    use raftkv::raft_pb as pb;
    let meta = SnapshotMeta {
        last_log_id: Some(LogId::new(LeaderId { term: 1, node_id: 1 }, 3)),
        last_membership: StoredMembership::new(None, Membership::default()),
    };
    let dir = tempfile::tempdir().expect("a temporary directory");
    let path = dir.path().join("snapshot.tmp");
    let mut writer = snapshot_file::SnapshotWriter::create(&path, &meta).expect("create a snapshot file");
    for (key, value) in pairs {
        writer
            .record(pb::snapshot_record::Record::Pair(pb::KeyValue {
                key: key.clone().into(),
                value: value.clone().into(),
            }))
            .expect("write a record");
    }
    writer.finish_file().expect("finish the snapshot file");
    std::fs::read(path).expect("read it back")
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_state_file_of_arbitrary_bytes_reads_or_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..MAX_FILE_BYTES)) {
        read_state_file(&bytes);
    }

    #[test]
    fn a_damaged_state_file_reads_or_is_refused(
        payload in prop::collection::vec(any::<u8>(), 0..200),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        read_state_file(&damaged(good_state_file(&payload), flips, cut));
    }

    #[test]
    fn a_snapshot_file_of_arbitrary_bytes_reads_or_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..MAX_FILE_BYTES)) {
        read_snapshot_file(&bytes);
    }

    #[test]
    fn a_damaged_snapshot_file_reads_or_is_refused(
        pairs in prop::collection::vec((prop::collection::vec(any::<u8>(), 1..20), prop::collection::vec(any::<u8>(), 0..40)), 0..10),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 0..3),
        cut in prop::option::of(any::<prop::sample::Index>()),
    ) {
        read_snapshot_file(&damaged(good_snapshot_file(&pairs), flips, cut));
    }
}
