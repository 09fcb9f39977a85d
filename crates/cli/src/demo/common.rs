//! What the demo's steps share: the pools as the demo sees them, the volume's config and
//! events, the `get` tables and command lines it prints, and the pool patch it sends.

use std::time::{Duration, SystemTime};

use anyhow::{anyhow, Result};
use serde_json::json;
use tandem_objects::{
    CStorPoolInstance, CStorPoolInstancePhase, CStorVolumeConfig, CStorVolumeReplica, Event, Kind,
    Object, Quantity, LABEL_CSTOR_POOL_CLUSTER, LABEL_PERSISTENT_VOLUME,
};

use super::{Demo, NAMESPACE};
use crate::cluster::POOL_CLUSTER;
use crate::kubectl::reference;
use crate::kubectl::volume::event_line;
use crate::output::{no_resources, render_table};
use crate::wait::Deadline;
use crate::workload::human;

/// A step's heading: "== Step 4: ...".
pub(super) fn heading(text: &str) {
    println!();
    println!("== {text}");
}

/// A command line, as the user would type it to see the same.
pub(super) fn command(text: &str) {
    println!("$ {text}");
}

/// "3.4 s".
pub(super) fn seconds(duration: Duration) -> String {
    format!("{:.1} s", duration.as_secs_f64())
}

/// A pool as the demo needs it.
#[derive(Debug, Clone)]
pub(super) struct Pool {
    pub(super) name: String,
    pub(super) node: String,
    /// The ALLOCATED column.
    pub(super) allocated: Quantity,
    /// ONLINE and not read-only: a replica can go there.
    pub(super) usable: bool,
}

impl Pool {
    fn from(instance: &CStorPoolInstance) -> Pool {
        Pool {
            name: instance.name().to_string(),
            node: instance.spec.host_name.clone(),
            allocated: instance.status.capacity.used,
            usable: instance.status.phase == CStorPoolInstancePhase::Online
                && !instance.status.read_only,
        }
    }
}

impl Demo {
    /// A deadline for one step: `--timeout` from now.
    pub(super) fn deadline(&self) -> Deadline {
        Deadline::after(self.timeout)
    }

    /// The pools of the pool cluster, by name.
    pub(super) async fn pools(&self) -> Result<Vec<Pool>> {
        let selector = format!("{LABEL_CSTOR_POOL_CLUSTER}={POOL_CLUSTER}");
        let instances: Vec<CStorPoolInstance> = self
            .api
            .list_typed(Kind::CStorPoolInstance, Some(NAMESPACE), Some(&selector))
            .await?;
        let mut pools: Vec<Pool> = instances.iter().map(Pool::from).collect();
        pools.sort_by(|a, b| a.name.cmp(&b.name));
        Ok(pools)
    }

    /// The pool's ALLOCATED now.
    pub(super) async fn allocated(&self, pool: &str) -> Result<Quantity> {
        self.pools()
            .await?
            .into_iter()
            .find(|found| found.name == pool)
            .map(|found| found.allocated)
            .ok_or_else(|| anyhow!("pool {pool} is gone"))
    }

    /// The volume's CStorVolumeConfig now.
    pub(super) async fn config(&self) -> Result<CStorVolumeConfig> {
        let object = self
            .api
            .get(Kind::CStorVolumeConfig, NAMESPACE, &self.volume)
            .await?;
        Ok(CStorVolumeConfig::try_from(object)?)
    }

    /// The events about the volume's CStorVolumeConfig, oldest first.
    pub(super) async fn events(&self) -> Result<Vec<Event>> {
        let object = self
            .api
            .get(Kind::CStorVolumeConfig, NAMESPACE, &self.volume)
            .await?;
        Ok(self.api.events_about(&object).await?)
    }

    /// Prints, with `print`, the events not printed yet (a progress bar prints above itself).
    pub(super) async fn print_new_events(&mut self, print: impl Fn(String)) -> Result<Vec<Event>> {
        let events = self.events().await?;
        for event in &events {
            if self
                .seen_events
                .insert((event.metadata.name.clone(), event.count))
            {
                print(event_line(event));
            }
        }
        Ok(events)
    }

    /// Sets `spec.policy.replicaPoolInfo` with a JSON merge patch, as `tandem patch` does.
    pub(super) async fn patch_pools(&mut self, pools: &[String]) -> Result<()> {
        let patch = json!({
            "spec": {"policy": {"replicaPoolInfo":
                pools.iter().map(|pool| json!({"poolName": pool})).collect::<Vec<_>>()
            }}
        });
        command(&format!(
            "tandem patch cvc {} -n openebs --type merge -p '{patch}'",
            self.volume
        ));
        // Only the events after the patch are news.
        for event in self.events().await? {
            self.seen_events
                .insert((event.metadata.name.clone(), event.count));
        }
        self.api
            .patch(Kind::CStorVolumeConfig, NAMESPACE, &self.volume, &patch)
            .await
            .map_err(|error| anyhow!("the control plane refused the patch: {error}"))?;
        println!(
            "{} patched",
            reference(Kind::CStorVolumeConfig, &self.volume)
        );
        Ok(())
    }

    /// Prints `shown` and the table it prints: the objects of `kind` (those matching
    /// `selector`, when given).
    pub(super) async fn list_table(
        &self,
        shown: &str,
        kind: Kind,
        selector: Option<&str>,
        wide: bool,
    ) -> Result<()> {
        command(shown);
        let objects = self.api.list(kind, Some(NAMESPACE), selector).await?.items;
        print_table(kind, &objects, wide);
        Ok(())
    }

    /// `tandem get cvc NAME -n openebs`.
    pub(super) async fn volume_table(&self) -> Result<()> {
        command(&format!("tandem get cvc {} -n openebs", self.volume));
        let kind = Kind::CStorVolumeConfig;
        let object = self.api.get(kind, NAMESPACE, &self.volume).await?;
        print_table(kind, &[object], false);
        Ok(())
    }

    pub(super) async fn pool_table(&self) -> Result<()> {
        self.list_table(
            "tandem get cspi -n openebs",
            Kind::CStorPoolInstance,
            None,
            false,
        )
        .await
    }

    pub(super) async fn replica_table(&self) -> Result<()> {
        let selector = format!("{LABEL_PERSISTENT_VOLUME}={}", self.volume);
        self.list_table(
            &format!("tandem get cvr -n openebs -o wide -l {selector}"),
            Kind::CStorVolumeReplica,
            Some(&selector),
            true,
        )
        .await
    }
}

/// The table `tandem get` prints for `objects` of `kind` (kubectl's line when there are none).
fn print_table(kind: Kind, objects: &[Object], wide: bool) {
    let table = render_table(kind, objects, wide, SystemTime::now(), false, true);
    if table.is_empty() {
        println!("{}", no_resources(Some(NAMESPACE)));
    } else {
        print!("{table}");
    }
}

/// True if `events` has one whose message contains `message` and that is not in `baseline`
/// (new, or repeated since: a higher count).
pub(super) fn has_new_event(events: &[Event], baseline: &[Event], message: &str) -> bool {
    events.iter().any(|event| {
        event.message.contains(message)
            && !baseline
                .iter()
                .any(|old| old.metadata.name == event.metadata.name && old.count == event.count)
    })
}

pub(super) fn newest_event(events: &[Event]) -> String {
    events.last().map_or_else(
        || "none".to_string(),
        |event| {
            format!(
                "{} {}: {}",
                event.event_type.as_str(),
                event.reason,
                event.message
            )
        },
    )
}

pub(super) fn replica_status(replica: &CStorVolumeReplica) -> String {
    let mut text = format!("phase {}", replica.status.phase);
    if let Some(rebuild) = &replica.status.rebuild {
        text.push_str(&format!(
            ", rebuild {} of {} at {}/s",
            human(rebuild.bytes_done),
            human(rebuild.bytes_total),
            human(rebuild.bytes_per_second)
        ));
    }
    if !replica.status.message.is_empty() {
        text.push_str(&format!(", message {:?}", replica.status.message));
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn new_events_are_told_from_old_ones() {
        let event = |name: &str, count: u32, message: &str| {
            let mut event = Event::default();
            event.metadata.name = name.to_string();
            event.count = count;
            event.message = message.to_string();
            event
        };
        let done = "successfully scaled volume replicas to 3";
        let old = vec![event("a", 1, done)];
        assert!(!has_new_event(&old, &old, done));
        assert!(has_new_event(&[event("a", 2, done)], &old, done));
        assert!(has_new_event(&[event("b", 1, done)], &[], done));
        assert!(!has_new_event(&[event("b", 1, "other")], &[], done));
    }
}
