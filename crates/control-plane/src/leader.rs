//! Who may run the controllers: the only control plane of a cluster on one redb file always may;
//! of several on etcd, the one the election made leader, and only while its lease holds by its
//! own clock ([`tandem_store::election`]).

use tandem_store::election::{Leadership, Term};
use tokio::sync::watch;

/// How this control plane comes to lead.
#[derive(Clone)]
pub enum Leader {
    /// The only control plane (its store admits one process): it always leads, unfenced.
    Sole,
    /// One of several: leads while the election says so.
    Elected(watch::Receiver<Leadership>),
}

/// A term to act in: `None` for the sole control plane (its writes need no fence).
pub type Mandate = Option<Term>;

impl Leader {
    /// The mandate to act now, if this control plane leads.
    pub fn mandate(&self) -> Option<Mandate> {
        match self {
            Leader::Sole => Some(None),
            Leader::Elected(leadership) => leadership.borrow().current().map(Some),
        }
    }

    /// Waits until this control plane leads (forever for one that never will).
    pub async fn until_leading(&mut self) -> Mandate {
        loop {
            if let Some(mandate) = self.mandate() {
                return mandate;
            }
            let Leader::Elected(leadership) = self else {
                unreachable!("the sole control plane always leads");
            };
            if leadership.changed().await.is_err() {
                // The election is gone: this control plane never leads again.
                std::future::pending::<()>().await;
            }
        }
    }

    /// Resolves when `mandate` no longer holds: the election moved on or the lease's end by
    /// this process's clock came (whichever first). Never, for the sole control plane.
    pub async fn lost(self, mandate: Mandate) {
        let Leader::Elected(mut leadership) = self else {
            return std::future::pending().await;
        };
        loop {
            let until = match *leadership.borrow() {
                Leadership::Leading { term, until } if Some(term) == mandate => until,
                _ => return,
            };
            if tokio::time::Instant::now() >= until {
                return;
            }
            tokio::select! {
                changed = leadership.changed() => {
                    if changed.is_err() {
                        return;
                    }
                }
                _ = tokio::time::sleep_until(until) => return,
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;
    use tokio::time::Instant;

    #[tokio::test]
    async fn a_mandate_ends_with_its_lease_by_the_clock_even_if_the_election_says_nothing() {
        let until = Instant::now() + Duration::from_millis(100);
        let (_sender, receiver) = watch::channel(Leadership::Leading {
            term: Term(7),
            until,
        });
        let mut leader = Leader::Elected(receiver);
        assert_eq!(leader.until_leading().await, Some(Term(7)));
        leader.clone().lost(Some(Term(7))).await;
        assert!(Instant::now() >= until);
        assert_eq!(
            leader.mandate(),
            None,
            "past its end the lease gives no mandate"
        );
    }

    #[tokio::test]
    async fn a_new_term_ends_the_old_mandate_and_a_follower_waits_for_its_own() {
        let far = Instant::now() + Duration::from_secs(600);
        let (sender, receiver) = watch::channel(Leadership::Following);
        let mut leader = Leader::Elected(receiver);
        assert_eq!(leader.mandate(), None);
        let waiting = tokio::spawn({
            let mut leader = leader.clone();
            async move { leader.until_leading().await }
        });
        sender.send_replace(Leadership::Leading {
            term: Term(3),
            until: far,
        });
        assert_eq!(waiting.await.expect("no panic"), Some(Term(3)));
        let lost = tokio::spawn(leader.clone().lost(Some(Term(3))));
        sender.send_replace(Leadership::Leading {
            term: Term(9),
            until: far,
        });
        lost.await.expect("the old term's mandate ends");
        assert_eq!(leader.until_leading().await, Some(Term(9)));
    }

    #[tokio::test]
    async fn the_sole_control_plane_always_leads_unfenced() {
        let mut leader = Leader::Sole;
        assert_eq!(leader.until_leading().await, None);
        let lost = tokio::time::timeout(Duration::from_millis(50), leader.lost(None)).await;
        assert!(lost.is_err(), "never lost");
    }
}
