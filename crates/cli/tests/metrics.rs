//! Metrics end to end: a cluster started with `tandem up`, scraped at the URLs `tandem metrics`
//! prints while real clients write and a replica moves. The values must move as the data path
//! says (the bytes written, counted once whichever node's endpoint the client used; a refused
//! edit; a rebuild's progress, monotone up to its size; the new replica's mode), and `promtool
//! check metrics` must accept every scrape (skipped, saying so, when promtool is missing).

mod common;

use std::collections::BTreeMap;
use std::io::Write;
use std::process::{Command, Stdio};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use common::*;

const MIB: f64 = (1 << 20) as f64;

/// Scrapes over HTTP(S) with the cluster's admin credential (reqwest on a runtime of its own,
/// so a test thread can use it).
struct Scraper {
    runtime: tokio::runtime::Runtime,
    client: reqwest::Client,
}

impl Scraper {
    fn new(cluster: &Cluster) -> Scraper {
        Scraper {
            runtime: tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
                .expect("a runtime"),
            client: api_client(cluster.data_dir()),
        }
    }

    /// The text at `url`, which must be Prometheus' text format.
    fn scrape(&self, url: &str) -> String {
        self.runtime.block_on(async {
            let response = self
                .client
                .get(url)
                .send()
                .await
                .unwrap_or_else(|error| panic!("scrape {url}: {error}"));
            assert_eq!(response.status(), 200, "{url}");
            let content_type = response.headers()["content-type"].to_str().unwrap();
            assert!(
                content_type.starts_with("text/plain; version=0.0.4"),
                "{url}: {content_type}"
            );
            response.text().await.expect("a body")
        })
    }
}

impl Scraper {
    /// `url` (an agent's metrics) answers nothing to a client showing no certificate (which
    /// trusts the cluster's CA), nor over plain HTTP.
    fn refused(&self, url: &str, cluster: &Cluster) {
        let ca = std::fs::read_to_string(cluster.data_dir().join("pki/ca.crt")).unwrap();
        let anonymous = reqwest::Client::builder()
            .use_preconfigured_tls(tandem_pki::client_config(&ca, None).unwrap())
            .timeout(Duration::from_secs(30))
            .build()
            .unwrap();
        let plain = url.replacen("https://", "http://", 1);
        for (client, url) in [(&anonymous, url), (&self.client, plain.as_str())] {
            let answer = self
                .runtime
                .block_on(async { client.get(url).send().await });
            assert!(answer.is_err(), "{url} answered {answer:?}");
        }
    }
}

/// `promtool check metrics` accepts `text`; `false` when promtool is not installed.
fn promtool_accepts(text: &str, from: &str) -> bool {
    let Ok(mut child) = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
    else {
        return false;
    };
    child
        .stdin
        .take()
        .expect("promtool's input")
        .write_all(text.as_bytes())
        .expect("write to promtool");
    let output = child.wait_with_output().expect("promtool");
    assert!(
        output.status.success(),
        "promtool check metrics refused the scrape of {from}:\n{}{}\n{text}",
        String::from_utf8_lossy(&output.stdout),
        String::from_utf8_lossy(&output.stderr)
    );
    true
}

/// Every sample of `name` in `text` whose labels include `labels`: (its labels, its value).
fn samples(
    text: &str,
    name: &str,
    labels: &[(&str, &str)],
) -> Vec<(BTreeMap<String, String>, f64)> {
    text.lines()
        .filter(|line| !line.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (series_name, series_labels) = match series.split_once('{') {
                Some((series_name, rest)) => (series_name, parse_labels(rest.strip_suffix('}')?)),
                None => (series, BTreeMap::new()),
            };
            let wanted = series_name == name
                && labels.iter().all(|(key, value)| {
                    series_labels.get(*key).map(String::as_str) == Some(*value)
                });
            wanted.then(|| (series_labels, value.parse().expect("a number")))
        })
        .collect()
}

/// `a="x",b="y"` (our values hold no quotes or commas).
fn parse_labels(text: &str) -> BTreeMap<String, String> {
    text.split("\",")
        .filter_map(|pair| {
            let (key, value) = pair.split_once("=\"")?;
            Some((key.to_string(), value.trim_end_matches('"').to_string()))
        })
        .collect()
}

/// The one sample of `name` with `labels` in `text`, if there is one.
fn value(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    let found = samples(text, name, labels);
    assert!(found.len() <= 1, "several {name} {labels:?}: {found:?}");
    found.first().map(|(_, value)| *value)
}

/// Where `tandem metrics` says each process serves its metrics: name -> URL.
fn metrics_urls(cluster: &Cluster) -> BTreeMap<String, String> {
    cluster
        .ok(&["metrics"])
        .lines()
        .map(|line| {
            let words: Vec<&str> = line.split_whitespace().collect();
            assert_eq!(words.len(), 2, "{line}");
            (words[0].to_string(), words[1].to_string())
        })
        .collect()
}

fn qemu_io(uri: &str, commands: &[&str]) {
    if let Err(output) = try_qemu_io(uri, commands) {
        panic!("qemu-io {commands:?} failed:\n{output}");
    }
}

/// The cluster's metrics follow what happens to a volume: client writes through two nodes'
/// endpoints, a refused edit, a rebuild onto a third node, the old replica's removal.
#[test]
fn metrics_follow_writes_refusals_and_a_migration() {
    let cluster = Cluster::up(3, "1G");
    let scraper = Scraper::new(&cluster);
    let urls = metrics_urls(&cluster);
    let names: Vec<&str> = urls.keys().map(String::as_str).collect();
    assert_eq!(
        names,
        ["control-plane", "node1", "node2", "node3"],
        "{urls:?}"
    );
    let mut promtool = true;
    for (name, url) in &urls {
        assert!(
            url.starts_with("https://127.0.0.1:") && url.ends_with("/metrics"),
            "{url}"
        );
        promtool &= promtool_accepts(&scraper.scrape(url), name);
    }
    // Without a certificate of the cluster's CA, or without TLS, an agent shows nothing.
    scraper.refused(&urls["node1"], &cluster);
    if !promtool {
        eprintln!(
            "skipped: promtool is not installed, so scrapes are not checked with `promtool check \
             metrics` (.ci/run installs the prometheus package)"
        );
    }
    let check = |text: &str, from: &str| {
        if promtool {
            promtool_accepts(text, from);
        }
    };
    // Each agent reports its pool.
    for node in ["node1", "node2", "node3"] {
        let text = scraper.scrape(&urls[node]);
        let pool = cluster.pool_on(node);
        let labels = [("pool", pool.as_str()), ("node", node)];
        assert_eq!(
            value(&text, "tandem_pool_capacity_bytes", &labels),
            Some(1e9),
            "{text}"
        );
        assert_eq!(value(&text, "tandem_pool_read_only", &labels), Some(0.0));
    }

    cluster.ok(&[
        "volume",
        "create",
        "vol-m",
        "--size",
        "128Mi",
        "--replicas",
        "2",
    ]);
    cluster.wait_for(
        "vol-m's target to be placed",
        &["get", "cv", "vol-m", "-n", "openebs", "-o", "json"],
        |out| out.contains("tandem.io/target-node"),
    );
    let target = cluster.target_node("vol-m");
    let target_url = &urls[&target];
    let volume = [("volume", "vol-m")];
    let healthy = [("volume", "vol-m"), ("status", "Healthy")];
    let deadline = Instant::now() + Duration::from_secs(30);
    while scraper.scrape(target_url).lines().all(|line| {
        !line.starts_with("tandem_volume_status{volume=\"vol-m\",status=\"Healthy\"} 1")
    }) {
        assert!(
            Instant::now() < deadline,
            "vol-m never Healthy in the metrics of {target}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    let text = scraper.scrape(target_url);
    check(&text, &target);
    assert_eq!(value(&text, "tandem_volume_status", &healthy), Some(1.0));
    assert_eq!(
        value(&text, "tandem_volume_replication_factor", &volume),
        Some(2.0)
    );
    assert_eq!(
        value(&text, "tandem_volume_consistency_factor", &volume),
        Some(2.0)
    );
    assert_eq!(value(&text, "tandem_volume_generation", &volume), Some(1.0));

    // Writes through the target's own node and through another node's endpoint (forwarded):
    // each byte is counted once, on the target's node.
    let written = |text: &str| value(text, "tandem_volume_written_bytes_total", &volume);
    let writes = |text: &str| {
        value(
            text,
            "tandem_volume_operations_total",
            &[("volume", "vol-m"), ("op", "write")],
        )
    };
    let before = scraper.scrape(target_url);
    let (written_before, writes_before) = (written(&before).unwrap(), writes(&before).unwrap());
    let other = ["node1", "node2", "node3"]
        .into_iter()
        .find(|node| *node != target)
        .unwrap();
    let uri_of = |node: &str| {
        cluster
            .ok(&["volume", "uri", "vol-m", "-n", "openebs", "--node", node])
            .trim()
            .to_string()
    };
    qemu_io(&uri_of(&target), &["write -P 0x5a 0 8M", "flush"]);
    qemu_io(&uri_of(other), &["write -P 0x6b 16M 4M", "flush"]);
    let after = scraper.scrape(target_url);
    check(&after, &target);
    assert_eq!(
        written(&after).unwrap() - written_before,
        12.0 * MIB,
        "8 MiB through {target} and 4 MiB through {other}"
    );
    assert!(writes(&after).unwrap() >= writes_before + 2.0);
    let latency_count = value(
        &after,
        "tandem_volume_operation_duration_seconds_count",
        &[("volume", "vol-m"), ("op", "write")],
    );
    assert_eq!(latency_count, writes(&after), "every write has a latency");
    for node in ["node1", "node2", "node3"]
        .into_iter()
        .filter(|n| *n != target)
    {
        let text = scraper.scrape(&urls[node]);
        assert_eq!(written(&text), None, "{node} runs no target of vol-m");
    }

    // A refused edit (a pool that does not exist) is an admission refusal.
    let refusals = |text: &str| {
        value(
            text,
            "tandem_admission_refusals_total",
            &[("kind", "CStorVolumeConfig")],
        )
        .unwrap_or(0.0)
    };
    let refused_before = refusals(&scraper.scrape(&urls["control-plane"]));
    let (_, pools) = pool_info(&cluster.cvc("vol-m"));
    let mut typo: Vec<&str> = pools.iter().map(String::as_str).collect();
    typo.push("pool-typo");
    assert!(!cluster.patch_pools("vol-m", &typo).status.success());
    let control_plane = scraper.scrape(&urls["control-plane"]);
    check(&control_plane, "control-plane");
    assert_eq!(refusals(&control_plane), refused_before + 1.0);
    let refused_patches = samples(
        &control_plane,
        "tandem_api_requests_total",
        &[
            ("verb", "patch"),
            ("resource", "cstorvolumeconfigs"),
            ("code", "400"),
        ],
    );
    assert_eq!(refused_patches.len(), 1, "{control_plane}");
    assert!(refused_patches[0].1 >= 1.0);
    for node in ["node1", "node2", "node3"] {
        assert_eq!(
            value(&control_plane, "tandem_node_ready", &[("node", node)]),
            Some(1.0)
        );
    }
    assert_eq!(
        value(
            &control_plane,
            "tandem_objects",
            &[("kind", "CStorVolumeReplica")]
        ),
        Some(2.0)
    );

    // A migration: a replica added on the third node is rebuilt (scraped all along), then the
    // old one removed.
    let free = free_node(&cluster, "vol-m");
    let old = cluster.replica_nodes("vol-m");
    let sampling = Arc::new(AtomicBool::new(true));
    let sampler = {
        let (sampling, url) = (Arc::clone(&sampling), target_url.clone());
        let scraper = Scraper::new(&cluster);
        std::thread::spawn(move || {
            let mut texts = Vec::new();
            let deadline = Instant::now() + Duration::from_secs(120);
            while sampling.load(Ordering::SeqCst) && Instant::now() < deadline {
                texts.push(scraper.scrape(&url));
                std::thread::sleep(Duration::from_millis(50));
            }
            texts
        })
    };
    let new_cvr = cluster.add_pool("vol-m", &free);
    sampling.store(false, Ordering::SeqCst);
    let mut texts = sampler.join().expect("the sampler");
    let new_pool = cluster.pool_on(&free);
    let new_id = common::text(&cluster.cvr(&new_cvr)["spec"]["replicaid"]);
    assert!(!new_id.is_empty(), "{new_cvr} has a replica id");
    let replica = [("volume", "vol-m"), ("replica", new_id.as_str())];
    // The last scrape is after the new replica was Healthy.
    texts.push(scraper.scrape(target_url));
    // (ejections so far, bytes done) in every scrape that shows the new replica: progress
    // only goes back if the replica was ejected (its rebuild then starts over; a loaded machine
    // may time a replica out).
    let mut progress = Vec::new();
    for sample in &texts {
        check(sample, &target);
        let done = value(sample, "tandem_replica_resync_done_bytes", &replica);
        let size = value(sample, "tandem_replica_resync_size_bytes", &replica);
        let ejections = value(sample, "tandem_replica_ejections_total", &replica);
        if let (Some(done), Some(size), Some(ejections)) = (done, size, ejections) {
            assert!(done <= size || size == 0.0, "done {done} of {size}");
            progress.push((ejections, done));
        }
    }
    assert!(
        progress
            .windows(2)
            .all(|pair| pair[0].1 <= pair[1].1 || pair[0].0 < pair[1].0),
        "rebuild progress went back without an ejection: {progress:?}"
    );
    let last = texts.last().expect("a scrape");
    let size = value(last, "tandem_replica_resync_size_bytes", &replica).unwrap();
    assert!(
        size >= 12.0 * MIB,
        "the rebuild copies every region written: {size}"
    );
    assert_eq!(
        value(last, "tandem_replica_resync_done_bytes", &replica),
        Some(size)
    );
    assert_eq!(
        value(last, "tandem_replica_resync_running", &replica),
        Some(0.0)
    );
    assert_eq!(
        value(last, "tandem_replica_resync_full", &replica),
        Some(1.0)
    );
    let copied = value(last, "tandem_replica_resync_copied_bytes_total", &replica).unwrap();
    assert!(copied >= size, "copied {copied} of {size}");
    let mode = |name: &str| {
        value(
            last,
            "tandem_replica_mode",
            &[("volume", "vol-m"), ("replica", &new_id), ("mode", name)],
        )
    };
    assert_eq!(mode("Healthy"), Some(1.0), "{last}");
    assert_eq!(mode("ReconstructingNewReplica"), Some(0.0));
    let pools_of_new: Vec<String> = samples(last, "tandem_replica_mode", &replica)
        .into_iter()
        .map(|(labels, _)| labels["pool"].clone())
        .collect();
    assert!(
        pools_of_new.iter().all(|pool| *pool == new_pool),
        "{pools_of_new:?}"
    );
    assert_eq!(
        value(last, "tandem_volume_replication_factor", &volume),
        Some(3.0)
    );

    // The replica away from the target's node goes, so the target stays where it is scraped.
    let leaving = old.iter().find(|node| **node != target).unwrap_or(&old[0]);
    cluster.remove_pool("vol-m", leaving);
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let text = scraper.scrape(target_url);
        let members = samples(&text, "tandem_replica_ejections_total", &volume).len();
        if value(&text, "tandem_volume_replication_factor", &volume) == Some(2.0) && members == 2 {
            check(&text, &target);
            break;
        }
        assert!(
            Instant::now() < deadline,
            "the removed replica is still reported:\n{text}"
        );
        std::thread::sleep(Duration::from_millis(100));
    }
    // What was written is all there after the move.
    qemu_io(
        &uri_of(&target),
        &["read -P 0x5a 0 8M", "read -P 0x6b 16M 4M"],
    );
}
