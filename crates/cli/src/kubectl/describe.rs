//! `tandem describe KIND [NAME...]`: each object in detail, then the events about it.

use std::time::SystemTime;

use anyhow::Result;
use clap::Args;
use tandem_client::Client;
use tandem_objects::Object;

use super::{parse_targets, report, NamespaceArg, Targets};
use crate::output::{describe, no_resources};
use crate::server::ServerArgs;

#[derive(Args, Debug)]
pub struct DescribeArgs {
    /// KIND and NAMEs (every object of KIND when none), or KIND/NAME pairs.
    #[arg(required = true, value_name = "KIND [NAME]")]
    words: Vec<String>,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

pub async fn run(args: DescribeArgs) -> Result<bool> {
    let Targets {
        named: targets,
        kind,
    } = parse_targets(&args.words)?;
    let client = args.server.client()?;
    let namespace = args.namespace.namespace.as_str();
    let mut objects = Vec::new();
    let mut ok = true;
    match (kind, targets.is_empty()) {
        (Some(kind), true) => {
            objects = client.list(kind, Some(namespace), None).await?.items;
            if objects.is_empty() {
                eprintln!("{}", no_resources(Some(namespace)));
            }
        }
        _ => {
            for (kind, name) in &targets {
                match client.get(*kind, namespace, name).await {
                    Ok(object) => objects.push(object),
                    Err(error) => {
                        report(error, None)?;
                        ok = false;
                    }
                }
            }
        }
    }
    let mut first = true;
    for object in &objects {
        if !first {
            println!("\n");
        }
        print!("{}", describe_one(&client, object).await?);
        first = false;
    }
    Ok(ok)
}

async fn describe_one(client: &Client, object: &Object) -> Result<String> {
    let events = client.events_about(object).await?;
    Ok(describe(object, &events, SystemTime::now()))
}
