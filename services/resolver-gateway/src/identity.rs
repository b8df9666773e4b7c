//! Who is asking: the pods and allowlists of the store's derived view, by source address.
//!
//! The gateway never evaluates selectors; the store did. This module only mirrors the
//! bindings (pod addresses → node and allowlist id) and the allowlists themselves, fed by
//! [`dnsfence_api::tail`], and answers lookups on the query path under a read lock.

use std::collections::HashMap;

use foldhash::fast::RandomState as Seeded;
use std::net::IpAddr;
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
    by_ip: HashMap<IpAddr, WorkloadKey, Seeded>,
    revision: u64,
}

/// The mirror, shared by the query path (readers) and the tail task (the one writer).
#[derive(Debug)]
pub struct Identities {
    state: RwLock<State>,
    ready: watch::Sender<bool>,
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
        *self.ready.borrow()
    }

    pub fn ready_signal(&self) -> watch::Receiver<bool> {
        self.ready.subscribe()
    }

    pub fn revision(&self) -> u64 {
        self.read().revision
    }

    pub fn pods(&self) -> usize {
        self.read().by_ip.len()
    }

    pub fn lookup(&self, ip: IpAddr) -> Lookup {
        let state = self.read();
        let Some(binding) = state.by_ip.get(&ip).and_then(|k| state.bindings.get(k)) else {
            return Lookup::Unknown;
        };
        let allowlist = match &binding.binding {
            Binding::Unenforced => None,
            Binding::Enforced(id) => Some(match state.allowlists.get(id) {
                Some(a) => Arc::clone(a),
                // The store emits an allowlist before the bindings that use it; if that ever
                // breaks, fail closed rather than open.
                None => Arc::new(Allowlist::from_parts(id.clone(), Vec::new())),
            }),
        };
        Lookup::Pod(PodIdentity {
            binding: Arc::clone(binding),
            allowlist,
        })
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
                debug!(revision, pods = self.pods(), "identities caught up");
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
            state
                .allowlists
                .insert(allowlist.id().clone(), Arc::new(allowlist));
        }
        EventPayload::AllowlistReleased(id) => {
            state.allowlists.remove(&id);
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
    for ip in &binding.ips {
        if let Some(previous) = state.by_ip.insert(*ip, binding.workload.clone())
            && previous != binding.workload
        {
            // Address reuse: the older pod's entry is stale; the newer binding wins.
            debug!(%ip, old = %previous, new = %binding.workload, "address moved to another pod");
        }
    }
    state
        .bindings
        .insert(binding.workload.clone(), Arc::new(binding));
}

fn unbind(state: &mut State, key: &WorkloadKey) {
    if let Some(old) = state.bindings.remove(key) {
        for ip in &old.ips {
            if state.by_ip.get(ip) == Some(key) {
                state.by_ip.remove(ip);
            }
        }
    }
}
