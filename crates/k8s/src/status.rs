//! The status the policy store writes on every ApplicationNetworkPolicy and
//! ClusterNetworkPolicy it reads (both CRDs have the status subresource, so only the
//! controller, with `*/status` RBAC, can set it).
//!
//! `conditions` has the `metav1.Condition` schema, as in the EKS CRDs, kept as a map keyed by
//! `type` (`x-kubernetes-list-type: map`, as the upstream network-policy-api does) so
//! server-side apply from the store replaces its own condition in place. The store's
//! convention:
//!
//! - `Accepted`, status `True`, reason `Compiled`: the store parsed the policy and compiled it
//!   into allowlists at `storeRevision`;
//! - `Accepted`, status `False`, reason `Invalid`: the store's strict parser rejected it; the
//!   message is the parser's, naming the field path (`spec.egress[0].to[1].domainNames[2]:
//!   ...`); nothing of the policy is enforced.
//!
//! The condition and the status carry `observedGeneration`, so a stale status (from before
//! the last edit) is recognisable. `storeRevision` and `selectedPods` describe the version in
//! force (an invalid edit leaves the last accepted version in force); the CRDs print them as
//! columns.

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// The condition type the store sets on each policy.
pub const CONDITION_ACCEPTED: &str = "Accepted";
/// The reason of an `Accepted=True` condition.
pub const REASON_COMPILED: &str = "Compiled";
/// The reason of an `Accepted=False` condition: the policy failed the store's parser.
pub const REASON_INVALID: &str = "Invalid";

/// What the dnsfence policy store made of the policy.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct PolicyStatus {
    /// The latest observations of the policy's state. The store sets `Accepted`: True once
    /// the policy is compiled, False with reason `Invalid` and the parser's message (naming
    /// the field) when it was rejected.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend(
        "x-kubernetes-list-type" = "map",
        "x-kubernetes-list-map-keys" = ["type"]
    ))]
    pub conditions: Option<Vec<Condition>>,

    /// The `.metadata.generation` the store last computed this status for.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// The revision of the store's event log that holds the compiled policy.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub store_revision: Option<i64>,

    /// How many pods the policy selects (its subject), as the store last computed it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub selected_pods: Option<i64>,
}

/// `metav1.Condition`: one aspect of the object's state, with the schema Kubernetes publishes
/// for it (every field but `observedGeneration` required, `type` and `reason` patterns).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct Condition {
    /// When the condition last changed status (RFC 3339).
    #[schemars(extend("format" = "date-time"))]
    pub last_transition_time: String,

    /// A human-readable explanation; for `Invalid`, the parser's message with the field path.
    #[schemars(length(max = 32768))]
    pub message: String,

    /// The `.metadata.generation` the condition was computed from.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0))]
    pub observed_generation: Option<i64>,

    /// A CamelCase, machine-readable reason for the last transition (`Compiled`, `Invalid`).
    #[schemars(
        length(min = 1, max = 1024),
        regex(pattern = r"^[A-Za-z]([A-Za-z0-9_,:]*[A-Za-z0-9_])?$")
    )]
    pub reason: String,

    /// True, False or Unknown.
    pub status: ConditionStatus,

    /// The condition type in CamelCase (`Accepted`), or `domain/CamelCase`.
    #[serde(rename = "type")]
    #[schemars(
        length(max = 316),
        regex(
            pattern = r"^([a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*/)?(([A-Za-z0-9][-A-Za-z0-9_.]*)?[A-Za-z0-9])$"
        )
    )]
    pub type_: String,
}

/// The status of a condition.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
pub enum ConditionStatus {
    True,
    False,
    Unknown,
}
