//! The etcd cluster of `tandem up --ha`: three `etcd` processes (Debian's etcd-server) on
//! loopback ports chosen once, each with its data, log and pid file under `DIR/etcd/NAME/`.
//! They are started before the control planes and stopped after them.

use std::fs::OpenOptions;
use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

use anyhow::{bail, Context, Result};
use serde::{Deserialize, Serialize};
use tandem_store::election;

use crate::control_plane::write_atomically;
use crate::wait::{wait_for, Deadline, Probe};

/// The etcd members of an HA cluster.
pub const MEMBERS: usize = 3;
/// The key prefix the cluster's control planes share in etcd.
pub const PREFIX: &str = "/tandem";

/// One etcd member: its name and the loopback ports it serves clients and peers on.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Member {
    pub name: String,
    pub client_port: u16,
    pub peer_port: u16,
}

impl Member {
    pub fn client_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.client_port)
    }

    fn peer_url(&self) -> String {
        format!("http://127.0.0.1:{}", self.peer_port)
    }

    fn dir(&self, data_dir: &Path) -> PathBuf {
        data_dir.join("etcd").join(&self.name)
    }

    pub fn pid_file(&self, data_dir: &Path) -> PathBuf {
        self.dir(data_dir).join("etcd.pid")
    }
}

/// The store location the control planes are given: `etcd://H:P,H:P,H:P/PREFIX`.
pub fn store_location(members: &[Member]) -> String {
    let hosts: Vec<String> = members
        .iter()
        .map(|member| format!("127.0.0.1:{}", member.client_port))
        .collect();
    format!("etcd://{}{PREFIX}", hosts.join(","))
}

/// Every member's client URL.
pub fn client_urls(members: &[Member]) -> Vec<String> {
    members.iter().map(Member::client_url).collect()
}

/// Starts the members that are not running and waits until every member is healthy.
/// `running` says whether a pid file names a live etcd.
pub async fn start(
    data_dir: &Path,
    members: &[Member],
    running: impl Fn(&Path) -> Option<i32>,
    timeout: Duration,
) -> Result<()> {
    if Command::new("etcd").arg("--version").output().is_err() {
        bail!("--ha runs etcd, which is not installed (Debian: apt-get install etcd-server)");
    }
    let cluster: Vec<String> = members
        .iter()
        .map(|member| format!("{}={}", member.name, member.peer_url()))
        .collect();
    let cluster = cluster.join(",");
    for member in members {
        let pid_file = member.pid_file(data_dir);
        if let Some(pid) = running(&pid_file) {
            println!("etcd {} already running (pid {pid})", member.name);
            continue;
        }
        let dir = member.dir(data_dir);
        std::fs::create_dir_all(&dir).with_context(|| format!("create {}", dir.display()))?;
        let log = dir.join("etcd.log");
        let log_file = OpenOptions::new()
            .create(true)
            .append(true)
            .open(&log)
            .with_context(|| format!("open {}", log.display()))?;
        let (client, peer) = (member.client_url(), member.peer_url());
        // On a restart etcd finds its data directory and ignores the initial-cluster flags.
        let child = Command::new("etcd")
            .args(["--name", &member.name, "--data-dir"])
            .arg(dir.join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args([
                "--initial-cluster",
                &cluster,
                "--initial-cluster-state",
                "new",
            ])
            .args(["--initial-cluster-token", "tandem"])
            .stdin(Stdio::null())
            .stdout(log_file.try_clone().context("share the log file")?)
            .stderr(log_file)
            .process_group(0)
            .spawn()
            .with_context(|| format!("start etcd {}", member.name))?;
        write_atomically(&pid_file, &format!("{}\n", child.id()))?;
        println!(
            "started etcd {} (pid {}) at {client}",
            member.name,
            child.id()
        );
    }
    let urls = client_urls(members);
    let deadline = Deadline::after(timeout).polling_every(Duration::from_millis(200));
    wait_for(deadline, "etcd is not healthy", async || {
        let members = match election::members(&urls, Duration::from_secs(1)).await {
            Ok(members) => members,
            Err(error) => return Ok::<_, anyhow::Error>(Probe::Waiting(error.to_string())),
        };
        let sick: Vec<String> = members
            .iter()
            .filter(|member| !member.healthy)
            .map(|member| {
                let why = member.error.as_deref().unwrap_or("not healthy");
                format!("{}: {why}", member.name)
            })
            .collect();
        if members.len() == MEMBERS && sick.is_empty() {
            Ok(Probe::Done(()))
        } else {
            Ok(Probe::Waiting(format!(
                "{} of {MEMBERS} members healthy ({}); logs under {}",
                members.len() - sick.len(),
                sick.join("; "),
                data_dir.join("etcd").display()
            )))
        }
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_store_location_names_every_member_and_the_prefix() {
        let members: Vec<Member> = (1..=3)
            .map(|n| Member {
                name: format!("etcd{n}"),
                client_port: 2000 + n,
                peer_port: 3000 + n,
            })
            .collect();
        assert_eq!(
            store_location(&members),
            "etcd://127.0.0.1:2001,127.0.0.1:2002,127.0.0.1:2003/tandem"
        );
        assert_eq!(client_urls(&members)[2], "http://127.0.0.1:2003");
    }
}
