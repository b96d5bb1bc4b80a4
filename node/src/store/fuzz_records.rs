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
    match snapshot_file::read(&path) {
        Ok(Some((_, body))) => {
            assert!(body.len() <= bytes.len());
            for record in snapshot_file::SnapshotRecords::new(&body) {
                record.expect("a snapshot that reads has records that decode");
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
    use prost::Message;
    use raftkv::raft_pb as pb;
    let meta = pb::SnapshotMeta {
        last_log_id: Some(pb::LogId {
            leader_id: Some(pb::LeaderId { term: 1, node_id: 1 }),
            index: 3,
        }),
        last_membership: None,
    };
    let mut bytes = meta.encode_length_delimited_to_vec();
    for (key, value) in pairs {
        let record = pb::SnapshotRecord {
            record: Some(pb::snapshot_record::Record::Pair(pb::KeyValue {
                key: key.clone().into(),
                value: value.clone().into(),
            })),
        };
        bytes.extend(record.encode_length_delimited_to_vec());
    }
    bytes
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
