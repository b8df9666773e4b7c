//! Who is asking: the pods and allowlists of the store's derived view, by source address.
//!
//! The gateway never evaluates selectors; the store did. This module only mirrors the
//! bindings (pod addresses → node and allowlist id) and the allowlists themselves, fed by
//! [`dnsfence_api::tail`], and answers lookups on the query path under a read lock.

use std::collections::{HashMap, HashSet};

use foldhash::fast::RandomState as Seeded;
use std::net::IpAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};

use dnsfence_api::tail::{DerivedState, TailUpdate};
use dnsfence_policy::allowlist::Allowlist;
use dnsfence_policy::model::{AllowlistId, Binding, EventPayload, WorkloadBinding, WorkloadKey};
use tokio::sync::{mpsc, watch};
use tracing::{debug, warn};

/// A pod as the query path needs it: two reference counts, no copies.
#[derive(Debug, Clone)]
pub struct PodIdentity {
    pub binding: Arc<WorkloadBinding>,
    /// `None`: no policy selects the pod; the node default decides for it, and it holds no
    /// grants.
    pub allowlist: Option<Arc<Allowlist>>,
}

impl PodIdentity {
    pub fn workload(&self) -> &WorkloadKey {
        &self.binding.workload
    }

    pub fn node(&self) -> &str {
        &self.binding.node
    }
}

#[derive(Debug, Default)]
struct State {
    allowlists: HashMap<AllowlistId, Arc<Allowlist>, Seeded>,
    bindings: HashMap<WorkloadKey, Arc<WorkloadBinding>, Seeded>,
    /// What a lookup returns, kept resolved (binding and allowlist) so that a query costs one
    /// map lookup by address, not three (two of them hashing strings).
    by_ip: HashMap<IpAddr, PodIdentity, Seeded>,
    /// The workloads bound to each allowlist: a new version re-points those pods only, not a
    /// walk over every pod.
    bound_to: HashMap<AllowlistId, HashSet<WorkloadKey, Seeded>, Seeded>,
    revision: u64,
}

/// The mirror, shared by the query path (readers) and the tail task (the one writer).
#[derive(Debug)]
pub struct Identities {
    state: RwLock<State>,
    ready: watch::Sender<bool>,
    /// `ready`'s value for the query path, which asks on every query: a load, not a lock.
    ready_now: AtomicBool,
}

/// The outcome of looking up a source address.
#[derive(Debug, Clone)]
pub enum Lookup {
    Pod(PodIdentity),
    /// The address belongs to no pod the store knows.
    Unknown,
}

impl Default for Identities {
    fn default() -> Self {
        Identities {
            state: RwLock::new(State::default()),
            ready: watch::channel(false).0,
            ready_now: AtomicBool::new(false),
        }
    }
}

impl Identities {
    pub fn new() -> Arc<Identities> {
        Arc::new(Identities::default())
    }

    /// True once the first catch-up with the store completed; stays true through later
    /// disconnections (the gateway serves its last known state meanwhile).
    pub fn is_ready(&self) -> bool {
        self.ready_now.load(Ordering::Acquire)
    }

    pub fn ready_signal(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    /// Addresses known to belong to pods (a dual-stack pod has two).
    pub fn pod_addresses(&self) -> usize {
        self.read().by_ip.len()
    }

    pub fn lookup(&self, ip: IpAddr) -> Lookup {
        match self.read().by_ip.get(&ip) {
            Some(pod) => Lookup::Pod(pod.clone()),
            None => Lookup::Unknown,
        }
    }

    /// Applies updates until the tail ends.
    pub async fn follow(self: Arc<Self>, mut updates: mpsc::Receiver<TailUpdate>) {
        while let Some(update) = updates.recv().await {
            self.apply(update);
        }
    }

    pub fn apply(&self, update: TailUpdate) {
        match update {
            TailUpdate::Reset(state) => self.reset(state),
            TailUpdate::Event(event) => {
                let mut state = self.write();
                state.revision = event.revision;
                apply_event(&mut state, event.payload);
            }
            TailUpdate::CaughtUp(revision) => {
                debug!(
                    revision,
                    pod_addresses = self.pod_addresses(),
                    "identities caught up"
                );
                self.ready_now.store(true, Ordering::Release);
                self.ready.send_replace(true);
            }
            TailUpdate::Disconnected(_) => {}
        }
    }

    fn reset(&self, snapshot: DerivedState) {
        let mut state = State {
            revision: snapshot.revision,
            ..State::default()
        };
        for allowlist in snapshot.allowlists {
            state
                .allowlists
                .insert(allowlist.id().clone(), Arc::new(allowlist));
        }
        // The snapshot's bindings, resolved against the allowlists above.
        for binding in snapshot.bindings {
            bind(&mut state, binding);
        }
        *self.write() = state;
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, State> {
        // A poisoned lock means a writer panicked mid-update; the maps are still memory-safe
        // and the next event or reset repairs them, so keep serving.
        self.state.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, State> {
        self.state.write().unwrap_or_else(|e| e.into_inner())
    }
}

fn apply_event(state: &mut State, payload: EventPayload) {
    match payload {
        EventPayload::AllowlistCompiled(allowlist) => {
            let id = allowlist.id().clone();
            state.allowlists.insert(id.clone(), Arc::new(allowlist));
            resolve_pods_of(state, &id);
        }
        EventPayload::AllowlistReleased(id) => {
            state.allowlists.remove(&id);
            resolve_pods_of(state, &id);
        }
        EventPayload::WorkloadBound(binding) => bind(state, binding),
        EventPayload::WorkloadUnbound(key) => unbind(state, &key),
        other => warn!(
            event = other.name(),
            "unexpected source event in the derived view"
        ),
    }
}

fn bind(state: &mut State, binding: WorkloadBinding) {
    unbind(state, &binding.workload);
    let binding = Arc::new(binding);
    let pod = PodIdentity {
        allowlist: allowlist_of(state, &binding),
        binding: Arc::clone(&binding),
    };
    for ip in &binding.ips {
        if let Some(previous) = state.by_ip.insert(*ip, pod.clone())
            && previous.workload() != &binding.workload
        {
            // Address reuse: the older pod's entry is stale; the newer binding wins.
            debug!(%ip, old = %previous.workload(), new = %binding.workload, "address moved to another pod");
        }
    }
    if let Binding::Enforced(id) = &binding.binding {
        state
            .bound_to
            .entry(id.clone())
            .or_default()
            .insert(binding.workload.clone());
    }
    state.bindings.insert(binding.workload.clone(), binding);
}

fn unbind(state: &mut State, key: &WorkloadKey) {
    if let Some(old) = state.bindings.remove(key) {
        if let Binding::Enforced(id) = &old.binding
            && let Some(workloads) = state.bound_to.get_mut(id)
        {
            workloads.remove(key);
            if workloads.is_empty() {
                state.bound_to.remove(id);
            }
        }
        for ip in &old.ips {
            if state.by_ip.get(ip).is_some_and(|pod| pod.workload() == key) {
                state.by_ip.remove(ip);
            }
        }
    }
}

/// The allowlist a binding's pod is judged by (`None`: no policy selects it).
fn allowlist_of(state: &State, binding: &WorkloadBinding) -> Option<Arc<Allowlist>> {
    match &binding.binding {
        Binding::Unenforced => None,
        Binding::Enforced(id) => Some(enforced_allowlist(state, id)),
    }
}

/// Allowlist `id`, or an empty one of that id when the mirror does not hold it: the store
/// emits an allowlist before the bindings that use it and releases it after them; if that
/// ever breaks, fail closed rather than open.
fn enforced_allowlist(state: &State, id: &AllowlistId) -> Arc<Allowlist> {
    match state.allowlists.get(id) {
        Some(a) => Arc::clone(a),
        None => Arc::new(Allowlist::from_parts(id.clone(), Vec::new())),
    }
}

/// Points the pods bound to allowlist `id` at its current version (or at none, failing
/// closed, once it is released).
fn resolve_pods_of(state: &mut State, id: &AllowlistId) {
    let current = enforced_allowlist(state, id);
    let State {
        bindings,
        by_ip,
        bound_to,
        ..
    } = state;
    for workload in bound_to.get(id).into_iter().flatten() {
        let Some(binding) = bindings.get(workload) else {
            continue;
        };
        for ip in &binding.ips {
            // An address another pod took over belongs to that pod's binding now.
            if let Some(pod) = by_ip.get_mut(ip).filter(|pod| pod.workload() == workload) {
                pod.allowlist = Some(Arc::clone(&current));
            }
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use dnsfence_policy::model::{Event, Rule, RuleKind, Tier};

    fn key(name: &str) -> WorkloadKey {
        WorkloadKey {
            namespace: "default".into(),
            name: name.into(),
        }
    }

    fn bound(name: &str, ip: &str, allowlist: Option<&AllowlistId>) -> EventPayload {
        EventPayload::WorkloadBound(WorkloadBinding {
            workload: key(name),
            ips: vec![ip.parse().unwrap()],
            node: "n1".into(),
            binding: allowlist.map_or(Binding::Unenforced, |id| Binding::Enforced(id.clone())),
        })
    }

    /// An allowlist of one isolation rule: every name denied.
    fn isolating() -> Allowlist {
        Allowlist::new(vec![Rule {
            tier: Tier::NetworkPolicy,
            priority: 0,
            kind: RuleKind::Isolation {
                by: Vec::new().into(),
            },
        }])
    }

    fn event(identities: &Identities, revision: u64, payload: EventPayload) {
        identities.apply(TailUpdate::Event(Event { revision, payload }));
    }

    fn rules_of(identities: &Identities, ip: &str) -> Option<usize> {
        match identities.lookup(ip.parse().unwrap()) {
            Lookup::Pod(pod) => Some(pod.allowlist.map_or(usize::MAX, |a| a.rules().len())),
            Lookup::Unknown => None,
        }
    }

    #[test]
    fn lookups_follow_bindings_and_the_allowlists_they_name() {
        let identities = Identities::new();
        let list = isolating();
        let id = list.id().clone();

        // Bound before its allowlist arrived: judged by an empty list of the same id (closed).
        event(&identities, 1, bound("a", "192.0.2.1", Some(&id)));
        assert_eq!(rules_of(&identities, "192.0.2.1"), Some(0));
        event(&identities, 2, EventPayload::AllowlistCompiled(list));
        assert_eq!(rules_of(&identities, "192.0.2.1"), Some(1));

        // A pod no policy selects, and an address nobody has.
        event(&identities, 3, bound("b", "192.0.2.2", None));
        assert_eq!(rules_of(&identities, "192.0.2.2"), Some(usize::MAX));
        assert_eq!(rules_of(&identities, "192.0.2.3"), None);

        // The address moves to another pod; unbinding the old one leaves the new one alone.
        event(&identities, 4, bound("c", "192.0.2.1", None));
        event(&identities, 5, EventPayload::WorkloadUnbound(key("a")));
        assert_eq!(rules_of(&identities, "192.0.2.1"), Some(usize::MAX));
        event(&identities, 6, EventPayload::WorkloadUnbound(key("c")));
        assert_eq!(rules_of(&identities, "192.0.2.1"), None);

        // Released while still bound: closed again, not open.
        event(&identities, 7, bound("d", "192.0.2.4", Some(&id)));
        assert_eq!(rules_of(&identities, "192.0.2.4"), Some(1));
        event(&identities, 8, EventPayload::AllowlistReleased(id.clone()));
        match identities.lookup("192.0.2.4".parse().unwrap()) {
            Lookup::Pod(pod) => {
                let allowlist = pod.allowlist.unwrap();
                assert_eq!(allowlist.id(), &id);
                assert!(allowlist.rules().is_empty());
            }
            Lookup::Unknown => panic!("192.0.2.4 is bound"),
        }
        assert_eq!(identities.revision(), 8);
        assert_eq!(identities.pod_addresses(), 2);
    }

    #[test]
    fn an_allowlist_version_re_points_the_pods_bound_to_it_and_no_others() {
        let identities = Identities::new();
        let a = AllowlistId("a".into());
        let b = AllowlistId("b".into());
        // Version `n` of allowlist `id`: told apart by its number of rules.
        let compiled = |id: &AllowlistId, n: usize| {
            let rules = vec![isolating().rules()[0].clone(); n];
            EventPayload::AllowlistCompiled(Allowlist::from_parts(id.clone(), rules))
        };

        event(&identities, 1, bound("p", "192.0.2.1", Some(&a)));
        event(&identities, 2, bound("q", "192.0.2.2", Some(&b)));
        event(&identities, 3, compiled(&a, 1));
        assert_eq!(rules_of(&identities, "192.0.2.1"), Some(1));
        assert_eq!(rules_of(&identities, "192.0.2.2"), Some(0));

        // p moves to b: a's next version is none of its business any more.
        event(&identities, 4, bound("p", "192.0.2.1", Some(&b)));
        event(&identities, 5, compiled(&a, 3));
        assert_eq!(rules_of(&identities, "192.0.2.1"), Some(0));
        event(&identities, 6, compiled(&b, 2));
        assert_eq!(rules_of(&identities, "192.0.2.1"), Some(2));
        assert_eq!(rules_of(&identities, "192.0.2.2"), Some(2));

        // r takes q's address under the same allowlist, then q goes: r still follows b.
        event(&identities, 7, bound("r", "192.0.2.2", Some(&b)));
        event(&identities, 8, EventPayload::WorkloadUnbound(key("q")));
        event(&identities, 9, compiled(&b, 4));
        assert_eq!(rules_of(&identities, "192.0.2.2"), Some(4));
        event(&identities, 10, EventPayload::AllowlistReleased(b.clone()));
        assert_eq!(rules_of(&identities, "192.0.2.1"), Some(0));
        assert_eq!(rules_of(&identities, "192.0.2.2"), Some(0));
        let state = identities.read();
        assert_eq!(state.bound_to.get(&b).map(HashSet::len), Some(2));
        assert!(!state.bound_to.contains_key(&a));
    }

    #[test]
    fn ready_once_caught_up_and_through_disconnections() {
        let identities = Identities::new();
        let signal = identities.ready_signal();
        event(&identities, 1, bound("a", "192.0.2.1", None));
        assert!(!identities.is_ready());
        identities.apply(TailUpdate::CaughtUp(1));
        assert!(identities.is_ready());
        assert!(*signal.borrow());
        identities.apply(TailUpdate::Disconnected("store restarting".into()));
        assert!(identities.is_ready());
    }

    #[test]
    fn a_reset_replaces_everything() {
        let identities = Identities::new();
        event(&identities, 1, bound("a", "192.0.2.1", None));
        let list = isolating();
        let id = list.id().clone();
        let EventPayload::WorkloadBound(binding) = bound("b", "198.51.100.1", Some(&id)) else {
            unreachable!()
        };
        identities.apply(TailUpdate::Reset(DerivedState {
            revision: 9,
            allowlists: vec![list],
            bindings: vec![binding],
        }));
        assert_eq!(rules_of(&identities, "192.0.2.1"), None);
        assert_eq!(rules_of(&identities, "198.51.100.1"), Some(1));
        assert_eq!(identities.revision(), 9);
    }
}
