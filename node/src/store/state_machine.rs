//! openraft's state machine: applies committed entries, builds and installs snapshots,
//! and serves the KV service's reads ([`KvReader`]), on a storage engine (`engine/`).
//!
//! The engine holds user data, client sessions (exactly-once retries, see
//! `sessions.rs`), the applied log id and the membership, laid out as `keys.rs` says.
//! Each `apply` call takes effect as a unit (one engine apply), so a crash never
//! leaves data applied without the applied marker (or the reverse). A snapshot is the state
//! machine itself (`snapshot_file.rs`): building one only marks the point the log may be
//! purged up to (the log store persists the engine before it purges), and the current
//! snapshot is a consistent view of the engine at what it has applied, written out on a
//! blocking thread, straight into the transfer, only when a follower needs it. A received snapshot is installed by making
//! the file `snapshot.bin` first, then streaming its records into the engine's next
//! generation, which becomes current whole (readers see the old state until then), then
//! removing the file; `StateMachine::open` finishes an install that a crash interrupted.
//!
//! A client hears back once its entry is committed and its result is known, before the
//! batch's engine write: the entry is durable in a majority's logs by then, and the write
//! on a blocking thread would add two thread hand-offs to every write's latency. Whatever
//! reads the engine waits for what it must see: a linearizable read for openraft's applied
//! index (moved only once `apply` returns), a stale read for the writes this node answered
//! ([`KvReader::holds_answered_writes`]). A batch that changes the membership answers after
//! its engine write, as the membership checks read the engine (`removed_at`).
//!
//! Invariants: applied only moves forward (asserted); the sessions in memory are those
//! stored in the engine; a scan page never shows part of an apply (it reads a view); the
//! engine holds every write this node answered before a stale read of it is served.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::io;
use std::ops::Bound;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use futures::{Stream, StreamExt};
use openraft::storage::{ApplyResponder, EntryResponder, RaftSnapshotBuilder, RaftStateMachine};
use openraft::OptionalSend;
use prost::Message;
use raftkv::raft_pb as pb;

use crate::convert;
use crate::snapshot_policy::LogVolume;
use crate::store::engine::{Engine, EngineError, View, Writes};
use crate::store::keys::{
    data_key, removed_member_key, result_client, result_key, result_record, result_record_sequences, session_key,
    user_key, APPLIED_KEY, MEMBERSHIP_KEY, REMOVED_MEMBER_PREFIX, RESULT_PREFIX, SESSION_PREFIX,
};
use crate::store::sessions::{Seen, Sessions};
use crate::store::snapshot_file::{self, SnapshotFile, SnapshotFileError, UnwrittenSnapshot};
use crate::types::{
    Command, CommandResult, Entry, EntryPayload, LogId, Op, Snapshot, SnapshotData, SnapshotMeta, StoredMembership,
    TypeConfig, WriteGroupResults,
};

/// Writes result record `record` of `client_id` as `sessions` has it now, or removes it
/// when none of its results are left.
fn write_results(writes: &mut Writes, sessions: &Sessions, client_id: u64, record: u64) {
    let results = sessions.results_pb(client_id, result_record_sequences(record));
    if results.is_empty() {
        writes.remove(result_key(client_id, record));
    } else {
        let stored = pb::ClientSession {
            client_id,
            results,
            ..Default::default()
        };
        writes.insert(result_key(client_id, record), stored.encode_to_vec());
    }
}

/// Writes a whole session (from a snapshot) as the state machine
/// stores it: its meta under `session_key`, its results in records under `result_key`.
fn write_session(writes: &mut Writes, session: &pb::ClientSession) {
    let mut records: BTreeMap<u64, Vec<pb::SessionResult>> = BTreeMap::new();
    for r in &session.results {
        records.entry(result_record(r.sequence)).or_default().push(r.clone());
    }
    for (record, results) in records {
        let stored = pb::ClientSession {
            client_id: session.client_id,
            results,
            ..Default::default()
        };
        writes.insert(result_key(session.client_id, record), stored.encode_to_vec());
    }
    let meta = pb::ClientSession {
        results: Vec::new(),
        ..session.clone()
    };
    writes.insert(session_key(session.client_id), meta.encode_to_vec());
}

/// Sends each client waiting on a batch its result.
fn answer(results: Vec<WriteGroupResults>, responders: Vec<Option<ApplyResponder<TypeConfig>>>) {
    for (result, responder) in results.into_iter().zip(responders) {
        if let Some(responder) = responder {
            responder.send(result);
        }
    }
}

fn join_err(e: tokio::task::JoinError) -> io::Error {
    io::Error::other(format!("storage task failed: {e}"))
}

/// How much of a snapshot an install hands the engine at a time.
const INSTALL_PART_BYTES: usize = 4 << 20;

/// Read access to the state machine's data for the KV service. Reads see
/// every entry applied so far; whether that is recent enough is the caller's
/// business (see `kv_service.rs`).
#[derive(Clone)]
pub struct KvReader {
    engine: Arc<dyn Engine>,
    progress: Arc<ApplyProgress>,
}

/// How far this node answered writes, and how far its engine holds them (log indexes).
#[derive(Default)]
struct ApplyProgress {
    /// The last entry whose result is out (a client may have heard back; on a follower,
    /// nobody did, and its stale reads simply wait for the apply under way).
    answered: AtomicU64,
    /// The last entry in the engine.
    in_engine: tokio::sync::watch::Sender<u64>,
}

impl KvReader {
    /// Waits until the engine holds every write this node answered so far: a stale read
    /// here then sees the writes it answered (at most one batch's engine write away).
    pub async fn holds_answered_writes(&self) {
        let answered = self.progress.answered.load(Ordering::Acquire);
        if *self.progress.in_engine.borrow() >= answered {
            return; // the usual case: no engine write of an answered batch under way
        }
        let mut in_engine = self.progress.in_engine.subscribe();
        // An error: the state machine is gone, and the read fails on its own.
        let _ = in_engine.wait_for(|&index| index >= answered).await;
    }

    pub fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
        self.engine.get(&data_key(key))
    }

    /// The log index of the membership that removed node `id`, if it was ever removed.
    pub fn removed_at(&self, id: u64) -> Result<Option<u64>, EngineError> {
        let key = removed_member_key(id);
        Ok(self
            .engine
            .get(&key)?
            .and_then(|value| crate::store::keys::removed_member(&key, &value))
            .map(|(_, index)| index))
    }

    /// Up to `limit` pairs (and about `max_bytes` of keys and values, but at
    /// least one pair) whose key starts with `prefix` and sorts after
    /// `start_after`, in key order, and whether more follow. A page is read from one
    /// view: it shows the state between two applies, never part of one.
    pub fn scan(
        &self,
        prefix: &[u8],
        start_after: &[u8],
        limit: usize,
        max_bytes: usize,
    ) -> Result<(Vec<(Bytes, Bytes)>, bool), EngineError> {
        let full_prefix = data_key(prefix);
        let after = data_key(start_after);
        let from = if start_after.is_empty() || start_after < prefix {
            Bound::Included(full_prefix.as_slice())
        } else {
            Bound::Excluded(after.as_slice())
        };
        let view = self.engine.view();
        let mut pairs = Vec::new();
        let mut bytes = 0;
        for pair in view.range(from) {
            let (k, v) = pair?;
            if !k.starts_with(&full_prefix) {
                break;
            }
            if pairs.len() == limit || (!pairs.is_empty() && bytes + k.len() + v.len() > max_bytes) {
                return Ok((pairs, true));
            }
            bytes += k.len() + v.len();
            pairs.push((user_key(&k), v));
        }
        Ok((pairs, false))
    }
}

/// Why the state machine cannot be opened: its records are unreadable or damaged, or
/// the snapshot a crash interrupted cannot be installed. Each message is one line.
#[derive(Debug, thiserror::Error)]
pub enum StateMachineOpenError {
    #[error(transparent)]
    Engine(#[from] EngineError),
    #[error("state machine's applied marker is corrupt: {0}")]
    CorruptApplied(convert::DecodeError),
    #[error("state machine's membership record is corrupt: {0}")]
    CorruptMembership(convert::DecodeError),
    #[error("a client session record is corrupt: {0}")]
    CorruptSession(prost::DecodeError),
    #[error("a client session result record has a malformed key")]
    MalformedResultKey,
    #[error("a client session result record is corrupt: {0}")]
    CorruptResults(prost::DecodeError),
    #[error(transparent)]
    SnapshotFile(#[from] SnapshotFileError),
    #[error("cannot install the snapshot: {0}")]
    Install(io::Error),
    #[error("cannot clear away a snapshot a crash left unfinished: {0}")]
    Leftovers(io::Error),
}

/// openraft's state machine.
pub struct StateMachine {
    engine: Arc<dyn Engine>,
    dir: PathBuf,
    applied: Option<LogId>,
    membership: StoredMembership,
    sessions: Sessions,
    /// What was answered and what the engine holds, for stale reads.
    progress: Arc<ApplyProgress>,
    /// The log bytes applied since the last snapshot, for the snapshot policy.
    log_volume: Arc<LogVolume>,
    /// The span current at open (the node's), for what it logs: openraft runs the state
    /// machine in a task it spawns without one.
    span: tracing::Span,
}

impl StateMachine {
    /// Opens the state machine kept in `engine`, for data directory `dir`: if a crash came
    /// between writing a received snapshot and installing it, the install is finished here.
    pub fn open(engine: Arc<dyn Engine>, dir: &Path) -> Result<StateMachine, StateMachineOpenError> {
        use StateMachineOpenError as E;
        let applied = match engine.get(APPLIED_KEY)? {
            Some(v) => Some(convert::decode(&v, convert::log_id_from_pb).map_err(E::CorruptApplied)?),
            None => None,
        };
        let membership = match engine.get(MEMBERSHIP_KEY)? {
            Some(v) => {
                convert::decode(&v, |m| convert::stored_membership_from_pb(Some(m))).map_err(E::CorruptMembership)?
            }
            None => StoredMembership::default(),
        };
        let mut sessions = Sessions::default();
        {
            let view = engine.view();
            for pair in view.prefix(&[SESSION_PREFIX]) {
                let (_, v) = pair?;
                sessions.insert_pb(pb::ClientSession::decode(v.as_ref()).map_err(E::CorruptSession)?);
            }
            for pair in view.prefix(&[RESULT_PREFIX]) {
                let (k, v) = pair?;
                let client_id = result_client(&k).ok_or(E::MalformedResultKey)?;
                let record = pb::ClientSession::decode(v.as_ref()).map_err(E::CorruptResults)?;
                for result in record.results {
                    sessions.insert_result_pb(client_id, result);
                }
            }
        }
        snapshot_file::remove_leftovers(dir).map_err(E::Leftovers)?;
        let snapshot = SnapshotFile::open(&snapshot_file::path_in(dir))?;
        let mut sm = StateMachine {
            log_volume: LogVolume::new(engine.disk_bytes()),
            engine,
            dir: dir.to_path_buf(),
            applied,
            membership,
            sessions,
            progress: Arc::default(),
            span: tracing::Span::current(),
        };
        if let Some((meta, file)) = snapshot {
            if meta.last_log_id > sm.applied {
                let sessions = install_into(sm.engine.as_ref(), &meta, &file).map_err(E::Install)?;
                sm.installed(&meta, sessions);
            }
            // The engine holds it durably now (or held it already: the crash came after
            // the install, before the file went).
            snapshot_file::remove_installed(dir).map_err(E::Leftovers)?;
        }
        Ok(sm)
    }

    /// The index of the last entry applied, if any.
    pub fn applied_index(&self) -> Option<u64> {
        self.applied.map(|id| id.index)
    }

    /// The log bytes applied since the last snapshot and its size, as this state machine
    /// keeps them up to date.
    pub fn log_volume(&self) -> Arc<LogVolume> {
        self.log_volume.clone()
    }

    pub fn reader(&self) -> KvReader {
        KvReader {
            engine: self.engine.clone(),
            progress: self.progress.clone(),
        }
    }

    /// What the state machine keeps in memory, once `meta`'s snapshot is installed.
    fn installed(&mut self, meta: &SnapshotMeta, sessions: Sessions) {
        self.applied = meta.last_log_id;
        self.membership = meta.last_membership.clone();
        self.sessions = sessions;
    }
}

/// Fills `engine`'s next generation with the records of snapshot file `snapshot` (a part
/// at a time), applied and membership from `meta`, and makes it current whole, only if
/// the whole file was read and its checksum matched. Returns the snapshot's sessions.
/// Blocks on disk I/O.
fn install_into(engine: &dyn Engine, meta: &SnapshotMeta, snapshot: &SnapshotFile) -> io::Result<Sessions> {
    let mut install = engine.start_install()?;
    let mut writes = Writes::default();
    let mut sessions = Sessions::default();
    for record in snapshot.records() {
        match record?.record {
            Some(pb::snapshot_record::Record::Pair(pair)) => writes.insert(data_key(&pair.key), pair.value),
            Some(pb::snapshot_record::Record::Session(session)) => {
                write_session(&mut writes, &session);
                sessions.insert_pb(session);
            }
            Some(pb::snapshot_record::Record::RemovedMember(removed)) => {
                writes.insert(removed_member_key(removed.id), removed.log_index.to_be_bytes().to_vec())
            }
            None => {}
        }
        if writes.bytes() >= INSTALL_PART_BYTES {
            install.apply(std::mem::take(&mut writes))?;
        }
    }
    set_markers(&mut writes, &meta.last_log_id, Some(&meta.last_membership));
    install.apply(writes)?;
    install.commit()?;
    Ok(sessions)
}

/// Fills the empty `engine` from the backup `backup` as the snapshot `meta` names (for a
/// restore: the backup's log position with the new cluster's membership), leaves out the
/// backup's removed members (a restored cluster's membership history starts at the restore:
/// an id removed from the old cluster may be a member of the new one), and makes it durable.
/// Only if the whole backup was read and its checksum matched. Blocks on disk I/O.
pub(super) fn restore_into(engine: &dyn Engine, meta: &SnapshotMeta, backup: &SnapshotFile) -> io::Result<()> {
    install_into(engine, meta, backup)?;
    let mut forget = Writes::default();
    for pair in engine.view().prefix(&[REMOVED_MEMBER_PREFIX]) {
        forget.remove(pair?.0);
    }
    engine.apply(forget)?;
    engine.persist()?;
    Ok(())
}

/// One apply's writes and results, worked out and not yet made.
struct Prepared {
    writes: Writes,
    results: Vec<WriteGroupResults>,
    applied: Option<LogId>,
    membership: Option<StoredMembership>,
}

impl StateMachine {
    fn current_value(&self, key: &Bytes, written: &HashMap<Bytes, Option<Bytes>>) -> io::Result<Option<Bytes>> {
        match written.get(key) {
            Some(v) => Ok(v.clone()),
            None => Ok(self.engine.get(&data_key(key))?),
        }
    }

    /// Applies one operation to `writes`, reading through `written`.
    fn apply_op(
        &self,
        op: Op,
        writes: &mut Writes,
        written: &mut HashMap<Bytes, Option<Bytes>>,
    ) -> io::Result<CommandResult> {
        Ok(match op {
            Op::Put { key, value } => {
                writes.insert(data_key(&key), value.clone());
                written.insert(key, Some(value));
                CommandResult::Put
            }
            Op::Delete { key, expect } => {
                let current = self.current_value(&key, written)?;
                let existed = current.is_some();
                let matches = match &expect {
                    None => true,
                    Some(e) => current.as_ref() == Some(e),
                };
                if matches && existed {
                    writes.remove(data_key(&key));
                    written.insert(key, None);
                }
                let current = if matches { None } else { current };
                CommandResult::Delete {
                    existed,
                    deleted: matches && existed,
                    current,
                }
            }
            Op::Cas { key, expect, new_value } => {
                let current = self.current_value(&key, written)?;
                if current == expect {
                    writes.insert(data_key(&key), new_value.clone());
                    written.insert(key, Some(new_value));
                    CommandResult::Cas {
                        swapped: true,
                        current: None,
                    }
                } else {
                    CommandResult::Cas {
                        swapped: false,
                        current,
                    }
                }
            }
        })
    }
}

fn set_markers(writes: &mut Writes, applied: &Option<LogId>, membership: Option<&StoredMembership>) {
    if let Some(applied) = applied {
        writes.insert(APPLIED_KEY, convert::log_id_to_pb(applied).encode_to_vec());
    }
    if let Some(m) = membership {
        writes.insert(MEMBERSHIP_KEY, convert::stored_membership_to_pb(m).encode_to_vec());
    }
}

/// What a snapshot is built from: a view of the state machine and its client sessions.
type ViewToBuild = (Box<dyn View>, Vec<pb::ClientSession>);

/// A snapshot of the state machine at the point the builder was made (a consistent view,
/// with the sessions and markers of the same point), so concurrent applies cannot tear it
/// and need not wait for it (with fjall; sled's view holds applies back). openraft's builds
/// write nothing (see the module doc); a backup writes the view into a file.
pub struct SnapshotBuilder {
    dir: PathBuf,
    meta: SnapshotMeta,
    /// The view and the sessions, until the snapshot is built (in a mutex: openraft wants
    /// the builder `Sync`, and a view is only `Send`).
    state: std::sync::Mutex<Option<ViewToBuild>>,
    engine: Arc<dyn Engine>,
    span: tracing::Span,
    /// Told the point the snapshot was taken at, and the state machine's size.
    log_volume: Arc<LogVolume>,
    /// The log volume's mark at the view this snapshot is built from.
    volume_mark: u64,
}

impl RaftSnapshotBuilder<TypeConfig> for SnapshotBuilder {
    type SnapshotData = SnapshotData;

    /// Marks the builder's point as the node's snapshot: openraft may purge the log up to
    /// it (the log store makes the engine durable first). Writes nothing.
    async fn build_snapshot(&mut self) -> io::Result<Snapshot> {
        let (view, sessions) = self
            .state
            .get_mut()
            .expect("snapshot builder lock poisoned")
            .take()
            .ok_or_else(|| io::Error::other("a snapshot builder builds one snapshot"))?;
        let engine = self.engine.clone();
        let state_bytes = tokio::task::spawn_blocking(move || engine.disk_bytes())
            .await
            .map_err(join_err)?;
        self.log_volume.snapshot_taken(self.volume_mark, state_bytes);
        tracing::debug!(parent: &self.span, last_log_id = ?self.meta.last_log_id, state_bytes, "snapshot point");
        Ok(Snapshot {
            meta: self.meta.clone(),
            snapshot: SnapshotData::Unwritten(UnwrittenSnapshot::new(self.meta.clone(), view, sessions)),
        })
    }
}

impl SnapshotBuilder {
    /// Writes this builder's point in time as backup number `number` (`raftkv snapshot save`),
    /// beside the node's own snapshot, which it leaves alone; the scan stops once `cancelled` is
    /// set (the caller went away). Returns the snapshot's meta and the file,
    /// open, its name already removed from the data directory.
    pub async fn build_backup(
        self,
        number: u64,
        cancelled: Arc<std::sync::atomic::AtomicBool>,
    ) -> io::Result<(SnapshotMeta, SnapshotFile)> {
        let (view, sessions) = self
            .state
            .into_inner()
            .expect("snapshot builder lock poisoned")
            .ok_or_else(|| io::Error::other("a snapshot builder builds one snapshot"))?;
        let path = snapshot_file::backup_path_in(&self.dir, number);
        let meta = self.meta;
        let unwritten = UnwrittenSnapshot::new(meta.clone(), view, sessions);
        let file = tokio::task::spawn_blocking(move || unwritten.write_unlinked(path, &cancelled))
            .await
            .map_err(join_err)??;
        Ok((meta, file))
    }

    /// Where backup number `number` is being written (its size is the progress so far).
    pub fn backup_path(&self, number: u64) -> PathBuf {
        snapshot_file::backup_path_in(&self.dir, number)
    }
}

impl StateMachine {
    /// Applies committed entries as one unit (one engine apply) and returns
    /// each entry's results, in order (for tests: nothing is answered here).
    pub fn apply_entries(&mut self, entries: impl IntoIterator<Item = Entry>) -> io::Result<Vec<WriteGroupResults>> {
        let prepared = self.prepare(entries)?;
        self.engine.apply(prepared.writes)?;
        self.applied_up_to(prepared.applied, prepared.membership);
        Ok(prepared.results)
    }

    /// Works out what applying `entries` writes and answers (the client sessions in
    /// memory move on with it); the caller makes the writes, then calls `applied_up_to`.
    fn prepare(&mut self, entries: impl IntoIterator<Item = Entry>) -> io::Result<Prepared> {
        let mut writes = Writes::default();
        // Values this call has written so far (None: deleted), so later
        // commands see earlier ones before their writes reach the tree.
        let mut written: HashMap<Bytes, Option<Bytes>> = HashMap::new();
        // (client, record) of each result record to rewrite; their clients' metas too.
        let mut touched_results: BTreeSet<(u64, u64)> = BTreeSet::new();
        let mut results = Vec::new();
        let mut applied = self.applied;
        let mut membership = None;
        for entry in entries {
            assert!(
                Some(entry.log_id) > applied,
                "log entry {} applied out of order",
                entry.log_id
            );
            applied = Some(entry.log_id);
            self.log_volume
                .applied(convert::entry_to_pb(&entry).encoded_len() as u64);
            match entry.payload {
                EntryPayload::Blank => results.push(WriteGroupResults::default()),
                EntryPayload::Membership(m) => {
                    // The nodes this membership leaves out are removed for good: their ids are
                    // never used again.
                    let before = membership.as_ref().unwrap_or(&self.membership).membership();
                    for (id, _) in before.nodes().filter(|(id, _)| m.get_node(id).is_none()) {
                        writes.insert(removed_member_key(*id), entry.log_id.index.to_be_bytes().to_vec());
                    }
                    membership = Some(StoredMembership::new(Some(entry.log_id), m));
                    results.push(WriteGroupResults::default());
                }
                EntryPayload::Normal(group) => {
                    let now_ms = group.proposed_at_ms;
                    let mut out = Vec::with_capacity(group.commands.len());
                    for Command { op, write_id } in group.commands {
                        if let Some(id) = &write_id {
                            match self.sessions.check(id) {
                                Seen::New => {}
                                Seen::Duplicate(first) => {
                                    out.push(first);
                                    continue;
                                }
                                Seen::Forgotten => {
                                    out.push(CommandResult::Forgotten);
                                    continue;
                                }
                            }
                        }
                        let result = self.apply_op(op, &mut writes, &mut written)?;
                        if let Some(id) = write_id {
                            let pushed_out = self.sessions.record(id, now_ms, result.clone());
                            let records = |seq: u64| (id.client_id, result_record(seq));
                            touched_results.insert(records(id.sequence));
                            touched_results.extend(pushed_out.into_iter().map(records));
                        }
                        out.push(result);
                    }
                    for (gone, sequences) in self.sessions.expire(now_ms) {
                        // Its records are removed with the others below: it has no results left.
                        touched_results.extend(sequences.into_iter().map(|seq| (gone, result_record(seq))));
                        writes.remove(session_key(gone));
                    }
                    results.push(WriteGroupResults { results: out });
                }
            }
        }
        let mut last_client = None;
        for (client_id, record) in touched_results {
            write_results(&mut writes, &self.sessions, client_id, record);
            if last_client.replace(client_id) != Some(client_id) {
                // A forgotten client has no meta any more: it was removed above.
                if let Some(meta) = self.sessions.meta_pb(client_id) {
                    writes.insert(session_key(client_id), meta.encode_to_vec());
                }
            }
        }
        set_markers(&mut writes, &applied, membership.as_ref());
        Ok(Prepared {
            writes,
            results,
            applied,
            membership,
        })
    }

    /// Records that the engine holds every write up to `applied`.
    fn applied_up_to(&mut self, applied: Option<LogId>, membership: Option<StoredMembership>) {
        self.applied = applied;
        if let Some(m) = membership {
            self.membership = m;
        }
    }
}

impl RaftStateMachine<TypeConfig> for StateMachine {
    type SnapshotData = SnapshotData;
    type SnapshotBuilder = SnapshotBuilder;

    async fn applied_state(&mut self) -> io::Result<(Option<LogId>, StoredMembership)> {
        Ok((self.applied, self.membership.clone()))
    }

    /// Takes every entry of the stream (openraft hands over a finite batch of committed
    /// entries, all readable at once), works out their results, answers the clients waiting
    /// on them (see the module doc for why that may come before the engine write), and
    /// applies them as one unit. The engine's write runs on a blocking thread: an engine may
    /// stall a write (fjall does while its memtables wait to be flushed), and the runtime
    /// serves heartbeats.
    async fn apply<Strm>(&mut self, mut entries: Strm) -> io::Result<()>
    where
        Strm: Stream<Item = Result<EntryResponder<TypeConfig>, io::Error>> + Unpin + OptionalSend,
    {
        let mut batch = Vec::new();
        let mut responders = Vec::new();
        while let Some(item) = entries.next().await {
            let (entry, responder) = item?;
            batch.push(entry);
            responders.push(responder);
        }
        let Prepared {
            writes,
            mut results,
            applied,
            membership,
        } = self.prepare(batch)?;
        let last = applied.map_or(0, |id| id.index);
        if membership.is_none() {
            self.progress.answered.fetch_max(last, Ordering::AcqRel);
            answer(std::mem::take(&mut results), std::mem::take(&mut responders));
        }
        let engine = self.engine.clone();
        tokio::task::spawn_blocking(move || engine.apply(writes))
            .await
            .map_err(join_err)??;
        self.progress.in_engine.send_if_modified(|index| {
            let moved = last > *index;
            *index = (*index).max(last);
            moved
        });
        self.applied_up_to(applied, membership);
        // What was not answered above (a membership change's batch).
        answer(results, responders);
        Ok(())
    }

    /// Runs in openraft's state-machine task, between applies: takes the view, the
    /// sessions and the markers of the same point and returns; the scan is the builder's.
    async fn get_snapshot_builder(&mut self) -> SnapshotBuilder {
        SnapshotBuilder {
            dir: self.dir.clone(),
            meta: self.meta_now(),
            state: std::sync::Mutex::new(Some((self.engine.view(), self.sessions.all_to_pb()))),
            engine: self.engine.clone(),
            span: self.span.clone(),
            log_volume: self.log_volume.clone(),
            volume_mark: self.log_volume.mark(),
        }
    }

    /// Makes the received file `snapshot.bin` durably (so that `open` finishes the install
    /// if a crash cuts it short), then streams its records into the engine's next generation,
    /// which becomes current (and durable) only if the whole file checked out, then removes
    /// the file. Off the runtime: it reads and writes the whole snapshot.
    async fn install_snapshot(&mut self, meta: &SnapshotMeta, snapshot: SnapshotData) -> io::Result<()> {
        let (dir, engine, meta2) = (self.dir.clone(), self.engine.clone(), meta.clone());
        let (bytes, sessions, state_bytes) = tokio::task::spawn_blocking(move || {
            let file = match snapshot {
                SnapshotData::File(file) => file,
                // Another state machine's view (openraft's storage suite installs one): written
                // into this directory first, as a received one is.
                SnapshotData::Unwritten(unwritten) => {
                    let path = unwritten.write_to(snapshot_file::incoming_path_in(&dir))?;
                    let opened = SnapshotFile::open(&path)?;
                    opened.ok_or_else(|| io::Error::other("the snapshot written is gone"))?.1
                }
            };
            let file = snapshot_file::adopt(&dir, file)?;
            let sessions = install_into(engine.as_ref(), &meta2, &file)?;
            snapshot_file::remove_installed(&dir)?;
            Ok::<_, io::Error>((file.len(), sessions, engine.disk_bytes()))
        })
        .await
        .map_err(join_err)?
        .inspect_err(|e| tracing::error!(parent: &self.span, last_log_id = ?meta.last_log_id, "cannot install the snapshot: {e}"))?;
        self.installed(meta, sessions);
        self.log_volume.snapshot_taken(self.log_volume.mark(), state_bytes);
        tracing::info!(parent: &self.span, last_log_id = ?meta.last_log_id, bytes, "snapshot installed");
        Ok(())
    }

    /// The state machine as it is now, as a snapshot: a view, written into a file only if
    /// it is sent (straight into the transfer, `network.rs`). None before anything was applied.
    async fn get_current_snapshot(&mut self) -> io::Result<Option<Snapshot>> {
        if self.applied.is_none() {
            return Ok(None);
        }
        let meta = self.meta_now();
        let unwritten = UnwrittenSnapshot::new(meta.clone(), self.engine.view(), self.sessions.all_to_pb());
        Ok(Some(Snapshot {
            meta,
            snapshot: SnapshotData::Unwritten(unwritten),
        }))
    }
}

impl StateMachine {
    /// The meta of a snapshot of the state machine as it is now.
    fn meta_now(&self) -> SnapshotMeta {
        SnapshotMeta {
            last_log_id: self.applied,
            last_membership: self.membership.clone(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::data_dir;
    use crate::store::engine::EngineKind;
    use crate::store::keys::RESULTS_PER_RECORD;
    use crate::store::SnapshotData;
    use crate::types::{LeaderId, WriteGroup, WriteId};
    use futures::FutureExt;
    use std::sync::atomic::AtomicBool;

    fn entry(index: u64, commands: Vec<Command>) -> Entry {
        Entry {
            log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
            payload: EntryPayload::Normal(WriteGroup {
                proposed_at_ms: 1000 + index,
                commands,
            }),
        }
    }

    fn cmd(op: Op, seq: Option<u64>) -> Command {
        Command {
            op,
            write_id: seq.map(|sequence| WriteId {
                client_id: 42,
                sequence,
            }),
        }
    }

    /// A compare-and-swap that creates key `k` (expects it absent), with write id `seq`.
    fn create_k(v: &str, seq: u64) -> Command {
        cmd(
            Op::Cas {
                key: b("k"),
                expect: None,
                new_value: b(v),
            },
            Some(seq),
        )
    }

    fn b(s: &str) -> Bytes {
        Bytes::copy_from_slice(s.as_bytes())
    }

    fn open(dir: &Path) -> StateMachine {
        open_on(dir, EngineKind::default())
    }

    fn open_on(dir: &Path, kind: EngineKind) -> StateMachine {
        match data_dir::open_with_engine_when_released(dir, 1, "1=127.0.0.1:1", kind) {
            Ok(d) => d.state_machine,
            Err(e) => panic!("{e}"),
        }
    }

    #[tokio::test]
    async fn a_scan_page_never_shows_part_of_an_apply() {
        for kind in EngineKind::ALL {
            let dir = tempfile::tempdir().unwrap();
            let mut sm = open_on(dir.path(), kind);
            let put = |k: &str, v: &str| cmd(Op::Put { key: b(k), value: b(v) }, None);
            sm.apply_entries([entry(1, vec![put("a", "0"), put("b", "0")])])
                .unwrap();
            let reader = sm.reader();
            let done = Arc::new(std::sync::atomic::AtomicBool::new(false));
            let scanner = {
                let done = done.clone();
                std::thread::spawn(move || {
                    let mut pages = 0u64;
                    while !done.load(std::sync::atomic::Ordering::Relaxed) {
                        let (pairs, _) = reader.scan(b"", b"", 10, 1 << 20).unwrap();
                        assert_eq!(pairs.len(), 2);
                        assert_eq!(pairs[0].1, pairs[1].1, "a page showed half of an apply: {pairs:?}");
                        pages += 1;
                    }
                    pages
                })
            };
            // Each apply writes a then b; a scan reads a then b. Without the lock a page that
            // reads a before an apply and b after it shows two different values.
            for i in 2..3000u64 {
                let v = i.to_string();
                sm.apply_entries([entry(i, vec![put("a", &v), put("b", &v)])]).unwrap();
            }
            done.store(true, std::sync::atomic::Ordering::Relaxed);
            assert!(scanner.join().unwrap() > 0);
        }
    }

    #[tokio::test]
    async fn cas_swaps_only_on_a_match_and_reports_the_current_value() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let r = sm
            .apply_entries([entry(
                1,
                vec![
                    cmd(
                        Op::Cas {
                            key: b("k"),
                            expect: None,
                            new_value: b("1"),
                        },
                        None,
                    ),
                    cmd(
                        Op::Cas {
                            key: b("k"),
                            expect: None,
                            new_value: b("2"),
                        },
                        None,
                    ),
                    cmd(
                        Op::Cas {
                            key: b("k"),
                            expect: Some(b("1")),
                            new_value: b("3"),
                        },
                        None,
                    ),
                    cmd(
                        Op::Delete {
                            key: b("k"),
                            expect: Some(b("9")),
                        },
                        None,
                    ),
                ],
            )])
            .unwrap();
        assert_eq!(
            r[0].results,
            vec![
                CommandResult::Cas {
                    swapped: true,
                    current: None
                },
                CommandResult::Cas {
                    swapped: false,
                    current: Some(b("1"))
                },
                CommandResult::Cas {
                    swapped: true,
                    current: None
                },
                CommandResult::Delete {
                    existed: true,
                    deleted: false,
                    current: Some(b("3"))
                },
            ]
        );
        assert_eq!(sm.reader().get(b"k").unwrap(), Some(b("3")));
    }

    #[tokio::test]
    async fn a_retried_write_is_applied_once_even_across_a_restart() {
        for kind in EngineKind::ALL {
            let dir = tempfile::tempdir().unwrap();
            {
                let mut sm = open_on(dir.path(), kind);
                let append = |v: &str| create_k(v, 1);
                let r = sm
                    .apply_entries([entry(1, vec![append("a")]), entry(2, vec![append("b")])])
                    .unwrap();
                assert_eq!(
                    r[1].results[0],
                    CommandResult::Cas {
                        swapped: true,
                        current: None
                    },
                    "the retry gets the first result"
                );
            }
            let mut sm = open_on(dir.path(), kind);
            let r = sm
                .apply_entries([entry(
                    3,
                    vec![cmd(
                        Op::Put {
                            key: b("k"),
                            value: b("c"),
                        },
                        Some(1),
                    )],
                )])
                .unwrap();
            assert_eq!(
                r[0].results[0],
                CommandResult::Cas {
                    swapped: true,
                    current: None
                }
            );
            assert_eq!(sm.reader().get(b"k").unwrap(), Some(b("a")));
        }
    }

    fn stored_results(sm: &StateMachine, client_id: u64) -> Vec<u64> {
        let mut prefix = vec![RESULT_PREFIX];
        prefix.extend_from_slice(&client_id.to_be_bytes());
        sm.engine
            .view()
            .prefix(&prefix)
            .flat_map(|kv| pb::ClientSession::decode(kv.unwrap().1.as_ref()).unwrap().results)
            .map(|r| r.sequence)
            .collect()
    }

    fn stored_meta(sm: &StateMachine, client_id: u64) -> pb::ClientSession {
        let v = sm
            .engine
            .get(&session_key(client_id))
            .unwrap()
            .expect("a session record");
        pb::ClientSession::decode(v.as_ref()).unwrap()
    }

    #[tokio::test]
    async fn a_clients_window_is_stored_a_result_per_key_and_what_leaves_it_is_removed() {
        use crate::store::sessions::RESULTS_PER_SESSION;
        let dir = tempfile::tempdir().unwrap();
        let last = RESULTS_PER_SESSION + 5;
        {
            let mut sm = open(dir.path());
            let put = |seq: u64| {
                cmd(
                    Op::Put {
                        key: b("k"),
                        value: b(&seq.to_string()),
                    },
                    Some(seq),
                )
            };
            sm.apply_entries([entry(1, (1..=10).map(put).collect())]).unwrap();
            sm.apply_entries([entry(2, (11..=last).map(put).collect())]).unwrap();
            assert_eq!(stored_results(&sm, 42), (6..=last).collect::<Vec<u64>>());
            let meta = stored_meta(&sm, 42);
            assert!(meta.results.is_empty(), "the session record holds no results");
            assert_eq!(meta.forgotten_through, 5);
        }
        let mut sm = open(dir.path());
        let retry = |seq: u64| {
            cmd(
                Op::Put {
                    key: b("k"),
                    value: b("retried"),
                },
                Some(seq),
            )
        };
        let r = sm.apply_entries([entry(3, vec![retry(last), retry(3)])]).unwrap();
        assert_eq!(r[0].results, vec![CommandResult::Put, CommandResult::Forgotten]);
        assert_eq!(sm.reader().get(b"k").unwrap(), Some(b(&last.to_string())));
        let records = sm.engine.view().prefix(&[RESULT_PREFIX]).count() as u64;
        assert!(
            records <= RESULTS_PER_SESSION / RESULTS_PER_RECORD + 1,
            "{records} records"
        );

        // A client idle past the TTL (in log time) is forgotten with all of its records.
        let mut later = entry(
            4,
            vec![cmd(
                Op::Put {
                    key: b("other"),
                    value: b("1"),
                },
                None,
            )],
        );
        if let EntryPayload::Normal(group) = &mut later.payload {
            group.proposed_at_ms += crate::store::sessions::SESSION_TTL_MS + 1;
        }
        sm.apply_entries([later]).unwrap();
        assert_eq!(sm.engine.view().prefix(&[RESULT_PREFIX]).count(), 0);
        assert!(sm.engine.get(&session_key(42)).unwrap().is_none());
    }

    /// An engine whose applies wait at a gate, to catch an apply in the middle.
    struct GatedEngine {
        inner: Arc<dyn Engine>,
        entered: std::sync::mpsc::SyncSender<()>,
        release: std::sync::Mutex<std::sync::mpsc::Receiver<()>>,
    }

    impl Engine for GatedEngine {
        fn kind(&self) -> EngineKind {
            self.inner.kind()
        }
        fn get(&self, key: &[u8]) -> Result<Option<Bytes>, EngineError> {
            self.inner.get(key)
        }
        fn apply(&self, writes: Writes) -> Result<(), EngineError> {
            self.entered.send(()).unwrap();
            self.release.lock().unwrap().recv().unwrap();
            self.inner.apply(writes)
        }
        fn view(&self) -> Box<dyn View> {
            self.inner.view()
        }
        fn persist(&self) -> Result<(), EngineError> {
            self.inner.persist()
        }
        fn disk_bytes(&self) -> u64 {
            self.inner.disk_bytes()
        }
        fn start_install(&self) -> Result<Box<dyn crate::store::engine::Install>, EngineError> {
            self.inner.start_install()
        }
    }

    /// Runs openraft's `apply` of `entry` (no client waiting) on a task; gives the state
    /// machine back when it is done.
    fn apply_in_background(mut sm: StateMachine, entry: Entry) -> tokio::task::JoinHandle<StateMachine> {
        tokio::spawn(async move {
            sm.apply(futures::stream::iter([Ok((entry, None))])).await.unwrap();
            sm
        })
    }

    /// A write's client hears back before its batch is in the engine; a stale read on the
    /// same node must still see it, and a membership change answers only once it is in.
    #[tokio::test]
    async fn a_stale_read_waits_for_the_writes_this_node_answered() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open_on(dir.path(), EngineKind::Fjall);
        let (entered, in_apply) = std::sync::mpsc::sync_channel(0);
        let (release, gate) = std::sync::mpsc::channel();
        sm.engine = Arc::new(GatedEngine {
            inner: sm.engine.clone(),
            entered,
            release: std::sync::Mutex::new(gate),
        });
        let reader = sm.reader();
        let in_apply = Arc::new(std::sync::Mutex::new(in_apply));
        let wait_in_apply = || {
            let in_apply = in_apply.clone();
            tokio::task::spawn_blocking(move || in_apply.lock().unwrap().recv().unwrap())
        };
        let put = cmd(
            Op::Put {
                key: b("k"),
                value: b("v"),
            },
            None,
        );
        let applying = apply_in_background(sm, entry(1, vec![put]));
        wait_in_apply().await.unwrap();
        assert_eq!(
            reader.progress.answered.load(Ordering::Acquire),
            1,
            "answered before the engine write"
        );
        assert!(
            reader.holds_answered_writes().now_or_never().is_none(),
            "a stale read went ahead of a write this node answered"
        );
        assert_eq!(reader.get(b"k").unwrap(), None);
        release.send(()).unwrap();
        let sm = applying.await.unwrap();
        tokio::time::timeout(std::time::Duration::from_secs(10), reader.holds_answered_writes())
            .await
            .expect("the engine holds the answered write");
        assert_eq!(reader.get(b"k").unwrap(), Some(b("v")));

        let applying = apply_in_background(sm, membership_entry(2, &[1, 2]));
        wait_in_apply().await.unwrap();
        assert_eq!(
            reader.progress.answered.load(Ordering::Acquire),
            1,
            "a membership change answered before its engine write"
        );
        release.send(()).unwrap();
        applying.await.unwrap();
    }

    fn membership_entry(index: u64, ids: &[u64]) -> Entry {
        let nodes = ids
            .iter()
            .map(|id| (*id, openraft::BasicNode::new(format!("127.0.0.1:{id}"))))
            .collect::<std::collections::BTreeMap<_, _>>();
        let voters = vec![ids.iter().copied().collect()];
        Entry {
            log_id: LogId::new(LeaderId { term: 1, node_id: 1 }, index),
            payload: EntryPayload::Membership(crate::types::Membership::new(voters, nodes).unwrap()),
        }
    }

    #[tokio::test]
    async fn removed_members_are_remembered_and_carried_in_snapshots() {
        for kind in EngineKind::ALL {
            let src_dir = tempfile::tempdir().unwrap();
            let mut src = open_on(src_dir.path(), kind);
            src.apply_entries([membership_entry(1, &[1, 2, 3]), membership_entry(2, &[1, 2])])
                .unwrap();
            src.apply_entries([membership_entry(3, &[1, 2, 4])]).unwrap();
            let reader = src.reader();
            assert_eq!(reader.removed_at(3).unwrap(), Some(2));
            assert_eq!(reader.removed_at(2).unwrap(), None);
            assert_eq!(reader.removed_at(4).unwrap(), None);
            assert!(
                reader.scan(b"", b"", 10, usize::MAX).unwrap().0.is_empty(),
                "no user key"
            );

            let (meta, file) = write_current_snapshot(&mut src, &sent_path(src_dir.path())).await;
            let dst_dir = tempfile::tempdir().unwrap();
            let mut dst = open_on(dst_dir.path(), kind);
            dst.install_snapshot(&meta, SnapshotData::File(file)).await.unwrap();
            assert_eq!(dst.reader().removed_at(3).unwrap(), Some(2), "{kind:?}");
        }
    }

    fn put_of(index: u64, value_bytes: usize) -> Entry {
        let op = Op::Put {
            key: Bytes::from(format!("k{index}")),
            value: Bytes::from(vec![b'v'; value_bytes]),
        };
        entry(index, vec![cmd(op, None)])
    }

    #[tokio::test]
    async fn the_log_volume_counts_what_was_applied_after_the_last_snapshot_s_view() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let volume = sm.log_volume();
        assert_eq!(volume.since_snapshot(None), 0);
        sm.apply_entries([put_of(1, 1000)]).unwrap();
        assert!((1000..1100).contains(&volume.since_snapshot(None)));

        let mut builder = sm.get_snapshot_builder().await;
        // Applied after the view was taken: not in the snapshot, so still counted after it.
        sm.apply_entries([put_of(2, 3000)]).unwrap();
        builder.build_snapshot().await.unwrap();
        assert!((3000..3100).contains(&volume.since_snapshot(None)));

        // One that installs a snapshot starts counting from it.
        let other_dir = tempfile::tempdir().unwrap();
        let mut other = open(other_dir.path());
        other.apply_entries([put_of(1, 500)]).unwrap();
        let (meta, file) = write_current_snapshot(&mut sm, &sent_path(dir.path())).await;
        other.install_snapshot(&meta, SnapshotData::File(file)).await.unwrap();
        assert_eq!(other.log_volume().since_snapshot(None), 0);
    }

    /// The names in directory `dir`, sorted.
    fn names_in(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
            .collect();
        names.sort();
        names
    }

    #[tokio::test]
    async fn a_snapshot_writes_no_file_until_it_is_sent_and_a_sent_one_leaves_none_behind() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = stale_state_machine(dir.path(), EngineKind::default());
        let before = names_in(dir.path());
        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        assert!(matches!(built.snapshot, SnapshotData::Unwritten(_)));
        assert_eq!(names_in(dir.path()), before, "taking a snapshot writes no file");

        // The current snapshot is the state as it is now, applies since included.
        sm.apply_entries([entry(
            2,
            vec![cmd(
                Op::Put {
                    key: b("x"),
                    value: b("1"),
                },
                None,
            )],
        )])
        .unwrap();
        let current = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        assert_eq!(current.meta.last_log_id, sm.applied);
        assert!(current.meta.last_log_id > built.meta.last_log_id);

        // Written out as it is sent (here into memory), it leaves no file in the directory; a
        // write cut short stops.
        let unwritten = |snapshot: Snapshot| match snapshot.snapshot {
            SnapshotData::Unwritten(unwritten) => unwritten,
            SnapshotData::File(_) => panic!("a state machine's snapshot is written only when it is sent"),
        };
        let unsent = unwritten(sm.get_current_snapshot().await.unwrap().expect("a snapshot"));
        let cut = unsent
            .write_into(Vec::new(), &AtomicBool::new(true))
            .expect_err("a cancelled write stops");
        assert_eq!(cut.kind(), io::ErrorKind::Interrupted);
        let meta = current.meta.clone();
        let sent = unwritten(current)
            .write_into(Vec::new(), &AtomicBool::new(false))
            .unwrap();
        assert_eq!(names_in(dir.path()), before, "the snapshot sent leaves no file");

        // What was sent installs on another node, which keeps no file of it either.
        let received_dir = tempfile::tempdir().unwrap();
        let received = received_dir.path().join("received.snapshot");
        std::fs::write(&received, sent).unwrap();
        let file = SnapshotFile::open(&received).unwrap().expect("the file received").1;
        let dst_dir = tempfile::tempdir().unwrap();
        let mut dst = open(dst_dir.path());
        let dst_before = names_in(dst_dir.path());
        dst.install_snapshot(&meta, SnapshotData::File(file)).await.unwrap();
        assert_eq!(dst.reader().get(b"x").unwrap(), Some(b("1")));
        assert_eq!(dst.reader().get(b"stale").unwrap(), Some(b("z")));
        assert_eq!(names_in(dst_dir.path()), dst_before);
    }

    #[tokio::test]
    async fn a_snapshot_carries_data_and_sessions_to_another_node() {
        for kind in EngineKind::ALL {
            let src_dir = tempfile::tempdir().unwrap();
            let mut src = open_on(src_dir.path(), kind);
            src.apply_entries([entry(
                1,
                vec![
                    cmd(
                        Op::Put {
                            key: b("x"),
                            value: b("1"),
                        },
                        Some(7),
                    ),
                    cmd(
                        Op::Put {
                            key: b("y"),
                            value: b("2"),
                        },
                        None,
                    ),
                ],
            )])
            .unwrap();
            let (meta, file) = write_current_snapshot(&mut src, &sent_path(src_dir.path())).await;

            let dst_dir = tempfile::tempdir().unwrap();
            let mut dst = stale_state_machine(dst_dir.path(), kind);
            dst.install_snapshot(&meta, SnapshotData::File(file)).await.unwrap();
            assert_eq!(
                dst.reader().scan(b"", b"", 10, usize::MAX).unwrap().0,
                vec![(b("x"), b("1")), (b("y"), b("2"))]
            );
            let r = dst
                .apply_entries([entry(
                    2,
                    vec![cmd(
                        Op::Put {
                            key: b("x"),
                            value: b("again"),
                        },
                        Some(7),
                    )],
                )])
                .unwrap();
            assert_eq!(r[0].results[0], CommandResult::Put);
            assert_eq!(
                dst.reader().get(b"x").unwrap(),
                Some(b("1")),
                "the retried write was not applied twice"
            );
            assert!(
                !snapshot_file::path_in(dst_dir.path()).exists(),
                "no snapshot file is kept"
            );
        }
    }

    /// Where the tests write a snapshot to be sent from `dir`.
    fn sent_path(dir: &Path) -> PathBuf {
        dir.join("sent.snapshot")
    }

    /// The current snapshot of `sm` written into a file at `path`, as a sender writes one, open.
    async fn write_current_snapshot(sm: &mut StateMachine, path: &Path) -> (SnapshotMeta, SnapshotFile) {
        let snapshot = sm.get_current_snapshot().await.unwrap().expect("a snapshot");
        let SnapshotData::Unwritten(unwritten) = snapshot.snapshot else {
            panic!("a state machine's snapshot is written only when it is sent");
        };
        unwritten.write_to(path.to_path_buf()).unwrap();
        let (meta, file) = SnapshotFile::open(path).unwrap().expect("the file written");
        assert_eq!(meta, snapshot.meta);
        (meta, file)
    }

    /// A state machine on `kind` in `dir` holding `keys` pairs (about 100 bytes each) and a
    /// client session, its snapshot taken and written (at `sent_path(dir)`): the state
    /// machine and the snapshot's meta.
    async fn built_snapshot(dir: &Path, kind: EngineKind, keys: usize) -> (StateMachine, SnapshotMeta) {
        let mut sm = open_on(dir, kind);
        let put = |i: usize| {
            let key = Bytes::from(format!("key/{i:08}"));
            cmd(
                Op::Put {
                    key,
                    value: Bytes::from(vec![b'v'; 90]),
                },
                None,
            )
        };
        // Applies of at most 1,000 puts (sled takes minutes over one of 50,000).
        let chunks: Vec<Vec<usize>> = (0..keys).collect::<Vec<_>>().chunks(1000).map(|c| c.to_vec()).collect();
        let entries = chunks
            .into_iter()
            .enumerate()
            .map(|(n, chunk)| entry(1 + n as u64, chunk.into_iter().map(put).collect()));
        sm.apply_entries(entries).unwrap();
        let next = sm.applied.map_or(1, |id| id.index + 1);
        sm.apply_entries([entry(next, vec![create_k("session", 7)])]).unwrap();
        let built = sm.get_snapshot_builder().await.build_snapshot().await.unwrap();
        let (meta, _) = write_current_snapshot(&mut sm, &sent_path(dir)).await;
        assert_eq!(meta, built.meta);
        (sm, meta)
    }

    /// A state machine in `dir` with one pair that no snapshot has, applied up to index 1.
    fn stale_state_machine(dir: &Path, kind: EngineKind) -> StateMachine {
        let mut sm = open_on(dir, kind);
        sm.apply_entries([entry(
            1,
            vec![cmd(
                Op::Put {
                    key: b("stale"),
                    value: b("z"),
                },
                None,
            )],
        )])
        .unwrap();
        sm
    }

    /// The snapshot file written at `sent_path(dir)`, as it is sent.
    fn snapshot_file_of(dir: &Path) -> SnapshotData {
        SnapshotData::File(SnapshotFile::open(&sent_path(dir)).unwrap().expect("a snapshot file").1)
    }

    /// Changes one byte of a value in the middle of the file at `path`: every record still
    /// decodes, only the checksum tells.
    fn damage(path: &Path) {
        let mut bytes = std::fs::read(path).unwrap();
        let middle = bytes.len() / 2 + bytes[bytes.len() / 2..].iter().position(|&c| c == b'v').unwrap();
        bytes[middle] = b'w';
        std::fs::write(path, bytes).unwrap();
    }

    #[tokio::test]
    async fn a_snapshot_file_of_many_parts_installs_everything_with_its_sessions_on_both_engines() {
        // With fjall about 5 MB: more than one install part (INSTALL_PART_BYTES). sled takes
        // minutes (in a debug build) to apply that much, and installs the same way.
        for (kind, keys) in [(EngineKind::Fjall, 50_000), (EngineKind::Sled, 2_000)] {
            let src_dir = tempfile::tempdir().unwrap();
            let (_src, meta) = built_snapshot(src_dir.path(), kind, keys).await;
            let file = snapshot_file_of(src_dir.path());
            if kind == EngineKind::Fjall {
                let len = std::fs::metadata(sent_path(src_dir.path())).unwrap().len();
                assert!(len > INSTALL_PART_BYTES as u64, "{len} bytes");
            }
            let dst_dir = tempfile::tempdir().unwrap();
            let mut dst = stale_state_machine(dst_dir.path(), kind);
            dst.install_snapshot(&meta, file).await.unwrap();
            let reader = dst.reader();
            assert_eq!(
                reader.get(b"stale").unwrap(),
                None,
                "the state before the snapshot is gone"
            );
            let (pairs, more) = reader.scan(b"key/", b"", keys + 1, usize::MAX).unwrap();
            assert_eq!((pairs.len(), more), (keys, false));
            assert_eq!(pairs[keys - 1].0, Bytes::from(format!("key/{:08}", keys - 1)));
            assert_eq!(dst.applied_state().await.unwrap().0, meta.last_log_id);
            // The session came along: a retry of its write gets its first result.
            let next = meta.last_log_id.unwrap().index + 1;
            let r = dst.apply_entries([entry(next, vec![create_k("again", 7)])]).unwrap();
            assert_eq!(
                r[0].results[0],
                CommandResult::Cas {
                    swapped: true,
                    current: None
                }
            );
            assert_eq!(reader.get(b"k").unwrap(), Some(b("session")));
            // The engine holds it: no file is kept, and it survives a restart.
            assert!(!snapshot_file::path_in(dst_dir.path()).exists());
            drop((reader, dst));
            let mut dst = open_on(dst_dir.path(), kind);
            assert_eq!(dst.applied_state().await.unwrap().0.map(|id| id.index), Some(next));
            assert_eq!(
                dst.reader().get(b"key/00000000").unwrap(),
                Some(Bytes::from(vec![b'v'; 90]))
            );
        }
    }

    #[tokio::test]
    async fn a_damaged_snapshot_file_is_refused_and_changes_nothing() {
        for kind in EngineKind::ALL {
            let src_dir = tempfile::tempdir().unwrap();
            let (_src, meta) = built_snapshot(src_dir.path(), kind, 2_000).await;
            damage(&sent_path(src_dir.path()));
            let dst_dir = tempfile::tempdir().unwrap();
            let mut dst = stale_state_machine(dst_dir.path(), kind);
            let e = dst
                .install_snapshot(&meta, snapshot_file_of(src_dir.path()))
                .await
                .expect_err("a damaged snapshot is not installed");
            assert!(e.to_string().contains("checksum does not match"), "{e}");
            assert!(!e.to_string().contains('\n'), "{e}");
            assert_eq!(
                dst.reader().get(b"stale").unwrap(),
                Some(b("z")),
                "the old state is kept"
            );
            assert_eq!(dst.reader().get(b"key/00000000").unwrap(), None);
        }
    }

    #[tokio::test]
    async fn an_install_a_crash_interrupted_is_finished_at_open_and_a_damaged_one_refuses_to_start() {
        for kind in EngineKind::ALL {
            let src_dir = tempfile::tempdir().unwrap();
            let (_src, meta) = built_snapshot(src_dir.path(), kind, 2_000).await;
            let dst_dir = tempfile::tempdir().unwrap();
            drop(stale_state_machine(dst_dir.path(), kind));
            // The crash came after the received file became the node's snapshot, before the
            // engine had it (and left half a transfer behind).
            let target = snapshot_file::path_in(dst_dir.path());
            std::fs::copy(sent_path(src_dir.path()), &target).unwrap();
            std::fs::write(snapshot_file::incoming_path_in(dst_dir.path()), b"half a transfer").unwrap();
            let mut dst = open_on(dst_dir.path(), kind);
            assert_eq!(dst.applied_state().await.unwrap().0, meta.last_log_id);
            assert_eq!(dst.reader().get(b"stale").unwrap(), None);
            assert_eq!(
                dst.reader().get(b"key/00001999").unwrap(),
                Some(Bytes::from(vec![b'v'; 90]))
            );
            assert!(
                !snapshot_file::incoming_path_in(dst_dir.path()).exists(),
                "leftovers are removed"
            );
            assert!(!target.exists(), "the file goes once the engine holds it");
            drop(dst);

            // The same, with the snapshot file damaged: the node refuses to start, with one line.
            let dst_dir = tempfile::tempdir().unwrap();
            drop(stale_state_machine(dst_dir.path(), kind));
            let target = snapshot_file::path_in(dst_dir.path());
            std::fs::copy(sent_path(src_dir.path()), &target).unwrap();
            damage(&target);
            let refusal = match data_dir::open_with_engine_when_released(dst_dir.path(), 1, "1=127.0.0.1:1", kind) {
                Ok(_) => panic!("a damaged snapshot was installed"),
                Err(e) => e.to_string(),
            };
            assert!(refusal.contains("checksum does not match"), "{refusal}");
            assert!(!refusal.contains('\n'), "{refusal}");
        }
    }

    #[tokio::test]
    async fn a_transfer_cut_short_or_damaged_is_refused_and_the_next_one_starts_the_file_again() {
        use crate::store::IncomingSnapshot;
        let src_dir = tempfile::tempdir().unwrap();
        let (_src, meta) = built_snapshot(src_dir.path(), EngineKind::default(), 2_000).await;
        let sent = std::fs::read(sent_path(src_dir.path())).unwrap();
        let dst_dir = tempfile::tempdir().unwrap();
        let mut dst = stale_state_machine(dst_dir.path(), EngineKind::default());
        let incoming = snapshot_file::incoming_path_in(dst_dir.path());
        // A transfer of a known length, or (None) of a snapshot written as it is sent.
        let receive = |bytes: &[u8], len: Option<u64>| {
            let mut receiving = IncomingSnapshot::create(incoming.clone(), len).unwrap();
            for chunk in bytes.chunks(4093) {
                receiving.write(chunk).unwrap();
            }
            receiving
        };
        let whole = Some(sent.len() as u64);
        // A transfer that broke off half way leaves half a file.
        drop(receive(&sent[..sent.len() / 2], whole));
        assert_eq!(std::fs::metadata(&incoming).unwrap().len(), sent.len() as u64 / 2);
        // One cut short is refused when it ends: by its length, or without one by its trailer.
        let e = receive(&sent[..sent.len() - 1], whole)
            .finish()
            .unwrap_err()
            .to_string();
        assert!(e.contains("bytes instead of"), "{e}");
        for cut in [1, 10, 4093, sent.len() / 2] {
            let e = receive(&sent[..sent.len() - cut], None)
                .finish()
                .unwrap_err()
                .to_string();
            assert!(e.contains("trailer is missing"), "{cut}: {e}");
        }
        // One damaged on the way is refused by its checksum.
        let mut damaged = sent.clone();
        damaged[sent.len() / 2] ^= 1;
        for len in [whole, None] {
            let e = receive(&damaged, len).finish().unwrap_err().to_string();
            assert!(e.contains("checksum does not match"), "{e}");
        }
        // A whole one of unknown length checks out, however its bytes come.
        receive(&sent, None).finish().unwrap();
        let mut receiving = IncomingSnapshot::create(incoming.clone(), None).unwrap();
        for chunk in sent.chunks(7) {
            receiving.write(chunk).unwrap();
        }
        receiving.finish().unwrap();
        // The next whole transfer starts the file again, and installs.
        let (received_meta, file) = receive(&sent, whole).finish().unwrap();
        assert_eq!(received_meta, meta);
        assert_eq!(std::fs::read(&incoming).unwrap(), sent);
        dst.install_snapshot(&meta, SnapshotData::File(file)).await.unwrap();
        assert!(!incoming.exists(), "the received file was installed");
        assert!(
            !snapshot_file::path_in(dst_dir.path()).exists(),
            "and removed once the engine held it"
        );
        assert_eq!(
            dst.reader().get(b"key/00000042").unwrap(),
            Some(Bytes::from(vec![b'v'; 90]))
        );
    }

    #[tokio::test]
    async fn scan_pages_through_a_prefix_in_key_order() {
        let dir = tempfile::tempdir().unwrap();
        let mut sm = open(dir.path());
        let puts = ["a/1", "a/2", "a/3", "b/1"]
            .iter()
            .map(|k| {
                cmd(
                    Op::Put {
                        key: b(k),
                        value: b("v"),
                    },
                    None,
                )
            })
            .collect();
        sm.apply_entries([entry(1, puts)]).unwrap();
        let r = sm.reader();
        let (page, more) = r.scan(b"a/", b"", 2, usize::MAX).unwrap();
        assert_eq!(
            page.iter().map(|p| p.0.clone()).collect::<Vec<_>>(),
            vec![b("a/1"), b("a/2")]
        );
        assert!(more);
        let (page, more) = r.scan(b"a/", b"a/2", 2, usize::MAX).unwrap();
        assert_eq!(page.iter().map(|p| p.0.clone()).collect::<Vec<_>>(), vec![b("a/3")]);
        assert!(!more);
        // A byte budget shortens a page, but never below one pair.
        let (page, more) = r.scan(b"a/", b"", 10, 1).unwrap();
        assert_eq!(page.len(), 1);
        assert!(more);
    }
}
