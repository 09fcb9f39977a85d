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

use std::collections::{BTreeMap, BTreeSet, VecDeque};

use bytes::Bytes;

use crate::membership::{Member, Membership, MembershipError, REPLICAS_MAX};
use crate::message::{Envelope, HelloAck, Message, Refusal, RequestId};
use crate::types::{
    Generation, Geometry, Incarnation, IoFailure, RegionSet, ReplicaId, Seq, SessionId, Stamp,
};
use crate::{Bugs, PlantedBug};

/// Identifies a client request (an NBD handle, say) so its reply can be matched.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct ClientRequestId(pub u64);

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientOp {
    Read {
        offset: u64,
        len: u64,
    },
    /// With `fua`, the reply waits until the write is durable on CF replicas.
    Write {
        offset: u64,
        data: Bytes,
        fua: bool,
    },
    /// Zeroes the range (TRIM and WRITE_ZEROES).
    Trim {
        offset: u64,
        len: u64,
    },
    Flush,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientRequest {
    pub id: ClientRequestId,
    pub op: ClientOp,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClientReplyBody {
    Read(Bytes),
    /// A write, trim or flush is done; `stamp` is its place in the volume's history.
    Done {
        stamp: Stamp,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ClientError {
    #[error("request outside the volume or not aligned to its block size")]
    OutOfRange,
    #[error("this target was replaced by a newer one; reconnect")]
    Fenced,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ClientReply {
    pub id: ClientRequestId,
    pub result: Result<ClientReplyBody, ClientError>,
}

/// An operator's request to change the volume's replicas.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Command {
    AddReplica(ReplicaId),
    RemoveReplica(ReplicaId),
}

#[derive(Clone, Debug)]
pub enum TargetInput {
    Message {
        from: ReplicaId,
        envelope: Envelope,
    },
    Client(ClientRequest),
    Command(Command),
    /// The answer to [`TargetOutput::PersistMembership`]: `Err` if a newer target took over.
    MembershipPersisted(Result<(), Fenced>),
    /// Time passes: one tick. Timeouts and the resync throttle count ticks.
    Tick,
}

/// The control plane refused a write from this target because a newer generation exists.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Fenced;

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetOutput {
    Send {
        to: ReplicaId,
        envelope: Envelope,
    },
    Reply(ClientReply),
    /// Persist this membership (generation-fenced) and answer with
    /// [`TargetInput::MembershipPersisted`]. At most one is outstanding.
    PersistMembership(Membership),
    CommandDone {
        command: Command,
        result: Result<(), MembershipError>,
    },
    Event(TargetEvent),
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum TargetEvent {
    VolumeStatus(VolumeStatus),
    ReplicaMode {
        replica: ReplicaId,
        mode: ReplicaMode,
    },
    /// A replica was ejected (it stopped answering, fell too far behind, or failed I/O).
    Ejected {
        replica: ReplicaId,
        reason: EjectReason,
    },
    ResyncFinished {
        replica: ReplicaId,
        source: ReplicaId,
        full: bool,
        regions: u64,
        bytes: u64,
    },
    ReplicaPromoted {
        replica: ReplicaId,
    },
    ReplicaRemoved {
        replica: ReplicaId,
    },
    /// A newer target has taken over; this one stops serving.
    Fenced,
    /// Recovery finished: `source` holds the volume's history up to `stamp`.
    RecoveredFrom {
        source: ReplicaId,
        stamp: Stamp,
    },
    /// Recovery found no replica known to hold the newest acknowledged write. Writes after
    /// `recovered` survive only where the source's cache kept them: they were never flushed, and
    /// every replica holding them lost power or its storage.
    RecoveredBehind {
        newest_acknowledged: Stamp,
        recovered: Stamp,
    },
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum EjectReason {
    Timeout,
    Backlog,
    IoFailure(IoFailure),
    SessionBroken,
    Refused(Refusal),
}

/// The volume's status, as cStor's CStorVolume phase.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum VolumeStatus {
    /// The target is recovering and serves no I/O yet.
    Init,
    /// Every trusted replica is Healthy.
    Healthy,
    /// I/O is served (at least CF Healthy) but not every trusted replica is Healthy.
    Degraded,
    /// Fewer than CF replicas are Healthy: I/O waits.
    Offline,
}

/// A replica's mode, named as cStor's CVR phases.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReplicaMode {
    Offline,
    /// Connected, trusted, waiting for its resync.
    Degraded,
    /// Connected, new (not trusted), waiting for its rebuild.
    NewReplicaDegraded,
    /// Trusted and catching up (incremental resync).
    Rebuilding,
    /// New and being rebuilt (full copy); counts for nothing yet.
    ReconstructingNewReplica,
    Healthy,
    /// It refused the target (wrong identity or geometry).
    Error,
}

/// Tunables. Units are in the names.
#[derive(Clone, Copy, Debug)]
pub struct TargetOptions {
    /// A replica whose oldest unanswered request is this old is ejected.
    pub replica_timeout_ticks: u64,
    /// A replica with more unanswered requests than this is ejected (too far behind).
    pub replica_inflight_max: usize,
    pub handshake_timeout_ticks: u64,
    pub reconnect_interval_ticks: u64,
    /// Resync bandwidth cap; 0 means uncapped.
    pub resync_bytes_per_tick: u64,
    pub resync_segments_inflight_max: usize,
    pub bugs: Bugs,
}

impl Default for TargetOptions {
    fn default() -> Self {
        TargetOptions {
            replica_timeout_ticks: 100,
            replica_inflight_max: 1024,
            handshake_timeout_ticks: 50,
            reconnect_interval_ticks: 20,
            resync_bytes_per_tick: 0,
            resync_segments_inflight_max: 4,
            bugs: Bugs::none(),
        }
    }
}

/// Progress of the resync in flight.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ResyncProgress {
    pub replica: ReplicaId,
    pub source: ReplicaId,
    pub full: bool,
    pub bytes_done: u64,
    pub bytes_total: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Phase {
    Recovering,
    Active,
    Fenced,
}

/// What the target expects an answer to on a link, for timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Awaited {
    Op(Seq),
    Request(RequestId),
    Marker,
}

#[derive(Clone, Debug)]
enum Connection {
    Offline {
        retry_at_tick: u64,
    },
    Handshaking {
        session: SessionId,
        sent_at_tick: u64,
    },
    Connected(Box<Connected>),
}

#[derive(Clone, Debug)]
struct Connected {
    session: SessionId,
    next_out: u64,
    next_in: u64,
    hello: HelloAck,
    state: LinkState,
    /// Unanswered requests, with the tick each was sent.
    awaited: BTreeMap<Awaited, u64>,
    /// The first operation sent live in this session: the replica holds everything sequenced
    /// before it only once resynced.
    first_live_seq: Seq,
    answered_at_tick: u64,
    /// The last tick anything arrived on this session.
    heard_at_tick: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum LinkState {
    /// Recovery: answered, waiting for the target to choose a source.
    Answered,
    /// Told to start a resync; `started` once it confirmed.
    NeedsResync {
        started: bool,
    },
    Resyncing,
    /// Rebuilt, waiting for its promotion to be persisted.
    AwaitingPromotion,
    Healthy,
}

#[derive(Clone, Debug)]
struct Link {
    connection: Connection,
    refused: bool,
    /// The newest operation this replica acknowledged to this target, over all its sessions: a
    /// killed replica's cache holds at least that far (unless it also lost power).
    acknowledged_max: Seq,
}

#[derive(Clone, Debug)]
struct PendingOp {
    /// Kept until answered, to send again if every replica holding it is lost.
    message: Message,
    client: Option<ClientRequestId>,
    stamp: Stamp,
    reply_stamp: Stamp,
    is_flush: bool,
    /// Replicas that hold it: acknowledged it, or were resynced past it.
    holders: BTreeSet<ReplicaId>,
}

#[derive(Clone, Debug)]
struct PendingRead {
    client: ClientRequestId,
    offset: u64,
    len: u64,
    replica: ReplicaId,
}

#[derive(Clone, Debug)]
enum ResyncPhase {
    Querying { request: RequestId },
    Copying,
    Finishing,
}

#[derive(Clone, Debug)]
struct Segment {
    offset: u64,
    len: u64,
    locked: bool,
}

#[derive(Clone, Debug)]
struct ResyncJob {
    dest: ReplicaId,
    source: ReplicaId,
    full: bool,
    phase: ResyncPhase,
    todo: VecDeque<u32>,
    regions_total: u64,
    reading: BTreeMap<RequestId, Segment>,
    writing: BTreeMap<RequestId, Segment>,
    bytes_total: u64,
    bytes_done: u64,
}

/// A removal waiting for the others to catch up.
#[derive(Clone, Copy, Debug)]
struct Removal {
    replica: ReplicaId,
    /// The others must have acknowledged everything up to here.
    drain_seq: Seq,
}

enum PendingMembership {
    Command(Command),
    Promotion(ReplicaId),
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
    links: BTreeMap<ReplicaId, Link>,
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
    ops: BTreeMap<Seq, PendingOp>,
    reads: BTreeMap<RequestId, PendingRead>,
    /// Reads waiting for a Healthy replica.
    reads_waiting: VecDeque<(ClientRequestId, u64, u64)>,
    /// Writes, trims and flushes not yet sequenced: the target is recovering, or they touch a
    /// range being copied (they keep their order).
    ops_waiting: VecDeque<ClientRequest>,
    locked_ranges: Vec<(u64, u64)>,
    resync: Option<ResyncJob>,
    resync_budget_bytes: u64,
    status: VolumeStatus,
    modes: BTreeMap<ReplicaId, ReplicaMode>,
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
        let links = membership
            .members
            .iter()
            .map(|m| (m.replica, Link::offline(0)))
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
            ops: BTreeMap::new(),
            reads: BTreeMap::new(),
            reads_waiting: VecDeque::new(),
            ops_waiting: VecDeque::new(),
            locked_ranges: Vec::new(),
            resync: None,
            resync_budget_bytes: 0,
            status: VolumeStatus::Init,
            modes: BTreeMap::new(),
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

    pub fn resync_progress(&self) -> Option<ResyncProgress> {
        self.resync.as_ref().map(|job| ResyncProgress {
            replica: job.dest,
            source: job.source,
            full: job.full,
            bytes_done: job.bytes_done,
            bytes_total: job.bytes_total,
        })
    }

    /// A one-line summary of the target's state, for logs and failure reports.
    pub fn describe(&self) -> String {
        let mut text = format!(
            "generation {} {:?} seq {} acked {} committed {}",
            self.generation.0, self.phase, self.seq_last.0, self.acked_max, self.committed.0
        );
        for (replica, link) in &self.links {
            let connection = match &link.connection {
                Connection::Offline { retry_at_tick } => format!("offline(retry {retry_at_tick})"),
                Connection::Handshaking { sent_at_tick, .. } => {
                    format!("handshaking(since {sent_at_tick})")
                }
                Connection::Connected(c) => format!(
                    "{:?} consistent={} stamp={} sync={} checkpoint={} awaited={}",
                    c.state,
                    c.hello.consistent,
                    c.hello.stamp,
                    c.hello.sync_stamp,
                    c.hello.checkpoint.0,
                    c.awaited.len()
                ),
            };
            text.push_str(&format!("; replica {}: {connection}", replica.0));
        }
        let pending: Vec<u64> = self.ops.keys().map(|seq| seq.0).take(8).collect();
        text.push_str(&format!(
            "; pending ops {} (first {pending:?}), reads {}+{} waiting, ops waiting {}, locks {}",
            self.ops.len(),
            self.reads.len(),
            self.reads_waiting.len(),
            self.ops_waiting.len(),
            self.locked_ranges.len()
        ));
        text
    }

    /// Requests sent to replicas and not yet answered.
    pub fn outstanding_requests(&self) -> usize {
        self.links
            .values()
            .map(|link| match &link.connection {
                Connection::Connected(c) => c.awaited.len(),
                Connection::Handshaking { .. } => 1,
                Connection::Offline { .. } => 0,
            })
            .sum()
    }

    /// Client operations accepted and not yet answered.
    pub fn pending_client_ops(&self) -> usize {
        self.ops.values().filter(|op| op.client.is_some()).count()
            + self.reads.len()
            + self.reads_waiting.len()
            + self.ops_waiting.len()
    }

    pub fn handle(&mut self, input: TargetInput, out: &mut Vec<TargetOutput>) {
        if self.phase == Phase::Fenced {
            if let TargetInput::Client(request) = input {
                reply(out, request.id, Err(ClientError::Fenced));
            }
            return;
        }
        match input {
            TargetInput::Message { from, envelope } => self.on_envelope(from, envelope, out),
            TargetInput::Client(request) => self.on_client(request, out),
            TargetInput::Command(command) => self.on_command(command, out),
            TargetInput::MembershipPersisted(result) => self.on_membership_persisted(result, out),
            TargetInput::Tick => self.on_tick(out),
        }
        self.check_quorum_left(out);
        if self.phase == Phase::Active {
            self.progress_removal(out);
            self.schedule_resync(out);
            self.pump_resync(out);
            self.retry_waiting(out);
            self.complete_ops(out);
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
        let Some(Link {
            connection: Connection::Connected(connected),
            ..
        }) = self.links.get_mut(&to)
        else {
            return;
        };
        let envelope = Envelope {
            session: connected.session,
            number: connected.next_out,
            message,
        };
        connected.next_out += 1;
        if let Some(awaited) = awaited {
            connected.awaited.insert(awaited, now);
        }
        let backlog = connected.awaited.len();
        out.push(TargetOutput::Send { to, envelope });
        if backlog > self.options.replica_inflight_max {
            self.eject(to, EjectReason::Backlog, out);
        }
    }

    fn hello(&mut self, replica: ReplicaId, out: &mut Vec<TargetOutput>) {
        self.session_counter += 1;
        let session = SessionId::new(self.generation, self.session_counter);
        let link = self.links.get_mut(&replica).expect("link exists");
        link.connection = Connection::Handshaking {
            session,
            sent_at_tick: self.now_tick,
        };
        out.push(TargetOutput::Send {
            to: replica,
            envelope: Envelope {
                session,
                number: 1,
                message: Message::Hello {
                    generation: self.generation,
                    replica,
                    geometry: self.geometry,
                },
            },
        });
    }

    /// Drops a replica's session. It is retried later and resynced when it returns.
    fn eject(&mut self, replica: ReplicaId, reason: EjectReason, out: &mut Vec<TargetOutput>) {
        let retry_at_tick = self.now_tick + self.options.reconnect_interval_ticks;
        let Some(link) = self.links.get_mut(&replica) else {
            return;
        };
        let was_connected = matches!(link.connection, Connection::Connected(_));
        link.connection = Connection::Offline { retry_at_tick };
        if was_connected {
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
            let read = self.reads.remove(&request).expect("listed");
            self.reads_waiting
                .push_back((read.client, read.offset, read.len));
        }
        if self
            .resync
            .as_ref()
            .is_some_and(|job| job.dest == replica || job.source == replica)
        {
            self.abort_resync(out);
        }
    }

    fn on_envelope(&mut self, from: ReplicaId, envelope: Envelope, out: &mut Vec<TargetOutput>) {
        let Some(link) = self.links.get_mut(&from) else {
            return; // Not a member (any more): ignore.
        };
        match &mut link.connection {
            Connection::Handshaking { session, .. } if *session == envelope.session => {
                if envelope.number != 1 {
                    return;
                }
                match envelope.message {
                    Message::HelloAck(ack) => self.on_hello_ack(from, envelope.session, ack, out),
                    Message::Refused(refusal) => self.on_refused(from, refusal, out),
                    _ => self.eject(from, EjectReason::SessionBroken, out),
                }
            }
            Connection::Connected(connected) if connected.session == envelope.session => {
                if envelope.number < connected.next_in {
                    return; // A duplicate.
                }
                if envelope.number > connected.next_in {
                    self.eject(from, EjectReason::SessionBroken, out);
                    return;
                }
                connected.next_in += 1;
                connected.heard_at_tick = self.now_tick;
                self.on_replica_message(from, envelope.message, out);
            }
            _ => {} // Another session's message: stale.
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
            link.refused = true;
        }
    }

    /// A newer target exists: stop serving, fail what clients are waiting for (they reconnect to
    /// the new target, which recovers everything that was acknowledged).
    fn fence(&mut self, out: &mut Vec<TargetOutput>) {
        self.phase = Phase::Fenced;
        let mut clients: Vec<ClientRequestId> =
            self.ops.values().filter_map(|op| op.client).collect();
        clients.extend(self.reads.values().map(|read| read.client));
        clients.extend(self.reads_waiting.iter().map(|(client, _, _)| *client));
        clients.extend(self.ops_waiting.iter().map(|request| request.id));
        self.ops.clear();
        self.reads.clear();
        self.reads_waiting.clear();
        self.ops_waiting.clear();
        self.resync = None;
        self.locked_ranges.clear();
        for client in clients {
            reply(out, client, Err(ClientError::Fenced));
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
        let link = self.links.get_mut(&from).expect("link exists");
        link.refused = false;
        link.connection = Connection::Connected(Box::new(Connected {
            session,
            next_out: 2,
            next_in: 2,
            hello: ack,
            state: LinkState::Answered,
            awaited: BTreeMap::new(),
            first_live_seq: self.seq_last.next(),
            answered_at_tick: self.now_tick,
            heard_at_tick: self.now_tick,
        }));
        match self.phase {
            Phase::Recovering => self.try_activate(out),
            Phase::Active => self.begin_resync(from, Some(self.last_stamp), out),
            Phase::Fenced => {}
        }
    }

    fn connected(&self, replica: ReplicaId) -> Option<&Connected> {
        match &self.links.get(&replica)?.connection {
            Connection::Connected(connected) => Some(connected),
            _ => None,
        }
    }

    fn connected_mut(&mut self, replica: ReplicaId) -> Option<&mut Connected> {
        match &mut self.links.get_mut(&replica)?.connection {
            Connection::Connected(connected) => Some(connected),
            _ => None,
        }
    }

    fn is_trusted(&self, replica: ReplicaId, incarnation: Incarnation) -> bool {
        self.membership.trusts(replica, incarnation)
    }

    /// Healthy and trusted: counts toward quorum and serves reads.
    fn is_healthy(&self, replica: ReplicaId) -> bool {
        self.connected(replica).is_some_and(|c| {
            c.state == LinkState::Healthy && self.is_trusted(replica, c.hello.incarnation)
        })
    }

    fn healthy_replicas(&self) -> Vec<ReplicaId> {
        self.links
            .keys()
            .copied()
            .filter(|r| self.is_healthy(*r))
            .collect()
    }

    // ---------------------------------------------------------------- recovery

    /// Recovery: with answers from at least CF trusted replicas, the consistent one with the
    /// newest stamp holds every acknowledged write (any CF replicas include one that acknowledged
    /// it, and replicas hold a prefix of a history). A replica in the middle of a resync holds no
    /// usable prefix, but its `sync_stamp` says what it was bringing in: the source must be at
    /// least that advanced, or an acknowledged write could be lost; then wait for more replicas.
    ///
    /// The same runs again when a serving target loses every Healthy replica: it then also knows
    /// the newest write it acknowledged itself, and re-sends its unanswered operations to the
    /// source after what the source holds.
    fn try_activate(&mut self, out: &mut Vec<TargetOutput>) {
        let answered: Vec<(ReplicaId, LinkState, HelloAck)> = self
            .links
            .iter()
            .filter_map(|(replica, link)| match &link.connection {
                Connection::Connected(c) if self.is_trusted(*replica, c.hello.incarnation) => {
                    Some((*replica, c.state, c.hello.clone()))
                }
                _ => None,
            })
            .collect();
        if !self.resumed
            && answered.len() < self.membership.consistency_factor()
            && !self.every_member_answered()
        {
            return;
        }
        // Only fresh answers describe what a replica holds now; the others were already told to
        // resync by this target and hold no usable prefix.
        let fresh: Vec<&(ReplicaId, LinkState, HelloAck)> = answered
            .iter()
            .filter(|(_, state, _)| *state == LinkState::Answered)
            .collect();
        let mut needed = fresh
            .iter()
            .filter(|(_, _, ack)| !ack.consistent)
            .map(|(_, _, ack)| ack.sync_stamp)
            .max()
            .unwrap_or(Stamp::ZERO);
        if self.resumed {
            needed = needed.max(self.acked_max);
        }
        let consistent: Vec<&(ReplicaId, LinkState, HelloAck)> = fresh
            .iter()
            .copied()
            .filter(|(_, _, ack)| ack.consistent)
            .collect();
        let least_advanced = self.options.bugs.has(PlantedBug::RecoverFromLeastAdvanced);
        let source = if least_advanced {
            consistent.iter().min_by_key(|(_, _, ack)| ack.stamp)
        } else {
            consistent.iter().max_by_key(|(_, _, ack)| ack.stamp)
        };
        let Some((source, _, source_ack)) = source else {
            return;
        };
        let (source, source_stamp) = (*source, source_ack.stamp);
        // After an unclean restart a replica knows only its checkpoint's stamp, though its cache
        // may hold more; such stamps cannot be compared. Choosing by stamp is then safe only if
        // enough replicas know theirs exactly that every write acknowledged on CF replicas is on
        // one of them (more than RF - CF), or if the target knows its own acknowledged history.
        let exact = consistent
            .iter()
            .filter(|(_, _, ack)| ack.stamp_exact)
            .count();
        let inexact = consistent.len() - exact;
        let replication_factor = self.membership.replication_factor();
        let comparable = inexact == 0
            || self.resumed
            || exact > replication_factor - self.membership.consistency_factor();
        let (mut source, mut source_stamp) = (source, source_stamp);
        if (source_stamp < needed || !comparable) && !least_advanced {
            // Wait for the others. Once every member has answered (a member whose storage was
            // replaced answers with nothing), waiting cannot help: serve the best there is. A
            // replica whose stamp is inexact was killed, and its cache holds everything it
            // applied unless it also lost power; it is the better bet than one known to be behind.
            if !self.every_member_answered() {
                return;
            }
            let inexact = consistent
                .iter()
                .filter(|(_, _, ack)| !ack.stamp_exact)
                .max_by_key(|(replica, _, ack)| (self.links[replica].acknowledged_max, ack.stamp));
            if let Some((replica, _, ack)) = inexact {
                if source_stamp < needed {
                    (source, source_stamp) = (*replica, ack.stamp);
                }
            } else if source_stamp < needed {
                out.push(TargetOutput::Event(TargetEvent::RecoveredBehind {
                    newest_acknowledged: needed,
                    recovered: source_stamp,
                }));
            }
        }
        self.phase = Phase::Active;
        out.push(TargetOutput::Event(TargetEvent::RecoveredFrom {
            source,
            stamp: source_stamp,
        }));
        if !self.resumed {
            let checkpoint_max = answered
                .iter()
                .map(|(_, _, ack)| ack.checkpoint)
                .max()
                .unwrap_or(Seq::ZERO);
            self.seq_last = source_stamp.seq;
            self.last_stamp = source_stamp;
            self.activation_stamp = source_stamp;
            self.acked_max = source_stamp;
            self.committed = checkpoint_max.min(source_stamp.seq);
        }
        self.resumed = true;
        // The source holds every operation up to its stamp; later ones go to it again, in order.
        let resend: Vec<Seq> = self
            .ops
            .iter_mut()
            .filter_map(|(seq, op)| {
                if op.stamp <= source_stamp {
                    op.holders.insert(source);
                    None
                } else {
                    // Acknowledgements from before do not count: replaying earlier operations
                    // can take a replica back past this one until it is applied again.
                    op.holders.clear();
                    Some(*seq)
                }
            })
            .collect();
        let first_live_seq = resend.first().copied().unwrap_or(self.seq_last.next());
        let live_after = self.stamp_of(Seq(first_live_seq.0 - 1));
        let fresh: Vec<ReplicaId> = self
            .links
            .keys()
            .copied()
            .filter(|r| {
                self.connected(*r)
                    .is_some_and(|c| c.state == LinkState::Answered)
            })
            .collect();
        for replica in fresh {
            self.connected_mut(replica)
                .expect("connected")
                .first_live_seq = first_live_seq;
            if replica == source {
                self.connected_mut(replica).expect("connected").state = LinkState::Healthy;
            } else {
                self.begin_resync(replica, live_after, out);
            }
        }
        for seq in resend {
            let message = self.ops[&seq].message.clone();
            for replica in self.receivers() {
                self.send(replica, message.clone(), Some(Awaited::Op(seq)), out);
            }
        }
    }

    /// True if every member has answered since the target (re)started recovering: trusted ones
    /// with their data, and members whose storage was replaced (a new incarnation) with nothing.
    fn every_member_answered(&self) -> bool {
        self.membership
            .members
            .iter()
            .all(|member| self.connected(member.replica).is_some() || !member.trusted)
    }

    /// Falls back to recovery when no Healthy replica is left: nothing can be served or copied
    /// until a consistent replica answers again.
    fn check_quorum_left(&mut self, out: &mut Vec<TargetOutput>) {
        if self.phase == Phase::Active && self.healthy_replicas().is_empty() {
            self.phase = Phase::Recovering;
            self.abort_resync(out);
            // Replicas waiting for or in a resync may still be consistent copies (live writes
            // continued their history): ask them afresh.
            let connected: Vec<ReplicaId> = self
                .links
                .keys()
                .copied()
                .filter(|r| self.connected(*r).is_some())
                .collect();
            for replica in connected {
                self.hello(replica, out);
            }
        }
    }

    /// Replicas that receive sequenced operations: every connected one told what to do.
    fn receivers(&self) -> Vec<ReplicaId> {
        self.links
            .keys()
            .copied()
            .filter(|r| {
                self.connected(*r)
                    .is_some_and(|c| c.state != LinkState::Answered)
            })
            .collect()
    }

    // ---------------------------------------------------------------- client I/O

    fn on_client(&mut self, request: ClientRequest, out: &mut Vec<TargetOutput>) {
        let in_range = match &request.op {
            ClientOp::Read { offset, len } | ClientOp::Trim { offset, len } => {
                self.geometry.contains_aligned(*offset, *len)
            }
            ClientOp::Write { offset, data, .. } => {
                self.geometry.contains_aligned(*offset, data.len() as u64)
            }
            ClientOp::Flush => true,
        };
        if !in_range {
            reply(out, request.id, Err(ClientError::OutOfRange));
            return;
        }
        match request.op {
            ClientOp::Read { offset, len } => {
                self.reads_waiting.push_back((request.id, offset, len));
                self.retry_waiting(out);
            }
            _ => {
                self.ops_waiting.push_back(request);
                self.retry_waiting(out);
            }
        }
    }

    /// Sequences waiting operations in order, stopping at the first that touches a locked range,
    /// and sends waiting reads to Healthy replicas.
    fn retry_waiting(&mut self, out: &mut Vec<TargetOutput>) {
        if self.phase != Phase::Active {
            return;
        }
        while let Some(request) = self.ops_waiting.front() {
            let range = match &request.op {
                ClientOp::Write { offset, data, .. } => Some((*offset, data.len() as u64)),
                ClientOp::Trim { offset, len } => Some((*offset, *len)),
                _ => None,
            };
            if range.is_some_and(|(offset, len)| self.is_locked(offset, len)) {
                break;
            }
            let request = self.ops_waiting.pop_front().expect("front exists");
            self.sequence(request, out);
        }
        while let Some(&(client, offset, len)) = self.reads_waiting.front() {
            let Some(replica) = self.pick_reader() else {
                break;
            };
            self.reads_waiting.pop_front();
            let request = self.request_id();
            self.reads.insert(
                request,
                PendingRead {
                    client,
                    offset,
                    len,
                    replica,
                },
            );
            self.send(
                replica,
                Message::Read {
                    request,
                    offset,
                    len,
                },
                Some(Awaited::Request(request)),
                out,
            );
        }
    }

    fn is_locked(&self, offset: u64, len: u64) -> bool {
        self.locked_ranges
            .iter()
            .any(|&(start, length)| start < offset + len && offset < start + length)
    }

    /// The Healthy replica with the fewest unanswered requests.
    fn pick_reader(&self) -> Option<ReplicaId> {
        let unhealthy_reads = self.options.bugs.has(PlantedBug::ReadFromUnhealthyReplica);
        self.links
            .keys()
            .copied()
            .filter(|r| {
                self.is_healthy(*r)
                    || (unhealthy_reads
                        && self
                            .connected(*r)
                            .is_some_and(|c| c.state != LinkState::Answered))
            })
            .min_by_key(|r| self.connected(*r).map_or(usize::MAX, |c| c.awaited.len()))
    }

    fn request_id(&mut self) -> RequestId {
        self.next_request += 1;
        RequestId(self.next_request)
    }

    /// Gives an operation the next sequence and sends it to every connected replica.
    fn sequence(&mut self, request: ClientRequest, out: &mut Vec<TargetOutput>) {
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
            ClientOp::Read { .. } => unreachable!("reads are not sequenced"),
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
    fn broadcast(
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
            },
        );
        for replica in self.receivers() {
            self.send(replica, message.clone(), Some(Awaited::Op(seq)), out);
        }
    }

    /// Answers every operation that CF trusted Healthy replicas hold.
    fn complete_ops(&mut self, out: &mut Vec<TargetOutput>) {
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
        for seq in done {
            let op = self.ops.remove(&seq).expect("listed");
            self.acked_max = self.acked_max.max(op.stamp);
            if op.is_flush {
                self.committed = self.committed.max(seq);
            }
            if let Some(client) = op.client {
                reply(
                    out,
                    client,
                    Ok(ClientReplyBody::Done {
                        stamp: op.reply_stamp,
                    }),
                );
            }
        }
    }

    fn on_replica_message(
        &mut self,
        from: ReplicaId,
        message: Message,
        out: &mut Vec<TargetOutput>,
    ) {
        match message {
            Message::WriteDone { seq, result } | Message::FlushDone { seq, result } => {
                self.answered(from, Awaited::Op(seq));
                match result {
                    Ok(()) => {
                        if let Some(link) = self.links.get_mut(&from) {
                            link.acknowledged_max = link.acknowledged_max.max(seq);
                        }
                        if let Some(op) = self.ops.get_mut(&seq) {
                            op.holders.insert(from);
                        }
                    }
                    Err(failure) => self.eject(from, EjectReason::IoFailure(failure), out),
                }
            }
            Message::ReadDone { request, result } => {
                self.answered(from, Awaited::Request(request));
                let Some(read) = self.reads.remove(&request) else {
                    return;
                };
                match result {
                    Ok(data) if data.len() as u64 == read.len => {
                        reply(out, read.client, Ok(ClientReplyBody::Read(data)));
                    }
                    Ok(_) => {
                        self.reads_waiting
                            .push_front((read.client, read.offset, read.len));
                        self.eject(from, EjectReason::SessionBroken, out);
                    }
                    Err(failure) => {
                        self.reads_waiting
                            .push_front((read.client, read.offset, read.len));
                        self.eject(from, EjectReason::IoFailure(failure), out);
                    }
                }
            }
            Message::ResyncStarted => {
                self.answered(from, Awaited::Marker);
                if let Some(c) = self.connected_mut(from) {
                    if c.state == (LinkState::NeedsResync { started: false }) {
                        c.state = LinkState::NeedsResync { started: true };
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

    fn answered(&mut self, from: ReplicaId, awaited: Awaited) {
        if let Some(c) = self.connected_mut(from) {
            c.awaited.remove(&awaited);
        }
    }

    // ---------------------------------------------------------------- resync

    /// The stamp of the operation with sequence `seq`, if this target knows it: its own
    /// operations and the one it recovered to.
    fn stamp_of(&self, seq: Seq) -> Option<Stamp> {
        if seq > self.activation_stamp.seq {
            Some(Stamp::new(self.generation, seq))
        } else if seq == self.activation_stamp.seq {
            Some(self.activation_stamp)
        } else {
            None
        }
    }

    /// A replica joined while the volume is served. `StartResync` is the first thing it hears:
    /// live operations follow `live_after`, so it knows whether they continue its history (it
    /// stays a consistent copy until resync data arrives) or not (it stops being one at once).
    fn begin_resync(
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
    fn schedule_resync(&mut self, out: &mut Vec<TargetOutput>) {
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

    fn on_regions(
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
        let _ = out;
    }

    /// Starts segment copies within the in-flight and bandwidth limits.
    fn pump_resync(&mut self, out: &mut Vec<TargetOutput>) {
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
            let throttled = self.options.resync_bytes_per_tick > 0;
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

    fn unlock(&mut self, segment: &Segment) {
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
    fn on_segment_data(
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

    fn on_segment_written(
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

    fn on_resync_finished(
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
        for (seq, op) in self.ops.range_mut(..first_live_seq) {
            let _ = seq;
            op.holders.insert(from);
        }
        if self.is_trusted(from, incarnation) {
            self.connected_mut(from).expect("connected").state = LinkState::Healthy;
        } else {
            self.connected_mut(from).expect("connected").state = LinkState::AwaitingPromotion;
            self.try_promote(out);
        }
    }

    fn abort_resync(&mut self, out: &mut Vec<TargetOutput>) {
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

    // ---------------------------------------------------------------- membership

    /// A rebuilt new replica becomes trusted only once that is persisted: until then it counts for
    /// nothing, so a restarted target can never depend on a replica its membership does not name.
    fn try_promote(&mut self, out: &mut Vec<TargetOutput>) {
        if self.membership_pending.is_some() {
            return;
        }
        let Some(replica) = self.links.keys().copied().find(|r| {
            self.connected(*r)
                .is_some_and(|c| c.state == LinkState::AwaitingPromotion)
        }) else {
            return;
        };
        let incarnation = self
            .connected(replica)
            .expect("connected")
            .hello
            .incarnation;
        let mut membership = self.membership.clone();
        let member = membership
            .members
            .iter_mut()
            .find(|m| m.replica == replica)
            .expect("awaiting promotion means member");
        member.incarnation = Some(incarnation);
        member.trusted = true;
        self.membership_pending = Some(PendingMembership::Promotion(replica));
        out.push(TargetOutput::PersistMembership(membership));
    }

    fn on_command(&mut self, command: Command, out: &mut Vec<TargetOutput>) {
        let result = self.apply_command(command, out);
        if let Err(error) = result {
            out.push(TargetOutput::CommandDone {
                command,
                result: Err(error),
            });
        }
    }

    fn apply_command(
        &mut self,
        command: Command,
        out: &mut Vec<TargetOutput>,
    ) -> Result<(), MembershipError> {
        if self.phase != Phase::Active {
            return Err(MembershipError::NotActive);
        }
        if self.membership_pending.is_some() || self.removal.is_some() {
            return Err(MembershipError::ChangeInProgress);
        }
        let mut membership = self.membership.clone();
        match command {
            Command::AddReplica(replica) => {
                if membership.get(replica).is_some() {
                    return Err(MembershipError::AlreadyMember(replica));
                }
                if membership.members.len() >= REPLICAS_MAX {
                    return Err(MembershipError::TooManyReplicas);
                }
                membership.members.push(Member {
                    replica,
                    incarnation: None,
                    trusted: false,
                });
                self.links.insert(replica, Link::offline(self.now_tick));
            }
            Command::RemoveReplica(replica) => {
                let member = membership
                    .get(replica)
                    .ok_or(MembershipError::NotMember(replica))?
                    .clone();
                if member.trusted {
                    if membership.replication_factor() <= 1 {
                        return Err(MembershipError::LastReplica(replica));
                    }
                    self.check_others_healthy(replica)?;
                    // Removed only once the others hold everything sequenced so far, so no
                    // acknowledged write depends on the leaving replica (cStor drains, too).
                    self.removal = Some(Removal {
                        replica,
                        drain_seq: self.seq_last,
                    });
                    self.progress_removal(out);
                    return Ok(());
                }
                self.remove_member(replica, out);
                return Ok(());
            }
        }
        self.membership = membership.clone();
        self.membership_pending = Some(PendingMembership::Command(command));
        out.push(TargetOutput::PersistMembership(membership));
        Ok(())
    }

    /// Refuses to remove `removing` unless every other trusted member is Healthy.
    fn check_others_healthy(&self, removing: ReplicaId) -> Result<(), MembershipError> {
        let unhealthy: Vec<ReplicaId> = self
            .membership
            .members
            .iter()
            .filter(|m| m.trusted && m.replica != removing && !self.is_healthy(m.replica))
            .map(|m| m.replica)
            .collect();
        if unhealthy.is_empty() || self.options.bugs.has(PlantedBug::RemoveWhileDegraded) {
            Ok(())
        } else {
            Err(MembershipError::NotHealthy {
                removing,
                unhealthy,
            })
        }
    }

    /// Finishes a removal once every other trusted replica has acknowledged everything
    /// sequenced before it was asked for; refuses it if one of them stops being Healthy first.
    fn progress_removal(&mut self, out: &mut Vec<TargetOutput>) {
        let Some(removal) = self.removal else {
            return;
        };
        if let Err(error) = self.check_others_healthy(removal.replica) {
            self.removal = None;
            out.push(TargetOutput::CommandDone {
                command: Command::RemoveReplica(removal.replica),
                result: Err(error),
            });
            return;
        }
        let drained = self.membership.members.iter().all(|m| {
            m.replica == removal.replica
                || !m.trusted
                || self.connected(m.replica).is_none_or(|c| {
                    c.awaited.keys().all(
                        |awaited| !matches!(awaited, Awaited::Op(seq) if *seq <= removal.drain_seq),
                    )
                })
        });
        if drained {
            self.removal = None;
            self.remove_member(removal.replica, out);
        }
    }

    /// Drops a member: from now on it counts for nothing and hears nothing. Safe before the
    /// change is persisted: any CF of the old membership includes a replica holding every write
    /// acknowledged under the new one.
    fn remove_member(&mut self, replica: ReplicaId, out: &mut Vec<TargetOutput>) {
        let mut membership = self.membership.clone();
        membership.members.retain(|m| m.replica != replica);
        self.links.remove(&replica);
        self.modes.remove(&replica);
        self.forget_replica_work(replica, out);
        self.membership = membership.clone();
        self.membership_pending = Some(PendingMembership::Command(Command::RemoveReplica(replica)));
        out.push(TargetOutput::PersistMembership(membership));
    }

    fn on_membership_persisted(&mut self, result: Result<(), Fenced>, out: &mut Vec<TargetOutput>) {
        let Some(pending) = self.membership_pending.take() else {
            return;
        };
        if result.is_err() {
            self.fence(out);
            return;
        }
        match pending {
            PendingMembership::Command(command) => {
                if let Command::RemoveReplica(replica) = command {
                    out.push(TargetOutput::Event(TargetEvent::ReplicaRemoved { replica }));
                }
                out.push(TargetOutput::CommandDone {
                    command,
                    result: Ok(()),
                });
            }
            PendingMembership::Promotion(replica) => {
                if let Some(c) = self.connected(replica) {
                    let incarnation = c.hello.incarnation;
                    if let Some(member) = self
                        .membership
                        .members
                        .iter_mut()
                        .find(|m| m.replica == replica)
                    {
                        member.incarnation = Some(incarnation);
                        member.trusted = true;
                    }
                    let c = self.connected_mut(replica).expect("connected");
                    if c.state == LinkState::AwaitingPromotion {
                        c.state = LinkState::Healthy;
                    }
                    out.push(TargetOutput::Event(TargetEvent::ReplicaPromoted {
                        replica,
                    }));
                } else if let Some(member) = self
                    .membership
                    .members
                    .iter_mut()
                    .find(|m| m.replica == replica)
                {
                    // It left before the promotion landed; the persisted membership trusts it, so
                    // this target does too (it is a consistent copy) and resyncs it on return.
                    member.trusted = true;
                }
            }
        }
        self.try_promote(out);
    }

    // ---------------------------------------------------------------- time

    fn on_tick(&mut self, out: &mut Vec<TargetOutput>) {
        self.now_tick += 1;
        let now = self.now_tick;
        if self.options.resync_bytes_per_tick > 0 {
            let cap = self
                .options
                .resync_bytes_per_tick
                .max(u64::from(self.geometry.region_size))
                * 2;
            self.resync_budget_bytes =
                (self.resync_budget_bytes + self.options.resync_bytes_per_tick).min(cap);
        }
        let replicas: Vec<ReplicaId> = self.links.keys().copied().collect();
        for replica in replicas {
            let link = &self.links[&replica];
            match &link.connection {
                Connection::Offline { retry_at_tick }
                    if *retry_at_tick <= now
                        && !(self.options.bugs.has(PlantedBug::NeverReconnect) && self.resumed) =>
                {
                    self.hello(replica, out)
                }
                Connection::Handshaking { sent_at_tick, .. }
                    if sent_at_tick + self.options.handshake_timeout_ticks <= now =>
                {
                    let retry_at_tick = now + self.options.reconnect_interval_ticks;
                    self.links.get_mut(&replica).expect("exists").connection =
                        Connection::Offline { retry_at_tick };
                }
                Connection::Connected(c) => {
                    let oldest = c.awaited.values().min().copied();
                    if oldest.is_some_and(|sent| sent + self.options.replica_timeout_ticks <= now) {
                        self.eject(replica, EjectReason::Timeout, out);
                    } else if c.awaited.is_empty()
                        && c.heard_at_tick + self.options.replica_timeout_ticks / 2 <= now
                    {
                        // An idle session is probed: a replica that moved on to a newer target
                        // (or whose session silently broke) then times out and is reconnected.
                        let request = self.request_id();
                        self.send(
                            replica,
                            Message::Ping { request },
                            Some(Awaited::Request(request)),
                            out,
                        );
                    } else if self.phase == Phase::Recovering
                        && c.state == LinkState::Answered
                        && c.answered_at_tick + self.options.replica_timeout_ticks <= now
                    {
                        // Recovery is stuck on this answer: ask again, the replica may have moved
                        // on (or accepted a newer target, which fences this one).
                        self.hello(replica, out);
                    }
                }
                _ => {}
            }
        }
    }

    // ---------------------------------------------------------------- status

    fn mode_of(&self, replica: ReplicaId, link: &Link) -> ReplicaMode {
        let Connection::Connected(c) = &link.connection else {
            return if link.refused {
                ReplicaMode::Error
            } else {
                ReplicaMode::Offline
            };
        };
        let trusted = self.is_trusted(replica, c.hello.incarnation);
        match (c.state, trusted) {
            (LinkState::Healthy, true) => ReplicaMode::Healthy,
            (LinkState::Resyncing, true) => ReplicaMode::Rebuilding,
            (LinkState::Resyncing | LinkState::AwaitingPromotion | LinkState::Healthy, false) => {
                ReplicaMode::ReconstructingNewReplica
            }
            (_, true) => ReplicaMode::Degraded,
            (_, false) => ReplicaMode::NewReplicaDegraded,
        }
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
            if self.modes.insert(replica, mode) != Some(mode) {
                out.push(TargetOutput::Event(TargetEvent::ReplicaMode {
                    replica,
                    mode,
                }));
            }
        }
    }
}

impl Link {
    fn offline(retry_at_tick: u64) -> Link {
        Link {
            connection: Connection::Offline { retry_at_tick },
            refused: false,
            acknowledged_max: Seq::ZERO,
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
