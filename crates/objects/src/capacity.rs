//! How much may be promised against what a pool holds. Replicas are thin by default (a sparse
//! file: space is taken as data is written), so a pool can promise more than it has; a pool
//! cluster bounds that promise and keeps some space free, as Longhorn's
//! `storage-over-provisioning-percentage` and `storage-minimal-available-percentage` and
//! Mayastor's pool commitment do:
//!
//! * `tandem.io/over-provisioning-percentage` (default 200): the sizes of the replicas on a
//!   pool may add up to this much of its capacity;
//! * `tandem.io/minimum-free-percentage` (default 20): a pool with less free space than this
//!   takes no new replica (a thick one must leave it free after its reservation);
//! * `tandem.io/usage-warning-percentages` (default `70,80`): a pool's agent warns (an event,
//!   and a metric) as its real use crosses each, before the read-only threshold (85 % unless
//!   the pool's `roThresholdLimit` says otherwise).
//!
//! A volume is thick when its CStorVolumeConfig says `tandem.io/provisioning: thick`: each
//! replica's space is reserved when it is created, so it can never run out of space.
//!
//! Everything here is pure: the controllers (placement), admission (scale-up and migration
//! edits), the agents (warnings) and the CLI (drain plans) decide from the same numbers.

use std::collections::BTreeMap;
use std::fmt;

use crate::meta::AnnotationError;
use crate::object::CStorVolumeReplica;
use crate::quantity::format_bytes_binary as short;
use crate::LABEL_CSTOR_POOL_INSTANCE_NAME;

pub const ANNOTATION_OVER_PROVISIONING: &str = "tandem.io/over-provisioning-percentage";
pub const ANNOTATION_MINIMUM_FREE: &str = "tandem.io/minimum-free-percentage";
pub const ANNOTATION_USAGE_WARNINGS: &str = "tandem.io/usage-warning-percentages";
/// On a CStorVolumeConfig (copied to its replicas): `thin` (the default) or `thick`.
pub const ANNOTATION_PROVISIONING: &str = "tandem.io/provisioning";

pub const OVER_PROVISIONING_DEFAULT: u32 = 200;
pub const MINIMUM_FREE_DEFAULT: u32 = 20;
pub const USAGE_WARNINGS_DEFAULT: [u32; 2] = [70, 80];
/// The highest over-provisioning percentage accepted (a hundred times the capacity).
pub const OVER_PROVISIONING_MAX: u32 = 10_000;

/// The reason of the Warning a volume gets when enough pools are online but too few have room
/// for it: it stays Pending until they do (space freed, pools added, a higher limit), so
/// `tandem volume create` stops waiting at once.
pub const REASON_INSUFFICIENT_CAPACITY: &str = "InsufficientCapacity";

/// A pool cluster's capacity policy.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CapacityPolicy {
    /// The replicas' sizes may add up to this percentage of a pool's capacity.
    pub over_provisioning_percent: u32,
    /// A pool with less free space than this percentage of its capacity takes no new replica.
    pub minimum_free_percent: u32,
    /// Percentages of real use at which a pool warns, ascending.
    pub usage_warnings: Vec<u32>,
}

impl Default for CapacityPolicy {
    fn default() -> Self {
        CapacityPolicy {
            over_provisioning_percent: OVER_PROVISIONING_DEFAULT,
            minimum_free_percent: MINIMUM_FREE_DEFAULT,
            usage_warnings: USAGE_WARNINGS_DEFAULT.to_vec(),
        }
    }
}

/// A capacity annotation that cannot be read.
pub type PolicyError = AnnotationError;

impl CapacityPolicy {
    /// A pool cluster's policy from its annotations, the defaults where they say nothing.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<CapacityPolicy, PolicyError> {
        let mut policy = CapacityPolicy::default();
        if let Some(value) = annotations.get(ANNOTATION_OVER_PROVISIONING) {
            policy.over_provisioning_percent = percent(value)
                .filter(|percent| (1..=OVER_PROVISIONING_MAX).contains(percent))
                .ok_or_else(|| PolicyError {
                    annotation: ANNOTATION_OVER_PROVISIONING,
                    value: value.clone(),
                    expected: "a percentage from 1 to 10000 (e.g. 200)",
                })?;
        }
        if let Some(value) = annotations.get(ANNOTATION_MINIMUM_FREE) {
            policy.minimum_free_percent = percent(value)
                .filter(|percent| *percent < 100)
                .ok_or_else(|| PolicyError {
                    annotation: ANNOTATION_MINIMUM_FREE,
                    value: value.clone(),
                    expected: "a percentage from 0 to 99",
                })?;
        }
        if let Some(value) = annotations.get(ANNOTATION_USAGE_WARNINGS) {
            let invalid = || PolicyError {
                annotation: ANNOTATION_USAGE_WARNINGS,
                value: value.clone(),
                expected: "ascending percentages from 1 to 99, separated by commas (e.g. 70,80)",
            };
            let warnings = if value.trim().is_empty() {
                Vec::new()
            } else {
                value
                    .split(',')
                    .map(|part| percent(part).filter(|percent| (1..100).contains(percent)))
                    .collect::<Option<Vec<u32>>>()
                    .ok_or_else(invalid)?
            };
            if warnings.windows(2).any(|pair| pair[0] >= pair[1]) {
                return Err(invalid());
            }
            policy.usage_warnings = warnings;
        }
        Ok(policy)
    }

    /// A pool cluster's policy for a decision: one whose annotations cannot be read (admission
    /// refuses those; one that got in anyway) counts as the defaults.
    pub fn lenient(annotations: &BTreeMap<String, String>) -> CapacityPolicy {
        CapacityPolicy::of(annotations).unwrap_or_default()
    }

    /// Checks the capacity annotations among `annotations` (what admission refuses).
    pub fn validate(annotations: &BTreeMap<String, String>) -> Result<(), PolicyError> {
        CapacityPolicy::of(annotations).map(|_| ())
    }

    /// The most the replicas on a pool of `capacity` bytes may add up to.
    pub fn provisioning_limit(&self, capacity: u64) -> u64 {
        let limit = u128::from(capacity) * u128::from(self.over_provisioning_percent) / 100;
        u64::try_from(limit).unwrap_or(u64::MAX)
    }

    /// The free space a pool of `capacity` bytes keeps from new replicas.
    pub fn minimum_free(&self, capacity: u64) -> u64 {
        let minimum = u128::from(capacity) * u128::from(self.minimum_free_percent) / 100;
        u64::try_from(minimum).unwrap_or(u64::MAX)
    }

    /// The highest warning threshold a pool `used_percent` full has reached, if any.
    pub fn warning_reached(&self, used_percent: u128) -> Option<u32> {
        (self.usage_warnings.iter().rev())
            .find(|threshold| used_percent >= u128::from(**threshold))
            .copied()
    }
}

/// "200", "200%" or " 200 % ".
fn percent(value: &str) -> Option<u32> {
    let text = value.trim();
    text.strip_suffix('%').unwrap_or(text).trim().parse().ok()
}

/// Whether a volume's replicas reserve their space when created.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum Provisioning {
    #[default]
    Thin,
    Thick,
}

impl fmt::Display for Provisioning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Provisioning::Thin => "thin",
            Provisioning::Thick => "thick",
        })
    }
}

impl Provisioning {
    /// A volume's provisioning from its config's (or replica's) annotations.
    pub fn of(annotations: &BTreeMap<String, String>) -> Result<Provisioning, PolicyError> {
        match annotations
            .get(ANNOTATION_PROVISIONING)
            .map(|value| value.trim())
        {
            None | Some("thin") => Ok(Provisioning::Thin),
            Some("thick") => Ok(Provisioning::Thick),
            Some(other) => Err(PolicyError {
                annotation: ANNOTATION_PROVISIONING,
                value: other.to_string(),
                expected: "thin or thick",
            }),
        }
    }
}

/// A pool's space, as a decision sees it.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PoolSpace {
    /// What the pool holds in all (its CSPI's `status.capacity.total`).
    pub capacity: u64,
    /// What its files take (`status.capacity.used`).
    pub used: u64,
    /// The sizes of the replicas on it, added up.
    pub provisioned: u64,
}

/// Why a new replica cannot go to a pool.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum NoRoom {
    #[error(
        "pool {pool} cannot take a {} replica: {} of its {} are provisioned, and its pool \
         cluster allows {}% ({}) ({ANNOTATION_OVER_PROVISIONING})",
        short(*size), short(space.provisioned), short(space.capacity), policy.over_provisioning_percent,
        short(policy.provisioning_limit(space.capacity))
    )]
    OverProvisioned {
        pool: String,
        size: u64,
        space: PoolSpace,
        policy: CapacityPolicy,
    },
    #[error(
        "pool {pool} cannot take a {} replica: {} of its {} are free, and its pool cluster \
         keeps {}% ({}) free ({ANNOTATION_MINIMUM_FREE})",
        short(*size), short(space.capacity.saturating_sub(space.used)), short(space.capacity),
        policy.minimum_free_percent, short(policy.minimum_free(space.capacity))
    )]
    TooLittleFree {
        pool: String,
        size: u64,
        space: PoolSpace,
        policy: CapacityPolicy,
    },
    #[error(
        "pool {pool} cannot reserve a thick {} replica: {} of its {} are free, and its pool \
         cluster keeps {}% ({}) free ({ANNOTATION_MINIMUM_FREE})",
        short(*size), short(space.capacity.saturating_sub(space.used)), short(space.capacity),
        policy.minimum_free_percent, short(policy.minimum_free(space.capacity))
    )]
    CannotReserve {
        pool: String,
        size: u64,
        space: PoolSpace,
        policy: CapacityPolicy,
    },
}

/// Whether pool `pool`, with `space`, may take a new replica of `size` bytes under `policy`.
pub fn room_for(
    pool: &str,
    space: PoolSpace,
    size: u64,
    provisioning: Provisioning,
    policy: &CapacityPolicy,
) -> Result<(), NoRoom> {
    let (pool, policy) = (pool.to_string(), policy.clone());
    if space.provisioned.saturating_add(size) > policy.provisioning_limit(space.capacity) {
        return Err(NoRoom::OverProvisioned {
            pool,
            size,
            space,
            policy,
        });
    }
    let free = space.capacity.saturating_sub(space.used);
    let minimum = policy.minimum_free(space.capacity);
    match provisioning {
        Provisioning::Thin if free < minimum => Err(NoRoom::TooLittleFree {
            pool,
            size,
            space,
            policy,
        }),
        Provisioning::Thick if free < size.saturating_add(minimum) => Err(NoRoom::CannotReserve {
            pool,
            size,
            space,
            policy,
        }),
        _ => Ok(()),
    }
}

/// What each pool has promised: the sizes of the replicas labelled with its name, added up.
pub fn provisioned_by_pool<'a>(
    replicas: impl IntoIterator<Item = &'a CStorVolumeReplica>,
) -> BTreeMap<&'a str, u64> {
    let mut provisioned = BTreeMap::new();
    for replica in replicas {
        if let Some(pool) = replica.metadata.label(LABEL_CSTOR_POOL_INSTANCE_NAME) {
            *provisioned.entry(pool).or_default() += replica.spec.capacity.bytes();
        }
    }
    provisioned
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::meta::annotations;

    const GI: u64 = 1 << 30;

    #[test]
    fn a_policy_reads_its_annotations_and_refuses_what_it_cannot_read() {
        assert_eq!(
            CapacityPolicy::of(&BTreeMap::new()),
            Ok(CapacityPolicy::default())
        );
        let policy = CapacityPolicy::of(&annotations(&[
            (ANNOTATION_OVER_PROVISIONING, "150%"),
            (ANNOTATION_MINIMUM_FREE, " 10 "),
            (ANNOTATION_USAGE_WARNINGS, "60, 75,80"),
        ]))
        .unwrap();
        assert_eq!(
            policy,
            CapacityPolicy {
                over_provisioning_percent: 150,
                minimum_free_percent: 10,
                usage_warnings: vec![60, 75, 80],
            }
        );
        for (annotation, value) in [
            (ANNOTATION_OVER_PROVISIONING, "0"),
            (ANNOTATION_OVER_PROVISIONING, "lots"),
            (ANNOTATION_OVER_PROVISIONING, "20000"),
            (ANNOTATION_MINIMUM_FREE, "100"),
            (ANNOTATION_MINIMUM_FREE, "-1"),
            (ANNOTATION_USAGE_WARNINGS, "80,70"),
            (ANNOTATION_USAGE_WARNINGS, "80,100"),
            (ANNOTATION_USAGE_WARNINGS, "80,,90"),
        ] {
            let error =
                CapacityPolicy::validate(&annotations(&[(annotation, value)])).expect_err(value);
            assert_eq!(error.annotation, annotation);
            assert!(error.to_string().contains(value), "{error}");
        }
        assert_eq!(
            CapacityPolicy::of(&annotations(&[(ANNOTATION_USAGE_WARNINGS, "")]))
                .unwrap()
                .usage_warnings,
            Vec::<u32>::new()
        );
    }

    #[test]
    fn the_highest_warning_reached_is_reported() {
        let policy = CapacityPolicy::default();
        assert_eq!(policy.warning_reached(69), None);
        assert_eq!(policy.warning_reached(70), Some(70));
        assert_eq!(policy.warning_reached(84), Some(80));
    }

    #[test]
    fn a_pool_takes_replicas_up_to_its_over_provisioning_limit() {
        let policy = CapacityPolicy::default();
        let space = PoolSpace {
            capacity: 2 * GI,
            used: 0,
            provisioned: 3 * GI,
        };
        assert_eq!(
            room_for("p", space, GI, Provisioning::Thin, &policy),
            Ok(())
        );
        let refused = room_for("p", space, GI + 1, Provisioning::Thin, &policy).unwrap_err();
        assert!(matches!(refused, NoRoom::OverProvisioned { .. }));
        assert_eq!(
            refused.to_string(),
            "pool p cannot take a 1.0 GiB replica: 3 GiB of its 2 GiB are provisioned, and its \
             pool cluster allows 200% (4 GiB) (tandem.io/over-provisioning-percentage)"
        );
        let huge = room_for(
            "p",
            PoolSpace::default(),
            100 << 40,
            Provisioning::Thin,
            &policy,
        );
        assert!(matches!(huge, Err(NoRoom::OverProvisioned { .. })));
    }

    #[test]
    fn a_pool_keeps_its_minimum_free_space_from_new_replicas() {
        let policy = CapacityPolicy::default();
        let space = |used| PoolSpace {
            capacity: 10 * GI,
            used,
            provisioned: 0,
        };
        assert_eq!(
            room_for("p", space(8 * GI), GI, Provisioning::Thin, &policy),
            Ok(())
        );
        let refused = room_for("p", space(8 * GI + 1), GI, Provisioning::Thin, &policy);
        assert!(
            matches!(refused, Err(NoRoom::TooLittleFree { .. })),
            "{refused:?}"
        );
        // A thick replica must leave the minimum free after its reservation.
        assert_eq!(
            room_for("p", space(6 * GI), 2 * GI, Provisioning::Thick, &policy),
            Ok(())
        );
        let refused = room_for("p", space(6 * GI), 2 * GI + 1, Provisioning::Thick, &policy);
        assert!(
            matches!(refused, Err(NoRoom::CannotReserve { .. })),
            "{refused:?}"
        );
    }

    #[test]
    fn a_volume_is_thin_unless_it_says_thick() {
        assert_eq!(Provisioning::of(&BTreeMap::new()), Ok(Provisioning::Thin));
        let thick = annotations(&[(ANNOTATION_PROVISIONING, "thick")]);
        assert_eq!(Provisioning::of(&thick), Ok(Provisioning::Thick));
        let odd = annotations(&[(ANNOTATION_PROVISIONING, "fat")]);
        assert!(Provisioning::of(&odd).is_err());
    }
}
