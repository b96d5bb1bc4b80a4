//! The systems a benchmark can drive, behind one way of sending an [`Operation`].
//!
//! It exists so that the benchmark loop, the measurements and the report are the same code
//! whatever is measured: raftkv through the one client library ([`RaftkvTarget`], here), or
//! etcd v3 through the adapter of the `raftkv-bench` binary, which alone compiles etcd's client.

use std::future::Future;
use std::time::Duration;

use bytes::Bytes;
use clap::ValueEnum;
use raftkv::client::{self, Client, ClientOptions};
use raftkv::pb::Consistency;

use crate::error::OperationError;
use crate::workload::Operation;

/// Which system a benchmark drives.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A raftkv router or nodes, through raftkv's client library.
    Raftkv,
    /// An etcd v3 cluster (driven by the raftkv-bench binary only).
    Etcd,
}

/// One connection to the system under test, shared by the clients assigned to it (requests
/// multiplexed over one HTTP/2 channel per endpoint). Cloning it shares the connection.
pub trait Target: Clone + Send + Sync + 'static {
    /// Writes `value` under `key`, for client number `client`.
    fn put(&self, client: usize, key: Bytes, value: Bytes) -> impl Future<Output = Result<(), OperationError>> + Send;

    /// Reads the value of `key`, for client number `client`; a missing key is an error.
    fn get(
        &self,
        client: usize,
        key: Bytes,
        consistency: Consistency,
    ) -> impl Future<Output = Result<Bytes, OperationError>> + Send;
}

/// raftkv through its client library, which follows leader hints and retries as every raftkv
/// client does.
#[derive(Clone)]
pub struct RaftkvTarget {
    client: Client,
}

impl RaftkvTarget {
    /// A connection to `endpoints`; each request may take up to `timeout`. Connects lazily.
    /// `options`: whether the client library sends the requests that are ready together as one
    /// call, and whether it connects over TLS.
    pub fn open(
        endpoints: &[String],
        timeout: Duration,
        options: ClientOptions,
    ) -> Result<RaftkvTarget, client::Error> {
        Client::with_options(endpoints.to_vec(), timeout, options).map(|client| RaftkvTarget { client })
    }
}

// raftkv's client picks the server itself; only etcd's adapter spreads clients over endpoints.
impl Target for RaftkvTarget {
    async fn put(&self, _client: usize, key: Bytes, value: Bytes) -> Result<(), OperationError> {
        self.client.put(key, value).await?;
        Ok(())
    }

    async fn get(&self, _client: usize, key: Bytes, consistency: Consistency) -> Result<Bytes, OperationError> {
        Ok(self.client.get(key, consistency).await?.value)
    }
}

/// Sends `operation` for client number `client` and waits for the answer. A get must find a
/// value of `value_size` bytes.
pub(crate) async fn execute<T: Target>(
    target: &T,
    operation: Operation,
    client: usize,
    value_size: usize,
) -> Result<(), OperationError> {
    match operation {
        Operation::Put { key, value } => target.put(client, key, value).await,
        Operation::Get { key, consistency } => {
            let value = target.get(client, key, consistency).await?;
            check_value_size(value.len(), value_size)
        }
    }
}

fn check_value_size(found: usize, expected: usize) -> Result<(), OperationError> {
    if found == expected {
        Ok(())
    } else {
        Err(OperationError::WrongValueSize { found, expected })
    }
}

/// `text` on one line, so that error tallies and reports stay readable.
pub fn one_line(text: &str) -> String {
    text.split_whitespace().collect::<Vec<_>>().join(" ")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_get_that_finds_a_value_of_another_size_is_an_error() {
        assert!(check_value_size(256, 256).is_ok());
        let error = check_value_size(0, 256).unwrap_err();
        assert!(matches!(
            error,
            OperationError::WrongValueSize {
                found: 0,
                expected: 256
            }
        ));
        assert_eq!(error.to_string(), "read a value of 0 bytes, expected 256");
    }

    #[test]
    fn error_messages_are_one_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        let error = client::Error::Unavailable {
            message: "no leader".into(),
            leader: None,
        };
        assert_eq!(OperationError::from(error).to_string(), "unavailable: no leader");
    }
}
