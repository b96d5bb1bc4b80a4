//! The Raft log's files: a write-ahead log of checksummed records with
//! consecutive indexes, in segment files that are filled with zeros before
//! they are used. An append is one `pwrite` ([`Wal::write`]); one `fdatasync`
//! ([`Wal::sync`]) makes every record written before it durable, so the appends
//! queued meanwhile share it (see `wal_writer.rs`).
//!
//! Why not sled for the log: sled's flush hands its buffer to its own thread
//! pool and only `sync_file_range`s it, so a durable append through sled cost
//! one flush plus one `fdatasync` of a growing file. Writing into a file whose
//! blocks already exist leaves `fdatasync` no metadata to commit, so it syncs
//! fastest (BENCHMARKS.md, "The Raft log in its own files", has the figures).
//! The state machine is in a storage engine of its own (`engine/`).
//!
//! Layout: `<dir>/<seq as 16 hex digits>.wal`, each [`SEGMENT_BYTES`] of zeros
//! when created. A record is
//!
//! ```text
//! len: u32 LE | crc32: u32 LE of (index, payload) | index: u64 LE | payload (len bytes)
//! ```
//!
//! and a zero header ends a segment's records. An append that does not fit in
//! the active segment starts the next one, made ahead of time in the
//! background once the active one is half full. Truncation zeroes the
//! truncated records, so an old record can never reappear behind newer ones.
//!
//! Recovery reads every segment and tells a write torn by a crash from corruption.
//! Only the records written since the last fdatasync can be torn, and they all lie at
//! the end of the last segment (a segment is synced before the next one is started).
//! After a crash, each [`DISK_BLOCK_BYTES`] block they were written to holds either
//! their bytes or what was there before: zeros, since segments are zeroed before use
//! and truncated or torn records are zeroed. So a bad record (short, or a wrong
//! checksum) in the last segment is a torn write only when one of its blocks is still
//! all zeros; its records, and everything after them, were never acknowledged (an
//! append is acknowledged only after its fdatasync, which covers all written before
//! it), and they are zeroed with a warning. The same holds for bytes after the last
//! segment's records (a later block of the write reached the disk when an earlier one
//! did not). Anything else is corruption and the log refuses to open, touching
//! nothing: a bad record without a zero block (even the last one), a bad record in any
//! earlier segment, or a well-formed one out of order anywhere. Acknowledged records
//! are never zeroed, with one exception no check of the bytes can rule out: damage that
//! leaves whole blocks of zeros looks like a torn write (a disk that returns zeros for a
//! lost block; or a value that is itself a block of zeros, damaged elsewhere).
//!
//! Invariant: the records' indexes are consecutive. Damage found on disk is a
//! refusal to open, with a one-line reason ([`WalOpenError`]); an append or a
//! truncation that would break it is a bug in the caller, and panics.

use std::collections::{BTreeMap, VecDeque};
use std::fs::{File, OpenOptions};
use std::io;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use bytes::Bytes;

/// Size of a segment file. The next one is zeroed ahead of time, off the write path.
pub const SEGMENT_BYTES: u64 = 4 << 20;
const HEADER: usize = 16;
/// The largest append buffer kept for the next append.
const KEPT_BUFFER_BYTES: usize = 4 << 20;
const SPARE: &str = "next-segment.tmp";
/// The unit a disk writes whole (its sector): a write cut short by a crash leaves each
/// aligned block of it either written or as it was.
const DISK_BLOCK_BYTES: usize = 512;
static ZEROS: [u8; 64 * 1024] = [0; 64 * 1024];

/// Why the log's files cannot be opened: the file system refused, or they are damaged.
/// Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum WalOpenError {
    #[error("{action} in {dir}: {error}")]
    Io {
        action: String,
        dir: PathBuf,
        error: io::Error,
    },
    /// A well-formed record where another belongs: stale records are always zeroed
    /// (truncation, torn-tail repair), so this is damage, never a torn write.
    #[error("raft log segment {segment} holds entry {found} at byte {offset} where {expected} belongs")]
    OutOfOrder {
        segment: String,
        offset: usize,
        found: u64,
        expected: u64,
    },
    /// A bad record that no crash can have left: in a segment before the last, or in the
    /// last one without the zero block a torn write leaves.
    #[error("raft log segment {segment} is corrupt at byte {offset}: {why}; refusing to open it")]
    Corrupt {
        segment: String,
        offset: usize,
        why: &'static str,
    },
}

/// Where one record lives.
#[derive(Clone, Copy, Debug)]
struct Loc {
    seq: u64,
    offset: u64,
    len: u32,
}

/// What readers see: the records that are durable, by index.
struct Index {
    /// Index of `locs[0]`; when `locs` is empty and `anchored`, the next index to append.
    first: u64,
    locs: VecDeque<Loc>,
    /// False only for a log that never held or purged anything: its first append sets `first`.
    anchored: bool,
    files: BTreeMap<u64, Arc<File>>,
}

impl Index {
    fn next(&self) -> Option<u64> {
        (self.anchored || !self.locs.is_empty()).then(|| self.first + self.locs.len() as u64)
    }
}

/// Reads records; cheap to clone, and never waits for an append's fsync.
#[derive(Clone)]
pub struct WalReader {
    index: Arc<RwLock<Index>>,
}

/// The writer. Appends, truncation and purges are its `&mut self` methods, which
/// block on disk I/O: call them off the async runtime.
pub struct Wal {
    dir: PathBuf,
    segment_bytes: u64,
    index: Arc<RwLock<Index>>,
    /// The segment appended to, and where its next record goes.
    active: u64,
    offset: u64,
    /// The next segment, being zeroed in the background.
    spare: Option<std::thread::JoinHandle<io::Result<()>>>,
    buf: Vec<u8>,
    /// Records written to the active segment and not yet synced, and the index of the
    /// first of them; readers do not see them.
    unsynced: Vec<Loc>,
    unsynced_first: u64,
    #[cfg(test)]
    fail_next_sync: bool,
    #[cfg(test)]
    syncs: Arc<std::sync::atomic::AtomicUsize>,
    /// For tests: a segment deletion says it is about to start, then waits to be let go.
    #[cfg(test)]
    hold_deletions: Option<(std::sync::mpsc::Sender<()>, std::sync::mpsc::Receiver<()>)>,
    /// The span current at open (the node's), for what it logs: appends run on
    /// blocking threads, which carry none.
    span: tracing::Span,
}

fn segment_name(seq: u64) -> String {
    format!("{seq:016x}.wal")
}

fn crc(index: u64, payload: &[u8]) -> u32 {
    let mut h = crc32fast::Hasher::new();
    h.update(&index.to_le_bytes());
    h.update(payload);
    h.finalize()
}

fn encode_record(buf: &mut Vec<u8>, index: u64, payload: &[u8]) {
    buf.extend_from_slice(&(payload.len() as u32).to_le_bytes());
    buf.extend_from_slice(&crc(index, payload).to_le_bytes());
    buf.extend_from_slice(&index.to_le_bytes());
    buf.extend_from_slice(payload);
}

enum Parsed<'a> {
    /// A zero header, or too few bytes left for one: the segment's records end here.
    End,
    Record {
        index: u64,
        payload: &'a [u8],
    },
    Bad,
}

fn parse(data: &[u8]) -> Parsed<'_> {
    if data.len() < HEADER {
        return if data.iter().all(|b| *b == 0) {
            Parsed::End
        } else {
            Parsed::Bad
        };
    }
    if data[..HEADER].iter().all(|b| *b == 0) {
        return Parsed::End;
    }
    let len = u32::from_le_bytes(data[0..4].try_into().unwrap()) as usize;
    let sum = u32::from_le_bytes(data[4..8].try_into().unwrap());
    let index = u64::from_le_bytes(data[8..16].try_into().unwrap());
    match data.get(HEADER..HEADER + len) {
        Some(payload) if crc(index, payload) == sum => Parsed::Record { index, payload },
        _ => Parsed::Bad,
    }
}

/// Whether the bad record at `at` in a segment's `data` is what a write cut short by a
/// crash leaves: one of the [`DISK_BLOCK_BYTES`] blocks it was written to is all zeros
/// from the record's start (or the block's) to the block's end. Its extent is what its
/// header says when that fits in the segment, else the header alone (a header cut short
/// may say anything).
fn cut_short(data: &[u8], at: usize) -> bool {
    let declared_end = data
        .get(at..at + 4)
        .map(|len| at + HEADER + u32::from_le_bytes(len.try_into().unwrap()) as usize);
    let end = match declared_end {
        Some(end) if end <= data.len() => end,
        _ => (at + HEADER).min(data.len()),
    };
    let mut block = at - at % DISK_BLOCK_BYTES;
    while block < end {
        let written = &data[block.max(at)..(block + DISK_BLOCK_BYTES).min(data.len())];
        if written.iter().all(|b| *b == 0) {
            return true;
        }
        block += DISK_BLOCK_BYTES;
    }
    false
}

fn write_zeros(file: &File, from: u64, to: u64) -> io::Result<()> {
    let mut at = from;
    while at < to {
        let n = (to - at).min(ZEROS.len() as u64) as usize;
        file.write_all_at(&ZEROS[..n], at)?;
        at += n as u64;
    }
    Ok(())
}

/// Creates `path` as `bytes` zeros, durably.
fn create_zeroed(path: &Path, bytes: u64) -> io::Result<()> {
    let file = OpenOptions::new().write(true).create(true).truncate(true).open(path)?;
    write_zeros(&file, 0, bytes)?;
    file.sync_all()
}

fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

fn open_rw(path: &Path) -> io::Result<File> {
    OpenOptions::new().read(true).write(true).open(path)
}

impl Wal {
    /// Opens the log in `dir` (which must exist), recovering from a crash. Records
    /// at or below `purged` are skipped; the first one kept must follow it.
    pub fn open(dir: &Path, purged: Option<u64>, segment_bytes: u64) -> Result<Wal, WalOpenError> {
        let io_err = |action: &str, error: io::Error| WalOpenError::Io {
            action: action.to_string(),
            dir: dir.to_path_buf(),
            error,
        };
        let _ = std::fs::remove_file(dir.join(SPARE));
        let mut seqs = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| io_err("cannot list the raft log", e))? {
            let name = entry.map_err(|e| io_err("cannot list the raft log", e))?.file_name();
            let name = name.to_string_lossy();
            if let Some(seq) = name.strip_suffix(".wal").and_then(|s| u64::from_str_radix(s, 16).ok()) {
                seqs.push(seq);
            }
        }
        seqs.sort_unstable();

        let mut index = Index {
            first: purged.map_or(0, |p| p + 1),
            locs: VecDeque::new(),
            anchored: purged.is_some(),
            files: BTreeMap::new(),
        };
        let (mut active, mut offset) = (1, 0);
        for (i, &seq) in seqs.iter().enumerate() {
            let last = i + 1 == seqs.len();
            let name = segment_name(seq);
            let path = dir.join(&name);
            let data = std::fs::read(&path).map_err(|e| io_err(&format!("cannot read {name}"), e))?;
            let mut at = 0usize;
            let torn = loop {
                let (idx, payload) = match parse(&data[at..]) {
                    Parsed::End => break false,
                    Parsed::Bad => break true,
                    Parsed::Record { index, payload } => (index, payload),
                };
                let skipped = purged.is_some_and(|p| idx <= p);
                if !skipped {
                    match index.next() {
                        Some(expected) if expected != idx => {
                            return Err(WalOpenError::OutOfOrder {
                                segment: name,
                                offset: at,
                                found: idx,
                                expected,
                            })
                        }
                        None => index.first = idx,
                        Some(_) => {}
                    }
                    index.locs.push_back(Loc {
                        seq,
                        offset: at as u64,
                        len: payload.len() as u32,
                    });
                }
                at += HEADER + payload.len();
            };
            if torn && !last {
                return Err(WalOpenError::Corrupt {
                    segment: name,
                    offset: at,
                    why: "a damaged record before the last segment (only the last one is ever written unsynced)",
                });
            }
            if torn && !cut_short(&data, at) {
                return Err(WalOpenError::Corrupt {
                    segment: name,
                    offset: at,
                    why: "a damaged record with no block left unwritten, so not a write torn by a crash",
                });
            }
            // Records are written before the fdatasync that acknowledges them, and a crash
            // may have kept a later one of them but lost an earlier: bytes after the end of
            // the last segment's records were never acknowledged either. Left there, a later
            // record could reappear behind newer ones.
            let torn = torn || (last && data[at..].iter().any(|b| *b != 0));
            let file = open_rw(&path).map_err(|e| io_err(&format!("cannot open {name}"), e))?;
            if torn {
                tracing::warn!(
                    segment = %name,
                    offset = at,
                    "the raft log ends with a write torn by a crash; zeroing its {} bytes (never acknowledged)",
                    data.len() - at
                );
                write_zeros(&file, at as u64, data.len() as u64)
                    .and_then(|_| file.sync_data())
                    .map_err(|e| io_err(&format!("cannot repair {name}"), e))?;
            }
            index.files.insert(seq, Arc::new(file));
            (active, offset) = (seq, at as u64);
        }
        if seqs.is_empty() {
            let path = dir.join(segment_name(active));
            create_zeroed(&path, segment_bytes)
                .and_then(|_| sync_dir(dir))
                .map_err(|e| io_err("cannot create a log segment", e))?;
            let file = open_rw(&path).map_err(|e| io_err("cannot open a log segment", e))?;
            index.files.insert(active, Arc::new(file));
        }
        Ok(Wal {
            dir: dir.to_path_buf(),
            segment_bytes,
            index: Arc::new(RwLock::new(index)),
            active,
            offset,
            spare: None,
            buf: Vec::new(),
            unsynced: Vec::new(),
            unsynced_first: 0,
            #[cfg(test)]
            fail_next_sync: false,
            #[cfg(test)]
            syncs: Arc::default(),
            #[cfg(test)]
            hold_deletions: None,
            span: tracing::Span::current(),
        })
    }

    pub fn reader(&self) -> WalReader {
        WalReader {
            index: self.index.clone(),
        }
    }

    fn read_index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("raft log index lock")
    }

    fn write_index(&self) -> std::sync::RwLockWriteGuard<'_, Index> {
        self.index.write().expect("raft log index lock")
    }

    /// Appends records with consecutive indexes and makes them durable: [`Wal::write`]
    /// then [`Wal::sync`]. Returns the index of the first record written, if any.
    pub fn append<'a>(&mut self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> io::Result<Option<u64>> {
        let written = self.write(records)?;
        self.sync()?;
        Ok(written)
    }

    /// Writes records with consecutive indexes after the log's last one, without making
    /// them durable: that is [`Wal::sync`]'s job, and readers see them only after it. They
    /// become the log's suffix: openraft truncates a conflicting suffix itself first, but
    /// should records start inside the log, the ones they overlap (and all after) are
    /// replaced, and records at or below the purge point (already covered by a snapshot)
    /// are skipped. Returns the index of the first record written, if any.
    ///
    /// Panics, before writing anything, when the records are not consecutive or leave a
    /// gap after the log's last record: the log would have a hole, which is a bug in
    /// the caller (openraft appends only what follows its last entry), not a disk error.
    pub fn write<'a>(&mut self, records: impl IntoIterator<Item = (u64, &'a [u8])>) -> io::Result<Option<u64>> {
        let purged_below = self.reader().first_unpurged();
        let next = self.next_index();
        let records: Vec<(u64, &[u8])> = records
            .into_iter()
            .skip_while(|(i, _)| purged_below.is_some_and(|first| *i < first))
            .collect();
        let Some(&(start, _)) = records.first() else {
            return Ok(None);
        };
        // Checked before anything changes: a hole is never written, nor is a truncation made for one.
        for pair in records.windows(2) {
            let (before, after) = (pair[0].0, pair[1].0);
            assert_eq!(
                after,
                before + 1,
                "raft log append of entry {after} after entry {before}: a hole in the log"
            );
        }
        if let Some(next) = next {
            assert!(
                start <= next,
                "raft log append of entry {start} where {next} was expected: a hole in the log"
            );
            if start < next {
                self.truncate(start)?;
            }
        }
        self.buf.clear();
        let mut lens = Vec::with_capacity(records.len());
        for (index, payload) in records {
            encode_record(&mut self.buf, index, payload);
            lens.push(payload.len() as u32);
        }
        if self.offset > 0 && self.offset + self.buf.len() as u64 > self.segment_bytes {
            // What is written and not yet synced lies in the active segment: sync it before
            // moving on, so that one sync (of the active segment) always covers the unsynced.
            self.sync()?;
            self.start_next_segment()?;
        }
        let file = self.read_index().files[&self.active].clone();
        file.write_all_at(&self.buf, self.offset)?;

        if self.unsynced.is_empty() {
            self.unsynced_first = start;
        }
        let mut at = self.offset;
        for len in lens {
            self.unsynced.push(Loc {
                seq: self.active,
                offset: at,
                len,
            });
            at += HEADER as u64 + len as u64;
        }
        self.offset = at;
        if self.buf.capacity() > KEPT_BUFFER_BYTES {
            // A follower's catch-up append can be tens of MiB; do not hold on to that.
            self.buf = Vec::new();
        }
        if self.spare.is_none() && self.offset > self.segment_bytes / 2 {
            let (path, bytes) = (self.dir.join(SPARE), self.segment_bytes);
            self.spare = Some(std::thread::spawn(move || create_zeroed(&path, bytes)));
        }
        Ok(Some(start))
    }

    /// Makes every record written so far durable with one fdatasync of the active segment,
    /// then shows them to readers.
    pub fn sync(&mut self) -> io::Result<()> {
        if self.unsynced.is_empty() {
            return Ok(());
        }
        #[cfg(test)]
        if std::mem::take(&mut self.fail_next_sync) {
            return Err(io::Error::other("injected fdatasync failure"));
        }
        let file = self.read_index().files[&self.active].clone();
        file.sync_data()?;
        #[cfg(test)]
        self.syncs.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let synced = std::mem::take(&mut self.unsynced);
        let mut index = self.write_index();
        if index.next().is_none() {
            index.first = self.unsynced_first;
        }
        index.locs.extend(synced);
        Ok(())
    }

    /// The index the next record must have (None: any, for a log that never held or
    /// purged anything), counting records written and not yet synced.
    fn next_index(&self) -> Option<u64> {
        if self.unsynced.is_empty() {
            self.read_index().next()
        } else {
            Some(self.unsynced_first + self.unsynced.len() as u64)
        }
    }

    /// For tests: the next [`Wal::sync`] fails as an fdatasync would, without syncing.
    #[cfg(test)]
    pub(crate) fn fail_next_sync(&mut self) {
        self.fail_next_sync = true;
    }

    /// For tests: counts the fdatasyncs that made records durable.
    #[cfg(test)]
    pub(crate) fn sync_count(&self) -> Arc<std::sync::atomic::AtomicUsize> {
        self.syncs.clone()
    }

    fn start_next_segment(&mut self) -> io::Result<()> {
        let seq = self.active + 1;
        let path = self.dir.join(segment_name(seq));
        let spare_ready = match self.spare.take().map(|h| h.join()) {
            Some(Ok(Ok(()))) => true,
            Some(Ok(Err(e))) => {
                tracing::warn!(parent: &self.span, error = %e, "could not prepare the next log segment ahead of time");
                false
            }
            Some(Err(_)) | None => false,
        };
        if spare_ready {
            std::fs::rename(self.dir.join(SPARE), &path)?;
        } else {
            create_zeroed(&path, self.segment_bytes)?;
        }
        sync_dir(&self.dir)?;
        let file = Arc::new(open_rw(&path)?);
        self.write_index().files.insert(seq, file);
        (self.active, self.offset) = (seq, 0);
        Ok(())
    }

    /// Removes the records from `from` on, durably.
    ///
    /// Panics when `from` is at or below the purge point: only entries that are not
    /// committed are ever truncated, and only committed ones are purged.
    pub fn truncate(&mut self, from: u64) -> io::Result<()> {
        self.sync()?;
        let first = self.read_index().first;
        assert!(
            from >= first,
            "cannot truncate the raft log at {from}: entries before {first} are purged"
        );
        // The index changes under its lock; the disk work is done after it is released, so
        // that readers (openraft's, on the async runtime) never wait on a busy disk.
        let (later, file, cut) = {
            let mut index = self.write_index();
            let keep = (from - index.first) as usize;
            let Some(&cut) = index.locs.get(keep) else {
                return Ok(());
            };
            let later: Vec<u64> = index.files.split_off(&(cut.seq + 1)).into_keys().collect();
            index.locs.truncate(keep);
            (later, index.files[&cut.seq].clone(), cut)
        };
        for seq in later {
            self.delete_segment(seq)?;
        }
        let end = if cut.seq == self.active {
            self.offset
        } else {
            file.metadata()?.len()
        };
        write_zeros(&file, cut.offset, end)?;
        file.sync_data()?;
        sync_dir(&self.dir)?;
        (self.active, self.offset) = (cut.seq, cut.offset);
        Ok(())
    }

    /// Forgets the records up to and including `upto` (it may lie beyond the last
    /// record; the next append then follows `upto`) and deletes the segments that
    /// hold nothing else. The caller stores `upto` durably first, for recovery.
    pub fn purge(&mut self, upto: u64) -> io::Result<()> {
        self.sync()?;
        let old: Vec<u64> = {
            let mut index = self.write_index();
            let drop_count = (upto + 1).saturating_sub(index.first).min(index.locs.len() as u64);
            index.locs.drain(..drop_count as usize);
            index.first = index.first.max(upto + 1);
            index.anchored = true;
            let keep_from = index.locs.front().map_or(self.active, |l| l.seq);
            let kept = index.files.split_off(&keep_from);
            std::mem::replace(&mut index.files, kept).into_keys().collect()
        };
        // Deleted with the index's lock released: a purge after a large snapshot deletes tens
        // of segments, and with the disk busy each unlink can take tens of ms, while openraft's
        // reads of the log (on the async runtime, which also sends the heartbeats) waited on
        // the lock: long enough for the followers to elect another leader.
        for seq in old {
            self.delete_segment(seq)?;
        }
        Ok(())
    }

    /// Deletes segment `seq`'s file, which the index no longer names.
    fn delete_segment(&self, seq: u64) -> io::Result<()> {
        #[cfg(test)]
        if let Some((reached, go_on)) = &self.hold_deletions {
            let _ = reached.send(());
            let _ = go_on.recv();
        }
        std::fs::remove_file(self.dir.join(segment_name(seq)))
    }
}

impl WalReader {
    fn index(&self) -> std::sync::RwLockReadGuard<'_, Index> {
        self.index.read().expect("raft log index lock")
    }

    /// The first index not purged, once anything was purged (records below it are
    /// covered by a snapshot and never written again).
    pub fn first_unpurged(&self) -> Option<u64> {
        let index = self.index();
        index.anchored.then_some(index.first)
    }

    /// The index the next durable record will have (None: any, for a log that never held
    /// or purged anything).
    pub fn next_index(&self) -> Option<u64> {
        self.index().next()
    }

    /// The lowest and highest index held durably, if any.
    pub fn bounds(&self) -> Option<(u64, u64)> {
        let index = self.index();
        (!index.locs.is_empty()).then(|| (index.first, index.first + index.locs.len() as u64 - 1))
    }

    /// The lowest index, `lowest` or above, from which the records the log holds up to and
    /// including `upto` take at most `bytes` on disk (headers included); `upto + 1` when not
    /// even record `upto` fits. Records the log does not hold count for nothing. Reads no
    /// further back than `lowest`, so the walk is as short as the caller's other limit.
    pub fn first_within_bytes(&self, lowest: u64, upto: u64, bytes: u64) -> u64 {
        let index = self.index();
        let end = upto.saturating_add(1);
        let floor = index.first.max(lowest);
        let mut first = end.min(index.first + index.locs.len() as u64);
        let mut total = 0u64;
        while first > floor {
            total += (HEADER as u64) + index.locs[(first - 1 - index.first) as usize].len as u64;
            if total > bytes {
                return first;
            }
            first -= 1;
        }
        lowest.min(end)
    }

    /// The payloads of the records in `[from, to)` that the log holds, in order.
    /// Records next to each other in a segment are read with one `pread`.
    pub fn read(&self, from: u64, to: u64) -> io::Result<Vec<(u64, Bytes)>> {
        // Runs of adjacent records: the file, and the first index and location of each.
        let mut runs: Vec<Run> = Vec::new();
        {
            let index = self.index();
            let start = from.max(index.first);
            let end = to.min(index.first + index.locs.len() as u64);
            for i in start..end {
                let loc = index.locs[(i - index.first) as usize];
                match runs.last_mut() {
                    Some(run) if run.seq == loc.seq && run.end == loc.offset => {
                        run.end = loc.offset + HEADER as u64 + loc.len as u64;
                        run.locs.push(loc);
                    }
                    _ => runs.push(Run {
                        file: index.files[&loc.seq].clone(),
                        seq: loc.seq,
                        first: i,
                        start: loc.offset,
                        end: loc.offset + HEADER as u64 + loc.len as u64,
                        locs: vec![loc],
                    }),
                }
            }
        }
        let mut out = Vec::new();
        for run in runs {
            let mut buf = vec![0u8; (run.end - run.start) as usize];
            run.file.read_exact_at(&mut buf, run.start)?;
            let buf = Bytes::from(buf);
            for (i, loc) in (run.first..).zip(run.locs) {
                let at = (loc.offset - run.start) as usize;
                let record = at..at + HEADER + loc.len as usize;
                match parse(&buf[record.clone()]) {
                    Parsed::Record { index, .. } if index == i => out.push((i, buf.slice(at + HEADER..record.end))),
                    _ => {
                        return Err(io::Error::new(
                            io::ErrorKind::InvalidData,
                            format!("raft log record {i} fails its checksum"),
                        ))
                    }
                }
            }
        }
        Ok(out)
    }
}

/// Records that lie next to each other in one segment, read together.
struct Run {
    file: Arc<File>,
    seq: u64,
    first: u64,
    start: u64,
    end: u64,
    locs: Vec<Loc>,
}

#[cfg(test)]
mod tests {
    use super::*;

    const SMALL: u64 = 4096;

    fn payload(i: u64) -> Vec<u8> {
        format!("entry {i} {}", "x".repeat((i % 7 * 100) as usize)).into_bytes()
    }

    fn append(wal: &mut Wal, range: std::ops::Range<u64>) {
        let payloads: Vec<(u64, Vec<u8>)> = range.map(|i| (i, payload(i))).collect();
        wal.append(payloads.iter().map(|(i, p)| (*i, p.as_slice()))).unwrap();
    }

    /// A log holding entries 1..=40, four per append, spread over several segments.
    fn forty_records_in_small_segments(dir: &Path) -> Wal {
        let mut wal = Wal::open(dir, None, SMALL).unwrap();
        for start in (1..41).step_by(4) {
            append(&mut wal, start..start + 4);
        }
        wal
    }

    /// A closed log holding entries 1..=3 in one segment: that segment's file, and where
    /// the next record would have gone.
    fn three_records_then_closed(dir: &Path) -> (Arc<File>, u64) {
        let mut wal = Wal::open(dir, None, SMALL * 4).unwrap();
        append(&mut wal, 1..4);
        let file = wal.read_index().files[&wal.active].clone();
        (file, wal.offset)
    }

    /// The first disk block boundary after `offset`.
    fn block_boundary_after(offset: u64) -> u64 {
        (offset / DISK_BLOCK_BYTES as u64 + 1) * DISK_BLOCK_BYTES as u64
    }

    /// A closed log holding entries 1..=40 in one segment: that segment's path and the end
    /// of its records.
    fn forty_records_in_one_segment(dir: &Path) -> (PathBuf, usize) {
        let mut wal = Wal::open(dir, None, SMALL * 16).unwrap();
        for start in (1..41).step_by(4) {
            append(&mut wal, start..start + 4);
        }
        assert_eq!(segments(dir), 1);
        (dir.join(segment_name(wal.active)), wal.offset as usize)
    }

    /// 64 bytes of damage at `offset`: none of them zero, as random damage rarely is.
    fn damage(path: &Path, offset: usize) -> Vec<u8> {
        let mut bytes = std::fs::read(path).unwrap();
        let mut state = offset as u64 | 1;
        for byte in &mut bytes[offset..offset + 64] {
            state ^= state << 13;
            state ^= state >> 7;
            state ^= state << 17;
            *byte = (state as u8) | 1;
        }
        std::fs::write(path, &bytes).unwrap();
        bytes
    }

    /// Where tests damage the used part of a segment that ends at `end`: its start, a record
    /// header, the middle, the last record and the very end.
    fn damage_offsets(end: usize) -> [usize; 5] {
        [0, 4, end / 2, end - 200, end - 64]
    }

    fn indexes(wal: &Wal) -> Vec<u64> {
        let read = wal.reader().read(0, u64::MAX).unwrap();
        for (i, p) in &read {
            assert_eq!(p.as_ref(), payload(*i).as_slice(), "payload of {i}");
        }
        read.into_iter().map(|(i, _)| i).collect()
    }

    fn segments(dir: &Path) -> usize {
        std::fs::read_dir(dir)
            .unwrap()
            .filter(|e| e.as_ref().unwrap().file_name().to_string_lossy().ends_with(".wal"))
            .count()
    }

    #[test]
    fn records_survive_a_reopen_across_many_segments() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SMALL).unwrap();
        for start in (5..105).step_by(4) {
            append(&mut wal, start..start + 4);
        }
        assert!(segments(dir.path()) > 5, "small segments rotate");
        assert_eq!(indexes(&wal), (5..105).collect::<Vec<_>>());
        assert_eq!(wal.reader().read(50, 53).unwrap().len(), 3);
        drop(wal);
        let mut wal = Wal::open(dir.path(), None, SMALL).unwrap();
        assert_eq!(indexes(&wal), (5..105).collect::<Vec<_>>());
        append(&mut wal, 105..107);
        assert_eq!(wal.reader().bounds(), Some((5, 106)));
    }

    #[test]
    fn the_records_within_a_byte_budget_are_counted_back_from_an_index() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SMALL).unwrap();
        append(&mut wal, 5..30);
        let size = |i: u64| (HEADER + payload(i).len()) as u64;
        let reader = wal.reader();
        assert_eq!(reader.first_within_bytes(0, 20, 0), 21, "not even record 20 fits");
        assert_eq!(reader.first_within_bytes(0, 20, size(20)), 20);
        assert_eq!(reader.first_within_bytes(0, 20, size(20) + size(19) - 1), 20);
        assert_eq!(reader.first_within_bytes(0, 20, size(20) + size(19)), 19);
        assert_eq!(reader.first_within_bytes(0, 20, u64::MAX), 0, "the whole log fits");
        assert_eq!(
            reader.first_within_bytes(12, 20, u64::MAX),
            12,
            "never below the lowest"
        );
        assert_eq!(reader.first_within_bytes(12, 20, size(20)), 20);
        assert_eq!(
            reader.first_within_bytes(0, 40, size(29)),
            29,
            "records past the log count for nothing"
        );
        wal.purge(9).unwrap();
        assert_eq!(wal.reader().first_within_bytes(0, 20, u64::MAX), 0);
        assert_eq!(wal.reader().first_within_bytes(0, 20, size(20) * 100), 0);
        assert_eq!(
            wal.reader().first_within_bytes(0, 3, 0),
            0,
            "purged records count for nothing"
        );
    }

    #[test]
    fn an_append_out_of_order_panics_and_changes_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SMALL).unwrap();
        append(&mut wal, 1..3);
        let p = payload(7);
        let gap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wal.append([(7, p.as_slice())])));
        assert!(gap.is_err(), "a gap");
        assert_eq!(indexes(&wal), vec![1, 2]);
        // Records that would replace entry 2 but leave a hole after it: entry 2 stays too.
        let hole = [(2, p.as_slice()), (4, p.as_slice())];
        let gap = std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| wal.append(hole)));
        assert!(gap.is_err(), "a gap inside the records");
        assert_eq!(indexes(&wal), vec![1, 2]);
    }

    #[test]
    fn an_append_inside_the_log_replaces_the_rest_and_skips_purged_records() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SMALL).unwrap();
        append(&mut wal, 1..10);
        append(&mut wal, 5..7);
        assert_eq!(indexes(&wal), (1..7).collect::<Vec<_>>());
        wal.purge(3).unwrap();
        append(&mut wal, 2..5);
        assert_eq!(indexes(&wal), vec![4]);
        drop(wal);
        assert_eq!(indexes(&Wal::open(dir.path(), Some(3), SMALL).unwrap()), vec![4]);
    }

    #[test]
    fn a_torn_last_write_is_cut_off_and_zeroed() {
        let dir = tempfile::tempdir().unwrap();
        let (file, end) = three_records_then_closed(dir.path());
        // A crash in the middle of the next append: its blocks up to a block boundary
        // reached the disk, the rest did not.
        let mut torn = Vec::new();
        encode_record(&mut torn, 4, &[7u8; 2000]);
        let cut = block_boundary_after(end + HEADER as u64) - end;
        file.write_all_at(&torn[..cut as usize], end).unwrap();
        let mut wal = Wal::open(dir.path(), None, SMALL * 4).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3]);
        let mut rest = vec![1u8; torn.len()];
        file.read_exact_at(&mut rest, end).unwrap();
        assert!(rest.iter().all(|b| *b == 0), "the torn bytes are zeroed");
        append(&mut wal, 4..6);
        drop(wal);
        assert_eq!(
            indexes(&Wal::open(dir.path(), None, SMALL * 4).unwrap()),
            vec![1, 2, 3, 4, 5]
        );
    }

    #[test]
    fn records_written_are_seen_only_once_synced() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, SMALL).unwrap();
        append(&mut wal, 1..3);
        let payloads: Vec<(u64, Vec<u8>)> = (3..6).map(|i| (i, payload(i))).collect();
        wal.write(payloads.iter().map(|(i, p)| (*i, p.as_slice()))).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2]);
        // The next write follows the unsynced ones.
        let more = payload(6);
        wal.write([(6, more.as_slice())]).unwrap();
        wal.sync().unwrap();
        assert_eq!(indexes(&wal), (1..7).collect::<Vec<_>>());
    }

    #[test]
    fn a_record_that_outlived_an_earlier_lost_one_is_zeroed_at_open() {
        let dir = tempfile::tempdir().unwrap();
        let (file, end) = three_records_then_closed(dir.path());
        // Records 4 and 5 written, a crash before their fdatasync: 4's bytes were lost, 5's
        // reached the disk.
        let mut four = Vec::new();
        encode_record(&mut four, 4, &payload(4));
        let mut five = Vec::new();
        encode_record(&mut five, 5, &payload(5));
        file.write_all_at(&five, end + four.len() as u64).unwrap();
        let mut wal = Wal::open(dir.path(), None, SMALL * 4).unwrap();
        assert_eq!(indexes(&wal), vec![1, 2, 3]);
        // Entry 4 again, the same size: without the zeroing, the old 5 would follow it.
        append(&mut wal, 4..5);
        drop(wal);
        assert_eq!(
            indexes(&Wal::open(dir.path(), None, SMALL * 4).unwrap()),
            vec![1, 2, 3, 4]
        );
    }

    #[test]
    fn a_well_formed_record_out_of_order_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let (file, end) = three_records_then_closed(dir.path());
        let mut stray = Vec::new();
        encode_record(&mut stray, 9, &payload(9));
        file.write_all_at(&stray, end).unwrap();
        let before = std::fs::read(dir.path().join(segment_name(1))).unwrap();
        let err = Wal::open(dir.path(), None, SMALL * 4).err().unwrap().to_string();
        assert!(err.contains("entry 9") && err.contains("where 4 belongs"), "{err}");
        assert_eq!(std::fs::read(dir.path().join(segment_name(1))).unwrap(), before);
    }

    #[test]
    fn a_damaged_record_before_the_last_segment_is_refused_untouched() {
        let dir = tempfile::tempdir().unwrap();
        let wal = forty_records_in_small_segments(dir.path());
        drop(wal);
        let first = dir.path().join(segment_name(1));
        let mut bytes = std::fs::read(&first).unwrap();
        bytes[HEADER + 3] ^= 0xff;
        std::fs::write(&first, &bytes).unwrap();
        let err = Wal::open(dir.path(), None, SMALL).err().unwrap().to_string();
        assert!(err.contains("corrupt") && err.contains(&segment_name(1)), "{err}");
        assert_eq!(std::fs::read(&first).unwrap(), bytes);
    }

    #[test]
    fn damage_anywhere_in_the_last_segment_is_refused_untouched_not_taken_for_a_torn_write() {
        for offset in damage_offsets(forty_records_in_one_segment(tempfile::tempdir().unwrap().path()).1) {
            let dir = tempfile::tempdir().unwrap();
            let (path, _) = forty_records_in_one_segment(dir.path());
            let damaged = damage(&path, offset);
            let err = Wal::open(dir.path(), None, SMALL * 16).err().map(|e| e.to_string());
            let err = err.unwrap_or_else(|| panic!("damage at byte {offset} was taken for a torn write"));
            assert!(err.contains("corrupt") && err.contains("not a write torn"), "{err}");
            assert_eq!(err.lines().count(), 1, "{err}");
            assert_eq!(
                std::fs::read(&path).unwrap(),
                damaged,
                "damage at {offset}: nothing is zeroed"
            );
        }
    }

    #[test]
    fn damage_anywhere_in_an_earlier_segment_is_refused_untouched() {
        let first = |dir: &Path| dir.join(segment_name(1));
        let probe = tempfile::tempdir().unwrap();
        drop(forty_records_in_small_segments(probe.path()));
        let used = Wal::open(probe.path(), None, SMALL)
            .unwrap()
            .read_index()
            .locs
            .iter()
            .filter(|l| l.seq == 1)
            .map(|l| l.offset as usize + HEADER + l.len as usize)
            .max()
            .unwrap();
        for offset in damage_offsets(used) {
            let dir = tempfile::tempdir().unwrap();
            drop(forty_records_in_small_segments(dir.path()));
            let damaged = damage(&first(dir.path()), offset);
            let err = Wal::open(dir.path(), None, SMALL).err().unwrap().to_string();
            assert!(
                err.contains("corrupt") && err.contains("before the last segment"),
                "{err}"
            );
            assert_eq!(std::fs::read(first(dir.path())).unwrap(), damaged, "damage at {offset}");
        }
    }

    #[test]
    fn a_last_append_with_any_block_unwritten_is_a_torn_write_even_with_whole_records_after() {
        let mut append_bytes = Vec::new();
        for i in 41..44 {
            encode_record(&mut append_bytes, i, &[i as u8; 900]);
        }
        let probe = tempfile::tempdir().unwrap();
        let end = forty_records_in_one_segment(probe.path()).1 as u64;
        let append_end = end + append_bytes.len() as u64;
        // Each block the last append reached, from its first whole one to its last one:
        // the append reached the disk except for that block.
        let mut unwritten = block_boundary_after(end + HEADER as u64);
        let mut cases = 0;
        while unwritten < append_end {
            let dir = tempfile::tempdir().unwrap();
            let (path, end) = forty_records_in_one_segment(dir.path());
            let file = open_rw(&path).unwrap();
            file.write_all_at(&append_bytes, end as u64).unwrap();
            write_zeros(&file, unwritten, (unwritten + DISK_BLOCK_BYTES as u64).min(append_end)).unwrap();
            let wal = Wal::open(dir.path(), None, SMALL * 16)
                .unwrap_or_else(|e| panic!("block at {unwritten} unwritten: {e}"));
            // The append's records that lie wholly before the unwritten block are whole, and kept.
            let record_bytes = (append_bytes.len() / 3) as u64;
            let whole = (unwritten - end as u64) / record_bytes;
            let read = wal.reader().read(0, u64::MAX).unwrap();
            let got: Vec<u64> = read.iter().map(|(i, _)| *i).collect();
            assert_eq!(got, (1..41 + whole).collect::<Vec<_>>(), "block at {unwritten}");
            for (i, kept) in read {
                let written = if i < 41 { payload(i) } else { vec![i as u8; 900] };
                assert_eq!(kept.as_ref(), written.as_slice(), "entry {i}");
            }
            let kept_end = end + (whole * record_bytes) as usize;
            let bytes = std::fs::read(&path).unwrap();
            assert!(bytes[kept_end..].iter().all(|b| *b == 0), "the torn rest is zeroed");
            unwritten += DISK_BLOCK_BYTES as u64;
            cases += 1;
        }
        assert!(cases >= 4, "the append spans several blocks");
    }

    #[test]
    fn truncated_records_never_come_back() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = forty_records_in_small_segments(dir.path());
        let segments_before = segments(dir.path());
        wal.truncate(10).unwrap();
        assert_eq!(indexes(&wal), (1..10).collect::<Vec<_>>());
        assert!(segments(dir.path()) < segments_before);
        // Same sizes as before at the same place: without the zeroing, entries 11.. would reappear.
        append(&mut wal, 10..11);
        drop(wal);
        let wal = Wal::open(dir.path(), None, SMALL).unwrap();
        assert_eq!(indexes(&wal), (1..11).collect::<Vec<_>>());
    }

    #[test]
    fn a_purge_deleting_segments_leaves_readers_free() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = forty_records_in_small_segments(dir.path());
        let reader = wal.reader();
        let (reached, deletion_started) = std::sync::mpsc::channel();
        let (go_on, held) = std::sync::mpsc::channel();
        wal.hold_deletions = Some((reached, held));
        let purge = std::thread::spawn(move || wal.purge(30));
        deletion_started
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("the purge deletes a segment");
        // The purge is parked in its first deletion: a reader still answers (on a thread of
        // its own, so that a reader kept waiting fails the test instead of hanging it), and
        // already sees the purge.
        let (answer, answered) = std::sync::mpsc::channel();
        let read = std::thread::spawn(move || {
            let _ = answer.send((reader.bounds(), reader.read(31, 41).map(|r| r.len()).ok(), reader));
        });
        let (bounds, read_count, reader) = answered
            .recv_timeout(std::time::Duration::from_secs(10))
            .expect("a reader waited on a segment deletion");
        assert_eq!(bounds, Some((31, 40)));
        assert_eq!(read_count, Some(10));
        read.join().unwrap();
        drop(go_on);
        purge.join().unwrap().unwrap();
        assert_eq!(reader.first_unpurged(), Some(31));
    }

    #[test]
    fn purge_deletes_old_segments_and_may_jump_past_the_end() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = forty_records_in_small_segments(dir.path());
        let before = segments(dir.path());
        wal.purge(30).unwrap();
        assert!(segments(dir.path()) < before);
        assert_eq!(indexes(&wal), (31..41).collect::<Vec<_>>());
        drop(wal);
        let mut wal = Wal::open(dir.path(), Some(30), SMALL).unwrap();
        assert_eq!(indexes(&wal), (31..41).collect::<Vec<_>>());
        // A snapshot beyond the log: everything goes and the log continues after it.
        wal.purge(99).unwrap();
        assert_eq!(wal.reader().bounds(), None);
        append(&mut wal, 100..102);
        drop(wal);
        let wal = Wal::open(dir.path(), Some(99), SMALL).unwrap();
        assert_eq!(indexes(&wal), vec![100, 101]);
    }
}
