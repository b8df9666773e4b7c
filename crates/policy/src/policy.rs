//! The validated, kind-independent form of a policy object. Manifests of all four kinds parse
//! into this; the compiler works only on it.

use crate::domain::DomainPattern;
use crate::model::{Action, CidrRule, PolicyRef, Tier};
use crate::ports::PortRange;
use crate::selector::LabelSelector;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Policy {
    pub reference: PolicyRef,
    pub tier: Tier,
    /// 0–1000 for ClusterNetworkPolicy; 0 for the NetworkPolicy tier.
    pub priority: u32,
    pub subject: Subject,
    /// NetworkPolicy tier only: the policy lists `Egress` in its policyTypes (explicitly or by
    /// the Kubernetes defaulting rule), so the pods it selects are isolated for egress.
    pub isolates_egress: bool,
    /// Egress rules in manifest order.
    pub egress: Vec<EgressRule>,
}

/// Which pods a policy applies to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Subject {
    /// NetworkPolicy / ApplicationNetworkPolicy: pods of one namespace.
    Namespace {
        namespace: String,
        pods: LabelSelector,
    },
    /// ClusterNetworkPolicy `subject.namespaces`: every pod of the selected namespaces.
    Namespaces(LabelSelector),
    /// ClusterNetworkPolicy `subject.pods`.
    Pods {
        namespaces: LabelSelector,
        pods: LabelSelector,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct EgressRule {
    /// Position in the manifest's `egress` list.
    pub index: u32,
    /// ClusterNetworkPolicy rule `name`; empty otherwise.
    pub name: String,
    /// Always `Accept` in the NetworkPolicy tier.
    pub action: Action,
    /// `None`: the rule has no `to` (every destination).
    pub peers: Option<Vec<Peer>>,
    /// Empty: every port and protocol.
    pub ports: Vec<PortRange>,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Peer {
    Domains(Vec<DomainPattern>),
    Cidr(CidrRule),
    /// Pods chosen by selectors; compiled to their addresses.
    Pods {
        namespaces: NamespaceScope,
        pods: LabelSelector,
    },
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NamespaceScope {
    /// The policy's own namespace (a NetworkPolicy peer with only `podSelector`).
    Own(String),
    Selector(LabelSelector),
}

impl Policy {
    /// Whether any peer depends on other workloads or namespaces (their addresses end up in
    /// the compiled rules, so changes to them recompile the pods this policy selects).
    pub fn has_workload_peers(&self) -> bool {
        self.egress.iter().any(|r| {
            r.peers
                .iter()
                .flatten()
                .any(|p| matches!(p, Peer::Pods { .. }))
        })
    }
}
