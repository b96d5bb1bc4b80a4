//! Which failed calls were never answered by the server: tonic reports a refused or broken
//! connection, and an expired deadline, as a `Status` too, and the retry rules
//! ([`crate::client::retry`]) treat those differently from a status the server sent.

use std::error::Error as StdError;

use tonic::{Code, Status};

/// Whether the request behind `status` certainly never reached the server: the connection
/// could not be opened. Such a request, even a write, is safe to send again.
pub fn is_connect_error(status: &Status) -> bool {
    source_chain(status).any(|error| error.is::<tonic::ConnectError>())
}

/// Whether `status` was made by this side's transport (connection refused, reset, HTTP/2
/// error, local timeout) rather than sent by the server as a gRPC status.
pub fn is_transport_error(status: &Status) -> bool {
    status.source().is_some()
}

/// Whether `status` says the call's deadline passed: DEADLINE_EXCEEDED, or the CANCELLED that
/// tonic makes when a `grpc-timeout` expires (on either side of the connection).
pub fn is_timeout(status: &Status) -> bool {
    match status.code() {
        Code::DeadlineExceeded => true,
        Code::Cancelled => {
            status.message() == "Timeout expired"
                || source_chain(status).any(|error| error.is::<tonic::TimeoutExpired>())
        }
        _ => false,
    }
}

/// The transport errors behind `status`, outermost first.
pub(crate) fn source_chain(status: &Status) -> impl Iterator<Item = &(dyn StdError + 'static)> {
    std::iter::successors(status.source(), |error| (*error).source())
}
