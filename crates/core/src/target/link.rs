//! A link: the target's view of one replica, over its successive sessions.

use std::collections::{BTreeMap, BTreeSet};

use crate::message::{HelloAck, RequestId};
use crate::session::Session;
use crate::types::{Seq, SessionId};

/// What the target expects an answer to on a link, for timeouts.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) enum Awaited {
    Op(Seq),
    Request(RequestId),
    Marker,
}

#[derive(Clone, Debug)]
pub(super) enum Connection {
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
    pub(super) session: Session,
    pub(super) hello: HelloAck,
    pub(super) state: LinkState,
    /// Unanswered requests, with the tick each was sent.
    pub(super) awaited: BTreeMap<Awaited, u64>,
    /// The flushes among them.
    pub(super) flushes_awaited: BTreeSet<Seq>,
    /// The newest flush this replica made durable in this session (its checkpoint at first).
    pub(super) flushed: Seq,
    pub(super) connected_at_tick: u64,
    /// The first operation sent live in this session: the replica holds everything sequenced
    /// before it only once resynced.
    pub(super) first_live_seq: Seq,
    pub(super) answered_at_tick: u64,
    /// The last tick anything arrived on this session.
    pub(super) heard_at_tick: u64,
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

#[derive(Clone, Debug)]
pub(super) struct Link {
    pub(super) connection: Connection,
    pub(super) refused: bool,
    /// The newest operation this replica acknowledged to this target, over all its sessions: a
    /// killed replica's cache holds at least that far (unless it also lost power).
    pub(super) acknowledged_max: Seq,
    /// Ejections since it was last Healthy: the reconnect backoff.
    pub(super) ejections_unhealed: u32,
}

impl Link {
    pub(super) fn offline(retry_at_tick: u64) -> Link {
        Link {
            connection: Connection::Offline { retry_at_tick },
            refused: false,
            acknowledged_max: Seq::ZERO,
            ejections_unhealed: 0,
        }
    }
}
