//! TLS for every raftkv connection: what a process presents and trusts, read from PEM files,
//! in the one shape tonic takes it.
//!
//! It exists so that the node, the router, the CLI and the tests make their TLS the same way:
//! - [`ServerTls`]: a node's or the router's certificate and key, and the CA that must have
//!   signed every client's and peer's certificate (mutual TLS). The same certificate is what
//!   the process presents when it connects to a node ([`ServerTls::client`]).
//! - [`ClientTls`]: the CA a client checks servers against, and optionally its own
//!   certificate; [`crate::client`] takes it for every channel it opens.
//! - [`node_identity`]: which certificates may send Raft messages (those that name a node).
//! - [`dev_certs`]: a development CA and its node and client certificates (`raftkv certs
//!   create`, `raftkv cluster up --tls`, the tests).
//!
//! rustls does the TLS, with ring as its crypto provider (`tonic/tls-ring`), which this module
//! installs as the process's default before it builds any configuration.

pub mod dev_certs;
pub mod node_identity;
pub mod probe;

use std::path::{Path, PathBuf};
use std::time::Duration;

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use tonic::transport::{Certificate, ClientTlsConfig, Identity, ServerTlsConfig};

pub use self::node_identity::{names_a_node, require_node_certificate, NODE_CERTIFICATE_URI};

/// How long a TLS handshake may take, on either side, before the connection is dropped: a
/// peer that connects and then says nothing does not hold a connection for long.
pub const TLS_HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(5);

/// Why a process's TLS files cannot be used; one line, naming the file.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The file cannot be read.
    #[error("cannot read the {what} {}: {source}", path.display())]
    Read {
        what: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    /// The file holds no PEM block of the kind it should.
    #[error("the {what} {} holds no PEM {kind}", path.display())]
    NotPem {
        what: &'static str,
        path: PathBuf,
        kind: &'static str,
    },
    /// rustls refused the combination (a key that does not match its certificate, say).
    #[error("{0}")]
    Refused(String),
}

/// A node's or the router's TLS: its certificate chain and key, and the CA that signs the
/// certificates of its clients and peers, which every one of them must present.
#[derive(Clone, Debug)]
pub struct ServerTls {
    cert_pem: Vec<u8>,
    key_pem: Vec<u8>,
    ca_pem: Vec<u8>,
}

impl ServerTls {
    /// Reads and checks the three PEM files.
    pub fn load(cert: &Path, key: &Path, ca: &Path) -> Result<ServerTls, TlsError> {
        ServerTls::from_pem(
            read_certificates(cert, "certificate")?,
            read_key(key)?,
            read_certificates(ca, "CA certificate")?,
        )
    }

    /// From PEM text already read; checks that the server can be built from it.
    pub fn from_pem(cert_pem: Vec<u8>, key_pem: Vec<u8>, ca_pem: Vec<u8>) -> Result<ServerTls, TlsError> {
        install_crypto_provider();
        let tls = ServerTls {
            cert_pem,
            key_pem,
            ca_pem,
        };
        tonic::transport::Server::builder()
            .tls_config(tls.server_config())
            .map_err(|error| {
                TlsError::Refused(format!("cannot serve TLS with these files: {}", source_text(&error)))
            })?;
        Ok(tls)
    }

    /// tonic's server configuration: this certificate, and client certificates required and
    /// checked against the CA.
    pub fn server_config(&self) -> ServerTlsConfig {
        ServerTlsConfig::new()
            .identity(Identity::from_pem(&self.cert_pem, &self.key_pem))
            .client_ca_root(Certificate::from_pem(&self.ca_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT)
    }

    /// What this process presents and trusts when it connects to a node: the same
    /// certificate and the same CA.
    pub fn client(&self) -> ClientTls {
        ClientTls {
            ca_pem: self.ca_pem.clone(),
            identity: Some((self.cert_pem.clone(), self.key_pem.clone())),
        }
    }
}

/// A client's TLS: the CA that signed the servers' certificates, and the client's own
/// certificate and key when the servers ask for one (they do, unless they run without
/// `--ca`). Cheap enough to clone per channel.
#[derive(Clone, Debug)]
pub struct ClientTls {
    ca_pem: Vec<u8>,
    identity: Option<(Vec<u8>, Vec<u8>)>,
}

impl ClientTls {
    /// Reads and checks the CA certificate and, when given, the client's certificate and key.
    pub fn load(ca: &Path, identity: Option<(&Path, &Path)>) -> Result<ClientTls, TlsError> {
        let ca_pem = read_certificates(ca, "CA certificate")?;
        let identity = match identity {
            Some((cert, key)) => Some((read_certificates(cert, "certificate")?, read_key(key)?)),
            None => None,
        };
        ClientTls::from_pem(ca_pem, identity)
    }

    /// From PEM text already read; checks that a connection can be configured with it.
    pub fn from_pem(ca_pem: Vec<u8>, identity: Option<(Vec<u8>, Vec<u8>)>) -> Result<ClientTls, TlsError> {
        install_crypto_provider();
        let tls = ClientTls { ca_pem, identity };
        tonic::transport::Endpoint::from_static("https://127.0.0.1:1")
            .tls_config(tls.config())
            .map_err(|error| TlsError::Refused(format!("cannot connect with these files: {}", source_text(&error))))?;
        Ok(tls)
    }

    /// Whether this client presents a certificate of its own.
    pub fn has_identity(&self) -> bool {
        self.identity.is_some()
    }

    /// tonic's configuration for one connection; the server's name is checked against the
    /// host of the address connected to (an IP address or a DNS name in its certificate).
    pub fn config(&self) -> ClientTlsConfig {
        let config = ClientTlsConfig::new()
            .ca_certificate(Certificate::from_pem(&self.ca_pem))
            .timeout(TLS_HANDSHAKE_TIMEOUT);
        match &self.identity {
            Some((cert, key)) => config.identity(Identity::from_pem(cert, key)),
            None => config,
        }
    }
}

/// The `--cert`, `--key` and `--ca` flags of `raftkv-node` and `raftkv-router`.
#[derive(clap::Args, Clone, Debug, Default)]
pub struct ServerTlsFlags {
    /// This process's certificate (PEM; its chain may follow). With --key and --ca, every
    /// connection, in and out, is TLS. A node's certificate must name a node (a
    /// SubjectAltName URI urn:raftkv:node) for the other nodes to take its Raft messages.
    #[arg(long, env = "RAFTKV_CERT", value_name = "FILE", requires_all = ["key", "ca"])]
    pub cert: Option<PathBuf>,
    /// The private key of --cert (PEM).
    #[arg(long, env = "RAFTKV_KEY", value_name = "FILE", requires_all = ["cert", "ca"])]
    pub key: Option<PathBuf>,
    /// The CA certificate (PEM) that signed the certificates of every client and peer; each
    /// must present one (mutual TLS). Also what this process checks the nodes' certificates
    /// against when it connects to them.
    #[arg(long, env = "RAFTKV_CA", value_name = "FILE", requires_all = ["cert", "key"])]
    pub ca: Option<PathBuf>,
}

impl ServerTlsFlags {
    /// The TLS the flags ask for (None: plaintext), its files read and checked.
    pub fn load(&self) -> Result<Option<ServerTls>, TlsError> {
        match (&self.cert, &self.key, &self.ca) {
            (Some(cert), Some(key), Some(ca)) => ServerTls::load(cert, key, ca).map(Some),
            // clap's `requires_all` makes the three go together.
            _ => Ok(None),
        }
    }
}

/// Installs ring as the process's rustls crypto provider, unless one is installed already:
/// the configuration builders need one, and must not have to guess between two.
fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

fn read_file(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    std::fs::read(path).map_err(|source| TlsError::Read {
        what,
        path: path.to_path_buf(),
        source,
    })
}

/// Reads a PEM file that must hold at least one certificate.
fn read_certificates(path: &Path, what: &'static str) -> Result<Vec<u8>, TlsError> {
    let pem = read_file(path, what)?;
    let mut certificates = CertificateDer::pem_slice_iter(&pem);
    match certificates.next() {
        Some(Ok(_)) => Ok(pem),
        _ => Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            kind: "certificate",
        }),
    }
}

/// Reads a PEM file that must hold a private key.
fn read_key(path: &Path) -> Result<Vec<u8>, TlsError> {
    let what = "private key";
    let pem = read_file(path, what)?;
    match PrivateKeyDer::from_pem_slice(&pem) {
        Ok(_) => Ok(pem),
        Err(_) => Err(TlsError::NotPem {
            what,
            path: path.to_path_buf(),
            kind: "private key",
        }),
    }
}

/// An error with its causes, on one line.
fn source_text(error: &(dyn std::error::Error + 'static)) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.contains(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}
