//! The state machine in fjall 3 (`--engine fjall`, the default): an LSM tree whose
//! memory is bounded by the settings below, whatever the size of the data.
//!
//! A generation of the key space is a fjall keyspace (`sm-<generation>`). An apply is one
//! fjall write batch: atomic in fjall's journal (a torn batch is dropped at recovery) and
//! for readers (a snapshot sees a batch whole or not at all). Batches are written to the
//! journal without a sync (`PersistMode::Buffer`: in the OS's buffers, so a killed process
//! loses nothing, a power loss only a tail that the Raft log still holds);
//! [`Engine::persist`] fsyncs the journal. Views are fjall snapshots: they never hold
//! applies back.
//!
//! What bounds memory (the node's target is 256 MB of RSS at any data size):
//! - the block cache, `--cache-mb` (data, index and filter blocks read from tables);
//! - each keyspace's memtable, [`MEMTABLE_BYTES`] at most ([`SMALL_TREE_MEMTABLE_BYTES`]
//!   while the tree is small): fjall halts writes while 4 sealed memtables wait to be
//!   flushed, so at most 5 of them exist, 40 MiB. raftkv rotates the memtable itself once
//!   that much is written to it ([`MemtableFill`]), with fjall's own
//!   limit twice as high as a backstop: fjall's own rotation asks its single worker once per
//!   write made while the memtable is full (see [`FJALL_WORKERS`] for why that matters);
//! - the journal is on disk only, [`MAX_JOURNAL_BYTES`] at most before fjall flushes
//!   the memtables that pin old journals (fjall's default, 512 MiB, would also let the
//!   disk use grow far past the data at small sizes).

use std::ops::Bound;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use super::{Engine, EngineError, EngineKind, EngineOptions, Generations, Install, Pairs, View, Writes};

/// A keyspace's memtable once its tables hold [`LARGE_TREE_BYTES`]: the unit fjall flushes
/// into a table. Small enough that the at most five a keyspace holds (one active, four sealed)
/// stay well inside the memory target; large enough that one holds many applies (a write
/// group is at most 1 MiB).
pub const MEMTABLE_BYTES: u64 = 8 << 20;
/// A keyspace's memtable while its tables hold less than [`LARGE_TREE_BYTES`]. What sits above
/// the last level (four flushed memtables, then a first level of four tables) holds versions
/// that later writes overwrote, until a merge into the last level drops them: ~100 MB beside
/// 100 MB of data with 8 MiB memtables and tables, which took the disk at its peak under steady
/// overwrites to 2.8–3.0× the data. Halved, the levels above hold half as much. A larger tree
/// takes [`MEMTABLE_BYTES`]: at 1 GB, 4 MiB memtables took puts from 75 % to 64 % of the
/// 10 000-key figure (twice the flushes, each merged into the first level), and the levels
/// above are a small share of it whatever their size (BENCHMARKS.md, "At scale").
pub const SMALL_TREE_MEMTABLE_BYTES: u64 = 4 << 20;
/// From this size of a keyspace's tables its memtables are [`MEMTABLE_BYTES`].
pub const LARGE_TREE_BYTES: u64 = 256 << 20;
/// The size of the tables compaction writes. fjall's leveled compaction sizes the first level
/// at four of them, and merges the four oldest flushed memtables into all of it at once (with
/// random keys every table of that level overlaps them). With fjall's default (64 MiB, made for
/// its default 64 MiB memtables) that was a 256 MiB rewrite per 32 MiB of our memtables, and
/// while the compaction threads were at it no memtable was flushed, so fjall halted the applies
/// (100 ms at a time) with four sealed memtables waiting. Tables the size of a small tree's
/// memtable make its first level as large as what flows into it, as RocksDB's defaults do; at
/// 1 GB, tables of half a memtable kept the put throughput (75 % of the 10 000-key figure).
/// fjall takes this when a keyspace is created: it cannot follow the tree's size.
pub const TABLE_TARGET_BYTES: u64 = SMALL_TREE_MEMTABLE_BYTES;
/// fjall's own memtable limit, a backstop only: [`write_batch`] rotates at [`MEMTABLE_BYTES`] at
/// most, and one batch (a write group, or a part of a snapshot install, 4 MiB at most) cannot carry a
/// memtable from there past this.
const FJALL_MEMTABLE_LIMIT_BYTES: u64 = 2 * MEMTABLE_BYTES;
/// What one written item costs a memtable beyond its key and value, as counted here: at least
/// what fjall counts (its in-memory item, 64 bytes in lsm-tree 3.1), so raftkv's count reaches
/// its limit no later than fjall's own count.
const MEMTABLE_ITEM_OVERHEAD_BYTES: u64 = 128;
/// fjall's flush and compaction workers. fjall's default (one per core, at most four) spins:
/// with two or more, fjall 3.1.13's first worker hands a compaction request it must leave to
/// the others back to the queue it reads itself, and takes it again, for as long as another
/// worker compacts. At 1 GB under puts that loop was a third of fjall's CPU and puts ran
/// 9.7k ops/s; with one worker, 11.4k–12.5k (BENCHMARKS.md, "Where the time goes", item 21).
/// One worker is safe only because raftkv rotates memtables itself ([`MemtableFill`]): a lone
/// worker sends the flush request to the bounded queue (1 000) that only it reads, and fjall's
/// own rotation puts a request on that queue at every write made while the memtable is full,
/// so during a long compaction the queue could fill and the worker block on it for good
/// (fjall's pull request #323). Now the queue holds a flush and a compaction request per
/// memtable at most.
const FJALL_WORKERS: usize = 1;
/// The journal's limit on disk (fjall's least).
pub const MAX_JOURNAL_BYTES: u64 = 64 << 20;
/// Table files fjall keeps open, leaving the process's other descriptors (sockets, the
/// Raft log) room under a default limit of 1024.
const MAX_OPEN_TABLES: usize = 256;

fn fjall_err(e: fjall::Error) -> EngineError {
    match e {
        fjall::Error::Io(e) => EngineError::Io(e),
        fjall::Error::Locked => EngineError::Locked,
        fjall::Error::Storage(e) => EngineError::Corrupt(e.to_string()),
        fjall::Error::JournalRecovery(e) => EngineError::Corrupt(format!("fjall's journal cannot be recovered: {e:?}")),
        fjall::Error::InvalidVersion(v) => {
            EngineError::Corrupt(format!("fjall's files are of another version ({v:?})"))
        }
        other => EngineError::Engine(format!("{other:?}")),
    }
}

/// How a new keyspace is set up. fjall records these with the keyspace: a keyspace created
/// by an older raftkv keeps its own until a snapshot install replaces it.
///
/// Data blocks are not compressed. fjall's default compresses them (lz4) from the third level
/// down, and it fills its levels from the deepest up, so every level but the flushed
/// memtables' was compressed. Measured at 1 GB with values that compress (bench's default
/// value shrinks ~6×), fjall spent ~26 µs of CPU per put compressed and ~10 µs uncompressed,
/// and puts kept 59 % of the 10 000-key figure compressed, 72 % uncompressed (BENCHMARKS.md,
/// "At scale", "Tables without compression"): the compressor's own work, and levels sized by
/// compressed bytes, whose merges rewrite ~6× the keys per key flushed (the two not measured
/// apart). What it costs is disk: data that compresses takes its own size (1.3× at 1 GB, log
/// included) instead of a fraction of it.
fn space_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(FJALL_MEMTABLE_LIMIT_BYTES)
        .data_block_compression_policy(fjall::config::CompressionPolicy::disabled())
        .compaction_strategy(Arc::new(
            fjall::compaction::Leveled::default().with_table_target_size(TABLE_TARGET_BYTES),
        ))
}

/// The fjall engine. Cheap to clone.
#[derive(Clone)]
pub struct FjallEngine(Arc<Inner>);

struct Inner {
    db: Database,
    /// The current generation's keyspace. A point read reads under this lock, so that
    /// nobody reads the keyspace an install replaces once it is deleted; views keep
    /// their own handle (fjall keeps a deleted keyspace's files until its last handle
    /// goes).
    space: RwLock<Keyspace>,
    /// The current keyspace's active memtable, as [`write_batch`] counts it.
    fill: MemtableFill,
    generations: Mutex<Generations>,
}

/// What a keyspace's active memtable holds since raftkv last rotated it (or opened the
/// engine, which rotates what the journal gave back): keys, values and
/// [`MEMTABLE_ITEM_OVERHEAD_BYTES`] per item, never less than fjall's own count of it; and
/// the size at which it is rotated, set from the keyspace's tables at each rotation
/// ([`memtable_bytes`]). Only [`write_batch`] writes to a keyspace, one batch at a time per
/// keyspace.
struct MemtableFill {
    bytes: AtomicU64,
    limit: AtomicU64,
}

impl MemtableFill {
    /// An empty memtable of a keyspace whose tables hold `tree_bytes`.
    fn new(tree_bytes: u64) -> MemtableFill {
        MemtableFill {
            bytes: AtomicU64::new(0),
            limit: AtomicU64::new(memtable_bytes(tree_bytes)),
        }
    }

    /// Counts from now on what `other` counted (the keyspace it counted replaces this one's).
    fn take_over(&self, other: &MemtableFill) {
        self.bytes.store(other.bytes.load(Ordering::Relaxed), Ordering::Relaxed);
        self.limit.store(other.limit.load(Ordering::Relaxed), Ordering::Relaxed);
    }
}

/// The memtable size for a keyspace whose tables hold `tree_bytes`.
fn memtable_bytes(tree_bytes: u64) -> u64 {
    if tree_bytes < LARGE_TREE_BYTES {
        SMALL_TREE_MEMTABLE_BYTES
    } else {
        MEMTABLE_BYTES
    }
}

impl FjallEngine {
    /// Opens (or creates) fjall in `dir` and deletes every generation but `generations`'
    /// current one.
    pub(super) fn open(
        dir: &Path,
        options: &EngineOptions,
        generations: Generations,
    ) -> Result<FjallEngine, EngineError> {
        let db = Database::builder(dir)
            .cache_size(options.cache_bytes)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .max_cached_files(Some(MAX_OPEN_TABLES))
            .worker_threads(FJALL_WORKERS)
            .open()
            .map_err(fjall_err)?;
        let current = generations.current();
        let name = Generations::space_name(current);
        if !generations.fresh() && !db.keyspace_exists(&name) {
            return Err(EngineError::Corrupt(format!(
                "fjall has no keyspace {name}, the current one"
            )));
        }
        for other in db.list_keyspace_names() {
            if Generations::space_generation(other.as_bytes()).is_some_and(|g| g != current) {
                let abandoned = db.keyspace(&other, space_options).map_err(fjall_err)?;
                db.delete_keyspace(abandoned).map_err(fjall_err)?;
            }
        }
        let space = db.keyspace(&name, space_options).map_err(fjall_err)?;
        // What the journal gave back goes to a table of its own, so that the count of the
        // memtable starts from empty, as [`MemtableFill`] does.
        space.rotate_memtable().map_err(fjall_err)?;
        let fill = MemtableFill::new(space.disk_space());
        Ok(FjallEngine(Arc::new(Inner {
            db,
            space: RwLock::new(space),
            fill,
            generations: Mutex::new(generations),
        })))
    }

    fn space(&self) -> Keyspace {
        self.0.space.read().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// Writes `writes` to `space` as one batch. Keys and values are copied: fjall keeps what
/// it is given in its memtable, and a `Bytes` slice of a larger buffer (a decoded log
/// entry) would keep all of that buffer alive with it.
/// Then rotates `space`'s memtable if `fill` says it is full.
fn write_batch(db: &Database, space: &Keyspace, fill: &MemtableFill, writes: Writes) -> Result<(), EngineError> {
    let mut batch = db.batch();
    let mut bytes = 0;
    for w in writes.into_writes() {
        bytes += (w.key.len() + w.value.as_ref().map_or(0, |v| v.len())) as u64 + MEMTABLE_ITEM_OVERHEAD_BYTES;
        match w.value {
            Some(v) => batch.insert(space, w.key.as_ref(), v.as_ref()),
            None => batch.remove(space, w.key.as_ref()),
        }
    }
    batch.commit().map_err(fjall_err)?;
    if fill.bytes.fetch_add(bytes, Ordering::Relaxed) + bytes >= fill.limit.load(Ordering::Relaxed) {
        fill.bytes.store(0, Ordering::Relaxed);
        // Seals it and queues its flush (false: it was empty, or fjall sealed it first).
        space.rotate_memtable().map_err(fjall_err)?;
        fill.limit.store(memtable_bytes(space.disk_space()), Ordering::Relaxed);
    }
    Ok(())
}

impl Engine for FjallEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Fjall
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        let space = self.0.space.read().unwrap_or_else(|p| p.into_inner());
        Ok(space.get(key).map_err(fjall_err)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn apply(&self, writes: Writes) -> Result<(), EngineError> {
        write_batch(&self.0.db, &self.space(), &self.0.fill, writes)
    }

    fn view(&self) -> Box<dyn View> {
        Box::new(FjallView {
            space: self.space(),
            snapshot: self.0.db.snapshot(),
        })
    }

    fn persist(&self) -> Result<(), EngineError> {
        self.0.db.persist(PersistMode::SyncAll).map_err(fjall_err)
    }

    fn disk_bytes(&self) -> u64 {
        self.0.space.read().unwrap_or_else(|p| p.into_inner()).disk_space()
    }

    fn start_install(&self) -> Result<Box<dyn Install>, EngineError> {
        let generation = self.0.generations.lock().unwrap_or_else(|p| p.into_inner()).current() + 1;
        let name = Generations::space_name(generation);
        let db = &self.0.db;
        if db.keyspace_exists(&name) {
            // Only what an abandoned install left.
            let abandoned = db.keyspace(&name, space_options).map_err(fjall_err)?;
            db.delete_keyspace(abandoned).map_err(fjall_err)?;
        }
        let space = db.keyspace(&name, space_options).map_err(fjall_err)?;
        Ok(Box::new(FjallInstall {
            engine: self.clone(),
            generation,
            space: Some(space),
            fill: MemtableFill::new(0),
        }))
    }
}

/// A fjall snapshot of one generation's keyspace.
struct FjallView {
    space: Keyspace,
    snapshot: fjall::Snapshot,
}

impl View for FjallView {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self
            .snapshot
            .get(&self.space, key)
            .map_err(fjall_err)?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn range(&self, from: Bound<&[u8]>) -> Pairs<'_> {
        let from = from.map(<[u8]>::to_vec);
        let range: (Bound<Vec<u8>>, Bound<Vec<u8>>) = (from, Bound::Unbounded);
        Box::new(self.snapshot.range(&self.space, range).map(|guard| {
            let (k, v) = guard.into_inner().map_err(fjall_err)?;
            Ok((Bytes::copy_from_slice(&k), Bytes::copy_from_slice(&v)))
        }))
    }
}

/// The next generation's keyspace, filled by a snapshot install.
struct FjallInstall {
    engine: FjallEngine,
    generation: u64,
    /// Taken by `commit`; left here, the keyspace is deleted with the install.
    space: Option<Keyspace>,
    /// Its active memtable, as [`write_batch`] counts it.
    fill: MemtableFill,
}

impl Install for FjallInstall {
    fn apply(&mut self, writes: Writes) -> Result<(), EngineError> {
        let space = self.space.as_ref().expect("an install not committed has its keyspace");
        write_batch(&self.engine.0.db, space, &self.fill, writes)
    }

    fn commit(mut self: Box<Self>) -> Result<(), EngineError> {
        let inner = &self.engine.0;
        let space = self.space.take().expect("an install is committed once");
        // The journal holds every batch not yet in a table: synced, the whole keyspace is
        // durable before `current` names it.
        self.engine.persist()?;
        let old = {
            let mut generations = inner.generations.lock().unwrap_or_else(|p| p.into_inner());
            generations.switch_to(self.generation)?;
            let mut current = inner.space.write().unwrap_or_else(|p| p.into_inner());
            // Applies (which take this lock to find the keyspace) now count the new one's.
            inner.fill.take_over(&self.fill);
            std::mem::replace(&mut *current, space)
        };
        // Its files go once the last view of it is dropped; at the next open if a crash
        // comes first.
        inner.db.delete_keyspace(old).map_err(fjall_err)
    }
}

impl Drop for FjallInstall {
    fn drop(&mut self) {
        if let Some(space) = self.space.take() {
            if let Err(error) = self.engine.0.db.delete_keyspace(space) {
                tracing::warn!(error = %fjall_err(error), "cannot delete an abandoned install's keyspace; it goes at the next start");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::{open_when_released, writes};

    #[test]
    fn raftkv_rotates_a_small_trees_memtable_once_it_holds_4_mib_well_before_fjalls_own_limit() {
        let dir = tempfile::tempdir().unwrap();
        let generations = Generations::open(dir.path()).unwrap();
        let engine = FjallEngine::open(&dir.path().join("fjall"), &EngineOptions::default(), generations).unwrap();
        let space = engine.space();
        let value = "v".repeat(64 << 10);
        let batch = |from: usize| {
            let pairs: Vec<(String, Option<&str>)> = (from..from + 16)
                .map(|i| (format!("k{i:08}"), Some(value.as_str())))
                .collect();
            let pairs: Vec<(&str, Option<&str>)> = pairs.iter().map(|(k, v)| (k.as_str(), *v)).collect();
            writes(&pairs)
        };
        // 1 MiB a batch: three stay below SMALL_TREE_MEMTABLE_BYTES, the fourth reaches it.
        for i in 0..3 {
            engine.apply(batch(i * 16)).unwrap();
        }
        assert_eq!(space.sealed_memtable_count() + space.table_count(), 0, "not yet");
        engine.apply(batch(3 * 16)).unwrap();
        assert_eq!(
            space.sealed_memtable_count() + space.table_count(),
            1,
            "sealed at 4 MiB (fjall's own limit is {FJALL_MEMTABLE_LIMIT_BYTES} bytes)"
        );
        // The count starts again: the next 3 MiB seal nothing more.
        for i in 4..7 {
            engine.apply(batch(i * 16)).unwrap();
        }
        assert_eq!(space.sealed_memtable_count() + space.table_count(), 1);
        assert_eq!(engine.get(b"k00000000").unwrap().map(|v| v.len()), Some(64 << 10));
    }

    #[test]
    fn a_memtable_is_small_while_the_tree_is_and_full_size_once_it_holds_large_tree_bytes() {
        assert_eq!(memtable_bytes(0), SMALL_TREE_MEMTABLE_BYTES);
        assert_eq!(memtable_bytes(LARGE_TREE_BYTES - 1), SMALL_TREE_MEMTABLE_BYTES);
        assert_eq!(memtable_bytes(LARGE_TREE_BYTES), MEMTABLE_BYTES);
        assert_eq!(memtable_bytes(10 * LARGE_TREE_BYTES), MEMTABLE_BYTES);
        const { assert!(SMALL_TREE_MEMTABLE_BYTES < MEMTABLE_BYTES && MEMTABLE_BYTES < FJALL_MEMTABLE_LIMIT_BYTES) };
    }

    #[test]
    fn a_view_keeps_its_point_in_time_and_never_holds_applies_back() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open_when_released(dir.path(), EngineKind::Fjall);
        engine.apply(writes(&[("a", Some("1")), ("b", Some("1"))])).unwrap();
        let view = engine.view();
        // Applies go on while the view lives (with sled they would wait for it).
        engine
            .apply(writes(&[("a", Some("2")), ("b", None), ("c", Some("2"))]))
            .unwrap();
        let seen: Vec<_> = view.range(Bound::Unbounded).map(|p| p.unwrap()).collect();
        assert_eq!(
            seen,
            [
                (Bytes::from("a"), Bytes::from("1")),
                (Bytes::from("b"), Bytes::from("1"))
            ]
        );
        assert_eq!(view.get(b"c").unwrap(), None);
        assert_eq!(engine.get(b"a").unwrap(), Some(Bytes::from("2")));
    }
}
