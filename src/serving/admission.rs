//! Admission by bytes: a server reads a call's request only once the requests it already holds
//! leave room for it, so the memory its callers can make it hold does not grow with them.
//!
//! Without it, a server read every request as soon as it arrived and held it until it was
//! answered. 256 clients putting 1 MiB values through the router made the router hold ~900 MB
//! and the leader ~470 MB, and throughput fell below what 16 clients got, because the writes
//! waiting behind the others were read, copied, forwarded and then timed out anyway.
//!
//! The check sits in front of a service, before tonic decodes anything. A call's body is
//! passed through until its gRPC length prefix (the first 5 bytes) says how big the request
//! message is; then the call waits, in arrival order, until that many bytes of
//! [`RequestBytes`] are free, and holds them until its answer is ready. While it waits, its
//! body stays unread, so HTTP/2 flow control stops its sender once the stream's window is full:
//! what a waiting call costs the server is at most that window. Its connection's window must
//! have room for every call that may wait on it ([`super::CONNECTION_WINDOW_BYTES`]): else the
//! waiting calls' unread bytes would stop the admitted calls on the same connection from
//! receiving the rest of their requests, and nothing would end until clients gave up. Small
//! requests (every get, and puts of small values) take a few bytes of the budget each and
//! never wait in practice.
//!
//! A call waits at most [`ADMISSION_WAIT`]; then it is answered UNAVAILABLE (without a leader
//! hint: "nothing was done, try the same place again") and its sender retries after a pause,
//! as after any refusal. Without that bound the waiting line itself was the failure: with
//! 256 clients writing 1 MiB values, a write waited behind ~220 others, longer than the
//! clients' 5 s timeout at the ~40 writes a second this machine's disks take, so nearly every
//! write that reached the front was given up by its client before it was done (6 writes a
//! second succeeded instead of 40). One call larger than the whole budget takes the whole
//! budget.

use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{ready, Context, Poll};
use std::time::Duration;

use bytes::{Buf, Bytes};
use http_body::{Frame, SizeHint};
use tokio::sync::{AcquireError, OwnedSemaphorePermit, Semaphore};
use tokio::time::error::Elapsed;
use tonic::body::Body;
use tonic::server::NamedService;
use tower_service::Service;

/// The request bytes a server (each node, the router) holds at once for its Kv and KvBatch
/// calls, by default: with 1 MiB values that is 32 writes in flight, several times what keeps
/// a leader's disk and followers busy on this machine; with small requests it is never reached.
pub const REQUEST_BYTES_IN_FLIGHT: usize = 32 << 20;

/// The longest a call waits to be admitted before it is answered UNAVAILABLE: well within a
/// client's timeout (5 s by default), so that a call that waited still has time to be served.
pub const ADMISSION_WAIT: Duration = Duration::from_secs(1);

/// Calls whose requests are small whatever the caller does (a key, a range, bounded by the key
/// limit): counting them would bound nothing, and would put the check on the busiest calls.
const UNGUARDED_PATHS: &[&str] = &["/raftkv.v1.Kv/Get", "/raftkv.v1.Kv/Scan"];

/// The gRPC message prefix: a compression flag and the message length (big-endian u32).
pub const GRPC_PREFIX_BYTES: usize = 5;

/// A budget of request bytes shared by the services it guards; cheap to clone.
#[derive(Clone)]
pub struct RequestBytes {
    free: Arc<Semaphore>,
    limit: u32,
    refused: Arc<AtomicU64>,
}

impl RequestBytes {
    /// A budget of `limit` bytes (at most 4 GiB - 1).
    pub fn new(limit: usize) -> RequestBytes {
        let limit = u32::try_from(limit).unwrap_or(u32::MAX);
        RequestBytes {
            free: Arc::new(Semaphore::new(limit as usize)),
            limit,
            refused: Arc::default(),
        }
    }

    /// The budget's size in bytes.
    pub fn limit(&self) -> usize {
        self.limit as usize
    }

    /// The calls answered busy so far.
    pub fn refused(&self) -> u64 {
        self.refused.load(Ordering::Relaxed)
    }

    /// The bytes the calls being served hold now.
    pub fn held(&self) -> usize {
        self.limit as usize - self.free.available_permits()
    }

    /// `service` behind this budget.
    pub fn guard<S>(&self, service: S) -> Admitted<S> {
        Admitted {
            inner: service,
            budget: self.clone(),
        }
    }

    /// The answer to a call that waited [`ADMISSION_WAIT`] in vain.
    fn busy(&self) -> tonic::Status {
        self.refused.fetch_add(1, Ordering::Relaxed);
        tonic::Status::unavailable(format!(
            "the server is busy: the requests it is serving fill its {} MiB for requests in flight; try again",
            self.limit >> 20
        ))
    }

    /// The share of the budget a request message of `message_bytes` takes.
    fn cost(&self, message_bytes: u32) -> u32 {
        message_bytes.saturating_add(GRPC_PREFIX_BYTES as u32).min(self.limit)
    }
}

/// Where a call's share of the budget is kept from the moment its body has it until its answer
/// is ready (the body itself is dropped once tonic has decoded the request, before the handler
/// has served it).
type Share = Arc<Mutex<Option<OwnedSemaphorePermit>>>;

/// A service whose calls are admitted by [`RequestBytes`] (see the module's documentation).
#[derive(Clone)]
pub struct Admitted<S> {
    inner: S,
    budget: RequestBytes,
}

impl<S> Service<http::Request<Body>> for Admitted<S>
where
    S: Service<http::Request<Body>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = HeldUntilAnswered<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        if UNGUARDED_PATHS.contains(&request.uri().path()) {
            return HeldUntilAnswered {
                answer: self.inner.call(request),
                share: ReleasedOnDrop(None),
            };
        }
        let share = Share::default();
        let budget = self.budget.clone();
        let body_share = share.clone();
        let request = request.map(move |body| Body::new(AdmittedBody::new(body, budget, body_share)));
        HeldUntilAnswered {
            answer: self.inner.call(request),
            share: ReleasedOnDrop(Some(share)),
        }
    }
}

impl<S: NamedService> NamedService for Admitted<S> {
    const NAME: &'static str = S::NAME;
}

/// Gives a call's share back when the call ends, answered or dropped (a client that went away).
struct ReleasedOnDrop(Option<Share>);

impl ReleasedOnDrop {
    fn release(&self) {
        if let Some(share) = &self.0 {
            drop(share.lock().unwrap_or_else(|poisoned| poisoned.into_inner()).take());
        }
    }
}

impl Drop for ReleasedOnDrop {
    fn drop(&mut self) {
        self.release();
    }
}

pin_project_lite::pin_project! {
    /// The answer of a call admitted by [`RequestBytes`]; its share is given back once the
    /// answer is ready.
    pub struct HeldUntilAnswered<F> {
        #[pin]
        answer: F,
        share: ReleasedOnDrop,
    }
}

impl<F: Future> Future for HeldUntilAnswered<F> {
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let this = self.project();
        let answer = ready!(this.answer.poll(cx));
        this.share.release();
        Poll::Ready(answer)
    }
}

type Acquiring = Pin<Box<dyn Future<Output = Result<Result<OwnedSemaphorePermit, AcquireError>, Elapsed>> + Send>>;

enum Stage {
    /// Reading the length prefix: the frames read so far wait in `read`.
    Prefix {
        prefix: [u8; GRPC_PREFIX_BYTES],
        seen: usize,
    },
    /// Waiting for the request's share of the budget.
    Waiting(Acquiring),
    /// Admitted (or ended before a whole prefix): frames pass through.
    Admitted,
}

pin_project_lite::pin_project! {
    /// A request body that is read past its length prefix only once its call has been admitted.
    struct AdmittedBody {
        #[pin]
        inner: Body,
        stage: Stage,
        // Frames read before admission, handed on in order after it.
        read: VecDeque<Frame<Bytes>>,
        // The inner body has ended.
        ended: bool,
        budget: RequestBytes,
        share: Share,
    }
}

impl AdmittedBody {
    fn new(inner: Body, budget: RequestBytes, share: Share) -> AdmittedBody {
        AdmittedBody {
            inner,
            stage: Stage::Prefix {
                prefix: [0; GRPC_PREFIX_BYTES],
                seen: 0,
            },
            read: VecDeque::new(),
            ended: false,
            budget,
            share,
        }
    }
}

impl http_body::Body for AdmittedBody {
    type Data = Bytes;
    type Error = tonic::Status;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, tonic::Status>>> {
        let mut this = self.project();
        loop {
            match this.stage {
                Stage::Admitted => {
                    if let Some(frame) = this.read.pop_front() {
                        return Poll::Ready(Some(Ok(frame)));
                    }
                    if *this.ended {
                        return Poll::Ready(None);
                    }
                    return this.inner.poll_frame(cx);
                }
                Stage::Waiting(acquiring) => {
                    match ready!(acquiring.as_mut().poll(cx)) {
                        Ok(Ok(permit)) => {
                            *this.share.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(permit)
                        }
                        // The semaphore is never closed; were it to be, the call would go on
                        // unadmitted rather than fail.
                        Ok(Err(_closed)) => {}
                        Err(_elapsed) => {
                            *this.stage = Stage::Admitted;
                            this.read.clear();
                            *this.ended = true;
                            return Poll::Ready(Some(Err(this.budget.busy())));
                        }
                    }
                    *this.stage = Stage::Admitted;
                }
                Stage::Prefix { prefix, seen } => {
                    let (mut prefix, mut seen) = (*prefix, *seen);
                    let frame = match ready!(this.inner.as_mut().poll_frame(cx)) {
                        Some(Ok(frame)) => frame,
                        Some(Err(error)) => return Poll::Ready(Some(Err(error))),
                        None => {
                            *this.ended = true;
                            *this.stage = Stage::Admitted;
                            continue;
                        }
                    };
                    let Some(data) = frame.data_ref() else {
                        // Trailers before a whole prefix: there is no message to count.
                        this.read.push_back(frame);
                        *this.stage = Stage::Admitted;
                        continue;
                    };
                    let mut data = data.clone();
                    while seen < GRPC_PREFIX_BYTES && data.has_remaining() {
                        prefix[seen] = data.get_u8();
                        seen += 1;
                    }
                    this.read.push_back(frame);
                    *this.stage = if seen < GRPC_PREFIX_BYTES {
                        Stage::Prefix { prefix, seen }
                    } else {
                        let message_bytes = u32::from_be_bytes([prefix[1], prefix[2], prefix[3], prefix[4]]);
                        let cost = this.budget.cost(message_bytes);
                        match this.budget.free.clone().try_acquire_many_owned(cost) {
                            Ok(permit) => {
                                *this.share.lock().unwrap_or_else(|poisoned| poisoned.into_inner()) = Some(permit);
                                Stage::Admitted
                            }
                            Err(_) => Stage::Waiting(Box::pin(tokio::time::timeout(
                                ADMISSION_WAIT,
                                this.budget.free.clone().acquire_many_owned(cost),
                            ))),
                        }
                    };
                }
            }
        }
    }

    fn is_end_stream(&self) -> bool {
        matches!(self.stage, Stage::Admitted) && self.read.is_empty() && (self.ended || self.inner.is_end_stream())
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use std::convert::Infallible;

    use http_body_util::BodyExt;
    use tokio::task::JoinHandle;

    use super::*;

    /// A service that reads its request body whole, then answers once `answer` lets it,
    /// reporting the bytes it read (or the error that ended the body) on `read`.
    #[derive(Clone)]
    struct ReadsThenWaits {
        read: tokio::sync::mpsc::UnboundedSender<Result<usize, tonic::Status>>,
        answer: Arc<tokio::sync::Notify>,
    }

    impl Service<http::Request<Body>> for ReadsThenWaits {
        type Response = http::Response<Body>;
        type Error = Infallible;
        type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Infallible>> + Send>>;

        fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
            Poll::Ready(Ok(()))
        }

        fn call(&mut self, request: http::Request<Body>) -> Self::Future {
            let (read, answer) = (self.read.clone(), self.answer.clone());
            Box::pin(async move {
                match request.into_body().collect().await {
                    Ok(body) => read.send(Ok(body.to_bytes().len())).unwrap(),
                    Err(status) => {
                        read.send(Err(status)).unwrap();
                        return Ok(http::Response::new(Body::empty()));
                    }
                }
                answer.notified().await;
                Ok(http::Response::new(Body::empty()))
            })
        }
    }

    /// A request to `path` whose body is one gRPC message of `message_bytes`, sent in 4 KiB
    /// frames.
    fn grpc_call(path: &str, message_bytes: usize) -> http::Request<Body> {
        let mut framed = vec![0u8];
        framed.extend_from_slice(&(message_bytes as u32).to_be_bytes());
        framed.resize(GRPC_PREFIX_BYTES + message_bytes, 7);
        let frames: Vec<Result<Frame<Bytes>, Infallible>> = framed
            .chunks(4096)
            .map(|chunk| Ok(Frame::data(Bytes::copy_from_slice(chunk))))
            .collect();
        let body = http_body_util::StreamBody::new(futures::stream::iter(frames));
        let mut request = http::Request::new(Body::new(body));
        *request.uri_mut() = http::Uri::try_from(path).unwrap();
        request
    }

    /// A put of `message_bytes`.
    fn grpc_request(message_bytes: usize) -> http::Request<Body> {
        grpc_call("/raftkv.v1.Kv/Put", message_bytes)
    }

    type Reads = tokio::sync::mpsc::UnboundedReceiver<Result<usize, tonic::Status>>;

    /// Lets the service answer one call, and waits for `call`'s answer.
    async fn answered(service: &ReadsThenWaits, call: JoinHandle<Result<http::Response<Body>, Infallible>>) {
        service.answer.notify_one();
        call.await.unwrap().unwrap();
    }

    /// What the service read: a body's length (it fails on the status that ended a body).
    async fn next_read(reads: &mut Reads) -> usize {
        reads
            .recv()
            .await
            .expect("the service is gone")
            .expect("a body read whole")
    }

    fn setup(limit: usize) -> (RequestBytes, ReadsThenWaits, Reads) {
        let (read, reads) = tokio::sync::mpsc::unbounded_channel();
        let service = ReadsThenWaits {
            read,
            answer: Arc::new(tokio::sync::Notify::new()),
        };
        (RequestBytes::new(limit), service, reads)
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_that_does_not_fit_is_read_only_once_an_earlier_one_is_answered() {
        let (budget, service, mut reads) = setup(100_000);
        let mut guarded = budget.guard(service.clone());
        let first = tokio::spawn(guarded.call(grpc_request(60_000)));
        assert_eq!(next_read(&mut reads).await, 60_005);
        assert_eq!(budget.held(), 60_005);

        let second = tokio::spawn(guarded.call(grpc_request(60_000)));
        // The second waits, unread, while the first holds its share.
        let waited = tokio::time::timeout(ADMISSION_WAIT / 2, reads.recv()).await;
        assert!(
            waited.is_err(),
            "the second request was read while the first held the budget"
        );

        answered(&service, first).await;
        assert_eq!(next_read(&mut reads).await, 60_005);
        assert_eq!(budget.held(), 60_005);
        answered(&service, second).await;
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn requests_that_fit_together_are_read_at_once() {
        let (budget, service, mut reads) = setup(1 << 20);
        let mut guarded = budget.guard(service.clone());
        let calls: Vec<_> = (0..10)
            .map(|_| tokio::spawn(guarded.call(grpc_request(50_000))))
            .collect();
        for _ in 0..10 {
            assert_eq!(next_read(&mut reads).await, 50_005);
        }
        assert_eq!(budget.held(), 500_050);
        for call in calls {
            answered(&service, call).await;
        }
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_request_larger_than_the_budget_takes_all_of_it_and_is_served() {
        let (budget, service, mut reads) = setup(10_000);
        let mut guarded = budget.guard(service.clone());
        let call = tokio::spawn(guarded.call(grpc_request(50_000)));
        assert_eq!(next_read(&mut reads).await, 50_005);
        assert_eq!(budget.held(), 10_000);
        answered(&service, call).await;
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn a_call_dropped_before_its_answer_gives_its_share_back() {
        let (budget, service, mut reads) = setup(100_000);
        let mut guarded = budget.guard(service);
        let call = tokio::spawn(guarded.call(grpc_request(60_000)));
        assert_eq!(next_read(&mut reads).await, 60_005);
        assert_eq!(budget.held(), 60_005);
        call.abort();
        let _ = call.await;
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn an_empty_body_passes() {
        let (budget, service, mut reads) = setup(100);
        let mut guarded = budget.guard(service.clone());
        let call = tokio::spawn(guarded.call(http::Request::new(Body::empty())));
        assert_eq!(next_read(&mut reads).await, 0);
        answered(&service, call).await;
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test(start_paused = true)]
    async fn a_request_without_room_for_longer_than_the_wait_is_answered_busy_unread() {
        let (budget, service, mut reads) = setup(100_000);
        let mut guarded = budget.guard(service.clone());
        let first = tokio::spawn(guarded.call(grpc_request(60_000)));
        assert_eq!(next_read(&mut reads).await, 60_005);

        let started = tokio::time::Instant::now();
        let second = tokio::spawn(guarded.call(grpc_request(60_000)));
        let status = reads.recv().await.unwrap().expect_err("the second request was read");
        assert_eq!(status.code(), tonic::Code::Unavailable, "{status:?}");
        assert!(status.message().contains("busy"), "{status:?}");
        assert!(started.elapsed() >= ADMISSION_WAIT);
        assert_eq!(budget.refused(), 1);
        second.await.unwrap().unwrap();
        assert_eq!(budget.held(), 60_005, "the refused request took a share");

        answered(&service, first).await;
        assert_eq!(budget.held(), 0);
    }

    #[tokio::test]
    async fn gets_and_scans_are_not_counted() {
        let (budget, service, mut reads) = setup(10_000);
        let mut guarded = budget.guard(service.clone());
        let put = tokio::spawn(guarded.call(grpc_request(50_000)));
        assert_eq!(next_read(&mut reads).await, 50_005);
        assert_eq!(budget.held(), 10_000);
        let get = tokio::spawn(guarded.call(grpc_call("/raftkv.v1.Kv/Get", 100)));
        let scan = tokio::spawn(guarded.call(grpc_call("/raftkv.v1.Kv/Scan", 100)));
        assert_eq!(next_read(&mut reads).await, 105);
        assert_eq!(next_read(&mut reads).await, 105);
        for call in [put, get, scan] {
            answered(&service, call).await;
        }
        assert_eq!(budget.held(), 0);
    }
}
