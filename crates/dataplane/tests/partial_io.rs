//! Any byte range on a volume whose blocks are 4 KiB: partial-block writes, zeroes, trims and
//! reads and block status against a byte model while a replica is added and another removed; concurrent
//! partial writes to one block losing nothing; and qemu-io over NBD with unaligned requests.

mod common;

use std::sync::Arc;

use bytes::Bytes;
use proptest::prelude::*;
use tandem_block::BlockDevice;
use tandem_core::{Command, ReplicaId, ReplicaMode, VolumeStatus};
use tandem_dataplane::target::TargetHandle;

use common::*;

/// The part of the volume the random operations touch: small, so they overlap often.
const HOT: u64 = 64 << 10;
/// The volume's block size (the test checks it).
const BLOCK: u64 = 4096;

#[derive(Clone, Debug)]
enum Op {
    Write {
        offset: u64,
        len: u64,
        byte: u8,
    },
    Zero {
        offset: u64,
        len: u64,
        no_hole: bool,
    },
    Trim {
        offset: u64,
        len: u64,
    },
    Read {
        offset: u64,
        len: u64,
    },
    BlockStatus {
        offset: u64,
        len: u64,
    },
    Flush,
}

/// A byte range in the hot part, up to 3 blocks long; a start or end on a block boundary is
/// as likely as one inside a block, so every mix of partial and whole blocks comes up.
fn range() -> impl Strategy<Value = (u64, u64)> {
    let point = prop_oneof![0..HOT, (0..HOT / BLOCK).prop_map(|block| block * BLOCK)];
    (point, 1..=3 * BLOCK, any::<bool>()).prop_map(|(start, len, align_end)| {
        let mut end = (start + len).min(HOT);
        if align_end {
            end = (end.div_ceil(BLOCK) * BLOCK).min(HOT);
        }
        (start, end.max(start + 1) - start)
    })
}

fn op() -> impl Strategy<Value = Op> {
    prop_oneof![
        4 => (range(), any::<u8>()).prop_map(|((offset, len), byte)| Op::Write { offset, len, byte }),
        2 => (range(), any::<bool>()).prop_map(|((offset, len), no_hole)| Op::Zero { offset, len, no_hole }),
        1 => range().prop_map(|(offset, len)| Op::Trim { offset, len }),
        2 => range().prop_map(|(offset, len)| Op::Read { offset, len }),
        1 => range().prop_map(|(offset, len)| Op::BlockStatus { offset, len }),
        1 => Just(Op::Flush),
    ]
}

/// What Tandem promises for each operation, byte by byte: writes and zeroes exactly their
/// range; a trim zeroes the whole blocks inside its range and leaves partial blocks as they were.
fn apply(model: &mut [u8], op: &Op, block: u64) {
    match *op {
        Op::Write { offset, len, byte } => {
            model[offset as usize..(offset + len) as usize].fill(byte);
        }
        Op::Zero { offset, len, .. } => model[offset as usize..(offset + len) as usize].fill(0),
        Op::Trim { offset, len } => {
            let start = offset.div_ceil(block) * block;
            let end = (offset + len) / block * block;
            if start < end {
                model[start as usize..end as usize].fill(0);
            }
        }
        Op::Read { .. } | Op::BlockStatus { .. } | Op::Flush => {}
    }
}

async fn run(handle: &TargetHandle, op: &Op, model: &[u8]) {
    let len32 = |len: u64| u32::try_from(len).unwrap();
    match *op {
        Op::Write { offset, len, byte } => {
            let data = Bytes::from(vec![byte; len as usize]);
            BlockDevice::write(handle, offset, data, false)
                .await
                .unwrap();
        }
        Op::Zero {
            offset,
            len,
            no_hole,
        } => BlockDevice::write_zeroes(handle, offset, len32(len), false, no_hole)
            .await
            .unwrap(),
        Op::Trim { offset, len } => BlockDevice::trim(handle, offset, len32(len), false)
            .await
            .unwrap(),
        Op::Read { offset, len } => {
            let data = BlockDevice::read(handle, offset, len32(len)).await.unwrap();
            let expected = &model[offset as usize..(offset + len) as usize];
            assert!(
                data == expected,
                "read {len} bytes at {offset} differ from the model"
            );
        }
        Op::BlockStatus { offset, len } => {
            let extents = BlockDevice::block_status(handle, offset, len32(len))
                .await
                .unwrap();
            let described: u64 = extents.iter().map(|e| u64::from(e.length)).sum();
            assert!(
                described > 0 && described <= len,
                "block status of {len} bytes at {offset} describes {described}"
            );
            // A hole is never reported where data lies.
            let mut at = offset;
            for extent in extents {
                let end = at + u64::from(extent.length);
                if extent.hole {
                    let bytes = &model[at as usize..end as usize];
                    assert!(
                        bytes.iter().all(|&byte| byte == 0),
                        "a hole at {at}..{end} over written data"
                    );
                }
                at = end;
            }
        }
        Op::Flush => BlockDevice::flush(handle).await.unwrap(),
    }
}

/// Runs `ops` on a fresh 3-replica volume; a fourth replica is added a third of the way in and
/// the first removed once the fourth is Healthy. Afterwards the volume and every remaining
/// replica's file hold exactly the model.
async fn against_the_model(ops: Vec<Op>) {
    let nodes = [node().await, node().await, node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes[..3].iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let (handle, _uri) = serve_volume(&nodes, &initial, Arc::new(Recorded::default())).await;
    let block = u64::from(handle.geometry().block_size);
    assert_eq!(block, BLOCK, "the test is about partial 4 KiB blocks");
    let mut model = vec![0u8; HOT as usize];
    let fourth = ReplicaId(4);
    for (index, op) in ops.iter().enumerate() {
        if index == ops.len() / 3 {
            replica_on(&nodes[3], 4, false).await;
            handle.command(Command::AddReplica(fourth)).await.unwrap();
        }
        if index == 2 * ops.len() / 3 {
            eventually("the added replica to be Healthy", || {
                let status = handle.status();
                status.modes.get(&fourth) == Some(&ReplicaMode::Healthy)
                    && status.membership.get(fourth).is_some_and(|m| m.trusted)
            })
            .await;
            let first = ReplicaId(1);
            handle.command(Command::RemoveReplica(first)).await.unwrap();
        }
        run(&handle, op, &model).await;
        apply(&mut model, op, block);
    }
    // A replica ejected on the way (a slow machine) is resynced before the files are compared.
    eventually("every replica to be Healthy", || {
        let status = handle.status();
        status.status == VolumeStatus::Healthy
            && status.membership.members.len() == 3
            && status.membership.members.iter().all(|member| {
                member.trusted && status.modes.get(&member.replica) == Some(&ReplicaMode::Healthy)
            })
    })
    .await;
    BlockDevice::flush(&handle).await.unwrap();
    let whole = BlockDevice::read(&handle, 0, HOT as u32).await.unwrap();
    assert!(whole == model, "the volume differs from the model");
    // A flush is answered once CF replicas hold it; the third may still be writing, so each
    // file gets a bounded while to catch up before it is compared.
    for (index, node) in nodes.iter().enumerate().skip(1) {
        let deadline = tokio::time::Instant::now() + std::time::Duration::from_secs(10);
        loop {
            let stored = file_bytes(&data_file(node), 0, HOT as usize);
            let Some(at) = stored.iter().zip(&model).position(|(a, b)| a != b) else {
                break;
            };
            if tokio::time::Instant::now() >= deadline {
                let last = stored
                    .iter()
                    .zip(&model)
                    .rposition(|(a, b)| a != b)
                    .unwrap();
                panic!(
                    "replica {}'s file differs from the model at bytes {at}..={last}: stored {:?}, model {:?}; resyncs {:?}; ops {ops:?}",
                    index + 1,
                    &stored[at..(at + 8).min(stored.len())],
                    &model[at..(at + 8).min(model.len())],
                    handle.status().resync_history,
                );
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    }
    handle.stop().await;
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 6, ..ProptestConfig::default() })]

    #[test]
    fn unaligned_operations_match_a_byte_model_across_a_migration(
        ops in proptest::collection::vec(op(), 30..60)
    ) {
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        runtime.block_on(against_the_model(ops));
    }
}

/// Many writes of a few bytes each into the same block at once: each reads the block, puts its
/// bytes in and writes it back, and none may undo another.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn concurrent_partial_writes_to_one_block_lose_nothing() {
    let nodes = [node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let (handle, _uri) = serve_volume(&nodes, &initial, Arc::new(Recorded::default())).await;
    const BASE: u64 = 8192;
    const PIECE: u64 = 64;
    let writers: Vec<_> = (0..4096 / PIECE)
        .map(|index| {
            let handle = handle.clone();
            tokio::spawn(async move {
                let data = Bytes::from(vec![index as u8 + 1; PIECE as usize]);
                BlockDevice::write(&handle, BASE + index * PIECE, data, false).await
            })
        })
        .collect();
    for writer in writers {
        writer.await.unwrap().unwrap();
    }
    let block = BlockDevice::read(&handle, BASE, 4096).await.unwrap();
    for (index, piece) in block.chunks(PIECE as usize).enumerate() {
        assert!(
            piece.iter().all(|&byte| byte == index as u8 + 1),
            "piece {index} of the block was lost: {piece:?}"
        );
    }
    handle.stop().await;
}

/// qemu-io sends what it is told once the export's minimum block is 1: unaligned writes,
/// zeroes and discards, read back exactly; nbdinfo shows the advertised sizes.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn qemu_io_unaligned_requests_read_back_exactly() {
    let nodes = [node().await, node().await];
    let mut initial = Vec::new();
    for (index, node) in nodes.iter().enumerate() {
        initial.push(replica_on(node, index as u64 + 1, true).await);
    }
    let (handle, uri) = serve_volume(&nodes, &initial, Arc::new(Recorded::default())).await;
    let output = tokio::task::spawn_blocking(move || {
        qemu_io(
            &uri,
            &[
                "write -P 0x11 0 16k",
                "write -P 0x22 100 1000",
                "write -P 0x33 4095 2",
                "write -z 6000 300",
                "discard 2048 512",
                "write -z -u 12000 100",
                "flush",
                "read -P 0x11 0 100",
                "read -P 0x22 100 1000",
                "read -P 0x11 1100 2995",
                "read -P 0x33 4095 2",
                "read -P 0x11 4097 1903",
                "read -P 0 6000 300",
                "read -P 0x11 6300 5700",
                "read -P 0 12000 100",
                "read -P 0x11 12100 4284",
            ],
        )
    })
    .await
    .unwrap();
    assert!(
        output.contains("wrote 1000/1000 bytes at offset 100"),
        "{output}"
    );
    assert!(
        output.contains("discard 512/512 bytes at offset 2048"),
        "{output}"
    );
    handle.stop().await;
}
