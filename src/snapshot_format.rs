//! The snapshot file's format, read without a node: the framing (header, meta, trailer), the
//! checksum and the records. A node keeps its snapshot in this format (`snapshot.bin`,
//! `node/src/store/snapshot_file.rs` writes and installs it), and a backup
//! (`raftkv snapshot save`) is one such file, so the CLI reads it with this module and never
//! links the node. One format, one reader.
//!
//! Layout (integers little-endian):
//!
//! ```text
//! magic "rkvsnap1" | meta_len: u32 | raft_pb::SnapshotMeta (meta_len bytes)
//! body: length-delimited raft_pb::SnapshotRecords, every key-value pair in key order, then every
//!       client session whole (its results inside), then the removed members
//! trailer: records: u64 | body_len: u64 | crc32: u32 of every byte before the trailer | "rkvE"
//! ```

use std::fs::File;
use std::io::{self, Read};
use std::os::unix::fs::FileExt;

use prost::Message;

use crate::raft_pb as pb;

pub const MAGIC: &[u8; 8] = b"rkvsnap1";
const TRAILER_MAGIC: &[u8; 4] = b"rkvE";
/// magic + meta_len.
pub const HEADER_BYTES: u64 = 12;
/// records + body_len + crc32 + magic.
pub const TRAILER_BYTES: u64 = 24;
/// A snapshot's meta (a log id and a membership) is small; a longer one is damage.
pub const MAX_META_BYTES: u32 = 1 << 20;
/// The largest record a body may hold (a pair's key and value, or one client session);
/// a longer one is damage, not a record to allocate for.
pub const MAX_RECORD_BYTES: u64 = 64 << 20;

/// What the trailer says of the file.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Trailer {
    pub records: u64,
    pub body_len: u64,
    pub crc: u32,
}

impl Trailer {
    pub fn encode(&self) -> [u8; TRAILER_BYTES as usize] {
        let mut out = [0u8; TRAILER_BYTES as usize];
        out[0..8].copy_from_slice(&self.records.to_le_bytes());
        out[8..16].copy_from_slice(&self.body_len.to_le_bytes());
        out[16..20].copy_from_slice(&self.crc.to_le_bytes());
        out[20..24].copy_from_slice(TRAILER_MAGIC);
        out
    }

    pub fn decode(bytes: &[u8; TRAILER_BYTES as usize]) -> Result<Trailer, &'static str> {
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

/// Why a snapshot file cannot be read. Each message is one line, without the file's name
/// (the caller says which file).
#[derive(Debug, thiserror::Error)]
pub enum FormatError {
    #[error("{0}")]
    Io(#[from] io::Error),
    #[error("{0}")]
    Corrupt(String),
}

fn corrupt(why: impl Into<String>) -> FormatError {
    FormatError::Corrupt(why.into())
}

/// A snapshot file's framing, checked: its meta, where its body starts, its trailer.
#[derive(Debug, Clone)]
pub struct Framing {
    pub meta: pb::SnapshotMeta,
    /// The file's length in bytes, header and trailer included.
    pub len: u64,
    pub body_start: u64,
    pub trailer: Trailer,
}

/// Reads and checks the framing of the snapshot file `file` (magic, meta, trailer, lengths):
/// fsyncs the directory holding `path` (the current directory for a bare name), so that a
/// rename or a new file in it is durable: for whoever writes a snapshot or backup file, or the
/// state files beside one.
pub fn sync_parent(path: &std::path::Path) -> io::Result<()> {
    let parent = path
        .parent()
        .filter(|p| !p.as_os_str().is_empty())
        .unwrap_or(std::path::Path::new("."));
    File::open(parent)?.sync_all()
}

/// cheap, it reads the two ends only. The checksum is checked by whoever reads it whole.
pub fn read_framing(file: &File) -> Result<Framing, FormatError> {
    let len = file.metadata()?.len();
    if len < HEADER_BYTES + TRAILER_BYTES {
        return Err(corrupt("it is shorter than a snapshot's header and trailer"));
    }
    let mut header = [0u8; HEADER_BYTES as usize];
    file.read_exact_at(&mut header, 0)?;
    if &header[0..8] != MAGIC {
        return Err(corrupt("it does not start as a snapshot file does"));
    }
    let meta_len = u32::from_le_bytes(header[8..12].try_into().expect("4 bytes"));
    let body_start = HEADER_BYTES + u64::from(meta_len);
    if meta_len > MAX_META_BYTES || body_start + TRAILER_BYTES > len {
        return Err(corrupt("its meta's length is impossible"));
    }
    let mut meta = vec![0u8; meta_len as usize];
    file.read_exact_at(&mut meta, HEADER_BYTES)?;
    let meta =
        pb::SnapshotMeta::decode(meta.as_slice()).map_err(|e| corrupt(format!("its meta does not decode: {e}")))?;
    let mut trailer = [0u8; TRAILER_BYTES as usize];
    file.read_exact_at(&mut trailer, len - TRAILER_BYTES)?;
    let trailer = Trailer::decode(&trailer).map_err(corrupt)?;
    if body_start + trailer.body_len + TRAILER_BYTES != len {
        return Err(corrupt("its length disagrees with its trailer"));
    }
    Ok(Framing {
        meta,
        len,
        body_start,
        trailer,
    })
}

/// Checks a whole snapshot file's checksum as its bytes go by, in order: every byte
/// before the trailer is hashed, the trailer's are kept, and [`ChecksumCheck::finish`]
/// compares the two. The last bytes seen are held back until more come (they may be the
/// trailer), so the file's length need not be known in advance (a snapshot streamed as it
/// is written).
pub struct ChecksumCheck {
    /// The file's length, when known in advance.
    len: Option<u64>,
    seen: u64,
    crc: crc32fast::Hasher,
    /// The last bytes seen, at most a trailer's length: not hashed (yet).
    tail: Vec<u8>,
}

impl ChecksumCheck {
    /// For a file of `len` bytes.
    pub fn new(len: u64) -> Self {
        Self::of(Some(len))
    }

    /// For a file whose length is not known in advance: its last bytes are its trailer.
    pub fn of_unknown_length() -> Self {
        Self::of(None)
    }

    fn of(len: Option<u64>) -> Self {
        ChecksumCheck {
            len,
            seen: 0,
            crc: crc32fast::Hasher::new(),
            tail: Vec::with_capacity(TRAILER_BYTES as usize),
        }
    }

    /// The next `bytes` of the file.
    pub fn update(&mut self, bytes: &[u8]) {
        const TRAILER: usize = TRAILER_BYTES as usize;
        self.seen += bytes.len() as u64;
        if bytes.len() >= TRAILER {
            let (hashed, kept) = bytes.split_at(bytes.len() - TRAILER);
            self.crc.update(&self.tail);
            self.crc.update(hashed);
            self.tail.clear();
            self.tail.extend_from_slice(kept);
        } else {
            self.tail.extend_from_slice(bytes);
            let over = self.tail.len().saturating_sub(TRAILER);
            self.crc.update(&self.tail[..over]);
            self.tail.drain(..over);
        }
    }

    /// Whether the bytes seen were the whole file and its checksum matches: one line
    /// saying what is wrong if not.
    pub fn finish(self) -> Result<(), String> {
        if let Some(len) = self.len.filter(|len| *len != self.seen) {
            return Err(format!("{} bytes instead of {len}", self.seen));
        }
        let trailer: &[u8; TRAILER_BYTES as usize] = self
            .tail
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

/// The records of a snapshot file's body, read from `input` (positioned at the body's start,
/// buffered by the caller) and checked against the trailer (count, length, checksum) as they
/// are read: the last item is an error if the file is damaged.
pub struct RecordReader<R> {
    input: R,
    check: ChecksumCheck,
    trailer: Trailer,
    read_bytes: u64,
    read_records: u64,
    done: bool,
}

impl<R: Read> RecordReader<R> {
    /// `head` is the file's bytes before the body (header and meta), which the checksum covers.
    pub fn new(framing: &Framing, head: &[u8], input: R) -> Self {
        let mut check = ChecksumCheck::new(framing.len);
        check.update(head);
        RecordReader {
            input,
            check,
            trailer: framing.trailer,
            read_bytes: 0,
            read_records: 0,
            done: false,
        }
    }

    fn read_exact(&mut self, buf: &mut [u8]) -> Result<(), FormatError> {
        self.input.read_exact(buf)?;
        self.check.update(buf);
        self.read_bytes += buf.len() as u64;
        Ok(())
    }

    fn next_record(&mut self) -> Result<Option<pb::SnapshotRecord>, FormatError> {
        if self.read_bytes == self.trailer.body_len {
            let mut trailer = [0u8; TRAILER_BYTES as usize];
            self.input.read_exact(&mut trailer)?;
            self.check.update(&trailer);
            let check = std::mem::replace(&mut self.check, ChecksumCheck::new(0));
            check.finish().map_err(corrupt)?;
            if self.read_records != self.trailer.records {
                return Err(corrupt(format!(
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
            return Err(corrupt(format!("a record's length ({len} bytes) is impossible")));
        }
        let mut record = vec![0u8; len as usize];
        self.read_exact(&mut record)?;
        self.read_records += 1;
        pb::SnapshotRecord::decode(record.as_slice())
            .map(Some)
            .map_err(|e| corrupt(format!("record {} does not decode: {e}", self.read_records)))
    }
}

impl<R: Read> Iterator for RecordReader<R> {
    type Item = Result<pb::SnapshotRecord, FormatError>;
    fn next(&mut self) -> Option<Self::Item> {
        if self.done {
            return None;
        }
        let next = self.next_record();
        self.done = !matches!(next, Ok(Some(_)));
        next.transpose()
    }
}
