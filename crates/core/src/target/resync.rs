//! Resync and rebuild: copying changed regions to a joining replica under range locks.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::message::{Message, RequestId};
use crate::target::link::{Awaited, LinkState};
use crate::target::Phase;
use crate::target::{
    EjectReason, ResyncProgress, Target, TargetEvent, TargetOutput, CLIENT_ACTIVITY_TICKS,
};
use crate::types::{Geometry, IoFailure, RegionSet, ReplicaId, Seq, Stamp};
use crate::PlantedBug;

#[derive(Clone, Debug)]
enum ResyncPhase {
    /// Asking the source which regions changed since the replica's checkpoint.
    Querying {
        request: RequestId,
    },
    Copying,
    /// Every segment is written; waiting for the replica to make it durable.
    Finishing,
}

/// One region being copied: read from the source, then written to the replica.
#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) offset: u64,
    pub(super) len: u64,
    /// While it is read, it holds back client writes to its range (G7).
    pub(super) locked: bool,
}

/// A resync (or rebuild) of one replica from one source: which regions are left, the segments
/// in flight, and the range locks they hold. The locks are exactly the segments being read
/// from the source (with the planted bug `HoldRangeLockForWholeResync`, every segment read so
/// far): a job that ends or is aborted holds none.
#[derive(Clone, Debug)]
pub(super) struct ResyncJob {
    pub(super) dest: ReplicaId,
    pub(super) source: ReplicaId,
    /// A new replica's rebuild: everything ever written is copied.
    pub(super) full: bool,
    phase: ResyncPhase,
    todo: VecDeque<u32>,
    regions_total: u64,
    /// Segments being read from the source, by request.
    reading: BTreeMap<RequestId, Segment>,
    /// Segments being written to the replica, by request.
    writing: BTreeMap<RequestId, Segment>,
    /// Locks kept after their segment was read: only with the planted bug
    /// `HoldRangeLockForWholeResync`, always empty otherwise.
    held: Vec<Segment>,
    /// A segment was sent to the replica: it no longer claims to be a consistent copy (it
    /// persists that before writing the first), so nothing it holds can become history until
    /// the job finishes.
    wrote_any: bool,
    bytes_total: u64,
    bytes_done: u64,
}

/// What a resync job does next.
pub(super) enum NextSegment {
    /// Copy this region.
    Copy { offset: u64, len: u64 },
    /// Everything is copied: the replica is told to finish.
    Finish,
    /// Nothing now: still querying or finishing, at the in-flight limit, or out of budget.
    Wait,
}

impl ResyncJob {
    /// A job that starts by asking `source` (with `request`) which regions changed.
    pub(super) fn new(
        dest: ReplicaId,
        source: ReplicaId,
        full: bool,
        request: RequestId,
    ) -> ResyncJob {
        assert_ne!(dest, source, "a replica is never resynced from itself");
        ResyncJob {
            dest,
            source,
            full,
            phase: ResyncPhase::Querying { request },
            todo: VecDeque::new(),
            regions_total: 0,
            reading: BTreeMap::new(),
            writing: BTreeMap::new(),
            held: Vec::new(),
            wrote_any: false,
            bytes_total: 0,
            bytes_done: 0,
        }
    }

    pub(super) fn involves(&self, replica: ReplicaId) -> bool {
        self.dest == replica || self.source == replica
    }

    /// True if `request` from `from` is the region query this job waits for.
    pub(super) fn awaits_regions(&self, from: ReplicaId, request: RequestId) -> bool {
        self.source == from
            && matches!(self.phase, ResyncPhase::Querying { request: r } if r == request)
    }

    /// The regions to copy are known: the copy starts.
    pub(super) fn copy(&mut self, regions: &RegionSet, geometry: &Geometry) {
        assert!(
            matches!(self.phase, ResyncPhase::Querying { .. }),
            "regions are planned once"
        );
        self.todo = regions.iter().collect();
        self.regions_total = self.todo.len() as u64;
        self.bytes_total = self.todo.iter().map(|r| geometry.region_range(*r).1).sum();
        self.phase = ResyncPhase::Copying;
    }

    /// The next step within `inflight_max` segments and, if throttled, the `budget`.
    pub(super) fn next_segment(
        &mut self,
        inflight_max: usize,
        geometry: &Geometry,
        budget: Option<&mut ResyncBudget>,
    ) -> NextSegment {
        if !matches!(self.phase, ResyncPhase::Copying) {
            return NextSegment::Wait;
        }
        if self.todo.is_empty() && self.reading.is_empty() && self.writing.is_empty() {
            self.phase = ResyncPhase::Finishing;
            return NextSegment::Finish;
        }
        if self.reading.len() + self.writing.len() >= inflight_max {
            return NextSegment::Wait;
        }
        let Some(&region) = self.todo.front() else {
            return NextSegment::Wait;
        };
        let (offset, len) = geometry.region_range(region);
        if self.overlaps_segment(offset, len) {
            // Copied again while its earlier copy is in flight (see `copy_again`).
            return NextSegment::Wait;
        }
        if let Some(budget) = budget {
            if !budget.spend(len) {
                return NextSegment::Wait;
            }
        }
        self.todo.pop_front();
        NextSegment::Copy { offset, len }
    }

    /// A segment's read from the source was sent as `request`.
    pub(super) fn reading(&mut self, request: RequestId, segment: Segment) {
        assert!(
            matches!(self.phase, ResyncPhase::Copying),
            "copies run while copying"
        );
        assert!(
            !self.overlaps_segment(segment.offset, segment.len),
            "a range is copied by one segment at a time"
        );
        self.reading.insert(request, segment);
    }

    /// The source answered read `request`: the segment's lock is released.
    pub(super) fn read_done(&mut self, from: ReplicaId, request: RequestId) -> Option<Segment> {
        if self.source != from {
            return None;
        }
        self.reading.remove(&request)
    }

    /// Keeps a read segment's lock until the job ends (the planted bug
    /// `HoldRangeLockForWholeResync`).
    pub(super) fn hold_lock_until_the_end(&mut self, segment: Segment) {
        self.held.push(segment);
    }

    /// A segment's write to the replica was sent as `request`.
    pub(super) fn writing(&mut self, request: RequestId, segment: Segment) {
        self.wrote_any = true;
        self.writing.insert(request, segment);
    }

    /// Copies `regions` (again) before the job finishes, because the replica applied a write
    /// that was voided there. Only while copying and once the replica has stopped claiming to
    /// be a consistent copy: false otherwise (the caller ejects it, so a later resync from its
    /// checkpoint covers the regions).
    pub(super) fn copy_again(
        &mut self,
        regions: std::ops::RangeInclusive<u32>,
        geometry: &Geometry,
    ) -> bool {
        if !matches!(self.phase, ResyncPhase::Copying) || !self.wrote_any {
            return false;
        }
        for region in regions {
            if !self.todo.contains(&region) {
                self.todo.push_back(region);
                self.regions_total += 1;
                self.bytes_total += geometry.region_range(region).1;
            }
        }
        true
    }

    /// The replica answered write `request`.
    pub(super) fn write_done(&mut self, from: ReplicaId, request: RequestId) -> Option<Segment> {
        if self.dest != from {
            return None;
        }
        self.writing.remove(&request)
    }

    pub(super) fn copied(&mut self, segment: &Segment) {
        self.bytes_done += segment.len;
        assert!(
            self.bytes_done <= self.bytes_total,
            "copied more than planned"
        );
    }

    /// True if `from` finishing its resync ends this job.
    pub(super) fn is_finishing(&self, from: ReplicaId) -> bool {
        self.dest == from && matches!(self.phase, ResyncPhase::Finishing)
    }

    /// True if a client write to the range must wait: a segment being read covers part of it.
    pub(super) fn is_locked(&self, offset: u64, len: u64) -> bool {
        self.reading.values().chain(&self.held).any(|segment| {
            segment.locked && segment.offset < offset + len && offset < segment.offset + segment.len
        })
    }

    pub(super) fn locks_held(&self) -> usize {
        self.reading
            .values()
            .chain(&self.held)
            .filter(|segment| segment.locked)
            .count()
    }

    fn overlaps_segment(&self, offset: u64, len: u64) -> bool {
        self.reading
            .values()
            .chain(self.writing.values())
            .any(|segment| segment.offset < offset + len && offset < segment.offset + segment.len)
    }

    pub(super) fn progress(&self) -> ResyncProgress {
        ResyncProgress {
            replica: self.dest,
            source: self.source,
            full: self.full,
            bytes_done: self.bytes_done,
            bytes_total: self.bytes_total,
        }
    }

    /// The event for a finished job.
    pub(super) fn finished(&self) -> TargetEvent {
        assert!(
            self.todo.is_empty() && self.reading.is_empty() && self.writing.is_empty(),
            "a resync finishes with every segment copied"
        );
        TargetEvent::ResyncFinished {
            replica: self.dest,
            source: self.source,
            full: self.full,
            regions: self.regions_total,
            bytes: self.bytes_done,
        }
    }
}

/// The resync's bandwidth allowance: bytes it may copy now, refilled every tick at the current
/// rate and capped at two ticks' worth (at least two regions). It outlives jobs: what one job
/// left over, the next one starts with.
#[derive(Clone, Copy, Debug, Default)]
pub(super) struct ResyncBudget {
    bytes: u64,
}

impl ResyncBudget {
    /// One tick's refill at `rate` bytes per tick (0: uncapped, nothing to count).
    pub(super) fn refill(&mut self, rate: u64, region_size: u32) {
        if rate > 0 {
            let cap = rate.max(u64::from(region_size)) * 2;
            self.bytes = (self.bytes + rate).min(cap);
        }
    }

    /// Takes `len` bytes if there are that many.
    fn spend(&mut self, len: u64) -> bool {
        if self.bytes < len {
            return false;
        }
        self.bytes -= len;
        true
    }
}

impl Target {
    /// The stamp of the operation with sequence `seq`, if this target knows it: its own
    /// operations and the one it recovered to.
    pub(super) fn stamp_of(&self, seq: Seq) -> Option<Stamp> {
        if seq > self.activation_stamp.seq {
            Some(Stamp::new(self.generation, seq))
        } else if seq == self.activation_stamp.seq {
            Some(self.activation_stamp)
        } else {
            None
        }
    }

    /// A replica answered while the volume is served. A trusted replica that holds exactly this
    /// target's history up to some point, and missed only operations still unanswered here, is
    /// sent those again and is Healthy at once: it holds everything, no copy needed (a brief
    /// disconnect costs no resync). Any other replica is resynced, as is one that missed more
    /// than `replica_congestion_ops` operations (resending them all would overrun its backlog
    /// limit, eject it again, and never end).
    pub(super) fn rejoin(&mut self, replica: ReplicaId, out: &mut Vec<TargetOutput>) {
        let hello = self.connected(replica).expect("just answered").hello();
        let history = hello.stamp;
        let trusted = self.is_trusted(replica, hello.incarnation);
        let missed: Vec<Seq> = (history.seq.0 + 1..=self.seq_last.0).map(Seq).collect();
        let can_replay = trusted
            && hello.consistent
            && hello.stamp_exact
            && history.generation == self.generation
            && history.seq >= self.activation_stamp.seq
            && missed.len() <= self.options.replica_congestion_ops
            && missed.iter().all(|seq| self.ops.contains_key(seq))
            && (hello.checkpoint >= self.last_voided
                || self.options.bugs.has(PlantedBug::ReplayPastVoidedWrite));
        if !can_replay {
            let live_after = Some(self.last_stamp);
            self.begin_resync(replica, live_after, out);
            return;
        }
        assert_eq!(self.phase, Phase::Active, "only a serving target replays");
        let c = self.connected_mut(replica).expect("connected");
        c.start_live_at(history.seq.next());
        c.set_state(LinkState::Healthy);
        for op in self.ops.range_mut(..history.seq.next()).map(|(_, op)| op) {
            op.holders.insert(replica);
        }
        for seq in missed {
            let message = self.ops[&seq].message.clone();
            self.send(replica, message, Some(Awaited::Op(seq)), out);
        }
    }

    /// A replica joined while the volume is served. `StartResync` is the first thing it hears:
    /// live operations follow `live_after`, so it knows whether they continue its history (it
    /// stays a consistent copy until resync data arrives) or not (it stops being one at once).
    pub(super) fn begin_resync(
        &mut self,
        replica: ReplicaId,
        live_after: Option<Stamp>,
        out: &mut Vec<TargetOutput>,
    ) {
        let sync_stamp = self.acked_max;
        let Some(c) = self.connected_mut(replica) else {
            return;
        };
        c.set_state(LinkState::NeedsResync { started: false });
        self.send(
            replica,
            Message::StartResync {
                sync_stamp,
                live_after,
            },
            Some(Awaited::Marker),
            out,
        );
    }

    /// Starts the next resync when none runs: trusted replicas first, then new ones.
    pub(super) fn schedule_resync(&mut self, out: &mut Vec<TargetOutput>) {
        if self.resync.is_some() {
            return;
        }
        let Some(source) = self
            .healthy_replicas()
            .into_iter()
            .min_by_key(|r| self.connected(*r).map_or(usize::MAX, |c| c.awaited().len()))
        else {
            return;
        };
        let ready: Vec<(ReplicaId, bool)> = self
            .links
            .keys()
            .copied()
            .filter_map(|r| {
                let c = self.connected(r)?;
                (c.state() == LinkState::NeedsResync { started: true })
                    .then(|| (r, self.is_trusted(r, c.hello().incarnation)))
            })
            .collect();
        let Some(&(dest, trusted)) = ready
            .iter()
            .find(|(_, trusted)| *trusted)
            .or_else(|| ready.first())
        else {
            return;
        };
        let hello = self.connected(dest).expect("connected").hello();
        // A stranger's checkpoint means nothing: copy everything ever written.
        let since = if trusted { hello.checkpoint } else { Seq::ZERO };
        let request = self.request_id();
        self.resync = Some(ResyncJob::new(dest, source, !trusted, request));
        self.connected_mut(dest)
            .expect("connected")
            .set_state(LinkState::Resyncing);
        self.send(
            source,
            Message::RegionsSince { request, since },
            Some(Awaited::Request(request)),
            out,
        );
    }

    pub(super) fn on_regions(
        &mut self,
        from: ReplicaId,
        request: RequestId,
        source_regions: RegionSet,
        out: &mut Vec<TargetOutput>,
    ) {
        let Some(job) = self.resync.as_ref() else {
            return;
        };
        if !job.awaits_regions(from, request) {
            return;
        }
        if source_regions.region_count() as u64 != self.geometry.region_count() {
            self.eject(from, EjectReason::SessionBroken, out);
            return;
        }
        let dest = job.dest;
        let mut regions = source_regions;
        if !self.options.bugs.has(PlantedBug::ResyncOnlySourceSide) {
            let dest_dirty = &self.connected(dest).expect("dest connected").hello().dirty;
            regions.union_with(dest_dirty);
        }
        let job = self.resync.as_mut().expect("job exists");
        job.copy(&regions, &self.geometry);
    }

    /// Starts segment copies within the in-flight and bandwidth limits.
    pub(super) fn pump_resync(&mut self, out: &mut Vec<TargetOutput>) {
        let throttled = self.resync_rate() > 0;
        loop {
            let Some(job) = self.resync.as_mut() else {
                return;
            };
            let budget = throttled.then_some(&mut self.resync_budget);
            let inflight_max = self.options.resync_segments_inflight_max;
            match job.next_segment(inflight_max, &self.geometry, budget) {
                NextSegment::Wait => return,
                NextSegment::Finish => {
                    let (dest, stamp) = (job.dest, Stamp::new(self.generation, self.seq_last));
                    self.send(
                        dest,
                        Message::FinishResync { stamp },
                        Some(Awaited::Marker),
                        out,
                    );
                    return;
                }
                NextSegment::Copy { offset, len } => {
                    let source = job.source;
                    let locked = !self.options.bugs.has(PlantedBug::CopyWithoutRangeLock);
                    let request = self.request_id();
                    let job = self.resync.as_mut().expect("job exists");
                    job.reading(
                        request,
                        Segment {
                            offset,
                            len,
                            locked,
                        },
                    );
                    self.send(
                        source,
                        Message::ReadSegment {
                            request,
                            offset,
                            len,
                        },
                        Some(Awaited::Request(request)),
                        out,
                    );
                }
            }
        }
    }

    /// Bytes per tick the resync may copy now (0: uncapped): the lower cap while clients are
    /// doing I/O, the configured one otherwise.
    pub(super) fn resync_rate(&self) -> u64 {
        let (idle_rate, busy_rate) = (
            self.options.resync_bytes_per_tick,
            self.options.resync_bytes_per_tick_under_load,
        );
        let busy = self
            .client_seen_tick
            .is_some_and(|seen| self.now_tick < seen + CLIENT_ACTIVITY_TICKS);
        match (busy, idle_rate, busy_rate) {
            (false, _, _) | (true, _, 0) => idle_rate,
            (true, 0, busy_rate) => busy_rate,
            (true, idle_rate, busy_rate) => idle_rate.min(busy_rate),
        }
    }

    /// The source's copy of a segment arrived. Everything sequenced before the read is in it, and
    /// nothing touching the range was sequenced since (the lock), so the replica being resynced,
    /// which receives this after every earlier write, ends up exactly as the source. Then the
    /// lock can go: later writes reach the replica after this segment.
    pub(super) fn on_segment_data(
        &mut self,
        from: ReplicaId,
        request: RequestId,
        result: Result<Bytes, IoFailure>,
        out: &mut Vec<TargetOutput>,
    ) {
        let Some(job) = self.resync.as_mut() else {
            return;
        };
        let Some(segment) = job.read_done(from, request) else {
            return;
        };
        if self
            .options
            .bugs
            .has(PlantedBug::HoldRangeLockForWholeResync)
        {
            job.hold_lock_until_the_end(segment.clone());
        }
        let dest = job.dest;
        match result {
            Ok(data) if data.len() as u64 == segment.len => {
                let write_request = self.request_id();
                let region_seq = self.seq_last;
                self.send(
                    dest,
                    Message::WriteSegment {
                        request: write_request,
                        offset: segment.offset,
                        data,
                        region_seq,
                    },
                    Some(Awaited::Request(write_request)),
                    out,
                );
                if let Some(job) = self.resync.as_mut() {
                    job.writing(write_request, segment);
                }
            }
            Ok(_) => self.eject(from, EjectReason::SessionBroken, out),
            Err(failure) => self.eject(from, EjectReason::IoFailure(failure), out),
        }
    }

    pub(super) fn on_segment_written(
        &mut self,
        from: ReplicaId,
        request: RequestId,
        result: Result<(), IoFailure>,
        out: &mut Vec<TargetOutput>,
    ) {
        let Some(job) = self.resync.as_mut() else {
            return;
        };
        let Some(segment) = job.write_done(from, request) else {
            return;
        };
        match result {
            Ok(()) => job.copied(&segment),
            Err(failure) => self.eject(from, EjectReason::IoFailure(failure), out),
        }
    }

    pub(super) fn on_resync_finished(
        &mut self,
        from: ReplicaId,
        result: Result<(), IoFailure>,
        out: &mut Vec<TargetOutput>,
    ) {
        let Some(job) = self.resync.as_ref() else {
            return;
        };
        if !job.is_finishing(from) {
            return;
        }
        if let Err(failure) = result {
            self.eject(from, EjectReason::IoFailure(failure), out);
            return;
        }
        let job = self.resync.take().expect("job exists");
        out.push(TargetOutput::Event(job.finished()));
        // The replica now holds every operation sequenced before it joined (copied) and has
        // applied every later one it was sent: it holds all of them.
        let c = self.connected_mut(from).expect("dest connected");
        assert_eq!(
            c.state(),
            LinkState::Resyncing,
            "a replica is resynced only in its resync's session"
        );
        let first_live_seq = c.first_live_seq();
        let incarnation = c.hello().incarnation;
        for op in self.ops.range_mut(..first_live_seq).map(|(_, op)| op) {
            op.holders.insert(from);
        }
        if self.is_trusted(from, incarnation) {
            self.connected_mut(from)
                .expect("connected")
                .set_state(LinkState::Healthy);
        } else {
            self.connected_mut(from)
                .expect("connected")
                .set_state(LinkState::AwaitingPromotion);
            self.try_promote(out);
        }
    }

    pub(super) fn abort_resync(&mut self, out: &mut Vec<TargetOutput>) {
        // Its locks go with it.
        let Some(job) = self.resync.take() else {
            return;
        };
        // The replica being resynced stays waiting (its checkpoint and dirty set still hold) and
        // the resync starts over, with another source if need be.
        if let Some(c) = self.connected_mut(job.dest) {
            c.set_state(LinkState::NeedsResync { started: true });
        }
        self.retry_waiting(out);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const GEOMETRY: Geometry = Geometry {
        size_bytes: 64 * 1024,
        block_size: 4096,
        region_size: 16 * 1024,
    };

    /// A job copying regions 1 and 3 from replica 1 to replica 2.
    fn copying() -> ResyncJob {
        let mut job = ResyncJob::new(ReplicaId(2), ReplicaId(1), false, RequestId(1));
        assert!(job.awaits_regions(ReplicaId(1), RequestId(1)));
        assert!(!job.awaits_regions(ReplicaId(2), RequestId(1)));
        let mut regions = RegionSet::new(4);
        regions.insert(1);
        regions.insert(3);
        job.copy(&regions, &GEOMETRY);
        job
    }

    fn start(job: &mut ResyncJob, request: u64, budget: Option<&mut ResyncBudget>) -> Option<u64> {
        match job.next_segment(4, &GEOMETRY, budget) {
            NextSegment::Copy { offset, len } => {
                let segment = Segment {
                    offset,
                    len,
                    locked: true,
                };
                job.reading(RequestId(request), segment);
                Some(offset)
            }
            NextSegment::Finish | NextSegment::Wait => None,
        }
    }

    #[test]
    fn a_segment_being_read_locks_its_range_until_its_data_arrives() {
        let mut job = copying();
        assert_eq!(start(&mut job, 2, None), Some(16 * 1024));
        assert!(job.is_locked(20 * 1024, 4096));
        assert!(!job.is_locked(0, 16 * 1024), "the region before is free");
        assert_eq!(job.locks_held(), 1);
        assert!(
            job.read_done(ReplicaId(2), RequestId(2)).is_none(),
            "only from the source"
        );
        let segment = job
            .read_done(ReplicaId(1), RequestId(2))
            .expect("being read");
        assert!(!job.is_locked(20 * 1024, 4096));
        job.writing(RequestId(3), segment);
        assert_eq!(job.locks_held(), 0, "a segment being written holds no lock");
    }

    #[test]
    fn a_job_finishes_once_every_segment_is_written() {
        let mut job = copying();
        assert_eq!(start(&mut job, 2, None), Some(16 * 1024));
        assert_eq!(start(&mut job, 3, None), Some(48 * 1024));
        assert!(matches!(
            job.next_segment(4, &GEOMETRY, None),
            NextSegment::Wait
        ));
        for (read, write) in [(2, 4), (3, 5)] {
            let segment = job.read_done(ReplicaId(1), RequestId(read)).expect("read");
            job.writing(RequestId(write), segment);
            let segment = job
                .write_done(ReplicaId(2), RequestId(write))
                .expect("written");
            job.copied(&segment);
        }
        assert!(!job.is_finishing(ReplicaId(2)));
        assert!(matches!(
            job.next_segment(4, &GEOMETRY, None),
            NextSegment::Finish
        ));
        assert!(job.is_finishing(ReplicaId(2)));
        assert_eq!(
            job.finished(),
            TargetEvent::ResyncFinished {
                replica: ReplicaId(2),
                source: ReplicaId(1),
                full: false,
                regions: 2,
                bytes: 32 * 1024,
            }
        );
    }

    #[test]
    fn a_throttled_copy_waits_for_budget_and_leftovers_carry_over() {
        let mut job = copying();
        let mut budget = ResyncBudget::default();
        budget.refill(8 * 1024, GEOMETRY.region_size);
        assert_eq!(start(&mut job, 2, Some(&mut budget)), None, "half a region");
        budget.refill(8 * 1024, GEOMETRY.region_size);
        assert_eq!(start(&mut job, 2, Some(&mut budget)), Some(16 * 1024));
        for _ in 0..10 {
            budget.refill(8 * 1024, GEOMETRY.region_size);
        }
        assert_eq!(budget.bytes, 32 * 1024, "capped at two regions");
    }
}
