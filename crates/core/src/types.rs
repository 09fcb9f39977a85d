//! The replication core's vocabulary: identities, generations, sequences, geometry and region sets.

use std::fmt;

/// Identity of a replica within a volume (cStor's `replicaid`). Stable across restarts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ReplicaId(pub u64);

/// Identity of one creation of a replica's storage (cStor's zvol GUID). A replica whose storage
/// was wiped and created again has the same `ReplicaId` but a new `Incarnation`, and so is a
/// stranger until it has been rebuilt and promoted.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Incarnation(pub u64);

/// The number a target gets when it starts; replicas refuse any target with a lower one (G5).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Generation(pub u64);

/// Volume-wide order of writes, trims and flushes, assigned by the target.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Seq(pub u64);

impl Seq {
    pub const ZERO: Seq = Seq(0);

    pub fn next(self) -> Seq {
        Seq(self.0 + 1)
    }
}

/// A position in a volume's history: the generation of the target that sequenced an operation and
/// its sequence. Histories are compared lexicographically, newest generation first, as in Raft's
/// (term, index).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Stamp {
    pub generation: Generation,
    pub seq: Seq,
}

impl Stamp {
    pub const ZERO: Stamp = Stamp {
        generation: Generation(0),
        seq: Seq(0),
    };

    pub fn new(generation: Generation, seq: Seq) -> Stamp {
        Stamp { generation, seq }
    }
}

impl fmt::Display for Stamp {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}:{}", self.generation.0, self.seq.0)
    }
}

/// A run of a replica's storage with one allocation state (NBD's `base:allocation`): allocated
/// data, or a hole, which reads as zeroes.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Extent {
    pub len: u64,
    pub allocated: bool,
}

impl Extent {
    /// True if `extents` describe exactly `len` bytes in runs of non-zero length.
    pub fn cover(extents: &[Extent], len: u64) -> bool {
        extents.iter().all(|e| e.len > 0)
            && extents
                .iter()
                .try_fold(0u64, |sum, e| sum.checked_add(e.len))
                .is_some_and(|sum| sum == len)
    }
}

/// Identifies one target-replica session; a new handshake always starts a new one. The high 32
/// bits are the target's generation, so a later target's sessions always compare greater.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct SessionId(pub u64);

impl SessionId {
    pub fn new(generation: Generation, counter: u32) -> SessionId {
        SessionId((generation.0 << 32) | u64::from(counter))
    }

    pub fn generation(self) -> Generation {
        Generation(self.0 >> 32)
    }
}

/// Why an I/O failed, as reported by storage and carried on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum IoFailure {
    /// The pool has no space left (or is read-only past its threshold): the operation was
    /// refused before it changed anything. Storage that fails part way through for lack of
    /// space reports `Device`, not this.
    NoSpace,
    /// The device reported an error.
    Device,
    /// The request lies outside the volume or is not aligned to its block size.
    OutOfRange,
}

impl fmt::Display for IoFailure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            IoFailure::NoSpace => "no space left in pool",
            IoFailure::Device => "device I/O error",
            IoFailure::OutOfRange => "request outside the volume or misaligned",
        })
    }
}

/// The shape of a volume: its size, its block size, and the region size used for resync
/// bookkeeping (one region-map entry per region).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Geometry {
    pub size_bytes: u64,
    pub block_size: u32,
    pub region_size: u32,
}

impl Geometry {
    /// Checks the geometry is usable: power-of-two sizes, region a multiple of the block, size a
    /// multiple of the block, and not absurdly many regions.
    pub fn validate(&self) -> Result<(), &'static str> {
        if !self.block_size.is_power_of_two() || self.block_size < 512 {
            return Err("block size must be a power of two of at least 512 bytes");
        }
        if !self.region_size.is_power_of_two() || self.region_size < self.block_size {
            return Err("region size must be a power of two no smaller than the block size");
        }
        if self.size_bytes == 0 || !self.size_bytes.is_multiple_of(u64::from(self.block_size)) {
            return Err("volume size must be a non-zero multiple of the block size");
        }
        if self.region_count() > u64::from(u32::MAX) {
            return Err("volume has too many regions; use a larger region size");
        }
        Ok(())
    }

    pub fn region_count(&self) -> u64 {
        self.size_bytes.div_ceil(u64::from(self.region_size))
    }

    /// True if `[offset, offset+len)` is inside the volume and block-aligned.
    pub fn contains_aligned(&self, offset: u64, len: u64) -> bool {
        let block = u64::from(self.block_size);
        len > 0
            && offset.is_multiple_of(block)
            && len.is_multiple_of(block)
            && offset
                .checked_add(len)
                .is_some_and(|end| end <= self.size_bytes)
    }

    /// The regions `[first, last]` touched by a byte range (len > 0).
    pub fn regions_of(&self, offset: u64, len: u64) -> std::ops::RangeInclusive<u32> {
        let region = u64::from(self.region_size);
        let first = (offset / region) as u32;
        let last = ((offset + len - 1) / region) as u32;
        first..=last
    }

    /// Byte range of one region, clipped to the volume's end.
    pub fn region_range(&self, region: u32) -> (u64, u64) {
        let start = u64::from(region) * u64::from(self.region_size);
        let len = u64::from(self.region_size).min(self.size_bytes - start);
        (start, len)
    }
}

/// A set of regions, as a bitmap. Used for dirty sets exchanged during resync.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct RegionSet {
    region_count: u32,
    words: Vec<u64>,
}

impl RegionSet {
    pub fn new(region_count: u32) -> RegionSet {
        RegionSet {
            region_count,
            words: vec![0; (region_count as usize).div_ceil(64)],
        }
    }

    /// Builds a set from raw words, as decoded from the wire. Bits past `region_count` are
    /// rejected so two equal sets always have equal encodings.
    pub fn from_words(region_count: u32, words: Vec<u64>) -> Option<RegionSet> {
        if words.len() != (region_count as usize).div_ceil(64) {
            return None;
        }
        let tail_bits = region_count % 64;
        if tail_bits != 0 {
            let last = *words.last()?;
            if last >> tail_bits != 0 {
                return None;
            }
        }
        Some(RegionSet {
            region_count,
            words,
        })
    }

    pub fn words(&self) -> &[u64] {
        &self.words
    }

    pub fn region_count(&self) -> u32 {
        self.region_count
    }

    pub fn insert(&mut self, region: u32) {
        assert!(region < self.region_count, "region {region} out of range");
        self.words[(region / 64) as usize] |= 1 << (region % 64);
    }

    pub fn contains(&self, region: u32) -> bool {
        region < self.region_count && self.words[(region / 64) as usize] & (1 << (region % 64)) != 0
    }

    pub fn union_with(&mut self, other: &RegionSet) {
        assert_eq!(self.region_count, other.region_count);
        for (mine, theirs) in self.words.iter_mut().zip(&other.words) {
            *mine |= theirs;
        }
    }

    pub fn len(&self) -> usize {
        self.words.iter().map(|w| w.count_ones() as usize).sum()
    }

    pub fn is_empty(&self) -> bool {
        self.words.iter().all(|w| *w == 0)
    }

    pub fn clear(&mut self) {
        self.words.iter_mut().for_each(|w| *w = 0);
    }

    pub fn iter(&self) -> impl Iterator<Item = u32> + '_ {
        self.words.iter().enumerate().flat_map(|(index, word)| {
            let mut bits = *word;
            std::iter::from_fn(move || {
                if bits == 0 {
                    return None;
                }
                let bit = bits.trailing_zeros();
                bits &= bits - 1;
                Some(index as u32 * 64 + bit)
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn region_set_round_trips_through_words() {
        let mut set = RegionSet::new(130);
        for region in [0, 63, 64, 129] {
            set.insert(region);
        }
        assert_eq!(set.iter().collect::<Vec<_>>(), vec![0, 63, 64, 129]);
        let again = RegionSet::from_words(130, set.words().to_vec()).unwrap();
        assert_eq!(again, set);
        assert!(RegionSet::from_words(130, vec![0, 0, 1 << 5]).is_none());
        assert!(RegionSet::from_words(130, vec![0, 0]).is_none());
    }

    #[test]
    fn geometry_rejects_misaligned_and_out_of_range() {
        let geometry = Geometry {
            size_bytes: 1 << 20,
            block_size: 4096,
            region_size: 65536,
        };
        assert!(geometry.validate().is_ok());
        assert!(geometry.contains_aligned(0, 4096));
        assert!(!geometry.contains_aligned(1, 4096));
        assert!(!geometry.contains_aligned(0, 0));
        assert!(!geometry.contains_aligned((1 << 20) - 4096, 8192));
        assert!(!geometry.contains_aligned(u64::MAX - 4095, 4096));
        assert_eq!(geometry.regions_of(65535 - 4095, 8192), 0..=1);
        assert_eq!(geometry.region_count(), 16);
    }

    #[test]
    fn stamps_order_by_generation_first() {
        let old = Stamp::new(Generation(1), Seq(100));
        let new = Stamp::new(Generation(2), Seq(5));
        assert!(new > old);
        assert_eq!(SessionId::new(Generation(7), 3).generation(), Generation(7));
    }
}
