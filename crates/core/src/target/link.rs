//! A replica link: the target's view of one replica over its successive sessions. The link owns
//! the session's numbering (what it sends, what it accepts), what is awaited on it, and its
//! timeouts (handshake, answers, idle probes, reconnect backoff); the target decides what to
//! send and what an answer means.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::{Envelope, HelloAck, Message, RequestId};
use crate::session::{Arrival, Session};
use crate::target::{ReplicaMode, TargetOptions, RECONNECT_BACKOFF_MAX};
use crate::types::{Seq, SessionId};

/// What the target expects an answer to on a link, for timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Awaited {
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
pub(super) struct Connected {
    session: Session,
    hello: HelloAck,
    /// Where the replica is in this session; changed only through `set_state`.
    state: LinkState,
    /// Unanswered requests, with the tick each was sent.
    awaited: BTreeMap<Awaited, u64>,
    /// The flushes among them.
    flushes_awaited: BTreeSet<Seq>,
    /// The newest flush this replica made durable in this session (its checkpoint at first).
    flushed: Seq,
    connected_at_tick: u64,
    /// The first operation sent live in this session: the replica holds everything sequenced
    /// before it only once resynced.
    first_live_seq: Seq,
    answered_at_tick: u64,
    /// The last tick anything arrived on this session.
    heard_at_tick: u64,
    /// The tick the newest request it has answered was sent (the handshake, at first): it had
    /// not accepted a newer target then. The read lease counts from here.
    confirmed_at_tick: u64,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum LinkState {
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

/// One replica as the target sees it.
#[derive(Clone, Debug)]
pub(super) struct ReplicaLink {
    connection: Connection,
    /// It refused the target (wrong identity or geometry).
    refused: bool,
    /// The newest operation this replica acknowledged to this target, over all its sessions: a
    /// killed replica's cache holds at least that far (unless it also lost power).
    acknowledged_max: Seq,
    /// Ejections since it was last Healthy: the reconnect backoff.
    ejections_unhealed: u32,
    /// The mode last reported for it, so only changes are reported.
    mode_reported: Option<ReplicaMode>,
}

/// What arrived on a link, as far as the link can tell.
pub(super) enum Accepted {
    /// The replica's answer to the handshake in progress.
    Handshake(Message),
    /// The next message of the connected session.
    Message(Message),
    /// A gap in the connected session: it cannot continue.
    Gap,
    /// Another session's message, or a duplicate: dropped.
    Stale,
}

/// What is due on a link at a tick.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Due {
    /// Offline and its retry time has come: open a new session.
    Reconnect,
    /// Its oldest unanswered request is older than `replica_timeout_ticks`.
    TimedOut,
    /// Silent for `probe_interval_ticks` with nothing awaited: probe it, so a replica that
    /// moved on (or whose session silently broke) times out and is reconnected.
    Probe,
    /// Recovery waited `replica_timeout_ticks` on its answer: ask again.
    AskAgain,
}

/// What a lost connection means for a link.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Loss {
    /// The connected session ended: eject the replica.
    Connected,
    /// The handshake's connection ended: it is retried after the reconnect interval.
    Handshake,
    /// An older session's connection: nothing to do.
    Stale,
}

impl ReplicaLink {
    pub(super) fn offline(retry_at_tick: u64) -> ReplicaLink {
        ReplicaLink {
            connection: Connection::Offline { retry_at_tick },
            refused: false,
            acknowledged_max: Seq::ZERO,
            ejections_unhealed: 0,
            mode_reported: None,
        }
    }

    pub(super) fn connected(&self) -> Option<&Connected> {
        match &self.connection {
            Connection::Connected(connected) => Some(connected),
            _ => None,
        }
    }

    pub(super) fn connected_mut(&mut self) -> Option<&mut Connected> {
        match &mut self.connection {
            Connection::Connected(connected) => Some(connected),
            _ => None,
        }
    }

    pub(super) fn mark_refused(&mut self) {
        self.refused = true;
    }

    pub(super) fn acknowledged_max(&self) -> Seq {
        self.acknowledged_max
    }

    /// The replica acknowledged operation `seq`.
    pub(super) fn note_acknowledged(&mut self, seq: Seq) {
        self.acknowledged_max = self.acknowledged_max.max(seq);
    }

    /// Opens `session`: the handshake (numbered [`Session::OPENING_NUMBER`]) is being sent.
    pub(super) fn open(&mut self, session: SessionId, now: u64) {
        self.connection = Connection::Handshaking {
            session,
            sent_at_tick: now,
        };
    }

    /// The replica answered the handshake of `session`: the session is connected.
    pub(super) fn connect(
        &mut self,
        session: SessionId,
        hello: HelloAck,
        now: u64,
        first_live_seq: Seq,
    ) {
        let sent_at_tick = match &self.connection {
            Connection::Handshaking {
                session: handshake,
                sent_at_tick,
            } if *handshake == session => *sent_at_tick,
            _ => panic!("only the handshake in progress connects"),
        };
        let checkpoint = hello.checkpoint;
        self.refused = false;
        self.connection = Connection::Connected(Box::new(Connected {
            session: Session::answered(session),
            hello,
            state: LinkState::Answered,
            awaited: BTreeMap::new(),
            flushes_awaited: BTreeSet::new(),
            flushed: checkpoint,
            connected_at_tick: now,
            first_live_seq,
            answered_at_tick: now,
            heard_at_tick: now,
            confirmed_at_tick: sent_at_tick,
        }));
    }

    /// Drops the session (if any) and schedules the next attempt: a replica ejected again before
    /// it was Healthy waits twice as long each time, up to `RECONNECT_BACKOFF_MAX` intervals.
    /// Returns true if it was connected.
    pub(super) fn disconnect(&mut self, now: u64, interval_ticks: u64) -> bool {
        let was_connected = matches!(self.connection, Connection::Connected(_));
        let backoff = (1u64 << self.ejections_unhealed.min(16)).min(RECONNECT_BACKOFF_MAX);
        let retry_at_tick = now + interval_ticks * backoff;
        if was_connected {
            self.ejections_unhealed += 1;
        }
        self.connection = Connection::Offline { retry_at_tick };
        was_connected
    }

    /// It was seen Healthy: the reconnect backoff starts over.
    pub(super) fn healed(&mut self) {
        self.ejections_unhealed = 0;
    }

    /// Numbers `message` on the connected session and remembers what is `awaited` for it.
    /// Returns the envelope and the number of requests now unanswered; `None` if not connected.
    pub(super) fn send(
        &mut self,
        message: Message,
        awaited: Option<Awaited>,
        now: u64,
    ) -> Option<(Envelope, usize)> {
        let connected = self.connected_mut()?;
        let envelope = connected.session.envelope(message);
        if let Some(awaited) = awaited {
            connected.awaited.insert(awaited, now);
            if let Message::Flush { seq, .. } = &envelope.message {
                connected.flushes_awaited.insert(*seq);
            }
        }
        Some((envelope, connected.awaited.len()))
    }

    /// Takes an envelope that arrived from the replica.
    pub(super) fn accept(&mut self, envelope: Envelope, now: u64) -> Accepted {
        match &mut self.connection {
            Connection::Handshaking { session, .. } if *session == envelope.session => {
                if envelope.number != Session::OPENING_NUMBER {
                    return Accepted::Stale;
                }
                Accepted::Handshake(envelope.message)
            }
            Connection::Connected(connected) if connected.session.id() == envelope.session => {
                match connected.session.accept(envelope.number) {
                    Arrival::InOrder => {
                        connected.heard_at_tick = now;
                        Accepted::Message(envelope.message)
                    }
                    Arrival::Dropped => Accepted::Stale,
                    Arrival::Gap => Accepted::Gap,
                }
            }
            _ => Accepted::Stale,
        }
    }

    /// The connection carrying `session` ended.
    pub(super) fn lose(&mut self, session: SessionId, now: u64, interval_ticks: u64) -> Loss {
        match &self.connection {
            Connection::Connected(c) if c.session.id() == session => Loss::Connected,
            Connection::Handshaking { session: s, .. } if *s == session => {
                let retry_at_tick = now + interval_ticks;
                self.connection = Connection::Offline { retry_at_tick };
                Loss::Handshake
            }
            _ => Loss::Stale,
        }
    }

    /// What is due at tick `now`. A handshake unanswered for `handshake_timeout_ticks` is
    /// abandoned here (retried after the reconnect interval).
    pub(super) fn tick(
        &mut self,
        now: u64,
        options: &TargetOptions,
        recovering: bool,
    ) -> Option<Due> {
        match &self.connection {
            Connection::Offline { retry_at_tick } if *retry_at_tick <= now => Some(Due::Reconnect),
            Connection::Handshaking { sent_at_tick, .. }
                if sent_at_tick + options.handshake_timeout_ticks <= now =>
            {
                let retry_at_tick = now + options.reconnect_interval_ticks;
                self.connection = Connection::Offline { retry_at_tick };
                None
            }
            Connection::Connected(c) => {
                let oldest = c.awaited.values().min().copied();
                if oldest.is_some_and(|sent| sent + options.replica_timeout_ticks <= now) {
                    Some(Due::TimedOut)
                } else if c.awaited.is_empty()
                    && c.heard_at_tick + options.probe_interval_ticks <= now
                {
                    Some(Due::Probe)
                } else if recovering
                    && c.state == LinkState::Answered
                    && c.answered_at_tick + options.replica_timeout_ticks <= now
                {
                    Some(Due::AskAgain)
                } else {
                    None
                }
            }
            _ => None,
        }
    }

    /// The first tick at which [`ReplicaLink::tick`] may find something due, or change the
    /// link, if nothing else happens first (or earlier); `None`: never, by time alone. While
    /// answers are awaited that is the next tick: a busy link is looked at every tick, as
    /// finding its oldest request would cost more than the tick.
    pub(super) fn next_due(
        &self,
        options: &TargetOptions,
        recovering: bool,
        now: u64,
    ) -> Option<u64> {
        match &self.connection {
            Connection::Offline { retry_at_tick } => Some(*retry_at_tick),
            Connection::Handshaking { sent_at_tick, .. } => {
                Some(sent_at_tick + options.handshake_timeout_ticks)
            }
            Connection::Connected(c) => {
                let timeout = options.replica_timeout_ticks;
                let answer = (!c.awaited.is_empty()).then_some(now + 1);
                let probe = c
                    .awaited
                    .is_empty()
                    .then_some(c.heard_at_tick + options.probe_interval_ticks);
                let ask = (recovering && c.state == LinkState::Answered)
                    .then_some(c.answered_at_tick + timeout);
                [answer, probe, ask].into_iter().flatten().min()
            }
        }
    }

    /// Requests sent on the link and not yet answered (a handshake counts as one).
    pub(super) fn outstanding(&self) -> usize {
        match &self.connection {
            Connection::Connected(c) => c.awaited.len(),
            Connection::Handshaking { .. } => 1,
            Connection::Offline { .. } => 0,
        }
    }

    /// Its mode, given whether the membership trusts the replica that answered.
    pub(super) fn mode(&self, trusted: bool) -> ReplicaMode {
        let Connection::Connected(c) = &self.connection else {
            return if self.refused {
                ReplicaMode::Error
            } else {
                ReplicaMode::Offline
            };
        };
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

    /// Records `mode` as reported; true if it changed.
    pub(super) fn report_mode(&mut self, mode: ReplicaMode) -> bool {
        self.mode_reported.replace(mode) != Some(mode)
    }

    /// A one-line summary, for the target's.
    pub(super) fn describe(&self) -> String {
        match &self.connection {
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
        }
    }
}

impl Connected {
    pub(super) fn session_id(&self) -> SessionId {
        self.session.id()
    }

    pub(super) fn state(&self) -> LinkState {
        self.state
    }

    /// What the replica said when it answered this session's `Hello`.
    pub(super) fn hello(&self) -> &HelloAck {
        &self.hello
    }

    /// The requests it has not answered yet, with the tick each was sent.
    pub(super) fn awaited(&self) -> &BTreeMap<Awaited, u64> {
        &self.awaited
    }

    /// How many of the unanswered requests are flushes.
    pub(super) fn flushes_awaited(&self) -> usize {
        self.flushes_awaited.len()
    }

    /// The newest flush this replica made durable in this session (its checkpoint at first).
    pub(super) fn flushed(&self) -> Seq {
        self.flushed
    }

    pub(super) fn connected_at_tick(&self) -> u64 {
        self.connected_at_tick
    }

    /// The first operation sent live in this session.
    pub(super) fn first_live_seq(&self) -> Seq {
        self.first_live_seq
    }

    /// From `seq` on, operations reach the replica live; everything before it must come from a
    /// replay or a resync before the replica counts as holding it.
    pub(super) fn start_live_at(&mut self, seq: Seq) {
        self.first_live_seq = seq;
    }

    /// Moves the replica on. A replica becomes Healthy only as recovery's source, by replaying
    /// what it missed, through its own finished resync, or by a persisted promotion; every
    /// other move is a bug that could let a replica count without the data.
    pub(super) fn set_state(&mut self, to: LinkState) {
        let from = self.state;
        let allowed = matches!(
            (from, to),
            (
                LinkState::Answered,
                LinkState::Healthy | LinkState::NeedsResync { started: false }
            ) | (
                LinkState::NeedsResync { started: false },
                LinkState::NeedsResync { started: true }
            ) | (
                LinkState::NeedsResync { started: true },
                LinkState::Resyncing
            ) | (
                LinkState::Resyncing,
                LinkState::NeedsResync { started: true }
                    | LinkState::Healthy
                    | LinkState::AwaitingPromotion
            ) | (LinkState::AwaitingPromotion, LinkState::Healthy)
        );
        assert!(
            allowed,
            "a replica link never moves from {from:?} to {to:?}"
        );
        self.state = to;
    }

    /// An answer to what was `awaited` arrived (or was made moot).
    pub(super) fn answered(&mut self, awaited: Awaited) {
        if let Some(sent_at_tick) = self.awaited.remove(&awaited) {
            self.confirmed_at_tick = self.confirmed_at_tick.max(sent_at_tick);
        }
    }

    /// The tick the newest request it has answered in this session was sent.
    pub(super) fn confirmed_at_tick(&self) -> u64 {
        self.confirmed_at_tick
    }

    /// The replica answered flush `seq`; a successful one is its newest durable point.
    pub(super) fn flush_answered(&mut self, seq: Seq, ok: bool) {
        if self.flushes_awaited.remove(&seq) && ok {
            self.flushed = self.flushed.max(seq);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::{Generation, Incarnation, RegionSet, ReplicaId, Stamp};

    const OPTIONS: TargetOptions = TargetOptions {
        replica_timeout_ticks: 100,
        replica_inflight_max: 1024,
        replica_congestion_ops: 256,
        handshake_timeout_ticks: 50,
        reconnect_interval_ticks: 20,
        probe_interval_ticks: 50,
        resync_bytes_per_tick: 0,
        resync_bytes_per_tick_under_load: 0,
        resync_segments_inflight_max: 4,
        client_timeout_ticks: 3_000,
        read_lease_ticks: 100,
        takeover_wait_ticks: 120,
        no_space_probe_ticks: 100,
        bugs: crate::Bugs::none(),
    };

    fn ack() -> HelloAck {
        HelloAck {
            replica: ReplicaId(1),
            incarnation: Incarnation(1),
            consistent: true,
            stamp: Stamp::ZERO,
            stamp_exact: true,
            sync_stamp: Stamp::ZERO,
            checkpoint: Seq::ZERO,
            dirty: RegionSet::new(4),
        }
    }

    /// A link connected at tick `now` over session 1 of generation 1.
    fn connected_at(now: u64) -> (ReplicaLink, SessionId) {
        let session = SessionId::new(Generation(1), 1);
        let mut link = ReplicaLink::offline(0);
        link.open(session, now);
        link.connect(session, ack(), now, Seq(1));
        (link, session)
    }

    #[test]
    fn a_replica_ejected_before_it_heals_waits_twice_as_long_each_time_up_to_the_cap() {
        let (mut link, _) = connected_at(0);
        let mut waits = Vec::new();
        for _ in 0..8 {
            let session = SessionId::new(Generation(1), 2);
            link.open(session, 0);
            link.connect(session, ack(), 0, Seq(1));
            assert!(link.disconnect(1_000, 20));
            let retry_at = (1_000..).find(|now| link.tick(*now, &OPTIONS, false).is_some());
            waits.push(retry_at.expect("retried") - 1_000);
        }
        assert_eq!(waits, vec![20, 40, 80, 160, 320, 640, 640, 640]);
        link.healed();
        let session = SessionId::new(Generation(1), 3);
        link.open(session, 0);
        link.connect(session, ack(), 0, Seq(1));
        link.disconnect(1_000, 20);
        assert_eq!(link.tick(1_019, &OPTIONS, false), None);
        assert_eq!(link.tick(1_020, &OPTIONS, false), Some(Due::Reconnect));
    }

    #[test]
    fn an_unanswered_request_times_out_and_an_idle_session_is_probed() {
        let (mut link, _) = connected_at(0);
        assert_eq!(link.tick(49, &OPTIONS, false), None);
        assert_eq!(
            link.tick(50, &OPTIONS, false),
            Some(Due::Probe),
            "idle half the timeout"
        );
        link.send(
            Message::Ping {
                request: RequestId(1),
            },
            Some(Awaited::Request(RequestId(1))),
            50,
        );
        assert_eq!(link.tick(149, &OPTIONS, false), None);
        assert_eq!(link.tick(150, &OPTIONS, false), Some(Due::TimedOut));
        assert_eq!(link.outstanding(), 1);
    }

    #[test]
    fn recovery_asks_again_after_waiting_a_timeout_on_an_answer() {
        let (mut link, _) = connected_at(0);
        let request = RequestId(1);
        link.send(
            Message::Ping { request },
            Some(Awaited::Request(request)),
            0,
        );
        link.connected_mut()
            .expect("connected")
            .answered(Awaited::Request(request));
        link.send(
            Message::Ping { request },
            Some(Awaited::Request(request)),
            90,
        );
        assert_eq!(
            link.tick(100, &OPTIONS, false),
            None,
            "serving: nothing to ask"
        );
        assert_eq!(link.tick(100, &OPTIONS, true), Some(Due::AskAgain));
    }

    #[test]
    fn a_handshake_unanswered_too_long_is_retried_later() {
        let mut link = ReplicaLink::offline(0);
        link.open(SessionId::new(Generation(1), 1), 0);
        assert_eq!(link.outstanding(), 1);
        assert_eq!(link.tick(50, &OPTIONS, false), None, "abandoned");
        assert_eq!(link.outstanding(), 0);
        assert_eq!(link.tick(69, &OPTIONS, false), None);
        assert_eq!(link.tick(70, &OPTIONS, false), Some(Due::Reconnect));
    }

    #[test]
    fn only_the_current_session_is_accepted_and_a_gap_ends_it() {
        let (mut link, session) = connected_at(0);
        let envelope = |session, number| Envelope {
            session,
            number,
            message: Message::Pong {
                request: RequestId(1),
            },
        };
        let older = SessionId::new(Generation(1), 0);
        assert!(matches!(
            link.accept(envelope(older, 2), 1),
            Accepted::Stale
        ));
        assert!(matches!(
            link.accept(envelope(session, 2), 1),
            Accepted::Message(_)
        ));
        assert!(
            matches!(link.accept(envelope(session, 2), 1), Accepted::Stale),
            "duplicate"
        );
        assert!(matches!(
            link.accept(envelope(session, 4), 1),
            Accepted::Gap
        ));
        assert_eq!(link.lose(older, 1, 20), Loss::Stale);
        assert_eq!(link.lose(session, 1, 20), Loss::Connected);
    }
}
