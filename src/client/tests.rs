//! The client's retry decisions, argument checks, and the client against fake nodes
//! ([`crate::testing::FakeNode`]) on loopback ports: hint following, endpoint rotation,
//! refused connections, batching.

use super::*;
use crate::wire::{is_connect_error, is_transport_error, unavailable, LeaderHint};

fn hint(id: u64, address: &str) -> LeaderHint {
    LeaderHint {
        id,
        address: address.to_string(),
    }
}

#[test]
fn server_unavailable_with_a_hint_elsewhere_is_followed_at_once() {
    let status = unavailable("not the leader", Some(&hint(2, "127.0.0.1:7002")));
    assert_eq!(
        next_step(&status, "127.0.0.1:7001"),
        NextStep::FollowHint("127.0.0.1:7002".to_string())
    );
    // A hint naming the address just tried is stale: wait and ask again.
    let aborted = Status::aborted("leadership changed");
    assert_eq!(next_step(&aborted, "a:1"), NextStep::NextEndpoint);
    assert_eq!(next_step(&status, "127.0.0.1:7002"), NextStep::SameAddress);
    assert_eq!(next_step(&unavailable("no leader", None), "a:1"), NextStep::SameAddress);
}

#[test]
fn not_found_and_invalid_argument_are_not_retried() {
    assert!(matches!(
        next_step(&Status::not_found("x"), "a:1"),
        NextStep::Fail(Error::NotFound)
    ));
    assert!(matches!(
        next_step(&Status::invalid_argument("x"), "a:1"),
        NextStep::Fail(Error::InvalidArgument(_))
    ));
}

#[tokio::test]
async fn invalid_key_is_refused_without_sending_anything() {
    // Port 9 (discard) is never a raftkv node: if a request were sent, this would fail
    // with Unavailable or Timeout, not InvalidArgument.
    let client = Client::new(vec!["127.0.0.1:9".to_string()], Duration::from_secs(1)).unwrap();
    let error = client.put(Bytes::new(), Bytes::from_static(b"v")).await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
    let big = Bytes::from(vec![0u8; limits::MAX_VALUE_BYTES + 1]);
    let error = client.put(Bytes::from_static(b"k"), big).await.unwrap_err();
    assert!(matches!(error, Error::InvalidArgument(_)), "{error:?}");
}

#[test]
fn client_needs_endpoints_that_are_addresses() {
    assert!(Client::new(vec![], Duration::from_secs(1)).is_err());
    assert!(Client::new(vec!["nope".to_string()], Duration::from_secs(1)).is_err());
}

/// The client against in-process fake nodes on loopback ports: hint following, endpoint
/// rotation, refused connections.
mod against_fake_nodes {
    use super::*;
    use crate::testing::{FakeNode, Writes};
    use std::net::SocketAddr;
    use tokio::net::TcpListener;

    /// An address on which nothing listens (bound, then released).
    async fn closed_address() -> String {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address: SocketAddr = listener.local_addr().unwrap();
        drop(listener);
        address.to_string()
    }

    #[tokio::test]
    async fn write_to_a_follower_follows_the_leader_hint() {
        let leader = FakeNode::start(1);
        let follower = FakeNode::start(2);
        follower.set_writes(Writes::Refuse(Some(leader.as_hint())));
        let client = Client::new(vec![follower.address.clone()], Duration::from_secs(5)).unwrap();
        client
            .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
            .await
            .unwrap();
        assert_eq!(leader.puts(), 1);
        assert_eq!(follower.puts(), 0);
        // The leader is remembered: the next write goes straight there.
        assert_eq!(client.target(), leader.address);
    }

    #[tokio::test]
    async fn refused_connection_is_a_connect_error_and_the_next_endpoint_is_tried() {
        let dead = closed_address().await;
        let status = KvClient::new(channel(&dead, None).unwrap())
            .put(pb::PutRequest {
                key: Bytes::from_static(b"k"),
                ..Default::default()
            })
            .await
            .unwrap_err();
        assert!(is_connect_error(&status), "{status:?}");
        assert!(is_transport_error(&status));
        assert!(matches!(Error::from_status(&status), Error::Unavailable { .. }));

        let live = FakeNode::start(1);
        let client = Client::new(vec![dead, live.address.clone()], Duration::from_secs(5)).unwrap();
        client
            .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
            .await
            .unwrap();
        assert_eq!(live.puts(), 1);
    }

    #[tokio::test]
    async fn nothing_listening_ends_in_a_timeout_naming_the_last_error() {
        let client = Client::new(vec![closed_address().await], Duration::from_millis(300)).unwrap();
        match client
            .get(Bytes::from_static(b"k"), pb::Consistency::Linearizable)
            .await
        {
            Err(Error::Timeout(message)) => {
                assert!(message.contains("300ms"), "{message}");
                assert!(message.contains("connect"), "{message}");
            }
            other => panic!("{other:?}"),
        }
    }

    #[tokio::test]
    async fn not_found_and_invalid_argument_come_back_unchanged() {
        let node = FakeNode::start(1);
        let client = Client::new(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
        let error = client
            .get(Bytes::from_static(b"missing"), pb::Consistency::Stale)
            .await
            .unwrap_err();
        assert_eq!(error, Error::NotFound);
        let error = client.delete(Bytes::from_static(b"bad")).await.unwrap_err();
        assert_eq!(error, Error::InvalidArgument("key is bad".to_string()));
    }

    #[tokio::test(flavor = "current_thread")]
    async fn requests_of_tasks_sharing_a_client_go_together_each_with_its_own_answer() {
        let node = FakeNode::start(1);
        let client = Client::new(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
        let puts: Vec<_> = (0..64)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.put(Bytes::from_static(b"k"), Bytes::from_static(b"v")).await })
            })
            .collect();
        let gets: Vec<_> = (0..8)
            .map(|_| {
                let client = client.clone();
                tokio::spawn(async move { client.get(Bytes::from_static(b"missing"), pb::Consistency::Stale).await })
            })
            .collect();
        for put in puts {
            put.await.unwrap().unwrap();
        }
        for get in gets {
            assert_eq!(get.await.unwrap().unwrap_err(), Error::NotFound);
        }
        assert_eq!(node.puts(), 64);
        let (calls, _) = node.batches();
        assert!(calls < 64, "72 concurrent requests took {calls} calls");
    }

    #[tokio::test]
    async fn an_unbatched_client_sends_each_request_as_its_own_call() {
        let node = FakeNode::start(1);
        let client = Client::new_unbatched(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
        client
            .put(Bytes::from_static(b"k"), Bytes::from_static(b"v"))
            .await
            .unwrap();
        let error = client.delete(Bytes::from_static(b"bad")).await.unwrap_err();
        assert_eq!(error, Error::InvalidArgument("key is bad".to_string()));
        assert_eq!(node.puts(), 1);
        assert_eq!(node.batches().0, 0);
    }

    #[tokio::test(flavor = "current_thread")]
    async fn a_read_sent_with_a_write_is_not_held_up_by_it() {
        let hold = Arc::new(tokio::sync::Notify::new());
        let node = FakeNode::start(1);
        node.set_writes(Writes::Hold(hold.clone()));
        let client = Client::new(vec![node.address.clone()], Duration::from_secs(5)).unwrap();
        let put = tokio::spawn({
            let client = client.clone();
            async move { client.put(Bytes::from_static(b"k"), Bytes::from_static(b"v")).await }
        });
        let get = tokio::spawn({
            let client = client.clone();
            async move { client.get(Bytes::from_static(b"missing"), pb::Consistency::Stale).await }
        });
        let answer = tokio::time::timeout(Duration::from_secs(3), get)
            .await
            .expect("the read is answered while the write is still held");
        assert_eq!(answer.unwrap().unwrap_err(), Error::NotFound);
        assert!(!put.is_finished());
        hold.notify_one();
        put.await.unwrap().unwrap();
    }
}
