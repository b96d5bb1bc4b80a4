//! One node's batcher: the Kv requests bound for the node that arrive together go to it as
//! one `KvBatch.Batch` call.
//!
//! Under load the router's cost per request was mostly HTTP/2: a stream, its frames and a
//! socket write for every request it forwarded, and the same again on the node. A burst of
//! client requests read from one socket read now goes out as one stream. Nothing waits to
//! fill a batch: the batching task takes what is queued when it runs (on the router's one
//! thread that is after the requests read in the same burst have been queued), sends it,
//! and goes back for the next without waiting for the answer. One request alone still goes
//! at once, as a batch of one.
//!
//! Each item keeps its own timeout and gets its own answer, with the code, message and
//! leader hint its own Kv call would have had (see `raftkv::batch`), so the forwarding and
//! retry rules in `service.rs` are the same for a batched request as for a single one. A
//! failed batch call (a broken connection) fails each of its items with that status.

use std::future::Future;
use std::time::Duration;

use raftkv::batch::{self, BATCH_REQUEST_BYTES, MAX_BATCH_ITEMS};
use raftkv::pb;
use raftkv::pb::batch_item::Request as Item;
use raftkv::pb::batch_item_result::Result as Answer;
use raftkv::pb::kv_batch_client::KvBatchClient;
use tokio::sync::{mpsc, oneshot};
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

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

struct Queued {
    item: pb::BatchItem,
    reply: oneshot::Sender<Result<Answer, Status>>,
}

/// Sends requests to one node in batches. Cheap to clone; the batching task ends when the
/// last clone is dropped.
#[derive(Clone, Debug)]
pub struct Batcher {
    queue: mpsc::UnboundedSender<Queued>,
}

impl Batcher {
    /// Starts the batching task for the node behind `channel`. Must be called on a runtime.
    pub fn start(channel: Channel) -> Batcher {
        let (queue, queued) = mpsc::unbounded_channel();
        let client = KvBatchClient::new(channel)
            .max_encoding_message_size(batch::MAX_BATCH_REQUEST_MESSAGE)
            .max_decoding_message_size(batch::MAX_BATCH_RESPONSE_MESSAGE);
        tokio::spawn(run(client, queued));
        Batcher { queue }
    }

    /// Sends `request` in the next batch and waits for its own answer. The node gives it
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
            timeout_us: batch::timeout_us(timeout),
            request: Some(request.into_item()),
        };
        let queued = self.queue.send(Queued { item, reply });
        async move {
            queued.map_err(|_| Status::unavailable("the router is shutting down"))?;
            let answer = answer
                .await
                .map_err(|_| Status::unavailable("the router is shutting down"))??;
            R::reply_from(answer)
                .map(Response::new)
                .ok_or_else(|| Status::internal("the node answered a batched request with the wrong kind of reply"))
        }
    }
}

/// Takes what is queued, up to the batch limits, sends it without waiting, and repeats.
async fn run(client: KvBatchClient<Channel>, mut queued: mpsc::UnboundedReceiver<Queued>) {
    while let Some(first) = queued.recv().await {
        let mut bytes = batch::item_bytes(&first.item);
        let mut items = vec![first];
        while items.len() < MAX_BATCH_ITEMS && bytes < BATCH_REQUEST_BYTES {
            let Ok(next) = queued.try_recv() else { break };
            bytes += batch::item_bytes(&next.item);
            items.push(next);
        }
        tokio::spawn(send(client.clone(), items));
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
            "the node answered a batch of {} requests with {} results",
            replies.len(),
            results.len()
        ));
        return fail_all(replies, status);
    }
    for (result, reply) in results.into_iter().zip(replies) {
        let answer = match result.result {
            Some(Answer::Error(error)) => Err(batch::item_status(error)),
            Some(answer) => Ok(answer),
            None => Err(Status::internal("the node left a batched request unanswered")),
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
