//! Knows, at every moment, which node leads and which nodes are healthy, so that a request
//! is sent to the right node at once instead of trying nodes one by one.
//!
//! The knowledge is pushed, not polled: one task per node holds a `Cluster.WatchStatus`
//! stream open on that node's one channel and reports every status it receives. A stream
//! that breaks marks its node unreachable at once (a killed node's connection is reset), and
//! so does one that has sent nothing for [`SILENT_STREAM_LIMIT_MS`]: a node pushes its status
//! every [`STATUS_PUSH_INTERVAL_MS`] changed or not, and a host that went silent (power or
//! link lost) resets nothing. The task then resubscribes with jittered backoff until the node
//! answers again. Leader hints in the errors of forwarded requests are a second, faster
//! source.
//!
//! HTTP/2 keepalive ([`raftkv::client::KEEPALIVE_INTERVAL`] and `KEEPALIVE_TIMEOUT`, shared
//! by every raftkv channel) stays the backstop that closes a silent node's connection; the
//! router's channels keep it as it is rather than a shorter one. Once the stream's silence
//! has taken the node out of the view, nothing new is sent there and the requests waiting on
//! it are sent elsewhere (`Forwarder::forward`), so a faster verdict would buy little; but a
//! wrong one costs more: closing the connection fails every request in flight on it, where a
//! stream wrongly found silent only holds new requests until the next status, and on a small
//! machine a busy node can be late with a ping.
//!
//! From these observations the pure function [`choose_leader`] decides who leads; the result
//! is published on a `tokio::sync::watch` channel as a [`ClusterView`], so that requests
//! waiting for a leader wake the instant one is known. The tracker owns no other state: a
//! router that restarts learns everything again from the nodes.
//!
//! `--nodes` is only a seed list: every status carries the membership, and a member the
//! router does not know yet (added with `raftkv member add`) is followed from then on, and
//! routed to like the others. A removed node stops Raft (its status says `shutdown`) or is
//! gone, so the view leaves it out; its index stays, unused (indexes never move).
//!
//! The router follows one cluster: the one its first status names (a seed's; members are
//! learnt only from statuses). A node whose status names another cluster id (an address that
//! belongs to another cluster, listed by mistake) is never routed to, and its membership is
//! not followed; the router says so once per node.

use std::sync::{Arc, Mutex, OnceLock, RwLock};
use std::time::Duration;

use backon::{BackoffBuilder, ExponentialBackoff, ExponentialBuilder};
use raftkv::batch::KvBatcher;
use raftkv::pb;
use raftkv::pb::cluster_client::ClusterClient;
use raftkv::wire::{LeaderHint, STATUS_PUSH_INTERVAL_MS};
use tokio::sync::{watch, Notify};
use tonic::transport::Channel;

/// The first pause before resubscribing to a node whose stream broke.
pub const RESUBSCRIBE_MIN_DELAY: Duration = Duration::from_millis(20);
/// The longest pause between two attempts to resubscribe: also the longest time a node that
/// came back stays out of the rotation.
pub const RESUBSCRIBE_MAX_DELAY: Duration = Duration::from_millis(500);

/// A node whose status stream has sent nothing for this long (ms) is taken for unreachable:
/// three pushes missed, so that one push late on a busy node is not taken for silence.
pub const SILENT_STREAM_LIMIT_MS: u64 = 3 * STATUS_PUSH_INTERVAL_MS;

/// The HTTP/2 flow control window of the router's whole connection to one node: how much of
/// the node's answers may be on their way before the router has read them. Every client's calls
/// to that node share this one connection, and the router's batches of gets are answered in
/// replies of up to 4 MiB; at hyper's default of 5 MiB (a client library's connection has that
/// for its calls alone) about one such reply could be on its way at a time, and 256 unbatched
/// gets of 1 MiB values through the router took 3-4 s at p99, some timing out (BENCHMARKS.md,
/// "Large values: unbatched gets through the router"). It bounds what a node can send ahead of
/// the router's reading: 32 MiB per node.
pub const NODE_CONNECTION_WINDOW_BYTES: u32 = 32 << 20;

/// A lazily connecting channel to the node at `address` (see [`raftkv::client::channel`]), with
/// a connection window of [`NODE_CONNECTION_WINDOW_BYTES`].
pub fn node_channel(address: &str, tls: Option<&raftkv::tls::ClientTls>) -> Result<Channel, raftkv::client::Error> {
    Ok(raftkv::client::endpoint(address, tls)?
        .initial_connection_window_size(NODE_CONNECTION_WINDOW_BYTES)
        .connect_lazy())
}

/// One node the router forwards to, with its one long-lived channel.
#[derive(Debug)]
pub struct Node {
    /// The address the router was given for it (`--nodes`).
    pub address: String,
    /// The one HTTP/2 channel to it, shared by its status stream and every forwarded request.
    pub channel: Channel,
    /// Sends it the Kv requests that arrive together as one call, over `channel`.
    pub batcher: KvBatcher,
}

impl Node {
    /// The node at `address`, reached over `channel`; starts its batcher (on the current runtime).
    pub fn new(address: String, channel: Channel) -> Node {
        Node {
            address,
            batcher: KvBatcher::start(channel.clone()),
            channel,
        }
    }
}

/// What the router last heard from one node.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct NodeObservation {
    /// Whether its status stream is open and has delivered a status, the last one less than
    /// [`SILENT_STREAM_LIMIT_MS`] ago.
    pub reachable: bool,
    /// Its last status; kept while it is unreachable, to remember its node id.
    pub status: Option<pb::NodeStatus>,
    /// Its statuses name another cluster than the router's: it is never routed to (it stays
    /// unreachable, with no status).
    pub foreign: bool,
}

/// A leader hint taken from a forwarded request's error.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct HintClaim {
    /// The hinted leader's node id.
    pub leader_id: u64,
    /// The highest term the router knew when the hint came. The hint is newer than every
    /// status at or below this term, and is outdated by a status of a higher term.
    pub known_term: u64,
}

/// The node that leads, as the router knows it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Leader {
    /// Index of the node in the router's `--nodes` list.
    pub node: usize,
    /// Its Raft node id.
    pub id: u64,
    /// The term in which it was seen leading.
    pub term: u64,
}

/// What requests are routed by: who leads and who can serve reads.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct ClusterView {
    /// The leader, when one is known and reachable.
    pub leader: Option<Leader>,
    /// Indexes of the nodes that answer and are not shutting down, in `--nodes` order.
    pub healthy: Vec<usize>,
}

/// Who leads, from what the nodes said, decided the way Raft itself would:
///
/// - Only reachable nodes count; an unreachable node's last word may be long outdated.
/// - Each node that leads, or follows a known leader, claims "node L leads in term T".
///   Only claims of the highest term a reachable node reports count: a node in a higher term
///   means term T's leader has been deposed or soon will be, whether or not a newer leader is
///   known yet (a silent old leader's last status says "leader" until its stream is found
///   dead, and must not win back once the survivors are between leaders). So a deposed leader
///   that has not noticed yet loses to the one its followers elected after it. Within a term
///   the leader's own claim is taken over its followers' (they agree in Raft; this only makes
///   ties deterministic).
/// - A leader hint wins over the statuses as long as none of them has a higher term than the
///   router knew when the hint came, and the hinted node is reachable.
/// - The winner must be one of the router's nodes and reachable; otherwise no leader is
///   known, and writes wait for the next status rather than going to a dead node.
pub fn choose_leader(observations: &[NodeObservation], hint: Option<&HintClaim>) -> Option<Leader> {
    let reachable_statuses = || {
        observations
            .iter()
            .filter(|observation| observation.reachable)
            .filter_map(|observation| observation.status.as_ref())
    };
    let highest_reachable_term = reachable_statuses().map(|status| status.term).max().unwrap_or(0);
    // (term, claimed by the leader itself, leader id)
    let best_claim = reachable_statuses()
        .filter(|status| status.term == highest_reachable_term)
        .filter_map(|status| {
            if status.role == pb::Role::Leader as i32 {
                Some((status.term, true, status.id))
            } else {
                status.leader_id.map(|leader_id| (status.term, false, leader_id))
            }
        })
        .max_by_key(|&(term, self_claim, leader_id)| (term, self_claim, std::cmp::Reverse(leader_id)));

    // A hint naming a node the router cannot reach is of no use, and must not hide a leader
    // the statuses name (a stale hint taken during a handover named the old, stopping leader).
    let hinted_node_reachable = |hint: &&HintClaim| {
        observations.iter().any(|observation| {
            observation.reachable
                && observation
                    .status
                    .as_ref()
                    .is_some_and(|status| status.id == hint.leader_id)
        })
    };
    let hint = hint.filter(hinted_node_reachable);
    let (term, leader_id) = match (best_claim, hint) {
        (Some((term, _, _)), Some(hint)) if hint.known_term >= term => (hint.known_term, hint.leader_id),
        (None, Some(hint)) => (hint.known_term, hint.leader_id),
        (Some((term, _, leader_id)), _) => (term, leader_id),
        (None, None) => return None,
    };
    let node = observations
        .iter()
        .position(|observation| observation.status.as_ref().is_some_and(|status| status.id == leader_id))?;
    observations[node].reachable.then_some(Leader {
        node,
        id: leader_id,
        term,
    })
}

/// The nodes that can serve reads: reachable and not shutting down.
pub fn healthy_nodes(observations: &[NodeObservation]) -> Vec<usize> {
    observations
        .iter()
        .enumerate()
        .filter(|(_, observation)| {
            observation.reachable
                && observation
                    .status
                    .as_ref()
                    .is_some_and(|status| status.role != pb::Role::Shutdown as i32)
        })
        .map(|(index, _)| index)
        .collect()
}

/// The highest term any node has reported.
fn highest_known_term(observations: &[NodeObservation]) -> u64 {
    observations
        .iter()
        .filter_map(|observation| observation.status.as_ref())
        .map(|status| status.term)
        .max()
        .unwrap_or(0)
}

struct Observations {
    nodes: Vec<NodeObservation>,
    hint: Option<HintClaim>,
}

/// Follows every node's status stream and publishes the resulting [`ClusterView`].
pub struct LeaderTracker {
    /// Append-only: the seeds, then the members learnt from the nodes' statuses. Locked after
    /// `observations` when both are.
    nodes: RwLock<Vec<Arc<Node>>>,
    observations: Mutex<Observations>,
    view: watch::Sender<ClusterView>,
    /// One per node: wakes its stream task to resubscribe when a request found the node dead.
    resubscribe: RwLock<Vec<Arc<Notify>>>,
    /// What ends the stream tasks, for the nodes learnt after [`LeaderTracker::start`].
    shutdown: OnceLock<watch::Receiver<bool>>,
    /// How the router connects to the members it learns (as to its seeds): TLS or not.
    member_tls: OnceLock<raftkv::tls::ClientTls>,
    /// The id of the cluster the router follows: the first one a status names.
    cluster_id: OnceLock<String>,
}

impl LeaderTracker {
    /// A tracker for `nodes` that knows nothing yet; [`LeaderTracker::start`] sets it going.
    pub fn new(nodes: Vec<Node>) -> Arc<LeaderTracker> {
        let count = nodes.len();
        Arc::new(LeaderTracker {
            observations: Mutex::new(Observations {
                nodes: vec![NodeObservation::default(); count],
                hint: None,
            }),
            view: watch::Sender::new(ClusterView::default()),
            resubscribe: RwLock::new((0..count).map(|_| Arc::new(Notify::new())).collect()),
            nodes: RwLock::new(nodes.into_iter().map(Arc::new).collect()),
            shutdown: OnceLock::new(),
            member_tls: OnceLock::new(),
            cluster_id: OnceLock::new(),
        })
    }

    /// Connects to the members learnt from the nodes with `tls`, as to the seeds.
    pub fn connect_members_with(&self, tls: raftkv::tls::ClientTls) {
        let _ = self.member_tls.set(tls);
    }

    /// Starts one status-stream task per node; they end when `shutdown` turns true.
    pub fn start(self: &Arc<Self>, shutdown: watch::Receiver<bool>) -> Vec<tokio::task::JoinHandle<()>> {
        let _ = self.shutdown.set(shutdown.clone());
        (0..self.node_count())
            .map(|node| tokio::spawn(Arc::clone(self).follow_node(node, shutdown.clone())))
            .collect()
    }

    /// Node `index` (the seeds in `--nodes` order, then the members learnt since).
    pub fn node(&self, index: usize) -> Arc<Node> {
        Arc::clone(&self.nodes.read().unwrap_or_else(|poison| poison.into_inner())[index])
    }

    fn node_count(&self) -> usize {
        self.nodes.read().unwrap_or_else(|poison| poison.into_inner()).len()
    }

    fn resubscribe_of(&self, index: usize) -> Arc<Notify> {
        Arc::clone(&self.resubscribe.read().unwrap_or_else(|poison| poison.into_inner())[index])
    }

    /// Follows the members `status` names that the router does not know yet (by id, or by
    /// address for a node that has not answered yet).
    fn learn_members(self: &Arc<Self>, status: &pb::NodeStatus) {
        let Some(shutdown) = self.shutdown.get() else { return };
        let mut observations = self.observations.lock().unwrap_or_else(|poison| poison.into_inner());
        let mut nodes = self.nodes.write().unwrap_or_else(|poison| poison.into_inner());
        for member in &status.members {
            let known_id = observations
                .nodes
                .iter()
                .any(|o| o.status.as_ref().is_some_and(|s| s.id == member.id));
            let known_address = nodes.iter().any(|node| node.address == member.address);
            if known_id || known_address {
                continue;
            }
            let channel = match node_channel(&member.address, self.member_tls.get()) {
                Ok(channel) => channel,
                Err(error) => {
                    tracing::warn!("member {} has an address the router cannot use: {error}", member.id);
                    continue;
                }
            };
            tracing::info!(
                "following node {} at {}, learnt from the membership",
                member.id,
                member.address
            );
            nodes.push(Arc::new(Node::new(member.address.clone(), channel)));
            observations.nodes.push(NodeObservation::default());
            self.resubscribe
                .write()
                .unwrap_or_else(|poison| poison.into_inner())
                .push(Arc::new(Notify::new()));
            tokio::spawn(Arc::clone(self).follow_node(nodes.len() - 1, shutdown.clone()));
        }
    }

    /// A receiver of the current view that is told of every change.
    pub fn subscribe(&self) -> watch::Receiver<ClusterView> {
        self.view.subscribe()
    }

    /// A node answered a forwarded request with a leader hint.
    pub fn report_hint(&self, hint: &LeaderHint) {
        self.update(|observations| {
            let known_term = highest_known_term(&observations.nodes);
            observations.hint = Some(HintClaim {
                leader_id: hint.id,
                known_term,
            });
        });
    }

    /// A forwarded request found the connection to `node` broken: take it out of the
    /// rotation now, and have its stream task resubscribe, which puts it back once it answers.
    pub fn report_unreachable(&self, node: usize, why: &str) {
        self.mark_unreachable(node, why);
        self.resubscribe_of(node).notify_waiters();
    }

    fn mark_unreachable(&self, node: usize, why: &str) {
        let address = &self.node(node).address;
        self.update(|observations| {
            let observation = &mut observations.nodes[node];
            if observation.reachable {
                let id = observation.status.as_ref().map(|status| status.id);
                match id {
                    Some(id) => tracing::warn!("node {id} at {address} is unreachable: {why}"),
                    None => tracing::warn!("node at {address} is unreachable: {why}"),
                }
            }
            observation.reachable = false;
        });
    }

    /// The id of the cluster the router follows, when `status` names another one.
    fn other_cluster(&self, status: &pb::NodeStatus) -> Option<&str> {
        if status.cluster_id.is_empty() {
            return None;
        }
        let followed = self.cluster_id.get_or_init(|| status.cluster_id.clone());
        (*followed != status.cluster_id).then_some(followed.as_str())
    }

    fn observe_status(self: &Arc<Self>, node: usize, status: pb::NodeStatus) {
        let address = &self.node(node).address;
        if let Some(followed) = self.other_cluster(&status) {
            self.update(|observations| {
                let observation = &mut observations.nodes[node];
                if !observation.foreign {
                    tracing::warn!(
                        "node {} at {address} belongs to cluster {}, not {followed}: not routing to it",
                        status.id,
                        status.cluster_id
                    );
                }
                *observation = NodeObservation {
                    reachable: false,
                    status: None,
                    foreign: true,
                };
            });
            return;
        }
        self.learn_members(&status);
        self.update(|observations| {
            let observation = &mut observations.nodes[node];
            if !observation.reachable {
                tracing::info!(
                    "node {} at {address} is reachable, role {}, term {}",
                    status.id,
                    pb::role_name(status.role),
                    status.term
                );
            }
            observation.reachable = true;
            observation.foreign = false;
            observation.status = Some(status);
            if observations
                .hint
                .as_ref()
                .is_some_and(|hint| highest_known_term(&observations.nodes) > hint.known_term)
            {
                observations.hint = None;
            }
        });
    }

    /// Applies `change`, recomputes the view, and publishes it if it changed (logging a new
    /// leader in one line a person can grep for).
    fn update(&self, change: impl FnOnce(&mut Observations)) {
        let mut observations = self.observations.lock().unwrap_or_else(|poison| poison.into_inner());
        change(&mut observations);
        let view = ClusterView {
            leader: choose_leader(&observations.nodes, observations.hint.as_ref()),
            healthy: healthy_nodes(&observations.nodes),
        };
        // Published under the lock so that views are sent in the order they were computed.
        self.view.send_if_modified(|current| {
            if *current == view {
                return false;
            }
            let old_leader = current.leader.as_ref().map(|leader| (leader.node, leader.id));
            let new_leader = view.leader.as_ref().map(|leader| (leader.node, leader.id));
            if old_leader != new_leader {
                match &view.leader {
                    Some(leader) => tracing::info!(
                        "leader changed: node {} at {}, term {}",
                        leader.id,
                        self.node(leader.node).address,
                        leader.term
                    ),
                    None => tracing::warn!("no leader known; holding writes until one is"),
                }
            }
            *current = view;
            true
        });
    }

    /// Keeps a WatchStatus stream open on `node` until shutdown, reporting what it says.
    async fn follow_node(self: Arc<Self>, node: usize, mut shutdown: watch::Receiver<bool>) {
        let channel = self.node(node).channel.clone();
        let resubscribe = self.resubscribe_of(node);
        let mut pauses = resubscribe_backoff();
        while !*shutdown.borrow() {
            let why = tokio::select! {
                why = self.read_status_stream(node, channel.clone(), &mut pauses) => why,
                _ = shutdown.changed() => return,
            };
            self.mark_unreachable(node, &why);
            let pause = pauses.next().unwrap_or(RESUBSCRIBE_MAX_DELAY);
            tokio::select! {
                _ = tokio::time::sleep(pause) => {}
                _ = resubscribe.notified() => {}
                _ = shutdown.changed() => return,
            }
        }
    }

    /// Subscribes once and reports statuses until the stream ends or falls silent for
    /// [`SILENT_STREAM_LIMIT_MS`]; returns why it ended.
    async fn read_status_stream(
        self: &Arc<Self>,
        node: usize,
        channel: Channel,
        pauses: &mut ExponentialBackoff,
    ) -> String {
        let resubscribe = self.resubscribe_of(node);
        let silence_limit = Duration::from_millis(SILENT_STREAM_LIMIT_MS);
        let silent = || format!("its status stream was silent for {SILENT_STREAM_LIMIT_MS} ms");
        let mut cluster = ClusterClient::new(channel);
        // A silent node does not answer the subscription either.
        let subscribed = tokio::time::timeout(silence_limit, cluster.watch_status(pb::StatusRequest {}));
        let mut stream = match subscribed.await {
            Ok(Ok(response)) => response.into_inner(),
            Ok(Err(status)) => return raftkv::client::Error::from_status(status).to_string(),
            Err(_silent) => return silent(),
        };
        loop {
            tokio::select! {
                message = tokio::time::timeout(silence_limit, stream.message()) => match message {
                    Ok(Ok(Some(status))) => {
                        *pauses = resubscribe_backoff();
                        self.observe_status(node, status);
                    }
                    Ok(Ok(None)) => return "its status stream ended".to_string(),
                    Ok(Err(status)) => return raftkv::client::Error::from_status(status).to_string(),
                    Err(_silent) => return silent(),
                },
                _ = resubscribe.notified() => return "a request to it failed".to_string(),
            }
        }
    }
}

fn resubscribe_backoff() -> ExponentialBackoff {
    ExponentialBuilder::new()
        .with_min_delay(RESUBSCRIBE_MIN_DELAY)
        .with_max_delay(RESUBSCRIBE_MAX_DELAY)
        .with_jitter()
        .without_max_times()
        .build()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn seen(id: u64, role: pb::Role, term: u64, leader_id: Option<u64>) -> NodeObservation {
        NodeObservation {
            reachable: true,
            status: Some(pb::NodeStatus {
                id,
                role: role as i32,
                term,
                leader_id,
                ..Default::default()
            }),
            foreign: false,
        }
    }

    fn unreachable(mut observation: NodeObservation) -> NodeObservation {
        observation.reachable = false;
        observation
    }

    fn leader(node: usize, id: u64, term: u64) -> Option<Leader> {
        Some(Leader { node, id, term })
    }

    use pb::Role::{Candidate, Follower, Leader as Leads, Shutdown};

    #[test]
    fn the_node_that_says_it_leads_is_the_leader() {
        let nodes = [
            seen(1, Follower, 3, Some(2)),
            seen(2, Leads, 3, Some(2)),
            seen(3, Follower, 3, Some(2)),
        ];
        assert_eq!(choose_leader(&nodes, None), leader(1, 2, 3));
    }

    #[test]
    fn highest_term_wins_over_a_deposed_leader_that_has_not_noticed() {
        let nodes = [
            seen(1, Leads, 4, Some(1)),
            seen(2, Leads, 5, Some(2)),
            seen(3, Follower, 5, Some(2)),
        ];
        assert_eq!(choose_leader(&nodes, None), leader(1, 2, 5));
    }

    #[test]
    fn followers_name_the_leader_before_its_own_status_arrives() {
        let nodes = [
            seen(1, Follower, 7, Some(3)),
            seen(2, Follower, 7, Some(3)),
            seen(3, Follower, 6, None),
        ];
        assert_eq!(choose_leader(&nodes, None), leader(2, 3, 7));
    }

    #[test]
    fn a_leader_that_is_unreachable_is_no_leader() {
        // Node 1 was killed; its followers still name it until they elect a new leader.
        let nodes = [
            unreachable(seen(1, Leads, 5, Some(1))),
            seen(2, Follower, 5, Some(1)),
            seen(3, Follower, 5, Some(1)),
        ];
        assert_eq!(choose_leader(&nodes, None), None);
    }

    #[test]
    fn an_election_in_progress_means_no_leader_until_it_ends() {
        let nodes = [
            unreachable(seen(1, Leads, 5, Some(1))),
            seen(2, Candidate, 6, None),
            seen(3, Follower, 6, None),
        ];
        assert_eq!(choose_leader(&nodes, None), None);
        let elected = [
            unreachable(seen(1, Leads, 5, Some(1))),
            seen(2, Leads, 6, Some(2)),
            seen(3, Follower, 6, None),
        ];
        assert_eq!(choose_leader(&elected, None), leader(1, 2, 6));
    }

    #[test]
    fn a_reachable_leader_of_an_older_term_is_no_leader_while_the_others_are_between_leaders() {
        // Node 1 led in term 6 and went silent; its stream is not known dead yet. Node 2 led in
        // term 7 and stepped down; the survivors now campaign in term 8.
        let nodes = [
            seen(1, Leads, 6, Some(1)),
            seen(2, Candidate, 8, None),
            seen(3, Follower, 8, None),
        ];
        assert_eq!(choose_leader(&nodes, None), None);
        // Followers of the old term still naming node 1 change nothing.
        let nodes = [
            seen(1, Leads, 6, Some(1)),
            seen(2, Follower, 6, Some(1)),
            seen(3, Candidate, 8, None),
        ];
        assert_eq!(choose_leader(&nodes, None), None);
    }

    #[test]
    fn nothing_heard_means_no_leader() {
        assert_eq!(
            choose_leader(&[NodeObservation::default(), NodeObservation::default()], None),
            None
        );
        assert_eq!(choose_leader(&[], None), None);
    }

    #[test]
    fn a_leader_that_is_not_one_of_the_routers_nodes_is_no_leader() {
        let nodes = [seen(1, Follower, 2, Some(9)), seen(2, Follower, 2, Some(9))];
        assert_eq!(choose_leader(&nodes, None), None);
    }

    #[test]
    fn a_leader_hint_wins_until_a_status_of_a_higher_term_arrives() {
        // The router still sees node 1 leading in term 5, but node 1 answered "ask node 2".
        let nodes = [
            seen(1, Leads, 5, Some(1)),
            seen(2, Follower, 5, Some(1)),
            seen(3, Follower, 5, Some(1)),
        ];
        let hint = HintClaim {
            leader_id: 2,
            known_term: 5,
        };
        assert_eq!(choose_leader(&nodes, Some(&hint)), leader(1, 2, 5));
        // Then node 3 is elected in term 6: the hint is outdated.
        let later = [
            seen(1, Follower, 6, Some(3)),
            seen(2, Follower, 6, Some(3)),
            seen(3, Leads, 6, Some(3)),
        ];
        assert_eq!(choose_leader(&later, Some(&hint)), leader(2, 3, 6));
    }

    #[test]
    fn a_leader_hint_naming_an_unreachable_node_is_no_leader() {
        let nodes = [seen(1, Follower, 5, None), unreachable(seen(2, Follower, 5, None))];
        assert_eq!(
            choose_leader(
                &nodes,
                Some(&HintClaim {
                    leader_id: 2,
                    known_term: 5
                })
            ),
            None
        );
    }

    #[test]
    fn a_hint_naming_an_unreachable_node_does_not_hide_the_leader_the_statuses_name() {
        // During a handover a write drew a hint naming the old leader (node 3), which then
        // stopped; node 1 leads in the term the router knew when the hint came.
        let nodes = [
            seen(1, Leads, 2, Some(1)),
            seen(2, Follower, 2, Some(1)),
            unreachable(seen(3, Follower, 2, Some(1))),
        ];
        let hint = HintClaim {
            leader_id: 3,
            known_term: 2,
        };
        assert_eq!(choose_leader(&nodes, Some(&hint)), leader(0, 1, 2));
    }

    #[test]
    fn healthy_nodes_are_the_reachable_ones_not_shutting_down() {
        let nodes = [
            seen(1, Leads, 1, Some(1)),
            unreachable(seen(2, Follower, 1, Some(1))),
            seen(3, Shutdown, 1, None),
            NodeObservation::default(),
            seen(5, Follower, 1, Some(1)),
        ];
        assert_eq!(healthy_nodes(&nodes), vec![0, 4]);
    }
}
