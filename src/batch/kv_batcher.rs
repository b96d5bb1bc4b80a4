//! The sending side of `KvBatch`: a [`KvBatcher`] per server takes the Kv requests a process
//! has queued for it, sends them as one `KvBatch.Batch` call without waiting to fill it, and
//! hands each request its own answer (see the rules in [`crate::batch`]). The client library
//! has one per server it talks to, the router one per node.

use std::future::Future;
use std::time::Duration;

use tokio::sync::{mpsc, oneshot};
use tokio::time::Instant;
use tonic::transport::Channel;
use tonic::{Request, Response, Status};

use super::{
    item_bytes, item_status, timeout_us, Batchable, BATCH_REQUEST_BYTES, MAX_BATCH_ITEMS, MAX_BATCH_REQUEST_MESSAGE,
    MAX_BATCH_RESPONSE_MESSAGE,
};
use crate::pb;
use crate::pb::batch_item::Request as Item;
use crate::pb::batch_item_result::Result as Answer;
use crate::pb::kv_batch_client::KvBatchClient;

struct Queued {
    item: pb::BatchItem,
    /// When the caller's timeout runs out: a request sent again (see [`super::resend`]) gets
    /// what is left of it.
    deadline: Instant,
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
        let deadline = Instant::now() + timeout;
        let queued = self.queue.send(Queued { item, deadline, reply });
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
/// Requests of different classes go in separate batches (see [`class`]). Requests a reply left
/// out come back through a queue of their own and go first, so that they are not passed over
/// again and again by newer ones; requests whose caller has gone are not sent. Ends once every
/// [`KvBatcher`] is gone.
async fn run(client: KvBatchClient<Channel>, mut queued: mpsc::UnboundedReceiver<Queued>) {
    let (again, mut left_out) = mpsc::unbounded_channel();
    loop {
        let first = tokio::select! {
            biased;
            Some(q) = left_out.recv() => q,
            q = queued.recv() => match q {
                Some(q) => q,
                None => return,
            },
        };
        let mut bytes = 0;
        let mut taken = 0;
        let mut batches: [Vec<Queued>; CLASSES] = Default::default();
        let mut next = Some(first);
        while let Some(q) = next.take() {
            if !q.reply.is_closed() {
                bytes += item_bytes(&q.item);
                taken += 1;
                batches[class(&q.item)].push(q);
            }
            if taken >= MAX_BATCH_ITEMS || bytes >= BATCH_REQUEST_BYTES {
                break;
            }
            next = left_out.try_recv().or_else(|_| queued.try_recv()).ok();
        }
        for items in batches.into_iter().filter(|items| !items.is_empty()) {
            tokio::spawn(send(client.clone(), items, again.clone()));
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

/// Sends one batch and hands each item its answer; an item the reply left out goes back to
/// the queue.
async fn send(mut client: KvBatchClient<Channel>, queued: Vec<Queued>, again: mpsc::UnboundedSender<Queued>) {
    let now = Instant::now();
    let (late, queued): (Vec<_>, Vec<_>) = queued.into_iter().partition(|q| q.deadline <= now);
    fail_all(
        late.into_iter().map(|q| q.reply).collect(),
        Status::deadline_exceeded("no answer within the request's timeout"),
    );
    if queued.is_empty() {
        return;
    }
    let mut items = Vec::with_capacity(queued.len());
    // Each item's answer, deadline and, for a get (the only request a reply leaves out, and
    // small without its value), a copy to send again.
    let mut waiting = Vec::with_capacity(queued.len());
    for Queued {
        mut item,
        deadline,
        reply,
    } in queued
    {
        item.timeout_us = timeout_us(deadline - now);
        let copy = matches!(item.request, Some(Item::Get(_))).then(|| item.clone());
        items.push(item);
        waiting.push((copy, deadline, reply));
    }
    let longest = items.iter().map(|item| item.timeout_us).max().unwrap_or(1);
    let mut request = Request::new(pb::BatchRequest { items });
    request.set_timeout(Duration::from_micros(longest));
    let results = match client.batch(request).await {
        Ok(response) => response.into_inner().results,
        Err(status) => return fail_all(waiting.into_iter().map(|(_, _, reply)| reply).collect(), status),
    };
    if results.len() != waiting.len() {
        let status = Status::internal(format!(
            "the server answered a batch of {} requests with {} results",
            waiting.len(),
            results.len()
        ));
        return fail_all(waiting.into_iter().map(|(_, _, reply)| reply).collect(), status);
    }
    for (result, (copy, deadline, reply)) in results.into_iter().zip(waiting) {
        let answer = match result.result {
            Some(Answer::Error(error)) if error.resend => match copy {
                Some(item) => match again.send(Queued { item, deadline, reply }) {
                    Ok(()) => continue,
                    Err(mpsc::error::SendError(q)) => {
                        let _ = q.reply.send(Err(item_status(error)));
                        continue;
                    }
                },
                None => Err(item_status(error)),
            },
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
