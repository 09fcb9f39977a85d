//! The cluster's certificate authority and the credentials it issues: one CA per cluster, a
//! certificate per control plane, per node agent (whose identity is its node name) and per user;
//! and the rustls configurations that present them and require the other side's; and
//! [`peers`], the per-peer bounds every listener facing the network keeps; and
//! [`buffered`], the socket every TLS stream should sit on.
//!
//! An identity is carried in the certificate's subject, as Kubernetes does: the common name is
//! the name, the organisation is the role (`tandem:admins`, `tandem:control-planes`,
//! `tandem:nodes`). Keys are ECDSA P-256. Every file this crate writes is mode 0600, written to a
//! temporary name and renamed, so a reader never sees half a key.

use std::fmt;
use std::fs::OpenOptions;
use std::io::Write;
use std::net::IpAddr;
use std::os::unix::fs::{DirBuilderExt, OpenOptionsExt};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, SanType,
};
pub use rustls;
use rustls::server::WebPkiClientVerifier;
use rustls::{ClientConfig, RootCertStore, ServerConfig};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use time::OffsetDateTime;

/// The organisation of an administrator's certificate.
pub const ADMINS: &str = "tandem:admins";
/// The organisation of a control plane's certificate.
pub const CONTROL_PLANES: &str = "tandem:control-planes";
/// The organisation of a node agent's certificate.
pub const NODES: &str = "tandem:nodes";

/// How long a certificate `tandem up` issues is valid by default.
pub const VALIDITY_DEFAULT: Duration = Duration::from_secs(365 * 24 * 3600);
/// How long the cluster's CA is valid.
pub const CA_VALIDITY: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    #[error("{path}: {source}")]
    File {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path}: {reason}")]
    Pem { path: PathBuf, reason: String },
    #[error("could not make a certificate: {0}")]
    Generate(#[from] rcgen::Error),
    #[error("the certificate is not valid X.509: {0}")]
    Parse(String),
    #[error("the certificate names no Tandem identity: {0}")]
    NoIdentity(String),
    #[error("TLS configuration: {0}")]
    Tls(#[from] rustls::Error),
    #[error("TLS client verification: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// Who a certificate says its holder is.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Identity {
    /// A user who may do anything.
    Admin(String),
    /// A control-plane process.
    ControlPlane(String),
    /// The agent of one node.
    Node(String),
}

impl Identity {
    pub fn name(&self) -> &str {
        match self {
            Identity::Admin(name) | Identity::ControlPlane(name) | Identity::Node(name) => name,
        }
    }

    fn organisation(&self) -> &'static str {
        match self {
            Identity::Admin(_) => ADMINS,
            Identity::ControlPlane(_) => CONTROL_PLANES,
            Identity::Node(_) => NODES,
        }
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Identity::Admin(name) => write!(f, "admin {name}"),
            Identity::ControlPlane(name) => write!(f, "control plane {name}"),
            Identity::Node(name) => write!(f, "node {name}"),
        }
    }
}

/// A certificate and its private key, both PEM.
#[derive(Clone)]
pub struct Credential {
    pub certificate: String,
    pub key: String,
}

impl fmt::Debug for Credential {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        // Never the key.
        f.debug_struct("Credential").finish_non_exhaustive()
    }
}

impl Credential {
    /// `STEM.crt` and `STEM.key` in `dir`.
    pub fn paths(dir: &Path, stem: &str) -> (PathBuf, PathBuf) {
        (
            dir.join(format!("{stem}.crt")),
            dir.join(format!("{stem}.key")),
        )
    }

    pub fn load(certificate: &Path, key: &Path) -> Result<Credential, PkiError> {
        let credential = Credential {
            certificate: read(certificate)?,
            key: read(key)?,
        };
        // Both must parse now, not at the first connection.
        let at = |path: &Path| {
            let path = path.to_path_buf();
            move |error: PkiError| PkiError::Pem {
                path,
                reason: error.to_string(),
            }
        };
        credential.chain().map_err(at(certificate))?;
        credential.private_key().map_err(at(key))?;
        Ok(credential)
    }

    pub fn save(&self, certificate: &Path, key: &Path) -> Result<(), PkiError> {
        write_private(certificate, &self.certificate)?;
        write_private(key, &self.key)
    }

    /// Who the certificate names.
    pub fn identity(&self) -> Result<Identity, PkiError> {
        let chain = self.chain()?;
        let first = chain
            .first()
            .ok_or_else(|| PkiError::Parse("no certificate".into()))?;
        identity_of(first)
    }

    fn chain(&self) -> Result<Vec<CertificateDer<'static>>, PkiError> {
        let chain = CertificateDer::pem_slice_iter(self.certificate.as_bytes())
            .collect::<Result<Vec<_>, _>>()
            .map_err(|error| PkiError::Parse(format!("not a PEM certificate: {error}")))?;
        if chain.is_empty() {
            return Err(PkiError::Parse("holds no certificate".into()));
        }
        Ok(chain)
    }

    fn private_key(&self) -> Result<PrivateKeyDer<'static>, PkiError> {
        PrivateKeyDer::from_pem_slice(self.key.as_bytes())
            .map_err(|error| PkiError::Parse(format!("not a PEM private key: {error}")))
    }
}

/// The cluster's certificate authority.
pub struct Authority {
    certificate: String,
    issuer: Issuer<'static, KeyPair>,
}

impl Authority {
    /// A new CA named `name` (the cluster's name).
    pub fn create(name: &str) -> Result<Authority, PkiError> {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, format!("{name} cluster CA"));
        subject.push(DnType::OrganizationName, "tandem");
        params.distinguished_name = subject;
        params.is_ca = IsCa::Ca(BasicConstraints::Constrained(0));
        params.key_usages = vec![
            KeyUsagePurpose::KeyCertSign,
            KeyUsagePurpose::CrlSign,
            KeyUsagePurpose::DigitalSignature,
        ];
        let now = OffsetDateTime::now_utc();
        params.not_before = now - time::Duration::minutes(5);
        params.not_after = now + CA_VALIDITY;
        let key = KeyPair::generate()?;
        let certificate = params.self_signed(&key)?.pem();
        Ok(Authority {
            certificate,
            issuer: Issuer::new(params, key),
        })
    }

    /// The CA kept in `ca.crt` and `ca.key` under `dir`.
    pub fn load(dir: &Path) -> Result<Authority, PkiError> {
        let (certificate_path, key_path) = Credential::paths(dir, "ca");
        let certificate = read(&certificate_path)?;
        let key = KeyPair::from_pem(&read(&key_path)?).map_err(|error| PkiError::Pem {
            path: key_path.clone(),
            reason: error.to_string(),
        })?;
        let issuer =
            Issuer::from_ca_cert_pem(&certificate, key).map_err(|error| PkiError::Pem {
                path: certificate_path,
                reason: error.to_string(),
            })?;
        Ok(Authority {
            certificate,
            issuer,
        })
    }

    /// Writes `ca.crt` and `ca.key` under `dir`.
    pub fn save(&self, dir: &Path) -> Result<(), PkiError> {
        let (certificate, key) = Credential::paths(dir, "ca");
        write_private(&certificate, &self.certificate)?;
        write_private(&key, &self.issuer.key().serialize_pem())
    }

    /// The CA's certificate (PEM): what every party trusts.
    pub fn certificate(&self) -> &str {
        &self.certificate
    }

    /// A certificate for `identity`, valid for `valid_for` from now, for both ends of a TLS
    /// connection; `addresses` and `hosts` are the names a server presenting it is reached by.
    pub fn issue(
        &self,
        identity: &Identity,
        addresses: &[IpAddr],
        hosts: &[String],
        valid_for: Duration,
    ) -> Result<Credential, PkiError> {
        let now = SystemTime::now();
        // A little before now, for clocks slightly behind the issuer's.
        self.issue_between(
            identity,
            addresses,
            hosts,
            now - Duration::from_secs(300),
            now + valid_for,
        )
    }

    /// [`Authority::issue`] for a given validity period (tests make expired certificates).
    pub fn issue_between(
        &self,
        identity: &Identity,
        addresses: &[IpAddr],
        hosts: &[String],
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<Credential, PkiError> {
        let mut params = CertificateParams::default();
        let mut subject = DistinguishedName::new();
        subject.push(DnType::CommonName, identity.name());
        subject.push(DnType::OrganizationName, identity.organisation());
        params.distinguished_name = subject;
        params.is_ca = IsCa::ExplicitNoCa;
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.use_authority_key_identifier_extension = true;
        for address in addresses {
            params.subject_alt_names.push(SanType::IpAddress(*address));
        }
        for host in hosts {
            params
                .subject_alt_names
                .push(SanType::DnsName(host.clone().try_into()?));
        }
        params.not_before = OffsetDateTime::from(not_before);
        params.not_after = OffsetDateTime::from(not_after);
        let key = KeyPair::generate()?;
        let certificate = params.signed_by(&key, &self.issuer)?;
        Ok(Credential {
            certificate: certificate.pem(),
            key: key.serialize_pem(),
        })
    }
}

/// Who a certificate (already verified against the cluster CA) names.
pub fn identity_of(certificate: &CertificateDer<'_>) -> Result<Identity, PkiError> {
    let (_, parsed) = x509_parser::parse_x509_certificate(certificate.as_ref())
        .map_err(|error| PkiError::Parse(error.to_string()))?;
    let subject = parsed.subject();
    let one = |values: Vec<&str>, what: &str| -> Result<String, PkiError> {
        match values.as_slice() {
            [value] => Ok((*value).to_string()),
            _ => Err(PkiError::NoIdentity(format!(
                "{subject}: expected one {what}, found {}",
                values.len()
            ))),
        }
    };
    let names = subject
        .iter_common_name()
        .map(|name| {
            name.as_str()
                .map_err(|error| PkiError::Parse(error.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let organisations = subject
        .iter_organization()
        .map(|name| {
            name.as_str()
                .map_err(|error| PkiError::Parse(error.to_string()))
        })
        .collect::<Result<Vec<_>, _>>()?;
    let name = one(names, "common name")?;
    let organisation = one(organisations, "organisation")?;
    if name.is_empty() {
        return Err(PkiError::NoIdentity(format!("{subject}: an empty name")));
    }
    match organisation.as_str() {
        ADMINS => Ok(Identity::Admin(name)),
        CONTROL_PLANES => Ok(Identity::ControlPlane(name)),
        NODES => Ok(Identity::Node(name)),
        other => Err(PkiError::NoIdentity(format!(
            "{subject}: the organisation {other} is not a Tandem role"
        ))),
    }
}

/// Whether a server asks every client for a certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ClientCertificates {
    /// A connection without one is refused during the handshake.
    Required,
    /// A connection without one is let in, so the server can answer it (401) itself; one that
    /// presents a certificate the CA did not sign is still refused during the handshake.
    Optional,
}

fn roots(ca: &str) -> Result<RootCertStore, PkiError> {
    let mut roots = RootCertStore::empty();
    for certificate in CertificateDer::pem_slice_iter(ca.as_bytes()) {
        let certificate =
            certificate.map_err(|error| PkiError::Parse(format!("the CA certificate: {error}")))?;
        roots.add(certificate)?;
    }
    if roots.is_empty() {
        return Err(PkiError::Parse("the CA file holds no certificate".into()));
    }
    Ok(roots)
}

/// ring's algorithms, AES-128-GCM first: as safe as AES-256 for TLS 1.3 and about a third
/// cheaper per byte, which block storage pays on every byte it moves.
fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    let mut provider = rustls::crypto::ring::default_provider();
    let preferred = [
        rustls::CipherSuite::TLS13_AES_128_GCM_SHA256,
        rustls::CipherSuite::TLS_ECDHE_ECDSA_WITH_AES_128_GCM_SHA256,
    ];
    // A stable sort: the rest keep ring's order.
    (provider.cipher_suites).sort_by_key(|suite| !preferred.contains(&suite.suite()));
    Arc::new(provider)
}

/// What [`buffered`] reads from the socket at a time.
pub const TLS_READ_BUFFER: usize = 256 << 10;

/// The socket to put a TLS stream on: rustls reads its socket at most 4 KiB at a time, so a
/// stream of 4 KiB writes would cost two `read` calls each and one of 1 MiB 256; through this
/// buffer (writes pass straight through) each takes one call per [`TLS_READ_BUFFER`]. Put it
/// on the socket only when TLS starts: bytes it has read ahead belong to the TLS stream.
pub fn buffered<S: tokio::io::AsyncRead>(socket: S) -> tokio::io::BufReader<S> {
    tokio::io::BufReader::with_capacity(TLS_READ_BUFFER, socket)
}

/// A server presenting `credential`, verifying clients against the CA `ca` (PEM).
pub fn server_config(
    ca: &str,
    credential: &Credential,
    clients: ClientCertificates,
) -> Result<ServerConfig, PkiError> {
    let provider = provider();
    let verifier =
        WebPkiClientVerifier::builder_with_provider(Arc::new(roots(ca)?), provider.clone());
    let verifier = match clients {
        ClientCertificates::Required => verifier.build()?,
        ClientCertificates::Optional => verifier.allow_unauthenticated().build()?,
    };
    let chain = credential.chain()?;
    let key = credential.private_key()?;
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_client_cert_verifier(verifier)
        .with_single_cert(chain, key)?;
    // Our order (AES-128-GCM first), not the client's: GnuTLS clients ask for AES-256 first.
    config.ignore_client_order = true;
    Ok(config)
}

/// A client trusting only the CA `ca` (PEM), presenting `credential` if given.
pub fn client_config(ca: &str, credential: Option<&Credential>) -> Result<ClientConfig, PkiError> {
    let builder = ClientConfig::builder_with_provider(provider())
        .with_safe_default_protocol_versions()?
        .with_root_certificates(roots(ca)?);
    Ok(match credential {
        Some(credential) => {
            builder.with_client_auth_cert(credential.chain()?, credential.private_key()?)?
        }
        None => builder.with_no_client_auth(),
    })
}

fn read(path: &Path) -> Result<String, PkiError> {
    std::fs::read_to_string(path).map_err(|source| PkiError::File {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `contents` to `path` with mode 0600 (and any directory it makes 0700), whole or not
/// at all.
pub fn write_private(path: &Path, contents: &str) -> Result<(), PkiError> {
    let failed = |source| PkiError::File {
        path: path.to_path_buf(),
        source,
    };
    if let Some(parent) = path.parent() {
        // Directories made here are the owner's alone too.
        std::fs::DirBuilder::new()
            .recursive(true)
            .mode(0o700)
            .create(parent)
            .map_err(failed)?;
    }
    let temporary = path.with_extension("tmp");
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(0o600)
        .open(&temporary)
        .map_err(failed)?;
    // A file left from before with wider permissions is narrowed too.
    std::fs::set_permissions(
        &temporary,
        std::os::unix::fs::PermissionsExt::from_mode(0o600),
    )
    .map_err(failed)?;
    file.write_all(contents.as_bytes()).map_err(failed)?;
    file.sync_all().map_err(failed)?;
    std::fs::rename(&temporary, path).map_err(failed)
}

pub mod peers;

#[cfg(test)]
mod tests;
