//! The rules every raftkv process follows on the wire, whichever side it is on: the client
//! library, the router and the node each read and write them here, so that they cannot drift
//! apart.
//!
//! - [`leader_hint()`]/[`unavailable`]: how "not me, ask the leader there" travels in an
//!   UNAVAILABLE status;
//! - [`request_timeout`]: how long a request may take, read from its `grpc-timeout` header;
//! - [`is_timeout`], [`is_transport_error`], [`is_connect_error`]: which failures were made by
//!   this side's transport rather than answered by the server, and [`tls_failure`]: which of
//!   them are TLS refusing the connection;
//! - [`ClusterId`]: the id of a cluster, how it is derived and how a Raft call carries it;
//! - [`SHUTDOWN_GRACE`]: how long a stopping server lets in-flight requests finish;
//! - [`STATUS_PUSH_INTERVAL_MS`]: how often a `WatchStatus` stream speaks, changed or not;
//! - [`backup_stream`]: the chunk size and idle deadlines of a backup stream;
//! - [`codec`]: how every service's messages are encoded (prost's, sized first).

pub mod backup_stream;
mod cluster_id;
pub mod codec;
mod deadline;
mod leader_hint;
mod transport_error;

use std::time::Duration;

pub use self::cluster_id::{
    derive_cluster_id, ClusterId, NotAClusterId, CLUSTER_ID_METADATA, DEFAULT_CLUSTER_TOKEN, SENDER_ID_METADATA,
};
pub use self::deadline::{request_timeout, DEFAULT_REQUEST_TIMEOUT};
pub use self::leader_hint::{leader_hint, unavailable, LeaderHint, LEADER_ADDR_METADATA, LEADER_ID_METADATA};
pub(crate) use self::transport_error::source_chain;
pub use self::transport_error::{is_connect_error, is_timeout, is_transport_error, tls_failure};

/// How long a node or the router, told to stop, lets the requests in flight finish before it
/// stops anyway.
pub const SHUTDOWN_GRACE: Duration = Duration::from_secs(5);

/// A node's `WatchStatus` stream sends its status at least this often (ms), changed or not,
/// and while only its indexes move, at most this often. The pushes that change nothing are
/// what lets a subscriber (the router) tell a node gone silent (host down, link cut: no
/// connection is reset) from a quiet one, in a few of these intervals rather than at HTTP/2
/// keepalive's verdict.
pub const STATUS_PUSH_INTERVAL_MS: u64 = 100;
