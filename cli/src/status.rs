//! `raftkv status`: what every cluster member says about itself, as a table or JSON, once or
//! continuously (`--watch`, with leader changes and election durations).
//!
//! The endpoint (router or node) is asked only for the membership; every member is then
//! asked directly, so a member that does not answer shows up as unreachable instead of
//! hiding behind the router. `cluster up` reuses the probing and the table.

use std::collections::VecDeque;
use std::io::{IsTerminal, Write};
use std::time::{Duration, Instant};

use clap::ValueEnum;
use raftkv::client::{self, Client, ClientOptions};
use raftkv::pb;
use serde::Serialize;

use crate::election_watch::{leader_in_poll, ElectionWatch, PolledLeader};
use crate::CliError;

/// How often `--watch` asks every member for its status. Short enough that an election
/// (hundreds of milliseconds on loopback) is timed to within about this much.
pub const WATCH_INTERVAL: Duration = Duration::from_millis(100);
/// The longest a member may take to answer one `--watch` probe before it is shown as
/// unreachable (the `--timeout` flag applies when it is shorter).
pub const WATCH_PROBE_TIMEOUT: Duration = Duration::from_millis(500);
/// Election events kept on screen under the table in `--watch`.
const WATCH_EVENTS_SHOWN: usize = 10;

/// How `status` prints.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub enum OutputFormat {
    /// A table for people.
    Table,
    /// `{"nodes":[...]}` for scripts.
    Json,
}

/// A cluster member to ask: its id and address as the membership names them.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub id: u64,
    pub address: String,
}

/// One member's row of `status`, and its JSON shape.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct MemberRow {
    pub id: u64,
    pub address: String,
    /// leader, follower, candidate, learner, shutdown; "unknown" when unreachable.
    pub role: &'static str,
    pub term: Option<u64>,
    pub leader_id: Option<u64>,
    pub last_log_index: Option<u64>,
    pub commit_index: Option<u64>,
    pub applied_index: Option<u64>,
    /// The last log index its latest snapshot covers (JSON only).
    pub snapshot_index: Option<u64>,
    /// The last log index it has purged: entries up to here can reach a follower only in a
    /// snapshot (JSON only).
    pub purged_index: Option<u64>,
    pub reachable: bool,
    pub pid: Option<u32>,
    /// The id of the cluster it belongs to (16 hex digits); none while a joining node waits to
    /// be added, or when it did not answer.
    pub cluster_id: Option<String>,
    /// Why the member did not answer.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[derive(Serialize)]
struct StatusJson<'a> {
    nodes: &'a [MemberRow],
}

/// Every member's row, and who leads according to those that answered.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClusterSnapshot {
    pub rows: Vec<MemberRow>,
    pub leader: Option<PolledLeader>,
    /// The membership as the answering members report it (empty if none answered).
    pub reported_members: Vec<Member>,
}

/// The members named by a status, sorted by id; a node that knows no membership (not yet
/// initialised) is listed alone.
fn members_of(status: &pb::NodeStatus) -> Vec<Member> {
    let mut members: Vec<Member> = status
        .members
        .iter()
        .map(|member| Member {
            id: member.id,
            address: member.address.clone(),
        })
        .collect();
    if members.is_empty() {
        members.push(Member {
            id: status.id,
            address: status.address.clone(),
        });
    }
    members.sort_by_key(|member| member.id);
    members
}

/// Asks the client's endpoint (router or node) for the membership.
pub async fn discover_members(client: &Client) -> Result<Vec<Member>, client::Error> {
    Ok(members_of(&client.status().await?))
}

/// Asks every member for its status, all at once.
pub async fn probe(client: &Client, members: &[Member]) -> ClusterSnapshot {
    let answers = futures::future::join_all(members.iter().map(|member| client.status_of(&member.address))).await;
    let mut rows = Vec::with_capacity(members.len());
    let mut answered = Vec::new();
    for (member, answer) in members.iter().zip(answers) {
        match answer {
            Ok(status) => {
                rows.push(MemberRow {
                    id: member.id,
                    address: member.address.clone(),
                    role: pb::role_name(status.role),
                    term: Some(status.term),
                    leader_id: status.leader_id,
                    last_log_index: status.last_log_index,
                    commit_index: status.commit_index,
                    applied_index: status.applied_index,
                    snapshot_index: status.snapshot_index,
                    purged_index: status.purged_index,
                    reachable: true,
                    pid: (status.pid != 0).then_some(status.pid),
                    cluster_id: (!status.cluster_id.is_empty()).then(|| status.cluster_id.clone()),
                    error: None,
                });
                answered.push(status);
            }
            Err(error) => rows.push(MemberRow {
                id: member.id,
                address: member.address.clone(),
                role: "unknown",
                term: None,
                leader_id: None,
                last_log_index: None,
                commit_index: None,
                applied_index: None,
                snapshot_index: None,
                purged_index: None,
                reachable: false,
                pid: None,
                cluster_id: None,
                error: Some(error.to_string()),
            }),
        }
    }
    // The membership according to the answering node in the highest term.
    let reported_members = answered
        .iter()
        .max_by_key(|status| status.term)
        .map(members_of)
        .unwrap_or_default();
    ClusterSnapshot {
        rows,
        leader: leader_in_poll(&answered),
        reported_members,
    }
}

/// The rows as `{"nodes":[...]}` on one line.
pub fn render_json(rows: &[MemberRow]) -> String {
    serde_json::to_string(&StatusJson { nodes: rows }).expect("status rows always serialize")
}

/// The rows as an aligned table, then one line per unreachable member saying why.
pub fn render_table(rows: &[MemberRow]) -> String {
    fn number(value: Option<u64>) -> String {
        value.map_or_else(|| "-".to_string(), |value| value.to_string())
    }
    let header = [
        "ID",
        "ADDRESS",
        "ROLE",
        "TERM",
        "LEADER",
        "LAST_LOG",
        "COMMIT",
        "APPLIED",
        "PID",
        "REACHABLE",
    ];
    let mut lines: Vec<Vec<String>> = vec![header.iter().map(|title| title.to_string()).collect()];
    for row in rows {
        lines.push(vec![
            row.id.to_string(),
            row.address.clone(),
            row.role.to_string(),
            number(row.term),
            number(row.leader_id),
            number(row.last_log_index),
            number(row.commit_index),
            number(row.applied_index),
            row.pid.map_or_else(|| "-".to_string(), |pid| pid.to_string()),
            if row.reachable { "yes" } else { "no" }.to_string(),
        ]);
    }
    let widths: Vec<usize> = (0..header.len())
        .map(|column| lines.iter().map(|line| line[column].len()).max().unwrap_or(0))
        .collect();
    let mut text = String::new();
    for line in &lines {
        let cells: Vec<String> = line
            .iter()
            .zip(&widths)
            .map(|(cell, width)| format!("{cell:<width$}"))
            .collect();
        text.push_str(cells.join("  ").trim_end());
        text.push('\n');
    }
    for row in rows {
        if let Some(error) = &row.error {
            text.push_str(&format!("node {} ({}) did not answer: {error}\n", row.id, row.address));
        }
    }
    text.push_str(&cluster_line(rows));
    text
}

/// The line under the table that names the cluster: its id, or, when the members that answered
/// name different ones, each member's (one of them belongs to another cluster).
fn cluster_line(rows: &[MemberRow]) -> String {
    let ids: Vec<(u64, &str)> = rows
        .iter()
        .filter_map(|row| row.cluster_id.as_deref().map(|id| (row.id, id)))
        .collect();
    match ids.first() {
        None => String::new(),
        Some((_, first)) if ids.iter().all(|(_, id)| id == first) => format!("cluster {first}\n"),
        Some(_) => {
            let each: Vec<String> = ids.iter().map(|(node, id)| format!("node {node}: {id}")).collect();
            format!(
                "members name different clusters ({}): a member listed here belongs to another cluster\n",
                each.join(", ")
            )
        }
    }
}

/// The local time of day as HH:MM:SS.mmm, to stamp event lines.
pub fn time_of_day() -> String {
    let now = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap_or_default();
    let seconds = now.as_secs() as libc::time_t;
    // SAFETY: localtime_r only writes the `tm` it is given; a zeroed `tm` is a valid value.
    let mut tm: libc::tm = unsafe { std::mem::zeroed() };
    // SAFETY: both pointers are to live locals; localtime_r is the thread-safe variant.
    let converted = unsafe { !libc::localtime_r(&seconds, &mut tm).is_null() };
    let (hours, minutes, secs) = if converted {
        (tm.tm_hour as u64, tm.tm_min as u64, tm.tm_sec as u64)
    } else {
        let of_day = now.as_secs() % 86_400;
        (of_day / 3600, of_day / 60 % 60, of_day % 60)
    };
    format!("{hours:02}:{minutes:02}:{secs:02}.{:03}", now.subsec_millis())
}

/// `raftkv status [--output table|json] [--watch]`.
pub async fn run(
    endpoints: Vec<String>,
    timeout: Duration,
    options: ClientOptions,
    format: OutputFormat,
    watch: bool,
) -> Result<(), CliError> {
    if watch {
        return watch_status(endpoints, timeout, options, format).await;
    }
    let client = Client::with_options(endpoints, timeout, options)?;
    let members = discover_members(&client).await?;
    let snapshot = probe(&client, &members).await;
    let text = match format {
        OutputFormat::Table => render_table(&snapshot.rows),
        OutputFormat::Json => render_json(&snapshot.rows) + "\n",
    };
    print_flushed(&text);
    Ok(())
}

fn print_flushed(text: &str) {
    let mut stdout = std::io::stdout().lock();
    // A reader that went away is not worth an error message from a status display.
    let _ = stdout.write_all(text.as_bytes()).and_then(|()| stdout.flush());
}

/// `status --watch`: on a terminal the table is redrawn in place with the latest leader
/// events under it; otherwise (piped) table output prints one line per leader event and JSON
/// output one document per change, so that the output stays useful in a log.
async fn watch_status(
    endpoints: Vec<String>,
    timeout: Duration,
    options: ClientOptions,
    format: OutputFormat,
) -> Result<(), CliError> {
    let client = Client::with_options(endpoints, timeout.min(WATCH_PROBE_TIMEOUT), options)?;
    let on_terminal = std::io::stdout().is_terminal();
    let mut elections = ElectionWatch::new();
    let mut events: VecDeque<String> = VecDeque::new();
    let mut members: Vec<Member> = Vec::new();
    let mut endpoint_error: Option<String>;
    let mut last_rows: Option<Vec<MemberRow>> = None;
    let mut said_waiting = false;
    let mut ticks = tokio::time::interval(WATCH_INTERVAL);
    ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Skip);
    let ctrl_c = tokio::signal::ctrl_c();
    tokio::pin!(ctrl_c);

    loop {
        tokio::select! {
            _ = &mut ctrl_c => return Ok(()),
            _ = ticks.tick() => {}
        }
        // The membership comes from the endpoint; while it does not answer, the members
        // themselves (as last seen) are asked, so watching survives the router's death too.
        match discover_members(&client).await {
            Ok(found) => {
                members = found;
                endpoint_error = None;
            }
            Err(error) => endpoint_error = Some(error.to_string()),
        }
        if members.is_empty() {
            // Nothing known to ask yet: keep waiting for the endpoint (the cluster may be
            // starting), and say so once rather than on every tick.
            let message = format!(
                "waiting for the endpoint: {}\n",
                endpoint_error.as_deref().unwrap_or("no answer")
            );
            if on_terminal && format == OutputFormat::Table {
                print_flushed(&format!("\x1b[H\x1b[2J{message}"));
            } else if !said_waiting {
                eprint!("{message}");
            }
            said_waiting = true;
            continue;
        }
        let snapshot = probe(&client, &members).await;
        if !snapshot.reported_members.is_empty() && endpoint_error.is_some() {
            members = snapshot.reported_members.clone();
        }
        let event = elections.record_poll(snapshot.leader, Instant::now());
        let event_line = event.map(|event| format!("{} {event}", time_of_day()));
        let rows_changed = last_rows.as_ref() != Some(&snapshot.rows);

        match (format, on_terminal) {
            (OutputFormat::Table, true) => {
                if let Some(line) = &event_line {
                    events.push_back(line.clone());
                    if events.len() > WATCH_EVENTS_SHOWN {
                        events.pop_front();
                    }
                }
                if rows_changed || event_line.is_some() {
                    let mut screen = String::from("\x1b[H\x1b[2J");
                    screen.push_str(&format!(
                        "raftkv status at {}, every {} ms (Ctrl-C to stop)\n",
                        time_of_day(),
                        WATCH_INTERVAL.as_millis()
                    ));
                    if let Some(error) = &endpoint_error {
                        screen.push_str(&format!("endpoint did not answer: {error}\n"));
                    }
                    screen.push('\n');
                    screen.push_str(&render_table(&snapshot.rows));
                    screen.push('\n');
                    for line in &events {
                        screen.push_str(line);
                        screen.push('\n');
                    }
                    print_flushed(&screen);
                }
            }
            (OutputFormat::Table, false) => {
                if last_rows.is_none() {
                    print_flushed(&render_table(&snapshot.rows));
                }
                if let Some(line) = &event_line {
                    print_flushed(&format!("{line}\n"));
                }
            }
            (OutputFormat::Json, _) => {
                if let Some(line) = &event_line {
                    eprintln!("{line}");
                }
                if rows_changed {
                    print_flushed(&(render_json(&snapshot.rows) + "\n"));
                }
            }
        }
        last_rows = Some(snapshot.rows);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn reachable_row() -> MemberRow {
        MemberRow {
            id: 1,
            address: "127.0.0.1:7001".to_string(),
            role: "leader",
            term: Some(3),
            leader_id: Some(1),
            last_log_index: Some(9),
            commit_index: Some(9),
            applied_index: Some(9),
            snapshot_index: Some(5),
            purged_index: None,
            reachable: true,
            pid: Some(1234),
            cluster_id: Some("00abcdef01234567".to_string()),
            error: None,
        }
    }

    #[test]
    fn json_has_the_documented_shape() {
        let json: serde_json::Value = serde_json::from_str(&render_json(&[reachable_row()])).unwrap();
        assert_eq!(
            json,
            serde_json::json!({"nodes":[{"id":1,"address":"127.0.0.1:7001","role":"leader","term":3,
                "leader_id":1,"last_log_index":9,"commit_index":9,"applied_index":9,
                "snapshot_index":5,"purged_index":null,"reachable":true,"pid":1234,
                "cluster_id":"00abcdef01234567"}]})
        );
    }

    #[test]
    fn unreachable_member_is_a_row_with_unknown_values_and_the_reason() {
        let row = MemberRow {
            id: 2,
            address: "127.0.0.1:7002".to_string(),
            role: "unknown",
            term: None,
            leader_id: None,
            last_log_index: None,
            commit_index: None,
            applied_index: None,
            snapshot_index: None,
            purged_index: None,
            reachable: false,
            pid: None,
            cluster_id: None,
            error: Some("timed out: no answer within 500ms".to_string()),
        };
        let table = render_table(&[reachable_row(), row.clone()]);
        let lines: Vec<&str> = table.lines().collect();
        assert!(lines[0].starts_with("ID"), "{table}");
        assert!(lines[2].starts_with("2 ") && lines[2].ends_with("no"), "{table}");
        assert!(lines[3].contains("did not answer: timed out"), "{table}");
        assert_eq!(lines[4], "cluster 00abcdef01234567", "{table}");
        let json: serde_json::Value = serde_json::from_str(&render_json(&[row])).unwrap();
        assert_eq!(json["nodes"][0]["reachable"], false);
        assert_eq!(json["nodes"][0]["term"], serde_json::Value::Null);
    }

    #[test]
    fn members_naming_different_clusters_are_each_named() {
        let other = MemberRow {
            id: 3,
            cluster_id: Some("1111111111111111".to_string()),
            ..reachable_row()
        };
        let table = render_table(&[reachable_row(), other]);
        assert!(
            table.ends_with(
                "members name different clusters (node 1: 00abcdef01234567, node 3: 1111111111111111): a member listed here belongs to another cluster\n"
            ),
            "{table}"
        );
    }

    #[test]
    fn membership_is_sorted_and_an_uninitialised_node_lists_itself() {
        let status = pb::NodeStatus {
            id: 1,
            address: "a:1".to_string(),
            members: vec![
                pb::Member {
                    id: 3,
                    address: "c:3".to_string(),
                    voter: true,
                    behind: None,
                },
                pb::Member {
                    id: 1,
                    address: "a:1".to_string(),
                    voter: true,
                    behind: None,
                },
            ],
            ..Default::default()
        };
        let ids: Vec<u64> = members_of(&status).iter().map(|member| member.id).collect();
        assert_eq!(ids, [1, 3]);
        let alone = pb::NodeStatus {
            id: 4,
            address: "d:4".to_string(),
            ..Default::default()
        };
        assert_eq!(
            members_of(&alone),
            [Member {
                id: 4,
                address: "d:4".to_string()
            }]
        );
    }

    #[test]
    fn time_of_day_is_hours_minutes_seconds_millis() {
        let text = time_of_day();
        assert_eq!(text.len(), "12:34:56.789".len(), "{text}");
        assert_eq!(&text[2..3], ":");
    }
}
