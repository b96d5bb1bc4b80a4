//! Property tests of the Raft log's record parser, through the log's public API only (open,
//! append, read): segment files with arbitrary bytes, or written by the log and then damaged
//! (bytes flipped, the file cut short), must open as a log whose records read back, or be
//! refused with a one-line reason; never a panic. How damage is told from a torn tail is the
//! parser's own rule; these tests only ask that every outcome is one of those two.

use proptest::prelude::*;

use super::wal::Wal;

/// Cases per property: a few hundred small logs, each opened once, in a second or two.
const CASES: u32 = 128;
/// A small segment, so that a handful of records fill most of it and reach the next one.
const SEGMENT_BYTES: u64 = 4096;

/// Opens the log in `dir`; when it opens, every record it says it holds reads back.
fn open_and_read_everything(dir: &std::path::Path) {
    match Wal::open(dir, None, SEGMENT_BYTES) {
        Ok(wal) => {
            let reader = wal.reader();
            if let Some((first, last)) = reader.bounds() {
                let records = reader.read(first, last + 1).expect("a record the log holds reads back");
                assert_eq!(records.len() as u64, last + 1 - first);
            }
        }
        Err(refusal) => assert!(!refusal.to_string().contains('\n'), "{refusal}"),
    }
}

/// A log of `payloads` written and synced by the log itself, in a new directory.
fn written_log(payloads: &[Vec<u8>]) -> tempfile::TempDir {
    let dir = tempfile::tempdir().expect("a temporary directory");
    let mut wal = Wal::open(dir.path(), None, SEGMENT_BYTES).expect("a new log opens");
    let records: Vec<(u64, &[u8])> = payloads
        .iter()
        .enumerate()
        .map(|(i, p)| (i as u64 + 1, p.as_slice()))
        .collect();
    wal.append(records).expect("append");
    wal.sync().expect("sync");
    dir
}

/// The segment files in `dir`, in order.
fn segments(dir: &std::path::Path) -> Vec<std::path::PathBuf> {
    let mut files: Vec<_> = std::fs::read_dir(dir)
        .expect("list the log")
        .map(|entry| entry.expect("a directory entry").path())
        .filter(|path| path.extension().is_some_and(|ext| ext == "wal"))
        .collect();
    files.sort();
    files
}

proptest! {
    #![proptest_config(ProptestConfig { cases: CASES, failure_persistence: None, ..ProptestConfig::default() })]

    #[test]
    fn a_segment_of_arbitrary_bytes_opens_or_is_refused(bytes in prop::collection::vec(any::<u8>(), 0..SEGMENT_BYTES as usize)) {
        let dir = tempfile::tempdir().expect("a temporary directory");
        std::fs::write(dir.path().join(format!("{:016x}.wal", 0)), &bytes).expect("write a segment");
        open_and_read_everything(dir.path());
    }

    #[test]
    fn a_damaged_log_opens_or_is_refused(
        payloads in prop::collection::vec(prop::collection::vec(any::<u8>(), 0..300), 1..30),
        flips in prop::collection::vec((any::<prop::sample::Index>(), any::<prop::sample::Index>(), any::<u8>()), 0..4),
        cut in prop::option::of((any::<prop::sample::Index>(), any::<prop::sample::Index>())),
    ) {
        let dir = written_log(&payloads);
        let files = segments(dir.path());
        for (file, at, byte) in flips {
            let path = &files[file.index(files.len())];
            let mut bytes = std::fs::read(path).expect("read a segment");
            if bytes.is_empty() {
                continue;
            }
            let at = at.index(bytes.len());
            bytes[at] = byte;
            std::fs::write(path, &bytes).expect("damage a segment");
        }
        if let Some((file, at)) = cut {
            let path = &files[file.index(files.len())];
            let len = std::fs::metadata(path).expect("a segment's size").len();
            let at = at.index(len as usize + 1) as u64;
            std::fs::OpenOptions::new().write(true).open(path).and_then(|f| f.set_len(at)).expect("cut a segment");
        }
        open_and_read_everything(dir.path());
    }
}
