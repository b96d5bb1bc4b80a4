//! The rules of a backup stream (`Cluster.SnapshotSave`), which both ends follow: a backup of
//! 1 GB at a few MiB/s takes minutes, longer than any whole-call deadline
//! (`serving::REQUEST_TIMEOUT`, 60 s), so the call has none; instead each side gives up on a
//! stream that stays idle for [`BACKUP_IDLE_TIMEOUT`], and the node speaks at least every
//! [`BACKUP_BUILDING_TICK`] while it is still writing the file, so an idle stream means a
//! dead peer, never a large store.

use std::time::Duration;

/// The file's bytes in one message: well within the Cluster service's message limit
/// (`serving::MAX_CLUSTER_MESSAGE_BYTES`).
pub const BACKUP_CHUNK_BYTES: usize = 512 << 10;

/// The longest a backup stream may go without a message, either way: the node stops (and
/// drops its copy) when the client takes no chunk for this long, the client fails when no
/// chunk arrives for this long.
pub const BACKUP_IDLE_TIMEOUT: Duration = Duration::from_secs(60);

/// How often the node reports progress while it writes the backup file (before its first
/// byte can be sent).
pub const BACKUP_BUILDING_TICK: Duration = Duration::from_secs(1);
