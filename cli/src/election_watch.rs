//! Watching elections as the CLI sees them through repeated status polls, so that
//! `status --watch` and `cluster up` can say "leader 1 lost" and "new leader 3 elected after
//! 412 ms". (The router follows the leader differently, from the WatchStatus streams the
//! nodes push to it.)
//!
//! The watch sees the cluster only through polls, so an election's duration is measured
//! from the first poll that found no leader to the first poll that found the new one: it is
//! accurate to about one poll interval.

use std::fmt;
use std::time::{Duration, Instant};

use raftkv::pb;

/// The cluster's leader as found by one status poll.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PolledLeader {
    /// The leader's node id.
    pub id: u64,
    /// The term it leads in.
    pub term: u64,
}

/// The leader among the statuses of the members that answered: the node that says it is
/// the leader; if several do (an old leader that has not yet heard of the new term), the one
/// with the highest term.
pub fn leader_in_poll<'a>(answered: impl IntoIterator<Item = &'a pb::NodeStatus>) -> Option<PolledLeader> {
    answered
        .into_iter()
        .filter(|status| status.role == pb::Role::Leader as i32)
        .map(|status| PolledLeader {
            id: status.id,
            term: status.term,
        })
        .max_by_key(|leader| leader.term)
}

/// Something about the leadership that a person watching wants to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ElectionEvent {
    /// The first poll already had a leader.
    Found(PolledLeader),
    /// The first poll had no leader.
    NoneYet,
    /// The leader stopped answering or stopped leading, and nobody leads.
    Lost(PolledLeader),
    /// A leader appeared after a time without one (`after`; `None` when the vacancy started
    /// before the first poll).
    Elected {
        leader: PolledLeader,
        after: Option<Duration>,
    },
    /// A different node leads, with no leaderless poll in between.
    Replaced {
        previous: PolledLeader,
        leader: PolledLeader,
    },
}

impl fmt::Display for ElectionEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            ElectionEvent::Found(leader) => {
                write!(f, "leader is node {} (term {})", leader.id, leader.term)
            }
            ElectionEvent::NoneYet => write!(f, "no leader yet"),
            ElectionEvent::Lost(leader) => {
                write!(
                    f,
                    "leader {} lost (term {}); waiting for an election",
                    leader.id, leader.term
                )
            }
            ElectionEvent::Elected {
                leader,
                after: Some(after),
            } => write!(
                f,
                "new leader {} elected (term {}) after {} ms",
                leader.id,
                leader.term,
                after.as_millis()
            ),
            ElectionEvent::Elected { leader, after: None } => {
                write!(f, "new leader {} elected (term {})", leader.id, leader.term)
            }
            ElectionEvent::Replaced { previous, leader } => write!(
                f,
                "leader changed from {} to {} (term {})",
                previous.id, leader.id, leader.term
            ),
        }
    }
}

/// What the watch believes about the leadership.
#[derive(Clone, Copy, Debug)]
enum Leadership {
    /// No poll seen yet.
    Unknown,
    /// `leader` led in the last poll.
    Led(PolledLeader),
    /// Nobody led since `since` (`None`: since before the first poll).
    Vacant { since: Option<Instant> },
}

/// Turns the leaders found by a sequence of status polls into [`ElectionEvent`]s.
#[derive(Debug)]
pub struct ElectionWatch {
    leadership: Leadership,
}

impl Default for ElectionWatch {
    fn default() -> Self {
        ElectionWatch {
            leadership: Leadership::Unknown,
        }
    }
}

impl ElectionWatch {
    /// A watch that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A watch that knows nobody led since `since` (e.g. the cluster was just started), so
    /// the first election is reported with its duration.
    pub fn vacant_since(since: Instant) -> Self {
        ElectionWatch {
            leadership: Leadership::Vacant { since: Some(since) },
        }
    }

    /// The leader found by the last poll.
    pub fn leader(&self) -> Option<PolledLeader> {
        match self.leadership {
            Leadership::Led(leader) => Some(leader),
            _ => None,
        }
    }

    /// Records the leader found by a poll taken at `now`; returns what changed.
    pub fn record_poll(&mut self, seen: Option<PolledLeader>, now: Instant) -> Option<ElectionEvent> {
        let (next, event) = match (self.leadership, seen) {
            (Leadership::Unknown, Some(leader)) => (Leadership::Led(leader), Some(ElectionEvent::Found(leader))),
            (Leadership::Unknown, None) => (Leadership::Vacant { since: None }, Some(ElectionEvent::NoneYet)),
            (Leadership::Led(previous), Some(leader)) if previous.id == leader.id => {
                // Same node; a higher term means it was re-elected, which is not worth a line.
                (Leadership::Led(leader), None)
            }
            (Leadership::Led(previous), Some(leader)) => (
                Leadership::Led(leader),
                Some(ElectionEvent::Replaced { previous, leader }),
            ),
            (Leadership::Led(previous), None) => (
                Leadership::Vacant { since: Some(now) },
                Some(ElectionEvent::Lost(previous)),
            ),
            (Leadership::Vacant { since }, Some(leader)) => {
                let after = since.map(|since| now.saturating_duration_since(since));
                (Leadership::Led(leader), Some(ElectionEvent::Elected { leader, after }))
            }
            (vacant @ Leadership::Vacant { .. }, None) => (vacant, None),
        };
        self.leadership = next;
        event
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn status(id: u64, role: pb::Role, term: u64) -> pb::NodeStatus {
        pb::NodeStatus {
            id,
            role: role as i32,
            term,
            ..Default::default()
        }
    }

    #[test]
    fn the_leader_is_the_node_that_leads_in_the_highest_term() {
        let statuses = [
            status(1, pb::Role::Leader, 3),
            status(2, pb::Role::Follower, 4),
            status(3, pb::Role::Leader, 4),
        ];
        assert_eq!(leader_in_poll(&statuses), Some(PolledLeader { id: 3, term: 4 }));
        assert_eq!(leader_in_poll(&[status(2, pb::Role::Candidate, 5)]), None);
    }

    #[test]
    fn a_lost_leader_and_its_successor_are_reported_with_the_election_duration() {
        let start = Instant::now();
        let mut elections = ElectionWatch::new();
        let first = PolledLeader { id: 1, term: 3 };
        assert_eq!(
            elections.record_poll(Some(first), start),
            Some(ElectionEvent::Found(first))
        );
        assert_eq!(
            elections.record_poll(Some(first), start + Duration::from_millis(100)),
            None
        );
        assert_eq!(
            elections.record_poll(None, start + Duration::from_millis(200)),
            Some(ElectionEvent::Lost(first))
        );
        assert_eq!(elections.record_poll(None, start + Duration::from_millis(300)), None);
        let second = PolledLeader { id: 3, term: 4 };
        let event = elections.record_poll(Some(second), start + Duration::from_millis(612));
        assert_eq!(
            event,
            Some(ElectionEvent::Elected {
                leader: second,
                after: Some(Duration::from_millis(412))
            })
        );
        assert_eq!(event.unwrap().to_string(), "new leader 3 elected (term 4) after 412 ms");
        assert_eq!(elections.leader(), Some(second));
    }

    #[test]
    fn a_leader_replaced_between_two_polls_is_reported() {
        let now = Instant::now();
        let mut elections = ElectionWatch::new();
        let first = PolledLeader { id: 1, term: 3 };
        let second = PolledLeader { id: 2, term: 4 };
        elections.record_poll(Some(first), now);
        assert_eq!(
            elections.record_poll(Some(second), now),
            Some(ElectionEvent::Replaced {
                previous: first,
                leader: second
            })
        );
    }

    #[test]
    fn the_first_election_of_a_new_cluster_has_a_duration() {
        let start = Instant::now();
        let mut elections = ElectionWatch::vacant_since(start);
        assert_eq!(elections.record_poll(None, start + Duration::from_millis(50)), None);
        let leader = PolledLeader { id: 2, term: 1 };
        assert_eq!(
            elections.record_poll(Some(leader), start + Duration::from_millis(900)),
            Some(ElectionEvent::Elected {
                leader,
                after: Some(Duration::from_millis(900))
            })
        );
    }

    #[test]
    fn a_watch_that_starts_without_a_leader_says_so_once() {
        let now = Instant::now();
        let mut elections = ElectionWatch::new();
        assert_eq!(elections.record_poll(None, now), Some(ElectionEvent::NoneYet));
        assert_eq!(elections.record_poll(None, now), None);
        let leader = PolledLeader { id: 1, term: 1 };
        assert_eq!(
            elections.record_poll(Some(leader), now),
            Some(ElectionEvent::Elected { leader, after: None })
        );
    }
}
