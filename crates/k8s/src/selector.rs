//! `metav1.LabelSelector`, schema for schema as Kubernetes (and the EKS CRDs, which embed it)
//! publish it: `matchLabels` a string map, `matchExpressions` an atomic list of
//! `{key, operator, values}` with `key` and `operator` required, the whole selector an atomic
//! map (`x-kubernetes-map-type: atomic`, so server-side apply replaces it as one value).
//!
//! The operator is a plain string here, as in the upstream schema: `In`, `NotIn`, `Exists` and
//! `DoesNotExist` are checked by the store's parser (`crates/policy`), which names the field.

use std::collections::BTreeMap;

use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// A label query over a set of resources. An empty selector selects everything; the
/// requirements of `matchLabels` and `matchExpressions` are ANDed.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
#[schemars(extend("x-kubernetes-map-type" = "atomic"))]
pub struct LabelSelector {
    /// Requirements on label keys and values, ANDed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub match_expressions: Option<Vec<LabelSelectorRequirement>>,

    /// Label key/value pairs that must all be present, each equivalent to an `In` expression
    /// with a single value.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub match_labels: Option<BTreeMap<String, String>>,
}

/// One requirement of a label selector: a key, an operator (`In`, `NotIn`, `Exists`,
/// `DoesNotExist`) and the values `In`/`NotIn` compare against (empty for the other two).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize, JsonSchema)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub struct LabelSelectorRequirement {
    /// The label key the requirement applies to.
    pub key: String,

    /// How the key relates to the values: In, NotIn, Exists or DoesNotExist.
    pub operator: String,

    /// The values for In and NotIn (non-empty there, empty for Exists and DoesNotExist).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(extend("x-kubernetes-list-type" = "atomic"))]
    pub values: Option<Vec<String>>,
}
