//! `describe` in the layout of kubectl's generic describer (the one it uses for custom
//! resources such as cStor's): name, namespace, labels and annotations, then every other field
//! of the object's JSON form as indented "Title Case:" lines, then its events.
//!
//! It follows kubectl's `genericDescriber`, `printUnstructuredContent`, `smartLabelFor` and
//! `DescribeEvents`: keys sorted, two spaces per level, the items of a list of maps printed one
//! after another at the list's level plus one, and consecutive "key: value" lines aligned
//! together, as kubectl's tabwriter aligns them (see `tabwriter`).

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::time::SystemTime;

use serde_json::{Map, Value};
use tandem_objects::{Event, Object};

use super::tabwriter::{align, DESCRIBE};
use tandem_objects::print::{age, parse_timestamp};

/// Fields printed in the header, or not at all (kubectl's skip list, as JSON paths).
const SKIPPED_PATHS: [&str; 5] = [
    ".metadata.managedFields",
    ".metadata.name",
    ".metadata.namespace",
    ".metadata.labels",
    ".metadata.annotations",
];

/// Annotations kubectl never shows.
const SKIPPED_ANNOTATIONS: [&str; 1] = ["kubectl.kubernetes.io/last-applied-configuration"];

/// Longer annotations (key, ": " and value) go on lines of their own, cut to this length.
const MAX_ANNOTATION_LENGTH: usize = 140;

/// Words `smartLabelFor` writes in capitals.
const ACRONYMS: [&str; 4] = ["API", "URL", "UID", "GUID"];

/// What `describe <kind> <name>` prints for `object`, with `events` (the events about it) at
/// the end, their ages taken at `now`. Ends with a newline.
pub fn describe(object: &Object, events: &[Event], now: SystemTime) -> String {
    let metadata = object.metadata();
    let mut text = String::new();
    let _ = writeln!(text, "Name:\t{}", metadata.name);
    let _ = writeln!(text, "Namespace:\t{}", metadata.namespace);
    push_labels(&mut text, &metadata.labels);
    push_annotations(&mut text, &metadata.annotations);
    let content = serde_json::to_value(object).unwrap_or(Value::Null);
    if let Value::Object(fields) = &content {
        push_fields(&mut text, 0, fields, "");
    }
    if events.is_empty() {
        text.push_str("Events:\t<none>\n");
        return align(&text, DESCRIBE);
    }
    // kubectl flushes its tabwriter before the events table, so it is aligned on its own.
    let mut output = align(&text, DESCRIBE);
    output.push_str(&align(&events_table(events, now), DESCRIBE));
    output
}

/// "Labels:" with one "key=value" a line, sorted; continuation lines start with an empty cell
/// so that they line up with the first.
fn push_labels(text: &mut String, labels: &BTreeMap<String, String>) {
    text.push_str("Labels:\t");
    if labels.is_empty() {
        text.push_str("<none>\n");
    }
    for (index, (key, value)) in labels.iter().enumerate() {
        if index > 0 {
            text.push('\t');
        }
        let _ = writeln!(text, "{key}={value}");
    }
}

/// "Annotations:" with one "key: value" a line, sorted; a long or multi-line value goes under
/// its key, each line indented and cut to [`MAX_ANNOTATION_LENGTH`].
fn push_annotations(text: &mut String, annotations: &BTreeMap<String, String>) {
    let shown: Vec<(&String, &String)> = annotations
        .iter()
        .filter(|(key, _)| !SKIPPED_ANNOTATIONS.contains(&key.as_str()))
        .collect();
    text.push_str("Annotations:\t");
    if shown.is_empty() {
        text.push_str("<none>\n");
    }
    for (index, (key, value)) in shown.into_iter().enumerate() {
        if index > 0 {
            text.push('\t');
        }
        let value = value.strip_suffix('\n').unwrap_or(value);
        if value.len() + key.len() + 2 > MAX_ANNOTATION_LENGTH || value.contains('\n') {
            let _ = writeln!(text, "{key}:");
            for line in value.split('\n') {
                let _ = writeln!(text, "\t  {}", shorten(line, MAX_ANNOTATION_LENGTH - 2));
            }
        } else {
            let _ = writeln!(text, "{key}: {value}");
        }
    }
}

/// The first `limit` bytes of `line` (fewer if that would split a character) and "...", or the
/// whole line when it fits.
fn shorten(line: &str, limit: usize) -> String {
    if line.len() <= limit {
        return line.to_string();
    }
    let mut end = limit;
    while !line.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}...", &line[..end])
}

/// kubectl's `printUnstructuredContent`: every field of `fields` at `level`, keys sorted; a map
/// or a list opens a section, a scalar is a "Key:\tvalue" line. `path` is the JSON path of
/// `fields`, checked against [`SKIPPED_PATHS`].
fn push_fields(text: &mut String, level: usize, fields: &Map<String, Value>, path: &str) {
    for (key, value) in sorted(fields) {
        let field_path = format!("{path}.{key}");
        if SKIPPED_PATHS.contains(&field_path.as_str()) {
            continue;
        }
        let indent = "  ".repeat(level);
        let label = smart_label(key);
        match value {
            Value::Object(children) => {
                let _ = writeln!(text, "{indent}{label}:");
                push_fields(text, level + 1, children, &field_path);
            }
            Value::Array(items) => {
                let _ = writeln!(text, "{indent}{label}:");
                for item in items {
                    match item {
                        Value::Object(children) => {
                            push_fields(text, level + 1, children, &field_path)
                        }
                        scalar => {
                            let _ = writeln!(text, "{indent}  {}", go_value(scalar));
                        }
                    }
                }
            }
            scalar => {
                let _ = writeln!(text, "{indent}{label}:\t{}", go_value(scalar));
            }
        }
    }
}

/// A JSON value as Go's `%v` prints what kubectl decoded it into.
fn go_value(value: &Value) -> String {
    match value {
        Value::Null => "<nil>".to_string(),
        Value::Bool(flag) => flag.to_string(),
        Value::Number(number) => number.to_string(),
        Value::String(text) => text.clone(),
        Value::Array(items) => {
            let items: Vec<String> = items.iter().map(go_value).collect();
            format!("[{}]", items.join(" "))
        }
        Value::Object(fields) => {
            let entries: Vec<String> = sorted(fields)
                .into_iter()
                .map(|(key, value)| format!("{key}:{}", go_value(value)))
                .collect();
            format!("map[{}]", entries.join(" "))
        }
    }
}

/// The fields of a JSON map by key, in byte order as Go's `sort.Strings` has them.
fn sorted(fields: &Map<String, Value>) -> Vec<(&String, &Value)> {
    let mut entries: Vec<(&String, &Value)> = fields.iter().collect();
    entries.sort_by_key(|(key, _)| *key);
    entries
}

/// kubectl's `smartLabelFor`: a camelCase JSON key as words, "replicaPoolInfo" ->
/// "Replica Pool Info", "uid" -> "UID", "targetIP" -> "Target IP". Keys holding anything but
/// letters and '-' (label keys, IDs) are printed as they are.
fn smart_label(key: &str) -> String {
    if key.chars().any(|c| !c.is_alphabetic() && c != '-') {
        return key.to_string();
    }
    let words = merge_acronym_runs(split_camel_case(key));
    let words: Vec<String> = words
        .into_iter()
        .map(|word| {
            let upper = word.to_uppercase();
            if ACRONYMS.contains(&upper.as_str()) {
                upper
            } else if word.to_lowercase() == word {
                capitalize(&word)
            } else {
                word
            }
        })
        .collect();
    words.join(" ")
}

/// github.com/fatih/camelcase `Split`: runs of lower-case, upper-case, digits and other
/// characters, with the last capital of a run moved to a following lower-case run
/// ("PDFLoader" -> "PDF", "Loader").
fn split_camel_case(key: &str) -> Vec<String> {
    let mut runs: Vec<Vec<char>> = Vec::new();
    let mut last_class = None;
    for character in key.chars() {
        let class = char_class(character);
        match runs.last_mut() {
            Some(run) if last_class == Some(class) => run.push(character),
            _ => runs.push(vec![character]),
        }
        last_class = Some(class);
    }
    for index in 0..runs.len().saturating_sub(1) {
        let starts_upper = runs[index].first().is_some_and(|c| c.is_uppercase());
        let next_starts_lower = runs[index + 1].first().is_some_and(|c| c.is_lowercase());
        if starts_upper && next_starts_lower {
            if let Some(capital) = runs[index].pop() {
                runs[index + 1].insert(0, capital);
            }
        }
    }
    runs.into_iter()
        .filter(|run| !run.is_empty())
        .map(String::from_iter)
        .collect()
}

fn char_class(character: char) -> u8 {
    if character.is_lowercase() {
        1
    } else if character.is_uppercase() {
        2
    } else if character.is_numeric() {
        3
    } else {
        4
    }
}

/// kubectl joins a run of two or more capitals to the capitalised word after it
/// ("IO", "Seq" -> "IOSeq").
fn merge_acronym_runs(words: Vec<String>) -> Vec<String> {
    let mut merged: Vec<String> = Vec::with_capacity(words.len());
    let mut words = words.into_iter().peekable();
    while let Some(word) = words.next() {
        let all_capitals = word.chars().all(|c| !c.is_alphabetic() || c.is_uppercase());
        let next_is_capitalised = words
            .peek()
            .and_then(|next| next.chars().next())
            .is_some_and(char::is_uppercase);
        match words.next_if(|_| word.len() >= 2 && all_capitals && next_is_capitalised) {
            Some(next) => merged.push(word + &next),
            None => merged.push(word),
        }
    }
    merged
}

fn capitalize(word: &str) -> String {
    let mut characters = word.chars();
    match characters.next() {
        Some(first) => first.to_uppercase().chain(characters).collect(),
        None => String::new(),
    }
}

/// kubectl's `DescribeEvents`: oldest (by last timestamp) first; AGE is the age of the first
/// occurrence, or "<last> (x<count> over <first>)" for a repeated event.
fn events_table(events: &[Event], now: SystemTime) -> String {
    let mut sorted: Vec<&Event> = events.iter().collect();
    sorted.sort_by_key(|event| parse_timestamp(&event.last_timestamp));
    let mut text = String::from("Events:\n  Type\tReason\tAge\tFrom\tMessage\n");
    text.push_str("  ----\t------\t----\t----\t-------\n");
    for event in sorted {
        let first_seen = age(&event.first_timestamp, now);
        let interval = if event.count > 1 {
            let last_seen = age(&event.last_timestamp, now);
            format!("{last_seen} (x{} over {first_seen})", event.count)
        } else {
            first_seen
        };
        let _ = writeln!(
            text,
            "  {}\t{}\t{}\t{}\t{}",
            event.event_type,
            event.reason,
            interval,
            event.source.component,
            event.message.trim()
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn smart_labels() {
        let table: &[(&str, &str)] = &[
            ("replicaPoolInfo", "Replica Pool Info"),
            ("uid", "UID"),
            ("roThresholdLimit", "Ro Threshold Limit"),
            ("apiVersion", "API Version"),
            ("kind", "Kind"),
            ("creationTimestamp", "Creation Timestamp"),
            ("targetIP", "Target IP"),
            ("checkpointedIOSeq", "Checkpointed IOSeq"),
            ("replicaid", "Replicaid"),
            ("dataRaidGroupType", "Data Raid Group Type"),
            ("ownerReferences", "Owner References"),
            ("blockOwnerDeletion", "Block Owner Deletion"),
            ("URLPath", "URLPath"),
            ("guid", "GUID"),
            ("known-replicas", "Known - Replicas"),
            ("kubernetes.io/hostname", "kubernetes.io/hostname"),
            ("6061958727369563311", "6061958727369563311"),
            ("io_seq", "io_seq"),
            ("", ""),
        ];
        for (key, expected) in table {
            assert_eq!(smart_label(key), *expected, "key {key:?}");
        }
    }

    #[test]
    fn camel_case_split() {
        assert_eq!(split_camel_case("PDFLoader"), ["PDF", "Loader"]);
        assert_eq!(
            split_camel_case("replicaPoolInfo"),
            ["replica", "Pool", "Info"]
        );
        assert_eq!(
            split_camel_case("checkpointedIOSeq"),
            ["checkpointed", "IO", "Seq"]
        );
        assert_eq!(split_camel_case("targetIP"), ["target", "IP"]);
    }

    #[test]
    fn long_annotations_are_cut_on_lines_of_their_own() {
        let key = "openebs.io/note";
        let annotations = BTreeMap::from([(key.to_string(), "x".repeat(150))]);
        let mut text = String::new();
        push_annotations(&mut text, &annotations);
        assert_eq!(
            text,
            format!("Annotations:\t{key}:\n\t  {}...\n", "x".repeat(138))
        );
        assert_eq!(shorten("ééé", 3), "é...");
    }

    #[test]
    fn go_values() {
        let value = serde_json::json!({"b": [1, "two", null], "a": true});
        assert_eq!(go_value(&value), "map[a:true b:[1 two <nil>]]");
    }
}

#[cfg(test)]
mod golden_tests {
    use super::*;
    use crate::output::fixtures::{self, assert_golden, now};

    #[test]
    fn describe_cvc_with_its_events() {
        let described = describe(&fixtures::cvc(), &fixtures::cvc_events(), now());
        assert_golden!("describe-cvc.txt", described);
    }

    #[test]
    fn describe_cvr_without_events() {
        let cvr = fixtures::cvrs().remove(0);
        assert_golden!("describe-cvr.txt", describe(&cvr, &[], now()));
    }

    #[test]
    fn describe_cspc_lists_of_maps() {
        assert_golden!("describe-cspc.txt", describe(&fixtures::cspc(), &[], now()));
    }

    #[test]
    fn describe_an_empty_object() {
        let object: Object = tandem_objects::CStorVolume::default().into();
        let described = describe(&object, &[], now());
        let expected = [
            "Name:",
            "Namespace:    openebs",
            "Labels:       <none>",
            "Annotations:  <none>",
            "API Version:  cstor.openebs.io/v1",
            "Kind:         CStorVolume",
            "Metadata:",
            "Spec:",
            "  Capacity:                    0",
            "  Consistency Factor:          0",
            "  Desired Replication Factor:  0",
            "  Replication Factor:          0",
            "Events:                        <none>",
            "",
        ]
        .join("\n");
        assert_eq!(described, expected);
    }
}
