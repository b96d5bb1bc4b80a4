//! `raftkv member list|add|promote|remove`: changing who is in the cluster — replacing a dead
//! node, growing or shrinking the cluster — through the leader (the client library sends
//! membership calls there).
//!
//! `add` makes the node a learner first and prints how far behind it is while the leader
//! waits for it to catch up before it makes it a voter, so a person sees the progress of a
//! node that has a lot to copy, and a timeout says what state the node was left in.

use std::time::Duration;

use raftkv::client::{Client, ClientOptions, Error};
use raftkv::pb;
use serde::Serialize;
use tokio::time::Instant;

use crate::status::OutputFormat;
use crate::CliError;

/// How often `member add` and `member promote` print how far behind the learner is.
const PROGRESS_INTERVAL: Duration = Duration::from_millis(500);

#[derive(Serialize)]
struct MemberJson {
    id: u64,
    address: String,
    role: &'static str,
    /// Log entries behind the leader; learners only.
    #[serde(skip_serializing_if = "Option::is_none")]
    behind: Option<u64>,
}

#[derive(Serialize)]
struct MembersJson {
    members: Vec<MemberJson>,
}

fn role(member: &pb::Member) -> &'static str {
    if member.voter {
        "voter"
    } else {
        "learner"
    }
}

/// Prints every member: id, address, role and, for a learner, how far behind it is.
pub async fn list(client: &Client, format: OutputFormat) -> Result<(), CliError> {
    let list = client.member_list().await?;
    print!("{}", render(&list.members, format));
    Ok(())
}

fn render(members: &[pb::Member], format: OutputFormat) -> String {
    match format {
        OutputFormat::Json => {
            let json = MembersJson {
                members: members
                    .iter()
                    .map(|m| MemberJson {
                        id: m.id,
                        address: m.address.clone(),
                        role: role(m),
                        behind: if m.voter { None } else { m.behind },
                    })
                    .collect(),
            };
            serde_json::to_string(&json).expect("members serialize") + "\n"
        }
        OutputFormat::Table => {
            let mut text = format!("{:<4} {:<22} {:<8} {}\n", "ID", "ADDRESS", "ROLE", "BEHIND");
            for m in members {
                let behind = match (m.voter, m.behind) {
                    (false, Some(behind)) => format!("{behind} entries"),
                    _ => "-".to_string(),
                };
                text += &format!("{:<4} {:<22} {:<8} {}\n", m.id, m.address, role(m), behind);
            }
            text
        }
    }
}

/// Adds node `id` at `address` as a learner, then (unless `learner`) waits for it to catch up
/// and makes it a voter, printing progress; all within `timeout`.
pub async fn add(
    endpoints: &[String],
    timeout: Duration,
    options: ClientOptions,
    id: u64,
    address: &str,
    learner: bool,
) -> Result<(), CliError> {
    let deadline = Instant::now() + timeout;
    let client = Client::with_options(endpoints.to_vec(), timeout, options.clone())?;
    println!("adding node {id} at {address} as a learner");
    let added = client.member_add(id, address, true).await?;
    println!("node {id} is a learner (membership at log index {})", added.log_index);
    if learner {
        return Ok(());
    }
    promote_with_progress(endpoints, deadline, options, id).await
}

/// Makes learner `id` a voter once it has caught up, printing progress, within `timeout`.
pub async fn promote(endpoints: &[String], timeout: Duration, options: ClientOptions, id: u64) -> Result<(), CliError> {
    promote_with_progress(endpoints, Instant::now() + timeout, options, id).await
}

async fn promote_with_progress(
    endpoints: &[String],
    deadline: Instant,
    options: ClientOptions,
    id: u64,
) -> Result<(), CliError> {
    let time_left = deadline.saturating_duration_since(Instant::now());
    if time_left.is_zero() {
        return Err(Error::Timeout(format!(
            "node {id} was added as a learner; no time was left to promote it"
        ))
        .into());
    }
    let client = Client::with_options(endpoints.to_vec(), time_left, options)?;
    let promoted = client.member_promote(id);
    tokio::pin!(promoted);
    let mut progress = tokio::time::interval(PROGRESS_INTERVAL);
    progress.tick().await;
    loop {
        tokio::select! {
            promoted = &mut promoted => {
                let promoted = promoted?;
                println!("node {id} is a voter (membership at log index {})", promoted.log_index);
                return Ok(());
            }
            _ = progress.tick() => {
                if let Ok(list) = client.member_list().await {
                    if let Some(behind) = list.members.iter().find(|m| m.id == id && !m.voter).and_then(|m| m.behind) {
                        println!("node {id} is catching up: {behind} entries behind the leader");
                    }
                }
            }
        }
    }
}

/// Removes member `id`; removing the leader moves leadership first.
pub async fn remove(client: &Client, id: u64) -> Result<(), CliError> {
    let removed = client.member_remove(id).await?;
    println!("node {id} removed (membership at log index {})", removed.log_index);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn member(id: u64, voter: bool, behind: Option<u64>) -> pb::Member {
        pb::Member {
            id,
            address: format!("127.0.0.1:700{id}"),
            voter,
            behind,
        }
    }

    #[test]
    fn json_names_roles_and_how_far_learners_are_behind() {
        let json = render(
            &[member(1, true, Some(0)), member(4, false, Some(12))],
            OutputFormat::Json,
        );
        assert_eq!(
            json,
            "{\"members\":[{\"id\":1,\"address\":\"127.0.0.1:7001\",\"role\":\"voter\"},\
             {\"id\":4,\"address\":\"127.0.0.1:7004\",\"role\":\"learner\",\"behind\":12}]}\n"
        );
    }

    #[test]
    fn table_has_a_row_per_member() {
        let table = render(&[member(1, true, None), member(4, false, Some(3))], OutputFormat::Table);
        let lines: Vec<&str> = table.lines().collect();
        assert_eq!(lines.len(), 3);
        assert!(lines[1].contains("voter") && lines[1].ends_with('-'), "{table}");
        assert!(
            lines[2].contains("learner") && lines[2].ends_with("3 entries"),
            "{table}"
        );
    }
}
