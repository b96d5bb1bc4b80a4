//! Which certificates may send Raft messages: those that name a node.
//!
//! The rule: a certificate names a node when its SubjectAltName extension holds the URI
//! [`NODE_CERTIFICATE_URI`] (`urn:raftkv:node`). Clients' certificates, signed by the same CA,
//! do not, so a client (or anyone who stole a client's key) can read and write keys but
//! cannot vote, append entries or install snapshots.
//!
//! Why a SAN URI: it is a name the CA vouches for like any other SAN, it sits beside the
//! DNS and IP names a node's certificate needs anyway for its server role without getting in
//! their way (TLS clients ignore URI names), any CA tool can add one (`openssl`:
//! `subjectAltName = URI:urn:raftkv:node,IP:10.0.0.1`), and it is where service meshes keep
//! a workload's identity (SPIFFE). An extended key usage would not do: a node needs
//! serverAuth and clientAuth, which every server certificate of a public or company CA
//! carries too; a subject CN or OU convention is free text that many CAs fill in their own
//! way.

use tonic::{Request, Status};
use x509_parser::extensions::GeneralName;

/// The SubjectAltName URI that makes a certificate a node's.
pub const NODE_CERTIFICATE_URI: &str = "urn:raftkv:node";

/// Whether the DER certificate `der` names a node ([`NODE_CERTIFICATE_URI`] among its
/// SubjectAltName URIs). A certificate that cannot be parsed names nothing.
pub fn names_a_node(der: &[u8]) -> bool {
    let Ok((_, certificate)) = x509_parser::parse_x509_certificate(der) else {
        return false;
    };
    let Ok(Some(names)) = certificate.subject_alternative_name() else {
        return false;
    };
    names
        .value
        .general_names
        .iter()
        .any(|name| matches!(name, GeneralName::URI(uri) if *uri == NODE_CERTIFICATE_URI))
}

/// Ok when the TLS connection `request` came on presented a certificate that names a node
/// (the handshake has already checked it against the CA); PERMISSION_DENIED otherwise,
/// saying whose certificate it was.
pub fn require_node_certificate<T>(request: &Request<T>) -> Result<(), Status> {
    let certificates = request.peer_certs();
    let Some(leaf) = certificates.as_ref().and_then(|chain| chain.first()) else {
        return Err(Status::permission_denied(
            "Raft messages are taken only over TLS from a node's certificate; this connection presented none",
        ));
    };
    if names_a_node(leaf) {
        return Ok(());
    }
    Err(Status::permission_denied(format!(
        "Raft messages are taken only from a node's certificate (SubjectAltName URI {NODE_CERTIFICATE_URI}); \
         this connection's certificate ({}) names no node",
        subject_of(leaf)
    )))
}

/// The subject of a DER certificate as text, for messages.
fn subject_of(der: &[u8]) -> String {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, certificate)) => certificate.subject().to_string(),
        Err(_) => "unparsable".to_string(),
    }
}
