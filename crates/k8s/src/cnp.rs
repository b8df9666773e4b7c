//! `ClusterNetworkPolicy` (`networking.k8s.aws/v1alpha1`, cluster-scoped, short name `cnp`):
//! the EKS admin policy, with tiers (`Admin`, `Baseline`), a priority within the tier and
//! ordered rules whose action is `Accept`, `Deny` or `Pass`.
//!
//! Where the schema comes from: the EKS ClusterNetworkPolicy Go types
//! (`api/v1alpha1/clusternetworkpolicy_types.go` of the Amazon network policy controller, the
//! source of the `clusternetworkpolicies.networking.k8s.aws` CRD EKS installs) and the CRD
//! controller-gen makes of them:
//!
//! - `spec.tier` (enum `Admin`, `Baseline`), `spec.priority` (int32, 0–1000) and
//!   `spec.subject` required; the subject sets exactly one of `namespaces` (a label selector)
//!   or `pods` (`namespaceSelector` and `podSelector`, both required): `minProperties` =
//!   `maxProperties` = 1;
//! - `ingress` and `egress`: at most 100 rules each; a rule has `action` (enum `Accept`,
//!   `Deny`, `Pass`, required), `name` (at most 100 characters), `from`/`to` (required, 1–100
//!   peers) and `ports` (1–100 when present);
//! - a peer sets exactly one field (`minProperties` = `maxProperties` = 1): ingress
//!   `namespaces` or `pods`; egress also `networks` (1–25 CIDRs of at most 43 characters, a
//!   set) or `domainNames` (1–25, a set, each matching [`DOMAIN_NAME_PATTERN`]);
//! - a port sets `portNumber` (`port` 1–65535 and `protocol`, which defaults to TCP),
//!   `portRange` (`start`, `end` 1–65535, protocol defaulting to TCP, CEL `start < end`) or
//!   `namedPort`;
//! - CEL on egress rules: `domainNames` peers may not be used with action `Deny` (EKS allows
//!   them with `Accept` and `Pass`; the store's parser, following the upstream
//!   network-policy-api, also rejects `Pass` and reports it in the policy's status);
//! - status: `conditions`; dnsfence adds `storeRevision` and `selectedPods`.
//!
//! The upstream `policy.networking.k8s.io/v1alpha2` ClusterNetworkPolicy (with the
//! `protocols` port notation) is not defined here: dnsfence reads it when its CRD is installed
//! in the cluster, and does not install it. Deliberate differences from the EKS CRD: `spec` is
//! required (kube's derive; the EKS spec's own fields are required anyway), `tier` is a plain
//! enum (controller-gen repeats the enum in an `allOf`), and `portNumber.protocol` is not
//! listed as required (it has a default, so the API server fills it in before validation
//! either way). The EKS user guide's example and the EKS controller's test manifests
//! (`examples/eks/`) validate against the generated schema; `tests/cnp_schema.rs` checks the
//! rejections field by field.

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

#[cfg(doc)]
use crate::anp::DOMAIN_NAME_PATTERN;
use crate::anp::DomainName;
use crate::selector::LabelSelector;
use crate::status::PolicyStatus;

/// A cluster-wide policy for the pods of `subject`. Admin-tier rules are evaluated before any
/// NetworkPolicy or ApplicationNetworkPolicy and cannot be overridden by them; Baseline-tier
/// rules after them, as overridable defaults. Within a tier, lower `priority` first; within a
/// policy, rules in order; the first matching rule decides (Pass: go on with the next tier).
// The printcolumn(...) entries repeat `type_ = ...`, which clippy takes for duplicated
// attributes of the struct.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "networking.k8s.aws",
    version = "v1alpha1",
    kind = "ClusterNetworkPolicy",
    shortname = "cnp",
    status = "PolicyStatus",
    derive = "PartialEq",
    doc = "ClusterNetworkPolicy: a cluster-wide admin policy with tiers, priorities and Accept/Deny/Pass rules (the EKS API, enforced by dnsfence).",
    printcolumn(name = "Tier", type_ = "string", json_path = ".spec.tier"),
    printcolumn(name = "Priority", type_ = "integer", json_path = ".spec.priority"),
    printcolumn(
        name = "Accepted",
        type_ = "string",
        description = "Whether the dnsfence policy store accepted the policy",
        json_path = ".status.conditions[?(@.type==\"Accepted\")].status"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        description = "Pods the policy selects",
        json_path = ".status.selectedPods"
    ),
    printcolumn(
        name = "Revision",
        type_ = "integer",
        description = "Store revision that compiled the policy",
        json_path = ".status.storeRevision",
        priority = 1
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetworkPolicySpec {
    /// Admin (evaluated before namespace policies, not overridable) or Baseline (after them,
    /// overridable).
    pub tier: Tier,

    /// Order within the tier, 0–1000: lower values are evaluated first.
    #[schemars(range(min = 0, max = 1000))]
    pub priority: i32,

    /// The pods the policy applies to: exactly one of `namespaces` or `pods`.
    pub subject: Subject,

    /// Rules for traffic into the subject's pods, in order (dnsfence enforces egress only;
    /// ingress rules are validated and kept).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub ingress: Option<Vec<IngressRule>>,

    /// Rules for traffic out of the subject's pods, in order: the first that matches decides.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub egress: Option<Vec<EgressRule>>,
}

/// A policy tier.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum Tier {
    Admin,
    Baseline,
}

/// What a matching rule does.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum RuleAction {
    Accept,
    Deny,
    Pass,
}

/// The pods a policy (or a peer) selects: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct Subject {
    /// Every pod of the namespaces this selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,

    /// The pods matching `podSelector` in the namespaces matching `namespaceSelector`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// Pods by label within namespaces by label (an empty selector matches everything).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NamespacedPod {
    /// The namespaces.
    pub namespace_selector: LabelSelector,

    /// The pods within them.
    pub pod_selector: LabelSelector,
}

/// An ingress rule: `action` for traffic from a peer of `from` on a port of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IngressRule {
    /// What the rule does with matching traffic.
    pub action: RuleAction,

    /// Sources (1–100), ORed.
    #[schemars(length(min = 1, max = 100))]
    pub from: Vec<IngressPeer>,

    /// A name for logs and status, at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,

    /// Destination ports on the subject's pods (1–100), ORed. Absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<ClusterNetworkPolicyPort>>,
}

/// An egress rule: `action` for traffic to a peer of `to` on a port of `ports`.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "!(self.action == 'Deny' && self.to.exists(peer, has(peer.domainNames)))",
    "message": "domainNames peer cannot be used with Deny action, only Accept and Pass actions are supported for domainNames"
}]))]
pub struct EgressRule {
    /// What the rule does with matching traffic.
    pub action: RuleAction,

    /// A name for logs and status, at most 100 characters.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 100))]
    pub name: Option<String>,

    /// Destination ports (1–100), ORed. Absent: every port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 100))]
    pub ports: Option<Vec<ClusterNetworkPolicyPort>>,

    /// Destinations (1–100), ORed.
    #[schemars(length(min = 1, max = 100))]
    pub to: Vec<EgressPeer>,
}

/// A source of ingress traffic: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct IngressPeer {
    /// Every pod of the namespaces this selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,

    /// Pods by label within namespaces by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A destination of egress traffic: exactly one field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("minProperties" = 1, "maxProperties" = 1))]
pub struct EgressPeer {
    /// Domain names (1–25): exact names or `*.` wildcards. Not with action Deny.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 25), extend("x-kubernetes-list-type" = "set"))]
    pub domain_names: Option<Vec<DomainName>>,

    /// Every pod of the namespaces this selector matches.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespaces: Option<LabelSelector>,

    /// CIDRs (1–25), IPv4 or IPv6, for example "198.51.100.0/24" or "2001:db8::/32".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(
        length(min = 1, max = 25),
        inner(length(max = 43)),
        extend("x-kubernetes-list-type" = "set")
    )]
    pub networks: Option<Vec<String>>,

    /// Pods by label within namespaces by label.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pods: Option<NamespacedPod>,
}

/// A destination port: exactly one of `portNumber`, `portRange` or `namedPort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ClusterNetworkPolicyPort {
    /// The name of a container port (not supported by dnsfence: the store reports it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub named_port: Option<String>,

    /// One port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_number: Option<PortNumber>,

    /// A range of ports.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub port_range: Option<PortRange>,
}

/// One port of one protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PortNumber {
    /// The port, 1–65535.
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// TCP, UDP or SCTP (default TCP).
    #[serde(default = "tcp")]
    pub protocol: String,
}

/// The ports `start..=end` of one protocol.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [{
    "rule": "self.start < self.end",
    "message": "Start port must be less than End port"
}]))]
pub struct PortRange {
    /// The last port of the range, 1–65535, above `start`.
    #[schemars(range(min = 1, max = 65535))]
    pub end: i32,

    /// TCP, UDP or SCTP (default TCP).
    #[serde(default = "tcp")]
    pub protocol: String,

    /// The first port of the range, 1–65535, below `end`.
    #[schemars(range(min = 1, max = 65535))]
    pub start: i32,
}

fn tcp() -> String {
    "TCP".to_string()
}
