//! The envelope every object shares: apiVersion, kind, metadata and an ignored status.

use std::collections::BTreeMap;

use serde::Deserialize;
use serde::de::IgnoredAny;
use serde_yaml::Value;

use super::fields;
use super::findings::{Findings, REQUIRED};
use crate::model::{PolicyKind, PolicyRef};
use crate::selector::LabelSelector;

/// A whole object of one kind, strict at the top level as everywhere else. `status` is
/// accepted so that objects copied from `kubectl get -o yaml` apply as they are.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct Document<S> {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    pub metadata: ObjectMeta,
    pub spec: S,
    #[serde(rename = "status")]
    _status: Option<IgnoredAny>,
}

/// metav1.ObjectMeta: the fields a user or the API server may write; anything else is a typo.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ObjectMeta {
    pub name: Option<String>,
    pub namespace: Option<String>,
    pub labels: Option<BTreeMap<String, String>>,
    // Accepted so that server-written objects parse; dnsfence has no use for their values.
    #[serde(rename = "annotations")]
    _annotations: Option<BTreeMap<String, String>>,
    #[serde(rename = "uid")]
    _uid: Option<String>,
    #[serde(rename = "resourceVersion")]
    _resource_version: Option<String>,
    #[serde(rename = "generation")]
    _generation: Option<i64>,
    #[serde(rename = "creationTimestamp")]
    _creation_timestamp: Option<String>,
    #[serde(rename = "deletionTimestamp")]
    _deletion_timestamp: Option<String>,
    #[serde(rename = "deletionGracePeriodSeconds")]
    _deletion_grace_period_seconds: Option<i64>,
    #[serde(rename = "finalizers")]
    _finalizers: Option<Vec<String>>,
    #[serde(rename = "ownerReferences")]
    _owner_references: Option<Vec<IgnoredAny>>,
    #[serde(rename = "managedFields")]
    _managed_fields: Option<Vec<IgnoredAny>>,
    #[serde(rename = "generateName")]
    _generate_name: Option<String>,
    #[serde(rename = "selfLink")]
    _self_link: Option<String>,
}

/// What can be read of a document before it is parsed strictly: enough to name it in errors,
/// to pick its parser and to find duplicates even when the object itself is invalid.
#[derive(Debug, Clone, Default)]
pub(super) struct Identity {
    pub api_version: Option<String>,
    pub kind: Option<String>,
    pub name: Option<String>,
    pub namespace: Option<String>,
}

impl Identity {
    pub(super) fn read(document: &Value) -> Identity {
        let text = |value: Option<&Value>| {
            value
                .and_then(Value::as_str)
                .filter(|s| !s.is_empty())
                .map(str::to_string)
        };
        let metadata = document.get("metadata");
        Identity {
            api_version: text(document.get("apiVersion")),
            kind: text(document.get("kind")),
            name: text(metadata.and_then(|m| m.get("name"))),
            namespace: text(metadata.and_then(|m| m.get("namespace"))),
        }
    }

    /// The namespace a namespaced object lands in: its own, else the caller's default.
    fn effective_namespace<'a>(&'a self, default_namespace: &'a str) -> &'a str {
        self.namespace.as_deref().unwrap_or(default_namespace)
    }

    /// How errors name the object: `namespace/name`, `name` for cluster-scoped kinds, or the
    /// document's location when it has no name. `kind` is `None` for unsupported kinds, which
    /// are named by what their metadata says.
    pub(super) fn object_label(
        &self,
        kind: Option<PolicyKind>,
        default_namespace: &str,
        location: &str,
    ) -> String {
        let Some(name) = &self.name else {
            return location.to_string();
        };
        match (kind, &self.namespace) {
            (Some(kind), _) if kind.is_namespaced() => {
                format!("{}/{name}", self.effective_namespace(default_namespace))
            }
            (Some(_), _) | (None, None) => name.clone(),
            (None, Some(namespace)) => format!("{namespace}/{name}"),
        }
    }

    pub(super) fn reference(&self, kind: PolicyKind, default_namespace: &str) -> Option<PolicyRef> {
        let name = self.name.clone()?;
        let namespace = if kind.is_namespaced() {
            self.effective_namespace(default_namespace).to_string()
        } else {
            String::new()
        };
        Some(PolicyRef {
            kind,
            namespace,
            name,
        })
    }
}

/// Checks name, namespace and labels; returns the object's reference when they are valid.
pub(super) fn validate(
    findings: &mut Findings,
    kind: PolicyKind,
    metadata: &ObjectMeta,
    default_namespace: &str,
) -> Option<PolicyRef> {
    let name = match metadata.name.as_deref() {
        None | Some("") => {
            findings.invalid("metadata.name", REQUIRED);
            None
        }
        Some(name) => match fields::dns_subdomain(name) {
            Ok(()) => Some(name.to_string()),
            Err(reason) => {
                findings.invalid("metadata.name", reason);
                None
            }
        },
    };
    let written_namespace = metadata.namespace.as_deref().filter(|ns| !ns.is_empty());
    let namespace = if kind.is_namespaced() {
        let namespace = written_namespace.unwrap_or(default_namespace);
        match fields::dns_label(namespace) {
            Ok(()) => Some(namespace.to_string()),
            Err(reason) => {
                let reason = if written_namespace.is_none() {
                    format!("{reason} (the default namespace, as metadata.namespace is not set)")
                } else {
                    reason
                };
                findings.invalid("metadata.namespace", reason);
                None
            }
        }
    } else if written_namespace.is_some() {
        findings.invalid(
            "metadata.namespace",
            format!(
                "{} is cluster-scoped: metadata.namespace must not be set",
                kind.kind()
            ),
        );
        None
    } else {
        Some(String::new())
    };
    if let Some(labels) = &metadata.labels {
        // The rules for object labels are those of matchLabels.
        let as_selector = LabelSelector {
            match_labels: labels.clone(),
            match_expressions: Vec::new(),
        };
        if let Err((suffix, reason)) = as_selector.validate() {
            let key = suffix.strip_prefix("matchLabels.").unwrap_or(&suffix);
            findings.invalid(format!("metadata.labels.{key}"), reason);
        }
    }
    Some(PolicyRef {
        kind,
        namespace: namespace?,
        name: name?,
    })
}
