//! The compiler: policies + namespaces + workloads → content-addressed allowlists and
//! workload bindings.
//!
//! Every change is a batch of source changes; the compiler works out which workloads the batch
//! can affect, recompiles only those (sharing the work between workloads with the same
//! namespace and labels), and returns only the derived events that differ from what it had.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::net::IpAddr;
use std::sync::Arc;

use crate::allowlist::Allowlist;
use crate::model::{
    AllowlistId, Binding, CidrRule, Destinations, EventPayload, Labels, Namespace, PolicyRef, Rule,
    RuleKind, RuleOrigin, Tier, Workload, WorkloadBinding, WorkloadKey,
};
use crate::policy::{NamespaceScope, Peer, Policy, Subject};
use crate::selector::LabelSelector;

/// The label Kubernetes puts on every namespace; policies select namespaces by it (the seed's
/// allow-dns does), so namespaces the store was never told about still carry it.
pub const NAMESPACE_NAME_LABEL: &str = "kubernetes.io/metadata.name";

/// One input change.
#[derive(Debug, Clone)]
pub enum SourceChange {
    ApplyPolicy(Policy),
    DeletePolicy(PolicyRef),
    UpsertNamespace(Namespace),
    RemoveNamespace(String),
    UpsertWorkload(Workload),
    RemoveWorkload(WorkloadKey),
}

#[derive(Debug, Default, Clone)]
pub struct Compiler {
    policies: BTreeMap<PolicyRef, Arc<Policy>>,
    /// NetworkPolicy-tier policies by namespace; ClusterNetworkPolicies apart.
    namespaced: HashMap<String, BTreeSet<PolicyRef>>,
    cluster: BTreeSet<PolicyRef>,
    /// Policies whose rules name pods by selector: only these depend on other workloads.
    with_workload_peers: BTreeSet<PolicyRef>,
    namespaces: BTreeMap<String, Labels>,
    workloads: BTreeMap<WorkloadKey, Workload>,
    by_namespace: HashMap<String, BTreeSet<WorkloadKey>>,
    by_ip: HashMap<IpAddr, WorkloadKey>,
    allowlists: HashMap<AllowlistId, (Arc<Allowlist>, usize)>,
    bindings: HashMap<WorkloadKey, WorkloadBinding>,
}

/// Work shared by all workloads recompiled in one batch.
#[derive(Default)]
struct PassCache {
    peers: HashMap<(PolicyRef, u32), Destinations>,
    groups: HashMap<(String, Labels), Binding>,
}

impl Compiler {
    pub fn new() -> Compiler {
        Compiler::default()
    }

    pub fn policies(&self) -> impl Iterator<Item = &Policy> {
        self.policies.values().map(AsRef::as_ref)
    }

    pub fn policy(&self, reference: &PolicyRef) -> Option<&Policy> {
        self.policies.get(reference).map(AsRef::as_ref)
    }

    pub fn namespaces(&self) -> impl Iterator<Item = Namespace> + '_ {
        self.namespaces.iter().map(|(name, labels)| Namespace {
            name: name.clone(),
            labels: labels.clone(),
        })
    }

    /// The labels of a namespace the store was told about.
    pub fn namespace(&self, name: &str) -> Option<&Labels> {
        self.namespaces.get(name)
    }

    pub fn namespace_count(&self) -> usize {
        self.namespaces.len()
    }

    pub fn workload_count(&self) -> usize {
        self.workloads.len()
    }

    pub fn allowlist_count(&self) -> usize {
        self.allowlists.len()
    }

    pub fn workloads(&self) -> impl Iterator<Item = &Workload> {
        self.workloads.values()
    }

    pub fn workload(&self, key: &WorkloadKey) -> Option<&Workload> {
        self.workloads.get(key)
    }

    pub fn workload_by_ip(&self, ip: &IpAddr) -> Option<&Workload> {
        self.by_ip.get(ip).and_then(|k| self.workloads.get(k))
    }

    pub fn allowlists(&self) -> impl Iterator<Item = &Arc<Allowlist>> {
        self.allowlists.values().map(|(a, _)| a)
    }

    pub fn allowlist(&self, id: &AllowlistId) -> Option<&Arc<Allowlist>> {
        self.allowlists.get(id).map(|(a, _)| a)
    }

    pub fn bindings(&self) -> impl Iterator<Item = &WorkloadBinding> {
        self.bindings.values()
    }

    pub fn binding(&self, key: &WorkloadKey) -> Option<&WorkloadBinding> {
        self.bindings.get(key)
    }

    /// Applies a batch of source changes and returns the derived events, in an order a
    /// consumer can apply one by one: allowlists before the bindings that use them, releases
    /// after the last binding left them.
    pub fn apply(&mut self, changes: Vec<SourceChange>) -> Vec<EventPayload> {
        let mut affected: BTreeSet<WorkloadKey> = BTreeSet::new();
        let mut removed: Vec<WorkloadKey> = Vec::new();
        for change in changes {
            match change {
                SourceChange::ApplyPolicy(policy) => {
                    let old = self.policies.get(&policy.reference).cloned();
                    if old.as_deref() == Some(&policy) {
                        continue;
                    }
                    if let Some(old) = &old {
                        self.selected_by(old, &mut affected);
                    }
                    self.selected_by(&policy, &mut affected);
                    self.insert_policy(policy);
                }
                SourceChange::DeletePolicy(reference) => {
                    if let Some(old) = self.remove_policy(&reference) {
                        self.selected_by(&old, &mut affected);
                    }
                }
                SourceChange::UpsertNamespace(ns) => {
                    let labels = namespace_labels(&ns.name, ns.labels);
                    let old = self.namespaces.insert(ns.name.clone(), labels.clone());
                    if old.as_ref() != Some(&labels) {
                        let old = old.unwrap_or_else(|| namespace_labels(&ns.name, Labels::new()));
                        self.namespace_changed(&ns.name, &old, &labels, &mut affected);
                    }
                }
                SourceChange::RemoveNamespace(name) => {
                    if let Some(old) = self.namespaces.remove(&name) {
                        let now = namespace_labels(&name, Labels::new());
                        self.namespace_changed(&name, &old, &now, &mut affected);
                    }
                }
                SourceChange::UpsertWorkload(w) => {
                    let old = self.workloads.get(&w.key).cloned();
                    if old.as_ref() == Some(&w) {
                        continue;
                    }
                    if let Some(old) = &old {
                        self.peer_dependents(old, &mut affected);
                        self.unindex_workload(old);
                    }
                    self.peer_dependents(&w, &mut affected);
                    affected.insert(w.key.clone());
                    self.index_workload(&w);
                    self.workloads.insert(w.key.clone(), w);
                }
                SourceChange::RemoveWorkload(key) => {
                    if let Some(old) = self.workloads.remove(&key) {
                        self.peer_dependents(&old, &mut affected);
                        self.unindex_workload(&old);
                        affected.remove(&key);
                        removed.push(key);
                    }
                }
            }
        }
        self.recompile(affected, removed)
    }

    /// Recompiles every workload (after a replay, or after an upgrade changed the compiler)
    /// and returns what differs from the state held.
    pub fn recompile_all(&mut self) -> Vec<EventPayload> {
        let all: BTreeSet<WorkloadKey> = self.workloads.keys().cloned().collect();
        self.recompile(all, Vec::new())
    }

    fn recompile(
        &mut self,
        affected: BTreeSet<WorkloadKey>,
        removed: Vec<WorkloadKey>,
    ) -> Vec<EventPayload> {
        let mut compiled: Vec<EventPayload> = Vec::new();
        let mut bound: Vec<EventPayload> = Vec::new();
        let mut maybe_released: HashSet<AllowlistId> = HashSet::new();
        let mut cache = PassCache::default();
        for key in affected {
            let Some(w) = self.workloads.get(&key) else {
                continue;
            };
            let group = (w.key.namespace.clone(), w.labels.clone());
            let binding = match cache.groups.get(&group) {
                Some(b) => b.clone(),
                None => {
                    let rules = self.rules_for(w, &mut cache.peers);
                    let b = if rules.is_empty() {
                        Binding::Unenforced
                    } else {
                        let list = Allowlist::new(rules);
                        let id = list.id().clone();
                        if !self.allowlists.contains_key(&id) {
                            compiled.push(EventPayload::AllowlistCompiled(list.clone()));
                            self.allowlists.insert(id.clone(), (Arc::new(list), 0));
                        }
                        Binding::Enforced(id)
                    };
                    cache.groups.insert(group, b.clone());
                    b
                }
            };
            let new = WorkloadBinding {
                workload: w.key.clone(),
                ips: w.ips.clone(),
                node: w.node.clone(),
                binding,
            };
            match self.bindings.get(&key) {
                Some(old) if *old == new => continue,
                // A consumer that follows one node's bindings must hear that the pod left it:
                // the new binding names another node and is not sent there.
                Some(old) if old.node != new.node => {
                    bound.push(EventPayload::WorkloadUnbound(key.clone()));
                }
                _ => {}
            }
            self.retain(&new.binding);
            if let Some(old) = self.bindings.insert(key, new.clone()) {
                self.release(&old.binding, &mut maybe_released);
            }
            bound.push(EventPayload::WorkloadBound(new));
        }
        for key in removed {
            if let Some(old) = self.bindings.remove(&key) {
                self.release(&old.binding, &mut maybe_released);
                bound.push(EventPayload::WorkloadUnbound(key));
            }
        }
        let new_ids: HashSet<AllowlistId> = compiled
            .iter()
            .filter_map(|e| match e {
                EventPayload::AllowlistCompiled(a) => Some(a.id().clone()),
                _ => None,
            })
            .collect();
        let in_use =
            |c: &Compiler, id: &AllowlistId| c.allowlists.get(id).is_some_and(|(_, n)| *n > 0);
        // Compiled in this pass but bound by nobody in the end (a workload moved through it):
        // no consumer ever saw it, so it leaves without an event.
        compiled.retain(|e| match e {
            EventPayload::AllowlistCompiled(a) => in_use(self, a.id()),
            _ => true,
        });
        for id in &new_ids {
            if !in_use(self, id) {
                self.allowlists.remove(id);
            }
        }
        let mut released: Vec<AllowlistId> = maybe_released
            .into_iter()
            .filter(|id| !new_ids.contains(id) && !in_use(self, id))
            .collect();
        released.sort();
        for id in &released {
            self.allowlists.remove(id);
        }
        compiled.extend(bound);
        compiled.extend(released.into_iter().map(EventPayload::AllowlistReleased));
        compiled
    }

    fn retain(&mut self, binding: &Binding) {
        if let Binding::Enforced(id) = binding
            && let Some((_, n)) = self.allowlists.get_mut(id)
        {
            *n += 1;
        }
    }

    fn release(&mut self, binding: &Binding, maybe_released: &mut HashSet<AllowlistId>) {
        if let Binding::Enforced(id) = binding
            && let Some((_, n)) = self.allowlists.get_mut(id)
        {
            *n = n.saturating_sub(1);
            if *n == 0 {
                maybe_released.insert(id.clone());
            }
        }
    }

    /// The rule list of one workload, in evaluation order; empty when no policy's egress
    /// applies to it.
    fn rules_for(
        &self,
        w: &Workload,
        peers: &mut HashMap<(PolicyRef, u32), Destinations>,
    ) -> Vec<Rule> {
        let ns_labels = self.labels_of_namespace(&w.key.namespace);
        let mut admin = Vec::new();
        let mut allows = Vec::new();
        let mut isolated_by = Vec::new();
        let mut baseline = Vec::new();
        let candidates = self
            .namespaced
            .get(&w.key.namespace)
            .into_iter()
            .flatten()
            .chain(self.cluster.iter());
        for reference in candidates {
            let Some(policy) = self.policies.get(reference) else {
                continue;
            };
            if !subject_matches(&policy.subject, &w.key.namespace, &ns_labels, &w.labels) {
                continue;
            }
            let out = match policy.tier {
                Tier::Admin => &mut admin,
                Tier::Baseline => &mut baseline,
                Tier::NetworkPolicy => {
                    if !policy.isolates_egress {
                        continue;
                    }
                    isolated_by.push(reference.clone());
                    &mut allows
                }
            };
            for rule in &policy.egress {
                let destinations = match &rule.peers {
                    None => Destinations::Any,
                    Some(list) => peers
                        .entry((reference.clone(), rule.index))
                        .or_insert_with(|| self.resolve_peers(list))
                        .clone(),
                };
                out.push(Rule {
                    tier: policy.tier,
                    priority: policy.priority,
                    kind: RuleKind::Match {
                        action: rule.action,
                        destinations,
                        ports: rule.ports.clone(),
                        origin: RuleOrigin {
                            policy: reference.clone(),
                            rule_index: rule.index,
                            rule_name: rule.name.clone(),
                        },
                    },
                });
            }
        }
        admin.sort_by(rule_order);
        baseline.sort_by(rule_order);
        allows.sort_by(rule_order);
        let mut rules = admin;
        if isolated_by.is_empty() {
            rules.extend(baseline);
        } else {
            rules.extend(allows);
            isolated_by.sort();
            rules.push(Rule {
                tier: Tier::NetworkPolicy,
                priority: 0,
                kind: RuleKind::Isolation {
                    by: isolated_by.into(),
                },
            });
        }
        rules
    }

    fn resolve_peers(&self, peers: &[Peer]) -> Destinations {
        let mut domains = Vec::new();
        let mut cidrs: BTreeSet<CidrRule> = BTreeSet::new();
        for peer in peers {
            match peer {
                Peer::Domains(list) => domains.extend(list.iter().cloned()),
                Peer::Cidr(c) => {
                    cidrs.insert(c.clone());
                }
                Peer::Pods { namespaces, pods } => {
                    for w in self.peer_workloads(namespaces, pods) {
                        cidrs.extend(w.ips.iter().map(|ip| CidrRule::host(*ip)));
                    }
                }
            }
        }
        domains.sort();
        domains.dedup();
        Destinations::Peers {
            domains,
            cidrs: cidrs.into_iter().collect(),
        }
    }

    fn peer_workloads<'a>(
        &'a self,
        scope: &'a NamespaceScope,
        pods: &'a LabelSelector,
    ) -> impl Iterator<Item = &'a Workload> + 'a {
        let namespaces: Vec<&String> = match scope {
            NamespaceScope::Own(ns) => vec![ns],
            NamespaceScope::Selector(sel) => self
                .by_namespace
                .keys()
                .filter(|ns| sel.matches(&self.labels_of_namespace(ns)))
                .collect(),
        };
        namespaces
            .into_iter()
            .filter_map(|ns| self.by_namespace.get(ns))
            .flatten()
            .filter_map(|k| self.workloads.get(k))
            .filter(move |w| pods.matches(&w.labels))
    }

    /// Adds every workload `policy` applies to.
    fn selected_by(&self, policy: &Policy, out: &mut BTreeSet<WorkloadKey>) {
        let in_namespace =
            |ns: &str, pods: Option<&LabelSelector>, out: &mut BTreeSet<WorkloadKey>| {
                for key in self.by_namespace.get(ns).into_iter().flatten() {
                    if let Some(w) = self.workloads.get(key)
                        && pods.is_none_or(|s| s.matches(&w.labels))
                    {
                        out.insert(key.clone());
                    }
                }
            };
        match &policy.subject {
            Subject::Namespace { namespace, pods } => in_namespace(namespace, Some(pods), out),
            Subject::Namespaces(sel) => {
                for ns in self.by_namespace.keys() {
                    if sel.matches(&self.labels_of_namespace(ns)) {
                        in_namespace(ns, None, out);
                    }
                }
            }
            Subject::Pods { namespaces, pods } => {
                for ns in self.by_namespace.keys() {
                    if namespaces.matches(&self.labels_of_namespace(ns)) {
                        in_namespace(ns, Some(pods), out);
                    }
                }
            }
        }
    }

    /// A workload appeared, changed or left: pods whose rules name it as a peer change too.
    fn peer_dependents(&self, w: &Workload, out: &mut BTreeSet<WorkloadKey>) {
        let ns_labels = self.labels_of_namespace(&w.key.namespace);
        for policy in self.peer_policies() {
            let names_it = policy
                .egress
                .iter()
                .flat_map(|r| r.peers.iter().flatten())
                .any(|p| match p {
                    Peer::Pods { namespaces, pods } => {
                        let ns_ok = match namespaces {
                            NamespaceScope::Own(ns) => *ns == w.key.namespace,
                            NamespaceScope::Selector(sel) => sel.matches(&ns_labels),
                        };
                        ns_ok && pods.matches(&w.labels)
                    }
                    _ => false,
                });
            if names_it {
                self.selected_by(policy, out);
            }
        }
    }

    fn namespace_changed(
        &self,
        name: &str,
        old: &Labels,
        new: &Labels,
        out: &mut BTreeSet<WorkloadKey>,
    ) {
        out.extend(self.by_namespace.get(name).into_iter().flatten().cloned());
        for policy in self.peer_policies() {
            let names_it = policy
                .egress
                .iter()
                .flat_map(|r| r.peers.iter().flatten())
                .any(|p| {
                    matches!(p, Peer::Pods { namespaces: NamespaceScope::Selector(sel), .. }
                    if sel.matches(old) || sel.matches(new))
                });
            if names_it {
                self.selected_by(policy, out);
            }
        }
    }

    fn peer_policies(&self) -> impl Iterator<Item = &Arc<Policy>> {
        self.with_workload_peers
            .iter()
            .filter_map(|r| self.policies.get(r))
    }

    fn labels_of_namespace(&self, name: &str) -> Labels {
        self.namespaces
            .get(name)
            .cloned()
            .unwrap_or_else(|| namespace_labels(name, Labels::new()))
    }

    fn insert_policy(&mut self, policy: Policy) {
        let reference = policy.reference.clone();
        if reference.kind.is_namespaced() {
            self.namespaced
                .entry(reference.namespace.clone())
                .or_default()
                .insert(reference.clone());
        } else {
            self.cluster.insert(reference.clone());
        }
        if policy.has_workload_peers() {
            self.with_workload_peers.insert(reference.clone());
        }
        self.policies.insert(reference, Arc::new(policy));
    }

    fn remove_policy(&mut self, reference: &PolicyRef) -> Option<Arc<Policy>> {
        let old = self.policies.remove(reference)?;
        if let Some(set) = self.namespaced.get_mut(&reference.namespace) {
            set.remove(reference);
        }
        self.cluster.remove(reference);
        self.with_workload_peers.remove(reference);
        Some(old)
    }

    fn index_workload(&mut self, w: &Workload) {
        self.by_namespace
            .entry(w.key.namespace.clone())
            .or_default()
            .insert(w.key.clone());
        for ip in &w.ips {
            self.by_ip.insert(*ip, w.key.clone());
        }
    }

    fn unindex_workload(&mut self, w: &Workload) {
        if let Some(set) = self.by_namespace.get_mut(&w.key.namespace) {
            set.remove(&w.key);
            if set.is_empty() {
                self.by_namespace.remove(&w.key.namespace);
            }
        }
        for ip in &w.ips {
            if self.by_ip.get(ip) == Some(&w.key) {
                self.by_ip.remove(ip);
            }
        }
    }

    /// Loads a derived event read back from the log, without compiling (replay).
    pub fn restore_derived(&mut self, event: EventPayload) {
        match event {
            EventPayload::AllowlistCompiled(list) => {
                let id = list.id().clone();
                let count = self.allowlists.get(&id).map_or(0, |(_, n)| *n);
                self.allowlists.insert(id, (Arc::new(list), count));
            }
            EventPayload::AllowlistReleased(id) => {
                self.allowlists.remove(&id);
            }
            EventPayload::WorkloadBound(b) => {
                self.retain(&b.binding);
                let mut ignored = HashSet::new();
                if let Some(old) = self.bindings.insert(b.workload.clone(), b) {
                    self.release(&old.binding, &mut ignored);
                }
            }
            EventPayload::WorkloadUnbound(key) => {
                let mut ignored = HashSet::new();
                if let Some(old) = self.bindings.remove(&key) {
                    self.release(&old.binding, &mut ignored);
                }
            }
            _ => {}
        }
    }

    /// Loads a source change read back from the log, without compiling (replay). The derived
    /// events that followed it in the log are restored with [`Compiler::restore_derived`].
    pub fn restore_source(&mut self, change: SourceChange) {
        match change {
            SourceChange::ApplyPolicy(p) => {
                self.remove_policy(&p.reference.clone());
                self.insert_policy(p);
            }
            SourceChange::DeletePolicy(r) => {
                self.remove_policy(&r);
            }
            SourceChange::UpsertNamespace(ns) => {
                let labels = namespace_labels(&ns.name, ns.labels);
                self.namespaces.insert(ns.name, labels);
            }
            SourceChange::RemoveNamespace(name) => {
                self.namespaces.remove(&name);
            }
            SourceChange::UpsertWorkload(w) => {
                if let Some(old) = self.workloads.remove(&w.key) {
                    self.unindex_workload(&old);
                }
                self.index_workload(&w);
                self.workloads.insert(w.key.clone(), w);
            }
            SourceChange::RemoveWorkload(key) => {
                if let Some(old) = self.workloads.remove(&key) {
                    self.unindex_workload(&old);
                }
            }
        }
    }
}

/// Namespace labels as Kubernetes keeps them: the name label is always there.
pub fn namespace_labels(name: &str, mut labels: Labels) -> Labels {
    labels.insert(NAMESPACE_NAME_LABEL.to_string(), name.to_string());
    labels
}

fn subject_matches(subject: &Subject, ns: &str, ns_labels: &Labels, pod_labels: &Labels) -> bool {
    match subject {
        Subject::Namespace { namespace, pods } => namespace == ns && pods.matches(pod_labels),
        Subject::Namespaces(sel) => sel.matches(ns_labels),
        Subject::Pods { namespaces, pods } => {
            namespaces.matches(ns_labels) && pods.matches(pod_labels)
        }
    }
}

/// Evaluation order inside a tier: priority, then Deny before Accept before Pass (DESIGN.md's
/// tie-break for equal priorities), then policy and rule position for a stable order.
fn rule_order(a: &Rule, b: &Rule) -> std::cmp::Ordering {
    let key = |r: &Rule| match &r.kind {
        RuleKind::Match { action, origin, .. } => (
            r.priority,
            Some(*action),
            Some((origin.policy.clone(), origin.rule_index)),
        ),
        RuleKind::Isolation { .. } => (r.priority, None, None),
    };
    key(a).cmp(&key(b))
}
