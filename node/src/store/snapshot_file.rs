//! Snapshot files in the data directory. A node keeps no snapshot file of its own: its
//! state machine is durable (the log is purged only behind what the engine has persisted),
//! so its current snapshot is the state machine itself, at the point it has applied
//! ([`UnwrittenSnapshot`]: a consistent view). Such a view is written out, in the snapshot
//! file format, only when a follower needs a snapshot (straight into the transfer's chunks,
//! `network.rs`: the sender writes no file) or for a backup; a follower receives one into
//! `snapshot.incoming`, which becomes `snapshot.bin` while it is installed (so that a crash
//! mid-install is finished at the next start) and is removed once the engine holds it (or, by
//! `raft_service.rs`, when its transfer ends without an install). So no
//! step holds more than a buffer of a snapshot in memory, and at rest the disk holds the
//! data once (the engine) plus the log.
//!
//! The layout, the framing check, the checksum and the record reader are the format's
//! (`raftkv::snapshot_format`, shared with the CLI, which reads backups in the same format);
//! this module is what a node does with such files.
//!
//! Opening a file ([`SnapshotFile::open`]) checks its framing (magic, meta, trailer, lengths)
//! only, which is cheap; the checksum covers the whole file and is checked by whoever reads
//! it all anyway: the receiver as it receives ([`IncomingSnapshot`], with a [`ChecksumCheck`]),
//! the install as it installs ([`SnapshotRecords`]); a sender writes the bytes as it sends
//! them from the state machine, so there is no file of its own to check. A damaged
//! snapshot is refused with one line wherever it is found, never installed.
//!
//! Invariants: `snapshot.bin` only ever appears whole (received under another name, fsynced,
//! renamed, the directory fsynced), so a crash leaves a whole snapshot to install or none;
//! it exists only from the moment an install starts until the engine holds that snapshot.

use std::fs::File;
use std::io::{self, BufReader, BufWriter, Read, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use prost::Message;
use raftkv::raft_pb as pb;
use raftkv::snapshot_format::ChecksumCheck;
use raftkv::snapshot_format::{self as format, FormatError, Framing, RecordReader, Trailer, MAGIC};
use raftkv::write_behind::WriteBehind;

use crate::convert;
use crate::store::engine::View;
use crate::store::keys::{removed_member, user_key, DATA_PREFIX, REMOVED_MEMBER_PREFIX};
use crate::types::SnapshotMeta;

/// A received snapshot while it is installed.
const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Where versions before this one built the node's own snapshot (removed if found).
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

/// Removes data directory `dir`'s `snapshot.bin`, once the engine durably holds what it had.
pub(super) fn remove_installed(dir: &Path) -> io::Result<()> {
    remove_if_present(&path_in(dir))
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

/// Writes a snapshot in the file format: header, records, trailer, into `W` (a file, or the
/// chunks of a transfer).
pub(crate) struct SnapshotWriter<W: Write> {
    out: W,
    crc: crc32fast::Hasher,
    records: u64,
    body_len: u64,
}

impl<W: Write> SnapshotWriter<W> {
    /// Starts a snapshot of `meta` in `out`: writes its header.
    pub(crate) fn new(out: W, meta: &SnapshotMeta) -> io::Result<SnapshotWriter<W>> {
        let mut writer = SnapshotWriter {
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

    pub(crate) fn record(&mut self, record: pb::snapshot_record::Record) -> io::Result<()> {
        let encoded = pb::SnapshotRecord { record: Some(record) }.encode_length_delimited_to_vec();
        self.write(&encoded)?;
        self.records += 1;
        self.body_len += encoded.len() as u64;
        Ok(())
    }

    /// Writes the trailer and flushes; returns what it wrote into.
    pub(crate) fn finish(mut self) -> io::Result<W> {
        let trailer = Trailer {
            records: self.records,
            body_len: self.body_len,
            crc: self.crc.clone().finalize(),
        };
        self.out.write_all(&trailer.encode())?;
        self.out.flush()?;
        Ok(self.out)
    }
}

impl SnapshotWriter<BufWriter<WriteBehind>> {
    /// Starts a new snapshot file at `path` (a fresh file, never one a reader may still hold open).
    pub(crate) fn create(path: &Path, meta: &SnapshotMeta) -> io::Result<Self> {
        remove_if_present(path)?;
        let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, WriteBehind::new(File::create(path)?));
        Self::new(out, meta)
    }

    /// Writes the trailer and makes the file durable.
    pub(crate) fn finish_file(self) -> io::Result<()> {
        let out = self.finish()?;
        out.into_inner().map_err(|e| e.into_error())?.into_file().sync_all()
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

/// Writes every key-value pair `view` shows, in key order, then the client `sessions`
/// and the removed members, into `writer`. Stops early (an `Interrupted` error) once
/// `cancelled` is set. Blocks on disk I/O for as long as the scan takes.
fn write_records<W: Write>(
    writer: &mut SnapshotWriter<W>,
    view: &dyn View,
    sessions: Vec<pb::ClientSession>,
    cancelled: &AtomicBool,
) -> io::Result<()> {
    use pb::snapshot_record::Record;
    for pair in view.prefix(&[DATA_PREFIX]) {
        if cancelled.load(Ordering::Relaxed) {
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
    Ok(())
}

/// Where a backup is written in data directory `dir`: a name of its own per backup
/// (`number`), removed as soon as it is open, and by [`remove_leftovers`] after a crash.
pub(super) fn backup_path_in(dir: &Path, number: u64) -> PathBuf {
    dir.join(format!("{BACKUP_FILE_PREFIX}{number}"))
}

/// Writes the snapshot `meta` names (the pairs `view` shows, and `sessions`) into a new
/// durable file at `path`, for a backup. Returns the file, open, its name
/// already removed (the open file is all there is of it, so nothing is left behind however
/// the backup ends). Stops early (an `Interrupted` error) once `cancelled` is
/// set. Blocks on disk I/O.
pub(super) fn write_unlinked(
    path: PathBuf,
    meta: &SnapshotMeta,
    view: &dyn View,
    sessions: Vec<pb::ClientSession>,
    cancelled: &AtomicBool,
) -> io::Result<SnapshotFile> {
    let written = (|| {
        let mut writer = SnapshotWriter::create(&path, meta)?;
        write_records(&mut writer, view, sessions, cancelled)?;
        writer.finish_file()
    })();
    if let Err(e) = written {
        // A disk that filled up is the likely cause: give the space back at once.
        let _ = remove_if_present(&path);
        return Err(e);
    }
    let opened = SnapshotFile::from_file(&path, File::open(&path)?);
    remove_if_present(&path)?;
    Ok(opened?.1)
}

/// Makes `snapshot` data directory `dir`'s `snapshot.bin` before it is installed: renamed
/// when it is in `dir` already (received there), copied in first when it is not. Blocks on
/// disk I/O.
pub(super) fn adopt(dir: &Path, snapshot: SnapshotFile) -> io::Result<SnapshotFile> {
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
    std::fs::rename(&from, &target)?;
    sync_dir(dir)?;
    Ok(SnapshotFile {
        path: target,
        ..snapshot
    })
}

/// A snapshot not written anywhere: the state machine at the snapshot's point, as a
/// consistent view and the client sessions of the same point. A node's current snapshot is
/// one of these (see the module doc); it becomes a file only when it is sent.
pub struct UnwrittenSnapshot {
    meta: SnapshotMeta,
    view: Box<dyn View>,
    sessions: Vec<pb::ClientSession>,
}

impl UnwrittenSnapshot {
    /// The state `view` shows, with `sessions`, as the snapshot `meta` names.
    pub(super) fn new(meta: SnapshotMeta, view: Box<dyn View>, sessions: Vec<pb::ClientSession>) -> Self {
        UnwrittenSnapshot { meta, view, sessions }
    }

    /// Writes it into a file at `path`, for a backup; see [`write_unlinked`].
    pub(super) fn write_unlinked(self, path: PathBuf, cancelled: &AtomicBool) -> io::Result<SnapshotFile> {
        write_unlinked(path, &self.meta, self.view.as_ref(), self.sessions, cancelled)
    }

    /// Writes it, in the snapshot file format, into `out` (the chunks of a transfer) and
    /// returns `out`. Stops early (an `Interrupted` error) once `cancelled` is set, or at
    /// `out`'s first error. Blocks on disk I/O for as long as the scan takes.
    pub fn write_into<W: Write>(self, out: W, cancelled: &AtomicBool) -> io::Result<W> {
        let mut writer = SnapshotWriter::new(out, &self.meta)?;
        write_records(&mut writer, self.view.as_ref(), self.sessions, cancelled)?;
        writer.finish()
    }

    /// Writes it into a durable file at `path` and leaves it there: to install another state
    /// machine's view (openraft's storage suite does), and for tests.
    pub(crate) fn write_to(self, path: PathBuf) -> io::Result<PathBuf> {
        let mut writer = SnapshotWriter::create(&path, &self.meta)?;
        write_records(&mut writer, self.view.as_ref(), self.sessions, &AtomicBool::new(false))?;
        writer.finish_file()?;
        Ok(path)
    }
}

impl std::fmt::Debug for UnwrittenSnapshot {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("UnwrittenSnapshot")
            .field("meta", &self.meta)
            .finish_non_exhaustive()
    }
}

/// What openraft carries as a snapshot's data (`types::SnapshotData`): a file (received), or
/// the state machine's view (the node's own, written out only as it is sent).
#[derive(Debug)]
pub enum SnapshotData {
    File(SnapshotFile),
    Unwritten(UnwrittenSnapshot),
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
    /// Starts receiving a snapshot file of `len` bytes (None: not known in advance, the
    /// sender writes it as it sends it) into `path`. Blocks on disk I/O.
    pub fn create(path: PathBuf, len: Option<u64>) -> io::Result<IncomingSnapshot> {
        remove_if_present(&path)?;
        let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, WriteBehind::new(File::create(&path)?));
        Ok(IncomingSnapshot {
            path,
            out,
            check: len.map_or_else(ChecksumCheck::of_unknown_length, ChecksumCheck::new),
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
