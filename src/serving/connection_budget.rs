//! How many connections a server holds, and from whom: tonic accepts every connection it is
//! offered, so the accepting thread ([`super::accept`]) asks the budget here first. A connection
//! over its budget is closed the moment it is accepted (the client sees the connection closed or reset, a
//! transport error its library reports as UNAVAILABLE and may retry); the connections already
//! held are not touched.
//!
//! Two budgets, so that clients can never starve Raft: connections from the cluster's members
//! (the caller says which addresses those are) count against [`MAX_MEMBER_CONNECTIONS`]; every
//! other connection against [`MAX_CLIENT_CONNECTIONS`] and [`MAX_CONNECTIONS_PER_CLIENT_ADDRESS`]
//! for its source address, and against its address's rate of new connections
//! ([`NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC`], a token bucket): a host that connects in a
//! loop costs the server an accept and a close per connection, not a handshake; and one that
//! keeps on once refused is shunned, its connection requests dropped by the kernel
//! ([`super::shun`]).

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;

use super::{
    MAX_CLIENT_CONNECTIONS, MAX_CONNECTIONS_PER_CLIENT_ADDRESS, MAX_MEMBER_CONNECTIONS,
    NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST, NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC,
};

/// How many client connections each source address holds.
type ConnectionsByAddress = Arc<Mutex<HashMap<IpAddr, usize>>>;

/// Source addresses whose rate of new connections is tracked at most; past it, the addresses
/// whose allowance is whole again are forgotten first, and a new address beyond it is not
/// rate-limited (the other limits still hold). Real hosts only: a TCP connection needs a
/// completed handshake.
const MAX_RATE_TRACKED_ADDRESSES: usize = 16 * 1024;

/// A token bucket: the new connections an address may still open now.
#[derive(Clone, Copy, Debug)]
struct NewConnectionAllowance {
    tokens: f64,
    at: Instant,
    /// Connections refused since `refusals_from`; the count starts again at the first refusal
    /// a second or more after it.
    refused: u32,
    refusals_from: Instant,
}

impl NewConnectionAllowance {
    fn full(now: Instant) -> Self {
        NewConnectionAllowance {
            tokens: f64::from(NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST),
            at: now,
            refused: 0,
            refusals_from: now,
        }
    }

    /// The allowance refilled up to `now`.
    fn refilled(self, now: Instant) -> Self {
        let earned = now.saturating_duration_since(self.at).as_secs_f64()
            * f64::from(NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC);
        NewConnectionAllowance {
            tokens: (self.tokens + earned).min(f64::from(NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST)),
            at: now,
            ..self
        }
    }

    fn is_whole(self, now: Instant) -> bool {
        self.refilled(now).tokens >= f64::from(NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST)
    }

    /// Takes one new connection from the allowance, if there is one; if not, how many have
    /// been refused within the second now under way (counted from the first refusal), this
    /// one included.
    fn take(&mut self, now: Instant) -> Result<(), u32> {
        *self = self.refilled(now);
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            return Ok(());
        }
        if now.saturating_duration_since(self.refusals_from) >= Duration::from_secs(1) {
            (self.refused, self.refusals_from) = (0, now);
        }
        self.refused = self.refused.saturating_add(1);
        Err(self.refused)
    }
}

/// Why a connection was refused.
#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    #[error("over the connection limit")]
    TooManyConnections,
    #[error("too many new connections per second from this address ({refused_this_second} refused within a second)")]
    TooManyNewConnections {
        /// How many of this address's new connections have been refused within the second under
        /// way (counted from the first of them).
        refused_this_second: u32,
    },
}

/// Tells whether an address belongs to one of the cluster's members.
pub type IsMember = Arc<dyn Fn(IpAddr) -> bool + Send + Sync>;

/// What a budget holds and has refused, for the metrics (`crate::metrics::connections`).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct BudgetCounts {
    /// Client connections open now.
    pub clients_open: usize,
    /// Members' connections open now.
    pub members_open: usize,
    /// Connections refused so far for a limit on connections held (an address's, the process's).
    pub refused_over_limit: u64,
    /// Connections refused so far for coming too fast from their address.
    pub refused_too_fast: u64,
    /// Times so far an address was shunned ([`super::shun`]).
    pub shuns: u64,
}

/// The counters behind [`BudgetCounts`]' totals.
#[derive(Default)]
struct Tally {
    refused_over_limit: AtomicU64,
    refused_too_fast: AtomicU64,
    shuns: AtomicU64,
}

/// The connection budgets of one server. Cheap to clone.
#[derive(Clone)]
pub struct ConnectionBudget {
    members: Arc<Semaphore>,
    max_members: usize,
    clients: Arc<Semaphore>,
    max_clients: usize,
    tally: Arc<Tally>,
    per_address: ConnectionsByAddress,
    max_per_address: usize,
    new_connections: Arc<Mutex<HashMap<IpAddr, NewConnectionAllowance>>>,
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
            max_members: members,
            clients: Arc::new(Semaphore::new(clients)),
            max_clients: clients,
            tally: Arc::default(),
            per_address: Arc::new(Mutex::new(HashMap::new())),
            max_per_address: per_address,
            new_connections: Arc::new(Mutex::new(HashMap::new())),
            is_member,
        }
    }

    /// A place in the budget for a connection from `address` arriving `now`, or why not.
    pub fn admit(&self, address: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        let admitted = self.try_admit(address, now);
        if let Err(refusal) = &admitted {
            let counter = match refusal {
                Refusal::TooManyConnections => &self.tally.refused_over_limit,
                Refusal::TooManyNewConnections { .. } => &self.tally.refused_too_fast,
            };
            counter.fetch_add(1, Ordering::Relaxed);
        }
        admitted
    }

    /// Counts a shun of one of the addresses this budget refused.
    pub fn note_shun(&self) {
        self.tally.shuns.fetch_add(1, Ordering::Relaxed);
    }

    /// What the budget holds now and has refused so far.
    pub fn counts(&self) -> BudgetCounts {
        BudgetCounts {
            clients_open: self.max_clients - self.clients.available_permits(),
            members_open: self.max_members - self.members.available_permits(),
            refused_over_limit: self.tally.refused_over_limit.load(Ordering::Relaxed),
            refused_too_fast: self.tally.refused_too_fast.load(Ordering::Relaxed),
            shuns: self.tally.shuns.load(Ordering::Relaxed),
        }
    }

    fn try_admit(&self, address: IpAddr, now: Instant) -> Result<Admission, Refusal> {
        if (self.is_member)(address) {
            let permit = self.members.clone().try_acquire_owned();
            return Ok(Admission {
                _permit: permit.map_err(|_| Refusal::TooManyConnections)?,
                address: None,
            });
        }
        self.take_new_connection(address, now)
            .map_err(|refused_this_second| Refusal::TooManyNewConnections { refused_this_second })?;
        let permit = self
            .clients
            .clone()
            .try_acquire_owned()
            .map_err(|_| Refusal::TooManyConnections)?;
        let mut per_address = self.per_address.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        let held = per_address.entry(address).or_insert(0);
        if *held >= self.max_per_address {
            return Err(Refusal::TooManyConnections);
        }
        *held += 1;
        Ok(Admission {
            _permit: permit,
            address: Some((address, Arc::clone(&self.per_address))),
        })
    }

    /// Whether `address` may open one more connection `now`, by its rate of new connections;
    /// if not, how many it has been refused within the second under way.
    fn take_new_connection(&self, address: IpAddr, now: Instant) -> Result<(), u32> {
        let mut allowances = self
            .new_connections
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner());
        if !allowances.contains_key(&address) && allowances.len() >= MAX_RATE_TRACKED_ADDRESSES {
            allowances.retain(|_, allowance| !allowance.is_whole(now));
            if allowances.len() >= MAX_RATE_TRACKED_ADDRESSES {
                return Ok(());
            }
        }
        allowances
            .entry(address)
            .or_insert_with(|| NewConnectionAllowance::full(now))
            .take(now)
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

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn ip(text: &str) -> IpAddr {
        text.parse().unwrap()
    }

    #[test]
    fn one_address_cannot_take_more_than_its_share_and_others_still_get_in() {
        let now = Instant::now();
        let budget = ConnectionBudget::with_limits(Arc::new(|_| false), 10, 10, 2);
        let first = budget.admit(ip("10.0.0.1"), now).unwrap();
        let _second = budget.admit(ip("10.0.0.1"), now).unwrap();
        assert_eq!(
            budget.admit(ip("10.0.0.1"), now).err(),
            Some(Refusal::TooManyConnections)
        );
        let _other = budget.admit(ip("10.0.0.2"), now).unwrap();
        let counts = BudgetCounts {
            clients_open: 3,
            refused_over_limit: 1,
            ..BudgetCounts::default()
        };
        assert_eq!(budget.counts(), counts);
        drop(first);
        assert!(
            budget.admit(ip("10.0.0.1"), now).is_ok(),
            "a closed connection gives its place back"
        );
    }

    #[test]
    fn clients_over_the_process_limit_are_refused_but_members_are_not() {
        let now = Instant::now();
        let member = ip("10.0.0.9");
        let budget = ConnectionBudget::with_limits(Arc::new(move |address| address == member), 1, 2, 5);
        let _a = budget.admit(ip("10.0.0.1"), now).unwrap();
        let _b = budget.admit(ip("10.0.0.2"), now).unwrap();
        assert!(budget.admit(ip("10.0.0.3"), now).is_err());
        let _peer = budget.admit(member, now).expect("members have a budget of their own");
        assert!(budget.admit(member, now).is_err(), "and a limit of their own");
        budget.note_shun();
        let counts = BudgetCounts {
            clients_open: 2,
            members_open: 1,
            refused_over_limit: 2,
            refused_too_fast: 0,
            shuns: 1,
        };
        assert_eq!(budget.counts(), counts);
    }

    #[test]
    fn an_address_that_connects_in_a_loop_is_held_to_its_rate_and_others_are_not() {
        let start = Instant::now();
        let budget = ConnectionBudget::new(Arc::new(|_| false));
        let looping = ip("10.0.0.1");
        // Each connection closes at once (dropped): only the rate stops them.
        let burst = (0..2 * NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST)
            .filter(|_| budget.admit(looping, start).is_ok())
            .count();
        assert_eq!(burst, NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST as usize);
        let refused = |n| Some(Refusal::TooManyNewConnections { refused_this_second: n });
        // The burst's second half was refused, within the same second.
        let half = NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST;
        assert_eq!(budget.admit(looping, start).err(), refused(half + 1));
        assert_eq!(budget.admit(looping, start).err(), refused(half + 2));
        assert_eq!(budget.counts().refused_too_fast, u64::from(half) + 2);
        assert_eq!(budget.counts().clients_open, 0, "each connection closed at once");
        assert!(
            budget.admit(ip("10.0.0.2"), start).is_ok(),
            "another host is not held back"
        );
        // A second later the address has earned one second's worth again.
        let later = start + Duration::from_secs(1);
        let refilled = (0..2 * NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC)
            .filter(|_| budget.admit(looping, later).is_ok())
            .count();
        assert_eq!(refilled, NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC as usize);
        assert_eq!(
            budget.admit(looping, later).err(),
            refused(NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC + 1),
            "a second later, the refusals are counted afresh"
        );
        // Taken connections between refusals do not start the count again.
        let a_token_later = later + Duration::from_secs(1) / NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC;
        assert!(budget.admit(looping, a_token_later).is_ok());
        assert_eq!(
            budget.admit(looping, a_token_later).err(),
            refused(NEW_CONNECTIONS_PER_CLIENT_ADDRESS_PER_SEC + 2)
        );
        // Members are never rate-limited.
        let member = ip("10.0.0.9");
        let budget = ConnectionBudget::new(Arc::new(move |address| address == member));
        assert!((0..2 * NEW_CONNECTIONS_PER_CLIENT_ADDRESS_BURST).all(|_| budget.admit(member, start).is_ok()));
    }
}
