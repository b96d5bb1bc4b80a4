//! How long the router may work on a request: the client's deadline as every raftkv server
//! reads it ([`raftkv::wire::request_timeout`]: the `grpc-timeout` header, or
//! [`DEFAULT_REQUEST_TIMEOUT`](raftkv::wire::DEFAULT_REQUEST_TIMEOUT) when the client sent
//! none), capped, less a margin to answer in.
//!
//! The router must answer a little *before* that deadline: tonic's server enforces the same
//! header and would otherwise cut the request off with a bare CANCELLED ("Timeout
//! expired"), where the router's own answer says why (no leader, which node failed).

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// The longest a request is held, whatever deadline it asks for.
pub const MAX_REQUEST_TIMEOUT: Duration = Duration::from_secs(60);
/// Upper bound on the time kept back from a deadline to send the router's answer; it is a
/// tenth of the timeout for short ones.
pub const MAX_ANSWER_MARGIN: Duration = Duration::from_millis(50);

/// The client's timeout and the instant by which the router answers.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RequestDeadline {
    /// The timeout the client asked for (or the default), capped at [`MAX_REQUEST_TIMEOUT`].
    pub timeout: Duration,
    /// When the router stops retrying and answers: the deadline less a small margin.
    pub answer_by: Instant,
}

impl RequestDeadline {
    /// The deadline of a request that arrived `now` with `metadata`.
    pub fn of(metadata: &MetadataMap, now: Instant) -> RequestDeadline {
        let timeout = raftkv::wire::request_timeout(metadata).min(MAX_REQUEST_TIMEOUT);
        let margin = (timeout / 10).min(MAX_ANSWER_MARGIN);
        RequestDeadline {
            timeout,
            answer_by: now + (timeout - margin),
        }
    }

    /// Whether the time to answer has come.
    pub fn passed(&self) -> bool {
        Instant::now() >= self.answer_by
    }

    /// The time left until the answer is due (zero when it is).
    pub fn time_left(&self) -> Duration {
        self.answer_by.saturating_duration_since(Instant::now())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use raftkv::wire::DEFAULT_REQUEST_TIMEOUT;

    #[test]
    fn what_tonic_sends_is_what_the_router_reads() {
        let mut request = tonic::Request::new(());
        request.set_timeout(Duration::from_millis(2500));
        let now = Instant::now();
        let deadline = RequestDeadline::of(request.metadata(), now);
        assert_eq!(deadline.timeout, Duration::from_millis(2500));
        assert_eq!(deadline.answer_by, now + Duration::from_millis(2450));
    }

    #[test]
    fn no_header_means_the_default_timeout_and_huge_ones_are_capped() {
        let now = Instant::now();
        assert_eq!(
            RequestDeadline::of(&MetadataMap::new(), now).timeout,
            DEFAULT_REQUEST_TIMEOUT
        );
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "5H".parse().unwrap());
        assert_eq!(RequestDeadline::of(&metadata, now).timeout, MAX_REQUEST_TIMEOUT);
    }

    #[test]
    fn short_deadlines_keep_a_tenth_back_for_the_answer() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "100m".parse().unwrap());
        let now = Instant::now();
        assert_eq!(
            RequestDeadline::of(&metadata, now).answer_by,
            now + Duration::from_millis(90)
        );
    }
}
