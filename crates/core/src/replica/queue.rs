//! Work in arrival order: data operations pipelined where their ranges do not overlap, each
//! modifying one first bringing its regions into the persisted activity log.

use bytes::Bytes;

use crate::message::{Message, RequestId};
use crate::replica::{Completion, DiskOp, Replica, ReplicaOutput, WriteOrigin};
use crate::types::{IoFailure, RegionSet, Seq, SessionId, Stamp};
use crate::PlantedBug;

/// Work received in the current session and not yet started.
#[derive(Clone, Debug)]
pub(super) enum Work {
    Hello,
    Write {
        seq: Seq,
        offset: u64,
        data: Bytes,
    },
    Trim {
        seq: Seq,
        offset: u64,
        len: u64,
    },
    Flush {
        seq: Seq,
    },
    Read {
        request: RequestId,
        offset: u64,
        len: u64,
        kind: ReadKind,
    },
    RegionsSince {
        request: RequestId,
        since: Seq,
    },
    StartResync {
        sync_stamp: Stamp,
        live_after: Option<Stamp>,
    },
    /// Persist that this replica is no longer a consistent copy, before what follows breaks it.
    MarkInconsistent,
    WriteSegment {
        request: RequestId,
        offset: u64,
        data: Bytes,
        region_seq: Seq,
    },
    FinishResync {
        stamp: Stamp,
    },
}

/// What a read-only storage operation answers: a client read, a resync segment, or an
/// allocation query.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum ReadKind {
    Client,
    Segment,
    Allocation,
}

/// What an in-flight storage operation is for.
#[derive(Clone, Copy, Debug)]
pub(super) enum Purpose {
    Write { seq: Seq },
    WriteSegment { request: RequestId },
    Read { request: RequestId, kind: ReadKind },
    ActivityLog,
    Barrier,
}

#[derive(Clone, Copy, Debug)]
pub(super) struct Inflight {
    pub(super) purpose: Purpose,
    pub(super) session: SessionId,
    /// Byte range for data operations, and whether the operation modifies data.
    pub(super) range: Option<(u64, u64, bool)>,
}

impl Replica {
    /// Starts queued work, in order, as far as overlaps and barriers allow.
    pub(super) fn pump(&mut self, out: &mut Vec<ReplicaOutput>) {
        while self.barrier.is_none() {
            let Some(session) = self.current_session() else {
                self.queue.clear();
                return;
            };
            let Some(front) = self.queue.front() else {
                return;
            };
            if matches!(front, Work::WriteSegment { .. }) && self.superblock.consistent {
                // Resync data makes this a mix of two histories until the resync finishes.
                self.queue.push_front(Work::MarkInconsistent);
                continue;
            }
            if !self.may_start_front(out) {
                return;
            }
            let work = self.queue.pop_front().expect("the front was checked");
            self.start(work, session, out);
        }
    }

    /// True if the work at the front of the queue may start now: barriers wait for storage to
    /// be idle, writes for overlaps and the activity log, reads for overlapping writes.
    pub(super) fn may_start_front(&mut self, out: &mut Vec<ReplicaOutput>) -> bool {
        let (offset, len) = match self.queue.front() {
            Some(
                Work::Hello
                | Work::Flush { .. }
                | Work::StartResync { .. }
                | Work::MarkInconsistent
                | Work::FinishResync { .. },
            ) => return self.inflight.is_empty() && self.refused.is_empty(),
            Some(Work::Read { offset, len, .. }) => {
                return !self.overlaps_inflight(*offset, *len, true);
            }
            Some(Work::RegionsSince { .. }) | None => return true,
            Some(Work::Write { offset, data, .. } | Work::WriteSegment { offset, data, .. }) => {
                (*offset, data.len() as u64)
            }
            Some(Work::Trim { offset, len, .. }) => (*offset, *len),
        };
        self.ready_to_modify(offset, len, out)
    }

    pub(super) fn start(&mut self, work: Work, session: SessionId, out: &mut Vec<ReplicaOutput>) {
        match work {
            Work::Hello
            | Work::Flush { .. }
            | Work::StartResync { .. }
            | Work::MarkInconsistent
            | Work::FinishResync { .. } => self.start_barrier(work, session, out),
            Work::Write { seq, offset, data } => {
                self.start_client_write(session, seq, offset, DataChange::Write(data), out);
            }
            Work::Trim { seq, offset, len } => {
                self.start_client_write(session, seq, offset, DataChange::Trim(len), out);
            }
            Work::WriteSegment {
                request,
                offset,
                data,
                region_seq,
            } => self.start_segment_write(session, request, offset, data, region_seq, out),
            Work::Read {
                request,
                offset,
                len,
                kind,
            } => self.start_read(session, request, offset, len, kind, out),
            Work::RegionsSince { request, since } => {
                let regions = self.regions_changed_after(since);
                self.send(session, Message::Regions { request, regions }, out);
            }
        }
    }

    /// True if an operation on the range overlaps storage work in flight (only writes, if
    /// `writes_only`); writes refused for space and awaiting their verdict count as writes in
    /// flight.
    pub(super) fn overlaps_inflight(&self, offset: u64, len: u64, writes_only: bool) -> bool {
        let overlaps = |start: u64, length: u64| start < offset + len && offset < start + length;
        self.inflight.values().any(|inflight| match inflight.range {
            Some((start, length, modifies)) => {
                (modifies || !writes_only) && overlaps(start, length)
            }
            None => false,
        }) || self
            .refused
            .values()
            .any(|(start, length)| overlaps(*start, *length))
    }

    /// Checks a modifying operation may start now: no overlap, and its regions are in the
    /// persisted activity log (extending the log first if not).
    pub(super) fn ready_to_modify(
        &mut self,
        offset: u64,
        len: u64,
        out: &mut Vec<ReplicaOutput>,
    ) -> bool {
        let geometry = self.superblock.geometry;
        if !geometry.contains_aligned(offset, len) {
            return true; // Refused when started; nothing to wait for.
        }
        if self.overlaps_inflight(offset, len, false) {
            return false;
        }
        let regions = geometry.regions_of(offset, len);
        if regions
            .clone()
            .all(|region| self.activity_log.contains(region))
        {
            if self
                .options
                .bugs
                .has(PlantedBug::PersistMetadataOnEveryWrite)
                && self.activity_log_pending.is_none()
            {
                // The planted bug: the log is written again though it already holds the write's
                // regions (the write does not wait for it).
                self.activity_log_pending = Some(self.activity_log.clone());
                self.persist(self.activity_log.clone(), false, Purpose::ActivityLog, out);
            }
            return true;
        }
        if self.activity_log_pending.is_some() {
            return false;
        }
        let mut extended = self.activity_log.clone();
        let region_count = extended.region_count();
        for region in regions {
            let last = region
                .saturating_add(self.options.activity_log_extend_regions)
                .min(region_count - 1);
            for neighbour in region..=last {
                extended.insert(neighbour);
            }
        }
        self.activity_log_pending = Some(extended.clone());
        self.persist(extended, false, Purpose::ActivityLog, out);
        false
    }

    /// What `ready_to_modify` established when the modifying operation was let through: an
    /// unclean stop will know its regions may have changed, and nothing overlapping runs.
    fn assert_may_modify(&self, offset: u64, len: u64) {
        let geometry = self.superblock.geometry;
        assert!(
            geometry
                .regions_of(offset, len)
                .all(|region| self.activity_log.contains(region)),
            "data changes only inside the persisted activity log"
        );
        assert!(
            !self.overlaps_inflight(offset, len, false),
            "overlapping operations never run together"
        );
    }

    pub(super) fn note_region_change(&mut self, offset: u64, len: u64, seq: Seq, exact: bool) {
        let geometry = self.superblock.geometry;
        for region in geometry.regions_of(offset, len) {
            let entry = &mut self.region_seqs[region as usize];
            // Overestimating is always safe (more is resynced); underestimating never is. Only a
            // resync segment covering a whole region may lower an entry: it defines the region.
            let covers_region = geometry.region_range(region) == (offset, len);
            *entry = if exact && covers_region {
                seq
            } else {
                (*entry).max(seq)
            };
            self.regions_changed.insert(region);
        }
    }

    pub(super) fn start_client_write(
        &mut self,
        session: SessionId,
        seq: Seq,
        offset: u64,
        change: DataChange,
        out: &mut Vec<ReplicaOutput>,
    ) {
        let len = change.len();
        if !self.superblock.geometry.contains_aligned(offset, len) {
            self.send(
                session,
                Message::WriteDone {
                    seq,
                    result: Err(IoFailure::OutOfRange),
                },
                out,
            );
            return;
        }
        // A target that loses every Healthy replica sends its unanswered operations again, some
        // of which this replica may already hold. Applying one again is safe: an operation is
        // unanswered only if every later overlapping one is too (each replica answers in order),
        // so those come again after it.
        if self
            .failed_writes
            .as_ref()
            .is_some_and(|(generation, _)| *generation < session.generation())
        {
            self.failed_writes = None;
        }
        self.last_applied = self.last_applied.max(Stamp::new(session.generation(), seq));
        if self.superblock.consistent {
            // A consistent replica that is sent live writes is the target's source: its disk is
            // the volume's history now, whatever it held beyond its checkpoint.
            self.stamp_exact = true;
        }
        self.assert_may_modify(offset, len);
        self.note_region_change(offset, len, seq, false);
        let inflight = Inflight {
            purpose: Purpose::Write { seq },
            session,
            range: Some((offset, len, true)),
        };
        self.issue(inflight, out, |id| match change {
            DataChange::Write(data) => DiskOp::Write {
                id,
                offset,
                data,
                origin: WriteOrigin::Client,
            },
            DataChange::Trim(len) => DiskOp::Trim { id, offset, len },
        });
    }

    pub(super) fn start_segment_write(
        &mut self,
        session: SessionId,
        request: RequestId,
        offset: u64,
        data: Bytes,
        region_seq: Seq,
        out: &mut Vec<ReplicaOutput>,
    ) {
        let len = data.len() as u64;
        if !self.superblock.geometry.contains_aligned(offset, len) {
            self.send(
                session,
                Message::SegmentWritten {
                    request,
                    result: Err(IoFailure::OutOfRange),
                },
                out,
            );
            return;
        }
        self.assert_may_modify(offset, len);
        self.note_region_change(offset, len, region_seq, true);
        let inflight = Inflight {
            purpose: Purpose::WriteSegment { request },
            session,
            range: Some((offset, len, true)),
        };
        // A segment of zeros (a hole on the source, or zeros written there) becomes a hole
        // here: a thin replica rebuilt elsewhere stays thin. Reads see zeros either way.
        let len = data.len() as u64;
        self.issue(inflight, out, |id| {
            if all_zero(&data) {
                DiskOp::Trim { id, offset, len }
            } else {
                DiskOp::Write {
                    id,
                    offset,
                    data,
                    origin: WriteOrigin::Resync,
                }
            }
        });
    }

    pub(super) fn start_read(
        &mut self,
        session: SessionId,
        request: RequestId,
        offset: u64,
        len: u64,
        kind: ReadKind,
        out: &mut Vec<ReplicaOutput>,
    ) {
        if !self.superblock.geometry.contains_aligned(offset, len) {
            let message = read_answer(request, kind, Err(IoFailure::OutOfRange));
            self.send(session, message, out);
            return;
        }
        assert!(
            !self.overlaps_inflight(offset, len, true),
            "a read never runs beside an overlapping write"
        );
        let inflight = Inflight {
            purpose: Purpose::Read { request, kind },
            session,
            range: Some((offset, len, false)),
        };
        self.issue(inflight, out, |id| match kind {
            ReadKind::Client | ReadKind::Segment => DiskOp::Read { id, offset, len },
            ReadKind::Allocation => DiskOp::Allocation { id, offset, len },
        });
    }

    pub(super) fn regions_changed_after(&self, since: Seq) -> RegionSet {
        let mut regions = RegionSet::new(self.region_seqs.len() as u32);
        for (region, seq) in self.region_seqs.iter().enumerate() {
            if *seq > since {
                regions.insert(region as u32);
            }
        }
        regions
    }
}

pub(super) enum DataChange {
    Write(Bytes),
    Trim(u64),
}

impl DataChange {
    fn len(&self) -> u64 {
        match self {
            DataChange::Write(data) => data.len() as u64,
            DataChange::Trim(len) => *len,
        }
    }
}

/// The message answering a read-only operation. A completion of the wrong shape (a driver bug)
/// is answered as a device error rather than trusted.
pub(super) fn read_answer(
    request: RequestId,
    kind: ReadKind,
    result: Result<Completion, IoFailure>,
) -> Message {
    match kind {
        ReadKind::Client | ReadKind::Segment => {
            let result = result.and_then(|completion| match completion {
                Completion::Data(data) => Ok(data),
                _ => Err(IoFailure::Device),
            });
            if kind == ReadKind::Segment {
                Message::SegmentData { request, result }
            } else {
                Message::ReadDone { request, result }
            }
        }
        ReadKind::Allocation => {
            let result = result.and_then(|completion| match completion {
                Completion::Extents(extents) => Ok(extents),
                _ => Err(IoFailure::Device),
            });
            Message::Allocation { request, result }
        }
    }
}

/// Whether every byte is zero (a word at a time: a rebuild checks every segment it copies).
fn all_zero(data: &[u8]) -> bool {
    data.chunks(4096)
        .all(|chunk| chunk.iter().fold(0u8, |any, &byte| any | byte) == 0)
}
