//! How long a request may take, as the server reads it: the caller's deadline travels as the
//! gRPC `grpc-timeout` header (tonic's `Request::set_timeout` writes it), and a request
//! without one gets [`DEFAULT_REQUEST_TIMEOUT`]. The node and the router read it with
//! [`request_timeout`]; the router keeps its own margin on top (router/src/deadline.rs).

use std::time::Duration;

use tonic::metadata::MetadataMap;

/// The time a request that carries no `grpc-timeout` header may take.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

/// The time the request with `metadata` may take: its `grpc-timeout`, or
/// [`DEFAULT_REQUEST_TIMEOUT`] when it has none (or a malformed one).
pub fn request_timeout(metadata: &MetadataMap) -> Duration {
    metadata
        .get("grpc-timeout")
        .and_then(|value| value.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT)
}

/// Parses a `grpc-timeout` value: 1 to 8 digits and a unit, H M S m u n (hours, minutes,
/// seconds, milliseconds, microseconds, nanoseconds). None when malformed.
fn parse_grpc_timeout(value: &str) -> Option<Duration> {
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
}
