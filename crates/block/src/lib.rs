//! Tandem's block-device interface: the [`BlockDevice`] trait that frontends serve to
//! applications (the NBD server in `tandem-nbd`, later iSCSI) and that the data plane implements
//! (a volume's target), with what it needs: the shape a device advertises ([`ExportInfo`]), its
//! allocation map ([`Extent`]) and its errors ([`IoError`]).
//!
//! Nothing here knows a wire protocol: a frontend maps [`IoError`] to its own error values and
//! [`Extent`] to its own status flags, and may advertise less than a device allows (the NBD
//! server caps `max_block` at its largest payload). The trait's methods return futures but need
//! no runtime; with the `file` feature, `FileDevice` is a device over a regular file, which
//! runs its I/O on tokio's blocking threads.
//!
//! ```text
//!  frontend (NBD, iSCSI)  --calls-->  BlockDevice  <--implements--  data plane (TargetHandle),
//!                                                                   FileDevice
//! ```

mod error;
mod export;
#[cfg(feature = "file")]
mod file;

use std::future::Future;

use bytes::Bytes;

pub use error::IoError;
pub use export::{ExportInfo, Extent, InvalidExportInfo, DEFAULT_MAX_BLOCK, MAX_DESCRIPTION_LEN};
#[cfg(feature = "file")]
pub use file::FileDevice;

/// A block device served to applications by a frontend.
///
/// A frontend calls these from many tasks at once: several requests of one connection, and
/// requests of several connections, may be in flight together (NBD lets a client reorder and
/// overlap them). The frontend has already checked every request against [`ExportInfo`]:
/// `offset + len` is within `size`, aligned to `min_block`, reads and writes are at most
/// `max_block` long, and writes never reach a read-only export. A method may still return any
/// [`IoError`]; the client receives the frontend's error value for it.
pub trait BlockDevice: Send + Sync + 'static {
    /// The export's current shape; see [`ExportInfo`].
    fn info(&self) -> ExportInfo;

    /// Reads `len` bytes at `offset`. Returning fewer bytes is reported to the client as an
    /// error at the first missing byte.
    fn read(&self, offset: u64, len: u32) -> impl Future<Output = Result<Bytes, IoError>> + Send;

    /// Writes `data` at `offset`; with `fua`, the data is persistent when this returns.
    fn write(
        &self,
        offset: u64,
        data: Bytes,
        fua: bool,
    ) -> impl Future<Output = Result<(), IoError>> + Send;

    /// Persists every write that completed before this call.
    fn flush(&self) -> impl Future<Output = Result<(), IoError>> + Send;

    /// Discards `len` bytes at `offset` (a hint: afterwards their content is unspecified).
    fn trim(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
    ) -> impl Future<Output = Result<(), IoError>> + Send;

    /// Makes `len` bytes at `offset` read as zeroes; with `no_hole` the range stays allocated.
    fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> impl Future<Output = Result<(), IoError>> + Send;

    /// Describes the allocation of `len` bytes at `offset` as consecutive extents starting at
    /// `offset`. Fewer bytes than `len` may be described (at least one extent is needed for the
    /// client to make progress; with none, the whole range is reported as allocated data).
    fn block_status(
        &self,
        offset: u64,
        len: u32,
    ) -> impl Future<Output = Result<Vec<Extent>, IoError>> + Send;
}
