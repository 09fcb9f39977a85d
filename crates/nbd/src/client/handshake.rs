//! The client's side of the handshake on a connected socket: the greeting, the client's flags,
//! optionally structured replies and the `base:allocation` metadata context, then `NBD_OPT_GO`
//! (or `NBD_OPT_EXPORT_NAME` when the server does not know `GO`).

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::error::HandshakeError;
use crate::proto::{
    self, BlockSizes, ClientOption, InfoItem, InfoRequest, MetaContextRequest, OptionReplyHeader,
};

/// What the handshake settled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Negotiated {
    pub size: u64,
    pub flags: u16,
    pub block_sizes: Option<BlockSizes>,
    /// Structured replies were negotiated.
    pub structured: bool,
    /// The id the server gave `base:allocation`, if it was negotiated.
    pub base_allocation: Option<u32>,
}

/// The greeting and the client's flags; whether the server omits the zeroes after
/// `NBD_OPT_EXPORT_NAME`'s reply.
pub(super) async fn greet<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<bool, HandshakeError> {
    let io = |what: &'static str| move |error| HandshakeError::Io { what, error };
    let mut greeting = [0u8; proto::GREETING_LEN];
    stream
        .read_exact(&mut greeting)
        .await
        .map_err(io("reading the greeting"))?;
    let server_flags = proto::decode_greeting(&greeting)?;
    let no_zeroes = server_flags & proto::FLAG_NO_ZEROES != 0;
    let client_flags = proto::FLAG_C_FIXED_NEWSTYLE
        | if no_zeroes {
            proto::FLAG_C_NO_ZEROES
        } else {
            0
        };

    let mut out = BytesMut::new();
    out.put_u32(client_flags);
    stream
        .write_all(&out)
        .await
        .map_err(io("sending the client flags"))?;
    Ok(no_zeroes)
}

/// `NBD_OPT_STARTTLS`, answered with an acknowledgement: the caller then runs the TLS handshake
/// on the same socket.
pub(super) async fn start_tls<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
) -> Result<(), HandshakeError> {
    let mut out = BytesMut::new();
    ClientOption::StartTls.encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| HandshakeError::Io {
            what: "sending NBD_OPT_STARTTLS",
            error,
        })?;
    let (header, data) = option_reply(
        stream,
        proto::OPT_STARTTLS,
        "reading the reply to NBD_OPT_STARTTLS",
    )
    .await?;
    match header.reply_type {
        proto::REP_ACK => Ok(()),
        reply_type => Err(HandshakeError::NoTls {
            reply_type,
            message: String::from_utf8_lossy(&data).into_owned(),
        }),
    }
}

/// Then (inside TLS if it was started) `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME` if the server
/// does not know `GO`). Errors are the reason, for [`super::ClientError::Handshake`].
pub(super) async fn negotiate<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    export: &str,
    structured: bool,
    no_zeroes: bool,
) -> Result<Negotiated, HandshakeError> {
    let io = |what: &'static str| move |error| HandshakeError::Io { what, error };
    let (structured, base_allocation) = if structured {
        structured_replies(stream, export).await?
    } else {
        (false, None)
    };

    let mut out = BytesMut::new();
    ClientOption::Go(InfoRequest {
        name: export.to_string(),
        requests: vec![proto::INFO_BLOCK_SIZE],
    })
    .encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(io("sending NBD_OPT_GO"))?;

    let mut export_info = None;
    let mut block_sizes = None;
    loop {
        let (header, data) =
            option_reply(stream, proto::OPT_GO, "reading the reply to NBD_OPT_GO").await?;
        match header.reply_type {
            proto::REP_INFO => match proto::decode_info(&data)? {
                InfoItem::Export { size, flags } => export_info = Some((size, flags)),
                InfoItem::BlockSize(sizes) => block_sizes = Some(sizes),
                InfoItem::Other => {}
            },
            proto::REP_ACK => {
                let (size, flags) = export_info.ok_or(HandshakeError::NoExportInfo)?;
                return Ok(Negotiated {
                    size,
                    flags,
                    block_sizes,
                    structured,
                    base_allocation,
                });
            }
            proto::REP_ERR_UNSUP => {
                let (size, flags) = export_name(stream, export, no_zeroes).await?;
                return Ok(Negotiated {
                    size,
                    flags,
                    block_sizes: None,
                    structured,
                    base_allocation,
                });
            }
            reply_type if reply_type & proto::REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&data).into_owned();
                return Err(if reply_type == proto::REP_ERR_TLS_REQD {
                    HandshakeError::TlsRequired { message }
                } else if reply_type == proto::REP_ERR_UNKNOWN {
                    HandshakeError::UnknownExport {
                        export: export.to_string(),
                        reply_type,
                        message,
                    }
                } else {
                    HandshakeError::Refused {
                        reply_type,
                        message,
                    }
                });
            }
            // Reply types this client does not know are skipped, as the spec allows.
            _ => {}
        }
    }
}

/// The old way in: `NBD_OPT_EXPORT_NAME`, answered with size and flags, or a closed connection
/// when there is no such export.
async fn export_name<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    export: &str,
    no_zeroes: bool,
) -> Result<(u64, u16), HandshakeError> {
    let mut out = BytesMut::new();
    ClientOption::ExportName(export.to_string()).encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(|error| HandshakeError::Io {
            what: "sending NBD_OPT_EXPORT_NAME",
            error,
        })?;
    let mut reply = vec![0u8; if no_zeroes { 10 } else { 10 + 124 }];
    stream
        .read_exact(&mut reply)
        .await
        .map_err(|error| HandshakeError::ExportNameClosed {
            export: export.to_string(),
            error,
        })?;
    Ok(proto::decode_export_name_reply(&reply)?)
}

/// One option reply to `option` (a reply to another option is an error).
async fn option_reply<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    option: u32,
    what: &'static str,
) -> Result<(OptionReplyHeader, Vec<u8>), HandshakeError> {
    let io = |error| HandshakeError::Io { what, error };
    let mut header = [0u8; proto::OPTION_REPLY_HEADER_LEN];
    stream.read_exact(&mut header).await.map_err(io)?;
    let header = proto::decode_option_reply_header(&header)?;
    let mut data = vec![0u8; header.length as usize];
    stream.read_exact(&mut data).await.map_err(io)?;
    if header.option != option {
        return Err(HandshakeError::UnexpectedReply(header.option));
    }
    Ok((header, data))
}

/// `NBD_OPT_STRUCTURED_REPLY`, then `NBD_OPT_SET_META_CONTEXT` for `base:allocation`: whether
/// structured replies were agreed, and the context's id if it was. A server that refuses
/// either is served without it (the client then sends no block status requests).
async fn structured_replies<S: AsyncRead + AsyncWrite + Unpin>(
    stream: &mut S,
    export: &str,
) -> Result<(bool, Option<u32>), HandshakeError> {
    let io = |what: &'static str| move |error| HandshakeError::Io { what, error };
    let mut out = BytesMut::new();
    ClientOption::StructuredReply.encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(io("sending NBD_OPT_STRUCTURED_REPLY"))?;
    let what = "reading the reply to NBD_OPT_STRUCTURED_REPLY";
    let (header, _) = option_reply(stream, proto::OPT_STRUCTURED_REPLY, what).await?;
    if header.reply_type != proto::REP_ACK {
        return Ok((false, None));
    }
    let mut out = BytesMut::new();
    ClientOption::SetMetaContext(MetaContextRequest {
        export: export.to_string(),
        queries: vec![proto::BASE_ALLOCATION.to_string()],
    })
    .encode(&mut out);
    stream
        .write_all(&out)
        .await
        .map_err(io("sending NBD_OPT_SET_META_CONTEXT"))?;
    let mut id = None;
    loop {
        let what = "reading the reply to NBD_OPT_SET_META_CONTEXT";
        let (header, data) = option_reply(stream, proto::OPT_SET_META_CONTEXT, what).await?;
        match header.reply_type {
            proto::REP_META_CONTEXT
                if data.len() >= 4 && &data[4..] == proto::BASE_ALLOCATION.as_bytes() =>
            {
                id = Some(u32::from_be_bytes([data[0], data[1], data[2], data[3]]));
            }
            proto::REP_ACK => return Ok((true, id)),
            // An error (unknown export, say) is seen again, with its message, at NBD_OPT_GO.
            reply_type if reply_type & proto::REP_FLAG_ERROR != 0 => return Ok((true, None)),
            _ => {}
        }
    }
}
