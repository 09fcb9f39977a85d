//! The protocol's values for `tandem-block`'s types, and the names of its error values: what
//! the server sends for an [`IoError`] or an [`Extent`], and the largest block it advertises.

use tandem_block::{ExportInfo, Extent, IoError};

use super::constants::*;

/// The protocol's error value for a device error.
pub fn error_value(error: IoError) -> u32 {
    match error {
        IoError::NotPermitted => EPERM,
        IoError::Io => EIO,
        IoError::NoMemory => ENOMEM,
        IoError::Invalid => EINVAL,
        IoError::NoSpace => ENOSPC,
        IoError::Overflow => EOVERFLOW,
        IoError::NotSupported => ENOTSUP,
        IoError::Shutdown => ESHUTDOWN,
    }
}

/// The device error for a protocol error value. Unknown values are `Invalid`, as the spec tells
/// clients to treat them.
pub fn io_error(value: u32) -> IoError {
    match value {
        EPERM => IoError::NotPermitted,
        EIO => IoError::Io,
        ENOMEM => IoError::NoMemory,
        ENOSPC => IoError::NoSpace,
        EOVERFLOW => IoError::Overflow,
        ENOTSUP => IoError::NotSupported,
        ESHUTDOWN => IoError::Shutdown,
        _ => IoError::Invalid,
    }
}

/// The `base:allocation` status flags of a device's extent.
pub fn extent_status(extent: &Extent) -> u32 {
    let mut flags = 0;
    if extent.hole {
        flags |= STATE_HOLE;
    }
    if extent.zero {
        flags |= STATE_ZERO;
    }
    flags
}

/// The maximum block size the server advertises and enforces for a device: its `max_block`
/// capped at [`MAX_PAYLOAD`] and kept a multiple of `min_block`.
pub fn effective_max_block(info: &ExportInfo) -> u32 {
    let capped = info.max_block.min(MAX_PAYLOAD);
    capped - capped % info.min_block.max(1)
}

/// The name of an NBD error value (`EIO`...), `None` for a value the protocol does not define.
pub fn errno_name(errno: u32) -> Option<&'static str> {
    Some(match errno {
        EPERM => "EPERM",
        EIO => "EIO",
        ENOMEM => "ENOMEM",
        EINVAL => "EINVAL",
        ENOSPC => "ENOSPC",
        EOVERFLOW => "EOVERFLOW",
        ENOTSUP => "ENOTSUP",
        ESHUTDOWN => "ESHUTDOWN",
        _ => return None,
    })
}

/// The name of an option reply error type (`NBD_REP_ERR_UNKNOWN`...), or "option error 0x..."
/// for one the protocol does not define.
pub fn rep_error_name(reply_type: u32) -> String {
    let name = match reply_type {
        REP_ERR_UNSUP => "NBD_REP_ERR_UNSUP",
        REP_ERR_POLICY => "NBD_REP_ERR_POLICY",
        REP_ERR_INVALID => "NBD_REP_ERR_INVALID",
        REP_ERR_PLATFORM => "NBD_REP_ERR_PLATFORM",
        REP_ERR_TLS_REQD => "NBD_REP_ERR_TLS_REQD",
        REP_ERR_UNKNOWN => "NBD_REP_ERR_UNKNOWN",
        REP_ERR_SHUTDOWN => "NBD_REP_ERR_SHUTDOWN",
        REP_ERR_BLOCK_SIZE_REQD => "NBD_REP_ERR_BLOCK_SIZE_REQD",
        REP_ERR_TOO_BIG => "NBD_REP_ERR_TOO_BIG",
        other => return format!("option error {other:#x}"),
    };
    name.to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn error_values_round_trip() {
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
            assert_eq!(io_error(error_value(e)), e);
        }
        assert_eq!(io_error(9999), IoError::Invalid);
        assert_eq!(error_value(IoError::NoSpace), 28);
        assert_eq!(error_value(IoError::Io), 5);
    }

    #[test]
    fn extent_status_flags() {
        assert_eq!(extent_status(&Extent::data(1)), 0);
        assert_eq!(extent_status(&Extent::hole(1)), 3);
        let zero = Extent {
            length: 1,
            hole: false,
            zero: true,
        };
        assert_eq!(extent_status(&zero), 2);
    }

    #[test]
    fn max_block_is_capped_at_the_largest_payload() {
        let mut info = ExportInfo::new(1 << 20);
        info.min_block = 512;
        info.max_block = 64 << 20;
        assert_eq!(info.validate(), Ok(()));
        assert_eq!(effective_max_block(&info), MAX_PAYLOAD);
        info.max_block = 1 << 20;
        assert_eq!(effective_max_block(&info), 1 << 20);
    }

    #[test]
    fn error_values_and_option_errors_have_names() {
        assert_eq!(errno_name(EIO), Some("EIO"));
        assert_eq!(errno_name(ESHUTDOWN), Some("ESHUTDOWN"));
        assert_eq!(errno_name(99), None);
        assert_eq!(rep_error_name(REP_ERR_UNKNOWN), "NBD_REP_ERR_UNKNOWN");
        assert_eq!(
            rep_error_name(REP_FLAG_ERROR | 42),
            "option error 0x8000002a"
        );
    }
}
