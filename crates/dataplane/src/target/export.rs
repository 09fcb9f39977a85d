//! A volume's target as a block device ([`BlockDevice`], served by a frontend: NBD today): the
//! frontend's calls become client requests to the target. Every connection to the volume goes
//! through the one target, which orders all of them in the volume's sequence; a flush covers
//! every write completed before it, whichever connection sent it, so multi-conn is safe to
//! advertise. Block status (NBD's `base:allocation`) asks one Healthy replica which blocks its
//! storage holds, after every write acknowledged before the request: a hole is never reported
//! where written data lies.

use bytes::Bytes;
use tandem_block::{BlockDevice, ExportInfo, Extent, IoError};
use tandem_core::ClientError;

use super::{RequestError, TargetHandle};
use crate::replica::ALLOCATION_LEN_MAX;

/// The largest single read or write the export accepts (the NBD server splits nothing; clients
/// honour it).
const MAX_REQUEST: u32 = 4 << 20;

/// Zeroes written for WRITE_ZEROES with NO_HOLE, at most this many bytes at a time.
const ZERO_CHUNK: u32 = 1 << 20;

fn device_error(error: RequestError) -> IoError {
    match error {
        RequestError::Target(ClientError::OutOfRange) => IoError::Invalid,
        // The outcome is unknown; the client sees an I/O error, as with a failed disk.
        RequestError::Target(ClientError::TimedOut) => IoError::Io,
        // A newer target serves the volume: tell the client to reconnect.
        RequestError::Target(ClientError::Fenced) | RequestError::Stopped => IoError::Shutdown,
    }
}

impl BlockDevice for TargetHandle {
    fn info(&self) -> ExportInfo {
        let geometry = self.geometry();
        let mut info = ExportInfo::new(geometry.size_bytes);
        info.description = "Tandem replicated volume".to_string();
        info.min_block = geometry.block_size;
        info.preferred_block = geometry.block_size.max(4096);
        info.max_block = MAX_REQUEST;
        info.can_flush = true;
        info.can_fua = true;
        info.can_trim = true;
        info.can_write_zeroes = true;
        info.can_multi_conn = true;
        info.can_block_status = true;
        info
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        TargetHandle::read(self, offset, u64::from(len))
            .await
            .map_err(device_error)
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        TargetHandle::write(self, offset, data, fua)
            .await
            .map_err(device_error)
    }

    async fn flush(&self) -> Result<(), IoError> {
        TargetHandle::flush(self).await.map_err(device_error)
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        TargetHandle::trim(self, offset, u64::from(len))
            .await
            .map_err(device_error)?;
        if fua {
            TargetHandle::flush(self).await.map_err(device_error)?;
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
        if !no_hole {
            // The core's trim zeroes the range (replicas punch holes).
            return BlockDevice::trim(self, offset, len, fua).await;
        }
        let mut done = 0u32;
        while done < len {
            let chunk = (len - done).min(ZERO_CHUNK);
            let zeroes = Bytes::from(vec![0u8; chunk as usize]);
            TargetHandle::write(self, offset + u64::from(done), zeroes, fua)
                .await
                .map_err(device_error)?;
            done += chunk;
        }
        Ok(())
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        // Describing less than asked is allowed: the client asks again from where it stopped.
        let len = u64::from(len).min(ALLOCATION_LEN_MAX);
        let extents = TargetHandle::allocation(self, offset, len)
            .await
            .map_err(device_error)?;
        Ok(extents
            .into_iter()
            .map(|extent| {
                // Each extent is at most ALLOCATION_LEN_MAX long, well within a u32.
                let length = u32::try_from(extent.len).unwrap_or(u32::MAX);
                if extent.allocated {
                    Extent::data(length)
                } else {
                    Extent::hole(length)
                }
            })
            .collect())
    }
}
