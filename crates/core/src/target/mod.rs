//! The volume target state machine: sequences client I/O, replicates it, and heals replicas.
//!
//! One target serves a volume at a time, fenced by its generation (G5). It gives every write,
//! trim and flush a volume-wide sequence and sends it to every connected replica over that
//! replica's session; it acknowledges once a consistency-factor (CF = RF/2+1) of trusted, Healthy
//! replicas hold it (G1), never waiting for the slowest. Reads go to one Healthy replica (G4).
//!
//! A replica that connects (new, returning, or after this target restarted) first hears
//! `StartResync`, which tells it whether the live writes that follow continue its history; if not
//! it stops claiming to be a consistent copy before it applies anything from this target. It then
//! receives live writes while a resync copies, region by region, the union
//! of what changed on the source and on itself since its checkpoint; each segment is read from
//! the source and written to the replica under a range lock that holds back client writes to
//! that range for one source round trip (G7). A new replica's checkpoint is zero, so its resync
//! is the full rebuild of every region ever written (unwritten regions are skipped).
//!
//! A restarted target recovers from the replicas alone: it needs CF trusted replicas to answer,
//! picks the most advanced consistent one as the source of the volume's history, and resyncs the
//! rest before they count (see [`Target::try_activate`]).
//!
//! Layout: `api` is the interface (inputs, outputs, options); `link` one replica's session
//! (`ReplicaLink`: what it sends and accepts, timeouts, backoff); `io` client I/O
//! (sequencing, acknowledgement, reads); `resync` the copy to a joining replica
//! (`ResyncJob`: its segments and range locks); `recovery` choosing the source when
//! the target starts or loses every Healthy replica; `membership` adding, promoting and removing
//! replicas. This file holds the `Target` itself: its phase, dispatch, ejection and status.

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use crate::membership::{Membership, MembershipError};
use crate::message::{Envelope, HelloAck, Message, Refusal, RequestId};
use crate::session::Session;
use crate::types::{Generation, Geometry, Incarnation, ReplicaId, Seq, SessionId, Stamp};
use crate::PlantedBug;

mod api;
mod io;
mod link;
mod membership;
mod recovery;
mod resync;
#[cfg(test)]
mod tests;

pub use api::{
    ClientError, ClientOp, ClientReply, ClientReplyBody, ClientRequest, ClientRequestId, Command,
    EjectReason, Fenced, ReplicaIo, ReplicaMode, ResyncProgress, TargetEvent, TargetInput,
    TargetOptions, TargetOutput, VolumeStatus, CLIENT_ACTIVITY_TICKS, RECONNECT_BACKOFF_MAX,
};
use io::{ClientRead, PendingOp, PendingRead};
use link::{Accepted, Awaited, Connected, Due, LinkState, Loss, ReplicaLink};
use membership::{PendingMembership, Removal};
use resync::{ResyncBudget, ResyncJob};

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Recovering,
    Active,
    Fenced,
}

pub struct Target {
    options: TargetOptions,
    generation: Generation,
    geometry: Geometry,
    membership: Membership,
    membership_pending: Option<PendingMembership>,
    removal: Option<Removal>,
    phase: Phase,
    /// True once this target has served: it then knows its own acknowledged history.
    resumed: bool,
    links: BTreeMap<ReplicaId, ReplicaLink>,
    now_tick: u64,
    session_counter: u32,
    next_request: u64,
    seq_last: Seq,
    /// The stamp of operation `seq_last`.
    last_stamp: Stamp,
    /// The source's stamp when this target first recovered: operations after it are this
    /// target's own.
    activation_stamp: Stamp,
    /// The newest acknowledged operation.
    acked_max: Stamp,
    /// Every operation at or below this is durable on CF replicas.
    committed: Seq,
    /// The newest write voided because every Healthy replica refused it for lack of space. A
    /// replica whose checkpoint is older may have applied it: it is resynced, never replayed.
    last_voided: Seq,
    /// Set once a write was voided, until a write succeeds: client writes before this tick fail
    /// with ENOSPC at once; the first one at or after it goes to the replicas as a probe.
    no_space_probe_at: Option<u64>,
    ops: BTreeMap<Seq, PendingOp>,
    /// The pending operations some replica refused for lack of space (so a pass over them
    /// costs nothing while pools have room).
    refused: BTreeSet<Seq>,
    reads: BTreeMap<RequestId, PendingRead>,
    /// Reads waiting for a Healthy replica.
    reads_waiting: VecDeque<ClientRead>,
    /// Every client request accepted and not yet answered, with the tick it times out.
    client_deadlines: BTreeMap<ClientRequestId, u64>,
    /// Writes, trims and flushes not yet sequenced: the target is recovering, or they touch a
    /// range being copied (they keep their order).
    ops_waiting: VecDeque<ClientRequest>,
    resync: Option<ResyncJob>,
    resync_budget: ResyncBudget,
    /// The tick the last client request arrived.
    client_seen_tick: Option<u64>,
    /// A target that takes over serves from this tick on (see
    /// [`TargetOptions::takeover_wait_ticks`]); set when it first could.
    takeover_ready_at: Option<u64>,
    status: VolumeStatus,
}

impl Target {
    /// A target for `generation` over the persisted `membership`. It serves nothing until it has
    /// recovered from CF trusted replicas.
    pub fn new(
        generation: Generation,
        geometry: Geometry,
        membership: Membership,
        options: TargetOptions,
    ) -> Target {
        assert!(geometry.validate().is_ok(), "invalid geometry {geometry:?}");
        assert!(!membership.members.is_empty(), "a volume has replicas");
        assert!(
            options.replica_congestion_ops < options.replica_inflight_max,
            "backpressure must start before a replica is ejected for its backlog"
        );
        assert!(
            options.takeover_wait_ticks > options.read_lease_ticks + 1,
            "a new target must wait out an old target's read lease"
        );
        let links = membership
            .members
            .iter()
            .map(|m| (m.replica, ReplicaLink::offline(0)))
            .collect();
        Target {
            options,
            generation,
            geometry,
            membership,
            membership_pending: None,
            removal: None,
            phase: Phase::Recovering,
            resumed: false,
            links,
            now_tick: 0,
            session_counter: 0,
            next_request: 0,
            seq_last: Seq::ZERO,
            last_stamp: Stamp::ZERO,
            activation_stamp: Stamp::ZERO,
            acked_max: Stamp::ZERO,
            committed: Seq::ZERO,
            last_voided: Seq::ZERO,
            no_space_probe_at: None,
            ops: BTreeMap::new(),
            refused: BTreeSet::new(),
            reads: BTreeMap::new(),
            reads_waiting: VecDeque::new(),
            client_deadlines: BTreeMap::new(),
            ops_waiting: VecDeque::new(),
            resync: None,
            resync_budget: ResyncBudget::default(),
            client_seen_tick: None,
            takeover_ready_at: None,
            status: VolumeStatus::Init,
        }
    }

    pub fn generation(&self) -> Generation {
        self.generation
    }

    pub fn membership(&self) -> &Membership {
        &self.membership
    }

    pub fn status(&self) -> VolumeStatus {
        self.status
    }

    pub fn is_fenced(&self) -> bool {
        self.phase == Phase::Fenced
    }

    /// True from a write voided for lack of space until a write succeeds: client writes fail
    /// with ENOSPC (but for a probe a second).
    pub fn refusing_for_space(&self) -> bool {
        self.no_space_probe_at.is_some()
    }

    /// Changes how fast resyncs copy from now on: the bandwidth caps idle and under client
    /// load and the segments in flight, as in [`TargetOptions`].
    pub fn set_resync_pace(
        &mut self,
        bytes_per_tick: u64,
        bytes_per_tick_under_load: u64,
        segments_inflight_max: usize,
    ) {
        assert!(
            segments_inflight_max > 0,
            "a resync copies at least one segment at a time"
        );
        self.options.resync_bytes_per_tick = bytes_per_tick;
        self.options.resync_bytes_per_tick_under_load = bytes_per_tick_under_load;
        self.options.resync_segments_inflight_max = segments_inflight_max;
    }

    /// The ticks this target has been given.
    pub fn now_tick(&self) -> u64 {
        self.now_tick
    }

    /// The first tick at which time alone can change anything: a `Tick` that brings the target
    /// to an earlier tick only counts time. A driver may therefore sleep until this tick (any
    /// other input may move it, so ask again after each), then feed every tick it skipped; it
    /// must feed the skipped ticks before any other input too, so that the target judges its
    /// leases and timeouts on the time it is. `None`: nothing is due by time alone (a fenced
    /// target). Never earlier than the next tick.
    pub fn next_tick_due(&self) -> Option<u64> {
        let next = self.now_tick + 1;
        if self.phase == Phase::Fenced {
            return None;
        }
        // A resync spends a budget refilled every tick (and its pace follows client activity).
        if self.resync.is_some() {
            return Some(next);
        }
        let recovering = self.phase == Phase::Recovering;
        let takeover = (recovering && !self.resumed)
            .then_some(self.takeover_ready_at)
            .flatten();
        // Every request gets the same timeout, and ids grow with time: the first is due first.
        let clients = self
            .client_deadlines
            .first_key_value()
            .map(|(_, deadline)| *deadline);
        let links = self
            .links
            .values()
            .filter_map(|link| link.next_due(&self.options, recovering, self.now_tick));
        [takeover, clients]
            .into_iter()
            .flatten()
            .chain(links)
            .min()
            .map(|due| due.max(next))
    }

    pub fn replication_factor(&self) -> usize {
        self.membership.replication_factor()
    }

    pub fn consistency_factor(&self) -> usize {
        self.membership.consistency_factor()
    }

    pub fn replica_mode(&self, replica: ReplicaId) -> Option<ReplicaMode> {
        self.links
            .get(&replica)
            .map(|link| self.mode_of(replica, link))
    }

    /// The I/O of a connected replica; `None` while it is not connected.
    pub fn replica_io(&self, replica: ReplicaId) -> Option<ReplicaIo> {
        let c = self.connected(replica)?;
        let ops = c
            .awaited()
            .keys()
            .filter(|awaited| matches!(awaited, Awaited::Op(_)))
            .count();
        Some(ReplicaIo {
            checkpointed: c.flushed(),
            inflight_reads: self
                .reads
                .values()
                .filter(|pending| pending.replica == replica)
                .count(),
            inflight_writes: ops.saturating_sub(c.flushes_awaited()),
            inflight_syncs: c.flushes_awaited(),
            connected_ticks: self.now_tick - c.connected_at_tick(),
        })
    }

    /// Whether backpressure holds new writes, trims and flushes back now: a replica that
    /// receives live operations has `replica_congestion_ops` of them unanswered.
    pub fn is_congested(&self) -> bool {
        self.congested()
    }

    pub fn resync_progress(&self) -> Option<ResyncProgress> {
        self.resync.as_ref().map(ResyncJob::progress)
    }

    /// A one-line summary of the target's state, for logs and failure reports.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "generation {} {:?} seq {} acked {} committed {}",
            self.generation.0, self.phase, self.seq_last.0, self.acked_max, self.committed.0
        );
        for (replica, link) in &self.links {
            text.push_str(&format!("; replica {}: {}", replica.0, link.describe()));
        }
        let pending: Vec<u64> = self.ops.keys().map(|seq| seq.0).take(8).collect();
        text.push_str(&format!(
            "; pending ops {} (first {pending:?}), reads {}+{} waiting, ops waiting {}, locks {}",
            self.ops.len(),
            self.reads.len(),
            self.reads_waiting.len(),
            self.ops_waiting.len(),
            self.resync.as_ref().map_or(0, ResyncJob::locks_held)
        ));
        text
    }

    /// Requests sent to replicas and not yet answered.
    pub fn outstanding_requests(&self) -> usize {
        self.links.values().map(ReplicaLink::outstanding).sum()
    }

    /// Client operations accepted and not yet answered.
    pub fn pending_client_ops(&self) -> usize {
        self.client_deadlines.len()
    }

    /// Answers a client request, unless it was already answered (it timed out).
    fn answer(
        &mut self,
        out: &mut Vec<TargetOutput>,
        id: ClientRequestId,
        result: Result<ClientReplyBody, ClientError>,
    ) {
        if self.client_deadlines.remove(&id).is_some() {
            reply(out, id, result);
        }
    }

    /// Fails client requests that waited too long. A sequenced write goes on replicating (its
    /// outcome is unknown to the client, as with any failed write); anything not yet sent is
    /// dropped.
    fn time_out_clients(&mut self, out: &mut Vec<TargetOutput>) {
        let now = self.now_tick;
        let expired: Vec<ClientRequestId> = self
            .client_deadlines
            .iter()
            .filter(|(_, deadline)| **deadline <= now)
            .map(|(id, _)| *id)
            .collect();
        if expired.is_empty() {
            return;
        }
        for id in &expired {
            self.answer(out, *id, Err(ClientError::TimedOut));
        }
        let answered = |id: &ClientRequestId| !self.client_deadlines.contains_key(id);
        let (reads_waiting, ops_waiting): (VecDeque<_>, VecDeque<_>) = (
            self.reads_waiting
                .drain(..)
                .filter(|read| !answered(&read.client))
                .collect(),
            self.ops_waiting
                .drain(..)
                .filter(|request| !answered(&request.id))
                .collect(),
        );
        self.reads_waiting = reads_waiting;
        self.ops_waiting = ops_waiting;
    }

    pub fn handle(&mut self, input: TargetInput, out: &mut Vec<TargetOutput>) {
        if self.phase == Phase::Fenced {
            // A fenced target serves nothing but still answers, so nobody waits on it.
            match input {
                TargetInput::Client(request) => reply(out, request.id, Err(ClientError::Fenced)),
                TargetInput::Command(command) => out.push(TargetOutput::CommandDone {
                    command,
                    result: Err(MembershipError::Fenced),
                }),
                _ => {}
            }
            return;
        }
        match input {
            TargetInput::Message { from, envelope } => self.on_envelope(from, envelope, out),
            TargetInput::Client(request) => self.on_client(request, out),
            TargetInput::Command(command) => self.on_command(command, out),
            TargetInput::MembershipPersisted(result) => self.on_membership_persisted(result, out),
            TargetInput::Tick => self.on_tick(out),
            TargetInput::SessionLost { replica, session } => {
                self.on_session_lost(replica, session, out)
            }
        }
        // Settling refused writes and completing operations may eject replicas, which may let
        // another refused write be settled or a resync be scheduled: then go round again, so
        // that nothing is left for a tick to do that time did not bring.
        loop {
            self.check_quorum_left(out);
            if self.phase != Phase::Active {
                break;
            }
            self.progress_removal(out);
            self.schedule_resync(out);
            self.pump_resync(out);
            self.retry_waiting(out);
            let settled = self.settle_refusals(out);
            let ejected = self.complete_ops(out);
            if !settled && !ejected {
                break;
            }
        }
        self.report_changes(out);
    }

    // ---------------------------------------------------------------- links and sessions

    fn send(
        &mut self,
        to: ReplicaId,
        message: Message,
        awaited: Option<Awaited>,
        out: &mut Vec<TargetOutput>,
    ) {
        let now = self.now_tick;
        let Some((envelope, backlog)) = self
            .links
            .get_mut(&to)
            .and_then(|link| link.send(message, awaited, now))
        else {
            return;
        };
        out.push(TargetOutput::Send { to, envelope });
        if backlog > self.options.replica_inflight_max {
            self.eject(to, EjectReason::Backlog, out);
        }
    }

    /// Asks a connected replica for a sign of life (an idle probe, or renewing the read lease).
    fn ping(&mut self, replica: ReplicaId, out: &mut Vec<TargetOutput>) {
        let request = self.request_id();
        self.send(
            replica,
            Message::Ping { request },
            Some(Awaited::Request(request)),
            out,
        );
    }

    fn hello(&mut self, replica: ReplicaId, out: &mut Vec<TargetOutput>) {
        self.session_counter += 1;
        let session = SessionId::new(self.generation, self.session_counter);
        let link = self.links.get_mut(&replica).expect("link exists");
        link.open(session, self.now_tick);
        out.push(TargetOutput::Send {
            to: replica,
            envelope: Envelope {
                session,
                number: Session::OPENING_NUMBER,
                message: Message::Hello {
                    generation: self.generation,
                    replica,
                    geometry: self.geometry,
                },
            },
        });
    }

    /// Drops a replica's session. It is retried later and resynced when it returns; a replica
    /// ejected again before it was Healthy waits twice as long each time (up to
    /// `RECONNECT_BACKOFF_MAX` times the interval), so one that keeps failing (a full pool, a
    /// broken disk) is not hammered, and does not flood the logs.
    fn eject(&mut self, replica: ReplicaId, reason: EjectReason, out: &mut Vec<TargetOutput>) {
        let now = self.now_tick;
        let interval = self.options.reconnect_interval_ticks;
        let Some(link) = self.links.get_mut(&replica) else {
            return;
        };
        if link.disconnect(now, interval) {
            out.push(TargetOutput::Event(TargetEvent::Ejected {
                replica,
                reason,
            }));
        }
        self.forget_replica_work(replica, out);
    }

    /// Requeues reads that were on a replica and aborts a resync that involved it.
    fn forget_replica_work(&mut self, replica: ReplicaId, out: &mut Vec<TargetOutput>) {
        let orphaned: Vec<RequestId> = self
            .reads
            .iter()
            .filter(|(_, read)| read.replica == replica)
            .map(|(request, _)| *request)
            .collect();
        for request in orphaned {
            let pending = self.reads.remove(&request).expect("listed");
            self.reads_waiting.push_back(pending.read);
        }
        if self
            .resync
            .as_ref()
            .is_some_and(|job| job.involves(replica))
        {
            self.abort_resync(out);
        }
    }

    fn on_envelope(&mut self, from: ReplicaId, envelope: Envelope, out: &mut Vec<TargetOutput>) {
        let Some(link) = self.links.get_mut(&from) else {
            return; // Not a member (any more): ignore.
        };
        let session = envelope.session;
        match link.accept(envelope, self.now_tick) {
            Accepted::Handshake(Message::HelloAck(ack)) => {
                self.on_hello_ack(from, session, ack, out)
            }
            Accepted::Handshake(Message::Refused(refusal)) => self.on_refused(from, refusal, out),
            Accepted::Handshake(_) | Accepted::Gap => {
                self.eject(from, EjectReason::SessionBroken, out)
            }
            Accepted::Message(message) => self.on_replica_message(from, message, out),
            Accepted::Stale => {}
        }
    }

    fn on_session_lost(
        &mut self,
        replica: ReplicaId,
        session: SessionId,
        out: &mut Vec<TargetOutput>,
    ) {
        let Some(link) = self.links.get_mut(&replica) else {
            return;
        };
        let interval = self.options.reconnect_interval_ticks;
        match link.lose(session, self.now_tick, interval) {
            Loss::Connected => self.eject(replica, EjectReason::SessionBroken, out),
            Loss::Handshake | Loss::Stale => {}
        }
    }

    fn on_refused(&mut self, from: ReplicaId, refusal: Refusal, out: &mut Vec<TargetOutput>) {
        if let Refusal::Fenced { generation_seen } = refusal {
            if generation_seen > self.generation {
                self.fence(out);
                return;
            }
        }
        self.eject(from, EjectReason::Refused(refusal), out);
        if let Some(link) = self.links.get_mut(&from) {
            link.mark_refused();
        }
    }

    /// A newer target exists: stop serving, fail what clients are waiting for (they reconnect to
    /// the new target, which recovers everything that was acknowledged).
    fn fence(&mut self, out: &mut Vec<TargetOutput>) {
        self.phase = Phase::Fenced;
        let mut clients: Vec<ClientRequestId> =
            self.ops.values().filter_map(|op| op.client).collect();
        clients.extend(self.reads.values().map(|pending| pending.read.client));
        clients.extend(self.reads_waiting.iter().map(|read| read.client));
        clients.extend(self.ops_waiting.iter().map(|request| request.id));
        self.ops.clear();
        self.reads.clear();
        self.reads_waiting.clear();
        self.ops_waiting.clear();
        self.resync = None;
        for client in clients {
            self.answer(out, client, Err(ClientError::Fenced));
        }
        if let Some(PendingMembership::Command(command)) = self.membership_pending.take() {
            out.push(TargetOutput::CommandDone {
                command,
                result: Err(MembershipError::Fenced),
            });
        }
        if let Some(removal) = self.removal.take() {
            out.push(TargetOutput::CommandDone {
                command: Command::RemoveReplica(removal.replica),
                result: Err(MembershipError::Fenced),
            });
        }
        out.push(TargetOutput::Event(TargetEvent::Fenced));
    }

    fn on_hello_ack(
        &mut self,
        from: ReplicaId,
        session: SessionId,
        ack: HelloAck,
        out: &mut Vec<TargetOutput>,
    ) {
        if ack.replica != from || ack.dirty.region_count() as u64 != self.geometry.region_count() {
            self.eject(from, EjectReason::SessionBroken, out);
            return;
        }
        let first_live_seq = self.seq_last.next();
        let link = self.links.get_mut(&from).expect("link exists");
        link.connect(session, ack, self.now_tick, first_live_seq);
        match self.phase {
            Phase::Recovering => self.try_activate(out),
            Phase::Active => self.rejoin(from, out),
            Phase::Fenced => {}
        }
    }

    fn connected(&self, replica: ReplicaId) -> Option<&Connected> {
        self.links.get(&replica)?.connected()
    }

    fn connected_mut(&mut self, replica: ReplicaId) -> Option<&mut Connected> {
        self.links.get_mut(&replica)?.connected_mut()
    }

    fn is_trusted(&self, replica: ReplicaId, incarnation: Incarnation) -> bool {
        self.membership.trusts(replica, incarnation)
    }

    /// Healthy and trusted: counts toward quorum and serves reads.
    fn is_healthy(&self, replica: ReplicaId) -> bool {
        self.connected(replica).is_some_and(|c| {
            c.state() == LinkState::Healthy && self.is_trusted(replica, c.hello().incarnation)
        })
    }

    fn healthy_replicas(&self) -> Vec<ReplicaId> {
        self.links
            .keys()
            .copied()
            .filter(|r| self.is_healthy(*r))
            .collect()
    }

    // ---------------------------------------------------------------- time

    /// Counts up to `ticks` ticks at once while none of them is due (see
    /// [`Target::next_tick_due`]): exactly what feeding them one by one as `Tick` would do,
    /// without the work. Returns how many it counted; the caller feeds the next as a `Tick`.
    pub fn pass_idle_ticks(&mut self, ticks: u64) -> u64 {
        if self.phase == Phase::Fenced {
            // A fenced target ignores time.
            return ticks;
        }
        let idle = self.next_tick_due().map_or(ticks, |due| {
            ticks.min(due.saturating_sub(self.now_tick + 1))
        });
        for _ in 0..idle {
            self.now_tick += 1;
            let rate = self.resync_rate();
            self.resync_budget.refill(rate, self.geometry.region_size);
        }
        idle
    }

    fn on_tick(&mut self, out: &mut Vec<TargetOutput>) {
        self.now_tick += 1;
        let now = self.now_tick;
        self.time_out_clients(out);
        if self.phase == Phase::Recovering
            && !self.resumed
            && self.takeover_ready_at.is_some_and(|at| at <= now)
        {
            self.try_activate(out);
        }
        let rate = self.resync_rate();
        self.resync_budget.refill(rate, self.geometry.region_size);
        // Waiting out an older target's lease is not being stuck: no need to ask again.
        let recovering =
            self.phase == Phase::Recovering && self.takeover_ready_at.is_none_or(|at| now >= at);
        let replicas: Vec<ReplicaId> = self.links.keys().copied().collect();
        for replica in replicas {
            let link = self.links.get_mut(&replica).expect("listed");
            match link.tick(now, &self.options, recovering) {
                Some(Due::Reconnect)
                    if !(self.options.bugs.has(PlantedBug::NeverReconnect) && self.resumed) =>
                {
                    self.hello(replica, out)
                }
                Some(Due::TimedOut) => self.eject(replica, EjectReason::Timeout, out),
                Some(Due::Probe) => self.ping(replica, out),
                // Recovery is stuck on this answer: ask again, the replica may have moved on (or
                // accepted a newer target, which fences this one).
                Some(Due::AskAgain) => self.hello(replica, out),
                Some(Due::Reconnect) | None => {}
            }
        }
    }

    // ---------------------------------------------------------------- status

    fn mode_of(&self, replica: ReplicaId, link: &ReplicaLink) -> ReplicaMode {
        let trusted = link
            .connected()
            .is_some_and(|c| self.is_trusted(replica, c.hello().incarnation));
        link.mode(trusted)
    }

    fn compute_status(&self) -> VolumeStatus {
        match self.phase {
            Phase::Recovering => VolumeStatus::Init,
            Phase::Fenced => VolumeStatus::Offline,
            Phase::Active => {
                let healthy = self.healthy_replicas().len();
                if healthy >= self.membership.replication_factor() {
                    VolumeStatus::Healthy
                } else if healthy >= self.membership.consistency_factor() {
                    VolumeStatus::Degraded
                } else {
                    VolumeStatus::Offline
                }
            }
        }
    }

    fn report_changes(&mut self, out: &mut Vec<TargetOutput>) {
        let status = self.compute_status();
        if status != self.status {
            self.status = status;
            out.push(TargetOutput::Event(TargetEvent::VolumeStatus(status)));
        }
        let modes: Vec<(ReplicaId, ReplicaMode)> = self
            .links
            .iter()
            .map(|(replica, link)| (*replica, self.mode_of(*replica, link)))
            .collect();
        for (replica, mode) in modes {
            let link = self.links.get_mut(&replica).expect("listed");
            if mode == ReplicaMode::Healthy {
                link.healed();
            }
            if link.report_mode(mode) {
                out.push(TargetOutput::Event(TargetEvent::ReplicaMode {
                    replica,
                    mode,
                }));
            }
        }
    }
}

fn reply(
    out: &mut Vec<TargetOutput>,
    id: ClientRequestId,
    result: Result<ClientReplyBody, ClientError>,
) {
    out.push(TargetOutput::Reply(ClientReply { id, result }));
}
