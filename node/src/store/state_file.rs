//! Small state files: a data directory's identity, and beside the Raft log the vote, the
//! purge point and the commit marker. One home for how such a file is laid out, read,
//! and replaced, so that each of them is checked the same way.
//!
//! A file holds one record:
//!
//! ```text
//! magic "rkv1" | len: u32 LE | crc32: u32 LE of the payload | payload (len bytes)
//! ```
//!
//! [`replace`] writes the new record under a temporary name, fdatasyncs it, renames it
//! over the old one and fsyncs the directory: a crash leaves the old record or the new
//! one, never a mix, and the new one is durable when it returns. [`Overwriter`] rewrites
//! a record in place without a sync, for a marker that may lag or be lost (a torn one
//! fails its checksum).
//!
//! Invariant: a record is either whole (magic, length and checksum agree) or refused as
//! [`StateFileError::Corrupt`]; what a caller does with a refusal is its own rule (the
//! vote: refuse to start; the commit marker: read it as none).

use std::fs::{File, OpenOptions};
use std::io::{self, Write};
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"rkv1";
const HEADER: usize = 12;
/// The largest payload a state file holds; anything longer is damage, not a record.
const MAX_PAYLOAD_BYTES: usize = 64 * 1024;

/// Why a state file cannot be read. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum StateFileError {
    #[error("cannot read {path}: {error}")]
    Unreadable { path: PathBuf, error: io::Error },
    #[error("{path} is corrupt: {reason}")]
    Corrupt { path: PathBuf, reason: &'static str },
}

/// The bytes of a file holding `payload`.
fn encode(payload: &[u8]) -> Vec<u8> {
    assert!(
        payload.len() <= MAX_PAYLOAD_BYTES,
        "a state file record of {} bytes",
        payload.len()
    );
    let mut out = Vec::with_capacity(HEADER + payload.len());
    out.extend_from_slice(MAGIC);
    out.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    out.extend_from_slice(&crc32fast::hash(payload).to_le_bytes());
    out.extend_from_slice(payload);
    out
}

/// The payload of a file's bytes, or why they are not a whole record. Bytes after the
/// record are ignored (an [`Overwriter`] may leave a longer, older record's tail).
fn decode(bytes: &[u8]) -> Result<&[u8], &'static str> {
    if bytes.len() < HEADER {
        return Err("it is shorter than a record's header");
    }
    if &bytes[..4] != MAGIC {
        return Err("it does not start with a state record's magic");
    }
    let len = u32::from_le_bytes(bytes[4..8].try_into().expect("4 bytes")) as usize;
    let crc = u32::from_le_bytes(bytes[8..12].try_into().expect("4 bytes"));
    let payload = bytes
        .get(HEADER..HEADER + len)
        .filter(|_| len <= MAX_PAYLOAD_BYTES)
        .ok_or("its record is cut short")?;
    if crc32fast::hash(payload) != crc {
        return Err("its record fails its checksum");
    }
    Ok(payload)
}

/// The payload of the file at `path`, or `None` when there is no such file.
pub(super) fn read(path: &Path) -> Result<Option<Vec<u8>>, StateFileError> {
    let bytes = match std::fs::read(path) {
        Ok(bytes) => bytes,
        Err(e) if e.kind() == io::ErrorKind::NotFound => return Ok(None),
        Err(error) => {
            return Err(StateFileError::Unreadable {
                path: path.to_path_buf(),
                error,
            })
        }
    };
    match decode(&bytes) {
        Ok(payload) => Ok(Some(payload.to_vec())),
        Err(reason) => Err(StateFileError::Corrupt {
            path: path.to_path_buf(),
            reason,
        }),
    }
}

/// Replaces the file at `path` with one holding `payload`, durably: a temporary file,
/// fdatasync, rename, fsync of the directory.
pub(super) fn replace(path: &Path, payload: &[u8]) -> io::Result<()> {
    let tmp = path.with_extension("tmp");
    {
        let mut f = File::create(&tmp)?;
        f.write_all(&encode(payload))?;
        f.sync_data()?;
    }
    std::fs::rename(&tmp, path)?;
    sync_parent(path)
}

pub(super) use raftkv::snapshot_format::sync_parent;

/// Rewrites one state file in place, without syncing: for a record that may lag or be
/// lost in a crash (the commit marker). A write torn by a power loss fails the checksum.
pub(super) struct Overwriter {
    file: File,
}

impl Overwriter {
    /// Opens (or creates) the file at `path` for rewriting.
    pub(super) fn open(path: &Path) -> io::Result<Overwriter> {
        let file = OpenOptions::new().create(true).truncate(false).write(true).open(path)?;
        Ok(Overwriter { file })
    }

    /// Writes `payload` over the record; it reaches the disk when the system writes it out.
    pub(super) fn write(&self, payload: &[u8]) -> io::Result<()> {
        self.file.write_all_at(&encode(payload), 0)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_replaced_record_reads_back_and_a_missing_file_is_none() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        assert_eq!(read(&path).unwrap(), None);
        replace(&path, b"first").unwrap();
        replace(&path, b"second").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"second"[..]));
        assert!(!path.with_extension("tmp").exists());
    }

    #[test]
    fn every_kind_of_damage_is_refused_as_corrupt() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("vote");
        replace(&path, b"a vote").unwrap();
        let whole = std::fs::read(&path).unwrap();
        let mut flipped = whole.clone();
        *flipped.last_mut().unwrap() ^= 1;
        let mut bad_magic = whole.clone();
        bad_magic[0] = b'x';
        for damaged in [
            &whole[..5],
            &whole[..whole.len() - 1],
            &flipped[..],
            &bad_magic[..],
            &[][..],
        ] {
            std::fs::write(&path, damaged).unwrap();
            let err = read(&path).unwrap_err();
            assert!(matches!(err, StateFileError::Corrupt { .. }), "{err}");
            assert!(err.to_string().contains("vote is corrupt"), "{err}");
        }
    }

    #[test]
    fn an_overwritten_record_may_be_shorter_than_the_one_before() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("committed");
        let w = Overwriter::open(&path).unwrap();
        w.write(b"a longer record").unwrap();
        w.write(b"short").unwrap();
        assert_eq!(read(&path).unwrap().as_deref(), Some(&b"short"[..]));
    }
}
