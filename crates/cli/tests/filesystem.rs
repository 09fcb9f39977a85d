//! A file system on a volume through clients that ignore block sizes: nbdfuse shows the volume
//! as a file (its requests follow the kernel's page cache and FUSE, not the export's block
//! constraints; fallocate's zero range arrives as one request longer than the export's maximum),
//! mkfs.ext4 formats it, fuse2fs mounts it, files are written while a replica
//! moves, and e2fsck finds the file system clean; then the files read back. Skipped, with a
//! line saying so, where FUSE or the tools are missing (CI installs them).

mod common;

use std::io::{Read, Seek, SeekFrom, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use common::*;

const TOOLS: [&str; 6] = [
    "nbdfuse",
    "nbdkit",
    "fuse2fs",
    "mkfs.ext4",
    "e2fsck",
    "fusermount3",
];

fn usable() -> bool {
    let missing: Vec<&str> = TOOLS
        .into_iter()
        .filter(|tool| {
            Command::new("sh")
                .args(["-c", &format!("command -v {tool}")])
                .stdout(Stdio::null())
                .status()
                .map_or(true, |status| !status.success())
        })
        .collect();
    if !missing.is_empty() {
        eprintln!("skipped: {} not installed", missing.join(", "));
        return false;
    }
    if !Path::new("/dev/fuse").exists() {
        eprintln!("skipped: /dev/fuse is missing");
        return false;
    }
    true
}

fn mounted(point: &Path) -> bool {
    let mounts = std::fs::read_to_string("/proc/self/mounts").unwrap_or_default();
    let point = point.to_string_lossy();
    mounts
        .lines()
        .any(|line| line.split_whitespace().nth(1) == Some(&*point))
}

/// A FUSE file system served by a child process, unmounted (and the child reaped) when dropped.
struct Mount {
    point: PathBuf,
    child: Child,
}

impl Mount {
    /// Starts `command` (which mounts `point` and stays in the foreground) and waits until the
    /// mount is there.
    fn start(mut command: Command, point: &Path) -> Mount {
        let child = command
            .stdout(Stdio::null())
            .spawn()
            .expect("start the FUSE server");
        let mut mount = Mount {
            point: point.to_path_buf(),
            child,
        };
        let deadline = Instant::now() + Duration::from_secs(30);
        while !mounted(point) {
            if let Ok(Some(status)) = mount.child.try_wait() {
                panic!("{command:?} exited with {status} before mounting");
            }
            assert!(
                Instant::now() < deadline,
                "{} was not mounted",
                point.display()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
        mount
    }

    /// Unmounts and waits for the server to exit with success.
    fn stop(mut self) {
        run("fusermount3", &["-u", &self.point.to_string_lossy()]);
        let deadline = Instant::now() + Duration::from_secs(30);
        let status = loop {
            if let Some(status) = self.child.try_wait().expect("wait for the FUSE server") {
                break status;
            }
            assert!(Instant::now() < deadline, "the FUSE server did not exit");
            std::thread::sleep(Duration::from_millis(20));
        };
        assert!(status.success(), "the FUSE server exited with {status}");
    }
}

impl Drop for Mount {
    fn drop(&mut self) {
        if mounted(&self.point) {
            let _ = Command::new("fusermount3")
                .args(["-u", "-z"])
                .arg(&self.point)
                .status();
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

fn run(program: &str, args: &[&str]) -> String {
    let output = Command::new(program)
        .args(args)
        .output()
        .unwrap_or_else(|error| panic!("run {program}: {error}"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(
        output.status.success(),
        "{program} {args:?} failed:\n{text}"
    );
    text
}

/// File `index`'s content: distinct bytes at every offset, of a size that ends mid-block.
fn content(index: usize) -> Vec<u8> {
    let len = 300_000 + index * 4099;
    (0..len)
        .map(|at| {
            (at as u32)
                .wrapping_mul(2_654_435_761)
                .rotate_left(index as u32) as u8
        })
        .collect()
}

#[test]
fn ext4_through_nbdfuse_is_made_written_and_clean_across_a_migration() {
    if !usable() {
        return;
    }
    let cluster = Cluster::up(3, "1G");
    let volume = "pvc-ext4";
    cluster.ok(&[
        "volume",
        "create",
        volume,
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);
    let uri = cluster.uri(volume);
    let dir = cluster.data_dir().join("fs");
    let (exported, root) = (dir.join("nbd"), dir.join("root"));
    std::fs::create_dir_all(&exported).unwrap();
    std::fs::create_dir_all(&root).unwrap();
    let image = exported.join("volume");
    let image_path = image.to_string_lossy().into_owned();

    // nbdfuse does not let a URI name local files (the credentials of nbds://): it reaches the
    // volume over TLS through nbdkit's nbd plugin, which it starts itself (socket activation).
    let (rest, credentials) = uri
        .strip_prefix("nbds://")
        .and_then(|rest| rest.split_once("?tls-certificates="))
        .unwrap_or_else(|| panic!("{uri} is not an nbds:// URI with credentials"));
    let (authority, export) = rest.split_once('/').expect("an export");
    let (host, port) = authority.rsplit_once(':').expect("a port");
    let mut nbdfuse = Command::new("nbdfuse");
    nbdfuse.arg(&image).args([
        "[",
        "nbdkit",
        "nbd",
        &format!("hostname={host}"),
        &format!("port={port}"),
        &format!("export={export}"),
        "tls=require",
        &format!("tls-certificates={credentials}"),
        "]",
    ]);
    let nbd = Mount::start(nbdfuse, &exported);
    // fallocate's zero range becomes one NBD WRITE_ZEROES (libnbd does not split it), longer
    // than the export's 4 MiB maximum request: it is served, as mkfs.ext4's discards are.
    let length = 8 << 20;
    let mut file = std::fs::OpenOptions::new()
        .read(true)
        .write(true)
        .open(&image)
        .unwrap();
    file.write_all(&vec![0xabu8; length]).unwrap();
    file.sync_all().unwrap();
    run(
        "fallocate",
        &[
            "--zero-range",
            "--offset",
            "0",
            "--length",
            "8MiB",
            &image_path,
        ],
    );
    let mut zeroed = vec![1u8; length];
    file.seek(SeekFrom::Start(0)).unwrap();
    file.read_exact(&mut zeroed).unwrap();
    drop(file);
    assert!(
        zeroed.iter().all(|byte| *byte == 0),
        "the zeroed range reads back as zeroes"
    );
    let made = run("mkfs.ext4", &["-F", "-q", "-b", "4096", &image_path]);
    assert!(!made.contains("Invalid argument"), "{made}");

    let mut fuse2fs = Command::new("fuse2fs");
    fuse2fs
        .arg(&image)
        .arg(&root)
        .args(["-f", "-o", "fakeroot"])
        .stderr(Stdio::null());
    let fs = Mount::start(fuse2fs, &root);
    let files = 8;
    for index in 0..files / 2 {
        std::fs::write(root.join(format!("file-{index}")), content(index)).unwrap();
    }
    // Move the second replica to the free node while the file system is mounted and written.
    let moved_from = cluster.replica_nodes(volume)[1].clone();
    let moved_to = free_node(&cluster, volume);
    cluster.add_pool(volume, &moved_to);
    for index in files / 2..files {
        std::fs::write(root.join(format!("file-{index}")), content(index)).unwrap();
    }
    cluster.remove_pool(volume, &moved_from);
    fs.stop();

    // e2fsck exits non-zero for any problem it finds (`run` checks that); -n changes nothing.
    let checked = run("e2fsck", &["-f", "-n", &image_path]);
    // 11 inodes are in use in a fresh ext4 (the reserved ones and lost+found), then the files.
    let in_use = format!(": {}/", files + 11);
    assert!(checked.contains(&in_use), "{checked}");

    let mut reader = Command::new("fuse2fs");
    reader
        .arg(&image)
        .arg(&root)
        .args(["-f", "-o", "ro,fakeroot"])
        .stderr(Stdio::null());
    let fs = Mount::start(reader, &root);
    for index in 0..files {
        let read = std::fs::read(root.join(format!("file-{index}"))).unwrap();
        assert!(
            read == content(index),
            "file-{index} differs from what was written"
        );
    }
    fs.stop();
    nbd.stop();
}
