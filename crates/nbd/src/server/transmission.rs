//! The transmission phase of one connection: a reader that decodes requests and starts one task
//! per request, and a writer that sends replies in the order they complete.
//!
//! ```text
//!  socket --> reader --(spawn)--> request task --> device
//!                                      |
//!  socket <-- writer <--(channel)------+  reply (+ the permits it holds)
//! ```
//!
//! Two semaphores bound a connection: one permit per request in flight, and one per byte of
//! write payload or read reply held in memory. Permits travel with the reply and are released
//! once the writer has handed it to the socket, so a client that does not read its replies stops
//! being read from (and is disconnected after the reply timeout).

use std::sync::Arc;
use std::time::Duration;

use bytes::{Buf, Bytes, BytesMut};
use tandem_block::{BlockDevice, IoError};
use tokio::io::{AsyncReadExt, AsyncWriteExt, BufWriter};
use tokio::sync::{mpsc, watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinError, JoinSet};

use super::config::ServerConfig;
use super::conn::{wait_set, ConnError, ReadHalf, Session, Violation, WriteHalf};
use crate::proto::{self, Command, Rejection, RequestHeader};

/// The most descriptors in one block status reply.
const MAX_DESCRIPTORS: usize = 1024;
/// Replies written between two flushes of the socket buffer, at most.
const BATCH_BYTES: usize = 1 << 20;
/// Read buffer growth step.
const READ_CHUNK: usize = 64 * 1024;

const CLIENT_CLOSED: &str = "client closed the connection";

/// How a connection ended normally.
pub(super) struct Summary {
    pub reason: &'static str,
    pub requests: u64,
}

/// One reply on its way to the socket: `head`, then `data`, then `tail` (any may be empty).
struct Outgoing {
    head: BytesMut,
    data: Bytes,
    tail: BytesMut,
    _permits: Permits,
}

struct Permits {
    _request: OwnedSemaphorePermit,
    _bytes: Option<OwnedSemaphorePermit>,
}

/// How replies are framed on this connection.
#[derive(Clone, Copy)]
struct ReplyCtx {
    structured: bool,
    meta_context: u32,
}

struct Reply {
    head: BytesMut,
    data: Bytes,
    tail: BytesMut,
}

impl Reply {
    fn head(head: BytesMut) -> Self {
        Reply {
            head,
            data: Bytes::new(),
            tail: BytesMut::new(),
        }
    }

    fn ok(handle: u64) -> Self {
        // A simple reply is allowed for any successful command without payload, structured
        // replies or not.
        let mut head = BytesMut::with_capacity(proto::SIMPLE_REPLY_LEN);
        proto::encode_simple_reply(&mut head, 0, handle);
        Reply::head(head)
    }

    fn error(handle: u64, ctx: ReplyCtx, error: IoError, message: &str) -> Self {
        let mut head = BytesMut::with_capacity(64);
        if ctx.structured {
            let done = proto::REPLY_FLAG_DONE;
            proto::encode_error_chunk(
                &mut head,
                done,
                handle,
                proto::error_value(error),
                message,
                None,
            );
        } else {
            proto::encode_simple_reply(&mut head, proto::error_value(error), handle);
        }
        Reply::head(head)
    }
}

/// Reads requests from a buffered socket. Filling the buffer is cancel safe, so the reader can
/// wait for the socket and for other events at once without losing bytes.
struct Reader {
    rd: ReadHalf,
    buf: BytesMut,
}

impl Reader {
    async fn fill(&mut self) -> std::io::Result<usize> {
        if self.buf.capacity() - self.buf.len() < READ_CHUNK / 4 {
            self.buf.reserve(READ_CHUNK);
        }
        self.rd.read_buf(&mut self.buf).await
    }

    fn header(&mut self) -> Option<Result<RequestHeader, proto::DecodeError>> {
        if self.buf.len() < proto::REQUEST_HEADER_LEN {
            return None;
        }
        let header = proto::decode_request_header(&self.buf[..proto::REQUEST_HEADER_LEN]);
        self.buf.advance(proto::REQUEST_HEADER_LEN);
        Some(header)
    }

    async fn payload(&mut self, len: usize) -> std::io::Result<Bytes> {
        while self.buf.len() < len {
            self.buf.reserve(len - self.buf.len());
            if self.rd.read_buf(&mut self.buf).await? == 0 {
                return Err(std::io::ErrorKind::UnexpectedEof.into());
            }
        }
        Ok(self.buf.split_to(len).freeze())
    }
}

/// Waits for the server's stop signal or the export's removal.
async fn stopped(server: &mut watch::Receiver<bool>, export: &mut watch::Receiver<bool>) {
    tokio::select! {
        _ = wait_set(server) => {}
        _ = wait_set(export) => {}
    }
}

fn panicked(result: Result<(), JoinError>) -> bool {
    matches!(result, Err(err) if err.is_panic())
}

/// Runs the transmission phase until the client disconnects, the connection fails, or the
/// server or export stops.
pub(super) async fn run<D: BlockDevice>(
    (rd, wr): (ReadHalf, WriteHalf),
    session: Session<D>,
    stop: watch::Receiver<bool>,
    config: &ServerConfig,
) -> Result<Summary, ConnError> {
    let (tx, rx) = mpsc::unbounded_channel();
    let mut aborted = session.aborted.clone();
    let writer = tokio::spawn(write_loop(wr, rx, config.reply_timeout));
    let reading = read_loop(
        Reader {
            rd,
            buf: BytesMut::new(),
        },
        session,
        tx,
        stop,
        config,
    );
    // An aborted export closes the connection at once: the requests in flight are dropped
    // unanswered (a reconnecting client sends them again), the socket closes with the writer.
    let read_result = tokio::select! {
        result = reading => result,
        _ = wait_set(&mut aborted) => {
            writer.abort();
            return Ok(Summary {
                reason: "export aborted: requests in flight left unanswered",
                requests: 0,
            });
        }
    };
    let write_result = match writer.await {
        Ok(result) => result,
        Err(_) => Err(ConnError::TaskPanicked),
    };
    let summary = read_result?;
    match write_result {
        Ok(()) => Ok(summary),
        // The client left without waiting for the replies to its last requests.
        Err(ConnError::Io(err))
            if summary.reason == CLIENT_CLOSED
                && matches!(
                    err.kind(),
                    std::io::ErrorKind::BrokenPipe | std::io::ErrorKind::ConnectionReset
                ) =>
        {
            Ok(Summary {
                reason: "client closed the connection before its last replies",
                ..summary
            })
        }
        Err(err) => Err(err),
    }
}

async fn read_loop<D: BlockDevice>(
    mut reader: Reader,
    session: Session<D>,
    tx: mpsc::UnboundedSender<Outgoing>,
    mut stop: watch::Receiver<bool>,
    config: &ServerConfig,
) -> Result<Summary, ConnError> {
    let Session {
        device,
        params,
        closed: mut export_closed,
        ..
    } = session;
    let ctx = ReplyCtx {
        structured: params.structured,
        meta_context: params.meta_context.unwrap_or(proto::BASE_ALLOCATION_ID),
    };
    let budget = config.max_in_flight_bytes.max(proto::MAX_PAYLOAD as usize);
    let budget = u32::try_from(budget).unwrap_or(u32::MAX);
    let requests = Arc::new(Semaphore::new(config.max_in_flight_requests.max(1)));
    let bytes = Arc::new(Semaphore::new(budget as usize));
    let mut tasks: JoinSet<()> = JoinSet::new();
    let mut count = 0u64;

    let outcome: Result<&'static str, ConnError> = loop {
        let mut panic = false;
        while let Some(result) = tasks.try_join_next() {
            panic |= panicked(result);
        }
        if panic {
            break Err(ConnError::TaskPanicked);
        }
        let header = match reader.header() {
            Some(Ok(header)) => header,
            Some(Err(err)) => break Err(err.into()),
            None => {
                tokio::select! {
                    biased;
                    _ = stopped(&mut stop, &mut export_closed) => break Ok("server or export stopped"),
                    _ = tx.closed() => break Ok("reply writer stopped"),
                    Some(result) = tasks.join_next(), if !tasks.is_empty() => {
                        if panicked(result) {
                            break Err(ConnError::TaskPanicked);
                        }
                        continue;
                    }
                    filled = reader.fill() => match filled {
                        Ok(0) if reader.buf.is_empty() => break Ok(CLIENT_CLOSED),
                        Ok(0) => break Err(Violation::ClosedInHeader.into()),
                        Ok(_) => continue,
                        Err(err) => break Err(err.into()),
                    },
                }
            }
        };
        count += 1;

        let request_permit = tokio::select! {
            permit = Arc::clone(&requests).acquire_owned() => match permit {
                Ok(permit) => permit,
                Err(_) => break Err(Violation::RequestLimiterClosed.into()),
            },
            _ = stopped(&mut stop, &mut export_closed) => break Ok("server or export stopped"),
            _ = tx.closed() => break Ok("reply writer stopped"),
        };

        // A write's payload follows its header whatever the request's fate, and must be read to
        // stay in step with the client; one too large to read ends the connection.
        let payload_len = match header.payload_len() {
            Ok(len) => len,
            Err(rejection) => {
                send_rejection(&tx, header.handle, ctx, rejection, request_permit, None);
                break Err(Violation::PayloadTooLarge(header.length).into());
            }
        };
        let mut byte_permit = None;
        let mut payload = Bytes::new();
        if payload_len > 0 {
            let permit = match Arc::clone(&bytes)
                .acquire_many_owned(payload_len.min(budget))
                .await
            {
                Ok(permit) => permit,
                Err(_) => break Err(Violation::ByteLimiterClosed.into()),
            };
            byte_permit = Some(permit);
            let read =
                tokio::time::timeout(config.payload_timeout, reader.payload(payload_len as usize));
            payload = match read.await {
                Ok(Ok(payload)) => payload,
                Ok(Err(err)) => break Err(err.into()),
                Err(_) => break Err(ConnError::Timeout("waiting for a write payload")),
            };
        }

        let command = match proto::validate_request(&header, &params) {
            Ok(Command::Disconnect) => break Ok("client disconnected"),
            Ok(command) => command,
            Err(rejection) => {
                tracing::debug!(handle = header.handle, kind = header.kind, %rejection, "request refused");
                send_rejection(
                    &tx,
                    header.handle,
                    ctx,
                    rejection,
                    request_permit,
                    byte_permit,
                );
                continue;
            }
        };
        if let Command::Read { length, .. } = command {
            if length > 0 {
                match Arc::clone(&bytes)
                    .acquire_many_owned(length.min(budget))
                    .await
                {
                    Ok(permit) => byte_permit = Some(permit),
                    Err(_) => break Err(Violation::ByteLimiterClosed.into()),
                }
            }
        }
        let permits = Permits {
            _request: request_permit,
            _bytes: byte_permit,
        };
        let device = Arc::clone(&device);
        let tx = tx.clone();
        let handle = header.handle;
        tasks.spawn(async move {
            let reply = execute(&*device, command, handle, payload, ctx).await;
            let outgoing = Outgoing {
                head: reply.head,
                data: reply.data,
                tail: reply.tail,
                _permits: permits,
            };
            // Fails only if the writer is gone, and then the connection is closing anyway.
            let _ = tx.send(outgoing);
        });
    };

    // Let the requests in flight finish and their replies go out (the spec: on NBD_CMD_DISC
    // the server MUST handle all outstanding requests; on shutdown it SHOULD).
    drop(tx);
    let drain = async {
        while let Some(result) = tasks.join_next().await {
            if panicked(result) {
                tracing::warn!("a request task panicked");
            }
        }
    };
    if tokio::time::timeout(config.drain_timeout, drain)
        .await
        .is_err()
    {
        tracing::warn!(
            in_flight = tasks.len(),
            "in-flight requests did not finish, abandoning them"
        );
        tasks.abort_all();
        while tasks.join_next().await.is_some() {}
    }
    outcome.map(|reason| Summary {
        reason,
        requests: count,
    })
}

fn send_rejection(
    tx: &mpsc::UnboundedSender<Outgoing>,
    handle: u64,
    ctx: ReplyCtx,
    rejection: Rejection,
    request: OwnedSemaphorePermit,
    bytes: Option<OwnedSemaphorePermit>,
) {
    let reply = Reply::error(handle, ctx, rejection.error, rejection.message);
    let permits = Permits {
        _request: request,
        _bytes: bytes,
    };
    let _ = tx.send(Outgoing {
        head: reply.head,
        data: reply.data,
        tail: reply.tail,
        _permits: permits,
    });
}

/// True if every byte is zero.
fn all_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |acc, b| acc | b) == 0)
}

async fn execute<D: BlockDevice>(
    device: &D,
    command: Command,
    handle: u64,
    payload: Bytes,
    ctx: ReplyCtx,
) -> Reply {
    let result = match command {
        Command::Read { offset, length } => return read(device, offset, length, handle, ctx).await,
        Command::Write {
            offset,
            length,
            fua,
        } => {
            assert_eq!(payload.len(), length as usize, "write payload length");
            if length == 0 {
                Ok(Reply::ok(handle))
            } else {
                device
                    .write(offset, payload, fua)
                    .await
                    .map(|()| Reply::ok(handle))
            }
        }
        Command::Flush => device.flush().await.map(|()| Reply::ok(handle)),
        Command::Trim {
            offset,
            length,
            fua,
        } => {
            if length == 0 {
                Ok(Reply::ok(handle))
            } else {
                device
                    .trim(offset, length, fua)
                    .await
                    .map(|()| Reply::ok(handle))
            }
        }
        Command::WriteZeroes {
            offset,
            length,
            fua,
            no_hole,
        } => {
            if length == 0 {
                Ok(Reply::ok(handle))
            } else {
                let done = device.write_zeroes(offset, length, fua, no_hole).await;
                done.map(|()| Reply::ok(handle))
            }
        }
        Command::BlockStatus {
            offset,
            length,
            req_one,
        } => device.block_status(offset, length).await.map(|extents| {
            let descriptors = proto::block_status_descriptors(
                extents.iter().map(|e| (e.length, proto::extent_status(e))),
                length,
                req_one,
                MAX_DESCRIPTORS,
            );
            let mut head =
                BytesMut::with_capacity(proto::CHUNK_HEADER_LEN + 4 + 8 * descriptors.len());
            let done = proto::REPLY_FLAG_DONE;
            proto::encode_block_status(&mut head, done, handle, ctx.meta_context, &descriptors);
            Reply::head(head)
        }),
        // The reader handles disconnects itself.
        Command::Disconnect => Ok(Reply::ok(handle)),
    };
    result.unwrap_or_else(|err| {
        tracing::warn!(handle, ?command, %err, "device request failed");
        Reply::error(handle, ctx, err, &err.to_string())
    })
}

async fn read<D: BlockDevice>(
    device: &D,
    offset: u64,
    length: u32,
    handle: u64,
    ctx: ReplyCtx,
) -> Reply {
    let done = proto::REPLY_FLAG_DONE;
    if length == 0 {
        let mut head = BytesMut::with_capacity(proto::CHUNK_HEADER_LEN);
        if ctx.structured {
            proto::encode_none_chunk(&mut head, handle);
        } else {
            proto::encode_simple_reply(&mut head, 0, handle);
        }
        return Reply::head(head);
    }
    let data = match device.read(offset, length).await {
        Ok(data) => data,
        Err(err) => {
            tracing::warn!(handle, offset, length, %err, "device read failed");
            return Reply::error(handle, ctx, err, &err.to_string());
        }
    };
    let mut head = BytesMut::with_capacity(proto::CHUNK_HEADER_LEN + 12);
    if data.len() == length as usize {
        if !ctx.structured {
            proto::encode_simple_reply(&mut head, 0, handle);
        } else if all_zero(&data) {
            proto::encode_offset_hole(&mut head, done, handle, offset, length);
            return Reply::head(head);
        } else {
            proto::encode_offset_data_header(&mut head, done, handle, offset, length);
        }
        return Reply {
            head,
            data,
            tail: BytesMut::new(),
        };
    }
    tracing::warn!(
        handle,
        offset,
        length,
        got = data.len(),
        "device returned a read of the wrong length"
    );
    if !ctx.structured || data.is_empty() || data.len() > length as usize {
        return Reply::error(handle, ctx, IoError::Io, "short read");
    }
    // Structured replies can say which part was read: the data, then an error at the first
    // missing byte.
    let got = data.len() as u32;
    proto::encode_offset_data_header(&mut head, 0, handle, offset, got);
    let mut tail = BytesMut::with_capacity(64);
    let at = Some(offset + u64::from(got));
    proto::encode_error_chunk(
        &mut tail,
        done,
        handle,
        proto::error_value(IoError::Io),
        "short read",
        at,
    );
    Reply { head, data, tail }
}

async fn write_loop(
    wr: WriteHalf,
    mut rx: mpsc::UnboundedReceiver<Outgoing>,
    reply_timeout: Duration,
) -> Result<(), ConnError> {
    let mut out = BufWriter::with_capacity(256 * 1024, wr);
    while let Some(first) = rx.recv().await {
        let batch = async {
            let mut written = write_one(&mut out, first).await?;
            while written < BATCH_BYTES {
                match rx.try_recv() {
                    Ok(next) => written += write_one(&mut out, next).await?,
                    Err(_) => break,
                }
            }
            out.flush().await
        };
        match tokio::time::timeout(reply_timeout, batch).await {
            Ok(Ok(())) => {}
            Ok(Err(err)) => return Err(err.into()),
            Err(_) => return Err(ConnError::Timeout("writing replies (client not reading)")),
        }
    }
    // Every sender is gone: the reader finished and all requests were answered.
    let _ = out.shutdown().await;
    Ok(())
}

async fn write_one(out: &mut BufWriter<WriteHalf>, reply: Outgoing) -> std::io::Result<usize> {
    out.write_all(&reply.head).await?;
    if !reply.data.is_empty() {
        out.write_all(&reply.data).await?;
    }
    if !reply.tail.is_empty() {
        out.write_all(&reply.tail).await?;
    }
    Ok(reply.head.len() + reply.data.len() + reply.tail.len())
}
