//! Field-by-field mapping between openraft's types and our protobuf messages
//! (`proto/raft.proto`). The same messages are the wire format between nodes
//! and the on-disk format of log entries and snapshots, so this module is the
//! one place where their shape is decided.

use std::collections::{BTreeMap, BTreeSet};

use openraft::raft::{
    AppendEntriesRequest, AppendEntriesResponse, TransferLeaderError, TransferLeaderRequest, TransferLeaderResponse,
    VoteRequest, VoteResponse,
};
use openraft::BasicNode;
use raftkv::raft_pb as pb;

use crate::types::{
    Command, CommandResult, Entry, EntryPayload, LeaderId, LogId, Membership, NodeId, Op, SnapshotMeta,
    StoredMembership, TypeConfig, Vote, WriteGroup, WriteId,
};

/// A message that does not describe a valid openraft value (a required field is
/// missing). From the network that is a bad request; from disk, corruption.
#[derive(Debug, thiserror::Error)]
#[error("malformed {0}: missing or invalid field")]
pub struct MalformedMessage(pub &'static str);

type Result<T> = std::result::Result<T, MalformedMessage>;

/// Stored bytes that are not an openraft value: not protobuf, or a message that is not
/// a valid value ([`MalformedMessage`]). From disk, that is corruption.
#[derive(Debug, thiserror::Error)]
pub enum DecodeError {
    #[error(transparent)]
    Protobuf(#[from] prost::DecodeError),
    #[error(transparent)]
    Malformed(#[from] MalformedMessage),
}

/// Decodes `bytes` as protobuf message `M`, then maps it with `from_pb` (one of the
/// `*_from_pb` functions here).
pub fn decode<M: prost::Message + Default, T>(
    bytes: &[u8],
    from_pb: impl FnOnce(M) -> Result<T>,
) -> std::result::Result<T, DecodeError> {
    Ok(from_pb(M::decode(bytes)?)?)
}

pub fn leader_id_to_pb(id: &LeaderId) -> pb::LeaderId {
    pb::LeaderId {
        term: id.term,
        node_id: id.node_id,
    }
}

pub fn leader_id_from_pb(id: Option<pb::LeaderId>) -> Result<LeaderId> {
    let id = id.ok_or(MalformedMessage("leader id"))?;
    Ok(LeaderId {
        term: id.term,
        node_id: id.node_id,
    })
}

pub fn vote_to_pb(v: &Vote) -> pb::Vote {
    pb::Vote {
        leader_id: Some(leader_id_to_pb(&v.leader_id)),
        committed: v.committed,
    }
}

pub fn vote_from_pb(v: Option<pb::Vote>) -> Result<Vote> {
    let v = v.ok_or(MalformedMessage("vote"))?;
    Ok(Vote {
        leader_id: leader_id_from_pb(v.leader_id)?,
        committed: v.committed,
    })
}

pub fn log_id_to_pb(id: &LogId) -> pb::LogId {
    pb::LogId {
        leader_id: Some(leader_id_to_pb(&id.leader_id)),
        index: id.index,
    }
}

pub fn opt_log_id_to_pb(id: &Option<LogId>) -> Option<pb::LogId> {
    id.as_ref().map(log_id_to_pb)
}

pub fn log_id_from_pb(id: pb::LogId) -> Result<LogId> {
    Ok(LogId::new(leader_id_from_pb(id.leader_id)?, id.index))
}

pub fn opt_log_id_from_pb(id: Option<pb::LogId>) -> Result<Option<LogId>> {
    id.map(log_id_from_pb).transpose()
}

pub fn membership_to_pb(m: &Membership) -> pb::Membership {
    pb::Membership {
        configs: m
            .get_joint_config()
            .iter()
            .map(|set| pb::NodeIdSet {
                ids: set.iter().copied().collect(),
            })
            .collect(),
        nodes: m.nodes().map(|(id, node)| (*id, node.addr.clone())).collect(),
    }
}

pub fn membership_from_pb(m: Option<pb::Membership>) -> Result<Membership> {
    let m = m.ok_or(MalformedMessage("membership"))?;
    let configs: Vec<BTreeSet<NodeId>> = m.configs.into_iter().map(|s| s.ids.into_iter().collect()).collect();
    let nodes: BTreeMap<NodeId, BasicNode> = m.nodes.into_iter().map(|(id, addr)| (id, BasicNode { addr })).collect();
    // openraft refuses a voter without an address (it would panic later) and an empty voter set.
    Membership::new(configs, nodes).map_err(|_| MalformedMessage("membership (voter without address)"))
}

pub fn stored_membership_to_pb(m: &StoredMembership) -> pb::StoredMembership {
    pb::StoredMembership {
        log_id: opt_log_id_to_pb(m.log_id()),
        membership: Some(membership_to_pb(m.membership())),
    }
}

pub fn stored_membership_from_pb(m: Option<pb::StoredMembership>) -> Result<StoredMembership> {
    let m = m.ok_or(MalformedMessage("stored membership"))?;
    Ok(StoredMembership::new(
        opt_log_id_from_pb(m.log_id)?,
        membership_from_pb(m.membership)?,
    ))
}

pub fn write_id_to_pb(w: &WriteId) -> pb::WriteId {
    pb::WriteId {
        client_id: w.client_id,
        sequence: w.sequence,
    }
}

pub fn command_to_pb(c: &Command) -> pb::Command {
    let op = match &c.op {
        Op::Put { key, value } => pb::command::Op::Put(pb::Put {
            key: key.clone(),
            value: value.clone(),
        }),
        Op::Delete { key, expect } => pb::command::Op::Delete(pb::Delete {
            key: key.clone(),
            expect: expect.clone(),
        }),
        Op::Cas { key, expect, new_value } => pb::command::Op::Cas(pb::CompareAndSwap {
            key: key.clone(),
            expect: expect.clone(),
            new_value: new_value.clone(),
        }),
    };
    pb::Command {
        op: Some(op),
        write_id: c.write_id.as_ref().map(write_id_to_pb),
    }
}

pub fn command_from_pb(c: pb::Command) -> Result<Command> {
    let op = match c.op.ok_or(MalformedMessage("command"))? {
        pb::command::Op::Put(p) => Op::Put {
            key: p.key,
            value: p.value,
        },
        pb::command::Op::Delete(d) => Op::Delete {
            key: d.key,
            expect: d.expect,
        },
        pb::command::Op::Cas(c) => Op::Cas {
            key: c.key,
            expect: c.expect,
            new_value: c.new_value,
        },
    };
    let write_id = c.write_id.map(|w| WriteId {
        client_id: w.client_id,
        sequence: w.sequence,
    });
    Ok(Command { op, write_id })
}

pub fn command_result_to_pb(r: &CommandResult) -> pb::CommandResult {
    use pb::command_result::Result as R;
    let result = match r {
        CommandResult::Put => Some(R::Put(pb::Empty {})),
        CommandResult::Delete {
            existed,
            deleted,
            current,
        } => Some(R::Delete(pb::DeleteResult {
            existed: *existed,
            deleted: *deleted,
            current: current.clone(),
        })),
        CommandResult::Cas { swapped, current } => Some(R::Cas(pb::CasResult {
            swapped: *swapped,
            current: current.clone(),
        })),
        CommandResult::Forgotten => None,
    };
    pb::CommandResult { result }
}

pub fn command_result_from_pb(r: pb::CommandResult) -> CommandResult {
    use pb::command_result::Result as R;
    match r.result {
        Some(R::Put(_)) => CommandResult::Put,
        Some(R::Delete(d)) => CommandResult::Delete {
            existed: d.existed,
            deleted: d.deleted,
            current: d.current,
        },
        Some(R::Cas(c)) => CommandResult::Cas {
            swapped: c.swapped,
            current: c.current,
        },
        None => CommandResult::Forgotten,
    }
}

pub fn entry_to_pb(e: &Entry) -> pb::Entry {
    let payload = match &e.payload {
        EntryPayload::Blank => pb::entry::Payload::Blank(pb::Blank {}),
        EntryPayload::Normal(group) => pb::entry::Payload::Normal(pb::WriteGroup {
            commands: group.commands.iter().map(command_to_pb).collect(),
            proposed_at_ms: group.proposed_at_ms,
        }),
        EntryPayload::Membership(m) => pb::entry::Payload::Membership(membership_to_pb(m)),
    };
    pb::Entry {
        log_id: Some(log_id_to_pb(&e.log_id)),
        payload: Some(payload),
    }
}

pub fn entry_from_pb(e: pb::Entry) -> Result<Entry> {
    let log_id = log_id_from_pb(e.log_id.ok_or(MalformedMessage("entry log id"))?)?;
    let payload = match e.payload.ok_or(MalformedMessage("entry payload"))? {
        pb::entry::Payload::Blank(_) => EntryPayload::Blank,
        pb::entry::Payload::Normal(group) => EntryPayload::Normal(WriteGroup {
            proposed_at_ms: group.proposed_at_ms,
            commands: group.commands.into_iter().map(command_from_pb).collect::<Result<_>>()?,
        }),
        pb::entry::Payload::Membership(m) => EntryPayload::Membership(membership_from_pb(Some(m))?),
    };
    Ok(Entry { log_id, payload })
}

pub fn snapshot_meta_to_pb(m: &SnapshotMeta) -> pb::SnapshotMeta {
    pb::SnapshotMeta {
        last_log_id: opt_log_id_to_pb(&m.last_log_id),
        last_membership: Some(stored_membership_to_pb(&m.last_membership)),
    }
}

pub fn snapshot_meta_from_pb(m: Option<pb::SnapshotMeta>) -> Result<SnapshotMeta> {
    let m = m.ok_or(MalformedMessage("snapshot meta"))?;
    Ok(SnapshotMeta {
        last_log_id: opt_log_id_from_pb(m.last_log_id)?,
        last_membership: stored_membership_from_pb(m.last_membership)?,
    })
}

pub fn append_entries_to_pb(r: &AppendEntriesRequest<TypeConfig>) -> pb::AppendEntriesRequest {
    pb::AppendEntriesRequest {
        vote: Some(vote_to_pb(&r.vote)),
        prev_log_id: opt_log_id_to_pb(&r.prev_log_id),
        entries: r.entries.iter().map(entry_to_pb).collect(),
        leader_commit: opt_log_id_to_pb(&r.leader_commit),
    }
}

pub fn append_entries_from_pb(r: pb::AppendEntriesRequest) -> Result<AppendEntriesRequest<TypeConfig>> {
    Ok(AppendEntriesRequest {
        vote: vote_from_pb(r.vote)?,
        prev_log_id: opt_log_id_from_pb(r.prev_log_id)?,
        entries: r.entries.into_iter().map(entry_from_pb).collect::<Result<_>>()?,
        leader_commit: opt_log_id_from_pb(r.leader_commit)?,
    })
}

pub fn append_response_to_pb(r: &AppendEntriesResponse<TypeConfig>) -> pb::AppendEntriesResponse {
    use pb::append_entries_response::Result as P;
    use AppendEntriesResponse as R;
    let result = match r {
        R::Success => P::Success(pb::Empty {}),
        R::PartialSuccess(m) => P::PartialSuccess(pb::PartialSuccess {
            matching: opt_log_id_to_pb(m),
        }),
        R::Conflict => P::Conflict(pb::Empty {}),
        R::HigherVote(v) => P::HigherVote(vote_to_pb(v)),
    };
    pb::AppendEntriesResponse { result: Some(result) }
}

pub fn append_response_from_pb(r: pb::AppendEntriesResponse) -> Result<AppendEntriesResponse<TypeConfig>> {
    use pb::append_entries_response::Result as P;
    use AppendEntriesResponse as R;
    Ok(match r.result.ok_or(MalformedMessage("append entries response"))? {
        P::Success(_) => R::Success,
        P::PartialSuccess(p) => R::PartialSuccess(opt_log_id_from_pb(p.matching)?),
        P::Conflict(_) => R::Conflict,
        P::HigherVote(v) => R::HigherVote(vote_from_pb(Some(v))?),
    })
}

pub fn vote_request_to_pb(r: &VoteRequest<TypeConfig>) -> pb::VoteRequest {
    pb::VoteRequest {
        vote: Some(vote_to_pb(&r.vote)),
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
        leadership_transfer: r.leadership_transfer,
    }
}

pub fn vote_request_from_pb(r: pb::VoteRequest) -> Result<VoteRequest<TypeConfig>> {
    Ok(VoteRequest {
        vote: vote_from_pb(r.vote)?,
        last_log_id: opt_log_id_from_pb(r.last_log_id)?,
        leadership_transfer: r.leadership_transfer,
    })
}

pub fn vote_response_to_pb(r: &VoteResponse<TypeConfig>) -> pb::VoteResponse {
    pb::VoteResponse {
        vote: Some(vote_to_pb(&r.vote)),
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_to_pb(&r.last_log_id),
    }
}

pub fn vote_response_from_pb(r: pb::VoteResponse) -> Result<VoteResponse<TypeConfig>> {
    Ok(VoteResponse {
        vote: vote_from_pb(r.vote)?,
        vote_granted: r.vote_granted,
        last_log_id: opt_log_id_from_pb(r.last_log_id)?,
    })
}

pub fn transfer_leader_request_to_pb(r: &TransferLeaderRequest<TypeConfig>) -> pb::TransferLeaderRequest {
    pb::TransferLeaderRequest {
        from_leader: Some(vote_to_pb(r.from_leader())),
        to_node_id: *r.to_node_id(),
        last_log_id: r.last_log_id().map(log_id_to_pb),
    }
}

pub fn transfer_leader_request_from_pb(r: pb::TransferLeaderRequest) -> Result<TransferLeaderRequest<TypeConfig>> {
    Ok(TransferLeaderRequest::new(
        vote_from_pb(r.from_leader)?,
        r.to_node_id,
        opt_log_id_from_pb(r.last_log_id)?,
    ))
}

pub fn transfer_leader_response_to_pb(r: &TransferLeaderResponse<TypeConfig>) -> pb::TransferLeaderResponse {
    use pb::transfer_leader_response::Result as P;
    let result = match r {
        Ok(()) => P::Ok(pb::Empty {}),
        Err(TransferLeaderError::VoteChanged { expected, actual }) => P::VoteChanged(pb::VoteMismatch {
            expected: Some(vote_to_pb(expected)),
            actual: Some(vote_to_pb(actual)),
        }),
        Err(TransferLeaderError::LogNotFlushed { expected, actual }) => P::LogNotFlushed(pb::LogNotFlushed {
            expected: opt_log_id_to_pb(expected),
            actual: opt_log_id_to_pb(actual),
        }),
    };
    pb::TransferLeaderResponse { result: Some(result) }
}

pub fn transfer_leader_response_from_pb(r: pb::TransferLeaderResponse) -> Result<TransferLeaderResponse<TypeConfig>> {
    use pb::transfer_leader_response::Result as P;
    Ok(match r.result.ok_or(MalformedMessage("transfer leader response"))? {
        P::Ok(_) => Ok(()),
        P::VoteChanged(v) => Err(TransferLeaderError::VoteChanged {
            expected: vote_from_pb(v.expected)?,
            actual: vote_from_pb(v.actual)?,
        }),
        P::LogNotFlushed(l) => Err(TransferLeaderError::LogNotFlushed {
            expected: opt_log_id_from_pb(l.expected)?,
            actual: opt_log_id_from_pb(l.actual)?,
        }),
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use bytes::Bytes;

    fn log_id(term: u64, node: u64, index: u64) -> LogId {
        LogId::new(LeaderId { term, node_id: node }, index)
    }

    #[test]
    fn entries_survive_a_round_trip_through_protobuf() {
        let nodes: BTreeMap<u64, BasicNode> = (1..=3)
            .map(|i| {
                (
                    i,
                    BasicNode {
                        addr: format!("127.0.0.1:{}", 7000 + i),
                    },
                )
            })
            .collect();
        let membership = Membership::new(vec![[1, 2, 3].into_iter().collect()], nodes).unwrap();
        let entries = vec![
            Entry {
                log_id: log_id(1, 1, 0),
                payload: EntryPayload::Membership(membership),
            },
            Entry {
                log_id: log_id(2, 3, 1),
                payload: EntryPayload::Blank,
            },
            Entry {
                log_id: log_id(2, 3, 2),
                payload: EntryPayload::Normal(WriteGroup {
                    proposed_at_ms: 1_700_000_000_000,
                    commands: vec![
                        Command {
                            op: Op::Put {
                                key: Bytes::from_static(b"k"),
                                value: Bytes::from_static(b"v"),
                            },
                            write_id: Some(WriteId {
                                client_id: 7,
                                sequence: 3,
                            }),
                        },
                        Command {
                            op: Op::Delete {
                                key: Bytes::from_static(b"gone"),
                                expect: None,
                            },
                            write_id: None,
                        },
                        Command {
                            op: Op::Cas {
                                key: Bytes::from_static(b"c"),
                                expect: Some(Bytes::new()),
                                new_value: Bytes::from_static(b"n"),
                            },
                            write_id: None,
                        },
                    ],
                }),
            },
        ];
        for e in entries {
            let back = entry_from_pb(entry_to_pb(&e)).unwrap();
            assert_eq!(back, e);
        }
    }

    #[test]
    fn a_message_missing_a_required_field_is_rejected() {
        let err = entry_from_pb(pb::Entry {
            log_id: None,
            payload: None,
        })
        .unwrap_err();
        assert!(err.to_string().contains("entry log id"));
        let voter_without_address = pb::Membership {
            configs: vec![pb::NodeIdSet { ids: vec![9] }],
            nodes: Default::default(),
        };
        assert!(membership_from_pb(Some(voter_without_address)).is_err());
    }

    #[test]
    fn command_results_survive_a_round_trip() {
        for r in [
            CommandResult::Put,
            CommandResult::Delete {
                existed: true,
                deleted: false,
                current: Some(Bytes::from_static(b"x")),
            },
            CommandResult::Cas {
                swapped: false,
                current: None,
            },
            CommandResult::Forgotten,
        ] {
            assert_eq!(command_result_from_pb(command_result_to_pb(&r)), r);
        }
    }

    #[test]
    fn transfer_leader_messages_survive_a_round_trip() {
        let request = TransferLeaderRequest::new(Vote::new_committed(4, 1), 3, Some(log_id(4, 1, 17)));
        let back = transfer_leader_request_from_pb(transfer_leader_request_to_pb(&request)).unwrap();
        assert_eq!(back, request);
        let vote_request = VoteRequest {
            vote: Vote::new(5, 3),
            last_log_id: Some(log_id(4, 1, 17)),
            leadership_transfer: true,
        };
        assert_eq!(
            vote_request_from_pb(vote_request_to_pb(&vote_request)).unwrap(),
            vote_request
        );
        for response in [
            Ok(()),
            Err(TransferLeaderError::VoteChanged {
                expected: Vote::new_committed(4, 1),
                actual: Vote::new(5, 2),
            }),
            Err(TransferLeaderError::LogNotFlushed {
                expected: Some(log_id(4, 1, 17)),
                actual: None,
            }),
        ] {
            let back = transfer_leader_response_from_pb(transfer_leader_response_to_pb(&response)).unwrap();
            assert_eq!(back, response);
        }
    }

    #[test]
    fn votes_keep_their_committed_flag() {
        for v in [Vote::new(3, 2), Vote::new_committed(7, 1)] {
            assert_eq!(vote_from_pb(Some(vote_to_pb(&v))).unwrap(), v);
        }
    }
}
