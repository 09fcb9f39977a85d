//! The protocol byte by byte over raw sockets: option replies, request errors, structured
//! replies, pipelining, and hostile or stalled clients that must not disturb anyone else.

mod common;

use std::collections::HashMap;
use std::sync::atomic::Ordering;
use std::time::Duration;

use common::*;
use tandem_block::FileDevice;
use tandem_nbd::proto::{self, ClientOption, InfoRequest, MetaContextRequest};
use tandem_nbd::ServerConfig;
use tokio::io::AsyncWriteExt;

const FIXED: u32 = proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES;
const SHORT: Duration = Duration::from_secs(10);

fn meta(export: &str, queries: &[&str]) -> MetaContextRequest {
    MetaContextRequest {
        export: export.into(),
        queries: queries.iter().map(|q| q.to_string()).collect(),
    }
}

/// A healthy client still works: a write, then a read of the same bytes.
async fn still_works(c: &mut RawClient, handle: u64, offset: u64) {
    let data: Vec<u8> = (0..4096u32).map(|i| (i as u8) ^ (handle as u8)).collect();
    c.request(proto::CMD_WRITE, 0, handle, offset, 4096, &data)
        .await;
    assert_eq!(c.simple_reply(0).await, (0, handle, vec![]));
    c.request(proto::CMD_READ, 0, handle + 1, offset, 4096, &[])
        .await;
    assert_eq!(c.simple_reply(4096).await, (0, handle + 1, data));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn options_are_answered_as_the_spec_says() {
    let t = TestServer::start().await;
    t.add_file("disk", 1 << 20);
    t.add_file("other", 2 << 20);
    let mut c = RawClient::start(t.addr, FIXED).await;

    // NBD_OPT_LIST: one NBD_REP_SERVER per export, then ACK; with data it is invalid.
    c.raw_option(proto::OPT_LIST, b"x").await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_INVALID);
    c.option(&ClientOption::List).await;
    let replies = c.option_replies().await;
    assert_eq!(replies.len(), 3);
    assert!(replies[..2]
        .iter()
        .all(|r| r.0 == proto::OPT_LIST && r.1 == proto::REP_SERVER));
    assert_eq!(&replies[0].2[..8], &[0, 0, 0, 4, b'd', b'i', b's', b'k']);
    assert_eq!(&replies[0].2[8..], b"test disk disk");
    assert_eq!(&replies[1].2[4..9], b"other");
    assert_eq!(replies[2].1, proto::REP_ACK);

    // STARTTLS on a server without TLS: refused by policy (with data: invalid).
    c.raw_option(proto::OPT_STARTTLS, &[]).await;
    let (option, kind, _) = c.option_reply().await;
    assert_eq!((option, kind), (proto::OPT_STARTTLS, proto::REP_ERR_POLICY));
    c.raw_option(proto::OPT_STARTTLS, &[1]).await;
    let (_, kind, _) = c.option_reply().await;
    assert_eq!(kind, proto::REP_ERR_INVALID);

    // Unknown and unsupported options: NBD_REP_ERR_UNSUP, and the next option still parses.
    for code in [proto::OPT_PEEK_EXPORT, 11, 99, 0xffff_ffff] {
        c.raw_option(code, &[1, 2, 3]).await;
        let (option, kind, _) = c.option_reply().await;
        assert_eq!(
            (option, kind),
            (code, proto::REP_ERR_UNSUP),
            "option {code}"
        );
    }

    // Meta contexts need structured replies first.
    c.option(&ClientOption::SetMetaContext(meta(
        "disk",
        &["base:allocation"],
    )))
    .await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_INVALID);
    c.option(&ClientOption::ListMetaContext(meta("disk", &[])))
        .await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_INVALID);
    c.raw_option(proto::OPT_STRUCTURED_REPLY, &[0]).await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_INVALID);
    c.option(&ClientOption::StructuredReply).await;
    assert_eq!(
        c.option_reply().await,
        (proto::OPT_STRUCTURED_REPLY, proto::REP_ACK, vec![])
    );

    // Listing: everything, the base: wildcard, an unknown namespace, an unknown export.
    for (queries, found) in [
        (&[][..], true),
        (&["base:"][..], true),
        (&["qemu:dirty-bitmap:x"][..], false),
    ] {
        c.option(&ClientOption::ListMetaContext(meta("disk", queries)))
            .await;
        let replies = c.option_replies().await;
        assert_eq!(replies.last().map(|r| r.1), Some(proto::REP_ACK));
        assert_eq!(replies.len(), if found { 2 } else { 1 }, "{queries:?}");
        if found {
            assert_eq!(replies[0].1, proto::REP_META_CONTEXT);
            assert_eq!(&replies[0].2[4..], b"base:allocation");
        }
    }
    c.option(&ClientOption::ListMetaContext(meta("nope", &[])))
        .await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_UNKNOWN);
    // Setting: "base:" alone selects nothing; base:allocation gets a nonzero id.
    c.option(&ClientOption::SetMetaContext(meta("disk", &["base:"])))
        .await;
    assert_eq!(c.option_replies().await.len(), 1);
    c.option(&ClientOption::SetMetaContext(meta(
        "disk",
        &["base:allocation", "x-foo:bar"],
    )))
    .await;
    let replies = c.option_replies().await;
    assert_eq!(replies.len(), 2);
    assert_eq!(replies[0].1, proto::REP_META_CONTEXT);
    assert_eq!(&replies[0].2[..4], &proto::BASE_ALLOCATION_ID.to_be_bytes());
    // Malformed meta context data.
    c.raw_option(
        proto::OPT_SET_META_CONTEXT,
        &[0, 0, 0, 0, 0xff, 0xff, 0xff, 0xff],
    )
    .await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_INVALID);

    // NBD_OPT_INFO: unknown export, malformed data, then the full set of information.
    c.option(&ClientOption::Info(InfoRequest {
        name: "nope".into(),
        requests: vec![],
    }))
    .await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_UNKNOWN);
    c.raw_option(proto::OPT_INFO, &[0, 0, 0, 9, b'd']).await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_INVALID);
    let requests = vec![
        proto::INFO_NAME,
        proto::INFO_DESCRIPTION,
        proto::INFO_BLOCK_SIZE,
        77,
    ];
    c.option(&ClientOption::Info(InfoRequest {
        name: "other".into(),
        requests,
    }))
    .await;
    let replies = c.option_replies().await;
    let infos: HashMap<u16, Vec<u8>> = replies
        .iter()
        .filter(|r| r.1 == proto::REP_INFO)
        .map(|r| (u16::from_be_bytes([r.2[0], r.2[1]]), r.2[2..].to_vec()))
        .collect();
    assert_eq!(replies.last().map(|r| r.1), Some(proto::REP_ACK));
    let export = &infos[&proto::INFO_EXPORT];
    assert_eq!(
        u64::from_be_bytes(export[..8].try_into().unwrap_or_default()),
        2 << 20
    );
    let flags = u16::from_be_bytes([export[8], export[9]]);
    assert_eq!(flags & proto::FLAG_HAS_FLAGS, proto::FLAG_HAS_FLAGS);
    assert_ne!(
        flags & proto::FLAG_SEND_DF,
        0,
        "structured replies were negotiated"
    );
    assert_eq!(infos[&proto::INFO_NAME], b"other");
    assert_eq!(infos[&proto::INFO_DESCRIPTION], b"test disk other");
    let sizes = &infos[&proto::INFO_BLOCK_SIZE];
    assert_eq!(sizes, &[0, 0, 0, 1, 0, 0, 0x10, 0, 2, 0, 0, 0]);

    // NBD_OPT_ABORT: ACK, then the server closes.
    c.option(&ClientOption::Abort).await;
    assert_eq!(
        c.option_reply().await,
        (proto::OPT_ABORT, proto::REP_ACK, vec![])
    );
    assert!(c.closed_within(SHORT).await);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn export_name_path_and_client_flags() {
    let t = TestServer::start().await;
    t.add_file("disk", 1 << 20);

    // With NO_ZEROES: size and flags only; then the transmission phase works.
    let mut c = RawClient::start(t.addr, FIXED).await;
    c.option(&ClientOption::ExportName("disk".into())).await;
    let mut reply = [0u8; 10];
    c.read_exact(&mut reply).await;
    assert_eq!(
        u64::from_be_bytes(reply[..8].try_into().unwrap_or_default()),
        1 << 20
    );
    still_works(&mut c, 1, 0).await;

    // Without it: 124 zero bytes follow.
    let mut c = RawClient::start(t.addr, proto::FLAG_C_FIXED_NEWSTYLE).await;
    c.option(&ClientOption::ExportName("disk".into())).await;
    let mut reply = [0xffu8; 134];
    c.read_exact(&mut reply).await;
    assert!(reply[10..].iter().all(|&b| b == 0));
    still_works(&mut c, 1, 4096).await;

    // A client that did not set FIXED_NEWSTYLE may only send NBD_OPT_EXPORT_NAME.
    let mut c = RawClient::start(t.addr, 0).await;
    c.option(&ClientOption::ExportName("disk".into())).await;
    let mut reply = [0u8; 134];
    c.read_exact(&mut reply).await;
    still_works(&mut c, 1, 8192).await;
    let mut c = RawClient::start(t.addr, 0).await;
    c.option(&ClientOption::List).await;
    assert!(c.closed_within(SHORT).await);

    // Unknown client flags, and NBD_OPT_EXPORT_NAME of an unknown export, close the connection.
    let mut c = RawClient::start(t.addr, 0x8000_0001).await;
    assert!(c.closed_within(SHORT).await);
    let mut c = RawClient::start(t.addr, FIXED).await;
    c.option(&ClientOption::ExportName("nope".into())).await;
    assert!(c.closed_within(SHORT).await);
    let mut c = RawClient::start(t.addr, FIXED).await;
    c.raw_option(proto::OPT_EXPORT_NAME, &[0xff, 0xfe]).await;
    assert!(c.closed_within(SHORT).await);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_input_closes_only_that_connection() {
    let t = TestServer::start().await;
    t.add_file("disk", 4 << 20);
    let (mut healthy, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    still_works(&mut healthy, 100, 0).await;

    // Garbage instead of client flags and options.
    let mut c = RawClient::connect(t.addr).await;
    c.send(&[0xde; 300]).await;
    assert!(c.closed_within(SHORT).await);
    still_works(&mut healthy, 200, 4096).await;

    // A bad option magic.
    let mut c = RawClient::start(t.addr, FIXED).await;
    c.send(b"NOTMAGIC\0\0\0\x03\0\0\0\0").await;
    assert!(c.closed_within(SHORT).await);

    // A giant option length is refused without waiting for (or allocating) the data.
    let mut c = RawClient::start(t.addr, FIXED).await;
    let mut giant = Vec::from(proto::IHAVEOPT.to_be_bytes());
    giant.extend_from_slice(&proto::OPT_GO.to_be_bytes());
    giant.extend_from_slice(&u32::MAX.to_be_bytes());
    c.send(&giant).await;
    assert!(c.closed_within(SHORT).await);
    still_works(&mut healthy, 300, 8192).await;

    // A bad request magic in the transmission phase.
    let (mut c, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    c.send(&[0x55; proto::REQUEST_HEADER_LEN]).await;
    assert!(c.closed_within(SHORT).await);

    // A truncated request: half a header, then the client's side closes.
    let (mut c, _, _) = RawClient::go(t.addr, "disk", true, false).await;
    let mut header = bytes::BytesMut::new();
    proto::RequestHeader {
        flags: 0,
        kind: proto::CMD_READ,
        handle: 1,
        offset: 0,
        length: 512,
    }
    .encode(&mut header);
    c.send(&header[..13]).await;
    c.stream.shutdown().await.expect("shutdown");
    assert!(c.closed_within(SHORT).await);

    // A truncated write payload.
    let (mut c, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    c.request(proto::CMD_WRITE, 0, 9, 0, 4096, &[1; 100]).await;
    c.stream.shutdown().await.expect("shutdown");
    assert!(c.closed_within(SHORT).await);

    // A write larger than 32 MiB: EINVAL, then the connection closes (its payload cannot be
    // skipped); nothing of that size is allocated.
    let (mut c, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    c.request(proto::CMD_WRITE, 0, 77, 0, u32::MAX, &[]).await;
    assert_eq!(c.simple_reply(0).await, (proto::EINVAL, 77, vec![]));
    assert!(c.closed_within(SHORT).await);
    let (mut c, _, _) = RawClient::go(t.addr, "disk", true, false).await;
    c.request(proto::CMD_WRITE, 0, 78, 0, proto::MAX_PAYLOAD + 1, &[])
        .await;
    let chunk = c.chunk().await;
    assert_eq!(
        (chunk.handle, chunk.kind, chunk.error()),
        (78, proto::REPLY_TYPE_ERROR, Some(proto::EINVAL))
    );
    assert!(c.closed_within(SHORT).await);

    // Random garbage after a good handshake, in several shapes.
    for seed in 0..8u8 {
        let (mut c, _, _) = RawClient::go(t.addr, "disk", seed % 2 == 0, false).await;
        let junk: Vec<u8> = (0..997u32)
            .map(|i| (i as u8).wrapping_mul(31).wrapping_add(seed))
            .collect();
        c.send(&junk).await;
        let _ = c.stream.shutdown().await;
        assert!(c.closed_within(SHORT).await);
    }

    still_works(&mut healthy, 400, 12288).await;
    let (mut fresh, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    still_works(&mut fresh, 500, 16384).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_requests_get_spec_errors_and_the_connection_survives() {
    let t = TestServer::start().await;
    t.add_file("disk", 1 << 20);
    let (mut c, size, flags) = RawClient::go(t.addr, "disk", false, false).await;
    assert_eq!(size, 1 << 20);
    assert_eq!(
        flags & proto::FLAG_SEND_DF,
        0,
        "no DF without structured replies"
    );
    let cases: &[(u16, u16, u64, u32, u32)] = &[
        (99, 0, 0, 512, proto::EINVAL),                   // unknown command
        (proto::CMD_CACHE, 0, 0, 512, proto::EINVAL),     // not advertised
        (proto::CMD_READ, 1 << 9, 0, 512, proto::EINVAL), // unknown flag
        (proto::CMD_READ, proto::CMD_FLAG_DF, 0, 512, proto::EINVAL), // DF needs structured
        (proto::CMD_READ, 0, (1 << 20) - 100, 512, proto::EINVAL), // beyond the end
        (proto::CMD_READ, 0, u64::MAX - 10, 512, proto::EINVAL), // offset overflow
        (proto::CMD_READ, 0, 0, (32 << 20) + 1, proto::EINVAL), // over max block
        (proto::CMD_TRIM, 0, 1 << 20, 1, proto::EINVAL),  // beyond the end
        (proto::CMD_WRITE_ZEROES, 0, 1 << 20, 1, proto::ENOSPC), // beyond the end
        (
            proto::CMD_WRITE_ZEROES,
            proto::CMD_FLAG_FAST_ZERO,
            0,
            1,
            proto::EINVAL,
        ),
        (proto::CMD_FLUSH, 0, 512, 0, proto::EINVAL), // nonzero offset
        (proto::CMD_BLOCK_STATUS, 0, 0, 512, proto::EINVAL), // no meta context
    ];
    for (i, &(kind, flags, offset, length, errno)) in cases.iter().enumerate() {
        let handle = 1000 + i as u64;
        c.request(kind, flags, handle, offset, length, &[]).await;
        assert_eq!(c.simple_reply(0).await, (errno, handle, vec![]), "case {i}");
    }
    // A write beyond the end still carries its payload, which the server must consume.
    c.request(proto::CMD_WRITE, 0, 2000, (1 << 20) - 512, 1024, &[7; 1024])
        .await;
    assert_eq!(c.simple_reply(0).await, (proto::ENOSPC, 2000, vec![]));
    // Zero-length requests succeed without data.
    c.request(proto::CMD_READ, 0, 2001, 0, 0, &[]).await;
    assert_eq!(c.simple_reply(0).await, (0, 2001, vec![]));
    c.request(proto::CMD_WRITE, 0, 2002, 0, 0, &[]).await;
    assert_eq!(c.simple_reply(0).await, (0, 2002, vec![]));
    c.request(proto::CMD_TRIM, proto::CMD_FLAG_FUA, 2003, 0, 0, &[])
        .await;
    assert_eq!(c.simple_reply(0).await, (0, 2003, vec![]));
    c.request(proto::CMD_FLUSH, 0, 2004, 0, 0, &[]).await;
    assert_eq!(c.simple_reply(0).await, (0, 2004, vec![]));
    still_works(&mut c, 3000, 0).await;

    // Alignment to the advertised minimum block size.
    let mut probe = Probe::new(FileDevice::create(t.path("aligned"), 1 << 20).expect("create"));
    probe.min_block = 512;
    t.add("aligned", probe);
    let (mut a, _, _) = RawClient::go(t.addr, "aligned", false, false).await;
    a.request(proto::CMD_READ, 0, 1, 100, 512, &[]).await;
    assert_eq!(a.simple_reply(0).await, (proto::EINVAL, 1, vec![]));
    a.request(proto::CMD_WRITE, 0, 2, 0, 100, &[1; 100]).await;
    assert_eq!(a.simple_reply(0).await, (proto::EINVAL, 2, vec![]));
    still_works(&mut a, 3, 512).await;

    // A read-only export: writes, trims and zeroes are EPERM.
    let path = t.path("ro");
    std::fs::write(&path, vec![3u8; 1 << 20]).expect("write file");
    t.add(
        "ro",
        Probe::new(FileDevice::open(&path, true).expect("open")),
    );
    let (mut r, _, flags) = RawClient::go(t.addr, "ro", false, false).await;
    assert_ne!(flags & proto::FLAG_READ_ONLY, 0);
    assert_eq!(
        flags & (proto::FLAG_SEND_TRIM | proto::FLAG_SEND_WRITE_ZEROES),
        0
    );
    r.request(proto::CMD_WRITE, 0, 1, 0, 4096, &[1; 4096]).await;
    assert_eq!(r.simple_reply(0).await, (proto::EPERM, 1, vec![]));
    r.request(proto::CMD_TRIM, 0, 2, 0, 4096, &[]).await;
    assert_eq!(r.simple_reply(0).await, (proto::EPERM, 2, vec![]));
    r.request(proto::CMD_WRITE_ZEROES, 0, 3, 0, 4096, &[]).await;
    assert_eq!(r.simple_reply(0).await, (proto::EPERM, 3, vec![]));
    r.request(proto::CMD_READ, 0, 4, 0, 4096, &[]).await;
    assert_eq!(r.simple_reply(4096).await, (0, 4, vec![3; 4096]));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn structured_replies_for_reads_errors_and_block_status() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 8 << 20);
    let (mut c, _, flags) = RawClient::go(t.addr, "disk", true, true).await;
    assert_ne!(flags & proto::FLAG_SEND_DF, 0);
    let data = vec![0x5au8; 65536];
    c.request(
        proto::CMD_WRITE,
        proto::CMD_FLAG_FUA,
        1,
        1 << 20,
        65536,
        &data,
    )
    .await;
    assert_eq!(c.any_reply().await.ok(), Some((0, 1)));

    // Data: one OFFSET_DATA chunk, final.
    c.request(proto::CMD_READ, proto::CMD_FLAG_DF, 2, 1 << 20, 65536, &[])
        .await;
    let chunk = c.chunk().await;
    assert_eq!(
        (chunk.flags, chunk.kind, chunk.handle),
        (proto::REPLY_FLAG_DONE, proto::REPLY_TYPE_OFFSET_DATA, 2)
    );
    assert_eq!(&chunk.payload[..8], &(1u64 << 20).to_be_bytes());
    assert_eq!(&chunk.payload[8..], &data[..]);

    // Zeroes: one OFFSET_HOLE chunk.
    c.request(proto::CMD_READ, 0, 3, 0, 65536, &[]).await;
    let chunk = c.chunk().await;
    assert_eq!(
        (chunk.flags, chunk.kind),
        (proto::REPLY_FLAG_DONE, proto::REPLY_TYPE_OFFSET_HOLE)
    );
    assert_eq!(
        chunk.payload,
        [&0u64.to_be_bytes()[..], &65536u32.to_be_bytes()[..]].concat()
    );

    // Zero length: NBD_REPLY_TYPE_NONE.
    c.request(proto::CMD_READ, 0, 4, 0, 0, &[]).await;
    let chunk = c.chunk().await;
    assert_eq!(
        (chunk.flags, chunk.kind, chunk.payload.len()),
        (proto::REPLY_FLAG_DONE, proto::REPLY_TYPE_NONE, 0)
    );

    // A refused read and a failed read are error chunks, never simple replies.
    c.request(proto::CMD_READ, 0, 5, 8 << 20, 512, &[]).await;
    let chunk = c.chunk().await;
    assert_eq!(
        (chunk.kind, chunk.error()),
        (proto::REPLY_TYPE_ERROR, Some(proto::EINVAL))
    );
    let msg_len = u16::from_be_bytes([chunk.payload[4], chunk.payload[5]]) as usize;
    assert!(std::str::from_utf8(&chunk.payload[6..6 + msg_len])
        .expect("utf8")
        .contains("beyond the end"));
    probe.fail_reads.store(true, Ordering::Relaxed);
    c.request(proto::CMD_READ, 0, 6, 0, 512, &[]).await;
    let chunk = c.chunk().await;
    assert_eq!(
        (chunk.flags, chunk.kind, chunk.error()),
        (
            proto::REPLY_FLAG_DONE,
            proto::REPLY_TYPE_ERROR,
            Some(proto::EIO)
        )
    );
    probe.fail_reads.store(false, Ordering::Relaxed);

    // A short read from the device: the data that exists, then an error at the first gap.
    probe.short_reads.store(true, Ordering::Relaxed);
    c.request(proto::CMD_READ, 0, 7, 1 << 20, 4096, &[]).await;
    let first = c.chunk().await;
    assert_eq!(
        (first.flags, first.kind, first.payload.len()),
        (0, proto::REPLY_TYPE_OFFSET_DATA, 8 + 2048)
    );
    let second = c.chunk().await;
    assert_eq!(
        (second.flags, second.kind, second.error()),
        (
            proto::REPLY_FLAG_DONE,
            proto::REPLY_TYPE_ERROR_OFFSET,
            Some(proto::EIO)
        )
    );
    assert_eq!(
        &second.payload[second.payload.len() - 8..],
        &((1u64 << 20) + 2048).to_be_bytes()
    );
    probe.short_reads.store(false, Ordering::Relaxed);

    // Block status: context id, consecutive descriptors covering the request.
    c.request(proto::CMD_BLOCK_STATUS, 0, 8, 0, 4 << 20, &[])
        .await;
    let chunk = c.chunk().await;
    assert_eq!(
        (chunk.flags, chunk.kind, chunk.handle),
        (proto::REPLY_FLAG_DONE, proto::REPLY_TYPE_BLOCK_STATUS, 8)
    );
    assert_eq!(
        &chunk.payload[..4],
        &proto::BASE_ALLOCATION_ID.to_be_bytes()
    );
    let descriptors: Vec<(u32, u32)> = chunk.payload[4..]
        .chunks(8)
        .map(|d| {
            (
                u32::from_be_bytes(d[..4].try_into().unwrap_or_default()),
                u32::from_be_bytes(d[4..].try_into().unwrap_or_default()),
            )
        })
        .collect();
    assert_eq!(
        descriptors,
        vec![(1 << 20, 3), (65536, 0), ((3 << 20) - 65536, 3)]
    );
    c.request(
        proto::CMD_BLOCK_STATUS,
        proto::CMD_FLAG_REQ_ONE,
        9,
        0,
        4 << 20,
        &[],
    )
    .await;
    let chunk = c.chunk().await;
    assert_eq!(chunk.payload.len(), 12, "REQ_ONE: exactly one descriptor");
    c.request(proto::CMD_BLOCK_STATUS, 0, 10, 8 << 20, 512, &[])
        .await;
    assert_eq!(c.chunk().await.error(), Some(proto::EINVAL));

    // Trim, then block status shows the hole; write zeroes with NO_HOLE keeps it allocated.
    c.request(proto::CMD_TRIM, 0, 11, 1 << 20, 65536, &[]).await;
    assert_eq!(c.any_reply().await.ok(), Some((0, 11)));
    c.request(
        proto::CMD_WRITE_ZEROES,
        proto::CMD_FLAG_NO_HOLE,
        12,
        2 << 20,
        65536,
        &[],
    )
    .await;
    assert_eq!(c.any_reply().await.ok(), Some((0, 12)));
    c.request(proto::CMD_BLOCK_STATUS, 0, 13, 1 << 20, 2 << 20, &[])
        .await;
    let chunk = c.chunk().await;
    // The trimmed range is a hole (the file system may report the zeroed one as a hole too).
    let first_len = u32::from_be_bytes(chunk.payload[4..8].try_into().unwrap_or_default());
    let first_status = u32::from_be_bytes(chunk.payload[8..12].try_into().unwrap_or_default());
    assert!(
        first_len >= 65536 && first_status == 3,
        "{:?}",
        chunk.payload
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pipelined_requests_are_all_answered_and_disc_drains_them() {
    let t = TestServer::start().await;
    t.add_file("disk", 16 << 20);
    let (mut c, _, _) = RawClient::go(t.addr, "disk", true, false).await;
    // 400 writes then 400 reads of the same blocks, sent before reading any reply: more than
    // the in-flight limit, so the server must stop reading and resume.
    let n = 400u64;
    let mut batch = Vec::new();
    for i in 0..n {
        let mut h = bytes::BytesMut::new();
        proto::RequestHeader {
            flags: 0,
            kind: proto::CMD_WRITE,
            handle: i,
            offset: i * 4096,
            length: 4096,
        }
        .encode(&mut h);
        batch.extend_from_slice(&h);
        batch.extend(std::iter::repeat_n(i as u8 | 1, 4096));
    }
    // Write replies are 16 bytes each, so sending everything before reading cannot deadlock.
    c.send(&batch).await;
    let mut answered = std::collections::HashSet::new();
    for _ in 0..n {
        let (error, handle) = c.any_reply().await.expect("simple reply for a write");
        assert_eq!(error, 0);
        assert!(answered.insert(handle), "handle {handle} answered twice");
    }
    let mut reads = Vec::new();
    for i in 0..n {
        let mut h = bytes::BytesMut::new();
        proto::RequestHeader {
            flags: 0,
            kind: proto::CMD_READ,
            handle: 10_000 + i,
            offset: i * 4096,
            length: 4096,
        }
        .encode(&mut h);
        reads.extend_from_slice(&h);
    }
    // A disconnect right behind the reads: every read must still be answered.
    let mut h = bytes::BytesMut::new();
    proto::RequestHeader {
        flags: 0,
        kind: proto::CMD_DISC,
        handle: 0,
        offset: 0,
        length: 0,
    }
    .encode(&mut h);
    reads.extend_from_slice(&h);
    c.send(&reads).await;
    let mut seen = std::collections::HashSet::new();
    for _ in 0..n {
        let chunk = c.chunk().await;
        let i = chunk.handle - 10_000;
        assert!(seen.insert(i));
        assert_eq!(chunk.kind, proto::REPLY_TYPE_OFFSET_DATA);
        assert!(
            chunk.payload[8..].iter().all(|&b| b == i as u8 | 1),
            "data of block {i}"
        );
    }
    assert!(c.closed_within(SHORT).await);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn writes_on_one_connection_are_seen_and_flushed_from_another() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 1 << 20);
    let (mut a, _, flags) = RawClient::go(t.addr, "disk", false, false).await;
    assert_ne!(flags & proto::FLAG_CAN_MULTI_CONN, 0);
    let (mut b, _, _) = RawClient::go(t.addr, "disk", true, false).await;
    a.request(proto::CMD_WRITE, 0, 1, 8192, 4096, &[0xee; 4096])
        .await;
    assert_eq!(a.simple_reply(0).await.0, 0);
    b.request(proto::CMD_FLUSH, 0, 2, 0, 0, &[]).await;
    assert_eq!(b.any_reply().await.ok(), Some((0, 2)));
    assert_eq!(probe.flushes.load(Ordering::Relaxed), 1);
    b.request(proto::CMD_READ, 0, 3, 8192, 4096, &[]).await;
    let chunk = b.chunk().await;
    assert!(chunk.payload[8..].iter().all(|&x| x == 0xee));
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stalled_handshake_and_stalled_payload_are_dropped() {
    let config = ServerConfig {
        handshake_timeout: Duration::from_millis(1000),
        payload_timeout: Duration::from_millis(1000),
        ..ServerConfig::default()
    };
    let t = TestServer::start_with(config).await;
    t.add_file("disk", 1 << 20);
    let (mut healthy, _, _) = RawClient::go(t.addr, "disk", false, false).await;

    // Connected, silent.
    let mut silent = RawClient::connect(t.addr).await;
    // Half an option, then silence.
    let mut half = RawClient::start(t.addr, FIXED).await;
    half.send(&proto::IHAVEOPT.to_be_bytes()).await;
    // A write whose payload never completes.
    let (mut stalled, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    stalled
        .request(proto::CMD_WRITE, 0, 1, 0, 65536, &[1; 1000])
        .await;

    still_works(&mut healthy, 10, 0).await;
    assert!(silent.closed_within(SHORT).await);
    assert!(half.closed_within(SHORT).await);
    assert!(stalled.closed_within(SHORT).await);
    still_works(&mut healthy, 20, 4096).await;
    t.shutdown().await;
}

/// A raw connection to `server` from the loopback address `from` (each its own peer).
async fn connect_from(from: &str, server: std::net::SocketAddr) -> RawClient {
    let socket = tokio::net::TcpSocket::new_v4().expect("socket");
    let local: std::net::IpAddr = from.parse().expect("an address");
    socket.bind((local, 0).into()).expect("bind");
    RawClient {
        stream: socket.connect(server).await.expect("connect"),
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_are_bounded_per_peer_address_and_in_all() {
    let config = ServerConfig {
        connections_per_peer: 2,
        connections_max: 3,
        ..ServerConfig::default()
    };
    let t = TestServer::start_with(config).await;
    t.add_file("disk", 1 << 20);
    let (mut serving, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    // A second one from the same address sits in its handshake.
    let handshaking = RawClient::start(t.addr, FIXED).await;
    let mut third = connect_from("127.0.0.1", t.addr).await;
    assert!(
        third.closed_within(SHORT).await,
        "a third connection from one address is closed at once"
    );
    // Another address has its own share...
    let mut other = connect_from("127.0.0.2", t.addr).await;
    let mut greeting = [0u8; proto::GREETING_LEN];
    other.read_exact(&mut greeting).await;
    assert_eq!(&greeting[..8], b"NBDMAGIC");
    // ... within the server's bound.
    let mut beyond = connect_from("127.0.0.3", t.addr).await;
    assert!(
        beyond.closed_within(SHORT).await,
        "a connection beyond the server's bound is closed at once"
    );
    still_works(&mut serving, 1, 0).await;
    // A closed connection gives its slot back.
    drop(handshaking);
    wait_until("the handshaking connection to close", || {
        t.server.open_connections() == 2
    })
    .await;
    let (mut again, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    still_works(&mut again, 2, 4096).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_stops_reading_replies_is_dropped() {
    let config = ServerConfig {
        reply_timeout: Duration::from_millis(1000),
        ..ServerConfig::default()
    };
    let t = TestServer::start_with(config).await;
    let probe = t.add_file("disk", 32 << 20);
    let (mut greedy, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    // 16 reads of 32 MiB = 512 MiB of replies that the client never reads.
    for i in 0..16 {
        greedy
            .request(proto::CMD_READ, 0, i, 0, 32 << 20, &[])
            .await;
    }
    let (mut healthy, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    wait_until("the server to start on the big reads", || {
        probe.reads.load(Ordering::Relaxed) >= 1
    })
    .await;
    still_works(&mut healthy, 1, 4096).await;
    // The greedy client reads nothing until the server has given up on it.
    wait_until("the greedy connection to be dropped", || {
        t.server.open_connections() == 1
    })
    .await;
    let mut total = 0usize;
    let mut buf = vec![0u8; 1 << 20];
    loop {
        use tokio::io::AsyncReadExt;
        match tokio::time::timeout(DEADLINE, greedy.stream.read(&mut buf))
            .await
            .expect("EOF in time")
        {
            Ok(0) | Err(_) => break,
            Ok(n) => total += n,
        }
    }
    assert!(
        total < 16 * (32 << 20),
        "the server sent all {total} bytes instead of giving up"
    );
    still_works(&mut healthy, 3, 8192).await;
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn removing_an_export_closes_its_connections_only() {
    let t = TestServer::start().await;
    t.add_file("a", 1 << 20);
    t.add_file("b", 1 << 20);
    let (mut on_a, _, _) = RawClient::go(t.addr, "a", false, false).await;
    let (mut on_b, _, _) = RawClient::go(t.addr, "b", false, false).await;
    still_works(&mut on_a, 1, 0).await;
    assert!(t.server.remove_export("a").is_some());
    assert!(t.server.remove_export("a").is_none());
    assert!(on_a.closed_within(SHORT).await);
    still_works(&mut on_b, 1, 0).await;
    let mut c = RawClient::start(t.addr, FIXED).await;
    c.option(&ClientOption::Go(InfoRequest {
        name: "a".into(),
        requests: vec![],
    }))
    .await;
    assert_eq!(c.option_reply().await.1, proto::REP_ERR_UNKNOWN);
    // Added again, it is served again.
    t.add_file("a", 1 << 20);
    let (mut again, _, _) = RawClient::go(t.addr, "a", false, false).await;
    still_works(&mut again, 1, 0).await;
    assert_eq!(
        t.server.export_names(),
        vec!["a".to_string(), "b".to_string()]
    );
    assert!(t
        .server
        .add_export("b", t.server.export("a").expect("a"))
        .is_err());
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_closes_connections_and_serve_returns() {
    let t = TestServer::start().await;
    t.add_file("disk", 1 << 20);
    let (mut c, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    still_works(&mut c, 1, 0).await;
    let mut idle = RawClient::start(t.addr, FIXED).await;
    let addr = t.addr;
    t.shutdown().await;
    assert!(c.closed_within(SHORT).await);
    assert!(idle.closed_within(SHORT).await);
    assert!(
        tokio::net::TcpStream::connect(addr).await.is_err(),
        "listener closed"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_run_concurrently_and_replies_come_out_of_order() {
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 1 << 20);
    probe.hold_reads_at.store(0, Ordering::SeqCst);
    let (mut c, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    // The first read waits inside the device until the second one has been answered: a server
    // that processed requests one at a time, or replied in order, would hang here.
    c.request(proto::CMD_READ, 0, 1, 0, 4096, &[]).await;
    c.request(proto::CMD_READ, 0, 2, 4096, 4096, &[]).await;
    assert_eq!(c.simple_reply(4096).await.1, 2);
    probe.release.notify_one();
    assert_eq!(c.simple_reply(4096).await.1, 1);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_in_flight_are_bounded_per_connection() {
    let config = ServerConfig {
        max_in_flight_requests: 4,
        ..ServerConfig::default()
    };
    let t = TestServer::start_with(config).await;
    let probe = t.add_file("disk", 1 << 20);
    probe.hold_reads_at.store(0, Ordering::SeqCst);
    let (mut c, _, _) = RawClient::go(t.addr, "disk", false, false).await;
    for handle in 0..12 {
        c.request(proto::CMD_READ, 0, handle, 0, 4096, &[]).await;
    }
    wait_until("four reads in the device", || {
        probe.reads_in_flight.load(Ordering::SeqCst) == 4
    })
    .await;
    // Release them one by one; each release lets exactly one more request in.
    let mut answered = std::collections::HashSet::new();
    for _ in 0..12 {
        probe.release.notify_one();
        assert!(answered.insert(c.simple_reply(4096).await.1));
    }
    assert_eq!(probe.max_reads_in_flight.load(Ordering::SeqCst), 4);
    assert_eq!(probe.reads.load(Ordering::SeqCst), 12);
    t.shutdown().await;
}
