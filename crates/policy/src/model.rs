//! The domain types every service shares: workloads, namespaces, compiled allowlists and the
//! events of the log. Generated protobuf types never leak past `dnsfence-api`; these do.

use std::collections::BTreeMap;
use std::fmt;
use std::net::IpAddr;
use std::sync::Arc;

use ipnet::IpNet;

use crate::domain::DomainPattern;
use crate::ports::PortRange;

/// Kubernetes labels. Ordered so that hashing and printing are deterministic.
pub type Labels = BTreeMap<String, String>;

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Namespace {
    pub name: String,
    pub labels: Labels,
}

/// Identity of a pod: namespace and name.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct WorkloadKey {
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for WorkloadKey {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}/{}", self.namespace, self.name)
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Workload {
    pub key: WorkloadKey,
    pub labels: Labels,
    pub ips: Vec<IpAddr>,
    pub node: String,
}

/// Which policy kind an object is. The two ClusterNetworkPolicy groups share semantics but
/// are distinct objects (a cluster may hold both with the same name).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum PolicyKind {
    NetworkPolicy,
    ApplicationNetworkPolicy,
    /// `networking.k8s.aws/v1alpha1`
    ClusterNetworkPolicy,
    /// `policy.networking.k8s.io/v1alpha2`
    UpstreamClusterNetworkPolicy,
}

impl PolicyKind {
    pub const ALL: [PolicyKind; 4] = [
        PolicyKind::NetworkPolicy,
        PolicyKind::ApplicationNetworkPolicy,
        PolicyKind::ClusterNetworkPolicy,
        PolicyKind::UpstreamClusterNetworkPolicy,
    ];

    pub fn api_version(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "networking.k8s.io/v1",
            PolicyKind::ApplicationNetworkPolicy | PolicyKind::ClusterNetworkPolicy => {
                "networking.k8s.aws/v1alpha1"
            }
            PolicyKind::UpstreamClusterNetworkPolicy => "policy.networking.k8s.io/v1alpha2",
        }
    }

    pub fn kind(self) -> &'static str {
        match self {
            PolicyKind::NetworkPolicy => "NetworkPolicy",
            PolicyKind::ApplicationNetworkPolicy => "ApplicationNetworkPolicy",
            PolicyKind::ClusterNetworkPolicy | PolicyKind::UpstreamClusterNetworkPolicy => {
                "ClusterNetworkPolicy"
            }
        }
    }

    pub fn is_namespaced(self) -> bool {
        matches!(
            self,
            PolicyKind::NetworkPolicy | PolicyKind::ApplicationNetworkPolicy
        )
    }

    pub fn from_type(api_version: &str, kind: &str) -> Option<PolicyKind> {
        PolicyKind::ALL
            .into_iter()
            .find(|k| k.api_version() == api_version && k.kind() == kind)
    }

    /// The `apiVersion/kind` list printed when a manifest has an unsupported type.
    pub fn supported_list() -> String {
        PolicyKind::ALL
            .iter()
            .map(|k| format!("{}/{}", k.api_version(), k.kind()))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

impl fmt::Display for PolicyKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.kind())?;
        if *self == PolicyKind::UpstreamClusterNetworkPolicy {
            f.write_str(".policy.networking.k8s.io")?;
        }
        Ok(())
    }
}

/// Identity of a policy object.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PolicyRef {
    pub kind: PolicyKind,
    /// Empty for cluster-scoped kinds.
    pub namespace: String,
    pub name: String,
}

impl fmt::Display for PolicyRef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.namespace.is_empty() {
            write!(f, "{} {}", self.kind, self.name)
        } else {
            write!(f, "{} {}/{}", self.kind, self.namespace, self.name)
        }
    }
}

/// A policy object as stored in the log: the manifest exactly as the user wrote it, so `get`
/// shows what was applied and a replay re-parses with the same code.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PolicyRecord {
    pub reference: PolicyRef,
    /// Bumped on every apply that changes the manifest.
    pub generation: u64,
    pub manifest: String,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Tier {
    Admin,
    NetworkPolicy,
    Baseline,
}

impl fmt::Display for Tier {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Tier::Admin => "Admin",
            Tier::NetworkPolicy => "NetworkPolicy",
            Tier::Baseline => "Baseline",
        })
    }
}

/// Ordered so that, within one Admin priority, Deny sorts before Accept before Pass (the
/// sig-network tie-break DESIGN.md adopts).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Action {
    Deny,
    Accept,
    Pass,
}

impl fmt::Display for Action {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Action::Deny => "Deny",
            Action::Accept => "Accept",
            Action::Pass => "Pass",
        })
    }
}

/// An IP block with exceptions (NetworkPolicy `ipBlock`, CNP `networks`, or a selected pod's
/// address as a host prefix).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CidrRule {
    pub cidr: IpNet,
    pub except: Vec<IpNet>,
}

impl CidrRule {
    pub fn host(ip: IpAddr) -> CidrRule {
        CidrRule {
            cidr: IpNet::from(ip),
            except: Vec::new(),
        }
    }

    pub fn contains(&self, ip: &IpAddr) -> bool {
        self.cidr.contains(ip) && !self.except.iter().any(|e| e.contains(ip))
    }
}

/// Where a compiled rule came from, so every verdict can name its cause.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct RuleOrigin {
    pub policy: PolicyRef,
    /// Index in the policy's `egress` list.
    pub rule_index: u32,
    /// The rule's `name` (ClusterNetworkPolicy rules have one).
    pub rule_name: String,
}

impl fmt::Display for RuleOrigin {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} egress[{}]", self.policy, self.rule_index)?;
        if !self.rule_name.is_empty() {
            write!(f, " ({})", self.rule_name)?;
        }
        Ok(())
    }
}

/// Which destinations a compiled rule covers.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Destinations {
    /// An egress rule without `to`: every destination.
    Any,
    Peers {
        domains: Vec<DomainPattern>,
        cidrs: Vec<CidrRule>,
    },
}

/// The compiled kinds of rule. `Isolation` closes the NetworkPolicy tier for a pod that some
/// NetworkPolicy/ApplicationNetworkPolicy selects for Egress: what its allows did not accept
/// is denied there, and the Baseline tier is never reached.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum RuleKind {
    Match {
        action: Action,
        destinations: Destinations,
        /// Empty: every port and protocol.
        ports: Vec<PortRange>,
        origin: RuleOrigin,
    },
    Isolation {
        /// The policies that isolate the pod, sorted; shared with the decisions that name them.
        by: Arc<[PolicyRef]>,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Rule {
    pub tier: Tier,
    /// 0–1000 for ClusterNetworkPolicy tiers; 0 in the NetworkPolicy tier.
    pub priority: u32,
    pub kind: RuleKind,
}

/// Content address of an allowlist: identical rule lists share one id.
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct AllowlistId(pub String);

impl fmt::Display for AllowlistId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.0)
    }
}

/// Where a workload stands: enforced by an allowlist, or selected by no policy at all (its
/// fate is then the node default, DefaultAllow or DefaultDeny).
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum Binding {
    Enforced(AllowlistId),
    Unenforced,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct WorkloadBinding {
    pub workload: WorkloadKey,
    pub ips: Vec<IpAddr>,
    pub node: String,
    pub binding: Binding,
}

/// One entry of the event log.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum EventPayload {
    PolicyApplied(PolicyRecord),
    PolicyDeleted(PolicyRef),
    NamespaceUpserted(Namespace),
    NamespaceRemoved(String),
    WorkloadUpserted(Workload),
    WorkloadRemoved(WorkloadKey),
    AllowlistCompiled(crate::allowlist::Allowlist),
    /// No workload uses the allowlist any more; consumers may drop it.
    AllowlistReleased(AllowlistId),
    WorkloadBound(WorkloadBinding),
    /// The workload is gone; consumers forget its addresses.
    WorkloadUnbound(WorkloadKey),
}

impl EventPayload {
    /// Derived events are what the gateways and enforcers consume; source events are the
    /// inputs the store compiled them from.
    pub fn is_derived(&self) -> bool {
        matches!(
            self,
            EventPayload::AllowlistCompiled(_)
                | EventPayload::AllowlistReleased(_)
                | EventPayload::WorkloadBound(_)
                | EventPayload::WorkloadUnbound(_)
        )
    }

    pub fn name(&self) -> &'static str {
        match self {
            EventPayload::PolicyApplied(_) => "PolicyApplied",
            EventPayload::PolicyDeleted(_) => "PolicyDeleted",
            EventPayload::NamespaceUpserted(_) => "NamespaceUpserted",
            EventPayload::NamespaceRemoved(_) => "NamespaceRemoved",
            EventPayload::WorkloadUpserted(_) => "WorkloadUpserted",
            EventPayload::WorkloadRemoved(_) => "WorkloadRemoved",
            EventPayload::AllowlistCompiled(_) => "AllowlistCompiled",
            EventPayload::AllowlistReleased(_) => "AllowlistReleased",
            EventPayload::WorkloadBound(_) => "WorkloadBound",
            EventPayload::WorkloadUnbound(_) => "WorkloadUnbound",
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Event {
    pub revision: u64,
    pub payload: EventPayload,
}
