//! The agent's one error type, and the typed key its error log is kept by.
//!
//! The texts are the ones the agent has always shown: the replica errors are written into a
//! CVR's `status.message` (and recognised there again, see [`is_agent_message`]), the others go
//! into log lines.

use std::fmt;
use std::path::{Path, PathBuf};
use std::time::Duration;

use tandem_client::ClientError;
use tandem_objects::Kind;

/// Every CVR `status.message` the agent writes with phase Error starts with one of these, so it
/// can tell its own Error (which it clears once the cause is gone) from one set by the data path
/// (which it leaves alone). The status is the agent's only memory of it across restarts, which
/// is why this one check reads text.
const CREATE_FAILED: &str = "cannot create replica storage";
const STORAGE_FAILED: &str = "replica storage ";

/// Whether a CVR's `status.message` is one the agent wrote (an [`Error::Replica`] text).
pub fn is_agent_message(message: &str) -> bool {
    message.starts_with(CREATE_FAILED) || message.starts_with(STORAGE_FAILED)
}

/// What went wrong, by what the caller does about it: the one distinction the agent's loops
/// make.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ErrorKind {
    /// Someone else wrote the object first: the next pass reads it again (nothing to log).
    Conflict,
    /// Anything else: logged once (see [`crate::report::ErrorLog`]) and tried again by the next
    /// pass.
    Other,
}

/// Why an agent operation failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A control plane request failed (the client's own text).
    #[error(transparent)]
    Api(#[from] ClientError),
    #[error("the control plane did not answer within {}", humantime::format_duration(*.0))]
    Timeout(Duration),
    /// A volume's or pool cluster's rebuild pace annotation cannot be read (the default
    /// applies).
    #[error(transparent)]
    Pace(#[from] tandem_objects::PaceError),
    /// A heartbeat got no answer in time.
    #[error("no answer within {}", humantime::format_duration(*.0))]
    NoAnswer(Duration),
    #[error("cannot list the pools of node {node}: {source}")]
    ListPools { node: String, source: Box<Error> },
    #[error("cannot list the replicas of pool {pool}: {source}")]
    ListReplicas { pool: String, source: Box<Error> },
    #[error("cannot list {}: {message}", dir.display())]
    ListStorage { dir: PathBuf, message: String },
    #[error("cannot measure the pool directory {}: {message}", dir.display())]
    MeasurePool { dir: PathBuf, message: String },
    #[error("cannot clean up {}: {message}", dir.display())]
    CleanUp { dir: PathBuf, message: String },
    /// The pool directory cannot be this pool's (the claim's own text).
    #[error(transparent)]
    Claim(#[from] crate::pool::ClaimError),
    #[error("file-system task failed: {0}")]
    Task(String),
    /// A replica's allocation could not be measured (the file system's text).
    #[error("{0}")]
    MeasureReplica(String),
    /// Why a replica has phase Error; the text goes into its `status.message`.
    #[error(transparent)]
    Replica(#[from] ReplicaError),
    #[error("cannot remove replica storage {}: {message}", dir.display())]
    RemoveStorage { dir: PathBuf, message: String },
    /// A cStor object that does not map to the core's types (see [`crate::cstor`]).
    #[error(transparent)]
    Cstor(#[from] crate::cstor::CstorError),
    #[error("waiting for the storage of the volume's replicas ({ready} of {wanted} ready)")]
    WaitingForStorage { ready: usize, wanted: usize },
    #[error("cannot take generation {generation}: {source}")]
    TakeGeneration { generation: u64, source: Box<Error> },
    #[error("cannot export {volume} over NBD: {message}")]
    Export { volume: String, message: String },
    #[error("cannot write the status of CStorVolume {volume}: {source}")]
    WriteVolumeStatus { volume: String, source: Box<Error> },
}

impl Error {
    pub fn kind(&self) -> ErrorKind {
        match self {
            Error::Api(error) if error.is_conflict() => ErrorKind::Conflict,
            Error::ListPools { source, .. }
            | Error::ListReplicas { source, .. }
            | Error::TakeGeneration { source, .. }
            | Error::WriteVolumeStatus { source, .. } => source.kind(),
            _ => ErrorKind::Other,
        }
    }

    pub fn is_conflict(&self) -> bool {
        self.kind() == ErrorKind::Conflict
    }
}

/// Why a replica is in phase Error. Every text starts with [`CREATE_FAILED`] or
/// [`STORAGE_FAILED`] (see [`is_agent_message`]).
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ReplicaError {
    /// Storage cannot be created for this CVR.
    #[error("cannot create replica storage: {0}")]
    Refused(#[from] Refusal),
    #[error("cannot create replica storage {}: {message}", dir.display())]
    Create { dir: PathBuf, message: String },
    #[error("replica storage is unusable: {0}")]
    Unusable(String),
    #[error(
        "replica storage {} belongs to replica id {stored} (incarnation {incarnation}), not to \
         this CVR's replica id {wanted}; it is left untouched",
        dir.display()
    )]
    AnotherReplica {
        dir: PathBuf,
        stored: u64,
        incarnation: u64,
        wanted: u64,
    },
    #[error("replica storage {} cannot be served: {message}", dir.display())]
    Serve { dir: PathBuf, message: String },
}

/// Why storage is not created for a CVR.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Refusal {
    /// The CVR itself cannot be mapped (no volume, a bad replica id, a bad size).
    #[error(transparent)]
    Cstor(#[from] crate::cstor::CstorError),
    #[error("volume {volume} already has a replica in pool {pool}: CStorVolumeReplica {owner}")]
    VolumeTaken {
        volume: String,
        pool: String,
        owner: String,
    },
    #[error("pool {pool} is read-only (used {used_percent}% >= roThresholdLimit {limit}%)")]
    ReadOnly {
        pool: String,
        used_percent: u128,
        limit: u32,
    },
}

impl ReplicaError {
    pub fn serve(dir: &Path, error: impl fmt::Display) -> ReplicaError {
        ReplicaError::Serve {
            dir: dir.to_path_buf(),
            message: error.to_string(),
        }
    }
}

/// What the error log keys a failure by: a loop or step of the agent, or one aspect of one
/// object (so the entries of objects that are gone can be forgotten).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Subject {
    Reconcile,
    /// The heartbeat to the control plane at this address.
    Heartbeat(String),
    Targets,
    PoolDirectory,
    CleanUp,
    MeasurePool,
    VolumeStatuses,
    /// The target this node runs for a volume.
    Target(String),
    Object {
        kind: Kind,
        name: String,
        aspect: Aspect,
    },
}

/// Which part of an object a failure is about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Aspect {
    /// The object itself (its storage, an update of it).
    Whole,
    Status,
    Capacity,
    Geometry,
    /// Recording an event with this reason about it.
    Event(&'static str),
}

impl Subject {
    pub fn object(kind: Kind, name: &str, aspect: Aspect) -> Subject {
        Subject::Object {
            kind,
            name: name.to_string(),
            aspect,
        }
    }

    pub fn cvr(name: &str) -> Subject {
        Subject::object(Kind::CStorVolumeReplica, name, Aspect::Whole)
    }

    pub fn cspi(name: &str) -> Subject {
        Subject::object(Kind::CStorPoolInstance, name, Aspect::Whole)
    }

    /// The same object, another aspect.
    pub fn with(&self, aspect: Aspect) -> Subject {
        match self {
            Subject::Object { kind, name, .. } => Subject::object(*kind, name, aspect),
            other => other.clone(),
        }
    }
}

/// The text log lines have always carried ("cvr pvc-1-cspc-a-abcd status", "measure pool").
impl fmt::Display for Subject {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Subject::Reconcile => f.write_str("reconcile"),
            Subject::Heartbeat(server) => write!(f, "heartbeat to {server}"),
            Subject::Targets => f.write_str("targets"),
            Subject::PoolDirectory => f.write_str("pool directory"),
            Subject::CleanUp => f.write_str("clean up"),
            Subject::MeasurePool => f.write_str("measure pool"),
            Subject::VolumeStatuses => f.write_str("volume statuses"),
            Subject::Target(volume) => write!(f, "target {volume}"),
            Subject::Object { kind, name, aspect } => {
                write!(f, "{} {name}", kind.short_name())?;
                match aspect {
                    Aspect::Whole => Ok(()),
                    Aspect::Status => f.write_str(" status"),
                    Aspect::Capacity => f.write_str(" capacity"),
                    Aspect::Geometry => f.write_str(" geometry"),
                    Aspect::Event(reason) => write!(f, " event {reason}"),
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cstor::CstorError;

    #[test]
    fn every_replica_error_is_recognised_as_the_agents_own() {
        let dir = PathBuf::from("/pool/replicas/pvc-1");
        let all = [
            ReplicaError::Refused(Refusal::Cstor(CstorError::NoVolumeLabel)),
            ReplicaError::Refused(Refusal::Cstor(CstorError::BadReplicaId("x".into()))),
            ReplicaError::Refused(Refusal::Cstor(CstorError::Geometry(
                crate::storage::GeometryError::ZeroCapacity,
            ))),
            ReplicaError::Refused(Refusal::VolumeTaken {
                volume: "pvc-1".into(),
                pool: "p".into(),
                owner: "o".into(),
            }),
            ReplicaError::Refused(Refusal::ReadOnly {
                pool: "p".into(),
                used_percent: 90,
                limit: 85,
            }),
            ReplicaError::Create {
                dir: dir.clone(),
                message: "no space".into(),
            },
            ReplicaError::Unusable("checksum mismatch".into()),
            ReplicaError::AnotherReplica {
                dir: dir.clone(),
                stored: 1,
                incarnation: 2,
                wanted: 3,
            },
            ReplicaError::serve(&dir, "busy"),
        ];
        for error in all {
            assert!(is_agent_message(&error.to_string()), "{error}");
        }
        assert!(!is_agent_message("zfs stats returned nothing"));
    }

    #[test]
    fn texts_are_the_ones_always_shown() {
        let read_only = ReplicaError::from(Refusal::ReadOnly {
            pool: "cspc-a-abcd".into(),
            used_percent: 90,
            limit: 85,
        });
        assert_eq!(
            read_only.to_string(),
            "cannot create replica storage: pool cspc-a-abcd is read-only (used 90% >= \
             roThresholdLimit 85%)"
        );
        assert_eq!(
            Subject::cvr("pvc-1-a").with(Aspect::Status).to_string(),
            "cvr pvc-1-a status"
        );
        assert_eq!(
            Subject::cspi("a").with(Aspect::Event("R")).to_string(),
            "cspi a event R"
        );
        assert_eq!(Subject::Target("pvc-1".into()).to_string(), "target pvc-1");
        assert_eq!(
            Error::Timeout(Duration::from_secs(10)).to_string(),
            "the control plane did not answer within 10s"
        );
        let conflict = Error::from(ClientError::Api {
            code: 409,
            reason: "Conflict".into(),
            message: "stale".into(),
        });
        assert_eq!(conflict.kind(), ErrorKind::Conflict);
        let wrapped = Error::TakeGeneration {
            generation: 2,
            source: Box::new(conflict),
        };
        assert!(wrapped.is_conflict());
    }
}
