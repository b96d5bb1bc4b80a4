//! The client library's backup call (`Cluster.SnapshotSave`): the call is started by the
//! client's retry policy like any other (a node without a leader, a router still looking for
//! one), and once a node has taken the backup its stream is handed over as it is. The stream
//! has no deadline (it grows with the data): its reader gives up on an idle one
//! ([`crate::wire::backup_stream`]).

use super::{Client, Error};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;

impl Client {
    /// Asks for a backup: a point-in-time copy of the whole store, holding every write
    /// acknowledged before the call, streamed as a snapshot file (progress while the node
    /// writes it, then a header, then the file's bytes). The client's timeout bounds the start
    /// only.
    pub async fn snapshot_save(&self) -> Result<tonic::Streaming<pb::SnapshotSaveChunk>, Error> {
        self.call(|connection, time_left| {
            let mut request = tonic::Request::new(pb::SnapshotSaveRequest {});
            request.set_timeout(time_left);
            let channel = connection.channel.clone();
            async move { ClusterClient::new(channel).snapshot_save(request).await }
        })
        .await
    }
}
