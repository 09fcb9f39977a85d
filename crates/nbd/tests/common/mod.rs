//! Shared test helpers: a server on 127.0.0.1:0 with file-backed exports, a probe device that
//! counts and injects faults, a raw protocol client, and running external NBD clients.

#![allow(dead_code)]

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::Output;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use tandem_block::{BlockDevice, ExportInfo, Extent, FileDevice, IoError};
use tandem_nbd::proto::{self, ClientOption, InfoRequest, MetaContextRequest, RequestHeader};
use tandem_nbd::{Server, ServerConfig};
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;

/// How long any single external command or wait may take before the test fails.
pub const DEADLINE: Duration = Duration::from_secs(120);

/// A [`FileDevice`] that counts what it is asked and can be told to fail.
pub struct Probe {
    pub file: FileDevice,
    pub bytes_read: AtomicU64,
    pub reads: AtomicU64,
    pub writes: AtomicU64,
    pub flushes: AtomicU64,
    pub block_status_calls: AtomicU64,
    pub fail_reads: AtomicBool,
    pub short_reads: AtomicBool,
    /// Reads at this offset wait for `release` (u64::MAX: none do).
    pub hold_reads_at: AtomicU64,
    pub release: tokio::sync::Notify,
    /// Reads inside the device now, and the most ever seen at once.
    pub reads_in_flight: AtomicU64,
    pub max_reads_in_flight: AtomicU64,
    /// Overrides `min_block` (for alignment tests); 0 keeps the file's.
    pub min_block: u32,
    pub multi_conn: bool,
}

impl Probe {
    pub fn new(file: FileDevice) -> Self {
        Probe {
            file,
            bytes_read: AtomicU64::new(0),
            reads: AtomicU64::new(0),
            writes: AtomicU64::new(0),
            flushes: AtomicU64::new(0),
            block_status_calls: AtomicU64::new(0),
            fail_reads: AtomicBool::new(false),
            short_reads: AtomicBool::new(false),
            hold_reads_at: AtomicU64::new(u64::MAX),
            release: tokio::sync::Notify::new(),
            reads_in_flight: AtomicU64::new(0),
            max_reads_in_flight: AtomicU64::new(0),
            min_block: 0,
            multi_conn: true,
        }
    }

    async fn read_inner(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        if self.fail_reads.load(Ordering::Relaxed) {
            return Err(IoError::Io);
        }
        let data = self.file.read(offset, len).await?;
        if self.short_reads.load(Ordering::Relaxed) {
            return Ok(data.slice(..data.len() / 2));
        }
        Ok(data)
    }
}

impl BlockDevice for Probe {
    fn info(&self) -> ExportInfo {
        let mut info = self.file.info();
        if self.min_block != 0 {
            info.min_block = self.min_block;
        }
        info.can_multi_conn = self.multi_conn;
        info
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        let now = self.reads_in_flight.fetch_add(1, Ordering::SeqCst) + 1;
        self.max_reads_in_flight.fetch_max(now, Ordering::SeqCst);
        self.reads.fetch_add(1, Ordering::SeqCst);
        self.bytes_read.fetch_add(u64::from(len), Ordering::Relaxed);
        if offset == self.hold_reads_at.load(Ordering::SeqCst) {
            self.release.notified().await;
        }
        let result = self.read_inner(offset, len).await;
        self.reads_in_flight.fetch_sub(1, Ordering::SeqCst);
        result
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        self.writes.fetch_add(1, Ordering::Relaxed);
        self.file.write(offset, data, fua).await
    }

    async fn flush(&self) -> Result<(), IoError> {
        self.flushes.fetch_add(1, Ordering::Relaxed);
        self.file.flush().await
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        self.file.trim(offset, len, fua).await
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError> {
        self.file.write_zeroes(offset, len, fua, no_hole).await
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        self.block_status_calls.fetch_add(1, Ordering::Relaxed);
        self.file.block_status(offset, len).await
    }
}

/// A running server with its temporary directory.
pub struct TestServer {
    pub server: Arc<Server<Probe>>,
    pub addr: SocketAddr,
    pub dir: tempfile::TempDir,
    stop: Option<oneshot::Sender<()>>,
    task: Option<JoinHandle<()>>,
}

impl TestServer {
    pub async fn start() -> Self {
        Self::start_with(ServerConfig::default()).await
    }

    pub async fn start_with(config: ServerConfig) -> Self {
        let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
        let addr = listener.local_addr().expect("local addr");
        let server = Arc::new(Server::new(config));
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(Arc::clone(&server).serve(listener, async move {
            let _ = stopped.await;
        }));
        let dir = tempfile::tempdir().expect("tempdir");
        TestServer {
            server,
            addr,
            dir,
            stop: Some(stop),
            task: Some(task),
        }
    }

    /// Creates a sparse file of `size` bytes and exports it as `name`.
    pub fn add_file(&self, name: &str, size: u64) -> Arc<Probe> {
        let path = self.path(name);
        let file = FileDevice::create(&path, size)
            .expect("create file")
            .with_description(format!("test disk {name}"));
        self.add(name, Probe::new(file))
    }

    pub fn add(&self, name: &str, probe: Probe) -> Arc<Probe> {
        let probe = Arc::new(probe);
        self.server
            .add_export(name, Arc::clone(&probe))
            .expect("add export");
        probe
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(format!("{name}.img"))
    }

    pub fn uri(&self, name: &str) -> String {
        format!("nbd://{}/{}", self.addr, name)
    }

    /// Stops the server and waits for `serve` to return.
    pub async fn shutdown(mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        if let Some(task) = self.task.take() {
            tokio::time::timeout(DEADLINE, task)
                .await
                .expect("serve returns")
                .expect("serve task");
        }
    }
}

static INSTALL: Mutex<()> = Mutex::new(());

/// True if `bin` is on PATH, installing Debian package `package` first if it is missing and
/// apt-get can. Tests skip (with a message) only when this is false.
pub fn ensure_tool(bin: &str, package: &str) -> bool {
    let _guard = INSTALL.lock().unwrap_or_else(|e| e.into_inner());
    let present = || {
        std::process::Command::new("sh")
            .arg("-c")
            .arg(format!("command -v {bin}"))
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if present() {
        return true;
    }
    eprintln!("{bin} is missing: trying apt-get install -y {package}");
    let install = |update: bool| {
        let script = if update {
            format!("apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}")
        } else {
            format!("DEBIAN_FRONTEND=noninteractive apt-get install -y -qq {package}")
        };
        std::process::Command::new("sh")
            .arg("-c")
            .arg(script)
            .output()
            .map(|o| o.status.success())
            .unwrap_or(false)
    };
    if !install(false) {
        install(true);
    }
    if present() {
        return true;
    }
    eprintln!("SKIPPED: {bin} (package {package}) is not installed and could not be installed");
    false
}

/// Runs an external command with a deadline and returns its output (stdout and stderr).
pub async fn run(program: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(program);
    // Outside the source tree, so no tool leaves files (fio's verify state...) in the crate.
    cmd.args(args)
        .current_dir(std::env::temp_dir())
        .kill_on_drop(true)
        .stdin(std::process::Stdio::null());
    let output = tokio::time::timeout(DEADLINE, cmd.output())
        .await
        .unwrap_or_else(|_| panic!("{program} {args:?} did not finish in time"))
        .unwrap_or_else(|e| panic!("cannot run {program}: {e}"));
    output
}

/// Like [`run`], but fails the test unless the command succeeded.
pub async fn run_ok(program: &str, args: &[&str]) -> String {
    let out = run(program, args).await;
    let stdout = String::from_utf8_lossy(&out.stdout).into_owned();
    assert!(
        out.status.success(),
        "{program} {args:?} failed: {}\nstdout: {stdout}\nstderr: {}",
        out.status,
        String::from_utf8_lossy(&out.stderr)
    );
    stdout
}

pub fn text(out: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    )
}

/// Writes a file of `size` bytes with data at a few places and holes elsewhere.
pub fn sparse_pattern_file(path: &Path, size: u64, chunks: &[(u64, usize, u8)]) {
    use std::os::unix::fs::FileExt;
    let file = std::fs::File::create(path).expect("create");
    file.set_len(size).expect("set_len");
    for &(offset, len, seed) in chunks {
        let data: Vec<u8> = (0..len)
            .map(|i| seed.wrapping_add((i % 251) as u8))
            .collect();
        file.write_all_at(&data, offset).expect("write");
    }
}

// ---- A raw protocol client ------------------------------------------------------------------

pub struct RawClient {
    pub stream: TcpStream,
}

/// A decoded structured reply chunk.
#[derive(Debug)]
pub struct Chunk {
    pub flags: u16,
    pub kind: u16,
    pub handle: u64,
    pub payload: Vec<u8>,
}

impl Chunk {
    /// The error value of an error chunk.
    pub fn error(&self) -> Option<u32> {
        (self.kind & 0x8000 != 0)
            .then(|| u32::from_be_bytes(self.payload[..4].try_into().expect("4 bytes")))
    }
}

impl RawClient {
    pub async fn connect(addr: SocketAddr) -> Self {
        let stream = TcpStream::connect(addr).await.expect("connect");
        stream.set_nodelay(true).expect("nodelay");
        RawClient { stream }
    }

    /// Reads the greeting and sends the client flags.
    pub async fn start(addr: SocketAddr, flags: u32) -> Self {
        let mut c = Self::connect(addr).await;
        let mut greeting = [0u8; proto::GREETING_LEN];
        c.read_exact(&mut greeting).await;
        assert_eq!(&greeting[..16], b"NBDMAGICIHAVEOPT");
        assert_eq!(u16::from_be_bytes([greeting[16], greeting[17]]), 3);
        c.send(&flags.to_be_bytes()).await;
        c
    }

    pub async fn send(&mut self, bytes: &[u8]) {
        self.stream.write_all(bytes).await.expect("send");
    }

    pub async fn read_exact(&mut self, buf: &mut [u8]) {
        tokio::time::timeout(DEADLINE, self.stream.read_exact(buf))
            .await
            .expect("reply in time")
            .expect("read");
    }

    pub async fn option(&mut self, option: &ClientOption) {
        let mut b = BytesMut::new();
        option.encode(&mut b);
        self.send(&b).await;
    }

    pub async fn raw_option(&mut self, code: u32, data: &[u8]) {
        let mut b = Vec::new();
        b.extend_from_slice(&proto::IHAVEOPT.to_be_bytes());
        b.extend_from_slice(&code.to_be_bytes());
        b.extend_from_slice(&(data.len() as u32).to_be_bytes());
        b.extend_from_slice(data);
        self.send(&b).await;
    }

    /// Reads one option reply: (option, reply type, data).
    pub async fn option_reply(&mut self) -> (u32, u32, Vec<u8>) {
        let mut h = [0u8; 20];
        self.read_exact(&mut h).await;
        assert_eq!(
            u64::from_be_bytes(h[..8].try_into().expect("8")),
            proto::OPTION_REPLY_MAGIC
        );
        let option = u32::from_be_bytes(h[8..12].try_into().expect("4"));
        let kind = u32::from_be_bytes(h[12..16].try_into().expect("4"));
        let len = u32::from_be_bytes(h[16..20].try_into().expect("4"));
        let mut data = vec![0u8; len as usize];
        self.read_exact(&mut data).await;
        (option, kind, data)
    }

    /// Reads option replies up to and including the final one (ACK or error).
    pub async fn option_replies(&mut self) -> Vec<(u32, u32, Vec<u8>)> {
        let mut out = Vec::new();
        loop {
            let reply = self.option_reply().await;
            let last = reply.1 == proto::REP_ACK || reply.1 & proto::REP_FLAG_ERROR != 0;
            out.push(reply);
            if last {
                return out;
            }
        }
    }

    /// A complete handshake with NBD_OPT_GO: returns the client, the size and the flags.
    pub async fn go(
        addr: SocketAddr,
        name: &str,
        structured: bool,
        meta: bool,
    ) -> (Self, u64, u16) {
        let mut c = Self::start(addr, proto::FLAG_C_FIXED_NEWSTYLE | proto::FLAG_C_NO_ZEROES).await;
        if structured {
            c.option(&ClientOption::StructuredReply).await;
            assert_eq!(c.option_reply().await.1, proto::REP_ACK);
        }
        if meta {
            let req = MetaContextRequest {
                export: name.into(),
                queries: vec![proto::BASE_ALLOCATION.into()],
            };
            c.option(&ClientOption::SetMetaContext(req)).await;
            let replies = c.option_replies().await;
            assert_eq!(replies.last().expect("reply").1, proto::REP_ACK);
            assert_eq!(replies.len(), 2, "base:allocation selected");
        }
        c.option(&ClientOption::Go(InfoRequest {
            name: name.into(),
            requests: vec![proto::INFO_BLOCK_SIZE],
        }))
        .await;
        let replies = c.option_replies().await;
        assert_eq!(
            replies.last().expect("reply").1,
            proto::REP_ACK,
            "GO {name}: {replies:?}"
        );
        let export = replies
            .iter()
            .find(|r| r.1 == proto::REP_INFO && r.2[..2] == [0, 0])
            .expect("NBD_INFO_EXPORT");
        let size = u64::from_be_bytes(export.2[2..10].try_into().expect("8"));
        let flags = u16::from_be_bytes(export.2[10..12].try_into().expect("2"));
        (c, size, flags)
    }

    pub async fn request(
        &mut self,
        kind: u16,
        flags: u16,
        handle: u64,
        offset: u64,
        length: u32,
        payload: &[u8],
    ) {
        let mut b = BytesMut::new();
        RequestHeader {
            flags,
            kind,
            handle,
            offset,
            length,
        }
        .encode(&mut b);
        b.extend_from_slice(payload);
        self.send(&b).await;
    }

    /// Reads a simple reply: (error, handle); `data_len` bytes of data follow a good read.
    pub async fn simple_reply(&mut self, data_len: usize) -> (u32, u64, Vec<u8>) {
        let mut h = [0u8; 16];
        self.read_exact(&mut h).await;
        assert_eq!(
            u32::from_be_bytes(h[..4].try_into().expect("4")),
            proto::SIMPLE_REPLY_MAGIC
        );
        let error = u32::from_be_bytes(h[4..8].try_into().expect("4"));
        let handle = u64::from_be_bytes(h[8..16].try_into().expect("8"));
        let mut data = vec![0u8; if error == 0 { data_len } else { 0 }];
        self.read_exact(&mut data).await;
        (error, handle, data)
    }

    /// Reads one reply header's magic, then the rest of a simple reply (no data) or a chunk.
    pub async fn any_reply(&mut self) -> Result<(u32, u64), Chunk> {
        let mut magic = [0u8; 4];
        self.read_exact(&mut magic).await;
        match u32::from_be_bytes(magic) {
            proto::SIMPLE_REPLY_MAGIC => {
                let mut rest = [0u8; 12];
                self.read_exact(&mut rest).await;
                Ok((
                    u32::from_be_bytes(rest[..4].try_into().expect("4")),
                    u64::from_be_bytes(rest[4..].try_into().expect("8")),
                ))
            }
            proto::STRUCTURED_REPLY_MAGIC => Err(self.chunk_after_magic().await),
            other => panic!("bad reply magic {other:#x}"),
        }
    }

    pub async fn chunk(&mut self) -> Chunk {
        let mut magic = [0u8; 4];
        self.read_exact(&mut magic).await;
        assert_eq!(u32::from_be_bytes(magic), proto::STRUCTURED_REPLY_MAGIC);
        self.chunk_after_magic().await
    }

    async fn chunk_after_magic(&mut self) -> Chunk {
        let mut h = [0u8; 16];
        self.read_exact(&mut h).await;
        let flags = u16::from_be_bytes([h[0], h[1]]);
        let kind = u16::from_be_bytes([h[2], h[3]]);
        let handle = u64::from_be_bytes(h[4..12].try_into().expect("8"));
        let len = u32::from_be_bytes(h[12..16].try_into().expect("4"));
        let mut payload = vec![0u8; len as usize];
        self.read_exact(&mut payload).await;
        Chunk {
            flags,
            kind,
            handle,
            payload,
        }
    }

    /// True if the server closes the connection (EOF or reset) within `within`; bytes it sends
    /// first are skipped.
    pub async fn closed_within(&mut self, within: Duration) -> bool {
        let mut buf = vec![0u8; 64 * 1024];
        let wait = async {
            loop {
                match self.stream.read(&mut buf).await {
                    Ok(0) | Err(_) => return,
                    Ok(_) => continue,
                }
            }
        };
        tokio::time::timeout(within, wait).await.is_ok()
    }
}

/// Waits until `cond` holds, checking every few milliseconds, failing after [`DEADLINE`].
pub async fn wait_until(what: &str, mut cond: impl FnMut() -> bool) {
    let start = tokio::time::Instant::now();
    while !cond() {
        assert!(start.elapsed() < DEADLINE, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}
