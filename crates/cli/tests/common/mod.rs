//! The harness of the end-to-end tests: a local cluster started with `tandem up` in a temporary
//! directory, driven only through the `tandem` command, and stopped with `tandem down`.

#![allow(dead_code)] // Each test file uses a part of it.

use std::path::Path;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

use serde_json::Value;

/// A local cluster in a temporary directory; `tandem down` when dropped.
pub struct Cluster {
    dir: tempfile::TempDir,
    /// The prefix of its network namespaces (`tandem up --netns`), if it runs on them.
    netns: Option<String>,
}

impl Cluster {
    pub fn up(nodes: usize, pool_size: &str) -> Cluster {
        Cluster::up_in(
            tempfile::tempdir().expect("a temporary directory"),
            nodes,
            pool_size,
        )
    }

    /// [`Cluster::up`] in a prepared data directory (e.g. with a small file system mounted on a
    /// node's pool directory).
    pub fn up_in(dir: tempfile::TempDir, nodes: usize, pool_size: &str) -> Cluster {
        let cluster = Cluster { dir, netns: None };
        let nodes = nodes.to_string();
        cluster.ok(&[
            "up",
            "--nodes",
            &nodes,
            "--pool-size",
            pool_size,
            "--port",
            "0",
            "--agent-timeout",
            "2s",
        ]);
        cluster
    }

    /// A cluster of `nodes` nodes with three control planes on a three-member etcd
    /// (`tandem up --ha`).
    pub fn up_ha(nodes: usize, pool_size: &str) -> Cluster {
        Cluster::up_ha_with(nodes, pool_size, &[])
    }

    /// [`Cluster::up_ha`], with `env` set for `tandem up` and the processes it starts.
    pub fn up_ha_with(nodes: usize, pool_size: &str, env: &[(&str, &str)]) -> Cluster {
        let cluster = Cluster {
            dir: tempfile::tempdir().expect("a temporary directory"),
            netns: None,
        };
        let nodes = nodes.to_string();
        cluster.ok_with(
            &[
                "up",
                "--ha",
                "--nodes",
                &nodes,
                "--pool-size",
                pool_size,
                "--port",
                "0",
                "--agent-timeout",
                "2s",
            ],
            env,
        );
        cluster
    }

    pub fn data_dir(&self) -> &Path {
        self.dir.path()
    }

    pub fn run(&self, args: &[&str]) -> Output {
        self.run_with(args, &[])
    }

    pub fn run_with(&self, args: &[&str], env: &[(&str, &str)]) -> Output {
        let mut command = Command::new(env!("CARGO_BIN_EXE_tandem"));
        command
            .args(args)
            .env("TANDEM_DATA_DIR", self.data_dir())
            .env_remove("TANDEM_SERVER")
            .env("TANDEM_LOG", "warn");
        for (key, value) in env {
            command.env(key, value);
        }
        command.output().expect("run tandem")
    }

    /// Runs `tandem ARGS`, which must succeed; its standard output.
    pub fn ok(&self, args: &[&str]) -> String {
        self.ok_with(args, &[])
    }

    /// [`Cluster::ok`] with `env` set.
    pub fn ok_with(&self, args: &[&str], env: &[(&str, &str)]) -> String {
        let output = self.run_with(args, env);
        assert!(
            output.status.success(),
            "tandem {} failed:\n{}{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout),
            String::from_utf8_lossy(&output.stderr)
        );
        String::from_utf8_lossy(&output.stdout).into_owned()
    }

    /// Runs `tandem ARGS`, which must fail with one line on standard error; that line.
    pub fn fails(&self, args: &[&str]) -> String {
        let output = self.run(args);
        let stderr = String::from_utf8_lossy(&output.stderr).into_owned();
        assert!(
            !output.status.success(),
            "tandem {} succeeded:\n{}",
            args.join(" "),
            String::from_utf8_lossy(&output.stdout)
        );
        assert_eq!(stderr.trim_end().lines().count(), 1, "one line: {stderr}");
        stderr
    }

    /// Runs `tandem ARGS` until `accept` takes its output (30 s at most).
    pub fn wait_for(&self, what: &str, args: &[&str], accept: impl Fn(&str) -> bool) -> String {
        let deadline = Instant::now() + Duration::from_secs(30);
        loop {
            let output = self.run(args);
            let stdout = String::from_utf8_lossy(&output.stdout).into_owned();
            if output.status.success() && accept(&stdout) {
                return stdout;
            }
            assert!(
                Instant::now() < deadline,
                "timed out waiting for {what}; last `tandem {}`:\n{stdout}{}",
                args.join(" "),
                String::from_utf8_lossy(&output.stderr)
            );
            std::thread::sleep(Duration::from_millis(200));
        }
    }

    pub fn json(&self, args: &[&str]) -> Value {
        let mut args = args.to_vec();
        args.extend(["-o", "json"]);
        serde_json::from_str(&self.ok(&args)).expect("tandem -o json prints JSON")
    }

    /// Pool name -> node name, for the pools of `cspc-stripe-pool`.
    pub fn pools(&self) -> Vec<(String, String)> {
        let list = self.json(&[
            "get",
            "cspi",
            "-n",
            "openebs",
            "-l",
            "openebs.io/cstor-pool-cluster=cspc-stripe-pool",
        ]);
        let mut pools: Vec<(String, String)> = items(&list)
            .iter()
            .map(|pool| {
                (
                    text(&pool["metadata"]["name"]),
                    text(&pool["spec"]["hostName"]),
                )
            })
            .collect();
        pools.sort_by(|a, b| a.1.cmp(&b.1));
        pools
    }

    pub fn pool_on(&self, node: &str) -> String {
        self.pools()
            .into_iter()
            .find(|(_, host)| host == node)
            .map(|(pool, _)| pool)
            .unwrap_or_else(|| panic!("no pool on {node}"))
    }

    pub fn cvc(&self, name: &str) -> Value {
        self.json(&["get", "cvc", name, "-n", "openebs"])
    }

    pub fn pid(&self, file: &str) -> String {
        std::fs::read_to_string(self.data_dir().join(file))
            .expect("a pid file")
            .trim()
            .to_string()
    }

    pub fn kill_9(&self, pid_file: &str) {
        let pid = self.pid(pid_file);
        let status = Command::new("kill")
            .args(["-9", &pid])
            .status()
            .expect("kill");
        assert!(status.success());
        // Wait until it is gone, so the next `up` does not find it alive.
        let deadline = Instant::now() + Duration::from_secs(10);
        while Path::new(&format!("/proc/{pid}/stat")).exists()
            && !std::fs::read_to_string(format!("/proc/{pid}/stat"))
                .unwrap_or_default()
                .contains(") Z")
        {
            assert!(Instant::now() < deadline, "pid {pid} survived kill -9");
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The end of node NODE's agent log (for a failure message).
    pub fn agent_log_tail(&self, node: &str) -> String {
        let log = self.data_dir().join("nodes").join(node).join("agent.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// Lets the pools of the (one) pool cluster promise `percent` of their capacity
    /// (`tandem.io/over-provisioning-percentage`).
    pub fn allow_over_provisioning(&self, percent: &str) {
        let cspc = rows(&self.ok(&["get", "cspc", "-n", "openebs"]))[1][0].clone();
        let patch = serde_json::json!({"metadata": {"annotations": {
            "tandem.io/over-provisioning-percentage": percent
        }}});
        self.ok(&[
            "patch",
            "cspc",
            &cspc,
            "-n",
            "openebs",
            "--type",
            "merge",
            "-p",
            &patch.to_string(),
        ]);
    }

    pub fn patch_pools(&self, volume: &str, pools: &[&str]) -> Output {
        let info: Vec<Value> = pools
            .iter()
            .map(|pool| serde_json::json!({"poolName": pool}))
            .collect();
        let patch = serde_json::json!({"spec": {"policy": {"replicaPoolInfo": info}}});
        self.run(&[
            "patch",
            "cvc",
            volume,
            "-n",
            "openebs",
            "--type",
            "merge",
            "-p",
            &patch.to_string(),
        ])
    }
}

impl Drop for Cluster {
    fn drop(&mut self) {
        let _ = self.run(&["down"]);
    }
}

pub fn items(list: &Value) -> Vec<Value> {
    list["items"].as_array().cloned().unwrap_or_default()
}

pub fn text(value: &Value) -> String {
    value.as_str().unwrap_or_default().to_string()
}

/// The table's rows, each split into its columns (header first).
pub fn rows(table: &str) -> Vec<Vec<String>> {
    table
        .lines()
        .map(|line| line.split_whitespace().map(str::to_string).collect())
        .collect()
}

pub fn columns(row: &[String]) -> Vec<&str> {
    row.iter().map(String::as_str).collect()
}

pub fn pool_info(cvc: &Value) -> (Vec<String>, Vec<String>) {
    let spec = cvc["spec"]["policy"]["replicaPoolInfo"]
        .as_array()
        .into_iter()
        .flatten()
        .map(|info| text(&info["poolName"]))
        .collect();
    let status = cvc["status"]["poolInfo"]
        .as_array()
        .into_iter()
        .flatten()
        .map(text)
        .collect();
    (spec, status)
}

pub fn bound_pools(cluster: &Cluster, volume: &str) -> Vec<String> {
    let cvc = cluster.cvc(volume);
    assert_eq!(cvc["status"]["phase"], "Bound", "{cvc}");
    let (spec, status) = pool_info(&cvc);
    assert_eq!(spec, status);
    spec
}

impl Cluster {
    pub fn uri(&self, volume: &str) -> String {
        self.ok(&["volume", "uri", volume, "-n", "openebs"])
            .trim()
            .to_string()
    }

    pub fn cvr(&self, name: &str) -> Value {
        self.json(&["get", "cvr", name, "-n", "openebs"])
    }

    /// Edits the volume's pool list to `pools`; the edit must be accepted.
    fn set_pools(&self, volume: &str, pools: &[String]) {
        let refs: Vec<&str> = pools.iter().map(String::as_str).collect();
        let output = self.patch_pools(volume, &refs);
        assert!(
            output.status.success(),
            "{}",
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Adds the pool on `node` to the volume, waits until its new replica is Healthy and the
    /// volume says it scaled; returns the new replica's name.
    pub fn add_pool(&self, volume: &str, node: &str) -> String {
        let pool = self.pool_on(node);
        let (_, mut pools) = pool_info(&self.cvc(volume));
        pools.push(pool.clone());
        self.set_pools(volume, &pools);
        let replica = format!("{volume}-{pool}");
        let count = pools.len().to_string();
        self.wait_for(
            "the new replica to be Healthy",
            &["describe", "cvc", volume, "-n", "openebs"],
            |out| out.contains(&format!("successfully scaled volume replicas to {count}")),
        );
        // The scale-up is recorded from the target's view (the CV); the replica's agent writes
        // the CVR's phase on its next status pass, which may come a moment later.
        self.wait_for(
            "the new replica's CVR to say Healthy",
            &["get", "cvr", &replica, "-n", "openebs", "-o", "json"],
            |out| {
                serde_json::from_str::<Value>(out)
                    .is_ok_and(|cvr| cvr["status"]["phase"] == "Healthy")
            },
        );
        replica
    }

    /// Removes the pool on `node` from the volume and waits until its replica is gone.
    pub fn remove_pool(&self, volume: &str, node: &str) {
        let pool = self.pool_on(node);
        let (_, mut pools) = pool_info(&self.cvc(volume));
        pools.retain(|name| *name != pool);
        self.set_pools(volume, &pools);
        let replica = format!("{volume}-{pool}");
        self.wait_for(
            "the removed replica to be gone",
            &["get", "cvr", "-n", "openebs"],
            |out| !out.contains(&replica),
        );
        let data = self
            .data_dir()
            .join("nodes")
            .join(node)
            .join("pool/replicas")
            .join(volume);
        let deadline = Instant::now() + Duration::from_secs(30);
        while data.exists() {
            assert!(
                Instant::now() < deadline,
                "{} was not removed",
                data.display()
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// The nodes holding the volume's replicas, in poolInfo order.
    pub fn replica_nodes(&self, volume: &str) -> Vec<String> {
        let pools = self.pools();
        self.cvc(volume)["status"]["poolInfo"]
            .as_array()
            .unwrap()
            .iter()
            .map(|pool| {
                pools
                    .iter()
                    .find(|(name, _)| name == pool.as_str().unwrap())
                    .map(|(_, node)| node.clone())
                    .unwrap()
            })
            .collect()
    }

    pub fn target_node(&self, volume: &str) -> String {
        let cv = self.json(&["get", "cv", volume, "-n", "openebs"]);
        cv["metadata"]["annotations"]["tandem.io/target-node"]
            .as_str()
            .expect("the target is placed")
            .to_string()
    }
}

pub fn free_node(cluster: &Cluster, volume: &str) -> String {
    let used = cluster.replica_nodes(volume);
    cluster
        .pools()
        .into_iter()
        .map(|(_, node)| node)
        .find(|node| !used.contains(node))
        .expect("a node without a replica")
}

/// Where a test's cluster runs: every process on 127.0.0.1, or each node on its own network
/// namespace (`tandem up --netns`), clients in the client namespace. A test body taking a `Net`
/// runs on both: `#[test] fn x() { x_on(Net::Loopback) }` and `fn x_on_netns()`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Net {
    Loopback,
    Netns,
}

/// Where the namespace prefixes of this test process's clusters come from.
static NETNS_CLUSTERS: std::sync::atomic::AtomicU32 = std::sync::atomic::AtomicU32::new(0);

/// A prefix no other cluster of a test running now has: `t`, this process's id and a counter,
/// in base 36 (at most 8 characters, as `tandem up --netns` wants).
pub fn unique_prefix() -> String {
    fn base36(mut value: u32, digits: usize) -> String {
        let mut text = Vec::new();
        for _ in 0..digits {
            text.push(char::from_digit(value % 36, 36).expect("a digit"));
            value /= 36;
        }
        text.iter().rev().collect()
    }
    let count = NETNS_CLUSTERS.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
    format!(
        "t{}{}",
        base36(std::process::id() % 36u32.pow(5), 5),
        base36(count % (36 * 36), 2)
    )
}

/// Whether this machine lets a test make network namespaces (root, and `ip`); if not, says why
/// on standard error (the test then passes without running: a skip).
pub fn netns_possible() -> bool {
    let root = Command::new("id")
        .arg("-u")
        .output()
        .is_ok_and(|output| String::from_utf8_lossy(&output.stdout).trim() == "0");
    if !root {
        eprintln!("skipped: a netns cluster needs root (network namespaces, veths, a route)");
        return false;
    }
    if Command::new("ip").arg("-V").output().is_err() {
        eprintln!("skipped: a netns cluster needs `ip` (iproute2); .ci/run installs it");
        return false;
    }
    true
}

/// [`Cluster::client`] for a thread that has only the prefix (`Cluster::netns_prefix`).
pub fn client_command(netns: Option<&str>, program: &str) -> Command {
    match netns {
        Some(prefix) => {
            let mut command = Command::new("ip");
            command.args(["netns", "exec", &format!("{prefix}-client"), program]);
            command
        }
        None => Command::new(program),
    }
}

/// The verifying application (`tandem workload`: it reconnects, to the next URI, after a
/// failure), in the cluster's client namespace if it has one, until told to stop.
pub struct Application {
    child: Option<Child>,
}

impl Application {
    pub fn start(cluster: &Cluster, uris: &[String]) -> Application {
        let mut command = cluster.client(env!("CARGO_BIN_EXE_tandem"));
        command
            .arg("workload")
            .args(uris)
            .args(["--blocks", "256", "--duration", "1h", "--json"])
            .env("TANDEM_LOG", "warn")
            .stdout(Stdio::piped());
        Application {
            child: Some(command.spawn().expect("start the application")),
        }
    }

    /// Stops it (SIGTERM: it flushes, then reads every block back) and returns its summary.
    pub fn finish(mut self) -> Value {
        let child = self.child.take().expect("running");
        signal("TERM", &child.id().to_string());
        let output = child.wait_with_output().expect("the application's summary");
        serde_json::from_slice(&output.stdout).unwrap_or_else(|error| {
            panic!(
                "the application printed no summary ({error}): {}",
                String::from_utf8_lossy(&output.stdout)
            )
        })
    }
}

impl Drop for Application {
    fn drop(&mut self) {
        if let Some(child) = &mut self.child {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// Verifying fio writers on a volume, one after another until stopped (at most 200): each
/// writes 32 MiB of random 4k blocks with flushes, then reads every block back and checks its
/// crc32c; a failed run fails the test.
pub struct VerifyingFio {
    stop: std::sync::Arc<std::sync::atomic::AtomicBool>,
    /// Set when dropped without `finish` (the test failed first): the run in progress then
    /// fails as its cluster goes, and says nothing (the test's own failure is the news).
    abandoned: std::sync::Arc<std::sync::atomic::AtomicBool>,
    runs: Option<std::thread::JoinHandle<u32>>,
    _dir: tempfile::TempDir,
}

impl VerifyingFio {
    pub fn start(cluster: &Cluster, uri: &str) -> VerifyingFio {
        let dir = tempfile::tempdir().unwrap();
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let abandoned = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (stopped, uri, path) = (stop.clone(), uri.to_string(), dir.path().to_path_buf());
        let given_up = abandoned.clone();
        let netns = cluster.netns_prefix().map(str::to_string);
        let runs = std::thread::spawn(move || {
            let mut runs = 0u32;
            while !stopped.load(std::sync::atomic::Ordering::SeqCst) && runs < 200 {
                let output = path.join(format!("fio-{runs}.json"));
                let (mut fio, uri) = fio_command(netns.as_deref(), &uri);
                let status = fio
                    .current_dir(&path)
                    .args([
                        "--name=verify",
                        "--ioengine=nbd",
                        &format!("--uri={uri}"),
                        "--rw=randwrite",
                        "--bs=4k",
                        "--iodepth=16",
                        "--size=32m",
                        &format!("--offset={}m", (runs % 4) * 64),
                        "--verify=crc32c",
                        "--do_verify=1",
                        "--verify_fatal=1",
                        "--verify_state_save=0",
                        "--fsync=64",
                        "--output-format=json",
                        &format!("--output={}", output.display()),
                    ])
                    .stdout(Stdio::null())
                    .stderr(Stdio::null())
                    .status()
                    .expect("fio is installed (.ci/run installs it)");
                let report: Value =
                    serde_json::from_str(&std::fs::read_to_string(&output).unwrap_or_default())
                        .unwrap_or(Value::Null);
                if given_up.load(std::sync::atomic::Ordering::SeqCst) {
                    return runs;
                }
                assert!(status.success(), "fio run {runs} failed: {report}");
                assert_eq!(report["jobs"][0]["error"], 0, "fio run {runs}: {report}");
                runs += 1;
            }
            runs
        });
        VerifyingFio {
            stop,
            abandoned,
            runs: Some(runs),
            _dir: dir,
        }
    }

    /// Stops after the run in progress; how many runs verified.
    pub fn finish(mut self) -> u32 {
        self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        let runs = self.runs.take().expect("not finished yet");
        runs.join().expect("every fio run verified")
    }
}

impl Drop for VerifyingFio {
    fn drop(&mut self) {
        if self.runs.is_some() {
            self.abandoned
                .store(true, std::sync::atomic::Ordering::SeqCst);
            self.stop.store(true, std::sync::atomic::Ordering::SeqCst);
        }
    }
}

/// fio for the volume at `uri`, in network namespace `netns`'s client namespace if given, and
/// the URI to give it. fio's nbd engine does not let a URI name local files, so for
/// `nbds://...?tls-certificates=DIR` fio runs in a mount namespace of its own in which DIR is
/// libnbd's default certificate directory for root (`/etc/pki/libnbd`), given the URI without
/// the query.
pub fn fio_command(netns: Option<&str>, uri: &str) -> (Command, String) {
    let Some((bare, dir)) = uri.split_once("?tls-certificates=") else {
        return (client_command(netns, "fio"), uri.to_string());
    };
    std::fs::create_dir_all("/etc/pki/libnbd").expect("make libnbd's certificate directory");
    let mut command = client_command(netns, "unshare");
    command.args([
        "--mount",
        "--propagation",
        "private",
        "sh",
        "-c",
        r#"mount --bind "$0" /etc/pki/libnbd && exec fio "$@""#,
        dir,
    ]);
    (command, bare.to_string())
}

impl Cluster {
    /// [`Cluster::up`] on `net`; `None` (after saying why) when namespaces cannot be made here.
    pub fn on(net: Net, nodes: usize, pool_size: &str) -> Option<Cluster> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Cluster::on_in(net, dir, nodes, pool_size)
    }

    pub fn on_in(
        net: Net,
        dir: tempfile::TempDir,
        nodes: usize,
        pool_size: &str,
    ) -> Option<Cluster> {
        match net {
            Net::Loopback => Some(Cluster::up_in(dir, nodes, pool_size)),
            Net::Netns => Cluster::up_netns_in(dir, nodes, pool_size),
        }
    }

    /// A cluster on network namespaces with a prefix of its own (`tandem up --netns`).
    pub fn up_netns(nodes: usize, pool_size: &str) -> Option<Cluster> {
        let dir = tempfile::tempdir().expect("a temporary directory");
        Cluster::up_netns_in(dir, nodes, pool_size)
    }

    pub fn up_netns_in(dir: tempfile::TempDir, nodes: usize, pool_size: &str) -> Option<Cluster> {
        if !netns_possible() {
            return None;
        }
        // Made before `up`, so a failed `up` is cleaned up by `down` on drop.
        let cluster = Cluster {
            dir,
            netns: Some(unique_prefix()),
        };
        let prefix = cluster.netns.clone().expect("a prefix");
        let nodes = nodes.to_string();
        cluster.ok(&[
            "up",
            "--netns",
            &prefix,
            "--nodes",
            &nodes,
            "--pool-size",
            pool_size,
            "--agent-timeout",
            "2s",
        ]);
        Some(cluster)
    }

    /// The prefix of its network namespaces, if it runs on them.
    pub fn netns_prefix(&self) -> Option<&str> {
        self.netns.as_deref()
    }

    /// A client program, as an application would run it: in the client namespace on a netns
    /// cluster (`ip netns exec PREFIX-client PROGRAM`), as it is on loopback.
    pub fn client(&self, program: &str) -> Command {
        client_command(self.netns.as_deref(), program)
    }

    fn netns_or_panic(&self) -> &str {
        self.netns
            .as_deref()
            .expect("a cluster on network namespaces (Cluster::up_netns)")
    }

    /// Node NODE's address on the bridge (`10.77.S.N`), from cluster.json.
    pub fn node_address(&self, node: &str) -> String {
        self.netns_or_panic();
        let recorded: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir().join("cluster.json")).expect("cluster.json"),
        )
        .expect("cluster.json is JSON");
        let subnet = recorded["netns"]["subnet"].as_u64().expect("a subnet");
        let index = recorded["nodes"]
            .as_array()
            .expect("nodes")
            .iter()
            .position(|entry| entry["name"] == node)
            .unwrap_or_else(|| panic!("no node {node}"));
        format!("10.77.{subnet}.{}", index + 1)
    }

    /// Runs `ip ARGS` (as root), which must succeed.
    fn ip(&self, args: &[&str]) {
        let output = Command::new("ip").args(args).output().expect("run ip");
        assert!(
            output.status.success(),
            "ip {} failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&output.stderr)
        );
    }

    /// Cuts node NODE off the network: its port on the bridge goes down.
    pub fn cut_link(&self, node: &str) {
        let switch = format!("{}-sw", self.netns_or_panic());
        self.ip(&["-n", &switch, "link", "set", node, "down"]);
    }

    /// Undoes [`Cluster::cut_link`].
    pub fn heal_link(&self, node: &str) {
        let switch = format!("{}-sw", self.netns_or_panic());
        self.ip(&["-n", &switch, "link", "set", node, "up"]);
    }

    /// Node NODE drops every packet from node FROM (a one-way partition: NODE still sends to
    /// FROM), with an nft rule inside NODE's namespace.
    pub fn drop_from(&self, node: &str, from: &str) {
        let source = self.node_address(from);
        self.nft_input_rule(node, &format!("ip saddr {source} drop"));
    }

    /// Node NODE loses `percent` % of the packets it receives, at random (a lossy link: TCP
    /// retransmits, so its traffic slows and stalls rather than fails). There is no netem in
    /// this kernel; nft's `numgen random` does the loss. Healed by [`Cluster::heal_drops`].
    pub fn lose_packets(&self, node: &str, percent: u32) {
        assert!(percent <= 100, "a percentage");
        self.nft_input_rule(node, &format!("numgen random mod 100 < {percent} drop"));
    }

    /// Node NODE's link gets slow: what it sends is held to `mbit` Mbit/s and queues up to
    /// 300 ms (a tbf qdisc on its interface: congestion, with the delay it brings; there is no
    /// netem here for a fixed delay). Healed by [`Cluster::heal_slow_link`].
    pub fn slow_link(&self, node: &str, mbit: u32) {
        let namespace = format!("{}-{node}", self.netns_or_panic());
        let rate = format!("{mbit}mbit");
        self.ip(&[
            "netns", "exec", &namespace, "tc", "qdisc", "add", "dev", "eth0", "root", "tbf",
            "rate", &rate, "burst", "32kbit", "latency", "300ms",
        ]);
    }

    /// Undoes [`Cluster::slow_link`].
    pub fn heal_slow_link(&self, node: &str) {
        let namespace = format!("{}-{node}", self.netns_or_panic());
        self.ip(&[
            "netns", "exec", &namespace, "tc", "qdisc", "del", "dev", "eth0", "root",
        ]);
    }

    /// Adds `rule` to the input chain of node NODE's test table (created if missing).
    fn nft_input_rule(&self, node: &str, rule: &str) {
        let namespace = format!("{}-{node}", self.netns_or_panic());
        let script = format!(
            "add table inet tandem-test\n\
             add chain inet tandem-test input {{ type filter hook input priority 0; }}\n\
             add rule inet tandem-test input {rule}\n"
        );
        let mut nft = Command::new("ip")
            .args(["netns", "exec", &namespace, "nft", "-f", "-"])
            .stdin(std::process::Stdio::piped())
            .spawn()
            .expect("nft is installed (.ci/run installs nftables)");
        use std::io::Write;
        nft.stdin
            .take()
            .expect("nft's input")
            .write_all(script.as_bytes())
            .expect("write the nft rules");
        assert!(nft.wait().expect("nft").success(), "nft -f failed");
    }

    /// A program run inside node NODE's namespace (`ip netns exec PREFIX-NODE PROGRAM`), e.g. to
    /// look at its sockets or to reach another node from there.
    pub fn in_node(&self, node: &str, program: &str) -> Command {
        let mut command = Command::new("ip");
        command.args([
            "netns",
            "exec",
            &format!("{}-{node}", self.netns_or_panic()),
            program,
        ]);
        command
    }

    /// Removes every drop rule [`Cluster::drop_from`] added in node NODE.
    pub fn heal_drops(&self, node: &str) {
        let namespace = format!("{}-{node}", self.netns_or_panic());
        // Absent when nothing was dropped: not an error.
        let _ = Command::new("ip")
            .args([
                "netns",
                "exec",
                &namespace,
                "nft",
                "delete",
                "table",
                "inet",
                "tandem-test",
            ])
            .output();
    }
}

// ---------------------------------------------------------------------------------------------
// Node loss and failover (tests/failover.rs)

impl Cluster {
    /// Creates volume `name` of `size` with one replica on each of `pools`, in that order (a
    /// CVC whose spec names its pools, as `tandem create -f` takes it), and waits until Bound.
    pub fn create_volume_on(&self, name: &str, size: &str, pools: &[String]) {
        let pool_lines: String = pools
            .iter()
            .map(|pool| format!("    - poolName: {pool}\n"))
            .collect();
        let manifest = format!(
            "apiVersion: cstor.openebs.io/v1\nkind: CStorVolumeConfig\nmetadata:\n  name: \
             {name}\n  namespace: openebs\n  labels:\n    openebs.io/cstor-pool-cluster: \
             cspc-stripe-pool\nspec:\n  capacity:\n    storage: {size}\n  provision:\n    \
             capacity:\n      storage: {size}\n    replicaCount: {}\n  policy:\n    \
             replicaPoolInfo:\n{pool_lines}",
            pools.len()
        );
        let file = self.data_dir().join(format!("{name}.yaml"));
        std::fs::write(&file, manifest).expect("write the manifest");
        self.ok(&["create", "-f", file.to_str().expect("a UTF-8 path")]);
        self.wait_for(
            &format!("volume {name} to be Bound"),
            &["get", "cvc", name, "-n", "openebs"],
            |out| out.contains("Bound"),
        );
    }

    /// The volume's CStorVolume.
    pub fn cv(&self, volume: &str) -> Value {
        self.json(&["get", "cv", volume, "-n", "openebs"])
    }

    /// The generation of the volume's newest target (0 before the first).
    pub fn target_generation(&self, volume: &str) -> u64 {
        text(&self.cv(volume)["metadata"]["annotations"]["tandem.io/target-generation"])
            .parse()
            .unwrap_or(0)
    }

    /// Restarts only the control plane (not the agents, as `tandem up` would), with the port
    /// and agent timeout `up` recorded; `tandem down` stops it like the first.
    // The control plane outlives this call, as `up` leaves it; `down` stops it, and the test
    // process reaps it when it ends.
    #[allow(clippy::zombie_processes)]
    pub fn restart_control_plane(&self) {
        use std::os::unix::process::CommandExt;
        let recorded: Value = serde_json::from_str(
            &std::fs::read_to_string(self.data_dir().join("cluster.json")).expect("cluster.json"),
        )
        .expect("cluster.json is JSON");
        let directory = self.data_dir().join("control-plane");
        let _ = std::fs::remove_file(directory.join("address"));
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(directory.join("control-plane.log"))
            .expect("open the control plane's log");
        let child = Command::new(env!("CARGO_BIN_EXE_tandem"))
            .args([
                "control-plane",
                "--data-dir",
                self.data_dir().to_str().expect("a UTF-8 path"),
                "--listen",
                &format!("127.0.0.1:{}", recorded["port"]),
                "--agent-timeout",
                &text(&recorded["agentTimeout"]),
            ])
            .env_remove("TANDEM_SERVER")
            .stdin(std::process::Stdio::null())
            .stdout(log.try_clone().expect("share the log"))
            .stderr(log)
            .process_group(0)
            .spawn()
            .expect("start the control plane");
        std::fs::write(
            directory.join("control-plane.pid"),
            format!("{}\n", child.id()),
        )
        .expect("write the pid file");
        self.wait_for(
            "the control plane to answer",
            &["get", "cspc", "-n", "openebs"],
            |_| true,
        );
    }

    /// The end of the control plane's log (for a failure message).
    pub fn control_plane_log_tail(&self) -> String {
        let log = self.data_dir().join("control-plane/control-plane.log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }
}

// ---------------------------------------------------------------------------------------------
// Signals and bounded clients (tests/failover.rs, fencing.rs, nemesis.rs)

/// Sends signal NAME (`STOP`, `CONT`, `TERM`) to process PID, which must exist.
pub fn signal(name: &str, pid: &str) {
    let status = Command::new("kill")
        .args([&format!("-{name}"), pid])
        .status()
        .expect("kill");
    assert!(status.success(), "kill -{name} {pid}");
}

/// qemu's arguments naming the image at `uri`: `-f raw URI` for `nbd://`; for
/// `nbds://H:P/E?tls-certificates=DIR` (qemu takes no nbds URI) the X.509 credentials object and
/// `--image-opts` with them.
pub fn qemu_image(uri: &str) -> Vec<String> {
    let Some(rest) = uri.strip_prefix("nbds://") else {
        return vec!["-f".into(), "raw".into(), uri.into()];
    };
    let (rest, dir) = rest
        .split_once("?tls-certificates=")
        .unwrap_or_else(|| panic!("{uri}: no tls-certificates"));
    let (authority, export) = rest.split_once('/').expect("an export");
    let (host, port) = authority.rsplit_once(':').expect("a port");
    vec![
        "--object".into(),
        format!("tls-creds-x509,id=tls0,endpoint=client,dir={dir}"),
        "--image-opts".into(),
        format!("driver=nbd,host={host},port={port},export={export},tls-creds=tls0"),
    ]
}

/// The `--object` argument and the `--image-opts` text of `nbds://` `uri` (`None` for `nbd://`),
/// for tools that take several images or extra options.
pub fn qemu_tls_image(uri: &str) -> Option<(String, String)> {
    let args = qemu_image(uri);
    (args[0] == "--object").then(|| (args[1].clone(), args[3].clone()))
}

/// qemu-io's arguments: `commands` against the image at `uri` (see [`qemu_image`]).
pub fn qemu_io_args(uri: &str, commands: &[&str]) -> Vec<String> {
    let mut image = qemu_image(uri);
    let last = image.pop().expect("an image");
    let mut args = image;
    for command in commands {
        args.extend(["-c".to_string(), command.to_string()]);
    }
    args.push(last);
    args
}

/// Runs qemu-io `commands` against `uri`: `Ok` with its output if it connected and every
/// command succeeded, `Err` with its output otherwise. A failed pattern check fails the test.
/// Bounded: an endpoint on a paused node accepts connections and never answers.
pub fn try_qemu_io(uri: &str, commands: &[&str]) -> Result<String, String> {
    let output = Command::new("timeout")
        .args(["--kill-after=5", "30", "qemu-io"])
        .args(qemu_io_args(uri, commands))
        .output()
        .unwrap_or_else(|error| panic!("qemu-io is not installed ({error}); .ci/run installs it"));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    assert!(!text.contains("Pattern verification failed"), "{text}");
    if output.status.success()
        && !text.to_lowercase().contains("error")
        && !text.contains("can't open")
    {
        Ok(text)
    } else {
        Err(text)
    }
}

/// An HTTP client of the control plane of the cluster in `data_dir`, showing its admin
/// credential (`DIR/pki/users/admin.crt`) and trusting only its CA.
pub fn api_client(data_dir: &Path) -> reqwest::Client {
    let pki = data_dir.join("pki");
    let ca = std::fs::read_to_string(pki.join("ca.crt")).expect("the cluster's CA");
    let admin =
        tandem_pki::Credential::load(&pki.join("users/admin.crt"), &pki.join("users/admin.key"))
            .expect("the admin credential");
    let config = tandem_pki::client_config(&ca, Some(&admin)).expect("a TLS client set-up");
    reqwest::Client::builder()
        .use_preconfigured_tls(config)
        .timeout(Duration::from_secs(30))
        .build()
        .expect("an HTTPS client")
}
