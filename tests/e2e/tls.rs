//! TLS end to end: a cluster whose every connection is TLS with client certificates serves
//! through the router and directly; a client that gets TLS wrong (plaintext, no certificate,
//! another CA's certificate, an expired one, the servers checked against another CA) is
//! refused at once with one line that says why; a client's certificate cannot send Raft
//! messages; `raftkv certs create` writes private keys 0600 and overwrites nothing unasked.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use raftkv::client::{self, Client, ClientOptions};
use raftkv::pb::Consistency;
use raftkv::raft_pb::{self, raft_client::RaftClient};
use raftkv::tls::dev_certs::{self, DevCa, IssuedCertificate, Validity, DEV_CERT_FILES};
use raftkv::tls::ClientTls;
use tonic::Code;

use crate::common::{binary, run_to_end, ClusterOptions, Finished, TestCluster};

/// How long one CLI run may take before the test calls it a hang.
const CLI_LIMIT: Duration = Duration::from_secs(20);
/// The client timeout the refused clients run with: far beyond [`CLI_LIMIT`], so a refusal
/// that were retried until the timeout (instead of ending the command) fails as a hang.
const PATIENT_TIMEOUT: &str = "120s";
/// [`PATIENT_TIMEOUT`] for the library's client.
const PATIENT_TIMEOUT_LIBRARY: Duration = Duration::from_secs(120);

async fn tls_cluster() -> TestCluster {
    TestCluster::start_with(ClusterOptions::default().with_tls()).await
}

/// Runs the CLI to its end; a run still going after [`CLI_LIMIT`] fails the test as a hang.
async fn raftkv(args: &[String]) -> Finished {
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    run_to_end(&binary("raftkv"), &args, CLI_LIMIT).await
}

/// `raftkv --endpoint ENDPOINT --timeout TIMEOUT EXTRA... get greeting`.
fn get_args(endpoint: &str, timeout: &str, extra: &[String]) -> Vec<String> {
    let mut args = vec!["--endpoint".to_string(), endpoint.to_string()];
    args.extend(["--timeout".to_string(), timeout.to_string()]);
    args.extend(extra.iter().cloned());
    args.extend(["get".to_string(), "greeting".to_string()]);
    args
}

/// Asserts that a CLI run failed with exit 3 and one line on stderr containing `expected`
/// (the run ended: [`raftkv`] fails a hang).
fn assert_refused(finished: &Finished, expected: &str) {
    assert_eq!(finished.status.code(), Some(3), "{finished:?}");
    assert_eq!(finished.stderr.lines().count(), 1, "one line: {finished:?}");
    assert!(
        finished.stderr.contains(expected),
        "expected {expected:?} in {finished:?}"
    );
}

/// Writes `certificate` as cert.pem and key.pem in `dir`; the CLI flags that present it.
fn write_identity(dir: &Path, name: &str, certificate: &IssuedCertificate, ca: &Path) -> Vec<String> {
    let cert = dir.join(format!("{name}.pem"));
    let key = dir.join(format!("{name}-key.pem"));
    std::fs::write(&cert, &certificate.cert_pem).unwrap();
    std::fs::write(&key, &certificate.key_pem).unwrap();
    vec![
        "--cacert".to_string(),
        ca.display().to_string(),
        "--cert".to_string(),
        cert.display().to_string(),
        "--key".to_string(),
        key.display().to_string(),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tls_cluster_serves_puts_and_gets_through_the_router_and_directly() {
    let cluster = tls_cluster().await;
    let router = cluster.client();
    router
        .put(Bytes::from_static(b"greeting"), Bytes::from_static(b"hello"))
        .await
        .expect("a put through the router");
    for id in cluster.ids() {
        let read = cluster
            .node_client(id)
            .get(Bytes::from_static(b"greeting"), Consistency::Linearizable)
            .await
            .unwrap_or_else(|error| panic!("a linearizable read from node {id}: {error}"));
        assert_eq!(read.value, Bytes::from_static(b"hello"));
    }
    let follower = cluster.follower().await;
    cluster
        .node_client(follower)
        .put(Bytes::from_static(b"direct"), Bytes::from_static(b"yes"))
        .await
        .expect("a put sent to a follower follows the leader hint over TLS");

    let tls = cluster.tls().expect("a TLS cluster").cli_args();
    let run = raftkv(&get_args(cluster.router_address(), "5s", &tls)).await;
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "hello\n"),
        "{run:?}"
    );
    let run = raftkv(&get_args(cluster.address(follower), "5s", &tls)).await;
    assert_eq!(
        (run.status.code(), run.stdout.as_str()),
        (Some(0), "hello\n"),
        "{run:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_plaintext_client_is_refused_at_once_with_one_line_saying_the_server_wants_tls() {
    let cluster = tls_cluster().await;
    for endpoint in [cluster.router_address(), cluster.address(1)] {
        for timeout in [PATIENT_TIMEOUT, "300ms"] {
            let run = raftkv(&get_args(endpoint, timeout, &[])).await;
            assert_refused(&run, "serves TLS and this client connects in plaintext");
        }
    }
    // The library says so too, and so does a status request.
    let plaintext = Client::new(vec![cluster.router_address().to_string()], PATIENT_TIMEOUT_LIBRARY).unwrap();
    let error = tokio::time::timeout(CLI_LIMIT, plaintext.status())
        .await
        .expect("a refusal ends the call; it is not retried until the client's timeout")
        .expect_err("plaintext to a TLS router");
    assert!(matches!(error, client::Error::Tls(_)), "{error:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wrongly_signed_missing_or_expired_certificates_are_refused() {
    let cluster = tls_cluster().await;
    cluster
        .client()
        .put(Bytes::from_static(b"greeting"), Bytes::from_static(b"hello"))
        .await
        .unwrap();
    let tls = cluster.tls().unwrap();
    let ca_file = tls.dir.join(dev_certs::CA_FILE);
    let scratch = cluster.temp_dir();
    let day = Duration::from_secs(24 * 3600);

    // No certificate at all.
    let no_certificate = ["--cacert".to_string(), ca_file.display().to_string()];
    let run = raftkv(&get_args(cluster.router_address(), "300ms", &no_certificate)).await;
    assert_refused(&run, "requires a client certificate");

    // A client certificate from another CA (of the same name, even).
    let stranger = DevCa::new("raftkv test CA", Validity::from_now(day)).unwrap();
    let foreign = stranger.issue_client("raftkv client", Validity::from_now(day)).unwrap();
    let foreign_args = write_identity(scratch, "foreign", &foreign, &ca_file);
    for endpoint in [cluster.router_address(), cluster.address(2)] {
        let run = raftkv(&get_args(endpoint, PATIENT_TIMEOUT, &foreign_args)).await;
        assert_refused(&run, "the server refused this client's certificate");
    }

    // An expired client certificate from the cluster's own CA.
    let now = SystemTime::now();
    let expired_validity = Validity {
        not_before: now - 2 * day,
        not_after: now - day,
    };
    let expired = tls.ca.issue_client("raftkv client", expired_validity).unwrap();
    let expired_args = write_identity(scratch, "expired", &expired, &ca_file);
    let run = raftkv(&get_args(cluster.router_address(), PATIENT_TIMEOUT, &expired_args)).await;
    assert_refused(&run, "it has expired");

    // The servers checked against another CA: their certificates are refused.
    let stranger_ca = scratch.join("stranger-ca.pem");
    std::fs::write(&stranger_ca, stranger.cert_pem()).unwrap();
    let mut wrong_ca = tls.cli_args();
    wrong_ca[1] = stranger_ca.display().to_string();
    let run = raftkv(&get_args(cluster.router_address(), "300ms", &wrong_ca)).await;
    assert_refused(
        &run,
        "the server's certificate is refused: it is not signed by the CA this client trusts",
    );

    // The library: the same refusals as errors of their own kind, never retried to a timeout.
    let expired_tls = ClientTls::from_pem(
        tls.ca.cert_pem().into_bytes(),
        Some((expired.cert_pem.into_bytes(), expired.key_pem.into_bytes())),
    )
    .unwrap();
    let options = ClientOptions {
        tls: Some(expired_tls),
        ..ClientOptions::default()
    };
    let client = Client::with_options(
        vec![cluster.router_address().to_string()],
        PATIENT_TIMEOUT_LIBRARY,
        options,
    )
    .unwrap();
    let error = tokio::time::timeout(
        CLI_LIMIT,
        client.get(Bytes::from_static(b"greeting"), Consistency::Linearizable),
    )
    .await
    .expect("a refusal ends the call; it is not retried until the client's timeout")
    .expect_err("an expired certificate");
    assert!(
        matches!(&error, client::Error::Tls(why) if why.contains("expired")),
        "{error:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_certificate_cannot_send_raft_messages() {
    let cluster = TestCluster::start_with(ClusterOptions::default().without_router().with_tls()).await;
    let tls = cluster.tls().unwrap();
    let vote = raft_pb::VoteRequest::default();

    // The client's certificate: signed by the cluster's CA, so Kv works, but it names no node.
    let mut as_client = RaftClient::new(cluster.channel(cluster.address(1)));
    let refused = as_client
        .vote(vote)
        .await
        .expect_err("a vote from a client's certificate");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
    assert!(refused.message().contains("names no node"), "{refused:?}");
    let refused = as_client
        .read_index(raft_pb::ReadIndexRequest { lease: false })
        .await
        .expect_err("a ReadIndex from a client's certificate");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");

    // The node certificate gets past the check (the malformed vote is then refused as such).
    let node_tls = ClientTls::load(
        &tls.dir.join(dev_certs::CA_FILE),
        Some((
            &tls.dir.join(dev_certs::NODE_CERT_FILE),
            &tls.dir.join(dev_certs::NODE_KEY_FILE),
        )),
    )
    .unwrap();
    let mut as_node = RaftClient::new(client::channel(cluster.address(1), Some(&node_tls)).unwrap());
    if let Err(status) = as_node.vote(raft_pb::VoteRequest::default()).await {
        assert_ne!(status.code(), Code::PermissionDenied, "{status:?}");
    }

    // Nor can a certificate for serving and connecting (what a router's own could be) that
    // names no node.
    let validity = Validity::from_now(Duration::from_secs(3600));
    let server_only = tls
        .ca
        .issue_server(&["127.0.0.1".to_string()], validity)
        .expect("a server certificate without the node name");
    let server_tls = ClientTls::from_pem(
        tls.ca.cert_pem().into_bytes(),
        Some((server_only.cert_pem.into_bytes(), server_only.key_pem.into_bytes())),
    )
    .unwrap();
    let mut as_router = RaftClient::new(client::channel(cluster.address(2), Some(&server_tls)).unwrap());
    let refused = as_router
        .pre_vote(raft_pb::VoteRequest::default())
        .await
        .expect_err("a certificate for serving that names no node");
    assert_eq!(refused.code(), Code::PermissionDenied, "{refused:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn certs_create_writes_private_keys_0600_and_refuses_to_overwrite() {
    let scratch = tempfile::tempdir().unwrap();
    let dir = scratch.path().join("certs");
    let dir_text = dir.display().to_string();
    let create = |force: bool| {
        let mut args = vec![
            "certs".to_string(),
            "create".to_string(),
            "--dir".to_string(),
            dir_text.clone(),
            "--hosts".to_string(),
            "127.0.0.1,localhost".to_string(),
        ];
        if force {
            args.push("--force".to_string());
        }
        args
    };
    let run = raftkv(&create(false)).await;
    assert!(run.status.success(), "{run:?}");
    for name in DEV_CERT_FILES {
        let mode = std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
        if name.ends_with("-key.pem") {
            assert_eq!(mode, 0o600, "{name} is readable by its owner only");
        } else {
            assert_eq!(mode & 0o002, 0, "{name} is not world-writable");
        }
    }
    let before: Vec<Vec<u8>> = DEV_CERT_FILES
        .iter()
        .map(|name| std::fs::read(dir.join(name)).unwrap())
        .collect();

    let run = raftkv(&create(false)).await;
    assert_ne!(run.status.code(), Some(0), "{run:?}");
    assert_eq!(run.stderr.lines().count(), 1, "{run:?}");
    assert!(
        run.stderr.contains("already exists") && run.stderr.contains("--force"),
        "{run:?}"
    );
    let after: Vec<Vec<u8>> = DEV_CERT_FILES
        .iter()
        .map(|name| std::fs::read(dir.join(name)).unwrap())
        .collect();
    assert_eq!(before, after, "nothing was overwritten");

    let run = raftkv(&create(true)).await;
    assert!(run.status.success(), "{run:?}");
    let key = std::fs::read(dir.join(dev_certs::NODE_KEY_FILE)).unwrap();
    assert_ne!(key, before[2], "--force replaced the keys");
    let mode = std::fs::metadata(dir.join(dev_certs::NODE_KEY_FILE))
        .unwrap()
        .permissions()
        .mode()
        & 0o777;
    assert_eq!(mode, 0o600);
}
