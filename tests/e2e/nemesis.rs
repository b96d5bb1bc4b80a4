//! A fault-injecting network for end-to-end tests: one TCP proxy in front of
//! every node, which can cut the links between chosen nodes.
//!
//! Each node listens on its own loopback address (127.x.y.N) and binds its
//! outgoing connections to it (`raftkv-node --source-address`), so a proxy
//! knows which node a connection comes from. The cluster is configured with
//! the proxies' addresses, so all Raft traffic crosses them. A partition
//! blackholes the affected links the way a real one does: bytes stop moving in
//! both directions (nothing is closed, senders see timeouts), and new
//! connections across the cut are accepted but never answered. Clients (the
//! router, the test's own clients) connect from other addresses and are never
//! cut. Every byte chunk or connection held back is counted, so a test can
//! prove that a partition really cut traffic. A proxy can be added for a node that joins
//! while the network runs ([`FaultyNetwork::add_node`]), so cuts apply to it too.

use std::collections::BTreeSet;
use std::net::{IpAddr, SocketAddr};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::watch;

/// The links that are cut, as unordered pairs of node ids.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Cut(BTreeSet<(u64, u64)>);

impl Cut {
    fn blocks(&self, a: u64, b: u64) -> bool {
        self.0.contains(&(a.min(b), a.max(b)))
    }
}

/// One proxy per node, and the switch that cuts links between them.
pub struct FaultyNetwork {
    cut: watch::Sender<Cut>,
    held: Arc<AtomicU64>,
    runtime: Option<tokio::runtime::Runtime>,
    subnet: (u8, u8),
    /// node id -> (proxy address that the cluster uses, node's own listen address)
    pub nodes: Vec<(u64, SocketAddr, SocketAddr)>,
}

impl FaultyNetwork {
    /// Proxies for nodes 1..=n on the loopback addresses 127.`subnet`.`host` (host = 10 + id):
    /// node i's own port and its proxy's port are picked free.
    pub fn start(n: u64, subnet: (u8, u8)) -> FaultyNetwork {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(1)
            .enable_all()
            .build()
            .expect("proxy runtime");
        let (cut, _) = watch::channel(Cut::default());
        let mut net = FaultyNetwork {
            cut,
            held: Arc::new(AtomicU64::new(0)),
            runtime: Some(runtime),
            subnet,
            nodes: Vec::new(),
        };
        for id in 1..=n {
            net.add_node(id);
        }
        net
    }

    /// Starts the proxy of node `id` (one that joins later, say) and returns how that node
    /// is placed behind it, as [`FaultyNetwork::node_addresses`] does for the others.
    pub fn add_node(&mut self, id: u64) -> crate::common::NodeAddresses {
        assert!(
            !self.nodes.iter().any(|node| node.0 == id),
            "node {id} already has a proxy"
        );
        let ip = node_ip(self.subnet, id);
        let node_addr = free_port(ip);
        // Bound here, served on the proxies' runtime: this may be called from async code,
        // where blocking on another runtime is not allowed.
        let listener = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).expect("bind proxy");
        listener.set_nonblocking(true).expect("a non-blocking proxy socket");
        let proxy_addr = listener.local_addr().unwrap();
        let (subnet, cut, held) = (self.subnet, self.cut.subscribe(), self.held.clone());
        self.runtime.as_ref().expect("the proxies run").spawn(async move {
            let listener = TcpListener::from_std(listener).expect("a proxy listener");
            serve(id, subnet, listener, node_addr, cut, held).await
        });
        self.nodes.push((id, proxy_addr, node_addr));
        placed(proxy_addr, node_addr)
    }

    /// How the cluster's nodes are placed behind the proxies: each advertises its proxy,
    /// listens on its own address and connects to peers from its own IP.
    pub fn node_addresses(&self) -> std::collections::BTreeMap<u64, crate::common::NodeAddresses> {
        self.nodes
            .iter()
            .map(|(id, proxy, listen)| (*id, placed(*proxy, *listen)))
            .collect()
    }

    /// A cluster of these nodes behind the proxies, without a router.
    pub fn cluster_options(&self) -> crate::common::ClusterOptions {
        crate::common::ClusterOptions {
            addresses: Some(self.node_addresses()),
            ..crate::common::ClusterOptions::default().without_router()
        }
    }

    /// Cuts every link between `node` and the other nodes.
    pub fn isolate(&self, node: u64) {
        let others: Vec<u64> = self.nodes.iter().map(|n| n.0).filter(|id| *id != node).collect();
        self.cut.send_modify(|c| {
            for other in others {
                c.0.insert((node.min(other), node.max(other)));
            }
        });
    }

    /// Restores every link.
    pub fn heal(&self) {
        self.cut.send_modify(|c| c.0.clear());
    }

    /// Chunks of bytes and connections held back by cuts so far.
    pub fn held_back(&self) -> u64 {
        self.held.load(Ordering::Relaxed)
    }
}

impl Drop for FaultyNetwork {
    fn drop(&mut self) {
        self.heal();
        // Stopping the runtime aborts every proxy task and closes their sockets;
        // in the background, so that dropping this inside async code is fine.
        if let Some(runtime) = self.runtime.take() {
            runtime.shutdown_background();
        }
    }
}

/// A node that listens on `listen`, is reached through its proxy at `proxy`, and connects
/// to its peers from its own IP (so that its proxy knows which node a connection comes from).
fn placed(proxy: SocketAddr, listen: SocketAddr) -> crate::common::NodeAddresses {
    crate::common::NodeAddresses {
        advertise: proxy.to_string(),
        listen: listen.to_string(),
        source: Some(listen.ip()),
        netns: None,
    }
}

/// A loopback subnet, 127.a.b.0/24, of this test process's own (parallel test runs never
/// share addresses); `scenario` keeps the proxied scenarios of one process apart: the
/// Jepsen test 0, the partition test 3, the pre-vote test 6.
pub fn own_subnet(scenario: u8) -> (u8, u8) {
    let pid = std::process::id();
    ((pid % 200 + 20) as u8, ((pid / 200) % 250) as u8 + scenario)
}

/// The runtime a proxied test drives its cluster from. Such a test is a plain `#[test]`:
/// the proxies run a runtime of their own, which cannot start inside another.
pub fn test_runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .expect("a test runtime")
}

/// Node `id`'s loopback address in `subnet`.
pub fn node_ip(subnet: (u8, u8), id: u64) -> IpAddr {
    let host = u8::try_from(10 + id)
        .ok()
        .filter(|host| *host < 255)
        .unwrap_or_else(|| panic!("node id {id} has no address in a /24 (ids up to 244)"));
    IpAddr::from([127, subnet.0, subnet.1, host])
}

/// Which node, if any, owns the loopback address a connection comes from.
fn node_of(subnet: (u8, u8), ip: IpAddr) -> Option<u64> {
    match ip {
        IpAddr::V4(v4) => {
            let o = v4.octets();
            (o[0] == 127 && o[1] == subnet.0 && o[2] == subnet.1 && o[3] > 10).then(|| u64::from(o[3] - 10))
        }
        IpAddr::V6(_) => None,
    }
}

fn free_port(ip: IpAddr) -> SocketAddr {
    let l = std::net::TcpListener::bind(SocketAddr::new(ip, 0)).expect("find a free port");
    l.local_addr().unwrap()
}

async fn serve(
    id: u64,
    subnet: (u8, u8),
    listener: TcpListener,
    node_addr: SocketAddr,
    cut: watch::Receiver<Cut>,
    held: Arc<AtomicU64>,
) {
    loop {
        let Ok((inbound, from)) = listener.accept().await else {
            return;
        };
        let _ = inbound.set_nodelay(true);
        let peer = node_of(subnet, from.ip()).filter(|p| *p != id);
        let cut = cut.clone();
        let held = held.clone();
        tokio::spawn(async move {
            let mut cut_rx = cut.clone();
            if let Some(p) = peer {
                // A connection across a cut is accepted but not answered until healed.
                if cut_rx.borrow().blocks(p, id) {
                    held.fetch_add(1, Ordering::Relaxed);
                    if cut_rx.wait_for(|c| !c.blocks(p, id)).await.is_err() {
                        return;
                    }
                }
            }
            let Ok(outbound) = TcpStream::connect(node_addr).await else {
                return;
            };
            let _ = outbound.set_nodelay(true);
            let (ri, wi) = inbound.into_split();
            let (ro, wo) = outbound.into_split();
            let link = peer.map(|p| (p, id));
            tokio::select! {
                _ = relay(ri, wo, link, cut.clone(), held.clone()) => {}
                _ = relay(ro, wi, link, cut, held) => {}
            }
        });
    }
}

/// Copies bytes one way; while the link is cut, holds them (stops reading).
async fn relay(
    mut from: tokio::net::tcp::OwnedReadHalf,
    mut to: tokio::net::tcp::OwnedWriteHalf,
    link: Option<(u64, u64)>,
    mut cut: watch::Receiver<Cut>,
    held: Arc<AtomicU64>,
) {
    let mut buf = vec![0u8; 64 * 1024];
    loop {
        let n = match from.read(&mut buf).await {
            Ok(0) | Err(_) => return,
            Ok(n) => n,
        };
        if let Some((a, b)) = link {
            if cut.borrow().blocks(a, b) {
                held.fetch_add(1, Ordering::Relaxed);
                if cut.wait_for(|c| !c.blocks(a, b)).await.is_err() {
                    return;
                }
            }
        }
        if to.write_all(&buf[..n]).await.is_err() {
            return;
        }
    }
}
