//! `tandem kubeconfig`: a kubeconfig for the cluster, so the real `kubectl` talks to its control
//! plane (`KUBECONFIG=<(tandem kubeconfig) kubectl get cspc`). It stays the way to reach the
//! cluster when credentials come. With several control planes (`tandem up --ha`) it has one
//! context per control plane (`tandem`, `tandem-2`, ...), the current one being the first that
//! accepts a connection now; kubectl itself does not move between servers, so when that one is
//! gone run `tandem kubeconfig` again or pick another with `kubectl --context`.
//!
//! For control planes served over HTTPS it embeds the cluster's CA and the admin credential
//! (the data directory's, or `--ca`, `--certificate`, `--key`): treat its output as the key it
//! contains.

use anyhow::{bail, Context, Result};
use clap::Args;

use crate::server::ServerArgs;

#[derive(Args, Debug)]
pub struct KubeconfigArgs {
    #[command(flatten)]
    server: ServerArgs,
    /// The namespace kubectl uses when none is given.
    #[arg(long, default_value = "openebs")]
    namespace: String,
}

pub fn run(args: KubeconfigArgs) -> Result<bool> {
    let addresses = args.server.address()?;
    let servers: Vec<&str> = addresses.split(',').map(str::trim).collect();
    for address in &servers {
        if !(address.starts_with("http://") || address.starts_with("https://")) {
            bail!(
                "the control plane is reached at {address}, which kubectl cannot use; give its \
                 HTTP address with --server (on a `tandem up --netns` cluster, from inside its \
                 namespaces: http://10.77.S.254:7070)"
            );
        }
    }
    let user = match args.server.credential_files() {
        Some((ca, certificate, key)) => {
            let read = |path: &std::path::Path| {
                std::fs::read(path).with_context(|| format!("read {}", path.display()))
            };
            Some(User {
                ca: read(&ca)?,
                certificate: read(&certificate)?,
                key: read(&key)?,
            })
        }
        None if servers.iter().any(|server| server.starts_with("https://")) => bail!(
            "the control plane is served over HTTPS, and no credential was found for kubectl: \
             give --ca, --certificate and --key, or the cluster's --data-dir"
        ),
        None => None,
    };
    let current = servers
        .iter()
        .position(|server| accepts_connections(server))
        .unwrap_or(0);
    print!(
        "{}",
        kubeconfig(&servers, current, &args.namespace, user.as_ref())
    );
    Ok(true)
}

/// The credential kubectl shows (PEM files' contents).
struct User {
    ca: Vec<u8>,
    certificate: Vec<u8>,
    key: Vec<u8>,
}

/// Whether something listens at the HTTP address `server` (within a second).
fn accepts_connections(server: &str) -> bool {
    use std::net::ToSocketAddrs;
    let host = server
        .split_once("://")
        .map_or(server, |(_, rest)| rest)
        .split('/')
        .next()
        .unwrap_or_default();
    let Ok(mut addresses) = host.to_socket_addrs() else {
        return false;
    };
    addresses.any(|address| {
        std::net::TcpStream::connect_timeout(&address, std::time::Duration::from_secs(1)).is_ok()
    })
}

/// The context (and cluster) name of control plane `index`: `tandem`, then `tandem-2`, ...
fn context_name(index: usize) -> String {
    match index {
        0 => "tandem".to_string(),
        _ => format!("tandem-{}", index + 1),
    }
}

fn kubeconfig(servers: &[&str], current: usize, namespace: &str, user: Option<&User>) -> String {
    use base64::Engine;
    let encode = |bytes: &[u8]| base64::engine::general_purpose::STANDARD.encode(bytes);
    let mut clusters = String::new();
    let mut contexts = String::new();
    for (index, server) in servers.iter().enumerate() {
        let name = context_name(index);
        clusters += &format!("- name: {name}\n  cluster:\n    server: {server}\n");
        if let Some(user) = user {
            clusters += &format!("    certificate-authority-data: {}\n", encode(&user.ca));
        }
        contexts += &format!(
            "- name: {name}\n  context:\n    cluster: {name}\n    namespace: {namespace}\n"
        );
        if user.is_some() {
            contexts += &format!("    user: {USER}\n");
        }
    }
    let users = match user {
        Some(user) => format!(
            "users:\n- name: {USER}\n  user:\n    client-certificate-data: {}\n    \
             client-key-data: {}\n",
            encode(&user.certificate),
            encode(&user.key)
        ),
        None => "users: []\n".to_string(),
    };
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n{clusters}\
         contexts:\n{contexts}\
         current-context: {}\n\
         {users}",
        context_name(current)
    )
}

/// The kubeconfig's user: the admin credential.
const USER: &str = "tandem-admin";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_names_the_server_and_the_namespace() {
        let text = kubeconfig(&["http://127.0.0.1:7070"], 0, "openebs", None);
        let parsed: yaml_serde::Value = yaml_serde::from_str(&text).expect("YAML");
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:7070"
        );
        assert_eq!(parsed["contexts"][0]["context"]["namespace"], "openebs");
        assert_eq!(parsed["current-context"], "tandem");
    }

    #[test]
    fn several_control_planes_have_a_context_each_and_the_answering_one_is_current() {
        let servers = ["http://127.0.0.1:7070", "http://127.0.0.1:7071"];
        let parsed: yaml_serde::Value =
            yaml_serde::from_str(&kubeconfig(&servers, 1, "openebs", None)).expect("YAML");
        assert_eq!(parsed["clusters"][1]["name"], "tandem-2");
        assert_eq!(
            parsed["clusters"][1]["cluster"]["server"],
            "http://127.0.0.1:7071"
        );
        assert_eq!(parsed["contexts"][1]["context"]["cluster"], "tandem-2");
        assert_eq!(parsed["current-context"], "tandem-2");

        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
        let open = format!("http://{}", listener.local_addr().expect("address"));
        assert!(accepts_connections(&open));
        drop(listener);
        assert!(!accepts_connections(&open));
    }
}
