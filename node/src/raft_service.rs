//! Incoming Raft traffic: the tonic `Raft` service that hands peers'
//! AppendEntries, Vote, PreVote, TransferLeader and snapshot streams to openraft,
//! and answers followers' ReadIndex requests when this node leads.

use futures::Stream;
use openraft::async_runtime::WatchReceiver;
use openraft::errors::{LinearizableReadError, RaftError};
use raftkv::raft_pb as pb;
use std::path::{Path, PathBuf};
use std::pin::Pin;
use std::sync::Arc;

use tokio::sync::watch;
use tonic::{Request, Response, Status, Streaming};

use crate::convert;
use crate::metrics::LeaderContact;
use crate::read_index::{ReadIndexRounds, ReadKind};
use crate::store::IncomingSnapshot;
use crate::types::{NodeId, Raft, Snapshot, TypeConfig};

pub struct RaftService {
    raft: Raft,
    read_index: ReadIndexRounds,
    /// Told of every AppendEntries a leader of the current term sends (the health check's).
    leader_contact: LeaderContact,
    /// Where a snapshot from the leader is received (`snapshot.incoming` in the data
    /// directory), behind a lock: one transfer at a time writes it, until it is installed.
    incoming_snapshot: Arc<tokio::sync::Mutex<PathBuf>>,
    /// Turns true when the node stops: open `AppendEntriesStream` calls end then, or the
    /// server's graceful stop would wait out its grace for calls that never end by themselves.
    stopping: watch::Receiver<bool>,
}

impl RaftService {
    /// `data_dir` is the node's: snapshots are received into it. `stopping` turns true when
    /// the node stops.
    pub fn new(
        raft: Raft,
        read_index: ReadIndexRounds,
        leader_contact: LeaderContact,
        data_dir: &Path,
        stopping: watch::Receiver<bool>,
    ) -> Self {
        RaftService {
            raft,
            read_index,
            leader_contact,
            incoming_snapshot: Arc::new(tokio::sync::Mutex::new(crate::store::incoming_path_in(data_dir))),
            stopping,
        }
    }
}

/// Runs `work` (file I/O) on a blocking thread; a failure is INTERNAL, one line.
async fn blocking<T: Send + 'static>(work: impl FnOnce() -> std::io::Result<T> + Send + 'static) -> Result<T, Status> {
    match tokio::task::spawn_blocking(work).await {
        Ok(Ok(t)) => Ok(t),
        Ok(Err(e)) => Err(Status::internal(format!("cannot write the snapshot received: {e}"))),
        Err(e) => Err(Status::internal(format!("snapshot receiving task failed: {e}"))),
    }
}

fn bad_request(e: convert::MalformedMessage) -> Status {
    Status::invalid_argument(e.to_string())
}

fn stopped<E: std::fmt::Display>(e: E) -> Status {
    Status::unavailable(format!("raft is stopped: {e}"))
}

/// What this node knows about leadership right now.
pub struct Leadership {
    pub is_leader: bool,
    /// The leader's id and address, when known.
    pub leader: Option<(NodeId, String)>,
    pub term: u64,
}

impl Leadership {
    pub fn of(raft: &Raft) -> Leadership {
        let metrics = raft.metrics();
        let m = metrics.borrow_watched();
        let leader = m.current_leader.and_then(|id| {
            m.membership_config
                .membership()
                .get_node(&id)
                .map(|n| (id, n.addr.clone()))
        });
        Leadership {
            is_leader: m.state.is_leader(),
            leader,
            term: m.current_term,
        }
    }

    /// Ok when this node leads, else UNAVAILABLE naming the leader if known. On the leader
    /// (every write) it only reads the role: nothing is copied.
    pub fn require_leader(raft: &Raft) -> Result<(), Status> {
        if raft.is_leader() {
            return Ok(());
        }
        let Leadership { is_leader, leader, .. } = Leadership::of(raft);
        if is_leader {
            return Ok(());
        }
        let hint = leader.map(|(id, addr)| (id, openraft::BasicNode { addr }));
        Err(not_leader(hint.as_ref().map(|h| h.0), hint.as_ref().map(|h| &h.1)))
    }
}

/// Maps "not the leader" to UNAVAILABLE with the leader hint clients follow.
pub fn not_leader(leader_id: Option<NodeId>, leader_node: Option<&openraft::BasicNode>) -> Status {
    let hint = match (leader_id, leader_node) {
        (Some(id), Some(node)) => Some(raftkv::wire::LeaderHint {
            id,
            address: node.addr.clone(),
        }),
        _ => None,
    };
    let message = match &hint {
        Some(h) => format!("not the leader; node {} at {} leads", h.id, h.address),
        None => "not the leader, and no leader is known (election in progress?)".to_string(),
    };
    raftkv::wire::unavailable(message, hint.as_ref())
}

/// Maps a failed leadership check (ReadIndex) to a status.
pub fn linearizable_read_error(e: RaftError<TypeConfig, LinearizableReadError<TypeConfig>>) -> Status {
    match e {
        RaftError::APIError(LinearizableReadError::ForwardToLeader(f)) => {
            not_leader(f.leader_id, f.leader_node.as_ref())
        }
        RaftError::APIError(LinearizableReadError::QuorumNotEnough(q)) => Status::unavailable(format!(
            "the leader cannot reach a quorum: only nodes {:?} answered",
            q.got.iter().collect::<Vec<_>>()
        )),
        RaftError::Fatal(f) => stopped(f),
    }
}

/// Hands one AppendEntries to openraft; an accepted one (not from a deposed leader) is a word
/// from the leader.
async fn append(
    raft: &Raft,
    leader_contact: &LeaderContact,
    request: pb::AppendEntriesRequest,
) -> Result<pb::AppendEntriesResponse, Status> {
    let rpc = convert::append_entries_from_pb(request).map_err(bad_request)?;
    let reply = raft.append_entries(rpc).await.map_err(stopped)?;
    if !matches!(reply, openraft::raft::AppendEntriesResponse::HigherVote(_)) {
        leader_contact.heard();
    }
    Ok(convert::append_response_to_pb(&reply))
}

/// The answers of an `AppendEntriesStream` call.
type AppendAnswers = Pin<Box<dyn Stream<Item = Result<pb::AppendEntriesResponse, Status>> + Send>>;

#[tonic::async_trait]
impl pb::raft_server::Raft for RaftService {
    async fn append_entries(
        &self,
        request: Request<pb::AppendEntriesRequest>,
    ) -> Result<Response<pb::AppendEntriesResponse>, Status> {
        append(&self.raft, &self.leader_contact, request.into_inner())
            .await
            .map(Response::new)
    }

    type AppendEntriesStreamStream = AppendAnswers;

    /// Each request is handed to openraft once the one before is answered, and answered in
    /// order. The first that fails ends the call with its status; the node's stop ends it
    /// between two requests.
    async fn append_entries_stream(
        &self,
        request: Request<Streaming<pb::AppendEntriesRequest>>,
    ) -> Result<Response<AppendAnswers>, Status> {
        let state = (
            request.into_inner(),
            self.raft.clone(),
            self.leader_contact.clone(),
            self.stopping.clone(),
        );
        let answers = futures::stream::unfold(Some(state), |state| async move {
            let (mut requests, raft, leader_contact, mut stopping) = state?;
            let next = tokio::select! {
                next = requests.message() => next,
                _ = stopping.wait_for(|stop| *stop) => return None,
            };
            let answer = match next {
                Ok(Some(request)) => append(&raft, &leader_contact, request).await,
                Ok(None) => return None,
                Err(status) => Err(status),
            };
            let more = answer.is_ok().then_some((requests, raft, leader_contact, stopping));
            Some((answer, more))
        });
        Ok(Response::new(Box::pin(answers)))
    }

    async fn vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = convert::vote_request_from_pb(request.into_inner()).map_err(bad_request)?;
        let reply = self.raft.vote(rpc).await.map_err(stopped)?;
        Ok(Response::new(convert::vote_response_to_pb(&reply)))
    }

    async fn pre_vote(&self, request: Request<pb::VoteRequest>) -> Result<Response<pb::VoteResponse>, Status> {
        let rpc = convert::vote_request_from_pb(request.into_inner()).map_err(bad_request)?;
        let reply = self.raft.pre_vote(rpc).await.map_err(stopped)?;
        Ok(Response::new(convert::vote_response_to_pb(&reply)))
    }

    async fn transfer_leader(
        &self,
        request: Request<pb::TransferLeaderRequest>,
    ) -> Result<Response<pb::TransferLeaderResponse>, Status> {
        let req = convert::transfer_leader_request_from_pb(request.into_inner()).map_err(bad_request)?;
        let reply = self.raft.handle_transfer_leader(req).await.map_err(stopped)?;
        Ok(Response::new(convert::transfer_leader_response_to_pb(&reply)))
    }

    /// Writes the snapshot file to `snapshot.incoming` as its chunks arrive (the memory
    /// held is a chunk, whatever the snapshot's size), checks its length and checksum, then
    /// hands it to openraft, which installs it. A transfer that breaks off is started again
    /// from its start by the next one (there is no resuming from an offset); its file is
    /// removed when it ends.
    async fn install_snapshot(
        &self,
        request: Request<Streaming<pb::SnapshotChunk>>,
    ) -> Result<Response<pb::InstallSnapshotResponse>, Status> {
        let mut stream = request.into_inner();
        let header = match stream.message().await?.and_then(|c| c.kind) {
            Some(pb::snapshot_chunk::Kind::Header(h)) => h,
            _ => return Err(Status::invalid_argument("a snapshot stream must start with its header")),
        };
        let vote = convert::vote_from_pb(header.vote).map_err(bad_request)?;
        let meta = convert::snapshot_meta_from_pb(header.meta).map_err(bad_request)?;
        // 0: the sender writes the snapshot as it sends it; its trailer says where it ends.
        let expected = Some(header.data_len).filter(|len| *len > 0);
        let path = self.incoming_snapshot.lock().await;
        // Dropped before the lock, whichever way this call ends.
        let leftover = RemoveWhenDone(path.clone());
        let into = path.clone();
        let mut incoming = blocking(move || IncomingSnapshot::create(into, expected)).await?;
        while let Some(chunk) = stream.message().await? {
            match chunk.kind {
                Some(pb::snapshot_chunk::Kind::Data(bytes)) => {
                    if expected.is_some_and(|expected| incoming.written() + bytes.len() as u64 > expected) {
                        return Err(Status::invalid_argument("snapshot data longer than its header says"));
                    }
                    incoming = blocking(move || incoming.write(&bytes).map(|_| incoming)).await?;
                }
                _ => return Err(Status::invalid_argument("a snapshot stream has one header, then data")),
            }
        }
        if let Some(expected) = expected.filter(|expected| incoming.written() != *expected) {
            return Err(Status::invalid_argument(format!(
                "snapshot stream ended after {} of {expected} bytes",
                incoming.written()
            )));
        }
        let (file_meta, file) = match tokio::task::spawn_blocking(move || incoming.finish()).await {
            Ok(Ok(received)) => received,
            Ok(Err(e)) => return Err(Status::data_loss(e.to_string())),
            Err(e) => return Err(Status::internal(format!("snapshot receiving task failed: {e}"))),
        };
        if file_meta != meta {
            return Err(Status::invalid_argument(
                "the snapshot's header and its file name different snapshots",
            ));
        }
        let snapshot = Snapshot {
            meta,
            snapshot: crate::types::SnapshotData::File(file),
        };
        // Still holding the lock: no other transfer rewrites the file until it is installed.
        let reply = self.raft.install_full_snapshot(vote, snapshot).await.map_err(stopped)?;
        drop(leftover);
        drop(path);
        Ok(Response::new(pb::InstallSnapshotResponse {
            vote: Some(convert::vote_to_pb(&reply.vote)),
        }))
    }

    async fn read_index(
        &self,
        request: Request<pb::ReadIndexRequest>,
    ) -> Result<Response<pb::ReadIndexResponse>, Status> {
        // Only the leader answers (a follower would have to ask someone else), and its
        // followers' requests share rounds with its own reads.
        Leadership::require_leader(&self.raft)?;
        let kind = if request.into_inner().lease {
            ReadKind::Lease
        } else {
            ReadKind::Quorum
        };
        let read_index = self.read_index.read_index(kind).await?;
        Ok(Response::new(pb::ReadIndexResponse { read_index }))
    }
}

/// Removes the file a snapshot is received into when the transfer ends, however it ends (once
/// installed the file was moved away already): a transfer broken off, refused or not
/// installed leaves no copy of the data behind. Dropped while the transfer still holds the
/// file's lock, so it never removes the next transfer's file.
struct RemoveWhenDone(PathBuf);

impl Drop for RemoveWhenDone {
    fn drop(&mut self) {
        if let Err(e) = std::fs::remove_file(&self.0) {
            if e.kind() != std::io::ErrorKind::NotFound {
                tracing::warn!(path = %self.0.display(), "cannot remove a snapshot received but not installed: {e}");
            }
        }
    }
}
