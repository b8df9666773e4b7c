//! The CRD files under `deploy/crds/`, generated from the types of this crate. `crdgen`
//! writes them; `tests/crds_up_to_date.rs` fails when the committed files differ from what
//! this module generates, so the YAML never drifts from the types.

use k8s_openapi::apiextensions_apiserver::pkg::apis::apiextensions::v1::CustomResourceDefinition;
use kube_core::CustomResourceExt;
use serde_json::{Map, Value};

use crate::Error;
use crate::anp::ApplicationNetworkPolicy;
use crate::cnp::ClusterNetworkPolicy;

/// The first lines of every generated file.
const HEADER: &str = "\
# Generated from the Rust types in crates/k8s by `cargo run -p dnsfence-k8s --bin crdgen`.
# Do not edit: change the types and run crdgen again (a test compares this file with them).
";

/// One generated CRD file.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CrdFile {
    /// The file name under `deploy/crds/`: `<plural>.<group>.yaml`.
    pub file_name: String,
    /// The CRD as written to the file.
    pub yaml: String,
}

/// Both CRDs dnsfence installs, in file-name order.
pub fn crd_files() -> Result<Vec<CrdFile>, Error> {
    [ApplicationNetworkPolicy::crd(), ClusterNetworkPolicy::crd()]
        .into_iter()
        .map(crd_file)
        .collect()
}

/// The CRD as a JSON value in the form it is written: schemars' output normalised to what
/// the EKS CRDs (and Kubernetes' own) look like (see [`normalize`]), with every map's keys
/// sorted, so the output does not depend on serde_json's `preserve_order` feature being on in
/// a build.
pub fn crd_value(crd: &CustomResourceDefinition) -> Result<Value, Error> {
    let mut value = serde_json::to_value(crd).map_err(Error::Serialize)?;
    normalize(&mut value);
    if let Some(Value::Object(root)) = value.pointer_mut("/spec/versions/0/schema/openAPIV3Schema")
    {
        // schemars names the root schema after the Rust type; CRDs carry no titles.
        root.remove("title");
    }
    Ok(sorted(value))
}

/// The `openAPIV3Schema` of a generated CRD's only version.
pub fn open_api_schema(crd: &CustomResourceDefinition) -> Result<Value, Error> {
    let value = crd_value(crd)?;
    value
        .pointer("/spec/versions/0/schema/openAPIV3Schema")
        .cloned()
        .ok_or_else(|| Error::MissingSchema(crd_name(crd)))
}

fn crd_file(crd: CustomResourceDefinition) -> Result<CrdFile, Error> {
    let value = crd_value(&crd)?;
    let body = serde_yaml::to_string(&value).map_err(Error::Yaml)?;
    Ok(CrdFile {
        file_name: format!("{}.yaml", crd_name(&crd)),
        yaml: format!("{HEADER}{body}"),
    })
}

fn crd_name(crd: &CustomResourceDefinition) -> String {
    crd.metadata.name.clone().unwrap_or_default()
}

/// Brings schemars' output (after kube's structural rewrite) to the form Kubernetes
/// publishes, recursively:
///
/// - `nullable: true`, which schemars adds to every `Option` field, is removed: the EKS CRDs
///   have none, so there as here an explicit `null` is pruned by the API server instead of
///   being stored, and clients never read a null they did not expect;
/// - an `x-kubernetes-int-or-string` schema gets its `anyOf` back as `[{type: integer},
///   {type: string}]` (kube's rewrite hoists the types out of `anyOf` branches, leaving `{}`
///   branches that would admit any value);
/// - whole-number bounds (`minimum: 1.0`, from schemars' `f64`) are written as integers.
fn normalize(value: &mut Value) {
    match value {
        Value::Object(map) => {
            if map.get("nullable") == Some(&Value::Bool(true)) {
                map.remove("nullable");
            }
            if map.get("x-kubernetes-int-or-string") == Some(&Value::Bool(true)) {
                map.insert(
                    "anyOf".into(),
                    serde_json::json!([{"type": "integer"}, {"type": "string"}]),
                );
            }
            for bound in ["minimum", "maximum"] {
                if let Some(whole) = map.get(bound).and_then(whole_number) {
                    map.insert(bound.into(), whole.into());
                }
            }
            map.values_mut().for_each(normalize);
        }
        Value::Array(items) => items.iter_mut().for_each(normalize),
        _ => {}
    }
}

/// `Some(n)` for a number that is an integer (as `1.0` is).
fn whole_number(value: &Value) -> Option<i64> {
    if let Some(n) = value.as_i64() {
        return Some(n);
    }
    let f = value.as_f64()?;
    // Bounds here are ports, priorities and counts: far inside i64's exact range.
    #[allow(clippy::cast_possible_truncation)]
    let n = f as i64;
    #[allow(clippy::cast_precision_loss)]
    let back = n as f64;
    (back == f).then_some(n)
}

fn sorted(value: Value) -> Value {
    match value {
        Value::Object(map) => {
            let mut entries: Vec<(String, Value)> = map.into_iter().collect();
            entries.sort_by(|a, b| a.0.cmp(&b.0));
            let mut out = Map::new();
            for (key, item) in entries {
                out.insert(key, sorted(item));
            }
            Value::Object(out)
        }
        Value::Array(items) => Value::Array(items.into_iter().map(sorted).collect()),
        other => other,
    }
}
