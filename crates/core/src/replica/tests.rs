//! The replica alone, with an in-memory disk: sessions, barriers, the activity log, resync.

use super::*;
use crate::message::{HelloAck, RequestId};
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
    /// Storage fails writes and trims so while set.
    fail_writes: Option<IoFailure>,
    /// Data operations issued since [`Harness::issue`] began.
    issued: Vec<DiskOp>,
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
            fail_writes: None,
            issued: Vec::new(),
        }
    }

    fn feed(&mut self, input: ReplicaInput) -> Vec<Message> {
        let mut out = Vec::new();
        self.replica.handle(input, &mut out);
        let mut sent = Vec::new();
        for output in out {
            match output {
                ReplicaOutput::Send(envelope) => sent.push(envelope.message),
                ReplicaOutput::Disk(op) => {
                    if matches!(op, DiskOp::Write { .. } | DiskOp::Trim { .. }) {
                        self.issued.push(op.clone());
                    }
                    self.pending.push_back(op);
                }
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
                DiskOp::Write { id, .. } | DiskOp::Trim { id, .. }
                    if self.fail_writes.is_some() =>
                {
                    (id, Err(self.fail_writes.expect("checked")))
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

    /// Sends a message, completes the storage work, and returns the data operations issued
    /// meanwhile (writes and trims).
    fn issue(&mut self, message: Message) -> Vec<DiskOp> {
        self.issued.clear();
        self.send(message);
        std::mem::take(&mut self.issued)
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
fn a_resync_segment_of_zeros_is_stored_as_a_hole() {
    let mut harness = Harness::new(true);
    harness.hello(1, 1);
    let here = Stamp::new(Generation(1), Seq(0));
    harness.send(Message::StartResync {
        sync_stamp: here,
        live_after: Some(here),
    });
    let segment = |offset: u64, byte: u8| Message::WriteSegment {
        request: RequestId(offset),
        offset,
        data: Bytes::from(vec![byte; 16 * 1024]),
        region_seq: Seq(0),
    };
    let issued = harness.issue(segment(0, 0));
    assert!(
        matches!(issued[..], [DiskOp::Trim { offset: 0, len, .. }] if len == 16 * 1024),
        "{issued:?}"
    );
    let mut data = vec![0; 16 * 1024];
    data[16 * 1024 - 1] = 1;
    let issued = harness.issue(Message::WriteSegment {
        request: RequestId(9),
        offset: 16 * 1024,
        data: Bytes::from(data),
        region_seq: Seq(0),
    });
    assert!(
        matches!(issued[..], [DiskOp::Write { offset, .. }] if offset == 16 * 1024),
        "one byte of data is written: {issued:?}"
    );
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
    harness.fail_writes = Some(IoFailure::Device);
    assert_eq!(
        harness.send(write(2, 1, 0)),
        vec![Message::WriteDone {
            seq: Seq(2),
            result: Err(IoFailure::Device)
        }]
    );
    assert_eq!(
        harness.send(write(3, 2, 0)),
        vec![],
        "nothing more in this session"
    );
    harness.fail_writes = None;
    let ack = hello_ack(&harness.hello(1, 2)).clone();
    assert_eq!(ack.stamp, Stamp::new(Generation(1), Seq(1)));
    assert!(ack.consistent);
}

#[test]
fn a_write_refused_for_space_holds_back_its_range_and_barriers_until_voided() {
    let mut harness = Harness::new(true);
    harness.hello(1, 1);
    harness.send(write(1, 0, 0));
    harness.fail_writes = Some(IoFailure::NoSpace);
    assert_eq!(
        harness.send(write(2, 1, 0)),
        vec![Message::WriteDone {
            seq: Seq(2),
            result: Err(IoFailure::NoSpace)
        }]
    );
    harness.fail_writes = None;
    // The session goes on: writes elsewhere too, but not to its range, nor barriers.
    assert_eq!(
        harness.issue(write(3, 2, 0)).len(),
        1,
        "another range goes on"
    );
    assert_eq!(harness.issue(write(4, 1, 0)), vec![], "its range waits");
    assert_eq!(harness.send(flush(5, 0)), vec![], "barriers wait");
    let ping = Message::Ping {
        request: RequestId(9),
    };
    assert_eq!(
        harness.send(ping),
        vec![Message::Pong {
            request: RequestId(9)
        }]
    );
    assert_eq!(
        harness.send(Message::Voided { seq: Seq(7) }),
        vec![],
        "not refused here"
    );
    assert_eq!(
        harness.send(Message::Voided { seq: Seq(2) }),
        vec![
            Message::WriteDone {
                seq: Seq(4),
                result: Ok(())
            },
            Message::FlushDone {
                seq: Seq(5),
                result: Ok(())
            }
        ]
    );
    // The voided write is part of the history, as nothing.
    let ack = hello_ack(&harness.hello(1, 2)).clone();
    assert_eq!(ack.stamp, Stamp::new(Generation(1), Seq(5)));
    assert!(ack.consistent);
}

#[test]
fn a_refused_write_never_voided_ends_the_history_before_it() {
    let mut harness = Harness::new(true);
    harness.hello(1, 1);
    harness.send(write(1, 0, 0));
    harness.fail_writes = Some(IoFailure::NoSpace);
    harness.send(write(2, 1, 0));
    harness.fail_writes = None;
    harness.send(write(3, 2, 0));
    // Another replica holds write 2: the target ends this session instead of voiding it.
    let ack = hello_ack(&harness.hello(1, 2)).clone();
    assert_eq!(ack.stamp, Stamp::new(Generation(1), Seq(1)));
    assert!(ack.consistent);
    // A verdict from the old session changes nothing, and the new session is not held back.
    harness.send(Message::Voided { seq: Seq(2) });
    assert_eq!(
        harness.send(write(4, 3, 0)),
        vec![Message::WriteDone {
            seq: Seq(4),
            result: Ok(())
        }]
    );
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
