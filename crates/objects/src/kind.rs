//! The kinds of object Tandem knows, and every spelling the CLI accepts for each (`cspc`,
//! `cspcs`, `cstorpoolcluster`, `cstorpoolclusters`, `CStorPoolCluster`, ...).

use std::fmt;
use std::str::FromStr;

use crate::meta::{CORE_API_VERSION, CSTOR_API_VERSION};

/// One kind of object.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Kind {
    CStorPoolCluster,
    CStorPoolInstance,
    CStorVolumeConfig,
    CStorVolume,
    CStorVolumeReplica,
    Event,
}

/// A kind the CLI does not know.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unknown kind {input:?}; known kinds: {}", known_kinds_for_messages())]
pub struct UnknownKindError {
    pub input: String,
}

impl Kind {
    /// Every kind, in the order `get all` would list them.
    pub const ALL: [Kind; 6] = [
        Kind::CStorPoolCluster,
        Kind::CStorPoolInstance,
        Kind::CStorVolumeConfig,
        Kind::CStorVolume,
        Kind::CStorVolumeReplica,
        Kind::Event,
    ];

    /// The name in `kind:` fields, e.g. "CStorPoolCluster".
    pub const fn name(self) -> &'static str {
        match self {
            Kind::CStorPoolCluster => "CStorPoolCluster",
            Kind::CStorPoolInstance => "CStorPoolInstance",
            Kind::CStorVolumeConfig => "CStorVolumeConfig",
            Kind::CStorVolume => "CStorVolume",
            Kind::CStorVolumeReplica => "CStorVolumeReplica",
            Kind::Event => "Event",
        }
    }

    /// The short name from cStor's CRDs ("cspc"), and Kubernetes' "ev" for events.
    pub const fn short_name(self) -> &'static str {
        match self {
            Kind::CStorPoolCluster => "cspc",
            Kind::CStorPoolInstance => "cspi",
            Kind::CStorVolumeConfig => "cvc",
            Kind::CStorVolume => "cv",
            Kind::CStorVolumeReplica => "cvr",
            Kind::Event => "ev",
        }
    }

    /// The lower-case singular, e.g. "cstorpoolcluster".
    pub const fn singular(self) -> &'static str {
        match self {
            Kind::CStorPoolCluster => "cstorpoolcluster",
            Kind::CStorPoolInstance => "cstorpoolinstance",
            Kind::CStorVolumeConfig => "cstorvolumeconfig",
            Kind::CStorVolume => "cstorvolume",
            Kind::CStorVolumeReplica => "cstorvolumereplica",
            Kind::Event => "event",
        }
    }

    /// The lower-case plural (the resource name), e.g. "cstorpoolclusters".
    pub const fn plural(self) -> &'static str {
        match self {
            Kind::CStorPoolCluster => "cstorpoolclusters",
            Kind::CStorPoolInstance => "cstorpoolinstances",
            Kind::CStorVolumeConfig => "cstorvolumeconfigs",
            Kind::CStorVolume => "cstorvolumes",
            Kind::CStorVolumeReplica => "cstorvolumereplicas",
            Kind::Event => "events",
        }
    }

    /// The `apiVersion` objects of this kind carry.
    pub const fn api_version(self) -> &'static str {
        match self {
            Kind::Event => CORE_API_VERSION,
            _ => CSTOR_API_VERSION,
        }
    }

    /// Looks a kind up by any spelling a user may type: short name, short name plus "s",
    /// singular, plural, or the kind name, ignoring case; the singular or plural may carry its
    /// API group as kubectl prints it (`cstorpoolinstance.cstor.openebs.io`, from `-o name`).
    pub fn from_cli_name(spelling: &str) -> Result<Kind, UnknownKindError> {
        let lower = spelling.trim().to_ascii_lowercase();
        let grouped = |kind: &Kind| {
            let group = kind
                .api_version()
                .rsplit_once('/')
                .map_or("", |(group, _)| group);
            (!group.is_empty())
                .then(|| lower.strip_suffix(group)?.strip_suffix('.'))
                .flatten()
                .filter(|name| *name == kind.singular() || *name == kind.plural())
                .is_some()
        };
        let wanted = lower.as_str();
        Kind::ALL
            .into_iter()
            .find(|kind| {
                let short = kind.short_name();
                wanted == short
                    || wanted.strip_suffix('s') == Some(short)
                    || wanted == kind.singular()
                    || wanted == kind.plural()
                    || grouped(kind)
            })
            .ok_or_else(|| UnknownKindError {
                input: spelling.to_string(),
            })
    }

    /// Looks a kind up by its exact `kind:` field value ("CStorVolumeConfig"). Objects must
    /// spell their kind exactly, as in Kubernetes; the CLI's looser spellings are for commands.
    pub fn from_kind_field(value: &str) -> Option<Kind> {
        Kind::ALL.into_iter().find(|kind| kind.name() == value)
    }
}

impl fmt::Display for Kind {
    fn fmt(&self, formatter: &mut fmt::Formatter<'_>) -> fmt::Result {
        formatter.write_str(self.name())
    }
}

impl FromStr for Kind {
    type Err = UnknownKindError;

    fn from_str(spelling: &str) -> Result<Self, Self::Err> {
        Kind::from_cli_name(spelling)
    }
}

/// "cspc (CStorPoolCluster), cspi (CStorPoolInstance), ...", for error messages.
pub(crate) fn known_kinds_for_messages() -> String {
    Kind::ALL
        .iter()
        .map(|kind| format!("{} ({})", kind.short_name(), kind.name()))
        .collect::<Vec<_>>()
        .join(", ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn check(spelling: &str, expected: Result<Kind, &str>) {
        let actual = Kind::from_cli_name(spelling).map_err(|error| error.to_string());
        assert_eq!(
            actual,
            expected.map_err(str::to_string),
            "spelling {spelling:?}"
        );
    }

    #[test]
    fn spellings() {
        use Kind::*;
        let table: &[(&str, Kind)] = &[
            ("cspc", CStorPoolCluster),
            ("cspcs", CStorPoolCluster),
            ("cstorpoolcluster", CStorPoolCluster),
            ("cstorpoolclusters", CStorPoolCluster),
            ("CStorPoolCluster", CStorPoolCluster),
            ("CSPC", CStorPoolCluster),
            ("cspi", CStorPoolInstance),
            ("cspis", CStorPoolInstance),
            ("cstorpoolinstance", CStorPoolInstance),
            ("cstorpoolinstances", CStorPoolInstance),
            ("CStorPoolInstance", CStorPoolInstance),
            ("cvc", CStorVolumeConfig),
            ("cvcs", CStorVolumeConfig),
            ("cstorvolumeconfig", CStorVolumeConfig),
            ("cstorvolumeconfigs", CStorVolumeConfig),
            ("CStorVolumeConfig", CStorVolumeConfig),
            ("cv", CStorVolume),
            ("cvs", CStorVolume),
            ("cstorvolume", CStorVolume),
            ("cstorvolumes", CStorVolume),
            ("CStorVolume", CStorVolume),
            ("cvr", CStorVolumeReplica),
            ("cvrs", CStorVolumeReplica),
            ("cstorvolumereplica", CStorVolumeReplica),
            ("cstorvolumereplicas", CStorVolumeReplica),
            ("CStorVolumeReplica", CStorVolumeReplica),
            ("event", Event),
            ("events", Event),
            ("ev", Event),
            ("Event", Event),
            ("EVENTS", Event),
            // As `-o name` prints them (kubectl takes them back).
            ("cstorpoolinstance.cstor.openebs.io", CStorPoolInstance),
            ("cstorvolumereplicas.cstor.openebs.io", CStorVolumeReplica),
        ];
        for (spelling, kind) in table {
            check(spelling, Ok(*kind));
        }
    }

    #[test]
    fn unknown_spellings_list_the_known_kinds() {
        let known = "known kinds: cspc (CStorPoolCluster), cspi (CStorPoolInstance), \
                     cvc (CStorVolumeConfig), cv (CStorVolume), cvr (CStorVolumeReplica), ev (Event)";
        for spelling in [
            "pods",
            "",
            "cstor",
            "cvrss",
            "s",
            "cvc.cstor.openebs.io",
            "cstorvolume.other.io",
        ] {
            check(
                spelling,
                Err(&format!("unknown kind {spelling:?}; {known}")),
            );
        }
    }

    #[test]
    fn every_kind_round_trips_through_each_spelling() {
        for kind in Kind::ALL {
            for spelling in [
                kind.short_name(),
                kind.singular(),
                kind.plural(),
                kind.name(),
            ] {
                assert_eq!(spelling.parse::<Kind>(), Ok(kind));
            }
            assert_eq!(Kind::from_kind_field(kind.name()), Some(kind));
            assert_eq!(Kind::from_kind_field(kind.singular()), None);
        }
    }
}
