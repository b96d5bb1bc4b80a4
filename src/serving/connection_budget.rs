//! How many connections a server holds, and from whom: tonic accepts every connection it is
//! offered, so the accepted-connection stream is wrapped here. A connection over its budget
//! is closed the moment it is accepted (the client sees the connection closed or reset, a
//! transport error its library reports as UNAVAILABLE and may retry); the connections already
//! held are not touched.
//!
//! Two budgets, so that clients can never starve Raft: connections from the cluster's members
//! (the caller says which addresses those are) count against [`MAX_MEMBER_CONNECTIONS`]; every
//! other connection against [`MAX_CLIENT_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_CLIENT_ADDRESS`]
//! for its source address.

use std::collections::HashMap;
use std::io;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tonic::transport::server::{Connected, TcpConnectInfo};

use super::stalled_frame::StalledFrameGuard;
use super::{
    FRAME_STALL_TIMEOUT, MAX_CLIENT_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT_ADDRESS, MAX_MEMBER_CONNECTIONS,
    TCP_KEEPALIVE_IDLE,
};

/// How long the accept loop pauses after a failed accept (out of file descriptors, say), so
/// that it does not spin while the condition lasts.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(50);

/// At most one warning about refused connections per this interval: a flood must not flood the log.
const REFUSAL_WARNING_INTERVAL: Duration = Duration::from_secs(10);

/// How many client connections each source address holds.
type ConnectionsByAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Tells whether an address belongs to one of the cluster's members.
pub type IsMember = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// The connection budgets of one server. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionBudget {
    members: Arc<Semaphore>,
    clients: Arc<Semaphore>,
    per_address: ConnectionsByAddress,
    max_per_address: usize,
    is_member: IsMember,
}

impl ConnectionBudget {
    /// The budget of a server with no members (the router): every connection is a client's.
    pub fn clients_only() -> Self {
        Self::new(Arc::new(|_| false))
    }

    /// The budget of a node: `is_member` names the addresses of the cluster's members.
    pub fn new(is_member: IsMember) -> Self {
        Self::with_limits(
            is_member,
            MAX_MEMBER_CONNECTIONS,
            MAX_CLIENT_CONNECTIONS,
            MAX_CONNECTIONS_PER_CLIENT_ADDRESS,
        )
    }

    fn with_limits(is_member: IsMember, members: usize, clients: usize, per_address: usize) -> Self {
        ConnectionBudget {
            members: Arc::new(Semaphore::new(members)),
            clients: Arc::new(Semaphore::new(clients)),
            per_address: Arc::new(Mutex::new(HashMap::new())),
            max_per_address: per_address,
            is_member,
        }
    }

    /// A place in the budget for a connection from `address`, or None when its budget is spent.
    pub fn admit(&self, address: IpAddr) -> Option<Admission> {
        if (self.is_member)(address) {
            return Some(Admission {
                _permit: self.members.clone().try_acquire_owned().ok()?,
                address: None,
            });
        }
        let permit = self.clients.clone().try_acquire_owned().ok()?;
        let mut per_address = self.per_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = per_address.entry(address).or_insert(0);
        if *held >= self.max_per_address {
            return None;
        }
        *held += 1;
        Some(Admission {
            _permit: permit,
            address: Some((address, Arc::clone(&self.per_address))),
        })
    }
}

/// One connection's place in its budget, given back when it is dropped.
pub struct Admission {
    _permit: OwnedSemaphorePermit,
    /// A client's source address and the per-address counts to give its place back to.
    address: Option<(IpAddr, ConnectionsByAddress)>,
}

impl Drop for Admission {
    fn drop(&mut self) {
        if let Some((address, counts)) = &self.address {
            let mut counts = counts.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
            if let Some(held) = counts.get_mut(address) {
                *held -= 1;
                if *held == 0 {
                    counts.remove(address);
                }
            }
        }
    }
}

/// An accepted connection within its budget (its place is given back when it is dropped),
/// closed if a frame stalls on it.
pub type GuardedConnection = StalledFrameGuard<TcpStream, Admission>;

/// The connections `listener` accepts, for `serve_with_incoming`: with TCP_NODELAY and TCP
/// keepalive set, each within `budget` (the others are closed at once) and guarded against
/// stalled frames.
pub fn guarded_incoming(
    listener: TcpListener,
    budget: ConnectionBudget,
) -> impl Stream<Item = io::Result<GuardedConnection>> + Send + 'static {
    let last_warning: Option<Instant> = None;
    futures::stream::unfold(
        (listener, budget, last_warning, 0u64),
        |(listener, budget, mut last_warning, mut refused)| async move {
            loop {
                let (stream, peer) = match listener.accept().await {
                    Ok(accepted) => accepted,
                    Err(error) => {
                        tokio::time::sleep(ACCEPT_ERROR_BACKOFF).await;
                        return Some((Err(error), (listener, budget, last_warning, refused)));
                    }
                };
                let Some(admission) = budget.admit(peer.ip()) else {
                    refused += 1;
                    if last_warning.is_none_or(|at| at.elapsed() >= REFUSAL_WARNING_INTERVAL) {
                        tracing::warn!(
                            client = %peer.ip(),
                            refused_so_far = refused,
                            "refused a connection: over the connection limit"
                        );
                        last_warning = Some(Instant::now());
                    }
                    drop(stream);
                    continue;
                };
                // Nagle's algorithm would hold back small replies (trailers) until a delayed ACK.
                let _ = stream.set_nodelay(true);
                let keepalive = socket2::TcpKeepalive::new().with_time(TCP_KEEPALIVE_IDLE);
                let _ = socket2::SockRef::from(&stream).set_tcp_keepalive(&keepalive);
                let connection = StalledFrameGuard::holding(stream, FRAME_STALL_TIMEOUT, admission);
                return Some((Ok(connection), (listener, budget, last_warning, refused)));
            }
        },
    )
}

impl Connected for GuardedConnection {
    type ConnectInfo = TcpConnectInfo;

    fn connect_info(&self) -> TcpConnectInfo {
        self.get_ref().connect_info()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share_and_others_still_get_in() {
        let budget = ConnectionBudget::with_limits(Arc::new(|_| false), 10, 10, 2);
        let first = budget.admit(ip("10.0.0.1")).unwrap();
        let _second = budget.admit(ip("10.0.0.1")).unwrap();
        assert!(budget.admit(ip("10.0.0.1")).is_none());
        let _other = budget.admit(ip("10.0.0.2")).unwrap();
        drop(first);
        assert!(
            budget.admit(ip("10.0.0.1")).is_some(),
            "a closed connection gives its place back"
        );
    }

    #[test]
    fn clients_over_the_process_limit_are_refused_but_members_are_not() {
        let member = ip("10.0.0.9");
        let budget = ConnectionBudget::with_limits(Arc::new(move |address| address == member), 1, 2, 5);
        let _a = budget.admit(ip("10.0.0.1")).unwrap();
        let _b = budget.admit(ip("10.0.0.2")).unwrap();
        assert!(budget.admit(ip("10.0.0.3")).is_none());
        let _peer = budget.admit(member).expect("members have a budget of their own");
        assert!(budget.admit(member).is_none(), "and a limit of their own");
    }
}
