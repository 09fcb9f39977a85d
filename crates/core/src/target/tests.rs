//! The target alone: handshakes, refusals, fencing, lost sessions, requests out of range.

use super::*;
use crate::types::RegionSet;

const GEOMETRY: Geometry = Geometry {
    size_bytes: 64 * 1024,
    block_size: 4096,
    region_size: 16 * 1024,
};

fn target() -> Target {
    let membership = Membership::initial(&[(ReplicaId(1), Incarnation(5))]);
    Target::new(
        Generation(3),
        GEOMETRY,
        membership,
        TargetOptions::default(),
    )
}

/// Ticks once and returns the handshake the target sent.
fn hello(target: &mut Target) -> Envelope {
    let mut out = Vec::new();
    target.handle(TargetInput::Tick, &mut out);
    out.into_iter()
        .find_map(|output| match output {
            TargetOutput::Send { envelope, .. } => Some(envelope),
            _ => None,
        })
        .expect("a handshake")
}

/// Replica 1's answer to a handshake: a consistent, empty copy of `incarnation`.
fn empty_ack(incarnation: Incarnation) -> HelloAck {
    HelloAck {
        replica: ReplicaId(1),
        incarnation,
        consistent: true,
        stamp: Stamp::ZERO,
        stamp_exact: true,
        sync_stamp: Stamp::ZERO,
        checkpoint: Seq::ZERO,
        dirty: RegionSet::new(4),
    }
}

fn answer(target: &mut Target, session: SessionId, message: Message) -> Vec<TargetOutput> {
    let mut out = Vec::new();
    target.handle(
        TargetInput::Message {
            from: ReplicaId(1),
            envelope: Envelope {
                session,
                number: 1,
                message,
            },
        },
        &mut out,
    );
    out
}

#[test]
fn a_replica_that_refuses_the_handshake_is_in_error() {
    let mut target = target();
    let envelope = hello(&mut target);
    assert_eq!(envelope.session.generation(), Generation(3));
    answer(
        &mut target,
        envelope.session,
        Message::Refused(Refusal::GeometryMismatch),
    );
    assert_eq!(target.replica_mode(ReplicaId(1)), Some(ReplicaMode::Error));
    assert_eq!(target.status(), VolumeStatus::Init);
}

#[test]
fn a_newer_generation_fences_the_target_and_fails_its_clients() {
    let mut target = target();
    let mut out = Vec::new();
    target.handle(
        TargetInput::Client(ClientRequest {
            id: ClientRequestId(1),
            op: ClientOp::Flush,
        }),
        &mut out,
    );
    let envelope = hello(&mut target);
    let refusal = Refusal::Fenced {
        generation_seen: Generation(4),
    };
    let out = answer(&mut target, envelope.session, Message::Refused(refusal));
    assert!(target.is_fenced());
    assert!(out.contains(&TargetOutput::Reply(ClientReply {
        id: ClientRequestId(1),
        result: Err(ClientError::Fenced),
    })));
    assert!(out.contains(&TargetOutput::Event(TargetEvent::Fenced)));
}

#[test]
fn an_answer_from_a_stranger_is_not_trusted() {
    let mut target = target();
    let envelope = hello(&mut target);
    answer(
        &mut target,
        envelope.session,
        Message::HelloAck(empty_ack(Incarnation(6))),
    );
    assert_eq!(
        target.status(),
        VolumeStatus::Init,
        "a stranger cannot recover the volume"
    );
    assert_eq!(
        target.replica_mode(ReplicaId(1)),
        Some(ReplicaMode::NewReplicaDegraded)
    );
}

/// Ticks `ticks` times; what the target sent.
fn tick(target: &mut Target, ticks: u64) -> Vec<TargetOutput> {
    let mut out = Vec::new();
    for _ in 0..ticks {
        target.handle(TargetInput::Tick, &mut out);
    }
    out
}

/// A target of generation 3 whose one replica answered, past its takeover wait: serving.
fn serving_target() -> (Target, SessionId) {
    let mut target = target();
    let envelope = hello(&mut target);
    answer(
        &mut target,
        envelope.session,
        Message::HelloAck(empty_ack(Incarnation(5))),
    );
    tick(&mut target, TargetOptions::default().takeover_wait_ticks);
    assert_eq!(target.status(), VolumeStatus::Healthy);
    (target, envelope.session)
}

#[test]
fn a_target_that_takes_over_serves_only_once_an_older_read_lease_ran_out() {
    let mut target = target();
    let envelope = hello(&mut target);
    answer(
        &mut target,
        envelope.session,
        Message::HelloAck(empty_ack(Incarnation(5))),
    );
    let wait = TargetOptions::default().takeover_wait_ticks;
    tick(&mut target, wait - 1);
    assert_eq!(target.status(), VolumeStatus::Init, "still waiting");
    tick(&mut target, 1);
    assert_eq!(target.status(), VolumeStatus::Healthy);
}

#[test]
fn the_first_generation_serves_at_once() {
    let membership = Membership::initial(&[(ReplicaId(1), Incarnation(5))]);
    let mut target = Target::new(
        Generation(1),
        GEOMETRY,
        membership,
        TargetOptions::default(),
    );
    let envelope = hello(&mut target);
    answer(
        &mut target,
        envelope.session,
        Message::HelloAck(empty_ack(Incarnation(5))),
    );
    assert_eq!(target.status(), VolumeStatus::Healthy);
}

#[test]
fn a_read_waits_for_the_read_lease_and_the_target_renews_it() {
    // The replica last answered the handshake, longer ago than the lease; its idle probe is
    // still unanswered.
    let (mut target, session) = serving_target();
    let mut out = Vec::new();
    target.handle(
        TargetInput::Client(ClientRequest {
            id: ClientRequestId(1),
            op: ClientOp::Read {
                offset: 0,
                len: 4096,
            },
        }),
        &mut out,
    );
    let sent: Vec<&Message> = out
        .iter()
        .filter_map(|output| match output {
            TargetOutput::Send { envelope, .. } => Some(&envelope.message),
            _ => None,
        })
        .collect();
    assert!(
        !sent.iter().any(|m| matches!(m, Message::Read { .. })),
        "no read without a lease: {sent:?}"
    );
    // The replica answers the probe: the lease holds again and the read goes out.
    let awaited: Vec<RequestId> = target.links[&ReplicaId(1)]
        .connected()
        .expect("connected")
        .awaited()
        .keys()
        .filter_map(|awaited| match awaited {
            link::Awaited::Request(request) => Some(*request),
            _ => None,
        })
        .collect();
    let newest = *awaited.iter().max().expect("a ping is awaited");
    let mut out = Vec::new();
    for (number, request) in (2..).zip(awaited) {
        out.clear();
        target.handle(
            TargetInput::Message {
                from: ReplicaId(1),
                envelope: Envelope {
                    session,
                    number,
                    message: Message::Pong { request },
                },
            },
            &mut out,
        );
        if request == newest {
            break;
        }
    }
    assert!(
        out.iter().any(|output| matches!(
            output,
            TargetOutput::Send {
                envelope: Envelope {
                    message: Message::Read { .. },
                    ..
                },
                ..
            }
        )),
        "the read goes out once the lease holds: {out:?}"
    );
}

#[test]
fn a_lost_session_ejects_its_replica_at_once_and_an_older_one_is_ignored() {
    let (mut target, session) = serving_target();
    let envelope = Envelope {
        session,
        number: Session::OPENING_NUMBER,
        message: Message::Ping {
            request: RequestId(0),
        },
    };
    assert_eq!(
        target.replica_mode(ReplicaId(1)),
        Some(ReplicaMode::Healthy)
    );
    let lost = |target: &mut Target, session| {
        let mut out = Vec::new();
        target.handle(
            TargetInput::SessionLost {
                replica: ReplicaId(1),
                session,
            },
            &mut out,
        );
        out
    };
    let older = SessionId::new(Generation(2), 9);
    assert!(lost(&mut target, older).is_empty());
    assert_eq!(
        target.replica_mode(ReplicaId(1)),
        Some(ReplicaMode::Healthy)
    );
    let out = lost(&mut target, envelope.session);
    assert!(out.contains(&TargetOutput::Event(TargetEvent::Ejected {
        replica: ReplicaId(1),
        reason: EjectReason::SessionBroken,
    })));
    assert_eq!(
        target.replica_mode(ReplicaId(1)),
        Some(ReplicaMode::Offline)
    );
}

#[test]
fn requests_outside_the_volume_are_refused() {
    let mut target = target();
    let mut out = Vec::new();
    target.handle(
        TargetInput::Client(ClientRequest {
            id: ClientRequestId(7),
            op: ClientOp::Read {
                offset: 64 * 1024,
                len: 4096,
            },
        }),
        &mut out,
    );
    assert_eq!(
        out[0],
        TargetOutput::Reply(ClientReply {
            id: ClientRequestId(7),
            result: Err(ClientError::OutOfRange),
        })
    );
    assert_eq!(target.pending_client_ops(), 0);
}
