//! `get` tables in kubectl's layout: the columns of each kind (the seed's, from cStor's CRDs),
//! the extra `-o wide` columns, the NAMESPACE column of `-A`, and kubectl's wording for an
//! empty list.

use std::time::SystemTime;

use tandem_objects::{
    CStorPoolCluster, CStorPoolInstance, CStorVolume, CStorVolumeConfig, CStorVolumeReplica, Event,
    Kind, Object, Quantity, ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME,
    LABEL_CSTOR_POOL_INSTANCE_NAME,
};

use super::age::age;
use super::tabwriter::{align, TABLE};

/// One column: its header and whether only `-o wide` shows it (kubectl's priority 1).
struct Column {
    header: &'static str,
    wide_only: bool,
}

const fn always(header: &'static str) -> Column {
    Column {
        header,
        wide_only: false,
    }
}

const fn wide(header: &'static str) -> Column {
    Column {
        header,
        wide_only: true,
    }
}

const CSPC_COLUMNS: &[Column] = &[
    always("NAME"),
    always("HEALTHYINSTANCES"),
    always("PROVISIONEDINSTANCES"),
    always("DESIREDINSTANCES"),
    always("AGE"),
];

const CSPI_COLUMNS: &[Column] = &[
    always("NAME"),
    always("HOSTNAME"),
    always("ALLOCATED"),
    always("FREE"),
    always("CAPACITY"),
    always("READONLY"),
    always("TYPE"),
    wide("PROVISIONEDREPLICAS"),
    wide("HEALTHYREPLICAS"),
    always("STATUS"),
    always("AGE"),
];

const CVC_COLUMNS: &[Column] = &[
    always("NAME"),
    wide("CAPACITY"),
    always("STATUS"),
    always("AGE"),
];

const CV_COLUMNS: &[Column] = &[
    always("NAME"),
    always("CAPACITY"),
    wide("RF"),
    wide("CF"),
    wide("DRF"),
    wide("TARGET"),
    always("STATUS"),
    always("AGE"),
];

const CVR_COLUMNS: &[Column] = &[
    always("NAME"),
    always("USED"),
    always("ALLOCATED"),
    wide("POOL"),
    wide("NODE"),
    always("STATUS"),
    always("AGE"),
];

/// kubectl's own printer for core Events.
const EVENT_COLUMNS: &[Column] = &[
    always("LAST SEEN"),
    always("TYPE"),
    always("REASON"),
    always("OBJECT"),
    wide("SUBOBJECT"),
    wide("SOURCE"),
    always("MESSAGE"),
    wide("FIRST SEEN"),
    wide("COUNT"),
    wide("NAME"),
];

fn columns(kind: Kind) -> &'static [Column] {
    match kind {
        Kind::CStorPoolCluster => CSPC_COLUMNS,
        Kind::CStorPoolInstance => CSPI_COLUMNS,
        Kind::CStorVolumeConfig => CVC_COLUMNS,
        Kind::CStorVolume => CV_COLUMNS,
        Kind::CStorVolumeReplica => CVR_COLUMNS,
        Kind::Event => EVENT_COLUMNS,
    }
}

/// The table `get <kind>` prints for `objects`, in the order given, ending with a newline; ""
/// when there is nothing to list (print [`no_resources`] instead). `wide` is `-o wide`,
/// `with_namespace` adds the leading NAMESPACE column of `-A`, `with_header` is false for
/// `--no-headers`. Objects of another kind than `kind` are left out.
pub fn render_table(
    kind: Kind,
    objects: &[Object],
    wide: bool,
    now: SystemTime,
    with_namespace: bool,
    with_header: bool,
) -> String {
    let rows: Vec<(&str, Vec<String>)> = objects
        .iter()
        .filter(|object| object.kind() == kind)
        .map(|object| {
            let row = cells(object, now).into_iter().map(printable).collect();
            (object.namespace(), row)
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let shown: Vec<bool> = columns(kind)
        .iter()
        .map(|column| wide || !column.wide_only)
        .collect();
    let mut text = String::new();
    if with_header {
        let headers = columns(kind).iter().map(|column| column.header);
        push_row(
            &mut text,
            with_namespace.then_some("NAMESPACE"),
            headers,
            &shown,
        );
    }
    for (namespace, row) in &rows {
        let values = row.iter().map(String::as_str);
        push_row(
            &mut text,
            with_namespace.then_some(namespace),
            values,
            &shown,
        );
    }
    align(&text, TABLE)
}

/// kubectl's message when a `get` finds nothing; it goes to standard error. `None` is for `-A`.
pub fn no_resources(namespace: Option<&str>) -> String {
    match namespace {
        Some(namespace) => format!("No resources found in {namespace} namespace."),
        None => "No resources found".to_string(),
    }
}

/// Appends one tab-separated line: the namespace cell if any, then the shown cells.
fn push_row<'a>(
    text: &mut String,
    namespace: Option<&str>,
    cells: impl Iterator<Item = &'a str>,
    shown: &[bool],
) {
    let visible = cells
        .zip(shown)
        .filter_map(|(cell, &shown)| shown.then_some(cell));
    let line: Vec<&str> = namespace.into_iter().chain(visible).collect();
    text.push_str(&line.join("\t"));
    text.push('\n');
}

/// As kubectl prints a text cell: cut at the first line break, marked with "...".
fn printable(mut cell: String) -> String {
    if let Some(line_break) = cell.find(['\n', '\r', '\x0c']) {
        cell.truncate(line_break);
        cell.push_str("...");
    }
    cell
}

/// Every column's value for one object, wide ones included, in [`columns`] order.
fn cells(object: &Object, now: SystemTime) -> Vec<String> {
    match object {
        Object::CStorPoolCluster(cspc) => cspc_cells(cspc, now),
        Object::CStorPoolInstance(cspi) => cspi_cells(cspi, now),
        Object::CStorVolumeConfig(cvc) => cvc_cells(cvc, now),
        Object::CStorVolume(cv) => cv_cells(cv, now),
        Object::CStorVolumeReplica(cvr) => cvr_cells(cvr, now),
        Object::Event(event) => event_cells(event, now),
    }
}

fn cspc_cells(cspc: &CStorPoolCluster, now: SystemTime) -> Vec<String> {
    let status = &cspc.status;
    vec![
        cspc.metadata.name.clone(),
        status.healthy_instances.to_string(),
        status.provisioned_instances.to_string(),
        status.desired_instances.to_string(),
        age(&cspc.metadata.creation_timestamp, now),
    ]
}

/// Sizes in the exact form cStor stores for pools ("81500", "9630M", "10G"); empty until the
/// pool reports its capacity, as kubectl prints an absent field.
fn cspi_cells(cspi: &CStorPoolInstance, now: SystemTime) -> Vec<String> {
    let status = &cspi.status;
    let capacity = &status.capacity;
    let reported = *capacity != Default::default();
    let size = |quantity: &Quantity| shown_if(reported, || quantity.to_string());
    vec![
        cspi.metadata.name.clone(),
        cspi.spec.host_name.clone(),
        size(&capacity.used),
        size(&capacity.free),
        size(&capacity.total),
        status.read_only.to_string(),
        cspi.spec.pool_config.data_raid_group_type.clone(),
        status.provisioned_replicas.to_string(),
        status.healthy_replicas.to_string(),
        status.phase.as_str().to_string(),
        age(&cspi.metadata.creation_timestamp, now),
    ]
}

fn cvc_cells(cvc: &CStorVolumeConfig, now: SystemTime) -> Vec<String> {
    let capacity = cvc.status.capacity.as_ref();
    vec![
        cvc.metadata.name.clone(),
        capacity
            .map(|capacity| capacity.storage.to_string())
            .unwrap_or_default(),
        cvc.status.phase.as_str().to_string(),
        age(&cvc.metadata.creation_timestamp, now),
    ]
}

/// CAPACITY is `status.capacity`, as in cStor's CRD: empty until the target reports it.
fn cv_cells(cv: &CStorVolume, now: SystemTime) -> Vec<String> {
    let spec = &cv.spec;
    let capacity = &cv.status.capacity;
    vec![
        cv.metadata.name.clone(),
        shown_if(!capacity.is_zero(), || capacity.to_string()),
        spec.replication_factor.to_string(),
        spec.consistency_factor.to_string(),
        spec.desired_replication_factor.to_string(),
        target_address(&spec.target_ip, &spec.target_port),
        cv.status.phase.as_str().to_string(),
        age(&cv.metadata.creation_timestamp, now),
    ]
}

/// The value, or an empty cell for a field the object does not hold yet (kubectl prints an
/// absent field as nothing).
fn shown_if(present: bool, value: impl FnOnce() -> String) -> String {
    if present {
        value()
    } else {
        String::new()
    }
}

/// "10.0.0.5:3260"; the address alone without a port; empty without an address.
fn target_address(ip: &str, port: &str) -> String {
    match (ip.is_empty(), port.is_empty()) {
        (true, _) => String::new(),
        (false, true) => ip.to_string(),
        (false, false) => format!("{ip}:{port}"),
    }
}

/// Sizes in the short form zfs prints and cStor shows for replicas ("1.47G", "91.4M"); empty
/// until the replica reports its capacity.
fn cvr_cells(cvr: &CStorVolumeReplica, now: SystemTime) -> Vec<String> {
    let metadata = &cvr.metadata;
    let capacity = &cvr.status.capacity;
    let reported = *capacity != Default::default();
    let size = |quantity: &Quantity| shown_if(reported, || quantity.to_short_string());
    vec![
        metadata.name.clone(),
        size(&capacity.used),
        size(&capacity.total),
        metadata
            .label(LABEL_CSTOR_POOL_INSTANCE_NAME)
            .unwrap_or_default()
            .to_string(),
        metadata
            .annotation(ANNOTATION_CSTOR_POOL_INSTANCE_HOSTNAME)
            .unwrap_or_default()
            .to_string(),
        cvr.status.phase.as_str().to_string(),
        age(&metadata.creation_timestamp, now),
    ]
}

/// kubectl's `printEvent`: LAST SEEN falls back to FIRST SEEN, a count of 0 is 1, OBJECT is
/// "kind/name" in lower case.
fn event_cells(event: &Event, now: SystemTime) -> Vec<String> {
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
        last_seen,
        event.event_type.as_str().to_string(),
        event.reason.clone(),
        object,
        String::new(), // SUBOBJECT: involvedObject.fieldPath, which Tandem's references lack
        source,
        event.message.trim().to_string(),
        first_seen,
        event.count.max(1).to_string(),
        event.metadata.name.clone(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::output::fixtures::{self, assert_golden, now};

    fn get(kind: Kind, objects: &[Object], wide: bool) -> String {
        render_table(kind, objects, wide, now(), false, true)
    }

    fn events() -> Vec<Object> {
        fixtures::cvc_events()
            .into_iter()
            .map(Object::from)
            .collect()
    }

    #[test]
    fn every_kind_has_a_cell_for_each_column() {
        let objects = [
            vec![fixtures::cspc(), fixtures::cv(), fixtures::cvc()],
            fixtures::cspis(),
            fixtures::cvrs(),
            events(),
        ]
        .concat();
        for object in &objects {
            let kind = object.kind();
            assert_eq!(cells(object, now()).len(), columns(kind).len(), "{kind}");
        }
        let empty = |object: Object| cells(&object, now()).len();
        assert_eq!(empty(Event::default().into()), EVENT_COLUMNS.len());
    }

    #[test]
    fn pool_tables() {
        assert_golden!(
            "get-cspc.txt",
            get(Kind::CStorPoolCluster, &[fixtures::cspc()], false)
        );
        assert_golden!(
            "get-cspi.txt",
            get(Kind::CStorPoolInstance, &fixtures::cspis(), false)
        );
        assert_golden!(
            "get-cspi-wide.txt",
            get(Kind::CStorPoolInstance, &fixtures::cspis(), true)
        );
    }

    #[test]
    fn volume_tables() {
        let cvc = [fixtures::cvc()];
        assert_golden!("get-cvc.txt", get(Kind::CStorVolumeConfig, &cvc, false));
        assert_golden!("get-cvc-wide.txt", get(Kind::CStorVolumeConfig, &cvc, true));
        let cv = [fixtures::cv()];
        assert_golden!("get-cv.txt", get(Kind::CStorVolume, &cv, false));
        assert_golden!("get-cv-wide.txt", get(Kind::CStorVolume, &cv, true));
    }

    #[test]
    fn replica_tables() {
        let cvrs = fixtures::cvrs();
        assert_golden!("get-cvr.txt", get(Kind::CStorVolumeReplica, &cvrs, false));
        assert_golden!(
            "get-cvr-wide.txt",
            get(Kind::CStorVolumeReplica, &cvrs, true)
        );
        let all_namespaces =
            render_table(Kind::CStorVolumeReplica, &cvrs, false, now(), true, true);
        assert_golden!("get-cvr-all-namespaces.txt", all_namespaces);
    }

    #[test]
    fn event_tables() {
        assert_golden!("get-events.txt", get(Kind::Event, &events(), false));
        assert_golden!("get-events-wide.txt", get(Kind::Event, &events(), true));
    }

    #[test]
    fn without_headers_only_rows_are_printed() {
        let table = render_table(
            Kind::CStorVolumeConfig,
            &[fixtures::cvc()],
            false,
            now(),
            false,
            false,
        );
        assert_eq!(table, format!("{}   Bound   5m56s\n", fixtures::VOLUME));
    }

    #[test]
    fn nothing_to_list() {
        assert_eq!(get(Kind::CStorVolumeReplica, &[], false), "");
        assert_eq!(get(Kind::CStorVolumeReplica, &[fixtures::cvc()], false), "");
        assert_eq!(
            no_resources(Some("openebs")),
            "No resources found in openebs namespace."
        );
        assert_eq!(no_resources(None), "No resources found");
    }

    #[test]
    fn unreported_and_empty_fields_print_empty() {
        let mut cvr = CStorVolumeReplica::default();
        cvr.metadata.name = "fresh".to_string();
        let table = get(Kind::CStorVolumeReplica, &[cvr.into()], true);
        let header = "NAME    USED   ALLOCATED   POOL   NODE   STATUS   AGE\n";
        assert_eq!(table, format!("{header}fresh{}<unknown>\n", " ".repeat(45)));
        let cv = CStorVolume::default();
        let row = cv_cells(&cv, now());
        assert_eq!(row[1], "");
        assert_eq!(row[5], "");
    }

    #[test]
    fn multi_line_messages_are_cut() {
        let mut event = fixtures::cvc_events().remove(0);
        event.message = "  first line\nsecond line ".to_string();
        event.count = 0;
        event.last_timestamp.clear();
        let row = cells(&event.into(), now())
            .into_iter()
            .map(printable)
            .collect::<Vec<_>>();
        assert_eq!(row[6], "first line...");
        assert_eq!(row[0], "64m");
        assert_eq!(row[8], "1");
    }

    #[test]
    fn target_addresses() {
        assert_eq!(target_address("10.0.0.5", "3260"), "10.0.0.5:3260");
        assert_eq!(target_address("10.0.0.5", ""), "10.0.0.5");
        assert_eq!(target_address("", "3260"), "");
    }
}
