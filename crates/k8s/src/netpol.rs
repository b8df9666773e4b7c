//! The `networking.k8s.io/v1` NetworkPolicy pieces the EKS ApplicationNetworkPolicy embeds
//! unchanged: ports, IP blocks, the ingress rule and its peer. Their schemas are the ones
//! Kubernetes publishes for those types (the EKS CRD is generated from the same Go types):
//! `port` is an int-or-string, `protocol` a free string (TCP when absent), `ipBlock.cidr`
//! required, list fields of ingress rules atomic.

use std::borrow::Cow;

use schemars::{JsonSchema, Schema, SchemaGenerator, json_schema};
use serde::{Deserialize, Serialize};

use crate::selector::LabelSelector;

/// A NetworkPolicy port: a protocol and a port (number or container port name), optionally
/// widened to the range `port..=endPort`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPort {
    /// The last port of a range starting at `port` (inclusive). Only with a numeric `port`, and
    /// not below it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub end_port: Option<i32>,

    /// The port: a number, or the name of a container port. Absent: every port of the
    /// protocol.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "int_or_string")]
    pub port: Option<PortValue>,

    /// TCP, UDP or SCTP. Absent: TCP.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub protocol: Option<String>,
}

/// A Kubernetes IntOrString port.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum PortValue {
    /// A port number.
    Number(i32),
    /// The name of a container port.
    Name(String),
}

impl JsonSchema for PortValue {
    fn schema_name() -> Cow<'static, str> {
        "IntOrString".into()
    }

    fn json_schema(generator: &mut SchemaGenerator) -> Schema {
        int_or_string(generator)
    }
}

/// The schema Kubernetes uses for IntOrString fields (`anyOf` integer or string, marked
/// `x-kubernetes-int-or-string` so the structural-schema rules allow the `anyOf`).
fn int_or_string(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "anyOf": [{"type": "integer"}, {"type": "string"}],
        "x-kubernetes-int-or-string": true
    })
}

/// A CIDR, minus the CIDRs in `except`.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct IpBlock {
    /// The block, for example "192.0.2.0/24" or "2001:db8::/64".
    pub cidr: String,

    /// CIDRs inside `cidr` that the block does not cover.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub except: Option<Vec<String>>,
}

/// A NetworkPolicy peer: pods (by pod and/or namespace selector) or an IP block.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyPeer {
    /// An IP block; no other field may be set with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ip_block: Option<IpBlock>,

    /// Namespaces by label (empty: all). With `podSelector`: those pods in these namespaces;
    /// alone: every pod in them.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub namespace_selector: Option<LabelSelector>,

    /// Pods by label (empty: all), in the policy's namespace unless `namespaceSelector` is set.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub pod_selector: Option<LabelSelector>,
}

/// Traffic allowed into the selected pods: it must match a peer of `from` (absent or empty:
/// any source) and a port of `ports` (absent or empty: any port).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct NetworkPolicyIngressRule {
    /// Sources allowed by this rule, ORed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub from: Option<Vec<NetworkPolicyPeer>>,

    /// Destination ports on the selected pods, ORed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub ports: Option<Vec<NetworkPolicyPort>>,
}
