//! Session numbering, the same on both sides: each side numbers what it sends, and a receiver
//! takes a session's messages strictly in order (a duplicate is dropped, a gap breaks the session).
//!
//! A target opens a session with `Hello`, numbered [`Session::OPENING_NUMBER`]; the replica's
//! answer (`HelloAck` or `Refused`) carries the same number. Over TCP a gap never happens; in the
//! simulator loss and reordering turn into a broken session and a resync, never a misapplied
//! message.

use crate::message::{Envelope, Message};
use crate::types::SessionId;

/// What became of a message that arrived on a session.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// The next message in order: process it.
    InOrder,
    /// A duplicate, or the session is broken: drop it.
    Dropped,
    /// Something before it was lost or reordered: the session is broken from now on.
    Gap,
}

/// One session's numbering, as one side sees it.
#[derive(Clone, Copy, Debug)]
pub(crate) struct Session {
    id: SessionId,
    /// The number the next message received must carry.
    next_in: u64,
    /// The number the next message sent carries.
    next_out: u64,
    /// After a gap (or when this side gives up on the session) nothing more is taken or sent.
    broken: bool,
}

impl Session {
    /// The number of the first message each way: the target's `Hello` and the replica's answer.
    pub(crate) const OPENING_NUMBER: u64 = 1;

    /// The replica's side of a session whose `Hello` it accepted: its answer is the first
    /// message it sends.
    pub(crate) fn accepted(id: SessionId) -> Session {
        Session {
            id,
            next_in: Session::OPENING_NUMBER + 1,
            next_out: Session::OPENING_NUMBER,
            broken: false,
        }
    }

    /// The target's side of a session the replica answered: both opening messages are done.
    pub(crate) fn answered(id: SessionId) -> Session {
        Session {
            id,
            next_in: Session::OPENING_NUMBER + 1,
            next_out: Session::OPENING_NUMBER + 1,
            broken: false,
        }
    }

    pub(crate) fn id(&self) -> SessionId {
        self.id
    }

    pub(crate) fn is_broken(&self) -> bool {
        self.broken
    }

    /// Takes the message numbered `number` if it is the next one in order.
    pub(crate) fn accept(&mut self, number: u64) -> Arrival {
        if self.broken || number < self.next_in {
            return Arrival::Dropped;
        }
        if number > self.next_in {
            self.broken = true;
            return Arrival::Gap;
        }
        self.next_in += 1;
        Arrival::InOrder
    }

    /// Numbers `message` as the next one sent on this session.
    pub(crate) fn envelope(&mut self, message: Message) -> Envelope {
        assert!(!self.broken, "nothing is sent on a broken session");
        let number = self.next_out;
        self.next_out += 1;
        Envelope {
            session: self.id,
            number,
            message,
        }
    }

    /// This side gives up on the session: nothing more is taken or sent on it.
    pub(crate) fn break_off(&mut self) {
        self.broken = true;
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::types::Generation;

    #[test]
    fn a_duplicate_is_dropped_and_a_gap_breaks_the_session() {
        let mut session = Session::answered(SessionId::new(Generation(1), 1));
        assert_eq!(
            session.accept(1),
            Arrival::Dropped,
            "the opening answer again"
        );
        assert_eq!(session.accept(2), Arrival::InOrder);
        assert_eq!(session.accept(2), Arrival::Dropped);
        assert_eq!(session.accept(4), Arrival::Gap);
        assert!(session.is_broken());
        assert_eq!(session.accept(3), Arrival::Dropped, "nothing after a gap");
    }

    #[test]
    fn each_side_numbers_from_where_the_handshake_left_off() {
        let id = SessionId::new(Generation(1), 1);
        let mut replica = Session::accepted(id);
        let mut target = Session::answered(id);
        assert_eq!(replica.envelope(Message::ResyncStarted).number, 1);
        assert_eq!(target.envelope(Message::ResyncStarted).number, 2);
        assert_eq!(replica.accept(2), Arrival::InOrder);
    }
}
