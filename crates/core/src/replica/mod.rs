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
//!
//! Layout: this file holds the `Replica`, its messages and storage completions; `queue` the work
//! in arrival order (data operations, overlaps, the activity log); `barrier` the barriers and
//! their steps (`BarrierStep`).

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::message::{Envelope, Message, Refusal};
use crate::meta::{MetaUpdate, ReplicaMeta, Superblock, SEQ_UNKNOWN};
use crate::session::{Arrival, Session};
use crate::types::{Extent, Generation, IoFailure, RegionSet, Seq, SessionId, Stamp};
use crate::{Bugs, PlantedBug};

mod barrier;
mod queue;
#[cfg(test)]
mod tests;

use barrier::RunningBarrier;
use queue::{read_answer, Inflight, Purpose, ReadKind, Work};

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

pub struct Replica {
    options: ReplicaOptions,
    /// The superblock as last persisted (or about to be, while a barrier runs).
    superblock: Superblock,
    region_seqs: Vec<Seq>,
    /// Region-map entries changed since the map was last persisted.
    regions_changed: BTreeSet<u32>,
    /// The activity log as persisted.
    activity_log: RegionSet,
    /// The extended activity log being persisted (the log a barrier persists is in its step).
    activity_log_pending: Option<RegionSet>,
    session: Option<Session>,
    queue: VecDeque<Work>,
    inflight: BTreeMap<DiskOpId, Inflight>,
    barrier: Option<RunningBarrier>,
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
    /// Client writes of this session refused for lack of space, with their ranges, awaiting
    /// the target's verdict: voided everywhere ([`Message::Voided`]: go on), or held elsewhere
    /// (the session ends). Until then they count as storage work in flight: no later write to
    /// their range lands (a refused write may be sent again), and no barrier starts (a flush
    /// must not vouch for a history that may lack them).
    refused: BTreeMap<Seq, (u64, u64)>,
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
            refused: BTreeMap::new(),
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
            "replica {} session {:?} consistent={} storage_failed={} applied={} history={} checkpoint={} queue={} inflight={} barrier={:?} failed_writes={:?} refused={:?}",
            self.superblock.replica.0,
            self.session,
            self.superblock.consistent,
            self.storage_failed,
            self.last_applied,
            self.history_stamp(),
            self.superblock.checkpoint.0,
            self.queue.len(),
            self.inflight.len(),
            self.barrier.as_ref().map(|running| (running.barrier, running.session)),
            self.failed_writes,
            self.refused
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
            // Not queued: queued work may be waiting for exactly this.
            Message::Voided { seq } => {
                self.on_voided(seq);
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
        self.refused.clear();
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
                let result = result.map(|_| ());
                self.send(session, Message::WriteDone { seq, result }, out);
                match (result, inflight.range) {
                    (Ok(()), _) => {}
                    // Nothing changed: the target decides whether the write is void everywhere.
                    (Err(IoFailure::NoSpace), Some((offset, len, _)))
                        if self.current_session() == Some(session) =>
                    {
                        self.refused.insert(seq, (offset, len));
                    }
                    (Err(_), _) => self.stop_after_failed_write(),
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

    /// The target voided a write this replica refused: it did nothing here, as everywhere, so
    /// the history this replica holds runs through it, and the work it held back goes on
    /// (`pump`).
    fn on_voided(&mut self, seq: Seq) {
        if self.refused.remove(&seq).is_none() {
            return; // Not refused here (it applied it, or a stale session refused it).
        }
        if let Some((_, seqs)) = self.failed_writes.as_mut() {
            seqs.remove(&seq);
            if seqs.is_empty() {
                self.failed_writes = None;
            }
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
}
