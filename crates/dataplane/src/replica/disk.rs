//! A replica's storage on real files: executes the core's [`DiskOp`]s on `<dir>/data` and
//! `<dir>/meta` (the format in [`super::storage`]).
//!
//! Every operation is a blocking system call, run on tokio's blocking pool
//! ([`ReplicaDisk::execute`]) so the async threads never wait for a disk. The core only issues
//! operations that may run together (non-overlapping data operations, at most one metadata
//! write, barriers alone), so several may be in flight at once and complete in any order: data
//! operations are positional (`pread`/`pwrite` on one shared descriptor), and metadata writes
//! are serialised by a lock on the in-memory copy.
//!
//! * Write: `pwrite`. Read: `pread`; what lies past the end of the file reads as zeros.
//! * Allocation: `SEEK_DATA` / `SEEK_HOLE`, in whole blocks (a partly allocated block is data).
//! * Trim: `fallocate(PUNCH_HOLE | KEEP_SIZE)` (`ZERO_RANGE` for a thick replica, whose space
//!   stays reserved), or writing zeros where the file system cannot.
//! * Sync: `fdatasync` of the data file.
//! * PersistMeta: the update is applied to the in-memory [`ReplicaMeta`] and the whole of it is
//!   written atomically (temporary file, fsync, rename, fsync of the directory).
//!
//! A full pool (the agent measured its size reached: [`ReplicaDisk::open_in_pool`]'s flag)
//! refuses writes as "no space", as a full file system would; trims, syncs and metadata writes
//! go on (they free space or need next to none), and so do a thick replica's writes (its space
//! was reserved when it was created: the `thick` file in its directory says so).
//!
//! A full pool's refusal changes nothing and is "no space" for the core (the target may then
//! void the write on every replica and answer ENOSPC); OS errors, `ENOSPC` included (a write
//! may have landed in part), are device errors. Both are logged with the replica, the operation
//! and the error. The data file is
//! locked (`flock`, exclusive) while open, so two hosts never serve the same storage.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{Flock, FlockArg};
use nix::unistd::{lseek, Whence};
use tandem_core::{
    Completion, DiskOp, DiskOpId, Extent, Geometry, IoFailure, ReplicaId, ReplicaInput, ReplicaMeta,
};

use super::storage::{self, MetaReadError, DATA_FILE, META_FILE, THICK_FILE};

/// The longest read the disk serves: its answer must fit in one wire frame (with room for the
/// message's other fields). Longer reads are refused as out of range.
pub const READ_LEN_MAX: u64 = tandem_wire::MAX_PAYLOAD_LEN as u64 - 64;

/// The longest range an allocation query may describe: its extents must fit in one wire frame
/// however fragmented the file (9 bytes per extent, one extent per 4 KiB block at worst).
pub const ALLOCATION_LEN_MAX: u64 = 256 << 20;

/// Zeros are written in chunks of this size where holes cannot be punched.
const ZERO_CHUNK: usize = 1 << 20;

/// Why a replica's storage could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum DiskOpenError {
    #[error(transparent)]
    Meta(#[from] MetaReadError),
    #[error("cannot open {}: {source}", path.display())]
    Data { path: PathBuf, source: io::Error },
    #[error(
        "{} is {actual} bytes but the replica's volume is {expected} bytes",
        path.display()
    )]
    DataSize {
        path: PathBuf,
        actual: u64,
        expected: u64,
    },
    #[error("{} is in use by another replica host (it is locked)", path.display())]
    Locked { path: PathBuf },
}

/// The space a replica takes on disk, as `st_blocks * 512` (a sparse file counts only what was
/// written): its data file, and its whole directory (data, metadata, leftovers).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Allocation {
    pub data_bytes: u64,
    pub total_bytes: u64,
}

/// What a finished operation reports back to the core.
#[derive(Clone, Debug)]
pub struct DiskCompletion {
    pub id: DiskOpId,
    pub result: Result<Completion, IoFailure>,
}

impl From<DiskCompletion> for ReplicaInput {
    fn from(done: DiskCompletion) -> ReplicaInput {
        ReplicaInput::DiskDone {
            id: done.id,
            result: done.result,
        }
    }
}

/// One replica's open storage. Cheap to clone (the files are shared); the lock on the data file
/// is released when the last clone is dropped.
#[derive(Clone)]
pub struct ReplicaDisk {
    inner: Arc<Inner>,
}

struct Inner {
    dir: PathBuf,
    data: Flock<File>,
    replica: ReplicaId,
    geometry: Geometry,
    /// The metadata as last written (or attempted: see [`ReplicaDisk::persist_meta`]).
    meta: Mutex<ReplicaMeta>,
    /// What the replicas of its pool share.
    pool: Arc<PoolShared>,
    /// Its space was reserved when it was created (a thick replica): a full pool does not
    /// refuse its writes, and a trim zeroes without releasing space.
    thick: bool,
}

/// What the replicas of one pool share: whether the pool is full (writes then fail with "no
/// space"), and a count of the changes that may have changed its used space (so an idle pool
/// need not be measured again).
#[derive(Debug, Default)]
pub struct PoolShared {
    full: AtomicBool,
    changes: AtomicU64,
}

impl PoolShared {
    /// Marks the pool full or not; the previous mark.
    pub fn set_full(&self, full: bool) -> bool {
        self.full.swap(full, Ordering::Relaxed)
    }

    fn is_full(&self) -> bool {
        self.full.load(Ordering::Relaxed)
    }

    /// How many writes, trims and metadata writes its replicas have made so far.
    pub fn changes(&self) -> u64 {
        self.changes.load(Ordering::Relaxed)
    }

    fn changed(&self) {
        self.changes.fetch_add(1, Ordering::Relaxed);
    }
}

impl ReplicaDisk {
    /// Opens the replica in `dir`: reads and checks `meta`, opens and locks `data` and checks
    /// its length against the geometry. Blocking.
    pub fn open(dir: &Path) -> Result<ReplicaDisk, DiskOpenError> {
        ReplicaDisk::open_in_pool(dir, Arc::default())
    }

    /// As [`ReplicaDisk::open`], in a pool whose `full` mark the pool's owner keeps up to date
    /// and whose change count this replica adds to.
    pub fn open_in_pool(dir: &Path, pool: Arc<PoolShared>) -> Result<ReplicaDisk, DiskOpenError> {
        let meta = storage::read_meta(&dir.join(META_FILE))?;
        let path = dir.join(DATA_FILE);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .open(&path)
            .map_err(|source| DiskOpenError::Data {
                path: path.clone(),
                source,
            })?;
        let data = match Flock::lock(file, FlockArg::LockExclusiveNonblock) {
            Ok(data) => data,
            Err((_, Errno::EWOULDBLOCK)) => return Err(DiskOpenError::Locked { path }),
            Err((_, errno)) => {
                return Err(DiskOpenError::Data {
                    path,
                    source: io::Error::from(errno),
                })
            }
        };
        let actual = data
            .metadata()
            .map_err(|source| DiskOpenError::Data {
                path: path.clone(),
                source,
            })?
            .len();
        let geometry = meta.superblock.geometry;
        if actual != geometry.size_bytes {
            return Err(DiskOpenError::DataSize {
                path,
                actual,
                expected: geometry.size_bytes,
            });
        }
        Ok(ReplicaDisk {
            inner: Arc::new(Inner {
                dir: dir.to_path_buf(),
                data,
                replica: meta.superblock.replica,
                geometry,
                meta: Mutex::new(meta),
                pool,
                thick: dir.join(THICK_FILE).exists(),
            }),
        })
    }

    pub fn dir(&self) -> &Path {
        &self.inner.dir
    }

    pub fn replica(&self) -> ReplicaId {
        self.inner.replica
    }

    pub fn geometry(&self) -> Geometry {
        self.inner.geometry
    }

    /// The metadata as last persisted: what [`tandem_core::Replica::open`] starts from.
    pub fn meta(&self) -> ReplicaMeta {
        self.lock_meta().clone()
    }

    fn lock_meta(&self) -> std::sync::MutexGuard<'_, ReplicaMeta> {
        // A panic while holding the lock cannot leave the copy half-updated in a way that
        // matters: it is replaced whole by `apply` before anything is written.
        self.inner
            .meta
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
    }

    /// Runs `op` on the blocking pool and reports its completion.
    pub async fn execute(&self, op: DiskOp) -> DiskCompletion {
        let id = op_id(&op);
        let disk = self.clone();
        match tokio::task::spawn_blocking(move || disk.execute_blocking(op)).await {
            Ok(done) => done,
            Err(error) => {
                tracing::error!(replica = self.inner.replica.0, op = id.0, %error, "disk operation task failed");
                DiskCompletion {
                    id,
                    result: Err(IoFailure::Device),
                }
            }
        }
    }

    /// Runs `op` on this thread.
    pub fn execute_blocking(&self, op: DiskOp) -> DiskCompletion {
        let id = op_id(&op);
        let (kind, outcome) = match op {
            DiskOp::Write {
                offset, ref data, ..
            } => ("write", self.write(offset, data).map(|()| Completion::Done)),
            DiskOp::Read { offset, len, .. } => {
                ("read", self.read(offset, len).map(Completion::Data))
            }
            DiskOp::Allocation { offset, len, .. } => (
                "allocation",
                self.extents(offset, len).map(Completion::Extents),
            ),
            DiskOp::Trim { offset, len, .. } => {
                ("trim", self.trim(offset, len).map(|()| Completion::Done))
            }
            DiskOp::Sync { .. } => ("sync", self.sync().map(|()| Completion::Done)),
            DiskOp::PersistMeta { ref update, .. } => (
                "persist-meta",
                self.persist_meta(|meta| meta.apply(update))
                    .map(|()| Completion::Done),
            ),
        };
        let result = outcome.map_err(|error| {
            let failure = error.failure();
            if matches!(error, OpError::PoolFull) {
                // Expected while the pool is full (the agent reports the pool, the target the
                // volume): not a warning per write.
                tracing::debug!(
                    replica = self.inner.replica.0,
                    op = kind,
                    "refused: the pool is full"
                );
                return failure;
            }
            tracing::warn!(
                replica = self.inner.replica.0,
                dir = %self.inner.dir.display(),
                op = kind,
                error = %error,
                failure = %failure,
                "disk operation failed"
            );
            failure
        });
        DiskCompletion { id, result }
    }

    fn check_range(&self, offset: u64, len: u64) -> Result<(), OpError> {
        if self.inner.geometry.contains_aligned(offset, len) {
            Ok(())
        } else {
            Err(OpError::OutOfRange { offset, len })
        }
    }

    /// Writes `data` at `offset` (not yet durable: see [`ReplicaDisk::sync`]).
    pub fn write(&self, offset: u64, data: &[u8]) -> Result<(), OpError> {
        self.check_range(offset, data.len() as u64)?;
        if self.inner.pool.is_full() && !self.inner.thick {
            return Err(OpError::PoolFull);
        }
        self.inner.pool.changed();
        self.inner.data.write_all_at(data, offset)?;
        Ok(())
    }

    /// Reads `len` bytes at `offset`; bytes past the end of the file read as zeros.
    pub fn read(&self, offset: u64, len: u64) -> Result<Bytes, OpError> {
        self.check_range(offset, len)?;
        if len > READ_LEN_MAX {
            return Err(OpError::OutOfRange { offset, len });
        }
        let len = usize::try_from(len).map_err(|_| OpError::OutOfRange { offset, len })?;
        let mut buffer = vec![0u8; len];
        let mut done = 0;
        while done < len {
            match self
                .inner
                .data
                .read_at(&mut buffer[done..], offset + done as u64)
            {
                Ok(0) => break, // End of file: the rest stays zero.
                Ok(read) => done += read,
                Err(error) if error.kind() == io::ErrorKind::Interrupted => {}
                Err(error) => return Err(error.into()),
            }
        }
        Ok(Bytes::from(buffer))
    }

    /// Which blocks of `[offset, offset + len)` hold data, as extents covering the range
    /// exactly. A block is a hole only if the file system reports all of it unallocated; where
    /// it cannot tell (no `SEEK_DATA`), everything is data.
    pub fn extents(&self, offset: u64, len: u64) -> Result<Vec<Extent>, OpError> {
        self.check_range(offset, len)?;
        if len > ALLOCATION_LEN_MAX {
            return Err(OpError::OutOfRange { offset, len });
        }
        let block = u64::from(self.inner.geometry.block_size);
        let end = offset + len;
        let fd = self.inner.data.as_raw_fd();
        let seek = |pos: u64, whence: Whence| -> Result<Option<u64>, OpError> {
            let start = i64::try_from(pos).map_err(|_| OpError::OutOfRange { offset, len })?;
            match lseek(fd, start, whence) {
                Ok(at) => Ok(Some(u64::try_from(at).unwrap_or(end))),
                // No data at or after `pos` (SEEK_DATA), or `pos` is past the end of the file.
                Err(Errno::ENXIO) => Ok(None),
                Err(errno) => Err(io::Error::from(errno).into()),
            }
        };
        let mut extents: Vec<Extent> = Vec::new();
        let mut push = |len: u64, allocated: bool| match extents.last_mut() {
            Some(last) if last.allocated == allocated => last.len += len,
            _ if len > 0 => extents.push(Extent { len, allocated }),
            _ => {}
        };
        let mut pos = offset;
        while pos < end {
            // Data starts at the block holding the next allocated byte.
            let data = match seek(pos, Whence::SeekData) {
                Ok(found) => found.map_or(end, |at| (at / block * block).clamp(pos, end)),
                Err(OpError::Io(error))
                    if matches!(
                        error.raw_os_error().map(Errno::from_raw),
                        Some(Errno::EINVAL | Errno::EOPNOTSUPP)
                    ) =>
                {
                    push(end - pos, true);
                    break;
                }
                Err(error) => return Err(error),
            };
            push(data - pos, false);
            if data >= end {
                break;
            }
            // ... and runs to the first whole block of the hole after it.
            let hole = seek(data, Whence::SeekHole)?
                .map_or(end, |at| at.div_ceil(block) * block)
                .clamp(data + block, end);
            push(hole - data, true);
            pos = hole;
        }
        Ok(extents)
    }

    /// Zeroes `[offset, offset + len)`, releasing its space where the file system can (a
    /// thick replica keeps it: the range stays allocated).
    pub fn trim(&self, offset: u64, len: u64) -> Result<(), OpError> {
        self.check_range(offset, len)?;
        let zeroing = if self.inner.thick {
            nix::fcntl::FallocateFlags::FALLOC_FL_ZERO_RANGE
        } else {
            nix::fcntl::FallocateFlags::FALLOC_FL_PUNCH_HOLE
        };
        let flags = zeroing | nix::fcntl::FallocateFlags::FALLOC_FL_KEEP_SIZE;
        let (Ok(start), Ok(length)) = (i64::try_from(offset), i64::try_from(len)) else {
            return Err(OpError::OutOfRange { offset, len });
        };
        self.inner.pool.changed();
        match nix::fcntl::fallocate(self.inner.data.as_raw_fd(), flags, start, length) {
            Ok(()) => Ok(()),
            Err(Errno::EOPNOTSUPP | Errno::ENOSYS | Errno::EINVAL) => self.write_zeros(offset, len),
            Err(errno) => Err(io::Error::from(errno).into()),
        }
    }

    fn write_zeros(&self, offset: u64, len: u64) -> Result<(), OpError> {
        let zeros = vec![0u8; ZERO_CHUNK];
        let mut done = 0u64;
        while done < len {
            let chunk = (len - done).min(ZERO_CHUNK as u64) as usize;
            self.inner
                .data
                .write_all_at(&zeros[..chunk], offset + done)?;
            done += chunk as u64;
        }
        Ok(())
    }

    /// Makes every completed data write durable (`fdatasync`).
    pub fn sync(&self) -> Result<(), OpError> {
        self.inner.data.sync_data()?;
        Ok(())
    }

    /// Changes the metadata with `change` and writes the whole of it atomically. The change is
    /// kept in memory even if the write fails: the core has then stopped trusting this storage,
    /// and the next write carries everything (region-map entries only ever grow, so keeping
    /// them errs on the safe side).
    pub fn persist_meta(&self, change: impl FnOnce(&mut ReplicaMeta)) -> Result<(), OpError> {
        let mut meta = self.lock_meta();
        change(&mut meta);
        let bytes = storage::encode_meta(&meta)
            .map_err(|error| OpError::Io(io::Error::new(io::ErrorKind::InvalidData, error)))?;
        self.inner.pool.changed();
        storage::write_file_atomic(&self.inner.dir, META_FILE, &bytes)?;
        Ok(())
    }

    /// The space the replica takes (a few `stat` calls: blocking, but cheap).
    pub fn allocation(&self) -> io::Result<Allocation> {
        use std::os::unix::fs::MetadataExt;
        let data_bytes = self.inner.data.metadata()?.blocks().saturating_mul(512);
        let total_bytes = storage::allocated_bytes(&self.inner.dir)?;
        Ok(Allocation {
            data_bytes,
            total_bytes: total_bytes.max(data_bytes),
        })
    }
}

fn op_id(op: &DiskOp) -> DiskOpId {
    match op {
        DiskOp::Write { id, .. }
        | DiskOp::Read { id, .. }
        | DiskOp::Allocation { id, .. }
        | DiskOp::Trim { id, .. }
        | DiskOp::Sync { id }
        | DiskOp::PersistMeta { id, .. } => *id,
    }
}

/// Why one disk operation failed.
#[derive(Debug, thiserror::Error)]
pub enum OpError {
    #[error("{len} bytes at offset {offset} are outside the volume, misaligned or too long")]
    OutOfRange { offset: u64, len: u64 },
    #[error("the pool is full: its size is reached")]
    PoolFull,
    #[error(transparent)]
    Io(#[from] io::Error),
}

impl OpError {
    /// What the core and the target are told. Only a full pool's refusal is "no space": it
    /// changed nothing, so the target may void the write everywhere. A file system that runs
    /// out of space (`ENOSPC`, `EDQUOT`) may have written part of the range first: that is a
    /// device failure, and the replica is resynced once it can be written again.
    pub fn failure(&self) -> IoFailure {
        match self {
            OpError::OutOfRange { .. } => IoFailure::OutOfRange,
            OpError::PoolFull => IoFailure::NoSpace,
            OpError::Io(_) => IoFailure::Device,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::replica::storage::{create_replica, geometry_for, NewReplica};
    use tandem_core::meta::MetaUpdate;
    use tandem_core::{Generation, Incarnation, Seq, Stamp, WriteOrigin};

    fn replica_dir(size: u64) -> (tempfile::TempDir, PathBuf) {
        let parent = tempfile::tempdir().unwrap();
        let dir = create_replica(
            parent.path(),
            &NewReplica {
                volume: "pvc-1".to_string(),
                replica: ReplicaId(7),
                incarnation: Incarnation(9),
                geometry: geometry_for(size, None).unwrap(),
                consistent: true,
                thick: false,
            },
        )
        .unwrap();
        (parent, dir)
    }

    fn run(disk: &ReplicaDisk, op: DiskOp) -> Result<Completion, IoFailure> {
        disk.execute_blocking(op).result
    }

    #[test]
    fn writes_read_back_and_unwritten_space_reads_as_zeros() {
        let (_parent, dir) = replica_dir(8 << 20);
        let disk = ReplicaDisk::open(&dir).unwrap();
        let data = Bytes::from(vec![0xabu8; 8192]);
        let write = DiskOp::Write {
            id: DiskOpId(1),
            offset: 4096,
            data: data.clone(),
            origin: WriteOrigin::Client,
        };
        assert_eq!(run(&disk, write), Ok(Completion::Done));
        let read = run(
            &disk,
            DiskOp::Read {
                id: DiskOpId(2),
                offset: 0,
                len: 16384,
            },
        );
        let Ok(Completion::Data(read)) = read else {
            panic!("{read:?}");
        };
        assert_eq!(&read[..4096], &[0u8; 4096][..]);
        assert_eq!(&read[4096..12288], &data[..]);
        assert_eq!(&read[12288..], &[0u8; 4096][..]);
        assert_eq!(
            run(&disk, DiskOp::Sync { id: DiskOpId(3) }),
            Ok(Completion::Done)
        );
        // The bytes are in the file at their offset.
        let file = std::fs::read(dir.join(DATA_FILE)).unwrap();
        assert_eq!(&file[4096..12288], &data[..]);
    }

    #[test]
    fn reads_past_the_end_of_a_short_file_are_zeros() {
        let (_parent, dir) = replica_dir(1 << 20);
        let disk = ReplicaDisk::open(&dir).unwrap();
        disk.write(0, &[1u8; 4096]).unwrap();
        // Only this test shortens the file under an open disk, to see the zero fill.
        disk.inner.data.set_len(2048).unwrap();
        let read = disk.read(0, 8192).unwrap();
        assert_eq!(&read[..2048], &[1u8; 2048][..]);
        assert!(read[2048..].iter().all(|&byte| byte == 0));
    }

    #[test]
    fn writes_trims_and_metadata_writes_count_as_pool_changes_and_reads_do_not() {
        let (_parent, dir) = replica_dir(1 << 20);
        let pool = Arc::new(PoolShared::default());
        let disk = ReplicaDisk::open_in_pool(&dir, Arc::clone(&pool)).unwrap();
        disk.read(0, 4096).unwrap();
        disk.sync().unwrap();
        assert_eq!(pool.changes(), 0);
        disk.write(0, &[1u8; 4096]).unwrap();
        disk.trim(0, 4096).unwrap();
        disk.persist_meta(|_| {}).unwrap();
        assert_eq!(pool.changes(), 3);
        // A full pool refuses the write, which changes nothing.
        pool.set_full(true);
        assert!(disk.write(0, &[1u8; 4096]).is_err());
        assert_eq!(pool.changes(), 3);
    }

    /// A thick replica's space is reserved at creation, stays reserved through trims, and its
    /// writes go on when the pool is full (they need no new space).
    #[test]
    fn a_thick_replica_keeps_its_space_and_writes_in_a_full_pool() {
        let parent = tempfile::tempdir().unwrap();
        let dir = create_replica(
            parent.path(),
            &NewReplica {
                volume: "pvc-thick".to_string(),
                replica: ReplicaId(7),
                incarnation: Incarnation(9),
                geometry: geometry_for(8 << 20, None).unwrap(),
                consistent: true,
                thick: true,
            },
        )
        .unwrap();
        let pool = Arc::new(PoolShared::default());
        let disk = ReplicaDisk::open_in_pool(&dir, Arc::clone(&pool)).unwrap();
        let reserved = disk.allocation().unwrap();
        assert!(reserved.data_bytes >= 8 << 20, "{reserved:?}");
        disk.write(0, &[0x5au8; 4096]).unwrap();
        disk.trim(0, 4 << 20).unwrap();
        disk.sync().unwrap();
        let after = disk.allocation().unwrap();
        assert!(
            after.total_bytes >= 8 << 20,
            "a trim keeps the space: {after:?}"
        );
        assert_eq!(disk.read(0, 4096).unwrap(), vec![0u8; 4096], "and zeroes");
        pool.set_full(true);
        disk.write(4096, &[1u8; 4096]).unwrap();
        assert_eq!(disk.read(4096, 4096).unwrap(), vec![1u8; 4096]);
    }

    #[test]
    fn trim_punches_holes() {
        let (_parent, dir) = replica_dir(8 << 20);
        let disk = ReplicaDisk::open(&dir).unwrap();
        disk.write(0, &vec![0x5au8; 4 << 20]).unwrap();
        disk.sync().unwrap();
        let before = disk.allocation().unwrap();
        assert!(before.data_bytes >= 4 << 20, "{before:?}");
        assert!(before.total_bytes >= before.data_bytes);
        let done = run(
            &disk,
            DiskOp::Trim {
                id: DiskOpId(1),
                offset: 1 << 20,
                len: 2 << 20,
            },
        );
        assert_eq!(done, Ok(Completion::Done));
        disk.sync().unwrap();
        let after = disk.allocation().unwrap();
        assert!(
            after.data_bytes <= before.data_bytes - (2 << 20),
            "{before:?} -> {after:?}"
        );
        let read = disk.read(0, 4 << 20).unwrap();
        assert!(read[..1 << 20].iter().all(|&byte| byte == 0x5a));
        assert!(read[1 << 20..3 << 20].iter().all(|&byte| byte == 0));
        assert!(read[3 << 20..].iter().all(|&byte| byte == 0x5a));
        assert_eq!(
            std::fs::metadata(dir.join(DATA_FILE)).unwrap().len(),
            8 << 20,
            "the size is kept"
        );
        // The fallback gives the same contents.
        disk.write_zeros(0, 4096).unwrap();
        assert!(disk.read(0, 4096).unwrap().iter().all(|&byte| byte == 0));
    }

    #[test]
    fn persisted_metadata_is_read_back_on_reopen() {
        let (_parent, dir) = replica_dir(8 << 20);
        let disk = ReplicaDisk::open(&dir).unwrap();
        let mut superblock = disk.meta().superblock;
        superblock.generation_seen = Generation(3);
        superblock.stamp = Stamp::new(Generation(3), Seq(10));
        superblock.checkpoint = Seq(8);
        let mut activity_log = disk.meta().activity_log;
        activity_log.insert(5);
        let update = MetaUpdate {
            superblock,
            region_changes: vec![(2, Seq(9)), (5, Seq(10))],
            activity_log,
        };
        let mut expected = disk.meta();
        expected.apply(&update);
        let op = DiskOp::PersistMeta {
            id: DiskOpId(1),
            update,
        };
        assert_eq!(run(&disk, op), Ok(Completion::Done));
        assert_eq!(disk.meta(), expected);
        // Locked while open.
        assert!(matches!(
            ReplicaDisk::open(&dir),
            Err(DiskOpenError::Locked { .. })
        ));
        drop(disk);
        let reopened = ReplicaDisk::open(&dir).unwrap();
        assert_eq!(reopened.meta(), expected);
        assert_eq!(storage::read_meta(&dir.join(META_FILE)).unwrap(), expected);
    }

    #[test]
    fn requests_outside_the_volume_are_refused() {
        let (_parent, dir) = replica_dir(1 << 20);
        let disk = ReplicaDisk::open(&dir).unwrap();
        let failure = Err(IoFailure::OutOfRange);
        let read = |offset, len| {
            run(
                &disk,
                DiskOp::Read {
                    id: DiskOpId(1),
                    offset,
                    len,
                },
            )
        };
        assert_eq!(read(1 << 20, 4096), failure);
        assert_eq!(read(100, 4096), failure);
        assert_eq!(read(0, 0), failure);
        assert_eq!(read(u64::MAX - 4095, 4096), failure);
        let trim = DiskOp::Trim {
            id: DiskOpId(2),
            offset: 0,
            len: 2 << 20,
        };
        assert_eq!(run(&disk, trim), failure);
        let write = DiskOp::Write {
            id: DiskOpId(3),
            offset: (1 << 20) - 4096,
            data: Bytes::from(vec![1u8; 8192]),
            origin: WriteOrigin::Resync,
        };
        assert_eq!(run(&disk, write), failure);
        assert_eq!(
            std::fs::metadata(dir.join(DATA_FILE)).unwrap().len(),
            1 << 20
        );
    }

    #[test]
    fn storage_that_does_not_match_its_metadata_is_refused() {
        let (_parent, dir) = replica_dir(1 << 20);
        std::fs::OpenOptions::new()
            .write(true)
            .open(dir.join(DATA_FILE))
            .unwrap()
            .set_len(4096)
            .unwrap();
        let error = ReplicaDisk::open(&dir).err().unwrap();
        assert!(matches!(error, DiskOpenError::DataSize { .. }), "{error}");
        std::fs::remove_file(dir.join(DATA_FILE)).unwrap();
        let error = ReplicaDisk::open(&dir).err().unwrap();
        assert!(error.to_string().starts_with("cannot open"), "{error}");
        std::fs::remove_file(dir.join(META_FILE)).unwrap();
        let error = ReplicaDisk::open(&dir).err().unwrap();
        assert!(matches!(error, DiskOpenError::Meta(_)), "{error}");
    }

    #[test]
    fn only_a_full_pools_refusal_is_no_space() {
        assert_eq!(OpError::PoolFull.failure(), IoFailure::NoSpace);
        // The file system filling up part way through a write may leave part of it written.
        for errno in [Errno::ENOSPC, Errno::EDQUOT, Errno::EIO] {
            let error = OpError::Io(io::Error::from_raw_os_error(errno as i32));
            assert_eq!(error.failure(), IoFailure::Device, "{errno}");
        }
        let range = OpError::OutOfRange { offset: 1, len: 2 };
        assert_eq!(range.failure(), IoFailure::OutOfRange);
    }

    #[test]
    fn allocation_reports_written_blocks_as_data_and_the_rest_as_holes() {
        let (_parent, dir) = replica_dir(8 << 20);
        let disk = ReplicaDisk::open(&dir).unwrap();
        let extents = |offset, len| match run(
            &disk,
            DiskOp::Allocation {
                id: DiskOpId(1),
                offset,
                len,
            },
        ) {
            Ok(Completion::Extents(extents)) => extents
                .iter()
                .map(|e| (e.len, e.allocated))
                .collect::<Vec<_>>(),
            other => panic!("{other:?}"),
        };
        assert_eq!(extents(0, 8 << 20), vec![(8 << 20, false)]);
        disk.write(1 << 20, &[7u8; 8192]).unwrap();
        disk.write(4 << 20, &[9u8; 4096]).unwrap();
        let all = extents(0, 8 << 20);
        assert_eq!(all.iter().map(|e| e.0).sum::<u64>(), 8 << 20, "{all:?}");
        // The file system allocates in its own blocks (4 KiB here): the written blocks are data,
        // every byte more than a block away from them is a hole.
        let data: Vec<_> = all.iter().filter(|e| e.1).collect();
        assert_eq!(data.len(), 2, "{all:?}");
        assert!(
            data.iter().all(|e| e.0 >= 4096 && e.0 <= 64 << 10),
            "{all:?}"
        );
        assert_eq!(extents(1 << 20, 8192), vec![(8192, true)]);
        assert_eq!(extents(2 << 20, 1 << 20), vec![(1 << 20, false)]);
        // A sub-range starting inside data.
        assert_eq!(extents((1 << 20) + 4096, 4096), vec![(4096, true)]);
        disk.trim(1 << 20, 8192).unwrap();
        assert_eq!(extents(1 << 20, 8192), vec![(8192, false)]);
        let (_parent, big) = replica_dir(1 << 30);
        let too_long = run(
            &ReplicaDisk::open(&big).unwrap(),
            DiskOp::Allocation {
                id: DiskOpId(2),
                offset: 0,
                len: ALLOCATION_LEN_MAX + 4096,
            },
        );
        assert_eq!(too_long, Err(IoFailure::OutOfRange));
    }

    #[tokio::test]
    async fn operations_run_off_the_async_threads_and_complete_in_any_order() {
        let (_parent, dir) = replica_dir(8 << 20);
        let disk = ReplicaDisk::open(&dir).unwrap();
        let mut tasks = tokio::task::JoinSet::new();
        for block in 0..32u64 {
            let disk = disk.clone();
            tasks.spawn(async move {
                disk.execute(DiskOp::Write {
                    id: DiskOpId(block),
                    offset: block * 4096,
                    data: Bytes::from(vec![block as u8; 4096]),
                    origin: WriteOrigin::Client,
                })
                .await
            });
        }
        let mut ids = Vec::new();
        while let Some(done) = tasks.join_next().await {
            let done = done.unwrap();
            assert_eq!(done.result, Ok(Completion::Done));
            ids.push(done.id.0);
        }
        ids.sort_unstable();
        assert_eq!(ids, (0..32).collect::<Vec<_>>());
        let done = disk
            .execute(DiskOp::Read {
                id: DiskOpId(99),
                offset: 0,
                len: 32 * 4096,
            })
            .await;
        let Ok(Completion::Data(data)) = done.result else {
            panic!("{:?}", done.result);
        };
        for block in 0..32usize {
            assert!(data[block * 4096..(block + 1) * 4096]
                .iter()
                .all(|&byte| byte == block as u8));
        }
    }
}
