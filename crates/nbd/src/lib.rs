//! Tandem's NBD server (and a small client): serves block devices to applications over the
//! Network Block Device protocol (the NetworkBlockDevice `doc/proto.md`), fixed newstyle
//! handshake only. [`client::Client`] is a small pipelined client (simple or structured
//! replies), used by `tandem demo` as the application; [`RemoteDevice`] is an export of another
//! server relayed over it, which a [`Server`] can serve as its own (the agent's forwarder).
//!
//! A [`Server`] hosts any number of exports of one [`BlockDevice`] type (the interface of
//! `tandem-block`, which this crate serves and does not define), added and removed at run time
//! ([`Server::add_export`], [`Server::remove_export`]), and serves them on a TCP listener
//! ([`Server::serve`]).
//!
//! # What is supported
//!
//! - Handshake: `NBD_OPT_EXPORT_NAME`, `ABORT`, `LIST`, `INFO`, `GO` (with `NBD_INFO_EXPORT`,
//!   `NAME`, `DESCRIPTION`, `BLOCK_SIZE`), `STRUCTURED_REPLY`, `LIST_META_CONTEXT` and
//!   `SET_META_CONTEXT` (`base:allocation`), `STARTTLS` (with [`ServerConfig::tls`], TLS is
//!   required: X.509 with client certificates, whom they name allowed by [`TlsRequired`]);
//!   everything else is `NBD_REP_ERR_UNSUP`. The client speaks `nbds://` too.
//! - Transmission: `READ`, `WRITE` (FUA), `DISC`, `FLUSH`, `TRIM`, `WRITE_ZEROES` (`NO_HOLE`),
//!   `BLOCK_STATUS` (`REQ_ONE`), simple or structured replies. Requests of a connection run
//!   concurrently and may be answered out of order, bounded by [`ServerConfig`].
//!
//! # Flush, FUA and multi-conn
//!
//! The server keeps no cache: every request goes to the device, and a request is answered only
//! after the device finished it. So a flush is answered after [`BlockDevice::flush`] returned,
//! which covers every write answered before it (on any connection, if the device says it can
//! serve several connections with `can_multi_conn`); a FUA write is answered after the device
//! persisted it. `NBD_FLAG_CAN_MULTI_CONN` is advertised exactly when the device's
//! [`ExportInfo::can_multi_conn`] is set.
//!
//! # Layout
//!
//! Modules import one way, bottom up: [`proto`] is the pure codec of both sides (constants,
//! frames, the protocol's values for `tandem-block`'s types, then the handshake's and the
//! transmission's encoders and decoders); the server (`config`, `conn`, `exports`, `handshake`,
//! `transmission`, then [`Server`]) and the [`client`] (`uri`, `error`, `handshake`, then
//! [`Client`]) each stand on `proto` alone, never on each other; [`remote`] stands on the
//! client and `tandem-block` (it is a device, which the server can serve).
//!
//! # Hostile clients
//!
//! Decoding is in [`proto`], pure functions over byte slices. A bad magic, a truncated frame,
//! an oversized option or write, a stalled handshake or payload, or a client that stops reading
//! its replies ends that connection only; invalid requests get the error the spec asks for.
//!
//! [`BlockDevice`]: tandem_block::BlockDevice
//! [`BlockDevice::flush`]: tandem_block::BlockDevice::flush
//! [`ExportInfo::can_multi_conn`]: tandem_block::ExportInfo::can_multi_conn

pub mod client;
pub mod proto;
pub mod remote;
mod server;

pub use client::{tls_from_directory, Client, ClientError, ClientOptions, NbdUri};
pub use remote::{RemoteDevice, DEFAULT_LOST_HOLD};
pub use server::{Server, ServerConfig, ServerError, TlsRequired};
