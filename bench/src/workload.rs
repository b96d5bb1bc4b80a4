//! What a benchmark sends: the keyspace, the value, and the sequence of operations each
//! client issues.
//!
//! It exists so that every target (raftkv, etcd) gets exactly the same requests: the keys and
//! the operation sequence come from a seeded generator per client, so two runs with the same
//! flags send the same keys in the same order whatever they talk to.

use bytes::Bytes;
use clap::ValueEnum;
use raftkv::pb::Consistency;

/// Prefix of every benchmark key, so that benchmark data is easy to tell from real data.
pub const KEY_PREFIX: &str = "bench/";
/// Digits of the key number: keys sort in numeric order and all have the same length.
const KEY_DIGITS: usize = 8;
/// The largest keyspace: every key is built up front (about 50 bytes of memory each).
pub const MAX_KEYS: u64 = 10_000_000;

/// Which operations a benchmark issues.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum WorkloadKind {
    /// Every operation writes a random key.
    Put,
    /// Every operation reads a random key (the keyspace is written first).
    Get,
    /// Reads and writes of random keys, `--read-ratio` of them reads (the keyspace is written first).
    Mixed,
}

impl WorkloadKind {
    /// Whether the workload reads, so the keyspace must exist before it starts.
    pub fn reads(self) -> bool {
        matches!(self, WorkloadKind::Get | WorkloadKind::Mixed)
    }
}

/// One request of the benchmark.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Operation {
    /// Write `value` under `key`.
    Put { key: Bytes, value: Bytes },
    /// Read `key`, which must hold a value of the benchmark's value size.
    Get { key: Bytes, consistency: Consistency },
}

/// The requests of one benchmark, shared by all clients: the keys (built once, so that a
/// request copies no key or value bytes) and the mix of operations.
#[derive(Debug)]
pub struct Workload {
    kind: WorkloadKind,
    read_ratio: f64,
    consistency: Consistency,
    keys: Vec<Bytes>,
    value: Bytes,
}

impl Workload {
    /// A workload over `keys` keys with values of `value_size` bytes. `read_ratio` only matters
    /// for [`WorkloadKind::Mixed`]; it is clamped to 0..=1.
    pub fn new(
        kind: WorkloadKind,
        read_ratio: f64,
        consistency: Consistency,
        keys: u64,
        value_size: usize,
    ) -> Workload {
        assert!((1..=MAX_KEYS).contains(&keys), "keys out of range: {keys}");
        Workload {
            kind,
            read_ratio: read_ratio.clamp(0.0, 1.0),
            consistency,
            keys: (0..keys).map(key_name).collect(),
            value: value_of_size(value_size),
        }
    }

    /// Every key of the keyspace, in order (what a preload writes).
    pub fn keys(&self) -> &[Bytes] {
        &self.keys
    }

    /// The value every put writes.
    pub fn value(&self) -> &Bytes {
        &self.value
    }

    /// The operation sequence of client number `client`: the same for the same client number
    /// and workload, different between clients.
    pub fn operations(&self, client: u64) -> Operations<'_> {
        Operations {
            workload: self,
            random: SplitMix64::new(client),
        }
    }
}

/// The endless sequence of operations of one client.
pub struct Operations<'a> {
    workload: &'a Workload,
    random: SplitMix64,
}

impl Iterator for Operations<'_> {
    type Item = Operation;

    fn next(&mut self) -> Option<Operation> {
        let workload = self.workload;
        let key = workload.keys[self.random.below(workload.keys.len() as u64) as usize].clone();
        let read = match workload.kind {
            WorkloadKind::Put => false,
            WorkloadKind::Get => true,
            WorkloadKind::Mixed => self.random.unit() < workload.read_ratio,
        };
        Some(if read {
            Operation::Get {
                key,
                consistency: workload.consistency,
            }
        } else {
            Operation::Put {
                key,
                value: workload.value.clone(),
            }
        })
    }
}

/// The name of key number `index`: `bench/00000042`.
pub fn key_name(index: u64) -> Bytes {
    Bytes::from(format!("{KEY_PREFIX}{index:0width$}", width = KEY_DIGITS))
}

/// A value of `size` printable bytes (a repeating alphabet, so it is readable in a debugger and
/// the same on every run).
fn value_of_size(size: usize) -> Bytes {
    (0..size)
        .map(|index| b'a' + (index % 26) as u8)
        .collect::<Vec<u8>>()
        .into()
}

/// A small, fast, seedable pseudo-random generator (SplitMix64): good enough to pick keys
/// uniformly, and deterministic so runs against different targets send the same keys.
#[derive(Clone, Debug)]
struct SplitMix64 {
    state: u64,
}

impl SplitMix64 {
    fn new(seed: u64) -> SplitMix64 {
        // Distinct seeds far apart, so client 0 and client 1 do not start on related sequences.
        SplitMix64 {
            state: seed.wrapping_mul(0xA076_1D64_78BD_642F) ^ 0xE703_7ED1_A0B4_28DB,
        }
    }

    fn next_u64(&mut self) -> u64 {
        self.state = self.state.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.state;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// A number in 0..bound (bound > 0), without modulo bias worth mentioning (multiply-shift).
    fn below(&mut self, bound: u64) -> u64 {
        ((self.next_u64() as u128 * bound as u128) >> 64) as u64
    }

    /// A number in [0, 1).
    fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn keys_have_one_length_and_sort_in_numeric_order() {
        assert_eq!(key_name(42), Bytes::from_static(b"bench/00000042"));
        assert_eq!(key_name(9).len(), key_name(10_000_000 - 1).len());
        assert!(key_name(9) < key_name(10));
    }

    #[test]
    fn values_have_the_requested_size() {
        let workload = Workload::new(WorkloadKind::Put, 0.9, Consistency::Linearizable, 10, 256);
        assert_eq!(workload.value().len(), 256);
        assert_eq!(
            Workload::new(WorkloadKind::Put, 0.9, Consistency::Linearizable, 10, 0)
                .value()
                .len(),
            0
        );
    }

    #[test]
    fn put_workload_only_writes_and_get_workload_only_reads() {
        let puts = Workload::new(WorkloadKind::Put, 0.9, Consistency::Stale, 100, 8);
        assert!(puts
            .operations(0)
            .take(1000)
            .all(|op| matches!(op, Operation::Put { .. })));
        let gets = Workload::new(WorkloadKind::Get, 0.0, Consistency::Stale, 100, 8);
        assert!(gets.operations(0).take(1000).all(|op| matches!(
            op,
            Operation::Get {
                consistency: Consistency::Stale,
                ..
            }
        )));
    }

    #[test]
    fn mixed_workload_reads_about_the_read_ratio() {
        let workload = Workload::new(WorkloadKind::Mixed, 0.9, Consistency::Linearizable, 100, 8);
        let reads = workload
            .operations(7)
            .take(10_000)
            .filter(|op| matches!(op, Operation::Get { .. }))
            .count();
        assert!((8_700..=9_300).contains(&reads), "{reads} reads of 10000");
    }

    #[test]
    fn every_key_is_used_and_no_other() {
        let workload = Workload::new(WorkloadKind::Put, 0.0, Consistency::Linearizable, 50, 8);
        let mut seen = std::collections::BTreeSet::new();
        for op in workload.operations(3).take(5_000) {
            let Operation::Put { key, .. } = op else { unreachable!() };
            seen.insert(key);
        }
        assert_eq!(seen.len(), 50);
        assert!(seen.iter().all(|key| workload.keys().contains(key)));
    }

    #[test]
    fn a_client_sends_the_same_sequence_every_run_and_clients_differ() {
        let workload = Workload::new(WorkloadKind::Mixed, 0.5, Consistency::Linearizable, 1000, 8);
        let first: Vec<_> = workload.operations(1).take(100).collect();
        assert_eq!(first, workload.operations(1).take(100).collect::<Vec<_>>());
        assert_ne!(first, workload.operations(2).take(100).collect::<Vec<_>>());
    }
}
