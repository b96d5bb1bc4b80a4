//! How long the router may work on a request: the client's deadline from the gRPC
//! `grpc-timeout` header, or [`DEFAULT_REQUEST_TIMEOUT`] when the client sent none.
//!
//! The router must answer a little *before* that deadline: tonic's server enforces the same
//! header and would otherwise cut the request off with a bare CANCELLED ("Timeout
//! expired"), where the router's own answer says why (no leader, which node failed).

use std::time::Duration;

use tokio::time::Instant;
use tonic::metadata::MetadataMap;

/// The deadline of a request that carries no `grpc-timeout` header.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);
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
        let timeout = metadata
            .get("grpc-timeout")
            .and_then(|value| value.to_str().ok())
            .and_then(parse_grpc_timeout)
            .unwrap_or(DEFAULT_REQUEST_TIMEOUT)
            .min(MAX_REQUEST_TIMEOUT);
        let margin = (timeout / 10).min(MAX_ANSWER_MARGIN);
        RequestDeadline { timeout, answer_by: now + (timeout - margin) }
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

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit, H M S m u n (hours, minutes,
/// seconds, milliseconds, microseconds, nanoseconds). None when malformed.
pub fn parse_grpc_timeout(value: &str) -> Option<Duration> {
    let unit_at = value.len().checked_sub(1)?;
    let (digits, unit) = value.split_at(unit_at);
    if digits.is_empty() || digits.len() > 8 || !digits.bytes().all(|byte| byte.is_ascii_digit()) {
        return None;
    }
    let amount: u64 = digits.parse().ok()?;
    match unit {
        "H" => Some(Duration::from_secs(amount * 3600)),
        "M" => Some(Duration::from_secs(amount * 60)),
        "S" => Some(Duration::from_secs(amount)),
        "m" => Some(Duration::from_millis(amount)),
        "u" => Some(Duration::from_micros(amount)),
        "n" => Some(Duration::from_nanos(amount)),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeout_values_in_every_unit_are_understood() {
        assert_eq!(parse_grpc_timeout("2H"), Some(Duration::from_secs(7200)));
        assert_eq!(parse_grpc_timeout("3M"), Some(Duration::from_secs(180)));
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("1500m"), Some(Duration::from_millis(1500)));
        assert_eq!(parse_grpc_timeout("250u"), Some(Duration::from_micros(250)));
        assert_eq!(parse_grpc_timeout("99999999n"), Some(Duration::from_nanos(99_999_999)));
    }

    #[test]
    fn malformed_grpc_timeouts_are_refused() {
        for bad in ["", "S", "5", "5s", "-5S", "123456789S", "1.5S", " 5S"] {
            assert_eq!(parse_grpc_timeout(bad), None, "{bad:?}");
        }
    }

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
        assert_eq!(RequestDeadline::of(&MetadataMap::new(), now).timeout, DEFAULT_REQUEST_TIMEOUT);
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "5H".parse().unwrap());
        assert_eq!(RequestDeadline::of(&metadata, now).timeout, MAX_REQUEST_TIMEOUT);
    }

    #[test]
    fn short_deadlines_keep_a_tenth_back_for_the_answer() {
        let mut metadata = MetadataMap::new();
        metadata.insert("grpc-timeout", "100m".parse().unwrap());
        let now = Instant::now();
        assert_eq!(RequestDeadline::of(&metadata, now).answer_by, now + Duration::from_millis(90));
    }
}
