//! Which failed calls were never answered by the server: tonic reports a refused or broken
//! connection, and an expired deadline, as a `Status` too, and the retry rules
//! ([`crate::client::retry`]) treat those differently from a status the server sent. Among
//! them, a TLS failure ([`tls_failure`]) is a misconfiguration that no retry mends.

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

/// What went wrong, in one line, when `status` is this side's TLS failing: the server refused
/// this client's certificate (or wanted one and got none), the server's certificate is not
/// one this client trusts (unknown CA, expired, not for this host), or the server does not
/// speak TLS at all ([`crate::tls::probe::describe`]). None for any other failure. A retry
/// cannot mend any of these.
pub fn tls_failure(status: &Status) -> Option<String> {
    if !is_transport_error(status) {
        return None;
    }
    tls_errors(status).next().map(crate::tls::probe::describe)
}

/// The rustls errors behind `status`. An `io::Error` hides the error it wraps from
/// `source()` (it returns that error's source instead), so each one is looked into too.
fn tls_errors(status: &Status) -> impl Iterator<Item = &rustls::Error> {
    source_chain(status).filter_map(|error| {
        error.downcast_ref::<rustls::Error>().or_else(|| {
            error
                .downcast_ref::<std::io::Error>()
                .and_then(|io| io.get_ref())
                .and_then(|inner| inner.downcast_ref::<rustls::Error>())
        })
    })
}

/// The transport errors behind `status`, outermost first.
pub(crate) fn source_chain(status: &Status) -> impl Iterator<Item = &(dyn StdError + 'static)> {
    std::iter::successors(status.source(), |error| (*error).source())
}
