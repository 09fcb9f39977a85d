//! The handshake phase: greeting, client flags, and option haggling (fixed newstyle), with
//! `NBD_OPT_STARTTLS` as the protocol defines it: a server that requires TLS answers every
//! option but `STARTTLS` and `ABORT` with `NBD_REP_ERR_TLS_REQD` until the connection is
//! upgraded (and closes on `NBD_OPT_EXPORT_NAME`), then haggles again inside TLS, forgetting
//! what was negotiated before.

use std::io;

use bytes::BytesMut;
use tandem_block::{BlockDevice, ExportInfo};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

use super::conn::{ConnError, Session, Violation};
use super::exports::{Exports, Lookup};
use crate::proto::{self, ClientOption, Info, InfoRequest, MetaContextRequest, TransmissionParams};

/// How a handshake ended without an error.
pub(super) enum Outcome<D> {
    Transmission(Session<D>),
    /// The client left (soft or hard) before choosing an export.
    Closed(&'static str),
    /// `NBD_OPT_STARTTLS` was acknowledged: the TLS handshake comes next on the same socket,
    /// then [`haggle`] again.
    StartTls,
}

/// Where a connection stands with TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Tls {
    /// The server does not offer TLS.
    Plain,
    /// The server requires TLS, and the client has not started it yet.
    Required,
    /// Inside TLS; `refused` says why this client may not open exports, if it may not.
    Established { refused: Option<String> },
}

/// The last `NBD_OPT_SET_META_CONTEXT`: for which export, and whether `base:allocation` was
/// selected.
struct MetaSelection {
    export: String,
    allocation: bool,
}

struct Negotiation {
    no_zeroes: bool,
    structured: bool,
    meta: Option<MetaSelection>,
    tls: Tls,
}

/// Reads exactly `buf.len()` bytes; `Ok(false)` if the client closed the connection first.
async fn read_full<S: AsyncRead + Unpin>(stream: &mut S, buf: &mut [u8]) -> io::Result<bool> {
    match stream.read_exact(buf).await {
        Ok(_) => Ok(true),
        Err(err) if err.kind() == io::ErrorKind::UnexpectedEof => Ok(false),
        Err(err) => Err(err),
    }
}

/// Sends the greeting and reads the client's flags; `None` if the client left first.
pub(super) async fn greet<S>(stream: &mut S) -> Result<Option<proto::ClientFlags>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut out = BytesMut::with_capacity(256);
    proto::encode_greeting(&mut out);
    stream.write_all(&out).await?;
    let mut flags = [0u8; 4];
    if !read_full(stream, &mut flags).await? {
        return Ok(None);
    }
    Ok(Some(proto::decode_client_flags(&flags)?))
}

/// Haggles over options on `stream` until the client enters the transmission phase, leaves,
/// or (when `tls` is [`Tls::Required`]) starts TLS.
pub(super) async fn haggle<S, D>(
    stream: &mut S,
    exports: &Exports<D>,
    flags: proto::ClientFlags,
    tls: Tls,
) -> Result<Outcome<D>, ConnError>
where
    S: AsyncRead + AsyncWrite + Unpin,
    D: BlockDevice,
{
    let mut out = BytesMut::with_capacity(256);
    let mut state = Negotiation {
        no_zeroes: flags.no_zeroes,
        structured: false,
        meta: None,
        tls,
    };

    let mut header = [0u8; proto::OPTION_HEADER_LEN];
    loop {
        if !read_full(stream, &mut header).await? {
            return Ok(Outcome::Closed("client left during option haggling"));
        }
        // Checks the magic and refuses absurd lengths before anything is allocated.
        let header = proto::decode_option_header(&header)?;
        let mut data = vec![0u8; header.length as usize];
        if !read_full(stream, &mut data).await? {
            return Err(Violation::ClosedInOption.into());
        }
        if !flags.fixed_newstyle && header.option != proto::OPT_EXPORT_NAME {
            return Err(Violation::NotFixedNewstyle(header.option).into());
        }
        out.clear();
        if state.tls == Tls::Required {
            match header.option {
                proto::OPT_STARTTLS if data.is_empty() => {
                    proto::encode_option_reply(&mut out, header.option, proto::REP_ACK, &[]);
                    stream.write_all(&out).await?;
                    return Ok(Outcome::StartTls);
                }
                proto::OPT_EXPORT_NAME => {
                    return Ok(Outcome::Closed(
                        "NBD_OPT_EXPORT_NAME without TLS, which this server requires",
                    ));
                }
                proto::OPT_ABORT => {
                    proto::encode_option_reply(&mut out, header.option, proto::REP_ACK, &[]);
                    stream.write_all(&out).await?;
                    return Ok(Outcome::Closed("client aborted the handshake"));
                }
                option => {
                    let (reply, message): (u32, &[u8]) = if option == proto::OPT_STARTTLS {
                        (proto::REP_ERR_INVALID, b"NBD_OPT_STARTTLS takes no data")
                    } else {
                        (
                            proto::REP_ERR_TLS_REQD,
                            b"this server requires TLS: send NBD_OPT_STARTTLS first",
                        )
                    };
                    proto::encode_option_reply(&mut out, option, reply, message);
                    stream.write_all(&out).await?;
                    continue;
                }
            }
        }
        let option = match proto::decode_option(header.option, &data) {
            Ok(option) => option,
            // NBD_OPT_EXPORT_NAME cannot be answered with an error.
            Err(err) if header.option == proto::OPT_EXPORT_NAME => {
                return Err(Violation::from(err).into());
            }
            Err(err) => {
                tracing::debug!(%err, "invalid option");
                let reason = err.reason.as_bytes();
                proto::encode_option_reply(&mut out, header.option, proto::REP_ERR_INVALID, reason);
                stream.write_all(&out).await?;
                continue;
            }
        };
        if let Some(outcome) = handle_option(option, &mut state, exports, &mut out)? {
            stream.write_all(&out).await?;
            return Ok(outcome);
        }
        stream.write_all(&out).await?;
    }
}

/// Answers one option into `out`; returns the outcome if the handshake ends with it.
fn handle_option<D: BlockDevice>(
    option: ClientOption,
    state: &mut Negotiation,
    exports: &Exports<D>,
    out: &mut BytesMut,
) -> Result<Option<Outcome<D>>, ConnError> {
    let code = option.code();
    let error = |out: &mut BytesMut, reply: u32, message: &str| {
        proto::encode_option_reply(out, code, reply, message.as_bytes());
    };
    if let (
        Tls::Established {
            refused: Some(refused),
        },
        ClientOption::ExportName(_)
        | ClientOption::Go(_)
        | ClientOption::Info(_)
        | ClientOption::List,
    ) = (&state.tls, &option)
    {
        tracing::warn!(%refused, "refused a client");
        if matches!(option, ClientOption::ExportName(_)) {
            return Ok(Some(Outcome::Closed(
                "a client whose certificate is not allowed",
            )));
        }
        error(out, proto::REP_ERR_POLICY, refused);
        return Ok(None);
    }
    match option {
        ClientOption::ExportName(name) => {
            let Some(Lookup {
                device,
                closed,
                aborted,
            }) = exports.lookup(&name)
            else {
                return Err(Violation::UnknownExport(name).into());
            };
            let info = device.info();
            info.validate().map_err(Violation::from)?;
            let params = transmission_params(&info, state, &name);
            proto::encode_export_name_reply(
                out,
                params.size,
                params.transmission_flags(),
                state.no_zeroes,
            );
            return Ok(Some(Outcome::Transmission(Session {
                name,
                device,
                params,
                closed,
                aborted,
            })));
        }
        ClientOption::Abort => {
            proto::encode_option_reply(out, code, proto::REP_ACK, &[]);
            return Ok(Some(Outcome::Closed("client aborted the handshake")));
        }
        ClientOption::List => {
            for (name, device) in exports.list() {
                proto::encode_rep_server(out, &name, &device.info().description);
            }
            proto::encode_option_reply(out, code, proto::REP_ACK, &[]);
        }
        ClientOption::StartTls => match state.tls {
            Tls::Plain => error(out, proto::REP_ERR_POLICY, "this server does not offer TLS"),
            _ => error(out, proto::REP_ERR_INVALID, "TLS is already in use"),
        },
        ClientOption::Info(req) => {
            info_or_go(req, false, state, exports, out)?;
        }
        ClientOption::Go(req) => return info_or_go(req, true, state, exports, out),
        ClientOption::StructuredReply => {
            state.structured = true;
            proto::encode_option_reply(out, code, proto::REP_ACK, &[]);
        }
        ClientOption::ListMetaContext(req) => {
            if !state.structured {
                error(
                    out,
                    proto::REP_ERR_INVALID,
                    "negotiate structured replies first",
                );
                return Ok(None);
            }
            let Some(Lookup { device, .. }) = exports.lookup(&req.export) else {
                error(out, proto::REP_ERR_UNKNOWN, "unknown export");
                return Ok(None);
            };
            // No query lists every context; "base:" is the wildcard of the base namespace.
            let listed = req.queries.is_empty()
                || req
                    .queries
                    .iter()
                    .any(|q| q == "base:" || q == proto::BASE_ALLOCATION);
            if listed && device.info().can_block_status {
                proto::encode_rep_meta_context(out, code, 0, proto::BASE_ALLOCATION);
            }
            proto::encode_option_reply(out, code, proto::REP_ACK, &[]);
        }
        ClientOption::SetMetaContext(req) => {
            // The spec: this replaces the previous selection even when it fails.
            state.meta = None;
            if !state.structured {
                error(
                    out,
                    proto::REP_ERR_INVALID,
                    "negotiate structured replies first",
                );
                return Ok(None);
            }
            set_meta_context(req, state, exports, out);
        }
        ClientOption::Unknown(_) => error(out, proto::REP_ERR_UNSUP, "option not supported"),
    }
    Ok(None)
}

fn set_meta_context<D: BlockDevice>(
    req: MetaContextRequest,
    state: &mut Negotiation,
    exports: &Exports<D>,
    out: &mut BytesMut,
) {
    let code = proto::OPT_SET_META_CONTEXT;
    let Some(Lookup { device, .. }) = exports.lookup(&req.export) else {
        proto::encode_option_reply(out, code, proto::REP_ERR_UNKNOWN, b"unknown export");
        return;
    };
    // "base:" alone must be ignored here; unknown namespaces and leaves are ignored.
    let allocation =
        device.info().can_block_status && req.queries.iter().any(|q| q == proto::BASE_ALLOCATION);
    if allocation {
        let id = proto::BASE_ALLOCATION_ID;
        proto::encode_rep_meta_context(out, code, id, proto::BASE_ALLOCATION);
    }
    proto::encode_option_reply(out, code, proto::REP_ACK, &[]);
    state.meta = Some(MetaSelection {
        export: req.export,
        allocation,
    });
}

fn info_or_go<D: BlockDevice>(
    req: InfoRequest,
    go: bool,
    state: &Negotiation,
    exports: &Exports<D>,
    out: &mut BytesMut,
) -> Result<Option<Outcome<D>>, ConnError> {
    let code = if go { proto::OPT_GO } else { proto::OPT_INFO };
    let Some(Lookup {
        device,
        closed,
        aborted,
    }) = exports.lookup(&req.name)
    else {
        proto::encode_option_reply(out, code, proto::REP_ERR_UNKNOWN, b"unknown export");
        return Ok(None);
    };
    let info = device.info();
    if let Err(err) = info.validate() {
        tracing::warn!(export = %req.name, %err, "refusing a misconfigured export");
        proto::encode_option_reply(
            out,
            code,
            proto::REP_ERR_UNKNOWN,
            b"export is misconfigured",
        );
        return Ok(None);
    }
    let params = transmission_params(&info, state, &req.name);
    let export = Info::Export {
        size: params.size,
        flags: params.transmission_flags(),
    };
    proto::encode_rep_info(out, code, &export);
    if req.requests.contains(&proto::INFO_NAME) {
        proto::encode_rep_info(out, code, &Info::Name(&req.name));
    }
    if req.requests.contains(&proto::INFO_DESCRIPTION) {
        proto::encode_rep_info(out, code, &Info::Description(&info.description));
    }
    // Always sent: the server enforces these limits whether or not the client asked.
    let sizes = Info::BlockSize {
        min: params.min_block,
        preferred: params.preferred_block,
        max: params.max_block,
    };
    proto::encode_rep_info(out, code, &sizes);
    proto::encode_option_reply(out, code, proto::REP_ACK, &[]);
    if !go {
        return Ok(None);
    }
    let session = Session {
        name: req.name,
        device,
        params,
        closed,
        aborted,
    };
    Ok(Some(Outcome::Transmission(session)))
}

/// The parameters of a transmission phase on export `name` with this negotiation state.
fn transmission_params(info: &ExportInfo, state: &Negotiation, name: &str) -> TransmissionParams {
    let selected = state
        .meta
        .as_ref()
        .is_some_and(|m| m.allocation && m.export == name && state.structured);
    let max_block = proto::effective_max_block(info);
    TransmissionParams {
        size: info.size,
        read_only: info.read_only,
        can_flush: info.can_flush,
        can_fua: info.can_fua,
        can_trim: info.can_trim,
        can_write_zeroes: info.can_write_zeroes,
        can_multi_conn: info.can_multi_conn,
        min_block: info.min_block,
        preferred_block: info.preferred_block.min(proto::MAX_PAYLOAD),
        max_block,
        structured: state.structured,
        meta_context: selected.then_some(proto::BASE_ALLOCATION_ID),
    }
}
