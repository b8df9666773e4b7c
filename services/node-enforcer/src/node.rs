//! The node's state and how it drives the datapath: store updates (this node's pods and
//! their allowlists) become `pods` entries, attached interfaces and `cidrs` entries; grant
//! batches become `grants` entries, each remembered with the name and ports it was granted
//! for, so a policy change can re-check them (revocation).
//!
//! [`Node`] is synchronous and owns the [`Datapath`]; the service shares it behind a mutex
//! between the store tail, the gateway subscriptions, the sweeper and the metrics endpoint.

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

    // ---- the state file ----

    /// Takes the state to persist.
    pub fn to_state(&mut self) -> StateFile {
        self.dirty = false;
        let mut policy_ids: Vec<PolicyIdRecord> = self
            .policy_ids
            .iter()
            .map(|(id, pid)| PolicyIdRecord {
                allowlist: id.0.clone(),
                policy_id: *pid,
            })
            .collect();
        policy_ids.sort_by_key(|r| r.policy_id);
        let grants = self
            .grants
            .iter()
            .flat_map(|((pod, dst), records)| {
                records.iter().map(|r| GrantRecordMessage {
                    pod: state::ip_bytes(*pod),
                    destination: state::ip_bytes(*dst),
                    name: r.name.clone(),
                    ports: r.ports.iter().map(gpb::PortRange::from).collect(),
                    expiry_boot_ns: r.expiry_boot_ns,
                })
            })
            .collect();
        StateFile {
            format: state::FORMAT,
            node: self.node.clone(),
            revision: self.revision,
            allowlists: self
                .allowlists
                .values()
                .map(|a| pb::Allowlist::from(a.as_ref()))
                .collect(),
            bindings: self
                .bindings
                .values()
                .map(pb::WorkloadBinding::from)
                .collect(),
            policy_ids,
            next_policy_id: self.next_policy_id,
            grants,
        }
    }

    /// Takes over a state file's content (the datapath is reconciled by [`Node::reconcile`]).
    /// A file that does not decode leaves the node empty (the tail then starts from a
    /// snapshot) and is reported.
    pub fn restore(&mut self, file: StateFile) -> std::result::Result<(), String> {
        let mut allowlists = HashMap::new();
        for a in file.allowlists {
            let a = Allowlist::try_from(a).map_err(|e| e.to_string())?;
            allowlists.insert(a.id().clone(), Arc::new(a));
        }
        let mut bindings = HashMap::new();
        for b in file.bindings {
            let b = WorkloadBinding::try_from(b).map_err(|e| e.to_string())?;
            bindings.insert(b.workload.clone(), b);
        }
        let mut grants: HashMap<(IpAddr, IpAddr), Vec<GrantRecord>> = HashMap::new();
        let now = clock::boot_time_ns().unwrap_or(0);
        for g in file.grants {
            let (Some(pod), Some(dst)) = (
                state::ip_from_bytes(&g.pod),
                state::ip_from_bytes(&g.destination),
            ) else {
                continue;
            };
            if g.expiry_boot_ns <= now {
                continue;
            }
            let ports: std::result::Result<Vec<PortRange>, _> =
                g.ports.into_iter().map(PortRange::try_from).collect();
            let Ok(ports) = ports else { continue };
            grants.entry((pod, dst)).or_default().push(GrantRecord {
                name: g.name,
                ports,
                expiry_boot_ns: g.expiry_boot_ns,
            });
        }
        self.allowlists = allowlists;
        self.bindings = bindings;
        self.grants = grants;
        self.policy_ids = file
            .policy_ids
            .into_iter()
            .filter(|r| r.policy_id != 0 && r.policy_id < POLICY_ID_LIMIT)
            .map(|r| (AllowlistId(r.allowlist), r.policy_id))
            .collect();
        self.next_policy_id = file.next_policy_id.max(1);
        self.revision = file.revision;
        Ok(())
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

    // ---- store updates ----

    /// Applies a batch of tail updates, then re-checks the grants of every pod whose
    /// allowlist changed.
    pub fn apply(&mut self, updates: Vec<TailUpdate>) -> Applied {
        let mut out = Applied::default();
        let mut recheck = HashSet::new();
        for update in updates {
            match update {
                TailUpdate::Reset(state) => {
                    self.reset(state, &mut recheck);
                    out.changed = true;
                }
                TailUpdate::Event(event) => {
                    self.event(event.payload, &mut recheck);
                    self.revision = self.revision.max(event.revision);
                    out.changed = true;
                }
                TailUpdate::CaughtUp(revision) => {
                    if revision > self.revision {
                        self.revision = revision;
                        out.changed = true;
                    }
                    out.caught_up = true;
                }
                TailUpdate::Disconnected(_) => {}
            }
        }
        self.recheck(&recheck);
        self.release_unused_policies();
        self.publish();
        self.metrics.store_revision.set(gauge(self.revision));
        out.resync = std::mem::take(&mut self.resync);
        out
    }

    fn reset(&mut self, state: DerivedState, recheck: &mut HashSet<IpAddr>) {
        self.allowlists = state
            .allowlists
            .into_iter()
            .map(|a| (a.id().clone(), Arc::new(a)))
            .collect();
        let new: HashMap<WorkloadKey, WorkloadBinding> = state
            .bindings
            .into_iter()
            .filter(|b| b.node == self.node)
            .map(|b| (b.workload.clone(), b))
            .collect();
        let gone: Vec<WorkloadKey> = self
            .bindings
            .keys()
            .filter(|k| !new.contains_key(*k))
            .cloned()
            .collect();
        for key in gone {
            self.unbind(&key);
        }
        for b in new.into_values() {
            self.bind(b, recheck);
        }
        self.revision = state.revision;
        self.finish_reconcile();
    }

    fn event(&mut self, payload: EventPayload, recheck: &mut HashSet<IpAddr>) {
        match payload {
            EventPayload::AllowlistCompiled(allowlist) => {
                let id = allowlist.id().clone();
                self.allowlists.insert(id.clone(), Arc::new(allowlist));
                if let Some(pid) = self.policy_ids.get(&id).copied() {
                    self.write_cidrs(&id, pid);
                    // the pods bound to it were bound before its rules were known
                    recheck.extend(self.pods_of(&id));
                }
            }
            EventPayload::AllowlistReleased(id) if !self.in_use(&id) => {
                self.allowlists.remove(&id);
            }
            EventPayload::WorkloadBound(binding) => self.bind(binding, recheck),
            EventPayload::WorkloadUnbound(key) => self.unbind(&key),
            _ => {}
        }
    }

    fn pods_of(&self, id: &AllowlistId) -> Vec<IpAddr> {
        self.bindings
            .values()
            .filter(|b| b.binding == Binding::Enforced(id.clone()))
            .flat_map(|b| b.ips.iter().copied())
            .collect()
    }

    fn in_use(&self, id: &AllowlistId) -> bool {
        self.bindings
            .values()
            .any(|b| b.binding == Binding::Enforced(id.clone()))
    }

    /// The datapath mode and policy id of a binding (assigning a policy id on first use).
    fn mode_of(&mut self, binding: &Binding) -> (Mode, u32) {
        match binding {
            Binding::Enforced(id) => (self.default.enforced_mode(), self.policy_id(id)),
            Binding::Unenforced => (self.default.unenforced_mode(), 0),
        }
    }

    fn policy_id(&mut self, id: &AllowlistId) -> u32 {
        if let Some(pid) = self.policy_ids.get(id) {
            return *pid;
        }
        let used: HashSet<u32> = self.policy_ids.values().copied().collect();
        let mut pid = self.next_policy_id;
        while pid == 0 || pid >= POLICY_ID_LIMIT || used.contains(&pid) {
            pid = if pid == 0 || pid >= POLICY_ID_LIMIT - 1 {
                1
            } else {
                pid + 1
            };
        }
        self.next_policy_id = pid + 1;
        self.policy_ids.insert(id.clone(), pid);
        if self.allowlists.contains_key(id) {
            self.write_cidrs(id, pid);
        } else {
            tracing::warn!(allowlist = %id, "a pod is bound to an allowlist this node never received; resyncing from a snapshot");
            self.resync = true;
        }
        pid
    }

    /// Writes the allowlist's CIDR rules under `pid`, then removes entries of `pid` the new
    /// rules no longer have (in that order, so nothing still allowed is ever missing).
    fn write_cidrs(&mut self, id: &AllowlistId, pid: u32) {
        let entries = match self.allowlists.get(id) {
            Some(a) => cidr_entries(a, self.default.evaluation()),
            None => Vec::new(),
        };
        let want: HashSet<IpNet> = entries.iter().map(|(p, _)| *p).collect();
        for (prefix, specs) in &entries {
            let (prefix, specs) = (*prefix, specs.clone());
            self.dp_call("put_cidr", |dp| dp.put_cidr(pid, prefix, &specs));
        }
        match self.dp.cidr_prefixes(pid) {
            Ok(existing) => {
                for prefix in existing.into_iter().filter(|p| !want.contains(p)) {
                    self.dp_call("remove_cidr", |dp| dp.remove_cidr(pid, prefix).map(drop));
                }
            }
            Err(e) => self.fail("listing cidrs", &e),
        }
    }

    fn release_unused_policies(&mut self) {
        let unused: Vec<(AllowlistId, u32)> = self
            .policy_ids
            .iter()
            .filter(|(id, _)| !self.in_use(id))
            .map(|(id, pid)| (id.clone(), *pid))
            .collect();
        for (id, pid) in unused {
            match self.dp.cidr_prefixes(pid) {
                Ok(prefixes) => {
                    for prefix in prefixes {
                        self.dp_call("remove_cidr", |dp| dp.remove_cidr(pid, prefix).map(drop));
                    }
                }
                Err(e) => self.fail("listing cidrs", &e),
            }
            self.policy_ids.remove(&id);
            tracing::debug!(allowlist = %id, policy_id = pid, "policy id released");
        }
    }

    /// Takes a binding of a workload: writes its addresses with their mode and policy,
    /// attaches to their interfaces, forgets addresses it no longer has, and queues its
    /// addresses for a grant re-check when its allowlist changed.
    fn bind(&mut self, b: WorkloadBinding, recheck: &mut HashSet<IpAddr>) {
        if b.node != self.node {
            // moved to another node
            self.unbind(&b.workload);
            return;
        }
        let old = self.bindings.insert(b.workload.clone(), b.clone());
        let new_ips = ip_list(&b);
        if let Some(old) = &old {
            for ip in ip_list(old).difference(&new_ips) {
                self.forget_pod(*ip);
            }
            if old.binding != b.binding {
                recheck.extend(new_ips.iter().copied());
            }
        }
        let (mode, policy_id) = self.mode_of(&b.binding);
        for ip in new_ips {
            // an address that belonged to another workload: that one is gone
            if let Some(p) = self.pods.get(&ip)
                && p.key != b.workload
            {
                let other = p.key.clone();
                self.drop_ip_of(&other, ip);
            }
            let entry = self.pods.entry(ip).or_insert_with(|| PodState {
                key: b.workload.clone(),
                mode,
                policy_id,
                ifindex: None,
            });
            entry.key = b.workload.clone();
            entry.mode = mode;
            entry.policy_id = policy_id;
            self.place(ip);
        }
    }

    fn drop_ip_of(&mut self, key: &WorkloadKey, ip: IpAddr) {
        if let Some(b) = self.bindings.get_mut(key) {
            b.ips.retain(|a| *a != ip);
        }
        self.forget_pod(ip);
    }

    fn unbind(&mut self, key: &WorkloadKey) {
        if let Some(old) = self.bindings.remove(key) {
            for ip in old.ips {
                if self.pods.get(&ip).is_some_and(|p| p.key == *key) {
                    self.forget_pod(ip);
                }
            }
        }
    }

    /// Removes a pod address: its `pods` entry, its grants, its interface when no other
    /// pod uses it.
    fn forget_pod(&mut self, ip: IpAddr) {
        let Some(pod) = self.pods.remove(&ip) else {
            return;
        };
        self.dp_call("remove_pod", |dp| dp.remove_pod(ip).map(drop));
        let pairs: Vec<(IpAddr, IpAddr)> = self
            .grants
            .keys()
            .filter(|(p, _)| *p == ip)
            .copied()
            .collect();
        for (p, d) in pairs {
            self.grants.remove(&(p, d));
            self.dp_call("remove_grant", |dp| dp.remove_grant(p, d).map(drop));
            self.dirty = true;
        }
        if let Some(ifindex) = pod.ifindex {
            self.leave(ifindex, ip);
        }
    }

    /// Finds the pod's interface, writes its entry, attaches. Without a route the pod
    /// stays pending and is retried.
    fn place(&mut self, ip: IpAddr) {
        let Some(pod) = self.pods.get(&ip).cloned() else {
            return;
        };
        match netlink::pod_interface(ip) {
            Ok(Some(ifindex)) => {
                if let Err(e) = self.dp.upsert_pod(ip, ifindex, pod.mode, pod.policy_id) {
                    self.fail("writing a pod", &e);
                    return;
                }
                if let Some(old) = pod.ifindex
                    && old != ifindex
                {
                    self.leave(old, ip);
                }
                self.interfaces.entry(ifindex).or_default().insert(ip);
                if !self.attached.contains(&ifindex) {
                    match self.dp.attach(ifindex) {
                        Ok(()) => {
                            tracing::info!(ifindex, pod = %pod.key, %ip, "attached");
                            self.attached.insert(ifindex);
                        }
                        Err(e) => {
                            self.fail("attaching", &e);
                            if let Some(p) = self.pods.get_mut(&ip) {
                                p.ifindex = None;
                            }
                            return;
                        }
                    }
                }
                if let Some(p) = self.pods.get_mut(&ip) {
                    p.ifindex = Some(ifindex);
                }
            }
            Ok(None) => {
                if let Some(old) = pod.ifindex {
                    self.dp_call("remove_pod", |dp| dp.remove_pod(ip).map(drop));
                    self.leave(old, ip);
                }
                if let Some(p) = self.pods.get_mut(&ip) {
                    p.ifindex = None;
                }
                tracing::debug!(%ip, pod = %pod.key, "no host route to the pod yet; retrying");
            }
            Err(e) => self.fail("finding a pod's interface", &e),
        }
    }

    fn leave(&mut self, ifindex: u32, ip: IpAddr) {
        let empty = match self.interfaces.get_mut(&ifindex) {
            Some(set) => {
                set.remove(&ip);
                set.is_empty()
            }
            None => true,
        };
        if empty {
            self.interfaces.remove(&ifindex);
            self.detach(ifindex);
        }
    }

    fn detach(&mut self, ifindex: u32) {
        if self.attached.remove(&ifindex) {
            match self.dp.detach(ifindex) {
                Ok(()) => tracing::info!(ifindex, "detached: no pod uses the interface"),
                Err(e) => self.fail("detaching", &e),
            }
        }
    }

    /// Looks again for the interfaces of pods that have none (or, with `all`, of every
    /// pod: a pod re-created with the same address gets a new interface).
    pub fn retry_interfaces(&mut self, all: bool) {
        let ips: Vec<IpAddr> = self
            .pods
            .iter()
            .filter(|(_, p)| all || p.ifindex.is_none())
            .map(|(ip, _)| *ip)
            .collect();
        for ip in ips {
            let before = self.pods.get(&ip).and_then(|p| p.ifindex);
            if all && before.is_some() {
                // only act on a change: the route moved or vanished
                match netlink::pod_interface(ip) {
                    Ok(now) if now == before => continue,
                    Ok(_) => {}
                    Err(e) => {
                        self.fail("finding a pod's interface", &e);
                        continue;
                    }
                }
            }
            self.place(ip);
        }
        self.publish();
    }

    // ---- grants ----

    /// What the pod's current allowlist allows of a grant; everything granted when the
    /// node does not know the pod or its allowlist (the gateway decided with what it knew).
    fn allowed_for(&self, pod: IpAddr, dst: IpAddr, name: &str, ports: &[PortRange]) -> PortSet {
        let Some(key) = self.pods.get(&pod).map(|p| &p.key) else {
            return port_set(ports);
        };
        let Some(binding) = self.bindings.get(key) else {
            return port_set(ports);
        };
        match &binding.binding {
            Binding::Enforced(id) => match self.allowlists.get(id) {
                Some(a) => allowed_of_grant(a, name, dst, ports, self.default.evaluation()),
                None => port_set(ports),
            },
            Binding::Unenforced => match self.default {
                NodeDefault::DefaultAllow => port_set(ports),
                NodeDefault::DefaultDeny | NodeDefault::Audit => PortSet::empty(),
            },
        }
    }

    /// Writes a batch of grants into the map, each narrowed to what the pod's current
    /// allowlist allows (a gateway that has not seen a policy change yet cannot undo a
    /// revocation), and remembers them. Returns how many map writes failed; the caller
    /// acks only a batch that was written entirely.
    pub fn install_grants(&mut self, grants: Vec<Grant>) -> Result<usize> {
        let mut failed = 0;
        for g in grants {
            let expiry = clock::deadline_after(g.lifetime)?;
            for pod in self.grant_sources(g.pod_ip, g.destination_ip) {
                let allowed = self.allowed_for(pod, g.destination_ip, &g.name, &g.ports);
                if allowed.is_empty() {
                    tracing::debug!(%pod, destination = %g.destination_ip, name = %g.name, "grant not allowed by the pod's current allowlist; not written");
                } else if let Err(e) =
                    self.dp
                        .put_grant(pod, g.destination_ip, &port_specs(&allowed), expiry)
                {
                    self.fail("writing a grant", &e);
                    failed += 1;
                    continue;
                }
                let records = self.grants.entry((pod, g.destination_ip)).or_default();
                match records
                    .iter_mut()
                    .find(|r| r.name == g.name && r.ports == g.ports)
                {
                    Some(r) => r.expiry_boot_ns = r.expiry_boot_ns.max(expiry),
                    None => records.push(GrantRecord {
                        name: g.name.clone(),
                        ports: g.ports.clone(),
                        expiry_boot_ns: expiry,
                    }),
                }
                self.dirty = true;
            }
        }
        Ok(failed)
    }

    /// The pod addresses a grant is written for: the gateway names the address the query
    /// came from, but a dual-stack pod that asked over IPv4 connects to an AAAA answer from
    /// its IPv6 address (and the other way round). A destination is only reachable from
    /// an address of its own family, so the grant goes to the workload's addresses of the
    /// destination's family; an unknown pod keeps the address the gateway gave.
    fn grant_sources(&self, pod: IpAddr, dst: IpAddr) -> Vec<IpAddr> {
        let binding = self.pods.get(&pod).and_then(|p| self.bindings.get(&p.key));
        let mut out: Vec<IpAddr> = match binding {
            Some(b) => b
                .ips
                .iter()
                .copied()
                .filter(|a| a.is_ipv4() == dst.is_ipv4())
                .collect(),
            None => Vec::new(),
        };
        if out.is_empty() {
            out.push(pod);
        }
        out
    }

    /// Revocation: re-checks every grant of `ips` by the name and ports it was granted
    /// for against the pod's allowlist now; removes what is no longer allowed, narrows
    /// what is partly allowed, keeps (or restores, if an earlier policy had removed it)
    /// what is allowed. Grants the node holds no record of (lost in a crash between two
    /// state-file writes) cannot be checked and are removed.
    fn recheck(&mut self, ips: &HashSet<IpAddr>) {
        if ips.is_empty() {
            return;
        }
        let now = match clock::boot_time_ns() {
            Ok(n) => n,
            Err(e) => {
                self.fail("reading the clock", &e);
                return;
            }
        };
        match self.dp.grant_pairs() {
            Ok(pairs) => {
                for (pod, dst) in pairs {
                    if ips.contains(&pod)
                        && !self.grants.contains_key(&(pod, dst))
                        && let Ok(true) = self.dp.remove_grant(pod, dst)
                    {
                        self.metrics.revoked_grants.inc();
                        tracing::info!(%pod, destination = %dst, "revoked a grant with no record of its name");
                    }
                }
            }
            Err(e) => self.fail("listing grants", &e),
        }
        let keys: Vec<(IpAddr, IpAddr)> = self
            .grants
            .keys()
            .filter(|(p, _)| ips.contains(p))
            .copied()
            .collect();
        for (pod, dst) in keys {
            let records = self.grants.get(&(pod, dst)).cloned().unwrap_or_default();
            let mut union = PortSet::empty();
            let mut puts = Vec::new();
            for r in records.iter().filter(|r| r.expiry_boot_ns > now) {
                let allowed = self.allowed_for(pod, dst, &r.name, &r.ports);
                if !allowed.is_empty() {
                    union = union.union(&allowed);
                    puts.push((port_specs(&allowed), r.expiry_boot_ns));
                }
            }
            if union.is_empty() {
                match self.dp.remove_grant(pod, dst) {
                    Ok(true) => {
                        self.metrics.revoked_grants.inc();
                        tracing::info!(%pod, destination = %dst, names = ?records.iter().map(|r| r.name.as_str()).collect::<Vec<_>>(), "revoked");
                    }
                    Ok(false) => {}
                    Err(e) => self.fail("revoking a grant", &e),
                }
                continue;
            }
            match self.dp.narrow_grant(pod, dst, &port_specs(&union)) {
                Ok(NarrowOutcome::Narrowed | NarrowOutcome::Removed) => {
                    self.metrics.revoked_grants.inc();
                    tracing::info!(%pod, destination = %dst, allowed = %union, "narrowed");
                }
                Ok(NarrowOutcome::Unchanged | NarrowOutcome::Absent) => {}
                Err(e) => self.fail("narrowing a grant", &e),
            }
            for (specs, expiry) in puts {
                self.dp_call("put_grant", |dp| dp.put_grant(pod, dst, &specs, expiry));
            }
        }
    }

    /// Removes expired grant entries from the map and expired records; returns the number
    /// of entries removed.
    pub fn sweep(&mut self) -> Result<usize> {
        let now = clock::boot_time_ns()?;
        let (removed, remaining) = self.dp.sweep_expired_counted(now)?;
        self.metrics.grants.set(gauge(remaining as u64));
        self.metrics.swept_grants.inc_by(removed as u64);
        let before = self.grants.len();
        self.grants.retain(|_, records| {
            records.retain(|r| r.expiry_boot_ns > now);
            !records.is_empty()
        });
        if self.grants.len() != before {
            self.dirty = true;
        }
        Ok(removed)
    }

    /// The records held for a pair (for tests and diagnostics).
    pub fn grant_records(&self, pod: IpAddr, dst: IpAddr) -> Vec<GrantRecord> {
        self.grants.get(&(pod, dst)).cloned().unwrap_or_default()
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
