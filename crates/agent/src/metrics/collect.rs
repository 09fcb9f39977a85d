//! One scrape: what [`AgentMetrics`](super::AgentMetrics) holds, read once, written as metric
//! families through `prometheus-client`'s encoder (a collector over the snapshot, in a registry
//! prefixed `tandem`). A family with no series is left out.

use std::fmt;

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{
    DescriptorEncoder, EncodeLabelSet, EncodeMetric, MetricEncoder, NoLabelSet,
};
use prometheus_client::metrics::counter::ConstCounter;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::MetricType;
use prometheus_client::registry::{Registry, Unit};
use tandem_core::{ReplicaId, ReplicaMode, VolumeStatus};
use tandem_dataplane::target::TargetStatus;

use super::metered::{LatencySnapshot, Op};
use super::{PoolSample, ServedVolume};

/// Every replica mode, with the name its CVR phase has.
const MODES: [(ReplicaMode, &str); 7] = [
    (ReplicaMode::Offline, "Offline"),
    (ReplicaMode::Degraded, "Degraded"),
    (ReplicaMode::NewReplicaDegraded, "NewReplicaDegraded"),
    (ReplicaMode::Rebuilding, "Rebuilding"),
    (
        ReplicaMode::ReconstructingNewReplica,
        "ReconstructingNewReplica",
    ),
    (ReplicaMode::Healthy, "Healthy"),
    (ReplicaMode::Error, "Error"),
];

/// Every volume status, with the name its CV phase has.
const STATUSES: [&str; 4] = ["Init", "Healthy", "Degraded", "Offline"];

/// The volume's phase as its CV shows it (a fenced target's volume is Offline here).
fn status_name(status: &TargetStatus) -> &'static str {
    if status.fenced {
        return "Offline";
    }
    match status.status {
        VolumeStatus::Init => "Init",
        VolumeStatus::Healthy => "Healthy",
        VolumeStatus::Degraded => "Degraded",
        VolumeStatus::Offline => "Offline",
    }
}

type Labels = Vec<(&'static str, String)>;

/// A gauge family read from each `T`: its name, help, unit and value.
type GaugeOf<T> = (&'static str, &'static str, Option<Unit>, fn(&T) -> u64);

/// One volume as read at the scrape.
struct Volume {
    name: String,
    served: ServedVolume,
    status: TargetStatus,
}

/// One replica of a volume, as its target sees it.
struct Replica {
    labels: Labels,
    mode: ReplicaMode,
    /// (running, full, bytes done, bytes to copy, rate) of its running or last resync.
    resync: (bool, bool, u64, u64, u64),
    ejections: u64,
    copied: u64,
}

struct Scrape {
    volumes: Vec<Volume>,
    replicas: Vec<Replica>,
    pool: Option<PoolSample>,
}

impl fmt::Debug for Scrape {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str("Scrape")
    }
}

/// The metrics of `volumes` and `pool` in Prometheus' text format.
pub(super) fn encode(volumes: Vec<(String, ServedVolume)>, pool: Option<PoolSample>) -> String {
    let volumes: Vec<Volume> = volumes
        .into_iter()
        .map(|(name, served)| {
            let status = served.status.borrow().clone();
            Volume {
                name,
                served,
                status,
            }
        })
        .collect();
    let replicas = volumes.iter().flat_map(replicas_of).collect();
    let mut registry = Registry::with_prefix("tandem");
    registry.register_collector(Box::new(Scrape {
        volumes,
        replicas,
        pool,
    }));
    let mut text = String::new();
    // Writing to a String cannot fail; an encoder error would be a bug in a metric.
    if let Err(error) = prometheus_client::encoding::prometheus_text::encode(&mut text, &registry) {
        tracing::error!(%error, "cannot encode the metrics");
    }
    text
}

fn replicas_of(volume: &Volume) -> Vec<Replica> {
    let status = &volume.status;
    let counters = volume.served.counters.replicas();
    status
        .membership
        .members
        .iter()
        .map(|member| {
            let id: ReplicaId = member.replica;
            let pool = volume.served.pools.get(&id).cloned().unwrap_or_default();
            let running = status.resync.filter(|progress| progress.replica == id);
            let resync = match running {
                Some(progress) => (
                    true,
                    progress.full,
                    progress.bytes_done,
                    progress.bytes_total,
                    volume.served.resync_rate,
                ),
                None => status
                    .resync_history
                    .iter()
                    .rev()
                    .find(|finished| finished.replica == id && finished.completed())
                    .map_or((false, false, 0, 0, 0), |finished| {
                        (false, finished.full, finished.bytes, finished.bytes, 0)
                    }),
            };
            let counted = counters.get(&id).copied().unwrap_or_default();
            Replica {
                labels: vec![
                    ("volume", volume.name.clone()),
                    ("replica", id.0.to_string()),
                    ("pool", pool),
                ],
                mode: status
                    .modes
                    .get(&id)
                    .copied()
                    .unwrap_or(ReplicaMode::Offline),
                resync,
                ejections: counted.ejections,
                copied: counted.resync_bytes_copied,
            }
        })
        .collect()
}

/// A histogram as read at the scrape.
struct Histogram(LatencySnapshot);

impl EncodeMetric for Histogram {
    fn encode(&self, mut encoder: MetricEncoder) -> Result<(), fmt::Error> {
        let snapshot = &self.0;
        encoder.encode_histogram::<NoLabelSet>(
            snapshot.sum_seconds,
            snapshot.count,
            &snapshot.buckets,
            None,
        )
    }

    fn metric_type(&self) -> MetricType {
        MetricType::Histogram
    }
}

fn counter(value: u64) -> ConstCounter<u64> {
    ConstCounter::new(value)
}

fn gauge(value: u64) -> ConstGauge<u64> {
    ConstGauge::new(value)
}

fn with(labels: &Labels, extra: (&'static str, &str)) -> Labels {
    let mut labels = labels.clone();
    labels.push((extra.0, extra.1.to_string()));
    labels
}

impl Collector for Scrape {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), fmt::Error> {
        self.encode_io(&mut encoder)?;
        self.encode_volumes(&mut encoder)?;
        self.encode_replicas(&mut encoder)?;
        self.encode_pool(&mut encoder)
    }
}

impl Scrape {
    fn volume_labels(&self) -> impl Iterator<Item = (Labels, &Volume)> {
        self.volumes
            .iter()
            .map(|volume| (vec![("volume", volume.name.clone())], volume))
    }

    fn encode_io(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let by_op = || {
            self.volume_labels().flat_map(|(labels, volume)| {
                Op::ALL
                    .into_iter()
                    .map(move |op| (with(&labels, ("op", op.name())), volume.served.io.op(op)))
            })
        };
        let load =
            |value: &std::sync::atomic::AtomicU64| value.load(std::sync::atomic::Ordering::Relaxed);
        family(
            encoder,
            "volume_operations",
            "Client requests answered on the volume's target node, by kind",
            None,
            by_op().map(|(labels, op)| (labels, counter(load(&op.operations)))),
        )?;
        family(
            encoder,
            "volume_operation_errors",
            "Client requests answered with an error, by kind",
            None,
            by_op().map(|(labels, op)| (labels, counter(load(&op.errors)))),
        )?;
        family(
            encoder,
            "volume_operation_duration",
            "How long client requests took to answer, by kind",
            Some(&Unit::Seconds),
            by_op().map(|(labels, op)| (labels, Histogram(op.latency.snapshot()))),
        )?;
        let bytes = [
            ("volume_read", "Bytes returned to clients by reads"),
            (
                "volume_written",
                "Bytes clients wrote (acknowledged writes)",
            ),
            (
                "volume_zeroed",
                "Bytes clients made zero (write-zeroes requests)",
            ),
            ("volume_trimmed", "Bytes clients discarded (trims)"),
        ];
        for (index, (name, help)) in bytes.into_iter().enumerate() {
            family(
                encoder,
                name,
                help,
                Some(&Unit::Bytes),
                self.volume_labels().map(|(labels, volume)| {
                    let io = &volume.served.io;
                    let value = [
                        io.read_bytes(),
                        io.written_bytes(),
                        io.zeroed_bytes(),
                        io.trimmed_bytes(),
                    ][index];
                    (labels, counter(value))
                }),
            )?;
        }
        Ok(())
    }

    fn encode_volumes(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        family(
            encoder,
            "volume_status",
            "1 for the volume's current status (its CV phase), 0 for the others",
            None,
            self.volume_labels().flat_map(|(labels, volume)| {
                let current = status_name(&volume.status);
                STATUSES.into_iter().map(move |status| {
                    (
                        with(&labels, ("status", status)),
                        gauge(u64::from(status == current)),
                    )
                })
            }),
        )?;
        let values: [GaugeOf<Volume>; 3] = [
            (
                "volume_generation",
                "The generation of the volume's target (each start takes the next)",
                None,
                |volume| volume.status.generation.0,
            ),
            (
                "volume_replication_factor",
                "Members of the volume's replica set (cStor's desired replication factor)",
                None,
                |volume| volume.status.membership.replication_factor() as u64,
            ),
            (
                "volume_consistency_factor",
                "Healthy replicas a write needs before it is acknowledged",
                None,
                |volume| volume.status.membership.consistency_factor() as u64,
            ),
        ];
        for (name, help, unit, value) in values {
            family(
                encoder,
                name,
                help,
                unit.as_ref(),
                self.volume_labels()
                    .map(|(labels, volume)| (labels, gauge(value(volume)))),
            )?;
        }
        family(
            encoder,
            "volume_backpressure_waits",
            "Client writes, trims and flushes that arrived while a slow replica held new \
             operations back (backpressure), so they waited",
            None,
            self.volume_labels().map(|(labels, volume)| {
                (labels, counter(volume.served.counters.backpressure_waits()))
            }),
        )?;
        family(
            encoder,
            "volume_no_space_replies",
            "Client writes answered ENOSPC because every healthy replica's pool was full (they \
             changed nothing)",
            None,
            self.volume_labels().map(|(labels, volume)| {
                (labels, counter(volume.served.counters.no_space_replies()))
            }),
        )
    }

    fn encode_replicas(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let replicas = || self.replicas.iter();
        family(
            encoder,
            "replica_mode",
            "1 for the replica's current mode (its CVR phase), 0 for the others",
            None,
            replicas().flat_map(|replica| {
                MODES.into_iter().map(move |(mode, name)| {
                    (
                        with(&replica.labels, ("mode", name)),
                        gauge(u64::from(mode == replica.mode)),
                    )
                })
            }),
        )?;
        let resync: [GaugeOf<Replica>; 5] = [
            (
                "replica_resync_running",
                "1 while a resync or rebuild copies data to the replica",
                None,
                |replica| u64::from(replica.resync.0),
            ),
            (
                "replica_resync_full",
                "1 if the replica's running or last resync is a full rebuild (a new replica), 0 \
                 if incremental",
                None,
                |replica| u64::from(replica.resync.1),
            ),
            (
                "replica_resync_done",
                "Bytes the replica's running or last resync has copied",
                Some(Unit::Bytes),
                |replica| replica.resync.2,
            ),
            (
                "replica_resync_size",
                "Bytes the replica's running or last resync has to copy in all",
                Some(Unit::Bytes),
                |replica| replica.resync.3,
            ),
            (
                "replica_resync_rate",
                "How fast the replica's running resync copies (0 when none runs)",
                Some(Unit::Other("bytes_per_second".to_string())),
                |replica| replica.resync.4,
            ),
        ];
        for (name, help, unit, value) in resync {
            family(
                encoder,
                name,
                help,
                unit.as_ref(),
                replicas().map(|replica| (replica.labels.clone(), gauge(value(replica)))),
            )?;
        }
        family(
            encoder,
            "replica_resync_copied",
            "Bytes copied to the replica by resyncs and rebuilds, finished or not",
            Some(&Unit::Bytes),
            replicas().map(|replica| (replica.labels.clone(), counter(replica.copied))),
        )?;
        family(
            encoder,
            "replica_ejections",
            "How often the target ejected the replica (a timeout, a backlog, a failed write, a \
             broken session)",
            None,
            replicas().map(|replica| (replica.labels.clone(), counter(replica.ejections))),
        )
    }

    fn encode_pool(&self, encoder: &mut DescriptorEncoder) -> Result<(), fmt::Error> {
        let Some(pool) = &self.pool else {
            return Ok(());
        };
        let labels: Labels = vec![("pool", pool.pool.clone()), ("node", pool.node.clone())];
        let values = [
            (
                "pool_capacity",
                "The pool's capacity",
                Some(Unit::Bytes),
                pool.capacity_bytes,
            ),
            (
                "pool_used",
                "Space the pool's replicas take",
                Some(Unit::Bytes),
                pool.used_bytes,
            ),
            (
                "pool_provisioned",
                "The sizes of the volume replicas on the pool, added up (thin ones take less)",
                Some(Unit::Bytes),
                pool.provisioned_bytes,
            ),
            (
                "pool_usage_warning_percent",
                "The highest usage warning threshold of its pool cluster the pool's use has \
                 reached (tandem.io/usage-warning-percentages), 0 if none",
                None,
                pool.usage_warning_percent,
            ),
            (
                "pool_read_only",
                "1 while the pool is read-only (used past its roThresholdLimit)",
                None,
                u64::from(pool.read_only),
            ),
            (
                "pool_replicas",
                "Replicas with storage in the pool",
                None,
                pool.replicas,
            ),
            (
                "pool_healthy_replicas",
                "Replicas in the pool whose CVR is Healthy",
                None,
                pool.healthy_replicas,
            ),
        ];
        for (name, help, unit, value) in values {
            family(
                encoder,
                name,
                help,
                unit.as_ref(),
                [(labels.clone(), gauge(value))],
            )?;
        }
        Ok(())
    }
}

/// Encodes one metric family from its rows, or nothing when there are none.
fn family<L: EncodeLabelSet, M: EncodeMetric>(
    encoder: &mut DescriptorEncoder,
    name: &str,
    help: &str,
    unit: Option<&Unit>,
    rows: impl IntoIterator<Item = (L, M)>,
) -> Result<(), fmt::Error> {
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
