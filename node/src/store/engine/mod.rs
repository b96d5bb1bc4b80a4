//! The state machine's storage engine, behind one small trait ([`Engine`]): what the
//! state machine needs of a key-value store and no more. `fjall.rs` is fjall, an LSM
//! tree with bounded memory (the default); `sled.rs` is sled (the engine raftkv started
//! with, whose memory is not bounded).
//!
//! An engine holds the state machine's keys (`keys.rs`) in its directory, `sm/` in the
//! data directory: its own files in `sm/<engine>/`, and `sm/current`, a state file
//! naming the *generation* of the key space that is current. A snapshot install fills
//! the next generation beside the current one ([`Install`]) and switches to it in one
//! step, so readers never see part of an install, and a crash leaves either generation
//! whole; a generation that is not current is deleted when the engine opens.
//!
//! What each method promises is written on it; the rule that matters most: the state
//! machine need not be durable on its own. The Raft log is the durable record, so an
//! apply is atomic but not synced; [`Engine::persist`] makes it durable before the log
//! is purged.

pub mod fjall;
pub mod open_log;
pub mod sled;

mod gate;
mod redo;

use std::io;
use std::ops::Bound;
use std::path::Path;
use std::sync::Arc;

use bytes::Bytes;
use raftkv::raft_pb as pb;

use crate::store::state_file::{self, StateFileError};

pub use redo::RedoError;

/// The engines a node can keep its state machine in.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum EngineKind {
    #[default]
    Fjall,
    Sled,
}

impl EngineKind {
    pub const ALL: [EngineKind; 2] = [EngineKind::Fjall, EngineKind::Sled];

    /// The name flags, the data directory's identity and `sm/<name>/` use.
    pub fn name(self) -> &'static str {
        match self {
            EngineKind::Fjall => "fjall",
            EngineKind::Sled => "sled",
        }
    }

    /// The engine named `name`.
    pub fn from_name(name: &str) -> Option<EngineKind> {
        EngineKind::ALL.into_iter().find(|kind| kind.name() == name)
    }
}

impl std::fmt::Display for EngineKind {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// The engine's cache unless told otherwise (`--cache-mb`), in MiB: with fjall's other
/// limits (`fjall.rs`) it keeps a node well under 256 MB of RSS.
pub const DEFAULT_CACHE_MB: u64 = 64;

/// How to open an engine.
#[derive(Debug, Clone)]
pub struct EngineOptions {
    pub kind: EngineKind,
    /// The engine's cache, in bytes.
    pub cache_bytes: u64,
}

impl Default for EngineOptions {
    fn default() -> Self {
        EngineOptions {
            kind: EngineKind::default(),
            cache_bytes: DEFAULT_CACHE_MB << 20,
        }
    }
}

/// Why an engine failed. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("another process is using it")]
    Locked,
    #[error("the state machine's files are corrupt: {0}")]
    Corrupt(String),
    #[error(transparent)]
    Current(#[from] StateFileError),
    #[error(transparent)]
    Redo(#[from] RedoError),
    #[error("state machine I/O failed: {0}")]
    Io(#[from] io::Error),
    #[error("the state machine's engine failed: {0}")]
    Engine(String),
}

/// openraft's storage traits return `io::Error`; openraft stops the node on any.
impl From<EngineError> for io::Error {
    fn from(e: EngineError) -> io::Error {
        match e {
            EngineError::Io(e) => e,
            EngineError::Corrupt(_) | EngineError::Current(_) | EngineError::Redo(_) => {
                io::Error::new(io::ErrorKind::InvalidData, e.to_string())
            }
            other => io::Error::other(other.to_string()),
        }
    }
}

/// A key and its value.
pub type Pair = (Bytes, Bytes);
/// Pairs in key order, as an engine reads them.
pub type Pairs<'a> = Box<dyn Iterator<Item = Result<Pair, EngineError>> + Send + 'a>;

/// The writes of one apply, or of one part of a snapshot install, in order.
#[derive(Default)]
pub struct Writes {
    writes: Vec<pb::RedoWrite>,
    bytes: usize,
}

impl Writes {
    /// Values are `Bytes` already (commands, encoded records): taken as they are, not copied.
    pub fn insert(&mut self, key: impl Into<Bytes>, value: impl Into<Bytes>) {
        let (key, value) = (key.into(), value.into());
        self.bytes += key.len() + value.len();
        self.writes.push(pb::RedoWrite {
            key,
            value: Some(value),
        });
    }

    pub fn remove(&mut self, key: impl Into<Bytes>) {
        let key = key.into();
        self.bytes += key.len();
        self.writes.push(pb::RedoWrite { key, value: None });
    }

    /// The keys and values written, in bytes.
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    pub fn is_empty(&self) -> bool {
        self.writes.is_empty()
    }

    /// Each write: its key, and its value (`None`: remove the key).
    fn into_writes(self) -> Vec<pb::RedoWrite> {
        self.writes
    }
}

/// The state machine's key-value store. Cheap to share (`Arc<dyn Engine>`); every
/// method may block on disk I/O.
pub trait Engine: Send + Sync {
    fn kind(&self) -> EngineKind;

    /// The value of `key` now.
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError>;

    /// Makes `writes` take effect as a unit: a crash keeps all of them or none, and a
    /// [`View`] sees all of them or none. Not durable on return (see [`Engine::persist`]).
    fn apply(&self, writes: Writes) -> Result<(), EngineError>;

    /// A consistent, point-in-time view: it sees the applies made before it and none
    /// after. With fjall it never holds applies back; with sled it holds them until it is
    /// dropped (sled has no snapshots), so keep it short there.
    fn view(&self) -> Box<dyn View>;

    /// Makes every apply made so far durable.
    fn persist(&self) -> Result<(), EngineError>;

    /// About how many bytes the current key space takes on disk (for the snapshot policy:
    /// how much log to keep). 0 if the engine cannot tell.
    fn disk_bytes(&self) -> u64;

    /// Starts filling the next generation of the key space (empty) for a snapshot
    /// install; the current one serves meanwhile. Dropped without [`Install::commit`],
    /// the new generation is abandoned.
    fn start_install(&self) -> Result<Box<dyn Install>, EngineError>;
}

/// A consistent read view of the state machine (see [`Engine::view`]). Owns what it
/// needs, so it can be sent to another thread and outlive the call that made it.
pub trait View: Send {
    fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError>;

    /// Every pair from `from` on, in key order.
    fn range(&self, from: Bound<&[u8]>) -> Pairs<'_>;

    /// Every pair whose key starts with `prefix`, in key order.
    fn prefix<'a>(&'a self, prefix: &'a [u8]) -> Pairs<'a> {
        Box::new(self.range(Bound::Included(prefix)).take_while(move |pair| match pair {
            Ok((key, _)) => key.starts_with(prefix),
            Err(_) => true,
        }))
    }
}

/// A snapshot install in progress: the next generation of the key space, filled part
/// by part, invisible until it is committed.
pub trait Install: Send {
    /// Adds `writes` to the new generation (durable only once committed).
    fn apply(&mut self, writes: Writes) -> Result<(), EngineError>;

    /// Makes the new generation durable, then current (readers see it whole from now
    /// on), and deletes the one it replaced.
    fn commit(self: Box<Self>) -> Result<(), EngineError>;
}

/// Opens the engine `options` names in `sm_dir` (the data directory's `sm/`), creating
/// it when `sm_dir` is empty.
/// An engine that panics on its damaged files (fjall 3.1 asserts its journal's checksums) is
/// refused as corrupt, like one that reports the damage.
pub fn open(sm_dir: &Path, options: &EngineOptions) -> Result<Arc<dyn Engine>, EngineError> {
    let current = Generations::open(sm_dir)?;
    let files = sm_dir.join(options.kind.name());
    let opened = raftkv::runtime::catch_panic(|| -> Result<Arc<dyn Engine>, EngineError> {
        match options.kind {
            EngineKind::Fjall => Ok(Arc::new(fjall::FjallEngine::open(&files, options, current)?)),
            EngineKind::Sled => Ok(Arc::new(sled::SledEngine::open(&files, options, current)?)),
        }
    });
    opened.unwrap_or_else(|why| {
        Err(EngineError::Corrupt(format!(
            "{} failed while reading its files: {why}",
            options.kind.name()
        )))
    })
}

/// Which generation of the key space is current: `sm/current`, replaced durably when an
/// install commits.
pub(super) struct Generations {
    path: std::path::PathBuf,
    current: u64,
    /// True when `sm/` was empty: the engine is created now, with generation 0.
    fresh: bool,
}

const CURRENT_FILE: &str = "current";

impl Generations {
    /// Reads `sm/current`; in an empty `sm/`, writes generation 0 first.
    pub(super) fn open(sm_dir: &Path) -> Result<Generations, EngineError> {
        let path = sm_dir.join(CURRENT_FILE);
        let mut fresh = false;
        let current = match state_file::read(&path)? {
            Some(bytes) => {
                let bytes: [u8; 8] = bytes
                    .as_slice()
                    .try_into()
                    .map_err(|_| EngineError::Corrupt(format!("{} is not a generation", path.display())))?;
                u64::from_le_bytes(bytes)
            }
            None if std::fs::read_dir(sm_dir)?.next().is_none() => {
                state_file::replace(&path, &0u64.to_le_bytes())?;
                fresh = true;
                0
            }
            None => return Err(EngineError::Corrupt(format!("{} is missing", path.display()))),
        };
        Ok(Generations { path, current, fresh })
    }

    pub(super) fn current(&self) -> u64 {
        self.current
    }

    /// Whether the engine is created now: only then may its current key space be missing.
    pub(super) fn fresh(&self) -> bool {
        self.fresh
    }

    /// Makes `generation` the current one, durably.
    pub(super) fn switch_to(&mut self, generation: u64) -> io::Result<()> {
        state_file::replace(&self.path, &generation.to_le_bytes())?;
        self.current = generation;
        Ok(())
    }

    /// The name of generation `generation`'s key space (a sled tree, a fjall keyspace).
    pub(super) fn space_name(generation: u64) -> String {
        format!("sm-{generation}")
    }

    /// The generation a key space's name names, if it is one of ours.
    pub(super) fn space_generation(name: &[u8]) -> Option<u64> {
        std::str::from_utf8(name).ok()?.strip_prefix("sm-")?.parse().ok()
    }
}

/// For tests: [`open`] in `sm_dir` with a small cache, waiting (up to a deadline) while an
/// engine this process just dropped still holds the directory's lock (sled's threads
/// let go of it a moment after).
#[cfg(test)]
pub(crate) fn open_when_released(sm_dir: &Path, kind: EngineKind) -> Arc<dyn Engine> {
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let options = EngineOptions {
        kind,
        cache_bytes: 8 << 20,
    };
    loop {
        match open(sm_dir, &options) {
            Err(EngineError::Locked) if std::time::Instant::now() < deadline => {
                std::thread::sleep(std::time::Duration::from_millis(2))
            }
            other => return other.unwrap_or_else(|e| panic!("{e}")),
        }
    }
}

/// For tests: the writes of `pairs` (`None`: remove the key).
#[cfg(test)]
pub(crate) fn writes(pairs: &[(&str, Option<&str>)]) -> Writes {
    let mut w = Writes::default();
    for (k, v) in pairs {
        match v {
            Some(v) => w.insert(k.as_bytes().to_vec(), v.as_bytes().to_vec()),
            None => w.remove(k.as_bytes().to_vec()),
        }
    }
    w
}

/// The contract every engine keeps, checked on each.
#[cfg(test)]
mod tests {
    use super::*;

    const KINDS: [EngineKind; 2] = EngineKind::ALL;

    fn get(engine: &dyn Engine, key: &str) -> Option<String> {
        engine
            .get(key.as_bytes())
            .unwrap()
            .map(|v| String::from_utf8(v.to_vec()).unwrap())
    }

    fn keys(view: &dyn View, from: Bound<&[u8]>) -> Vec<String> {
        view.range(from)
            .map(|pair| String::from_utf8(pair.unwrap().0.to_vec()).unwrap())
            .collect()
    }

    #[test]
    fn applies_are_read_back_in_key_order_and_survive_a_reopen() {
        for kind in KINDS {
            let dir = tempfile::tempdir().unwrap();
            let engine = open_when_released(dir.path(), kind);
            assert_eq!(engine.kind(), kind);
            engine
                .apply(writes(&[("b", Some("1")), ("a", Some("1")), ("c", Some("1"))]))
                .unwrap();
            engine.apply(writes(&[("c", None), ("ab", Some("2"))])).unwrap();
            let view = engine.view();
            assert_eq!(keys(view.as_ref(), Bound::Unbounded), ["a", "ab", "b"], "{kind:?}");
            assert_eq!(keys(view.as_ref(), Bound::Excluded(b"a")), ["ab", "b"], "{kind:?}");
            let prefixed: Vec<_> = view.prefix(b"a").map(|p| p.unwrap().0).collect();
            assert_eq!(prefixed, [&b"a"[..], &b"ab"[..]], "{kind:?}");
            drop(view);
            engine.persist().unwrap();
            drop(engine);
            let engine = open_when_released(dir.path(), kind);
            assert_eq!(get(engine.as_ref(), "ab").as_deref(), Some("2"), "{kind:?}");
            assert_eq!(get(engine.as_ref(), "c"), None, "{kind:?}");
        }
    }

    #[test]
    fn an_install_is_invisible_until_committed_then_replaces_everything() {
        for kind in KINDS {
            let dir = tempfile::tempdir().unwrap();
            let engine = open_when_released(dir.path(), kind);
            engine
                .apply(writes(&[("old", Some("1")), ("both", Some("old"))]))
                .unwrap();
            let mut install = engine.start_install().unwrap();
            install.apply(writes(&[("both", Some("new"))])).unwrap();
            install.apply(writes(&[("new", Some("1"))])).unwrap();
            assert_eq!(get(engine.as_ref(), "both").as_deref(), Some("old"), "{kind:?}");
            assert_eq!(get(engine.as_ref(), "new"), None, "{kind:?}");
            install.commit().unwrap();
            assert_eq!(
                keys(engine.view().as_ref(), Bound::Unbounded),
                ["both", "new"],
                "{kind:?}"
            );
            assert_eq!(get(engine.as_ref(), "both").as_deref(), Some("new"), "{kind:?}");
            drop(engine);
            let engine = open_when_released(dir.path(), kind);
            assert_eq!(
                keys(engine.view().as_ref(), Bound::Unbounded),
                ["both", "new"],
                "{kind:?}"
            );
            // And the next install goes on from there.
            let mut install = engine.start_install().unwrap();
            install.apply(writes(&[("third", Some("1"))])).unwrap();
            install.commit().unwrap();
            assert_eq!(keys(engine.view().as_ref(), Bound::Unbounded), ["third"], "{kind:?}");
        }
    }

    #[test]
    fn an_abandoned_install_leaves_the_current_generation_as_it_was() {
        for kind in KINDS {
            let dir = tempfile::tempdir().unwrap();
            let engine = open_when_released(dir.path(), kind);
            engine.apply(writes(&[("kept", Some("1"))])).unwrap();
            let mut install = engine.start_install().unwrap();
            install.apply(writes(&[("lost", Some("1"))])).unwrap();
            drop(install);
            let mut install = engine.start_install().unwrap();
            install.apply(writes(&[("other", Some("1"))])).unwrap();
            drop(install);
            assert_eq!(keys(engine.view().as_ref(), Bound::Unbounded), ["kept"], "{kind:?}");
            engine.persist().unwrap();
            drop(engine);
            let engine = open_when_released(dir.path(), kind);
            assert_eq!(keys(engine.view().as_ref(), Bound::Unbounded), ["kept"], "{kind:?}");
        }
    }

    #[test]
    fn a_damaged_or_missing_generation_record_is_refused() {
        for kind in KINDS {
            let dir = tempfile::tempdir().unwrap();
            drop(open_when_released(dir.path(), kind));
            let current = dir.path().join(CURRENT_FILE);
            let mut bytes = std::fs::read(&current).unwrap();
            *bytes.last_mut().unwrap() ^= 1;
            std::fs::write(&current, &bytes).unwrap();
            let options = EngineOptions {
                kind,
                cache_bytes: 8 << 20,
            };
            let err = open(dir.path(), &options).err().unwrap().to_string();
            assert!(err.contains("current is corrupt"), "{kind:?}: {err}");
            std::fs::remove_file(&current).unwrap();
            let err = open(dir.path(), &options).err().unwrap().to_string();
            assert!(err.contains("current is missing"), "{kind:?}: {err}");
        }
    }
}
