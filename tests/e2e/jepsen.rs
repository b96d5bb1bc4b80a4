//! A Jepsen-style test: concurrent clients read (linearizable and lease reads),
//! write, compare-and-swap and delete a few keys — through the router and directly
//! against nodes — while a nemesis kills the leader, pauses nodes, kills random
//! nodes, partitions a node from its peers, hands leadership to another node, and changes
//! the membership (adds a new node, removes a voter — the leader too). Every operation's
//! invocation, completion and outcome is recorded, and the history is checked for
//! linearizability (the `raftkv-checker` crate, `checker/`).
//!
//! The membership ebbs and flows between three and five voters ([`VOTER_TIDE`]): the
//! cluster starts with three, and each change adds or removes one voter. A new node gets a new id (removed ids are never reused), an empty data directory,
//! `--join`, a proxy of its own (so partitions cut it too) and a direct client of its own. A
//! removed node runs on for a moment, its direct client still pinned to it (ops there fail or
//! are redirected), and is then stopped; its client keeps trying until the end. The other
//! faults pick among the current members.
//!
//! Partitions are real: every node sits behind a fault-injecting proxy
//! (`nemesis.rs`) through which all Raft traffic flows, and the test asserts that
//! each partition actually held traffic back, so it cannot pass with the fault
//! silently absent.
//!
//! `RAFTKV_SOAK_SECS` sets how long the clients run (default 30 s, for CI);
//! `RAFTKV_JEPSEN_SEED` replays a nemesis/client schedule. On failure the
//! history is written to a JSON file whose path is printed.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use raftkv::client::{Client, Error};
use raftkv::pb::Consistency;
use raftkv_checker::{Budget, History, Op, OpResult, Operation, Outcome};
use tokio::task::JoinHandle;
use tokio::time::Instant;

use crate::common::{ClusterOptions, TestCluster};
use crate::nemesis::{own_subnet, test_runtime, FaultyNetwork};

/// How long the clients run unless `RAFTKV_SOAK_SECS` says otherwise.
const DEFAULT_RUN_SECS: u64 = 30;
const KEYS: usize = 4;
const CLIENTS_VIA_ROUTER: u64 = 4;
const CLIENTS_DIRECT: u64 = 4;
/// The bound on one operation, retries included: past it the outcome is unknown.
const OP_TIMEOUT: Duration = Duration::from_millis(1500);
/// How long each fault lasts, and the calm between two faults.
const FAULT_SECS: Duration = Duration::from_millis(1500);
const CALM: Duration = Duration::from_millis(1000);
/// The client id of the final reads made after the faults.
const FINAL_READER: u64 = 1000;
/// The voters the cluster starts with.
const INITIAL_VOTERS: usize = 3;
/// The voter counts the membership changes steer to, one after another, over and over: the
/// first change adds a node and the second removes one, so that a short run sees both; then
/// the cluster grows to five and shrinks back.
const VOTER_TIDE: [usize; 6] = [4, 3, 4, 5, 4, 3];
/// The bound on one membership change (or listing), retries included; a new node has a few
/// hundred keys and a snapshot at most to catch up on.
const MEMBERSHIP_TIMEOUT: Duration = Duration::from_secs(10);

/// A small, seedable generator so that a failing schedule can be replayed.
#[derive(Clone)]
struct Rng(u64);

impl Rng {
    fn next(&mut self) -> u64 {
        // xorshift64*
        self.0 ^= self.0 >> 12;
        self.0 ^= self.0 << 25;
        self.0 ^= self.0 >> 27;
        self.0.wrapping_mul(0x2545_F491_4F6C_DD1D)
    }
    fn below(&mut self, n: u64) -> u64 {
        self.next() % n
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Fault {
    KillLeader,
    PauseNode,
    KillRandomNode,
    PartitionNode,
    TransferLeader,
    ChangeMembership,
}

/// How many kinds of [`Fault`] there are: a run injects each at least once.
const FAULT_KINDS: usize = 6;

/// The nemesis's round: one fault after another, over and over. Every kind comes in the
/// first six steps (a loaded machine may fit no more in a 30 s run), the membership changes
/// twice a round: the first adds a node, the seventh step removes one.
const SCHEDULE: [Fault; 7] = [
    Fault::ChangeMembership,
    Fault::KillLeader,
    Fault::PauseNode,
    Fault::KillRandomNode,
    Fault::PartitionNode,
    Fault::TransferLeader,
    Fault::ChangeMembership,
];

fn key_name(i: u64) -> Vec<u8> {
    format!("jepsen-{i}").into_bytes()
}

/// The reads served, one JSON line each (`op` = the history's index), for diagnosis.
static READ_LOG: std::sync::Mutex<Vec<String>> = std::sync::Mutex::new(Vec::new());
/// When the run began, for the nemesis lines' timestamps (the history's clock).
static RUN_START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();

fn read_log(line: String) {
    READ_LOG.lock().expect("the read log").push(line);
}

/// One client's loop: random operations on random keys until `stop`.
async fn run_client(id: u64, client: Client, history: Arc<History>, stop: Arc<AtomicBool>, mut rng: Rng) {
    let mut writes = 0u64;
    let mut last_seen: BTreeMap<u64, Option<Vec<u8>>> = BTreeMap::new();
    while !stop.load(Ordering::Relaxed) {
        let k = rng.below(KEYS as u64);
        let key = key_name(k);
        match rng.below(10) {
            0..=3 => {
                // Lease reads must be just as linearizable, as long as clocks run alike.
                let consistency = if rng.below(2) == 0 {
                    Consistency::Linearizable
                } else {
                    Consistency::Lease
                };
                let pending = history.invoke(id, key.clone(), Op::Read);
                let op_index = pending.index();
                let outcome = match client.get(Bytes::from(key.clone()), consistency).await {
                    Ok(reply) => {
                        // Who served the read, how, and how far it had applied: what a stale read
                        // needs explained (written beside the history when the check fails).
                        read_log(format!(
                            "{{\"op\":{op_index},\"consistency\":\"{consistency:?}\",\"node\":{},\"applied\":{}}}",
                            reply.header.as_ref().map_or(0, |h| h.node_id),
                            reply.header.as_ref().map_or(0, |h| h.applied_index)
                        ));
                        Outcome::Ok(OpResult::Read(Some(reply.value.to_vec())))
                    }
                    Err(Error::NotFound) => Outcome::Ok(OpResult::Read(None)),
                    Err(Error::InvalidArgument(e)) => panic!("a valid read was refused: {e}"),
                    // A read that failed observed nothing: it constrains nothing.
                    Err(_) => Outcome::Failed,
                };
                if let Outcome::Ok(OpResult::Read(v)) = &outcome {
                    last_seen.insert(k, v.clone());
                }
                history.complete(pending, outcome);
            }
            4..=5 => {
                writes += 1;
                let value = format!("c{id}-{writes}").into_bytes();
                let pending = history.invoke(id, key.clone(), Op::Write(value.clone()));
                let outcome = write_outcome(
                    client
                        .put(Bytes::from(key), Bytes::from(value))
                        .await
                        .map(|_| OpResult::Written),
                );
                history.complete(pending, outcome);
            }
            6..=8 => {
                writes += 1;
                let expect = last_seen.get(&k).cloned().flatten();
                let new = format!("c{id}-{writes}").into_bytes();
                let op = Op::Cas {
                    expect: expect.clone(),
                    new: new.clone(),
                };
                let pending = history.invoke(id, key.clone(), op);
                let reply = client
                    .compare_and_swap(Bytes::from(key), expect.map(Bytes::from), Bytes::from(new.clone()))
                    .await;
                if let Ok(r) = &reply {
                    last_seen.insert(
                        k,
                        if r.swapped {
                            Some(new)
                        } else {
                            r.current.as_ref().map(|c| c.to_vec())
                        },
                    );
                }
                history.complete(pending, write_outcome(reply.map(|r| OpResult::Cas(r.swapped))));
            }
            _ => {
                let pending = history.invoke(id, key.clone(), Op::Delete);
                let reply = client.delete(Bytes::from(key)).await;
                history.complete(
                    pending,
                    write_outcome(reply.map(|r| OpResult::Deleted {
                        existed: Some(r.existed),
                    })),
                );
            }
        }
    }
}

/// A write that failed may still have been applied (or be applied later by a
/// new leader): its outcome is unknown. Only a refusal of bad input is certain.
fn write_outcome(result: Result<OpResult, Error>) -> Outcome {
    match result {
        Ok(r) => Outcome::Ok(r),
        Err(Error::InvalidArgument(e)) => panic!("a valid write was refused: {e}"),
        Err(_) => Outcome::Unknown,
    }
}

/// What the nemesis did.
#[derive(Default, Debug)]
struct FaultLog {
    injected: BTreeMap<String, u64>,
    /// Nodes added (made voters) and members removed.
    added: u64,
    removed: u64,
}

/// The clients that run against the cluster, and what they share; more are started as
/// nodes join.
struct Clients {
    history: Arc<History>,
    stop: Arc<AtomicBool>,
    tasks: Vec<JoinHandle<()>>,
    next_id: u64,
}

impl Clients {
    /// Starts a client of `endpoint` (the router, or a node it is pinned to).
    fn start(&mut self, endpoint: String, rng: Rng) {
        let id = self.next_id;
        self.next_id += 1;
        assert!(id < FINAL_READER, "too many clients");
        let client = Client::new(vec![endpoint], OP_TIMEOUT).expect("a client");
        self.tasks.push(tokio::spawn(run_client(
            id,
            client,
            self.history.clone(),
            self.stop.clone(),
            rng,
        )));
    }
}

/// What the nemesis works with.
struct Nemesis {
    net: FaultyNetwork,
    /// Membership changes and listings go through the router, as an operator's would.
    admin: Client,
    rng: Rng,
    /// Where in [`VOTER_TIDE`] the membership changes are: the voter count they steer to.
    tide: usize,
    log: FaultLog,
}

/// The members as the leader lists them: (voters, learners), or `None` when no leader
/// answered in time.
async fn members(admin: &Client) -> Option<(Vec<u64>, Vec<u64>)> {
    let list = admin.member_list().await.ok()?;
    let (voters, learners): (Vec<_>, Vec<_>) = list.members.iter().partition(|member| member.voter);
    let ids = |members: Vec<&raftkv::pb::Member>| members.iter().map(|member| member.id).collect();
    Some((ids(voters), ids(learners)))
}

/// Brings the cluster's picture in line with the membership — a node that is no member (an
/// add refused before it made the node a learner, a removal whose answer was lost) is stopped
/// and left out — and returns the nodes the faults may pick from. When no leader lists the
/// membership, every node of the picture.
async fn current_members(cluster: &mut TestCluster, admin: &Client) -> Vec<u64> {
    let Some((voters, learners)) = members(admin).await else {
        return cluster.ids();
    };
    let members: BTreeSet<u64> = voters.into_iter().chain(learners).collect();
    for id in cluster.ids() {
        if !members.contains(&id) {
            cluster.forget(id);
            nemesis_line(&format!("node {id} is no member: stopped and left out"));
        }
    }
    cluster.ids()
}

/// Adds a new node, or removes a member (half the time the leader), towards the voter count
/// [`VOTER_TIDE`] is at (moving on to the next count once there); a learner left by an add
/// that did not finish is removed first. Says what it did.
async fn change_membership(cluster: &mut TestCluster, nemesis: &mut Nemesis, clients: &mut Clients) -> String {
    let Some((voters, learners)) = members(&nemesis.admin).await else {
        return "change the membership: failed (no leader listed the members)".to_string();
    };
    // A change that failed (or whose answer was lost) may have left the count at the target.
    while VOTER_TIDE[nemesis.tide % VOTER_TIDE.len()] == voters.len() {
        nemesis.tide += 1;
    }
    if voters.len() < VOTER_TIDE[nemesis.tide % VOTER_TIDE.len()] && learners.is_empty() {
        let net = &mut nemesis.net;
        let id = cluster.start_joining_node_placed(|id| Some(net.add_node(id))).await;
        let address = cluster.address(id).to_string();
        // Its client starts at once: while the node waits to be added it serves nothing.
        clients.start(address.clone(), Rng(nemesis.rng.next() | 1));
        return match nemesis.admin.member_add(id, &address, false).await {
            Ok(_) => {
                nemesis.log.added += 1;
                nemesis.tide += 1;
                format!("add node {id} as a voter ({} voters)", voters.len() + 1)
            }
            Err(error) => format!("add node {id}: failed ({error})"),
        };
    }
    let leader = cluster.current_leader().await;
    let random_voter = voters[nemesis.rng.below(voters.len() as u64) as usize];
    // Half the time the leader, which hands leadership over before it is removed.
    let target = match (learners.first(), leader) {
        (Some(learner), _) => *learner,
        (None, Some(leader)) if nemesis.rng.below(2) == 0 && voters.contains(&leader) => leader,
        (None, _) => random_voter,
    };
    match nemesis.admin.member_remove(target).await {
        Ok(_) => {
            nemesis.log.removed += 1;
            if !learners.contains(&target) {
                nemesis.tide += 1;
            }
            // The removed node runs on for a moment, its direct client still pinned to it.
            tokio::time::sleep(FAULT_SECS).await;
            cluster.forget(target);
            let was = if leader == Some(target) { ", the leader" } else { "" };
            format!(
                "remove node {target}{was} ({} voters), and stop it {FAULT_SECS:?} later",
                voters.len() - usize::from(!learners.contains(&target))
            )
        }
        Err(error) => format!("remove node {target}: failed ({error})"),
    }
}

/// Prints what the nemesis did, with the time since the run began (the history's clock).
fn nemesis_line(what: &str) {
    let at = RUN_START
        .get()
        .map(|start| start.elapsed().as_secs_f64())
        .unwrap_or_default();
    eprintln!("nemesis: [{at:.3} s] {what}");
}

async fn inject(fault: Fault, cluster: &mut TestCluster, nemesis: &mut Nemesis, clients: &mut Clients) {
    let ids = current_members(cluster, &nemesis.admin).await;
    let rng = &mut nemesis.rng;
    let net = &nemesis.net;
    let random_node = ids[rng.below(ids.len() as u64) as usize];
    let leader = cluster.current_leader().await;
    let what = match fault {
        Fault::KillLeader => {
            let Some(leader) = leader else { return };
            cluster.kill9(leader);
            tokio::time::sleep(FAULT_SECS).await;
            cluster.restart(leader).await;
            format!("kill -9 leader (node {leader}) and restart")
        }
        Fault::KillRandomNode => {
            cluster.kill9(random_node);
            tokio::time::sleep(FAULT_SECS).await;
            cluster.restart(random_node).await;
            format!("kill -9 node {random_node} and restart")
        }
        Fault::PauseNode => {
            cluster.pause(random_node);
            tokio::time::sleep(FAULT_SECS).await;
            cluster.resume(random_node);
            format!("SIGSTOP/SIGCONT node {random_node}")
        }
        Fault::PartitionNode => {
            // Half the time the leader, so that a deposed leader's behaviour is exercised.
            let target = if rng.below(2) == 0 {
                leader.unwrap_or(random_node)
            } else {
                random_node
            };
            let before = net.held_back();
            net.isolate(target);
            tokio::time::sleep(FAULT_SECS).await;
            net.heal();
            let held = net.held_back() - before;
            assert!(
                held > 0,
                "the partition of node {target} held back no traffic: the fault was not really injected"
            );
            format!("partition node {target} from its peers ({held} transfers held back)")
        }
        Fault::TransferLeader => {
            // Mid-load, as an operator would before maintenance: writes in flight on the old
            // leader are committed by the new one or refused with its name.
            let transfer = cluster.nodes_client().transfer_leader(None).await;
            tokio::time::sleep(FAULT_SECS).await;
            match transfer {
                Ok(moved) => format!("hand leadership from node {leader:?} to node {}", moved.leader_id),
                Err(error) => format!("hand leadership over from node {leader:?}: failed ({error})"),
            }
        }
        Fault::ChangeMembership => change_membership(cluster, nemesis, clients).await,
    };
    nemesis_line(&what);
    *nemesis.log.injected.entry(format!("{fault:?}")).or_default() += 1;
}

#[test]
fn history_under_crashes_pauses_and_partitions_is_linearizable() {
    let run_secs: u64 = std::env::var("RAFTKV_SOAK_SECS")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or(DEFAULT_RUN_SECS);
    let seed: u64 = std::env::var("RAFTKV_JEPSEN_SEED")
        .ok()
        .and_then(|s| s.parse().ok())
        .unwrap_or_else(|| {
            let t = std::time::SystemTime::now()
                .duration_since(std::time::UNIX_EPOCH)
                .unwrap();
            (t.as_nanos() as u64) ^ u64::from(std::process::id())
        });
    eprintln!("jepsen: seed {seed} (RAFTKV_JEPSEN_SEED={seed} replays the schedule), {run_secs} s of load");
    let scheduled: BTreeSet<Fault> = SCHEDULE.into_iter().collect();
    assert_eq!(scheduled.len(), FAULT_KINDS, "the schedule has every kind of fault");

    // The proxies of nodes that join later are added as they join.
    let net = FaultyNetwork::start(INITIAL_VOTERS as u64, own_subnet(0));
    let addresses = net.node_addresses();

    test_runtime().block_on(async move {
        let options = ClusterOptions {
            nodes: INITIAL_VOTERS,
            addresses: Some(addresses),
            node_args: vec!["--snapshot-after-logs".into(), "500".into()],
            ..ClusterOptions::default()
        };
        let mut cluster = TestCluster::start_with(options).await;
        let history = Arc::new(History::new());
        let _ = RUN_START.set(Instant::now());
        let mut rng = Rng(seed | 1);

        let mut clients = Clients {
            history: history.clone(),
            stop: Arc::new(AtomicBool::new(false)),
            tasks: Vec::new(),
            next_id: 0,
        };
        for id in 0..CLIENTS_VIA_ROUTER + CLIENTS_DIRECT {
            let endpoint = if id < CLIENTS_VIA_ROUTER {
                cluster.router_address().to_string()
            } else {
                let ids = cluster.ids();
                cluster.address(ids[(id as usize) % ids.len()]).to_string()
            };
            clients.start(endpoint, Rng(rng.next() | 1));
        }

        let admin = Client::new(vec![cluster.router_address().to_string()], MEMBERSHIP_TIMEOUT).expect("a client");
        let mut nemesis = Nemesis {
            net,
            admin,
            rng,
            tide: 0,
            log: FaultLog::default(),
        };
        let started = Instant::now();
        let mut round = 0;
        while started.elapsed() < Duration::from_secs(run_secs) {
            tokio::time::sleep(CALM).await;
            let fault = SCHEDULE[round % SCHEDULE.len()];
            round += 1;
            inject(fault, &mut cluster, &mut nemesis, &mut clients).await;
        }
        clients.stop.store(true, Ordering::Relaxed);
        for task in clients.tasks {
            task.await.expect("a client task panicked");
        }

        // Settle: everything up and connected, one leader; then read every key
        // once more, so that writes of unknown outcome are pinned down.
        nemesis.net.heal();
        let members = current_members(&mut cluster, &nemesis.admin).await;
        cluster.leader().await;
        let reader = Client::new(vec![cluster.router_address().to_string()], Duration::from_secs(10)).unwrap();
        for k in 0..KEYS as u64 {
            let key = key_name(k);
            let pending = history.invoke(FINAL_READER, key.clone(), Op::Read);
            let outcome = match reader.get(Bytes::from(key.clone()), Consistency::Linearizable).await {
                Ok(reply) => Outcome::Ok(OpResult::Read(Some(reply.value.to_vec()))),
                Err(Error::NotFound) => Outcome::Ok(OpResult::Read(None)),
                Err(e) => panic!("the cluster did not serve a read after the faults healed: {e}"),
            };
            history.complete(pending, outcome);
        }

        let ops = history.operations();
        let faults = nemesis.log;
        report_counts(&ops, &faults);
        eprintln!(
            "jepsen: membership: {} nodes added, {} removed; members at the end: {members:?}",
            faults.added, faults.removed
        );
        let budget = Budget {
            threads: 2,
            time_limit_total: Some(Duration::from_secs(120)),
            ..Budget::default()
        };
        let verdict = raftkv_checker::check(&ops, &budget);
        eprintln!("jepsen: verdict: {}", first_line(&verdict.to_string()));
        if !verdict.is_linearizable() {
            let path = std::env::temp_dir().join(format!("raftkv-jepsen-history-{seed}.json"));
            history.write_json(&path).expect("write the history");
            let reads = std::env::temp_dir().join(format!("raftkv-jepsen-reads-{seed}.jsonl"));
            std::fs::write(&reads, READ_LOG.lock().expect("the read log").join("\n")).expect("write the reads");
            eprintln!("jepsen: who served each read: {}", reads.display());
            panic!(
                "the history is not shown linearizable ({verdict}); history written to {}",
                path.display()
            );
        }
        let completed_ok = ops.iter().filter(|o| matches!(o.outcome, Outcome::Ok(_))).count();
        assert!(
            completed_ok > 100,
            "only {completed_ok} operations succeeded: the cluster barely served the load"
        );
        assert_eq!(
            faults.injected.len(),
            FAULT_KINDS,
            "every kind of fault was injected at least once: {faults:?}"
        );
        // Like a partition that held nothing back, membership changes that never succeeded
        // would leave the fault absent. (Removals come from the seventh step on; they are
        // counted above but not required of a run that may be short.)
        assert!(faults.added > 0, "no membership change added a node: {faults:?}");
    });
}

fn first_line(s: &str) -> &str {
    s.lines().next().unwrap_or("")
}

/// Prints operations by kind and outcome, and faults by kind.
fn report_counts(ops: &[Operation], faults: &FaultLog) {
    let mut counts: BTreeMap<(&str, &str), u64> = BTreeMap::new();
    for o in ops {
        let kind = match o.op {
            Op::Read => "read",
            Op::Write(_) => "write",
            Op::Delete => "delete",
            Op::Cas { .. } => "cas",
            Op::DeleteIf { .. } => "delete-if",
        };
        let outcome = match &o.outcome {
            Outcome::Ok(OpResult::Cas(false)) => "ok (not swapped)",
            Outcome::Ok(_) => "ok",
            Outcome::Failed => "failed",
            Outcome::Unknown => "unknown",
        };
        *counts.entry((kind, outcome)).or_default() += 1;
    }
    eprintln!("jepsen: {} operations", ops.len());
    for ((kind, outcome), n) in &counts {
        eprintln!("jepsen:   {kind:<7} {outcome:<17} {n}");
    }
    for (fault, n) in &faults.injected {
        eprintln!("jepsen: fault {fault}: {n}");
    }
}
