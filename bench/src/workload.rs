//! What a benchmark sends: the keyspace, the value, and the sequence of operations each
//! client issues.
//!
//! It exists so that every target (raftkv, etcd) gets exactly the same requests: the keys and
//! the operation sequence come from a seeded generator per client, so two runs with the same
//! flags send the same keys in the same order whatever they talk to. Keys are named from their
//! number when an operation is made, not built up front, so that the load generator's memory
//! does not grow with the keyspace (a scale run writes millions of keys).

use bytes::Bytes;
use clap::ValueEnum;
use raftkv::pb::Consistency;

/// Prefix of every benchmark key, so that benchmark data is easy to tell from real data.
pub const KEY_PREFIX: &str = "bench/";
/// Digits of the key number: keys sort in numeric order and all have the same length.
const KEY_DIGITS: usize = 8;
/// Bytes of every benchmark key (`bench/00000042`).
pub const KEY_BYTES: usize = KEY_PREFIX.len() + KEY_DIGITS;
/// The largest keyspace: every key number has [`KEY_DIGITS`] digits (25.6 GB of keys and values
/// at 256-byte values).
pub const MAX_KEYS: u64 = 10u64.pow(KEY_DIGITS as u32);

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
    /// Writes every key of the keyspace exactly once (in --fill-order), as fast as the clients
    /// go, and ends when all are written (--duration and --warmup do not apply).
    Fill,
}

impl WorkloadKind {
    /// Whether the workload reads, so the keyspace must exist before it starts.
    pub fn reads(self) -> bool {
        matches!(self, WorkloadKind::Get | WorkloadKind::Mixed)
    }
}

/// The order in which a fill writes the keyspace.
#[derive(ValueEnum, Clone, Copy, Debug, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "lowercase")]
pub enum FillOrder {
    /// A fixed pseudo-random permutation of the keys: every write lands somewhere else in the
    /// keyspace, as an application's writes would (the harder case for a storage engine).
    Random,
    /// Key 0, 1, 2, ...: appends at the end of the keyspace (the easy case for a storage engine).
    Sequential,
}

impl FillOrder {
    /// The name the flag and the report use.
    pub fn name(self) -> &'static str {
        match self {
            FillOrder::Random => "random",
            FillOrder::Sequential => "sequential",
        }
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

/// The requests of one benchmark, shared by all clients: the keyspace, the value (built once,
/// so that a request copies no value bytes) and the mix of operations.
#[derive(Debug)]
pub struct Workload {
    kind: WorkloadKind,
    read_ratio: f64,
    consistency: Consistency,
    keys: u64,
    value: Bytes,
    /// With `--random-values`: random bytes that each put's value is a slice of.
    random_pool: Option<Bytes>,
}

/// The random bytes `--random-values` slices values from. Values from different offsets share
/// nothing a compressor could use; the pool is far larger than a table's data block (4 KiB),
/// so two values in one block almost never start at the same offset.
const RANDOM_POOL_BYTES: usize = 4 << 20;

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
            keys,
            value: value_of_size(value_size),
            random_pool: None,
        }
    }

    /// Makes every put write random bytes (a value of its own) if `random` is set.
    pub fn with_random_values(mut self, random: bool) -> Workload {
        self.random_pool = random.then(|| {
            let mut generator = SplitMix64::new(0x5EED);
            let bytes = RANDOM_POOL_BYTES + self.value.len();
            (0..bytes.div_ceil(8))
                .flat_map(|_| generator.next_u64().to_le_bytes())
                .take(bytes)
                .collect::<Vec<u8>>()
                .into()
        });
        self
    }

    /// The value a put writes: the one value, or with random values a slice of the pool picked
    /// by the number `pick` gives (a random draw, or a fill's position), asked for only then, so
    /// that without random values a put costs no draw and the key sequence stays as it was.
    pub fn value_for(&self, pick: impl FnOnce() -> u64) -> Bytes {
        match &self.random_pool {
            None => self.value.clone(),
            Some(pool) => {
                let starts = (pool.len() - self.value.len() + 1) as u64;
                let start = (SplitMix64::new(pick()).next_u64() % starts) as usize;
                pool.slice(start..start + self.value.len())
            }
        }
    }

    /// How many keys the keyspace has: keys number 0 to `keys() - 1`.
    pub fn keys(&self) -> u64 {
        self.keys
    }

    /// Bytes one put writes: its key and its value.
    pub fn bytes_per_put(&self) -> u64 {
        (KEY_BYTES + self.value.len()) as u64
    }

    /// The operation sequence of client number `client`: the same for the same client number
    /// and workload, different between clients. A fill has none of its own: its clients share
    /// one [`FillSequence`].
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
        let key = key_name(self.random.below(workload.keys));
        let read = match workload.kind {
            WorkloadKind::Put | WorkloadKind::Fill => false,
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
                value: workload.value_for(|| self.random.next_u64()),
            }
        })
    }
}

/// The order in which a fill writes every key of a keyspace once: the key number of the
/// `position`-th write, for positions 0 to keys - 1.
#[derive(Clone, Debug)]
pub struct FillSequence {
    keys: u64,
    shuffle: Option<Permutation>,
}

impl FillSequence {
    /// The writes of a fill of `keys` keys in `order`.
    pub fn new(keys: u64, order: FillOrder) -> FillSequence {
        FillSequence {
            keys,
            shuffle: (order == FillOrder::Random).then(|| Permutation::new(keys)),
        }
    }

    /// How many writes the fill makes: one per key.
    pub fn len(&self) -> u64 {
        self.keys
    }

    /// The key number written at `position` (below [`FillSequence::len`]).
    pub fn key_number(&self, position: u64) -> u64 {
        assert!(position < self.keys, "fill position {position} of {}", self.keys);
        match &self.shuffle {
            Some(permutation) => permutation.apply(position),
            None => position,
        }
    }
}

/// A fixed pseudo-random permutation of 0..n that needs no memory: a 4-round Feistel network
/// over the smallest even number of bits that holds n, walked until it lands below n ("cycle
/// walking", fewer than 4 steps on average). Being a bijection, it visits every number once.
#[derive(Clone, Debug)]
struct Permutation {
    n: u64,
    half_bits: u32,
    half_mask: u64,
}

/// Keys of the Feistel rounds: fixed, so every run writes in the same order.
const FEISTEL_ROUND_KEYS: [u64; 4] = [
    0x243F_6A88_85A3_08D3,
    0x1319_8A2E_0370_7344,
    0xA409_3822_299F_31D0,
    0x082E_FA98_EC4E_6C89,
];

impl Permutation {
    fn new(n: u64) -> Permutation {
        assert!(n >= 1);
        let bits = (u64::BITS - (n - 1).leading_zeros()).max(2);
        let half_bits = bits.div_ceil(2);
        Permutation {
            n,
            half_bits,
            half_mask: (1u64 << half_bits) - 1,
        }
    }

    fn apply(&self, index: u64) -> u64 {
        debug_assert!(index < self.n);
        let mut value = index;
        loop {
            value = self.feistel(value);
            if value < self.n {
                return value;
            }
        }
    }

    fn feistel(&self, value: u64) -> u64 {
        let (mut left, mut right) = (value >> self.half_bits, value & self.half_mask);
        for round_key in FEISTEL_ROUND_KEYS {
            let mixed = SplitMix64::new(right ^ round_key).next_u64() & self.half_mask;
            (left, right) = (right, left ^ mixed);
        }
        (left << self.half_bits) | right
    }
}

/// The name of key number `index`: `bench/00000042`.
pub fn key_name(index: u64) -> Bytes {
    debug_assert!(index < MAX_KEYS);
    let mut name = [b'0'; KEY_BYTES];
    name[..KEY_PREFIX.len()].copy_from_slice(KEY_PREFIX.as_bytes());
    let mut rest = index;
    for digit in name[KEY_PREFIX.len()..].iter_mut().rev() {
        *digit = b'0' + (rest % 10) as u8;
        rest /= 10;
    }
    Bytes::copy_from_slice(&name)
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
        assert_eq!(workload.value_for(|| 0).len(), 256);
        assert_eq!(
            Workload::new(WorkloadKind::Put, 0.9, Consistency::Linearizable, 10, 0)
                .value_for(|| 0)
                .len(),
            0
        );
    }

    #[test]
    fn random_values_have_the_requested_size_and_differ_from_put_to_put() {
        let workload =
            Workload::new(WorkloadKind::Put, 0.9, Consistency::Linearizable, 10, 256).with_random_values(true);
        let values: Vec<Bytes> = workload
            .operations(7)
            .take(200)
            .map(|op| match op {
                Operation::Put { value, .. } => value,
                other => panic!("a put workload sent {other:?}"),
            })
            .collect();
        assert!(values.iter().all(|v| v.len() == 256));
        let distinct: std::collections::HashSet<&Bytes> = values.iter().collect();
        assert_eq!(distinct.len(), values.len(), "every put has a value of its own");
        // Random bytes: no value is the repeated alphabet, and the bytes take most of their 256 values.
        let seen: std::collections::HashSet<u8> = values.iter().flat_map(|v| v.iter().copied()).collect();
        assert!(seen.len() > 250, "{} distinct bytes", seen.len());
        assert_eq!(
            workload.value_for(|| 3),
            workload.value_for(|| 3),
            "a pick always gives the same value"
        );
        let plain = Workload::new(WorkloadKind::Put, 0.9, Consistency::Linearizable, 10, 0).with_random_values(true);
        assert!(plain.value_for(|| u64::MAX).is_empty());
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
        let keyspace: std::collections::BTreeSet<Bytes> = (0..workload.keys()).map(key_name).collect();
        assert_eq!(seen, keyspace);
    }

    #[test]
    fn key_names_are_built_digit_by_digit_like_the_formatted_number() {
        for index in [0, 7, 42, 12_345_678, MAX_KEYS - 1] {
            assert_eq!(
                key_name(index),
                Bytes::from(format!("{KEY_PREFIX}{index:08}")),
                "key {index}"
            );
        }
        assert_eq!(key_name(MAX_KEYS - 1).len(), KEY_BYTES);
    }

    #[test]
    fn a_fill_writes_every_key_exactly_once_in_either_order() {
        for keys in [1, 2, 3, 4, 5, 15, 16, 17, 1_000, 4_097, 65_536] {
            for order in [FillOrder::Random, FillOrder::Sequential] {
                let fill = FillSequence::new(keys, order);
                assert_eq!(fill.len(), keys);
                let mut seen = vec![false; keys as usize];
                for position in 0..keys {
                    let key = fill.key_number(position);
                    assert!(key < keys, "{order:?}, {keys} keys: position {position} gave key {key}");
                    assert!(!seen[key as usize], "{order:?}, {keys} keys: key {key} written twice");
                    seen[key as usize] = true;
                }
            }
        }
    }

    #[test]
    fn a_sequential_fill_goes_in_key_order_and_a_random_one_scatters() {
        let sequential = FillSequence::new(10_000, FillOrder::Sequential);
        assert!((0..10_000).all(|position| sequential.key_number(position) == position));

        let random = FillSequence::new(10_000, FillOrder::Random);
        let first: Vec<u64> = (0..1_000).map(|position| random.key_number(position)).collect();
        // Not in order, and the first tenth of the writes reaches every tenth of the keyspace.
        assert!(first.windows(2).filter(|pair| pair[0] < pair[1]).count() < 600);
        let mut tenths = [0u32; 10];
        for key in &first {
            tenths[(*key / 1_000) as usize] += 1;
        }
        assert!(tenths.iter().all(|&count| (50..=150).contains(&count)), "{tenths:?}");
        // The same order every run.
        assert_eq!(
            first,
            (0..1_000)
                .map(|position| FillSequence::new(10_000, FillOrder::Random).key_number(position))
                .collect::<Vec<_>>()
        );
    }

    #[test]
    fn a_put_writes_its_key_and_its_value() {
        let workload = Workload::new(WorkloadKind::Fill, 0.9, Consistency::Linearizable, 10, 256);
        assert_eq!(workload.bytes_per_put(), 14 + 256);
    }

    #[test]
    fn a_client_sends_the_same_sequence_every_run_and_clients_differ() {
        let workload = Workload::new(WorkloadKind::Mixed, 0.5, Consistency::Linearizable, 1000, 8);
        let first: Vec<_> = workload.operations(1).take(100).collect();
        assert_eq!(first, workload.operations(1).take(100).collect::<Vec<_>>());
        assert_ne!(first, workload.operations(2).take(100).collect::<Vec<_>>());
    }
}
