//! A volume's target as a block device ([`BlockDevice`], served by a frontend: NBD today): the
//! frontend's calls become client requests to the target. Every connection to the volume goes
//! through the one target, which orders all of them in the volume's sequence; a flush covers
//! every write completed before it, whichever connection sent it, so multi-conn is safe to
//! advertise. Block status (NBD's `base:allocation`) asks one Healthy replica which blocks its
//! storage holds, after every write acknowledged before the request: a hole is never reported
//! where written data lies.
//!
//! Clients may address any byte range (the export's minimum block is 1), while the core and the
//! replicas work in whole blocks. A read reads the blocks around the range and returns the part
//! asked for. A write that covers part of a block is a read-modify-write: under the lock of the
//! blocks it touches (every write, trim and zeroing holds one, see [`super::range_lock`]) it
//! reads the partial blocks, puts its bytes in, and writes the blocks back whole, so it is
//! atomic with respect to every other write and replicated identically like any other write.
//! WRITE_ZEROES zeroes exactly its range the same way; TRIM, only advisory, leaves the partial
//! blocks at its ends untouched.

use std::ops::Range;

use bytes::{Bytes, BytesMut};
use tandem_block::{BlockDevice, ExportInfo, Extent, IoError};
use tandem_core::ClientError;

use super::{RequestError, TargetHandle};
use crate::replica::ALLOCATION_LEN_MAX;

/// The largest single read or write the export accepts (the NBD server splits nothing; clients
/// honour it).
const MAX_REQUEST: u32 = 4 << 20;

/// Zeroes written for WRITE_ZEROES with NO_HOLE, at most this many bytes at a time.
const ZERO_CHUNK: u64 = 1 << 20;

fn device_error(error: RequestError) -> IoError {
    match error {
        RequestError::Target(ClientError::OutOfRange) => IoError::Invalid,
        // The outcome is unknown; the client sees an I/O error, as with a failed disk.
        RequestError::Target(ClientError::TimedOut) => IoError::Io,
        // Every Healthy replica's pool is full; the write changed nothing.
        RequestError::Target(ClientError::NoSpace) => IoError::NoSpace,
        // A newer target serves the volume: tell the client to reconnect.
        RequestError::Target(ClientError::Fenced) | RequestError::Stopped => IoError::Shutdown,
    }
}

/// The whole blocks of `block` bytes that cover `range` (which is not empty).
fn covering(block: u64, range: &Range<u64>) -> Range<u64> {
    range.start - range.start % block..range.end.div_ceil(block) * block
}

/// The whole blocks of `block` bytes inside `range`; empty (`start >= end`) when there are none.
fn inside(block: u64, range: &Range<u64>) -> Range<u64> {
    range.start.div_ceil(block) * block..range.end - range.end % block
}

/// A byte range cut at block boundaries: the partial block at its start, the whole blocks, the
/// partial block at its end (each `None` when empty). A range within one block is all `head`.
#[derive(Debug, PartialEq, Eq)]
struct Pieces {
    head: Option<Range<u64>>,
    whole: Option<Range<u64>>,
    tail: Option<Range<u64>>,
}

fn pieces(block: u64, range: &Range<u64>) -> Pieces {
    let whole = inside(block, range);
    if whole.start >= whole.end {
        let boundary = range.end - range.end % block;
        let (head, tail) = if boundary <= range.start || boundary == range.end {
            (range.clone(), None)
        } else {
            (range.start..boundary, Some(boundary..range.end))
        };
        return Pieces {
            head: Some(head),
            whole: None,
            tail,
        };
    }
    Pieces {
        head: (range.start < whole.start).then_some(range.start..whole.start),
        tail: (whole.end < range.end).then_some(whole.end..range.end),
        whole: Some(whole),
    }
}

/// Extents describing `asked`, cut from extents that describe `described` (which covers it).
fn clip(
    extents: Vec<tandem_core::Extent>,
    described: &Range<u64>,
    asked: &Range<u64>,
) -> Vec<Extent> {
    let mut clipped = Vec::new();
    let mut at = described.start;
    for extent in extents {
        let range = at.max(asked.start)..(at + extent.len).min(asked.end);
        at += extent.len;
        if range.start >= range.end {
            continue;
        }
        // Each extent is at most ALLOCATION_LEN_MAX long, well within a u32.
        let length = u32::try_from(range.end - range.start).unwrap_or(u32::MAX);
        clipped.push(if extent.allocated {
            Extent::data(length)
        } else {
            Extent::hole(length)
        });
    }
    clipped
}

impl TargetHandle {
    fn block(&self) -> u64 {
        u64::from(self.geometry().block_size)
    }

    /// Writes `data` at `offset`, reading and rewriting the blocks it covers only in part. The
    /// caller holds the lock of every block the range touches.
    async fn write_locked(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), RequestError> {
        let block = self.block();
        let range = offset..offset + data.len() as u64;
        let blocks = covering(block, &range);
        if blocks == range {
            return self.write(offset, data, fua).await;
        }
        // The bytes of the first and last blocks that stay as they are.
        let (kept_before, kept_after) = (range.start - blocks.start, blocks.end - range.end);
        let (first, last) = if blocks.end - blocks.start == block {
            let only = self.read(blocks.start, block).await?;
            (only.clone(), only)
        } else {
            let read_if = |needed: bool, at: u64| async move {
                if needed {
                    self.read(at, block).await
                } else {
                    Ok(Bytes::new())
                }
            };
            tokio::try_join!(
                read_if(kept_before > 0, blocks.start),
                read_if(kept_after > 0, blocks.end - block),
            )?
        };
        // The core answers a read with exactly the bytes asked for.
        let mut whole = BytesMut::with_capacity((blocks.end - blocks.start) as usize);
        whole.extend_from_slice(&first[..kept_before as usize]);
        whole.extend_from_slice(&data);
        whole.extend_from_slice(&last[last.len() - kept_after as usize..]);
        assert_eq!(
            whole.len() as u64,
            blocks.end - blocks.start,
            "a read-modify-write writes whole blocks"
        );
        self.write(blocks.start, whole.freeze(), fua).await
    }

    /// Zeroes `range` exactly: partial blocks by read-modify-write, whole ones by trimming
    /// (`no_hole`: by writing zeroes). The caller holds the lock of every block it touches.
    async fn zero_locked(
        &self,
        range: Range<u64>,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), RequestError> {
        let block = self.block();
        let Pieces { head, whole, tail } = pieces(block, &range);
        for partial in [head, tail].into_iter().flatten() {
            let zeroes = Bytes::from(vec![0u8; (partial.end - partial.start) as usize]);
            self.write_locked(partial.start, zeroes, fua).await?;
        }
        let Some(whole) = whole else {
            return Ok(());
        };
        if !no_hole {
            // The core's trim zeroes the range (replicas punch holes).
            self.trim(whole.start, whole.end - whole.start).await?;
            return if fua { self.flush().await } else { Ok(()) };
        }
        let mut at = whole.start;
        while at < whole.end {
            let chunk = (whole.end - at).min(ZERO_CHUNK);
            let zeroes = Bytes::from(vec![0u8; chunk as usize]);
            self.write(at, zeroes, fua).await?;
            at += chunk;
        }
        Ok(())
    }
}

impl BlockDevice for TargetHandle {
    fn info(&self) -> ExportInfo {
        let geometry = self.geometry();
        let mut info = ExportInfo::new(geometry.size_bytes);
        info.description = "Tandem replicated volume".to_string();
        // Any byte range is served (partial blocks by read-modify-write); whole blocks of at
        // least 4 KiB are what is efficient.
        info.min_block = 1;
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
        if len == 0 {
            return Ok(Bytes::new());
        }
        let range = offset..offset + u64::from(len);
        let blocks = covering(self.block(), &range);
        let data = TargetHandle::read(self, blocks.start, blocks.end - blocks.start)
            .await
            .map_err(device_error)?;
        let start = (range.start - blocks.start) as usize;
        Ok(data.slice(start..start + len as usize))
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        if data.is_empty() {
            return Ok(());
        }
        let range = offset..offset + data.len() as u64;
        let _locked = self.locks.lock(covering(self.block(), &range)).await;
        self.write_locked(offset, data, fua)
            .await
            .map_err(device_error)
    }

    async fn flush(&self) -> Result<(), IoError> {
        TargetHandle::flush(self).await.map_err(device_error)
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        let whole = inside(self.block(), &(offset..offset + u64::from(len)));
        if whole.start < whole.end {
            let _locked = self.locks.lock(whole.clone()).await;
            TargetHandle::trim(self, whole.start, whole.end - whole.start)
                .await
                .map_err(device_error)?;
        }
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
        if len == 0 {
            return Ok(());
        }
        let range = offset..offset + u64::from(len);
        let _locked = self.locks.lock(covering(self.block(), &range)).await;
        self.zero_locked(range, fua, no_hole)
            .await
            .map_err(device_error)
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        if len == 0 {
            return Ok(Vec::new());
        }
        // Describing less than asked is allowed: the client asks again from where it stopped.
        let asked = offset..offset + u64::from(len).min(ALLOCATION_LEN_MAX);
        let block = self.block();
        let mut described = covering(block, &asked);
        if described.end - described.start > ALLOCATION_LEN_MAX {
            described.end -= block;
        }
        let extents =
            TargetHandle::allocation(self, described.start, described.end - described.start)
                .await
                .map_err(device_error)?;
        Ok(clip(extents, &described, &asked))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: u64 = 4096;

    #[test]
    fn covering_and_inside_blocks() {
        assert_eq!(covering(B, &(0..B)), 0..B);
        assert_eq!(covering(B, &(1..2)), 0..B);
        assert_eq!(covering(B, &(B - 1..B + 1)), 0..2 * B);
        assert_eq!(inside(B, &(0..B)), 0..B);
        assert_eq!(inside(B, &(1..2 * B + 1)), B..2 * B);
        assert!(inside(B, &(1..B)).is_empty());
        let within = inside(B, &(1..2));
        assert!(within.start >= within.end, "{within:?}");
    }

    #[test]
    fn ranges_split_into_partial_and_whole_pieces() {
        let cut = |range: Range<u64>| {
            let Pieces { head, whole, tail } = pieces(B, &range);
            (head, whole, tail)
        };
        assert_eq!(cut(0..2 * B), (None, Some(0..2 * B), None));
        assert_eq!(cut(10..20), (Some(10..20), None, None));
        assert_eq!(cut(10..B), (Some(10..B), None, None));
        assert_eq!(cut(B..B + 5), (Some(B..B + 5), None, None));
        assert_eq!(cut(10..B + 5), (Some(10..B), None, Some(B..B + 5)));
        assert_eq!(
            cut(10..3 * B + 5),
            (Some(10..B), Some(B..3 * B), Some(3 * B..3 * B + 5))
        );
        assert_eq!(cut(0..B + 5), (None, Some(0..B), Some(B..B + 5)));
    }

    #[test]
    fn extents_are_clipped_to_the_bytes_asked() {
        let extent = |len, allocated| tandem_core::Extent { len, allocated };
        let extents = vec![extent(B, true), extent(2 * B, false), extent(B, true)];
        let clipped = clip(extents.clone(), &(0..4 * B), &(100..3 * B + 7));
        assert_eq!(
            clipped,
            vec![
                Extent::data((B - 100) as u32),
                Extent::hole(2 * B as u32),
                Extent::data(7)
            ]
        );
        // An extent wholly outside the range asked is dropped.
        let clipped = clip(extents, &(0..4 * B), &(B + 1..B + 2));
        assert_eq!(clipped, vec![Extent::hole(1)]);
    }
}
