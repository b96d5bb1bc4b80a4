//! `raftkv cluster up` and `raftkv cluster down`: a local cluster of real `raftkv-node`
//! processes and a `raftkv-router`, for trying raftkv out and for watching it survive the
//! death of its leader.
//!
//! `up` starts the children, waits until a leader is elected, and then either leaves them
//! running (`--detach`) or supervises them in the foreground: it reports leader changes and
//! children that exit, and takes commands (kill/stop/restart/status) from standard input.
//! Every way out of the foreground — Ctrl-C, SIGTERM, `quit`, an error, a panic — stops the
//! children: gracefully where it can, with SIGKILL past a deadline or on a panic.

mod children;
mod console;
mod layout;
mod membership;
mod membership_record;
mod state_file;

pub use children::locate_binary;
pub use layout::NODE_BINARY;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::ExitStatus;
use std::time::Duration;

use anyhow::{anyhow, bail, Context};
use clap::Args;
use raftkv::client::{Client, ClientOptions};
use raftkv::tls::dev_certs::{self, DEV_CERT_FILES};
use raftkv::tls::ClientTls;
use tokio::signal::unix::{signal, Signal, SignalKind};
use tokio::time::Instant;

use self::children::{describe_exit, ChildProcess, Lifetime, Role};
use self::console::{ConsoleCommand, Target};
use self::layout::{state_file_in, ClusterLayout};
use self::state_file::{ClusterState, RecordedNode, RecordedProcess};
use crate::election_watch::{ElectionEvent, ElectionWatch};
use crate::status::{self, time_of_day, Member};
use crate::CliError;

/// How long children get to stop after SIGTERM before they are sent SIGKILL.
pub const STOP_TIMEOUT: Duration = Duration::from_secs(10);
/// How long to wait for the kernel to finish off processes sent SIGKILL.
const KILL_WAIT: Duration = Duration::from_secs(5);
/// Extra time `cluster down` gives a foreground `cluster up` to stop its children itself
/// before it steps in.
const SUPERVISOR_GRACE: Duration = Duration::from_secs(2);
/// How often the foreground checks its children and who leads.
const SUPERVISE_INTERVAL: Duration = status::WATCH_INTERVAL;
/// The default data directory.
const DEFAULT_DATA_DIR: &str = "./raftkv-data";

#[derive(Args, Debug)]
pub struct UpArgs {
    /// How many nodes to start (1 to 9).
    #[arg(long, default_value_t = 3, value_name = "N")]
    nodes: u16,
    /// Directory for the nodes' data, their logs, cluster.json and, once the console has added or
    /// removed nodes, membership.json (created if missing).
    #[arg(long, default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    data_dir: PathBuf,
    /// The router listens on 127.0.0.1:PORT, node i on PORT+i.
    #[arg(long, default_value_t = 7000, value_name = "PORT")]
    base_port: u16,
    /// Leave the cluster running in the background and exit; `raftkv cluster down` stops it.
    #[arg(long)]
    detach: bool,
    /// Run every connection with TLS (client certificates required): the certificates are
    /// made in DIR/certs on the first run and reused after.
    #[arg(long)]
    tls: bool,
    /// How long to wait for the router and an elected leader.
    #[arg(long, default_value = "30s", value_parser = raftkv::usage::parse_positive_duration, value_name = "DURATION")]
    ready_timeout: Duration,
}

#[derive(Args, Debug)]
pub struct DownArgs {
    /// The directory the cluster was started with.
    #[arg(long, default_value = DEFAULT_DATA_DIR, value_name = "DIR")]
    data_dir: PathBuf,
    /// How long the processes get to stop gracefully before they are killed.
    #[arg(long, default_value = "10s", value_parser = raftkv::usage::parse_positive_duration, value_name = "DURATION")]
    stop_timeout: Duration,
}

/// `raftkv cluster up`.
pub async fn up(args: UpArgs) -> Result<(), CliError> {
    let data_dir = std::path::absolute(&args.data_dir)
        .with_context(|| format!("cannot resolve the data directory {}", args.data_dir.display()))?;
    let mut layout = ClusterLayout::new(data_dir, args.base_port, args.nodes)
        .map_err(CliError::Usage)?
        .with_programs(
            children::locate_binary(layout::NODE_BINARY),
            children::locate_binary(layout::ROUTER_BINARY),
        );
    if args.tls {
        layout = layout.with_tls();
    }
    if let Some(record) = membership_record::read(&layout.membership_file())? {
        layout = layout.with_membership(record).map_err(CliError::Usage)?;
    }
    std::fs::create_dir_all(layout.data_dir())
        .with_context(|| format!("cannot create the data directory {}", layout.data_dir().display()))?;
    refuse_if_running(&layout)?;
    refuse_if_ports_taken(&layout)?;
    let client_tls = match layout.tls_dir() {
        Some(dir) => Some(tls_certificates(dir)?),
        None => None,
    };

    let lifetime = if args.detach {
        Lifetime::Detached
    } else {
        Lifetime::Supervised
    };
    // Signals are caught from before the first child starts, so none can be left behind.
    let mut signals = ShutdownSignals::new()?;
    let started_at = Instant::now();
    let mut cluster = LocalCluster::start(layout, lifetime)?;
    let options = ClientOptions {
        tls: client_tls,
        ..ClientOptions::default()
    };
    let probe_client = Client::with_options(
        vec![cluster.layout.router_address()],
        status::WATCH_PROBE_TIMEOUT,
        options,
    )?;
    let members = cluster.members();
    let mut elections = ElectionWatch::vacant_since(started_at.into_std());
    println!(
        "starting {} nodes and a router in {} (logs: node-N.log, router.log)",
        members.len(),
        cluster.layout.data_dir().display()
    );

    let startup = wait_until_ready(
        &mut cluster,
        &probe_client,
        &members,
        &mut elections,
        args.ready_timeout,
        &mut signals,
    )
    .await;
    let election = match startup {
        Ok(Startup::Ready(election)) => election,
        Ok(Startup::Interrupted(signal_name)) => {
            println!("{signal_name} received while starting; stopping the cluster");
            cluster.stop_all().await?;
            return Ok(());
        }
        Err(error) => {
            cluster.stop_all().await?;
            return Err(CliError::Failed(error));
        }
    };
    print_endpoints(&mut cluster, &election);

    match lifetime {
        Lifetime::Detached => {
            cluster.detach();
            println!(
                "the cluster keeps running in the background; stop it with: raftkv cluster down --data-dir {}",
                cluster.layout.data_dir().display()
            );
            Ok(())
        }
        Lifetime::Supervised => {
            println!("{}", console::HELP);
            println!("Ctrl-C stops the cluster.");
            let outcome = supervise(&mut cluster, &probe_client, &mut elections, &mut signals).await;
            cluster.stop_all().await?;
            outcome.map_err(CliError::Failed)
        }
    }
}

/// `raftkv cluster down`.
pub async fn down(args: DownArgs) -> Result<(), CliError> {
    let path = state_file_in(&args.data_dir);
    let Some(state) = state_file::read(&path)? else {
        eprintln!(
            "no cluster is recorded in {} (no cluster.json); nothing to stop",
            args.data_dir.display()
        );
        return Ok(());
    };
    let live = state.live_processes();
    if live.is_empty() {
        state_file::remove(&path)?;
        println!(
            "the cluster in {} was not running; removed its stale cluster.json",
            args.data_dir.display()
        );
        return Ok(());
    }
    // A foreground `cluster up` stops its own children in order; otherwise each one is told.
    let supervisor = state
        .supervisor_pid
        .filter(|pid| live.iter().any(|(_, live_pid)| live_pid == pid));
    let mut grace = args.stop_timeout;
    match supervisor {
        Some(pid) => {
            let _ = children::send_signal(pid, libc::SIGTERM);
            grace += SUPERVISOR_GRACE;
        }
        None => {
            for (_, pid) in &live {
                let _ = children::send_signal(*pid, libc::SIGTERM);
            }
        }
    }
    let pids: Vec<u32> = live.iter().map(|(_, pid)| *pid).collect();
    let stubborn = children::wait_until_gone(&pids, Instant::now() + grace).await;
    let mut killed = Vec::new();
    for pid in stubborn {
        if children::is_live_raftkv_process(pid) && children::send_signal(pid, libc::SIGKILL).is_ok() {
            killed.push(pid);
        }
    }
    let survivors = children::wait_until_gone(&killed, Instant::now() + KILL_WAIT).await;
    if !survivors.is_empty() {
        return Err(CliError::Failed(anyhow!(
            "processes {survivors:?} are still running even after SIGKILL"
        )));
    }
    state_file::remove(&path)?;
    for (name, pid) in &live {
        if killed.contains(pid) {
            println!(
                "stopped {name} (pid {pid}) with SIGKILL: it did not stop within {}",
                humantime::format_duration(grace)
            );
        } else {
            println!("stopped {name} (pid {pid})");
        }
    }
    Ok(())
}

/// The certificates of a TLS cluster in `dir`: made there on the first run, reused after.
/// Returns what the CLI connects with (the CA and the client certificate).
fn tls_certificates(dir: &std::path::Path) -> Result<ClientTls, CliError> {
    let present: Vec<&str> = DEV_CERT_FILES
        .into_iter()
        .filter(|name| dir.join(name).exists())
        .collect();
    if present.is_empty() {
        let hosts = ["127.0.0.1".to_string(), "localhost".to_string()];
        crate::certs::write(dir, &hosts, false)?;
        println!("made a development CA and certificates in {}", dir.display());
    } else if present.len() < DEV_CERT_FILES.len() {
        return Err(CliError::Failed(anyhow!(
            "{} holds only some of {}; remove it, or remake them with `raftkv certs create --dir {} --force`",
            dir.display(),
            DEV_CERT_FILES.join(", "),
            dir.display()
        )));
    }
    ClientTls::load(
        &dir.join(dev_certs::CA_FILE),
        Some((
            &dir.join(dev_certs::CLIENT_CERT_FILE),
            &dir.join(dev_certs::CLIENT_KEY_FILE),
        )),
    )
    .map_err(|error| CliError::Failed(anyhow!(error)))
}

/// A `cluster up` in the same directory that still runs would fight this one over the data.
fn refuse_if_running(layout: &ClusterLayout) -> anyhow::Result<()> {
    let Some(state) = state_file::read(&layout.state_file())? else {
        return Ok(());
    };
    let live = state.live_processes();
    if live.is_empty() {
        return Ok(()); // A stale record of a cluster that is gone: it is replaced.
    }
    let pids: Vec<String> = live.iter().map(|(name, pid)| format!("{name} pid {pid}")).collect();
    bail!(
        "a cluster is already running in {} ({}); stop it with `raftkv cluster down --data-dir {}`",
        layout.data_dir().display(),
        pids.join(", "),
        layout.data_dir().display()
    )
}

/// Says which port is taken before any child starts and fails to bind it.
fn refuse_if_ports_taken(layout: &ClusterLayout) -> anyhow::Result<()> {
    for port in layout.ports() {
        if let Err(error) = std::net::TcpListener::bind(("127.0.0.1", port)) {
            bail!("port {port} on 127.0.0.1 is not free ({error}); choose another --base-port");
        }
    }
    Ok(())
}

/// SIGINT (Ctrl-C), SIGTERM and SIGHUP: each means "stop the cluster and exit".
struct ShutdownSignals {
    interrupt: Signal,
    terminate: Signal,
    hangup: Signal,
}

impl ShutdownSignals {
    fn new() -> anyhow::Result<ShutdownSignals> {
        let listen = |kind: SignalKind| signal(kind).context("cannot listen for signals");
        Ok(ShutdownSignals {
            interrupt: listen(SignalKind::interrupt())?,
            terminate: listen(SignalKind::terminate())?,
            hangup: listen(SignalKind::hangup())?,
        })
    }

    /// Waits for the next one; returns its name.
    async fn recv(&mut self) -> &'static str {
        tokio::select! {
            _ = self.interrupt.recv() => "SIGINT",
            _ = self.terminate.recv() => "SIGTERM",
            _ = self.hangup.recv() => "SIGHUP",
        }
    }
}

/// The running children of one `cluster up`, by role.
struct LocalCluster {
    layout: ClusterLayout,
    lifetime: Lifetime,
    children: BTreeMap<Role, ChildProcess>,
    /// Whether dropping this kills the children: true until they are stopped or detached,
    /// so that an error or a panic never leaves processes behind.
    kill_on_drop: bool,
}

/// How the wait for the first leader ended.
enum Startup {
    Ready(ElectionEvent),
    Interrupted(&'static str),
}

impl LocalCluster {
    /// Starts the nodes, then the router, and records them in cluster.json.
    fn start(layout: ClusterLayout, lifetime: Lifetime) -> anyhow::Result<LocalCluster> {
        let mut cluster = LocalCluster {
            layout,
            lifetime,
            children: BTreeMap::new(),
            kill_on_drop: true,
        };
        let roles: Vec<Role> = cluster
            .layout
            .node_ids()
            .map(Role::Node)
            .chain([Role::Router])
            .collect();
        for role in roles {
            cluster.start_one(role)?;
        }
        Ok(cluster)
    }

    /// Starts `role` (again) with its usual flags, and updates cluster.json.
    fn start_one(&mut self, role: Role) -> anyhow::Result<u32> {
        let child = children::spawn(&self.layout.launch_plan(role), self.lifetime)?;
        let pid = child.pid;
        self.children.insert(role, child);
        self.save_state()?;
        Ok(pid)
    }

    fn members(&self) -> Vec<Member> {
        self.layout
            .node_ids()
            .map(|id| Member {
                id,
                address: self.layout.node_address(id),
            })
            .collect()
    }

    fn save_state(&mut self) -> anyhow::Result<()> {
        let supervisor_pid = (self.lifetime == Lifetime::Supervised).then(std::process::id);
        let mut running_pid = |role: Role| self.children.get_mut(&role).and_then(ChildProcess::running_pid);
        let router = RecordedProcess {
            address: self.layout.router_address(),
            pid: running_pid(Role::Router),
        };
        let nodes = self
            .layout
            .node_ids()
            .map(|id| RecordedNode {
                id,
                address: self.layout.node_address(id),
                pid: running_pid(Role::Node(id)),
            })
            .collect();
        let state = ClusterState {
            data_dir: self.layout.data_dir().display().to_string(),
            base_port: self.layout.base_port(),
            supervisor_pid,
            router,
            nodes,
        };
        state_file::write(&self.layout.state_file(), &state)
    }

    /// The children that exited since the last look, with how.
    fn poll_exits(&mut self) -> Vec<(Role, u32, ExitStatus)> {
        self.children
            .values_mut()
            .filter_map(|child| child.poll_exit().map(|status| (child.role, child.pid, status)))
            .collect()
    }

    /// Stops every child: SIGTERM, the router first so it does not report its nodes'
    /// deaths, then SIGKILL for any still running after [`STOP_TIMEOUT`]. Removes cluster.json.
    async fn stop_all(&mut self) -> anyhow::Result<()> {
        let deadline = Instant::now() + STOP_TIMEOUT;
        let mut stopped = Vec::new();
        for child in self.children.values_mut() {
            if child.signal(libc::SIGTERM) {
                stopped.push(child.role);
                if child.role == Role::Router {
                    child.wait_until(deadline).await;
                }
            }
        }
        for child in self.children.values_mut() {
            if !stopped.contains(&child.role) {
                continue;
            }
            let status = match child.wait_until(deadline).await {
                Some(status) => describe_exit(status),
                None => {
                    child.signal(libc::SIGKILL);
                    match child.wait_until(Instant::now() + KILL_WAIT).await {
                        Some(_) => format!("killed with SIGKILL after {}s", STOP_TIMEOUT.as_secs()),
                        None => format!("still running (pid {}) even after SIGKILL", child.pid),
                    }
                }
            };
            println!("{} {} (pid {}) stopped: {status}", time_of_day(), child.role, child.pid);
        }
        self.kill_on_drop = false;
        state_file::remove(&self.layout.state_file())?;
        println!(
            "cluster stopped; the data stays in {}",
            self.layout.data_dir().display()
        );
        Ok(())
    }

    /// Leaves the children running when this is dropped (`--detach`).
    fn detach(&mut self) {
        self.kill_on_drop = false;
    }

    /// The child for a console target that names a node id or the router.
    fn child_mut(&mut self, role: Role) -> Option<&mut ChildProcess> {
        self.children.get_mut(&role)
    }
}

impl Drop for LocalCluster {
    fn drop(&mut self) {
        if !self.kill_on_drop {
            return;
        }
        for child in self.children.values_mut() {
            child.signal(libc::SIGKILL);
        }
        let _ = state_file::remove(&self.layout.state_file());
    }
}

/// Waits until the router answers and a leader is elected, or `deadline`. A child that
/// exits meanwhile ends the wait with the last line of its log, which usually says why.
async fn wait_until_ready(
    cluster: &mut LocalCluster,
    client: &Client,
    members: &[Member],
    elections: &mut ElectionWatch,
    ready_timeout: Duration,
    signals: &mut ShutdownSignals,
) -> anyhow::Result<Startup> {
    let deadline = Instant::now() + ready_timeout;
    let mut ticks = tokio::time::interval(SUPERVISE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let mut election = None;
    loop {
        tokio::select! {
            name = signals.recv() => return Ok(Startup::Interrupted(name)),
            _ = ticks.tick() => {}
        }
        if let Some((role, _, status)) = cluster.poll_exits().into_iter().next() {
            let log = cluster.layout.log_file(role);
            let reason = children::last_log_line(&log).unwrap_or_else(|| "it logged nothing".to_string());
            bail!(
                "{role} {} while starting: {reason} (log: {})",
                describe_exit(status),
                log.display()
            );
        }
        let snapshot = status::probe(client, members).await;
        if let Some(event) = elections.record_poll(snapshot.leader, std::time::Instant::now()) {
            if matches!(
                event,
                ElectionEvent::Elected { .. } | ElectionEvent::Replaced { .. } | ElectionEvent::Found(_)
            ) {
                election = Some(event);
            }
        }
        let router_answers = client.status_of(&cluster.layout.router_address()).await.is_ok();
        if let (Some(_), true) = (elections.leader(), router_answers) {
            let event = election
                .take()
                .ok_or_else(|| anyhow!("a leader was seen without an election event"))?;
            return Ok(Startup::Ready(event));
        }
        if Instant::now() >= deadline {
            let what = if elections.leader().is_none() {
                "no leader was elected"
            } else {
                "the router did not answer"
            };
            bail!(
                "{what} within {} (--ready-timeout); see the logs in {}",
                humantime::format_duration(ready_timeout),
                cluster.layout.data_dir().display()
            );
        }
    }
}

fn print_endpoints(cluster: &mut LocalCluster, election: &ElectionEvent) {
    println!("raftkv cluster is up: {election}");
    let layout = cluster.layout.clone();
    for (role, child) in cluster.children.iter_mut() {
        let state = if child.is_running() {
            format!("pid {}", child.pid)
        } else {
            "not running".to_string()
        };
        let metrics = layout.metrics_address_of(*role);
        println!(
            "  {:<8} {:<16} {state:<12} http://{metrics}/metrics  http://{metrics}/health",
            role.to_string(),
            layout.address_of(*role),
        );
    }
    let endpoint_flag = if layout.base_port() == 7000 {
        String::new()
    } else {
        format!(" --endpoint {}", layout.router_address())
    };
    if let Some(dir) = layout.tls_dir() {
        println!(
            "TLS: every connection needs a certificate; point the CLI at it with\n  export RAFTKV_CACERT={} RAFTKV_CERT={} RAFTKV_KEY={}",
            dir.join(dev_certs::CA_FILE).display(),
            dir.join(dev_certs::CLIENT_CERT_FILE).display(),
            dir.join(dev_certs::CLIENT_KEY_FILE).display()
        );
    }
    println!("try: raftkv{endpoint_flag} put greeting hello && raftkv{endpoint_flag} get greeting");
}

/// The foreground: reports children that exit and leader changes, and runs console
/// commands, until a signal or `quit`.
async fn supervise(
    cluster: &mut LocalCluster,
    client: &Client,
    elections: &mut ElectionWatch,
    signals: &mut ShutdownSignals,
) -> anyhow::Result<()> {
    let mut input = console::read_stdin_lines().context("cannot read standard input")?;
    let mut input_open = true;
    let mut ticks = tokio::time::interval(SUPERVISE_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    loop {
        tokio::select! {
            name = signals.recv() => {
                println!("{name} received; stopping the cluster");
                return Ok(());
            }
            line = input.recv(), if input_open => match line {
                None => {
                    input_open = false;
                    println!("standard input is closed; Ctrl-C (or SIGTERM) stops the cluster");
                }
                Some(line) => match console::parse(&line) {
                    Err(message) => println!("{message}"),
                    Ok(None) => {}
                    Ok(Some(ConsoleCommand::Quit)) => return Ok(()),
                    Ok(Some(command)) => {
                        let members = cluster.members();
                        run_console_command(cluster, client, &members, elections, command).await?
                    }
                },
            },
            _ = ticks.tick() => {
                for (role, pid, status) in cluster.poll_exits() {
                    println!("{} {role} (pid {pid}) {}", time_of_day(), describe_exit(status));
                    cluster.save_state()?;
                }
                let snapshot = status::probe(client, &cluster.members()).await;
                if let Some(event) = elections.record_poll(snapshot.leader, std::time::Instant::now()) {
                    println!("{} {event}", time_of_day());
                }
            }
        }
    }
}

async fn run_console_command(
    cluster: &mut LocalCluster,
    client: &Client,
    members: &[Member],
    elections: &mut ElectionWatch,
    command: ConsoleCommand,
) -> anyhow::Result<()> {
    match command {
        ConsoleCommand::Status => {
            let snapshot = status::probe(client, members).await;
            print!("{}", status::render_table(&snapshot.rows));
            let router = match cluster.child_mut(Role::Router).and_then(ChildProcess::running_pid) {
                Some(pid) => format!("running, pid {pid}"),
                None => "not running".to_string(),
            };
            println!("router {}: {router}", cluster.layout.router_address());
        }
        ConsoleCommand::Help => println!("{}", console::HELP),
        ConsoleCommand::Quit => {}
        ConsoleCommand::Transfer(to) => match client.transfer_leader(to).await {
            // The election watch reports the change itself at its next poll.
            Ok(moved) => println!(
                "{} handed leadership to node {} (term {})",
                time_of_day(),
                moved.leader_id,
                moved.term
            ),
            Err(error) => println!("leader transfer failed: {error}"),
        },
        ConsoleCommand::Kill(target) | ConsoleCommand::Stop(target) => {
            let (signal, verb) = match command {
                ConsoleCommand::Kill(_) => (libc::SIGKILL, "killed"),
                _ => (libc::SIGTERM, "sent SIGTERM to"),
            };
            let Some(role) = resolve_target(cluster, client, members, target).await else {
                return Ok(());
            };
            let leader_before = elections.leader();
            let signalled = cluster.child_mut(role).filter(|child| child.exit_status().is_none());
            match signalled.and_then(|child| child.signal(signal).then_some(child.pid)) {
                Some(pid) => {
                    println!("{} {verb} {role} (pid {pid})", time_of_day());
                    // A leader killed here is gone this instant: timing the election from
                    // now rather than from the next poll makes its duration exact.
                    if signal == libc::SIGKILL && leader_before.map(|leader| Role::Node(leader.id)) == Some(role) {
                        if let Some(event) = elections.record_poll(None, std::time::Instant::now()) {
                            println!("{} {event}", time_of_day());
                        }
                    }
                }
                None => println!("{role} is not running (`restart` starts it)"),
            }
        }
        ConsoleCommand::Add => membership::add_node(cluster).await,
        ConsoleCommand::Remove(id) => membership::remove_node(cluster, id).await,
        ConsoleCommand::Restart(target) => {
            let Some(role) = resolve_target(cluster, client, members, target).await else {
                return Ok(());
            };
            if let Some(pid) = cluster.child_mut(role).and_then(ChildProcess::running_pid) {
                println!("{role} is running (pid {pid}); `stop` or `kill` it first");
                return Ok(());
            }
            match cluster.start_one(role) {
                Ok(pid) => println!("{} restarted {role} (pid {pid})", time_of_day()),
                Err(error) => println!("cannot restart {role}: {error:#}"),
            }
        }
    }
    Ok(())
}

/// The role a console target names now; prints why and returns `None` when there is none.
async fn resolve_target(cluster: &LocalCluster, client: &Client, members: &[Member], target: Target) -> Option<Role> {
    match target {
        Target::Router => Some(Role::Router),
        Target::Node(id) if cluster.layout.has_node(id) => Some(Role::Node(id)),
        Target::Node(id) => {
            let ids: Vec<String> = members.iter().map(|member| member.id.to_string()).collect();
            println!("there is no node {id}; the nodes are {}", ids.join(", "));
            None
        }
        Target::Leader => match status::probe(client, members).await.leader {
            Some(leader) => Some(Role::Node(leader.id)),
            None => {
                println!("no node leads right now");
                None
            }
        },
    }
}
