//! A whole volume in one process: three replica hosts on real pool directories, a target
//! connected to them over loopback TCP, the NBD server in front, and qemu-io as the application.
//! Then a fourth replica is added (rebuilt while the volume serves) and one removed.

mod common;

use std::sync::Arc;

use tandem_core::{Command, ReplicaId, ReplicaMode, VolumeStatus};

use common::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_volume_serves_nbd_and_moves_a_replica_while_serving() {
    let nodes = [node().await, node().await, node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes[..3].iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let store = Arc::new(Recorded::default());
    let (handle, uri) = serve_volume(&nodes, &initial, store.clone()).await;

    let written = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || {
            qemu_io(
                &uri,
                &[
                    "write -P 0xab 0 1M",
                    "write -P 0xcd 8M 4M",
                    "flush",
                    "read -P 0xab 0 1M",
                    "read -P 0xcd 8M 4M",
                ],
            )
        })
        .await
        .unwrap()
    };
    assert!(written.contains("wrote 1048576/1048576 bytes"), "{written}");
    // Every replica holds the flushed data in its own file.
    for node in &nodes[..3] {
        assert_eq!(file_bytes(&data_file(node), 0, 4096), vec![0xab; 4096]);
        assert_eq!(
            file_bytes(&data_file(node), 8 << 20, 4096),
            vec![0xcd; 4096]
        );
    }

    // Add a fourth replica: it is rebuilt from a healthy peer while the volume serves.
    let (fourth, _) = replica_on(&nodes[3], 4, false).await;
    handle.command(Command::AddReplica(fourth)).await.unwrap();
    let during = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || qemu_io(&uri, &["write -P 0xef 20M 1M", "flush"]))
    };
    eventually("the new replica to be Healthy and trusted", || {
        let status = handle.status();
        status.modes.get(&fourth) == Some(&ReplicaMode::Healthy)
            && status
                .membership
                .get(fourth)
                .is_some_and(|member| member.trusted)
    })
    .await;
    during.await.unwrap();
    // The target counted what the rebuild copied: exactly, unless it was ejected and started
    // over (a loaded machine may time it out).
    let rebuild = handle
        .status()
        .resync_history
        .into_iter()
        .find(|resync| resync.replica == fourth && resync.completed())
        .expect("the new replica was rebuilt");
    let counted = handle.counters().replicas()[&fourth];
    assert!(rebuild.full && rebuild.bytes >= 5 << 20, "{rebuild:?}");
    if counted.ejections == 0 {
        assert_eq!(counted.resync_bytes_copied, rebuild.bytes, "{counted:?}");
    } else {
        assert!(counted.resync_bytes_copied >= rebuild.bytes, "{counted:?}");
    }
    let flushed = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || qemu_io(&uri, &["flush"]))
            .await
            .unwrap()
    };
    let _ = flushed;
    assert_eq!(file_bytes(&data_file(&nodes[3]), 0, 4096), vec![0xab; 4096]);
    assert_eq!(
        file_bytes(&data_file(&nodes[3]), 8 << 20, 4096),
        vec![0xcd; 4096]
    );
    assert_eq!(
        file_bytes(&data_file(&nodes[3]), 20 << 20, 4096),
        vec![0xef; 4096]
    );
    assert!(store
        .persisted
        .lock()
        .unwrap()
        .iter()
        .any(|membership| membership.get(fourth).is_some_and(|m| m.trusted)));

    // Remove the first replica; the volume keeps serving everything written.
    handle
        .command(Command::RemoveReplica(ReplicaId(1)))
        .await
        .unwrap();
    eventually("the first replica to leave", || {
        handle.status().membership.get(ReplicaId(1)).is_none()
    })
    .await;
    let read = tokio::task::spawn_blocking(move || {
        qemu_io(
            &uri,
            &[
                "read -P 0xab 0 1M",
                "read -P 0xcd 8M 4M",
                "read -P 0xef 20M 1M",
            ],
        )
    })
    .await
    .unwrap();
    assert!(read.contains("read 1048576/1048576 bytes"), "{read}");
    handle.stop().await;
}

/// A pool whose size is reached refuses writes as "no space": its replica leaves the volume,
/// which keeps serving from the other two; once the pool has space again the replica returns,
/// is resynced, and holds what was written meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_full_pool_refuses_writes_and_its_replica_returns_when_space_is_freed() {
    let nodes = [node().await, node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let (handle, uri) = serve_volume(&nodes, &initial, Arc::new(Recorded::default())).await;

    let full = ReplicaId(3);
    nodes[2].host.set_pool_full(true);
    let written = {
        let uri = uri.clone();
        tokio::task::spawn_blocking(move || {
            qemu_io(
                &uri,
                &["write -P 0x5a 4M 2M", "flush", "read -P 0x5a 4M 2M"],
            )
        })
        .await
        .unwrap()
    };
    assert!(written.contains("wrote 2097152/2097152 bytes"), "{written}");
    assert_ne!(
        handle.status().modes.get(&full),
        Some(&ReplicaMode::Healthy)
    );
    assert_eq!(handle.status().status, VolumeStatus::Degraded);
    assert_eq!(
        file_bytes(&data_file(&nodes[2]), 4 << 20, 4096),
        vec![0; 4096]
    );

    nodes[2].host.set_pool_full(false);
    eventually("the replica to return and be resynced", || {
        let status = handle.status();
        status.status == VolumeStatus::Healthy
            && status.modes.get(&full) == Some(&ReplicaMode::Healthy)
    })
    .await;
    let resync = handle
        .status()
        .resync_history
        .iter()
        .rev()
        .find(|resync| resync.replica == full && resync.completed())
        .cloned()
        .expect("the returning replica was resynced");
    assert!(!resync.full && resync.bytes >= 2 << 20, "{resync:?}");
    // The target counted the ejection of the full replica, and what its resyncs copied.
    let counted = handle.counters().replicas()[&full];
    assert!(counted.ejections >= 1, "{counted:?}");
    assert!(counted.resync_bytes_copied >= resync.bytes, "{counted:?}");
    assert_eq!(
        file_bytes(&data_file(&nodes[2]), 4 << 20, 4096),
        vec![0x5a; 4096]
    );
    handle.stop().await;
}

/// With backpressure starting at one unanswered request, writes sent together wait for each
/// other, and the target counts each that arrived while it held new operations back.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn writes_held_back_by_backpressure_are_counted() {
    let nodes = [node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let options = tandem_core::TargetOptions {
        replica_congestion_ops: 1,
        ..tandem_core::TargetOptions::default()
    };
    let (handle, _uri) =
        serve_volume_with(&nodes, &initial, Arc::new(Recorded::default()), options).await;
    assert_eq!(handle.counters().backpressure_waits(), 0);
    // Bursts of writes until one arrives while another is unanswered (the first does, almost
    // surely: the target reads its queue faster than a replica answers over TCP).
    for _burst in 0..20 {
        let writes: Vec<_> = (0..32u64)
            .map(|block| {
                let handle = handle.clone();
                tokio::spawn(async move {
                    let data = bytes::Bytes::from(vec![block as u8; 4096]);
                    handle.write(block * 4096, data, false).await
                })
            })
            .collect();
        for write in writes {
            write
                .await
                .unwrap()
                .expect("a write held back still succeeds");
        }
        if handle.counters().backpressure_waits() > 0 {
            break;
        }
    }
    assert!(handle.counters().backpressure_waits() > 0);
    handle.stop().await;
}
