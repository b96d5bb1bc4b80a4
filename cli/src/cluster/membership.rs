//! The console's `add` and `remove`: changing a local cluster's membership the way an
//! operator would on real machines — a new node started empty with `--join` and added with
//! `raftkv member add`, a node removed with `raftkv member remove` and then stopped.
//!
//! The layout remembers the change (cluster.json lists the added nodes, so `cluster down`
//! stops them too), and so does DIR/membership.json, from which a later `cluster up` starts
//! the added nodes again and leaves the removed ones out.

use std::time::Duration;

use raftkv::client::{Client, ClientOptions};
use tokio::time::Instant;

use super::children::Role;
use super::{time_of_day, LocalCluster};

/// How long a new node may take to answer, and then to catch up and become a voter.
const ADD_TIMEOUT: Duration = Duration::from_secs(60);
/// How long a removal may take (it may hand leadership over first).
const REMOVE_TIMEOUT: Duration = Duration::from_secs(10);
/// The pause between two looks at a starting node.
const START_POLL: Duration = Duration::from_millis(50);

/// Starts the next node with `--join`, waits until it answers, and adds it as a voter.
pub(super) async fn add_node(cluster: &mut LocalCluster) {
    let id = match cluster.layout.add_joined_node() {
        Ok(id) => id,
        Err(why) => return println!("cannot add a node: {why}"),
    };
    // Recorded before it starts: from now on the id is taken and node-N holds its data.
    save_membership(cluster);
    let role = Role::Node(id);
    let address = cluster.layout.node_address(id);
    match cluster.start_one(role) {
        Ok(pid) => println!(
            "{} started node {id} (pid {pid}) at {address} with --join",
            time_of_day()
        ),
        Err(error) => return println!("cannot start node {id}: {error:#}"),
    }
    let deadline = Instant::now() + ADD_TIMEOUT;
    let Some(node) = client(cluster, &address, START_POLL * 4) else {
        return;
    };
    while node.status_of(&address).await.is_err() {
        if Instant::now() >= deadline || cluster.child_mut(role).is_some_and(|child| !child.is_running()) {
            return println!(
                "node {id} did not start; see {}",
                cluster.layout.log_file(role).display()
            );
        }
        tokio::time::sleep(START_POLL).await;
    }
    let Some(client) = client(cluster, &cluster.layout.router_address(), ADD_TIMEOUT) else {
        return;
    };
    match client.member_add(id, &address, false).await {
        Ok(added) => println!(
            "{} node {id} added as a voter (membership at log index {})",
            time_of_day(),
            added.log_index
        ),
        Err(error) => println!("node {id} was not added: {error}"),
    }
}

/// Removes node `id` from the cluster, then stops it.
pub(super) async fn remove_node(cluster: &mut LocalCluster, id: u64) {
    if !cluster.layout.has_node(id) {
        return println!("there is no node {id}");
    }
    let Some(client) = client(cluster, &cluster.layout.router_address(), REMOVE_TIMEOUT) else {
        return;
    };
    match client.member_remove(id).await {
        Ok(removed) => println!(
            "{} node {id} removed (membership at log index {})",
            time_of_day(),
            removed.log_index
        ),
        Err(error) => return println!("node {id} was not removed: {error}"),
    }
    if let Some(child) = cluster.child_mut(Role::Node(id)) {
        if child.signal(libc::SIGTERM) {
            println!("{} sent SIGTERM to node {id} (pid {})", time_of_day(), child.pid);
        }
    }
    cluster.layout.remove_node(id);
    save_membership(cluster);
    if let Err(error) = cluster.save_state() {
        println!("cannot update cluster.json: {error:#}");
    }
}

/// Writes DIR/membership.json, so that the next `cluster up` brings the same nodes back.
fn save_membership(cluster: &LocalCluster) {
    let path = cluster.layout.membership_file();
    if let Err(error) = super::membership_record::write(&path, &cluster.layout.membership_record()) {
        println!("cannot record the membership change (the next `cluster up` will not know it): {error:#}");
    }
}

/// A client of `address` that connects as the cluster's processes do (TLS with `--tls`).
fn client(cluster: &LocalCluster, address: &str, timeout: Duration) -> Option<Client> {
    let tls = match cluster.layout.tls_dir() {
        Some(dir) => match super::tls_certificates(dir) {
            Ok(tls) => Some(tls),
            Err(error) => {
                println!("cannot read the cluster's certificates: {}", error.message());
                return None;
            }
        },
        None => None,
    };
    let options = ClientOptions {
        tls,
        ..ClientOptions::default()
    };
    match Client::with_options(vec![address.to_string()], timeout, options) {
        Ok(client) => Some(client),
        Err(error) => {
            println!("cannot connect to {address}: {error}");
            None
        }
    }
}
