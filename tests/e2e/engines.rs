//! End to end: the state machine on sled (`--engine sled`), the engine raftkv started with and
//! kept beside the default (fjall): a cluster on it serves writes, reads and scans and keeps
//! what it acknowledged across kill -9 of every node, and its data directories refuse to be
//! opened with another engine. Everything else runs on the default engine.

use bytes::Bytes;
use raftkv::pb::Consistency;

use crate::common::{self, key, value, ClusterOptions, TestCluster};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_cluster_on_sled_serves_and_keeps_its_data_across_a_restart_of_every_node() {
    const WRITES: usize = 40;
    let options =
        ClusterOptions::default()
            .without_router()
            .node_args(&["--engine", "sled", "--snapshot-after-logs", "10"]);
    let mut cluster = TestCluster::start_with(options).await;
    let client = cluster.nodes_client();
    for i in 0..WRITES {
        client.put(key("sled", i), value("sled", i)).await.expect("put");
    }
    assert!(client.delete(key("sled", 0)).await.expect("delete").existed);

    for id in cluster.ids() {
        cluster.kill9(id);
    }
    for id in cluster.ids() {
        cluster.restart(id).await;
    }
    cluster.leader().await;
    for i in 1..WRITES {
        let got = client.get(key("sled", i), Consistency::Linearizable).await;
        assert_eq!(got.map(|reply| reply.value), Ok(value("sled", i)), "write #{i}");
    }
    let page = client
        .scan(Bytes::from_static(b"sled-"), Bytes::new(), 0, Consistency::Linearizable)
        .await
        .expect("scan");
    let keys: Vec<Bytes> = page.pairs.into_iter().map(|pair| pair.key).collect();
    assert_eq!(keys, (1..WRITES).map(|i| key("sled", i)).collect::<Vec<_>>());

    // The directory keeps its engine: started with the default one, the node refuses it
    // and says which engine to use.
    assert!(cluster.stop(1).await.success());
    let mut args = cluster.node_args(1);
    let engine = args
        .iter()
        .position(|arg| arg == "--engine")
        .expect("the nodes run with --engine");
    args.drain(engine..engine + 2);
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let message = common::node_refusal(&args).await;
    assert!(
        message.contains("--engine sled"),
        "the message says which engine: {message}"
    );
    cluster.restart(1).await;
    let got = cluster
        .node_client(1)
        .get(key("sled", 1), Consistency::Linearizable)
        .await;
    assert_eq!(got.map(|reply| reply.value), Ok(value("sled", 1)));
}
