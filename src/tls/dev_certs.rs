//! A development CA and the certificates of a local cluster, made with rcgen: what `raftkv
//! certs create` writes and `raftkv cluster up --tls` uses, and what the tests sign their
//! certificates with (expired ones and strangers' too).
//!
//! The files ([`DEV_CERT_FILES`]): `ca.pem` (the CA), `node.pem`/`node-key.pem` (every node's
//! and the router's: serverAuth and clientAuth, the given hosts as DNS or IP names, and the
//! node name [`NODE_CERTIFICATE_URI`]), `client.pem`/`client-key.pem` (clientAuth only, no
//! node name). Keys are ECDSA P-256. The CA's own key is not written: nothing more can be
//! signed with it, so the directory holds no key that could mint a node's certificate.
//!
//! Keys are written 0600 from their first byte (created with that mode, then renamed into
//! place), certificates 0644; existing files are replaced only when asked to.

use std::fs::Permissions;
use std::io::Write;
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::string::Ia5String;
use rcgen::{
    BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose, IsCa, KeyPair,
    KeyUsagePurpose, SanType,
};

use super::NODE_CERTIFICATE_URI;

/// How long development certificates are valid: long enough that a local cluster made once
/// keeps working; they are for development only.
pub const DEV_CERT_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);
/// The hosts a node certificate names when none are given.
pub const DEFAULT_HOSTS: [&str; 3] = ["127.0.0.1", "localhost", "::1"];
/// The files [`write_dev_certificates`] writes, in order.
pub const DEV_CERT_FILES: [&str; 5] = [
    CA_FILE,
    NODE_CERT_FILE,
    NODE_KEY_FILE,
    CLIENT_CERT_FILE,
    CLIENT_KEY_FILE,
];
pub const CA_FILE: &str = "ca.pem";
pub const NODE_CERT_FILE: &str = "node.pem";
pub const NODE_KEY_FILE: &str = "node-key.pem";
pub const CLIENT_CERT_FILE: &str = "client.pem";
pub const CLIENT_KEY_FILE: &str = "client-key.pem";
/// Mode of a written private key.
const KEY_MODE: u32 = 0o600;
/// Mode of a written certificate.
const CERT_MODE: u32 = 0o644;
/// Mode of a certificate directory this creates.
const DIR_MODE: u32 = 0o700;

/// Why development certificates could not be made or written; one line.
#[derive(Debug, thiserror::Error)]
pub enum DevCertError {
    /// rcgen refused (a host that is neither an IP address nor a DNS name, say).
    #[error("cannot make the certificates: {0}")]
    Generate(#[from] rcgen::Error),
    /// A file to write exists and replacing was not asked for.
    #[error("{} already exists; pass --force to replace the certificates in {}", path.display(), dir.display())]
    Exists { path: PathBuf, dir: PathBuf },
    /// Writing failed.
    #[error("cannot write {}: {source}", path.display())]
    Write { path: PathBuf, source: std::io::Error },
}

/// When a certificate is valid.
#[derive(Clone, Copy, Debug)]
pub struct Validity {
    pub not_before: SystemTime,
    pub not_after: SystemTime,
}

impl Validity {
    /// From a minute ago (clocks differ a little) for `duration`.
    pub fn from_now(duration: Duration) -> Validity {
        let now = SystemTime::now();
        Validity {
            not_before: now - Duration::from_secs(60),
            not_after: now + duration,
        }
    }

    fn apply(&self, params: &mut CertificateParams) {
        params.not_before = self.not_before.into();
        params.not_after = self.not_after.into();
    }
}

/// A certificate and its private key, as PEM.
#[derive(Clone, Debug)]
pub struct IssuedCertificate {
    pub cert_pem: String,
    pub key_pem: String,
}

/// A development CA, with its key, in memory only.
pub struct DevCa {
    issuer: CertifiedIssuer<'static, KeyPair>,
}

impl DevCa {
    /// A new CA named `name`, valid for `validity`.
    pub fn new(name: &str, validity: Validity) -> Result<DevCa, DevCertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
        validity.apply(&mut params);
        Ok(DevCa {
            issuer: CertifiedIssuer::self_signed(params, KeyPair::generate()?)?,
        })
    }

    /// The CA's certificate, PEM.
    pub fn cert_pem(&self) -> String {
        self.issuer.pem()
    }

    /// A node's certificate: `hosts` (IP addresses or DNS names) as its SubjectAltNames with
    /// the node name, for serving and for connecting to other nodes.
    pub fn issue_node(&self, hosts: &[String], validity: Validity) -> Result<IssuedCertificate, DevCertError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, "raftkv node");
        params
            .subject_alt_names
            .push(SanType::URI(Ia5String::try_from(NODE_CERTIFICATE_URI)?));
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    /// A client's certificate, named `name`: clientAuth only, no node name.
    pub fn issue_client(&self, name: &str, validity: Validity) -> Result<IssuedCertificate, DevCertError> {
        let mut params = CertificateParams::new(Vec::<String>::new())?;
        params.distinguished_name.push(DnType::CommonName, name);
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    /// A certificate for serving and connecting (serverAuth and clientAuth) for `hosts`,
    /// without the node name: what a router's own certificate can be.
    pub fn issue_server(&self, hosts: &[String], validity: Validity) -> Result<IssuedCertificate, DevCertError> {
        let mut params = CertificateParams::new(hosts.to_vec())?;
        params.distinguished_name.push(DnType::CommonName, "raftkv server");
        params.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth, ExtendedKeyUsagePurpose::ClientAuth];
        self.issue(params, validity)
    }

    fn issue(&self, mut params: CertificateParams, validity: Validity) -> Result<IssuedCertificate, DevCertError> {
        params.key_usages = vec![KeyUsagePurpose::DigitalSignature];
        params.use_authority_key_identifier_extension = true;
        validity.apply(&mut params);
        let key = KeyPair::generate()?;
        let cert = params.signed_by(&key, &self.issuer)?;
        Ok(IssuedCertificate {
            cert_pem: cert.pem(),
            key_pem: key.serialize_pem(),
        })
    }
}

/// The five files of a development cluster, made in memory.
#[derive(Clone, Debug)]
pub struct DevCertificates {
    pub ca_pem: String,
    pub node: IssuedCertificate,
    pub client: IssuedCertificate,
}

impl DevCertificates {
    /// A new CA, a node certificate for `hosts` and a client certificate, all valid for
    /// [`DEV_CERT_VALIDITY`].
    pub fn generate(hosts: &[String]) -> Result<DevCertificates, DevCertError> {
        let validity = Validity::from_now(DEV_CERT_VALIDITY);
        DevCertificates::signed_by(&DevCa::new("raftkv development CA", validity)?, hosts, validity)
    }

    /// A node certificate for `hosts` and a client certificate signed by `ca`, valid for
    /// `validity` (a test keeps the CA to sign more).
    pub fn signed_by(ca: &DevCa, hosts: &[String], validity: Validity) -> Result<DevCertificates, DevCertError> {
        Ok(DevCertificates {
            ca_pem: ca.cert_pem(),
            node: ca.issue_node(hosts, validity)?,
            client: ca.issue_client("raftkv client", validity)?,
        })
    }

    /// Writes the five files into `dir` (created 0700 if missing); refuses, before writing
    /// anything, when one of them exists and `replace` is false. Returns the paths written.
    pub fn write(&self, dir: &Path, replace: bool) -> Result<Vec<PathBuf>, DevCertError> {
        let files: [(&str, &str, u32); 5] = [
            (CA_FILE, &self.ca_pem, CERT_MODE),
            (NODE_CERT_FILE, &self.node.cert_pem, CERT_MODE),
            (NODE_KEY_FILE, &self.node.key_pem, KEY_MODE),
            (CLIENT_CERT_FILE, &self.client.cert_pem, CERT_MODE),
            (CLIENT_KEY_FILE, &self.client.key_pem, KEY_MODE),
        ];
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(DIR_MODE)
            .create(dir)
            .map_err(|source| DevCertError::Write {
                path: dir.to_path_buf(),
                source,
            })?;
        if !replace {
            if let Some(path) = files.iter().map(|(name, ..)| dir.join(name)).find(|path| path.exists()) {
                return Err(DevCertError::Exists {
                    path,
                    dir: dir.to_path_buf(),
                });
            }
        }
        let mut written = Vec::new();
        for (name, contents, mode) in files {
            let path = dir.join(name);
            write_file(dir, &path, contents.as_bytes(), mode, replace)?;
            written.push(path);
        }
        Ok(written)
    }
}

/// Writes `contents` to `path` through a temporary file in `dir` created with `mode` (never
/// readable by more than `mode` allows, not even while it is written), then renamed into place;
/// without `replace`, an existing `path` is left alone and reported.
fn write_file(dir: &Path, path: &Path, contents: &[u8], mode: u32, replace: bool) -> Result<(), DevCertError> {
    let failed = |source: std::io::Error| DevCertError::Write {
        path: path.to_path_buf(),
        source,
    };
    let mut file = tempfile::Builder::new()
        .prefix(".raftkv-cert-")
        .permissions(Permissions::from_mode(mode))
        .tempfile_in(dir)
        .map_err(failed)?;
    file.write_all(contents).map_err(failed)?;
    file.as_file().sync_all().map_err(failed)?;
    let persisted = if replace {
        file.persist(path)
    } else {
        file.persist_noclobber(path)
    };
    match persisted {
        Ok(_) => Ok(()),
        Err(error) if error.error.kind() == std::io::ErrorKind::AlreadyExists => Err(DevCertError::Exists {
            path: path.to_path_buf(),
            dir: dir.to_path_buf(),
        }),
        Err(error) => Err(failed(error.error)),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::tls::names_a_node;
    use rustls::pki_types::pem::PemObject;
    use rustls::pki_types::CertificateDer;

    fn der(pem: &str) -> Vec<u8> {
        CertificateDer::from_pem_slice(pem.as_bytes()).unwrap().to_vec()
    }

    #[test]
    fn only_the_node_certificate_names_a_node() {
        let certificates = DevCertificates::generate(&["127.0.0.1".to_string(), "localhost".to_string()]).unwrap();
        assert!(names_a_node(&der(&certificates.node.cert_pem)));
        assert!(!names_a_node(&der(&certificates.client.cert_pem)));
        assert!(!names_a_node(&der(&certificates.ca_pem)));
        assert!(!names_a_node(b"not a certificate"));
    }

    #[test]
    fn keys_are_written_0600_and_nothing_is_overwritten_unless_asked() {
        let scratch = tempfile::tempdir().unwrap();
        let dir = scratch.path().join("certs");
        let certificates = DevCertificates::generate(&["127.0.0.1".to_string()]).unwrap();
        let written = certificates.write(&dir, false).unwrap();
        assert_eq!(written.len(), 5);
        for name in DEV_CERT_FILES {
            let mode = std::fs::metadata(dir.join(name)).unwrap().permissions().mode() & 0o777;
            let expected = if name.ends_with("-key.pem") {
                KEY_MODE
            } else {
                CERT_MODE
            };
            assert_eq!(mode, expected, "{name}");
        }
        let before = std::fs::read(dir.join(NODE_KEY_FILE)).unwrap();
        let again = DevCertificates::generate(&["127.0.0.1".to_string()]).unwrap();
        let error = again.write(&dir, false).unwrap_err();
        assert!(matches!(error, DevCertError::Exists { .. }), "{error}");
        assert_eq!(
            std::fs::read(dir.join(NODE_KEY_FILE)).unwrap(),
            before,
            "nothing was replaced"
        );
        again.write(&dir, true).unwrap();
        assert_ne!(
            std::fs::read(dir.join(NODE_KEY_FILE)).unwrap(),
            before,
            "--force replaces"
        );
        let mode = std::fs::metadata(dir.join(NODE_KEY_FILE)).unwrap().permissions().mode() & 0o777;
        assert_eq!(mode, KEY_MODE);
    }
}
