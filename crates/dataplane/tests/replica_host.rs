//! The replica host over real sockets and real files: the test plays a target, speaking raw
//! frames over a `TcpStream`, and checks the answers, the files, and what survives a restart.

use std::collections::BTreeSet;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tandem_core::{
    Envelope, Generation, Geometry, HelloAck, Incarnation, IoFailure, Message, Refusal, ReplicaId,
    RequestId, Seq, SessionId, Stamp,
};
use tandem_dataplane::replica::storage::{self, NewReplica, DATA_FILE};
use tandem_dataplane::replica::{HostOptions, ReplicaDisk, ReplicaHost, ReplicaStatus};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

const DEADLINE: Duration = Duration::from_secs(20);
const BLOCK: u64 = 4096;
const MIB: u64 = 1 << 20;

fn geometry() -> Geometry {
    storage::geometry_for(8 * MIB, None).expect("a valid geometry")
}

/// Creates replica storage for `replica` under `parent/<volume>`.
fn create(parent: &Path, volume: &str, replica: u64) -> PathBuf {
    storage::create_replica(
        parent,
        &NewReplica {
            volume: volume.to_string(),
            replica: ReplicaId(replica),
            incarnation: Incarnation(replica * 100),
            geometry: geometry(),
            consistent: true,
            thick: false,
        },
    )
    .expect("create replica storage")
}

async fn host() -> ReplicaHost {
    host_with(HostOptions::default()).await
}

async fn host_with(options: HostOptions) -> ReplicaHost {
    ReplicaHost::bind("127.0.0.1:0".parse().unwrap(), options)
        .await
        .expect("bind")
}

/// One connection, played as a target would.
struct TestTarget {
    stream: TcpStream,
    buffer: BytesMut,
    session: SessionId,
    number: u64,
}

impl TestTarget {
    async fn connect(address: SocketAddr) -> TestTarget {
        let stream = TcpStream::connect(address).await.expect("connect");
        stream.set_nodelay(true).unwrap();
        TestTarget {
            stream,
            buffer: BytesMut::new(),
            session: SessionId(0),
            number: 0,
        }
    }

    /// Opens a session: a new connection sending Hello.
    async fn hello(address: SocketAddr, generation: u64, counter: u32, replica: u64) -> TestTarget {
        let mut target = TestTarget::connect(address).await;
        target.session = SessionId::new(Generation(generation), counter);
        target
            .send(Message::Hello {
                generation: Generation(generation),
                replica: ReplicaId(replica),
                geometry: geometry(),
            })
            .await;
        target
    }

    async fn send(&mut self, message: Message) {
        self.number += 1;
        let mut frame = BytesMut::new();
        tandem_wire::encode(
            &Envelope {
                session: self.session,
                number: self.number,
                message,
            },
            &mut frame,
        );
        self.stream.write_all(&frame).await.expect("send a frame");
    }

    async fn send_raw(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send bytes");
    }

    /// The next frame, or None if the host closed the connection.
    async fn next(&mut self) -> Option<Envelope> {
        let read = async {
            loop {
                if let Some(envelope) = tandem_wire::decode(&mut self.buffer).expect("valid frame")
                {
                    return Some(envelope);
                }
                match self.stream.read_buf(&mut self.buffer).await {
                    Ok(0) | Err(_) => return None,
                    Ok(_) => {}
                }
            }
        };
        tokio::time::timeout(DEADLINE, read)
            .await
            .expect("the host answers or closes in time")
    }

    async fn recv(&mut self) -> Message {
        let envelope = self.next().await.expect("a frame, not a closed connection");
        assert_eq!(
            envelope.session, self.session,
            "answered on its own session"
        );
        envelope.message
    }

    async fn expect_closed(&mut self) {
        if let Some(envelope) = self.next().await {
            panic!("expected the connection to be closed, got {envelope:?}");
        }
    }

    async fn hello_ack(&mut self) -> HelloAck {
        match self.recv().await {
            Message::HelloAck(ack) => ack,
            other => panic!("expected a HelloAck, got {other:?}"),
        }
    }

    /// Checks the session is alive: Ping is answered with Pong.
    async fn ping(&mut self, request: u64) {
        self.send(Message::Ping {
            request: RequestId(request),
        })
        .await;
        assert_eq!(
            self.recv().await,
            Message::Pong {
                request: RequestId(request)
            }
        );
    }
}

/// Polls `check` until it holds, failing the test at the deadline.
async fn wait_for(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = tokio::time::Instant::now() + DEADLINE;
    while !check() {
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

fn status(host: &ReplicaHost, replica: u64) -> ReplicaStatus {
    host.status(ReplicaId(replica)).expect("hosted")
}

fn block_data(seq: u64, len: u64) -> Bytes {
    Bytes::from(vec![seq as u8; len as usize])
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_flushes_and_reads_reach_the_files_and_survive_a_restart() {
    let parent = tempfile::tempdir().unwrap();
    let dir = create(parent.path(), "pvc-1", 1);
    let host = host().await;
    assert_eq!(host.add_replica(&dir).await.unwrap(), ReplicaId(1));
    assert_eq!(host.replicas(), vec![ReplicaId(1)]);
    let before = status(&host, 1);
    assert!(before.consistent);
    assert_eq!(before.target, None);
    assert_eq!(before.stamp, Stamp::ZERO);
    assert_eq!(before.incarnation, Incarnation(100));
    assert!(before.running);
    let allocated = before.allocation.expect("measured");
    assert!(allocated.data_bytes < 64 * 1024, "{allocated:?}");

    let mut target = TestTarget::hello(host.local_addr(), 1, 1, 1).await;
    let ack = target.hello_ack().await;
    assert_eq!(ack.replica, ReplicaId(1));
    assert_eq!(ack.incarnation, Incarnation(100));
    assert!(ack.consistent && ack.stamp_exact);
    assert_eq!(ack.stamp, Stamp::ZERO);
    wait_for("the target to show in the status", || {
        status(&host, 1).target == Some(Generation(1))
    })
    .await;

    // Writes in several regions, of several sizes.
    let writes = [
        (1u64, 0u64, BLOCK),
        (2, 3 * BLOCK, 2 * BLOCK),
        (3, MIB + BLOCK, BLOCK),
        (4, 7 * MIB, 16 * BLOCK),
    ];
    for (seq, offset, len) in writes {
        target
            .send(Message::Write {
                seq: Seq(seq),
                offset,
                data: block_data(seq, len),
                committed: Seq(0),
            })
            .await;
    }
    let mut done = BTreeSet::new();
    for _ in writes {
        match target.recv().await {
            Message::WriteDone { seq, result } => {
                assert_eq!(result, Ok(()), "write {seq:?}");
                done.insert(seq.0);
            }
            other => panic!("expected WriteDone, got {other:?}"),
        }
    }
    assert_eq!(done, BTreeSet::from([1, 2, 3, 4]));
    target
        .send(Message::Flush {
            seq: Seq(5),
            committed: Seq(4),
        })
        .await;
    assert_eq!(
        target.recv().await,
        Message::FlushDone {
            seq: Seq(5),
            result: Ok(())
        }
    );
    target
        .send(Message::Read {
            request: RequestId(1),
            offset: 0,
            len: 6 * BLOCK,
        })
        .await;
    let mut expected = vec![0u8; 6 * BLOCK as usize];
    expected[..BLOCK as usize].fill(1);
    expected[3 * BLOCK as usize..5 * BLOCK as usize].fill(2);
    assert_eq!(
        target.recv().await,
        Message::ReadDone {
            request: RequestId(1),
            result: Ok(Bytes::from(expected))
        }
    );
    // A request outside the volume is refused, not applied.
    target
        .send(Message::Read {
            request: RequestId(2),
            offset: 8 * MIB,
            len: BLOCK,
        })
        .await;
    assert_eq!(
        target.recv().await,
        Message::ReadDone {
            request: RequestId(2),
            result: Err(IoFailure::OutOfRange)
        }
    );

    // The data is in the file at its offsets.
    let file = std::fs::read(dir.join(DATA_FILE)).unwrap();
    assert_eq!(file.len() as u64, 8 * MIB);
    for (seq, offset, len) in writes {
        let range = offset as usize..(offset + len) as usize;
        assert!(
            file[range].iter().all(|&byte| byte == seq as u8),
            "write {seq} at {offset}"
        );
    }
    let now = status(&host, 1);
    assert_eq!(now.stamp, Stamp::new(Generation(1), Seq(5)));
    assert_eq!(now.checkpoint, Seq(4));
    assert_eq!(now.generation_seen, Generation(1));
    assert!(now.allocation.unwrap().data_bytes >= 20 * BLOCK);

    // Restart: a new host on the same storage reports the persisted checkpoint.
    host.shutdown().await;
    target.expect_closed().await;
    let host = self::host().await;
    host.add_replica(&dir).await.unwrap();
    let restarted = status(&host, 1);
    assert_eq!(restarted.stamp, Stamp::new(Generation(1), Seq(5)));
    assert_eq!(restarted.checkpoint, Seq(4));
    let mut target = TestTarget::hello(host.local_addr(), 2, 1, 1).await;
    let ack = target.hello_ack().await;
    assert!(ack.consistent);
    assert!(ack.stamp_exact, "a flush emptied the activity log");
    assert_eq!(ack.stamp, Stamp::new(Generation(1), Seq(5)));
    assert_eq!(ack.checkpoint, Seq(4));
    assert!(ack.dirty.is_empty(), "nothing changed after the checkpoint");
    target
        .send(Message::Read {
            request: RequestId(3),
            offset: 7 * MIB,
            len: 16 * BLOCK,
        })
        .await;
    assert_eq!(
        target.recv().await,
        Message::ReadDone {
            request: RequestId(3),
            result: Ok(block_data(4, 16 * BLOCK))
        }
    );
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn unflushed_writes_are_reported_after_an_unclean_restart() {
    let parent = tempfile::tempdir().unwrap();
    let dir = create(parent.path(), "pvc-1", 1);
    let host = host().await;
    host.add_replica(&dir).await.unwrap();
    let mut target = TestTarget::hello(host.local_addr(), 1, 1, 1).await;
    target.hello_ack().await;
    target
        .send(Message::Write {
            seq: Seq(1),
            offset: 2 * MIB,
            data: block_data(1, BLOCK),
            committed: Seq(0),
        })
        .await;
    assert_eq!(
        target.recv().await,
        Message::WriteDone {
            seq: Seq(1),
            result: Ok(())
        }
    );
    // No flush: the activity log holds region 2, so the next host reports it as dirty and its
    // stamp as inexact.
    host.shutdown().await;
    let host = self::host().await;
    host.add_replica(&dir).await.unwrap();
    let mut target = TestTarget::hello(host.local_addr(), 2, 1, 1).await;
    let ack = target.hello_ack().await;
    assert!(!ack.stamp_exact);
    assert!(ack.dirty.contains(2));
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_older_generation_is_fenced() {
    let parent = tempfile::tempdir().unwrap();
    let dir = create(parent.path(), "pvc-1", 1);
    let host = host().await;
    host.add_replica(&dir).await.unwrap();
    let mut newer = TestTarget::hello(host.local_addr(), 2, 1, 1).await;
    newer.hello_ack().await;
    let mut older = TestTarget::hello(host.local_addr(), 1, 7, 1).await;
    assert_eq!(
        older.recv().await,
        Message::Refused(Refusal::Fenced {
            generation_seen: Generation(2)
        })
    );
    older.expect_closed().await;
    newer.ping(1).await;
    assert_eq!(status(&host, 1).target, Some(Generation(2)));
    // The newest generation was persisted before it was answered (G5): a restarted host still
    // refuses the older one.
    host.shutdown().await;
    let host = self::host().await;
    host.add_replica(&dir).await.unwrap();
    assert_eq!(status(&host, 1).generation_seen, Generation(2));
    let mut older = TestTarget::hello(host.local_addr(), 1, 8, 1).await;
    assert_eq!(
        older.recv().await,
        Message::Refused(Refusal::Fenced {
            generation_seen: Generation(2)
        })
    );
    older.expect_closed().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_newer_session_takes_over_and_the_older_connection_closes() {
    let parent = tempfile::tempdir().unwrap();
    let dir = create(parent.path(), "pvc-1", 1);
    let host = host().await;
    host.add_replica(&dir).await.unwrap();
    let mut first = TestTarget::hello(host.local_addr(), 1, 1, 1).await;
    first.hello_ack().await;
    first.ping(1).await;
    // The same target reconnecting, then a newer target.
    let mut second = TestTarget::hello(host.local_addr(), 1, 2, 1).await;
    second.hello_ack().await;
    first.expect_closed().await;
    second.ping(2).await;
    let mut third = TestTarget::hello(host.local_addr(), 2, 1, 1).await;
    third.hello_ack().await;
    second.expect_closed().await;
    third.ping(3).await;
    wait_for("the newest target in the status", || {
        status(&host, 1).target == Some(Generation(2))
    })
    .await;
    // A Hello the replica refuses does not disturb the current session.
    let mut wrong = TestTarget::connect(host.local_addr()).await;
    wrong.session = SessionId::new(Generation(3), 1);
    wrong
        .send(Message::Hello {
            generation: Generation(3),
            replica: ReplicaId(1),
            geometry: Geometry {
                size_bytes: 16 * MIB,
                ..geometry()
            },
        })
        .await;
    assert_eq!(
        wrong.recv().await,
        Message::Refused(Refusal::GeometryMismatch)
    );
    wrong.expect_closed().await;
    third.ping(4).await;
    // The target going away shows in the status.
    drop(third);
    wait_for("no target in the status", || {
        status(&host, 1).target.is_none()
    })
    .await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_frames_close_only_their_connection() {
    let parent = tempfile::tempdir().unwrap();
    let first_dir = create(parent.path(), "pvc-1", 1);
    let second_dir = create(parent.path(), "pvc-2", 2);
    let host = host().await;
    host.add_replica(&first_dir).await.unwrap();
    host.add_replica(&second_dir).await.unwrap();
    assert_eq!(host.replicas(), vec![ReplicaId(1), ReplicaId(2)]);
    let mut one = TestTarget::hello(host.local_addr(), 1, 1, 1).await;
    one.hello_ack().await;
    let mut two = TestTarget::hello(host.local_addr(), 1, 1, 2).await;
    two.hello_ack().await;

    // Garbage on a bound connection.
    two.send_raw(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n and some more bytes")
        .await;
    two.expect_closed().await;
    one.ping(1).await;
    // A frame with a bad checksum.
    let mut three = TestTarget::hello(host.local_addr(), 1, 2, 2).await;
    three.hello_ack().await;
    let mut frame = BytesMut::new();
    tandem_wire::encode(
        &Envelope {
            session: three.session,
            number: 2,
            message: Message::Ping {
                request: RequestId(9),
            },
        },
        &mut frame,
    );
    let last = frame.len() - 1;
    frame[last] ^= 0xff;
    three.send_raw(&frame).await;
    three.expect_closed().await;
    one.ping(2).await;
    // Garbage before any Hello, and a first frame that is not a Hello.
    let mut four = TestTarget::connect(host.local_addr()).await;
    four.send_raw(&[0u8; 64]).await;
    four.expect_closed().await;
    let mut five = TestTarget::connect(host.local_addr()).await;
    five.session = one.session;
    five.send(Message::Ping {
        request: RequestId(1),
    })
    .await;
    five.expect_closed().await;
    one.ping(3).await;
    // The replica whose connection broke takes a new one.
    let mut six = TestTarget::hello(host.local_addr(), 1, 3, 2).await;
    six.hello_ack().await;
    six.ping(4).await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unknown_replica_is_refused() {
    let parent = tempfile::tempdir().unwrap();
    let dir = create(parent.path(), "pvc-1", 1);
    let host = host().await;
    host.add_replica(&dir).await.unwrap();
    let mut stranger = TestTarget::hello(host.local_addr(), 1, 1, 999).await;
    stranger.expect_closed().await;
    // The hosted one is unaffected.
    let mut target = TestTarget::hello(host.local_addr(), 1, 2, 1).await;
    target.hello_ack().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn adding_and_removing_replicas() {
    let parent = tempfile::tempdir().unwrap();
    let dir = create(parent.path(), "pvc-1", 1);
    let twin = create(parent.path(), "pvc-twin", 1);
    let host = host().await;
    assert_eq!(host.add_replica(&dir).await.unwrap(), ReplicaId(1));
    let error = host.add_replica(&dir).await.unwrap_err();
    assert!(error.to_string().contains("already served"), "{error}");
    let error = host.add_replica(&twin).await.unwrap_err();
    assert!(
        error.to_string().contains("replica 1 is already served"),
        "{error}"
    );
    let missing = host
        .add_replica(&parent.path().join("missing"))
        .await
        .unwrap_err();
    assert!(missing.to_string().contains("cannot read"), "{missing}");
    // Another host cannot serve the same storage.
    let other = self::host().await;
    let error = other.add_replica(&dir).await.unwrap_err();
    assert!(error.to_string().contains("locked"), "{error}");

    let mut target = TestTarget::hello(host.local_addr(), 1, 1, 1).await;
    target.hello_ack().await;
    assert!(host.remove_replica(ReplicaId(1)).await);
    target.expect_closed().await;
    assert!(host.status(ReplicaId(1)).is_none());
    assert!(!host.remove_replica(ReplicaId(1)).await);
    // The files are let go of: the storage can be opened (and removed).
    drop(ReplicaDisk::open(&dir).expect("no longer locked"));
    storage::remove_replica(parent.path(), "pvc-1").unwrap();
    let mut late = TestTarget::hello(host.local_addr(), 1, 2, 1).await;
    late.expect_closed().await;
    // The twin (same id, other directory) can be served now.
    assert_eq!(host.add_replica(&twin).await.unwrap(), ReplicaId(1));
    other.shutdown().await;
    host.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_target_that_stops_reading_is_disconnected() {
    let parent = tempfile::tempdir().unwrap();
    let dir = create(parent.path(), "pvc-1", 1);
    let options = HostOptions {
        outgoing_frames_max: 8,
        outgoing_bytes_max: 2 * MIB as usize,
        ..HostOptions::default()
    };
    let host = host_with(options).await;
    host.add_replica(&dir).await.unwrap();
    let mut target = TestTarget::hello(host.local_addr(), 1, 1, 1).await;
    target.hello_ack().await;
    wait_for("the target in the status", || {
        status(&host, 1).target == Some(Generation(1))
    })
    .await;
    // Ask for far more than socket buffers and the outgoing queue hold, and read nothing.
    for request in 0..256 {
        target
            .send(Message::Read {
                request: RequestId(request),
                offset: 0,
                len: MIB,
            })
            .await;
    }
    wait_for("the slow connection to be closed", || {
        status(&host, 1).target.is_none()
    })
    .await;
    // What was written before it was cut off can still be read, then the connection ends.
    let mut answered = 0;
    while let Some(envelope) = target.next().await {
        assert!(matches!(envelope.message, Message::ReadDone { .. }));
        answered += 1;
    }
    assert!(answered < 256, "all {answered} answers were queued");
    // A new connection works.
    let mut fresh = TestTarget::hello(host.local_addr(), 1, 2, 1).await;
    fresh.hello_ack().await;
    fresh.ping(1).await;
    host.shutdown().await;
}
