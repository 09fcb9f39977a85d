//! Client I/O: sequencing, replicating and acknowledging writes, trims and flushes; serving reads.

use std::collections::BTreeSet;

use crate::message::{Message, RequestId};
use crate::target::link::{Awaited, LinkState};
use crate::target::{reply, Phase, Target};
use crate::target::{
    ClientError, ClientOp, ClientReplyBody, ClientRequest, ClientRequestId, EjectReason,
    TargetEvent, TargetOutput,
};
use crate::types::{Extent, IoFailure, ReplicaId, Seq, SessionId, Stamp};
use crate::PlantedBug;

#[derive(Clone, Debug)]
pub(super) struct PendingOp {
    /// Kept until answered, to send again if every replica holding it is lost.
    pub(super) message: Message,
    pub(super) client: Option<ClientRequestId>,
    pub(super) stamp: Stamp,
    pub(super) reply_stamp: Stamp,
    pub(super) is_flush: bool,
    /// Replicas that hold it: acknowledged it, or were resynced past it.
    pub(super) holders: BTreeSet<ReplicaId>,
    /// Replicas that refused it for lack of space (changing nothing), in the session they
    /// refused it in: they wait for [`Target::settle_refusals`].
    pub(super) refusers: Vec<(ReplicaId, SessionId)>,
}

/// A client read of data, or of allocation (block status): both go to one Healthy replica.
#[derive(Clone, Copy, Debug)]
pub(super) struct ClientRead {
    pub(super) client: ClientRequestId,
    pub(super) offset: u64,
    pub(super) len: u64,
    pub(super) allocation: bool,
}

#[derive(Clone, Debug)]
pub(super) struct PendingRead {
    pub(super) read: ClientRead,
    pub(super) replica: ReplicaId,
}

impl Target {
    pub(super) fn on_client(&mut self, request: ClientRequest, out: &mut Vec<TargetOutput>) {
        let in_range = match &request.op {
            ClientOp::Read { offset, len }
            | ClientOp::Allocation { offset, len }
            | ClientOp::Trim { offset, len } => self.geometry.contains_aligned(*offset, *len),
            ClientOp::Write { offset, data, .. } => {
                self.geometry.contains_aligned(*offset, data.len() as u64)
            }
            ClientOp::Flush => true,
        };
        if !in_range {
            reply(out, request.id, Err(ClientError::OutOfRange));
            return;
        }
        self.client_seen_tick = Some(self.now_tick);
        let deadline = self.now_tick + self.options.client_timeout_ticks;
        self.client_deadlines.insert(request.id, deadline);
        match request.op {
            ClientOp::Read { offset, len } | ClientOp::Allocation { offset, len } => {
                self.reads_waiting.push_back(ClientRead {
                    client: request.id,
                    offset,
                    len,
                    allocation: matches!(request.op, ClientOp::Allocation { .. }),
                });
                self.retry_waiting(out);
            }
            _ => {
                self.ops_waiting.push_back(request);
                self.retry_waiting(out);
            }
        }
    }

    /// Sequences waiting operations in order, stopping at the first that touches a locked range
    /// or while a replica is congested, and sends waiting reads to Healthy replicas.
    pub(super) fn retry_waiting(&mut self, out: &mut Vec<TargetOutput>) {
        if self.phase != Phase::Active {
            return;
        }
        while let Some(request) = self.ops_waiting.front() {
            if self.congested() {
                break;
            }
            let range = match &request.op {
                ClientOp::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
                ClientOp::Trim { offset, len } => Some((*offset, *len)),
                _ => None,
            };
            if range.is_some_and(|(offset, len)| self.is_locked(offset, len)) {
                break;
            }
            let request = self.ops_waiting.pop_front().expect("front exists");
            if matches!(request.op, ClientOp::Write { .. }) && self.refuse_for_space() {
                self.answer(out, request.id, Err(ClientError::NoSpace));
                continue;
            }
            self.sequence(request, out);
        }
        if !self.reads_waiting.is_empty() && !self.read_lease_holds() {
            self.renew_read_lease(out);
            return;
        }
        while let Some(&read) = self.reads_waiting.front() {
            let Some(replica) = self.pick_reader() else {
                break;
            };
            self.reads_waiting.pop_front();
            let request = self.request_id();
            self.reads.insert(request, PendingRead { read, replica });
            let (offset, len) = (read.offset, read.len);
            let message = if read.allocation {
                Message::QueryAllocation {
                    request,
                    offset,
                    len,
                }
            } else {
                Message::Read {
                    request,
                    offset,
                    len,
                }
            };
            self.send(replica, message, Some(Awaited::Request(request)), out);
        }
    }

    /// True if a client write fails with ENOSPC at once: a write was voided lately and no
    /// probe is due. When one is due, this write is it (and the next is due an interval on).
    fn refuse_for_space(&mut self) -> bool {
        let Some(probe_at) = self.no_space_probe_at else {
            return false;
        };
        if self.now_tick < probe_at {
            return true;
        }
        self.no_space_probe_at = Some(self.now_tick + self.options.no_space_probe_ticks);
        false
    }

    /// A replica that receives live operations has `replica_congestion_ops` unanswered.
    pub(super) fn congested(&self) -> bool {
        self.links.values().any(|link| {
            link.connected().is_some_and(|c| {
                c.state() != LinkState::Answered
                    && c.awaited().len() >= self.options.replica_congestion_ops
            })
        })
    }

    pub(super) fn is_locked(&self, offset: u64, len: u64) -> bool {
        self.resync
            .as_ref()
            .is_some_and(|job| job.is_locked(offset, len))
    }

    /// True while CF trusted members have answered a request sent within the read lease: none
    /// of them had accepted a newer target then, so no newer target has acknowledged a write
    /// yet (it waits longer than the lease after CF replicas accepted it). Reads are served
    /// only while it holds (G5).
    pub(super) fn read_lease_holds(&self) -> bool {
        let now = self.now_tick;
        let lease = self.options.read_lease_ticks;
        let confirming = self
            .links
            .iter()
            .filter(|(replica, link)| {
                link.connected().is_some_and(|c| {
                    self.is_trusted(**replica, c.hello().incarnation)
                        && c.confirmed_at_tick() + lease > now
                })
            })
            .count();
        confirming >= self.membership.consistency_factor()
            || self.options.bugs.has(PlantedBug::ReadWithoutLease)
    }

    /// Reads wait for the read lease: ask every idle trusted replica for a sign of life.
    fn renew_read_lease(&mut self, out: &mut Vec<TargetOutput>) {
        let idle: Vec<ReplicaId> = self
            .links
            .iter()
            .filter(|(replica, link)| {
                link.connected().is_some_and(|c| {
                    c.awaited().is_empty() && self.is_trusted(**replica, c.hello().incarnation)
                })
            })
            .map(|(replica, _)| *replica)
            .collect();
        for replica in idle {
            self.ping(replica, out);
        }
    }

    /// The Healthy replica with the fewest unanswered requests.
    pub(super) fn pick_reader(&self) -> Option<ReplicaId> {
        let unhealthy_reads = self.options.bugs.has(PlantedBug::ReadFromUnhealthyReplica);
        self.links
            .keys()
            .copied()
            .filter(|r| {
                self.is_healthy(*r)
                    || (unhealthy_reads
                        && self
                            .connected(*r)
                            .is_some_and(|c| c.state() != LinkState::Answered))
            })
            .min_by_key(|r| self.connected(*r).map_or(usize::MAX, |c| c.awaited().len()))
    }

    pub(super) fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Gives an operation the next sequence and sends it to every connected replica.
    pub(super) fn sequence(&mut self, request: ClientRequest, out: &mut Vec<TargetOutput>) {
        let (message_for, client, fua) = match request.op {
            ClientOp::Write { offset, data, fua } => {
                let seq = self.seq_last.next();
                let committed = self.committed;
                (
                    Message::Write {
                        seq,
                        offset,
                        data,
                        committed,
                    },
                    (!fua).then_some(request.id),
                    fua,
                )
            }
            ClientOp::Trim { offset, len } => {
                let seq = self.seq_last.next();
                let committed = self.committed;
                (
                    Message::Trim {
                        seq,
                        offset,
                        len,
                        committed,
                    },
                    Some(request.id),
                    false,
                )
            }
            ClientOp::Flush => (
                Message::Flush {
                    seq: self.seq_last.next(),
                    committed: self.committed,
                },
                Some(request.id),
                false,
            ),
            ClientOp::Read { .. } | ClientOp::Allocation { .. } => {
                unreachable!("reads are not sequenced")
            }
        };
        self.broadcast(message_for, client, None, out);
        if fua {
            // FUA: a flush right behind the write carries the reply; a replica acknowledges the
            // flush only after applying the write, so its quorum covers the write too.
            let write_stamp = Stamp::new(self.generation, self.seq_last);
            let flush = Message::Flush {
                seq: self.seq_last.next(),
                committed: self.committed,
            };
            self.broadcast(flush, Some(request.id), Some(write_stamp), out);
        }
    }

    /// Sequences `message` and sends it to every connected replica. The client's reply carries
    /// `reply_stamp` if given (a FUA write's own stamp), else the operation's.
    pub(super) fn broadcast(
        &mut self,
        message: Message,
        client: Option<ClientRequestId>,
        reply_stamp: Option<Stamp>,
        out: &mut Vec<TargetOutput>,
    ) {
        let seq = match &message {
            Message::Write { seq, .. } | Message::Trim { seq, .. } | Message::Flush { seq, .. } => {
                *seq
            }
            _ => unreachable!("only sequenced operations are broadcast"),
        };
        assert_eq!(seq, self.seq_last.next(), "sequences are dense");
        assert_eq!(self.phase, Phase::Active, "only a serving target sequences");
        let range = match &message {
            Message::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
            Message::Trim { offset, len, .. } => Some((*offset, *len)),
            _ => None,
        };
        assert!(
            range.is_none_or(|(offset, len)| !self.is_locked(offset, len)),
            "a write is never sequenced over a range being copied (G7)"
        );
        self.seq_last = seq;
        self.last_stamp = Stamp::new(self.generation, seq);
        self.ops.insert(
            seq,
            PendingOp {
                message: message.clone(),
                client,
                stamp: Stamp::new(self.generation, seq),
                reply_stamp: reply_stamp.unwrap_or(Stamp::new(self.generation, seq)),
                is_flush: matches!(message, Message::Flush { .. }),
                holders: BTreeSet::new(),
                refusers: Vec::new(),
            },
        );
        for replica in self.receivers() {
            self.send(replica, message.clone(), Some(Awaited::Op(seq)), out);
        }
    }

    /// Answers every operation that CF trusted Healthy replicas hold. True if that ejected a
    /// replica that had refused one of them for lack of space.
    pub(super) fn complete_ops(&mut self, out: &mut Vec<TargetOutput>) -> bool {
        let healthy: BTreeSet<ReplicaId> = self.healthy_replicas().into_iter().collect();
        let needed = if self
            .options
            .bugs
            .has(PlantedBug::AckBeforeConsistencyFactor)
        {
            1
        } else {
            self.membership.consistency_factor()
        };
        let done: Vec<Seq> = self
            .ops
            .iter()
            .filter(|(_, op)| op.holders.intersection(&healthy).count() >= needed)
            .map(|(seq, _)| *seq)
            .collect();
        let mut ejected = false;
        for seq in done {
            let op = self.ops.remove(&seq).expect("listed");
            assert_eq!(
                op.stamp.generation, self.generation,
                "a target answers only operations it sequenced"
            );
            // Replicas that refused it for lack of space lack it.
            for (replica, session) in op.refusers {
                if self
                    .connected(replica)
                    .is_some_and(|c| c.session_id() == session)
                {
                    self.eject(replica, EjectReason::IoFailure(IoFailure::NoSpace), out);
                    ejected = true;
                }
            }
            self.acked_max = self.acked_max.max(op.stamp);
            if !op.is_flush {
                // A write (or trim) went through: there is space again.
                self.no_space_probe_at = None;
            }
            if op.is_flush {
                self.committed = self.committed.max(seq);
                assert!(
                    self.committed <= self.seq_last,
                    "the durable watermark never passes what was sequenced"
                );
            }
            if let Some(client) = op.client {
                let stamp = op.reply_stamp;
                self.answer(out, client, Ok(ClientReplyBody::Done { stamp }));
            }
        }
        ejected
    }

    pub(super) fn on_replica_message(
        &mut self,
        from: ReplicaId,
        message: Message,
        out: &mut Vec<TargetOutput>,
    ) {
        match message {
            Message::WriteDone { seq, result } | Message::FlushDone { seq, result } => {
                self.answered(from, Awaited::Op(seq));
                if let Some(c) = self.connected_mut(from) {
                    c.flush_answered(seq, result.is_ok());
                }
                match result {
                    Ok(()) => {
                        if let Some(link) = self.links.get_mut(&from) {
                            link.note_acknowledged(seq);
                        }
                        if let Some(op) = self.ops.get_mut(&seq) {
                            op.holders.insert(from);
                        }
                    }
                    Err(IoFailure::NoSpace) if self.may_void(seq) => {
                        let session = self.connected(from).map(|c| c.session_id());
                        let op = self.ops.get_mut(&seq).expect("may_void checked");
                        op.refusers.extend(session.map(|session| (from, session)));
                        self.refused.insert(seq);
                    }
                    Err(failure) => self.eject(from, EjectReason::IoFailure(failure), out),
                }
            }
            Message::ReadDone { request, result } => {
                self.on_read_done(from, request, result.map(ClientReplyBody::Read), out);
            }
            Message::Allocation { request, result } => {
                self.on_read_done(from, request, result.map(ClientReplyBody::Allocation), out);
            }
            Message::ResyncStarted => {
                self.answered(from, Awaited::Marker);
                if let Some(c) = self.connected_mut(from) {
                    if c.state() == (LinkState::NeedsResync { started: false }) {
                        c.set_state(LinkState::NeedsResync { started: true });
                    }
                }
            }
            Message::Regions { request, regions } => {
                self.answered(from, Awaited::Request(request));
                self.on_regions(from, request, regions, out);
            }
            Message::SegmentData { request, result } => {
                self.answered(from, Awaited::Request(request));
                self.on_segment_data(from, request, result, out);
            }
            Message::SegmentWritten { request, result } => {
                self.answered(from, Awaited::Request(request));
                self.on_segment_written(from, request, result, out);
            }
            Message::ResyncFinished { result } => {
                self.answered(from, Awaited::Marker);
                self.on_resync_finished(from, result, out);
            }
            Message::Pong { request } => self.answered(from, Awaited::Request(request)),
            _ => self.eject(from, EjectReason::SessionBroken, out),
        }
    }

    /// True while a write (or trim) refused for lack of space could still be voided: it is
    /// unanswered (fewer than CF Healthy replicas hold it). Never a flush.
    fn may_void(&self, seq: Seq) -> bool {
        self.ops.get(&seq).is_some_and(|op| !op.is_flush)
    }

    /// Decides each write refused for lack of space once every replica it was sent to has
    /// answered it. If CF Healthy replicas hold it, it is acknowledged and the refusers, which
    /// lack it, are ejected (and resynced later, as for any failed write). Otherwise it can
    /// never be acknowledged, and a Healthy replica refused it: it is voided. Its client is
    /// told ENOSPC, the refusers (which changed nothing) are told to go on, and each replica
    /// that applied it is copied to again where it did (a replica being rebuilt) or ejected
    /// and resynced. The volume's history holds the write as nothing.
    ///
    /// True if it decided any (each decision removes a refusal, so rounds of this end).
    pub(super) fn settle_refusals(&mut self, out: &mut Vec<TargetOutput>) -> bool {
        let mut decided = false;
        // Answered, voided or sent again meanwhile: nothing to settle.
        let ops = &self.ops;
        self.refused
            .retain(|seq| ops.get(seq).is_some_and(|op| !op.refusers.is_empty()));
        let refused: Vec<Seq> = self.refused.iter().copied().collect();
        for seq in refused {
            let unanswered = self.links.values().any(|link| {
                link.connected()
                    .is_some_and(|c| c.awaited().contains_key(&Awaited::Op(seq)))
            });
            if unanswered {
                continue;
            }
            decided = true;
            self.refused.remove(&seq);
            let op = self.ops.get_mut(&seq).expect("listed");
            let refusers: Vec<(ReplicaId, SessionId)> = std::mem::take(&mut op.refusers);
            let refusers: Vec<ReplicaId> = refusers
                .into_iter()
                .filter(|(replica, session)| {
                    self.connected(*replica)
                        .is_some_and(|c| c.session_id() == *session)
                })
                .map(|(replica, _)| replica)
                .collect();
            let healthy_refuser = refusers.iter().any(|r| self.is_healthy(*r));
            if healthy_refuser && self.healthy_holders(seq) < self.membership.consistency_factor() {
                self.void(seq, &refusers, out);
            } else {
                for replica in refusers {
                    self.eject(replica, EjectReason::IoFailure(IoFailure::NoSpace), out);
                }
            }
        }
        decided
    }

    /// How many Healthy replicas hold pending operation `seq`.
    fn healthy_holders(&self, seq: Seq) -> usize {
        self.ops[&seq]
            .holders
            .iter()
            .filter(|holder| self.is_healthy(**holder))
            .count()
    }

    /// Voids write (or trim) `seq`, which every Healthy replica refused for lack of space.
    fn void(&mut self, seq: Seq, refusers: &[ReplicaId], out: &mut Vec<TargetOutput>) {
        assert!(
            self.healthy_holders(seq) < self.membership.consistency_factor(),
            "an acknowledged write is never voided (G1)"
        );
        let op = self.ops.remove(&seq).expect("voided ops are pending");
        assert!(!op.is_flush, "only writes and trims are voided");
        self.last_voided = self.last_voided.max(seq);
        self.no_space_probe_at = Some(self.now_tick + self.options.no_space_probe_ticks);
        // A FUA write's reply rides on the flush right behind it.
        let client = op.client.or_else(|| {
            self.ops
                .values_mut()
                .find(|later| later.is_flush && later.reply_stamp == op.stamp)
                .and_then(|flush| flush.client.take())
        });
        if let Some(client) = client {
            self.answer(out, client, Err(ClientError::NoSpace));
        }
        out.push(TargetOutput::Event(TargetEvent::WriteVoided { seq }));
        for replica in refusers {
            self.send(*replica, Message::Voided { seq }, None, out);
        }
        let range = match &op.message {
            Message::Write { offset, data, .. } => (*offset, data.len() as u64),
            Message::Trim { offset, len, .. } => (*offset, *len),
            _ => unreachable!("only writes and trims are voided"),
        };
        let regions = self.geometry.regions_of(range.0, range.1);
        if self.options.bugs.has(PlantedBug::KeepVoidedWrites) {
            return;
        }
        for replica in op.holders {
            if self.connected(replica).is_none() {
                continue; // Its next session resyncs it (see `rejoin`).
            }
            let geometry = self.geometry;
            let copied_again = self.resync.as_mut().is_some_and(|job| {
                job.dest == replica && job.copy_again(regions.clone(), &geometry)
            });
            if !copied_again {
                self.eject(replica, EjectReason::HoldsVoidedWrite, out);
            }
        }
    }

    /// A replica answered a client read (data or allocation). An answer of the wrong shape
    /// breaks the session; a failed one ejects the replica. Either way the read is sent again,
    /// to another Healthy replica.
    fn on_read_done(
        &mut self,
        from: ReplicaId,
        request: RequestId,
        result: Result<ClientReplyBody, IoFailure>,
        out: &mut Vec<TargetOutput>,
    ) {
        self.answered(from, Awaited::Request(request));
        let Some(PendingRead { read, .. }) = self.reads.remove(&request) else {
            return;
        };
        let well_formed = |body: &ClientReplyBody| match body {
            ClientReplyBody::Read(data) => !read.allocation && data.len() as u64 == read.len,
            ClientReplyBody::Allocation(extents) => {
                read.allocation && Extent::cover(extents, read.len)
            }
            ClientReplyBody::Done { .. } => false,
        };
        match result {
            Ok(body) if well_formed(&body) => self.answer(out, read.client, Ok(body)),
            Ok(_) => {
                self.reads_waiting.push_front(read);
                self.eject(from, EjectReason::SessionBroken, out);
            }
            Err(failure) => {
                self.reads_waiting.push_front(read);
                self.eject(from, EjectReason::IoFailure(failure), out);
            }
        }
    }

    pub(super) fn answered(&mut self, from: ReplicaId, awaited: Awaited) {
        if let Some(c) = self.connected_mut(from) {
            c.answered(awaited);
        }
    }
}
