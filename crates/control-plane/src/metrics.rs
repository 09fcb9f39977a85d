//! The control plane's Prometheus metrics, served at `GET /metrics` on the API's listener
//! (Prometheus text format 0.0.4): API requests by verb, resource and code (an axum middleware,
//! [`track`]) and their latency, admission refusals by kind, controller passes and reconcile
//! errors, and, read at scrape time, the stored objects by kind and every node agent's
//! readiness and heartbeat age. `docs/metrics.md` lists them.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use axum::extract::{Request, State};
use axum::http::{header, Method, StatusCode};
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::{Registry, Unit};
use tandem_objects::Kind;

use crate::Api;

/// The content type of what `/metrics` answers: Prometheus' text format.
pub const CONTENT_TYPE: &str = prometheus_client::encoding::prometheus_text::CONTENT_TYPE;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RequestLabels {
    verb: &'static str,
    resource: &'static str,
    subresource: &'static str,
    code: u16,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct VerbLabels {
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SubjectLabels {
    subject: &'static str,
}

/// The control plane's registry and the metrics its code updates.
#[derive(Debug)]
pub struct Metrics {
    registry: Registry,
    requests: Family<RequestLabels, Counter>,
    request_duration: Family<VerbLabels, Histogram>,
    admission_refusals: Family<KindLabels, Counter>,
    controller_passes: Counter,
    reconcile_errors: Family<SubjectLabels, Counter>,
}

impl Metrics {
    /// The metrics of the API `api` (read at scrape time for objects and nodes).
    pub(crate) fn new(api: Weak<Api>) -> Metrics {
        let mut registry = Registry::with_prefix("tandem");
        let requests = Family::<RequestLabels, Counter>::default();
        registry.register(
            "api_requests",
            "API requests answered, by Kubernetes verb, resource, subresource and HTTP code",
            requests.clone(),
        );
        let request_duration =
            Family::<VerbLabels, Histogram>::new_with_constructor(request_histogram as fn() -> _);
        registry.register_with_unit(
            "api_request_duration",
            "How long the API took to answer a request (until the headers of a watch)",
            Unit::Seconds,
            request_duration.clone(),
        );
        let admission_refusals = Family::<KindLabels, Counter>::default();
        registry.register(
            "admission_refusals",
            "Writes refused by validation or admission rules, by the kind written",
            admission_refusals.clone(),
        );
        let controller_passes = Counter::default();
        registry.register(
            "controller_passes",
            "Passes of the controllers (each observes, plans and executes for every object)",
            controller_passes.clone(),
        );
        let reconcile_errors = Family::<SubjectLabels, Counter>::default();
        registry.register(
            "controller_reconcile_errors",
            "Failed reconciles (conflicts excluded), by what they were about: snapshot, cspc, \
             cspi, cvc, gc",
            reconcile_errors.clone(),
        );
        registry.register_collector(Box::new(StateCollector { api }));
        Metrics {
            registry,
            requests,
            request_duration,
            admission_refusals,
            controller_passes,
            reconcile_errors,
        }
    }

    /// The whole registry in Prometheus' text format.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing to a String cannot fail; an encoder error would be a bug in a metric.
        if let Err(error) =
            prometheus_client::encoding::prometheus_text::encode(&mut text, &self.registry)
        {
            tracing::error!(%error, "cannot encode the metrics");
        }
        text
    }

    fn request(&self, labels: RequestLabels, took: Duration) {
        let verb = labels.verb;
        self.requests.get_or_create(&labels).inc();
        self.request_duration
            .get_or_create(&VerbLabels { verb })
            .observe(took.as_secs_f64());
    }

    /// A write of a `kind` object was refused by validation or an admission rule.
    pub(crate) fn admission_refused(&self, kind: Kind) {
        self.admission_refusals
            .get_or_create(&KindLabels { kind: kind.name() })
            .inc();
    }

    pub(crate) fn controller_pass(&self) {
        self.controller_passes.inc();
    }

    /// A reconcile about `subject` (`snapshot`, `cspc`, `cspi`, `cvc`, `gc`) failed.
    pub(crate) fn reconcile_error(&self, subject: &'static str) {
        self.reconcile_errors
            .get_or_create(&SubjectLabels { subject })
            .inc();
    }
}

/// 1 ms to about 16 s: from a cached read to a slow store write.
fn request_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.001, 2.0, 15))
}

/// What is read at scrape time: objects by kind, and the node agents' heartbeats.
struct StateCollector {
    api: Weak<Api>,
}

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, formatter: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        formatter.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let Some(api) = self.api.upgrade() else {
            return Ok(());
        };
        let objects: Vec<(KindLabels, usize)> = Kind::ALL
            .iter()
            .filter_map(|kind| {
                // A store that cannot list now leaves the kind out of this scrape.
                let count = api.store.list(kind.name(), None).ok()?.len();
                Some((KindLabels { kind: kind.name() }, count))
            })
            .collect();
        let gauge = |value: i64| ConstGauge::new(value);
        family(
            &mut encoder,
            "objects",
            "Objects stored, by kind",
            None,
            objects
                .into_iter()
                .map(|(labels, count)| (labels, gauge(count as i64))),
        )?;
        let nodes = api.node_statuses();
        family(
            &mut encoder,
            "node_ready",
            "1 while the node's agent renews its lease (it heartbeated within the agent timeout)",
            None,
            nodes
                .iter()
                .map(|node| (node_labels(&node.node), gauge(i64::from(node.ready)))),
        )?;
        family(
            &mut encoder,
            "node_heartbeat_age",
            "How long ago the node's agent last heartbeated",
            Some(&Unit::Seconds),
            nodes.iter().map(|node| {
                (
                    node_labels(&node.node),
                    ConstGauge::new(node.last_seen_ms as f64 / 1000.0),
                )
            }),
        )
    }
}

fn node_labels(node: &str) -> [(&'static str, String); 1] {
    [("node", node.to_string())]
}

/// Encodes one metric family from its rows, or nothing when there are none.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Result<(), std::fmt::Error> {
    let mut rows = rows.into_iter().peekable();
    let Some((_, first)) = rows.peek() else {
        return Ok(());
    };
    // Ended with a period, as the registry does for the metrics registered with it.
    let help = format!("{help}.");
    let mut metric = encoder.encode_descriptor(name, &help, unit, first.metric_type())?;
    for (labels, value) in rows {
        value.encode(metric.encode_family(&labels)?)?;
    }
    Ok(())
}

/// `GET /metrics`.
pub(crate) async fn serve(State(api): State<Arc<Api>>) -> Response {
    (
        StatusCode::OK,
        [(header::CONTENT_TYPE, CONTENT_TYPE)],
        api.metrics.encode(),
    )
        .into_response()
}

/// The middleware that counts every request the API answers.
pub(crate) async fn track(State(api): State<Arc<Api>>, request: Request, next: Next) -> Response {
    let (verb, resource, subresource) = classify(
        request.method(),
        request.uri().path(),
        request.uri().query().unwrap_or_default(),
    );
    let started = Instant::now();
    let response = next.run(request).await;
    api.metrics.request(
        RequestLabels {
            verb,
            resource,
            subresource,
            code: response.status().as_u16(),
        },
        started.elapsed(),
    );
    response
}

/// The Kubernetes verb, resource and subresource of a request, from a fixed set of words (the
/// labels' values must not grow with what clients send): unknown resources are `other`.
fn classify(
    method: &Method,
    path: &str,
    query: &str,
) -> (&'static str, &'static str, &'static str) {
    let segments: Vec<&str> = path.split('/').filter(|s| !s.is_empty()).collect();
    // What follows the group version: [namespaces, NS,] RESOURCE [, NAME [, SUBRESOURCE]].
    let rest: &[&str] = match segments.as_slice() {
        ["apis", "cstor.openebs.io", "v1", rest @ ..] | ["api", "v1", rest @ ..] => rest,
        ["tandem", "v1", rest @ ..] => rest,
        ["metrics"] => return ("get", "metrics", ""),
        _ => return ("get", "discovery", ""),
    };
    let rest = match rest {
        ["namespaces", _namespace, rest @ ..] if !rest.is_empty() => rest,
        rest => rest,
    };
    let (resource, named, subresource) = match rest {
        [] => return ("get", "discovery", ""),
        [resource] => (*resource, false, ""),
        [resource, _name] => (*resource, true, ""),
        [resource, _name, "status"] => (*resource, true, "status"),
        [resource, ..] => (*resource, true, "other"),
    };
    let resource = Kind::ALL
        .iter()
        .map(|kind| kind.plural())
        .chain(["nodes"])
        .find(|known| *known == resource)
        .unwrap_or("other");
    let watch = query
        .split('&')
        .any(|pair| matches!(pair, "watch=true" | "watch=1"));
    let verb = match *method {
        Method::GET if named => "get",
        Method::GET if watch => "watch",
        Method::GET => "list",
        Method::POST => "create",
        Method::PUT => "update",
        Method::PATCH => "patch",
        Method::DELETE => "delete",
        _ => "other",
    };
    (verb, resource, subresource)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn given_each_kind_of_request_when_classified_then_its_kubernetes_verb_and_resource() {
        let cstor = "/apis/cstor.openebs.io/v1";
        let table = [
            (
                Method::GET,
                format!("{cstor}/cstorvolumes"),
                "",
                ("list", "cstorvolumes", ""),
            ),
            (
                Method::GET,
                format!("{cstor}/namespaces/openebs/cstorvolumeconfigs"),
                "watch=true&resourceVersion=3",
                ("watch", "cstorvolumeconfigs", ""),
            ),
            (
                Method::GET,
                format!("{cstor}/namespaces/openebs/cstorvolumes/v1"),
                "",
                ("get", "cstorvolumes", ""),
            ),
            (
                Method::POST,
                format!("{cstor}/namespaces/openebs/cstorpoolclusters"),
                "",
                ("create", "cstorpoolclusters", ""),
            ),
            (
                Method::PUT,
                format!("{cstor}/namespaces/openebs/cstorvolumereplicas/r/status"),
                "",
                ("update", "cstorvolumereplicas", "status"),
            ),
            (
                Method::PATCH,
                format!("{cstor}/namespaces/openebs/cstorvolumeconfigs/v"),
                "",
                ("patch", "cstorvolumeconfigs", ""),
            ),
            (
                Method::DELETE,
                format!("{cstor}/namespaces/openebs/cstorvolumeconfigs/v"),
                "",
                ("delete", "cstorvolumeconfigs", ""),
            ),
            (
                Method::POST,
                "/api/v1/namespaces/openebs/events".to_string(),
                "",
                ("create", "events", ""),
            ),
            (
                Method::GET,
                "/api/v1/events".to_string(),
                "",
                ("list", "events", ""),
            ),
            (
                Method::PUT,
                "/tandem/v1/nodes/node1".to_string(),
                "",
                ("update", "nodes", ""),
            ),
            (
                Method::GET,
                "/tandem/v1/nodes".to_string(),
                "",
                ("list", "nodes", ""),
            ),
            (
                Method::GET,
                format!("{cstor}/pods"),
                "",
                ("list", "other", ""),
            ),
            (Method::GET, cstor.to_string(), "", ("get", "discovery", "")),
            (
                Method::GET,
                "/version".to_string(),
                "",
                ("get", "discovery", ""),
            ),
            (
                Method::GET,
                "/metrics".to_string(),
                "",
                ("get", "metrics", ""),
            ),
        ];
        for (method, path, query, expected) in table {
            assert_eq!(
                classify(&method, &path, query),
                expected,
                "{method} {path}?{query}"
            );
        }
    }

    #[test]
    fn given_requests_and_refusals_when_encoded_then_prometheus_text_with_their_counts() {
        let metrics = Metrics::new(Weak::new());
        let labels = RequestLabels {
            verb: "get",
            resource: "cstorvolumes",
            subresource: "",
            code: 200,
        };
        metrics.request(labels.clone(), Duration::from_millis(3));
        metrics.request(labels, Duration::from_millis(5));
        metrics.admission_refused(Kind::CStorVolumeConfig);
        metrics.controller_pass();
        metrics.reconcile_error("cvc");
        let text = metrics.encode();
        for line in [
            "# TYPE tandem_api_requests_total counter",
            "tandem_api_requests_total{verb=\"get\",resource=\"cstorvolumes\",subresource=\"\",code=\"200\"} 2",
            "tandem_api_request_duration_seconds_count{verb=\"get\"} 2",
            "tandem_admission_refusals_total{kind=\"CStorVolumeConfig\"} 1",
            "tandem_controller_passes_total 1",
            "tandem_controller_reconcile_errors_total{subject=\"cvc\"} 1",
        ] {
            assert!(text.lines().any(|l| l == line), "no line {line:?} in:\n{text}");
        }
    }
}
