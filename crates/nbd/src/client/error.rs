//! What the client reports: [`ClientError`] for a connection or a request, with the handshake's
//! reasons ([`HandshakeError`]) and the server's protocol errors ([`ProtocolError`]).

use std::fmt;
use std::io;
use std::time::Duration;

use crate::proto::{self, DecodeError};

/// One request, as errors name it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Op {
    Read {
        offset: u64,
        length: u32,
    },
    Write {
        offset: u64,
        length: u32,
        fua: bool,
    },
    Flush,
    Trim {
        offset: u64,
        length: u32,
    },
    WriteZeroes {
        offset: u64,
        length: u32,
        fua: bool,
        no_hole: bool,
    },
    BlockStatus {
        offset: u64,
        length: u32,
    },
    Disconnect,
}

impl fmt::Display for Op {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match *self {
            Op::Read { offset, length } => write!(f, "read of {length} bytes at offset {offset}"),
            Op::Write {
                offset,
                length,
                fua,
            } => write!(
                f,
                "write of {length} bytes at offset {offset}{}",
                if fua { " (FUA)" } else { "" }
            ),
            Op::Flush => f.write_str("flush"),
            Op::Trim { offset, length } => write!(f, "trim of {length} bytes at offset {offset}"),
            Op::WriteZeroes {
                offset,
                length,
                fua,
                no_hole,
            } => write!(
                f,
                "write zeroes of {length} bytes at offset {offset}{}{}",
                if fua { " (FUA)" } else { "" },
                if no_hole { " (no hole)" } else { "" }
            ),
            Op::BlockStatus { offset, length } => {
                write!(f, "block status of {length} bytes at offset {offset}")
            }
            Op::Disconnect => f.write_str("disconnect"),
        }
    }
}

/// "EIO (5)", or "unknown error value 42".
fn describe_errno(errno: u32) -> String {
    match proto::errno_name(errno) {
        Some(name) => format!("{name} ({errno})"),
        None => format!("unknown error value {errno}"),
    }
}

/// Why a connection or a request failed; each variant names what failed.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The URI is not `nbd://host[:port]/export`.
    #[error("invalid NBD URI {uri:?}: {reason}")]
    InvalidUri { uri: String, reason: String },
    /// The TCP connection could not be made.
    #[error("cannot connect to the NBD server at {address}: {source}")]
    Connect {
        address: String,
        #[source]
        source: io::Error,
    },
    /// The server is not a fixed-newstyle NBD server, refused the export, broke the handshake
    /// protocol, or took too long.
    #[error("NBD handshake with {address} for export {export:?} failed: {reason}")]
    Handshake {
        address: String,
        export: String,
        reason: HandshakeError,
    },
    /// The server answered a request with an error value.
    #[error("NBD {op} failed: the server answered {}", describe_errno(*.errno))]
    Server { op: Op, errno: u32 },
    /// The server sent something this client cannot follow; the connection is closed.
    #[error("NBD protocol error from {address}: {reason}")]
    Protocol {
        address: String,
        reason: ProtocolError,
    },
    /// The connection ended (or had ended) before the request was answered.
    #[error("NBD {op} failed: the connection to {address} is lost: {reason}")]
    Disconnected {
        op: Op,
        address: String,
        reason: String,
    },
    /// The request cannot be sent on this export (beyond its end, too long, not advertised).
    #[error("NBD {op} not sent: {reason}")]
    InvalidRequest { op: Op, reason: &'static str },
}

impl ClientError {
    /// The server's error value, for [`ClientError::Server`].
    pub fn errno(&self) -> Option<u32> {
        match self {
            ClientError::Server { errno, .. } => Some(*errno),
            _ => None,
        }
    }

    /// True when the connection is unusable (lost, or closed after a protocol error): a new
    /// [`super::Client`] is needed to go on.
    pub fn is_connection_lost(&self) -> bool {
        matches!(
            self,
            ClientError::Disconnected { .. } | ClientError::Protocol { .. }
        )
    }

    /// True when this connection cannot go on: it is lost, or the server answered `ESHUTDOWN`
    /// (it is going away; the protocol says the client should disconnect). A client that
    /// reconnects (perhaps to another address) and sends the request again loses nothing.
    pub fn needs_reconnect(&self) -> bool {
        self.is_connection_lost() || self.errno() == Some(proto::ESHUTDOWN)
    }
}

/// Why the handshake failed (the reason of [`ClientError::Handshake`]).
#[derive(Debug, thiserror::Error)]
pub enum HandshakeError {
    /// Reading or sending failed; `what` says which step.
    #[error("{what}: {error}")]
    Io {
        what: &'static str,
        error: io::Error,
    },
    /// The server sent something that is not a fixed-newstyle handshake.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// The server answered another option than the one asked.
    #[error("a reply to option {0} while waiting for NBD_OPT_GO")]
    UnexpectedReply(u32),
    /// The server acknowledged `NBD_OPT_GO` without saying the export's size and flags.
    #[error("the server accepted NBD_OPT_GO without NBD_INFO_EXPORT")]
    NoExportInfo,
    /// `NBD_REP_ERR_UNKNOWN`: the server has no such export.
    #[error("the server has no export named {export:?} ({})", refusal(*.reply_type, .message))]
    UnknownExport {
        export: String,
        reply_type: u32,
        message: String,
    },
    /// Any other error reply to `NBD_OPT_GO`.
    #[error("the server refused the export ({})", refusal(*.reply_type, .message))]
    Refused { reply_type: u32, message: String },
    /// `NBD_REP_ERR_TLS_REQD`: the server takes only TLS clients (`nbds://` with credentials).
    #[error(
        "the server requires TLS: connect with nbds:// and the cluster's credentials ({message})"
    )]
    TlsRequired { message: String },
    /// The server did not accept `NBD_OPT_STARTTLS`.
    #[error("the server does not offer TLS ({})", refusal(*.reply_type, .message))]
    NoTls { reply_type: u32, message: String },
    /// The TLS handshake failed (a certificate the client does not trust, none it was asked
    /// for, or another name than the one connected to).
    #[error("TLS handshake: {0}")]
    Tls(io::Error),
    /// The client's TLS credentials could not be loaded.
    #[error("TLS credentials: {0}")]
    Credentials(String),
    /// A server without `NBD_OPT_GO` closed the connection after `NBD_OPT_EXPORT_NAME`, which is
    /// how it says there is no such export.
    #[error(
        "the server does not know NBD_OPT_GO and closed the connection after \
         NBD_OPT_EXPORT_NAME (is there an export named {export:?}?): {error}"
    )]
    ExportNameClosed { export: String, error: io::Error },
    /// The connection and the handshake took longer than the client's handshake timeout.
    #[error("no answer within {0:?} (connection and handshake)")]
    TimedOut(Duration),
}

/// "NBD_REP_ERR_UNKNOWN: message", or the name alone without a message.
fn refusal(reply_type: u32, message: &str) -> String {
    let separator = if message.is_empty() { "" } else { ": " };
    format!("{}{separator}{message}", proto::rep_error_name(reply_type))
}

/// Why the client cannot follow the server's replies (the reason of
/// [`ClientError::Protocol`]); the connection is closed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum ProtocolError {
    /// A reply header that is not a simple reply.
    #[error(transparent)]
    Decode(#[from] DecodeError),
    /// A reply to no request in flight.
    #[error("a reply for cookie {0}, which is not in flight")]
    UnknownCookie(u64),
    /// A reply chunk whose type does not fit its request (block status for a read...).
    #[error("a reply chunk for cookie {cookie} ({op}) of a type that does not fit it")]
    UnexpectedChunk { cookie: u64, op: Op },
    /// A read's data or hole chunk outside the range it asked for.
    #[error("a reply chunk for cookie {cookie} at offset {offset}, outside its request")]
    ChunkOutOfRange { cookie: u64, offset: u64 },
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_name_what_failed() {
        let error = ClientError::Server {
            op: Op::Write {
                offset: 4096,
                length: 512,
                fua: true,
            },
            errno: proto::ENOSPC,
        };
        assert_eq!(
            error.to_string(),
            "NBD write of 512 bytes at offset 4096 (FUA) failed: the server answered ENOSPC (28)"
        );
        assert_eq!(error.errno(), Some(proto::ENOSPC));
        assert!(!error.is_connection_lost());
        let error = ClientError::Server {
            op: Op::Flush,
            errno: 99,
        };
        assert!(error.to_string().ends_with("unknown error value 99"));
        assert!(!error.needs_reconnect());
        let shutting_down = ClientError::Server {
            op: Op::Flush,
            errno: proto::ESHUTDOWN,
        };
        assert!(shutting_down.needs_reconnect() && !shutting_down.is_connection_lost());
    }

    #[test]
    fn handshake_errors_read_as_before() {
        let unknown = HandshakeError::UnknownExport {
            export: "vol".into(),
            reply_type: proto::REP_ERR_UNKNOWN,
            message: "unknown export".into(),
        };
        assert_eq!(
            unknown.to_string(),
            "the server has no export named \"vol\" (NBD_REP_ERR_UNKNOWN: unknown export)"
        );
        let refused = HandshakeError::Refused {
            reply_type: proto::REP_ERR_POLICY,
            message: String::new(),
        };
        assert_eq!(
            refused.to_string(),
            "the server refused the export (NBD_REP_ERR_POLICY)"
        );
        let io = HandshakeError::Io {
            what: "reading the greeting",
            error: io::Error::from(io::ErrorKind::UnexpectedEof),
        };
        assert!(io.to_string().starts_with("reading the greeting: "));
        let error = ClientError::Handshake {
            address: "h:1".into(),
            export: "vol".into(),
            reason: HandshakeError::Decode(DecodeError::NotFixedNewstyle),
        };
        assert_eq!(
            error.to_string(),
            "NBD handshake with h:1 for export \"vol\" failed: the server does not speak fixed \
             newstyle"
        );
        assert_eq!(
            HandshakeError::TimedOut(Duration::from_secs(3)).to_string(),
            "no answer within 3s (connection and handshake)"
        );
        let error = ClientError::Protocol {
            address: "h:1".into(),
            reason: ProtocolError::UnknownCookie(7),
        };
        assert_eq!(
            error.to_string(),
            "NBD protocol error from h:1: a reply for cookie 7, which is not in flight"
        );
        assert!(error.is_connection_lost());
    }
}
