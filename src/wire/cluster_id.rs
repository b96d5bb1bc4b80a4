//! A cluster's identity: the 64-bit id every node of one Raft group shares, fixed when the
//! group is bootstrapped, and how it travels on a Raft call.
//!
//! As in etcd, the id is derived, not chosen: every initial node computes it from the initial
//! cluster and a token, with no communication, and a cluster bootstrapped from the same
//! `--initial-cluster` with another `--initial-cluster-token` (a restored copy, say) gets
//! another id. Nodes refuse Raft traffic that carries another cluster's id (or none), so two
//! clusters that share an address by mistake cannot disturb each other.
//!
//! The derivation is part of the on-disk and wire contract: the first 8 bytes, big-endian, of
//! SHA-256 over the canonical initial cluster (`1=HOST:PORT,2=HOST:PORT,...`, ids ascending),
//! one zero byte, and the token (see [`ClusterId::derive`]). It is written as 16 lowercase hex
//! digits, in logs, statuses and the [`CLUSTER_ID_METADATA`] key of every Raft call.

use std::fmt;
use std::str::FromStr;

use sha2::{Digest, Sha256};
use tonic::metadata::{Ascii, MetadataValue};

/// Metadata key of every call between nodes (the Raft service): the sender's cluster id, 16
/// hex digits.
pub const CLUSTER_ID_METADATA: &str = "raftkv-cluster-id";
/// Metadata key of every call between nodes: the sender's node id (decimal), only to name the
/// sender when its call is refused; nothing trusts it.
pub const SENDER_ID_METADATA: &str = "raftkv-sender-id";
/// The token a cluster's id is derived with when `--initial-cluster-token` is not given
/// (etcd's flag of the same name and purpose).
pub const DEFAULT_CLUSTER_TOKEN: &str = "raftkv";

/// The id of one cluster (one Raft group), shared by all its members.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub struct ClusterId(pub u64);

impl ClusterId {
    /// The id of the cluster bootstrapped with `initial_cluster` (the canonical string the node
    /// records in its data directory) and `token`. Same inputs, same id, on any machine.
    pub fn derive(initial_cluster: &str, token: &str) -> ClusterId {
        let digest = Sha256::new()
            .chain_update(initial_cluster.as_bytes())
            .chain_update([0u8])
            .chain_update(token.as_bytes())
            .finalize();
        let mut first = [0u8; 8];
        first.copy_from_slice(&digest[..8]);
        ClusterId(u64::from_be_bytes(first))
    }

    /// The id as the metadata value a Raft call carries.
    pub fn to_metadata(self) -> MetadataValue<Ascii> {
        MetadataValue::try_from(self.to_string()).expect("hex digits are valid metadata")
    }

    /// The id a metadata value carries, if it is one (16 hex digits).
    pub fn from_metadata(value: &MetadataValue<Ascii>) -> Option<ClusterId> {
        value.to_str().ok()?.parse().ok()
    }
}

/// `pub fn derive_cluster_id(initial_cluster, token)`: [`ClusterId::derive`] as a number.
pub fn derive_cluster_id(initial_cluster: &str, token: &str) -> u64 {
    ClusterId::derive(initial_cluster, token).0
}

impl fmt::Display for ClusterId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{:016x}", self.0)
    }
}

/// Why a text is not a cluster id.
#[derive(Debug, thiserror::Error)]
#[error("{0:?} is not a cluster id (16 hex digits)")]
pub struct NotAClusterId(String);

impl FromStr for ClusterId {
    type Err = NotAClusterId;

    fn from_str(s: &str) -> Result<ClusterId, NotAClusterId> {
        if s.len() != 16 || !s.bytes().all(|b| b.is_ascii_hexdigit()) {
            return Err(NotAClusterId(s.to_string()));
        }
        u64::from_str_radix(s, 16)
            .map(ClusterId)
            .map_err(|_| NotAClusterId(s.to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CLUSTER: &str = "1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003";

    #[test]
    fn the_same_cluster_and_token_give_the_same_id_and_any_difference_another() {
        let id = ClusterId::derive(CLUSTER, DEFAULT_CLUSTER_TOKEN);
        assert_eq!(id, ClusterId::derive(CLUSTER, DEFAULT_CLUSTER_TOKEN));
        assert_eq!(derive_cluster_id(CLUSTER, DEFAULT_CLUSTER_TOKEN), id.0);
        assert_ne!(id, ClusterId::derive(CLUSTER, "restored-1234"));
        assert_ne!(
            id,
            ClusterId::derive("1=127.0.0.1:7001,2=127.0.0.1:7002", DEFAULT_CLUSTER_TOKEN)
        );
        // The separator keeps a token from being read as the end of the cluster.
        assert_ne!(ClusterId::derive("a", "bc"), ClusterId::derive("ab", "c"));
    }

    #[test]
    fn the_derivation_is_the_documented_one_and_does_not_change() {
        // SHA-256("1=127.0.0.1:7001,2=127.0.0.1:7002,3=127.0.0.1:7003\0raftkv"), first 8 bytes:
        // a change here changes every cluster's id, which existing data directories record.
        let id = ClusterId::derive(CLUSTER, DEFAULT_CLUSTER_TOKEN);
        let digest = Sha256::digest(format!("{CLUSTER}\0{DEFAULT_CLUSTER_TOKEN}").as_bytes());
        assert_eq!(
            id.to_string(),
            digest[..8].iter().map(|b| format!("{b:02x}")).collect::<String>()
        );
        assert_eq!(id.to_string(), "39f42855abdd3054");
    }

    #[test]
    fn an_id_is_written_as_16_hex_digits_and_read_back() {
        let id = ClusterId(0x00ab_cdef_0123_4567);
        assert_eq!(id.to_string(), "00abcdef01234567");
        assert_eq!("00abcdef01234567".parse::<ClusterId>().unwrap(), id);
        assert_eq!(ClusterId::from_metadata(&id.to_metadata()), Some(id));
        for bad in ["", "abc", "00abcdef0123456g", "+0abcdef01234567", "00abcdef012345678"] {
            assert!(bad.parse::<ClusterId>().is_err(), "{bad:?}");
        }
    }
}
