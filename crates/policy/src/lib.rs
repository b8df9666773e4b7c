//! The dnsfence policy language.
//!
//! - [`manifest`]: strict parsing of `ApplicationNetworkPolicy`, `ClusterNetworkPolicy` (both
//!   groups) and `NetworkPolicy` manifests into [`policy::Policy`], with errors that name the
//!   object, the field path and the reason.
//! - [`domain`]: domain-name patterns and the reversed-label trie.
//! - [`compile`]: policies + namespaces + workloads → content-addressed [`allowlist::Allowlist`]s
//!   and workload bindings, incrementally.
//! - [`allowlist`]: first-match evaluation of names and addresses (what the gateway, the
//!   enforcer and `dnsfence explain` all use).

pub mod allowlist;
pub mod compile;
pub mod domain;
pub mod error;
pub mod manifest;
pub mod model;
pub mod policy;
pub mod ports;
pub mod selector;

pub use error::{ManifestError, ManifestErrorKind};
