//! Recording events the way Kubernetes' event recorder does: a repeat of the same event on the
//! same object bumps its count and last time ("4s (x2 over 64m)") instead of adding a line.

use std::time::SystemTime;

use rand::Rng;
use tandem_objects::{Event, EventSource, EventType, Kind, Object, ObjectMeta, ObjectReference};

use crate::{Client, ClientError};

/// Records events from one component (the FROM column), e.g. "cstorvolumeclaim-controller".
#[derive(Clone)]
pub struct Recorder {
    client: Client,
    source: EventSource,
}

impl Recorder {
    pub fn new(client: Client, component: &str, host: &str) -> Recorder {
        Recorder {
            client,
            source: EventSource {
                component: component.to_string(),
                host: host.to_string(),
            },
        }
    }

    /// Records one event about `about`. A conflicting concurrent bump is retried once; a
    /// second conflict gives up (an event count is advice, not state).
    pub async fn record(
        &self,
        about: &Object,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), ClientError> {
        for _attempt in 0..2 {
            match self.record_once(about, event_type, reason, message).await {
                Err(error) if error.is_conflict() => continue,
                result => return result,
            }
        }
        Ok(())
    }

    async fn record_once(
        &self,
        about: &Object,
        event_type: EventType,
        reason: &str,
        message: &str,
    ) -> Result<(), ClientError> {
        let now = humantime::format_rfc3339_seconds(SystemTime::now()).to_string();
        let events: Vec<Event> = self
            .client
            .list_typed(Kind::Event, Some(about.namespace()), None)
            .await?;
        let repeat = events.into_iter().find(|event| {
            event.involved_object.kind == about.kind().name()
                && event.involved_object.name == about.name()
                && event.involved_object.uid == about.metadata().uid
                && event.event_type == event_type
                && event.reason == reason
                && event.message == message
                && event.source == self.source
        });
        if let Some(mut event) = repeat {
            event.count = event.count.saturating_add(1);
            event.last_timestamp = now;
            self.client.update(&Object::Event(event)).await?;
            return Ok(());
        }
        let suffix: u64 = rand::thread_rng().gen();
        let event = Event {
            metadata: ObjectMeta {
                name: format!("{}.{suffix:016x}", about.name()),
                namespace: about.namespace().to_string(),
                ..ObjectMeta::default()
            },
            event_type,
            reason: reason.to_string(),
            message: message.to_string(),
            involved_object: ObjectReference {
                api_version: about.kind().api_version().to_string(),
                kind: about.kind().name().to_string(),
                namespace: about.namespace().to_string(),
                name: about.name().to_string(),
                uid: about.metadata().uid.clone(),
                resource_version: String::new(),
            },
            source: self.source.clone(),
            count: 1,
            first_timestamp: now.clone(),
            last_timestamp: now,
        };
        self.client.create(&Object::Event(event)).await?;
        Ok(())
    }
}
