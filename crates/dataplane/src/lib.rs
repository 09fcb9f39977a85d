//! Tandem's data path: the replication core (`tandem-core`) driven by tokio tasks that turn its
//! outputs into real socket and file I/O and feed the completions back. The core stays pure;
//! everything here is the glue around it.
//!
//! * `replica` — the replica host: one per node, serving every replica in its pool over TCP.
//! * `target` — the volume target: sequences client I/O and fans it out to the replicas.
//! * `security` — [`security::LinkSecurity`]: mutual TLS with the cluster CA on the links
//!   between targets and replica hosts, or plain TCP.

pub mod replica;
pub mod security;
pub mod target;

use std::time::Duration;

/// A replica link's socket, either side: no Nagle delay, and TCP keepalive, so that a peer
/// whose host or network is gone is noticed by the kernel (about 8 s after the link fell
/// silent: 5 s idle, then 3 unanswered probes 1 s apart) without a timer in this process. A
/// peer process that dies is noticed at once (its kernel closes the connection); the target's
/// own probes (`TargetOptions::probe_interval_ticks`) cover a replica that stops answering on a
/// live connection.
pub(crate) fn tune_link_socket(stream: &tokio::net::TcpStream) -> std::io::Result<()> {
    stream.set_nodelay(true)?;
    let keepalive = socket2::TcpKeepalive::new()
        .with_time(Duration::from_secs(5))
        .with_interval(Duration::from_secs(1))
        .with_retries(3);
    socket2::SockRef::from(stream).set_tcp_keepalive(&keepalive)
}
