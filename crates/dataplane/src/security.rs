//! How replica links are protected: mutual TLS with the cluster's CA ([`LinkSecurity::Tls`]),
//! or plain TCP ([`LinkSecurity::Plain`], for tests and the explicit insecure loopback mode).
//!
//! Under TLS both ends present a certificate of the cluster CA. The replica host lets in only
//! node identities (targets run in node agents); a target checks that the replica host's
//! certificate names the node the replica is expected on (its DNS subject-alt-name, by the
//! usual server name check, and its identity).

use std::fmt;
use std::io;
use std::sync::Arc;

use tandem_pki::rustls::pki_types::CertificateDer;
use tandem_pki::rustls::{ClientConfig, ServerConfig};
use tandem_pki::{ClientCertificates, Credential, Identity, PkiError};

/// How a replica link is protected; the same value serves a node's replica host (`server`) and
/// its targets (`client`).
#[derive(Clone, Default)]
pub enum LinkSecurity {
    /// Plain TCP: anyone who reaches the port may open a session. Only for tests and the
    /// explicit insecure mode.
    #[default]
    Plain,
    /// Mutual TLS with the cluster CA: `server` must require client certificates (see
    /// [`LinkSecurity::mutual_tls`]); a peer presenting none is refused anyway.
    Tls {
        server: Arc<ServerConfig>,
        client: Arc<ClientConfig>,
    },
}

impl LinkSecurity {
    /// Mutual TLS for a node presenting `credential` (a node certificate whose DNS
    /// subject-alt-names include the node's name), trusting only the CA `ca` (PEM).
    pub fn mutual_tls(ca: &str, credential: &Credential) -> Result<LinkSecurity, PkiError> {
        let server = tandem_pki::server_config(ca, credential, ClientCertificates::Required)?;
        let client = tandem_pki::client_config(ca, Some(credential))?;
        Ok(LinkSecurity::Tls {
            server: Arc::new(server),
            client: Arc::new(client),
        })
    }

    pub fn is_tls(&self) -> bool {
        matches!(self, LinkSecurity::Tls { .. })
    }
}

impl fmt::Debug for LinkSecurity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            LinkSecurity::Plain => f.write_str("Plain"),
            LinkSecurity::Tls { .. } => f.write_str("Tls"),
        }
    }
}

/// Why the other end of a TLS link is not let in.
#[derive(Debug, thiserror::Error)]
pub enum PeerError {
    #[error("the peer presented no certificate")]
    NoCertificate,
    #[error("the peer's certificate names no identity: {0}")]
    NoIdentity(#[from] PkiError),
    #[error("{found} may not open replica sessions (only nodes may)")]
    NotANode { found: Identity },
}

impl From<PeerError> for io::Error {
    fn from(error: PeerError) -> io::Error {
        io::Error::new(io::ErrorKind::PermissionDenied, error)
    }
}

/// Who the first certificate of a verified chain names.
pub(crate) fn peer_identity(
    certificates: Option<&[CertificateDer<'_>]>,
) -> Result<Identity, PeerError> {
    match certificates {
        Some([first, ..]) => Ok(tandem_pki::identity_of(first)?),
        _ => Err(PeerError::NoCertificate),
    }
}

/// Both ends accept only nodes of the cluster: a replica host any node (targets run in node
/// agents); a target the node whose name the server name check matched (the certificate's DNS
/// subject-alt-name), so an admin's or the control plane's certificate cannot serve replicas.
pub(crate) fn accept_node(
    certificates: Option<&[CertificateDer<'_>]>,
) -> Result<Identity, PeerError> {
    match peer_identity(certificates)? {
        node @ Identity::Node(_) => Ok(node),
        found => Err(PeerError::NotANode { found }),
    }
}
