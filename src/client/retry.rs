//! The retry policy of everything that sends Kv requests to raftkv: the client library
//! (`Client::call`) and the router (`Forwarder::forward`). [`decide`] says what a failed
//! attempt means and where the request goes next; [`MAX_ATTEMPTS_PER_REQUEST`] and
//! [`Backoff`] bound how often and how fast. Each caller keeps only what is its own: the
//! client moves on to its next endpoint, the router tells its leader tracker.
//!
//! A request is safe to send again after any of these failures: a read changes nothing, and
//! every write carries a write id ([`super::WriteIds`]), so the state machine applies it at
//! most once and answers a retry with the first result.

use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use tonic::{Code, Status};

use crate::wire::{is_timeout, is_transport_error, leader_hint, tls_failure, LeaderHint};

/// Upper bound on the attempts of one request, whatever its deadline.
pub const MAX_ATTEMPTS_PER_REQUEST: usize = 200;
/// The first pause between two attempts of one request; it doubles (plus jitter) up to
/// [`RETRY_MAX_DELAY`].
pub const RETRY_MIN_DELAY: Duration = Duration::from_millis(10);
/// The longest pause between two attempts of one request.
pub const RETRY_MAX_DELAY: Duration = Duration::from_millis(500);

/// What a failed attempt means for the request, and where it goes next.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Retry {
    /// The deadline passed: stop, the caller reports a timeout.
    GiveUp,
    /// This side's transport failed (connection refused or broken, possibly after the server
    /// received the request): send it to another server.
    ServerUnreachable,
    /// ABORTED: a leader lost its leadership with the write in flight. Its outcome is decided
    /// by the next leader, which answers the retry (same write id) with the first result: send
    /// it to another server. (ABORTED carries no leader hint: only UNAVAILABLE does.)
    LeadershipLost,
    /// UNAVAILABLE naming another server as the leader: send it there at once.
    FollowHint(LeaderHint),
    /// UNAVAILABLE without a hint, or with one naming the server just tried (stale): the
    /// server refused before starting the request, so nothing was applied. Pause, then send
    /// it to the same place.
    SamePlace,
    /// Any other answer (NOT_FOUND, INVALID_ARGUMENT, ...) is final: hand it back unchanged.
    /// So is a TLS failure ([`crate::wire::tls_failure`]).
    Final,
}

/// Decides what the failed attempt that was sent to `tried` (HOST:PORT) and ended with
/// `status` means for its request.
pub fn decide(status: &Status, tried: &str) -> Retry {
    if is_timeout(status) {
        return Retry::GiveUp;
    }
    // A certificate refused, or TLS on one side only: every server of the cluster would
    // answer the same, and a misconfiguration is better reported at once than retried.
    if tls_failure(status).is_some() {
        return Retry::Final;
    }
    if is_transport_error(status) {
        return Retry::ServerUnreachable;
    }
    match status.code() {
        Code::Aborted => Retry::LeadershipLost,
        Code::Unavailable => match leader_hint(status) {
            Some(hint) if hint.address != tried => Retry::FollowHint(hint),
            _ => Retry::SamePlace,
        },
        _ => Retry::Final,
    }
}

/// The pauses between the attempts of one request: exponential from [`RETRY_MIN_DELAY`] to
/// [`RETRY_MAX_DELAY`], jittered so that many clients retrying at once do not arrive in step.
pub struct Backoff(ExponentialBackoff);

impl Backoff {
    /// The pauses of a new request.
    pub fn new() -> Backoff {
        Backoff(
            ExponentialBuilder::new()
                .with_min_delay(RETRY_MIN_DELAY)
                .with_max_delay(RETRY_MAX_DELAY)
                .with_factor(2.0)
                .with_jitter()
                .without_max_times()
                .build(),
        )
    }

    /// The pause before the next attempt.
    pub fn next_pause(&mut self) -> Duration {
        self.next().unwrap_or(RETRY_MAX_DELAY)
    }
}

/// The pauses one after the other; endless.
impl Iterator for Backoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        self.0.next()
    }
}

impl Default for Backoff {
    fn default() -> Backoff {
        Backoff::new()
    }
}

/// A request's timeout as the messages of a caller that gave up show it: to the millisecond,
/// e.g. "300ms" or "2s 500ms".
pub fn format_timeout(timeout: Duration) -> humantime::FormattedDuration {
    humantime::format_duration(Duration::from_millis(timeout.as_millis() as u64))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn backoff_pauses_grow_but_stay_bounded() {
        let pauses: Vec<Duration> = Backoff::new().take(20).collect();
        assert_eq!(pauses.len(), 20);
        assert!(pauses.iter().all(|pause| *pause <= RETRY_MAX_DELAY * 2), "{pauses:?}");
        assert!(pauses[0] < Duration::from_millis(100));
    }
}
