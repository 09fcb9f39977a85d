//! `tandem up --netns PREFIX`: each node of a local cluster on its own network host, a Linux
//! network namespace with its own address on a bridge, as in test-tools.md §6:
//!
//! ```text
//! PREFIX-sw       the bridge br0, and one veth end per host (named after the host: node1, cp..)
//! PREFIX-cp       the control plane, 10.77.S.254, port 7070
//! PREFIX-nodeN    node N's agent, 10.77.S.N, replicas on port 7100, NBD on 10809
//! PREFIX-client   test clients, 10.77.S.200
//! root namespace  `ip route add blackhole 10.77.S.0/24`, added before anything else, so no
//!                 connection from the root namespace ever leaves the machine for a test address
//! ```
//!
//! The subnet 10.77.S.0/24 is chosen under a lock (`/run/tandem/netns.lock`) as the first `S`
//! that no blackhole route in the root namespace takes, so clusters started at once never share
//! one; their namespaces differ by prefix, and a prefix whose namespaces exist is refused. What
//! `up` creates is recorded in `cluster.json` before it is created, so `down` removes it all
//! (every process left in the namespaces, the namespaces with their veths and bridge, the route)
//! even after a failed `up` or a `kill -9`; a second `down` finds nothing recorded to remove.

use std::fs::OpenOptions;
use std::net::Ipv4Addr;
use std::path::Path;
use std::process::{Command, Output};
use std::time::{Duration, Instant};

use anyhow::{bail, Context, Result};
use nix::fcntl::{Flock, FlockArg};
use nix::sys::signal::{kill, Signal};
use nix::unistd::Pid;
use serde::{Deserialize, Serialize};

/// The control plane's port on its namespace's address.
pub const CONTROL_PLANE_PORT: u16 = 7070;
/// Every node's replica host port.
pub const DATA_PORT: u16 = 7100;
/// Every node's NBD port: the standard one (each node has its own address).
pub const NBD_PORT: u16 = 10809;
/// Every node's metrics port (the agent's default).
pub const METRICS_PORT: u16 = 9580;
/// The /16 the clusters' /24s come from: 10.77.S.0/24.
const NETWORK: [u8; 2] = [10, 77];
/// The longest prefix: namespace names stay short enough to read in `ip netns list`, and
/// `PREFIX-client` stays within the 15 characters of an interface name should one be named
/// after it.
const PREFIX_MAX: usize = 8;
const LOCK_FILE: &str = "/run/tandem/netns.lock";
/// The host part of the client namespace's and the control plane's addresses.
const CLIENT_HOST: u8 = 200;
const CONTROL_PLANE_HOST: u8 = 254;

/// A cluster's network, as recorded in `cluster.json`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Network {
    pub prefix: String,
    /// `S` in 10.77.S.0/24.
    pub subnet: u8,
    /// Whether the route and namespaces may exist (set before `up` creates any; cleared when
    /// `down` has removed them all).
    pub created: bool,
}

/// Why a prefix is refused, before anything is created.
pub fn validate_prefix(prefix: &str) -> Result<()> {
    let fine = !prefix.is_empty()
        && prefix.len() <= PREFIX_MAX
        && prefix.starts_with(|c: char| c.is_ascii_lowercase())
        && !prefix.ends_with('-')
        && prefix
            .chars()
            .all(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || c == '-');
    if !fine {
        bail!(
            "--netns {prefix:?}: a prefix is 1 to {PREFIX_MAX} characters of a-z, 0-9 and '-', \
             starting with a letter and not ending with '-' (namespaces are named PREFIX-node1, \
             PREFIX-client, ...)"
        );
    }
    Ok(())
}

impl Network {
    pub fn switch(&self) -> String {
        format!("{}-sw", self.prefix)
    }

    pub fn control_plane_namespace(&self) -> String {
        format!("{}-cp", self.prefix)
    }

    pub fn client_namespace(&self) -> String {
        format!("{}-client", self.prefix)
    }

    pub fn node_namespace(&self, node: &str) -> String {
        format!("{}-{node}", self.prefix)
    }

    pub fn cidr(&self) -> String {
        format!("{}.{}.{}.0/24", NETWORK[0], NETWORK[1], self.subnet)
    }

    fn address(&self, host: u8) -> Ipv4Addr {
        Ipv4Addr::new(NETWORK[0], NETWORK[1], self.subnet, host)
    }

    /// The address of the `index`-th node (0-based).
    pub fn node_address(&self, index: usize) -> Ipv4Addr {
        self.address(u8::try_from(index + 1).expect("fewer than 200 nodes"))
    }

    pub fn control_plane_address(&self) -> Ipv4Addr {
        self.address(CONTROL_PLANE_HOST)
    }

    pub fn client_address(&self) -> Ipv4Addr {
        self.address(CLIENT_HOST)
    }

    /// Where the agents reach the control plane: over the bridge, as on real hosts.
    pub fn control_plane_url(&self) -> String {
        format!(
            "https://{}:{CONTROL_PLANE_PORT}",
            self.control_plane_address()
        )
    }

    /// Every host namespace (not the switch) for `nodes`, with its address and the name of its
    /// veth end in the switch.
    pub fn hosts(&self, nodes: &[String]) -> Vec<Host> {
        let mut hosts = vec![
            Host {
                namespace: self.control_plane_namespace(),
                address: self.control_plane_address(),
                port_name: "cp".to_string(),
            },
            Host {
                namespace: self.client_namespace(),
                address: self.client_address(),
                port_name: "client".to_string(),
            },
        ];
        for (index, node) in nodes.iter().enumerate() {
            hosts.push(Host {
                namespace: self.node_namespace(node),
                address: self.node_address(index),
                port_name: node.clone(),
            });
        }
        hosts
    }

    /// Every namespace of this network: the switch first, then the hosts.
    pub fn namespaces(&self, nodes: &[String]) -> Vec<String> {
        let mut namespaces = vec![self.switch()];
        namespaces.extend(self.hosts(nodes).into_iter().map(|host| host.namespace));
        namespaces
    }
}

/// A namespace on the bridge.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Host {
    pub namespace: String,
    pub address: Ipv4Addr,
    /// Its veth end in the switch namespace (`ip -n PREFIX-sw link set NAME down` cuts it off).
    pub port_name: String,
}

/// The first free `S` for 10.77.S.0/24, given the blackhole routes of the root namespace
/// (`ip -4 route show type blackhole`), trying `preferred` first (a cluster brought back up
/// keeps its addresses when it can).
pub fn choose_subnet(routes: &str, preferred: Option<u8>) -> Option<u8> {
    let taken: Vec<u8> = routes
        .lines()
        .filter_map(|line| {
            let cidr = line.split_whitespace().find(|word| word.contains('/'))?;
            let rest = cidr.strip_prefix(&format!("{}.{}.", NETWORK[0], NETWORK[1]))?;
            rest.strip_suffix(".0/24")?.parse().ok()
        })
        .collect();
    let free = |subnet: &u8| !taken.contains(subnet);
    // 0 is left alone: test-tools.md's hand-made hosts use 10.77.0.0/24.
    preferred
        .filter(free)
        .or_else(|| (1..=254).find(|subnet| free(subnet)))
}

/// Refuses early, with the reason, when namespaces cannot be made here.
pub fn check_can_create() -> Result<()> {
    if !nix::unistd::geteuid().is_root() {
        bail!(
            "--netns needs root (it creates network namespaces, veths and a route); run it as \
             root, or drop --netns for a loopback cluster"
        );
    }
    match Command::new("ip").arg("-V").output() {
        Ok(output) if output.status.success() => Ok(()),
        _ => bail!("--netns needs the `ip` command (iproute2): apt-get install iproute2"),
    }
}

fn run_ip(args: &[&str]) -> Result<Output> {
    Command::new("ip")
        .args(args)
        .output()
        .with_context(|| format!("run ip {}", args.join(" ")))
}

/// Runs `ip ARGS`, which must succeed.
fn ip(args: &[&str]) -> Result<()> {
    let output = run_ip(args)?;
    if !output.status.success() {
        bail!(
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr).trim()
        );
    }
    Ok(())
}

/// The namespaces that exist (`ip netns list`, names only).
pub fn existing_namespaces() -> Result<Vec<String>> {
    let output = run_ip(&["netns", "list"])?;
    Ok(String::from_utf8_lossy(&output.stdout)
        .lines()
        .filter_map(|line| line.split_whitespace().next())
        .map(str::to_string)
        .collect())
}

/// Whether `name` is one of the names a network with `prefix` gives its namespaces
/// (`PREFIX-sw`, `PREFIX-cp`, `PREFIX-client`, `PREFIX-nodeN`); `t-1-sw` is not one of `t`'s.
pub fn is_namespace_of(prefix: &str, name: &str) -> bool {
    let Some(rest) = name
        .strip_prefix(prefix)
        .and_then(|rest| rest.strip_prefix('-'))
    else {
        return false;
    };
    match rest.strip_prefix("node") {
        Some(number) => !number.is_empty() && number.chars().all(|c| c.is_ascii_digit()),
        None => ["sw", "cp", "client"].contains(&rest),
    }
}

/// Reserves the network for `prefix` (refused if its namespaces exist and `recorded` does not
/// say they are this cluster's): under the lock, chooses the subnet, calls `record` with the
/// network (which must make it durable) and adds the blackhole route, before anything else is
/// created.
pub fn reserve(
    prefix: &str,
    recorded: Option<&Network>,
    record: impl FnOnce(&Network) -> Result<()>,
) -> Result<Network> {
    if let Some(network) = recorded.filter(|network| network.created) {
        if network.prefix != prefix {
            bail!(
                "this cluster runs on the network namespaces {}-*; `tandem down` before starting \
                 it with --netns {prefix}",
                network.prefix
            );
        }
        // Without its route, a connection from the root namespace to a test address could
        // leave the machine, and another cluster may have been given the subnet.
        if !has_route(network)? {
            bail!(
                "the route blackhole {} of this cluster's namespaces is gone; `tandem down`, \
                 then `tandem up` again",
                network.cidr()
            );
        }
        return Ok(network.clone());
    }
    std::fs::create_dir_all("/run/tandem").context("create /run/tandem")?;
    let file = OpenOptions::new()
        .create(true)
        .truncate(false)
        .write(true)
        .open(LOCK_FILE)
        .with_context(|| format!("open {LOCK_FILE}"))?;
    let _lock = Flock::lock(file, FlockArg::LockExclusive)
        .map_err(|(_, error)| error)
        .with_context(|| format!("lock {LOCK_FILE}"))?;
    let taken: Vec<String> = existing_namespaces()?
        .into_iter()
        .filter(|name| is_namespace_of(prefix, name))
        .collect();
    if !taken.is_empty() {
        bail!(
            "--netns {prefix}: the prefix is taken, the namespaces {} exist (another cluster's, \
             or left over: `ip netns del NAME`)",
            taken.join(", ")
        );
    }
    let routes = run_ip(&["-4", "route", "show", "type", "blackhole"])?;
    let subnet = choose_subnet(
        &String::from_utf8_lossy(&routes.stdout),
        recorded.map(|network| network.subnet),
    )
    .context("every subnet of 10.77.0.0/16 is taken by another cluster's blackhole route")?;
    let network = Network {
        prefix: prefix.to_string(),
        subnet,
        created: true,
    };
    record(&network)?;
    ip(&["route", "add", "blackhole", &network.cidr()])?;
    Ok(network)
}

/// Whether the root namespace has the network's blackhole route.
fn has_route(network: &Network) -> Result<bool> {
    let cidr = network.cidr();
    let routes = run_ip(&["-4", "route", "show", "type", "blackhole", &cidr])?;
    Ok(!String::from_utf8_lossy(&routes.stdout).trim().is_empty())
}

/// Creates what is missing of the switch and the hosts for `nodes` (so a second `up`, or one
/// with more nodes, adds only the new ones).
pub fn create(network: &Network, nodes: &[String]) -> Result<()> {
    let existing = existing_namespaces()?;
    let switch = network.switch();
    if !existing.contains(&switch) {
        ip(&["netns", "add", &switch])?;
        ip(&["-n", &switch, "link", "add", "br0", "type", "bridge"])?;
        ip(&["-n", &switch, "link", "set", "br0", "up"])?;
        ip(&["-n", &switch, "link", "set", "lo", "up"])?;
    }
    for host in network.hosts(nodes) {
        if existing.contains(&host.namespace) {
            continue;
        }
        ip(&["netns", "add", &host.namespace])?;
        // Both ends are made in their namespaces: the root namespace never sees a veth.
        ip(&[
            "link",
            "add",
            &host.port_name,
            "netns",
            &switch,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            &host.namespace,
        ])?;
        ip(&[
            "-n",
            &switch,
            "link",
            "set",
            &host.port_name,
            "master",
            "br0",
        ])?;
        ip(&["-n", &switch, "link", "set", &host.port_name, "up"])?;
        let address = format!("{}/24", host.address);
        ip(&[
            "-n",
            &host.namespace,
            "addr",
            "add",
            &address,
            "dev",
            "eth0",
        ])?;
        ip(&["-n", &host.namespace, "link", "set", "eth0", "up"])?;
        ip(&["-n", &host.namespace, "link", "set", "lo", "up"])?;
    }
    Ok(())
}

/// The command that runs `program ARGS` inside `namespace`.
pub fn command_in(namespace: &str, program: &Path) -> Command {
    let mut command = Command::new("ip");
    command.args(["netns", "exec", namespace]).arg(program);
    command
}

/// Removes every process, namespace and the route of `network` (the namespaces of `nodes`, and
/// any other `PREFIX-node*` left by a failed grow). Whatever is already gone is skipped.
pub fn remove(network: &Network, nodes: &[String]) -> Result<()> {
    let existing = existing_namespaces()?;
    let mut ours = network.namespaces(nodes);
    for name in &existing {
        if is_namespace_of(&network.prefix, name) && !ours.contains(name) {
            ours.push(name.clone());
        }
    }
    // Hosts before the switch: deleting a host's namespace deletes its veth pair.
    ours.rotate_left(1);
    for namespace in ours.iter().filter(|name| existing.contains(name)) {
        kill_all_in(namespace)?;
        ip(&["netns", "del", namespace])?;
        println!("removed network namespace {namespace}");
    }
    let cidr = network.cidr();
    if has_route(network)? {
        ip(&["route", "del", "blackhole", &cidr])?;
        println!("removed the route blackhole {cidr}");
    }
    Ok(())
}

/// SIGKILLs whatever still runs in `namespace` (the processes `down` stopped by pid file are
/// gone already; these are strays: a client, a process whose pid file was lost) and waits until
/// they are gone.
fn kill_all_in(namespace: &str) -> Result<()> {
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let output = run_ip(&["netns", "pids", namespace])?;
        let pids: Vec<i32> = String::from_utf8_lossy(&output.stdout)
            .split_whitespace()
            .filter_map(|pid| pid.parse().ok())
            .filter(|pid| super::process_alive(*pid))
            .collect();
        if pids.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            bail!(
                "the processes {pids:?} in namespace {namespace} survived SIGKILL for 10s; \
                 `tandem down` again once they are gone"
            );
        }
        for pid in pids {
            println!("killing pid {pid} left in namespace {namespace}");
            let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// Moves this thread (and the threads it starts afterwards) into `namespace`'s network: its
/// sockets then connect from there (the demo's application runs as a test client does, in
/// `PREFIX-client`). Unix sockets on the file system (the control plane's) stay reachable.
pub fn enter(namespace: &str) -> Result<()> {
    let path = format!("/run/netns/{namespace}");
    let file = std::fs::File::open(&path)
        .with_context(|| format!("open {path}: is the namespace {namespace} there?"))?;
    nix::sched::setns(file, nix::sched::CloneFlags::CLONE_NEWNET)
        .with_context(|| format!("enter the network namespace {namespace}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn prefixes_are_short_lowercase_names() {
        for good in ["t", "tandem", "t-1", "a1b2c3d4"] {
            assert!(validate_prefix(good).is_ok(), "{good}");
        }
        for bad in ["", "T1", "1t", "t_1", "t-", "abcdefghi", "t.1", "t 1", "-t"] {
            let error = validate_prefix(bad).unwrap_err().to_string();
            assert!(error.contains("--netns"), "{bad}: {error}");
        }
    }

    #[test]
    fn a_prefix_owns_exactly_its_own_namespace_names() {
        let table = [
            ("t", "t-sw", true),
            ("t", "t-cp", true),
            ("t", "t-client", true),
            ("t", "t-node12", true),
            ("t", "t-node", false),
            ("t", "t-1-sw", false),
            ("t", "t-node1x", false),
            ("t", "tt-sw", false),
            ("t-1", "t-1-node1", true),
        ];
        for (prefix, name, expected) in table {
            assert_eq!(is_namespace_of(prefix, name), expected, "{prefix} {name}");
        }
    }

    #[test]
    fn the_subnet_is_the_first_free_one_or_the_one_used_before() {
        let routes = "blackhole 10.77.1.0/24 \nblackhole 10.77.3.0/24 \n\
                      blackhole 10.78.2.0/24 \nblackhole 10.77.2.0/25 \n";
        let table = [
            ("", None, Some(1)),
            (routes, None, Some(2)),
            (routes, Some(3), Some(2)),
            (routes, Some(9), Some(9)),
            ("blackhole 10.77.0.0/24", None, Some(1)),
        ];
        for (routes, preferred, expected) in table {
            assert_eq!(
                choose_subnet(routes, preferred),
                expected,
                "{routes:?} {preferred:?}"
            );
        }
        let all: String = (0..=255)
            .map(|s| format!("blackhole 10.77.{s}.0/24\n"))
            .collect();
        assert_eq!(choose_subnet(&all, None), None);
    }

    #[test]
    fn every_host_has_its_own_address_and_switch_port() {
        let network = Network {
            prefix: "t7".to_string(),
            subnet: 12,
            created: true,
        };
        let nodes = vec!["node1".to_string(), "node2".to_string()];
        let hosts: Vec<(String, String, String)> = network
            .hosts(&nodes)
            .into_iter()
            .map(|host| (host.namespace, host.address.to_string(), host.port_name))
            .collect();
        let expected = [
            ("t7-cp", "10.77.12.254", "cp"),
            ("t7-client", "10.77.12.200", "client"),
            ("t7-node1", "10.77.12.1", "node1"),
            ("t7-node2", "10.77.12.2", "node2"),
        ];
        let expected: Vec<(String, String, String)> = expected
            .iter()
            .map(|(a, b, c)| (a.to_string(), b.to_string(), c.to_string()))
            .collect();
        assert_eq!(hosts, expected);
        assert_eq!(network.cidr(), "10.77.12.0/24");
        assert_eq!(network.control_plane_url(), "https://10.77.12.254:7070");
        assert_eq!(network.namespaces(&nodes)[0], "t7-sw");
    }
}
