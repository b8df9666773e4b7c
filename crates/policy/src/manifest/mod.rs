//! Strict parsing of policy manifests into [`Policy`].
//!
//! Accepted: `networking.k8s.io/v1` NetworkPolicy, `networking.k8s.aws/v1alpha1`
//! ApplicationNetworkPolicy and ClusterNetworkPolicy, `policy.networking.k8s.io/v1alpha2`
//! ClusterNetworkPolicy, and `v1` List (or a typed `<Kind>List`) of those. Unknown fields,
//! wrong types and values the APIs forbid are errors naming the object, the field path and
//! the reason: a policy that means something other than what its author thinks is worse than
//! a rejected one.

mod cnp;
mod cnp_ports;
mod documents;
mod fields;
mod findings;
mod meta;
mod netpol;

use std::collections::HashMap;

use serde::Deserialize;
use serde_yaml::Value;

use crate::error::{ManifestError, ManifestErrorKind};
use crate::model::{PolicyKind, PolicyRef};
use crate::policy::Policy;
use documents::Content;
use findings::{Findings, REQUIRED};
use meta::Identity;

/// One accepted object of a manifest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ParsedObject {
    /// The validated policy; its reference (kind, namespace, name) identifies the object.
    pub policy: Policy,
    /// The document's text exactly as written (for YAML: its lines without the `---`
    /// separator lines; for JSON: the value's text). For an item of a `List`, the item
    /// re-serialized as YAML.
    pub manifest: String,
}

/// Parses a YAML (multi-document, `---` separated) or JSON text.
///
/// `default_namespace` is used for namespaced kinds whose `metadata.namespace` is missing
/// (kubectl's behaviour; the CLI passes "default"). Returns every object, or every error
/// found: all documents are checked, not just up to the first error. Documents holding only
/// comments and whitespace are skipped. The same kind+namespace+name twice in the text is an
/// error of kind [`ManifestErrorKind::Duplicate`].
pub fn parse_documents(
    text: &str,
    default_namespace: &str,
) -> Result<Vec<ParsedObject>, Vec<ManifestError>> {
    let mut collector = Collector {
        default_namespace,
        objects: Vec::new(),
        errors: Vec::new(),
        first_seen: HashMap::new(),
    };
    for document in documents::split(text) {
        let location = format!("document {}", document.number);
        match document.content {
            Content::Empty => {}
            Content::Syntax(reason) => collector.errors.push(ManifestError {
                kind: ManifestErrorKind::Syntax,
                object: location,
                path: String::new(),
                reason,
            }),
            Content::Parsed(value) => {
                collector.document(value, document.manifest, &location, Nesting::TopLevel);
            }
        }
    }
    if collector.errors.is_empty() {
        Ok(collector.objects)
    } else {
        Err(collector.errors)
    }
}

/// Whether a document may itself be a List (Lists do not nest).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Nesting {
    TopLevel,
    ListItem,
}

/// `kind: List`, as `kubectl get -o yaml` prints several objects.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListDocument {
    #[serde(rename = "apiVersion")]
    _api_version: String,
    #[serde(rename = "kind")]
    _kind: String,
    #[serde(rename = "metadata")]
    _metadata: Option<ListMeta>,
    items: Option<Vec<Value>>,
}

/// metav1.ListMeta.
#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListMeta {
    #[serde(rename = "resourceVersion")]
    _resource_version: Option<String>,
    #[serde(rename = "continue")]
    _continue: Option<String>,
    #[serde(rename = "remainingItemCount")]
    _remaining_item_count: Option<i64>,
    #[serde(rename = "selfLink")]
    _self_link: Option<String>,
}

/// What a document is, by its apiVersion and kind.
#[derive(Debug)]
enum DocumentType {
    Policy(PolicyKind),
    /// `v1 List`, or a typed list such as `networking.k8s.io/v1 NetworkPolicyList` whose
    /// items may omit their apiVersion and kind (the API server leaves them out).
    List {
        item_kind: Option<PolicyKind>,
    },
    Unsupported {
        api_version: String,
        kind: String,
    },
    MissingField(&'static str),
}

impl DocumentType {
    fn of(identity: &Identity) -> DocumentType {
        let Some(api_version) = identity.api_version.clone() else {
            return DocumentType::MissingField("apiVersion");
        };
        let Some(kind) = identity.kind.clone() else {
            return DocumentType::MissingField("kind");
        };
        if let Some(policy_kind) = PolicyKind::from_type(&api_version, &kind) {
            return DocumentType::Policy(policy_kind);
        }
        if api_version == "v1" && kind == "List" {
            return DocumentType::List { item_kind: None };
        }
        let typed_list = kind
            .strip_suffix("List")
            .and_then(|item| PolicyKind::from_type(&api_version, item));
        if typed_list.is_some() {
            return DocumentType::List {
                item_kind: typed_list,
            };
        }
        DocumentType::Unsupported { api_version, kind }
    }
}

struct Collector<'a> {
    default_namespace: &'a str,
    objects: Vec<ParsedObject>,
    errors: Vec<ManifestError>,
    /// Where each object was first defined, so that a Duplicate error can point at it.
    first_seen: HashMap<PolicyRef, String>,
}

impl Collector<'_> {
    /// Parses one document (or List item); `location` names it when it has no name.
    fn document(&mut self, value: Value, manifest: String, location: &str, nesting: Nesting) {
        if !value.is_mapping() {
            self.errors.push(ManifestError {
                kind: ManifestErrorKind::Invalid,
                object: location.to_string(),
                path: String::new(),
                reason: format!(
                    "a document must be a mapping with apiVersion, kind, metadata and spec, found {}",
                    value_type(&value)
                ),
            });
            return;
        }
        let identity = Identity::read(&value);
        let document_type = DocumentType::of(&identity);
        let kind = match &document_type {
            DocumentType::Policy(kind) => Some(*kind),
            _ => None,
        };
        let object = identity.object_label(kind, self.default_namespace, location);
        let mut findings = Findings::new(object);
        match document_type {
            DocumentType::Policy(kind) => {
                self.check_duplicate(&identity, kind, location, &mut findings);
                let policy = match kind {
                    PolicyKind::NetworkPolicy | PolicyKind::ApplicationNetworkPolicy => {
                        netpol::parse(&mut findings, kind, value, self.default_namespace)
                    }
                    PolicyKind::ClusterNetworkPolicy | PolicyKind::UpstreamClusterNetworkPolicy => {
                        cnp::parse(&mut findings, kind, value)
                    }
                };
                if let Some(policy) = policy.filter(|_| findings.is_clean()) {
                    self.objects.push(ParsedObject { policy, manifest });
                }
            }
            DocumentType::List { item_kind } => match nesting {
                Nesting::TopLevel => self.list(value, item_kind, location, &mut findings),
                Nesting::ListItem => {
                    findings.invalid("kind", "a List may not contain another List");
                }
            },
            DocumentType::Unsupported { api_version, kind } => findings.push(
                ManifestErrorKind::UnsupportedKind,
                "",
                format!(
                    "unsupported apiVersion/kind {api_version}/{kind}: dnsfence accepts {}",
                    PolicyKind::supported_list()
                ),
            ),
            DocumentType::MissingField(field) => findings.invalid(field, REQUIRED),
        }
        self.errors.extend(findings.into_errors());
    }

    fn check_duplicate(
        &mut self,
        identity: &Identity,
        kind: PolicyKind,
        location: &str,
        findings: &mut Findings,
    ) {
        let Some(reference) = identity.reference(kind, self.default_namespace) else {
            return;
        };
        match self.first_seen.get(&reference) {
            Some(first) => findings.push(
                ManifestErrorKind::Duplicate,
                "",
                format!("{reference} is defined more than once in this text (first in {first})"),
            ),
            None => {
                self.first_seen.insert(reference, location.to_string());
            }
        }
    }

    fn list(
        &mut self,
        value: Value,
        item_kind: Option<PolicyKind>,
        location: &str,
        findings: &mut Findings,
    ) {
        let Some(list) = findings.deserialize::<ListDocument>(value) else {
            return;
        };
        for (m, mut item) in list.items.into_iter().flatten().enumerate() {
            let item_location = format!("{location}, items[{m}]");
            if let (Some(kind), Value::Mapping(mapping)) = (item_kind, &mut item) {
                // Typed lists from the API server carry the type once, on the list; the
                // stored manifest must be applicable on its own.
                let mut typed = serde_yaml::Mapping::new();
                for (field, text) in [("apiVersion", kind.api_version()), ("kind", kind.kind())] {
                    if !mapping.contains_key(field) {
                        typed.insert(field.into(), text.into());
                    }
                }
                for (field, text) in std::mem::take(mapping) {
                    typed.insert(field, text);
                }
                *mapping = typed;
            }
            match serde_yaml::to_string(&item) {
                Ok(manifest) => self.document(item, manifest, &item_location, Nesting::ListItem),
                Err(error) => findings.invalid(format!("items[{m}]"), error.to_string()),
            }
        }
    }
}

fn value_type(value: &Value) -> &'static str {
    match value {
        Value::Null => "null",
        Value::Bool(_) => "a boolean",
        Value::Number(_) => "a number",
        Value::String(_) => "a string",
        Value::Sequence(_) => "a sequence",
        Value::Mapping(_) => "a mapping",
        Value::Tagged(_) => "a tagged value",
    }
}
