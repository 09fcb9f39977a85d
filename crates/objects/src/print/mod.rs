//! What `get` shows of each kind, defined once for the `tandem` CLI and the control plane's
//! server-side printing (the `Table` kubectl asks for): the columns (the seed's, from cStor's
//! CRDs, and kubectl's own for Events), the extra `-o wide` ones (priority 1), and each
//! object's cells, typed as Kubernetes sends them (integers, booleans, text, or nothing for a
//! field the object does not hold yet). Pure: ages are taken at a `now` the caller passes.

mod age;

use std::fmt;
use std::time::SystemTime;

use crate::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Event,
    Kind, Object, Quantity, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME,
    LABEL_CSTOR_POOL_INSTANCE_NAME,
};

pub use age::{age, human_duration, parse_timestamp};

/// What a column holds, as a `Table`'s column definition names it (OpenAPI types; "date" is a
/// timestamp shown as an age).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ColumnType {
    String,
    Integer,
    Boolean,
    Date,
}

impl ColumnType {
    pub const fn as_str(self) -> &'static str {
        match self {
            ColumnType::String => "string",
            ColumnType::Integer => "integer",
            ColumnType::Boolean => "boolean",
            ColumnType::Date => "date",
        }
    }
}

/// One column of a kind's table.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Column {
    /// As a CRD's printer column names it ("HealthyInstances"); kubectl prints it in capitals.
    pub name: &'static str,
    pub column_type: ColumnType,
    /// "name" for the column holding the object's name, else empty.
    pub format: &'static str,
    pub description: &'static str,
    /// 0: always shown; 1: only with `-o wide`.
    pub priority: u8,
}

impl Column {
    /// The header kubectl prints: the name in capitals.
    pub fn header(&self) -> String {
        self.name.to_uppercase()
    }

    pub const fn wide_only(&self) -> bool {
        self.priority > 0
    }
}

const NAME_DESCRIPTION: &str = "Name must be unique within a namespace. Is required when creating \
resources, although some resources may allow a client to request the generation of an \
appropriate name automatically. Name is primarily intended for creation idempotence and \
configuration definition. Cannot be updated. More info: \
https://kubernetes.io/docs/concepts/overview/working-with-objects/names#names";

const AGE_DESCRIPTION: &str = "Age of the object, from its creation timestamp";

const fn column(
    name: &'static str,
    column_type: ColumnType,
    description: &'static str,
    priority: u8,
) -> Column {
    Column {
        name,
        column_type,
        format: "",
        description,
        priority,
    }
}

const fn text(name: &'static str, description: &'static str) -> Column {
    column(name, ColumnType::String, description, 0)
}

const fn wide_text(name: &'static str, description: &'static str) -> Column {
    column(name, ColumnType::String, description, 1)
}

const NAME: Column = Column {
    name: "Name",
    column_type: ColumnType::String,
    format: "name",
    description: NAME_DESCRIPTION,
    priority: 0,
};

const AGE: Column = column("Age", ColumnType::Date, AGE_DESCRIPTION, 0);

const CSPC_COLUMNS: &[Column] = &[
    NAME,
    column(
        "HealthyInstances",
        ColumnType::Integer,
        "The number of healthy cStor pool instances",
        0,
    ),
    column(
        "ProvisionedInstances",
        ColumnType::Integer,
        "The number of provisioned cStor pool instances",
        0,
    ),
    column(
        "DesiredInstances",
        ColumnType::Integer,
        "The number of cStor pool instances desired (one per pool spec)",
        0,
    ),
    AGE,
];

const CSPI_COLUMNS: &[Column] = &[
    NAME,
    text("HostName", "The node the pool is on"),
    text("Allocated", "The space the pool has allocated"),
    text("Free", "The space the pool has free"),
    text("Capacity", "The pool's total capacity"),
    wide_text(
        "Provisioned",
        "The sizes of the volume replicas on the pool, added up (thin ones take less)",
    ),
    column(
        "ReadOnly",
        ColumnType::Boolean,
        "Whether the pool is read-only",
        0,
    ),
    text("Type", "The pool's data RAID group type"),
    column(
        "ProvisionedReplicas",
        ColumnType::Integer,
        "The number of volume replicas provisioned on the pool",
        1,
    ),
    column(
        "HealthyReplicas",
        ColumnType::Integer,
        "The number of healthy volume replicas on the pool",
        1,
    ),
    text("Status", "The pool's phase"),
    AGE,
];

const CVC_COLUMNS: &[Column] = &[
    NAME,
    wide_text("Capacity", "The volume's capacity"),
    text("Status", "The volume config's phase"),
    AGE,
];

const CV_COLUMNS: &[Column] = &[
    NAME,
    text(
        "Capacity",
        "The volume's capacity, as its target reports it",
    ),
    column(
        "RF",
        ColumnType::Integer,
        "Replication factor: the replicas the target trusts",
        1,
    ),
    column(
        "CF",
        ColumnType::Integer,
        "Consistency factor: the replicas a write needs",
        1,
    ),
    column("DRF", ColumnType::Integer, "Desired replication factor", 1),
    wide_text("Target", "Where the volume's target serves"),
    text("Status", "The volume's phase"),
    AGE,
];

const CVR_COLUMNS: &[Column] = &[
    NAME,
    text("Used", "The space the replica's data uses"),
    text("Allocated", "The space the replica has allocated"),
    wide_text("Pool", "The pool instance holding the replica"),
    wide_text("Node", "The node of that pool"),
    text("Status", "The replica's phase"),
    AGE,
];

/// kubectl's own printer for core Events (Kubernetes' `printEvent`).
const EVENT_COLUMNS: &[Column] = &[
    text(
        "Last Seen",
        "The time at which the most recent occurrence of this event was recorded",
    ),
    text("Type", "Type of this event (Normal, Warning)"),
    text(
        "Reason",
        "A short, machine understandable string that gives the reason for the transition into \
         the object's current status",
    ),
    text("Object", "The object that this event is about"),
    wide_text(
        "Subobject",
        "The field of the object this event is about, if any",
    ),
    wide_text("Source", "The component reporting this event"),
    text(
        "Message",
        "A human-readable description of the status of this operation",
    ),
    wide_text(
        "First Seen",
        "The time at which the event was first recorded",
    ),
    wide_text("Count", "The number of times this event has occurred"),
    Column {
        name: "Name",
        column_type: ColumnType::String,
        format: "name",
        description: NAME_DESCRIPTION,
        priority: 1,
    },
];

/// The columns of `kind`'s table, `-o wide` ones included, in order.
pub fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::CStorPoolCluster => CSPC_COLUMNS,
        Kind::CStorPoolInstance => CSPI_COLUMNS,
        Kind::CStorVolumeConfig => CVC_COLUMNS,
        Kind::CStorVolume => CV_COLUMNS,
        Kind::CStorVolumeReplica => CVR_COLUMNS,
        Kind::Event => EVENT_COLUMNS,
    }
}

/// One value in a row, typed as a `Table` carries it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cell {
    Text(String),
    Integer(i64),
    Boolean(bool),
    /// A field the object does not hold yet (JSON `null`); printed as nothing.
    Absent,
}

impl fmt::Display for Cell {
    /// As kubectl prints a cell (Go's `fmt.Sprint` of the value; nothing for `null`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cell::Text(text) => f.write_str(text),
            Cell::Integer(value) => write!(f, "{value}"),
            Cell::Boolean(value) => write!(f, "{value}"),
            Cell::Absent => Ok(()),
        }
    }
}

impl From<String> for Cell {
    fn from(text: String) -> Cell {
        Cell::Text(text)
    }
}

impl From<&str> for Cell {
    fn from(text: &str) -> Cell {
        Cell::Text(text.to_string())
    }
}

/// Every column's value for one object, wide ones included, in [`columns`] order.
pub fn cells(object: &Object, now: SystemTime) -> Vec<Cell> {
    match object {
        Object::CStorPoolCluster(cspc) => cspc_cells(cspc, now),
        Object::CStorPoolInstance(cspi) => cspi_cells(cspi, now),
        Object::CStorVolumeConfig(cvc) => cvc_cells(cvc, now),
        Object::CStorVolume(cv) => cv_cells(cv, now),
        Object::CStorVolumeReplica(cvr) => cvr_cells(cvr, now),
        Object::Event(event) => event_cells(event, now),
    }
}

fn count(value: impl Into<i64>) -> Cell {
    Cell::Integer(value.into())
}

fn cspc_cells(cspc: &CStorPoolCluster, now: SystemTime) -> Vec<Cell> {
    let status = &cspc.status;
    vec![
        cspc.metadata.name.as_str().into(),
        count(status.healthy_instances),
        count(status.provisioned_instances),
        count(status.desired_instances),
        age(&cspc.metadata.creation_timestamp, now).into(),
    ]
}

/// Sizes in the exact form cStor stores for pools ("81500", "9630M", "10G"); absent until the
/// pool reports its capacity.
fn cspi_cells(cspi: &CStorPoolInstance, now: SystemTime) -> Vec<Cell> {
    let status = &cspi.status;
    let capacity = &status.capacity;
    let reported = *capacity != Default::default();
    let size = |quantity: &Quantity| shown_if(reported, || quantity.to_string());
    vec![
        cspi.metadata.name.as_str().into(),
        cspi.spec.host_name.as_str().into(),
        size(&capacity.used),
        size(&capacity.free),
        size(&capacity.total),
        (capacity.provisioned.as_ref()).map_or(Cell::Absent, |bytes| bytes.to_string().into()),
        Cell::Boolean(status.read_only),
        cspi.spec.pool_config.data_raid_group_type.as_str().into(),
        count(status.provisioned_replicas),
        count(status.healthy_replicas),
        status.phase.as_str().into(),
        age(&cspi.metadata.creation_timestamp, now).into(),
    ]
}

fn cvc_cells(cvc: &CStorVolumeConfig, now: SystemTime) -> Vec<Cell> {
    let capacity = cvc.status.capacity.as_ref();
    vec![
        cvc.metadata.name.as_str().into(),
        capacity.map_or(Cell::Absent, |capacity| capacity.storage.to_string().into()),
        cvc.status.phase.as_str().into(),
        age(&cvc.metadata.creation_timestamp, now).into(),
    ]
}

/// CAPACITY is `status.capacity`, as in cStor's CRD: absent until the target reports it.
fn cv_cells(cv: &CStorVolume, now: SystemTime) -> Vec<Cell> {
    let spec = &cv.spec;
    let capacity = &cv.status.capacity;
    vec![
        cv.metadata.name.as_str().into(),
        shown_if(!capacity.is_zero(), || capacity.to_string()),
        count(spec.replication_factor),
        count(spec.consistency_factor),
        count(spec.desired_replication_factor),
        target_address(&spec.target_ip, &spec.target_port),
        cv.status.phase.as_str().into(),
        age(&cv.metadata.creation_timestamp, now).into(),
    ]
}

/// The value, or [`Cell::Absent`] for a field the object does not hold yet.
fn shown_if(present: bool, value: impl FnOnce() -> String) -> Cell {
    if present {
        Cell::Text(value())
    } else {
        Cell::Absent
    }
}

/// "10.0.0.5:3260"; the address alone without a port; absent without an address.
fn target_address(ip: &str, port: &str) -> Cell {
    match (ip.is_empty(), port.is_empty()) {
        (true, _) => Cell::Absent,
        (false, true) => ip.into(),
        (false, false) => format!("{ip}:{port}").into(),
    }
}

/// Sizes in the short form zfs prints and cStor shows for replicas ("1.47G", "91.4M"); absent
/// until the replica reports its capacity.
fn cvr_cells(cvr: &CStorVolumeReplica, now: SystemTime) -> Vec<Cell> {
    let metadata = &cvr.metadata;
    let capacity = &cvr.status.capacity;
    let reported = *capacity != Default::default();
    let size = |quantity: &Quantity| shown_if(reported, || quantity.to_short_string());
    let present = |value: Option<&str>| value.map_or(Cell::Absent, Cell::from);
    vec![
        metadata.name.as_str().into(),
        size(&capacity.used),
        size(&capacity.total),
        present(metadata.label(LABEL_CSTOR_POOL_INSTANCE_NAME)),
        present(metadata.annotation(ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME)),
        cvr.status.phase.as_str().into(),
        age(&metadata.creation_timestamp, now).into(),
    ]
}

/// Kubernetes' `printEvent`: LAST SEEN falls back to FIRST SEEN, a count of 0 is 1, OBJECT is
/// "kind/name" in lower case, the message without surrounding white space.
fn event_cells(event: &Event, now: SystemTime) -> Vec<Cell> {
    let first_seen = age(&event.first_timestamp, now);
    let last_seen = if event.last_timestamp.is_empty() {
        first_seen.clone()
    } else {
        age(&event.last_timestamp, now)
    };
    let involved = &event.involved_object;
    let kind = involved.kind.to_lowercase();
    let object = if involved.name.is_empty() {
        kind
    } else {
        format!("{kind}/{}", involved.name)
    };
    let source = match (&event.source.component, &event.source.host) {
        (component, host) if host.is_empty() => component.clone(),
        (component, host) => format!("{component}, {host}"),
    };
    vec![
        last_seen.into(),
        event.event_type.as_str().into(),
        event.reason.as_str().into(),
        object.into(),
        // SUBOBJECT: involvedObject.fieldPath, which Tandem's references lack.
        Cell::Text(String::new()),
        source.into(),
        event.message.trim().into(),
        first_seen.into(),
        count(event.count.max(1)),
        event.metadata.name.as_str().into(),
    ]
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    #[test]
    fn every_kind_has_a_cell_for_each_column_and_one_name_column() {
        let objects: [Object; 6] = [
            CStorPoolCluster::default().into(),
            CStorPoolInstance::default().into(),
            CStorVolumeConfig::default().into(),
            CStorVolume::default().into(),
            CStorVolumeReplica::default().into(),
            Event::default().into(),
        ];
        for object in &objects {
            let kind = object.kind();
            assert_eq!(cells(object, now()).len(), columns(kind).len(), "{kind}");
            let names = columns(kind).iter().filter(|c| c.format == "name").count();
            assert_eq!(names, 1, "{kind}");
        }
    }

    #[test]
    fn cells_are_typed_and_unreported_fields_are_absent() {
        let mut cspi = CStorPoolInstance::default();
        cspi.status.provisioned_replicas = 2;
        let row = cells(&cspi.into(), now());
        assert_eq!(row[2], Cell::Absent, "ALLOCATED before the pool reports");
        assert_eq!(row[5], Cell::Absent, "PROVISIONED before the pool reports");
        assert_eq!(row[6], Cell::Boolean(false));
        assert_eq!(row[8], Cell::Integer(2));
        assert_eq!(row[11], Cell::Text("<unknown>".to_string()));
        let row = cells(&CStorVolume::default().into(), now());
        assert_eq!(row[1], Cell::Absent);
        assert_eq!(row[5], Cell::Absent);
        assert_eq!(Cell::Absent.to_string(), "");
        assert_eq!(Cell::Integer(3).to_string(), "3");
        assert_eq!(Cell::Boolean(true).to_string(), "true");
    }

    #[test]
    fn headers_are_the_names_in_capitals() {
        let headers: Vec<String> = columns(Kind::Event).iter().map(Column::header).collect();
        assert_eq!(headers[0], "LAST SEEN");
        let headers: Vec<String> = columns(Kind::CStorPoolCluster)
            .iter()
            .map(Column::header)
            .collect();
        assert_eq!(
            headers,
            [
                "NAME",
                "HEALTHYINSTANCES",
                "PROVISIONEDINSTANCES",
                "DESIREDINSTANCES",
                "AGE"
            ]
        );
    }

    #[test]
    fn target_addresses() {
        assert_eq!(target_address("10.0.0.5", "3260"), "10.0.0.5:3260".into());
        assert_eq!(target_address("10.0.0.5", ""), "10.0.0.5".into());
        assert_eq!(target_address("", "3260"), Cell::Absent);
    }
}
