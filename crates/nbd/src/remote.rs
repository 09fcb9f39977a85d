//! [`RemoteDevice`]: an export of another NBD server used as a [`BlockDevice`], so that this
//! crate's [`crate::Server`] can serve it as one of its own exports: the server does the
//! handshake with its clients (structured replies, metadata contexts, block status) and relays
//! each request over one pipelined [`Client`] connection (many requests in flight, matched by
//! cookie). Used by the node agent to forward a volume whose target runs on another node.
//!
//! The connection is never re-established: once it is lost (or the server answers
//! `ESHUTDOWN`), [`RemoteDevice::lost`] completes, so the owner aborts the export
//! ([`crate::Server::abort_export_if`]: its connections close at once) and connects a new
//! device. Requests in flight then are held back, not answered, for up to
//! [`RemoteDevice::with_lost_hold`] (5 s by default): the abort drops them unanswered, so a
//! client that reconnects (qemu's NBD driver with `reconnect-delay`) sends them again rather
//! than passing an error to its application. Past the hold they fail with
//! [`IoError::Shutdown`] (which tells the client to disconnect).

use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use bytes::Bytes;
use tandem_block::{BlockDevice, ExportInfo, Extent, IoError};
use tokio::sync::Notify;

use crate::client::{Client, ClientError, ClientOptions};
use crate::proto;

/// An export of another NBD server, relayed. See the module documentation.
pub struct RemoteDevice {
    client: Client,
    info: ExportInfo,
    /// The server answered `ESHUTDOWN`: it is going away.
    shut_down: AtomicBool,
    shut_down_signal: Notify,
    /// How long a request that fails because the device is lost waits before it answers.
    lost_hold: Duration,
}

/// The default of [`RemoteDevice::with_lost_hold`].
pub const DEFAULT_LOST_HOLD: Duration = Duration::from_secs(5);

impl std::fmt::Debug for RemoteDevice {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RemoteDevice")
            .field("client", &self.client)
            .finish()
    }
}

impl RemoteDevice {
    /// Connects to `uri` (structured replies and `base:allocation` are asked for whatever
    /// `options` says) and takes the export's shape from the handshake.
    pub async fn connect(uri: &str, options: &ClientOptions) -> Result<RemoteDevice, ClientError> {
        let options = ClientOptions {
            structured_replies: true,
            ..options.clone()
        };
        let client = Client::connect_with(uri, &options).await?;
        let info = export_info(&client);
        Ok(RemoteDevice {
            client,
            info,
            shut_down: AtomicBool::new(false),
            shut_down_signal: Notify::new(),
            lost_hold: DEFAULT_LOST_HOLD,
        })
    }

    /// How long a request failing because the device is lost is held back before it is
    /// answered with [`IoError::Shutdown`] (see the module documentation).
    pub fn with_lost_hold(mut self, hold: Duration) -> RemoteDevice {
        self.lost_hold = hold;
        self
    }

    /// Where the device is.
    pub fn uri(&self) -> String {
        self.client.uri().to_string()
    }

    /// The connection is unusable or the server is shutting down: every request fails.
    pub fn is_lost(&self) -> bool {
        self.client.is_lost() || self.shut_down.load(Ordering::SeqCst)
    }

    /// Why it is lost, for the log.
    pub fn lost_reason(&self) -> String {
        self.client.lost_reason().unwrap_or_else(|| {
            if self.shut_down.load(Ordering::SeqCst) {
                "the server is shutting down (ESHUTDOWN)".to_string()
            } else {
                "connected".to_string()
            }
        })
    }

    /// Completes once the device is lost (see [`RemoteDevice::is_lost`]).
    pub async fn lost(&self) {
        let shut_down = self.shut_down_signal.notified();
        tokio::pin!(shut_down);
        shut_down.as_mut().enable();
        if self.shut_down.load(Ordering::SeqCst) {
            return;
        }
        tokio::select! {
            () = self.client.lost() => {}
            () = shut_down => {}
        }
    }

    /// The device error for a failed request; a lost connection or a server going away marks
    /// the device lost, and the request is held back (see the module documentation).
    async fn failed(&self, error: ClientError) -> IoError {
        let io = match &error {
            ClientError::Server { errno, .. } => proto::io_error(*errno),
            ClientError::InvalidRequest { .. } => IoError::Invalid,
            _ => IoError::Shutdown,
        };
        if io == IoError::Shutdown {
            if !self.shut_down.swap(true, Ordering::SeqCst) {
                tracing::warn!(uri = %self.uri(), %error, "forwarded export lost");
            }
            self.shut_down_signal.notify_waiters();
            tokio::time::sleep(self.lost_hold).await;
        } else {
            tracing::debug!(uri = %self.uri(), %error, "forwarded request failed");
        }
        io
    }

    async fn check(&self) -> Result<(), IoError> {
        if self.is_lost() {
            tokio::time::sleep(self.lost_hold).await;
            return Err(IoError::Shutdown);
        }
        Ok(())
    }
}

/// The shape the server advertised, as a device's.
fn export_info(client: &Client) -> ExportInfo {
    let mut info = ExportInfo::new(client.size());
    info.description = format!("forwarded to {}", client.uri());
    info.read_only = client.is_read_only();
    if let Some(sizes) = client.block_sizes() {
        info.min_block = sizes.minimum;
        info.preferred_block = sizes.preferred;
        info.max_block = sizes.maximum;
    } else {
        info.max_block = proto::MAX_PAYLOAD;
    }
    info.can_flush = client.can_flush();
    info.can_fua = client.can_fua();
    info.can_trim = client.can_trim();
    info.can_write_zeroes = client.can_write_zeroes();
    info.can_multi_conn = client.can_multi_conn();
    info.can_block_status = client.can_block_status();
    info
}

impl BlockDevice for RemoteDevice {
    fn info(&self) -> ExportInfo {
        self.info.clone()
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        self.check().await?;
        match self.client.read(offset, len).await {
            Ok(done) => Ok(done),
            Err(error) => Err(self.failed(error).await),
        }
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        self.check().await?;
        match self.client.write(offset, &data, fua).await {
            Ok(done) => Ok(done),
            Err(error) => Err(self.failed(error).await),
        }
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.check().await?;
        match self.client.flush().await {
            Ok(done) => Ok(done),
            Err(error) => Err(self.failed(error).await),
        }
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        self.check().await?;
        if let Err(error) = self.client.trim(offset, len).await {
            return Err(self.failed(error).await);
        }
        if fua && self.client.can_flush() {
            self.flush().await?;
        }
        Ok(())
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError> {
        self.check().await?;
        match self.client.write_zeroes(offset, len, fua, no_hole).await {
            Ok(done) => Ok(done),
            Err(error) => Err(self.failed(error).await),
        }
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        self.check().await?;
        let descriptors = match self.client.block_status(offset, len).await {
            Ok(descriptors) => descriptors,
            Err(error) => return Err(self.failed(error).await),
        };
        Ok(descriptors
            .into_iter()
            .map(|(length, flags)| Extent {
                length,
                hole: flags & proto::STATE_HOLE != 0,
                zero: flags & proto::STATE_ZERO != 0,
            })
            .collect())
    }
}
