//! The replica state machine: applies one target's operations, in session order, to its storage.
//!
//! A replica serves one session at a time, opened by a target's `Hello`. It refuses targets of an
//! older generation than it has seen (G5). Work is started strictly in arrival order; consecutive
//! operations that do not overlap are pipelined to storage, overlapping ones wait. Flush, the two
//! resync markers and the handshake are barriers: they wait for all storage work to finish.
//!
//! The replica keeps a region map (newest sequence per region) and an activity log in memory and
//! persists them at checkpoints; a write to a region outside the persisted activity log first
//! extends the log, so an unclean stop never loses track of what may have changed (DRBD's idea).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::message::{Envelope, HelloAck, Message, Refusal, RequestId};
use crate::meta::{MetaUpdate, ReplicaMeta, Superblock, SEQ_UNKNOWN};
use crate::session::{Arrival, Session};
use crate::types::{Extent, Generation, IoFailure, RegionSet, Seq, SessionId, Stamp};
use crate::{Bugs, PlantedBug};

/// Identifies one storage operation so its completion can be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct DiskOpId(pub u64);

/// Whether a data write carries a client's data or resync data copied from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WriteOrigin {
    Client,
    Resync,
}

/// A storage operation the replica asks for. Completions come back as [`ReplicaInput::DiskDone`].
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DiskOp {
    Write {
        id: DiskOpId,
        offset: u64,
        data: Bytes,
        origin: WriteOrigin,
    },
    /// Zeroes a range, punching holes where storage can.
    Trim {
        id: DiskOpId,
        offset: u64,
        len: u64,
    },
    Read {
        id: DiskOpId,
        offset: u64,
        len: u64,
    },
    /// Reports which parts of a range hold data and which are holes (reading as zeroes), as
    /// extents covering exactly the range.
    Allocation {
        id: DiskOpId,
        offset: u64,
        len: u64,
    },
    /// Makes every completed data write durable (fsync).
    Sync {
        id: DiskOpId,
    },
    /// Writes metadata atomically and durably.
    PersistMeta {
        id: DiskOpId,
        update: MetaUpdate,
    },
}

#[derive(Clone, Debug)]
pub enum ReplicaInput {
    Message(Envelope),
    /// A storage operation finished.
    DiskDone {
        id: DiskOpId,
        result: Result<Completion, IoFailure>,
    },
}

/// What a successful storage operation returns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Completion {
    Done,
    /// A read's data.
    Data(Bytes),
    /// An allocation query's extents.
    Extents(Vec<Extent>),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ReplicaOutput {
    Send(Envelope),
    Disk(DiskOp),
}

/// Tunables for a replica.
#[derive(Clone, Copy, Debug)]
pub struct ReplicaOptions {
    /// When a write leaves the activity log, the log is extended by this many regions from the
    /// written one, so sequential writers extend it rarely.
    pub activity_log_extend_regions: u32,
    pub bugs: Bugs,
}

impl Default for ReplicaOptions {
    fn default() -> Self {
        ReplicaOptions {
            activity_log_extend_regions: 16,
            bugs: Bugs::none(),
        }
    }
}

/// Work received in the current session and not yet started.
#[derive(Clone, Debug)]
enum Work {
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
enum ReadKind {
    Client,
    Segment,
    Allocation,
}

/// What an in-flight storage operation is for.
#[derive(Clone, Copy, Debug)]
enum Purpose {
    Write { seq: Seq },
    WriteSegment { request: RequestId },
    Read { request: RequestId, kind: ReadKind },
    ActivityLog,
    Barrier,
}

#[derive(Clone, Copy, Debug)]
struct Inflight {
    purpose: Purpose,
    session: SessionId,
    /// Byte range for data operations, and whether the operation modifies data.
    range: Option<(u64, u64, bool)>,
}

/// A barrier in progress. Each runs a sync and/or a metadata write, then replies.
#[derive(Clone, Copy, Debug)]
enum Barrier {
    Hello,
    Flush { seq: Seq },
    StartResync,
    MarkInconsistent,
    FinishResync { stamp: Stamp },
}

pub struct Replica {
    options: ReplicaOptions,
    /// The superblock as last persisted (or about to be, while a barrier runs).
    superblock: Superblock,
    region_seqs: Vec<Seq>,
    /// Region-map entries changed since the map was last persisted.
    regions_changed: BTreeSet<u32>,
    /// The activity log as persisted.
    activity_log: RegionSet,
    activity_log_pending: Option<RegionSet>,
    session: Option<Session>,
    queue: VecDeque<Work>,
    inflight: BTreeMap<DiskOpId, Inflight>,
    barrier: Option<(Barrier, SessionId)>,
    /// The newest operation started, in this replica's current history.
    last_applied: Stamp,
    /// False after an unclean restart until the replica is resynced or serves as a source:
    /// `last_applied` is then only the stamp of the last checkpoint.
    stamp_exact: bool,
    /// The newest durable watermark heard from the target.
    committed: Seq,
    /// Set when storage failed a sync or metadata write: the data can no longer be trusted.
    storage_failed: bool,
    /// While being resynced and still a consistent copy (live operations continue its history):
    /// the stamp the resync brings in, persisted if it stops being consistent.
    joining: Option<Stamp>,
    /// Writes of the current history that storage failed, not yet applied again: the history
    /// this replica holds ends just before the first of them.
    failed_writes: Option<(Generation, BTreeSet<Seq>)>,
    next_disk_op: u64,
}

impl Replica {
    /// Opens a replica from its persisted metadata. Regions in the activity log may hold writes
    /// the region map never saw, so they are marked as changed at an unknown point.
    pub fn open(meta: ReplicaMeta, options: ReplicaOptions) -> Replica {
        let ReplicaMeta {
            superblock,
            mut region_seqs,
            activity_log,
        } = meta;
        let regions = superblock.geometry.region_count() as usize;
        assert_eq!(region_seqs.len(), regions, "region map size");
        assert_eq!(
            activity_log.region_count() as usize,
            regions,
            "activity log size"
        );
        let mut regions_changed = BTreeSet::new();
        for region in activity_log.iter() {
            region_seqs[region as usize] = SEQ_UNKNOWN;
            regions_changed.insert(region);
        }
        // With an empty activity log nothing was written after the last checkpoint, so the
        // persisted stamp is exact.
        let stamp_exact = activity_log.is_empty();
        Replica {
            options,
            stamp_exact,
            last_applied: superblock.stamp,
            committed: superblock.checkpoint,
            superblock,
            region_seqs,
            regions_changed,
            activity_log,
            activity_log_pending: None,
            session: None,
            queue: VecDeque::new(),
            inflight: BTreeMap::new(),
            barrier: None,
            storage_failed: false,
            failed_writes: None,
            joining: None,
            next_disk_op: 0,
        }
    }

    pub fn superblock(&self) -> &Superblock {
        &self.superblock
    }

    pub fn last_applied(&self) -> Stamp {
        self.last_applied
    }

    /// A one-line summary of the replica's state, for logs and failure reports.
    pub fn describe(&self) -> String {
        format!(
            "replica {} session {:?} consistent={} storage_failed={} applied={} history={} checkpoint={} queue={} inflight={} barrier={:?} failed_writes={:?}",
            self.superblock.replica.0,
            self.session,
            self.superblock.consistent,
            self.storage_failed,
            self.last_applied,
            self.history_stamp(),
            self.superblock.checkpoint.0,
            self.queue.len(),
            self.inflight.len(),
            self.barrier,
            self.failed_writes
        )
    }

    /// False after an unclean restart, until the replica is resynced or serves as a source.
    pub fn stamp_exact(&self) -> bool {
        self.stamp_exact
    }

    /// The end of the history this replica holds: the last operation applied, or just before
    /// the first write storage failed.
    pub fn history_stamp(&self) -> Stamp {
        match &self.failed_writes {
            Some((generation, seqs)) => {
                let first = *seqs.first().expect("no empty failure sets");
                let before = Stamp::new(*generation, Seq(first.0 - 1));
                self.last_applied.min(before)
            }
            None => self.last_applied,
        }
    }

    pub fn session(&self) -> Option<SessionId> {
        self.session.map(|session| session.id())
    }

    pub fn handle(&mut self, input: ReplicaInput, out: &mut Vec<ReplicaOutput>) {
        match input {
            ReplicaInput::Message(envelope) => self.on_envelope(envelope, out),
            ReplicaInput::DiskDone { id, result } => self.on_disk_done(id, result, out),
        }
        self.pump(out);
    }

    fn on_envelope(&mut self, envelope: Envelope, out: &mut Vec<ReplicaOutput>) {
        if let Message::Hello {
            generation,
            replica,
            geometry,
        } = envelope.message
        {
            self.on_hello(envelope.session, generation, replica, geometry, out);
            return;
        }
        let Some(session) = self.session.as_mut() else {
            return;
        };
        if envelope.session != session.id() {
            return;
        }
        match session.accept(envelope.number) {
            Arrival::InOrder => {}
            Arrival::Dropped => return,
            Arrival::Gap => {
                // Something was lost or reordered. The session cannot continue; the target
                // notices the silence, opens a new one and resyncs this replica.
                self.queue.clear();
                return;
            }
        }
        let work = match envelope.message {
            Message::Ping { request } => {
                let session = session.id();
                self.send(session, Message::Pong { request }, out);
                return;
            }
            Message::Write {
                seq,
                offset,
                data,
                committed,
            } => {
                self.committed = self.committed.max(committed);
                Work::Write { seq, offset, data }
            }
            Message::Trim {
                seq,
                offset,
                len,
                committed,
            } => {
                self.committed = self.committed.max(committed);
                Work::Trim { seq, offset, len }
            }
            Message::Flush { seq, committed } => {
                self.committed = self.committed.max(committed);
                Work::Flush { seq }
            }
            Message::Read {
                request,
                offset,
                len,
            } => Work::Read {
                request,
                offset,
                len,
                kind: ReadKind::Client,
            },
            Message::QueryAllocation {
                request,
                offset,
                len,
            } => Work::Read {
                request,
                offset,
                len,
                kind: ReadKind::Allocation,
            },
            Message::ReadSegment {
                request,
                offset,
                len,
            } => Work::Read {
                request,
                offset,
                len,
                kind: ReadKind::Segment,
            },
            Message::RegionsSince { request, since } => Work::RegionsSince { request, since },
            Message::StartResync {
                sync_stamp,
                live_after,
            } => Work::StartResync {
                sync_stamp,
                live_after,
            },
            Message::WriteSegment {
                request,
                offset,
                data,
                region_seq,
            } => Work::WriteSegment {
                request,
                offset,
                data,
                region_seq,
            },
            Message::FinishResync { stamp } => Work::FinishResync { stamp },
            // Messages only a replica sends: a confused or hostile peer. End the session.
            _ => {
                session.break_off();
                self.queue.clear();
                return;
            }
        };
        self.queue.push_back(work);
    }

    fn on_hello(
        &mut self,
        session_id: SessionId,
        generation: Generation,
        replica: crate::types::ReplicaId,
        geometry: crate::types::Geometry,
        out: &mut Vec<ReplicaOutput>,
    ) {
        // An older target is told so (it then stops serving) before anything else is checked.
        let fenced = (generation < self.superblock.generation_seen
            || session_id.generation() != generation)
            && !self.options.bugs.has(PlantedBug::SkipGenerationCheck);
        if !fenced
            && self
                .session
                .is_some_and(|current| session_id <= current.id())
        {
            return; // A stale or duplicated handshake.
        }
        let refusal = if fenced {
            Some(Refusal::Fenced {
                generation_seen: self.superblock.generation_seen,
            })
        } else if replica != self.superblock.replica {
            Some(Refusal::WrongReplica {
                replica: self.superblock.replica,
            })
        } else if geometry != self.superblock.geometry {
            Some(Refusal::GeometryMismatch)
        } else {
            None
        };
        if let Some(refusal) = refusal {
            out.push(ReplicaOutput::Send(Envelope {
                session: session_id,
                number: Session::OPENING_NUMBER,
                message: Message::Refused(refusal),
            }));
            return;
        }
        // A new session replaces the old one: work not yet started is dropped (the target
        // resyncs whatever it misses). Work already in storage finishes first (Hello is a barrier).
        self.session = Some(Session::accepted(session_id));
        self.queue.clear();
        self.joining = None;
        self.queue.push_back(Work::Hello);
    }

    fn send(&mut self, session: SessionId, message: Message, out: &mut Vec<ReplicaOutput>) {
        let Some(current) = self.session.as_mut() else {
            return;
        };
        if current.id() != session || current.is_broken() {
            return;
        }
        out.push(ReplicaOutput::Send(current.envelope(message)));
    }

    /// Sends one operation to storage and remembers what it is for.
    fn issue(
        &mut self,
        inflight: Inflight,
        out: &mut Vec<ReplicaOutput>,
        operation: impl FnOnce(DiskOpId) -> DiskOp,
    ) {
        self.next_disk_op += 1;
        let id = DiskOpId(self.next_disk_op);
        self.inflight.insert(id, inflight);
        out.push(ReplicaOutput::Disk(operation(id)));
    }

    fn current_session(&self) -> Option<SessionId> {
        self.session.filter(|s| !s.is_broken()).map(|s| s.id())
    }

    /// Starts queued work, in order, as far as overlaps and barriers allow.
    fn pump(&mut self, out: &mut Vec<ReplicaOutput>) {
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
    fn may_start_front(&mut self, out: &mut Vec<ReplicaOutput>) -> bool {
        let (offset, len) = match self.queue.front() {
            Some(
                Work::Hello
                | Work::Flush { .. }
                | Work::StartResync { .. }
                | Work::MarkInconsistent
                | Work::FinishResync { .. },
            ) => return self.inflight.is_empty(),
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

    fn start(&mut self, work: Work, session: SessionId, out: &mut Vec<ReplicaOutput>) {
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
    /// `writes_only`).
    fn overlaps_inflight(&self, offset: u64, len: u64, writes_only: bool) -> bool {
        self.inflight.values().any(|inflight| match inflight.range {
            Some((start, length, modifies)) => {
                (modifies || !writes_only) && start < offset + len && offset < start + length
            }
            None => false,
        })
    }

    /// Checks a modifying operation may start now: no overlap, and its regions are in the
    /// persisted activity log (extending the log first if not).
    fn ready_to_modify(&mut self, offset: u64, len: u64, out: &mut Vec<ReplicaOutput>) -> bool {
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
        self.persist(extended, false, Purpose::ActivityLog, out);
        false
    }

    fn note_region_change(&mut self, offset: u64, len: u64, seq: Seq, exact: bool) {
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

    fn start_client_write(
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

    fn start_segment_write(
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
        self.note_region_change(offset, len, region_seq, true);
        let inflight = Inflight {
            purpose: Purpose::WriteSegment { request },
            session,
            range: Some((offset, len, true)),
        };
        self.issue(inflight, out, |id| DiskOp::Write {
            id,
            offset,
            data,
            origin: WriteOrigin::Resync,
        });
    }

    fn start_read(
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

    fn regions_changed_after(&self, since: Seq) -> RegionSet {
        let mut regions = RegionSet::new(self.region_seqs.len() as u32);
        for (region, seq) in self.region_seqs.iter().enumerate() {
            if *seq > since {
                regions.insert(region as u32);
            }
        }
        regions
    }

    fn start_barrier(&mut self, work: Work, session: SessionId, out: &mut Vec<ReplicaOutput>) {
        assert!(self.inflight.is_empty(), "barriers start with storage idle");
        let barrier = match work {
            Work::Hello => {
                let generation = session.generation();
                if generation <= self.superblock.generation_seen {
                    self.send_hello_ack(session, out);
                    return;
                }
                self.superblock.generation_seen = generation;
                self.persist(self.activity_log.clone(), false, Purpose::Barrier, out);
                Barrier::Hello
            }
            Work::Flush { seq } => {
                self.last_applied = Stamp::new(session.generation(), seq);
                self.sync(out);
                Barrier::Flush { seq }
            }
            Work::StartResync {
                sync_stamp,
                live_after,
            } => {
                // Live operations continue this replica's history only if it ends exactly where
                // they start and nothing beyond it may be on disk.
                let continues = self.superblock.consistent
                    && self.stamp_exact
                    && self.failed_writes.is_none()
                    && live_after == Some(self.history_stamp());
                if continues {
                    self.joining = Some(sync_stamp);
                    self.send(session, Message::ResyncStarted, out);
                    return;
                }
                self.superblock.consistent = false;
                self.superblock.sync_stamp = sync_stamp;
                self.persist(self.activity_log.clone(), true, Purpose::Barrier, out);
                Barrier::StartResync
            }
            Work::MarkInconsistent => {
                self.superblock.consistent = false;
                self.superblock.sync_stamp = self.joining.take().unwrap_or(Stamp::ZERO);
                self.persist(self.activity_log.clone(), true, Purpose::Barrier, out);
                Barrier::MarkInconsistent
            }
            Work::FinishResync { stamp } => {
                self.sync(out);
                Barrier::FinishResync { stamp }
            }
            _ => unreachable!("not a barrier"),
        };
        self.barrier = Some((barrier, session));
    }

    fn sync(&mut self, out: &mut Vec<ReplicaOutput>) {
        let inflight = Inflight {
            purpose: Purpose::Barrier,
            session: self.current_session().expect("barrier has a session"),
            range: None,
        };
        self.issue(inflight, out, |id| DiskOp::Sync { id });
    }

    /// Persists the superblock and `activity_log` (and, with `with_map`, the changed region-map
    /// entries), for a barrier or for extending the activity log.
    fn persist(
        &mut self,
        activity_log: RegionSet,
        with_map: bool,
        purpose: Purpose,
        out: &mut Vec<ReplicaOutput>,
    ) {
        let region_changes = if with_map {
            std::mem::take(&mut self.regions_changed)
                .into_iter()
                .map(|region| (region, self.region_seqs[region as usize]))
                .collect()
        } else {
            Vec::new()
        };
        let inflight = Inflight {
            purpose,
            session: self.current_session().unwrap_or(SessionId(0)),
            range: None,
        };
        self.activity_log_pending = Some(activity_log.clone());
        let superblock = self.superblock.clone();
        self.issue(inflight, out, |id| DiskOp::PersistMeta {
            id,
            update: MetaUpdate {
                superblock,
                region_changes,
                activity_log,
            },
        });
    }

    fn send_hello_ack(&mut self, session: SessionId, out: &mut Vec<ReplicaOutput>) {
        let consistent = self.superblock.consistent && !self.storage_failed;
        let ack = HelloAck {
            replica: self.superblock.replica,
            incarnation: self.superblock.incarnation,
            consistent,
            stamp: self.history_stamp(),
            stamp_exact: self.stamp_exact,
            sync_stamp: self.superblock.sync_stamp,
            checkpoint: self.superblock.checkpoint,
            dirty: self.regions_changed_after(self.superblock.checkpoint),
        };
        self.send(session, Message::HelloAck(ack), out);
    }

    fn on_disk_done(
        &mut self,
        id: DiskOpId,
        result: Result<Completion, IoFailure>,
        out: &mut Vec<ReplicaOutput>,
    ) {
        let Some(inflight) = self.inflight.remove(&id) else {
            return; // Not ours (a completion replayed by a confused driver): ignore it.
        };
        let session = inflight.session;
        match inflight.purpose {
            Purpose::Write { seq } => {
                // A failed write was never acknowledged by this replica: it holds the history up
                // to just before it (and later writes, which a resync or a re-send repairs).
                let generation = session.generation();
                match (&result, self.failed_writes.as_mut()) {
                    (Err(_), Some((failed_generation, seqs)))
                        if *failed_generation == generation =>
                    {
                        seqs.insert(seq);
                    }
                    (Err(_), _) => self.failed_writes = Some((generation, BTreeSet::from([seq]))),
                    (Ok(_), Some((failed_generation, seqs)))
                        if *failed_generation == generation =>
                    {
                        seqs.remove(&seq);
                        if seqs.is_empty() {
                            self.failed_writes = None;
                        }
                    }
                    (Ok(_), _) => {}
                }
                let failed = result.is_err();
                let result = result.map(|_| ());
                self.send(session, Message::WriteDone { seq, result }, out);
                if failed {
                    self.stop_after_failed_write();
                }
            }
            Purpose::WriteSegment { request } => {
                let failed = result.is_err();
                let result = result.map(|_| ());
                self.send(session, Message::SegmentWritten { request, result }, out);
                if failed {
                    self.stop_after_failed_write();
                }
            }
            Purpose::Read { request, kind } => {
                let message = read_answer(request, kind, result);
                self.send(session, message, out);
            }
            Purpose::ActivityLog => {
                let extended = self
                    .activity_log_pending
                    .take()
                    .expect("log update pending");
                match result {
                    Ok(_) => self.activity_log = extended,
                    Err(_) => self.fail_session(),
                }
            }
            Purpose::Barrier => self.advance_barrier(result.map(|_| ()), out),
        }
    }

    /// After a failed write nothing more is applied in this session: no later write overlapping
    /// the failed one ever lands, so sending the failed one again later cannot undo newer data.
    fn stop_after_failed_write(&mut self) {
        if let Some(session) = self.session.as_mut() {
            session.break_off();
        }
        self.queue.clear();
    }

    /// Storage failed under us in a way the protocol cannot report: stop answering this session
    /// and let the target eject and later resync this replica.
    fn fail_session(&mut self) {
        self.storage_failed = true;
        if let Some(session) = self.session.as_mut() {
            session.break_off();
        }
        self.queue.clear();
    }

    fn advance_barrier(&mut self, result: Result<(), IoFailure>, out: &mut Vec<ReplicaOutput>) {
        let (barrier, session) = self.barrier.expect("a barrier is running");
        let persisted = self.activity_log_pending.take();
        if let Err(failure) = result {
            self.storage_failed = true;
            self.barrier = None;
            match barrier {
                Barrier::Flush { seq } => self.send(
                    session,
                    Message::FlushDone {
                        seq,
                        result: Err(failure),
                    },
                    out,
                ),
                Barrier::FinishResync { .. } => self.send(
                    session,
                    Message::ResyncFinished {
                        result: Err(failure),
                    },
                    out,
                ),
                Barrier::Hello | Barrier::StartResync | Barrier::MarkInconsistent => {
                    self.fail_session()
                }
            }
            return;
        }
        match persisted {
            // A metadata write finished: the barrier is done.
            Some(activity_log) => {
                self.activity_log = activity_log;
                self.barrier = None;
                match barrier {
                    Barrier::Hello => self.send_hello_ack(session, out),
                    Barrier::Flush { seq } => self.send(
                        session,
                        Message::FlushDone {
                            seq,
                            result: Ok(()),
                        },
                        out,
                    ),
                    Barrier::StartResync => self.send(session, Message::ResyncStarted, out),
                    Barrier::MarkInconsistent => {}
                    Barrier::FinishResync { .. } => {
                        self.send(session, Message::ResyncFinished { result: Ok(()) }, out)
                    }
                }
            }
            // A sync finished: record the checkpoint, then persist it with the region map. The
            // activity log can be emptied: every write so far is durable and in the map.
            None => {
                match barrier {
                    Barrier::Flush { seq } => {
                        if self.superblock.consistent && !self.storage_failed {
                            self.superblock.stamp = self.history_stamp();
                            let checkpoint = self.committed.min(seq);
                            self.superblock.checkpoint = self.superblock.checkpoint.max(checkpoint);
                        }
                    }
                    Barrier::FinishResync { stamp } => {
                        self.last_applied = self.last_applied.max(stamp);
                        self.joining = None;
                        self.stamp_exact = true;
                        self.failed_writes = None;
                        self.superblock.consistent = !self.storage_failed;
                        self.superblock.stamp = self.last_applied;
                        self.superblock.sync_stamp = Stamp::ZERO;
                    }
                    Barrier::Hello | Barrier::StartResync | Barrier::MarkInconsistent => {
                        unreachable!("no sync")
                    }
                }
                let empty = RegionSet::new(self.activity_log.region_count());
                self.persist(empty, true, Purpose::Barrier, out);
            }
        }
    }
}

enum DataChange {
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
fn read_answer(
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Geometry, Incarnation, ReplicaId};

    const GEOMETRY: Geometry = Geometry {
        size_bytes: 64 * 1024,
        block_size: 4096,
        region_size: 16 * 1024,
    };

    /// A replica with an in-memory disk that completes every operation in order when asked.
    struct Harness {
        replica: Replica,
        meta: ReplicaMeta,
        pending: VecDeque<DiskOp>,
        session: SessionId,
        number: u64,
        fail_writes: bool,
    }

    impl Harness {
        fn new(consistent: bool) -> Harness {
            let meta = ReplicaMeta::new(ReplicaId(1), Incarnation(7), GEOMETRY, consistent);
            Harness {
                replica: Replica::open(meta.clone(), ReplicaOptions::default()),
                meta,
                pending: VecDeque::new(),
                session: SessionId(0),
                number: 0,
                fail_writes: false,
            }
        }

        fn feed(&mut self, input: ReplicaInput) -> Vec<Message> {
            let mut out = Vec::new();
            self.replica.handle(input, &mut out);
            let mut sent = Vec::new();
            for output in out {
                match output {
                    ReplicaOutput::Send(envelope) => sent.push(envelope.message),
                    ReplicaOutput::Disk(op) => self.pending.push_back(op),
                }
            }
            sent
        }

        /// Completes storage work until none is left; returns what the replica sent meanwhile.
        fn settle(&mut self) -> Vec<Message> {
            let mut sent = Vec::new();
            while let Some(op) = self.pending.pop_front() {
                let (id, result) = match op {
                    DiskOp::PersistMeta { id, update } => {
                        self.meta.apply(&update);
                        (id, Ok(Completion::Done))
                    }
                    DiskOp::Write { id, .. } | DiskOp::Trim { id, .. } if self.fail_writes => {
                        (id, Err(IoFailure::NoSpace))
                    }
                    DiskOp::Write { id, .. } | DiskOp::Trim { id, .. } | DiskOp::Sync { id } => {
                        (id, Ok(Completion::Done))
                    }
                    DiskOp::Read { id, len, .. } => {
                        (id, Ok(Completion::Data(Bytes::from(vec![0; len as usize]))))
                    }
                    DiskOp::Allocation { id, len, .. } => (
                        id,
                        Ok(Completion::Extents(vec![Extent {
                            len,
                            allocated: false,
                        }])),
                    ),
                };
                sent.extend(self.feed(ReplicaInput::DiskDone { id, result }));
            }
            sent
        }

        fn hello(&mut self, generation: u64, counter: u32) -> Vec<Message> {
            self.session = SessionId::new(Generation(generation), counter);
            self.number = 1;
            let mut sent = self.feed(ReplicaInput::Message(Envelope {
                session: self.session,
                number: 1,
                message: Message::Hello {
                    generation: Generation(generation),
                    replica: ReplicaId(1),
                    geometry: GEOMETRY,
                },
            }));
            sent.extend(self.settle());
            sent
        }

        fn send(&mut self, message: Message) -> Vec<Message> {
            self.number += 1;
            let mut sent = self.feed(ReplicaInput::Message(Envelope {
                session: self.session,
                number: self.number,
                message,
            }));
            sent.extend(self.settle());
            sent
        }
    }

    fn write(seq: u64, block: u64, committed: u64) -> Message {
        Message::Write {
            seq: Seq(seq),
            offset: block * 4096,
            data: Bytes::from(vec![seq as u8; 4096]),
            committed: Seq(committed),
        }
    }

    fn flush(seq: u64, committed: u64) -> Message {
        Message::Flush {
            seq: Seq(seq),
            committed: Seq(committed),
        }
    }

    fn hello_ack(sent: &[Message]) -> &HelloAck {
        match sent {
            [Message::HelloAck(ack)] => ack,
            other => panic!("expected one HelloAck, got {other:?}"),
        }
    }

    #[test]
    fn refuses_an_older_generation_and_persists_the_newest() {
        let mut harness = Harness::new(true);
        hello_ack(&harness.hello(2, 1));
        assert_eq!(harness.meta.superblock.generation_seen, Generation(2));
        assert_eq!(
            harness.hello(1, 9),
            vec![Message::Refused(Refusal::Fenced {
                generation_seen: Generation(2)
            })]
        );
        hello_ack(&harness.hello(2, 2));
    }

    #[test]
    fn a_gap_in_the_session_ends_it() {
        let mut harness = Harness::new(true);
        harness.hello(1, 1);
        harness.number += 1; // Message 2 is lost.
        assert_eq!(
            harness.send(write(1, 0, 0)),
            vec![],
            "message 3 after a gap is not applied"
        );
        assert_eq!(
            harness.send(write(2, 1, 0)),
            vec![],
            "nor anything after it"
        );
        assert_eq!(harness.replica.last_applied(), Stamp::ZERO);
    }

    #[test]
    fn the_activity_log_is_extended_before_a_region_is_first_written() {
        let mut harness = Harness::new(true);
        harness.hello(1, 1);
        harness.number += 1;
        harness.feed(ReplicaInput::Message(Envelope {
            session: harness.session,
            number: harness.number,
            message: write(1, 4, 0), // Block 4 is in region 1.
        }));
        let Some(DiskOp::PersistMeta { update, .. }) = harness.pending.front() else {
            panic!("the log is persisted first: {:?}", harness.pending);
        };
        assert!(update.activity_log.contains(1));
        assert_eq!(harness.pending.len(), 1, "the data write waits for the log");
        assert_eq!(
            harness.settle(),
            vec![Message::WriteDone {
                seq: Seq(1),
                result: Ok(())
            }]
        );
        // A second write to the region needs no metadata.
        harness.number += 1;
        harness.feed(ReplicaInput::Message(Envelope {
            session: harness.session,
            number: harness.number,
            message: write(2, 5, 0),
        }));
        assert!(matches!(
            harness.pending.front(),
            Some(DiskOp::Write { .. })
        ));
        harness.settle();
    }

    #[test]
    fn a_flush_checkpoints_at_the_durable_watermark_and_empties_the_log() {
        let mut harness = Harness::new(true);
        harness.hello(1, 1);
        harness.send(write(1, 0, 0));
        harness.send(flush(2, 0));
        assert_eq!(
            harness.meta.superblock.checkpoint,
            Seq(0),
            "nothing was durable on CF yet"
        );
        harness.send(write(3, 4, 2));
        let sent = harness.send(flush(4, 2));
        assert_eq!(
            sent,
            vec![Message::FlushDone {
                seq: Seq(4),
                result: Ok(())
            }]
        );
        assert_eq!(harness.meta.superblock.checkpoint, Seq(2));
        assert_eq!(
            harness.meta.superblock.stamp,
            Stamp::new(Generation(1), Seq(4))
        );
        assert!(harness.meta.activity_log.is_empty());
        assert_eq!(harness.meta.region_seqs[1], Seq(3));
    }

    #[test]
    fn resync_keeps_a_continuing_replica_consistent_until_data_arrives() {
        let mut harness = Harness::new(true);
        harness.hello(1, 1);
        harness.send(write(1, 0, 0));
        let here = Stamp::new(Generation(1), Seq(1));
        let sent = harness.send(Message::StartResync {
            sync_stamp: here,
            live_after: Some(here),
        });
        assert_eq!(sent, vec![Message::ResyncStarted]);
        assert!(
            harness.meta.superblock.consistent,
            "live writes continue its history"
        );
        harness.send(Message::WriteSegment {
            request: RequestId(1),
            offset: 0,
            data: Bytes::from(vec![9; 16 * 1024]),
            region_seq: Seq(1),
        });
        assert!(
            !harness.meta.superblock.consistent,
            "resync data makes it a mix"
        );
        assert_eq!(harness.meta.superblock.sync_stamp, here);
        let sent = harness.send(Message::FinishResync { stamp: here });
        assert_eq!(sent, vec![Message::ResyncFinished { result: Ok(()) }]);
        assert!(harness.meta.superblock.consistent);
    }

    #[test]
    fn resync_after_a_gap_makes_a_replica_inconsistent_at_once() {
        let mut harness = Harness::new(true);
        harness.hello(1, 1);
        harness.send(write(1, 0, 0));
        harness.send(Message::StartResync {
            sync_stamp: Stamp::new(Generation(1), Seq(5)),
            live_after: Some(Stamp::new(Generation(1), Seq(5))),
        });
        assert!(!harness.meta.superblock.consistent);
        let ack = hello_ack(&harness.hello(1, 2)).clone();
        assert!(!ack.consistent);
        assert_eq!(ack.sync_stamp, Stamp::new(Generation(1), Seq(5)));
    }

    #[test]
    fn a_failed_write_stops_the_session_and_ends_the_history_before_it() {
        let mut harness = Harness::new(true);
        harness.hello(1, 1);
        harness.send(write(1, 0, 0));
        harness.fail_writes = true;
        assert_eq!(
            harness.send(write(2, 1, 0)),
            vec![Message::WriteDone {
                seq: Seq(2),
                result: Err(IoFailure::NoSpace)
            }]
        );
        assert_eq!(
            harness.send(write(3, 2, 0)),
            vec![],
            "nothing more in this session"
        );
        harness.fail_writes = false;
        let ack = hello_ack(&harness.hello(1, 2)).clone();
        assert_eq!(ack.stamp, Stamp::new(Generation(1), Seq(1)));
        assert!(ack.consistent);
    }

    #[test]
    fn writes_outside_the_volume_are_refused_not_applied() {
        let mut harness = Harness::new(true);
        harness.hello(1, 1);
        let sent = harness.send(Message::Write {
            seq: Seq(1),
            offset: 60 * 1024,
            data: Bytes::from(vec![1; 8192]),
            committed: Seq(0),
        });
        assert_eq!(
            sent,
            vec![Message::WriteDone {
                seq: Seq(1),
                result: Err(IoFailure::OutOfRange)
            }]
        );
    }
}
