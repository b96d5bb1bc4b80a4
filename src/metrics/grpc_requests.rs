//! `raftkv_requests_total{method,code}` and `raftkv_request_duration_seconds{method}` for every
//! call a gRPC server answers, as a tower layer in front of all its services, so no handler
//! has to remember to count.
//!
//! The code is the gRPC status code's name (`OK`, `Unavailable`, …): read from the response
//! headers when the call failed before sending a reply (trailers-only), else from the trailers
//! that end the reply. A call whose client went away before the trailers counts as `Canceled`.
//! The duration runs from the request's arrival to the reply's headers, which for a unary call
//! is the handler's whole work (for a stream, the time to open it).
//!
//! The hot path takes no lock and allocates nothing: the methods are known up front, a call's
//! method is found by comparing its path with them, and each (method, code) counter is looked
//! up in the registry once, the first time it is used, then kept in a `OnceLock`.

use std::pin::Pin;
use std::sync::{Arc, OnceLock};
use std::task::{Context, Poll};
use std::time::Instant;

use http_body::{Body, Frame, SizeHint};
use prometheus::{Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, Opts, Registry};

/// The method label of a call to a path not in the list given to [`RequestMetricsLayer::new`].
pub const OTHER_METHOD: &str = "other";
/// Upper bounds of the duration buckets, in seconds: 100 µs doubling up to about 13 s.
const DURATION_BUCKET_FIRST_SECONDS: f64 = 0.000_1;
const DURATION_BUCKET_COUNT: usize = 18;

/// gRPC status codes by number, named as Prometheus' gRPC exporters name them.
const CODE_NAMES: [&str; 17] = [
    "OK",
    "Canceled",
    "Unknown",
    "InvalidArgument",
    "DeadlineExceeded",
    "NotFound",
    "AlreadyExists",
    "PermissionDenied",
    "ResourceExhausted",
    "FailedPrecondition",
    "Aborted",
    "OutOfRange",
    "Unimplemented",
    "Internal",
    "Unavailable",
    "DataLoss",
    "Unauthenticated",
];
const CODE_CANCELED: usize = 1;
const CODE_UNKNOWN: usize = 2;
const CODE_INTERNAL: usize = 13;

/// The gRPC paths of raftkv's public API (`proto/raftkv.proto`), for [`RequestMetricsLayer::new`].
pub const PUBLIC_API_PATHS: &[&str] = &[
    "/raftkv.v1.Kv/Put",
    "/raftkv.v1.Kv/Get",
    "/raftkv.v1.Kv/Delete",
    "/raftkv.v1.Kv/CompareAndSwap",
    "/raftkv.v1.Kv/Scan",
    "/raftkv.v1.KvBatch/Batch",
    "/raftkv.v1.Cluster/Status",
    "/raftkv.v1.Cluster/WatchStatus",
    "/raftkv.v1.Cluster/TransferLeader",
];
/// The gRPC paths of the nodes' Raft traffic (`proto/raft.proto`).
pub const RAFT_PATHS: &[&str] = &[
    "/raftkv.raft.v1.Raft/AppendEntries",
    // One call per connection for as long as it lasts: counted when it ends.
    "/raftkv.raft.v1.Raft/AppendEntriesStream",
    "/raftkv.raft.v1.Raft/Vote",
    "/raftkv.raft.v1.Raft/PreVote",
    "/raftkv.raft.v1.Raft/InstallSnapshot",
    "/raftkv.raft.v1.Raft/ReadIndex",
    "/raftkv.raft.v1.Raft/TransferLeader",
];

/// The metrics of one method; the label says service and method (`Kv/Put`, `Raft/Vote`).
struct MethodMetrics {
    path: &'static str,
    label: String,
    by_code: [OnceLock<IntCounter>; CODE_NAMES.len()],
    duration: OnceLock<Histogram>,
}

struct Table {
    methods: Vec<MethodMetrics>,
    requests: IntCounterVec,
    durations: HistogramVec,
}

impl Table {
    fn method_of(&self, path: &str) -> usize {
        self.methods
            .iter()
            .position(|m| m.path == path)
            .unwrap_or(self.methods.len() - 1)
    }

    fn count(&self, method: usize, code: usize) {
        let m = &self.methods[method];
        m.by_code[code]
            .get_or_init(|| self.requests.with_label_values(&[m.label.as_str(), CODE_NAMES[code]]))
            .inc();
    }

    fn observe(&self, method: usize, started: Instant) {
        let m = &self.methods[method];
        m.duration
            .get_or_init(|| self.durations.with_label_values(&[m.label.as_str()]))
            .observe(started.elapsed().as_secs_f64());
    }
}

/// The label of `/raftkv.v1.Kv/Put`: `Kv/Put`.
fn method_label(path: &str) -> String {
    let path = path.trim_start_matches('/');
    let (service, method) = path.split_once('/').unwrap_or((path, ""));
    let service = service.rsplit('.').next().unwrap_or(service);
    format!("{service}/{method}")
}

/// A status code's index in [`CODE_NAMES`] from a `grpc-status` value (`Unknown` for a value
/// that is not a known code); `None` when there is none.
fn code_of(value: Option<&http::HeaderValue>) -> Option<usize> {
    let code = value?.to_str().ok().and_then(|text| text.parse::<usize>().ok());
    Some(code.filter(|code| *code < CODE_NAMES.len()).unwrap_or(CODE_UNKNOWN))
}

/// The tower layer; cheap to clone (one shared table).
#[derive(Clone)]
pub struct RequestMetricsLayer {
    table: Arc<Table>,
}

impl RequestMetricsLayer {
    /// Registers the two metrics in `registry`, for calls to `paths` (others count as
    /// [`OTHER_METHOD`]).
    pub fn new(registry: &Registry, paths: &[&'static str]) -> RequestMetricsLayer {
        let requests = IntCounterVec::new(
            Opts::new("requests_total", "gRPC calls answered, by method and gRPC status code.")
                .namespace(super::NAMESPACE),
            &["method", "code"],
        )
        .expect("a valid metric definition");
        let durations = HistogramVec::new(
            HistogramOpts::new(
                "request_duration_seconds",
                "Time from a gRPC call's arrival to its reply's headers, by method.",
            )
            .namespace(super::NAMESPACE)
            .buckets(
                prometheus::exponential_buckets(DURATION_BUCKET_FIRST_SECONDS, 2.0, DURATION_BUCKET_COUNT)
                    .expect("valid buckets"),
            ),
            &["method"],
        )
        .expect("a valid metric definition");
        super::must_register(registry, requests.clone());
        super::must_register(registry, durations.clone());
        let methods = paths
            .iter()
            .map(|path| (*path, method_label(path)))
            .chain([("", OTHER_METHOD.to_string())])
            .map(|(path, label)| MethodMetrics {
                path,
                label,
                by_code: Default::default(),
                duration: OnceLock::new(),
            })
            .collect();
        RequestMetricsLayer {
            table: Arc::new(Table {
                methods,
                requests,
                durations,
            }),
        }
    }
}

impl<S> tower_layer::Layer<S> for RequestMetricsLayer {
    type Service = RequestMetricsService<S>;

    fn layer(&self, inner: S) -> Self::Service {
        RequestMetricsService {
            inner,
            table: Arc::clone(&self.table),
        }
    }
}

/// A gRPC service whose calls are counted and timed.
#[derive(Clone)]
pub struct RequestMetricsService<S> {
    inner: S,
    table: Arc<Table>,
}

impl<S, ReqBody, ResBody> tower_service::Service<http::Request<ReqBody>> for RequestMetricsService<S>
where
    S: tower_service::Service<http::Request<ReqBody>, Response = http::Response<ResBody>>,
{
    type Response = http::Response<CountedBody<ResBody>>;
    type Error = S::Error;
    type Future = CountedCall<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: http::Request<ReqBody>) -> Self::Future {
        let method = self.table.method_of(request.uri().path());
        CountedCall {
            inner: self.inner.call(request),
            outcome: Some(Outcome {
                table: Arc::clone(&self.table),
                method,
            }),
            started: Instant::now(),
        }
    }
}

/// A call not yet counted; counted as `Canceled` if dropped before its code is known.
struct Outcome {
    table: Arc<Table>,
    method: usize,
}

impl Outcome {
    fn finish(self, code: usize) {
        self.table.count(self.method, code);
        std::mem::forget(self);
    }
}

impl Drop for Outcome {
    fn drop(&mut self) {
        self.table.count(self.method, CODE_CANCELED);
    }
}

pin_project_lite::pin_project! {
    /// The future of a counted call: times it, and hands the count to the reply's body.
    pub struct CountedCall<F> {
        #[pin]
        inner: F,
        outcome: Option<Outcome>,
        started: Instant,
    }
}

impl<F, ResBody, E> std::future::Future for CountedCall<F>
where
    F: std::future::Future<Output = Result<http::Response<ResBody>, E>>,
{
    type Output = Result<http::Response<CountedBody<ResBody>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let result = std::task::ready!(this.inner.poll(cx));
        let Some(outcome) = this.outcome.take() else {
            panic!("a counted call was polled after it completed");
        };
        outcome.table.observe(outcome.method, *this.started);
        Poll::Ready(match result {
            Ok(response) => {
                let outcome = match code_of(response.headers().get("grpc-status")) {
                    Some(code) => {
                        outcome.finish(code);
                        None
                    }
                    None => Some(outcome),
                };
                Ok(response.map(|inner| CountedBody { inner, outcome }))
            }
            Err(error) => {
                outcome.finish(CODE_INTERNAL);
                Err(error)
            }
        })
    }
}

pin_project_lite::pin_project! {
    /// A reply's body, which counts its call when the trailers with the status pass.
    pub struct CountedBody<B> {
        #[pin]
        inner: B,
        outcome: Option<Outcome>,
    }
}

impl<B: Body> Body for CountedBody<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        let this = self.project();
        let frame = std::task::ready!(this.inner.poll_frame(cx));
        match &frame {
            Some(Ok(frame)) => {
                if let Some(trailers) = frame.trailers_ref() {
                    if let Some(outcome) = this.outcome.take() {
                        outcome.finish(code_of(trailers.get("grpc-status")).unwrap_or(CODE_UNKNOWN));
                    }
                }
            }
            // The reply ended without a status: not a gRPC reply that can be trusted.
            Some(Err(_)) | None => {
                if let Some(outcome) = this.outcome.take() {
                    outcome.finish(CODE_UNKNOWN);
                }
            }
        }
        Poll::Ready(frame)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_method_is_labelled_by_its_service_and_name() {
        assert_eq!(method_label("/raftkv.v1.Kv/Put"), "Kv/Put");
        assert_eq!(
            method_label("/raftkv.raft.v1.Raft/TransferLeader"),
            "Raft/TransferLeader"
        );
    }

    #[test]
    fn status_codes_are_read_by_number_and_odd_ones_are_unknown() {
        let code = |text: &'static str| code_of(Some(&http::HeaderValue::from_static(text)));
        assert_eq!(code("0").map(|c| CODE_NAMES[c]), Some("OK"));
        assert_eq!(code("14").map(|c| CODE_NAMES[c]), Some("Unavailable"));
        assert_eq!(code("99").map(|c| CODE_NAMES[c]), Some("Unknown"));
        assert_eq!(code("x").map(|c| CODE_NAMES[c]), Some("Unknown"));
        assert_eq!(code_of(None), None);
    }

    #[test]
    fn calls_are_counted_by_method_and_code_once_each() {
        let registry = Registry::new();
        let layer = RequestMetricsLayer::new(&registry, PUBLIC_API_PATHS);
        let table = &layer.table;
        let put = table.method_of("/raftkv.v1.Kv/Put");
        Outcome {
            table: Arc::clone(table),
            method: put,
        }
        .finish(0);
        drop(Outcome {
            table: Arc::clone(table),
            method: put,
        });
        let other = table.method_of("/nope/Nope");
        Outcome {
            table: Arc::clone(table),
            method: other,
        }
        .finish(14);
        let count = |method: &str, code: &str| table.requests.with_label_values(&[method, code]).get();
        assert_eq!(count("Kv/Put", "OK"), 1);
        assert_eq!(count("Kv/Put", "Canceled"), 1);
        assert_eq!(count(OTHER_METHOD, "Unavailable"), 1);
    }
}
