//! Many Kv requests in one `KvBatch.Batch` call: the shared rules (how big a batch may be,
//! how an item's error travels inside a batch reply and comes out as the status its own Kv
//! call would have had) and the [`KvBatcher`] that sends them.
//!
//! Under load most of the cost of a request, for the sender and for the server, was HTTP/2:
//! a stream, its frames and a socket write per request. So the requests a process sends one
//! server together go as one call: the client library does this towards its endpoints (the
//! router or a node), the router towards each node. Nothing waits to fill a batch: the
//! batching task takes what is queued when it runs (on a one-thread runtime that is after
//! the tasks woken together have queued their requests), sends it, and goes back for the next
//! without waiting for the answer. One request alone still goes at once, as a batch of one.
//! A batch is answered when its slowest item is, so writes, linearizable reads and stale
//! reads go in separate batches.
//!
//! Each item keeps its own timeout and gets its own answer, with the code, message and
//! leader hint its own Kv call would have had, so callers retry a batched request by the
//! same rules as a single one. A failed batch call (a broken connection) fails each of its
//! items with that status. Servers (every node and the router) serve each item as its own
//! call would be served.

mod kv_batcher;

use std::future::Future;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tonic::metadata::MetadataValue;
use tonic::{Code, Request, Status};

pub use self::kv_batcher::KvBatcher;
use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::pb;
use crate::pb::batch_item::Request as Item;
use crate::pb::batch_item_result::Result as Answer;
use crate::wire::{DEFAULT_REQUEST_TIMEOUT, LEADER_ADDR_METADATA, LEADER_ID_METADATA};

/// Most items in one batch.
pub const MAX_BATCH_ITEMS: usize = 256;

/// A batch takes no more items once its requests' keys and values add up to this much; a
/// single item may be larger (up to the key and value limits).
pub const BATCH_REQUEST_BYTES: usize = 1 << 20;

/// The largest batch request a node accepts: [`BATCH_REQUEST_BYTES`] plus one item of the
/// largest size (a compare-and-swap with a full key and two full values), with room to spare.
pub const MAX_BATCH_REQUEST_MESSAGE: usize = 2 * BATCH_REQUEST_BYTES + 4 * (MAX_KEY_BYTES + MAX_VALUE_BYTES);

/// A batch reply holds values (of gets) up to this many bytes, and the value of the first get
/// served whatever its size; the gets served past it are answered [`resend`], and their sender
/// sends them again in a later batch. Without it, a batch of 256 gets of 1 MiB values was a
/// 256 MiB reply, built and encoded at once on the serving thread: with 256 clients reading
/// such values, nodes and router held ~1 GB and the nodes' heartbeats stalled long enough for
/// 14 elections in 30 s.
pub const BATCH_REPLY_BYTES: usize = 4 << 20;

/// The largest batch reply a sender accepts: [`BATCH_REPLY_BYTES`] and one more value of the
/// largest size, with room for every item's key, header and error.
pub const MAX_BATCH_RESPONSE_MESSAGE: usize = BATCH_REPLY_BYTES + MAX_VALUE_BYTES + MAX_BATCH_ITEMS * 1024;

/// The longest an item may ask for; a node serves a longer timeout as this one.
pub const MAX_ITEM_TIMEOUT: Duration = Duration::from_secs(3600);

/// Refuses a batch of more than [`MAX_BATCH_ITEMS`] items (INVALID_ARGUMENT).
pub fn check_item_count(items: usize) -> Result<(), Status> {
    if items > MAX_BATCH_ITEMS {
        return Err(Status::invalid_argument(format!(
            "a batch holds {items} items, more than the limit of {MAX_BATCH_ITEMS}"
        )));
    }
    Ok(())
}

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

/// The time an item that carries `timeout_us` may take, as its server reads it: the inverse of
/// [`timeout_us`], at most [`MAX_ITEM_TIMEOUT`]; 0 is [`DEFAULT_REQUEST_TIMEOUT`], as for a
/// call without a `grpc-timeout`.
pub fn item_timeout(timeout_us: u64) -> Duration {
    match timeout_us {
        0 => DEFAULT_REQUEST_TIMEOUT,
        us => Duration::from_micros(us).min(MAX_ITEM_TIMEOUT),
    }
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
        resend: false,
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

/// What a batch reply may still take of [`BATCH_REPLY_BYTES`]; shared by the items of one
/// batch, which are served side by side.
#[derive(Debug, Default)]
pub struct ReplyBudget {
    held: AtomicUsize,
    /// Told when the reply becomes full.
    full: tokio::sync::Notify,
}

impl ReplyBudget {
    /// Takes `answer` into the reply, or, when it is a value and the reply already holds
    /// [`BATCH_REPLY_BYTES`] of them, answers [`resend`] instead.
    pub fn take(&self, answer: Answer) -> Answer {
        let Answer::Get(get) = &answer else { return answer };
        let bytes = get.value.len();
        let taken = self.held.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |held| {
            (held < BATCH_REPLY_BYTES).then_some(held + bytes)
        });
        match taken {
            Ok(before) => {
                if before + bytes >= BATCH_REPLY_BYTES {
                    self.full.notify_waiters();
                }
                answer
            }
            Err(_) => Answer::Error(resend()),
        }
    }

    /// An item's entry in the reply: its answer taken as [`ReplyBudget::take`] does, or its
    /// error as its own call would have ended.
    pub fn result(&self, answer: Result<Answer, Status>) -> pb::BatchItemResult {
        pb::BatchItemResult {
            result: Some(answer.map_or_else(|status| Answer::Error(item_error(&status)), |a| self.take(a))),
        }
    }

    /// Whether the reply already holds [`BATCH_REPLY_BYTES`] of values: a get not yet read
    /// would be answered [`resend`].
    pub fn is_full(&self) -> bool {
        self.held.load(Ordering::Relaxed) >= BATCH_REPLY_BYTES
    }

    /// Returns once the reply holds [`BATCH_REPLY_BYTES`] of values: a get still on its way
    /// then is answered [`resend`] at once rather than fetched for nothing.
    pub async fn filled(&self) {
        loop {
            let notified = self.full.notified();
            tokio::pin!(notified);
            notified.as_mut().enable();
            if self.is_full() {
                return;
            }
            notified.await;
        }
    }
}

/// A get of a batch served where its value is read locally (a node): once `ready` says the
/// read may be made (its consistency is met), reads it with `read`, unless the reply is full
/// by then: the get is then answered [`resend`] without its value being read at all. (Read
/// and then left out, 256 gets of 1 MiB values cost a node 256 MiB read per batch to answer
/// four of them: 44 gets a second where one client alone made 680.)
pub async fn get_unless_full(
    budget: &ReplyBudget,
    ready: impl Future<Output = Result<(), Status>>,
    read: impl FnOnce() -> Result<pb::GetResponse, Status>,
) -> Result<Answer, Status> {
    ready.await?;
    if budget.is_full() {
        return Ok(Answer::Error(resend()));
    }
    read().map(Answer::Get)
}

/// The answer to an item left out of a full reply (see [`BATCH_REPLY_BYTES`]).
pub fn resend() -> pb::ItemError {
    pb::ItemError {
        code: Code::Unavailable as i32,
        message: "not served: the batch reply was full; send the request again".to_string(),
        resend: true,
        ..Default::default()
    }
}

/// A Kv request that can travel in a batch, and the answer it expects.
pub trait Batchable: Sized {
    type Reply;
    fn into_item(self) -> Item;
    /// The reply, when `answer` is the kind this request expects.
    fn reply_from(answer: Answer) -> Option<Self::Reply>;
}

macro_rules! batchable {
    ($request:ty, $reply:ty, $variant:ident) => {
        impl Batchable for $request {
            type Reply = $reply;
            fn into_item(self) -> Item {
                Item::$variant(self)
            }
            fn reply_from(answer: Answer) -> Option<$reply> {
                match answer {
                    Answer::$variant(reply) => Some(reply),
                    _ => None,
                }
            }
        }
    };
}

batchable!(pb::PutRequest, pb::PutResponse, Put);
batchable!(pb::GetRequest, pb::GetResponse, Get);
batchable!(pb::DeleteRequest, pb::DeleteResponse, Delete);
batchable!(pb::CompareAndSwapRequest, pb::CompareAndSwapResponse, CompareAndSwap);

/// Serves a batch through `kv`'s own methods: each item side by side, as a Kv call with the
/// item's timeout would be served (see `serve_item_as_call`). For servers whose batch items
/// need nothing their Kv calls do not do (the router; test fakes).
pub async fn serve_as_calls<K: pb::kv_server::Kv>(
    kv: &K,
    items: Vec<pb::BatchItem>,
) -> Result<pb::BatchResponse, Status> {
    check_item_count(items.len())?;
    let budget = ReplyBudget::default();
    let results = futures::future::join_all(items.into_iter().map(|item| serve_item_as_call(kv, item, &budget))).await;
    Ok(pb::BatchResponse { results })
}

/// Serves `item` through `kv`'s own methods, as a Kv call with the item's timeout (as its
/// `grpc-timeout`) would be served, and wraps the answer or error for the batch reply, within
/// `budget`.
async fn serve_item_as_call<K: pb::kv_server::Kv>(
    kv: &K,
    item: pb::BatchItem,
    budget: &ReplyBudget,
) -> pb::BatchItemResult {
    fn call<T>(message: T, timeout_us: u64) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(item_timeout(timeout_us));
        request
    }
    let us = item.timeout_us;
    let answer = match item.request {
        Some(Item::Put(r)) => kv.put(call(r, us)).await.map(|r| Answer::Put(r.into_inner())),
        // A get that starts with the reply already full is not sent on at all.
        Some(Item::Get(r)) => tokio::select! {
            biased;
            () = budget.filled() => Ok(Answer::Error(resend())),
            got = kv.get(call(r, us)) => got.map(|r| Answer::Get(r.into_inner())),
        },
        Some(Item::Delete(r)) => kv.delete(call(r, us)).await.map(|r| Answer::Delete(r.into_inner())),
        Some(Item::CompareAndSwap(r)) => kv
            .compare_and_swap(call(r, us))
            .await
            .map(|r| Answer::CompareAndSwap(r.into_inner())),
        None => Err(Status::invalid_argument("a batch item holds no request")),
    };
    budget.result(answer)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::{leader_hint, unavailable, LeaderHint};

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

    fn get_of(bytes: usize) -> Answer {
        Answer::Get(pb::GetResponse {
            value: vec![0; bytes].into(),
            header: None,
        })
    }

    fn is_resend(answer: &Answer) -> bool {
        matches!(answer, Answer::Error(e) if e.resend && e.code == Code::Unavailable as i32)
    }

    #[test]
    fn a_reply_takes_values_until_it_holds_the_reply_bytes_and_the_first_whatever_its_size() {
        let budget = ReplyBudget::default();
        assert!(
            !is_resend(&budget.take(get_of(BATCH_REPLY_BYTES + 1))),
            "the first value"
        );
        assert!(is_resend(&budget.take(get_of(1))), "the reply is full");
        assert!(
            !is_resend(&budget.take(Answer::Put(pb::PutResponse::default()))),
            "answers without a value always fit"
        );
        let budget = ReplyBudget::default();
        for _ in 0..4 {
            assert!(!is_resend(&budget.take(get_of(BATCH_REPLY_BYTES / 4 - 1))));
        }
        assert!(
            !is_resend(&budget.take(get_of(MAX_VALUE_BYTES))),
            "under the limit before it"
        );
        assert!(is_resend(&budget.take(get_of(0))));
        const { assert!(BATCH_REPLY_BYTES + MAX_VALUE_BYTES < MAX_BATCH_RESPONSE_MESSAGE) };
    }

    #[tokio::test]
    async fn a_get_is_read_only_while_its_reply_has_room_and_only_once_it_may_be() {
        let budget = ReplyBudget::default();
        let reads = std::cell::Cell::new(0);
        let read = || {
            reads.set(reads.get() + 1);
            match get_of(BATCH_REPLY_BYTES / 2) {
                Answer::Get(got) => Ok(got),
                _ => unreachable!(),
            }
        };
        let refused = async { Err(Status::unavailable("not the leader")) };
        let answer = get_unless_full(&budget, refused, read).await;
        assert_eq!(answer.unwrap_err().code(), Code::Unavailable);
        assert_eq!(reads.get(), 0, "a get whose consistency is not met is not read");
        for _ in 0..2 {
            let answer = get_unless_full(&budget, async { Ok(()) }, read).await.unwrap();
            assert!(!is_resend(&budget.take(answer)));
        }
        assert_eq!(reads.get(), 2);
        assert!(budget.is_full());
        let answer = get_unless_full(&budget, async { Ok(()) }, read).await.unwrap();
        assert!(is_resend(&answer), "{answer:?}");
        assert_eq!(reads.get(), 2, "a get whose reply is full is not read");
    }
}
