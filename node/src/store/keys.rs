//! Where the state machine keeps what, in its engine's key space: the one place that
//! decides its keys, so that the state machine, its engines and its snapshots agree on
//! them.
//!
//! - `d` + user key: a user's value, as written.
//! - `s` + client id (8 bytes, big-endian): a client session's meta, a
//!   `pb::ClientSession` without results (see `sessions.rs`).
//! - `r` + client id + record number (8 bytes each, big-endian): the results of
//!   [`RESULTS_PER_RECORD`] consecutive sequence numbers of a client, a
//!   `pb::ClientSession` holding only results.
//! - `x` + node id (8 bytes, big-endian): a node removed from the membership, its value
//!   the log index of the membership that removed it (8 bytes, big-endian): ids are never
//!   reused (`membership.rs`). Older directories simply have none.
//! - `m:applied`, `m:membership`: the applied log id and the membership, as
//!   protobuf; `m:redo`: the writes of the latest apply (sled only: `engine/redo.rs`).
//!
//! Invariants: the prefixes are distinct single bytes, so a prefix scan sees one
//! kind of record; big-endian numbers sort as numbers, so a client's records
//! are adjacent and in order. Changing any of this changes the data format
//! (`FORMAT_VERSION` in `data_dir.rs`).

use std::ops::Range;

pub(super) const DATA_PREFIX: u8 = b'd';
/// A client session without its results (`pb::ClientSession`).
pub(super) const SESSION_PREFIX: u8 = b's';
/// The results of a client session's window, [`RESULTS_PER_RECORD`] sequence numbers to
/// a record. An apply rewrites only the records whose results it adds or pushes out, not
/// the client's whole window (up to `RESULTS_PER_SESSION` results; one key per result
/// was slower still, a sled operation each: see BENCHMARKS.md).
pub(super) const RESULT_PREFIX: u8 = b'r';
pub(super) const RESULTS_PER_RECORD: u64 = 64;
/// A node removed from the membership.
pub(super) const REMOVED_MEMBER_PREFIX: u8 = b'x';
pub(super) const APPLIED_KEY: &[u8] = b"m:applied";
pub(super) const MEMBERSHIP_KEY: &[u8] = b"m:membership";
/// The writes of the latest apply (`pb::RedoRecord`).
pub(super) const REDO_KEY: &[u8] = b"m:redo";

/// The key a user's `key` is stored under.
pub(super) fn data_key(key: &[u8]) -> Vec<u8> {
    let mut k = Vec::with_capacity(key.len() + 1);
    k.push(DATA_PREFIX);
    k.extend_from_slice(key);
    k
}

/// The user's key of a key stored under [`DATA_PREFIX`] (sharing its bytes).
pub(super) fn user_key(stored: &bytes::Bytes) -> bytes::Bytes {
    stored.slice(1..)
}

/// The key of a client session's meta.
pub(super) fn session_key(client_id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(SESSION_PREFIX);
    k.extend_from_slice(&client_id.to_be_bytes());
    k
}

/// The key of removed node `id`.
pub(super) fn removed_member_key(id: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(9);
    k.push(REMOVED_MEMBER_PREFIX);
    k.extend_from_slice(&id.to_be_bytes());
    k
}

/// The removed node's id and the log index that removed it, from its key and value.
pub(super) fn removed_member(key: &[u8], value: &[u8]) -> Option<(u64, u64)> {
    let id = u64::from_be_bytes(key.get(1..9)?.try_into().ok()?);
    let index = u64::from_be_bytes(value.try_into().ok()?);
    Some((id, index))
}

/// The number of the record that holds result `sequence` of a client.
pub(super) fn result_record(sequence: u64) -> u64 {
    sequence / RESULTS_PER_RECORD
}

/// The sequence numbers whose results record `record` holds.
pub(super) fn result_record_sequences(record: u64) -> Range<u64> {
    let first = record * RESULTS_PER_RECORD;
    first..first.saturating_add(RESULTS_PER_RECORD)
}

/// The key of result record `record` of client `client_id`.
pub(super) fn result_key(client_id: u64, record: u64) -> Vec<u8> {
    let mut k = Vec::with_capacity(17);
    k.push(RESULT_PREFIX);
    k.extend_from_slice(&client_id.to_be_bytes());
    k.extend_from_slice(&record.to_be_bytes());
    k
}

/// The client id of a result record's key.
pub(super) fn result_client(key: &[u8]) -> Option<u64> {
    Some(u64::from_be_bytes(key.get(1..9)?.try_into().ok()?))
}
