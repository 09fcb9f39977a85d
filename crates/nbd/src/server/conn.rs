//! What a connection's phases share: the socket ([`Stream`]: plain, or inside TLS), the
//! [`Session`] the handshake hands to the transmission phase, why a connection ends badly
//! ([`ConnError`]), and waiting for a stop signal.

use std::io;
use std::sync::Arc;

use tandem_block::InvalidExportInfo;
use tokio::io::{AsyncRead, AsyncWrite, BufReader};
use tokio::net::TcpStream;
use tokio::sync::watch;
use tokio_rustls::server::TlsStream;

use crate::proto::{DecodeError, OptionError, TransmissionParams};

/// The socket's reading half (plain TCP or inside TLS).
pub(super) type ReadHalf = Box<dyn AsyncRead + Send + Unpin>;
/// The socket's writing half.
pub(super) type WriteHalf = Box<dyn AsyncWrite + Send + Unpin>;

/// A connection's socket once the handshake is over.
pub(super) enum Stream {
    Plain(TcpStream),
    /// On [`tandem_pki::buffered`].
    Tls(Box<TlsStream<BufReader<TcpStream>>>),
}

impl Stream {
    /// The two halves, each used by one task of the transmission phase.
    pub(super) fn split(self) -> (ReadHalf, WriteHalf) {
        match self {
            // Plain TCP splits without a lock between the halves.
            Stream::Plain(stream) => {
                let (read, write) = stream.into_split();
                (Box::new(read), Box::new(write))
            }
            Stream::Tls(stream) => {
                let (read, write) = tokio::io::split(*stream);
                (Box::new(read), Box::new(write))
            }
        }
    }
}

/// A connection that reached the transmission phase.
pub(super) struct Session<D> {
    pub name: String,
    pub device: Arc<D>,
    pub params: TransmissionParams,
    /// Set when the export is removed.
    pub closed: watch::Receiver<bool>,
    /// Set when the export is aborted: close at once, answering nothing more.
    pub aborted: watch::Receiver<bool>,
}

/// Waits until `rx` holds `true`, or its sender is gone (which also means stop).
pub(super) async fn wait_set(rx: &mut watch::Receiver<bool>) {
    let _ = rx.wait_for(|set| *set).await;
}

/// Why a connection ended badly.
#[derive(Debug, thiserror::Error)]
pub(super) enum ConnError {
    #[error("I/O error: {0}")]
    Io(#[from] io::Error),
    #[error("protocol violation: {0}")]
    Protocol(#[from] Violation),
    #[error("timed out {0}")]
    Timeout(&'static str),
    #[error("a request task panicked")]
    TaskPanicked,
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
}

/// How the connection broke the protocol, or could not follow it (the connection is closed).
#[derive(Debug, thiserror::Error)]
pub(super) enum Violation {
    /// A frame that cannot be decoded (bad magic, bad flags, an option too long).
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// An invalid `NBD_OPT_EXPORT_NAME`, which cannot be answered with an error.
    #[error(transparent)]
    Option(#[from] OptionError),
    /// The export chosen with `NBD_OPT_EXPORT_NAME` is misconfigured.
    #[error(transparent)]
    Export(#[from] InvalidExportInfo),
    #[error("connection closed inside an option")]
    ClosedInOption,
    #[error("option {0} from a client that did not negotiate fixed newstyle")]
    NotFixedNewstyle(u32),
    #[error("NBD_OPT_EXPORT_NAME: unknown export {0:?}")]
    UnknownExport(String),
    #[error("connection closed inside a request header")]
    ClosedInHeader,
    /// A write announcing more than the largest payload: it cannot be skipped.
    #[error("write of {0} bytes exceeds the maximum payload")]
    PayloadTooLarge(u32),
    #[error("request limiter closed")]
    RequestLimiterClosed,
    #[error("byte limiter closed")]
    ByteLimiterClosed,
}

impl From<DecodeError> for ConnError {
    fn from(error: DecodeError) -> Self {
        ConnError::Protocol(error.into())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn violations_read_as_the_log_says() {
        let text = |v: Violation| ConnError::from(v).to_string();
        assert_eq!(
            text(Violation::UnknownExport("vol".into())),
            "protocol violation: NBD_OPT_EXPORT_NAME: unknown export \"vol\""
        );
        assert_eq!(
            text(Violation::NotFixedNewstyle(7)),
            "protocol violation: option 7 from a client that did not negotiate fixed newstyle"
        );
        assert_eq!(
            text(Violation::PayloadTooLarge(1 << 26)),
            "protocol violation: write of 67108864 bytes exceeds the maximum payload"
        );
        assert_eq!(
            ConnError::from(DecodeError::BadMagic(0x42)).to_string(),
            "protocol violation: bad magic 0x42"
        );
        assert_eq!(
            text(InvalidExportInfo("size must be a multiple of min_block").into()),
            "protocol violation: invalid export info: size must be a multiple of min_block"
        );
    }
}
