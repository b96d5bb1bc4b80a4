//! The etcd v3 target of `raftkv-bench --target etcd`.
//!
//! It exists so that raftkv can be compared with etcd under exactly the same load generator:
//! same workload, same closed loop, same HTTP/2 stack and channel settings
//! ([`raftkv::client::endpoint`]), same histogram. A put is etcd's Put; a linearizable get is
//! etcd's default Range; a stale get is a serializable Range (answered from the member's local
//! state). The API is generated from `proto/etcd_kv.proto`, the part of etcd's KV service used
//! here; only this binary compiles it, so the `raftkv` CLI carries no etcd code.
//!
//! With several endpoints, client number i always talks to endpoint i mod n, so the load is
//! spread evenly over the members as etcd's own client balancer spreads it; a member that is
//! not the leader forwards writes to the leader itself.

use std::time::Duration;

use bytes::Bytes;
use raftkv::client;
use raftkv::pb::Consistency;
use raftkv_bench::{OperationError, Target};
use tonic::transport::Channel;

/// Code generated from `proto/etcd_kv.proto` by build.rs.
#[allow(clippy::all)]
mod api {
    tonic::include_proto!("etcdserverpb");
}

use api::kv_client::KvClient;

/// One HTTP/2 channel per etcd endpoint.
#[derive(Clone)]
pub struct EtcdTarget {
    members: Vec<KvClient<Channel>>,
    timeout: Duration,
}

impl EtcdTarget {
    /// Channels to `endpoints` (HOST:PORT each), opened lazily. Each request may take up to
    /// `timeout`.
    pub fn open(endpoints: &[String], timeout: Duration) -> Result<EtcdTarget, client::Error> {
        if endpoints.is_empty() {
            return Err(client::Error::InvalidArgument("no endpoint given".to_string()));
        }
        let members = endpoints
            .iter()
            .map(|address| client::endpoint(address, None).map(|endpoint| KvClient::new(endpoint.connect_lazy())))
            .collect::<Result<Vec<_>, _>>()?;
        Ok(EtcdTarget { members, timeout })
    }

    fn member(&self, client: usize) -> KvClient<Channel> {
        self.members[client % self.members.len()].clone()
    }

    fn request<T>(&self, message: T) -> tonic::Request<T> {
        let mut request = tonic::Request::new(message);
        request.set_timeout(self.timeout);
        request
    }

    /// Waits for `call` at most the timeout (the `grpc-timeout` header only tells the server).
    async fn bounded<T>(
        &self,
        call: impl std::future::Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, OperationError> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(client::Error::from_status(status).into()),
            Err(_elapsed) => Err(OperationError::NoAnswer(self.timeout)),
        }
    }
}

impl Target for EtcdTarget {
    /// etcd Put.
    async fn put(&self, client: usize, key: Bytes, value: Bytes) -> Result<(), OperationError> {
        let request = api::PutRequest { key, value };
        let mut member = self.member(client);
        self.bounded(member.put(self.request(request))).await.map(drop)
    }

    /// etcd Range of one key; serializable for [`Consistency::Stale`]. A missing key is an
    /// error, as it is for raftkv.
    async fn get(&self, client: usize, key: Bytes, consistency: Consistency) -> Result<Bytes, OperationError> {
        let request = api::RangeRequest {
            key,
            serializable: consistency == Consistency::Stale,
            ..Default::default()
        };
        let mut member = self.member(client);
        let response = self.bounded(member.range(self.request(request))).await?;
        match response.kvs.into_iter().next() {
            Some(pair) => Ok(pair.value),
            None => Err(client::Error::NotFound.into()),
        }
    }
}
