//! `raftkv`, the command line of raftkv: the commands and flags a person or a script types,
//! and the mapping of every outcome to the exit codes scripts rely on.
//!
//! Talking to the cluster is left entirely to the one client library
//! (`raftkv::client::Client`); this crate only parses arguments, formats answers and, for
//! `cluster up`/`down`, supervises local processes.
//!
//! Exit codes: 0 success; 1 key not found, or a conditional write's comparison failed (nothing
//! was written); 2 usage error (bad flags or arguments, a key or value the limits refuse); 3 the
//! request failed or timed out (for a write: outcome unknown).

mod bench;
mod bytes_as_text;
mod certs;
mod cluster;
mod election_watch;
mod kv;
mod leader;
mod member;
mod scan;
mod snapshot;
mod status;

use std::ffi::OsString;
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::Duration;

use clap::{Args, Parser, Subcommand};
use raftkv::client::{self, ClientOptions};
use raftkv::tls::ClientTls;
use raftkv::usage::{parse_positive_duration, ReadConsistency};

/// Exit code: the command did what was asked.
const EXIT_SUCCESS: u8 = 0;
/// Exit code: `get` of a key that does not exist.
const EXIT_NOT_FOUND: u8 = 1;
/// Exit code: a conditional write (`cas`, `delete --expect`) found another value; nothing was written.
const EXIT_COMPARISON_FAILED: u8 = 1;
/// Exit code: the command line was wrong (clap uses the same code for its own errors).
const EXIT_USAGE: u8 = 2;
/// Exit code: the request failed or timed out; for a write the outcome is unknown.
const EXIT_FAILED: u8 = 3;

#[derive(Parser, Debug)]
#[command(
    name = "raftkv",
    version,
    about = "Command line for raftkv, a Raft-replicated key-value store",
    long_about = "Command line for raftkv, a Raft-replicated key-value store.\n\n\
        Reads and writes keys, shows the cluster's status, and starts a local cluster for trying it out.\n\
        Exit codes: 0 success, 1 key not found or comparison failed (cas, delete --expect), \
        2 usage error, 3 request failed or timed out (for a write: outcome unknown).",
    after_help = "Examples:\n  \
        raftkv cluster up                 # start a local 3-node cluster and a router on 127.0.0.1:7000\n  \
        raftkv put greeting hello\n  \
        raftkv get greeting\n  \
        raftkv status --watch"
)]
struct Cli {
    /// Router or node to talk to, HOST:PORT (several may be given, separated by commas).
    #[arg(
        long,
        global = true,
        env = "RAFTKV_ENDPOINT",
        default_value = "127.0.0.1:7000",
        value_delimiter = ',',
        value_name = "HOST:PORT"
    )]
    endpoint: Vec<String>,

    /// How long one command may wait for the cluster, retries included (e.g. 300ms, 2s).
    #[arg(long, global = true, default_value = "5s", value_parser = parse_positive_duration, value_name = "DURATION")]
    timeout: Duration,

    /// Connect over TLS, checking the servers' certificates against this CA certificate (PEM).
    #[arg(long, global = true, env = "RAFTKV_CACERT", value_name = "FILE")]
    cacert: Option<PathBuf>,

    /// This client's certificate (PEM), for servers that require one (mutual TLS); needs
    /// --key and --cacert.
    #[arg(
        id = "client_cert",
        long = "cert",
        global = true,
        env = "RAFTKV_CERT",
        value_name = "FILE"
    )]
    cert: Option<PathBuf>,

    /// The private key of --cert (PEM).
    // Its own id: `key` is the positional argument of put/get/...
    #[arg(
        id = "client_key",
        long = "key",
        global = true,
        env = "RAFTKV_KEY",
        value_name = "FILE"
    )]
    key: Option<PathBuf>,

    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand, Debug)]
enum Command {
    /// Write a value under a key.
    #[command(
        long_about = "Write a value under a key. The value comes from the command line, from standard input \
            (VALUE `-`) or from a file (--file). Prints OK once a majority of the cluster has stored it.\n\
            If the request fails or times out the outcome is unknown (exit code 3).",
        after_help = "Examples:\n  \
            raftkv put greeting hello\n  \
            echo hello | raftkv put greeting -\n  \
            raftkv put photo --file ./photo.jpg"
    )]
    Put(PutArgs),

    /// Read the value of a key.
    #[command(
        long_about = "Read the value of a key and print it (the raw bytes) followed by a newline.\n\
            Exits with code 1 when the key does not exist.\n\n\
            --output json prints {\"key\":..,\"value\":..,\"node_id\":N,\"applied_index\":N}: \
            the node that served the read and how far its state machine had applied the log. \
            A key or value that is not valid UTF-8 is null there, and a field \"key_base64\" or \
            \"value_base64\" beside it holds its bytes in standard base64.",
        after_help = "Examples:\n  \
            raftkv get greeting\n  \
            raftkv get greeting --consistency stale --endpoint 127.0.0.1:7002\n  \
            raftkv get greeting --output json"
    )]
    Get(GetArgs),

    /// Delete a key.
    #[command(
        long_about = "Delete a key. Deleting a key that does not exist succeeds too (exit code 0); \
            the output says whether it existed.\n\n\
            With --expect OLD the key is deleted only if it holds exactly OLD. Otherwise nothing is \
            deleted and the command exits with code 1, naming the value it found (or saying the key \
            does not exist) on stderr.",
        after_help = "Examples:\n  \
            raftkv delete greeting\n  \
            raftkv delete lock/backup --expect host-7"
    )]
    Delete(DeleteArgs),

    /// Set a key to a new value only if it holds an expected value (compare-and-swap).
    #[command(
        long_about = "Compare-and-swap: set KEY to NEW only if it now holds exactly OLD (--expect OLD), \
            or only if it does not exist (--expect-absent); exactly one of the two is required. \
            The comparison and the write are one atomic step of the replicated log. \
            NEW `-` reads the value from standard input.\n\n\
            Exit code 0 and `swapped` when it swapped. Exit code 1 when the comparison failed: nothing \
            was written, and stderr names the value found (escaped as in `raftkv scan`) or says the key \
            does not exist. Exit code 3: failed or timed out, outcome unknown.\n\n\
            --output json prints {\"key\":..,\"swapped\":BOOL,\"current\":..,\"node_id\":N,\
            \"applied_index\":N} in both cases; \"current\" is the value found when the comparison \
            failed, null when the key did not exist or it swapped. Bytes that are not valid UTF-8 \
            are null, with \"key_base64\" / \"current_base64\" beside them.",
        after_help = "Examples:\n  \
            raftkv cas counter --expect 41 42\n  \
            raftkv cas lock/backup --expect-absent host-7\n  \
            generate-config | raftkv cas config --expect-absent -\n  \
            raftkv cas counter --expect 41 42 --output json"
    )]
    Cas(kv::CasArgs),

    /// List the keys and values under a prefix, in key order.
    #[command(
        long_about = "List the keys and values that start with PREFIX (left out: every key), in key \
            order, at most --limit of them (default 100, at most 100000). A linearizable scan \
            (the default) sees every write acknowledged before it started. A node answers at most \
            10000 pairs per request, so a larger limit is read in several requests, each \
            consistent on its own but not one snapshot together.\n\n\
            Table output: one line per pair, KEY, a tab, VALUE. Both are escaped so that a line \
            is always one pair: backslash as \\\\, tab as \\t, newline as \\n, carriage return \
            as \\r, and every other byte of a control character or of invalid UTF-8 as \\xHH; \
            other UTF-8 text is shown as is. When more pairs match than the limit, a note on \
            stderr says so.\n\n\
            --output json prints {\"pairs\":[{\"key\":..,\"value\":..}],\"more\":BOOL,\
            \"node_id\":N,\"applied_index\":N} (node_id and applied_index: the node that served \
            the last request). A key or value that is not valid UTF-8 is null, with \"key_base64\" \
            or \"value_base64\" beside it holding its bytes in standard base64.",
        after_help = "Examples:\n  \
            raftkv scan user/\n  \
            raftkv scan user/ --limit 20000 --output json\n  \
            raftkv scan --consistency stale --endpoint 127.0.0.1:7002"
    )]
    Scan(scan::ScanArgs),

    /// Show every cluster member's role, term, leader and log indexes.
    #[command(
        long_about = "Show the cluster's status: one row per member with its id, address, role, term, \
            the leader it knows, last log / commit / applied index, pid, and whether it answered \
            (--output json also has the index of its latest snapshot and of the last log entry it \
            purged, and each member's cluster id). Under the table, the cluster's id (16 hex digits), \
            or each member's when they differ (a member that belongs to another cluster).\n\
            The endpoint is asked for the membership, then every member is asked directly.\n\
            --watch keeps refreshing and prints a line when the leader is lost and when a new one is \
            elected, with the election's duration.",
        after_help = "Examples:\n  \
            raftkv status\n  \
            raftkv status --output json\n  \
            raftkv status --watch"
    )]
    Status(StatusArgs),

    /// Move leadership to another node.
    #[command(subcommand)]
    Leader(LeaderCommand),

    /// List, add, promote or remove cluster members.
    #[command(
        subcommand,
        after_help = "Examples (replacing dead node 3 with a new node 4):\n  \
            raftkv member remove 3\n  \
            raftkv-node --id 4 --listen 127.0.0.1:7004 --data-dir data/node-4 --join &\n  \
            raftkv member add 4 127.0.0.1:7004\n  \
            raftkv member list"
    )]
    Member(MemberCommand),

    /// Start or stop a local cluster of raftkv-node processes and a raftkv-router.
    #[command(
        subcommand,
        after_help = "Examples:\n  \
            raftkv cluster up\n  \
            raftkv cluster up --detach --data-dir /tmp/raftkv && raftkv cluster down --data-dir /tmp/raftkv"
    )]
    Cluster(ClusterCommand),

    /// Make certificates for running a cluster with TLS.
    #[command(subcommand)]
    Certs(CertsCommand),

    #[command(
        subcommand,
        after_help = "Examples (disaster recovery: every node lost, a new cluster from the last backup):\n  \
            raftkv snapshot save backup.db\n  \
            raftkv snapshot status backup.db\n  \
            raftkv snapshot restore backup.db --id 1 --data-dir data/node-1 \
            --initial-cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003"
    )]
    Snapshot(SnapshotCommand),

    /// Measure throughput and latency under a closed-loop load.
    #[command(
        long_about = "Measure throughput and latency: --clients tasks each keep one request in flight \
            (closed loop) for a warm-up plus --duration, against --endpoint. For get and mixed, every key \
            is written first (--no-preload: it is there already). --workload fill writes every key of \
            --keys once (a scale run's data: --keys 4000000 --value-size 256 is about 1 GB) and ends \
            when all are written. Prints throughput, errors, latency percentiles (p50/p90/p99/p99.9/max, \
            from an HDR histogram) and MB written; a live progress line is shown on a terminal.\n\
            To drive an etcd v3 cluster with the identical workload, use the raftkv-bench binary \
            (`cargo build --release -p raftkv-bench`; `raftkv-bench --target etcd`, same flags).",
        after_help = "Examples:\n  \
            raftkv bench --workload put --clients 64 --duration 10s\n  \
            raftkv bench --workload get --consistency stale --clients 64 --output json\n  \
            raftkv bench --workload mixed --read-ratio 0.9 --clients 16 --keys 100000 --value-size 1024\n  \
            raftkv bench --workload fill --keys 4000000 --clients 64 && \
            raftkv bench --workload get --keys 4000000 --no-preload --clients 64"
    )]
    Bench(raftkv_bench::BenchArgs),
}

#[derive(Args, Debug)]
struct PutArgs {
    /// The key (1 to 4096 bytes).
    #[arg(value_parser = clap::value_parser!(OsString))]
    key: OsString,
    /// The value (up to 1 MiB); `-` reads it from standard input.
    #[arg(value_parser = clap::value_parser!(OsString), required_unless_present = "file")]
    value: Option<OsString>,
    /// Read the value from this file instead.
    #[arg(long, value_name = "PATH", conflicts_with = "value")]
    file: Option<PathBuf>,
}

#[derive(Args, Debug)]
struct GetArgs {
    /// The key.
    #[arg(value_parser = clap::value_parser!(OsString))]
    key: OsString,
    /// How fresh the read must be (lease: linearizable without a quorum round, assuming the nodes' clocks run at about the same rate).
    #[arg(long, value_enum, default_value_t = ReadConsistency::Linearizable)]
    consistency: ReadConsistency,
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = kv::GetOutput::Raw)]
    output: kv::GetOutput,
}

#[derive(Args, Debug)]
struct DeleteArgs {
    /// The key.
    #[arg(value_parser = clap::value_parser!(OsString))]
    key: OsString,
    /// Delete only if the key holds exactly this value.
    #[arg(
        long,
        value_name = "OLD",
        value_parser = clap::value_parser!(OsString),
        allow_hyphen_values = true
    )]
    expect: Option<OsString>,
}

#[derive(Args, Debug)]
struct StatusArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = status::OutputFormat::Table)]
    output: status::OutputFormat,
    /// Keep refreshing, and report leader changes with the election's duration (Ctrl-C ends).
    #[arg(long, short)]
    watch: bool,
}

#[derive(Subcommand, Debug)]
enum LeaderCommand {
    /// Hand leadership to another node and wait until it serves.
    #[command(
        long_about = "Hand leadership to another voter: node --to ID, or when --to is left out the voter \
            whose log is most up to date. Waits until the new leader serves linearizable reads, then prints \
            who it is (exit code 0). Exit code 3 if that did not happen within --timeout; 2 if ID is not \
            a voter. Use it before stopping the leader's machine: a stopped leader also hands over by \
            itself (on SIGTERM), but a transfer first makes the stop a non-event.",
        after_help = "Examples:\n  \
            raftkv leader transfer\n  \
            raftkv leader transfer --to 3 --timeout 10s"
    )]
    Transfer(TransferArgs),
}

#[derive(Args, Debug)]
struct TransferArgs {
    /// The node to hand leadership to [default: the most up-to-date voter].
    #[arg(long, value_name = "ID", value_parser = clap::value_parser!(u64).range(1..))]
    to: Option<u64>,
}

#[derive(Subcommand, Debug)]
enum CertsCommand {
    /// Write a development CA and node and client certificates.
    #[command(
        long_about = "Write a new development CA (ca.pem), a certificate for the nodes and the router \
            (node.pem, node-key.pem: valid for --hosts, and named a node, so other nodes take its Raft \
            messages) and one for clients (client.pem, client-key.pem) into DIR. Keys are written \
            readable by you only (0600). Existing files are left alone unless --force. The CA's key \
            is not kept: these certificates are for development and tests.",
        after_help = "Examples:\n  \
            raftkv certs create --dir certs\n  \
            raftkv certs create --dir certs --hosts 10.0.0.1,10.0.0.2,10.0.0.3,node.example --force"
    )]
    Create(certs::CreateArgs),
}

/// Back up the whole store, check a backup, restore one into a new cluster.
#[derive(Subcommand, Debug)]
enum SnapshotCommand {
    #[command(
        long_about = "Save a backup of the whole store to FILE: a point-in-time copy that holds every write \
            acknowledged before the command started (the serving node takes it at a linearizable read index, \
            in the cluster's snapshot file format), with its checksum and the log position (term, index) it was \
            taken at. It is written to FILE.part as it arrives, with a progress bar (a line every few seconds \
            when stderr is not a terminal), checked, fsynced and renamed to FILE; FILE is replaced only by a \
            whole, sound backup. Nothing is held in memory on either side, whatever the size. --timeout \
            bounds the start (finding a node, confirming the read index); the transfer itself has no \
            deadline and fails if the stream stays idle for 60 s.",
        after_help = "Examples:\n  \
            raftkv snapshot save backup.db\n  \
            raftkv snapshot save /backups/raftkv-$(date +%F).db --endpoint 10.0.0.1:7001,10.0.0.2:7001"
    )]
    Save(snapshot::SaveArgs),

    #[command(
        long_about = "Check a backup file and show what it holds: keys, bytes, client sessions, the log \
            position (term, index) it was taken at, its checksum (the file is read through once and \
            checked whole) and the members of the cluster it came from. A damaged or truncated file: \
            one line on stderr saying what is wrong, exit code 3.\n\n\
            --output json prints {\"file\":..,\"bytes\":N,\"keys\":N,\"data_bytes\":N,\"sessions\":N,\
            \"term\":N,\"index\":N,\"crc32\":\"hex\",\"checksum_ok\":true,\"members\":[{\"id\":1,\
            \"address\":..}]}.",
        after_help = "Examples:\n  raftkv snapshot status backup.db\n  raftkv snapshot status backup.db --output json"
    )]
    Status(snapshot::StatusArgs),

    #[command(
        long_about = "Make the data directory of one node of a NEW cluster from a backup: restore every \
            node of the new cluster from the same file, each with its own --id and --data-dir and the same \
            --initial-cluster, then start each with `raftkv-node --id N --data-dir DIR --initial-cluster ...` \
            (the same initial cluster): they elect a leader and serve every key of the backup. The new \
            cluster's membership is --initial-cluster, not the old one's, and its data directories belong \
            to the new cluster, so restored nodes never mix with the old ones. DIR must not exist or be \
            empty. A damaged or truncated backup is refused with one line and nothing is created \
            (exit code 3). Runs `raftkv-node restore` (found next to raftkv, or on PATH).",
        after_help = "Example (three nodes):\n  \
            for n in 1 2 3; do raftkv snapshot restore backup.db --id $n --data-dir data/node-$n \
            --initial-cluster 1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003; done"
    )]
    Restore(snapshot::RestoreArgs),
}

#[derive(Subcommand, Debug)]
enum MemberCommand {
    /// Show every member: id, address, voter or learner, and how far behind a learner is.
    #[command(
        long_about = "Show every member of the cluster, as the leader sees it: id, address, role (voter or \
            learner) and, for a learner, how many log entries it is behind the leader.\n\
            --output json prints {\"members\":[{\"id\":1,\"address\":\"127.0.0.1:7001\",\"role\":\"voter\"}]}, \
            a learner with \"behind\":N.",
        after_help = "Examples:\n  raftkv member list\n  raftkv member list --output json"
    )]
    List(MemberListArgs),

    /// Add a node (started with `raftkv-node --join`) to the cluster.
    #[command(
        long_about = "Add node ID, listening at ADDRESS, to the cluster: first as a learner (it receives the \
            log but does not vote), then, once it has caught up with the leader, as a voter (unless --learner). \
            Prints progress while it catches up. Start the node first with `raftkv-node --id ID --join ...`.\n\
            Exit code 3 if it did not finish within --timeout: the node then stays a learner \
            (`raftkv member promote ID` later, or `raftkv member remove ID`). An id that is in use, or was \
            used by a node removed earlier, is refused: ids are never reused.",
        after_help = "Examples:\n  \
            raftkv-node --id 4 --listen 127.0.0.1:7004 --data-dir data/node-4 --join &\n  \
            raftkv member add 4 127.0.0.1:7004 --timeout 1m\n  \
            raftkv member add 5 127.0.0.1:7005 --learner"
    )]
    Add(MemberAddArgs),

    /// Make a learner a voter, once it has caught up.
    #[command(
        long_about = "Make learner ID a voter once it has caught up with the leader, printing progress \
            meanwhile. Exit code 3 if that did not happen within --timeout (it stays a learner).",
        after_help = "Example:\n  raftkv member promote 4 --timeout 1m"
    )]
    Promote(MemberIdArgs),

    /// Remove a member (voter or learner) from the cluster.
    #[command(
        long_about = "Remove member ID from the cluster. Removing the leader works: leadership moves to \
            another voter first. The removed node's process keeps running until you stop it, and its data \
            directory can never join again (it refuses to start): to bring the machine back, start it with \
            an empty data directory and --join, and add it under a new id.",
        after_help = "Examples:\n  raftkv member remove 3\n  raftkv member list"
    )]
    Remove(MemberIdArgs),
}

#[derive(Args, Debug)]
struct MemberListArgs {
    /// Output format.
    #[arg(long, short, value_enum, default_value_t = status::OutputFormat::Table)]
    output: status::OutputFormat,
}

#[derive(Args, Debug)]
struct MemberAddArgs {
    /// The new node's id (never used in this cluster before).
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
    /// The address the node listens at, HOST:PORT (its --advertise address).
    #[arg(value_parser = parse_address)]
    address: String,
    /// Leave it a learner: it receives the log but does not vote.
    #[arg(long)]
    learner: bool,
}

#[derive(Args, Debug)]
struct MemberIdArgs {
    /// The member's id.
    #[arg(value_parser = clap::value_parser!(u64).range(1..))]
    id: u64,
}

fn parse_address(s: &str) -> Result<String, String> {
    client::check_address(s).map_err(|e| e.to_string())?;
    Ok(s.to_string())
}

#[derive(Subcommand, Debug)]
enum ClusterCommand {
    /// Start N local nodes and a router, wait for a leader, then supervise them.
    #[command(
        long_about = "Start N raftkv-node processes (node i listens on 127.0.0.1:BASE+i, data in DIR/node-i) \
            and a raftkv-router on 127.0.0.1:BASE, wait until a leader is elected, and print the endpoints \
            and pids. Children log to DIR/node-i.log and DIR/router.log. Running it again reuses the data.\n\n\
            In the foreground it reports leader changes and reads commands from standard input: \
            `kill N|leader|router` (SIGKILL), `stop N|router` (SIGTERM), `restart N|router`, \
            `transfer [N]` (hand leadership over), `add` (start a new node with --join and add it), \
            `remove N` (remove node N and stop it), `status`, `help`, `quit`. Ctrl-C or quit stops everything cleanly.\n\n\
            With --detach the processes keep running after this command exits; \
            `raftkv cluster down` stops them.\n\n\
            With --tls every connection is TLS with client certificates: a development CA and \
            certificates are made in DIR/certs on the first run and reused after; the command prints \
            the RAFTKV_CACERT, RAFTKV_CERT and RAFTKV_KEY settings that point the CLI at them.",
        after_help = "Examples:\n  \
            raftkv cluster up\n  \
            raftkv cluster up --nodes 5 --base-port 17300 --data-dir /tmp/raftkv\n  \
            raftkv cluster up --tls\n  \
            raftkv cluster up --detach"
    )]
    Up(cluster::UpArgs),

    /// Stop a cluster started with `cluster up` in the data directory.
    #[command(
        long_about = "Stop the cluster recorded in DIR/cluster.json: send SIGTERM to every process, wait \
            until they are gone (SIGKILL after a deadline), and remove cluster.json. The data stays.",
        after_help = "Example:\n  raftkv cluster down --data-dir ./raftkv-data"
    )]
    Down(cluster::DownArgs),
}

/// Why a command failed, sorted by the exit code it maps to.
#[derive(Debug)]
enum CliError {
    /// An error from the client library: its kind decides the exit code.
    Client(client::Error),
    /// The arguments make no sense, found after clap accepted them.
    Usage(String),
    /// A conditional write found another value than expected; the message (one line, values
    /// escaped) says what it found.
    ComparisonFailed(String),
    /// Anything else went wrong (I/O, child processes).
    Failed(anyhow::Error),
}

impl CliError {
    fn exit_code(&self) -> u8 {
        match self {
            CliError::Client(client::Error::NotFound) => EXIT_NOT_FOUND,
            CliError::Client(client::Error::InvalidArgument(_)) => EXIT_USAGE,
            CliError::Client(_) => EXIT_FAILED,
            CliError::Usage(_) => EXIT_USAGE,
            CliError::ComparisonFailed(_) => EXIT_COMPARISON_FAILED,
            CliError::Failed(_) => EXIT_FAILED,
        }
    }

    /// The message for stderr: always one line.
    fn message(&self) -> String {
        let text = match self {
            // Already one line; collapsing its whitespace would change the value it quotes.
            CliError::ComparisonFailed(message) => return message.clone(),
            CliError::Client(error) => error.to_string(),
            CliError::Usage(message) => message.clone(),
            // `{:#}` joins anyhow's context chain with ": ".
            CliError::Failed(error) => format!("{error:#}"),
        };
        text.split_whitespace().collect::<Vec<_>>().join(" ")
    }
}

impl From<client::Error> for CliError {
    fn from(error: client::Error) -> Self {
        CliError::Client(error)
    }
}

impl From<anyhow::Error> for CliError {
    fn from(error: anyhow::Error) -> Self {
        CliError::Failed(error)
    }
}

fn main() -> ExitCode {
    // Help and version are printed as clap renders them; a usage error is one line, exit 2.
    let cli: Cli = match raftkv::usage::parse_or_exit() {
        Ok(cli) => cli,
        Err(code) => return code,
    };

    // One thread is plenty for a CLI, and `cluster up` relies on it: a child started with
    // PR_SET_PDEATHSIG is signalled when the *thread* that spawned it exits, so every child
    // must be spawned from a thread that lives as long as the CLI.
    let runtime = match tokio::runtime::Builder::new_current_thread().enable_all().build() {
        Ok(runtime) => runtime,
        Err(error) => {
            eprintln!("error: cannot start the async runtime: {error}");
            return ExitCode::from(EXIT_FAILED);
        }
    };
    let result = runtime.block_on(run(cli));
    // A blocked read of stdin (cluster up's console) must not hold the exit up.
    runtime.shutdown_background();
    match result {
        Ok(()) => ExitCode::from(EXIT_SUCCESS),
        Err(error) => {
            eprintln!("error: {}", error.message());
            ExitCode::from(error.exit_code())
        }
    }
}

async fn run(cli: Cli) -> Result<(), CliError> {
    let Cli {
        endpoint: endpoints,
        timeout,
        cacert,
        cert,
        key,
        command,
    } = cli;
    // Read only by the commands that connect: `certs` and `cluster` take no TLS flags.
    let options = || -> Result<ClientOptions, CliError> {
        Ok(ClientOptions {
            tls: client_tls(cacert.as_deref(), cert.as_deref(), key.as_deref())?,
            ..ClientOptions::default()
        })
    };
    let connect = || client::Client::with_options(endpoints.clone(), timeout, options()?).map_err(CliError::from);
    match command {
        Command::Put(args) => kv::put(&connect()?, args.key, args.value, args.file).await,
        Command::Get(args) => kv::get(&connect()?, args.key, args.consistency.into(), args.output).await,
        Command::Delete(args) => kv::delete(&connect()?, args.key, args.expect).await,
        Command::Cas(args) => kv::cas(&connect()?, args).await,
        Command::Scan(args) => scan::run(&connect()?, args).await,
        Command::Status(args) => status::run(endpoints, timeout, options()?, args.output, args.watch).await,
        Command::Leader(LeaderCommand::Transfer(args)) => leader::transfer(&connect()?, args.to).await,
        Command::Certs(CertsCommand::Create(args)) => certs::create(args),
        Command::Member(MemberCommand::List(args)) => member::list(&connect()?, args.output).await,
        Command::Member(MemberCommand::Add(args)) => {
            member::add(&endpoints, timeout, options()?, args.id, &args.address, args.learner).await
        }
        Command::Member(MemberCommand::Promote(args)) => {
            member::promote(&endpoints, timeout, options()?, args.id).await
        }
        Command::Member(MemberCommand::Remove(args)) => member::remove(&connect()?, args.id).await,
        Command::Snapshot(SnapshotCommand::Save(args)) => snapshot::save(&connect()?, &args.file).await,
        Command::Snapshot(SnapshotCommand::Status(args)) => snapshot::status(&args.file, args.output),
        Command::Snapshot(SnapshotCommand::Restore(args)) => snapshot::restore(args).await,
        Command::Cluster(ClusterCommand::Up(args)) => cluster::up(args).await,
        Command::Cluster(ClusterCommand::Down(args)) => cluster::down(args).await,
        Command::Bench(args) => bench::run(endpoints, timeout, options()?.tls, args).await,
    }
}

/// The TLS `--cacert`, `--cert` and `--key` ask for (None: plaintext), its files read.
fn client_tls(ca: Option<&Path>, cert: Option<&Path>, key: Option<&Path>) -> Result<Option<ClientTls>, CliError> {
    let identity = match (cert, key) {
        (Some(cert), Some(key)) => Some((cert, key)),
        (None, None) => None,
        (Some(_), None) => return Err(CliError::Usage("--cert needs --key (its private key)".to_string())),
        (None, Some(_)) => return Err(CliError::Usage("--key needs --cert".to_string())),
    };
    let Some(ca) = ca else {
        if identity.is_some() {
            return Err(CliError::Usage(
                "--cert needs --cacert (the CA that signed the servers' certificates)".to_string(),
            ));
        }
        return Ok(None);
    };
    ClientTls::load(ca, identity)
        .map(Some)
        .map_err(|error| CliError::Usage(error.to_string()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use clap::CommandFactory;

    #[test]
    fn command_line_definition_is_consistent() {
        Cli::command().debug_assert();
    }

    #[test]
    fn errors_map_to_the_documented_exit_codes() {
        assert_eq!(CliError::Client(client::Error::NotFound).exit_code(), 1);
        assert_eq!(
            CliError::Client(client::Error::InvalidArgument("key is empty".into())).exit_code(),
            2
        );
        assert_eq!(CliError::Usage("bad".into()).exit_code(), 2);
        assert_eq!(CliError::ComparisonFailed("x".into()).exit_code(), 1);
        assert_eq!(CliError::Client(client::Error::Timeout("late".into())).exit_code(), 3);
        let unavailable = client::Error::Unavailable {
            message: "no leader".into(),
            leader: None,
        };
        assert_eq!(CliError::Client(unavailable).exit_code(), 3);
        assert_eq!(CliError::Failed(anyhow::anyhow!("boom")).exit_code(), 3);
    }

    #[test]
    fn error_messages_are_one_line() {
        let error = CliError::Failed(anyhow::anyhow!("first\nsecond").context("outer"));
        assert_eq!(error.message(), "outer: first second");
    }
}
