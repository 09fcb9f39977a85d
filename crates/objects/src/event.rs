//! Events: what the controllers tell users about an object ("successfully scaled volume replicas
//! to 3"), shaped like Kubernetes' core Events, which is what cStor records.

use std::fmt;

use serde::de::{Deserialize, Deserializer, IgnoredAny};
use serde::ser::{Serialize, Serializer};

use crate::kind::Kind;
use crate::meta::{ObjectMeta, ObjectReference};

/// Normal or Warning, the TYPE column of `describe`.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, Hash, Default, serde::Serialize, serde::Deserialize,
)]
pub enum EventType {
    #[default]
    Normal,
    Warning,
}

impl EventType {
    pub const fn as_str(self) -> &'static str {
        match self {
            EventType::Normal => "Normal",
            EventType::Warning => "Warning",
        }
    }
}

impl fmt::Display for EventType {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.as_str())
    }
}

/// Which component reported an event (the FROM column), e.g. "cstorvolumeclaim-controller".
#[derive(Debug, Clone, PartialEq, Eq, Default, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct EventSource {
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub component: String,
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub host: String,
}

/// One event. Repeats of the same event bump `count` and `last_timestamp` ("4s (x2 over 64m)").
/// Timestamps are RFC 3339 strings set by the caller.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Event {
    pub metadata: ObjectMeta,
    pub event_type: EventType,
    pub reason: String,
    pub message: String,
    pub involved_object: ObjectReference,
    pub source: EventSource,
    pub count: u32,
    pub first_timestamp: String,
    pub last_timestamp: String,
}

impl Event {
    pub const KIND: Kind = Kind::Event;

    pub fn name(&self) -> &str {
        &self.metadata.name
    }
}

#[derive(serde::Serialize)]
#[serde(rename_all = "camelCase")]
struct EventOutput<'a> {
    api_version: &'static str,
    kind: &'static str,
    metadata: &'a ObjectMeta,
    #[serde(rename = "type")]
    event_type: EventType,
    #[serde(skip_serializing_if = "str::is_empty")]
    reason: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    message: &'a str,
    involved_object: &'a ObjectReference,
    #[serde(skip_serializing_if = "crate::meta::is_default_behind_reference")]
    source: &'a EventSource,
    count: u32,
    #[serde(skip_serializing_if = "str::is_empty")]
    first_timestamp: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    last_timestamp: &'a str,
}

impl Serialize for Event {
    fn serialize<S: Serializer>(&self, serializer: S) -> Result<S::Ok, S::Error> {
        EventOutput {
            api_version: Kind::Event.api_version(),
            kind: Kind::Event.name(),
            metadata: &self.metadata,
            event_type: self.event_type,
            reason: &self.reason,
            message: &self.message,
            involved_object: &self.involved_object,
            source: &self.source,
            count: self.count,
            first_timestamp: &self.first_timestamp,
            last_timestamp: &self.last_timestamp,
        }
        .serialize(serializer)
    }
}

#[derive(serde::Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
struct EventInput {
    #[serde(default)]
    api_version: Option<String>,
    #[serde(default)]
    kind: Option<String>,
    #[serde(default)]
    metadata: ObjectMeta,
    #[serde(rename = "type", default)]
    event_type: EventType,
    #[serde(default)]
    reason: String,
    #[serde(default)]
    message: String,
    #[serde(default)]
    involved_object: ObjectReference,
    #[serde(default)]
    source: EventSource,
    #[serde(default)]
    count: u32,
    #[serde(default)]
    first_timestamp: String,
    #[serde(default)]
    last_timestamp: String,
    // Fields newer Kubernetes recorders add to every core Event; accepted and dropped so events
    // exported from a cStor cluster load.
    #[serde(default)]
    event_time: Option<IgnoredAny>,
    #[serde(default)]
    reporting_component: Option<IgnoredAny>,
    #[serde(default)]
    reporting_instance: Option<IgnoredAny>,
}

impl<'de> Deserialize<'de> for Event {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        let input = EventInput::deserialize(deserializer)?;
        crate::object::check_type_fields::<D::Error>(
            Kind::Event,
            input.api_version.as_deref(),
            input.kind.as_deref(),
        )?;
        let _dropped: [Option<IgnoredAny>; 3] = [
            input.event_time,
            input.reporting_component,
            input.reporting_instance,
        ];
        Ok(Event {
            metadata: input.metadata,
            event_type: input.event_type,
            reason: input.reason,
            message: input.message,
            involved_object: input.involved_object,
            source: input.source,
            count: input.count,
            first_timestamp: input.first_timestamp,
            last_timestamp: input.last_timestamp,
        })
    }
}
