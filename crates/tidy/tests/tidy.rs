//! The code base's own rules, checked on every `cargo test`: module docs, the core's dependency
//! allow-list, file sizes, and typed errors in library crates.
//!
//! Each check walks the sources from the workspace root and names every offending file, so a
//! failure says exactly what to fix.

use std::fs;
use std::path::{Path, PathBuf};

/// The crates `tandem-core` may depend on (not counting dev-dependencies). The core is a pure
/// state machine: no tokio, no clock, no randomness, no files, no sockets, no serialization.
const CORE_DEPENDENCIES_ALLOWED: &[&str] = &["bytes", "thiserror"];

/// The longest a source file may be, not counting its `#[cfg(test)]` tail.
const SOURCE_LINES_MAX: usize = 1_000;

/// Crates that are binaries at heart: they may turn errors into strings for the final printing.
const BINARY_CRATES: &[&str] = &["crates/cli"];

/// A first line that marks a generated file (exempt from the size limit).
const GENERATED_MARKER: &str = "// @generated";

fn workspace_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../..")
        .canonicalize()
        .expect("the workspace root exists")
}

/// Every `.rs` file under `dir`, sorted, skipping build output.
fn rust_files(dir: &Path) -> Vec<PathBuf> {
    let mut files = Vec::new();
    let mut pending = vec![dir.to_path_buf()];
    while let Some(dir) = pending.pop() {
        let Ok(entries) = fs::read_dir(&dir) else {
            continue;
        };
        for entry in entries {
            let path = entry.expect("read a directory entry").path();
            let name = path.file_name().and_then(|n| n.to_str()).unwrap_or("");
            if path.is_dir() {
                if name != "target" && !name.starts_with('.') {
                    pending.push(path);
                }
            } else if name.ends_with(".rs") {
                files.push(path);
            }
        }
    }
    files.sort();
    files
}

fn all_rust_files() -> Vec<PathBuf> {
    let root = workspace_root();
    let mut files = rust_files(&root.join("crates"));
    files.extend(rust_files(&root.join("fuzz")));
    files
}

fn relative(path: &Path) -> String {
    path.strip_prefix(workspace_root())
        .unwrap_or(path)
        .display()
        .to_string()
}

/// True for files that are tests: under a crate's `tests/`, or a module named `tests.rs`.
fn is_test_file(path: &Path) -> bool {
    let relative = relative(path);
    relative.contains("/tests/") || relative.ends_with("/tests.rs")
}

fn fail_listing(what: &str, offenders: &[String]) {
    assert!(
        offenders.is_empty(),
        "{what}:\n  {}",
        offenders.join("\n  ")
    );
}

#[test]
fn every_rust_file_starts_with_a_module_doc_line() {
    let offenders: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|path| {
            let text = fs::read_to_string(path).expect("read a source file");
            !text.starts_with("//!")
        })
        .map(|path| relative(&path))
        .collect();
    fail_listing(
        "these files do not start with a `//!` line saying what they are for",
        &offenders,
    );
}

#[test]
fn the_core_depends_only_on_its_allow_list() {
    let manifest = workspace_root().join("crates/core/Cargo.toml");
    let text = fs::read_to_string(&manifest).expect("read crates/core/Cargo.toml");
    let manifest: toml::Table = text.parse().expect("crates/core/Cargo.toml is valid TOML");
    let mut offenders = Vec::new();
    for section in ["dependencies", "build-dependencies"] {
        let Some(dependencies) = manifest.get(section).and_then(|d| d.as_table()) else {
            continue;
        };
        for name in dependencies.keys() {
            if !CORE_DEPENDENCIES_ALLOWED.contains(&name.as_str()) {
                offenders.push(format!("[{section}] {name}"));
            }
        }
    }
    if let Some(targets) = manifest.get("target").and_then(|t| t.as_table()) {
        for (target, table) in targets {
            if table.get("dependencies").is_some() {
                offenders.push(format!("[target.{target}.dependencies]"));
            }
        }
    }
    fail_listing(
        &format!(
            "tandem-core may depend only on {CORE_DEPENDENCIES_ALLOWED:?} (it is pure: no I/O, \
             no clock, no randomness, no serialization); it also depends on"
        ),
        &offenders,
    );
}

/// The Tandem crates each crate may depend on (normal dependencies): the layering in
/// `ARCHITECTURE.md`, from the binary down to the pure core. A crate not listed here may not
/// exist: a new crate takes its place in the layering on purpose.
const TANDEM_DEPENDENCIES_ALLOWED: &[(&str, &[&str])] = &[
    ("core", &[]),
    ("objects", &[]),
    ("store", &[]),
    ("block", &[]),
    ("pki", &[]),
    ("https", &["tandem-pki"]),
    ("tidy", &[]),
    ("wire", &["tandem-core"]),
    ("sim", &["tandem-core"]),
    ("client", &["tandem-objects", "tandem-pki"]),
    ("nbd", &["tandem-block", "tandem-pki"]),
    (
        "dataplane",
        &["tandem-core", "tandem-wire", "tandem-block", "tandem-pki"],
    ),
    (
        "control-plane",
        &[
            "tandem-objects",
            "tandem-client",
            "tandem-store",
            "tandem-pki",
            "tandem-https",
        ],
    ),
    (
        "agent",
        &[
            "tandem-core",
            "tandem-dataplane",
            "tandem-nbd",
            "tandem-block",
            "tandem-objects",
            "tandem-client",
            "tandem-pki",
            "tandem-https",
        ],
    ),
    (
        "cli",
        &[
            "tandem-core",
            "tandem-sim",
            "tandem-store",
            "tandem-control-plane",
            "tandem-objects",
            "tandem-agent",
            "tandem-client",
            "tandem-nbd",
            "tandem-block",
            "tandem-dataplane",
            "tandem-wire",
            "tandem-pki",
            "tandem-https",
        ],
    ),
];

#[test]
fn crates_depend_on_each_other_one_way() {
    let crates_dir = workspace_root().join("crates");
    let mut offenders = Vec::new();
    let mut crate_names: Vec<String> = fs::read_dir(&crates_dir)
        .expect("read crates/")
        .map(|entry| entry.expect("read a directory entry").file_name())
        .filter_map(|name| name.to_str().map(str::to_string))
        .collect();
    crate_names.sort();
    for crate_name in crate_names {
        let manifest_path = crates_dir.join(&crate_name).join("Cargo.toml");
        let Ok(text) = fs::read_to_string(&manifest_path) else {
            continue;
        };
        let manifest: toml::Table = text
            .parse()
            .unwrap_or_else(|error| panic!("crates/{crate_name}/Cargo.toml: {error}"));
        let Some((_, allowed)) = TANDEM_DEPENDENCIES_ALLOWED
            .iter()
            .find(|(name, _)| *name == crate_name)
        else {
            offenders.push(format!(
                "crates/{crate_name} has no place in the layering (add it to \
                 TANDEM_DEPENDENCIES_ALLOWED and ARCHITECTURE.md)"
            ));
            continue;
        };
        let dependencies = manifest.get("dependencies").and_then(|d| d.as_table());
        for name in dependencies.into_iter().flat_map(|d| d.keys()) {
            if name.starts_with("tandem-") && !allowed.contains(&name.as_str()) {
                offenders.push(format!("crates/{crate_name} -> {name}"));
            }
        }
    }
    fail_listing(
        "these dependencies break the layering in ARCHITECTURE.md (\"Dependencies point one way\")",
        &offenders,
    );
}

/// The lines of a file that count toward its size: everything before its `#[cfg(test)]` module.
fn source_lines(text: &str) -> usize {
    text.lines()
        .take_while(|line| line.trim() != "#[cfg(test)]")
        .count()
}

#[test]
fn no_source_file_is_over_the_line_limit() {
    let offenders: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|path| !is_test_file(path))
        .filter_map(|path| {
            let text = fs::read_to_string(&path).expect("read a source file");
            let generated = text
                .lines()
                .take(3)
                .any(|line| line.starts_with(GENERATED_MARKER));
            let lines = source_lines(&text);
            (!generated && lines > SOURCE_LINES_MAX)
                .then(|| format!("{} ({lines} lines)", relative(&path)))
        })
        .collect();
    fail_listing(
        &format!(
            "these files are over {SOURCE_LINES_MAX} lines (not counting their tests): split \
             them by what they do"
        ),
        &offenders,
    );
}

/// The type arguments of every `Result<...>` in `text` whose error type is `String`, with their
/// line numbers. Comments are skipped; generics nest, so the arguments are split at top level.
fn string_results(text: &str) -> Vec<(usize, String)> {
    let mut found = Vec::new();
    let code: String = text
        .lines()
        .map(|line| match line.find("//") {
            Some(comment) => &line[..comment],
            None => line,
        })
        .collect::<Vec<_>>()
        .join("\n");
    let bytes = code.as_bytes();
    let mut search_from = 0;
    while let Some(found_at) = code[search_from..].find("Result<") {
        let start = search_from + found_at;
        search_from = start + "Result<".len();
        let preceded_by_identifier =
            start > 0 && (bytes[start - 1].is_ascii_alphanumeric() || bytes[start - 1] == b'_');
        if preceded_by_identifier {
            continue;
        }
        let mut depth = 1;
        let mut arguments = vec![String::new()];
        for &byte in &bytes[search_from..] {
            match byte {
                b'<' => depth += 1,
                b'>' => {
                    depth -= 1;
                    if depth == 0 {
                        break;
                    }
                }
                b',' if depth == 1 => {
                    arguments.push(String::new());
                    continue;
                }
                _ => {}
            }
            arguments
                .last_mut()
                .expect("one argument")
                .push(byte as char);
        }
        if arguments.len() == 2 && arguments[1].trim() == "String" {
            let line = code[..start].matches('\n').count() + 1;
            let shown: String = arguments
                .join(",")
                .split_whitespace()
                .collect::<Vec<_>>()
                .join(" ");
            found.push((line, format!("Result<{shown}>")));
        }
    }
    found
}

#[test]
fn library_crates_return_typed_errors_not_strings() {
    let offenders: Vec<String> = all_rust_files()
        .into_iter()
        .filter(|path| !is_test_file(path))
        .filter(|path| {
            let relative = relative(path);
            relative.starts_with("crates/")
                && !BINARY_CRATES
                    .iter()
                    .any(|krate| relative.starts_with(&format!("{krate}/")))
        })
        .flat_map(|path| {
            let text = fs::read_to_string(&path).expect("read a source file");
            let text = match text.find("#[cfg(test)]") {
                Some(tests) => text[..tests].to_string(),
                None => text,
            };
            string_results(&text)
                .into_iter()
                .map(move |(line, result)| format!("{}:{line}: {result}", relative(&path)))
        })
        .collect();
    fail_listing(
        "library crates return typed errors (a `thiserror` enum), never `Result<_, String>`",
        &offenders,
    );
}

#[test]
fn the_string_result_finder_sees_nested_generics_and_skips_the_rest() {
    let text = "fn a() -> Result<u64, String> {}\n\
                fn b() -> Result<HashMap<u64, String>, Error> {}\n\
                fn c() -> Result<Vec<(u8, String)>,\n    String> {}\n\
                fn d() -> anyhow::Result<String> {}\n\
                fn e() -> IoResult<u8, String> {}\n\
                // fn f() -> Result<(), String>\n";
    let found = string_results(text);
    assert_eq!(
        found,
        vec![
            (1, "Result<u64, String>".to_string()),
            (3, "Result<Vec<(u8, String)>, String>".to_string()),
        ]
    );
}
