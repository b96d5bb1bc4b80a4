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

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tonic::metadata::MetadataValue;
use tonic::transport::Channel;
use tonic::{Code, Request, Response, Status};

use crate::limits::{MAX_KEY_BYTES, MAX_VALUE_BYTES};
use crate::pb;
use crate::pb::batch_item::Request as Item;
use crate::pb::batch_item_result::Result as Answer;
use crate::pb::kv_batch_client::KvBatchClient;
use crate::wire::{DEFAULT_REQUEST_TIMEOUT, LEADER_ADDR_METADATA, LEADER_ID_METADATA};

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
    let results = futures::future::join_all(items.into_iter().map(|item| serve_item_as_call(kv, item))).await;
    Ok(pb::BatchResponse { results })
}

/// Serves `item` through `kv`'s own methods, as a Kv call with the item's timeout (as its
/// `grpc-timeout`) would be served, and wraps the answer or error for the batch reply.
async fn serve_item_as_call<K: pb::kv_server::Kv>(kv: &K, item: pb::BatchItem) -> pb::BatchItemResult {
    fn call<T>(message: T, timeout_us: u64) -> Request<T> {
        let mut request = Request::new(message);
        request.set_timeout(item_timeout(timeout_us));
        request
    }
    let us = item.timeout_us;
    let answer = match item.request {
        Some(Item::Put(r)) => kv.put(call(r, us)).await.map(|r| Answer::Put(r.into_inner())),
        Some(Item::Get(r)) => kv.get(call(r, us)).await.map(|r| Answer::Get(r.into_inner())),
        Some(Item::Delete(r)) => kv.delete(call(r, us)).await.map(|r| Answer::Delete(r.into_inner())),
        Some(Item::CompareAndSwap(r)) => kv
            .compare_and_swap(call(r, us))
            .await
            .map(|r| Answer::CompareAndSwap(r.into_inner())),
        None => Err(Status::invalid_argument("a batch item holds no request")),
    };
    pb::BatchItemResult {
        result: Some(answer.unwrap_or_else(|status| Answer::Error(item_error(&status)))),
    }
}

struct Queued {
    item: pb::BatchItem,
    reply: oneshot::Sender<Result<Answer, Status>>,
}

/// Sends requests to one server (a node or the router) in batches. Cheap to clone; the
/// batching task ends when the last clone is dropped.
#[derive(Clone, Debug)]
pub struct KvBatcher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl KvBatcher {
    /// Starts the batching task for the server behind `channel`. Must be called on a runtime.
    pub fn start(channel: Channel) -> KvBatcher {
        let (queue, queued) = mpsc::unbounded_channel();
        let client = KvBatchClient::new(channel)
            .max_encoding_message_size(MAX_BATCH_REQUEST_MESSAGE)
            .max_decoding_message_size(MAX_BATCH_RESPONSE_MESSAGE);
        tokio::spawn(run(client, queued));
        KvBatcher { queue }
    }

    /// Sends `request` in the next batch and waits for its own answer. The server gives it
    /// `timeout`; the returned future does not borrow the batcher.
    pub fn call<R: Batchable>(
        &self,
        request: R,
        timeout: Duration,
    ) -> impl Future<Output = Result<Response<R::Reply>, Status>> + Send + 'static
    where
        R::Reply: Send,
    {
        let (reply, answer) = oneshot::channel();
        let item = pb::BatchItem {
            timeout_us: timeout_us(timeout),
            request: Some(request.into_item()),
        };
        let queued = self.queue.send(Queued { item, reply });
        async move {
            let stopped = || Status::unavailable("shutting down: requests are no longer sent");
            queued.map_err(|_| stopped())?;
            let answer = answer.await.map_err(|_| stopped())??;
            R::reply_from(answer)
                .map(Response::new)
                .ok_or_else(|| Status::internal("the server answered a batched request with the wrong kind of reply"))
        }
    }
}

/// Takes what is queued, up to the batch limits, sends it without waiting, and repeats.
/// Requests of different classes go in separate batches (see [`class`]).
async fn run(client: KvBatchClient<Channel>, mut queued: mpsc::UnboundedReceiver<Queued>) {
    while let Some(first) = queued.recv().await {
        let mut bytes = item_bytes(&first.item);
        let mut taken = 1;
        let mut batches: [Vec<Queued>; CLASSES] = Default::default();
        batches[class(&first.item)].push(first);
        while taken < MAX_BATCH_ITEMS && bytes < BATCH_REQUEST_BYTES {
            let Ok(next) = queued.try_recv() else { break };
            bytes += item_bytes(&next.item);
            taken += 1;
            batches[class(&next.item)].push(next);
        }
        for items in batches.into_iter().filter(|items| !items.is_empty()) {
            tokio::spawn(send(client.clone(), items));
        }
    }
}

/// How many classes of requests [`class`] tells apart.
const CLASSES: usize = 3;

/// Which requests may share a batch. A batch is answered when its slowest item is, so
/// requests that take different paths through the server go in separate batches: writes (a
/// Raft round on the leader), linearizable reads (a leadership round) and stale reads
/// (answered at once). Each still waits for no more than the others of its kind.
fn class(item: &pb::BatchItem) -> usize {
    match &item.request {
        Some(Item::Get(get)) if get.consistency == pb::Consistency::Stale as i32 => 2,
        Some(Item::Get(_)) => 1,
        _ => 0,
    }
}

/// Sends one batch and hands each item its answer.
async fn send(mut client: KvBatchClient<Channel>, queued: Vec<Queued>) {
    let longest = queued.iter().map(|q| q.item.timeout_us).max().unwrap_or(1);
    let (items, replies): (Vec<_>, Vec<_>) = queued.into_iter().map(|q| (q.item, q.reply)).unzip();
    let mut request = Request::new(pb::BatchRequest { items });
    request.set_timeout(Duration::from_micros(longest));
    let results = match client.batch(request).await {
        Ok(response) => response.into_inner().results,
        Err(status) => return fail_all(replies, status),
    };
    if results.len() != replies.len() {
        let status = Status::internal(format!(
            "the server answered a batch of {} requests with {} results",
            replies.len(),
            results.len()
        ));
        return fail_all(replies, status);
    }
    for (result, reply) in results.into_iter().zip(replies) {
        let answer = match result.result {
            Some(Answer::Error(error)) => Err(item_status(error)),
            Some(answer) => Ok(answer),
            None => Err(Status::internal("the server left a batched request unanswered")),
        };
        let _ = reply.send(answer);
    }
}

/// Gives every item of a batch the same failure.
fn fail_all(replies: Vec<oneshot::Sender<Result<Answer, Status>>>, status: Status) {
    for reply in replies {
        let _ = reply.send(Err(status.clone()));
    }
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
}
