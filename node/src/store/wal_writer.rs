//! The Raft log's writer thread, `raftkv-wal`: every write to the log's files and to the
//! durable Raft state beside them (vote, purge point, commit marker: `raft_state.rs`) goes
//! through it, in the order it was asked for.
//!
//! It exists so that `LogStore::append` need not wait for the disk: the entries are
//! handed over here and openraft hears through their `IOFlushed` callback once they are
//! durable, so the leader replicates an entry while its own fdatasync runs. Appends
//! queued while the thread was busy share one fdatasync (group commit at the disk, as
//! etcd's WAL does): the thread writes each of them (one `pwrite` each), syncs once,
//! then calls their callbacks in order. A vote or a truncation waits behind the appends
//! queued before it and is durable when its caller hears back, so no write takes effect
//! before an earlier one (openraft's rule for vote and log I/O).
//!
//! A purge is queued in the same order, but its caller does not wait for it. openraft's
//! core awaits `purge` inline, and a purge first makes the state machine durable (an fsync
//! of the engine's journal) and the purge point (another fsync): right after a snapshot is
//! built those wait behind the snapshot file's writeback, seconds at 1 GB, and a core held
//! that long answers no heartbeat, so the followers elected a new leader. Nothing needs the
//! purge to be durable at once: until the purge point is stored, the log still holds every
//! entry it names, and a restart simply starts from the older point. A purge that fails
//! fails the log like any other write here: the next append, vote or truncation reports it.
//!
//! An I/O error fails the appends of its run and everything after it: a log whose
//! fdatasync failed is in an unknown state, so the thread never touches the disk
//! again and openraft, told of the error, stops the node. A panic (a broken invariant
//! of the log, see `wal.rs`) is reported the same way, after it is logged.

use std::io;
use std::sync::mpsc;
use std::sync::{Arc, Mutex};

use openraft::storage::IOFlushed;
use tokio::sync::oneshot;

use crate::store::raft_state::RaftStateFiles;
use crate::store::wal::Wal;
use crate::types::{LogId, TypeConfig, Vote};

/// The name of the writer thread.
const THREAD_NAME: &str = "raftkv-wal";

/// Makes everything the state machine applied so far durable: called before the log is
/// purged, so that a restart never needs a purged entry.
pub type PersistStateMachine = Box<dyn Fn() -> io::Result<()> + Send>;

/// The durable Raft state the thread writes beside the log.
pub(super) struct RaftState {
    pub(super) files: RaftStateFiles,
    pub(super) persist_state_machine: PersistStateMachine,
}

/// The commit index openraft last saved, and the one last written to its file. It is written
/// lazily (without a sync: see `raft_state.rs`), after a sync of the log,
/// and never beyond the log's durable end: a restart re-applies the log up to it, so it
/// must name an entry the log still holds. A stored commit index that lags is safe: a
/// restarted node re-learns the rest from the leader.
#[derive(Default)]
pub(super) struct CommitMarker {
    ids: Mutex<(Option<LogId>, Option<LogId>)>,
}

impl CommitMarker {
    pub(super) fn saved(&self, committed: Option<LogId>) {
        self.ids.lock().expect("commit marker lock").0 = committed;
    }

    /// At open: what is stored is also the latest.
    pub(super) fn loaded(&self, committed: Option<LogId>) {
        *self.ids.lock().expect("commit marker lock") = (committed, committed);
    }

    /// The commit index last saved (or loaded at open).
    pub(super) fn latest(&self) -> Option<LogId> {
        self.ids.lock().expect("commit marker lock").0
    }

    /// Writes the latest commit index to its file if it moved and the log holds it durably.
    fn store(&self, state: &RaftState, durable_last: Option<u64>) -> io::Result<()> {
        let id = {
            let ids = self.ids.lock().expect("commit marker lock");
            let (latest, stored) = *ids;
            let Some(id) = latest else { return Ok(()) };
            if latest == stored || durable_last.is_none_or(|last| id.index > last) {
                return Ok(());
            }
            id
        };
        // Written with the lock released: [`CommitMarker::saved`] is called on the async
        // runtime at every commit, and a write to the file can wait on a busy disk (107 ms
        // measured while snapshots were written), holding up everything the runtime does.
        // Only this thread stores, so `stored` cannot change meanwhile.
        state.files.save_committed(&id)?;
        self.ids.lock().expect("commit marker lock").1 = Some(id);
        Ok(())
    }
}

/// Log records to write: each entry's index and its encoding.
pub(super) type Records = Vec<(u64, Vec<u8>)>;

/// What the thread is asked to do, in order.
enum Op {
    /// Write these records; call `flushed` once they are durable (or cannot be).
    Append { records: Records, flushed: Flushed },
    /// Remove the records from `from` on.
    Truncate { from: u64, done: Done },
    /// Store `upto` as the purge point durably, then forget the records up to it.
    Purge { upto: LogId },
    /// Store the vote durably.
    SaveVote { vote: Vote, done: Done },
    /// For tests: hold the thread until the sender is dropped.
    #[cfg(test)]
    Hold(std::sync::mpsc::Receiver<()>),
}

type Done = oneshot::Sender<io::Result<()>>;

/// Who hears that an append is durable: openraft's callback, and the in-memory copy of the
/// newest entries (which may forget an entry only once it is durable).
pub(super) struct Flushed {
    pub(super) callback: IOFlushed<TypeConfig>,
    pub(super) on_durable: Box<dyn FnOnce() + Send>,
}

/// The handle to the writer thread. Cheap to clone. Dropping the last handle waits until
/// the thread has done the work queued and ended, so that nothing writes to the data
/// directory once its store is gone.
#[derive(Clone)]
pub(super) struct WalWriter {
    ops: mpsc::Sender<Op>,
    _thread: Arc<JoinOnDrop>,
}

/// Joins the writer thread when the last handle goes. Declared after `ops` in
/// [`WalWriter`], so dropped after it: the thread sees its queue closed, and ends.
struct JoinOnDrop(Option<std::thread::JoinHandle<()>>);

impl Drop for JoinOnDrop {
    fn drop(&mut self) {
        if let Some(thread) = self.0.take() {
            let _ = thread.join();
        }
    }
}

fn stopped() -> io::Error {
    io::Error::other("the raft log writer has stopped")
}

impl WalWriter {
    /// Starts the thread, which owns `wal` from now on. What it logs carries the span
    /// current now (the node's).
    pub(super) fn start(wal: Wal, state: RaftState, marker: Arc<CommitMarker>) -> io::Result<WalWriter> {
        let (ops, queue) = mpsc::channel();
        let span = tracing::Span::current();
        let thread = std::thread::Builder::new()
            .name(THREAD_NAME.to_string())
            .spawn(move || {
                let _entered = span.enter();
                Thread {
                    wal,
                    state,
                    marker,
                    failed: None,
                }
                .run(queue)
            })?;
        Ok(WalWriter {
            ops,
            _thread: Arc::new(JoinOnDrop(Some(thread))),
        })
    }

    /// Queues `records` to be written; returns at once. `flushed` hears when they are durable.
    pub(super) fn append(&self, records: Records, flushed: Flushed) -> io::Result<()> {
        self.ops.send(Op::Append { records, flushed }).map_err(|_| stopped())
    }

    /// Removes the records from `from` on, after every append queued before; durable on return.
    pub(super) async fn truncate(&self, from: u64) -> io::Result<()> {
        self.call(|done| Op::Truncate { from, done }).await
    }

    /// Queues a purge up to `upto`, after every append queued before; returns at once.
    pub(super) fn purge(&self, upto: LogId) -> io::Result<()> {
        self.ops.send(Op::Purge { upto }).map_err(|_| stopped())
    }

    /// Saves the vote, after every append queued before; durable on return.
    pub(super) async fn save_vote(&self, vote: Vote) -> io::Result<()> {
        self.call(|done| Op::SaveVote { vote, done }).await
    }

    async fn call(&self, op: impl FnOnce(Done) -> Op) -> io::Result<()> {
        let (done, result) = oneshot::channel();
        self.ops.send(op(done)).map_err(|_| stopped())?;
        result.await.map_err(|_| stopped())?
    }

    /// For tests: stops the thread before its next piece of work until the returned
    /// sender is dropped.
    #[cfg(test)]
    pub(super) fn hold(&self) -> std::sync::mpsc::Sender<()> {
        let (release, held) = std::sync::mpsc::channel();
        self.ops.send(Op::Hold(held)).expect("the writer runs");
        release
    }
}

/// The thread's state.
struct Thread {
    wal: Wal,
    state: RaftState,
    marker: Arc<CommitMarker>,
    /// Why the log cannot be written any more, once it cannot.
    failed: Option<String>,
}

impl Thread {
    fn run(mut self, queue: mpsc::Receiver<Op>) {
        while let Ok(first) = queue.recv() {
            // Everything queued meanwhile: the appends among it share a sync.
            let mut ops = std::iter::once(first).chain(queue.try_iter()).peekable();
            while let Some(op) = ops.next() {
                match op {
                    Op::Append { records, flushed } => {
                        let mut run = vec![(records, flushed)];
                        while let Some(Op::Append { .. }) = ops.peek() {
                            let Some(Op::Append { records, flushed }) = ops.next() else {
                                unreachable!("peeked an append")
                            };
                            run.push((records, flushed));
                        }
                        self.append_run(run);
                    }
                    Op::Truncate { from, done } => {
                        let _ = done.send(self.guarded(|t| t.wal.truncate(from)));
                    }
                    Op::Purge { upto } => {
                        // A failure is logged, and fails the log for what follows.
                        let _ = self.guarded(|t| t.purge(upto));
                    }
                    Op::SaveVote { vote, done } => {
                        let _ = done.send(self.guarded(|t| t.save_vote(&vote)));
                    }
                    #[cfg(test)]
                    Op::Hold(held) => {
                        let _ = held.recv();
                    }
                }
            }
        }
    }

    /// Writes a run of appends, makes them durable with one sync, then tells each, in order.
    fn append_run(&mut self, run: Vec<(Records, Flushed)>) {
        let (records, flushed): (Vec<_>, Vec<_>) = run.into_iter().unzip();
        let result = self.guarded(|t| {
            for records in &records {
                t.wal.write(records.iter().map(|(i, bytes)| (*i, bytes.as_slice())))?;
            }
            let syncing = std::time::Instant::now();
            t.wal.sync()?;
            crate::metrics::WAL_FSYNC_SECONDS.observe(syncing.elapsed().as_secs_f64());
            Ok(())
        });
        for flushed in flushed {
            if result.is_ok() {
                (flushed.on_durable)();
            }
            let result = match &result {
                Ok(()) => Ok(()),
                Err(e) => Err(io::Error::new(e.kind(), e.to_string())),
            };
            flushed.callback.io_completed(result);
        }
        // Only once the appends are told: the marker's write is one more system call (~20 µs
        // on this machine), and every follower's answer to an AppendEntries waits for these
        // callbacks. Best effort: a commit marker that lags is safe, and an error here is its
        // file's, not the log's.
        if result.is_ok() {
            let durable_last = self.wal.reader().bounds().map(|(_, last)| last);
            if let Err(e) = self.marker.store(&self.state, durable_last) {
                tracing::warn!(error = %e, "cannot store the commit marker; it lags");
            }
        }
    }

    fn purge(&mut self, upto: LogId) -> io::Result<()> {
        // The state machine is made durable only now and then: its applied state (which
        // covers these entries) is made durable first, then the new purge point, before
        // any entry disappears, so a restart never needs a purged entry and knows where
        // the log starts.
        (self.state.persist_state_machine)()?;
        self.state.files.save_purged(&upto)?;
        self.wal.purge(upto.index)
    }

    fn save_vote(&mut self, vote: &Vote) -> io::Result<()> {
        self.state.files.save_vote(vote)
    }

    /// Runs `f` unless the log failed before; an error or a panic in it fails the log for
    /// good. The error returned says why the log failed, first or again.
    fn guarded(&mut self, f: impl FnOnce(&mut Self) -> io::Result<()>) -> io::Result<()> {
        if let Some(why) = &self.failed {
            return Err(io::Error::other(format!("the raft log failed earlier: {why}")));
        }
        let why = match std::panic::catch_unwind(std::panic::AssertUnwindSafe(|| f(self))) {
            Ok(Ok(())) => return Ok(()),
            Ok(Err(e)) => {
                tracing::error!(error = %e, "cannot write the raft log; this node stops");
                e.to_string()
            }
            Err(panic) => {
                let message = panic
                    .downcast_ref::<String>()
                    .cloned()
                    .or_else(|| panic.downcast_ref::<&str>().map(|s| s.to_string()))
                    .unwrap_or_else(|| "a panic".to_string());
                tracing::error!(%message, "the raft log writer panicked; this node stops");
                format!("the raft log writer panicked: {message}")
            }
        };
        self.failed = Some(why.clone());
        Err(io::Error::other(why))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use crate::types::LeaderId;

    /// A writer on a fresh log and its state files, and the log's count of fdatasyncs.
    fn writer(dir: &std::path::Path, prepare: impl FnOnce(&mut Wal)) -> (WalWriter, Arc<AtomicUsize>) {
        let mut wal = Wal::open(dir, None, 1 << 20).unwrap();
        prepare(&mut wal);
        let syncs = wal.sync_count();
        let state = RaftState {
            files: RaftStateFiles::open(dir).unwrap().0,
            persist_state_machine: Box::new(|| Ok(())),
        };
        let writer = WalWriter::start(wal, state, Arc::default()).unwrap();
        (writer, syncs)
    }

    fn record(index: u64) -> Records {
        vec![(index, format!("entry {index}").into_bytes())]
    }

    /// Appends `record(index)`; the order in which the appends are told they are durable
    /// goes to `told`, and each append's outcome to the returned receiver.
    fn append(
        writer: &WalWriter,
        index: u64,
        told: &Arc<Mutex<Vec<u64>>>,
    ) -> tokio::sync::oneshot::Receiver<io::Result<()>> {
        use openraft::type_config::TypeConfigExt;
        let (tx, rx) = TypeConfig::oneshot();
        let told = told.clone();
        let flushed = Flushed {
            callback: IOFlushed::signal(tx),
            on_durable: Box::new(move || told.lock().unwrap().push(index)),
        };
        writer.append(record(index), flushed).unwrap();
        rx
    }

    #[tokio::test]
    async fn appends_queued_together_share_one_fdatasync_and_are_told_in_order() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, syncs) = writer(dir.path(), |_| {});
        let told = Arc::new(Mutex::new(Vec::new()));
        let held = writer.hold();
        let outcomes: Vec<_> = (0..5).map(|i| append(&writer, i, &told)).collect();
        drop(held);
        for outcome in outcomes {
            outcome.await.unwrap().unwrap();
        }
        assert_eq!(*told.lock().unwrap(), vec![0, 1, 2, 3, 4]);
        assert_eq!(syncs.load(Ordering::Relaxed), 1, "one fdatasync for the five appends");
    }

    #[tokio::test]
    async fn a_failed_fdatasync_reaches_every_append_of_its_run_and_fails_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, syncs) = writer(dir.path(), |wal| wal.fail_next_sync());
        let told = Arc::new(Mutex::new(Vec::new()));
        let held = writer.hold();
        let outcomes: Vec<_> = (0..3).map(|i| append(&writer, i, &told)).collect();
        drop(held);
        for outcome in outcomes {
            let error = outcome.await.unwrap().unwrap_err();
            assert!(error.to_string().contains("injected fdatasync failure"), "{error}");
        }
        assert!(told.lock().unwrap().is_empty(), "nothing is durable");
        assert_eq!(syncs.load(Ordering::Relaxed), 0);
        // The log is in an unknown state: nothing after it is written, and each says why.
        let later = append(&writer, 3, &told).await.unwrap().unwrap_err();
        assert!(later.to_string().contains("failed earlier"), "{later}");
        let vote = writer.save_vote(Vote::new(1, 1)).await.unwrap_err();
        assert!(vote.to_string().contains("failed earlier"), "{vote}");
        // A purge is only queued; it too does nothing, and the log stays failed.
        writer.purge(LogId::new(LeaderId { term: 1, node_id: 1 }, 0)).unwrap();
        let truncate = writer.truncate(0).await.unwrap_err();
        assert!(truncate.to_string().contains("failed earlier"), "{truncate}");
    }

    #[tokio::test]
    async fn a_purge_returns_before_it_is_done_and_a_failed_one_fails_what_follows() {
        let dir = tempfile::tempdir().unwrap();
        let mut wal = Wal::open(dir.path(), None, 1 << 20).unwrap();
        wal.write([(0, b"entry 0".as_slice())]).unwrap();
        wal.sync().unwrap();
        let state = RaftState {
            files: RaftStateFiles::open(dir.path()).unwrap().0,
            persist_state_machine: Box::new(|| Err(io::Error::other("injected persist failure"))),
        };
        let writer = WalWriter::start(wal, state, Arc::default()).unwrap();
        let held = writer.hold();
        // The thread is held: a purge that waited would never return.
        writer.purge(LogId::new(LeaderId { term: 1, node_id: 1 }, 0)).unwrap();
        drop(held);
        let vote = writer.save_vote(Vote::new(1, 1)).await.unwrap_err();
        assert!(vote.to_string().contains("injected persist failure"), "{vote}");
    }

    #[tokio::test]
    async fn a_broken_invariant_in_the_writer_fails_the_log_instead_of_killing_the_thread() {
        let dir = tempfile::tempdir().unwrap();
        let (writer, _) = writer(dir.path(), |_| {});
        let told = Arc::new(Mutex::new(Vec::new()));
        append(&writer, 0, &told).await.unwrap().unwrap();
        // A hole: the writer panics on it; the append hears of it as an error.
        let error = append(&writer, 5, &told).await.unwrap().unwrap_err();
        assert!(error.to_string().contains("a hole in the log"), "{error}");
        let later = writer.truncate(0).await.unwrap_err();
        assert!(later.to_string().contains("failed earlier"), "{later}");
        assert_eq!(*told.lock().unwrap(), vec![0]);
    }
}
