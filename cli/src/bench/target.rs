//! The systems `raftkv bench` can drive, behind one way of sending an [`Operation`].
//!
//! It exists so that the benchmark loop, the measurements and the report are the same code
//! whatever is measured: raftkv through the one client library, or etcd v3 through the
//! adapter in `etcd.rs` (built only with the `etcd` feature).

use std::time::Duration;

use clap::ValueEnum;
use raftkv::client::{self, Client};

use super::workload::Operation;

/// Which system a benchmark drives.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum TargetKind {
    /// A raftkv router or nodes, through raftkv's client library.
    Raftkv,
    /// An etcd v3 cluster (needs a raftkv built with `--features etcd`).
    Etcd,
}

/// The one-line reason `--target etcd` is refused by a build without the `etcd` feature.
#[cfg(not(feature = "etcd"))]
pub const ETCD_NOT_BUILT: &str = "--target etcd needs a raftkv built with the etcd feature: \
    cargo build --release -p raftkv-cli --features etcd";

/// One connection to the system under test, shared by the clients assigned to it: one
/// HTTP/2 channel per endpoint, requests multiplexed over it.
#[derive(Clone)]
pub enum Connection {
    /// raftkv's client library: it follows leader hints and retries as every raftkv client does.
    Raftkv(Client),
    /// etcd's KV API, one channel per endpoint.
    #[cfg(feature = "etcd")]
    Etcd(super::etcd::EtcdConnection),
}

impl Connection {
    /// A connection to `endpoints`; each request may take up to `timeout`. Connects lazily.
    /// `batched`: whether raftkv's client library batches the requests that are ready together
    /// (etcd's adapter never does).
    pub fn open(
        kind: TargetKind,
        endpoints: &[String],
        timeout: Duration,
        batched: bool,
    ) -> Result<Connection, String> {
        match kind {
            TargetKind::Raftkv => {
                let client = if batched {
                    Client::new(endpoints.to_vec(), timeout)
                } else {
                    Client::new_unbatched(endpoints.to_vec(), timeout)
                };
                client.map(Connection::Raftkv).map_err(|error| error.to_string())
            }
            #[cfg(feature = "etcd")]
            TargetKind::Etcd => super::etcd::EtcdConnection::new(endpoints, timeout).map(Connection::Etcd),
            #[cfg(not(feature = "etcd"))]
            TargetKind::Etcd => Err(ETCD_NOT_BUILT.to_string()),
        }
    }

    /// Sends `operation` for client number `client` and waits for the answer. A get must find
    /// a value of `value_size` bytes. The error is one line.
    // Only the etcd adapter spreads clients over endpoints; raftkv's client picks its own.
    #[cfg_attr(not(feature = "etcd"), allow(unused_variables))]
    pub async fn execute(&self, operation: Operation, client: usize, value_size: usize) -> Result<(), String> {
        let outcome = match self {
            Connection::Raftkv(raftkv) => match operation {
                Operation::Put { key, value } => raftkv.put(key, value).await.map(drop).map_err(describe),
                Operation::Get { key, consistency } => match raftkv.get(key, consistency).await {
                    Ok(response) => check_value_size(response.value.len(), value_size),
                    Err(error) => Err(describe(error)),
                },
            },
            #[cfg(feature = "etcd")]
            Connection::Etcd(etcd) => match operation {
                Operation::Put { key, value } => etcd.put(client, key, value).await,
                Operation::Get { key, consistency } => match etcd.get(client, key, consistency).await {
                    Ok(value) => check_value_size(value.len(), value_size),
                    Err(error) => Err(error),
                },
            },
        };
        outcome.map_err(|message| one_line(&message))
    }
}

/// The error message of a raftkv call (the leader hint, if any, is not interesting here).
fn describe(error: client::Error) -> String {
    match error {
        client::Error::Unavailable { message, .. } => format!("unavailable: {message}"),
        other => other.to_string(),
    }
}

fn check_value_size(found: usize, expected: usize) -> Result<(), String> {
    if found == expected {
        Ok(())
    } else {
        Err(format!("read a value of {found} bytes, expected {expected}"))
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
        assert_eq!(check_value_size(256, 256), Ok(()));
        assert_eq!(
            check_value_size(0, 256),
            Err("read a value of 0 bytes, expected 256".to_string())
        );
    }

    #[test]
    fn error_messages_are_one_line() {
        assert_eq!(one_line("a\n  b\tc"), "a b c");
        let error = client::Error::Unavailable {
            message: "no leader".into(),
            leader: None,
        };
        assert_eq!(describe(error), "unavailable: no leader");
    }

    #[cfg(not(feature = "etcd"))]
    #[test]
    fn etcd_is_refused_with_how_to_build_it_when_not_compiled_in() {
        let error = Connection::open(
            TargetKind::Etcd,
            &["127.0.0.1:2379".to_string()],
            Duration::from_secs(1),
            true,
        )
        .err()
        .expect("etcd is not compiled in");
        assert!(error.contains("--features etcd"), "{error}");
        assert!(!error.contains('\n'));
    }
}
