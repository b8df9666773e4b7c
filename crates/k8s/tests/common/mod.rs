//! Validating manifests against the committed CRDs (`deploy/crds/`) the way the API server
//! does: defaults applied, then the OpenAPI schema (with the `jsonschema` crate), then the
//! CEL rules (`x-kubernetes-validations`, with `kube-cel`). Unknown fields are errors, as with
//! kubectl's default `--validate=strict` (server-side field validation).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::path::{Path, PathBuf};

use serde_json::{Value, json};

pub const ANP_CRD: &str = "applicationnetworkpolicies.networking.k8s.aws.yaml";
pub const CNP_CRD: &str = "clusternetworkpolicies.networking.k8s.aws.yaml";

pub fn repo_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../..")
}

/// One rejection: the field path Kubernetes would print (`spec.egress[0].to[1]`) and why.
#[derive(Debug, Clone)]
pub struct Problem {
    pub path: String,
    pub message: String,
}

/// A committed CRD's schema, ready to validate objects of its kind.
pub struct Crd {
    schema: Value,
    validator: jsonschema::Validator,
}

impl Crd {
    pub fn load(file_name: &str) -> Crd {
        let path = repo_root().join("deploy/crds").join(file_name);
        let text = std::fs::read_to_string(&path)
            .unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
        let crd: Value = serde_yaml::from_str(&text).unwrap();
        let schema = crd
            .pointer("/spec/versions/0/schema/openAPIV3Schema")
            .cloned()
            .expect("the CRD has an openAPIV3Schema");
        let mut strict_schema = schema.clone();
        // apiVersion, kind and metadata are implied by the API server for every CRD.
        let root = strict_schema["properties"].as_object_mut().unwrap();
        root.insert("apiVersion".into(), json!({"type": "string"}));
        root.insert("kind".into(), json!({"type": "string"}));
        root.insert("metadata".into(), json!({"type": "object"}));
        forbid_unknown_fields(&mut strict_schema);
        let validator = jsonschema::options()
            .with_draft(jsonschema::Draft::Draft4)
            .should_validate_formats(false)
            .build(&strict_schema)
            .expect("the CRD's schema compiles");
        Crd { schema, validator }
    }

    /// Every problem the API server would report for `object`, defaults applied first.
    pub fn problems(&self, object: &Value) -> Vec<Problem> {
        let object = self.defaulted(object);
        let mut problems: Vec<Problem> = self
            .validator
            .iter_errors(&object)
            .map(|e| Problem {
                path: field_path(e.instance_path().as_str()),
                message: e.to_string(),
            })
            .collect();
        // CEL rules only run on objects that pass the schema, as in the API server.
        if problems.is_empty()
            && let Err(errors) = kube_cel::validate(&self.schema, &object, None)
        {
            problems.extend(errors.into_vec().into_iter().map(|e| Problem {
                path: e.field_path.trim_start_matches('.').to_string(),
                message: e.message,
            }));
        }
        problems
    }

    /// `object` with the schema's defaults filled in, as the API server stores it.
    pub fn defaulted(&self, object: &Value) -> Value {
        kube_cel::apply_defaults(&self.schema, object)
    }

    /// Asserts `object` is admitted.
    pub fn assert_valid(&self, what: &str, object: &Value) {
        let problems = self.problems(object);
        assert!(problems.is_empty(), "{what} is rejected: {problems:#?}");
    }

    /// Asserts `object` is rejected, with a problem at `path` whose message contains
    /// `reason`, and nothing anywhere else.
    pub fn assert_rejected(&self, object: &Value, path: &str, reason: &str) {
        let problems = self.problems(object);
        assert!(
            !problems.is_empty(),
            "expected a rejection at {path} ({reason}), but the object is admitted"
        );
        assert!(
            problems
                .iter()
                .any(|p| p.path == path && p.message.contains(reason)),
            "expected a problem at {path:?} containing {reason:?}, got {problems:#?}"
        );
        assert!(
            problems.iter().all(|p| p.path == path),
            "problems outside {path:?}: {problems:#?}"
        );
    }
}

/// What the API server adds to a structural schema, as plain JSON Schema:
/// `additionalProperties: false` on every object schema that lists its properties (and does
/// not preserve unknown fields), which is what strict field validation makes of pruning, and
/// `uniqueItems: true` on `x-kubernetes-list-type: set` lists, whose duplicates it rejects.
fn forbid_unknown_fields(schema: &mut Value) {
    match schema {
        Value::Object(map) => {
            let lists_properties = map.get("properties").is_some_and(Value::is_object);
            let preserves = map.get("x-kubernetes-preserve-unknown-fields") == Some(&json!(true));
            if lists_properties && !preserves && !map.contains_key("additionalProperties") {
                map.insert("additionalProperties".into(), Value::Bool(false));
            }
            if map.get("x-kubernetes-list-type") == Some(&json!("set")) {
                map.insert("uniqueItems".into(), Value::Bool(true));
            }
            map.values_mut().for_each(forbid_unknown_fields);
        }
        Value::Array(items) => items.iter_mut().for_each(forbid_unknown_fields),
        _ => {}
    }
}

/// A JSON pointer (`/spec/egress/0/to`) as a Kubernetes field path (`spec.egress[0].to`).
pub fn field_path(pointer: &str) -> String {
    let mut path = String::new();
    for segment in pointer.split('/').skip(1) {
        let segment = segment.replace("~1", "/").replace("~0", "~");
        if !segment.is_empty() && segment.bytes().all(|b| b.is_ascii_digit()) {
            path.push_str(&format!("[{segment}]"));
        } else {
            if !path.is_empty() {
                path.push('.');
            }
            path.push_str(&segment);
        }
    }
    path
}

/// The documents of a YAML file (empty documents skipped).
pub fn documents(path: &Path) -> Vec<Value> {
    let text =
        std::fs::read_to_string(path).unwrap_or_else(|e| panic!("reading {}: {e}", path.display()));
    serde_yaml::Deserializer::from_str(&text)
        .map(|document| {
            let value: Value = serde::Deserialize::deserialize(document).unwrap();
            value
        })
        .filter(|value| !value.is_null())
        .collect()
}

/// The `networking.k8s.aws/v1alpha1` documents of `kind` in every YAML file of `dir`,
/// with the file they came from.
pub fn examples(dir: &str, kind: &str) -> Vec<(String, Value)> {
    let dir = repo_root().join(dir);
    let mut files: Vec<PathBuf> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("reading {}: {e}", dir.display()))
        .map(|entry| entry.unwrap().path())
        .filter(|path| path.extension().is_some_and(|e| e == "yaml"))
        .collect();
    files.sort();
    let mut found = Vec::new();
    for file in files {
        for document in documents(&file) {
            if document["apiVersion"] == "networking.k8s.aws/v1alpha1" && document["kind"] == kind {
                let name = document["metadata"]["name"].as_str().unwrap_or("?");
                found.push((format!("{} ({name})", file.display()), document));
            }
        }
    }
    found
}

/// `object` with the value at JSON pointer `pointer` replaced (or added, if its parent
/// exists).
pub fn with(object: &Value, pointer: &str, value: Value) -> Value {
    let mut changed = object.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer with a parent");
    let target = changed
        .pointer_mut(parent)
        .unwrap_or_else(|| panic!("no {parent} in the object"));
    match target {
        Value::Object(map) => {
            map.insert(key.to_string(), value);
        }
        Value::Array(items) => {
            let index: usize = key.parse().unwrap();
            items[index] = value;
        }
        _ => panic!("{parent} is neither an object nor an array"),
    }
    changed
}

/// `object` without the field at JSON pointer `pointer`.
pub fn without(object: &Value, pointer: &str) -> Value {
    let mut changed = object.clone();
    let (parent, key) = pointer.rsplit_once('/').expect("a pointer with a parent");
    let removed = changed
        .pointer_mut(parent)
        .and_then(Value::as_object_mut)
        .and_then(|map| map.remove(key));
    assert!(removed.is_some(), "no {pointer} in the object");
    changed
}

/// Parses a YAML literal.
pub fn yaml(text: &str) -> Value {
    serde_yaml::from_str(text).unwrap()
}

/// Whether dnsfence's own parser (the policy store's) accepts the manifest.
pub fn parser_accepts(object: &Value) -> Result<(), String> {
    let text = serde_yaml::to_string(object).unwrap();
    dnsfence_policy::manifest::parse_documents(&text, "default")
        .map(|_| ())
        .map_err(|errors| format!("{errors:?}"))
}
