//! How fast rebuilds and resyncs copy: a rate while the volume is idle, a lower one while its
//! clients do I/O (the copy yields to them, as DRBD's c-min-rate), and how many segments a copy
//! keeps in flight. Set per pool cluster with annotations on its CStorPoolCluster and per
//! volume with the same annotations on its CStorVolumeConfig, which win; the defaults are
//! today's behaviour: full speed when idle, 50 MiB/s under load, 4 segments.

use std::collections::BTreeMap;

use crate::meta::AnnotationError;
use crate::quantity::Quantity;

/// Bytes per second a copy may take while the volume is idle (`unlimited` or `0`: no cap).
pub const ANNOTATION_REBUILD_RATE: &str = "tandem.io/rebuild-rate";
/// Bytes per second a copy may take while clients do I/O (`unlimited` or `0`: only the idle
/// rate applies).
pub const ANNOTATION_REBUILD_RATE_UNDER_LOAD: &str = "tandem.io/rebuild-rate-under-load";
/// Segments a copy keeps in flight at once (1 to 64).
pub const ANNOTATION_REBUILD_SEGMENTS: &str = "tandem.io/rebuild-segments";

/// The most segments a copy may keep in flight.
pub const REBUILD_SEGMENTS_MAX: usize = 64;

/// The pace of a volume's rebuilds and resyncs.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RebuildPace {
    /// Bytes per second while the volume is idle; `None`: no cap.
    pub idle: Option<u64>,
    /// Bytes per second while clients do I/O; `None`: only `idle` applies.
    pub under_load: Option<u64>,
    /// Segments in flight.
    pub segments: usize,
}

impl Default for RebuildPace {
    fn default() -> Self {
        RebuildPace {
            idle: None,
            under_load: Some(50 << 20),
            segments: 4,
        }
    }
}

/// A pace annotation that cannot be read.
pub type PaceError = AnnotationError;

impl RebuildPace {
    /// A volume's pace: its config's annotations over its pool cluster's over the defaults.
    pub fn of(
        cluster: &BTreeMap<String, String>,
        volume: &BTreeMap<String, String>,
    ) -> Result<RebuildPace, PaceError> {
        let mut pace = RebuildPace::default();
        for annotations in [cluster, volume] {
            pace.apply(annotations)?;
        }
        Ok(pace)
    }

    /// Checks the pace annotations among `annotations` (what admission refuses).
    pub fn validate(annotations: &BTreeMap<String, String>) -> Result<(), PaceError> {
        RebuildPace::default().apply(annotations)
    }

    fn apply(&mut self, annotations: &BTreeMap<String, String>) -> Result<(), PaceError> {
        if let Some(value) = annotations.get(ANNOTATION_REBUILD_RATE) {
            self.idle = rate(ANNOTATION_REBUILD_RATE, value)?;
        }
        if let Some(value) = annotations.get(ANNOTATION_REBUILD_RATE_UNDER_LOAD) {
            self.under_load = rate(ANNOTATION_REBUILD_RATE_UNDER_LOAD, value)?;
        }
        if let Some(value) = annotations.get(ANNOTATION_REBUILD_SEGMENTS) {
            self.segments = value
                .trim()
                .parse()
                .ok()
                .filter(|segments| (1..=REBUILD_SEGMENTS_MAX).contains(segments))
                .ok_or_else(|| PaceError {
                    annotation: ANNOTATION_REBUILD_SEGMENTS,
                    value: value.clone(),
                    expected: "a number of segments from 1 to 64",
                })?;
        }
        Ok(())
    }
}

/// A rate: a quantity of bytes per second ("100Mi", "1G", optionally with "/s"), or
/// `unlimited` / `0` for none.
fn rate(annotation: &'static str, value: &str) -> Result<Option<u64>, PaceError> {
    let text = value.trim();
    if text == "unlimited" {
        return Ok(None);
    }
    let quantity = text.strip_suffix("/s").unwrap_or(text);
    Quantity::parse(quantity)
        .map(|quantity| Some(quantity.bytes()).filter(|bytes| *bytes > 0))
        .map_err(|_| PaceError {
            annotation,
            value: value.to_string(),
            expected: "a rate in bytes per second (e.g. 100Mi, or unlimited)",
        })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::annotations;

    #[test]
    fn a_volume_overrides_its_cluster_which_overrides_the_defaults() {
        let cluster = annotations(&[
            (ANNOTATION_REBUILD_RATE, "200Mi"),
            (ANNOTATION_REBUILD_SEGMENTS, "8"),
        ]);
        let volume = annotations(&[
            (ANNOTATION_REBUILD_RATE, "100Mi/s"),
            (ANNOTATION_REBUILD_RATE_UNDER_LOAD, "unlimited"),
        ]);
        assert_eq!(
            RebuildPace::of(&cluster, &volume),
            Ok(RebuildPace {
                idle: Some(100 << 20),
                under_load: None,
                segments: 8,
            })
        );
        assert_eq!(
            RebuildPace::of(&BTreeMap::new(), &BTreeMap::new()),
            Ok(RebuildPace::default())
        );
        assert_eq!(
            RebuildPace::of(
                &annotations(&[(ANNOTATION_REBUILD_RATE, "0")]),
                &BTreeMap::new()
            )
            .map(|pace| pace.idle),
            Ok(None)
        );
    }

    #[test]
    fn a_bad_value_is_refused_naming_the_annotation() {
        for (annotation, value) in [
            (ANNOTATION_REBUILD_RATE, "fast"),
            (ANNOTATION_REBUILD_RATE_UNDER_LOAD, "-5Mi"),
            (ANNOTATION_REBUILD_SEGMENTS, "0"),
            (ANNOTATION_REBUILD_SEGMENTS, "65"),
        ] {
            let error =
                RebuildPace::validate(&annotations(&[(annotation, value)])).expect_err("refused");
            assert_eq!(error.annotation, annotation);
            assert!(error.to_string().contains(annotation), "{error}");
        }
    }
}
