//! Resync and rebuild: copying changed regions to a joining replica under range locks.

use std::collections::{BTreeMap, VecDeque};

use bytes::Bytes;

use crate::message::{Message, RequestId};
use crate::target::link::{Awaited, LinkState};
use crate::target::{EjectReason, Target, TargetEvent, TargetOutput, CLIENT_ACTIVITY_TICKS};
use crate::types::{IoFailure, RegionSet, ReplicaId, Seq, Stamp};
use crate::PlantedBug;

#[derive(Clone, Debug)]
pub(super) enum ResyncPhase {
    Querying { request: RequestId },
    Copying,
    Finishing,
}

#[derive(Clone, Debug)]
pub(super) struct Segment {
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) locked: bool,
}

#[derive(Clone, Debug)]
pub(super) struct ResyncJob {
    pub(super) dest: ReplicaId,
    pub(super) source: ReplicaId,
    pub(super) full: bool,
    pub(super) phase: ResyncPhase,
    pub(super) todo: VecDeque<u32>,
    pub(super) regions_total: u64,
    pub(super) reading: BTreeMap<RequestId, Segment>,
    pub(super) writing: BTreeMap<RequestId, Segment>,
    pub(super) bytes_total: u64,
    pub(super) bytes_done: u64,
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
        let hello = &self.connected(replica).expect("just answered").hello;
        let history = hello.stamp;
        let trusted = self.is_trusted(replica, hello.incarnation);
        let missed: Vec<Seq> = (history.seq.0 + 1..=self.seq_last.0).map(Seq).collect();
        let can_replay = trusted
            && hello.consistent
            && hello.stamp_exact
            && history.generation == self.generation
            && history.seq >= self.activation_stamp.seq
            && missed.len() <= self.options.replica_congestion_ops
            && missed.iter().all(|seq| self.ops.contains_key(seq));
        if !can_replay {
            let live_after = Some(self.last_stamp);
            self.begin_resync(replica, live_after, out);
            return;
        }
        let c = self.connected_mut(replica).expect("connected");
        c.first_live_seq = history.seq.next();
        c.state = LinkState::Healthy;
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
        c.state = LinkState::NeedsResync { started: false };
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
            .min_by_key(|r| self.connected(*r).map_or(usize::MAX, |c| c.awaited.len()))
        else {
            return;
        };
        let ready: Vec<(ReplicaId, bool)> = self
            .links
            .keys()
            .copied()
            .filter_map(|r| {
                let c = self.connected(r)?;
                (c.state == LinkState::NeedsResync { started: true })
                    .then(|| (r, self.is_trusted(r, c.hello.incarnation)))
            })
            .collect();
        let Some(&(dest, trusted)) = ready
            .iter()
            .find(|(_, trusted)| *trusted)
            .or_else(|| ready.first())
        else {
            return;
        };
        let hello = &self.connected(dest).expect("connected").hello;
        // A stranger's checkpoint means nothing: copy everything ever written.
        let since = if trusted { hello.checkpoint } else { Seq::ZERO };
        let request = self.request_id();
        self.resync = Some(ResyncJob {
            dest,
            source,
            full: !trusted,
            phase: ResyncPhase::Querying { request },
            todo: VecDeque::new(),
            regions_total: 0,
            reading: BTreeMap::new(),
            writing: BTreeMap::new(),
            bytes_total: 0,
            bytes_done: 0,
        });
        self.connected_mut(dest).expect("connected").state = LinkState::Resyncing;
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
        if job.source != from
            || !matches!(job.phase, ResyncPhase::Querying { request: r } if r == request)
        {
            return;
        }
        if source_regions.region_count() as u64 != self.geometry.region_count() {
            self.eject(from, EjectReason::SessionBroken, out);
            return;
        }
        let dest = job.dest;
        let mut regions = source_regions;
        if !self.options.bugs.has(PlantedBug::ResyncOnlySourceSide) {
            let dest_dirty = &self.connected(dest).expect("dest connected").hello.dirty;
            regions.union_with(dest_dirty);
        }
        let geometry = self.geometry;
        let job = self.resync.as_mut().expect("job exists");
        job.todo = regions.iter().collect();
        job.regions_total = job.todo.len() as u64;
        job.bytes_total = job.todo.iter().map(|r| geometry.region_range(*r).1).sum();
        job.phase = ResyncPhase::Copying;
    }

    /// Starts segment copies within the in-flight and bandwidth limits.
    pub(super) fn pump_resync(&mut self, out: &mut Vec<TargetOutput>) {
        let throttled = self.resync_rate() > 0;
        loop {
            let Some(job) = self.resync.as_mut() else {
                return;
            };
            if !matches!(job.phase, ResyncPhase::Copying) {
                return;
            }
            if job.todo.is_empty() && job.reading.is_empty() && job.writing.is_empty() {
                job.phase = ResyncPhase::Finishing;
                let (dest, stamp) = (job.dest, Stamp::new(self.generation, self.seq_last));
                self.send(
                    dest,
                    Message::FinishResync { stamp },
                    Some(Awaited::Marker),
                    out,
                );
                return;
            }
            if job.reading.len() + job.writing.len() >= self.options.resync_segments_inflight_max {
                return;
            }
            let Some(&region) = job.todo.front() else {
                return;
            };
            let (offset, len) = self.geometry.region_range(region);
            if throttled && self.resync_budget_bytes < len {
                return;
            }
            job.todo.pop_front();
            if throttled {
                self.resync_budget_bytes -= len;
            }
            let source = job.source;
            let locked = !self.options.bugs.has(PlantedBug::CopyWithoutRangeLock);
            let request = self.request_id();
            if locked {
                self.locked_ranges.push((offset, len));
            }
            let job = self.resync.as_mut().expect("job exists");
            job.reading.insert(
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

    pub(super) fn unlock(&mut self, segment: &Segment) {
        if segment.locked {
            let position = self
                .locked_ranges
                .iter()
                .position(|&range| range == (segment.offset, segment.len))
                .expect("a locked segment has its lock");
            self.locked_ranges.swap_remove(position);
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
        if job.source != from {
            return;
        }
        let Some(segment) = job.reading.remove(&request) else {
            return;
        };
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
                self.unlock(&segment);
                if let Some(job) = self.resync.as_mut() {
                    job.writing.insert(write_request, segment);
                }
            }
            Ok(_) => {
                self.unlock(&segment);
                self.eject(from, EjectReason::SessionBroken, out);
            }
            Err(failure) => {
                self.unlock(&segment);
                self.eject(from, EjectReason::IoFailure(failure), out);
            }
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
        if job.dest != from {
            return;
        }
        let Some(segment) = job.writing.remove(&request) else {
            return;
        };
        match result {
            Ok(()) => job.bytes_done += segment.len,
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
        if job.dest != from || !matches!(job.phase, ResyncPhase::Finishing) {
            return;
        }
        if let Err(failure) = result {
            self.eject(from, EjectReason::IoFailure(failure), out);
            return;
        }
        let job = self.resync.take().expect("job exists");
        out.push(TargetOutput::Event(TargetEvent::ResyncFinished {
            replica: job.dest,
            source: job.source,
            full: job.full,
            regions: job.regions_total,
            bytes: job.bytes_done,
        }));
        // The replica now holds every operation sequenced before it joined (copied) and has
        // applied every later one it was sent: it holds all of them.
        let c = self.connected_mut(from).expect("dest connected");
        let first_live_seq = c.first_live_seq;
        let incarnation = c.hello.incarnation;
        for op in self.ops.range_mut(..first_live_seq).map(|(_, op)| op) {
            op.holders.insert(from);
        }
        if self.is_trusted(from, incarnation) {
            self.connected_mut(from).expect("connected").state = LinkState::Healthy;
        } else {
            self.connected_mut(from).expect("connected").state = LinkState::AwaitingPromotion;
            self.try_promote(out);
        }
    }

    pub(super) fn abort_resync(&mut self, out: &mut Vec<TargetOutput>) {
        let Some(job) = self.resync.take() else {
            return;
        };
        for segment in job.reading.values() {
            self.unlock(segment);
        }
        // The replica being resynced stays waiting (its checkpoint and dirty set still hold) and
        // the resync starts over, with another source if need be.
        if let Some(c) = self.connected_mut(job.dest) {
            c.state = LinkState::NeedsResync { started: true };
        }
        self.retry_waiting(out);
    }
}
