//! The ports of a cluster's listeners (`tandem up`): chosen once, recorded in `cluster.json`,
//! never one twice (an HA cluster's second control plane once got an etcd member's client
//! port, and could not start).

use std::collections::BTreeSet;
use std::net::TcpListener;

use anyhow::{bail, Context, Result};

use super::{ClusterFile, DEFAULT_PORT};

/// Every port a recorded cluster uses already.
pub(super) fn taken_by(cluster: &ClusterFile) -> BTreeSet<u16> {
    let mut taken = BTreeSet::from([cluster.port]);
    for node in &cluster.nodes {
        taken.extend([node.data_port, node.nbd_port, node.metrics_port]);
    }
    if let Some(ha) = &cluster.ha {
        taken.extend(ha.control_plane_ports.iter().copied());
        taken.extend((ha.etcd.iter()).flat_map(|member| [member.client_port, member.peer_port]));
    }
    taken
}

/// Ports for the cluster's listeners come from below the kernel's ephemeral range (32768 and
/// up), so no outgoing connection can take one between `up` choosing it and a process binding
/// it; each is checked free when chosen.
const PORT_RANGE: std::ops::Range<u16> = 20000..32000;

/// A port for one of the cluster's listeners, not among `taken` (which it joins): `asked`, or
/// with `Some(0)` a free one, or with `None` the default port if free.
pub(super) fn choose(asked: Option<u16>, taken: &mut BTreeSet<u16>) -> Result<u16> {
    let free_port = || -> Result<u16> {
        use rand::Rng;
        let mut random = rand::thread_rng();
        for _attempt in 0..200 {
            let port = random.gen_range(PORT_RANGE);
            if !taken.contains(&port) && TcpListener::bind(("127.0.0.1", port)).is_ok() {
                return Ok(port);
            }
        }
        for _attempt in 0..200 {
            let listener = TcpListener::bind("127.0.0.1:0").context("find a free port")?;
            let port = listener.local_addr().context("read the free port")?.port();
            if !taken.contains(&port) {
                return Ok(port);
            }
        }
        bail!("found no free port for the cluster's listeners")
    };
    let port = match asked {
        Some(0) => free_port()?,
        Some(port) => port,
        None if !taken.contains(&DEFAULT_PORT)
            && TcpListener::bind(("127.0.0.1", DEFAULT_PORT)).is_ok() =>
        {
            DEFAULT_PORT
        }
        None => free_port()?,
    };
    taken.insert(port);
    Ok(port)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A port is never chosen twice for one cluster (an HA cluster's second control plane once
    /// got its etcd member's client port, and could not start).
    #[test]
    fn the_ports_of_one_cluster_are_distinct() {
        let mut taken = BTreeSet::from([DEFAULT_PORT]);
        let chosen: Vec<u16> = (0..400)
            .map(|_| choose(Some(0), &mut taken).expect("a free port"))
            .collect();
        let distinct: BTreeSet<u16> = chosen.iter().copied().collect();
        assert_eq!(distinct.len(), chosen.len());
        assert!(!distinct.contains(&DEFAULT_PORT));
        assert_eq!(choose(Some(4242), &mut taken).expect("asked"), 4242);
    }
}
