//! The one error type of the client library: why a call failed, sorted by what the caller can
//! do about it, made from the gRPC status the call ended with ([`Error::from_status`]) as one
//! readable line.

use std::borrow::Borrow;

use tonic::{Code, Status};

use crate::limits::LimitError;
use crate::wire::{is_timeout, leader_hint, source_chain, tls_failure, LeaderHint};

/// Why a call failed, by what the caller can do about it.
#[derive(Debug, PartialEq, Eq, thiserror::Error)]
pub enum Error {
    /// Get of a key that does not exist (gRPC NOT_FOUND).
    #[error("key not found")]
    NotFound,
    /// The request is malformed: empty or oversized key or value, bad address
    /// (gRPC INVALID_ARGUMENT). Retrying cannot help.
    #[error("invalid argument: {0}")]
    InvalidArgument(String),
    /// The cluster could not serve the request (gRPC UNAVAILABLE), with the leader when known.
    #[error("unavailable: {message}")]
    Unavailable {
        /// What went wrong, one line.
        message: String,
        /// Who leads, when the answering node said so.
        leader: Option<LeaderHint>,
    },
    /// The deadline passed (gRPC DEADLINE_EXCEEDED). For a write the outcome is unknown.
    #[error("timed out: {0}")]
    Timeout(String),
    /// TLS refused the connection: a certificate was refused (or missing), or only one side
    /// speaks TLS. The server handled nothing; retrying cannot help.
    #[error("TLS: {0}")]
    Tls(String),
    /// Any other failure, as one line.
    #[error("{0}")]
    Other(String),
}

impl Error {
    /// Maps a gRPC status to the error a caller acts on. Accepts a `Status` or a `&Status`.
    pub fn from_status(status: impl Borrow<Status>) -> Error {
        let status = status.borrow();
        if is_timeout(status) {
            return Error::Timeout(describe(status));
        }
        if let Some(why) = tls_failure(status) {
            return Error::Tls(why);
        }
        match status.code() {
            Code::NotFound => Error::NotFound,
            Code::InvalidArgument => Error::InvalidArgument(describe(status)),
            Code::Unavailable => Error::Unavailable {
                message: describe(status),
                leader: leader_hint(status),
            },
            code => Error::Other(format!("{}: {}", code.description(), describe(status))),
        }
    }
}

impl From<Status> for Error {
    fn from(status: Status) -> Error {
        Error::from_status(status)
    }
}

/// A key or value over the limits is refused before anything is sent, in the words the node
/// would use.
impl From<LimitError> for Error {
    fn from(error: LimitError) -> Error {
        Error::InvalidArgument(error.to_string())
    }
}

/// The status's message on one line, with the transport's underlying causes appended
/// (tonic's own message for a refused connection is just "tcp connect error").
fn describe(status: &Status) -> String {
    let mut text = status.message().to_string();
    if text.is_empty() {
        text = status.code().description().to_string();
    }
    for cause in source_chain(status) {
        let cause = cause.to_string();
        if !cause.is_empty() && !text.contains(&cause) {
            text.push_str(": ");
            text.push_str(&cause);
        }
    }
    one_line(&text)
}

fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::wire::unavailable;

    #[test]
    fn status_codes_map_to_the_errors_callers_act_on() {
        assert!(matches!(
            Error::from_status(Status::not_found("no such key")),
            Error::NotFound
        ));
        match Error::from_status(Status::invalid_argument("key is empty")) {
            Error::InvalidArgument(message) => assert_eq!(message, "key is empty"),
            other => panic!("{other:?}"),
        }
        let leader = LeaderHint {
            id: 1,
            address: "127.0.0.1:7001".to_string(),
        };
        match Error::from(unavailable("not the leader", Some(&leader))) {
            Error::Unavailable {
                message,
                leader: Some(got),
            } => {
                assert_eq!(message, "not the leader");
                assert_eq!(got, leader);
            }
            other => panic!("{other:?}"),
        }
        let late = Status::deadline_exceeded("late");
        assert!(
            matches!(Error::from_status(&late), Error::Timeout(_)),
            "a &Status maps too"
        );
        assert_eq!(late.code(), Code::DeadlineExceeded);
        assert!(matches!(
            Error::from_status(Status::cancelled("Timeout expired")),
            Error::Timeout(_)
        ));
        assert!(matches!(
            Error::from_status(Status::cancelled("client went away")),
            Error::Other(_)
        ));
        match Error::from_status(Status::internal("disk on fire\nline two")) {
            Error::Other(message) => assert_eq!(message, "Internal error: disk on fire line two"),
            other => panic!("{other:?}"),
        }
    }

    #[test]
    fn error_messages_are_one_readable_line() {
        let error = Error::from_status(Status::unavailable("no leader\nyet"));
        assert_eq!(error.to_string(), "unavailable: no leader yet");
        assert_eq!(Error::NotFound.to_string(), "key not found");
    }
}
