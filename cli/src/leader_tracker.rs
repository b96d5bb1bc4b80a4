//! Following who leads the cluster across repeated status snapshots, so that `status --watch`
//! and `cluster up` can say "leader 1 lost" and "new leader 3 elected after 412 ms".
//!
//! The tracker sees the cluster only through polls, so an election's duration is measured
//! from the first poll that found no leader to the first poll that found the new one: it is
//! accurate to about one poll interval.

use std::fmt;
use std::time::{Duration, Instant};

use raftkv::pb;

/// The cluster's leader as seen in one snapshot.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Leader {
    /// The leader's node id.
    pub id: u64,
    /// The term it leads in.
    pub term: u64,
}

/// The leader among the statuses of the members that answered: the node that says it is
/// the leader; if several do (an old leader that has not yet heard of the new term), the one
/// with the highest term.
pub fn leader_of<'a>(answered: impl IntoIterator<Item = &'a pb::NodeStatus>) -> Option<Leader> {
    answered
        .into_iter()
        .filter(|status| status.role == pb::Role::Leader as i32)
        .map(|status| Leader {
            id: status.id,
            term: status.term,
        })
        .max_by_key(|leader| leader.term)
}

/// Something about the leadership that a person watching wants to read.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum LeaderEvent {
    /// The first snapshot already had a leader.
    Found(Leader),
    /// The first snapshot had no leader.
    NoneYet,
    /// The leader stopped answering or stopped leading, and nobody leads.
    Lost(Leader),
    /// A leader appeared after a time without one (`after`; `None` when the vacancy started
    /// before the first snapshot).
    Elected { leader: Leader, after: Option<Duration> },
    /// A different node leads, with no leaderless snapshot in between.
    Replaced { previous: Leader, leader: Leader },
}

impl fmt::Display for LeaderEvent {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LeaderEvent::Found(leader) => {
                write!(f, "leader is node {} (term {})", leader.id, leader.term)
            }
            LeaderEvent::NoneYet => write!(f, "no leader yet"),
            LeaderEvent::Lost(leader) => {
                write!(
                    f,
                    "leader {} lost (term {}); waiting for an election",
                    leader.id, leader.term
                )
            }
            LeaderEvent::Elected {
                leader,
                after: Some(after),
            } => write!(
                f,
                "new leader {} elected (term {}) after {} ms",
                leader.id,
                leader.term,
                after.as_millis()
            ),
            LeaderEvent::Elected { leader, after: None } => {
                write!(f, "new leader {} elected (term {})", leader.id, leader.term)
            }
            LeaderEvent::Replaced { previous, leader } => write!(
                f,
                "leader changed from {} to {} (term {})",
                previous.id, leader.id, leader.term
            ),
        }
    }
}

/// What the tracker believes about the leadership.
#[derive(Clone, Copy, Debug)]
enum Leadership {
    /// No snapshot seen yet.
    Unknown,
    /// `leader` led in the last snapshot.
    Led(Leader),
    /// Nobody led since `since` (`None`: since before the first snapshot).
    Vacant { since: Option<Instant> },
}

/// Turns a sequence of "who leads now" observations into [`LeaderEvent`]s.
#[derive(Debug)]
pub struct LeaderTracker {
    leadership: Leadership,
}

impl Default for LeaderTracker {
    fn default() -> Self {
        LeaderTracker {
            leadership: Leadership::Unknown,
        }
    }
}

impl LeaderTracker {
    /// A tracker that has seen nothing yet.
    pub fn new() -> Self {
        Self::default()
    }

    /// A tracker that knows nobody led since `since` (e.g. the cluster was just started), so
    /// the first election is reported with its duration.
    pub fn vacant_since(since: Instant) -> Self {
        LeaderTracker {
            leadership: Leadership::Vacant { since: Some(since) },
        }
    }

    /// The leader of the last snapshot.
    pub fn leader(&self) -> Option<Leader> {
        match self.leadership {
            Leadership::Led(leader) => Some(leader),
            _ => None,
        }
    }

    /// Records the leader seen by a snapshot taken at `now`; returns what changed.
    pub fn observe(&mut self, seen: Option<Leader>, now: Instant) -> Option<LeaderEvent> {
        let (next, event) = match (self.leadership, seen) {
            (Leadership::Unknown, Some(leader)) => (Leadership::Led(leader), Some(LeaderEvent::Found(leader))),
            (Leadership::Unknown, None) => (Leadership::Vacant { since: None }, Some(LeaderEvent::NoneYet)),
            (Leadership::Led(previous), Some(leader)) if previous.id == leader.id => {
                // Same node; a higher term means it was re-elected, which is not worth a line.
                (Leadership::Led(leader), None)
            }
            (Leadership::Led(previous), Some(leader)) => (
                Leadership::Led(leader),
                Some(LeaderEvent::Replaced { previous, leader }),
            ),
            (Leadership::Led(previous), None) => (
                Leadership::Vacant { since: Some(now) },
                Some(LeaderEvent::Lost(previous)),
            ),
            (Leadership::Vacant { since }, Some(leader)) => {
                let after = since.map(|since| now.saturating_duration_since(since));
                (Leadership::Led(leader), Some(LeaderEvent::Elected { leader, after }))
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
        assert_eq!(leader_of(&statuses), Some(Leader { id: 3, term: 4 }));
        assert_eq!(leader_of(&[status(2, pb::Role::Candidate, 5)]), None);
    }

    #[test]
    fn a_lost_leader_and_its_successor_are_reported_with_the_election_duration() {
        let start = Instant::now();
        let mut tracker = LeaderTracker::new();
        let first = Leader { id: 1, term: 3 };
        assert_eq!(tracker.observe(Some(first), start), Some(LeaderEvent::Found(first)));
        assert_eq!(tracker.observe(Some(first), start + Duration::from_millis(100)), None);
        assert_eq!(
            tracker.observe(None, start + Duration::from_millis(200)),
            Some(LeaderEvent::Lost(first))
        );
        assert_eq!(tracker.observe(None, start + Duration::from_millis(300)), None);
        let second = Leader { id: 3, term: 4 };
        let event = tracker.observe(Some(second), start + Duration::from_millis(612));
        assert_eq!(
            event,
            Some(LeaderEvent::Elected {
                leader: second,
                after: Some(Duration::from_millis(412))
            })
        );
        assert_eq!(event.unwrap().to_string(), "new leader 3 elected (term 4) after 412 ms");
        assert_eq!(tracker.leader(), Some(second));
    }

    #[test]
    fn a_leader_replaced_between_two_snapshots_is_reported() {
        let now = Instant::now();
        let mut tracker = LeaderTracker::new();
        let first = Leader { id: 1, term: 3 };
        let second = Leader { id: 2, term: 4 };
        tracker.observe(Some(first), now);
        assert_eq!(
            tracker.observe(Some(second), now),
            Some(LeaderEvent::Replaced {
                previous: first,
                leader: second
            })
        );
    }

    #[test]
    fn the_first_election_of_a_new_cluster_has_a_duration() {
        let start = Instant::now();
        let mut tracker = LeaderTracker::vacant_since(start);
        assert_eq!(tracker.observe(None, start + Duration::from_millis(50)), None);
        let leader = Leader { id: 2, term: 1 };
        assert_eq!(
            tracker.observe(Some(leader), start + Duration::from_millis(900)),
            Some(LeaderEvent::Elected {
                leader,
                after: Some(Duration::from_millis(900))
            })
        );
    }

    #[test]
    fn a_watch_that_starts_without_a_leader_says_so_once() {
        let now = Instant::now();
        let mut tracker = LeaderTracker::new();
        assert_eq!(tracker.observe(None, now), Some(LeaderEvent::NoneYet));
        assert_eq!(tracker.observe(None, now), None);
        let leader = Leader { id: 1, term: 1 };
        assert_eq!(
            tracker.observe(Some(leader), now),
            Some(LeaderEvent::Elected { leader, after: None })
        );
    }
}
