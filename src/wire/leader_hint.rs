//! The leader-hint convention: a node (or the router) that cannot serve a request because it
//! does not lead answers UNAVAILABLE and, when it knows the leader, names it in two metadata
//! keys. Clients and the router read the hint back with [`leader_hint`] and send the request
//! there. Only UNAVAILABLE carries a hint.

use tonic::metadata::MetadataValue;
use tonic::{Code, Status};

/// Metadata key of an UNAVAILABLE status that names the leader's node id (decimal).
pub const LEADER_ID_METADATA: &str = "raftkv-leader-id";
/// Metadata key of an UNAVAILABLE status that names the leader's address (HOST:PORT).
pub const LEADER_ADDR_METADATA: &str = "raftkv-leader-addr";

/// Who leads the cluster, as said by a node that does not.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LeaderHint {
    /// The leader's node id.
    pub id: u64,
    /// The leader's address, HOST:PORT.
    pub address: String,
}

/// Reads the leader hint from an UNAVAILABLE status, if it has one (both metadata keys,
/// well-formed). Other codes never carry a hint.
pub fn leader_hint(status: &Status) -> Option<LeaderHint> {
    if status.code() != Code::Unavailable {
        return None;
    }
    let metadata = status.metadata();
    let id = metadata.get(LEADER_ID_METADATA)?.to_str().ok()?.trim().parse().ok()?;
    let address = metadata.get(LEADER_ADDR_METADATA)?.to_str().ok()?.trim();
    if address.is_empty() {
        return None;
    }
    Some(LeaderHint {
        id,
        address: address.to_string(),
    })
}

/// An UNAVAILABLE status with `message`, and with the leader hint metadata when the leader is
/// known. This is how a node (or the router) says "not me, ask there".
pub fn unavailable(message: impl Into<String>, leader: Option<&LeaderHint>) -> Status {
    let mut status = Status::unavailable(message);
    if let Some(leader) = leader {
        // An address that is not valid header text cannot be sent; then the hint is left off
        // entirely rather than sent half.
        if let (Ok(id), Ok(address)) = (
            MetadataValue::try_from(leader.id.to_string()),
            MetadataValue::try_from(leader.address.as_str()),
        ) {
            status.metadata_mut().insert(LEADER_ID_METADATA, id);
            status.metadata_mut().insert(LEADER_ADDR_METADATA, address);
        }
    }
    status
}

#[cfg(test)]
mod tests {
    use super::*;

    fn hint(id: u64, address: &str) -> LeaderHint {
        LeaderHint {
            id,
            address: address.to_string(),
        }
    }

    #[test]
    fn leader_hint_survives_a_round_trip_through_status_metadata() {
        let leader = hint(2, "127.0.0.1:7002");
        let status = unavailable("not the leader", Some(&leader));
        assert_eq!(status.code(), Code::Unavailable);
        assert_eq!(status.message(), "not the leader");
        assert_eq!(leader_hint(&status), Some(leader));
    }

    #[test]
    fn leader_hint_survives_the_wire_encoding_of_a_status() {
        let leader = hint(3, "node-3.example:7003");
        let response = unavailable("no", Some(&leader)).into_http::<()>();
        let decoded = Status::from_header_map(response.headers()).unwrap();
        assert_eq!(leader_hint(&decoded), Some(leader));
    }

    #[test]
    fn unavailable_without_a_leader_has_no_hint() {
        assert_eq!(leader_hint(&unavailable("no leader yet", None)), None);
    }

    #[test]
    fn malformed_or_partial_hint_metadata_is_no_hint() {
        let mut status = Status::unavailable("x");
        status.metadata_mut().insert(LEADER_ID_METADATA, "two".parse().unwrap());
        status
            .metadata_mut()
            .insert(LEADER_ADDR_METADATA, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(leader_hint(&status), None);

        let mut status = Status::unavailable("x");
        status.metadata_mut().insert(LEADER_ID_METADATA, "2".parse().unwrap());
        assert_eq!(leader_hint(&status), None);
    }

    #[test]
    fn only_unavailable_carries_a_hint() {
        let mut status = Status::not_found("x");
        status.metadata_mut().insert(LEADER_ID_METADATA, "2".parse().unwrap());
        status
            .metadata_mut()
            .insert(LEADER_ADDR_METADATA, "127.0.0.1:7002".parse().unwrap());
        assert_eq!(leader_hint(&status), None);
    }
}
