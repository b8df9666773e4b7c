//! Policy status: each watched policy object gets an `Accepted` condition — True with the
//! store revision that compiled it and the number of pods it selects, or False with reason
//! `Invalid` and the parser's message (naming the field). Statuses are recomputed after
//! every change the controller writes, at most once per `--status-interval`, and patched only
//! where they differ from what the object already shows.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use dnsfence_policy::model::PolicyRef;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use k8s_openapi::jiff::Timestamp;
use kube::Client;
use kube::api::{Api, Patch, PatchParams};
use kube::core::DynamicObject;
use serde_json::{Value, json};
use tokio::sync::Notify;
use tracing::{debug, info, instrument, warn};

use super::resources::{PolicyResource, StatusStyle};
use crate::metrics::{PatchResult, ResultLabels, StoreMetrics};
use crate::selection::selected_pods;
use crate::store::Store;

/// The condition type this controller owns; other types on the object are left alone.
pub const CONDITION_ACCEPTED: &str = "Accepted";
pub const REASON_COMPILED: &str = "Compiled";
pub const REASON_INVALID: &str = "Invalid";

/// What the controller concluded about the object's current version.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Verdict {
    Accepted,
    /// The parser's message.
    Invalid(String),
}

/// What the controller last saw of one policy object.
#[derive(Debug, Clone)]
pub struct Observation {
    pub resource: PolicyResource,
    pub namespace: Option<String>,
    pub name: String,
    pub generation: i64,
    pub verdict: Verdict,
    /// The object's `status` as the API server returned it.
    pub current: Option<Value>,
}

#[derive(Debug)]
struct Tracked {
    observation: Observation,
    /// The essence of the last status this controller wrote, so a round that computes the
    /// same status again writes nothing even before the watch shows the object's new status.
    written: Option<Value>,
}

pub struct StatusWriter {
    client: Client,
    store: Arc<Store>,
    metrics: Arc<StoreMetrics>,
    interval: Duration,
    tracked: Mutex<BTreeMap<PolicyRef, Tracked>>,
    changed: Notify,
    /// Held by the controller from a policy write until its observations are recorded, and by
    /// a round while it computes statuses: a round never pairs the store's new revision with
    /// the object's old generation.
    gate: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for StatusWriter {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("StatusWriter")
            .field("interval", &self.interval)
            .finish_non_exhaustive()
    }
}

impl StatusWriter {
    pub fn new(
        client: Client,
        store: Arc<Store>,
        metrics: Arc<StoreMetrics>,
        interval: Duration,
    ) -> StatusWriter {
        StatusWriter {
            client,
            store,
            metrics,
            interval,
            tracked: Mutex::new(BTreeMap::new()),
            changed: Notify::new(),
            gate: tokio::sync::Mutex::new(()),
        }
    }

    /// Records what the controller saw of a policy object (after writing it to the store).
    pub fn observe(&self, reference: PolicyRef, observation: Observation) {
        if observation.resource.status == StatusStyle::None {
            return;
        }
        if let Ok(mut tracked) = self.tracked.lock() {
            match tracked.get_mut(&reference) {
                Some(t) => {
                    if t.observation.generation != observation.generation
                        || t.observation.verdict != observation.verdict
                    {
                        t.written = None;
                    }
                    t.observation = observation;
                }
                None => {
                    tracked.insert(
                        reference,
                        Tracked {
                            observation,
                            written: None,
                        },
                    );
                }
            }
            let invalid = tracked
                .values()
                .filter(|t| matches!(t.observation.verdict, Verdict::Invalid(_)))
                .count();
            self.metrics.invalid_policies.set(invalid as i64);
        }
        self.changed.notify_one();
    }

    /// The object is gone: nothing to write any more.
    pub fn forget(&self, reference: &PolicyRef) {
        if let Ok(mut tracked) = self.tracked.lock() {
            tracked.remove(reference);
        }
    }

    /// Every tracked reference of a kind (to forget those a fresh list no longer has).
    pub fn tracked_of(&self, kind: dnsfence_policy::model::PolicyKind) -> Vec<PolicyRef> {
        self.tracked
            .lock()
            .map(|t| t.keys().filter(|r| r.kind == kind).cloned().collect())
            .unwrap_or_default()
    }

    /// Something the statuses depend on changed (pods, namespaces, the store's revision).
    pub fn poke(&self) {
        self.changed.notify_one();
    }

    /// Keeps rounds from computing statuses while held: take it before writing policies to
    /// the store and drop it after observing them.
    pub async fn hold(&self) -> tokio::sync::MutexGuard<'_, ()> {
        self.gate.lock().await
    }

    /// Writes statuses until cancelled, from the moment `ready` turns true (before every kind
    /// was listed once, pod counts would be those of a half-listed cluster).
    pub async fn run(&self, mut ready: tokio::sync::watch::Receiver<bool>) {
        if ready.wait_for(|r| *r).await.is_err() {
            return;
        }
        loop {
            self.changed.notified().await;
            let retry = self.round().await;
            if retry {
                // Try the failed ones again later even if nothing else changes.
                self.changed.notify_one();
            }
            tokio::time::sleep(self.interval).await;
        }
    }

    /// One pass over every tracked policy; returns whether a patch failed.
    #[instrument(skip_all, name = "policy_status_round")]
    pub async fn round(&self) -> bool {
        let gate = self.gate.lock().await;
        let (counts, applied_at) = {
            let state = self.store.read().await;
            (selected_pods(&state), state.applied_at.clone())
        };
        let now = Time(Timestamp::now());
        let jobs: Vec<(PolicyRef, Observation, Value, Value)> = match self.tracked.lock() {
            Ok(tracked) => tracked
                .iter()
                .filter_map(|(reference, t)| {
                    let in_force = applied_at
                        .get(reference)
                        .map(|rev| (*rev, counts.get(reference).copied().unwrap_or(0)));
                    let desired = desired_status(&t.observation, in_force, &now);
                    let essence = essence(&desired);
                    let current = t.observation.current.as_ref().map(essence_of_current);
                    if Some(&essence) == t.written.as_ref() || Some(&essence) == current.as_ref() {
                        return None;
                    }
                    Some((reference.clone(), t.observation.clone(), desired, essence))
                })
                .collect(),
            Err(_) => return false,
        };
        drop(gate);
        let mut failed = false;
        for (reference, observation, status, essence) in jobs {
            match self.patch(&observation, &status).await {
                Ok(()) => {
                    self.metrics
                        .status_patches
                        .get_or_create(&ResultLabels {
                            result: PatchResult::Ok,
                        })
                        .inc();
                    debug!(policy = %reference, "status written");
                    if let Ok(mut tracked) = self.tracked.lock()
                        && let Some(t) = tracked.get_mut(&reference)
                        && t.observation.generation == observation.generation
                        && t.observation.verdict == observation.verdict
                    {
                        t.written = Some(essence);
                    }
                }
                Err(kube::Error::Api(status)) if status.code == 404 => {
                    info!(policy = %reference, "object gone before its status was written");
                    self.forget(&reference);
                }
                Err(e) => {
                    self.metrics
                        .status_patches
                        .get_or_create(&ResultLabels {
                            result: PatchResult::Error,
                        })
                        .inc();
                    warn!(policy = %reference, error = %e, "writing the policy's status failed; will retry");
                    failed = true;
                }
            }
        }
        failed
    }

    async fn patch(&self, o: &Observation, status: &Value) -> Result<(), kube::Error> {
        let api: Api<DynamicObject> = match &o.namespace {
            Some(ns) => Api::namespaced_with(self.client.clone(), ns, &o.resource.api),
            None => Api::all_with(self.client.clone(), &o.resource.api),
        };
        api.patch_status(
            &o.name,
            &PatchParams::default(),
            &Patch::Merge(json!({ "status": status })),
        )
        .await
        .map(drop)
    }
}

/// The status an object should show. `in_force` is the store revision of the version the
/// store holds and the pods it selects (`None`: the store holds no version of it).
pub fn desired_status(o: &Observation, in_force: Option<(u64, usize)>, now: &Time) -> Value {
    let (status, reason, message) = match &o.verdict {
        Verdict::Accepted => {
            let message = match in_force {
                Some((revision, pods)) => format!(
                    "compiled at store revision {revision}; selects {pods} pod{}",
                    if pods == 1 { "" } else { "s" }
                ),
                None => "accepted".to_string(),
            };
            ("True", REASON_COMPILED, message)
        }
        Verdict::Invalid(reason) => {
            let message = match in_force {
                Some((revision, _)) => format!(
                    "{reason} (the version compiled at store revision {revision} stays in force)"
                ),
                None => reason.clone(),
            };
            ("False", REASON_INVALID, message)
        }
    };
    let existing: Vec<Value> = o
        .current
        .as_ref()
        .and_then(|s| s.get("conditions"))
        .and_then(Value::as_array)
        .cloned()
        .unwrap_or_default();
    let previous = existing
        .iter()
        .find(|c| c.get("type").and_then(Value::as_str) == Some(CONDITION_ACCEPTED));
    // The transition time moves only when the condition's status does.
    let transition = match previous {
        Some(p) if p.get("status").and_then(Value::as_str) == Some(status) => p
            .get("lastTransitionTime")
            .cloned()
            .unwrap_or_else(|| json!(now)),
        _ => json!(now),
    };
    let ours = json!({
        "type": CONDITION_ACCEPTED,
        "status": status,
        "reason": reason,
        "message": message,
        "observedGeneration": o.generation,
        "lastTransitionTime": transition,
    });
    // Conditions of other writers stay; ours replaces its previous self, in place.
    let mut conditions: Vec<Value> = Vec::with_capacity(existing.len() + 1);
    let mut placed = false;
    for c in existing {
        if c.get("type").and_then(Value::as_str) == Some(CONDITION_ACCEPTED) {
            if !placed {
                conditions.push(ours.clone());
                placed = true;
            }
        } else {
            conditions.push(c);
        }
    }
    if !placed {
        conditions.push(ours);
    }
    match o.resource.status {
        StatusStyle::Full => json!({
            "observedGeneration": o.generation,
            "storeRevision": in_force.map(|(r, _)| r),
            "selectedPods": in_force.map(|(_, n)| n),
            "conditions": conditions,
        }),
        StatusStyle::ConditionsOnly | StatusStyle::None => json!({ "conditions": conditions }),
    }
}

/// A status without what changes by itself (transition times), for comparisons.
fn essence(status: &Value) -> Value {
    let mut s = status.clone();
    if let Some(conditions) = s.get_mut("conditions").and_then(Value::as_array_mut) {
        for c in conditions {
            if let Some(c) = c.as_object_mut() {
                c.remove("lastTransitionTime");
            }
        }
    }
    // A null written through a merge patch means "absent"; the object then lacks the field.
    if let Some(map) = s.as_object_mut() {
        map.retain(|_, v| !v.is_null());
    }
    s
}

/// The essence of the status on the object, with the fields our desired status has (the
/// API server may add nothing else, but a status another writer filled is compared fairly).
fn essence_of_current(current: &Value) -> Value {
    essence(current)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;
    use crate::cluster::resources;

    fn observation(verdict: Verdict, current: Option<Value>) -> Observation {
        Observation {
            resource: resources::application_network_policy(),
            namespace: Some("shop".into()),
            name: "p".into(),
            generation: 4,
            verdict,
            current,
        }
    }

    fn time(s: &str) -> Time {
        Time(s.parse().unwrap())
    }

    #[test]
    fn accepted_status_carries_revision_pods_and_generation() {
        let now = time("2026-11-02T10:00:00Z");
        let s = desired_status(&observation(Verdict::Accepted, None), Some((17, 2)), &now);
        assert_eq!(s["observedGeneration"], 4);
        assert_eq!(s["storeRevision"], 17);
        assert_eq!(s["selectedPods"], 2);
        let c = &s["conditions"][0];
        assert_eq!(c["type"], "Accepted");
        assert_eq!(c["status"], "True");
        assert_eq!(c["reason"], "Compiled");
        assert_eq!(c["observedGeneration"], 4);
        assert_eq!(
            c["message"],
            "compiled at store revision 17; selects 2 pods"
        );
        assert_eq!(c["lastTransitionTime"], "2026-11-02T10:00:00Z");
    }

    #[test]
    fn transition_time_moves_only_with_the_condition_status_and_others_stay() {
        let current = json!({"conditions": [
            {"type": "Programmed", "status": "True", "reason": "X", "message": "by someone else"},
            {"type": "Accepted", "status": "True", "reason": "Compiled", "message": "old",
             "lastTransitionTime": "2026-01-01T00:00:00Z"}
        ]});
        let now = time("2026-11-02T10:00:00Z");
        let same = desired_status(
            &observation(Verdict::Accepted, Some(current.clone())),
            Some((20, 1)),
            &now,
        );
        assert_eq!(same["conditions"][0]["type"], "Programmed");
        assert_eq!(
            same["conditions"][1]["lastTransitionTime"],
            "2026-01-01T00:00:00Z"
        );
        assert_eq!(
            same["conditions"][1]["message"],
            "compiled at store revision 20; selects 1 pod"
        );
        let flipped = desired_status(
            &observation(
                Verdict::Invalid("shop/p: spec.x: unknown field".into()),
                Some(current),
            ),
            Some((20, 1)),
            &now,
        );
        let c = &flipped["conditions"][1];
        assert_eq!(c["status"], "False");
        assert_eq!(c["reason"], "Invalid");
        assert_eq!(c["lastTransitionTime"], "2026-11-02T10:00:00Z");
        assert_eq!(
            c["message"],
            "shop/p: spec.x: unknown field (the version compiled at store revision 20 stays in force)"
        );
    }

    #[test]
    fn an_invalid_policy_never_accepted_clears_revision_and_pods() {
        let now = time("2026-11-02T10:00:00Z");
        let s = desired_status(
            &observation(Verdict::Invalid("bad".into()), None),
            None,
            &now,
        );
        assert!(s["storeRevision"].is_null() && s["selectedPods"].is_null());
        assert_eq!(s["conditions"][0]["message"], "bad");
        // The same status read back from the object (no nulls, other times) is equal.
        let mut back = s.clone();
        back.as_object_mut().unwrap().remove("storeRevision");
        back.as_object_mut().unwrap().remove("selectedPods");
        back["conditions"][0]["lastTransitionTime"] = json!("2020-01-01T00:00:00Z");
        assert_eq!(essence(&s), essence_of_current(&back));
    }

    #[test]
    fn upstream_objects_get_conditions_only() {
        let mut o = observation(Verdict::Accepted, None);
        o.resource = resources::upstream_cluster_network_policy();
        let s = desired_status(&o, Some((3, 0)), &time("2026-11-02T10:00:00Z"));
        assert_eq!(s.as_object().unwrap().len(), 1, "{s}");
        assert_eq!(
            s["conditions"][0]["message"],
            "compiled at store revision 3; selects 0 pods"
        );
    }
}
