//! The IP addresses of the cluster's members, kept current as the membership changes, so that
//! the node's connection budget can count its peers' connections apart from its clients'
//! (`raftkv::serving::connection_budget`): clients, however many, never take the connections
//! Raft needs. A member's address may be a host name; it is resolved when the membership
//! changes, not per connection.

use std::collections::HashSet;
use std::net::IpAddr;
use std::sync::{Arc, RwLock};

use openraft::async_runtime::WatchReceiver;
use raftkv::serving::connection_budget::IsMember;
use tracing::Instrument;

use crate::types::Raft;

/// The members' addresses; cheap to clone.
#[derive(Clone, Default)]
pub struct MemberAddresses {
    addresses: Arc<RwLock<HashSet<IpAddr>>>,
}

impl MemberAddresses {
    /// Starts from `initial` (the initial cluster's addresses) and follows `raft`'s membership.
    pub async fn follow(raft: Raft, initial: impl IntoIterator<Item = String>) -> Self {
        let members = MemberAddresses::default();
        members.set(resolve(initial).await);
        let following = members.clone();
        tokio::spawn(
            async move {
                let mut metrics = raft.server_metrics();
                let mut last = Vec::new();
                loop {
                    let now: Vec<String> = {
                        let m = metrics.borrow_and_update();
                        m.membership_config
                            .membership()
                            .nodes()
                            .map(|(_, node)| node.addr.clone())
                            .collect()
                    };
                    if now != last {
                        following.set(resolve(now.clone()).await);
                        last = now;
                    }
                    if metrics.changed().await.is_err() {
                        return;
                    }
                }
            }
            .in_current_span(),
        );
        members
    }

    fn set(&self, addresses: HashSet<IpAddr>) {
        if addresses.is_empty() {
            return;
        }
        *self.addresses.write().unwrap_or_else(|poisoned| poisoned.into_inner()) = addresses;
    }

    /// The membership test the connection budget asks.
    pub fn is_member(&self) -> IsMember {
        let addresses = Arc::clone(&self.addresses);
        Arc::new(move |address| {
            addresses
                .read()
                .unwrap_or_else(|poisoned| poisoned.into_inner())
                .contains(&address)
        })
    }
}

/// The IP addresses `host:port` strings resolve to; those that do not resolve are left out.
async fn resolve(addresses: impl IntoIterator<Item = String>) -> HashSet<IpAddr> {
    let mut ips = HashSet::new();
    for address in addresses {
        match tokio::net::lookup_host(address.as_str()).await {
            Ok(resolved) => ips.extend(resolved.map(|socket| socket.ip())),
            Err(error) => tracing::debug!(%address, %error, "cannot resolve a member's address"),
        }
    }
    ips
}
