//! `tandem metrics`: where Prometheus scrapes the cluster — the control plane's `/metrics` on
//! its API listener and every agent's on its `--metrics-address` (as the agents report it in
//! their heartbeats). `tandem up` prints the same list. The metrics are listed in
//! `docs/metrics.md`.

use anyhow::{Context, Result};
use clap::Args;
use tandem_client::Client;

use crate::server::ServerArgs;

#[derive(Args, Debug)]
pub struct MetricsArgs {
    #[command(flatten)]
    server: ServerArgs,
}

pub fn run(args: MetricsArgs) -> Result<bool> {
    let address = args.server.address()?;
    // On a `tandem up --netns` cluster the CLI uses the control plane's Unix socket; Prometheus
    // (in the namespaces) uses its HTTP address.
    let http = crate::cluster::recorded_network(&args.server.data_dir())
        .map(|network| network.control_plane_url());
    let client = args.server.client()?;
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .context("start the async runtime")?;
    let urls = runtime.block_on(urls(&client, http.as_deref().unwrap_or(&address)))?;
    print!("{}", table(&urls));
    Ok(true)
}

/// (what, where its metrics are) for the control plane at `control_plane` and every node that
/// has reported to it.
pub async fn urls(client: &Client, control_plane: &str) -> Result<Vec<(String, String)>> {
    let mut urls = vec![("control-plane".to_string(), scrape_url(control_plane))];
    let nodes = client
        .nodes()
        .await
        .context("list the nodes the control plane knows")?;
    for node in nodes {
        let scheme = if node.metrics_tls { "https" } else { "http" };
        let url = if node.metrics_address.is_empty() {
            "(its agent reports no metrics address)".to_string()
        } else {
            format!("{scheme}://{}/metrics", node.metrics_address)
        };
        urls.push((node.node, url));
    }
    Ok(urls)
}

/// The control plane's metrics at `server` (`http://HOST:PORT`, or `unix:PATH`).
fn scrape_url(server: &str) -> String {
    match server.strip_prefix(tandem_client::UNIX_SCHEME) {
        Some(socket) => format!("{server} (curl --unix-socket {socket} http://localhost/metrics)"),
        None => format!("{}/metrics", server.trim_end_matches('/')),
    }
}

/// One line per source, aligned.
pub fn table(urls: &[(String, String)]) -> String {
    let width = urls.iter().map(|(name, _)| name.len()).max().unwrap_or(0);
    urls.iter()
        .map(|(name, url)| format!("  {name:<width$}  {url}\n"))
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_each_kind_of_server_address_when_listed_then_its_metrics_url() {
        assert_eq!(
            scrape_url("http://127.0.0.1:7070"),
            "http://127.0.0.1:7070/metrics"
        );
        assert_eq!(
            scrape_url("http://127.0.0.1:7070/"),
            "http://127.0.0.1:7070/metrics"
        );
        assert_eq!(
            scrape_url("unix:/tmp/t/cp.sock"),
            "unix:/tmp/t/cp.sock (curl --unix-socket /tmp/t/cp.sock http://localhost/metrics)"
        );
        let urls = [
            ("control-plane".to_string(), "http://a/metrics".to_string()),
            ("node1".to_string(), "http://b/metrics".to_string()),
        ];
        assert_eq!(
            table(&urls),
            "  control-plane  http://a/metrics\n  node1          http://b/metrics\n"
        );
    }
}
