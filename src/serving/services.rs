//! The Kv, KvBatch and Cluster servers with their message size limits, built the same way by
//! the node and the router (both serve these services); Kv and KvBatch calls are admitted by
//! the bytes of their requests ([`super::admission`]).

use std::sync::Arc;

use crate::batch::{MAX_BATCH_REQUEST_MESSAGE, MAX_BATCH_RESPONSE_MESSAGE};
use crate::pb::cluster_server::{Cluster, ClusterServer};
use crate::pb::kv_batch_server::{KvBatch, KvBatchServer};
use crate::pb::kv_server::{Kv, KvServer};

use super::admission::{Admitted, RequestBytes};
use super::{MAX_CLUSTER_MESSAGE_BYTES, MAX_KV_MESSAGE_BYTES};

/// The Kv service, within [`MAX_KV_MESSAGE_BYTES`] each way, its calls admitted by `budget`.
pub fn kv_server<T: Kv>(service: Arc<T>, budget: &RequestBytes) -> Admitted<KvServer<T>> {
    budget.guard(
        KvServer::from_arc(service)
            .max_decoding_message_size(MAX_KV_MESSAGE_BYTES)
            .max_encoding_message_size(MAX_KV_MESSAGE_BYTES),
    )
}

/// The KvBatch service, within the batch limits of [`crate::batch`], its calls admitted by
/// `budget`.
pub fn kv_batch_server<T: KvBatch>(service: Arc<T>, budget: &RequestBytes) -> Admitted<KvBatchServer<T>> {
    budget.guard(
        KvBatchServer::from_arc(service)
            .max_decoding_message_size(MAX_BATCH_REQUEST_MESSAGE)
            .max_encoding_message_size(MAX_BATCH_RESPONSE_MESSAGE),
    )
}

/// The Cluster service, within [`MAX_CLUSTER_MESSAGE_BYTES`] each way.
pub fn cluster_server<T: Cluster>(service: T) -> ClusterServer<T> {
    ClusterServer::new(service)
        .max_decoding_message_size(MAX_CLUSTER_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_CLUSTER_MESSAGE_BYTES)
}
