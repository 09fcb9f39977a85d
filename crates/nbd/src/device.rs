//! The interface between the NBD server and whatever stores an export's bytes.

use std::future::Future;
use std::io;

use bytes::Bytes;

use crate::proto;

/// What an export looks like to clients: its size, its block size constraints and which
/// operations it supports. The server asks for it at every handshake, so a device whose size or
/// capabilities change is seen with its new shape by the next connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// A human-readable description, sent with `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`.
    pub description: String,
    /// Size of the export in bytes.
    pub size: u64,
    /// Writes, trims and write-zeroes are refused with `EPERM`.
    pub read_only: bool,
    /// Smallest addressable unit: offsets and lengths must be multiples of it. A power of two,
    /// at most 64 KiB.
    pub min_block: u32,
    /// The size at which I/O is efficient. A power of two, at least `max(min_block, 512)`.
    pub preferred_block: u32,
    /// The largest read, write or write-zeroes length the device accepts. A multiple of
    /// `min_block`, at least `min(preferred_block, size)`. The server never advertises more than
    /// [`proto::MAX_PAYLOAD`] (32 MiB), whatever this says.
    pub max_block: u32,
    /// `flush` persists every write that has completed (on any connection).
    pub can_flush: bool,
    /// Writes with `fua` set are persisted before they complete.
    pub can_fua: bool,
    /// `trim` is supported (it may do nothing: trim is a hint).
    pub can_trim: bool,
    /// `write_zeroes` is supported.
    pub can_write_zeroes: bool,
    /// The device has no per-connection cache: a flush or FUA on one connection covers writes
    /// completed on every connection, and every connection sees every completed write.
    pub can_multi_conn: bool,
    /// `block_status` reports holes and zeroes (the `base:allocation` metadata context).
    pub can_block_status: bool,
}

impl ExportInfo {
    /// An export of `size` bytes with the default block sizes (1 / 4096 / 32 MiB) and no optional
    /// capability; set the fields that apply.
    pub fn new(size: u64) -> Self {
        ExportInfo {
            description: String::new(),
            size,
            read_only: false,
            min_block: 1,
            preferred_block: 4096,
            max_block: proto::MAX_PAYLOAD,
            can_flush: false,
            can_fua: false,
            can_trim: false,
            can_write_zeroes: false,
            can_multi_conn: false,
            can_block_status: false,
        }
    }

    /// Checks the block size rules of the NBD specification ("Block size constraints").
    pub fn validate(&self) -> Result<(), InvalidExportInfo> {
        let min = self.min_block;
        let preferred = self.preferred_block;
        let max = self.max_block;
        if !min.is_power_of_two() || min > 65536 {
            return Err(InvalidExportInfo(
                "min_block must be a power of two of at most 64 KiB",
            ));
        }
        if !preferred.is_power_of_two() || preferred < min.max(512) {
            return Err(InvalidExportInfo(
                "preferred_block must be a power of two of at least max(min_block, 512)",
            ));
        }
        if !max.is_multiple_of(min) {
            return Err(InvalidExportInfo(
                "max_block must be a multiple of min_block",
            ));
        }
        if u64::from(max) < u64::from(preferred).min(self.size) {
            return Err(InvalidExportInfo(
                "max_block must be at least min(preferred_block, size)",
            ));
        }
        if !self.size.is_multiple_of(u64::from(min)) {
            return Err(InvalidExportInfo("size must be a multiple of min_block"));
        }
        if self.description.len() > proto::MAX_STRING_LEN || self.description.contains('\0') {
            return Err(InvalidExportInfo(
                "description must be at most 4096 bytes without NUL",
            ));
        }
        Ok(())
    }

    /// The maximum block size the server advertises and enforces: `max_block` capped at
    /// [`proto::MAX_PAYLOAD`] and kept a multiple of `min_block`.
    pub fn effective_max_block(&self) -> u32 {
        let capped = self.max_block.min(proto::MAX_PAYLOAD);
        capped - capped % self.min_block.max(1)
    }
}

/// Why [`ExportInfo::validate`] refused an export.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid export info: {0}")]
pub struct InvalidExportInfo(pub &'static str);

/// One run of bytes with the same allocation status (`base:allocation`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes; extents of length zero are dropped by the server.
    pub length: u32,
    /// Not allocated in the backing store (`NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (`NBD_STATE_ZERO`).
    pub zero: bool,
}

impl Extent {
    /// Allocated data of unknown content.
    pub fn data(length: u32) -> Self {
        Extent {
            length,
            hole: false,
            zero: false,
        }
    }

    /// An unallocated range that reads as zeroes.
    pub fn hole(length: u32) -> Self {
        Extent {
            length,
            hole: true,
            zero: true,
        }
    }

    /// The `base:allocation` status flags of this extent.
    pub fn status(&self) -> u32 {
        let mut flags = 0;
        if self.hole {
            flags |= proto::STATE_HOLE;
        }
        if self.zero {
            flags |= proto::STATE_ZERO;
        }
        flags
    }
}

/// An I/O failure, as the NBD protocol can report it: each variant is one of the protocol's
/// error values.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IoError {
    /// `NBD_EPERM`: the operation is not permitted (a write to a read-only export).
    #[error("operation not permitted")]
    NotPermitted,
    /// `NBD_EIO`: the device failed.
    #[error("input/output error")]
    Io,
    /// `NBD_ENOMEM`: out of memory (the spec asks servers to avoid it).
    #[error("cannot allocate memory")]
    NoMemory,
    /// `NBD_EINVAL`: the request is invalid (out of bounds, unaligned, unknown command...).
    #[error("invalid argument")]
    Invalid,
    /// `NBD_ENOSPC`: no space left (also a write beyond the end of the export).
    #[error("no space left on device")]
    NoSpace,
    /// `NBD_EOVERFLOW`: a value is too large.
    #[error("value too large")]
    Overflow,
    /// `NBD_ENOTSUP`: the operation is not supported.
    #[error("operation not supported")]
    NotSupported,
    /// `NBD_ESHUTDOWN`: the server or the device is shutting down; the client should disconnect.
    #[error("server is shutting down")]
    Shutdown,
}

impl IoError {
    /// The protocol's error value for this error.
    pub fn errno(self) -> u32 {
        match self {
            IoError::NotPermitted => proto::EPERM,
            IoError::Io => proto::EIO,
            IoError::NoMemory => proto::ENOMEM,
            IoError::Invalid => proto::EINVAL,
            IoError::NoSpace => proto::ENOSPC,
            IoError::Overflow => proto::EOVERFLOW,
            IoError::NotSupported => proto::ENOTSUP,
            IoError::Shutdown => proto::ESHUTDOWN,
        }
    }

    /// The error for a protocol error value. Unknown values are `Invalid`, as the spec tells
    /// clients to treat them.
    pub fn from_errno(errno: u32) -> Self {
        match errno {
            proto::EPERM => IoError::NotPermitted,
            proto::EIO => IoError::Io,
            proto::ENOMEM => IoError::NoMemory,
            proto::ENOSPC => IoError::NoSpace,
            proto::EOVERFLOW => IoError::Overflow,
            proto::ENOTSUP => IoError::NotSupported,
            proto::ESHUTDOWN => IoError::Shutdown,
            _ => IoError::Invalid,
        }
    }

    /// Maps an operating system error the way the spec asks (EDQUOT and EFBIG are ENOSPC).
    pub fn from_io(err: &io::Error) -> Self {
        use nix::errno::Errno;
        match err.raw_os_error().map(Errno::from_raw) {
            Some(Errno::EPERM | Errno::EACCES | Errno::EROFS) => IoError::NotPermitted,
            Some(Errno::ENOSPC | Errno::EDQUOT | Errno::EFBIG) => IoError::NoSpace,
            Some(Errno::EINVAL) => IoError::Invalid,
            Some(Errno::ENOMEM) => IoError::NoMemory,
            Some(Errno::EOPNOTSUPP) => IoError::NotSupported,
            Some(Errno::EOVERFLOW) => IoError::Overflow,
            _ => IoError::Io,
        }
    }
}

impl From<io::Error> for IoError {
    fn from(err: io::Error) -> Self {
        IoError::from_io(&err)
    }
}

/// A block device served as an NBD export.
///
/// The server calls these from many tasks at once: several requests of one connection, and
/// requests of several connections, may be in flight together (the protocol lets a client reorder
/// and overlap them). The server has already checked every request against [`ExportInfo`]:
/// `offset + len` is within `size`, aligned to `min_block`, reads and writes are at most
/// `max_block` long, and writes never reach a read-only export. A method may still return any
/// [`IoError`]; the client receives its error value.
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errno_round_trips() {
        for e in [
            IoError::NotPermitted,
            IoError::Io,
            IoError::NoMemory,
            IoError::Invalid,
            IoError::NoSpace,
            IoError::Overflow,
            IoError::NotSupported,
            IoError::Shutdown,
        ] {
            assert_eq!(IoError::from_errno(e.errno()), e);
        }
        assert_eq!(IoError::from_errno(9999), IoError::Invalid);
        assert_eq!(IoError::NoSpace.errno(), 28);
        assert_eq!(IoError::Io.errno(), 5);
    }

    #[test]
    fn os_errors_map_like_the_spec_says() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(IoError::from_io(&e(nix::libc::EDQUOT)), IoError::NoSpace);
        assert_eq!(IoError::from_io(&e(nix::libc::EFBIG)), IoError::NoSpace);
        assert_eq!(
            IoError::from_io(&e(nix::libc::EROFS)),
            IoError::NotPermitted
        );
        assert_eq!(IoError::from_io(&e(nix::libc::EBADF)), IoError::Io);
        assert_eq!(IoError::from_io(&io::Error::other("x")), IoError::Io);
    }

    #[test]
    fn export_info_validation() {
        let mut info = ExportInfo::new(1 << 20);
        assert_eq!(info.validate(), Ok(()));
        info.min_block = 3;
        assert!(info.validate().is_err());
        info.min_block = 512;
        info.preferred_block = 256;
        assert!(info.validate().is_err());
        info.preferred_block = 4096;
        info.max_block = 1000;
        assert!(info.validate().is_err());
        info.max_block = 64 << 20;
        assert_eq!(info.validate(), Ok(()));
        assert_eq!(info.effective_max_block(), proto::MAX_PAYLOAD);
        info.size = 1000;
        assert!(info.validate().is_err());
        let mut small = ExportInfo::new(100);
        small.max_block = 100;
        assert_eq!(small.validate(), Ok(()));
    }

    #[test]
    fn extent_status_flags() {
        assert_eq!(Extent::data(1).status(), 0);
        assert_eq!(Extent::hole(1).status(), 3);
        assert_eq!(
            Extent {
                length: 1,
                hole: false,
                zero: true
            }
            .status(),
            2
        );
    }
}
