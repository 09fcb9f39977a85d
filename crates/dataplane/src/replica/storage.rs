//! A replica's storage in a pool: the directory `<pool>/replicas/<volume>/` holding `data` (a
//! sparse file as long as the volume) and `meta` (the replica's [`ReplicaMeta`] in the binary
//! format below), and how it is created, read and removed without ever leaving a half-made or
//! half-removed replica where a whole one is expected.
//!
//! # The `meta` format (version 1)
//!
//! Little-endian throughout; every field is checked on decode and a file that fails any check
//! is refused with a [`MetaDecodeError`] naming what is wrong (never "repaired").
//!
//! | offset | size | field                                                        |
//! |-------:|-----:|--------------------------------------------------------------|
//! |      0 |    8 | magic `TNDMRMET`                                             |
//! |      8 |    4 | format version, 1                                            |
//! |     12 |    4 | reserved, 0                                                  |
//! |     16 |    8 | replica id                                                   |
//! |     24 |    8 | incarnation                                                  |
//! |     32 |    8 | geometry: volume size in bytes                               |
//! |     40 |    4 | geometry: block size                                         |
//! |     44 |    4 | geometry: region size                                        |
//! |     48 |    8 | highest generation seen                                      |
//! |     56 |    1 | consistent: 0 or 1                                           |
//! |     57 |    7 | reserved, 0                                                  |
//! |     64 |   16 | stamp: generation, sequence                                  |
//! |     80 |   16 | sync stamp: generation, sequence                             |
//! |     96 |    8 | checkpoint sequence                                          |
//! |    104 |    4 | region count R (must equal the geometry's)                   |
//! |    108 |    4 | reserved, 0                                                  |
//! |    112 |  8·R | region map: the newest sequence per region                   |
//! |      … |  8·W | activity log: W = ⌈R/64⌉ bitmap words, no bits past R        |
//! |      … |    4 | CRC-32C (Castagnoli) of every byte before it                 |
//!
//! The file is small by construction: regions are at least [`REGION_SIZE_MIN`] and a volume has
//! at most [`REGIONS_MAX`] of them up to 128 TiB (see [`geometry_for`]), so `meta` stays under
//! 520 KiB for any volume up to that size.
//!
//! # Atomicity
//!
//! `meta` is replaced whole: written to a temporary file, fsynced, renamed over, and the
//! directory fsynced ([`write_file_atomic`]). A replica directory is built under
//! `replicas/.creating-<volume>` and renamed into place only once complete, and is renamed to
//! `replicas/.deleting-<volume>` before it is removed, so a crash at any point leaves either a
//! whole replica or a dot-directory that [`clean_transient_dirs`] may remove (it never held a
//! published replica's only copy of anything: it was either never published or asked to go).

use std::fs::{self, File, OpenOptions};
use std::io::{self, Write};
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};

use tandem_core::meta::{ReplicaMeta, Superblock};
use tandem_core::{Generation, Geometry, Incarnation, RegionSet, ReplicaId, Seq, Stamp};

/// The first bytes of every `meta` file.
pub const META_MAGIC: [u8; 8] = *b"TNDMRMET";
/// The format version this code writes and reads.
pub const META_VERSION: u32 = 1;
/// Bytes before the region map.
const HEADER_LEN: usize = 112;
/// The trailing CRC-32C.
const CRC_LEN: usize = 4;

/// The smallest region: resync copies whole regions, so small volumes get 1 MiB granularity.
pub const REGION_SIZE_MIN: u32 = 1 << 20;
/// The most regions a volume is given; larger volumes get larger regions. 65 536 regions keep
/// the region map at 512 KiB and the activity log at 8 KiB, so a checkpoint's metadata write
/// stays small even for a multi-terabyte volume (a 64 GiB volume still has 1 MiB regions).
pub const REGIONS_MAX: u64 = 1 << 16;
/// The largest region (the geometry's region size is a u32); volumes over 128 TiB get more than
/// [`REGIONS_MAX`] regions of this size.
const REGION_SIZE_MAX: u32 = 1 << 31;
/// cStor creates its zvols with `-b 4K`; a CVR without `spec.blockSize` gets this.
pub const BLOCK_SIZE_DEFAULT: u32 = 4096;

/// The file names inside a replica directory.
pub const DATA_FILE: &str = "data";
pub const META_FILE: &str = "meta";
/// Present (empty) in a thick replica's directory: its data file was fully allocated when it
/// was created, and stays so.
pub const THICK_FILE: &str = "thick";
const CREATING_PREFIX: &str = ".creating-";
const DELETING_PREFIX: &str = ".deleting-";

/// Why a `meta` file was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaDecodeError {
    #[error("{actual} bytes is too short for replica metadata (at least {minimum})")]
    TooShort { actual: usize, minimum: usize },
    #[error("bad magic {found:02x?}: this is not Tandem replica metadata")]
    BadMagic { found: [u8; 8] },
    #[error("format version {found} is not supported (this agent reads version {supported})")]
    UnsupportedVersion { found: u32, supported: u32 },
    #[error(
        "the file is {actual} bytes but its {regions} regions need {expected}: it was truncated \
         or extended"
    )]
    LengthMismatch {
        actual: usize,
        expected: u64,
        regions: u32,
    },
    #[error("checksum mismatch: stored CRC-32C {stored:#010x}, computed {computed:#010x}")]
    ChecksumMismatch { stored: u32, computed: u32 },
    #[error("reserved bytes at offset {offset} are not zero")]
    ReservedNotZero { offset: usize },
    #[error("the consistent flag at offset {offset} is {value}, not 0 or 1")]
    InvalidFlag { offset: usize, value: u8 },
    #[error(
        "invalid geometry (size {size_bytes}, block {block_size}, region {region_size}): {reason}"
    )]
    InvalidGeometry {
        size_bytes: u64,
        block_size: u32,
        region_size: u32,
        reason: &'static str,
    },
    #[error("the region count is {stored} but the geometry has {expected} regions")]
    RegionCountMismatch { stored: u32, expected: u64 },
    #[error("the activity log has bits set past its {regions} regions")]
    ActivityLogOutOfRange { regions: u32 },
}

/// Why metadata could not be encoded: its parts disagree with its geometry.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum MetaEncodeError {
    #[error("invalid geometry: {0}")]
    InvalidGeometry(&'static str),
    #[error("the region map has {actual} entries but the geometry has {expected} regions")]
    RegionMap { actual: usize, expected: u64 },
    #[error("the activity log covers {actual} regions but the geometry has {expected}")]
    ActivityLog { actual: u32, expected: u64 },
}

/// Why a `meta` file could not be read.
#[derive(Debug, thiserror::Error)]
pub enum MetaReadError {
    #[error("cannot read {}: {source}", path.display())]
    Io { path: PathBuf, source: io::Error },
    #[error("{} is not valid replica metadata: {source}", path.display())]
    Decode {
        path: PathBuf,
        source: MetaDecodeError,
    },
}

/// The byte length of a `meta` file for `regions` regions.
fn encoded_len(regions: u32) -> u64 {
    let words = u64::from(regions).div_ceil(64);
    HEADER_LEN as u64 + 8 * u64::from(regions) + 8 * words + CRC_LEN as u64
}

/// Encodes `meta` in the current format.
pub fn encode_meta(meta: &ReplicaMeta) -> Result<Vec<u8>, MetaEncodeError> {
    let superblock = &meta.superblock;
    let geometry = superblock.geometry;
    geometry
        .validate()
        .map_err(MetaEncodeError::InvalidGeometry)?;
    let expected = geometry.region_count();
    if meta.region_seqs.len() as u64 != expected {
        return Err(MetaEncodeError::RegionMap {
            actual: meta.region_seqs.len(),
            expected,
        });
    }
    if u64::from(meta.activity_log.region_count()) != expected {
        return Err(MetaEncodeError::ActivityLog {
            actual: meta.activity_log.region_count(),
            expected,
        });
    }
    // validate() bounds the count by u32::MAX.
    let regions = u32::try_from(expected).map_err(|_| {
        MetaEncodeError::InvalidGeometry("volume has too many regions; use a larger region size")
    })?;
    let mut out = Vec::with_capacity(usize::try_from(encoded_len(regions)).unwrap_or(0));
    out.extend_from_slice(&META_MAGIC);
    out.extend_from_slice(&META_VERSION.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    out.extend_from_slice(&superblock.replica.0.to_le_bytes());
    out.extend_from_slice(&superblock.incarnation.0.to_le_bytes());
    out.extend_from_slice(&geometry.size_bytes.to_le_bytes());
    out.extend_from_slice(&geometry.block_size.to_le_bytes());
    out.extend_from_slice(&geometry.region_size.to_le_bytes());
    out.extend_from_slice(&superblock.generation_seen.0.to_le_bytes());
    out.push(u8::from(superblock.consistent));
    out.extend_from_slice(&[0u8; 7]);
    for stamp in [superblock.stamp, superblock.sync_stamp] {
        out.extend_from_slice(&stamp.generation.0.to_le_bytes());
        out.extend_from_slice(&stamp.seq.0.to_le_bytes());
    }
    out.extend_from_slice(&superblock.checkpoint.0.to_le_bytes());
    out.extend_from_slice(&regions.to_le_bytes());
    out.extend_from_slice(&0u32.to_le_bytes());
    debug_assert_eq!(out.len(), HEADER_LEN);
    for seq in &meta.region_seqs {
        out.extend_from_slice(&seq.0.to_le_bytes());
    }
    for word in meta.activity_log.words() {
        out.extend_from_slice(&word.to_le_bytes());
    }
    let crc = crc32c::crc32c(&out);
    out.extend_from_slice(&crc.to_le_bytes());
    Ok(out)
}

/// Reads fixed-size little-endian fields at known offsets. Callers check the length first.
struct Fields<'a>(&'a [u8]);

impl Fields<'_> {
    fn bytes<const N: usize>(&self, offset: usize) -> [u8; N] {
        let mut out = [0u8; N];
        if let Some(slice) = self.0.get(offset..offset + N) {
            out.copy_from_slice(slice);
        }
        out
    }

    fn u32(&self, offset: usize) -> u32 {
        u32::from_le_bytes(self.bytes(offset))
    }

    fn u64(&self, offset: usize) -> u64 {
        u64::from_le_bytes(self.bytes(offset))
    }

    fn zero(&self, offset: usize, len: usize) -> Result<(), MetaDecodeError> {
        match self.0.get(offset..offset + len) {
            Some(bytes) if bytes.iter().all(|&byte| byte == 0) => Ok(()),
            _ => Err(MetaDecodeError::ReservedNotZero { offset }),
        }
    }
}

/// Decodes a `meta` file, checking magic, version, length, checksum and every field.
pub fn decode_meta(bytes: &[u8]) -> Result<ReplicaMeta, MetaDecodeError> {
    let minimum = HEADER_LEN + CRC_LEN;
    if bytes.len() < 12 {
        return Err(MetaDecodeError::TooShort {
            actual: bytes.len(),
            minimum,
        });
    }
    let fields = Fields(bytes);
    let magic: [u8; 8] = fields.bytes(0);
    if magic != META_MAGIC {
        return Err(MetaDecodeError::BadMagic { found: magic });
    }
    let version = fields.u32(8);
    if version != META_VERSION {
        return Err(MetaDecodeError::UnsupportedVersion {
            found: version,
            supported: META_VERSION,
        });
    }
    if bytes.len() < minimum {
        return Err(MetaDecodeError::TooShort {
            actual: bytes.len(),
            minimum,
        });
    }
    let regions = fields.u32(104);
    let expected_len = encoded_len(regions);
    if bytes.len() as u64 != expected_len {
        return Err(MetaDecodeError::LengthMismatch {
            actual: bytes.len(),
            expected: expected_len,
            regions,
        });
    }
    let body_len = bytes.len() - CRC_LEN;
    let stored = fields.u32(body_len);
    let computed = crc32c::crc32c(&bytes[..body_len]);
    if stored != computed {
        return Err(MetaDecodeError::ChecksumMismatch { stored, computed });
    }
    fields.zero(12, 4)?;
    fields.zero(57, 7)?;
    fields.zero(108, 4)?;
    let consistent = match bytes[56] {
        0 => false,
        1 => true,
        value => return Err(MetaDecodeError::InvalidFlag { offset: 56, value }),
    };
    let geometry = Geometry {
        size_bytes: fields.u64(32),
        block_size: fields.u32(40),
        region_size: fields.u32(44),
    };
    geometry
        .validate()
        .map_err(|reason| MetaDecodeError::InvalidGeometry {
            size_bytes: geometry.size_bytes,
            block_size: geometry.block_size,
            region_size: geometry.region_size,
            reason,
        })?;
    if u64::from(regions) != geometry.region_count() {
        return Err(MetaDecodeError::RegionCountMismatch {
            stored: regions,
            expected: geometry.region_count(),
        });
    }
    let stamp =
        |offset: usize| Stamp::new(Generation(fields.u64(offset)), Seq(fields.u64(offset + 8)));
    let superblock = Superblock {
        replica: ReplicaId(fields.u64(16)),
        incarnation: Incarnation(fields.u64(24)),
        geometry,
        generation_seen: Generation(fields.u64(48)),
        consistent,
        stamp: stamp(64),
        sync_stamp: stamp(80),
        checkpoint: Seq(fields.u64(96)),
    };
    let map_start = HEADER_LEN;
    let log_start = map_start + 8 * regions as usize;
    let region_seqs = (0..regions as usize)
        .map(|index| Seq(fields.u64(map_start + 8 * index)))
        .collect();
    let words = (0..(regions as usize).div_ceil(64))
        .map(|index| fields.u64(log_start + 8 * index))
        .collect();
    let activity_log = RegionSet::from_words(regions, words)
        .ok_or(MetaDecodeError::ActivityLogOutOfRange { regions })?;
    Ok(ReplicaMeta {
        superblock,
        region_seqs,
        activity_log,
    })
}

/// Reads and decodes a `meta` file.
pub fn read_meta(path: &Path) -> Result<ReplicaMeta, MetaReadError> {
    let bytes = fs::read(path).map_err(|source| MetaReadError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    decode_meta(&bytes).map_err(|source| MetaReadError::Decode {
        path: path.to_path_buf(),
        source,
    })
}

/// Writes `meta` into `dir` atomically (see [`write_file_atomic`]).
pub fn write_meta(dir: &Path, meta: &ReplicaMeta) -> io::Result<()> {
    let bytes =
        encode_meta(meta).map_err(|error| io::Error::new(io::ErrorKind::InvalidInput, error))?;
    write_file_atomic(dir, META_FILE, &bytes)
}

/// Replaces `dir/name` with `contents` so that a crash leaves the old file or the new one, never
/// a mix: write `.name.tmp`, fsync it, rename it over `name`, fsync `dir`.
pub fn write_file_atomic(dir: &Path, name: &str, contents: &[u8]) -> io::Result<()> {
    let temporary = dir.join(format!(".{name}.tmp"));
    let target = dir.join(name);
    let mut file = OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .open(&temporary)?;
    file.write_all(contents)?;
    file.sync_all()?;
    drop(file);
    fs::rename(&temporary, &target)?;
    sync_dir(dir)
}

/// Makes the creation, rename or removal of entries in `dir` durable.
pub fn sync_dir(dir: &Path) -> io::Result<()> {
    File::open(dir)?.sync_all()
}

/// What a new replica's storage is made from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NewReplica {
    /// The directory name under `replicas/` (the volume's name, already validated as an object
    /// name, so it cannot escape the pool directory).
    pub volume: String,
    pub replica: ReplicaId,
    pub incarnation: Incarnation,
    pub geometry: Geometry,
    /// True for replicas created with their volume (cStor's quorum=on); false for replicas
    /// added later or recreated, which must be rebuilt before they count (quorum=off).
    pub consistent: bool,
    /// Reserve the whole data file now (a thick replica), rather than as data is written.
    pub thick: bool,
}

/// Creates `replicas_dir/<volume>/` with a sparse `data` file of the volume's size (nothing is
/// allocated; for a thick replica all of it is, and an empty `thick` file says so) and its `meta`, all durable before the directory appears under its name. Refuses
/// (AlreadyExists) if the volume already has storage: existing storage is never overwritten.
pub fn create_replica(replicas_dir: &Path, replica: &NewReplica) -> io::Result<PathBuf> {
    let target = replicas_dir.join(&replica.volume);
    if fs::symlink_metadata(&target).is_ok() {
        return Err(io::Error::new(
            io::ErrorKind::AlreadyExists,
            format!("{} already exists", target.display()),
        ));
    }
    let staging = replicas_dir.join(format!("{CREATING_PREFIX}{}", replica.volume));
    if fs::symlink_metadata(&staging).is_ok() {
        // A creation that stopped half-way; it was never published.
        fs::remove_dir_all(&staging)?;
    }
    fs::create_dir(&staging)?;
    let data = File::create(staging.join(DATA_FILE))?;
    data.set_len(replica.geometry.size_bytes)?;
    if replica.thick {
        let length = i64::try_from(replica.geometry.size_bytes)
            .map_err(|_| io::Error::new(io::ErrorKind::InvalidInput, "the volume is too large"))?;
        let empty = nix::fcntl::FallocateFlags::empty();
        nix::fcntl::fallocate(data.as_raw_fd(), empty, 0, length).map_err(io::Error::from)?;
        File::create(staging.join(THICK_FILE))?.sync_all()?;
    }
    data.sync_all()?;
    drop(data);
    let meta = ReplicaMeta::new(
        replica.replica,
        replica.incarnation,
        replica.geometry,
        replica.consistent,
    );
    write_meta(&staging, &meta)?;
    fs::rename(&staging, &target)?;
    sync_dir(replicas_dir)?;
    Ok(target)
}

/// Removes `replicas_dir/<volume>/` (nothing if it is not there): first renamed out of the way
/// and made durable, so a crash in the middle of the removal never leaves a half-removed replica
/// under the volume's name.
pub fn remove_replica(replicas_dir: &Path, volume: &str) -> io::Result<()> {
    let target = replicas_dir.join(volume);
    if fs::symlink_metadata(&target).is_err() {
        return Ok(());
    }
    let doomed = replicas_dir.join(format!("{DELETING_PREFIX}{volume}"));
    if fs::symlink_metadata(&doomed).is_ok() {
        fs::remove_dir_all(&doomed)?;
    }
    fs::rename(&target, &doomed)?;
    sync_dir(replicas_dir)?;
    fs::remove_dir_all(&doomed)?;
    sync_dir(replicas_dir)
}

/// The volumes with storage under `replicas_dir`, sorted (dot-directories are not replicas).
pub fn list_replicas(replicas_dir: &Path) -> io::Result<Vec<String>> {
    let mut volumes = Vec::new();
    let entries = match fs::read_dir(replicas_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(volumes),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let Some(name) = entry.file_name().to_str().map(str::to_string) else {
            continue;
        };
        if name.starts_with('.') {
            continue;
        }
        if entry.file_type()?.is_dir() {
            volumes.push(name);
        }
    }
    volumes.sort();
    Ok(volumes)
}

/// Removes what an interrupted creation or removal left (`.creating-*`, `.deleting-*`), and
/// returns the paths removed.
pub fn clean_transient_dirs(replicas_dir: &Path) -> io::Result<Vec<PathBuf>> {
    let mut removed = Vec::new();
    let entries = match fs::read_dir(replicas_dir) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(removed),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let entry = entry?;
        let name = entry.file_name();
        let Some(name) = name.to_str() else { continue };
        if name.starts_with(CREATING_PREFIX) || name.starts_with(DELETING_PREFIX) {
            let path = entry.path();
            if entry.file_type()?.is_dir() {
                fs::remove_dir_all(&path)?;
            } else {
                fs::remove_file(&path)?;
            }
            removed.push(path);
        }
    }
    if !removed.is_empty() {
        sync_dir(replicas_dir)?;
    }
    Ok(removed)
}

/// The space `path` really takes on disk (for a directory, everything under it): the sum of
/// `st_blocks * 512`, so a sparse file counts only what was written. Symbolic links are not
/// followed; entries that vanish while being counted are skipped.
pub fn allocated_bytes(path: &Path) -> io::Result<u64> {
    match fs::symlink_metadata(path) {
        Ok(metadata) => allocated_under(path, &metadata),
        Err(error) if error.kind() == io::ErrorKind::NotFound => Ok(0),
        Err(error) => Err(error),
    }
}

/// [`allocated_bytes`] of `path`, whose metadata is `metadata`. Entries are looked at relative
/// to their directory (`fstatat`), not by walking their whole path again: a pool of a thousand
/// replicas is measured every few seconds.
fn allocated_under(path: &Path, metadata: &fs::Metadata) -> io::Result<u64> {
    use std::os::unix::fs::MetadataExt;
    let mut total = metadata.blocks().saturating_mul(512);
    if !metadata.is_dir() {
        return Ok(total);
    }
    let entries = match fs::read_dir(path) {
        Ok(entries) => entries,
        Err(error) if error.kind() == io::ErrorKind::NotFound => return Ok(0),
        Err(error) => return Err(error),
    };
    for entry in entries {
        let found = entry.and_then(|entry| Ok((entry.metadata()?, entry)));
        let (metadata, entry) = match found {
            Ok(found) => found,
            Err(error) if error.kind() == io::ErrorKind::NotFound => continue,
            Err(error) => return Err(error),
        };
        let bytes = if metadata.is_dir() {
            allocated_under(&entry.path(), &metadata)?
        } else {
            metadata.blocks().saturating_mul(512)
        };
        total = total.saturating_add(bytes);
    }
    Ok(total)
}

/// The geometry of a volume of `capacity` bytes: `block_size` (cStor's 4K when unset), the
/// size rounded up to whole blocks (a "1G" volume is not a multiple of 4 KiB; like LVM rounding
/// to extents, the volume gets the few bytes more), and regions of at least 1 MiB, doubled until
/// the volume has at most [`REGIONS_MAX`] of them (up to 2 GiB regions). Every replica of a volume computes the same
/// geometry from the same capacity, and a target must use this function too.
pub fn geometry_for(capacity: u64, block_size: Option<u32>) -> Result<Geometry, GeometryError> {
    let block_size = block_size.unwrap_or(BLOCK_SIZE_DEFAULT);
    if !block_size.is_power_of_two() || !(512..=REGION_SIZE_MIN).contains(&block_size) {
        return Err(GeometryError::UnsupportedBlockSize(block_size));
    }
    if capacity == 0 {
        return Err(GeometryError::ZeroCapacity);
    }
    let block = u64::from(block_size);
    let size_bytes = capacity
        .div_ceil(block)
        .checked_mul(block)
        .ok_or(GeometryError::CapacityTooLarge(capacity))?;
    let mut region_size = REGION_SIZE_MIN;
    while size_bytes.div_ceil(u64::from(region_size)) > REGIONS_MAX && region_size < REGION_SIZE_MAX
    {
        region_size *= 2;
    }
    let geometry = Geometry {
        size_bytes,
        block_size,
        region_size,
    };
    geometry.validate().map_err(GeometryError::Invalid)?;
    Ok(geometry)
}

/// Why [`geometry_for`] refused a volume's capacity or block size. The texts name the spec
/// fields they come from (the agent puts them in a CVR's status).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum GeometryError {
    #[error(
        "spec.blockSize {0} is not supported: use a power of two from 512 to {REGION_SIZE_MIN}"
    )]
    UnsupportedBlockSize(u32),
    #[error("spec.capacity is zero")]
    ZeroCapacity,
    #[error("spec.capacity {0} is too large")]
    CapacityTooLarge(u64),
    /// The geometry breaks a rule of [`Geometry::validate`] (too many regions).
    #[error("{0}")]
    Invalid(&'static str),
}

/// A stable replica id for a CVR whose `spec.replicaid` is empty: the 64-bit FNV-1a hash of its
/// uid (cStor hashes the uid with xxhash64; any stable hash serves, as the id is written back to
/// the CVR and stored in the replica's metadata).
pub fn replica_id_from_uid(uid: &str) -> ReplicaId {
    const OFFSET_BASIS: u64 = 0xcbf2_9ce4_8422_2325;
    const PRIME: u64 = 0x0000_0100_0000_01b3;
    let hash = uid.bytes().fold(OFFSET_BASIS, |hash, byte| {
        (hash ^ u64::from(byte)).wrapping_mul(PRIME)
    });
    ReplicaId(hash)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn geometry(size_bytes: u64) -> Geometry {
        geometry_for(size_bytes, None).expect("a valid geometry")
    }

    fn sample_meta() -> ReplicaMeta {
        let mut meta = ReplicaMeta::new(
            ReplicaId(12345),
            Incarnation(0xdead_beef_0bad_f00d),
            geometry(130 << 20),
            true,
        );
        meta.superblock.generation_seen = Generation(7);
        meta.superblock.stamp = Stamp::new(Generation(7), Seq(99));
        meta.superblock.sync_stamp = Stamp::new(Generation(6), Seq(50));
        meta.superblock.checkpoint = Seq(90);
        meta.region_seqs[0] = Seq(3);
        meta.region_seqs[129] = tandem_core::meta::SEQ_UNKNOWN;
        meta.activity_log.insert(0);
        meta.activity_log.insert(64);
        meta.activity_log.insert(129);
        meta
    }

    #[test]
    fn meta_round_trips() {
        let meta = sample_meta();
        let bytes = encode_meta(&meta).unwrap();
        assert_eq!(bytes.len() as u64, encoded_len(130));
        assert_eq!(&bytes[..8], b"TNDMRMET");
        assert_eq!(decode_meta(&bytes), Ok(meta));
    }

    #[test]
    fn every_flipped_byte_is_refused() {
        let bytes = encode_meta(&sample_meta()).unwrap();
        for index in 0..bytes.len() {
            for bit in [0x01u8, 0x80] {
                let mut corrupt = bytes.clone();
                corrupt[index] ^= bit;
                assert!(
                    decode_meta(&corrupt).is_err(),
                    "flipping bit {bit:#x} of byte {index} was accepted"
                );
            }
        }
    }

    #[test]
    fn truncated_and_extended_files_are_refused() {
        let bytes = encode_meta(&sample_meta()).unwrap();
        for len in 0..bytes.len() {
            assert!(decode_meta(&bytes[..len]).is_err(), "{len} bytes accepted");
        }
        let mut longer = bytes.clone();
        longer.push(0);
        assert!(matches!(
            decode_meta(&longer),
            Err(MetaDecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode_meta(&bytes[..bytes.len() - 8]),
            Err(MetaDecodeError::LengthMismatch { .. })
        ));
        assert!(matches!(
            decode_meta(&bytes[..5]),
            Err(MetaDecodeError::TooShort { .. })
        ));
    }

    /// Re-seals a hand-edited file so the check under test is not the checksum.
    fn reseal(bytes: &mut [u8]) {
        let body = bytes.len() - CRC_LEN;
        let crc = crc32c::crc32c(&bytes[..body]);
        bytes[body..].copy_from_slice(&crc.to_le_bytes());
    }

    #[test]
    fn each_check_names_what_is_wrong() {
        let good = encode_meta(&sample_meta()).unwrap();
        let edited = |offset: usize, value: &[u8]| {
            let mut bytes = good.clone();
            bytes[offset..offset + value.len()].copy_from_slice(value);
            reseal(&mut bytes);
            decode_meta(&bytes).unwrap_err().to_string()
        };
        assert!(edited(0, b"X").starts_with("bad magic"));
        assert_eq!(
            edited(8, &2u32.to_le_bytes()),
            "format version 2 is not supported (this agent reads version 1)"
        );
        assert_eq!(edited(12, &[1]), "reserved bytes at offset 12 are not zero");
        assert_eq!(
            edited(56, &[2]),
            "the consistent flag at offset 56 is 2, not 0 or 1"
        );
        assert!(edited(40, &1000u32.to_le_bytes()).contains("block size must be a power of two"));
        // 130 MiB volume with 2 MiB regions has 65 regions, not 130.
        assert_eq!(
            edited(44, &(2u32 << 20).to_le_bytes()),
            "the region count is 130 but the geometry has 65 regions"
        );
        // A bit past region 129 in the last activity-log word.
        let last_word = good.len() - CRC_LEN - 8;
        assert_eq!(
            edited(last_word, &[0, 0, 0, 0, 0, 0, 0, 0x80]),
            "the activity log has bits set past its 130 regions"
        );
        let mut flipped = good.clone();
        flipped[200] ^= 1;
        assert!(decode_meta(&flipped)
            .unwrap_err()
            .to_string()
            .starts_with("checksum mismatch"));
    }

    #[test]
    fn encode_refuses_parts_that_disagree_with_the_geometry() {
        let mut meta = sample_meta();
        meta.region_seqs.pop();
        assert_eq!(
            encode_meta(&meta),
            Err(MetaEncodeError::RegionMap {
                actual: 129,
                expected: 130
            })
        );
        let mut meta = sample_meta();
        meta.activity_log = RegionSet::new(3);
        assert!(matches!(
            encode_meta(&meta),
            Err(MetaEncodeError::ActivityLog { .. })
        ));
    }

    #[test]
    fn geometry_choices() {
        let gib = 1u64 << 30;
        let small = geometry(5 * gib);
        assert_eq!((small.block_size, small.region_size), (4096, 1 << 20));
        assert_eq!(small.region_count(), 5120);
        // 64 GiB is the largest volume with 1 MiB regions.
        assert_eq!(geometry(64 * gib).region_size, 1 << 20);
        assert_eq!(geometry(64 * gib + 4096).region_size, 2 << 20);
        let large = geometry(64 << 40);
        assert_eq!(
            (large.region_size, large.region_count()),
            (1 << 30, REGIONS_MAX)
        );
        let huge = geometry(1 << 50);
        assert_eq!((huge.region_size, huge.region_count()), (1 << 31, 1 << 19));
        // "1G" is rounded up to whole 4 KiB blocks.
        let decimal = geometry(1_000_000_000);
        assert_eq!(decimal.size_bytes, 1_000_001_536);
        assert_eq!(decimal.size_bytes % 4096, 0);
        assert_eq!(geometry_for(8192, Some(512)).unwrap().block_size, 512);
        assert!(geometry_for(0, None).is_err());
        assert_eq!(
            geometry_for(0, None).unwrap_err().to_string(),
            "spec.capacity is zero"
        );
        assert_eq!(
            geometry_for(4096, Some(1000)).unwrap_err().to_string(),
            "spec.blockSize 1000 is not supported: use a power of two from 512 to 1048576"
        );
        assert_eq!(
            geometry_for(u64::MAX, None).unwrap_err(),
            GeometryError::CapacityTooLarge(u64::MAX)
        );
        assert!(geometry_for(4096, Some(1000)).is_err());
        assert!(geometry_for(4096, Some(256)).is_err());
        assert!(geometry_for(u64::MAX, None).is_err());
        // Rounds up without overflow, but would need more than u32::MAX regions.
        assert!(geometry_for(u64::MAX - 8191, None)
            .unwrap_err()
            .to_string()
            .contains("too many regions"));
    }

    #[test]
    fn replica_ids_from_uids_are_stable() {
        // FNV-1a test vectors.
        assert_eq!(replica_id_from_uid(""), ReplicaId(0xcbf2_9ce4_8422_2325));
        assert_eq!(replica_id_from_uid("a"), ReplicaId(0xaf63_dc4c_8601_ec8c));
        assert_ne!(
            replica_id_from_uid("0b1c7d0e-1"),
            replica_id_from_uid("0b1c7d0e-2")
        );
    }

    fn new_replica(volume: &str, size: u64, consistent: bool) -> NewReplica {
        NewReplica {
            volume: volume.to_string(),
            replica: ReplicaId(42),
            incarnation: Incarnation(7),
            geometry: geometry(size),
            consistent,
            thick: false,
        }
    }

    #[test]
    fn create_read_and_remove_a_replica() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = dir.path().join("replicas");
        fs::create_dir(&replicas).unwrap();
        let path = create_replica(&replicas, &new_replica("pvc-1", 1 << 30, false)).unwrap();
        assert_eq!(path, replicas.join("pvc-1"));
        assert_eq!(fs::metadata(path.join(DATA_FILE)).unwrap().len(), 1 << 30);
        let meta = read_meta(&path.join(META_FILE)).unwrap();
        assert_eq!(
            meta,
            ReplicaMeta::new(ReplicaId(42), Incarnation(7), geometry(1 << 30), false)
        );
        assert_eq!(list_replicas(&replicas).unwrap(), vec!["pvc-1".to_string()]);
        // Never over existing storage.
        let again = create_replica(&replicas, &new_replica("pvc-1", 1 << 20, true));
        assert_eq!(again.unwrap_err().kind(), io::ErrorKind::AlreadyExists);
        assert_eq!(read_meta(&path.join(META_FILE)).unwrap(), meta);
        remove_replica(&replicas, "pvc-1").unwrap();
        assert!(!path.exists());
        assert!(list_replicas(&replicas).unwrap().is_empty());
        assert_eq!(fs::read_dir(&replicas).unwrap().count(), 0);
        remove_replica(&replicas, "pvc-1").unwrap();
    }

    #[test]
    fn leftovers_of_interrupted_operations_are_not_replicas() {
        let dir = tempfile::tempdir().unwrap();
        let replicas = dir.path();
        fs::create_dir(replicas.join(".creating-pvc-1")).unwrap();
        fs::write(replicas.join(".creating-pvc-1").join(DATA_FILE), b"x").unwrap();
        fs::create_dir(replicas.join(".deleting-pvc-2")).unwrap();
        fs::create_dir(replicas.join("pvc-3")).unwrap();
        fs::write(replicas.join("stray-file"), b"x").unwrap();
        assert_eq!(list_replicas(replicas).unwrap(), vec!["pvc-3".to_string()]);
        // A new creation of the same volume replaces the half-made one.
        create_replica(replicas, &new_replica("pvc-1", 1 << 20, true)).unwrap();
        assert!(!replicas.join(".creating-pvc-1").exists());
        let removed = clean_transient_dirs(replicas).unwrap();
        assert_eq!(removed, vec![replicas.join(".deleting-pvc-2")]);
        assert_eq!(
            list_replicas(replicas).unwrap(),
            vec!["pvc-1".to_string(), "pvc-3".to_string()]
        );
        assert!(replicas.join("stray-file").exists());
    }

    #[test]
    fn atomic_write_replaces_whole_files_and_leaves_no_temporary() {
        let dir = tempfile::tempdir().unwrap();
        write_file_atomic(dir.path(), "pool.json", b"first").unwrap();
        write_file_atomic(dir.path(), "pool.json", b"second, longer").unwrap();
        assert_eq!(
            fs::read(dir.path().join("pool.json")).unwrap(),
            b"second, longer"
        );
        let names: Vec<_> = fs::read_dir(dir.path())
            .unwrap()
            .map(|entry| entry.unwrap().file_name())
            .collect();
        assert_eq!(names, vec![std::ffi::OsString::from("pool.json")]);
        // A leftover temporary from a crash does not get in the way.
        fs::write(dir.path().join(".pool.json.tmp"), b"torn").unwrap();
        write_file_atomic(dir.path(), "pool.json", b"third").unwrap();
        assert_eq!(fs::read(dir.path().join("pool.json")).unwrap(), b"third");
        assert!(!dir.path().join(".pool.json.tmp").exists());
    }

    #[test]
    fn a_corrupt_meta_file_is_reported_with_its_path() {
        let dir = tempfile::tempdir().unwrap();
        let path = create_replica(dir.path(), &new_replica("pvc-1", 1 << 20, true)).unwrap();
        let meta = path.join(META_FILE);
        let mut bytes = fs::read(&meta).unwrap();
        bytes[30] ^= 0x10;
        fs::write(&meta, &bytes).unwrap();
        let message = read_meta(&meta).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!(
                "{} is not valid replica metadata: checksum mismatch",
                meta.display()
            )),
            "{message}"
        );
        fs::write(&meta, &bytes[..100]).unwrap();
        let message = read_meta(&meta).unwrap_err().to_string();
        assert!(message.contains("too short"), "{message}");
        fs::remove_file(&meta).unwrap();
        let message = read_meta(&meta).unwrap_err().to_string();
        assert!(
            message.starts_with(&format!("cannot read {}", meta.display())),
            "{message}"
        );
    }

    #[test]
    fn sparse_files_allocate_nothing_until_written() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("data");
        let file = File::create(&path).unwrap();
        file.set_len(1 << 30).unwrap();
        drop(file);
        let empty = allocated_bytes(&path).unwrap();
        assert!(
            empty < 64 << 10,
            "a 1 GiB sparse file allocates {empty} bytes"
        );
        let mut file = OpenOptions::new().write(true).open(&path).unwrap();
        let chunk = vec![0x5au8; 1 << 20];
        for _ in 0..4 {
            file.write_all(&chunk).unwrap();
        }
        file.sync_all().unwrap();
        let written = allocated_bytes(&path).unwrap();
        assert!(
            (4 << 20..=5 << 20).contains(&written),
            "4 MiB written allocates {written} bytes"
        );
        // A directory counts everything under it.
        fs::create_dir(dir.path().join("sub")).unwrap();
        fs::write(dir.path().join("sub").join("x"), vec![1u8; 8192]).unwrap();
        let total = allocated_bytes(dir.path()).unwrap();
        assert!(total >= written + 8192, "{total} < {written} + 8192");
        assert_eq!(allocated_bytes(&dir.path().join("missing")).unwrap(), 0);
    }

    mod properties {
        use super::*;
        use proptest::prelude::*;

        fn any_meta() -> impl Strategy<Value = ReplicaMeta> {
            (
                1u64..(300u64 << 20),
                prop_oneof![Just(512u32), Just(4096u32), Just(65536u32)],
                any::<(u64, u64, u64, bool)>(),
                any::<(u64, u64, u64, u64, u64)>(),
                proptest::collection::vec(any::<u64>(), 0..8),
            )
                .prop_map(|(size, block, ids, stamps, seqs)| {
                    let geometry = geometry_for(size, Some(block)).expect("valid");
                    let (replica, incarnation, generation, consistent) = ids;
                    let mut meta = ReplicaMeta::new(
                        ReplicaId(replica),
                        Incarnation(incarnation),
                        geometry,
                        consistent,
                    );
                    meta.superblock.generation_seen = Generation(generation);
                    meta.superblock.stamp = Stamp::new(Generation(stamps.0), Seq(stamps.1));
                    meta.superblock.sync_stamp = Stamp::new(Generation(stamps.2), Seq(stamps.3));
                    meta.superblock.checkpoint = Seq(stamps.4);
                    let regions = meta.region_seqs.len() as u64;
                    for seq in seqs {
                        let region = (seq % regions) as u32;
                        meta.region_seqs[region as usize] = Seq(seq);
                        meta.activity_log.insert(region);
                    }
                    meta
                })
        }

        proptest! {
            #[test]
            fn round_trip(meta in any_meta()) {
                let bytes = encode_meta(&meta).unwrap();
                prop_assert_eq!(decode_meta(&bytes), Ok(meta));
            }

            #[test]
            fn corruption_is_refused(meta in any_meta(), index in any::<usize>(), bit in 0u8..8) {
                let mut bytes = encode_meta(&meta).unwrap();
                let index = index % bytes.len();
                bytes[index] ^= 1 << bit;
                prop_assert!(decode_meta(&bytes).is_err());
            }

            #[test]
            fn garbage_never_panics(bytes in proptest::collection::vec(any::<u8>(), 0..400)) {
                let _ = decode_meta(&bytes);
            }
        }
    }
}
