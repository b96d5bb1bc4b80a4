//! The limits every gRPC server of raftkv (the node's and the router's) puts on the clients it
//! serves, so that a hostile or broken client (garbage bytes, thousands of connections, a
//! request trickled a byte at a time) costs the others nothing, and so that many honest ones
//! cannot make it hold more memory than it has: the numbers, and the four pieces tonic does not
//! have, connections accepted on a low-priority thread of their own ([`accept`]), a connection
//! budget ([`connection_budget`]) with the kernel's help against a host that connects in a
//! loop ([`shun`]), a deadline on a frame that stops arriving halfway
//! ([`stalled_frame`]) and requests read only when the server has room for them ([`admission`]).
//!
//! The node and the router serve the same Kv and Cluster services, so their message size
//! limits are here too (the Raft service's is the node's own, `MAX_RAFT_MESSAGE_BYTES`, and
//! KvBatch's is in [`crate::batch`]).

pub mod accept;
pub mod admission;
pub mod connection_budget;
mod services;
pub mod shun;
pub mod stalled_frame;

use std::time::Duration;

use tonic::transport::Server;

pub use accept::{guarded_incoming, GuardedConnection};
pub use admission::{RequestBytes, REQUEST_BYTES_IN_FLIGHT};
pub use connection_budget::{BudgetCounts, ConnectionBudget};
pub use services::{cluster_server, kv_batch_server, kv_server};

/// The largest Kv request or answer: a compare-and-swap carries a key and two values at their
/// limits (2 MiB and a little), a scan answer stops at 3 MiB; 4 MiB leaves room for the framing.
pub const MAX_KV_MESSAGE_BYTES: usize = 4 << 20;

/// The largest Cluster request or answer: a status or a leader transfer, a few lines per member.
pub const MAX_CLUSTER_MESSAGE_BYTES: usize = 1 << 20;

/// HTTP/2 streams (calls in flight) one connection may have open at once. A client library
/// multiplexes its calls over one connection, so this bounds what one connection can make the
/// server hold; the router's forwarding and a pipelined Raft stream stay far below it.
pub const MAX_CONCURRENT_STREAMS_PER_CONNECTION: u32 = 1024;

/// The HTTP/2 flow control window of each stream (call) a server receives: how much of a
/// request its sender may send before the server has read any of it. A call waiting for
/// admission ([`admission`]) holds at most this much of the server's memory, unread.
pub const STREAM_WINDOW_BYTES: u32 = 128 << 10;

/// The flow control window of a whole connection: room for every stream it may have open at
/// once to hold a full [`STREAM_WINDOW_BYTES`]. Smaller, and calls waiting for admission on a
/// connection could take all of it with their unread bytes, so that the calls admitted on the
/// same connection could not receive the rest of their requests: they would never end and give
/// their room back. It bounds no memory by itself: a stream holds at most its own window.
pub const CONNECTION_WINDOW_BYTES: u32 = STREAM_WINDOW_BYTES * MAX_CONCURRENT_STREAMS_PER_CONNECTION;

/// Connections from one client address at once. One misbehaving host cannot take the whole
/// process budget ([`MAX_CLIENT_CONNECTIONS`]); a client library needs one connection per
/// server, so honest hosts stay far below it.
pub const MAX_CONNECTIONS_PER_CLIENT_ADDRESS: usize = 256;

/// New connections one client address may open per second, on average: past it (a host that
/// connects in a loop, sending garbage or nothing) a new connection is closed as soon as it is
/// accepted, before any TLS or HTTP/2 work. A client library keeps its connections open, so
/// honest hosts stay far below it.
pub const NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC: u32 = 128;

/// New connections one client address may open at once beyond that rate (a client starting
/// its connections to every server, a benchmark opening its pool).
pub const NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST: u32 = 256;

/// Client connections one process serves at once (each costs a file descriptor and a task).
/// Beyond it a new connection is closed as soon as it is accepted.
pub const MAX_CLIENT_CONNECTIONS: usize = 4096;

/// Connections from the cluster's own members at once (node to node, a budget of their own so
/// that clients can never starve Raft of connections).
pub const MAX_MEMBER_CONNECTIONS: usize = 4096;

/// A frame (an HTTP/2 frame, or a TLS record under TLS) that has begun to arrive must arrive
/// whole within this, and a new connection must begin within it: a peer that trickles a
/// request (slowloris) or opens a connection and sends nothing loses the connection. 16 KiB,
/// the largest frame a client may send us, in this time is a link slower than 2 KB/s.
pub const FRAME_STALL_TIMEOUT: Duration = Duration::from_secs(10);

/// The longest a unary call may take from its headers to its answer (a client's own deadline,
/// when shorter, wins): a request whose body is sent as many tiny frames, each on time, still
/// ends. Far above any honest unary call (a node's server allows snapshot uploads more:
/// [`NODE_REQUEST_TIMEOUT`]).
pub const REQUEST_TIMEOUT: Duration = Duration::from_secs(60);

/// [`REQUEST_TIMEOUT`] for a node's server, which also takes snapshot uploads from its leader:
/// one call whose time grows with the data (the leader gives it 10 s plus the size at 4 MiB/s,
/// about 70 min for 16 GB), and which tonic's server-wide timeout would cut at a fixed time.
/// A trickling peer is still bounded by [`FRAME_STALL_TIMEOUT`] and the connection budget.
pub const NODE_REQUEST_TIMEOUT: Duration = Duration::from_secs(6 * 60 * 60);

/// How often the server pings an idle HTTP/2 connection, and how long it waits for the answer
/// ([`HTTP2_KEEPALIVE_TIMEOUT`]) before it closes it: a peer that vanished without a FIN (a
/// crashed host, a dropped NAT mapping) is reaped instead of holding a connection forever.
pub const HTTP2_KEEPALIVE_INTERVAL: Duration = Duration::from_secs(10);

/// See [`HTTP2_KEEPALIVE_INTERVAL`].
pub const HTTP2_KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(20);

/// TCP keepalive on accepted connections: the kernel's own probe, for a connection whose
/// HTTP/2 layer never started (it is closed by [`FRAME_STALL_TIMEOUT`] too) and as a second line.
pub const TCP_KEEPALIVE_IDLE: Duration = Duration::from_secs(30);

/// The largest header block a client may send (names and values together). Our calls send a
/// few short headers; the default (16 MiB in hyper) would let one request make us buffer that much.
pub const MAX_HEADER_LIST_BYTES: u32 = 64 << 10;

/// Applies the limits that are the same for every raftkv gRPC server to its builder.
pub fn with_limits<L>(builder: Server<L>) -> Server<L> {
    builder
        .tcp_nodelay(true)
        .max_concurrent_streams(Some(MAX_CONCURRENT_STREAMS_PER_CONNECTION))
        .initial_stream_window_size(STREAM_WINDOW_BYTES)
        .initial_connection_window_size(CONNECTION_WINDOW_BYTES)
        .http2_keepalive_interval(Some(HTTP2_KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(HTTP2_KEEPALIVE_TIMEOUT))
        .http2_max_header_list_size(Some(MAX_HEADER_LIST_BYTES))
        .timeout(REQUEST_TIMEOUT)
}
