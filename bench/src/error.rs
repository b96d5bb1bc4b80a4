//! How a benchmark, or one of its operations, fails.
//!
//! It exists so that the two binaries that run the benchmark (`raftkv bench`, `raftkv-bench`)
//! can tell a usage error (endpoints the target refuses: exit code 2) from a failed run (exit
//! code 3), and so that an operation's failure keeps its kind until the report tallies it by
//! message.

use std::time::Duration;

use raftkv::client;

/// Why one operation failed. Its message, on one line, is what the report counts it under.
#[derive(Debug, thiserror::Error)]
pub enum OperationError {
    /// The call failed, as raftkv's client library names failures (an etcd status is mapped
    /// the same way, so both systems' errors read alike).
    #[error(transparent)]
    Call(#[from] client::Error),
    /// A get found a value of another size than the benchmark writes.
    #[error("read a value of {found} bytes, expected {expected}")]
    WrongValueSize {
        /// Bytes of the value found.
        found: usize,
        /// Bytes of the value the benchmark writes.
        expected: usize,
    },
    /// No answer came within the request timeout (a target that bounds its calls itself).
    #[error("timed out: no answer within {0:?}")]
    NoAnswer(Duration),
}

/// A key that a fill or a preload could not write: every attempt failed.
#[derive(Debug, thiserror::Error)]
#[error("writing key {key} failed {attempts} times in a row")]
pub struct KeyNotWritten {
    /// The key, as text (benchmark keys are).
    pub key: String,
    /// Attempts made, all failed.
    pub attempts: u32,
    /// Why the last attempt failed.
    #[source]
    pub error: OperationError,
}

/// Why a benchmark could not run to its report, or why its report is a failure.
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    /// The target refused the endpoints (not HOST:PORT, none given): a usage error.
    #[error(transparent)]
    Endpoints(client::Error),
    /// The load generator's runtime could not be built.
    #[error("cannot start the benchmark's runtime")]
    Runtime(#[source] std::io::Error),
    /// The load generator's thread could not be started.
    #[error("cannot start the benchmark's thread")]
    Thread(#[source] std::io::Error),
    /// The load generator's thread ended without a result (it panicked).
    #[error("the benchmark's thread stopped unexpectedly")]
    ThreadStopped,
    /// A client task panicked.
    #[error("a benchmark client failed")]
    Client(#[source] tokio::task::JoinError),
    /// A key of the preload could not be written: reads of missing keys would measure nothing.
    #[error("preloading the keyspace failed")]
    Preload(#[source] KeyNotWritten),
    /// A key of the fill could not be written; the fill stopped.
    #[error("the fill stopped")]
    Fill(#[source] KeyNotWritten),
    /// The run finished, but not one operation succeeded (its report is printed all the same).
    #[error("no operation succeeded ({errors} failed)")]
    NothingSucceeded {
        /// Operations that failed in the measured window.
        errors: u64,
    },
}
