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

#[test]
fn a_lost_session_ejects_its_replica_at_once_and_an_older_one_is_ignored() {
    let mut target = target();
    let envelope = hello(&mut target);
    answer(
        &mut target,
        envelope.session,
        Message::HelloAck(empty_ack(Incarnation(5))),
    );
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
