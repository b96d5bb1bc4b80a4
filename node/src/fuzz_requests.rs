//! Property tests: every protobuf request the node and the router accept, decoded from
//! arbitrary bytes (and from valid requests with bytes flipped or cut off), then handed to the
//! checks a request meets first (the key and value limits, the Raft message conversions). None
//! may panic, and a decoded message is never larger than the bytes it came from (no input makes
//! the decoder allocate more than it was sent). A fixed number of cases keeps `cargo test` quick.

use proptest::prelude::*;
use prost::Message;
use raftkv::limits::{check_key, check_value};
use raftkv::pb;
use raftkv::raft_pb;

use crate::convert;

/// Cases per request type: enough to reach past the first field of each, few enough that the
/// whole file runs in a few seconds.
const CASES_PER_TYPE: u32 = 256;
/// The longest arbitrary input tried, in bytes.
const MAX_INPUT_BYTES: usize = 512;

/// Decodes `bytes` as `M`; when it decodes, its re-encoding is no larger than the input.
fn decode<M: Message + Default>(bytes: &[u8]) -> Option<M> {
    let message = M::decode(bytes).ok()?;
    assert!(
        message.encoded_len() <= bytes.len(),
        "{} decoded from {} bytes re-encodes to {}",
        std::any::type_name::<M>(),
        bytes.len(),
        message.encoded_len()
    );
    Some(message)
}

/// The checks the node makes of a Kv write or read before it does anything.
fn check_kv(key: &[u8], values: &[&[u8]]) {
    let _ = check_key(key);
    for value in values {
        let _ = check_value(value);
    }
}

fn handle_batch(batch: pb::BatchRequest) {
    use pb::batch_item::Request;
    for item in batch.items {
        match item.request {
            Some(Request::Put(put)) => check_kv(&put.key, &[&put.value]),
            Some(Request::Get(get)) => check_kv(&get.key, &[]),
            Some(Request::Delete(delete)) => check_kv(&delete.key, &[delete.expect.as_deref().unwrap_or_default()]),
            Some(Request::CompareAndSwap(cas)) => {
                check_kv(&cas.key, &[cas.expect.as_deref().unwrap_or_default(), &cas.new_value])
            }
            None => {}
        }
    }
}

/// Decodes `bytes` as every request type, and validates what decodes.
fn decode_and_validate_every_request(bytes: &[u8]) {
    if let Some(put) = decode::<pb::PutRequest>(bytes) {
        check_kv(&put.key, &[&put.value]);
    }
    if let Some(get) = decode::<pb::GetRequest>(bytes) {
        check_kv(&get.key, &[]);
        let _ = pb::Consistency::try_from(get.consistency);
    }
    if let Some(delete) = decode::<pb::DeleteRequest>(bytes) {
        check_kv(&delete.key, &[delete.expect.as_deref().unwrap_or_default()]);
    }
    if let Some(cas) = decode::<pb::CompareAndSwapRequest>(bytes) {
        check_kv(&cas.key, &[cas.expect.as_deref().unwrap_or_default(), &cas.new_value]);
    }
    if let Some(scan) = decode::<pb::ScanRequest>(bytes) {
        check_kv(&scan.prefix, &[&scan.start_after]);
    }
    if let Some(batch) = decode::<pb::BatchRequest>(bytes) {
        handle_batch(batch);
    }
    let _ = decode::<pb::StatusRequest>(bytes);
    let _ = decode::<pb::TransferLeaderRequest>(bytes);
    if let Some(append) = decode::<raft_pb::AppendEntriesRequest>(bytes) {
        let _ = convert::append_entries_from_pb(append);
    }
    if let Some(vote) = decode::<raft_pb::VoteRequest>(bytes) {
        let _ = convert::vote_request_from_pb(vote);
    }
    if let Some(transfer) = decode::<raft_pb::TransferLeaderRequest>(bytes) {
        let _ = convert::transfer_leader_request_from_pb(transfer);
    }
    if let Some(chunk) = decode::<raft_pb::SnapshotChunk>(bytes) {
        if let Some(raft_pb::snapshot_chunk::Kind::Header(header)) = chunk.kind {
            let _ = convert::vote_from_pb(header.vote);
            let _ = convert::snapshot_meta_from_pb(header.meta);
        }
    }
    let _ = decode::<raft_pb::ReadIndexRequest>(bytes);
}

/// Valid requests of several types, as bytes, to be damaged.
fn valid_requests() -> Vec<Vec<u8>> {
    let key = bytes::Bytes::from_static(b"key");
    let value = bytes::Bytes::from_static(b"value");
    let put = pb::PutRequest {
        key: key.clone(),
        value: value.clone(),
        write_id: Some(pb::WriteId {
            client_id: 7,
            sequence: 9,
        }),
    };
    let batch = pb::BatchRequest {
        items: vec![pb::BatchItem {
            timeout_us: 1000,
            request: Some(pb::batch_item::Request::Put(put.clone())),
        }],
    };
    let entry = raft_pb::Entry {
        log_id: Some(raft_pb::LogId {
            leader_id: Some(raft_pb::LeaderId { term: 2, node_id: 1 }),
            index: 5,
        }),
        ..Default::default()
    };
    let append = raft_pb::AppendEntriesRequest {
        entries: vec![entry],
        ..Default::default()
    };
    vec![put.encode_to_vec(), batch.encode_to_vec(), append.encode_to_vec()]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES_PER_TYPE, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn arbitrary_bytes_never_panic_a_request_decoder(bytes in prop::collection::vec(any::<u8>(), 0..MAX_INPUT_BYTES)) {
        decode_and_validate_every_request(&bytes);
    }

    #[test]
    fn a_damaged_valid_request_never_panics_a_decoder(
        which in 0usize..3,
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<u8>()), 1..4),
        cut in any::<prop::sample::Index>(),
    ) {
        let mut bytes = valid_requests().swap_remove(which);
        for (at, byte) in flips {
            let at = at.index(bytes.len());
            bytes[at] = byte;
        }
        decode_and_validate_every_request(&bytes);
        let cut = cut.index(bytes.len() + 1);
        decode_and_validate_every_request(&bytes[..cut]);
    }
}
