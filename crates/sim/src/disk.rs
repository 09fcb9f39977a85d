//! A simulated replica disk: a page cache over durable media, with fsync, power loss and faults.
//!
//! Completed writes land in the cache (what reads see) and in a list of unsynced writes; `Sync`
//! makes them durable. A process crash keeps the cache (the kernel still has it); a power loss
//! keeps the durable image plus a random subset of the unsynced writes, applied in order, which
//! is what a real disk may hold after losing power. Metadata writes are atomic and durable.

use bytes::Bytes;
use rand::Rng;
use rand_chacha::ChaCha8Rng;
use tandem_core::{Extent, Incarnation, IoFailure, MetaUpdate, ReplicaMeta};

use crate::history::BLOCK_SIZE;

#[derive(Clone, Debug)]
struct Unsynced {
    offset: u64,
    data: Option<Bytes>,
    len: u64,
}

pub struct SimDisk {
    pub incarnation: Incarnation,
    cache: Vec<u8>,
    durable: Vec<u8>,
    unsynced: Vec<Unsynced>,
    pub meta: ReplicaMeta,
    /// Each operation fails with this probability (per mille) while set.
    pub failure_permille: u32,
    pub failure: IoFailure,
    /// Latency multiplier: a slow disk.
    pub slowness: u64,
    /// The pool is full: data writes (client and resync) are refused with `NoSpace` before
    /// they change anything, as a full pool refuses them; everything else works.
    pub full: bool,
}

impl SimDisk {
    pub fn new(meta: ReplicaMeta) -> SimDisk {
        let size = meta.superblock.geometry.size_bytes as usize;
        SimDisk {
            incarnation: meta.superblock.incarnation,
            cache: vec![0; size],
            durable: vec![0; size],
            unsynced: Vec::new(),
            meta,
            failure_permille: 0,
            failure: IoFailure::Device,
            slowness: 1,
            full: false,
        }
    }

    pub fn cache(&self) -> &[u8] {
        &self.cache
    }

    pub fn durable(&self) -> &[u8] {
        &self.durable
    }

    pub fn should_fail(&self, rng: &mut ChaCha8Rng) -> Option<IoFailure> {
        (self.failure_permille > 0 && rng.gen_range(0..1000) < self.failure_permille)
            .then_some(self.failure)
    }

    pub fn write(&mut self, offset: u64, data: Bytes) {
        let start = offset as usize;
        self.cache[start..start + data.len()].copy_from_slice(&data);
        self.unsynced.push(Unsynced {
            offset,
            len: data.len() as u64,
            data: Some(data),
        });
    }

    pub fn trim(&mut self, offset: u64, len: u64) {
        let start = offset as usize;
        self.cache[start..start + len as usize].fill(0);
        self.unsynced.push(Unsynced {
            offset,
            data: None,
            len,
        });
    }

    pub fn read(&self, offset: u64, len: u64) -> Bytes {
        Bytes::copy_from_slice(&self.cache[offset as usize..(offset + len) as usize])
    }

    /// Which blocks hold data: this disk stores nothing for a block of zeroes (as a file system
    /// that detects zeroes would), so every such block is a hole. Extents cover the range.
    pub fn allocation(&self, offset: u64, len: u64) -> Vec<Extent> {
        let mut extents: Vec<Extent> = Vec::new();
        let end = offset + len;
        let mut at = offset;
        while at < end {
            let block_end = (at + BLOCK_SIZE).min(end);
            let allocated = self.cache[at as usize..block_end as usize]
                .iter()
                .any(|byte| *byte != 0);
            match extents.last_mut() {
                Some(last) if last.allocated == allocated => last.len += block_end - at,
                _ => extents.push(Extent {
                    len: block_end - at,
                    allocated,
                }),
            }
            at = block_end;
        }
        extents
    }

    pub fn sync(&mut self) {
        for write in std::mem::take(&mut self.unsynced) {
            apply(&mut self.durable, &write);
        }
    }

    pub fn persist_meta(&mut self, update: &MetaUpdate) {
        self.meta.apply(update);
    }

    /// Power loss: the durable image plus some of the unsynced writes survive.
    pub fn lose_power(&mut self, rng: &mut ChaCha8Rng) -> usize {
        let mut lost = 0;
        for write in std::mem::take(&mut self.unsynced) {
            if rng.gen_bool(0.5) {
                apply(&mut self.durable, &write);
            } else {
                lost += 1;
            }
        }
        self.cache.clone_from(&self.durable);
        lost
    }
}

fn apply(image: &mut [u8], write: &Unsynced) {
    let start = write.offset as usize;
    let end = start + write.len as usize;
    match &write.data {
        Some(data) => image[start..end].copy_from_slice(data),
        None => image[start..end].fill(0),
    }
}
