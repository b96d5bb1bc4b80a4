//! Client sessions: what the state machine remembers of each client's writes
//! so that a retried write (same client id and sequence number) is applied at
//! most once and answered with its first result.
//!
//! Every decision here is a pure function of the applied log (times come from
//! the entries, not from the local clock), so all replicas agree on which
//! writes are duplicates. Memory is bounded: at most `MAX_SESSIONS` clients,
//! at most `RESULTS_PER_SESSION` results each, and a client idle for
//! `SESSION_TTL_MS` of log time is forgotten.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::ops::RangeBounds;

use raftkv::raft_pb as pb;

use crate::convert;
use crate::types::{CommandResult, WriteId};

/// A client idle this long (in the leader's clock, as logged) is forgotten.
pub const SESSION_TTL_MS: u64 = 60 * 60 * 1000;
/// Most clients remembered; beyond it the longest-idle is forgotten.
pub const MAX_SESSIONS: usize = 10_000;
/// Most results kept per client: a retry of a write more than this many
/// sequence numbers behind the client's newest is refused as forgotten.
pub const RESULTS_PER_SESSION: u64 = 1024;

/// What is known of a write id.
#[derive(Debug, PartialEq, Eq)]
pub enum Seen {
    New,
    Duplicate(CommandResult),
    /// Too old to tell: must not be applied (it may have been already).
    Forgotten,
}

#[derive(Debug, Clone, Default, PartialEq)]
struct Session {
    last_used_ms: u64,
    forgotten_through: u64,
    results: BTreeMap<u64, CommandResult>,
}

#[derive(Debug, Default)]
pub struct Sessions {
    by_client: HashMap<u64, Session>,
    /// (last_used_ms, client_id): the idle order, for expiry.
    by_age: BTreeSet<(u64, u64)>,
}

impl Sessions {
    pub fn check(&self, id: &WriteId) -> Seen {
        let Some(s) = self.by_client.get(&id.client_id) else {
            return Seen::New;
        };
        if let Some(r) = s.results.get(&id.sequence) {
            return Seen::Duplicate(r.clone());
        }
        if id.sequence <= s.forgotten_through {
            return Seen::Forgotten;
        }
        Seen::New
    }

    /// Remembers the result of a newly applied write. Returns the sequence numbers whose
    /// results this pushed out of the client's window (now forgotten).
    pub fn record(&mut self, id: WriteId, now_ms: u64, result: CommandResult) -> Vec<u64> {
        let session = self.by_client.entry(id.client_id).or_default();
        self.by_age.remove(&(session.last_used_ms, id.client_id));
        session.last_used_ms = session.last_used_ms.max(now_ms);
        self.by_age.insert((session.last_used_ms, id.client_id));
        session.results.insert(id.sequence, result);
        let newest = *session.results.keys().next_back().expect("just inserted");
        let keep_from = newest.saturating_sub(RESULTS_PER_SESSION - 1);
        let mut pruned = Vec::new();
        while let Some((&oldest, _)) = session.results.first_key_value() {
            if oldest >= keep_from {
                break;
            }
            session.results.remove(&oldest);
            session.forgotten_through = session.forgotten_through.max(oldest);
            pruned.push(oldest);
        }
        pruned
    }

    /// Forgets idle clients and, over the cap, the longest idle ones.
    /// Returns each client forgotten with the sequence numbers it had results for.
    pub fn expire(&mut self, now_ms: u64) -> Vec<(u64, Vec<u64>)> {
        let mut gone = Vec::new();
        while let Some(&(used, client)) = self.by_age.first() {
            let idle = used.saturating_add(SESSION_TTL_MS) < now_ms;
            if !idle && self.by_client.len() <= MAX_SESSIONS {
                break;
            }
            self.by_age.remove(&(used, client));
            let sequences = self
                .by_client
                .remove(&client)
                .map(|s| s.results.into_keys().collect())
                .unwrap_or_default();
            gone.push((client, sequences));
        }
        gone
    }

    #[cfg(test)]
    fn len(&self) -> usize {
        self.by_client.len()
    }

    /// A client's session without its results, as the state machine stores it (the
    /// results are stored apart, a range at a time: see [`Sessions::results_pb`]).
    pub fn meta_pb(&self, client_id: u64) -> Option<pb::ClientSession> {
        let s = self.by_client.get(&client_id)?;
        Some(pb::ClientSession {
            client_id,
            last_used_ms: s.last_used_ms,
            forgotten_through: s.forgotten_through,
            results: Vec::new(),
        })
    }

    /// The stored form of a client's results whose sequence numbers are in `sequences`.
    pub fn results_pb(&self, client_id: u64, sequences: impl RangeBounds<u64>) -> Vec<pb::SessionResult> {
        let Some(session) = self.by_client.get(&client_id) else {
            return Vec::new();
        };
        session
            .results
            .range(sequences)
            .map(|(sequence, result)| pb::SessionResult {
                sequence: *sequence,
                result: Some(convert::command_result_to_pb(result)),
            })
            .collect()
    }

    /// Adds a stored result (see [`Sessions::results_pb`]) to a client loaded with
    /// [`Sessions::insert_pb`]; a result for a client not loaded is ignored.
    pub fn insert_result_pb(&mut self, client_id: u64, r: pb::SessionResult) {
        if let Some(session) = self.by_client.get_mut(&client_id) {
            session.results.insert(
                r.sequence,
                convert::command_result_from_pb(r.result.unwrap_or_default()),
            );
        }
    }

    /// A whole session, results included: what snapshots carry.
    pub fn to_pb(&self, client_id: u64) -> Option<pb::ClientSession> {
        Some(pb::ClientSession {
            results: self.results_pb(client_id, ..),
            ..self.meta_pb(client_id)?
        })
    }

    pub fn all_to_pb(&self) -> Vec<pb::ClientSession> {
        let mut ids: Vec<u64> = self.by_client.keys().copied().collect();
        ids.sort_unstable();
        ids.into_iter().filter_map(|id| self.to_pb(id)).collect()
    }

    pub fn insert_pb(&mut self, s: pb::ClientSession) {
        let session = Session {
            last_used_ms: s.last_used_ms,
            forgotten_through: s.forgotten_through,
            results: s
                .results
                .into_iter()
                .map(|r| {
                    (
                        r.sequence,
                        convert::command_result_from_pb(r.result.unwrap_or_default()),
                    )
                })
                .collect(),
        };
        if let Some(old) = self.by_client.insert(s.client_id, session) {
            self.by_age.remove(&(old.last_used_ms, s.client_id));
        }
        self.by_age.insert((s.last_used_ms, s.client_id));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(client_id: u64, sequence: u64) -> WriteId {
        WriteId { client_id, sequence }
    }

    #[test]
    fn a_retried_write_is_a_duplicate_with_its_first_result() {
        let mut s = Sessions::default();
        assert_eq!(s.check(&id(1, 1)), Seen::New);
        s.record(
            id(1, 1),
            10,
            CommandResult::Cas {
                swapped: true,
                current: None,
            },
        );
        assert_eq!(
            s.check(&id(1, 1)),
            Seen::Duplicate(CommandResult::Cas {
                swapped: true,
                current: None
            })
        );
        assert_eq!(s.check(&id(1, 2)), Seen::New);
        assert_eq!(s.check(&id(2, 1)), Seen::New);
    }

    #[test]
    fn writes_far_behind_the_newest_are_forgotten_not_reapplied() {
        let mut s = Sessions::default();
        let mut pruned = Vec::new();
        for seq in 1..=RESULTS_PER_SESSION + 10 {
            pruned.extend(s.record(id(1, seq), 10, CommandResult::Put));
        }
        // Each result pushed out of the window is reported once, so its stored copy goes too.
        assert_eq!(pruned, (1..=10).collect::<Vec<u64>>());
        assert_eq!(s.check(&id(1, 5)), Seen::Forgotten);
        assert_eq!(
            s.check(&id(1, RESULTS_PER_SESSION + 10)),
            Seen::Duplicate(CommandResult::Put)
        );
    }

    #[test]
    fn idle_clients_expire_by_log_time() {
        let mut s = Sessions::default();
        s.record(id(1, 1), 1_000, CommandResult::Put);
        s.record(id(2, 1), 5_000, CommandResult::Put);
        assert!(s.expire(1_000 + SESSION_TTL_MS).is_empty());
        assert_eq!(s.expire(1_001 + SESSION_TTL_MS), vec![(1, vec![1])]);
        assert_eq!(s.len(), 1);
        assert_eq!(s.check(&id(2, 1)), Seen::Duplicate(CommandResult::Put));
    }

    #[test]
    fn sessions_survive_a_round_trip_through_protobuf() {
        let mut s = Sessions::default();
        s.record(
            id(9, 3),
            77,
            CommandResult::Delete {
                existed: true,
                deleted: true,
                current: None,
            },
        );
        let mut back = Sessions::default();
        for p in s.all_to_pb() {
            back.insert_pb(p);
        }
        assert_eq!(back.check(&id(9, 3)), s.check(&id(9, 3)));
        assert_eq!(back.all_to_pb(), s.all_to_pb());
    }

    #[test]
    fn a_session_stored_as_its_meta_and_one_record_per_result_loads_back_whole() {
        let mut s = Sessions::default();
        for seq in 1..=3 {
            s.record(id(4, seq), 50 + seq, CommandResult::Put);
        }
        let meta = s.meta_pb(4).expect("a session");
        assert!(meta.results.is_empty());
        assert_eq!(s.results_pb(4, 2..3).len(), 1);
        let mut back = Sessions::default();
        back.insert_pb(meta);
        for r in s.results_pb(4, ..) {
            back.insert_result_pb(4, r);
        }
        // A result whose client was not loaded has nobody to belong to.
        back.insert_result_pb(5, s.results_pb(4, 1..2).remove(0));
        assert_eq!(back.all_to_pb(), s.all_to_pb());
        assert_eq!(back.check(&id(5, 1)), Seen::New);
    }
}
