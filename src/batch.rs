//! The `KvBatch` call's shared rules: how big a batch may be, and how an item's error
//! travels inside a batch reply and comes out as the status its own Kv call would have had.
//!
//! The router sends each node the Kv requests that arrive together as one `KvBatch.Batch`
//! call; the node serves every item as its own call and answers each on its own.

use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

use crate::client::{LEADER_ADDR_METADATA, LEADER_ID_METADATA};
use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::pb;

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 256;

/// A batch takes no more items once its requests' keys and values add up to this much; a
/// single item may be larger (up to the key and value limits).
pub const BATCH_REQUEST_BYTES: usize = 1 << 20;

/// The largest batch request a node accepts: [`BATCH_REQUEST_BYTES`] plus one item of the
/// largest size (a compare-and-swap with a full key and two full values), with room to spare.
pub const MAX_BATCH_REQUEST_MESSAGE: usize = 2 * BATCH_REQUEST_BYTES + 4 * (MAX_KEY_BYTES + MAX_VALUE_BYTES);

/// The largest batch reply the router accepts: every item a get of the largest value. No more
/// memory than the same gets sent one by one would hold.
pub const MAX_BATCH_RESPONSE_MESSAGE: usize = MAX_BATCH_ITEMS * (MAX_VALUE_BYTES + 1024);

/// The longest an item may ask for; a node serves a longer timeout as this one.
pub const MAX_ITEM_TIMEOUT: Duration = Duration::from_secs(3600);

/// The key and value bytes an item carries, as counted against [`BATCH_REQUEST_BYTES`].
pub fn item_bytes(item: &pb::BatchItem) -> usize {
    use pb::batch_item::Request;
    match &item.request {
        Some(Request::Put(r)) => r.key.len() + r.value.len(),
        Some(Request::Get(r)) => r.key.len(),
        Some(Request::Delete(r)) => r.key.len() + r.expect.as_ref().map_or(0, |e| e.len()),
        Some(Request::CompareAndSwap(r)) => r.key.len() + r.new_value.len() + r.expect.as_ref().map_or(0, |e| e.len()),
        None => 0,
    }
}

/// An item's timeout as the batch carries it (whole microseconds, at least 1: 0 would mean
/// "the node's default").
pub fn timeout_us(timeout: Duration) -> u64 {
    (timeout.as_micros() as u64).max(1)
}

/// `status` as a batch reply carries it: code, message and leader hint.
pub fn item_error(status: &Status) -> pb::ItemError {
    let metadata = status.metadata();
    let text = |key: &str| metadata.get(key).and_then(|value| value.to_str().ok());
    pb::ItemError {
        code: status.code() as i32,
        message: status.message().to_string(),
        leader_id: text(LEADER_ID_METADATA).and_then(|id| id.trim().parse().ok()),
        leader_address: text(LEADER_ADDR_METADATA).unwrap_or_default().to_string(),
    }
}

/// The status an item's own Kv call would have ended with: the inverse of [`item_error`].
pub fn item_status(error: pb::ItemError) -> Status {
    let mut status = Status::new(Code::from_i32(error.code), error.message);
    if let Some(id) = error.leader_id {
        if let Ok(address) = MetadataValue::try_from(error.leader_address.as_str()) {
            status.metadata_mut().insert(LEADER_ID_METADATA, id.into());
            status.metadata_mut().insert(LEADER_ADDR_METADATA, address);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::client::{leader_hint, unavailable, LeaderHint};

    #[test]
    fn an_error_with_a_leader_hint_comes_out_of_a_batch_as_it_went_in() {
        let hint = LeaderHint {
            id: 3,
            address: "127.0.0.1:7003".into(),
        };
        let status = item_status(item_error(&unavailable("not the leader", Some(&hint))));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "not the leader");
        assert_eq!(leader_hint(&status), Some(hint));
    }

    #[test]
    fn an_error_without_a_hint_keeps_its_code_and_message_and_gains_no_hint() {
        let status = item_status(item_error(&Status::not_found("key \"k\" not found")));
        assert_eq!(
            (status.code(), status.message()),
            (Code::NotFound, "key \"k\" not found")
        );
        assert!(status.metadata().get(LEADER_ID_METADATA).is_none());
    }

    #[test]
    fn a_timeout_under_a_microsecond_is_not_sent_as_no_timeout() {
        assert_eq!(timeout_us(Duration::ZERO), 1);
        assert_eq!(timeout_us(Duration::from_millis(5)), 5000);
    }
}
