//! `tandem edit KIND NAME`: kubectl's edit loop. The object's YAML goes into a temporary file
//! under a header comment; `$KUBE_EDITOR`, else `$EDITOR`, else `vi` edits it; the result is
//! sent back as an update naming the resource version that was read. A file that does not
//! parse, or an update the control plane refuses (admission rules, a conflict with a concurrent
//! change), reopens the file with the error at the top as comments and the user's edit kept.
//! Saving a reopened file unchanged gives up (`Edit cancelled, no valid changes were saved.`),
//! except after a conflict: the reopened edit then names the latest version and saving it as
//! it is applies it.

use std::path::Path;
use std::process::Command;

use anyhow::{bail, Context, Result};
use clap::Args;
use tandem_client::ClientError;
use tandem_objects::{parse_yaml, Kind, Object};

use super::{parse_one_target, reference, NamespaceArg};
use crate::server::ServerArgs;

/// kubectl's header, word for word.
const HEADER: &str = "# Please edit the object below. Lines beginning with a '#' will be ignored,\n\
                      # and an empty file will abort the edit. If an error occurs while saving this file will be\n\
                      # reopened with the relevant failures.\n\
                      #\n";

/// How many times the file is opened before giving up.
const ROUNDS_MAX: usize = 10;

#[derive(Args, Debug)]
pub struct EditArgs {
    /// KIND NAME, or KIND/NAME.
    #[arg(required = true, value_name = "KIND NAME")]
    words: Vec<String>,
    #[command(flatten)]
    namespace: NamespaceArg,
    #[command(flatten)]
    server: ServerArgs,
}

/// Why the previous save did not go through, as shown at the top of the reopened file.
struct Failure {
    /// Comment lines, each starting with '#', ending with a newline.
    comment: String,
    /// The same in one line, for the final error.
    message: String,
    /// Whether saving the reopened file unchanged should be tried again (after a conflict, the
    /// reopened text differs from what the user saved: it names the latest version).
    unchanged_is_a_retry: bool,
}

impl Failure {
    fn syntax(error: &impl std::fmt::Display) -> Failure {
        Failure {
            comment: format!("# The edited file had a syntax error: {error}\n"),
            message: format!("the edited file had a syntax error: {error}"),
            unchanged_is_a_retry: false,
        }
    }

    fn invalid(kind: Kind, name: &str, message: &str) -> Failure {
        let what = format!("{} \"{name}\" was not valid", plural_resource(kind));
        Failure {
            comment: format!("# {what}:\n# * {}\n", comment_text(message)),
            message: format!("{what}: {message}"),
            unchanged_is_a_retry: false,
        }
    }
}

/// "cstorvolumeconfigs.cstor.openebs.io", as the control plane names a resource in messages.
fn plural_resource(kind: Kind) -> String {
    match kind {
        Kind::Event => kind.plural().to_string(),
        _ => format!("{}.cstor.openebs.io", kind.plural()),
    }
}

/// A message as comment text: every line break continues the comment.
fn comment_text(message: &str) -> String {
    message.replace('\n', "\n# ")
}

pub async fn run(args: EditArgs) -> Result<bool> {
    let (kind, name) = parse_one_target(&args.words, "edit")?;
    let client = args.server.client()?;
    let namespace = args.namespace.namespace.as_str();
    let original = client.get(kind, namespace, &name).await?;
    let original_text = original.to_yaml();
    let editor = editor();
    let file = tempfile::Builder::new()
        .prefix("tandem-edit-")
        .suffix(".yaml")
        .tempfile()
        .context("cannot create a temporary file to edit")?;
    let path = file.path().to_path_buf();

    // What the next round shows below the comments, and why the last save failed.
    let mut content = original_text.clone();
    let mut failure: Option<Failure> = None;
    for _round in 0..ROUNDS_MAX {
        let mut text = HEADER.to_string();
        if let Some(failure) = &failure {
            text.push_str(&failure.comment);
            text.push_str("#\n");
        }
        text.push_str(&content);
        std::fs::write(&path, &text).with_context(|| format!("cannot write {}", path.display()))?;
        run_editor(&editor, &path)?;
        let saved = std::fs::read_to_string(&path)
            .with_context(|| format!("cannot read {} after editing", path.display()))?;
        let edited = strip_comments(&saved);
        if edited.trim().is_empty() {
            eprintln!("Edit cancelled, no changes made.");
            return Ok(true);
        }
        if let Some(failure) = &failure {
            if !failure.unchanged_is_a_retry && same_text(&edited, &content) {
                bail!(
                    "Edit cancelled, no valid changes were saved. {}",
                    failure.message
                );
            }
        }
        if same_text(&edited, &original_text) {
            eprintln!("Edit cancelled, no changes made.");
            return Ok(true);
        }
        content = edited;
        let mut object = match parse_yaml(&content) {
            Ok(object) => object,
            Err(error) => {
                failure = Some(Failure::syntax(&error));
                continue;
            }
        };
        if object.kind() != kind || object.name() != name || object.namespace() != namespace {
            failure = Some(Failure::invalid(
                kind,
                &name,
                &format!(
                    "the kind, name and namespace of an object cannot be changed by edit (they \
                     must stay {} {namespace}/{name})",
                    kind.name()
                ),
            ));
            continue;
        }
        if object.metadata().resource_version.is_empty() {
            object.metadata_mut().resource_version = original.metadata().resource_version.clone();
        }
        if same_object(&object, &original) {
            eprintln!("Edit cancelled, no changes made.");
            return Ok(true);
        }
        match client.update(&object).await {
            Ok(_) => {
                println!("{} edited", reference(kind, &name));
                return Ok(true);
            }
            Err(error) if error.is_conflict() => {
                // Someone else wrote first: keep the user's edit, on top of the latest version.
                let latest = client.get(kind, namespace, &name).await?;
                object.metadata_mut().resource_version = latest.metadata().resource_version.clone();
                content = object.to_yaml();
                let what = format!(
                    "{} \"{name}\" was changed while you edited it",
                    plural_resource(kind)
                );
                failure = Some(Failure {
                    comment: format!(
                        "# {what}:\n# * {}\n# Your edit below now replaces the latest version: \
                         save it as it is to apply it, or change it.\n",
                        comment_text(&error.to_string())
                    ),
                    message: format!("{what}: {error}"),
                    unchanged_is_a_retry: true,
                });
            }
            Err(error @ ClientError::Api { .. }) => {
                failure = Some(Failure::invalid(kind, &name, &error.to_string()));
            }
            Err(error) => return Err(error.into()),
        }
    }
    bail!("Edit cancelled after {ROUNDS_MAX} attempts without a valid change")
}

/// The editor command: `$KUBE_EDITOR`, else `$EDITOR`, else `vi`.
fn editor() -> String {
    ["KUBE_EDITOR", "EDITOR"]
        .iter()
        .filter_map(|variable| std::env::var(variable).ok())
        .find(|value| !value.trim().is_empty())
        .unwrap_or_else(|| "vi".to_string())
}

/// Runs the editor on `path` through the shell, so `EDITOR="code --wait"` works.
fn run_editor(editor: &str, path: &Path) -> Result<()> {
    let status = Command::new("sh")
        .arg("-c")
        .arg(format!("{editor} \"$1\""))
        .arg("tandem-edit")
        .arg(path)
        .status()
        .with_context(|| format!("cannot start the editor {editor:?}"))?;
    if !status.success() {
        bail!("the editor {editor:?} failed ({status}); nothing was saved");
    }
    Ok(())
}

/// The text without comment lines (lines whose first non-blank character is '#').
fn strip_comments(text: &str) -> String {
    let mut kept = String::new();
    for line in text.lines() {
        if !line.trim_start().starts_with('#') {
            kept.push_str(line);
            kept.push('\n');
        }
    }
    kept
}

/// Equal but for trailing blanks on lines and trailing empty lines.
fn same_text(a: &str, b: &str) -> bool {
    fn normal(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().map(str::trim_end).collect();
        while lines.last() == Some(&"") {
            lines.pop();
        }
        lines
    }
    normal(a) == normal(b)
}

/// The same object but for its resource version.
fn same_object(a: &Object, b: &Object) -> bool {
    let (mut a, mut b) = (a.clone(), b.clone());
    a.metadata_mut().resource_version.clear();
    b.metadata_mut().resource_version.clear();
    a == b
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn comments_go_and_blank_differences_do_not_count() {
        let text = "# header\n  # indented\napiVersion: v1   \nkind: X\n\n";
        assert_eq!(strip_comments(text), "apiVersion: v1   \nkind: X\n\n");
        assert!(same_text(&strip_comments(text), "apiVersion: v1\nkind: X"));
        assert!(!same_text("a: 1\n", "a: 2\n"));
    }

    #[test]
    fn failures_are_comments() {
        let failure = Failure::invalid(Kind::CStorVolumeConfig, "pvc-1", "no\nway");
        assert_eq!(
            failure.comment,
            "# cstorvolumeconfigs.cstor.openebs.io \"pvc-1\" was not valid:\n# * no\n# way\n"
        );
    }
}
