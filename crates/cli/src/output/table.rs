//! `get` tables in kubectl's layout: each kind's columns and cells (defined once, in
//! `tandem_objects::print`, which the control plane's server-side tables share), the extra
//! `-o wide` columns, the NAMESPACE column of `-A`, and kubectl's wording for an empty list.

use std::time::SystemTime;

use tandem_objects::print::{cells, columns, Cell};
use tandem_objects::{Kind, Object};

use super::tabwriter::{align, TABLE};

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
            let row = cells(object, now).iter().map(printable).collect();
            (object.namespace(), row)
        })
        .collect();
    if rows.is_empty() {
        return String::new();
    }
    let shown: Vec<bool> = columns(kind)
        .iter()
        .map(|column| wide || !column.wide_only())
        .collect();
    let mut text = String::new();
    if with_header {
        let headers: Vec<String> = columns(kind).iter().map(|column| column.header()).collect();
        push_row(
            &mut text,
            with_namespace.then_some("NAMESPACE"),
            headers.iter().map(String::as_str),
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

/// As kubectl prints a cell: a text one cut at the first line break, marked with "...".
fn printable(cell: &Cell) -> String {
    let mut text = cell.to_string();
    if let Some(line_break) = text.find(['\n', '\r', '\x0c']) {
        text.truncate(line_break);
        text.push_str("...");
    }
    text
}

#[cfg(test)]
mod tests {
    use tandem_objects::{CStorVolumeReplica, Event};

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
        assert_eq!(empty(Event::default().into()), columns(Kind::Event).len());
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
    }

    #[test]
    fn multi_line_messages_are_cut() {
        let mut event = fixtures::cvc_events().remove(0);
        event.message = "  first line\nsecond line ".to_string();
        event.count = 0;
        event.last_timestamp.clear();
        let row = cells(&event.into(), now())
            .iter()
            .map(printable)
            .collect::<Vec<_>>();
        assert_eq!(row[6], "first line...");
        assert_eq!(row[0], "64m");
        assert_eq!(row[8], "1");
    }
}
