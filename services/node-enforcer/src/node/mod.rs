//! The node's state and how it drives the datapath: store updates (this node's pods and
//! their allowlists) become `pods` entries, attached interfaces and `cidrs` entries; grant
//! batches become `grants` entries, each remembered with the name and ports it was granted
//! for, so a policy change can re-check them (revocation).
//!
//! [`Node`] is synchronous and owns the [`Datapath`]; the service shares it behind a mutex
//! between the store tail, the gateway subscriptions, the sweeper and the metrics endpoint.
//! Its methods are grouped by what drives them: the state file (`state_file`), store
//! updates (`updates`), grant batches (`grants`); the rest is here.

use std::{
    collections::{BTreeSet, HashMap, HashSet},
    net::IpAddr,
    sync::{Arc, RwLock},
};

use dnsfence_api::{
    Grant,
    grants::v1 as gpb,
    store::v1 as pb,
    tail::{DerivedState, TailUpdate},
};
use dnsfence_policy::{
    allowlist::{Allowlist, DefaultPolicy},
    model::{AllowlistId, Binding, EventPayload, WorkloadBinding, WorkloadKey},
    ports::{PortRange, PortSet},
};
use ipnet::IpNet;

use crate::{
    Datapath, Mode, NarrowOutcome, Result, clock,
    config::NodeDefault,
    metrics::Metrics,
    netlink,
    policy::{allowed_of_grant, cidr_entries, port_set, port_specs},
    state::{self, GrantRecordMessage, PolicyIdRecord, StateFile},
    types::Counters,
};

mod grants;
mod state_file;
mod updates;

/// Policy ids live below 2^31 (the top bit of a `cidrs` key marks IPv4).
const POLICY_ID_LIMIT: u32 = 1 << 31;

/// A grant as received from a gateway.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct GrantRecord {
    /// The name the gateway allowed.
    pub name: String,
    /// The ports it granted.
    pub ports: Vec<PortRange>,
    /// CLOCK_BOOTTIME deadline.
    pub expiry_boot_ns: u64,
}

/// What the flow-log reader needs to name a pod and the policy behind a verdict.
#[derive(Debug, Default)]
pub struct Directory {
    /// This node's name.
    pub node: String,
    /// How allowlists are evaluated here (the node default).
    pub default: DefaultPolicy,
    /// Pod address → workload.
    pub pods: HashMap<IpAddr, WorkloadKey>,
    /// Policy id → allowlist id.
    pub policies: HashMap<u32, AllowlistId>,
    /// Policy id → the allowlist itself, to name the rule or policy behind a drop.
    pub allowlists: HashMap<u32, Arc<Allowlist>>,
}

#[derive(Debug, Clone)]
struct PodState {
    key: WorkloadKey,
    mode: Mode,
    policy_id: u32,
    /// The host-side interface, once its route is found.
    ifindex: Option<u32>,
}

/// What applying store updates asks of the caller.
#[derive(Debug, Default, Clone, Copy)]
pub struct Applied {
    /// Something changed: persist the state.
    pub changed: bool,
    /// The tail delivered a binding to an allowlist the node has never seen: restart it
    /// from a snapshot.
    pub resync: bool,
    /// The tail caught up with the store.
    pub caught_up: bool,
}

/// The node's state and its datapath.
pub struct Node {
    dp: Datapath,
    node: String,
    default: NodeDefault,
    revision: u64,
    /// Shared with the flow-log reader through the [`Directory`].
    allowlists: HashMap<AllowlistId, Arc<Allowlist>>,
    bindings: HashMap<WorkloadKey, WorkloadBinding>,
    pods: HashMap<IpAddr, PodState>,
    /// Interfaces with our links.
    attached: HashSet<u32>,
    /// Pods on each interface.
    interfaces: HashMap<u32, BTreeSet<IpAddr>>,
    policy_ids: HashMap<AllowlistId, u32>,
    next_policy_id: u32,
    grants: HashMap<(IpAddr, IpAddr), Vec<GrantRecord>>,
    /// A binding named an unknown allowlist.
    resync: bool,
    /// Grant records changed since the state was last taken.
    dirty: bool,
    metrics: Arc<Metrics>,
    directory: Arc<RwLock<Directory>>,
}

impl std::fmt::Debug for Node {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Node")
            .field("node", &self.node)
            .field("revision", &self.revision)
            .field("pods", &self.pods.len())
            .field("grants", &self.grants.len())
            .finish_non_exhaustive()
    }
}

fn ip_list(b: &WorkloadBinding) -> BTreeSet<IpAddr> {
    b.ips.iter().copied().collect()
}

impl Node {
    /// A node with no state over `dp` (whose pinned content is reconciled later).
    pub fn new(
        dp: Datapath,
        node: String,
        default: NodeDefault,
        metrics: Arc<Metrics>,
        directory: Arc<RwLock<Directory>>,
    ) -> Self {
        Self {
            dp,
            node,
            default,
            revision: 0,
            allowlists: HashMap::new(),
            bindings: HashMap::new(),
            pods: HashMap::new(),
            attached: HashSet::new(),
            interfaces: HashMap::new(),
            policy_ids: HashMap::new(),
            next_policy_id: 1,
            grants: HashMap::new(),
            resync: false,
            dirty: false,
            metrics,
            directory,
        }
    }

    /// The last store revision applied.
    pub fn revision(&self) -> u64 {
        self.revision
    }

    /// The datapath.
    pub fn datapath(&self) -> &Datapath {
        &self.dp
    }

    /// The datapath's verdict counters.
    pub fn counters(&self) -> Result<Counters> {
        self.dp.counters()
    }

    /// Whether grant records changed since the last [`Node::to_state`].
    pub fn dirty(&self) -> bool {
        self.dirty
    }

    /// Makes the datapath match the node's state, at start: every bound pod written and
    /// attached (an interface already attached keeps its link: no second attachment),
    /// pods the state does not know removed, interfaces without pods detached, every
    /// policy's CIDR rules rewritten.
    ///
    /// Without a restored state (no state file), nothing is removed here: the first store
    /// snapshot does it, so a lost state file never opens or drops pods while the store is
    /// being reached.
    pub fn reconcile(&mut self) -> Result<()> {
        self.attached = self.dp.attached_interfaces()?.into_iter().collect();
        if self.revision == 0 && self.bindings.is_empty() {
            self.publish();
            return Ok(());
        }
        self.pods.clear();
        self.interfaces.clear();
        let bindings: Vec<WorkloadBinding> = self.bindings.values().cloned().collect();
        let mut ignored = HashSet::new();
        for b in bindings {
            self.bind(b, &mut ignored);
        }
        self.finish_reconcile();
        Ok(())
    }

    /// Removes what the datapath holds beyond the node's state, and rewrites CIDR rules.
    fn finish_reconcile(&mut self) {
        match self.dp.pods() {
            Ok(pods) => {
                for (ip, _) in pods {
                    if self.pods.get(&ip).is_none_or(|p| p.ifindex.is_none()) {
                        self.dp_call("remove_pod", |dp| dp.remove_pod(ip).map(drop));
                    }
                }
            }
            Err(e) => self.fail("listing pods", &e),
        }
        let unused: Vec<u32> = self
            .attached
            .iter()
            .filter(|i| self.interfaces.get(i).is_none_or(BTreeSet::is_empty))
            .copied()
            .collect();
        for ifindex in unused {
            self.detach(ifindex);
        }
        let ids: Vec<(AllowlistId, u32)> = self
            .policy_ids
            .iter()
            .map(|(a, p)| (a.clone(), *p))
            .collect();
        for (id, pid) in ids {
            self.write_cidrs(&id, pid);
        }
        self.release_unused_policies();
        self.publish();
    }

    // ---- plumbing ----

    fn publish(&self) {
        let pods = self
            .pods
            .iter()
            .map(|(ip, p)| (*ip, p.key.clone()))
            .collect();
        let policies = self
            .policy_ids
            .iter()
            .map(|(id, pid)| (*pid, id.clone()))
            .collect();
        let allowlists = self
            .policy_ids
            .iter()
            .filter_map(|(id, pid)| Some((*pid, Arc::clone(self.allowlists.get(id)?))))
            .collect();
        if let Ok(mut d) = self.directory.write() {
            d.node.clone_from(&self.node);
            d.default = self.default.evaluation();
            d.pods = pods;
            d.policies = policies;
            d.allowlists = allowlists;
        }
        let placed = self.pods.values().filter(|p| p.ifindex.is_some()).count();
        self.metrics.pods.set(gauge(placed as u64));
        self.metrics
            .pods_pending
            .set(gauge((self.pods.len() - placed) as u64));
        self.metrics
            .interfaces
            .set(gauge(self.attached.len() as u64));
    }

    fn fail(&self, what: &str, e: &crate::Error) {
        self.metrics.errors.inc();
        tracing::warn!(error = %e, "{what} failed");
    }

    fn dp_call<T>(&mut self, what: &str, f: impl FnOnce(&mut Datapath) -> Result<T>) {
        if let Err(e) = f(&mut self.dp) {
            self.fail(what, &e);
        }
    }
}

fn gauge(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}
