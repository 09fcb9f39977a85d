//! What a device looks like to clients ([`ExportInfo`]) and its allocation map ([`Extent`]).

/// The `max_block` of [`ExportInfo::new`]: 32 MiB, the largest payload the NBD protocol allows.
pub const DEFAULT_MAX_BLOCK: u32 = 32 * 1024 * 1024;

/// The longest description [`ExportInfo::validate`] accepts, in bytes (the NBD protocol's
/// longest string).
pub const MAX_DESCRIPTION_LEN: usize = 4096;

/// What an export looks like to clients: its size, its block size constraints and which
/// operations it supports. A frontend asks for it whenever a client opens the export (the NBD
/// server at every handshake), so a device whose size or capabilities change is seen with its
/// new shape by the next connection.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportInfo {
    /// A human-readable description (sent with NBD's `NBD_OPT_LIST` and `NBD_INFO_DESCRIPTION`).
    pub description: String,
    /// Size of the export in bytes.
    pub size: u64,
    /// Writes, trims and write-zeroes are refused with [`crate::IoError::NotPermitted`].
    pub read_only: bool,
    /// Smallest addressable unit: offsets and lengths must be multiples of it. A power of two,
    /// at most 64 KiB.
    pub min_block: u32,
    /// The size at which I/O is efficient. A power of two, at least `max(min_block, 512)`.
    pub preferred_block: u32,
    /// The largest read, write or write-zeroes length the device accepts. A multiple of
    /// `min_block`, at least `min(preferred_block, size)`. A frontend may advertise less (the
    /// NBD server never advertises more than 32 MiB, whatever this says).
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
    /// `block_status` reports holes and zeroes (NBD's `base:allocation` metadata context).
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
            max_block: DEFAULT_MAX_BLOCK,
            can_flush: false,
            can_fua: false,
            can_trim: false,
            can_write_zeroes: false,
            can_multi_conn: false,
            can_block_status: false,
        }
    }

    /// Checks the block size rules (those of the NBD specification's "Block size constraints")
    /// and the description.
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
        if self.description.len() > MAX_DESCRIPTION_LEN || self.description.contains('\0') {
            return Err(InvalidExportInfo(
                "description must be at most 4096 bytes without NUL",
            ));
        }
        Ok(())
    }
}

/// Why [`ExportInfo::validate`] refused an export: the rule it breaks.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid export info: {0}")]
pub struct InvalidExportInfo(pub &'static str);

/// One run of bytes with the same allocation status.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Extent {
    /// Length in bytes; extents of length zero are dropped by the frontend.
    pub length: u32,
    /// Not allocated in the backing store (NBD's `NBD_STATE_HOLE`).
    pub hole: bool,
    /// Reads as zeroes (NBD's `NBD_STATE_ZERO`).
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
}

#[cfg(test)]
mod tests {
    use super::*;

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
        info.size = 1000;
        assert!(info.validate().is_err());
        let mut small = ExportInfo::new(100);
        small.max_block = 100;
        assert_eq!(small.validate(), Ok(()));
    }

    #[test]
    fn every_rule_names_itself() {
        let refused = |change: fn(&mut ExportInfo)| {
            let mut info = ExportInfo::new(1 << 20);
            change(&mut info);
            info.validate().expect_err("refused").0
        };
        assert!(refused(|i| i.min_block = 128 << 10).starts_with("min_block"));
        assert!(refused(|i| i.preferred_block = 3000).starts_with("preferred_block"));
        assert!(refused(|i| {
            i.min_block = 512;
            i.max_block = 4097;
        })
        .contains("multiple of min_block"));
        assert!(refused(|i| i.max_block = 1024).contains("min(preferred_block, size)"));
        assert!(refused(|i| {
            i.min_block = 512;
            i.size = 1000;
        })
        .starts_with("size"));
        assert!(refused(|i| i.description = "a\0b".into()).starts_with("description"));
        assert!(
            refused(|i| i.description = "d".repeat(MAX_DESCRIPTION_LEN + 1))
                .starts_with("description")
        );
        let mut info = ExportInfo::new(1 << 20);
        info.description = "d".repeat(MAX_DESCRIPTION_LEN);
        assert_eq!(info.validate(), Ok(()));
        assert_eq!(InvalidExportInfo("x").to_string(), "invalid export info: x");
    }

    #[test]
    fn extents() {
        assert_eq!(
            Extent::data(7),
            Extent {
                length: 7,
                hole: false,
                zero: false
            }
        );
        assert_eq!(
            Extent::hole(7),
            Extent {
                length: 7,
                hole: true,
                zero: true
            }
        );
    }
}
