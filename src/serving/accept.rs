//! Where a server's connections come from: a thread of its own, at the lowest CPU priority,
//! accepts them, holds each to its budget ([`ConnectionBudget`]) and waits for its first bytes,
//! which must be an HTTP/2 preface or a TLS handshake record (anything else is closed there);
//! only then does the server's runtime, the one that answers requests, take the connection.
//!
//! Why a thread of its own: a host that connects in a loop (sending garbage, or nothing) costs
//! an accept and a close per connection even when its budget refuses every one, and a client
//! that trickles its first bytes costs a wake-up per byte. Done on the runtime that serves
//! requests, that work waited in line with them: one abusive host on the same two cores
//! doubled the other clients' p99 (BENCHMARKS.md, "A normal client beside an abusive one").
//! At the lowest priority (nice 19), it only gets CPU the served connections leave; and when a
//! flood outruns it, the kernel's accept queue fills and the flooding host waits in `connect`
//! instead of spending the CPU it shares with us.
//!
//! A host that goes on connecting long after its budget refuses it is shunned for a while
//! ([`super::shun`]): the kernel drops its connection requests, so that it costs neither of us
//! a connection.
//!
//! The price: under such a flood, or on a machine whose CPU is all taken, a new connection (from
//! anyone, a cluster member included) waits longer to be accepted. Connections already served
//! are not affected, and clients and members keep theirs open.

use std::io;
use std::mem::MaybeUninit;
use std::time::Duration;

use futures::Stream;
use tokio::io::Interest;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::connection_budget::{Admission, ConnectionBudget, Refusal};
use super::shun::{self, Shunned, SHUN_AFTER_REFUSALS_IN_A_SECOND, SHUN_FOR};
use super::stalled_frame::{StalledFrameGuard, TLS_HANDSHAKE_RECORD};
use super::{FRAME_STALL_TIMEOUT, TCP_KEEPALIVE_IDLE};

/// The accepting thread's nice value: the lowest priority an unprivileged process can give.
const ACCEPT_THREAD_NICE: libc::c_int = 19;

/// The accepting thread's name (`ps -L`, `top -H`).
pub const ACCEPT_THREAD_NAME: &str = "raftkv-accept";

/// How many bytes a connection must have sent before the server takes it: the HTTP/2 client
/// preface is 24 bytes, and a TLS ClientHello is longer. A client sends them at once.
const FIRST_BYTES: usize = 24;

/// The HTTP/2 client preface: how a plaintext connection of a gRPC client begins.
const HTTP2_PREFACE: &[u8; FIRST_BYTES] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// Connections ready for the server that it has not taken yet; past it, the accepting thread
/// waits (and the kernel's accept queue holds the rest).
const HANDOFF_QUEUE_LEN: usize = 64;

/// How long the accept loop pauses after a failed accept (out of file descriptors, say), so
/// that it does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// At most one warning about refused connections (and one about shunned addresses) per this
/// interval: a flood must not flood the log.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// An accepted connection within its budget (its place is given back when it is dropped),
/// closed if a frame stalls on it.
pub type GuardedConnection = StalledFrameGuard<TcpStream, Admission>;

impl Connected for GuardedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.get_ref().connect_info()
    }
}

/// A connection the accepting thread hands over: its own runtime's socket, as a std one.
struct Accepted {
    stream: std::net::TcpStream,
    admission: Admission,
}

/// The connections `listener` accepts, for `serve_with_incoming`, accepted on a thread of their
/// own (see the module's doc): with TCP_NODELAY and TCP keepalive set, each within `budget`
/// (the others are closed at once), each only once its first bytes arrived (one that sends
/// none within [`FRAME_STALL_TIMEOUT`] is closed), and guarded against stalled frames. The
/// thread stops, and closes the listener, once the stream is dropped.
pub fn guarded_incoming(
    listener: TcpListener,
    budget: ConnectionBudget,
) -> io::Result<impl Stream<Item = io::Result<GuardedConnection>> + Send + 'static> {
    guarded_incoming_timed(listener, budget, Instant::now)
}

/// What the accepting thread reads the time from: the clock, except in tests that must not
/// depend on how fast a starved thread runs.
type Clock = fn() -> Instant;

/// [`guarded_incoming`], with the time the budget and the shuns go by read from `clock`.
fn guarded_incoming_timed(
    listener: TcpListener,
    budget: ConnectionBudget,
    clock: Clock,
) -> io::Result<impl Stream<Item = io::Result<GuardedConnection>> + Send + 'static> {
    let listener = listener.into_std()?;
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build()?;
    let (handoff, mut taken) = mpsc::channel(HANDOFF_QUEUE_LEN);
    std::thread::Builder::new()
        .name(ACCEPT_THREAD_NAME.to_string())
        .spawn(move || {
            lower_this_threads_priority();
            runtime.block_on(accept_loop(listener, budget, handoff, clock));
        })?;
    Ok(futures::stream::poll_fn(move |cx| {
        taken.poll_recv(cx).map(|accepted| {
            accepted.map(|Accepted { stream, admission }| {
                // Registered with the runtime that polls this stream: the server's.
                let stream = TcpStream::from_std(stream)?;
                Ok(StalledFrameGuard::holding(stream, FRAME_STALL_TIMEOUT, admission))
            })
        })
    }))
}

/// Gives the calling thread the lowest priority (Linux: `setpriority` with a thread id sets
/// that thread's nice value alone). A failure only costs the priority, so it is only logged.
fn lower_this_threads_priority() {
    // SAFETY: plain system calls on this thread's own id; no memory is passed.
    let lowered = unsafe {
        let thread = libc::gettid() as libc::id_t;
        libc::setpriority(libc::PRIO_PROCESS as _, thread, ACCEPT_THREAD_NICE)
    };
    if lowered != 0 {
        tracing::warn!(error = %io::Error::last_os_error(), "cannot lower the priority of the thread that accepts connections");
    }
}

/// Accepts connections until the server stops taking them (`handoff` closed).
async fn accept_loop(
    listener: std::net::TcpListener,
    budget: ConnectionBudget,
    handoff: mpsc::Sender<Accepted>,
    clock: Clock,
) {
    let listener = match TcpListener::from_std(listener) {
        Ok(listener) => listener,
        Err(error) => {
            tracing::error!(%error, "cannot accept connections");
            return;
        }
    };
    let (mut refusals, mut shuns) = (Warnings::default(), Warnings::default());
    let mut shunned = Shunned::default();
    loop {
        let next_expiry = shunned.next_expiry();
        let accepted = tokio::select! {
            _ = handoff.closed() => return,
            _ = tokio::time::sleep_until(next_expiry.unwrap_or_else(Instant::now)), if next_expiry.is_some() => {
                shunned.expire(&listener, clock());
                continue;
            }
            accepted = listener.accept() => accepted,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(error) => {
                tracing::warn!(%error, "cannot accept a connection");
                tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                continue;
            }
        };
        let now = clock();
        let admission = match budget.admit(peer.ip(), now) {
            Ok(admission) => admission,
            Err(refusal) => {
                let loops = matches!(refusal, Refusal::TooManyNewConnections { refused_this_second }
                    if refused_this_second >= SHUN_AFTER_REFUSALS_IN_A_SECOND);
                if loops && shunned.shun(&listener, peer.ip(), now) {
                    budget.note_shun();
                    if let Some(so_far) = shuns.count(now) {
                        tracing::warn!(client = %peer.ip(), shunned_so_far = so_far, "dropping new connections from this address for {SHUN_FOR:?}: {refusal}");
                    }
                } else if let Some(so_far) = refusals.count(now) {
                    tracing::warn!(client = %peer.ip(), refused_so_far = so_far, "refused a connection: {refusal}");
                }
                continue;
            }
        };
        // It may have copied a filter that shuns other addresses (see `shun`).
        shun::clear_inherited_filter(&stream);
        // Nagle's algorithm would hold back small replies (trailers) until a delayed ACK.
        let _ = stream.set_nodelay(true);
        let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE_IDLE);
        let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
        let handoff = handoff.clone();
        tokio::spawn(async move {
            // A connection that closes, fails, stays silent or begins with something no client of
            // ours sends is dropped here, unseen by the server.
            if let Ok(Ok(Some(first))) = tokio::time::timeout(FRAME_STALL_TIMEOUT, first_bytes(&stream)).await {
                if begins_a_connection_we_serve(&first) {
                    if let Ok(stream) = stream.into_std() {
                        let _ = handoff.send(Accepted { stream, admission }).await;
                    }
                }
            }
        });
    }
}

/// Counts the events of one kind (refusals, shuns) and says when one may be logged: at most
/// once per [`REFUSAL_WARNING_INTERVAL`], so that a flood does not flood the log.
#[derive(Default)]
struct Warnings {
    so_far: u64,
    last: Option<Instant>,
}

impl Warnings {
    /// Counts one at `now`; the count so far if it may be logged.
    fn count(&mut self, now: Instant) -> Option<u64> {
        self.so_far += 1;
        if self
            .last
            .is_some_and(|at| now.saturating_duration_since(at) < REFUSAL_WARNING_INTERVAL)
        {
            return None;
        }
        self.last = Some(now);
        Some(self.so_far)
    }
}

/// Whether a connection's first bytes are those of a client of ours: the HTTP/2 preface
/// (plaintext) or a TLS handshake record. Either is taken whether the server serves TLS or not,
/// so that a client that speaks the wrong one gets the server's own answer (a TLS alert, a
/// closed connection) rather than a silent close here.
fn begins_a_connection_we_serve(first: &[u8; FIRST_BYTES]) -> bool {
    first == HTTP2_PREFACE || first[0] == TLS_HANDSHAKE_RECORD
}

/// The first [`FIRST_BYTES`] bytes of `stream` once they are all there, or None if its peer
/// closed it first. Only peeks: the server reads them.
async fn first_bytes(stream: &TcpStream) -> io::Result<Option<[u8; FIRST_BYTES]>> {
    let mut peeked = [MaybeUninit::<u8>::uninit(); FIRST_BYTES];
    loop {
        let ready = stream.ready(Interest::READABLE).await?;
        // Too few bytes yet counts as "would block": the next arrival wakes us again.
        let peek = || match socket2::SockRef::from(stream).peek(&mut peeked)? {
            0 => Ok(false),
            n if n < FIRST_BYTES => Err(io::ErrorKind::WouldBlock.into()),
            _ => Ok(true),
        };
        match stream.try_io(Interest::READABLE, peek) {
            // A peer that closed after a few bytes stays readable (its end of stream), so waiting
            // for more would spin: it will send no more.
            Err(error) if error.kind() == io::ErrorKind::WouldBlock && ready.is_read_closed() => return Ok(None),
            Err(error) if error.kind() == io::ErrorKind::WouldBlock => continue,
            Err(error) => return Err(error),
            Ok(false) => return Ok(None),
            Ok(true) => break,
        }
    }
    // They are there: this peek returns at once, all of them (into bytes we can read).
    let mut first = [0u8; FIRST_BYTES];
    let peeked = stream.peek(&mut first).await?;
    Ok((peeked == FIRST_BYTES).then_some(first))
}

#[cfg(test)]
mod tests {
    use std::io::Write;
    use std::net::IpAddr;

    use futures::StreamExt;

    use super::*;

    const PREFACE: &[u8; FIRST_BYTES] = HTTP2_PREFACE;

    async fn incoming() -> (std::net::SocketAddr, impl Stream<Item = io::Result<GuardedConnection>>) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        (
            address,
            guarded_incoming(listener, ConnectionBudget::clients_only()).unwrap(),
        )
    }

    async fn next_peer(connections: &mut (impl Stream<Item = io::Result<GuardedConnection>> + Unpin)) -> u16 {
        let connection = tokio::time::timeout(Duration::from_secs(10), connections.next())
            .await
            .expect("a connection within 10 s")
            .expect("the stream goes on")
            .expect("a connection, not an error");
        connection.get_ref().peer_addr().unwrap().port()
    }

    #[tokio::test]
    async fn a_connection_reaches_the_server_once_its_first_bytes_arrived() {
        let (address, connections) = incoming().await;
        let mut connections = Box::pin(connections);
        // The first connection sends all but the preface's last byte; the second all of it.
        let mut slow = std::net::TcpStream::connect(address).unwrap();
        slow.write_all(&PREFACE[..FIRST_BYTES - 1]).unwrap();
        let mut prompt = std::net::TcpStream::connect(address).unwrap();
        prompt.write_all(PREFACE).unwrap();
        assert_eq!(
            next_peer(&mut connections).await,
            prompt.local_addr().unwrap().port(),
            "a connection whose first bytes are not all there waits; the next one does not wait for it"
        );
        slow.write_all(&PREFACE[FIRST_BYTES - 1..]).unwrap();
        assert_eq!(next_peer(&mut connections).await, slow.local_addr().unwrap().port());
    }

    #[tokio::test]
    async fn a_connection_that_begins_with_garbage_never_reaches_the_server() {
        let (address, connections) = incoming().await;
        let mut connections = Box::pin(connections);
        let mut garbage = std::net::TcpStream::connect(address).unwrap();
        garbage.write_all(&[7u8; 4096]).unwrap();
        let mut tls = std::net::TcpStream::connect(address).unwrap();
        let mut hello = [0u8; FIRST_BYTES];
        hello[0] = TLS_HANDSHAKE_RECORD;
        tls.write_all(&hello).unwrap();
        let mut plain = std::net::TcpStream::connect(address).unwrap();
        plain.write_all(PREFACE).unwrap();
        let mut reached = vec![next_peer(&mut connections).await, next_peer(&mut connections).await];
        reached.sort();
        let mut expected = vec![tls.local_addr().unwrap().port(), plain.local_addr().unwrap().port()];
        expected.sort();
        assert_eq!(reached, expected, "the TLS and HTTP/2 connections, not the garbage");
        // The garbage connection is closed: reading it ends (or is reset) instead of waiting.
        garbage.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 16];
        match std::io::Read::read(&mut garbage, &mut buf) {
            Ok(n) => assert_eq!(n, 0, "closed without an answer"),
            Err(error) => assert_eq!(error.kind(), io::ErrorKind::ConnectionReset, "{error}"),
        }
    }

    /// A clock on which each reading is a microsecond after the last: however slowly the
    /// accepting thread runs (a busy machine gives a nice-19 thread little), a loop of
    /// connections is as fast as it can be.
    fn fast_clock() -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        static READINGS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
        let readings = READINGS.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        *START.get_or_init(Instant::now) + Duration::from_micros(readings)
    }

    #[tokio::test]
    async fn a_host_that_connects_in_a_loop_is_shunned_and_another_still_gets_in() {
        use super::super::shun::testing::{request, Request};
        use super::super::{shun::SHUN_AFTER_REFUSALS_IN_A_SECOND, NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST};
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        let budget = ConnectionBudget::clients_only();
        let connections = guarded_incoming_timed(listener, budget.clone(), fast_clock).unwrap();
        let mut connections = Box::pin(connections);
        let host = |n: u8| IpAddr::from([127, 0, 0, n]);
        // Connects, sends garbage and waits for the server to close the connection (refused,
        // or taken and found to be garbage), over and over, until a connection request is
        // dropped: its burst is taken, then it is refused until it is shunned.
        let shunned_after = NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST + SHUN_AFTER_REFUSALS_IN_A_SECOND;
        let mut attempts = 0;
        while let Request::Made(mut stream) = request(host(2), address).await {
            let _ = stream.write_all(&[7u8; 512]);
            stream.set_read_timeout(Some(Duration::from_secs(30))).unwrap();
            let closed = std::io::Read::read(&mut stream, &mut [0u8; 16]);
            assert!(
                matches!(closed, Ok(0)) || closed.is_err_and(|e| e.kind() == io::ErrorKind::ConnectionReset),
                "the server neither refused nor closed connection {attempts} within 30 s"
            );
            attempts += 1;
            assert!(
                attempts <= shunned_after,
                "{attempts} connections in a loop, and it is still let in"
            );
        }
        assert_eq!(
            attempts, shunned_after,
            "taken for its burst, then refused until shunned"
        );
        // The shun is counted (for the metrics) once the filter is set.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while budget.counts().shuns == 0 {
            assert!(std::time::Instant::now() < deadline, "the shun was not counted");
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
        let counts = budget.counts();
        let expected = (1, u64::from(SHUN_AFTER_REFUSALS_IN_A_SECOND));
        assert_eq!((counts.shuns, counts.refused_too_fast), expected);
        // Another host connects and reaches the server.
        let Request::Made(mut other) = request(host(3), address).await else {
            panic!("another host was dropped too");
        };
        other.write_all(PREFACE).unwrap();
        assert_eq!(next_peer(&mut connections).await, other.local_addr().unwrap().port());
    }

    #[test]
    fn a_peer_that_closes_after_a_few_bytes_is_given_up_not_waited_for() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let mut peer = std::net::TcpStream::connect(listener.local_addr().unwrap()).unwrap();
        let (stream, _) = listener.accept().unwrap();
        stream.set_nonblocking(true).unwrap();
        peer.write_all(&PREFACE[..5]).unwrap();
        peer.shutdown(std::net::Shutdown::Write).unwrap();
        // On a thread of its own, so that a wait that spins fails the test rather than hang it.
        let (answer, answered) = std::sync::mpsc::channel();
        std::thread::spawn(move || {
            let runtime = tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .unwrap();
            let first = runtime.block_on(async { first_bytes(&TcpStream::from_std(stream)?).await });
            let _ = answer.send(first.unwrap());
        });
        let arrived = answered
            .recv_timeout(Duration::from_secs(10))
            .expect("an answer within 10 s, not a wait (or a spin) until the deadline");
        assert_eq!(arrived, None, "its first bytes never arrive");
    }

    #[tokio::test]
    async fn the_accepting_thread_runs_at_the_lowest_priority_and_stops_with_the_server() {
        let (address, connections) = incoming().await;
        let nice_of_accepting_threads = || {
            std::fs::read_dir("/proc/self/task")
                .unwrap()
                .filter_map(|task| {
                    let task = task.ok()?.path();
                    let name = std::fs::read_to_string(task.join("comm")).ok()?;
                    // Fields after the command's closing parenthesis: state is field 3, nice 19.
                    let stat = std::fs::read_to_string(task.join("stat")).ok()?;
                    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
                    (name.trim() == ACCEPT_THREAD_NAME).then(|| fields[16].parse::<i32>().unwrap())
                })
                .collect::<Vec<_>>()
        };
        // The thread lowers its priority once it runs.
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while !nice_of_accepting_threads().contains(&ACCEPT_THREAD_NICE) {
            assert!(
                std::time::Instant::now() < deadline,
                "no accepting thread at nice {ACCEPT_THREAD_NICE} within 10 s: {:?}",
                nice_of_accepting_threads()
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Once the server drops its connections, the thread closes the listener: the port is free.
        drop(connections);
        let deadline = std::time::Instant::now() + Duration::from_secs(10);
        while std::net::TcpListener::bind(address).is_err() {
            assert!(
                std::time::Instant::now() < deadline,
                "the listener is still open 10 s after the server stopped"
            );
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }
}
