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
//! - each keyspace's memtable, [`MEMTABLE_BYTES`]: fjall halts writes while 4 sealed
//!   memtables wait to be flushed, so at most 5 of them exist, 40 MiB;
//! - the journal is on disk only, [`MAX_JOURNAL_BYTES`] at most before fjall flushes
//!   the memtables that pin old journals (fjall's default, 512 MiB, would also let the
//!   disk use grow far past the data at small sizes).

use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;
use fjall::{Database, Keyspace, KeyspaceCreateOptions, PersistMode, Readable};

use super::{Engine, EngineError, EngineKind, EngineOptions, Generations, Install, Pairs, View, Writes};

/// A keyspace's memtable: the unit fjall flushes into a table. Small enough that the
/// at most five a keyspace holds (one active, four sealed) stay well inside the memory
/// target; large enough that one holds many applies (a write group is at most 1 MiB).
pub const MEMTABLE_BYTES: u64 = 8 << 20;
/// The size of the tables compaction writes. fjall's leveled compaction sizes the first level
/// at four of them, and merges the four oldest flushed memtables into all of it at once (with
/// random keys every table of that level overlaps them). With fjall's default (64 MiB, made for
/// its default 64 MiB memtables) that was a 256 MiB rewrite per 32 MiB of our memtables, and
/// while the compaction threads were at it no memtable was flushed, so fjall halted the applies
/// (100 ms at a time) with four sealed memtables waiting. Tables the size of a memtable make
/// the first level as large as what flows into it, as RocksDB's defaults do.
pub const TABLE_TARGET_BYTES: u64 = MEMTABLE_BYTES;
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

fn space_options() -> KeyspaceCreateOptions {
    KeyspaceCreateOptions::default()
        .max_memtable_size(MEMTABLE_BYTES)
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
    generations: Mutex<Generations>,
}

impl FjallEngine {
    /// Opens (or creates) fjall in `dir` and deletes every generation but `generations`'
    /// current one.
    pub(super) fn open(
        dir: &Path,
        options: &EngineOptions,
        generations: Generations,
    ) -> Result<FjallEngine, EngineError> {
        // fjall's worker pool keeps its default size (one per core, at most four). With two or
        // more, fjall 3.1.13's first worker spins while another compacts (BENCHMARKS.md, "Where
        // the time goes", item 21); one worker does not, but it blocks sending to the bounded
        // queue only it reads, which a long compaction can fill: a deadlock that halts writes.
        let db = Database::builder(dir)
            .cache_size(options.cache_bytes)
            .max_journaling_size(MAX_JOURNAL_BYTES)
            .max_cached_files(Some(MAX_OPEN_TABLES))
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
        Ok(FjallEngine(Arc::new(Inner {
            db,
            space: RwLock::new(space),
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
fn write_batch(db: &Database, space: &Keyspace, writes: Writes) -> Result<(), EngineError> {
    let mut batch = db.batch();
    for w in writes.into_writes() {
        match w.value {
            Some(v) => batch.insert(space, w.key.as_ref(), v.as_ref()),
            None => batch.remove(space, w.key.as_ref()),
        }
    }
    batch.commit().map_err(fjall_err)
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
        write_batch(&self.0.db, &self.space(), writes)
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
}

impl Install for FjallInstall {
    fn apply(&mut self, writes: Writes) -> Result<(), EngineError> {
        let space = self.space.as_ref().expect("an install not committed has its keyspace");
        write_batch(&self.engine.0.db, space, writes)
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
