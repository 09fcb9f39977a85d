//! The client's side of the handshake on a connected socket: the greeting, the client's flags,
//! then `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME` when the server does not know `GO`).

use bytes::{BufMut, BytesMut};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

use super::error::HandshakeError;
use crate::proto::{self, BlockSizes, ClientOption, InfoItem, InfoRequest};

/// What the handshake settled.
#[derive(Debug, Clone, Copy)]
pub(super) struct Negotiated {
    pub size: u64,
    pub flags: u16,
    pub block_sizes: Option<BlockSizes>,
}

/// Greeting, flags, then `NBD_OPT_GO` (or `NBD_OPT_EXPORT_NAME` if the server does not know
/// `GO`). Errors are the reason, for [`super::ClientError::Handshake`].
pub(super) async fn run(
    stream: &mut TcpStream,
    export: &str,
) -> Result<Negotiated, HandshakeError> {
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
        let mut header = [0u8; proto::OPTION_REPLY_HEADER_LEN];
        stream
            .read_exact(&mut header)
            .await
            .map_err(io("reading the reply to NBD_OPT_GO"))?;
        let header = proto::decode_option_reply_header(&header)?;
        let mut data = vec![0u8; header.length as usize];
        stream
            .read_exact(&mut data)
            .await
            .map_err(io("reading the reply to NBD_OPT_GO"))?;
        if header.option != proto::OPT_GO {
            return Err(HandshakeError::UnexpectedReply(header.option));
        }
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
                });
            }
            proto::REP_ERR_UNSUP => return export_name(stream, export, no_zeroes).await,
            reply_type if reply_type & proto::REP_FLAG_ERROR != 0 => {
                let message = String::from_utf8_lossy(&data).into_owned();
                return Err(if reply_type == proto::REP_ERR_UNKNOWN {
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
async fn export_name(
    stream: &mut TcpStream,
    export: &str,
    no_zeroes: bool,
) -> Result<Negotiated, HandshakeError> {
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
    let (size, flags) = proto::decode_export_name_reply(&reply)?;
    Ok(Negotiated {
        size,
        flags,
        block_sizes: None,
    })
}
