//! What clients did and saw, and the rules data must obey: the checkers' view from outside.
//!
//! Every write fills each of its blocks with its own id, so any block read back (or found on a
//! replica's disk) names the write that put it there. The history knows each write's place in
//! the volume's order (its stamp, learned from the target's reply or from the messages on the
//! wire) and when it was acknowledged, so it can say which values a read may return.

use std::collections::BTreeMap;
use std::fmt;

use bytes::{BufMut, Bytes, BytesMut};
use tandem_core::Stamp;

/// Simulated volumes use small blocks so that many writes overlap.
pub const BLOCK_SIZE: u64 = 512;

/// The guarantee a violation breaks (see `docs/guarantees.md`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Guarantee {
    /// An acknowledged write is on CF replicas; a flushed one is durable on CF replicas.
    G1Durability,
    /// No acknowledged write is lost.
    G2NoLostWrite,
    /// Healthy replicas are byte-identical.
    G3Convergence,
    /// A read returns the latest acknowledged write or a later one.
    G4ReadYourWrites,
    /// One generation writes at a time.
    G5Fencing,
    /// Strangers never count; removals only when safe.
    G6Membership,
    /// A rebuild holds a client request back by at most one source round trip.
    G7BoundedImpact,
    /// Metadata is persisted at barriers and when a write first leaves the activity log, never
    /// once per write.
    G8NoMetadataPerWrite,
    /// Once faults stop, everything heals in bounded time.
    Liveness,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Violation {
    pub guarantee: Guarantee,
    pub tick: u64,
    pub detail: String,
}

impl fmt::Display for Violation {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "{:?} at tick {}: {}",
            self.guarantee, self.tick, self.detail
        )
    }
}

/// Why a block's value breaks the history: what a checker reports as a violation's detail.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum BlockProblem {
    /// The block does not hold one write's id throughout.
    Torn {
        block: u64,
    },
    /// The block reads zeroes though a write to it was acknowledged and nothing zeroed it since.
    ZeroesOverAcknowledged {
        block: u64,
        acknowledged: u64,
        stamp: Stamp,
    },
    UnknownWrite {
        block: u64,
        value: u64,
    },
    /// The write named never wrote this block (or was a trim).
    NeverWroteBlock {
        block: u64,
        value: u64,
    },
    /// The write named never reached a replica.
    NeverSent {
        block: u64,
        value: u64,
    },
    /// The block holds a write older than one acknowledged before the read.
    OlderThanAcknowledged {
        block: u64,
        value: u64,
        stamp: Stamp,
        required_id: u64,
        required_stamp: Stamp,
    },
}

impl fmt::Display for BlockProblem {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            BlockProblem::Torn { block } => write!(f, "block {block} holds torn or foreign data"),
            BlockProblem::ZeroesOverAcknowledged {
                block,
                acknowledged,
                stamp,
            } => write!(
                f,
                "block {block} reads zeroes but write {acknowledged} (stamp {stamp}) was acknowledged"
            ),
            BlockProblem::UnknownWrite { block, value } => {
                write!(f, "block {block} holds data of unknown write {value}")
            }
            BlockProblem::NeverWroteBlock { block, value } => write!(
                f,
                "block {block} holds data of write {value}, which never wrote it"
            ),
            BlockProblem::NeverSent { block, value } => write!(
                f,
                "block {block} holds data of write {value}, which was never sent to a replica"
            ),
            BlockProblem::OlderThanAcknowledged {
                block,
                value,
                stamp,
                required_id,
                required_stamp,
            } => write!(
                f,
                "block {block} holds write {value} (stamp {stamp}) but write {required_id} \
                 (stamp {required_stamp}) was acknowledged before the read"
            ),
        }
    }
}

impl std::error::Error for BlockProblem {}

/// The data a write puts in a block: the write's id in every 8 bytes.
pub fn block_data(write_id: u64, blocks: u64) -> Bytes {
    let mut data = BytesMut::with_capacity((blocks * BLOCK_SIZE) as usize);
    for _ in 0..blocks * BLOCK_SIZE / 8 {
        data.put_u64_le(write_id);
    }
    data.freeze()
}

/// Which write's data a block holds (0: zeroes), or `None` if the block is torn or garbage.
pub fn block_value(block: &[u8]) -> Option<u64> {
    let first = u64::from_le_bytes(block[..8].try_into().expect("8 bytes"));
    block
        .chunks_exact(8)
        .all(|word| u64::from_le_bytes(word.try_into().expect("8 bytes")) == first)
        .then_some(first)
}

#[derive(Clone, Debug)]
pub struct WriteRecord {
    pub first_block: u64,
    pub blocks: u64,
    pub trim: bool,
    /// Logical time the client issued it.
    pub issued_at: u64,
    pub stamp: Option<Stamp>,
    /// Logical time of the acknowledgement.
    pub acked_at: Option<u64>,
    /// Acknowledged, then made durable by an acknowledged flush issued after it.
    pub durable: bool,
    /// A power loss happened before it was durable: it may legitimately be lost.
    pub lossy: bool,
}

impl WriteRecord {
    fn touches(&self, block: u64) -> bool {
        (self.first_block..self.first_block + self.blocks).contains(&block)
    }

    /// Must survive: acknowledged and not exposed to a power loss before it was durable.
    fn required(&self, before: u64) -> bool {
        self.acked_at.is_some_and(|at| at < before) && !self.lossy
    }
}

#[derive(Default)]
pub struct History {
    pub writes: BTreeMap<u64, WriteRecord>,
    /// Write ids per block, for lookups.
    by_block: BTreeMap<u64, Vec<u64>>,
    /// A logical clock ordering every recorded event.
    clock: u64,
}

impl History {
    pub fn now(&mut self) -> u64 {
        self.clock += 1;
        self.clock
    }

    pub fn issue_write(&mut self, id: u64, first_block: u64, blocks: u64, trim: bool) {
        assert!(id > 0, "write id 0 means zeroes");
        let issued_at = self.now();
        self.writes.insert(
            id,
            WriteRecord {
                first_block,
                blocks,
                trim,
                issued_at,
                stamp: None,
                acked_at: None,
                durable: false,
                lossy: false,
            },
        );
        for block in first_block..first_block + blocks {
            self.by_block.entry(block).or_default().push(id);
        }
    }

    pub fn learn_stamp(&mut self, id: u64, stamp: Stamp) {
        if let Some(write) = self.writes.get_mut(&id) {
            write.stamp.get_or_insert(stamp);
        }
    }

    /// Trims carry no id on the wire: the oldest trim of that range without a stamp gets it.
    pub fn learn_trim_stamp(&mut self, first_block: u64, blocks: u64, stamp: Stamp) {
        let Some(ids) = self.by_block.get(&first_block) else {
            return;
        };
        let matching = ids.iter().copied().filter(|id| {
            let write = &self.writes[id];
            write.trim && write.first_block == first_block && write.blocks == blocks
        });
        let mut unstamped = None;
        for id in matching {
            match self.writes[&id].stamp {
                Some(known) if known == stamp => return,
                Some(_) => {}
                None => {
                    unstamped.get_or_insert(id);
                }
            }
        }
        if let Some(id) = unstamped {
            self.writes.get_mut(&id).expect("listed").stamp = Some(stamp);
        }
    }

    pub fn ack_write(&mut self, id: u64, stamp: Stamp) {
        let at = self.now();
        if let Some(write) = self.writes.get_mut(&id) {
            assert!(
                write.stamp.is_none_or(|known| known == stamp),
                "write {id} acknowledged with stamp {stamp} but was sent as {:?}",
                write.stamp
            );
            write.stamp = Some(stamp);
            write.acked_at = Some(at);
        }
    }

    /// A flush issued at `issued_at` was acknowledged: writes acknowledged before it are durable.
    pub fn flush_acked(&mut self, issued_at: u64) {
        for write in self.writes.values_mut() {
            if write.acked_at.is_some_and(|at| at < issued_at) && !write.lossy {
                write.durable = true;
            }
        }
    }

    /// A replica lost power (or the target restarted while a killed replica's stamp was
    /// inexact): writes not yet durable may be lost.
    pub fn power_lost(&mut self) {
        for write in self.writes.values_mut() {
            if !write.durable {
                write.lossy = true;
            }
        }
    }

    pub fn stamp_of(&self, id: u64) -> Option<Stamp> {
        self.writes.get(&id).and_then(|w| w.stamp)
    }

    /// The newest write to `block` that must be visible to a read issued at `before`.
    pub fn required(&self, block: u64, before: u64) -> Option<(u64, Stamp)> {
        self.by_block
            .get(&block)?
            .iter()
            .filter_map(|id| {
                let write = &self.writes[id];
                write
                    .required(before)
                    .then(|| (*id, write.stamp.expect("acknowledged writes have stamps")))
            })
            .max_by_key(|(_, stamp)| *stamp)
    }

    /// True if a trim of `block` at or after `stamp` is known (so zeroes there are new enough).
    pub fn zeroed_since(&self, block: u64, stamp: Stamp) -> bool {
        self.by_block.get(&block).is_some_and(|ids| {
            ids.iter().any(|id| {
                let write = &self.writes[id];
                write.trim && write.stamp.is_some_and(|s| s >= stamp)
            })
        })
    }

    /// Checks one block value read (or found) against a read issued at logical time
    /// `issued_at`: it must be the newest write acknowledged before then, or a later one.
    pub fn check_block(
        &self,
        block: u64,
        value: Option<u64>,
        issued_at: u64,
    ) -> Result<(), BlockProblem> {
        let required = self.required(block, issued_at);
        let Some(value) = value else {
            return Err(BlockProblem::Torn { block });
        };
        if value == 0 {
            return match required {
                None => Ok(()),
                Some((_, stamp)) if self.zeroed_since(block, stamp) => Ok(()),
                Some(_) if self.unstamped_trim(block) => Ok(()),
                Some((acknowledged, stamp)) => Err(BlockProblem::ZeroesOverAcknowledged {
                    block,
                    acknowledged,
                    stamp,
                }),
            };
        }
        let Some(write) = self.writes.get(&value) else {
            return Err(BlockProblem::UnknownWrite { block, value });
        };
        if write.trim || !write.touches(block) {
            return Err(BlockProblem::NeverWroteBlock { block, value });
        }
        let Some(stamp) = write.stamp else {
            return Err(BlockProblem::NeverSent { block, value });
        };
        match required {
            Some((required_id, required_stamp)) if stamp < required_stamp => {
                Err(BlockProblem::OlderThanAcknowledged {
                    block,
                    value,
                    stamp,
                    required_id,
                    required_stamp,
                })
            }
            _ => Ok(()),
        }
    }

    /// True if a trim of `block` was issued whose place in history is not known: zeroes may be
    /// its work.
    fn unstamped_trim(&self, block: u64) -> bool {
        self.by_block[&block].iter().any(|id| {
            let write = &self.writes[id];
            write.trim && write.stamp.is_none()
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use tandem_core::{Generation, Seq};

    fn stamp(seq: u64) -> Stamp {
        Stamp::new(Generation(1), Seq(seq))
    }

    #[test]
    fn block_values_round_trip_and_detect_tearing() {
        let data = block_data(42, 2);
        assert_eq!(block_value(&data[..512]), Some(42));
        let mut torn = data.to_vec();
        torn[100] ^= 1;
        assert_eq!(block_value(&torn[..512]), None);
        assert_eq!(block_value(&[0; 512]), Some(0));
    }

    #[test]
    fn stale_reads_are_caught_and_newer_ones_allowed() {
        let mut history = History::default();
        history.issue_write(1, 0, 2, false);
        history.ack_write(1, stamp(1));
        history.issue_write(2, 1, 1, false);
        history.learn_stamp(2, stamp(2));
        let read_at = history.now();
        assert_eq!(history.check_block(0, Some(1), read_at), Ok(()));
        assert_eq!(
            history.check_block(1, Some(2), read_at),
            Ok(()),
            "a newer unacknowledged write"
        );
        assert!(
            history.check_block(0, Some(0), read_at).is_err(),
            "lost write"
        );
        assert!(
            history.check_block(0, Some(2), read_at).is_err(),
            "write 2 never touched block 0"
        );
        history.ack_write(2, stamp(2));
        let later = history.now();
        assert!(
            history.check_block(1, Some(1), later).is_err(),
            "stale read"
        );
    }

    #[test]
    fn power_loss_makes_unflushed_writes_optional() {
        let mut history = History::default();
        history.issue_write(1, 0, 1, false);
        history.ack_write(1, stamp(1));
        let flush_issued = history.now();
        history.flush_acked(flush_issued);
        history.issue_write(2, 0, 1, false);
        history.ack_write(2, stamp(2));
        history.power_lost();
        let read_at = history.now();
        assert_eq!(
            history.check_block(0, Some(1), read_at),
            Ok(()),
            "write 2 may be lost"
        );
        assert!(
            history.check_block(0, Some(0), read_at).is_err(),
            "write 1 was flushed"
        );
    }
}
