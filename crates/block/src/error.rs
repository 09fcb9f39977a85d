//! [`IoError`]: why a block device operation failed, in the few kinds a frontend can report.

use std::io;

/// An I/O failure, as a frontend can report it. The kinds are the ones the NBD protocol names
/// (each has an NBD error value, mapped in `tandem_nbd::proto`); other frontends map them to
/// their own codes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, thiserror::Error)]
pub enum IoError {
    /// The operation is not permitted (a write to a read-only export). NBD: `EPERM`.
    #[error("operation not permitted")]
    NotPermitted,
    /// The device failed. NBD: `EIO`.
    #[error("input/output error")]
    Io,
    /// Out of memory (the NBD spec asks servers to avoid it). NBD: `ENOMEM`.
    #[error("cannot allocate memory")]
    NoMemory,
    /// The request is invalid (out of bounds, unaligned, unknown command...). NBD: `EINVAL`.
    #[error("invalid argument")]
    Invalid,
    /// No space left (also a write beyond the end of the export). NBD: `ENOSPC`.
    #[error("no space left on device")]
    NoSpace,
    /// A value is too large. NBD: `EOVERFLOW`.
    #[error("value too large")]
    Overflow,
    /// The operation is not supported. NBD: `ENOTSUP`.
    #[error("operation not supported")]
    NotSupported,
    /// The server or the device is shutting down; the client should disconnect (and may
    /// reconnect). NBD: `ESHUTDOWN`.
    #[error("server is shutting down")]
    Shutdown,
}

impl IoError {
    /// Maps an operating system error the way the NBD specification asks (EDQUOT and EFBIG are
    /// "no space").
    pub fn from_io(err: &io::Error) -> Self {
        match err.raw_os_error() {
            Some(libc::EPERM | libc::EACCES | libc::EROFS) => IoError::NotPermitted,
            Some(libc::ENOSPC | libc::EDQUOT | libc::EFBIG) => IoError::NoSpace,
            Some(libc::EINVAL) => IoError::Invalid,
            Some(libc::ENOMEM) => IoError::NoMemory,
            Some(libc::EOPNOTSUPP) => IoError::NotSupported,
            Some(libc::EOVERFLOW) => IoError::Overflow,
            _ => IoError::Io,
        }
    }
}

impl From<io::Error> for IoError {
    fn from(err: io::Error) -> Self {
        IoError::from_io(&err)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn os_errors_map_like_the_spec_says() {
        let e = |n| io::Error::from_raw_os_error(n);
        assert_eq!(IoError::from_io(&e(libc::EDQUOT)), IoError::NoSpace);
        assert_eq!(IoError::from_io(&e(libc::EFBIG)), IoError::NoSpace);
        assert_eq!(IoError::from_io(&e(libc::EROFS)), IoError::NotPermitted);
        assert_eq!(IoError::from_io(&e(libc::EBADF)), IoError::Io);
        assert_eq!(IoError::from_io(&io::Error::other("x")), IoError::Io);
    }

    #[test]
    fn every_mapped_os_error_has_its_kind() {
        let e = |n| IoError::from(io::Error::from_raw_os_error(n));
        assert_eq!(e(libc::EPERM), IoError::NotPermitted);
        assert_eq!(e(libc::EACCES), IoError::NotPermitted);
        assert_eq!(e(libc::ENOSPC), IoError::NoSpace);
        assert_eq!(e(libc::EINVAL), IoError::Invalid);
        assert_eq!(e(libc::ENOMEM), IoError::NoMemory);
        assert_eq!(e(libc::EOPNOTSUPP), IoError::NotSupported);
        assert_eq!(e(libc::EOVERFLOW), IoError::Overflow);
        // Not mapped: a plain device failure.
        assert_eq!(e(libc::ENOSYS), IoError::Io);
        assert_eq!(e(libc::EIO), IoError::Io);
    }
}
