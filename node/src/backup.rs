//! Backups (`Cluster.SnapshotSave`, `raftkv snapshot save`): a point-in-time copy of the whole
//! store, streamed to the caller as one snapshot file.
//!
//! Where the copy comes from: not the node's latest snapshot, which may be far behind, but a
//! fresh one. The node first learns a linearizable read index (as a read does) and waits until
//! it has applied that far, then takes a view of its state machine with the sessions and
//! markers of the same point (`SnapshotBuilder`, between two applies) and writes it into a file
//! of its own in the data directory: so the backup holds every write acknowledged before the
//! call began, and its log position is the point it was taken at. The node's own snapshot and
//! its log are left alone (nothing is purged for a backup).
//!
//! Nothing is held in memory: the file is written from the view on a blocking thread and sent
//! a chunk at a time. Its name is removed as soon as it is open, so a backup that ends in any
//! way leaves nothing behind (a crash mid-write leaves a file `StateMachine::open` removes).
//! The call has no overall deadline (see `raftkv::wire::backup_stream`): the node stops (the
//! scan too, if it is still writing) when the caller goes away or takes nothing for
//! `BACKUP_IDLE_TIMEOUT`, or when the node is asked to stop. One backup at a time per node:
//! each costs a copy of the store on disk while it lasts.

use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;

use futures::Stream;
use openraft::storage::RaftStateMachine;
use raftkv::pb;
use raftkv::wire::backup_stream::{BACKUP_BUILDING_TICK, BACKUP_CHUNK_BYTES, BACKUP_IDLE_TIMEOUT};
use tokio::sync::{mpsc, OwnedSemaphorePermit, Semaphore};
use tokio::time::Instant;
use tokio_stream::wrappers::ReceiverStream;
use tonic::Status;
use tracing::Instrument;

use crate::app::App;
use crate::read_index::ReadKind;
use crate::store::state_machine::SnapshotBuilder;
use crate::store::SnapshotFile;

/// What the caller receives: progress, the header, the file's bytes.
pub type BackupStream = Pin<Box<dyn Stream<Item = Result<pb::SnapshotSaveChunk, Status>> + Send>>;

/// The node's backups: one at a time.
pub struct Backups {
    app: App,
    running: Arc<Semaphore>,
    /// Names each backup's file.
    taken: AtomicU64,
}

impl Backups {
    pub fn new(app: App) -> Self {
        Backups {
            app,
            running: Arc::new(Semaphore::new(1)),
            taken: AtomicU64::new(0),
        }
    }

    /// Takes a backup at a linearizable read index, confirmed within `timeout` (the caller's
    /// deadline covers this part only), and returns the stream that writes and sends it.
    pub async fn save(&self, timeout: std::time::Duration) -> Result<BackupStream, Status> {
        let permit =
            self.running.clone().try_acquire_owned().map_err(|_| {
                Status::resource_exhausted("a backup is already being taken on this node; try again later")
            })?;
        let deadline = Instant::now() + timeout;
        let builder = tokio::time::timeout_at(deadline, self.point_in_time(deadline))
            .await
            .map_err(|_| Status::deadline_exceeded("the backup's read index could not be confirmed in time"))??;
        let number = self.taken.fetch_add(1, Ordering::Relaxed);
        let (chunks, stream) = mpsc::channel(2);
        let sending = send(builder, number, chunks, self.app.id, self.app.shutdown.clone(), permit);
        tokio::spawn(sending.instrument(self.app.span.clone()));
        Ok(Box::pin(ReceiverStream::new(stream)))
    }

    /// A view of the state machine that holds every write acknowledged before now.
    async fn point_in_time(&self, deadline: Instant) -> Result<SnapshotBuilder, Status> {
        if let Some(index) = self.app.read_index.read_index(ReadKind::Quorum).await? {
            self.app
                .raft
                .wait(Some(deadline.saturating_duration_since(Instant::now())))
                .applied_index_at_least(Some(index), "backup")
                .await
                .map_err(|e| match e {
                    openraft::metrics::WaitError::Timeout(..) => Status::deadline_exceeded(format!(
                        "this node did not apply up to the read index {index} in time"
                    )),
                    openraft::metrics::WaitError::ShuttingDown => Status::unavailable("node is shutting down"),
                })?;
        }
        self.app
            .raft
            .with_state_machine(|sm| Box::pin(async move { sm.get_snapshot_builder().await }))
            .await
            .map_err(|e| Status::unavailable(format!("node is stopping: {e}")))
    }
}

/// Writes backup `number` from `builder` (reporting progress meanwhile), then sends it
/// through `chunks`; stops when the caller goes away or stays idle, or the node stops.
async fn send(
    builder: SnapshotBuilder,
    number: u64,
    chunks: mpsc::Sender<Result<pb::SnapshotSaveChunk, Status>>,
    node_id: u64,
    mut shutdown: tokio::sync::watch::Receiver<bool>,
    _one_at_a_time: OwnedSemaphorePermit,
) {
    use pb::snapshot_save_chunk::Kind;
    let deliver = |item: Result<Kind, Status>| {
        let chunks = chunks.clone();
        async move {
            let item = item.map(|kind| pb::SnapshotSaveChunk { kind: Some(kind) });
            matches!(
                tokio::time::timeout(BACKUP_IDLE_TIMEOUT, chunks.send(item)).await,
                Ok(Ok(()))
            )
        }
    };
    let stopping = async move {
        let _ = shutdown.wait_for(|stop| *stop).await;
    };
    tokio::pin!(stopping);
    let progress = builder.backup_path(number);
    // However this ends early (the caller gone or idle, the node stopping), the scan stops too:
    // it would otherwise go on writing a copy nobody reads.
    let cancel = CancelOnDrop(Arc::new(AtomicBool::new(false)));
    let build = builder.build_backup(number, cancel.0.clone());
    tokio::pin!(build);
    let mut tick = tokio::time::interval(BACKUP_BUILDING_TICK);
    let (meta, file) = loop {
        tokio::select! {
            built = &mut build => match built {
                Ok(built) => break built,
                Err(e) => {
                    tracing::error!("cannot write a backup: {e}");
                    deliver(Err(Status::internal(format!("the node cannot write the backup: {e}")))).await;
                    return;
                }
            },
            _ = tick.tick() => {
                let bytes = std::fs::metadata(&progress).map_or(0, |m| m.len());
                if !deliver(Ok(Kind::BuildingBytes(bytes))).await {
                    return;
                }
            }
            () = &mut stopping => {
                deliver(Err(Status::unavailable("the node is stopping"))).await;
                return;
            }
        }
    };
    let log_id = meta.last_log_id;
    tracing::info!(last_log_id = ?log_id, bytes = file.len(), "backup written, sending it");
    let header = pb::SnapshotSaveHeader {
        length: file.len(),
        term: log_id.map_or(0, |id| id.leader_id.term),
        index: log_id.map_or(0, |id| id.index),
        node_id,
    };
    if !deliver(Ok(Kind::Header(header))).await {
        return;
    }
    let file = Arc::new(file);
    let mut offset = 0u64;
    while offset < file.len() {
        let len = (file.len() - offset).min(BACKUP_CHUNK_BYTES as u64) as usize;
        let read = read_chunk(file.clone(), offset, len);
        let chunk = tokio::select! {
            chunk = read => chunk,
            () = &mut stopping => {
                deliver(Err(Status::unavailable("the node is stopping"))).await;
                return;
            }
        };
        let chunk = match chunk {
            Ok(chunk) => chunk,
            Err(e) => {
                tracing::error!("cannot read a backup: {e}");
                deliver(Err(Status::internal(format!("the node cannot read the backup: {e}")))).await;
                return;
            }
        };
        if !deliver(Ok(Kind::Data(chunk.into()))).await {
            tracing::info!("a backup's caller went away or stopped reading; the backup is dropped");
            return;
        }
        offset += len as u64;
    }
    tracing::info!(last_log_id = ?log_id, bytes = file.len(), "backup sent");
}

/// Sets its flag when dropped.
struct CancelOnDrop(Arc<AtomicBool>);

impl Drop for CancelOnDrop {
    fn drop(&mut self) {
        self.0.store(true, Ordering::Relaxed);
    }
}

async fn read_chunk(file: Arc<SnapshotFile>, offset: u64, len: usize) -> std::io::Result<Vec<u8>> {
    tokio::task::spawn_blocking(move || {
        let mut chunk = vec![0u8; len];
        file.read_at(&mut chunk, offset).map(|()| chunk)
    })
    .await
    .map_err(std::io::Error::other)?
}
