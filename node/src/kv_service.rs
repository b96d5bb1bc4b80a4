//! The public `Kv` service: validates requests, sends writes through the
//! proposer (leader only) and serves reads from the local state machine after
//! the read barrier the requested consistency needs.
//!
//! Linearizable reads use ReadIndex: the leader confirms its leadership with a
//! quorum and returns its read log id; a follower asks the leader for it over
//! the `Raft.ReadIndex` RPC, waits until it has applied that far, then reads
//! locally. A follower that cannot reach the leader fails the read.

use std::time::Instant;

use bytes::Bytes;
use openraft::async_runtime::WatchReceiver;
use raftkv::pb;
use raftkv::{batch, limits};
use tonic::{Request, Response, Status};

use crate::app::App;
use crate::proposer;
use crate::raft_service::Leadership;
use crate::read_index::ReadKind;
use crate::types::{Command, CommandResult, Op, WriteId};

/// Pairs a scan returns when the request asks for no particular number.
pub const DEFAULT_SCAN_LIMIT: usize = 1000;
/// Most pairs one scan returns.
pub const MAX_SCAN_LIMIT: usize = 10_000;
/// A scan page stops after about this many key and value bytes (but holds at least one
/// pair), so that a reply stays under gRPC's default 4 MiB message limit.
pub const MAX_SCAN_REPLY_BYTES: usize = 3 << 20;
/// The pause before a write refused for want of a quorum's recent answer is proposed again:
/// about one heartbeat interval.
const LEASE_REFUSAL_RETRY_PAUSE: std::time::Duration = std::time::Duration::from_millis(20);
/// How long such a write is proposed again before the refusal goes to the client: a few
/// heartbeats, far less than a client's deadline.
const LEASE_REFUSAL_RETRY_FOR: std::time::Duration = std::time::Duration::from_millis(300);

#[derive(Clone)]
pub struct KvService {
    app: App,
}

impl KvService {
    pub fn new(app: App) -> Self {
        KvService { app }
    }

    fn header(&self) -> pb::ReplyHeader {
        let applied = self
            .app
            .raft
            .metrics()
            .borrow_watched()
            .last_applied
            .map(|l| l.index)
            .unwrap_or(0);
        pb::ReplyHeader {
            node_id: self.app.id,
            applied_index: applied,
        }
    }

    /// Refuses a write at once when this node does not lead, with a hint.
    fn ensure_leader(&self) -> Result<(), Status> {
        Leadership::require_leader(&self.app.raft)
    }

    /// Proposes a write and waits for its result, within the request's deadline.
    async fn write(&self, op: Op, write_id: Option<pb::WriteId>, deadline: Instant) -> Result<CommandResult, Status> {
        self.ensure_leader()?;
        let write_id = write_id.map(|w| WriteId {
            client_id: w.client_id,
            sequence: w.sequence,
        });
        let command = Command { op, write_id };
        // A leader whose quorum has not answered within its lease (a busy machine, a follower
        // restarting) refuses a write and appends nothing. Proposed again while it still leads,
        // the write usually goes through once the next heartbeat is answered; past
        // LEASE_REFUSAL_RETRY_FOR (or the deadline) the refusal goes to the client, which
        // knows nothing was applied and may try another node.
        let retry_until = (Instant::now() + LEASE_REFUSAL_RETRY_FOR).min(deadline);
        let (result, _log_id) = loop {
            let proposed = self.app.proposer.propose(command.clone());
            match tokio::time::timeout_at(deadline.into(), proposed).await {
                Err(_) => {
                    return Err(Status::deadline_exceeded(
                        "the write did not complete in time; it may or may not have been applied",
                    ))
                }
                Ok(Err(status))
                    if proposer::is_lease_refusal(&status)
                        && Instant::now() + LEASE_REFUSAL_RETRY_PAUSE < retry_until =>
                {
                    tokio::time::sleep(LEASE_REFUSAL_RETRY_PAUSE).await
                }
                Ok(answer) => break answer?,
            }
        };
        if result == CommandResult::Forgotten {
            let id = write_id.expect("only writes with an id are forgotten");
            return Err(Status::failed_precondition(format!(
                "write {} of client {:x} is too old to retry; it may or may not have been applied",
                id.sequence, id.client_id
            )));
        }
        Ok(result)
    }

    /// Waits for the read barrier `consistency` asks for, within the deadline.
    async fn before_read(&self, consistency: i32, deadline: Instant) -> Result<(), Status> {
        let kind = match pb::Consistency::try_from(consistency) {
            Ok(pb::Consistency::Stale) => {
                // Stale, but never older than a write this node answered.
                return tokio::time::timeout_at(deadline.into(), self.app.reader.holds_answered_writes())
                    .await
                    .map_err(|_| Status::deadline_exceeded("this node did not apply the writes it answered in time"));
            }
            Ok(pb::Consistency::Lease) => ReadKind::Lease,
            // An unknown value gets the strongest guarantee.
            Ok(pb::Consistency::Linearizable) | Err(_) => ReadKind::Quorum,
        };
        tokio::time::timeout_at(deadline.into(), self.read_barrier(kind, deadline))
            .await
            .map_err(|_| Status::deadline_exceeded("the read could not be confirmed in time"))?
    }

    /// Waits until a read at this moment would be linearizable here.
    async fn read_barrier(&self, kind: ReadKind, deadline: Instant) -> Result<(), Status> {
        let read_index = self.app.read_index.read_index(kind).await?;
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
    Instant::now() + raftkv::wire::request_timeout(request.metadata())
}

fn check_key(key: &[u8]) -> Result<(), Status> {
    Ok(limits::check_key(key)?)
}

fn internal_read_error(e: crate::store::EngineError) -> Status {
    Status::internal(format!("cannot read the state machine: {e}"))
}

impl KvService {
    async fn put_by(&self, request: pb::PutRequest, deadline: Instant) -> Result<pb::PutResponse, Status> {
        let pb::PutRequest { key, value, write_id } = request;
        check_key(&key)?;
        limits::check_value(&value)?;
        self.write(Op::Put { key, value }, write_id, deadline).await?;
        Ok(pb::PutResponse {
            header: Some(self.header()),
        })
    }

    async fn get_by(&self, request: pb::GetRequest, deadline: Instant) -> Result<pb::GetResponse, Status> {
        let pb::GetRequest { key, consistency } = request;
        check_key(&key)?;
        self.before_read(consistency, deadline).await?;
        self.read_value(&key)
    }

    /// A get of a batch, as [`KvService::get_by`], within the reply's `budget` (its value is
    /// not read once the reply is full: [`batch::get_unless_full`]).
    async fn get_within(
        &self,
        request: pb::GetRequest,
        deadline: Instant,
        budget: &batch::ReplyBudget,
    ) -> Result<pb::batch_item_result::Result, Status> {
        let pb::GetRequest { key, consistency } = request;
        check_key(&key)?;
        batch::get_unless_full(budget, self.before_read(consistency, deadline), || {
            self.read_value(&key)
        })
        .await
    }

    /// The value of `key` as this node's state machine holds it now.
    fn read_value(&self, key: &Bytes) -> Result<pb::GetResponse, Status> {
        let header = self.header();
        match self.app.reader.get(key).map_err(internal_read_error)? {
            Some(value) => Ok(pb::GetResponse {
                value,
                header: Some(header),
            }),
            None => Err(Status::not_found(format!("key {} not found", printable(key)))),
        }
    }

    async fn delete_by(&self, request: pb::DeleteRequest, deadline: Instant) -> Result<pb::DeleteResponse, Status> {
        let pb::DeleteRequest { key, write_id, expect } = request;
        check_key(&key)?;
        if let Some(e) = &expect {
            limits::check_value(e)?;
        }
        let result = self.write(Op::Delete { key, expect }, write_id, deadline).await?;
        let CommandResult::Delete {
            existed,
            deleted,
            current,
        } = result
        else {
            return Err(Status::internal(format!("a delete returned {result:?}")));
        };
        Ok(pb::DeleteResponse {
            existed,
            deleted,
            current,
            header: Some(self.header()),
        })
    }

    async fn compare_and_swap_by(
        &self,
        request: pb::CompareAndSwapRequest,
        deadline: Instant,
    ) -> Result<pb::CompareAndSwapResponse, Status> {
        let pb::CompareAndSwapRequest {
            key,
            expect,
            new_value,
            write_id,
        } = request;
        check_key(&key)?;
        if let Some(e) = &expect {
            limits::check_value(e)?;
        }
        limits::check_value(&new_value)?;
        let result = self
            .write(Op::Cas { key, expect, new_value }, write_id, deadline)
            .await?;
        let CommandResult::Cas { swapped, current } = result else {
            return Err(Status::internal(format!("a compare-and-swap returned {result:?}")));
        };
        Ok(pb::CompareAndSwapResponse {
            swapped,
            current,
            header: Some(self.header()),
        })
    }

    /// Serves one item of a batch that arrived at `arrived`, as its own call would be served,
    /// within the reply's `budget`.
    async fn serve_item(
        &self,
        item: pb::BatchItem,
        arrived: Instant,
        budget: &batch::ReplyBudget,
    ) -> pb::BatchItemResult {
        use pb::batch_item::Request as Item;
        use pb::batch_item_result::Result as Answer;
        let deadline = arrived + batch::item_timeout(item.timeout_us);
        let answer = match item.request {
            Some(Item::Put(r)) => self.put_by(r, deadline).await.map(Answer::Put),
            Some(Item::Get(r)) => self.get_within(r, deadline, budget).await,
            Some(Item::Delete(r)) => self.delete_by(r, deadline).await.map(Answer::Delete),
            Some(Item::CompareAndSwap(r)) => self.compare_and_swap_by(r, deadline).await.map(Answer::CompareAndSwap),
            None => Err(Status::invalid_argument("a batch item holds no request")),
        };
        budget.result(answer)
    }
}

#[tonic::async_trait]
impl pb::kv_server::Kv for KvService {
    async fn put(&self, request: Request<pb::PutRequest>) -> Result<Response<pb::PutResponse>, Status> {
        let deadline = deadline_of(&request);
        self.put_by(request.into_inner(), deadline).await.map(Response::new)
    }

    async fn get(&self, request: Request<pb::GetRequest>) -> Result<Response<pb::GetResponse>, Status> {
        let deadline = deadline_of(&request);
        self.get_by(request.into_inner(), deadline).await.map(Response::new)
    }

    async fn delete(&self, request: Request<pb::DeleteRequest>) -> Result<Response<pb::DeleteResponse>, Status> {
        let deadline = deadline_of(&request);
        self.delete_by(request.into_inner(), deadline).await.map(Response::new)
    }

    async fn compare_and_swap(
        &self,
        request: Request<pb::CompareAndSwapRequest>,
    ) -> Result<Response<pb::CompareAndSwapResponse>, Status> {
        let deadline = deadline_of(&request);
        self.compare_and_swap_by(request.into_inner(), deadline)
            .await
            .map(Response::new)
    }
    async fn scan(&self, request: Request<pb::ScanRequest>) -> Result<Response<pb::ScanResponse>, Status> {
        let deadline = deadline_of(&request);
        let pb::ScanRequest {
            prefix,
            limit,
            consistency,
            start_after,
        } = request.into_inner();
        if prefix.len() > limits::MAX_KEY_BYTES || start_after.len() > limits::MAX_KEY_BYTES {
            return Err(Status::invalid_argument(format!(
                "prefix and start_after are at most {} bytes",
                limits::MAX_KEY_BYTES
            )));
        }
        let limit = match limit as usize {
            0 => DEFAULT_SCAN_LIMIT,
            n if n > MAX_SCAN_LIMIT => {
                return Err(Status::invalid_argument(format!(
                    "limit {n} is over the maximum of {MAX_SCAN_LIMIT}"
                )))
            }
            n => n,
        };
        self.before_read(consistency, deadline).await?;
        let header = self.header();
        let (pairs, more) = self
            .app
            .reader
            .scan(&prefix, &start_after, limit, MAX_SCAN_REPLY_BYTES)
            .map_err(internal_read_error)?;
        let pairs = pairs
            .into_iter()
            .map(|(key, value)| pb::KeyValue { key, value })
            .collect();
        Ok(Response::new(pb::ScanResponse {
            pairs,
            more,
            header: Some(header),
        }))
    }
}

#[tonic::async_trait]
impl pb::kv_batch_server::KvBatch for KvService {
    /// Serves the items side by side; each gets the answer its own call would have had.
    async fn batch(&self, request: Request<pb::BatchRequest>) -> Result<Response<pb::BatchResponse>, Status> {
        let arrived = Instant::now();
        let items = request.into_inner().items;
        batch::check_item_count(items.len())?;
        let budget = batch::ReplyBudget::default();
        let results =
            futures::future::join_all(items.into_iter().map(|item| self.serve_item(item, arrived, &budget))).await;
        Ok(Response::new(pb::BatchResponse { results }))
    }
}

/// A key for an error message: as text when it is printable, else as hex.
fn printable(key: &Bytes) -> String {
    match std::str::from_utf8(key) {
        Ok(s) if s.chars().all(|c| !c.is_control()) && s.len() <= 64 => format!("{s:?}"),
        _ => format!(
            "0x{}",
            key.iter().take(32).map(|b| format!("{b:02x}")).collect::<String>()
        ),
    }
}
