//! The state machine in sled 0.34 (`--engine sled`), the engine raftkv started with.
//!
//! Kept for comparison and for directories made with it; its memory is not bounded:
//! sled's cache setting does not limit what it keeps (measured: 12 GB of RSS for 0.5 GB
//! of data, issue 13).
//!
//! A generation of the key space is a sled tree (`sm-<generation>`). An apply writes one
//! redo record, then each key (`redo.rs`), under the apply gate (`gate.rs`): sled has
//! no snapshots, so a view holds the gate and applies wait for it. Durable: a sled flush
//! plus an fdatasync of sled's file (sled's own flush only issues `sync_file_range`,
//! which is not a durability barrier).

use std::fs::File;
use std::ops::Bound;
use std::path::Path;
use std::sync::{Arc, Mutex, RwLock};

use bytes::Bytes;

use super::gate::{ApplyGate, ReadGuard};
use super::{redo, Engine, EngineError, EngineKind, EngineOptions, Generations, Install, Pairs, View, Writes};
use crate::store::keys::REDO_KEY;

/// sled's segment size. sled writes any item larger than a quarter of a segment to a
/// separate "blob" file that it never fsyncs; with 8 MiB segments every value the state
/// machine stores (at most one 1 MiB command, or a 1 MiB write group of them, plus framing)
/// stays in the main file, which [`Engine::persist`] fsyncs.
pub const SLED_SEGMENT_BYTES: usize = 8 << 20;

fn sled_err(e: sled::Error) -> EngineError {
    match e {
        sled::Error::Io(e) => EngineError::Io(e),
        sled::Error::Corruption { at, .. } => EngineError::Corrupt(match at {
            Some(offset) => format!("sled's files hold corrupted data (at {offset})"),
            None => "sled's files hold corrupted data".to_string(),
        }),
        other => EngineError::Engine(other.to_string()),
    }
}

/// The sled engine. Cheap to clone.
#[derive(Clone)]
pub struct SledEngine(Arc<Inner>);

struct Inner {
    db: sled::Db,
    /// sled's data file, to fdatasync after sled's flush.
    file: File,
    /// The current generation's tree. A reader that does not hold the gate (a point read)
    /// reads under this lock, so that the tree an install replaces is read by nobody when
    /// it is dropped; views hold the gate instead.
    tree: RwLock<sled::Tree>,
    generations: Mutex<Generations>,
    gate: Arc<ApplyGate>,
}

impl SledEngine {
    /// Opens (or creates) sled in `dir`, finishes the latest apply a crash cut short, and
    /// deletes every generation but `generations`' current one.
    pub(super) fn open(
        dir: &Path,
        options: &EngineOptions,
        generations: Generations,
    ) -> Result<SledEngine, EngineError> {
        let db = sled::Config::new()
            .path(dir)
            .segment_size(SLED_SEGMENT_BYTES)
            .cache_capacity(options.cache_bytes)
            .open()
            .map_err(|e| match e {
                sled::Error::Io(io)
                    if io.kind() == std::io::ErrorKind::WouldBlock || io.to_string().contains("lock") =>
                {
                    EngineError::Locked
                }
                other => sled_err(other),
            })?;
        let current = generations.current();
        let name = Generations::space_name(current);
        if !generations.fresh() && !db.tree_names().iter().any(|n| n.as_ref() == name.as_bytes()) {
            return Err(EngineError::Corrupt(format!(
                "sled has no tree {name}, the current one"
            )));
        }
        for other in db.tree_names() {
            if Generations::space_generation(&other).is_some_and(|g| g != current) {
                db.drop_tree(&other).map_err(sled_err)?;
            }
        }
        let tree = db.open_tree(name).map_err(sled_err)?;
        redo::finish_latest(&tree)?;
        let file = File::open(dir.join("db"))?;
        Ok(SledEngine(Arc::new(Inner {
            db,
            file,
            tree: RwLock::new(tree),
            generations: Mutex::new(generations),
            gate: Arc::default(),
        })))
    }

    fn tree(&self) -> sled::Tree {
        self.0.tree.read().unwrap_or_else(|p| p.into_inner()).clone()
    }

    /// For tests: the current generation's tree, to write around the engine.
    #[cfg(test)]
    pub(crate) fn current_tree(&self) -> sled::Tree {
        self.tree()
    }
}

impl Engine for SledEngine {
    fn kind(&self) -> EngineKind {
        EngineKind::Sled
    }

    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        // Read under the lock, not from a clone of the tree: an install drops the tree it
        // replaces once nobody reads it.
        let tree = self.0.tree.read().unwrap_or_else(|p| p.into_inner());
        Ok(tree.get(key).map_err(sled_err)?.map(|v| Bytes::copy_from_slice(&v)))
    }

    fn apply(&self, writes: Writes) -> Result<(), EngineError> {
        let _writing = self.0.gate.write();
        redo::commit(&self.tree(), writes).map_err(sled_err)
    }

    fn view(&self) -> Box<dyn View> {
        let reading = self.0.gate.read();
        Box::new(SledView {
            tree: self.tree(),
            _reading: reading,
        })
    }

    fn persist(&self) -> Result<(), EngineError> {
        self.0.db.flush().map_err(sled_err)?;
        self.0.file.sync_data()?;
        Ok(())
    }

    fn disk_bytes(&self) -> u64 {
        self.0.db.size_on_disk().unwrap_or(0)
    }

    fn start_install(&self) -> Result<Box<dyn Install>, EngineError> {
        let generation = self.0.generations.lock().unwrap_or_else(|p| p.into_inner()).current() + 1;
        let name = Generations::space_name(generation);
        // A tree of that name can only be what an abandoned install left.
        self.0.db.drop_tree(&name).map_err(sled_err)?;
        let tree = self.0.db.open_tree(&name).map_err(sled_err)?;
        Ok(Box::new(SledInstall {
            engine: self.clone(),
            generation,
            tree: Some(tree),
        }))
    }
}

/// A view of one generation's tree, holding applies back while it lives.
struct SledView {
    tree: sled::Tree,
    _reading: ReadGuard,
}

impl View for SledView {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        Ok(self
            .tree
            .get(key)
            .map_err(sled_err)?
            .map(|v| Bytes::copy_from_slice(&v)))
    }

    fn range(&self, from: Bound<&[u8]>) -> Pairs<'_> {
        let from = from.map(<[u8]>::to_vec);
        let pairs = self.tree.range::<Vec<u8>, _>((from, Bound::Unbounded));
        // The redo record is this engine's own, not the state machine's.
        let pairs = pairs.filter(|pair| !matches!(pair, Ok((k, _)) if k.as_ref() == REDO_KEY));
        Box::new(pairs.map(|pair| {
            let (k, v) = pair.map_err(sled_err)?;
            Ok((Bytes::copy_from_slice(&k), Bytes::copy_from_slice(&v)))
        }))
    }
}

/// The next generation's tree, filled by a snapshot install.
struct SledInstall {
    engine: SledEngine,
    generation: u64,
    /// Taken by `commit`; left here, the tree is dropped with the install.
    tree: Option<sled::Tree>,
}

impl Install for SledInstall {
    fn apply(&mut self, writes: Writes) -> Result<(), EngineError> {
        let mut batch = sled::Batch::default();
        for w in writes.into_writes() {
            match w.value {
                Some(v) => batch.insert(w.key.as_ref(), v.as_ref()),
                None => batch.remove(w.key.as_ref()),
            }
        }
        let tree = self.tree.as_ref().expect("an install not committed has its tree");
        tree.apply_batch(batch).map_err(sled_err)
    }

    fn commit(mut self: Box<Self>) -> Result<(), EngineError> {
        let inner = &self.engine.0;
        let tree = self.tree.take().expect("an install is committed once");
        // sled recovers a prefix of what it wrote: once flushed (and fdatasynced), the whole
        // tree is there before `current` names it.
        self.engine.persist()?;
        let old = {
            let mut generations = inner.generations.lock().unwrap_or_else(|p| p.into_inner());
            generations.switch_to(self.generation)?;
            let _writing = inner.gate.write();
            let mut current = inner.tree.write().unwrap_or_else(|p| p.into_inner());
            std::mem::replace(&mut *current, tree)
        };
        // Gone at the next open if a crash comes first.
        inner.db.drop_tree(old.name()).map_err(sled_err)?;
        Ok(())
    }
}

impl Drop for SledInstall {
    fn drop(&mut self) {
        if let Some(tree) = self.tree.take() {
            if let Err(error) = self.engine.0.db.drop_tree(tree.name()) {
                tracing::warn!(%error, "cannot drop an abandoned install's tree; it goes at the next start");
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::engine::writes;
    use crate::store::keys::APPLIED_KEY;

    fn open(dir: &Path) -> SledEngine {
        let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
        let options = EngineOptions {
            kind: EngineKind::Sled,
            cache_bytes: 8 << 20,
        };
        loop {
            // sled's threads of an engine just dropped may still hold its lock for a moment.
            match Generations::open(dir).and_then(|g| SledEngine::open(&dir.join("sled"), &options, g)) {
                Err(EngineError::Locked) if std::time::Instant::now() < deadline => {
                    std::thread::sleep(std::time::Duration::from_millis(2))
                }
                other => return other.unwrap(),
            }
        }
    }

    #[test]
    fn an_apply_cut_short_by_a_crash_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        engine
            .apply(writes(&[("a", Some("1")), ("m:applied", Some("1"))]))
            .unwrap();
        engine
            .apply(writes(&[("a", Some("2")), ("b", Some("2")), ("m:applied", Some("2"))]))
            .unwrap();
        // A crash right after the second apply's redo record reached sled, before any of
        // its writes.
        let tree = engine.current_tree();
        tree.insert("a", "1").unwrap();
        tree.remove("b").unwrap();
        tree.insert(APPLIED_KEY, "1").unwrap();
        engine.persist().unwrap();
        drop((tree, engine));

        let engine = open(dir.path());
        for (key, value) in [("a", "2"), ("b", "2"), ("m:applied", "2")] {
            assert_eq!(engine.get(key.as_bytes()).unwrap().as_deref(), Some(value.as_bytes()));
        }
    }

    #[test]
    fn the_largest_state_machine_value_stays_in_sleds_fsynced_file_not_a_blob() {
        let dir = tempfile::tempdir().unwrap();
        let engine = open(dir.path());
        // One command at the limits, and a full write group, with generous framing.
        let biggest = raftkv::limits::MAX_VALUE_BYTES + raftkv::limits::MAX_KEY_BYTES + 64 * 1024;
        let biggest = biggest.max(crate::proposer::MAX_GROUP_BYTES + 64 * 1024);
        let mut w = Writes::default();
        w.insert(&b"k"[..], vec![7u8; biggest]);
        engine.apply(w).unwrap();
        engine.persist().unwrap();
        let blobs = match std::fs::read_dir(dir.path().join("sled").join("blobs")) {
            Ok(entries) => entries.count(),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => 0,
            Err(e) => panic!("{e}"),
        };
        assert_eq!(
            blobs, 0,
            "sled wrote a {biggest}-byte entry to a blob file, which it never fsyncs"
        );
    }
}
