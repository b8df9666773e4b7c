//! dnsfence's Kubernetes custom resources, as Rust types, and the CRDs generated from them.
//!
//! - [`ApplicationNetworkPolicy`] (`networking.k8s.aws/v1alpha1`, namespaced, `anp`): the EKS
//!   API, same group, kind, short name, schema and validation rules, so a manifest written for
//!   EKS applies unchanged (see [`anp`] for where each rule comes from);
//! - [`ClusterNetworkPolicy`] (`networking.k8s.aws/v1alpha1`, cluster-scoped, `cnp`): the EKS
//!   admin policy (see [`cnp`]). The upstream `policy.networking.k8s.io/v1alpha2`
//!   ClusterNetworkPolicy is read by the store when its CRD is in the cluster; dnsfence does
//!   not install it;
//! - both have a status subresource with [`PolicyStatus`]: the `Accepted` condition the store
//!   sets (with the parser's message when it rejects a policy), the store revision that
//!   compiled it and how many pods it selects.
//!
//! The `crdgen` binary writes `deploy/crds/<plural>.<group>.yaml` from [`crd::crd_files`];
//! a test fails when the committed files differ. The policy store's controller reads these
//! objects as `DynamicObject`s and parses them with `dnsfence-policy`'s strict parser; these
//! types define what the API server admits before that.

pub mod anp;
pub mod cnp;
pub mod crd;
pub mod netpol;
pub mod selector;
pub mod status;

pub use anp::{ApplicationNetworkPolicy, ApplicationNetworkPolicySpec, DomainName};
pub use cnp::{ClusterNetworkPolicy, ClusterNetworkPolicySpec};
pub use crd::{CrdFile, crd_files};
pub use status::{Condition, ConditionStatus, PolicyStatus};

/// Errors of CRD generation.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("serializing a CRD to JSON: {0}")]
    Serialize(#[source] serde_json::Error),
    #[error("serializing a CRD to YAML: {0}")]
    Yaml(#[source] serde_yaml::Error),
    #[error("the generated CRD {0} has no openAPIV3Schema")]
    MissingSchema(String),
}
