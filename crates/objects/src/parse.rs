//! Reading objects from YAML (one document, or a `---` stream for `apply -f`) and JSON, with
//! errors that say what is wrong and where; writing them back.
//!
//! Each document is read twice. The first pass reads it as a plain tree to find its `kind` and
//! check `apiVersion` and `metadata.name` with messages of our own. The second pass reads it
//! straight into the kind's type, so the YAML library reports a bad field with its path, line and
//! column ("spec.policy: unknown field `replicaPoolinfo` ... at line 12 column 5"). To give the
//! first pass's refusals a line and column too, the document is read a third time, only then,
//! with a reader that fails on purpose at the field in question: the library puts the location
//! on that failure.

use std::fmt;

use serde::de::{Deserialize, DeserializeOwned, Deserializer, Visitor};

use crate::kind::{known_kinds_for_messages, Kind};
use crate::meta::{validate_namespace, validate_object_name, NameError};
use crate::object::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Object,
};
use crate::Event;

/// A place in the input, both counted from 1.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Location {
    pub line: usize,
    pub column: usize,
}

/// What was wrong with the input.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ParseErrorReason {
    /// The text is not valid YAML or JSON, or not plain data (e.g. a mapping with a list as key).
    #[error("{0}")]
    Syntax(String),
    #[error("the input holds no object")]
    Empty,
    #[error(
        "expected one object, but the input holds {count} documents separated by ---; \
         read it as a stream to get them all"
    )]
    SeveralDocuments { count: usize },
    #[error("an object must be a mapping with apiVersion, kind, metadata and spec, not {found}")]
    NotAMapping { found: &'static str },
    #[error(
        "the object has no `kind`; known kinds: {}",
        known_kinds_for_messages()
    )]
    MissingKind,
    #[error(
        "unknown kind {found:?}{}; known kinds: {}",
        did_you_mean(*suggestion),
        known_kinds_for_messages()
    )]
    UnknownKind {
        found: String,
        /// Set when `found` is another spelling of a known kind ("cstorvolumeconfig").
        suggestion: Option<Kind>,
    },
    #[error("{kind} has no `apiVersion`; it must be {expected:?}")]
    MissingApiVersion { kind: Kind, expected: &'static str },
    #[error("{kind} has apiVersion {found:?}, but it must be {expected:?}")]
    WrongApiVersion {
        kind: Kind,
        found: String,
        expected: &'static str,
    },
    #[error("{kind} has no metadata.name")]
    MissingName { kind: Kind },
    #[error("{kind}: `name` must be under `metadata` (metadata.name), not at the top level")]
    MisplacedName { kind: Kind },
    #[error("{kind} metadata.name: {error}")]
    InvalidName { kind: Kind, error: NameError },
    #[error("{kind} metadata.namespace: {error}")]
    InvalidNamespace { kind: Kind, error: NameError },
    /// A field has the wrong type, an unknown name, or a bad value; the message names its path.
    #[error("invalid {kind}: {message}")]
    InvalidField { kind: Kind, message: String },
}

fn did_you_mean(suggestion: Option<Kind>) -> String {
    match suggestion {
        Some(kind) => format!(
            " (did you mean {:?}? `kind` is case-sensitive)",
            kind.name()
        ),
        None => String::new(),
    }
}

/// A refusal, with where it was found when that is known.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParseError {
    pub reason: ParseErrorReason,
    pub location: Option<Location>,
    /// Which document of a `---` stream (from 1); only set when the stream has several.
    pub document: Option<usize>,
}

impl fmt::Display for ParseError {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut place = Vec::new();
        if let Some(document) = self.document {
            place.push(format!("document {document}"));
        }
        if let Some(location) = self.location {
            place.push(format!(
                "line {}, column {}",
                location.line, location.column
            ));
        }
        if place.is_empty() {
            write!(formatter, "{}", self.reason)
        } else {
            write!(formatter, "{}: {}", place.join(", "), self.reason)
        }
    }
}

impl std::error::Error for ParseError {}

/// Reads exactly one object from YAML. Empty documents (a lone `---`, only comments) are
/// ignored; more than one object is refused, so nothing is silently dropped.
pub fn parse_yaml(text: &str) -> Result<Object, ParseError> {
    let mut objects = parse_yaml_stream(text)?;
    if objects.len() > 1 {
        return Err(ParseError {
            reason: ParseErrorReason::SeveralDocuments {
                count: objects.len(),
            },
            location: None,
            document: None,
        });
    }
    objects.pop().ok_or(ParseError {
        reason: ParseErrorReason::Empty,
        location: None,
        document: None,
    })
}

/// Reads every object of a YAML stream (documents separated by `---`), in order, skipping empty
/// documents. Stops at the first bad document: `apply -f` should change nothing when any part of
/// the file is wrong.
pub fn parse_yaml_stream(text: &str) -> Result<Vec<Object>, ParseError> {
    // Pass 1: every document as a plain tree. yaml_serde's document iterator repeats a syntax
    // error forever instead of ending, so stop at the first error.
    let mut trees = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        match serde_json::Value::deserialize(document) {
            Ok(tree) => trees.push(tree),
            Err(error) => {
                let (message, location) = split_yaml_error(&error);
                return Err(ParseError {
                    reason: ParseErrorReason::Syntax(message),
                    location,
                    document: (index > 0).then_some(index + 1),
                });
            }
        }
    }
    let several_documents = trees.len() > 1;

    // Pass 2: each non-empty document into its kind's type.
    let mut objects = Vec::new();
    for (index, document) in yaml_serde::Deserializer::from_str(text).enumerate() {
        let Some(tree) = trees.get(index) else {
            break;
        };
        if tree.is_null() {
            continue;
        }
        let document_number = several_documents.then_some(index + 1);
        let refuse = |reason: ParseErrorReason, target: LocateTarget| ParseError {
            reason,
            location: locate_in_yaml(text, index, target),
            document: document_number,
        };
        let kind = check_header(tree).map_err(|(reason, target)| refuse(reason, target))?;
        let object = deserialize_object(kind, document).map_err(|error| {
            let (message, location) = split_yaml_error(&error);
            ParseError {
                reason: ParseErrorReason::InvalidField { kind, message },
                location,
                document: document_number,
            }
        })?;
        check_names(&object).map_err(|(reason, target)| refuse(reason, target))?;
        objects.push(object);
    }
    if objects.is_empty() {
        return Err(ParseError {
            reason: ParseErrorReason::Empty,
            location: None,
            document: None,
        });
    }
    Ok(objects)
}

/// Reads one object from JSON.
pub fn parse_json(text: &str) -> Result<Object, ParseError> {
    let tree: serde_json::Value = serde_json::from_str(text).map_err(|error| {
        let (message, location) = split_json_error(&error);
        ParseError {
            reason: ParseErrorReason::Syntax(message),
            location,
            document: None,
        }
    })?;
    if tree.is_null() {
        return Err(ParseError {
            reason: ParseErrorReason::Empty,
            location: None,
            document: None,
        });
    }
    let refuse = |reason: ParseErrorReason, target: LocateTarget| ParseError {
        reason,
        location: locate_in_json(text, target),
        document: None,
    };
    let kind = check_header(&tree).map_err(|(reason, target)| refuse(reason, target))?;
    let mut deserializer = serde_json::Deserializer::from_str(text);
    let object = deserialize_object(kind, &mut deserializer)
        .and_then(|object| deserializer.end().map(|()| object))
        .map_err(|error| {
            let (message, location) = split_json_error(&error);
            ParseError {
                reason: ParseErrorReason::InvalidField { kind, message },
                location,
                document: None,
            }
        })?;
    check_names(&object).map_err(|(reason, target)| refuse(reason, target))?;
    Ok(object)
}

/// The object as one YAML document (no leading `---`).
pub fn to_yaml(object: &Object) -> String {
    // Objects hold only strings, numbers, booleans, lists and string-keyed maps, which YAML can
    // always represent; a failure here is a bug in this crate, not bad input.
    yaml_serde::to_string(object).expect("every object serializes to YAML")
}

/// Several objects as one YAML stream, separated by `---`, readable by [`parse_yaml_stream`].
pub fn to_yaml_stream(objects: &[Object]) -> String {
    objects
        .iter()
        .map(to_yaml)
        .collect::<Vec<_>>()
        .join("---\n")
}

/// The object as pretty-printed JSON.
pub fn to_json(object: &Object) -> String {
    // As for YAML: nothing an object holds can fail to serialize.
    serde_json::to_string_pretty(object).expect("every object serializes to JSON")
}

fn deserialize_object<'de, D: Deserializer<'de>>(
    kind: Kind,
    deserializer: D,
) -> Result<Object, D::Error> {
    match kind {
        Kind::CStorPoolCluster => {
            CStorPoolCluster::deserialize(deserializer).map(Object::CStorPoolCluster)
        }
        Kind::CStorPoolInstance => {
            CStorPoolInstance::deserialize(deserializer).map(Object::CStorPoolInstance)
        }
        Kind::CStorVolumeConfig => {
            CStorVolumeConfig::deserialize(deserializer).map(Object::CStorVolumeConfig)
        }
        Kind::CStorVolume => CStorVolume::deserialize(deserializer).map(Object::CStorVolume),
        Kind::CStorVolumeReplica => {
            CStorVolumeReplica::deserialize(deserializer).map(Object::CStorVolumeReplica)
        }
        Kind::Event => Event::deserialize(deserializer).map(Object::Event),
    }
}

/// The checks of pass 1: a mapping, a known `kind`, its `apiVersion`, a `metadata.name`. On a
/// refusal, also says where to point.
fn check_header(tree: &serde_json::Value) -> Result<Kind, (ParseErrorReason, LocateTarget)> {
    let Some(fields) = tree.as_object() else {
        return Err((
            ParseErrorReason::NotAMapping {
                found: describe(tree),
            },
            LocateTarget::Root,
        ));
    };
    let kind_value = fields
        .get("kind")
        .ok_or((ParseErrorReason::MissingKind, LocateTarget::Root))?;
    let kind = match kind_value.as_str() {
        Some(text) => Kind::from_kind_field(text).ok_or_else(|| {
            (
                ParseErrorReason::UnknownKind {
                    found: text.to_string(),
                    suggestion: Kind::from_cli_name(text).ok(),
                },
                LocateTarget::Kind,
            )
        })?,
        None => {
            return Err((
                ParseErrorReason::UnknownKind {
                    found: kind_value.to_string(),
                    suggestion: None,
                },
                LocateTarget::Kind,
            ))
        }
    };
    let expected = kind.api_version();
    match fields.get("apiVersion") {
        None => {
            return Err((
                ParseErrorReason::MissingApiVersion { kind, expected },
                LocateTarget::Root,
            ))
        }
        Some(value) if value.as_str() == Some(expected) => {}
        Some(value) => {
            let found = value
                .as_str()
                .map(str::to_string)
                .unwrap_or_else(|| value.to_string());
            return Err((
                ParseErrorReason::WrongApiVersion {
                    kind,
                    found,
                    expected,
                },
                LocateTarget::ApiVersion,
            ));
        }
    }
    let metadata = fields.get("metadata");
    let name = metadata.and_then(|metadata| metadata.get("name"));
    let name_missing = match name {
        None | Some(serde_json::Value::Null) => true,
        Some(value) => value.as_str() == Some(""),
    };
    if name_missing {
        return Err(if fields.contains_key("name") {
            (
                ParseErrorReason::MisplacedName { kind },
                LocateTarget::TopLevelName,
            )
        } else if metadata.is_some() {
            (
                ParseErrorReason::MissingName { kind },
                LocateTarget::Metadata,
            )
        } else {
            (ParseErrorReason::MissingName { kind }, LocateTarget::Root)
        });
    }
    Ok(kind)
}

/// Names end up in paths and in other objects' names, so they are checked as Kubernetes does.
fn check_names(object: &Object) -> Result<(), (ParseErrorReason, LocateTarget)> {
    let kind = object.kind();
    validate_object_name(object.name()).map_err(|error| {
        (
            ParseErrorReason::InvalidName { kind, error },
            LocateTarget::MetadataName,
        )
    })?;
    validate_namespace(object.namespace()).map_err(|error| {
        (
            ParseErrorReason::InvalidNamespace { kind, error },
            LocateTarget::MetadataNamespace,
        )
    })
}

fn describe(tree: &serde_json::Value) -> &'static str {
    match tree {
        serde_json::Value::Null => "an empty document",
        serde_json::Value::Bool(_) => "true or false",
        serde_json::Value::Number(_) => "a number",
        serde_json::Value::String(_) => "a string",
        serde_json::Value::Array(_) => "a list",
        serde_json::Value::Object(_) => "a mapping",
    }
}

/// Splits a yaml_serde error into its message without the location, and the location.
fn split_yaml_error(error: &yaml_serde::Error) -> (String, Option<Location>) {
    let location = error.location().map(|location| Location {
        line: location.line(),
        column: location.column(),
    });
    (strip_location(error.to_string(), location), location)
}

/// Same for serde_json, which says line 0 when it has no location.
fn split_json_error(error: &serde_json::Error) -> (String, Option<Location>) {
    let location = (error.line() > 0).then(|| Location {
        line: error.line(),
        column: error.column(),
    });
    (strip_location(error.to_string(), location), location)
}

/// Both libraries write " at line L column C" into the message (not always at the end); the
/// location is reported separately, so take it out.
fn strip_location(message: String, location: Option<Location>) -> String {
    match location {
        Some(location) => message.replacen(
            &format!(" at line {} column {}", location.line, location.column),
            "",
            1,
        ),
        None => message,
    }
}

// ---------------------------------------------------------------------------------------------
// Locating a field for pass 1's refusals

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum LocateTarget {
    Root,
    Kind,
    ApiVersion,
    Metadata,
    MetadataName,
    MetadataNamespace,
    TopLevelName,
}

fn locate_in_yaml(text: &str, index: usize, target: LocateTarget) -> Option<Location> {
    fn run<T: DeserializeOwned>(text: &str, index: usize) -> Option<Location> {
        let document = yaml_serde::Deserializer::from_str(text).nth(index)?;
        let error = T::deserialize(document).err()?;
        split_yaml_error(&error).1
    }
    match target {
        LocateTarget::Root => run::<FailHere>(text, index),
        LocateTarget::Kind => run::<AtKind>(text, index),
        LocateTarget::ApiVersion => run::<AtApiVersion>(text, index),
        LocateTarget::Metadata => run::<AtMetadata>(text, index),
        LocateTarget::MetadataName => run::<AtMetadataName>(text, index),
        LocateTarget::MetadataNamespace => run::<AtMetadataNamespace>(text, index),
        LocateTarget::TopLevelName => run::<AtName>(text, index),
    }
}

fn locate_in_json(text: &str, target: LocateTarget) -> Option<Location> {
    fn run<T: DeserializeOwned>(text: &str) -> Option<Location> {
        let error = serde_json::from_str::<T>(text).err()?;
        split_json_error(&error).1
    }
    match target {
        LocateTarget::Root => run::<FailHere>(text),
        LocateTarget::Kind => run::<AtKind>(text),
        LocateTarget::ApiVersion => run::<AtApiVersion>(text),
        LocateTarget::Metadata => run::<AtMetadata>(text),
        LocateTarget::MetadataName => run::<AtMetadataName>(text),
        LocateTarget::MetadataNamespace => run::<AtMetadataNamespace>(text),
        LocateTarget::TopLevelName => run::<AtName>(text),
    }
}

/// Fails on whatever value it meets. The visitor's default methods refuse every value, and the
/// YAML and JSON readers stamp that refusal with the value's location.
struct FailHere;

impl<'de> Deserialize<'de> for FailHere {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct RefuseEverything;
        impl<'de> Visitor<'de> for RefuseEverything {
            type Value = FailHere;
            fn expecting(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
                formatter.write_str("nothing (this reader only finds locations)")
            }
        }
        deserializer.deserialize_any(RefuseEverything)
    }
}

// Unknown fields are ignored by these on purpose: only the named field matters.
#[derive(serde::Deserialize)]
struct AtKind {
    #[allow(dead_code)]
    kind: FailHere,
}

#[derive(serde::Deserialize)]
struct AtApiVersion {
    #[serde(rename = "apiVersion")]
    #[allow(dead_code)]
    api_version: FailHere,
}

#[derive(serde::Deserialize)]
struct AtMetadata {
    #[allow(dead_code)]
    metadata: FailHere,
}

#[derive(serde::Deserialize)]
struct AtName {
    #[allow(dead_code)]
    name: FailHere,
}

#[derive(serde::Deserialize)]
struct AtMetadataName {
    #[allow(dead_code)]
    metadata: AtName,
}

#[derive(serde::Deserialize)]
struct AtNamespace {
    #[allow(dead_code)]
    namespace: FailHere,
}

#[derive(serde::Deserialize)]
struct AtMetadataNamespace {
    #[allow(dead_code)]
    metadata: AtNamespace,
}
