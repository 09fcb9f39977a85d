//! How replica links are protected: mutual TLS with the cluster's CA ([`LinkSecurity::Tls`]),
//! or plain TCP ([`LinkSecurity::Plain`], for tests and the explicit insecure loopback mode).
//!
//! Under TLS both ends present a certificate of the cluster CA, and both let in only node
//! identities: the replica host any node (targets run in node agents); a target only the node
//! the replica is expected on, whose name the host's certificate must carry as a DNS
//! subject-alt-name (rustls' server name check).

use std::fmt;
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

    /// True for mutual TLS.
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

/// Who the first certificate of a verified chain names.
fn peer_identity(certificates: Option<&[CertificateDer<'_>]>) -> Result<Identity, PeerError> {
    match certificates {
        Some([first, ..]) => Ok(tandem_pki::identity_of(first)?),
        _ => Err(PeerError::NoCertificate),
    }
}

/// Both ends accept only nodes of the cluster: a replica host any node; a target the node whose
/// name the server name check matched, so that an admin's or the control plane's certificate
/// can neither open sessions nor serve replicas.
pub(crate) fn accept_node(
    certificates: Option<&[CertificateDer<'_>]>,
) -> Result<Identity, PeerError> {
    match peer_identity(certificates)? {
        node @ Identity::Node(_) => Ok(node),
        found => Err(PeerError::NotANode { found }),
    }
}
