//! Who is calling: a request that came over TLS ([`crate::tls::TlsListener`]) must carry a client
//! certificate of the cluster's CA, else it is answered 401 before any handler sees it; one that
//! came over a listener without TLS (plain HTTP on loopback, a Unix socket) is trusted, as
//! whoever can reach those is the cluster's own user. Handlers find the [`Caller`] in the
//! request's extensions.

use axum::extract::{ConnectInfo, Request};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use tandem_pki::Identity;

use crate::error::{ApiError, ErrorKind};
use crate::tls::Peer;

/// The caller of a request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Caller {
    /// Came over a listener without TLS, which only the cluster's own user reaches.
    Trusted,
    /// Named by a client certificate of the cluster's CA.
    Identified(Identity),
}

/// Puts the [`Caller`] in the request's extensions, or answers 401.
pub async fn layer(mut request: Request, next: Next) -> Response {
    let caller = match request.extensions().get::<ConnectInfo<Peer>>() {
        None => Caller::Trusted,
        Some(ConnectInfo(Peer {
            identity: Some(identity),
            ..
        })) => Caller::Identified(identity.clone()),
        Some(ConnectInfo(Peer { address, .. })) => {
            return ApiError::new(
                ErrorKind::Unauthorized,
                format!(
                    "Unauthorized: {address} showed no client certificate; this API takes \
                     requests only from holders of a certificate of the cluster's CA (for \
                     kubectl: tandem kubeconfig)"
                ),
            )
            .into_response();
        }
    };
    request.extensions_mut().insert(caller);
    next.run(request).await
}
