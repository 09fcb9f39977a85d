//! Real NBD clients (nbdinfo, qemu-io, qemu-img, nbdcopy, fio) against a [`tandem_nbd::Server`]
//! with file-backed exports on 127.0.0.1.

mod common;

use std::io::Read;
use std::path::Path;
use std::sync::atomic::Ordering;

use common::*;
use serde_json::Value;

/// Compares two files chunk by chunk; panics at the first difference.
fn assert_same_file(a: &Path, b: &Path) {
    let mut fa = std::fs::File::open(a).expect("open a");
    let mut fb = std::fs::File::open(b).expect("open b");
    assert_eq!(
        fa.metadata().expect("meta").len(),
        fb.metadata().expect("meta").len(),
        "sizes differ"
    );
    let mut ba = vec![0u8; 1 << 20];
    let mut bb = vec![0u8; 1 << 20];
    let mut offset = 0u64;
    loop {
        let n = fa.read(&mut ba).expect("read a");
        if n == 0 {
            break;
        }
        fb.read_exact(&mut bb[..n]).expect("read b");
        if ba[..n] != bb[..n] {
            let i = (0..n).find(|&i| ba[i] != bb[i]).unwrap_or(0);
            panic!(
                "{} and {} differ at byte {}",
                a.display(),
                b.display(),
                offset + i as u64
            );
        }
        offset += n as u64;
    }
}

fn export_json<'a>(json: &'a Value, name: &str) -> &'a Value {
    json["exports"]
        .as_array()
        .expect("exports array")
        .iter()
        .find(|e| e["export-name"] == name)
        .unwrap_or_else(|| panic!("export {name} in {json}"))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_reports_size_flags_block_sizes_and_contexts() {
    if !ensure_tool("nbdinfo", "libnbd-bin") {
        return;
    }
    let t = TestServer::start().await;
    t.add_file("disk", 64 << 20);
    let out = run_ok("nbdinfo", &["--json", &t.uri("disk")]).await;
    let json: Value = serde_json::from_str(&out).expect("nbdinfo JSON");
    let e = export_json(&json, "disk");
    assert_eq!(json["protocol"], "newstyle-fixed", "{json}");
    assert_eq!(e["export-size"], 64 << 20);
    assert_eq!(e["description"], "test disk disk");
    assert_eq!(e["is_read_only"], false);
    for flag in [
        "can_flush",
        "can_fua",
        "can_trim",
        "can_zero",
        "can_multi_conn",
        "can_df",
    ] {
        assert_eq!(e[flag], true, "{flag} in {e}");
    }
    assert_eq!(e["can_cache"], false);
    assert_eq!(e["can_fast_zero"], false);
    assert_eq!(e["block_size_minimum"], 1);
    assert_eq!(e["block_size_preferred"], 4096);
    assert_eq!(e["block_size_maximum"], 32 << 20);
    let contexts = e["contexts"].as_array().expect("contexts");
    assert!(contexts.iter().any(|c| c == "base:allocation"), "{e}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_list_shows_every_export_and_multi_conn_follows_the_device() {
    if !ensure_tool("nbdinfo", "libnbd-bin") {
        return;
    }
    let t = TestServer::start().await;
    t.add_file("alpha", 1 << 20);
    let file = tandem_block::FileDevice::create(t.path("beta"), 2 << 20).expect("create");
    let mut probe = Probe::new(file.with_description("second"));
    probe.multi_conn = false;
    t.add("beta", probe);

    let out = run_ok(
        "nbdinfo",
        &["--list", "--json", &format!("nbd://{}", t.addr)],
    )
    .await;
    let json: Value = serde_json::from_str(&out).expect("nbdinfo JSON");
    assert_eq!(
        json["exports"].as_array().expect("exports").len(),
        2,
        "{json}"
    );
    assert_eq!(export_json(&json, "alpha")["export-size"], 1 << 20);
    let beta = export_json(&json, "beta");
    assert_eq!(beta["export-size"], 2 << 20);
    assert_eq!(beta["description"], "second");
    assert_eq!(beta["can_multi_conn"], false);
    assert_eq!(export_json(&json, "alpha")["can_multi_conn"], true);

    // An unknown export is refused with an error, not a hang.
    let out = run("nbdinfo", &[&t.uri("nope")]).await;
    assert!(!out.status.success());
    let msg = text(&out);
    // libnbd reports NBD_REP_ERR_UNKNOWN as ENOENT.
    assert!(
        msg.contains("No such file or directory") && msg.contains("nope"),
        "{msg}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdinfo_map_shows_holes_and_data() {
    if !ensure_tool("nbdinfo", "libnbd-bin") {
        return;
    }
    let t = TestServer::start().await;
    let path = t.path("map");
    sparse_pattern_file(&path, 16 << 20, &[(4 << 20, 1 << 20, 1)]);
    t.add(
        "map",
        Probe::new(tandem_block::FileDevice::open(&path, false).expect("open")),
    );
    let out = run_ok("nbdinfo", &["--map", &t.uri("map")]).await;
    // Lines: offset length type description.
    let rows: Vec<(u64, u64, u32)> = out
        .lines()
        .map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            (
                f[0].parse().expect("offset"),
                f[1].parse().expect("length"),
                f[2].parse().expect("type"),
            )
        })
        .collect();
    assert_eq!(
        rows,
        vec![
            (0, 4 << 20, 3),
            (4 << 20, 1 << 20, 0),
            (5 << 20, 11 << 20, 3)
        ],
        "{out}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_patterns_verify_and_mismatches_fail() {
    if !ensure_tool("qemu-io", "qemu-utils") {
        return;
    }
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 8 << 20);
    let uri = t.uri("disk");
    let out = run_ok(
        "qemu-io",
        &[
            "-f",
            "raw",
            "-c",
            "write -P 0xab 0 1M",
            "-c",
            "write -f -P 0xcd 1M 64k", // FUA
            "-c",
            "flush",
            "-c",
            "read -P 0xab 0 1M",
            "-c",
            "read -P 0xcd 1M 64k",
            "-c",
            "write -z 2M 512k", // write zeroes
            "-c",
            "read -P 0 2M 512k",
            "-c",
            "discard 0 64k",
            "-c",
            "write -P 0x11 7M 1M",
            "-c",
            "aio_write -P 0x22 3M 256k",
            "-c",
            "aio_write -P 0x33 4M 256k",
            "-c",
            "aio_flush",
            "-c",
            "read -P 0x22 3M 256k",
            "-c",
            "read -P 0x33 4M 256k",
            &uri,
        ],
    )
    .await;
    assert!(!out.contains("failed"), "{out}");
    assert!(
        out.contains("wrote 1048576/1048576 bytes at offset 0"),
        "{out}"
    );
    assert!(
        out.contains("read 1048576/1048576 bytes at offset 0"),
        "{out}"
    );
    assert!(probe.flushes.load(Ordering::Relaxed) >= 1);

    // A wrong pattern must be reported (qemu-io may still exit 0, so read its output).
    let out = run("qemu-io", &["-f", "raw", "-c", "read -P 0x99 7M 1M", &uri]).await;
    let msg = text(&out);
    assert!(msg.contains("Pattern verification failed"), "{msg}");

    // The bytes really are in the file.
    let data = std::fs::read(t.path("disk")).expect("read file");
    assert!(data[64 * 1024..1 << 20].iter().all(|&b| b == 0xab));
    assert!(data[7 << 20..8 << 20].iter().all(|&b| b == 0x11));

    // Device errors reach the client as EIO.
    probe.fail_reads.store(true, Ordering::Relaxed);
    let out = run("qemu-io", &["-f", "raw", "-c", "read 0 4k", &uri]).await;
    let msg = text(&out);
    assert!(msg.contains("Input/output error"), "{msg}");
    probe.fail_reads.store(false, Ordering::Relaxed);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_io_read_only_export_refuses_writes() {
    if !ensure_tool("qemu-io", "qemu-utils") {
        return;
    }
    let t = TestServer::start().await;
    let path = t.path("ro");
    sparse_pattern_file(&path, 1 << 20, &[(0, 4096, 7)]);
    t.add(
        "ro",
        Probe::new(tandem_block::FileDevice::open(&path, true).expect("open")),
    );
    let uri = t.uri("ro");
    let out = run("qemu-io", &["-f", "raw", "-r", "-c", "read 0 4k", &uri]).await;
    assert!(text(&out).contains("read 4096/4096"), "{}", text(&out));
    // qemu refuses to open a read-only export for writing at all.
    let out = run("qemu-io", &["-f", "raw", "-c", "write -P 1 0 4k", &uri]).await;
    let msg = text(&out);
    assert!(!msg.contains("wrote 4096/4096"), "{msg}");
    assert!(msg.contains("Permission denied"), "{msg}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn qemu_img_convert_round_trip_is_byte_exact() {
    if !ensure_tool("qemu-img", "qemu-utils") {
        return;
    }
    let t = TestServer::start().await;
    let size = 32u64 << 20;
    t.add_file("disk", size);
    let src = t.dir.path().join("src.raw");
    sparse_pattern_file(
        &src,
        size,
        &[
            (0, 4096, 1),
            (5 << 20, 3 << 20, 2),
            ((32 << 20) - 12345, 12345, 3),
        ],
    );
    let src_s = src.to_str().expect("utf8");
    let uri = t.uri("disk");
    run_ok(
        "qemu-img",
        &["convert", "-n", "-f", "raw", "-O", "raw", src_s, &uri],
    )
    .await;
    let back = t.dir.path().join("back.raw");
    let back_s = back.to_str().expect("utf8");
    run_ok(
        "qemu-img",
        &["convert", "-f", "raw", "-O", "raw", &uri, back_s],
    )
    .await;
    assert_same_file(&src, &back);
    assert_same_file(&src, &t.path("disk"));
    let out = run_ok(
        "qemu-img",
        &["compare", "-f", "raw", "-F", "raw", src_s, &uri],
    )
    .await;
    assert!(out.contains("Images are identical"), "{out}");
    // qemu-img map reads base:allocation: the export is not one big data extent.
    let out = run_ok("qemu-img", &["map", "--output=json", "-f", "raw", &uri]).await;
    let map: Value = serde_json::from_str(&out).expect("map JSON");
    let zero_parts = map
        .as_array()
        .expect("array")
        .iter()
        .filter(|m| m["zero"] == true)
        .count();
    assert!(zero_parts >= 1, "{out}");
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_round_trip_is_byte_exact() {
    if !ensure_tool("nbdcopy", "libnbd-bin") {
        return;
    }
    let t = TestServer::start().await;
    let size = 48u64 << 20;
    t.add_file("disk", size);
    let src = t.dir.path().join("src.raw");
    sparse_pattern_file(
        &src,
        size,
        &[
            (1 << 20, 7 << 20, 9),
            (30 << 20, 4096, 10),
            ((48 << 20) - 512, 512, 11),
        ],
    );
    let uri = t.uri("disk");
    run_ok("nbdcopy", &["--flush", src.to_str().expect("utf8"), &uri]).await;
    assert_same_file(&src, &t.path("disk"));
    let back = t.dir.path().join("back.raw");
    std::fs::File::create(&back)
        .expect("create")
        .set_len(size)
        .expect("set_len");
    run_ok("nbdcopy", &[&uri, back.to_str().expect("utf8")]).await;
    assert_same_file(&src, &back);
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn nbdcopy_skips_holes_using_block_status() {
    if !ensure_tool("nbdcopy", "libnbd-bin") {
        return;
    }
    let t = TestServer::start().await;
    let size = 256u64 << 20;
    let path = t.path("sparse");
    let data_bytes = 3u64 << 20;
    sparse_pattern_file(
        &path,
        size,
        &[
            (0, 1 << 20, 1),
            (100 << 20, 1 << 20, 2),
            ((256 << 20) - (1 << 20), 1 << 20, 3),
        ],
    );
    let probe = t.add(
        "sparse",
        Probe::new(tandem_block::FileDevice::open(&path, true).expect("open")),
    );
    let out = t.dir.path().join("copy.raw");
    std::fs::File::create(&out)
        .expect("create")
        .set_len(size)
        .expect("set_len");
    run_ok("nbdcopy", &[&t.uri("sparse"), out.to_str().expect("utf8")]).await;
    assert_same_file(&path, &out);
    let read = probe.bytes_read.load(Ordering::Relaxed);
    assert!(
        probe.block_status_calls.load(Ordering::Relaxed) > 0,
        "nbdcopy never asked for block status"
    );
    assert!(
        read <= data_bytes + (8 << 20),
        "nbdcopy read {read} bytes of a {size}-byte export holding {data_bytes}"
    );
    t.shutdown().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fio_verifies_crc32c_over_two_connections() {
    if !ensure_tool("fio", "fio") {
        return;
    }
    let t = TestServer::start().await;
    let probe = t.add_file("disk", 64 << 20);
    let uri = t.uri("disk");
    let report = t.dir.path().join("fio.json");
    let out = run(
        "fio",
        &[
            "--name=verify",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randwrite",
            "--bs=4k",
            "--iodepth=16",
            "--numjobs=2",
            "--size=16m",
            "--offset_increment=32m",
            "--verify=crc32c",
            "--do_verify=1",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--runtime=30",
            "--fsync=64",
            "--output-format=json",
            &format!("--output={}", report.display()),
        ],
    )
    .await;
    assert!(out.status.success(), "fio failed: {}", text(&out));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("fio JSON");
    let jobs = json["jobs"].as_array().expect("jobs");
    assert_eq!(jobs.len(), 2);
    for job in jobs {
        assert_eq!(job["error"], 0, "{job}");
        assert!(
            job["write"]["io_bytes"].as_u64().expect("io_bytes") >= 16 << 20,
            "{job}"
        );
        assert!(
            job["read"]["io_bytes"].as_u64().expect("io_bytes") >= 16 << 20,
            "verify reads: {job}"
        );
    }
    assert!(
        probe.flushes.load(Ordering::Relaxed) > 0,
        "fio --fsync sends flushes"
    );

    // A mixed workload for a few seconds with verification as it goes.
    let out = run(
        "fio",
        &[
            "--name=mixed",
            "--ioengine=nbd",
            &format!("--uri={uri}"),
            "--rw=randrw",
            "--bsrange=512-256k",
            "--iodepth=32",
            "--size=32m",
            "--verify=crc32c",
            "--verify_fatal=1",
            "--verify_state_save=0",
            "--runtime=3",
            "--time_based",
            "--output-format=json",
            &format!("--output={}", report.display()),
        ],
    )
    .await;
    assert!(out.status.success(), "fio failed: {}", text(&out));
    let json: Value =
        serde_json::from_str(&std::fs::read_to_string(&report).expect("report")).expect("fio JSON");
    assert_eq!(json["jobs"][0]["error"], 0, "{json}");
    t.shutdown().await;
}
