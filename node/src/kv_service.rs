//! The public `Kv` service: validates requests, sends writes through the
//! proposer (leader only) and serves reads from the local state machine after
//! the read barrier the requested consistency needs.
//!
//! Linearizable reads use ReadIndex: the leader confirms its leadership with a
//! quorum and returns its read log id; a follower asks the leader for it over
//! the `Raft.ReadIndex` RPC, waits until it has applied that far, then reads
//! locally. A follower that cannot reach the leader fails the read.

use std::time::{Duration, Instant};

use bytes::Bytes;
use raftkv::limits;
use raftkv::pb;
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::raft_service::{check_is_leader_error, not_leader};
use crate::types::{Command, CommandResult, Op};

/// Used when a request carries no deadline of its own.
pub const DEFAULT_REQUEST_TIMEOUT: Duration = Duration::from_secs(10);

pub struct KvService {
    app: App,
}

impl KvService {
    pub fn new(app: App) -> Self {
        KvService { app }
    }

    fn header(&self) -> pb::ReplyHeader {
        let applied = self.app.raft.metrics().borrow().last_applied.map(|l| l.index).unwrap_or(0);
        pb::ReplyHeader { node_id: self.app.id, applied_index: applied }
    }

    /// Refuses a write at once when this node does not lead, with a hint.
    fn ensure_leader(&self) -> Result<(), Status> {
        let metrics = self.app.raft.metrics();
        let m = metrics.borrow();
        if m.state.is_leader() {
            return Ok(());
        }
        let leader_node = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).cloned());
        Err(not_leader(m.current_leader, leader_node.as_ref()))
    }

    async fn propose(&self, command: Command) -> Result<CommandResult, Status> {
        self.ensure_leader()?;
        let (result, _log_id) = self.app.proposer.propose(command).await?;
        Ok(result)
    }

    /// Waits until a read at this moment would be linearizable here.
    async fn read_barrier(&self, deadline: Instant) -> Result<(), Status> {
        let (is_leader, leader) = {
            let metrics = self.app.raft.metrics();
            let m = metrics.borrow();
            let leader = m.current_leader.and_then(|id| m.membership_config.membership().get_node(&id).map(|n| (id, n.addr.clone())));
            (m.state.is_leader(), leader)
        };
        let read_index = if is_leader {
            let (read_log_id, _) = self.app.raft.get_read_log_id().await.map_err(check_is_leader_error)?;
            read_log_id.map(|l| l.index)
        } else {
            let Some((leader_id, address)) = leader else {
                return Err(not_leader(None, None));
            };
            let mut client = self.app.network.client(&address).map_err(|e| Status::unavailable(e.to_string()))?;
            let mut request = Request::new(raftkv::raft_pb::ReadIndexRequest {});
            request.set_timeout(deadline.saturating_duration_since(Instant::now()));
            let reply = client.read_index(request).await.map_err(|s| match s.code() {
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Cancelled => Status::unavailable(
                    format!("cannot confirm a linearizable read with leader {leader_id} at {address}: {}", s.message()),
                ),
                _ => s,
            })?;
            reply.into_inner().read_log_id.map(|l| l.index)
        };
        let Some(index) = read_index else { return Ok(()) };
        let left = deadline.saturating_duration_since(Instant::now());
        self.app
            .raft
            .wait(Some(left))
            .applied_index_at_least(Some(index), "linearizable read")
            .await
            .map_err(|e| match e {
                openraft::metrics::WaitError::Timeout(..) => {
                    Status::deadline_exceeded(format!("this node did not apply up to the read index {index} in time"))
                }
                openraft::metrics::WaitError::ShuttingDown => Status::unavailable("node is shutting down"),
            })?;
        Ok(())
    }
}

fn deadline_of<T>(request: &Request<T>) -> Instant {
    let timeout = request
        .metadata()
        .get("grpc-timeout")
        .and_then(|v| v.to_str().ok())
        .and_then(parse_grpc_timeout)
        .unwrap_or(DEFAULT_REQUEST_TIMEOUT);
    Instant::now() + timeout
}

/// Parses the gRPC wire format of a timeout: digits followed by a unit letter.
fn parse_grpc_timeout(s: &str) -> Option<Duration> {
    let (digits, unit) = s.split_at(s.len().checked_sub(1)?);
    let n: u64 = digits.parse().ok()?;
    Some(match unit {
        "H" => Duration::from_secs(n * 3600),
        "M" => Duration::from_secs(n * 60),
        "S" => Duration::from_secs(n),
        "m" => Duration::from_millis(n),
        "u" => Duration::from_micros(n),
        "n" => Duration::from_nanos(n),
        _ => return None,
    })
}

fn check_key(key: &[u8]) -> Result<(), Status> {
    limits::check_key(key).map_err(Status::invalid_argument)
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let deadline = deadline_of(&request);
        let pb::PutRequest { key, value } = request.into_inner();
        check_key(&key)?;
        limits::check_value(&value).map_err(Status::invalid_argument)?;
        tokio::time::timeout_at(deadline.into(), self.propose(Command { op: Op::Put { key, value }, write_id: None }))
            .await
            .map_err(|_| Status::deadline_exceeded("the write did not complete in time; it may or may not have been applied"))??;
        Ok(Response::new(pb::PutResponse { header: Some(self.header()) }))
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let deadline = deadline_of(&request);
        let pb::GetRequest { key, consistency } = request.into_inner();
        check_key(&key)?;
        if pb::Consistency::try_from(consistency) != Ok(pb::Consistency::Stale) {
            tokio::time::timeout_at(deadline.into(), self.read_barrier(deadline))
                .await
                .map_err(|_| Status::deadline_exceeded("the read could not be confirmed in time"))??;
        }
        let header = self.header();
        match self.app.reader.get(&key) {
            Ok(Some(value)) => Ok(Response::new(pb::GetResponse { value, header: Some(header) })),
            Ok(None) => Err(Status::not_found(format!("key {} not found", printable(&key)))),
            Err(e) => Err(Status::internal(format!("cannot read the state machine: {e}"))),
        }
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let deadline = deadline_of(&request);
        let pb::DeleteRequest { key } = request.into_inner();
        check_key(&key)?;
        let result = tokio::time::timeout_at(deadline.into(), self.propose(Command { op: Op::Delete { key, expect: None }, write_id: None }))
            .await
            .map_err(|_| Status::deadline_exceeded("the delete did not complete in time; it may or may not have been applied"))??;
        let existed = matches!(result, CommandResult::Delete { existed: true, .. });
        Ok(Response::new(pb::DeleteResponse { existed, header: Some(self.header()) }))
    }
}

/// A key for an error message: as text when it is printable, else as hex.
fn printable(key: &Bytes) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) && s.len() <= 64 => format!("{s:?}"),
        _ => format!("0x{}", key.iter().take(32).map(|b| format!("{b:02x}")).collect::<String>()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn grpc_timeouts_parse_in_every_unit() {
        assert_eq!(parse_grpc_timeout("5S"), Some(Duration::from_secs(5)));
        assert_eq!(parse_grpc_timeout("250m"), Some(Duration::from_millis(250)));
        assert_eq!(parse_grpc_timeout("7u"), Some(Duration::from_micros(7)));
        assert_eq!(parse_grpc_timeout("x"), None);
        assert_eq!(parse_grpc_timeout(""), None);
    }
}
