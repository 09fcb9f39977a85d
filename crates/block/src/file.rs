//! [`FileDevice`]: a [`BlockDevice`] over a regular file.
//!
//! Reads and writes are `pread`/`pwrite` on a blocking thread; flush and FUA are `fdatasync`;
//! trim and write-zeroes punch holes (`fallocate(PUNCH_HOLE | KEEP_SIZE)`, or `ZERO_RANGE` when
//! the range must stay allocated) and fall back to writing zeroes where the file system cannot;
//! block status comes from `SEEK_DATA` / `SEEK_HOLE`. Every connection shares the one open file
//! and so the kernel's page cache: a flush on any connection covers writes completed on all of
//! them, which is why the device advertises multi-conn.

use std::fs::{File, OpenOptions};
use std::io;
use std::os::fd::AsRawFd;
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use bytes::Bytes;
use nix::errno::Errno;
use nix::fcntl::{fallocate, FallocateFlags};
use nix::unistd::{lseek, Whence};

use crate::{BlockDevice, ExportInfo, Extent, IoError, DEFAULT_MAX_BLOCK, MAX_DESCRIPTION_LEN};

/// The largest buffer of zeroes written at once by the write-zeroes fallback.
const ZERO_CHUNK: usize = 1 << 20;
/// The most extents one block status answer carries.
const MAX_EXTENTS: usize = 1024;

/// A block device backed by a regular file. The export's size is the file's size when opened.
#[derive(Debug, Clone)]
pub struct FileDevice {
    inner: Arc<Inner>,
    description: String,
}

#[derive(Debug)]
struct Inner {
    file: File,
    size: u64,
    read_only: bool,
    /// Cleared once the file system refuses `FALLOC_FL_PUNCH_HOLE`.
    punch_hole: AtomicBool,
    /// Cleared once the file system refuses `FALLOC_FL_ZERO_RANGE`.
    zero_range: AtomicBool,
}

impl FileDevice {
    /// Opens an existing file; its current length is the export's size.
    pub fn open(path: impl AsRef<Path>, read_only: bool) -> io::Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new().read(true).write(!read_only).open(path)?;
        let meta = file.metadata()?;
        if !meta.is_file() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidInput,
                "not a regular file",
            ));
        }
        Ok(Self::from_file(
            file,
            meta.len(),
            read_only,
            path.display().to_string(),
        ))
    }

    /// Creates (or truncates) a sparse file of `size` bytes and opens it read-write.
    pub fn create(path: impl AsRef<Path>, size: u64) -> io::Result<Self> {
        let path = path.as_ref();
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create(true)
            .truncate(true)
            .open(path)?;
        file.set_len(size)?;
        Ok(Self::from_file(
            file,
            size,
            false,
            path.display().to_string(),
        ))
    }

    fn from_file(file: File, size: u64, read_only: bool, description: String) -> Self {
        let mut description = description;
        if description.len() > MAX_DESCRIPTION_LEN || description.contains('\0') {
            description = String::from("file");
        }
        FileDevice {
            inner: Arc::new(Inner {
                file,
                size,
                read_only,
                punch_hole: AtomicBool::new(true),
                zero_range: AtomicBool::new(true),
            }),
            description,
        }
    }

    /// Replaces the description sent to clients (by default, the file's path).
    pub fn with_description(mut self, description: impl Into<String>) -> Self {
        self.description = description.into();
        self
    }

    /// The export's size in bytes.
    pub fn size(&self) -> u64 {
        self.inner.size
    }

    async fn blocking<T, F>(&self, f: F) -> Result<T, IoError>
    where
        T: Send + 'static,
        F: FnOnce(&Inner) -> Result<T, IoError> + Send + 'static,
    {
        let inner = Arc::clone(&self.inner);
        match tokio::task::spawn_blocking(move || f(&inner)).await {
            Ok(result) => result,
            Err(err) => {
                tracing::warn!(%err, "file device operation failed to run");
                Err(IoError::Io)
            }
        }
    }
}

fn os(err: io::Error) -> IoError {
    IoError::from_io(&err)
}

fn off(value: u64) -> Result<i64, IoError> {
    i64::try_from(value).map_err(|_| IoError::Invalid)
}

impl Inner {
    fn sync(&self) -> Result<(), IoError> {
        self.file.sync_data().map_err(os)
    }

    /// `fallocate` with `mode`, reporting `Ok(false)` (and remembering it in `flag`) when the
    /// file system does not support that mode.
    fn try_fallocate(
        &self,
        flag: &AtomicBool,
        mode: FallocateFlags,
        offset: u64,
        len: u32,
    ) -> Result<bool, IoError> {
        if !flag.load(Ordering::Relaxed) {
            return Ok(false);
        }
        match fallocate(self.file.as_raw_fd(), mode, off(offset)?, i64::from(len)) {
            Ok(()) => Ok(true),
            Err(Errno::EOPNOTSUPP | Errno::ENOSYS) => {
                flag.store(false, Ordering::Relaxed);
                Ok(false)
            }
            Err(errno) => Err(IoError::from_io(&io::Error::from(errno))),
        }
    }

    fn punch_hole(&self, offset: u64, len: u32) -> Result<bool, IoError> {
        let mode = FallocateFlags::FALLOC_FL_PUNCH_HOLE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        self.try_fallocate(&self.punch_hole, mode, offset, len)
    }

    fn zero_range(&self, offset: u64, len: u32) -> Result<bool, IoError> {
        let mode = FallocateFlags::FALLOC_FL_ZERO_RANGE | FallocateFlags::FALLOC_FL_KEEP_SIZE;
        self.try_fallocate(&self.zero_range, mode, offset, len)
    }

    fn write_zero_bytes(&self, offset: u64, len: u32) -> Result<(), IoError> {
        let zeroes = vec![0u8; (len as usize).min(ZERO_CHUNK)];
        let mut done = 0u64;
        while done < u64::from(len) {
            let n = (u64::from(len) - done).min(zeroes.len() as u64) as usize;
            self.file
                .write_all_at(&zeroes[..n], offset + done)
                .map_err(os)?;
            done += n as u64;
        }
        Ok(())
    }

    /// Extents of `[offset, offset + len)` from `SEEK_DATA` / `SEEK_HOLE`.
    fn extents(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        let end = (offset + u64::from(len)).min(self.size);
        let fd = self.file.as_raw_fd();
        let mut out = Vec::new();
        let mut pos = offset;
        while pos < end && out.len() < MAX_EXTENTS {
            let data = match lseek(fd, off(pos)?, Whence::SeekData) {
                Ok(at) => (at as u64).min(end),
                // No data at or after pos: the rest is a hole.
                Err(Errno::ENXIO) => end,
                // The file system cannot tell: report everything as data.
                Err(Errno::EINVAL | Errno::EOPNOTSUPP) => {
                    out.push(Extent::data((end - pos) as u32));
                    break;
                }
                Err(errno) => return Err(IoError::from_io(&io::Error::from(errno))),
            };
            if data > pos {
                out.push(Extent::hole((data - pos) as u32));
                pos = data;
                continue;
            }
            let hole = match lseek(fd, off(pos)?, Whence::SeekHole) {
                Ok(at) => (at as u64).min(end),
                Err(Errno::ENXIO) => end,
                Err(errno) => return Err(IoError::from_io(&io::Error::from(errno))),
            };
            // SEEK_HOLE at a data offset returns a later offset; guard against a file changed
            // underneath (truncated) so the loop always advances.
            let hole = if hole > pos { hole } else { end };
            out.push(Extent::data((hole - pos) as u32));
            pos = hole;
        }
        Ok(out)
    }
}

impl BlockDevice for FileDevice {
    fn info(&self) -> ExportInfo {
        ExportInfo {
            description: self.description.clone(),
            size: self.inner.size,
            read_only: self.inner.read_only,
            min_block: 1,
            preferred_block: 4096,
            max_block: DEFAULT_MAX_BLOCK,
            can_flush: true,
            can_fua: true,
            can_trim: true,
            can_write_zeroes: true,
            can_multi_conn: true,
            can_block_status: true,
        }
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        self.blocking(move |inner| {
            let mut buf = vec![0u8; len as usize];
            inner.file.read_exact_at(&mut buf, offset).map_err(os)?;
            Ok(Bytes::from(buf))
        })
        .await
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        self.blocking(move |inner| {
            inner.file.write_all_at(&data, offset).map_err(os)?;
            if fua {
                inner.sync()?;
            }
            Ok(())
        })
        .await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.blocking(|inner| inner.sync()).await
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        self.blocking(move |inner| {
            // Trim is a hint: where holes cannot be punched, leaving the data is correct.
            let punched = inner.punch_hole(offset, len)?;
            if punched && fua {
                inner.sync()?;
            }
            Ok(())
        })
        .await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError> {
        self.blocking(move |inner| {
            let done = if no_hole {
                inner.zero_range(offset, len)?
            } else {
                inner.punch_hole(offset, len)? || inner.zero_range(offset, len)?
            };
            if !done {
                inner.write_zero_bytes(offset, len)?;
            }
            if fua {
                inner.sync()?;
            }
            Ok(())
        })
        .await
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        self.blocking(move |inner| inner.extents(offset, len)).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn runtime() -> tokio::runtime::Runtime {
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime")
    }

    #[test]
    fn read_write_trim_zero_and_block_status() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("disk.img");
        let size = 8 << 20;
        let dev = FileDevice::create(&path, size).expect("create");
        let info = dev.info();
        assert_eq!(info.size, size);
        assert_eq!(info.validate(), Ok(()));
        runtime().block_on(async {
            // A new sparse file is one hole.
            let ext = dev.block_status(0, size as u32).await.expect("status");
            assert_eq!(ext, vec![Extent::hole(size as u32)]);

            let data = Bytes::from(vec![0xabu8; 1 << 20]);
            dev.write(1 << 20, data.clone(), true).await.expect("write");
            assert_eq!(dev.read(1 << 20, 1 << 20).await.expect("read"), data);
            let ext = dev.block_status(0, size as u32).await.expect("status");
            assert_eq!(
                ext,
                vec![
                    Extent::hole(1 << 20),
                    Extent::data(1 << 20),
                    Extent::hole((size - (2 << 20)) as u32)
                ]
            );
            // A range inside the data.
            let ext = dev
                .block_status((1 << 20) + 4096, 4096)
                .await
                .expect("status");
            assert_eq!(ext, vec![Extent::data(4096)]);

            // Trim punches the data out again.
            dev.trim(1 << 20, 1 << 20, false).await.expect("trim");
            let ext = dev.block_status(0, size as u32).await.expect("status");
            assert_eq!(ext, vec![Extent::hole(size as u32)]);
            assert!(dev
                .read(1 << 20, 4096)
                .await
                .expect("read")
                .iter()
                .all(|&b| b == 0));

            // Write zeroes reads back as zeroes; without NO_HOLE the range becomes a hole (how
            // SEEK_DATA reports a NO_HOLE range, zeroed with ZERO_RANGE, depends on the file
            // system).
            dev.write(0, Bytes::from(vec![1u8; 65536]), false)
                .await
                .expect("write");
            dev.write_zeroes(0, 65536, false, true).await.expect("zero");
            assert!(dev
                .read(0, 65536)
                .await
                .expect("read")
                .iter()
                .all(|&b| b == 0));
            dev.write_zeroes(0, 65536, true, false).await.expect("zero");
            assert!(dev
                .read(0, 65536)
                .await
                .expect("read")
                .iter()
                .all(|&b| b == 0));
            let ext = dev.block_status(0, 65536).await.expect("status");
            assert_eq!(ext, vec![Extent::hole(65536)]);

            // Unaligned zeroing keeps the neighbouring bytes.
            dev.write(0, Bytes::from(vec![7u8; 100]), false)
                .await
                .expect("write");
            dev.write_zeroes(10, 20, false, false).await.expect("zero");
            let got = dev.read(0, 100).await.expect("read");
            assert!(got[..10].iter().all(|&b| b == 7));
            assert!(got[10..30].iter().all(|&b| b == 0));
            assert!(got[30..].iter().all(|&b| b == 7));

            dev.flush().await.expect("flush");
            // Reading past the end of the file is an I/O error, not a panic.
            assert_eq!(dev.read(size - 10, 20).await, Err(IoError::Io));
        });
    }

    #[test]
    fn zero_fallback_writes_zeroes() {
        let dir = tempfile::tempdir().expect("tempdir");
        let dev = FileDevice::create(dir.path().join("d"), 3 << 20).expect("create");
        dev.inner.punch_hole.store(false, Ordering::Relaxed);
        dev.inner.zero_range.store(false, Ordering::Relaxed);
        runtime().block_on(async {
            dev.write(0, Bytes::from(vec![9u8; 3 << 20]), false)
                .await
                .expect("write");
            dev.write_zeroes(4096, (2 << 20) + 5, false, false)
                .await
                .expect("zero");
            let got = dev.read(0, 3 << 20).await.expect("read");
            assert!(got[..4096].iter().all(|&b| b == 9));
            assert!(got[4096..4096 + (2 << 20) + 5].iter().all(|&b| b == 0));
            assert!(got[4096 + (2 << 20) + 5..].iter().all(|&b| b == 9));
            // Trim without hole punching leaves data in place (it is only a hint).
            dev.trim(0, 4096, true).await.expect("trim");
        });
    }

    #[test]
    fn read_only_open() {
        let dir = tempfile::tempdir().expect("tempdir");
        let path = dir.path().join("ro");
        std::fs::write(&path, vec![5u8; 4096]).expect("write file");
        let dev = FileDevice::open(&path, true)
            .expect("open")
            .with_description("ro disk");
        let info = dev.info();
        assert!(info.read_only);
        assert_eq!(info.size, 4096);
        assert_eq!(info.description, "ro disk");
        assert!(FileDevice::open(dir.path(), false).is_err());
    }
}
