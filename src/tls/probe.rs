//! Why a connection was cut, asked by starting a TLS handshake of our own: what the client
//! library does when a connection ends without an answer, so that a TLS misconfiguration is
//! reported at once, in words, instead of retried until the deadline.
//!
//! Two cases look like any broken connection from inside the HTTP/2 client:
//! - a plaintext client and a TLS server, which closes the connection without a word: the
//!   probe ([`speaks_tls`]) starts a handshake, and a server that sends back a certificate
//!   speaks TLS (the probe trusts nothing: its verifier notes that one came and ends there);
//! - a TLS client whose certificate the server refuses: in TLS 1.3 the client finishes its
//!   handshake before the server has judged its certificate, sends its request, and the
//!   server's alert races the closing connection. The probe ([`refused_by`]) makes the same
//!   handshake and then waits for the server's first word: its HTTP/2 settings (accepted) or
//!   an alert (refused, and why).
//!
//! [`describe`] says what a rustls error means for the person at the client.

use std::io::{ErrorKind, Read};
use std::net::{TcpStream, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer, ServerName, UnixTime};
use rustls::{
    AlertDescription, CertificateError, ClientConfig, ClientConnection, DigitallySignedStruct, RootCertStore,
    SignatureScheme,
};

use super::ClientTls;

/// What a TLS failure means for the person at the client, in one line.
pub fn describe(error: &rustls::Error) -> String {
    match error {
        rustls::Error::AlertReceived(AlertDescription::CertificateRequired) => {
            "the server requires a client certificate, and this client has none (--cert and --key)".to_string()
        }
        rustls::Error::AlertReceived(
            alert @ (AlertDescription::BadCertificate
            | AlertDescription::UnknownCA
            | AlertDescription::CertificateExpired
            | AlertDescription::CertificateRevoked
            | AlertDescription::CertificateUnknown
            | AlertDescription::UnsupportedCertificate
            | AlertDescription::AccessDenied
            | AlertDescription::DecryptError),
        ) => {
            let why = match alert {
                AlertDescription::CertificateExpired => "it has expired",
                AlertDescription::UnknownCA | AlertDescription::DecryptError => "it is not signed by the server's CA",
                _ => "it is not one the server accepts",
            };
            format!("the server refused this client's certificate: {why} ({alert:?})")
        }
        rustls::Error::AlertReceived(alert) => format!("the server ended the TLS handshake ({alert:?})"),
        rustls::Error::InvalidCertificate(why) => {
            let why = match why {
                CertificateError::UnknownIssuer | CertificateError::BadSignature => {
                    "it is not signed by the CA this client trusts (--cacert)".to_string()
                }
                CertificateError::Expired | CertificateError::ExpiredContext { .. } => "it has expired".to_string(),
                CertificateError::NotValidYet | CertificateError::NotValidYetContext { .. } => {
                    "it is not valid yet".to_string()
                }
                CertificateError::NotValidForName | CertificateError::NotValidForNameContext { .. } => {
                    "it does not name the host connected to".to_string()
                }
                other => format!("{other:?}"),
            };
            format!("the server's certificate is refused: {why}")
        }
        rustls::Error::InvalidMessage(_) | rustls::Error::InappropriateMessage { .. } => {
            "the server does not speak TLS (connect without --cacert?)".to_string()
        }
        other => format!("TLS failed: {other}"),
    }
}

/// Whether the server at `address` (HOST:PORT) answers a TLS handshake with a certificate,
/// found out within `within` (false when it could not tell in time).
pub async fn speaks_tls(address: &str, within: Duration) -> bool {
    let address = address.to_string();
    let probe = tokio::task::spawn_blocking(move || {
        let verifier = Arc::new(CertificateSeen::default());
        let config = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
            .with_safe_default_protocol_versions()
            .ok()?
            .dangerous()
            .with_custom_certificate_verifier(verifier.clone())
            .with_no_client_auth();
        // Ends as soon as the certificate came (then it tells nothing more), or with the
        // server's refusal; either way whether one came is the answer.
        let _ = handshake(&address, config, within, || verifier.seen.load(Ordering::Relaxed));
        Some(verifier.seen.load(Ordering::Relaxed))
    });
    matches!(tokio::time::timeout(within, probe).await, Ok(Ok(Some(true))))
}

/// Why the TLS server at `address` refuses this client (`tls`), found out within `within`:
/// the TLS error of a handshake as this client makes it, followed by the server's first word.
/// None when it accepts, or when that cannot be told in time.
pub async fn refused_by(address: &str, tls: &ClientTls, within: Duration) -> Option<rustls::Error> {
    let address = address.to_string();
    let config = client_config(tls)?;
    let probe = tokio::task::spawn_blocking(move || match handshake(&address, config, within, || false) {
        Some(Err(error)) => Some(error),
        _ => None,
    });
    tokio::time::timeout(within, probe).await.ok()?.ok()?
}

/// Connects to `address` with `config` and runs the handshake until it completes (then reads
/// the server's first bytes) or `stop` says enough. Some(Ok) when the server accepted,
/// Some(Err) with the TLS error when it did not, None when it could not tell.
fn handshake(
    address: &str,
    config: ClientConfig,
    within: Duration,
    stop: impl Fn() -> bool,
) -> Option<Result<(), rustls::Error>> {
    let deadline = Instant::now() + within;
    let socket_address = address.to_socket_addrs().ok()?.next()?;
    let mut socket = TcpStream::connect_timeout(&socket_address, within).ok()?;
    let time_left = deadline.checked_duration_since(Instant::now())?;
    socket.set_read_timeout(Some(time_left)).ok()?;
    socket.set_write_timeout(Some(time_left)).ok()?;
    let host = address
        .rsplit_once(':')
        .map(|(host, _)| host.trim_matches(['[', ']']))?;
    let name = ServerName::try_from(host.to_string()).ok()?;
    let mut connection = ClientConnection::new(Arc::new(config), name).ok()?;
    let tls_error = |error: std::io::Error| -> Option<Result<(), rustls::Error>> {
        match error.kind() {
            ErrorKind::WouldBlock | ErrorKind::TimedOut => None,
            _ => match error.into_inner().map(|inner| inner.downcast::<rustls::Error>()) {
                Some(Ok(error)) => Some(Err(*error)),
                _ => None,
            },
        }
    };
    while connection.is_handshaking() {
        if stop() {
            return None;
        }
        if let Err(error) = connection.complete_io(&mut socket) {
            return if stop() { None } else { tls_error(error) };
        }
    }
    // The handshake is done on this side; the server's verdict on our certificate is its
    // first word: application data (its HTTP/2 settings) or an alert.
    loop {
        match connection.complete_io(&mut socket) {
            Ok((0, 0)) => return None,
            Ok(_) => {}
            Err(error) => return tls_error(error),
        }
        let mut byte = [0u8; 1];
        match connection.reader().read(&mut byte) {
            Ok(_) => return Some(Ok(())),
            Err(error) if error.kind() == ErrorKind::WouldBlock => {}
            Err(_) => return None,
        }
    }
}

/// The rustls configuration a tonic channel made with `tls` uses: the same CA and identity.
fn client_config(tls: &ClientTls) -> Option<ClientConfig> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(&tls.ca_pem) {
        roots.add(certificate.ok()?).ok()?;
    }
    let builder = ClientConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
        .with_safe_default_protocol_versions()
        .ok()?
        .with_root_certificates(roots);
    match &tls.identity {
        Some((cert, key)) => {
            let chain = CertificateDer::pem_slice_iter(cert)
                .collect::<Result<Vec<_>, _>>()
                .ok()?;
            let key = PrivateKeyDer::from_pem_slice(key).ok()?;
            builder.with_client_auth_cert(chain, key).ok()
        }
        None => Some(builder.with_no_client_auth()),
    }
}

/// A verifier that trusts nothing and notes that a certificate came.
#[derive(Debug, Default)]
struct CertificateSeen {
    seen: AtomicBool,
}

impl ServerCertVerifier for CertificateSeen {
    fn verify_server_cert(
        &self,
        _end_entity: &CertificateDer<'_>,
        _intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        _now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        self.seen.store(true, Ordering::Relaxed);
        Err(rustls::Error::General("a probe trusts no certificate".to_string()))
    }

    fn verify_tls12_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("a probe trusts no signature".to_string()))
    }

    fn verify_tls13_signature(
        &self,
        _message: &[u8],
        _cert: &CertificateDer<'_>,
        _dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        Err(rustls::Error::General("a probe trusts no signature".to_string()))
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        rustls::crypto::ring::default_provider()
            .signature_verification_algorithms
            .supported_schemes()
    }
}
