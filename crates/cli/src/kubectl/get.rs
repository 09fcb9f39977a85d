//! `tandem get KIND [NAME...]`: tables (`-o wide`), YAML, JSON or names, and `-w` to follow
//! changes, as kubectl prints them.

use std::time::{Duration, SystemTime};

use anyhow::{bail, Result};
use clap::Args;
use serde::Serialize;
use tandem_client::{Client, ClientError};
use tandem_objects::{Kind, Object};
use tokio::time::Instant;

use super::{parse_targets, reference, report, NamespaceArg, Targets};
use crate::output::{no_resources, render_table};
use crate::server::ServerArgs;

/// The longest single watch request; a longer `-w` re-opens the watch where it stopped.
const WATCH_WINDOW: Duration = Duration::from_secs(300);

#[derive(Args, Debug)]
pub struct GetArgs {
    /// KIND (cspc, cspi, cvc, cv, cvr, events, or a longer spelling) and optional NAMEs, or
    /// KIND/NAME pairs.
    #[arg(required = true, value_name = "KIND [NAME]")]
    words: Vec<String>,
    #[command(flatten)]
    namespace: NamespaceArg,
    /// List the objects of every namespace.
    #[arg(short = 'A', long)]
    all_namespaces: bool,
    /// Only objects with these labels: key=value[,key=value].
    #[arg(short = 'l', long)]
    selector: Option<String>,
    /// wide, yaml, json or name (a table when not given).
    #[arg(short = 'o', long)]
    output: Option<String>,
    /// Leave the header line out of tables.
    #[arg(long)]
    no_headers: bool,
    /// After listing, print each change as it happens (Ctrl-C stops).
    #[arg(short = 'w', long)]
    watch: bool,
    /// Stop watching after this long (for scripts and tests).
    #[arg(long, hide = true, value_parser = humantime::parse_duration)]
    watch_timeout: Option<Duration>,
    #[command(flatten)]
    server: ServerArgs,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Format {
    Table,
    Wide,
    Yaml,
    Json,
    Name,
}

impl Format {
    fn parse(output: Option<&str>) -> Result<Format> {
        Ok(match output {
            None => Format::Table,
            Some("wide") => Format::Wide,
            Some("yaml") => Format::Yaml,
            Some("json") => Format::Json,
            Some("name") => Format::Name,
            Some(other) => {
                bail!("unknown output format {other:?}: -o takes wide, yaml, json or name")
            }
        })
    }
}

/// How the rows are printed: the format, and the table options.
struct Printer {
    format: Format,
    with_namespace: bool,
    with_header: bool,
}

impl Printer {
    /// One kind's objects as a table (wide or not) or names; "" for none.
    fn rows(&self, kind: Kind, objects: &[Object], with_header: bool) -> String {
        match self.format {
            Format::Name => objects
                .iter()
                .map(|object| format!("{}\n", reference(object.kind(), object.name())))
                .collect(),
            format => render_table(
                kind,
                objects,
                format == Format::Wide,
                SystemTime::now(),
                self.with_namespace,
                with_header,
            ),
        }
    }
}

/// kubectl's `List` around several objects.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct List<'a> {
    api_version: &'static str,
    items: &'a [Object],
    kind: &'static str,
    metadata: ListMetadata,
}

#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct ListMetadata {
    resource_version: &'static str,
}

fn list_of(objects: &[Object]) -> List<'_> {
    List {
        api_version: "v1",
        items: objects,
        kind: "List",
        metadata: ListMetadata {
            resource_version: "",
        },
    }
}

fn list_yaml(objects: &[Object]) -> String {
    yaml_serde::to_string(&list_of(objects)).expect("a list of objects serializes to YAML")
}

fn list_json(objects: &[Object]) -> String {
    let mut text = serde_json::to_string_pretty(&list_of(objects))
        .expect("a list of objects serializes to JSON");
    text.push('\n');
    text
}

fn with_newline(mut text: String) -> String {
    if !text.ends_with('\n') {
        text.push('\n');
    }
    text
}

pub async fn run(args: GetArgs) -> Result<bool> {
    let format = Format::parse(args.output.as_deref())?;
    let Targets {
        named: targets,
        kind: listed_kind,
    } = parse_targets(&args.words)?;
    if !targets.is_empty() && args.selector.is_some() {
        bail!("a label selector (-l) cannot be combined with names");
    }
    let watched_kind = match (args.watch, listed_kind, targets.first()) {
        (false, _, _) => None,
        (true, Some(kind), _) | (true, None, Some(&(kind, _))) => Some(kind),
        (true, None, None) => bail!("nothing to watch"),
    };
    if let Some(kind) = watched_kind {
        if targets.iter().any(|(other, _)| *other != kind) {
            bail!("-w watches one kind at a time");
        }
    }
    let client = args.server.client()?;
    let namespace = (!args.all_namespaces).then_some(args.namespace.namespace.as_str());
    let printer = Printer {
        format,
        with_namespace: args.all_namespaces && targets.is_empty(),
        with_header: !args.no_headers,
    };

    // What to show, grouped by kind in the order asked for.
    let mut groups: Vec<(Kind, Vec<Object>)> = Vec::new();
    let mut ok = true;
    let mut version = 0;
    if let (Some(kind), true) = (listed_kind, targets.is_empty()) {
        let list = client
            .list(kind, namespace, args.selector.as_deref())
            .await?;
        version = list.resource_version;
        groups.push((kind, list.items));
    } else {
        let namespace = args.namespace.namespace.as_str();
        if let (true, Some((kind, _))) = (args.watch, targets.first()) {
            // Watch from before the reads, so no change after them is missed.
            version = client
                .list(*kind, Some(namespace), None)
                .await?
                .resource_version;
        }
        for (kind, name) in &targets {
            let object = match client.get(*kind, namespace, name).await {
                Ok(object) => object,
                Err(error) if error.is_not_found() => {
                    report(error, None)?;
                    ok = false;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            match groups.iter_mut().find(|(group, _)| group == kind) {
                Some((_, objects)) => objects.push(object),
                None => groups.push((*kind, vec![object])),
            }
        }
    }

    let found: Vec<Object> = groups
        .iter()
        .flat_map(|(_, objects)| objects.iter().cloned())
        .collect();
    let one_named = targets.len() == 1;
    match format {
        Format::Yaml if one_named && found.len() == 1 => {
            print!("{}", with_newline(found[0].to_yaml()))
        }
        Format::Json if one_named && found.len() == 1 => {
            print!("{}", with_newline(found[0].to_json()))
        }
        // A named object that is missing was reported; an empty list prints as one.
        Format::Yaml | Format::Json if one_named => {}
        Format::Yaml => print!("{}", list_yaml(&found)),
        Format::Json => print!("{}", list_json(&found)),
        Format::Table | Format::Wide | Format::Name => {
            if found.is_empty() && targets.is_empty() && !args.watch {
                eprintln!(
                    "{}",
                    no_resources((!args.all_namespaces).then_some(&args.namespace.namespace))
                );
            }
            let mut first = true;
            for (kind, objects) in &groups {
                let rows = printer.rows(*kind, objects, printer.with_header);
                if rows.is_empty() {
                    continue;
                }
                if !first && format != Format::Name {
                    println!();
                }
                print!("{rows}");
                first = false;
            }
        }
    }

    // As kubectl: a named object that does not exist is an error, not something to wait for.
    if let Some(kind) = watched_kind.filter(|_| ok) {
        let names: Vec<String> = targets.into_iter().map(|(_, name)| name).collect();
        let watching = Watching {
            client: &client,
            kind,
            namespace: if names.is_empty() {
                namespace
            } else {
                Some(args.namespace.namespace.as_str())
            },
            selector: args.selector.as_deref(),
            names: &names,
            printer: &printer,
        };
        let deadline = args.watch_timeout.map(|timeout| Instant::now() + timeout);
        tokio::select! {
            result = watching.follow(version, deadline) => result?,
            _ = tokio::signal::ctrl_c() => {}
        }
    }
    Ok(ok)
}

/// A `-w` in progress.
struct Watching<'a> {
    client: &'a Client,
    kind: Kind,
    namespace: Option<&'a str>,
    selector: Option<&'a str>,
    /// Only these objects, when names were given.
    names: &'a [String],
    printer: &'a Printer,
}

impl Watching<'_> {
    /// Prints every change after `version` until `deadline` (or forever), re-opening the watch
    /// whenever the server ends it.
    async fn follow(&self, mut version: u64, deadline: Option<Instant>) -> Result<()> {
        loop {
            let window = match deadline {
                Some(deadline) => {
                    let left = deadline.saturating_duration_since(Instant::now());
                    if left.is_zero() {
                        return Ok(());
                    }
                    left.min(WATCH_WINDOW)
                }
                None => WATCH_WINDOW,
            };
            let opened = self
                .client
                .watch(self.kind, self.namespace, self.selector, version, window)
                .await;
            let mut watch = match opened {
                Ok(watch) => watch,
                Err(error) if is_expired(&error) => {
                    version = self.relist().await?;
                    continue;
                }
                Err(error) => return Err(error.into()),
            };
            loop {
                let next = match deadline {
                    Some(deadline) => match tokio::time::timeout_at(deadline, watch.next()).await {
                        Ok(next) => next,
                        Err(_elapsed) => return Ok(()),
                    },
                    None => watch.next().await,
                };
                version = version.max(watch.version());
                match next {
                    Ok(Some(change)) => {
                        let object = change.object();
                        if self.names.is_empty() || self.names.iter().any(|n| n == object.name()) {
                            self.print(object);
                        }
                    }
                    Ok(None) => break,
                    Err(error) if is_expired(&error) => {
                        version = self.relist().await?;
                        break;
                    }
                    Err(error) => return Err(error.into()),
                }
            }
        }
    }

    /// The changes asked for are gone from the server's log: go on from now.
    async fn relist(&self) -> Result<u64> {
        Ok(self
            .client
            .list(self.kind, self.namespace, self.selector)
            .await?
            .resource_version)
    }

    fn print(&self, object: &Object) {
        let objects = std::slice::from_ref(object);
        match self.printer.format {
            Format::Yaml => print!("---\n{}", with_newline(object.to_yaml())),
            Format::Json => print!("{}", with_newline(object.to_json())),
            _ => print!("{}", self.printer.rows(self.kind, objects, false)),
        }
    }
}

fn is_expired(error: &ClientError) -> bool {
    matches!(error, ClientError::Api { code: 410, .. })
}
