//! `ApplicationNetworkPolicy` (`networking.k8s.aws/v1alpha1`, namespaced, short name `anp`):
//! a NetworkPolicy whose egress peers may also be `domainNames`.
//!
//! Where the schema comes from: the EKS ApplicationNetworkPolicy Go types
//! (`api/v1alpha1/applicationnetworkpolicy_types.go` of the Amazon network policy controller,
//! the source of the `applicationnetworkpolicies.networking.k8s.aws` CRD that EKS Auto Mode
//! installs) and the CRD controller-gen makes of them:
//!
//! - `spec.podSelector` required; `policyTypes`, `ingress`, `egress` optional, `policyTypes`
//!   items free strings (no enum in the EKS CRD);
//! - `ingress` is `[]networking.NetworkPolicyIngressRule`, unchanged (no domain names there);
//! - an egress rule is `{ports: []NetworkPolicyPort, to: []ApplicationNetworkPolicyPeer}`;
//! - the peer adds `domainNames` (`minItems: 1`, `x-kubernetes-list-type: set`, no
//!   `maxItems`) to `podSelector`, `namespaceSelector` and `ipBlock`, and three CEL rules make
//!   `domainNames` exclusive with each of them;
//! - each domain name matches [`DOMAIN_NAME_PATTERN`];
//! - status: `conditions` (`metav1.Condition`); dnsfence adds `storeRevision` and
//!   `selectedPods` (see [`crate::status`]), which EKS manifests never set.
//!
//! Deliberate differences: `spec` is required (kube's derive; an ANP without a spec has no
//! `podSelector` either, so no valid EKS manifest is refused), `status` has the extra fields
//! above, and `conditions` is a map keyed by `type`. The seed's `allow-github.yaml` and the
//! EKS user guide's example (`examples/eks/`) validate against the generated schema, and the
//! EKS CRD's rejections are checked field by field (`tests/anp_schema.rs`).

use kube_derive::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::netpol::{IpBlock, NetworkPolicyIngressRule, NetworkPolicyPort};
use crate::selector::LabelSelector;
use crate::status::PolicyStatus;

/// The pattern of a `domainNames` entry, as in the EKS CRDs (and the upstream
/// network-policy-api `DomainName`): dot-separated labels of letters, digits, `-` and `_`, at
/// least two, an optional trailing dot, and optionally `*.` in front (the wildcard matches one
/// or more whole labels, never the apex and never part of a label).
///
/// The character class `[a-zA-z0-9]` at the start of each label is kept exactly as EKS writes
/// it (`A-z` also spans `[`, `\`, `]`, `^`, `_` and `` ` ``), so that every name the EKS API
/// accepts is accepted here too; the store's parser rejects those characters with a message
/// naming the field.
pub const DOMAIN_NAME_PATTERN: &str = r"^(\*\.)?([a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.)+[a-zA-z0-9]([-a-zA-Z0-9_]*[a-zA-Z0-9])?\.?$";

/// A domain name peer: an exact name (`github.com`, trailing dot allowed) or a wildcard whose
/// whole leftmost label is `*` (`*.kubernetes.io` matches `blog.kubernetes.io` and
/// `a.b.kubernetes.io`, not `kubernetes.io`).
#[derive(
    Debug, Clone, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize, JsonSchema,
)]
#[serde(transparent)]
pub struct DomainName(#[schemars(regex(pattern = DOMAIN_NAME_PATTERN))] pub String);

/// Egress and ingress rules for the pods `podSelector` selects in the policy's namespace.
/// Egress peers may be domain names: the selected pods can then resolve those names (through
/// the dnsfence gateway) and connect to the addresses in the answers, on the rule's ports.
// The printcolumn(...) entries repeat `type_ = ...`, which clippy takes for duplicated
// attributes of the struct.
#[allow(clippy::duplicated_attributes)]
#[derive(
    CustomResource, Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema,
)]
#[kube(
    crates(kube_core = "::kube_core"),
    group = "networking.k8s.aws",
    version = "v1alpha1",
    kind = "ApplicationNetworkPolicy",
    namespaced,
    shortname = "anp",
    status = "PolicyStatus",
    derive = "PartialEq",
    doc = "ApplicationNetworkPolicy: a NetworkPolicy whose egress peers may be domain names (the EKS API, enforced by dnsfence).",
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
pub struct ApplicationNetworkPolicySpec {
    /// The pods of this namespace the policy applies to (empty: all of them).
    pub pod_selector: LabelSelector,

    /// Ingress, Egress or both. Absent: Ingress, plus Egress when `egress` has rules.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub policy_types: Option<Vec<String>>,

    /// Traffic allowed into the selected pods (the NetworkPolicy ingress rule, unchanged).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ingress: Option<Vec<NetworkPolicyIngressRule>>,

    /// Traffic allowed out of the selected pods. Once any policy selects a pod for Egress,
    /// only what some rule of those policies allows passes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub egress: Option<Vec<ApplicationNetworkPolicyEgressRule>>,
}

/// Outgoing traffic allowed to a peer of `to` (absent or empty: any destination) on a port of
/// `ports` (absent or empty: any port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct ApplicationNetworkPolicyEgressRule {
    /// Destination ports, ORed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ports: Option<Vec<NetworkPolicyPort>>,

    /// Destinations, ORed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub to: Option<Vec<ApplicationNetworkPolicyPeer>>,
}

/// An egress destination: pods (pod and/or namespace selector), an IP block, or domain names.
/// Domain names stand alone in their peer.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-validations" = [
    {
        "rule": "!(has(self.ipBlock) && has(self.domainNames))",
        "message": "ipBlock and domainNames are mutually exclusive"
    },
    {
        "rule": "!(has(self.podSelector) && has(self.domainNames))",
        "message": "podSelector and domainNames are mutually exclusive"
    },
    {
        "rule": "!(has(self.namespaceSelector) && has(self.domainNames))",
        "message": "namespaceSelector and domainNames are mutually exclusive"
    }
]))]
pub struct ApplicationNetworkPolicyPeer {
    /// Domain names the selected pods may reach (allow-only). Exact names or `*.` wildcards
    /// covering one or more labels in front of the rest.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1), extend("x-kubernetes-list-type" = "set"))]
    pub domain_names: Option<Vec<DomainName>>,

    /// An IP block; exclusive with the other fields.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,

    /// Namespaces by label (empty: all). With `podSelector`: those pods in these namespaces.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Pods by label, in the policy's namespace unless `namespaceSelector` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}
