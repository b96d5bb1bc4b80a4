//! Large files written behind, a few MiB at a time, instead of all at once at their fsync.
//!
//! A snapshot file (built or received by a node, or a backup the CLI saves) is as large as
//! the data: a GB at the sizes raftkv is run at. Written through the page cache alone, all of
//! it stays dirty until the final `fsync` (the kernel starts writing back only at 10 % of
//! memory), which then hands the device a GB at once; every Raft log append on the machine
//! waits behind it, since its `fdatasync` queues on the same device. Measured on a cluster
//! holding 1 GB, with 8 clients putting while one node wrote a 1 GB backup: the longest write
//! stall was 360 and 620 ms that way, 40 and 70 ms written behind. Like RocksDB's `bytes_per_sync`, [`WriteBehind`] starts the writeback of every
//! [`WRITE_BEHIND_BYTES`] as soon as they are written (`sync_file_range`) and waits for the
//! range before that, so at most two ranges are dirty and the device gets the file at the
//! pace it is written. Durability is unchanged: the caller still fsyncs the file at the end;
//! the writeback here is only a hint, so its errors are left to that fsync to report.

use std::fs::File;
use std::io::{self, Write};
use std::os::unix::io::AsRawFd;

/// How much of the file is written before its writeback is started.
pub const WRITE_BEHIND_BYTES: u64 = 8 << 20;

/// A file written from start to end whose writeback follows its writes.
pub struct WriteBehind {
    file: File,
    /// Bytes written.
    written: u64,
    /// Bytes whose writeback was started.
    started: u64,
}

impl WriteBehind {
    pub fn new(file: File) -> WriteBehind {
        WriteBehind {
            file,
            written: 0,
            started: 0,
        }
    }

    /// The file (not yet fsynced).
    pub fn into_file(self) -> File {
        self.file
    }

    /// Waits for the writeback started last, and starts it for what was written since.
    fn write_behind(&mut self) {
        let fd = self.file.as_raw_fd();
        // SAFETY: `fd` is this file's, open for as long as `self`; the ranges are plain
        // offsets. sync_file_range only asks the kernel to write back (and wait for) pages.
        unsafe {
            if self.started > 0 {
                libc::sync_file_range(
                    fd,
                    0,
                    self.started as libc::off64_t,
                    libc::SYNC_FILE_RANGE_WAIT_BEFORE | libc::SYNC_FILE_RANGE_WRITE | libc::SYNC_FILE_RANGE_WAIT_AFTER,
                );
            }
            libc::sync_file_range(
                fd,
                self.started as libc::off64_t,
                (self.written - self.started) as libc::off64_t,
                libc::SYNC_FILE_RANGE_WRITE,
            );
        }
        self.started = self.written;
    }
}

impl Write for WriteBehind {
    fn write(&mut self, buf: &[u8]) -> io::Result<usize> {
        let n = self.file.write(buf)?;
        self.written += n as u64;
        if self.written - self.started >= WRITE_BEHIND_BYTES {
            self.write_behind();
        }
        Ok(n)
    }

    fn flush(&mut self) -> io::Result<()> {
        self.file.flush()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Read;

    #[test]
    fn a_file_written_behind_holds_every_byte_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("f");
        let mut out = io::BufWriter::new(WriteBehind::new(File::create(&path).unwrap()));
        let chunk: Vec<u8> = (0..=255u8).cycle().take(1 << 20).collect();
        // 2.5 × the write-behind range plus an odd tail: ranges started, waited for, and a rest.
        let total = (WRITE_BEHIND_BYTES * 5 / 2) as usize + 12345;
        let mut left = total;
        while left > 0 {
            let n = left.min(chunk.len());
            out.write_all(&chunk[..n]).unwrap();
            left -= n;
        }
        let inner = out.into_inner().map_err(|e| e.into_error()).unwrap();
        assert_eq!(
            inner.started,
            WRITE_BEHIND_BYTES * 2,
            "writeback started at each full range"
        );
        inner.into_file().sync_all().unwrap();

        let mut back = Vec::new();
        File::open(&path).unwrap().read_to_end(&mut back).unwrap();
        assert_eq!(back.len(), total);
        assert!(back.chunks(chunk.len()).all(|c| c == &chunk[..c.len()]));
    }
}
