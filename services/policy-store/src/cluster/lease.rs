//! Leader election with a coordination.k8s.io/v1 Lease, as client-go does it: the holder
//! renews the Lease every third of its duration; a replica that sees the Lease unchanged
//! (same resourceVersion) for a whole duration, by its own clock, takes it over. Expiry is
//! judged by local observation, not by comparing the holder's timestamps with our clock, so
//! clock skew between nodes cannot make two replicas leaders. Writes use the Lease's
//! resourceVersion (optimistic concurrency): of two replicas racing for it, one gets 409.
//!
//! The holder also publishes its log's head in an annotation: a replica taking over moves its
//! own numbering past it (see `Store::advance_to`).

use std::time::{Duration, Instant};

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, ObjectMeta, PostParams};
use tracing::{debug, info, instrument};

/// Annotation on the Lease: the holder's log head at its last renewal.
pub const REVISION_ANNOTATION: &str = "dnsfence.io/store-revision";

/// What one round of the election concluded.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Standing {
    /// This replica holds the Lease. `acquired` is set on the round that took it (it was not
    /// ours before).
    Leading { acquired: Option<Acquired> },
    /// Another replica holds it (`None`: nobody, or unknown after a lost race).
    Following { holder: Option<String> },
}

/// The Lease as it was when this replica took it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Acquired {
    /// The holder before (`None`: a new or released Lease).
    pub previous_holder: Option<String>,
    /// The store revision the previous holder last published (0: none).
    pub previous_revision: u64,
}

/// What to do about the Lease as it is.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Decision {
    /// There is none: create it, holding it.
    Create,
    /// It is ours: renew it.
    Renew,
    /// Released, or its holder stopped renewing: take it.
    TakeOver,
    /// Somebody else holds it.
    Follow,
}

fn holder(lease: &Lease) -> Option<&str> {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.holder_identity.as_deref())
        .filter(|h| !h.is_empty())
}

fn lease_duration(lease: &Lease, default: Duration) -> Duration {
    lease
        .spec
        .as_ref()
        .and_then(|s| s.lease_duration_seconds)
        .and_then(|s| u64::try_from(s).ok())
        .filter(|s| *s > 0)
        .map_or(default, Duration::from_secs)
}

/// The election rule. `unchanged_for`: how long this replica has seen the Lease without any
/// change.
pub fn decide(
    identity: &str,
    lease: Option<&Lease>,
    unchanged_for: Duration,
    default_duration: Duration,
) -> Decision {
    let Some(lease) = lease else {
        return Decision::Create;
    };
    match holder(lease) {
        None => Decision::TakeOver,
        Some(h) if h == identity => Decision::Renew,
        Some(_) if unchanged_for >= lease_duration(lease, default_duration) => Decision::TakeOver,
        Some(_) => Decision::Follow,
    }
}

/// Remembers since when the Lease has looked the same.
#[derive(Debug, Default)]
pub struct Observer {
    seen: Option<(String, Instant)>,
}

impl Observer {
    /// Records the Lease's current version; returns how long it has been unchanged.
    pub fn observe(&mut self, lease: Option<&Lease>, now: Instant) -> Duration {
        let version = lease
            .and_then(|l| l.metadata.resource_version.clone())
            .unwrap_or_default();
        match &self.seen {
            Some((v, since)) if *v == version => now.saturating_duration_since(*since),
            _ => {
                self.seen = Some((version, now));
                Duration::ZERO
            }
        }
    }
}

#[derive(Debug)]
pub struct LeaseElector {
    api: Api<Lease>,
    name: String,
    identity: String,
    duration: Duration,
    observer: Observer,
}

fn now() -> MicroTime {
    MicroTime(Timestamp::now())
}

fn seconds(d: Duration) -> i32 {
    i32::try_from(d.as_secs().max(1)).unwrap_or(i32::MAX)
}

fn is_conflict(e: &kube::Error) -> bool {
    matches!(e, kube::Error::Api(s) if s.code == 409)
}

impl LeaseElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        duration: Duration,
    ) -> LeaseElector {
        LeaseElector {
            api: Api::namespaced(client, namespace),
            name: name.to_string(),
            identity: identity.to_string(),
            duration,
            observer: Observer::default(),
        }
    }

    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// One round: reads the Lease and creates, renews or takes it when the rule says so.
    /// `revision` is this replica's log head, published while it holds the Lease.
    #[instrument(skip_all, name = "lease_round", fields(identity = %self.identity, revision))]
    pub async fn try_acquire_or_renew(&mut self, revision: u64) -> Result<Standing, kube::Error> {
        let current = self.api.get_opt(&self.name).await?;
        let unchanged_for = self.observer.observe(current.as_ref(), Instant::now());
        let decision = decide(
            &self.identity,
            current.as_ref(),
            unchanged_for,
            self.duration,
        );
        debug!(?decision, ?unchanged_for, "lease");
        match (decision, current) {
            (Decision::Create, _) => {
                let lease = Lease {
                    metadata: ObjectMeta {
                        name: Some(self.name.clone()),
                        annotations: Some(
                            [(REVISION_ANNOTATION.to_string(), revision.to_string())].into(),
                        ),
                        ..ObjectMeta::default()
                    },
                    spec: Some(LeaseSpec {
                        holder_identity: Some(self.identity.clone()),
                        lease_duration_seconds: Some(seconds(self.duration)),
                        acquire_time: Some(now()),
                        renew_time: Some(now()),
                        lease_transitions: Some(0),
                        ..LeaseSpec::default()
                    }),
                };
                match self.api.create(&PostParams::default(), &lease).await {
                    Ok(_) => {
                        info!(lease = %self.name, "created the Lease: leading");
                        Ok(Standing::Leading {
                            acquired: Some(Acquired {
                                previous_holder: None,
                                previous_revision: 0,
                            }),
                        })
                    }
                    Err(e) if is_conflict(&e) => Ok(Standing::Following { holder: None }),
                    Err(e) => Err(e),
                }
            }
            (Decision::Renew, Some(mut lease)) => {
                self.stamp(&mut lease, revision, false);
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => Ok(Standing::Leading { acquired: None }),
                    // Someone changed it under us: step down, and look again next round.
                    Err(e) if is_conflict(&e) => Ok(Standing::Following { holder: None }),
                    Err(e) => Err(e),
                }
            }
            (Decision::TakeOver, Some(mut lease)) => {
                let acquired = Acquired {
                    previous_holder: holder(&lease).map(str::to_string),
                    previous_revision: lease
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(REVISION_ANNOTATION))
                        .and_then(|r| r.parse().ok())
                        .unwrap_or(0),
                };
                self.stamp(&mut lease, revision, true);
                match self
                    .api
                    .replace(&self.name, &PostParams::default(), &lease)
                    .await
                {
                    Ok(_) => {
                        info!(lease = %self.name, previous = ?acquired.previous_holder, "took the Lease over: leading");
                        Ok(Standing::Leading {
                            acquired: Some(acquired),
                        })
                    }
                    Err(e) if is_conflict(&e) => Ok(Standing::Following { holder: None }),
                    Err(e) => Err(e),
                }
            }
            (Decision::Follow, Some(lease)) => Ok(Standing::Following {
                holder: holder(&lease).map(str::to_string),
            }),
            // decide() returns Create exactly when there is no Lease.
            (_, None) => Ok(Standing::Following { holder: None }),
        }
    }

    /// Marks the Lease as held by us now (taking it over when `acquire`).
    fn stamp(&self, lease: &mut Lease, revision: u64, acquire: bool) {
        lease
            .metadata
            .annotations
            .get_or_insert_with(Default::default)
            .insert(REVISION_ANNOTATION.to_string(), revision.to_string());
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        spec.renew_time = Some(now());
        spec.lease_duration_seconds = Some(seconds(self.duration));
        if acquire {
            spec.holder_identity = Some(self.identity.clone());
            spec.acquire_time = Some(now());
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0).saturating_add(1));
        }
    }

    /// Gives the Lease up (on shutdown) if we hold it, so another replica takes over at once
    /// instead of after a whole duration.
    pub async fn release(&mut self, revision: u64) -> Result<(), kube::Error> {
        let Some(mut lease) = self.api.get_opt(&self.name).await? else {
            return Ok(());
        };
        if holder(&lease) != Some(self.identity.as_str()) {
            return Ok(());
        }
        self.stamp(&mut lease, revision, false);
        if let Some(spec) = lease.spec.as_mut() {
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
        }
        self.api
            .replace(&self.name, &PostParams::default(), &lease)
            .await?;
        info!(lease = %self.name, "released the Lease");
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn lease(holder: Option<&str>, duration: Option<i32>, version: &str) -> Lease {
        Lease {
            metadata: ObjectMeta {
                name: Some("l".into()),
                resource_version: Some(version.into()),
                ..ObjectMeta::default()
            },
            spec: Some(LeaseSpec {
                holder_identity: holder.map(str::to_string),
                lease_duration_seconds: duration,
                ..LeaseSpec::default()
            }),
        }
    }

    const D: Duration = Duration::from_secs(15);

    #[test]
    fn the_election_rule() {
        assert_eq!(decide("me", None, Duration::ZERO, D), Decision::Create);
        let mine = lease(Some("me"), Some(15), "1");
        assert_eq!(
            decide("me", Some(&mine), Duration::from_secs(60), D),
            Decision::Renew
        );
        let theirs = lease(Some("other"), Some(15), "1");
        assert_eq!(
            decide("me", Some(&theirs), Duration::from_secs(14), D),
            Decision::Follow
        );
        assert_eq!(decide("me", Some(&theirs), D, D), Decision::TakeOver);
        // The Lease's own duration counts, not ours.
        let long = lease(Some("other"), Some(60), "1");
        assert_eq!(
            decide("me", Some(&long), Duration::from_secs(30), D),
            Decision::Follow
        );
        // Released (empty holder) or never held: take it at once.
        for released in [lease(None, Some(1), "2"), lease(Some(""), Some(15), "2")] {
            assert_eq!(
                decide("me", Some(&released), Duration::ZERO, D),
                Decision::TakeOver
            );
        }
    }

    #[test]
    fn expiry_is_measured_from_the_last_change_this_replica_saw() {
        let mut observer = Observer::default();
        let t0 = Instant::now();
        let v1 = lease(Some("other"), Some(15), "1");
        assert_eq!(observer.observe(Some(&v1), t0), Duration::ZERO);
        assert_eq!(
            observer.observe(Some(&v1), t0 + Duration::from_secs(10)),
            Duration::from_secs(10)
        );
        // The holder renewed: a new resourceVersion restarts the clock.
        let v2 = lease(Some("other"), Some(15), "2");
        assert_eq!(
            observer.observe(Some(&v2), t0 + Duration::from_secs(12)),
            Duration::ZERO
        );
        assert_eq!(
            observer.observe(Some(&v2), t0 + Duration::from_secs(27)),
            Duration::from_secs(15)
        );
        assert_eq!(
            decide("me", Some(&v2), Duration::from_secs(15), D),
            Decision::TakeOver
        );
    }
}
