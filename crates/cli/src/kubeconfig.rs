//! `tandem kubeconfig`: a kubeconfig for the cluster, so the real `kubectl` talks to its control
//! plane (`KUBECONFIG=<(tandem kubeconfig) kubectl get cspc`). It stays the way to reach the
//! cluster when credentials come.

use anyhow::{bail, Result};
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
    let address = args.server.address()?;
    if !(address.starts_with("http://") || address.starts_with("https://")) {
        bail!(
            "the control plane is reached at {address}, which kubectl cannot use; give its HTTP \
             address with --server (on a `tandem up --netns` cluster, from inside its \
             namespaces: http://10.77.S.254:7070)"
        );
    }
    print!("{}", kubeconfig(&address, &args.namespace));
    Ok(true)
}

fn kubeconfig(server: &str, namespace: &str) -> String {
    format!(
        "apiVersion: v1\n\
         kind: Config\n\
         clusters:\n\
         - name: tandem\n  cluster:\n    server: {server}\n\
         contexts:\n\
         - name: tandem\n  context:\n    cluster: tandem\n    namespace: {namespace}\n\
         current-context: tandem\n\
         users: []\n"
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_kubeconfig_names_the_server_and_the_namespace() {
        let text = kubeconfig("http://127.0.0.1:7070", "openebs");
        let parsed: yaml_serde::Value = yaml_serde::from_str(&text).expect("YAML");
        assert_eq!(
            parsed["clusters"][0]["cluster"]["server"],
            "http://127.0.0.1:7070"
        );
        assert_eq!(parsed["contexts"][0]["context"]["namespace"], "openebs");
        assert_eq!(parsed["current-context"], "tandem");
    }
}
