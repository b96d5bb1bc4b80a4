//! Write ids: every write a client sends carries its client id and the next sequence number,
//! so that the state machine applies each write at most once and answers a retry with the
//! first result. Used by the client library and by the router (for writes that arrive
//! without one).

use std::hash::{BuildHasher, Hasher};
use std::sync::atomic::{AtomicU64, Ordering};

use crate::pb;

/// Hands out write ids for one client: a random client id, so that clients need no
/// registration, and sequence numbers from 1 up.
#[derive(Debug)]
pub struct WriteIds {
    client_id: u64,
    last_sequence: AtomicU64,
}

impl Default for WriteIds {
    fn default() -> Self {
        WriteIds {
            client_id: random_client_id(),
            last_sequence: AtomicU64::new(0),
        }
    }
}

impl WriteIds {
    /// This client's id.
    pub fn client_id(&self) -> u64 {
        self.client_id
    }

    /// The next write id.
    pub fn next(&self) -> pb::WriteId {
        pb::WriteId {
            client_id: self.client_id,
            sequence: self.last_sequence.fetch_add(1, Ordering::Relaxed) + 1,
        }
    }
}

/// A random 64-bit client id, from the standard library's per-process random hasher keys,
/// mixed with the time and process id so that two processes never share one in practice.
fn random_client_id() -> u64 {
    let mut hasher = std::collections::hash_map::RandomState::new().build_hasher();
    hasher.write_u128(
        std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap_or_default()
            .as_nanos(),
    );
    hasher.write_u32(std::process::id());
    hasher.finish().max(1)
}
