//! The node's client endpoint: one NBD server (on `--nbd-address`) that serves every volume,
//! whichever node runs its target. A volume whose target runs here is served directly
//! ([`Endpoint::Local`], added by the targets loop); any other is forwarded
//! ([`Endpoint::Remote`], added by [`forward`]): a [`RemoteDevice`] relays its requests over
//! one pipelined NBD connection to the target node's *own* listener (`--target-address`),
//! which serves that node's own targets and nothing else. So a forwarded request makes at
//! most one hop whatever either node believes: two nodes with stale views can never pass a
//! connection back and forth.
//!
//! The handshake with the application is this server's own (structured replies, metadata
//! contexts, block status, block sizes taken from the target's). When the forwarded connection
//! fails or the volume's target moves to another node, the forwarder aborts the export: the
//! application's connections close at once and the requests in flight are left unanswered
//! (not failed), so a client that reconnects (qemu's `reconnect-delay`, or any retrying client)
//! sends them again, and finds the export again, at the same address, once the forwarder has
//! connected to the new target. A client that does not reconnect sees its connection closed:
//! the error for its requests.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tandem_block::{BlockDevice, ExportInfo, Extent, IoError};
use tandem_dataplane::target::TargetHandle;
use tandem_nbd::{ClientOptions, RemoteDevice, Server, ServerError};
use tokio::sync::{mpsc, watch};
use tokio::task::JoinSet;
use tokio::time::Instant;

use crate::metrics::metered::Metered;

/// How long connecting to a target node (TCP and NBD handshake) may take.
pub const CONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long after a failed connection the next attempt for the same volume is made.
pub const RETRY_INTERVAL: Duration = Duration::from_millis(250);

/// Volume name -> where its target's node serves its own targets, for the volumes whose target
/// runs on another node (decided by the targets loop, `targets::plan::plan_routes`).
pub type Routes = BTreeMap<String, SocketAddr>;

/// A volume as this node's endpoint serves it.
pub enum Endpoint {
    /// The target runs here (its client I/O counted for metrics).
    Local(Metered<TargetHandle>),
    /// The target runs on another node; requests are relayed to it.
    Remote(Arc<RemoteDevice>),
}

/// The node's public NBD server.
pub type EndpointServer = Server<Endpoint>;

impl Endpoint {
    fn is_remote(&self, device: &Arc<RemoteDevice>) -> bool {
        matches!(self, Endpoint::Remote(remote) if Arc::ptr_eq(remote, device))
    }
}

impl BlockDevice for Endpoint {
    fn info(&self) -> ExportInfo {
        match self {
            Endpoint::Local(target) => target.info(),
            Endpoint::Remote(remote) => remote.info(),
        }
    }

    async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
        match self {
            Endpoint::Local(target) => BlockDevice::read(target, offset, len).await,
            Endpoint::Remote(remote) => remote.read(offset, len).await,
        }
    }

    async fn write(&self, offset: u64, data: Bytes, fua: bool) -> Result<(), IoError> {
        match self {
            Endpoint::Local(target) => BlockDevice::write(target, offset, data, fua).await,
            Endpoint::Remote(remote) => remote.write(offset, data, fua).await,
        }
    }

    async fn flush(&self) -> Result<(), IoError> {
        match self {
            Endpoint::Local(target) => BlockDevice::flush(target).await,
            Endpoint::Remote(remote) => remote.flush().await,
        }
    }

    async fn trim(&self, offset: u64, len: u32, fua: bool) -> Result<(), IoError> {
        match self {
            Endpoint::Local(target) => BlockDevice::trim(target, offset, len, fua).await,
            Endpoint::Remote(remote) => remote.trim(offset, len, fua).await,
        }
    }

    async fn write_zeroes(
        &self,
        offset: u64,
        len: u32,
        fua: bool,
        no_hole: bool,
    ) -> Result<(), IoError> {
        match self {
            Endpoint::Local(target) => {
                BlockDevice::write_zeroes(target, offset, len, fua, no_hole).await
            }
            Endpoint::Remote(remote) => remote.write_zeroes(offset, len, fua, no_hole).await,
        }
    }

    async fn block_status(&self, offset: u64, len: u32) -> Result<Vec<Extent>, IoError> {
        match self {
            Endpoint::Local(target) => BlockDevice::block_status(target, offset, len).await,
            Endpoint::Remote(remote) => remote.block_status(offset, len).await,
        }
    }
}

/// Serves `volume` as `endpoint`, replacing whatever the server had under that name (a
/// forwarder's export, or a stopped target's); the forwarder adding the name meanwhile (it
/// stops once the routes say the target is here) is replaced too, a few times at most.
pub fn replace_export(
    server: &EndpointServer,
    volume: &str,
    endpoint: Endpoint,
) -> Result<(), ServerError> {
    let endpoint = Arc::new(endpoint);
    let mut attempts = 0;
    loop {
        server.remove_export(volume);
        match server.add_export(volume.to_string(), Arc::clone(&endpoint)) {
            Err(ServerError::ExportExists(_)) if attempts < 10 => attempts += 1,
            result => return result,
        }
    }
}

/// One forwarded volume.
struct Forwarded {
    upstream: SocketAddr,
    device: Arc<RemoteDevice>,
    /// The task that reports the device lost.
    watch: tokio::task::AbortHandle,
}

impl Drop for Forwarded {
    fn drop(&mut self) {
        self.watch.abort();
    }
}

/// Keeps a forwarding export on `server` for every volume of `routes`, until the task is
/// dropped. See the module documentation.
pub async fn forward(
    server: Arc<EndpointServer>,
    mut routes: watch::Receiver<Routes>,
    tls: Option<Arc<tandem_pki::rustls::ClientConfig>>,
) {
    let mut forwarded: BTreeMap<String, Forwarded> = BTreeMap::new();
    let mut connecting: JoinSet<(String, SocketAddr, Option<RemoteDevice>)> = JoinSet::new();
    let mut in_progress: BTreeSet<String> = BTreeSet::new();
    let mut retry_at: BTreeMap<String, Instant> = BTreeMap::new();
    // Connection attempts that failed in a row, per volume.
    let mut failures: BTreeMap<String, u32> = BTreeMap::new();
    let (lost_tx, mut lost_rx) = mpsc::unbounded_channel::<String>();
    let mut watchers = JoinSet::new();
    loop {
        let current = routes.borrow_and_update().clone();
        // Stop forwarding what moved, left, or lost its connection.
        forwarded.retain(|volume, forward| {
            let why = if current.get(volume) != Some(&forward.upstream) {
                "the volume's target moved"
            } else if forward.device.is_lost() {
                "the connection to the target was lost"
            } else {
                return true;
            };
            tracing::info!(
                volume,
                upstream = %forward.upstream,
                reason = forward.device.lost_reason(),
                "closing the forwarded export: {why}"
            );
            server.abort_export_if(volume, |endpoint| endpoint.is_remote(&forward.device));
            false
        });
        retry_at.retain(|volume, _| current.contains_key(volume));
        failures.retain(|volume, _| current.contains_key(volume));
        let now = Instant::now();
        for (volume, upstream) in &current {
            let due = retry_at.get(volume).is_none_or(|at| *at <= now);
            if forwarded.contains_key(volume) || in_progress.contains(volume) || !due {
                continue;
            }
            in_progress.insert(volume.clone());
            let (volume, upstream, tls) = (volume.clone(), *upstream, tls.clone());
            connecting.spawn(async move {
                let device = connect(&volume, upstream, tls).await;
                (volume, upstream, device)
            });
        }
        let next_retry = retry_at.values().min().copied();
        tokio::select! {
            changed = routes.changed() => {
                if changed.is_err() {
                    break;
                }
            }
            Some(volume) = lost_rx.recv() => {
                tracing::debug!(volume, "a forwarded connection is lost");
            }
            Some(joined) = connecting.join_next(), if !connecting.is_empty() => {
                let Ok((volume, upstream, device)) = joined else { continue };
                in_progress.remove(&volume);
                let wanted = routes.borrow().get(&volume) == Some(&upstream);
                match device {
                    Some(device) if wanted => {
                        let device = Arc::new(device);
                        let endpoint = Arc::new(Endpoint::Remote(Arc::clone(&device)));
                        match server.add_export(volume.clone(), endpoint) {
                            Ok(()) => {
                                tracing::info!(volume, %upstream, "forwarding the volume to its target's node");
                                retry_at.remove(&volume);
                                failures.remove(&volume);
                                let (lost_tx, name) = (lost_tx.clone(), volume.clone());
                                let watched = Arc::clone(&device);
                                let watch = watchers.spawn(async move {
                                    watched.lost().await;
                                    let _ = lost_tx.send(name);
                                });
                                forwarded.insert(volume, Forwarded { upstream, device, watch });
                            }
                            // The target came here meanwhile: served directly.
                            Err(ServerError::ExportExists(_)) => {}
                            Err(error) => {
                                tracing::warn!(volume, %upstream, %error, "cannot serve the forwarded export");
                                retry_at.insert(volume, Instant::now() + RETRY_INTERVAL);
                            }
                        }
                    }
                    Some(_) => {}
                    None => {
                        // Expected for a moment while a target starts or moves; said once it
                        // lasts (about 5 s), then about every minute.
                        let failed = failures.entry(volume.clone()).or_insert(0);
                        *failed += 1;
                        if *failed == 20 || failed.is_multiple_of(240) {
                            tracing::info!(volume, %upstream, attempts = *failed, "cannot reach the volume's target yet; still trying");
                        }
                        retry_at.insert(volume, Instant::now() + RETRY_INTERVAL);
                    }
                }
            }
            () = sleep_until(next_retry) => {}
        }
        while watchers.try_join_next().is_some() {}
    }
    for (volume, forward) in forwarded {
        server.abort_export_if(&volume, |endpoint| endpoint.is_remote(&forward.device));
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Connects to `volume` on the node whose own targets are served at `upstream` (over TLS with
/// this node's credential when `tls` is given).
async fn connect(
    volume: &str,
    upstream: SocketAddr,
    tls: Option<Arc<tandem_pki::rustls::ClientConfig>>,
) -> Option<RemoteDevice> {
    let scheme = if tls.is_some() { "nbds" } else { "nbd" };
    let uri = format!("{scheme}://{upstream}/{volume}");
    let options = ClientOptions {
        handshake_timeout: CONNECT_TIMEOUT,
        tls,
        ..ClientOptions::default()
    };
    match RemoteDevice::connect(&uri, &options).await {
        Ok(device) => Some(device),
        Err(error) => {
            tracing::debug!(volume, %upstream, %error, "cannot connect to the volume's target");
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use tandem_nbd::{Client, ServerConfig};
    use tokio::net::TcpListener;

    use super::*;

    const SIZE: usize = 1 << 20;
    const DEADLINE: Duration = Duration::from_secs(30);

    /// A volume in memory, filled with one byte: which upstream answered shows in the data.
    struct Memory(Mutex<Vec<u8>>);

    impl BlockDevice for Memory {
        fn info(&self) -> ExportInfo {
            let mut info = ExportInfo::new(SIZE as u64);
            info.can_flush = true;
            info
        }
        async fn read(&self, offset: u64, len: u32) -> Result<Bytes, IoError> {
            let data = self.0.lock().unwrap();
            let at = offset as usize;
            Ok(Bytes::copy_from_slice(&data[at..at + len as usize]))
        }
        async fn write(&self, offset: u64, data: Bytes, _fua: bool) -> Result<(), IoError> {
            let at = offset as usize;
            self.0.lock().unwrap()[at..at + data.len()].copy_from_slice(&data);
            Ok(())
        }
        async fn flush(&self) -> Result<(), IoError> {
            Ok(())
        }
        async fn trim(&self, _: u64, _: u32, _: bool) -> Result<(), IoError> {
            Err(IoError::NotSupported)
        }
        async fn write_zeroes(&self, _: u64, _: u32, _: bool, _: bool) -> Result<(), IoError> {
            Err(IoError::NotSupported)
        }
        async fn block_status(&self, _: u64, len: u32) -> Result<Vec<Extent>, IoError> {
            Ok(vec![Extent::data(len)])
        }
    }

    async fn serve<D: BlockDevice>(server: &Arc<Server<D>>) -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap();
        tokio::spawn(Arc::clone(server).serve(listener, std::future::pending()));
        address
    }

    /// A node's own-targets server with `vol` filled with `byte`.
    async fn upstream(byte: u8) -> (Arc<Server<Memory>>, SocketAddr) {
        let server = Arc::new(Server::new(ServerConfig::default()));
        server
            .add_export("vol", Arc::new(Memory(Mutex::new(vec![byte; SIZE]))))
            .unwrap();
        let address = serve(&server).await;
        (server, address)
    }

    /// Connects to the endpoint until `vol` reads as `byte` there.
    async fn wait_for_byte(endpoint: SocketAddr, byte: u8) -> Client {
        let started = Instant::now();
        loop {
            if let Ok(client) = Client::connect(&format!("nbd://{endpoint}/vol")).await {
                if let Ok(data) = client.read(0, 4096).await {
                    if data.iter().all(|b| *b == byte) {
                        return client;
                    }
                }
            }
            assert!(started.elapsed() < DEADLINE, "vol never read as {byte:#x}");
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    }

    async fn closed(client: &Client) {
        tokio::time::timeout(Duration::from_secs(5), client.lost())
            .await
            .expect("the forwarder closes the connection promptly");
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_a_forwarded_volume_when_its_target_moves_or_its_connection_fails_then_clients_are_closed_and_reconnect_to_the_new_target(
    ) {
        let (_a, a) = upstream(0xaa).await;
        let (b_server, b) = upstream(0xbb).await;
        let server: Arc<EndpointServer> = Arc::new(Server::new(ServerConfig::default()));
        let endpoint = serve(&server).await;
        let (routes, routed) = watch::channel(Routes::from([("vol".to_string(), a)]));
        let forwarding = tokio::spawn(forward(Arc::clone(&server), routed, None));

        let on_a = wait_for_byte(endpoint, 0xaa).await;
        on_a.write(8192, &[1; 4096], false).await.unwrap();
        // The CV names another node: the connection through the old route closes.
        routes.send_replace(Routes::from([("vol".to_string(), b)]));
        closed(&on_a).await;
        let on_b = wait_for_byte(endpoint, 0xbb).await;

        // The connection to the target fails (its node stops serving it): closed too, and the
        // forwarder connects again once the target serves.
        b_server.abort_export_if("vol", |_| true);
        closed(&on_b).await;
        b_server
            .add_export("vol", Arc::new(Memory(Mutex::new(vec![0xbb; SIZE]))))
            .unwrap();
        let again = wait_for_byte(endpoint, 0xbb).await;

        // A volume no longer routed here is no longer served.
        routes.send_replace(Routes::new());
        closed(&again).await;
        assert!(server.export("vol").is_none());
        forwarding.abort();
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn given_a_route_to_nowhere_when_forwarding_then_nothing_is_served_and_the_forwarder_keeps_trying(
    ) {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let nowhere = listener.local_addr().unwrap();
        drop(listener);
        let server: Arc<EndpointServer> = Arc::new(Server::new(ServerConfig::default()));
        let endpoint = serve(&server).await;
        let (routes, routed) = watch::channel(Routes::from([("vol".to_string(), nowhere)]));
        let forwarding = tokio::spawn(forward(Arc::clone(&server), routed, None));
        let refused = Client::connect(&format!("nbd://{endpoint}/vol")).await;
        assert!(refused.unwrap_err().to_string().contains("no export named"));
        // The target's node comes up at that address: the forwarder finds it.
        let upstream = Arc::new(Server::new(ServerConfig::default()));
        upstream
            .add_export("vol", Arc::new(Memory(Mutex::new(vec![0xcc; SIZE]))))
            .unwrap();
        let listener = TcpListener::bind(nowhere).await.unwrap();
        tokio::spawn(Arc::clone(&upstream).serve(listener, std::future::pending()));
        wait_for_byte(endpoint, 0xcc).await;
        drop(routes);
        forwarding.await.unwrap();
        assert!(server.export("vol").is_none());
    }
}
