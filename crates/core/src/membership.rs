//! A volume's membership (cStor's known replicas and desired replication factor) and the rules
//! for changing it (G6).

use thiserror::Error;

use crate::types::{Incarnation, ReplicaId};

/// The most replicas a volume can have (cStor's MAXREPLICA).
pub const REPLICAS_MAX: usize = 5;

/// One replica the volume knows.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Member {
    pub replica: ReplicaId,
    /// The incarnation trusted to hold the volume's data; `None` until a new member is rebuilt.
    pub incarnation: Option<Incarnation>,
    /// A trusted member counts toward the replication factor, quorum and reads. A new member is
    /// not trusted until it has been rebuilt and that fact persisted.
    pub trusted: bool,
}

/// The persisted set of members. The replication factor (RF) is the number of trusted members;
/// the desired replication factor (DRF) is the number of members.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Membership {
    pub members: Vec<Member>,
}

impl Membership {
    /// A new volume's membership: every initial replica is trusted.
    pub fn initial(replicas: &[(ReplicaId, Incarnation)]) -> Membership {
        Membership {
            members: replicas
                .iter()
                .map(|&(replica, incarnation)| Member {
                    replica,
                    incarnation: Some(incarnation),
                    trusted: true,
                })
                .collect(),
        }
    }

    pub fn get(&self, replica: ReplicaId) -> Option<&Member> {
        self.members.iter().find(|m| m.replica == replica)
    }

    pub fn replication_factor(&self) -> usize {
        self.members.iter().filter(|m| m.trusted).count()
    }

    pub fn desired_replication_factor(&self) -> usize {
        self.members.len()
    }

    pub fn consistency_factor(&self) -> usize {
        consistency_factor(self.replication_factor())
    }

    /// True if `(replica, incarnation)` is a trusted member.
    pub fn trusts(&self, replica: ReplicaId, incarnation: Incarnation) -> bool {
        self.get(replica)
            .is_some_and(|m| m.trusted && m.incarnation == Some(incarnation))
    }
}

/// CF = RF/2 + 1: acknowledged writes are on a majority, so any CF replicas hold each of them.
pub fn consistency_factor(replication_factor: usize) -> usize {
    replication_factor / 2 + 1
}

/// A membership change the target refused, with what a user needs to know.
#[derive(Clone, Debug, PartialEq, Eq, Error)]
pub enum MembershipError {
    #[error("replica {0:?} is already a member of the volume")]
    AlreadyMember(ReplicaId),
    #[error("replica {0:?} is not a member of the volume")]
    NotMember(ReplicaId),
    #[error("a volume can have at most {REPLICAS_MAX} replicas")]
    TooManyReplicas,
    #[error("another replica change is in progress; try again when it finishes")]
    ChangeInProgress,
    #[error("replica {0:?} is the volume's last replica and cannot be removed")]
    LastReplica(ReplicaId),
    #[error(
        "cannot remove replica {removing:?} while the volume is not Healthy: \
         replicas {unhealthy:?} are not Healthy"
    )]
    NotHealthy {
        removing: ReplicaId,
        unhealthy: Vec<ReplicaId>,
    },
    #[error("the target is not serving the volume (recovering or fenced)")]
    NotActive,
    #[error("a newer target has taken over the volume")]
    Fenced,
}
