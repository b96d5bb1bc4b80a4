//! A leader whose host goes silent — it loses its network and answers nothing, as when a
//! machine loses power or its link — is replaced, and writes through the router resume.
//!
//! kill -9 on loopback resets every connection at once, which peers and the router notice at
//! the next write; a silent host gives no such signal, so this is what the election timers,
//! the router's liveness checks and its in-flight requests must handle on their own. Each
//! node runs in a network namespace of its own on a bridge (the router and the test in the
//! test's namespace); the leader's link is set down. Needs root (network namespaces) and
//! iproute2; CI has both (`.ci/run` installs iproute2 when it is missing). Elsewhere the
//! test says why it did not run, and passes.

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;

use crate::common::{wait_until, ClusterOptions, NodeAddresses, TestCluster};

/// The port every node listens on inside its own namespace.
const NODE_PORT: u16 = 7001;
/// How long the cluster may take to elect a new leader and serve a write after the cut: far
/// more than it needs (well under a second), so that a loaded machine does not fail it.
const RECOVERY_TIMEOUT: Duration = Duration::from_secs(20);

/// Three hosts on one bridge: a network namespace per node, and the bridge's address in the
/// test's namespace. Removed on drop, also when the test fails.
struct Hosts {
    bridge: String,
    namespaces: Vec<String>,
    /// The first three octets of the hosts' /24.
    subnet: String,
}

impl Hosts {
    /// Makes `count` hosts, named and addressed by this process's id so that runs side by
    /// side do not collide; None (with the reason printed) when this machine cannot.
    fn make(count: u64) -> Option<Hosts> {
        // SAFETY: geteuid has no preconditions and cannot fail.
        if unsafe { libc::geteuid() } != 0 {
            eprintln!("silent_leader: not run: network namespaces need root");
            return None;
        }
        if Command::new("ip").arg("-V").output().is_err() {
            eprintln!("silent_leader: not run: iproute2 (`ip`) is not installed");
            return None;
        }
        let pid = std::process::id();
        let mut hosts = Hosts {
            bridge: format!("rkb{}", pid % 100_000),
            namespaces: Vec::new(),
            subnet: format!("10.{}.{}", 100 + pid % 100, (pid / 100) % 250),
        };
        ip(&["link", "add", &hosts.bridge, "type", "bridge"]);
        ip(&["addr", "add", &format!("{}.254/24", hosts.subnet), "dev", &hosts.bridge]);
        ip(&["link", "set", &hosts.bridge, "up"]);
        for n in 1..=count {
            let namespace = format!("raftkv-e2e-{pid}-{n}");
            ip(&["netns", "add", &namespace]);
            hosts.namespaces.push(namespace.clone());
            let outside = format!("rkv{}h{n}", pid % 100_000);
            ip(&[
                "link", "add", &outside, "type", "veth", "peer", "name", "eth0", "netns", &namespace,
            ]);
            ip(&["link", "set", &outside, "master", &hosts.bridge, "up"]);
            let address = format!("{}.{n}/24", hosts.subnet);
            ip(&["-n", &namespace, "addr", "add", &address, "dev", "eth0"]);
            ip(&["-n", &namespace, "link", "set", "lo", "up"]);
            ip(&["-n", &namespace, "link", "set", "eth0", "up"]);
        }
        Some(hosts)
    }

    /// Where node `n` runs and how it is reached.
    fn placement(&self, n: u64) -> NodeAddresses {
        NodeAddresses {
            advertise: format!("{}.{n}:{NODE_PORT}", self.subnet),
            listen: format!("0.0.0.0:{NODE_PORT}"),
            source: None,
            netns: Some(self.namespaces[n as usize - 1].clone()),
        }
    }

    /// Cuts node `n`'s host off: its link goes down, so packets to and from it vanish
    /// without a reset.
    fn silence(&self, n: u64) {
        ip(&["-n", &self.namespaces[n as usize - 1], "link", "set", "eth0", "down"]);
    }
}

impl Drop for Hosts {
    fn drop(&mut self) {
        // Deleting a namespace deletes its end of the veth pair, and with it the other end.
        for namespace in &self.namespaces {
            let _ = Command::new("ip").args(["netns", "del", namespace]).status();
        }
        let _ = Command::new("ip").args(["link", "del", &self.bridge]).status();
    }
}

/// Runs `ip ARGS`, panicking with its stderr when it fails.
fn ip(args: &[&str]) {
    let output = Command::new("ip").args(args).output().expect("cannot run ip");
    assert!(
        output.status.success(),
        "ip {} failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&output.stderr).trim()
    );
}

#[test]
fn a_leader_whose_host_goes_silent_is_replaced_and_writes_resume() {
    let Some(hosts) = Hosts::make(3) else { return };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    runtime.block_on(async {
        let options = ClusterOptions {
            addresses: Some((1..=3).map(|n| (n, hosts.placement(n))).collect()),
            ..ClusterOptions::default()
        };
        let cluster = TestCluster::start_with(options).await;
        let client = cluster.client();
        client
            .put(Bytes::from_static(b"before"), Bytes::from_static(b"1"))
            .await
            .expect("a write before the cut");
        let old_leader = cluster.leader().await;
        let old_term = cluster.status(old_leader).await.unwrap().term;

        hosts.silence(old_leader);

        let survivors: Vec<u64> = cluster.ids().into_iter().filter(|&id| id != old_leader).collect();
        let new_leader = wait_until(RECOVERY_TIMEOUT, "a survivor leads in a newer term", || async {
            for &id in &survivors {
                if let Ok(status) = cluster.status(id).await {
                    if status.term > old_term && status.leader_id.is_some_and(|leader| leader != old_leader) {
                        return status.leader_id;
                    }
                }
            }
            None
        })
        .await;
        assert_ne!(new_leader, old_leader);
        // Through the router, which must stop sending to the silent node on its own.
        client
            .put(Bytes::from_static(b"after"), Bytes::from_static(b"2"))
            .await
            .expect("a write through the router after the cut");
        let read = client
            .get(Bytes::from_static(b"before"), raftkv::pb::Consistency::Linearizable)
            .await
            .expect("a read of a write acknowledged before the cut");
        assert_eq!(read.value, Bytes::from_static(b"1"));
    });
    // The cluster (its processes) is dropped inside the runtime above; the hosts go now.
    drop(hosts);
}
