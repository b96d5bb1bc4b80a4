//! The snapshot file, `snapshot.bin` in the data directory: the newest snapshot this node
//! built or received. A snapshot is a file from end to end: it is built into one, sent
//! from one a chunk at a time, received into one (`snapshot.incoming`) and installed from
//! one, so no step holds more than a buffer of it in memory.
//!
//! The layout, the framing check, the checksum and the record reader are the format's
//! (`raftkv::snapshot_format`, shared with the CLI, which reads backups in the same format);
//! this module is what a node does with such files.
//!
//! Opening a file ([`SnapshotFile::open`]) checks its framing (magic, meta, trailer, lengths)
//! only, which is cheap; the checksum covers the whole file and is checked by whoever reads
//! it all anyway: the sender as it sends ([`ChecksumCheck`]), the receiver as it receives
//! ([`IncomingSnapshot`]), the install as it installs ([`SnapshotRecords`]). A damaged
//! snapshot is refused with one line wherever it is found, never installed.
//!
//! Invariants: `snapshot.bin` is only ever replaced whole (written under another name,
//! fsynced, renamed, the directory fsynced), so a crash leaves the old snapshot or the new
//! one, never part of one; a newer snapshot is never replaced by an older one
//! ([`PublishedSnapshot`]).

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};

use prost::Message;
use raftkv::raft_pb as pb;
pub use raftkv::snapshot_format::ChecksumCheck;
use raftkv::snapshot_format::{self as format, FormatError, Framing, RecordReader, Trailer, MAGIC};
use raftkv::write_behind::WriteBehind;

use crate::convert;
use crate::store::engine::View;
use crate::store::keys::{removed_member, user_key, DATA_PREFIX, REMOVED_MEMBER_PREFIX};
use crate::types::{LogId, SnapshotMeta};

const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Where a snapshot is built before it replaces `snapshot.bin`.
const BUILDING_FILE: &str = "snapshot.tmp";
/// Where a snapshot from the leader is received; the next transfer starts it again.
const INCOMING_FILE: &str = "snapshot.incoming";
/// Where a backup (`raftkv snapshot save`) is written, followed by its number.
const BACKUP_FILE_PREFIX: &str = "backup.";

/// The buffer between a snapshot file and the disk, when it is written or read whole.
const FILE_BUFFER_BYTES: usize = 1 << 20;

/// Where the snapshot file of data directory `dir` is.
pub(super) fn path_in(dir: &Path) -> PathBuf {
    dir.join(SNAPSHOT_FILE)
}

/// Where data directory `dir` receives a snapshot from the leader.
pub fn incoming_path_in(dir: &Path) -> PathBuf {
    dir.join(INCOMING_FILE)
}

/// Removes what a crash may have left of a snapshot being built or received, or of a backup
/// being written.
pub(super) fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for name in [BUILDING_FILE, INCOMING_FILE] {
        remove_if_present(&dir.join(name))?;
    }
    for entry in std::fs::read_dir(dir)? {
        let entry = entry?;
        if entry.file_name().to_string_lossy().starts_with(BACKUP_FILE_PREFIX) {
            remove_if_present(&entry.path())?;
        }
    }
    Ok(())
}

/// Why a snapshot file cannot be used. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum SnapshotFileError {
    #[error("cannot read {path}: {error}")]
    Unreadable { path: PathBuf, error: io::Error },
    #[error("snapshot file {path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: String },
}

impl SnapshotFileError {
    fn corrupt(path: &Path, reason: impl std::fmt::Display) -> Self {
        SnapshotFileError::Corrupt {
            path: path.to_path_buf(),
            reason: reason.to_string(),
        }
    }

    fn from_format(path: &Path, e: FormatError) -> Self {
        match e {
            FormatError::Io(error) => Self::unreadable(path, error),
            FormatError::Corrupt(reason) => Self::corrupt(path, reason),
        }
    }

    fn unreadable(path: &Path, error: io::Error) -> Self {
        SnapshotFileError::Unreadable {
            path: path.to_path_buf(),
            error,
        }
    }
}

impl From<SnapshotFileError> for io::Error {
    fn from(e: SnapshotFileError) -> io::Error {
        match e {
            SnapshotFileError::Corrupt { .. } => io::Error::new(io::ErrorKind::InvalidData, e.to_string()),
            SnapshotFileError::Unreadable { .. } => io::Error::other(e.to_string()),
        }
    }
}

/// A snapshot file, open: what openraft carries as a snapshot's data while it is sent,
/// received and installed (`types::SnapshotData`). Its framing was checked when it was
/// opened; its checksum is checked by whoever reads it whole.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: Arc<File>,
    framing: Framing,
}

impl SnapshotFile {
    /// Opens the snapshot file at `path` and checks its framing: its meta, or `None`
    /// when there is no file.
    pub fn open(path: &Path) -> Result<Option<(SnapshotMeta, SnapshotFile)>, SnapshotFileError> {
        let file = match File::open(path) {
            Ok(f) => f,
            Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
            Err(e) => return Err(SnapshotFileError::unreadable(path, e)),
        };
        Self::from_file(path, file).map(Some)
    }

    fn from_file(path: &Path, file: File) -> Result<(SnapshotMeta, SnapshotFile), SnapshotFileError> {
        let framing = format::read_framing(&file).map_err(|e| SnapshotFileError::from_format(path, e))?;
        let meta = convert::snapshot_meta_from_pb(Some(framing.meta.clone()))
            .map_err(|e| SnapshotFileError::corrupt(path, format!("its meta does not decode: {e}")))?;
        let snapshot = SnapshotFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            framing,
        };
        Ok((meta, snapshot))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The checksum its trailer records (crc32 of every byte before the trailer).
    pub fn checksum(&self) -> u32 {
        self.framing.trailer.crc
    }

    /// The file's length in bytes, header and trailer included.
    pub fn len(&self) -> u64 {
        self.framing.len
    }

    pub fn is_empty(&self) -> bool {
        self.framing.len == 0
    }

    /// Reads `buf.len()` bytes at `offset`. Blocks on disk I/O.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// The records of the body, in order, checked against the trailer (count, length,
    /// checksum) as they are read: the last item is an error if the file is damaged.
    pub(super) fn records(&self) -> SnapshotRecords {
        // The header and meta are part of what the checksum covers.
        let mut head = vec![0u8; self.framing.body_start as usize];
        let read = self.file.read_exact_at(&mut head, 0);
        let input = BufReader::with_capacity(
            FILE_BUFFER_BYTES,
            FileAt::new(self.file.clone(), self.framing.body_start),
        );
        SnapshotRecords {
            path: self.path.clone(),
            records: RecordReader::new(&self.framing, &head, input),
            pending_error: read.err().map(|e| SnapshotFileError::unreadable(&self.path, e)),
            failed: false,
        }
    }
}

/// A file read from an offset on, through a shared handle (reads do not move the handle's
/// position, so other readers of the same file are not disturbed).
struct FileAt {
    file: Arc<File>,
    offset: u64,
}

impl FileAt {
    fn new(file: Arc<File>, offset: u64) -> Self {
        FileAt { file, offset }
    }
}

impl Read for FileAt {
    fn read(&mut self, buf: &mut [u8]) -> io::Result<usize> {
        let n = self.file.read_at(buf, self.offset)?;
        self.offset += n as u64;
        Ok(n)
    }
}

/// The records of a snapshot file's body (see [`SnapshotFile::records`]).
pub(super) struct SnapshotRecords {
    path: PathBuf,
    records: RecordReader<BufReader<FileAt>>,
    /// The header could not be read: the only item, then the end.
    pending_error: Option<SnapshotFileError>,
    failed: bool,
}

impl Iterator for SnapshotRecords {
    type Item = Result<pb::SnapshotRecord, SnapshotFileError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.failed {
            return None;
        }
        if let Some(e) = self.pending_error.take() {
            self.failed = true;
            return Some(Err(e));
        }
        let path = &self.path;
        self.records
            .next()
            .map(|r| r.map_err(|e| SnapshotFileError::from_format(path, e)))
    }
}

/// Writes a snapshot file: header, records, trailer, under a name of its own until
/// [`SnapshotWriter::finish`] makes it durable.
pub(super) struct SnapshotWriter {
    path: PathBuf,
    out: BufWriter<WriteBehind>,
    crc: crc32fast::Hasher,
    records: u64,
    body_len: u64,
}

impl SnapshotWriter {
    pub(super) fn create(path: PathBuf, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        // A fresh file, never one a reader may still hold open.
        remove_if_present(&path)?;
        let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, WriteBehind::new(File::create(&path)?));
        let mut writer = SnapshotWriter {
            path,
            out,
            crc: crc32fast::Hasher::new(),
            records: 0,
            body_len: 0,
        };
        let meta = convert::snapshot_meta_to_pb(meta).encode_to_vec();
        writer.write(MAGIC)?;
        writer.write(&(meta.len() as u32).to_le_bytes())?;
        writer.write(&meta)?;
        Ok(writer)
    }

    fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.crc.update(bytes);
        self.out.write_all(bytes)
    }

    pub(super) fn record(&mut self, record: pb::snapshot_record::Record) -> io::Result<()> {
        let encoded = pb::SnapshotRecord { record: Some(record) }.encode_length_delimited_to_vec();
        self.write(&encoded)?;
        self.records += 1;
        self.body_len += encoded.len() as u64;
        Ok(())
    }

    /// Writes the trailer and makes the file durable; returns its path.
    pub(super) fn finish(mut self) -> io::Result<PathBuf> {
        let trailer = Trailer {
            records: self.records,
            body_len: self.body_len,
            crc: self.crc.clone().finalize(),
        };
        self.out.write_all(&trailer.encode())?;
        let file = self.out.into_inner().map_err(|e| e.into_error())?.into_file();
        file.sync_all()?;
        Ok(self.path)
    }
}

fn remove_if_present(path: &Path) -> io::Result<()> {
    match std::fs::remove_file(path) {
        Err(e) if e.kind() != io::ErrorKind::NotFound => Err(e),
        _ => Ok(()),
    }
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// The last log id of the snapshot `snapshot.bin` holds, shared by everything that
/// replaces it (a build runs beside the installs), so that an older snapshot never
/// replaces a newer one.
#[derive(Clone, Default)]
pub(super) struct PublishedSnapshot {
    last_log_id: Arc<Mutex<Option<LogId>>>,
}

impl PublishedSnapshot {
    pub(super) fn new(last_log_id: Option<LogId>) -> Self {
        PublishedSnapshot {
            last_log_id: Arc::new(Mutex::new(last_log_id)),
        }
    }

    /// Makes the durable file at `from` data directory `dir`'s snapshot (renamed over
    /// `snapshot.bin`, the directory fsynced) unless the one there is as new or newer;
    /// whether it did.
    fn publish(&self, dir: &Path, from: &Path, last_log_id: Option<LogId>) -> io::Result<bool> {
        let mut published = self.last_log_id.lock().expect("published snapshot lock poisoned");
        if published.is_some() && last_log_id <= *published {
            return Ok(false);
        }
        std::fs::rename(from, path_in(dir))?;
        sync_dir(dir)?;
        *published = last_log_id;
        Ok(true)
    }
}

/// Writes every key-value pair `view` shows, in key order, then the client `sessions`
/// and the removed members, as the snapshot `meta` names, into a new durable file at `path`.
/// Blocks on disk I/O for as long as the scan takes.
fn write_file(
    path: PathBuf,
    meta: &SnapshotMeta,
    view: &dyn View,
    sessions: Vec<pb::ClientSession>,
    cancelled: Option<&AtomicBool>,
) -> io::Result<PathBuf> {
    use pb::snapshot_record::Record;
    let mut writer = SnapshotWriter::create(path, meta)?;
    for pair in view.prefix(&[DATA_PREFIX]) {
        if cancelled.is_some_and(|c| c.load(Ordering::Relaxed)) {
            return Err(io::Error::new(io::ErrorKind::Interrupted, "cancelled"));
        }
        let (k, value) = pair?;
        writer.record(Record::Pair(pb::KeyValue {
            key: user_key(&k),
            value,
        }))?;
    }
    for session in sessions {
        writer.record(Record::Session(session))?;
    }
    for pair in view.prefix(&[REMOVED_MEMBER_PREFIX]) {
        let (k, v) = pair?;
        if let Some((id, log_index)) = removed_member(&k, &v) {
            writer.record(Record::RemovedMember(pb::RemovedMember { id, log_index }))?;
        }
    }
    writer.finish()
}

/// [`write_file`] into data directory `dir`'s snapshot file (through `snapshot.tmp`).
/// Returns the file, open. An older snapshot than the one already there is not kept: its
/// file is returned open and already removed.
pub(super) fn build(
    dir: &Path,
    published: &PublishedSnapshot,
    meta: &SnapshotMeta,
    view: &dyn View,
    sessions: Vec<pb::ClientSession>,
) -> io::Result<SnapshotFile> {
    let built = write_file(dir.join(BUILDING_FILE), meta, view, sessions, None)?;
    let (_, file) = SnapshotFile::from_file(&built, File::open(&built)?)?;
    if published.publish(dir, &built, meta.last_log_id)? {
        Ok(SnapshotFile {
            path: path_in(dir),
            ..file
        })
    } else {
        std::fs::remove_file(&built)?;
        Ok(file)
    }
}

/// Where a backup is written in data directory `dir`: a name of its own per backup
/// (`number`), removed as soon as it is open, and by [`remove_leftovers`] after a crash.
pub(super) fn backup_path_in(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{BACKUP_FILE_PREFIX}{number}"))
}

/// [`write_file`] into `path`, for a backup: the node's own snapshot is left alone. Returns
/// the file, open, its name already removed (the open file is all there is of it, so nothing
/// is left behind however the backup ends). Stops early (an `Interrupted` error) once
/// `cancelled` is set. Blocks on disk I/O.
pub(super) fn build_backup(
    path: PathBuf,
    meta: &SnapshotMeta,
    view: &dyn View,
    sessions: Vec<pb::ClientSession>,
    cancelled: &AtomicBool,
) -> io::Result<SnapshotFile> {
    let built = write_file(path.clone(), meta, view, sessions, Some(cancelled)).inspect_err(|_| {
        // A disk that filled up is the likely cause: give the space back at once.
        let _ = remove_if_present(&path);
    })?;
    let opened = SnapshotFile::from_file(&built, File::open(&built)?);
    remove_if_present(&built)?;
    Ok(opened?.1)
}

/// Makes `snapshot` data directory `dir`'s snapshot before it is installed: renamed when
/// it is in `dir` already (received there), copied in first when it is not. Blocks on
/// disk I/O.
pub(super) fn adopt(
    dir: &Path,
    published: &PublishedSnapshot,
    meta: &SnapshotMeta,
    snapshot: SnapshotFile,
) -> io::Result<SnapshotFile> {
    let target = path_in(dir);
    if snapshot.path == target {
        return Ok(snapshot);
    }
    let from = if snapshot.path.parent() == Some(dir) {
        snapshot.file.sync_all()?;
        snapshot.path.clone()
    } else {
        let copy = incoming_path_in(dir);
        remove_if_present(&copy)?;
        let mut out = WriteBehind::new(File::create(&copy)?);
        io::copy(
            &mut BufReader::with_capacity(FILE_BUFFER_BYTES, FileAt::new(snapshot.file.clone(), 0)),
            &mut out,
        )?;
        out.into_file().sync_all()?;
        copy
    };
    if published.publish(dir, &from, meta.last_log_id)? {
        Ok(SnapshotFile {
            path: target,
            ..snapshot
        })
    } else {
        // A newer one was published meanwhile: this one is installed but not kept.
        remove_if_present(&from)?;
        Ok(snapshot)
    }
}

/// A snapshot being received from the leader into `snapshot.incoming`: started afresh by
/// every transfer (a transfer that broke off leaves a file the next one replaces), written
/// as chunks arrive, its checksum checked as they go by.
pub struct IncomingSnapshot {
    path: PathBuf,
    out: BufWriter<WriteBehind>,
    check: ChecksumCheck,
    written: u64,
}

impl IncomingSnapshot {
    /// Starts receiving a snapshot file of `len` bytes into `path`. Blocks on disk I/O.
    pub fn create(path: PathBuf, len: u64) -> io::Result<IncomingSnapshot> {
        remove_if_present(&path)?;
        let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, WriteBehind::new(File::create(&path)?));
        Ok(IncomingSnapshot {
            path,
            out,
            check: ChecksumCheck::new(len),
            written: 0,
        })
    }

    /// How many bytes were received so far.
    pub fn written(&self) -> u64 {
        self.written
    }

    /// The next bytes of the file. Blocks on disk I/O.
    pub fn write(&mut self, bytes: &[u8]) -> io::Result<()> {
        self.out.write_all(bytes)?;
        self.check.update(bytes);
        self.written += bytes.len() as u64;
        Ok(())
    }

    /// Checks that the file arrived whole and undamaged, makes it durable and opens it.
    /// Blocks on disk I/O.
    pub fn finish(self) -> Result<(SnapshotMeta, SnapshotFile), SnapshotFileError> {
        let path = self.path;
        self.check
            .finish()
            .map_err(|why| SnapshotFileError::corrupt(&path, format!("the snapshot received is damaged: {why}")))?;
        let file = self
            .out
            .into_inner()
            .map_err(|e| SnapshotFileError::unreadable(&path, e.into_error()))?
            .into_file();
        file.sync_all().map_err(|e| SnapshotFileError::unreadable(&path, e))?;
        SnapshotFile::from_file(
            &path,
            File::open(&path).map_err(|e| SnapshotFileError::unreadable(&path, e))?,
        )
    }
}
