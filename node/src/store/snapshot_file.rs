//! The snapshot file, `snapshot.bin` in the data directory: the newest snapshot this node
//! built or received. A snapshot is a file from end to end: it is built into one, sent
//! from one a chunk at a time, received into one (`snapshot.incoming`) and installed from
//! one, so no step holds more than a buffer of it in memory.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "rkvsnap1" | meta_len: u32 | pb::SnapshotMeta (meta_len bytes)
//! body: length-delimited pb::SnapshotRecords, every key-value pair in key order, then every
//!       client session whole (its results inside)
//! trailer: records: u64 | body_len: u64 | crc32: u32 of every byte before the trailer | "rkvE"
//! ```
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
use std::sync::{Arc, Mutex};

use prost::Message;
use raftkv::raft_pb as pb;

use crate::convert;
use crate::store::engine::View;
use crate::store::keys::{removed_member, user_key, DATA_PREFIX, REMOVED_MEMBER_PREFIX};
use crate::types::{LogId, SnapshotMeta};

const SNAPSHOT_FILE: &str = "snapshot.bin";
/// Where a snapshot is built before it replaces `snapshot.bin`.
const BUILDING_FILE: &str = "snapshot.tmp";
/// Where a snapshot from the leader is received; the next transfer starts it again.
const INCOMING_FILE: &str = "snapshot.incoming";

const MAGIC: &[u8; 8] = b"rkvsnap1";
const TRAILER_MAGIC: &[u8; 4] = b"rkvE";
/// magic + meta_len.
const HEADER_BYTES: u64 = 12;
/// records + body_len + crc32 + magic.
pub const TRAILER_BYTES: u64 = 24;
/// A snapshot's meta (a log id and a membership) is small; a longer one is damage.
const MAX_META_BYTES: u32 = 1 << 20;
/// The largest record a body may hold (a pair's key and value, or one client session);
/// a longer one is damage, not a record to allocate for.
const MAX_RECORD_BYTES: u64 = 64 << 20;
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

/// Removes what a crash may have left of a snapshot being built or received.
pub(super) fn remove_leftovers(dir: &Path) -> io::Result<()> {
    for name in [BUILDING_FILE, INCOMING_FILE] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != io::ErrorKind::NotFound => return Err(e),
            _ => {}
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

/// What the trailer says of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
struct Trailer {
    records: u64,
    body_len: u64,
    crc: u32,
}

impl Trailer {
    fn encode(&self) -> [u8; TRAILER_BYTES as usize] {
        let mut out = [0u8; TRAILER_BYTES as usize];
        out[0..8].copy_from_slice(&self.records.to_le_bytes());
        out[8..16].copy_from_slice(&self.body_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.crc.to_le_bytes());
        out[20..24].copy_from_slice(TRAILER_MAGIC);
        out
    }

    fn decode(bytes: &[u8; TRAILER_BYTES as usize]) -> Result<Trailer, &'static str> {
        if &bytes[20..24] != TRAILER_MAGIC {
            return Err("its trailer is missing (a file cut short?)");
        }
        let u64_at = |i: usize| u64::from_le_bytes(bytes[i..i + 8].try_into().expect("8 bytes"));
        Ok(Trailer {
            records: u64_at(0),
            body_len: u64_at(8),
            crc: u32::from_le_bytes(bytes[16..20].try_into().expect("4 bytes")),
        })
    }
}

/// A snapshot file, open: what openraft carries as a snapshot's data while it is sent,
/// received and installed (`types::SnapshotData`). Its framing was checked when it was
/// opened; its checksum is checked by whoever reads it whole.
#[derive(Debug)]
pub struct SnapshotFile {
    path: PathBuf,
    file: Arc<File>,
    len: u64,
    /// Where the body starts.
    body_start: u64,
    trailer: Trailer,
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
        let unreadable = |e| SnapshotFileError::unreadable(path, e);
        let corrupt = |why: &str| SnapshotFileError::corrupt(path, why);
        let len = file.metadata().map_err(unreadable)?.len();
        if len < HEADER_BYTES + TRAILER_BYTES {
            return Err(corrupt("it is shorter than a snapshot's header and trailer"));
        }
        let mut header = [0u8; HEADER_BYTES as usize];
        file.read_exact_at(&mut header, 0).map_err(unreadable)?;
        if &header[0..8] != MAGIC {
            return Err(corrupt("it does not start as a snapshot file does"));
        }
        let meta_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
        let body_start = HEADER_BYTES + u64::from(meta_len);
        if meta_len > MAX_META_BYTES || body_start + TRAILER_BYTES > len {
            return Err(corrupt("its meta's length is impossible"));
        }
        let mut meta = vec![0u8; meta_len as usize];
        file.read_exact_at(&mut meta, HEADER_BYTES).map_err(unreadable)?;
        let meta = pb::SnapshotMeta::decode(meta.as_slice())
            .map_err(convert::DecodeError::from)
            .and_then(|m| convert::snapshot_meta_from_pb(Some(m)).map_err(convert::DecodeError::from))
            .map_err(|e| SnapshotFileError::corrupt(path, format!("its meta does not decode: {e}")))?;
        let mut trailer = [0u8; TRAILER_BYTES as usize];
        file.read_exact_at(&mut trailer, len - TRAILER_BYTES)
            .map_err(unreadable)?;
        let trailer = Trailer::decode(&trailer).map_err(corrupt)?;
        if body_start + trailer.body_len + TRAILER_BYTES != len {
            return Err(corrupt("its length disagrees with its trailer"));
        }
        let snapshot = SnapshotFile {
            path: path.to_path_buf(),
            file: Arc::new(file),
            len,
            body_start,
            trailer,
        };
        Ok((meta, snapshot))
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// The file's length in bytes, header and trailer included.
    pub fn len(&self) -> u64 {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// Reads `buf.len()` bytes at `offset`. Blocks on disk I/O.
    pub fn read_at(&self, buf: &mut [u8], offset: u64) -> io::Result<()> {
        self.file.read_exact_at(buf, offset)
    }

    /// The records of the body, in order, checked against the trailer (count, length,
    /// checksum) as they are read: the last item is an error if the file is damaged.
    pub(super) fn records(&self) -> SnapshotRecords {
        let mut check = ChecksumCheck::new(self.len);
        // The header and meta are part of what the checksum covers.
        let mut head = vec![0u8; self.body_start as usize];
        let read = self.file.read_exact_at(&mut head, 0);
        check.update(&head);
        SnapshotRecords {
            path: self.path.clone(),
            input: BufReader::with_capacity(FILE_BUFFER_BYTES, FileAt::new(self.file.clone(), self.body_start)),
            check,
            trailer: self.trailer,
            read_bytes: 0,
            read_records: 0,
            done: false,
            pending_error: read.err().map(|e| SnapshotFileError::unreadable(&self.path, e)),
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

/// Checks a whole snapshot file's checksum as its bytes go by, in order: every byte
/// before the trailer is hashed, the trailer's are kept, and [`ChecksumCheck::finish`]
/// compares the two.
pub struct ChecksumCheck {
    len: u64,
    seen: u64,
    crc: crc32fast::Hasher,
    trailer: Vec<u8>,
}

impl ChecksumCheck {
    /// For a file of `len` bytes.
    pub fn new(len: u64) -> Self {
        ChecksumCheck {
            len,
            seen: 0,
            crc: crc32fast::Hasher::new(),
            trailer: Vec::with_capacity(TRAILER_BYTES as usize),
        }
    }

    /// The next `bytes` of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        let trailer_start = self.len.saturating_sub(TRAILER_BYTES);
        let hashed = trailer_start.saturating_sub(self.seen).min(bytes.len() as u64) as usize;
        self.crc.update(&bytes[..hashed]);
        self.trailer.extend_from_slice(&bytes[hashed..]);
        self.seen += bytes.len() as u64;
    }

    /// Whether the bytes seen were the whole file and its checksum matches: one line
    /// saying what is wrong if not.
    pub fn finish(self) -> Result<(), String> {
        if self.seen != self.len {
            return Err(format!("{} bytes instead of {}", self.seen, self.len));
        }
        let trailer: &[u8; TRAILER_BYTES as usize] = self
            .trailer
            .as_slice()
            .try_into()
            .map_err(|_| "it is shorter than a snapshot's trailer".to_string())?;
        let trailer = Trailer::decode(trailer)?;
        let crc = self.crc.finalize();
        if crc != trailer.crc {
            return Err(format!(
                "its checksum does not match (crc32 {crc:08x}, the trailer says {:08x})",
                trailer.crc
            ));
        }
        Ok(())
    }
}

/// The records of a snapshot file's body (see [`SnapshotFile::records`]).
pub(super) struct SnapshotRecords {
    path: PathBuf,
    input: BufReader<FileAt>,
    check: ChecksumCheck,
    trailer: Trailer,
    read_bytes: u64,
    read_records: u64,
    done: bool,
    pending_error: Option<SnapshotFileError>,
}

impl SnapshotRecords {
    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), SnapshotFileError> {
        self.input
            .read_exact(buf)
            .map_err(|e| SnapshotFileError::unreadable(&self.path, e))?;
        self.check.update(buf);
        self.read_bytes += buf.len() as u64;
        Ok(())
    }

    fn corrupt(&self, why: impl std::fmt::Display) -> SnapshotFileError {
        SnapshotFileError::corrupt(&self.path, why)
    }

    fn next_record(&mut self) -> Result<Option<pb::SnapshotRecord>, SnapshotFileError> {
        if self.read_bytes == self.trailer.body_len {
            let mut trailer = [0u8; TRAILER_BYTES as usize];
            self.input
                .read_exact(&mut trailer)
                .map_err(|e| SnapshotFileError::unreadable(&self.path, e))?;
            self.check.update(&trailer);
            let check = std::mem::replace(&mut self.check, ChecksumCheck::new(0));
            check.finish().map_err(|why| self.corrupt(why))?;
            if self.read_records != self.trailer.records {
                return Err(self.corrupt(format!(
                    "it holds {} records, its trailer says {}",
                    self.read_records, self.trailer.records
                )));
            }
            return Ok(None);
        }
        // A varint length, a byte at a time (the reader is buffered).
        let mut len = 0u64;
        for shift in (0..64).step_by(7) {
            let mut byte = [0u8; 1];
            self.read_exact(&mut byte)?;
            len |= u64::from(byte[0] & 0x7f) << shift;
            if byte[0] & 0x80 == 0 {
                break;
            }
        }
        if len > MAX_RECORD_BYTES || self.read_bytes + len > self.trailer.body_len {
            return Err(self.corrupt(format!("a record's length ({len} bytes) is impossible")));
        }
        let mut record = vec![0u8; len as usize];
        self.read_exact(&mut record)?;
        self.read_records += 1;
        pb::SnapshotRecord::decode(record.as_slice())
            .map(Some)
            .map_err(|e| self.corrupt(format!("record {} does not decode: {e}", self.read_records)))
    }
}

impl Iterator for SnapshotRecords {
    type Item = Result<pb::SnapshotRecord, SnapshotFileError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        if let Some(e) = self.pending_error.take() {
            self.done = true;
            return Some(Err(e));
        }
        match self.next_record() {
            Ok(Some(record)) => Some(Ok(record)),
            Ok(None) => {
                self.done = true;
                None
            }
            Err(e) => {
                self.done = true;
                Some(Err(e))
            }
        }
    }
}

/// Writes a snapshot file: header, records, trailer, under a name of its own until
/// [`SnapshotWriter::finish`] makes it durable.
pub(super) struct SnapshotWriter {
    path: PathBuf,
    out: BufWriter<File>,
    crc: crc32fast::Hasher,
    records: u64,
    body_len: u64,
}

impl SnapshotWriter {
    pub(super) fn create(path: PathBuf, meta: &SnapshotMeta) -> io::Result<SnapshotWriter> {
        // A fresh file, never one a reader may still hold open.
        remove_if_present(&path)?;
        let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, File::create(&path)?);
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
        let file = self.out.into_inner().map_err(|e| e.into_error())?;
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
/// and the removed members, as the snapshot `meta` names, into data directory `dir`'s snapshot file (through
/// `snapshot.tmp`). Returns the file, open. An older snapshot than the one already there
/// is not kept: its file is returned open and already removed. Blocks on disk I/O for
/// as long as the scan takes.
pub(super) fn build(
    dir: &Path,
    published: &PublishedSnapshot,
    meta: &SnapshotMeta,
    view: &dyn View,
    sessions: Vec<pb::ClientSession>,
) -> io::Result<SnapshotFile> {
    use pb::snapshot_record::Record;
    let mut writer = SnapshotWriter::create(dir.join(BUILDING_FILE), meta)?;
    for pair in view.prefix(&[DATA_PREFIX]) {
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
    let built = writer.finish()?;
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
        let mut out = File::create(&copy)?;
        io::copy(
            &mut BufReader::with_capacity(FILE_BUFFER_BYTES, FileAt::new(snapshot.file.clone(), 0)),
            &mut out,
        )?;
        out.sync_all()?;
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
    out: BufWriter<File>,
    check: ChecksumCheck,
    written: u64,
}

impl IncomingSnapshot {
    /// Starts receiving a snapshot file of `len` bytes into `path`. Blocks on disk I/O.
    pub fn create(path: PathBuf, len: u64) -> io::Result<IncomingSnapshot> {
        remove_if_present(&path)?;
        let out = BufWriter::with_capacity(FILE_BUFFER_BYTES, File::create(&path)?);
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
            .map_err(|e| SnapshotFileError::unreadable(&path, e.into_error()))?;
        file.sync_all().map_err(|e| SnapshotFileError::unreadable(&path, e))?;
        SnapshotFile::from_file(
            &path,
            File::open(&path).map_err(|e| SnapshotFileError::unreadable(&path, e))?,
        )
    }
}
