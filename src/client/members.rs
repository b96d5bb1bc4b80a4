//! The client library's membership calls (`Cluster.Member*`): sent to the leader like a write
//! and retried by the same policy. A change the leader refuses (no such member, an id or
//! address already taken, another change in progress) comes back as [`Error::Other`] with the
//! leader's one-line reason, never as a key's [`Error::NotFound`].

use std::future::Future;
use std::time::Duration;

use tonic::transport::Channel;
use tonic::{Code, Response, Status};

use super::{Client, Error};
use crate::pb;
use crate::pb::cluster_client::ClusterClient;

impl Client {
    /// Every member with its role; for learners, how far behind the leader they are.
    pub async fn member_list(&self) -> Result<pb::MemberListResponse, Error> {
        self.member_call(
            |mut cluster, request| async move { cluster.member_list(request).await },
            pb::MemberListRequest {},
        )
        .await
    }

    /// Adds node `id` at `address` as a learner; unless `learner`, waits until it has caught
    /// up and makes it a voter (within the client's timeout).
    pub async fn member_add(&self, id: u64, address: &str, learner: bool) -> Result<pb::MemberChangeResponse, Error> {
        let request = pb::MemberAddRequest {
            id,
            address: address.to_string(),
            learner,
        };
        self.member_call(
            |mut cluster, request| async move { cluster.member_add(request).await },
            request,
        )
        .await
    }

    /// Makes learner `id` a voter once it has caught up (within the client's timeout).
    pub async fn member_promote(&self, id: u64) -> Result<pb::MemberChangeResponse, Error> {
        let request = pb::MemberPromoteRequest { id };
        self.member_call(
            |mut cluster, request| async move { cluster.member_promote(request).await },
            request,
        )
        .await
    }

    /// Removes member `id` (the leader too: leadership moves first).
    pub async fn member_remove(&self, id: u64) -> Result<pb::MemberChangeResponse, Error> {
        let request = pb::MemberRemoveRequest { id };
        self.member_call(
            |mut cluster, request| async move { cluster.member_remove(request).await },
            request,
        )
        .await
    }

    /// Sends a membership request by the client's retry policy; a refusal that is about the
    /// membership, not the key space, keeps the leader's reason.
    async fn member_call<Q, T, A, F>(&self, attempt: A, request: Q) -> Result<T, Error>
    where
        Q: Clone,
        A: Fn(ClusterClient<Channel>, tonic::Request<Q>) -> F,
        F: Future<Output = Result<Response<T>, Status>>,
    {
        let answer = self
            .call(|connection, time_left: Duration| {
                let mut message = tonic::Request::new(request.clone());
                message.set_timeout(time_left);
                let sent = attempt(ClusterClient::new(connection.channel.clone()), message);
                async move {
                    match sent.await {
                        Ok(response) => Ok(Response::new(Ok(response.into_inner()))),
                        // Final answers: the retry loop hands them back as they are.
                        Err(status) if is_membership_refusal(&status) => Ok(Response::new(Err(status))),
                        Err(status) => Err(status),
                    }
                }
            })
            .await?;
        answer.map_err(|status| Error::Other(status.message().to_string()))
    }
}

fn is_membership_refusal(status: &Status) -> bool {
    matches!(
        status.code(),
        Code::NotFound | Code::AlreadyExists | Code::FailedPrecondition
    )
}
