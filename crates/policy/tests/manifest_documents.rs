//! Texts of several documents: separators, comments and empty documents, JSON, `kind: List`,
//! duplicates, syntax errors and documents that are no objects at all.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dnsfence_policy::manifest::parse_documents;
use dnsfence_policy::model::PolicyKind;
use dnsfence_policy::{ManifestError, ManifestErrorKind};

const DENY_ALL: &str = "apiVersion: networking.k8s.io/v1
kind: NetworkPolicy
metadata:
  name: deny-all
  namespace: shop
spec:
  podSelector: {}
  policyTypes: [Egress]
";

const GITHUB: &str = "apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata:
  name: github
spec:
  podSelector: {}
  egress:
  - to: [{domainNames: [github.com]}]
";

fn errors(text: &str) -> Vec<ManifestError> {
    parse_documents(text, "default").expect_err("must be rejected")
}

#[test]
fn comments_and_empty_documents_are_skipped() {
    let text = format!(
        "# policies of the shop\n---\n{DENY_ALL}---\n# nothing here yet\n\n---\n---\n{GITHUB}--- # trailing\n"
    );
    let objects = parse_documents(&text, "default").unwrap();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0].manifest, DENY_ALL);
    assert_eq!(objects[1].manifest, GITHUB);
    assert_eq!(objects[1].policy.reference.namespace, "default");
    assert!(parse_documents("", "default").unwrap().is_empty());
    assert!(
        parse_documents("# only a comment\n---\n", "default")
            .unwrap()
            .is_empty()
    );
}

#[test]
fn windows_line_endings() {
    let text = format!("{DENY_ALL}---\n{GITHUB}").replace('\n', "\r\n");
    let objects = parse_documents(&text, "default").unwrap();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0].manifest, DENY_ALL.replace('\n', "\r\n"));
}

#[test]
fn malformed_yaml_is_a_syntax_error_with_its_line() {
    let text = format!("{DENY_ALL}---\napiVersion: v1\nkind: [NetworkPolicy\n---\n{GITHUB}");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].kind, ManifestErrorKind::Syntax);
    assert_eq!(errors[0].object, "document 2");
    assert_eq!(errors[0].path, "");
    // The flow sequence opened on line 11 of the whole text is never closed.
    assert!(errors[0].reason.contains("line 11"), "{}", errors[0].reason);
    let errors = self::errors("metadata:\n  name: a\n bad: indentation\n");
    assert_eq!(errors[0].kind, ManifestErrorKind::Syntax);
    assert!(errors[0].reason.contains("line 3"), "{}", errors[0].reason);
}

#[test]
fn duplicates_in_one_text() {
    let text = format!("{DENY_ALL}---\n{GITHUB}---\n{DENY_ALL}");
    let errors = errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].kind, ManifestErrorKind::Duplicate);
    assert_eq!(errors[0].object, "shop/deny-all");
    assert!(
        errors[0].reason.contains("document 1"),
        "{}",
        errors[0].reason
    );
    // A namespace left to the default is the same object as one naming it.
    let explicit = GITHUB.replace("  name: github\n", "  name: github\n  namespace: default\n");
    let errors = self::errors(&format!("{GITHUB}---\n{explicit}"));
    assert_eq!(errors[0].kind, ManifestErrorKind::Duplicate);
    // The same name in another namespace or of another kind is another object.
    let other_namespace = DENY_ALL.replace("namespace: shop", "namespace: bank");
    let other_kind = DENY_ALL
        .replace("networking.k8s.io/v1", "networking.k8s.aws/v1alpha1")
        .replace("kind: NetworkPolicy", "kind: ApplicationNetworkPolicy");
    let text = format!("{DENY_ALL}---\n{other_namespace}---\n{other_kind}");
    assert_eq!(parse_documents(&text, "default").unwrap().len(), 3);
}

#[test]
fn json_documents() {
    let json = r#"{
  "apiVersion": "networking.k8s.aws/v1alpha1",
  "kind": "ApplicationNetworkPolicy",
  "metadata": {"name": "github", "namespace": "ci"},
  "spec": {
    "podSelector": {"matchLabels": {"app": "runner"}},
    "policyTypes": ["Egress"],
    "egress": [{"to": [{"domainNames": ["github.com"]}], "ports": [{"port": 443}]}]
  }
}"#;
    let objects = parse_documents(json, "default").unwrap();
    assert_eq!(objects.len(), 1);
    assert_eq!(objects[0].manifest, json);
    assert_eq!(
        objects[0].policy.reference.to_string(),
        "ApplicationNetworkPolicy ci/github"
    );
    // Several JSON objects one after the other.
    let two = format!("{json}\n{}", json.replace("\"github\"", "\"gitlab\""));
    assert_eq!(parse_documents(&two, "default").unwrap().len(), 2);
    // Paths are the same as for YAML.
    let bad = json.replace("\"port\": 443", "\"port\": 0");
    let errors = errors(&bad);
    assert_eq!(errors[0].path, "spec.egress[0].ports[0].port");
    let broken = json.replace("\"kind\":", "\"kind\"");
    let errors = self::errors(&broken);
    assert_eq!(errors[0].kind, ManifestErrorKind::Syntax);
    assert!(errors[0].reason.contains("line 3"), "{}", errors[0].reason);
}

#[test]
fn kind_list_items_become_objects() {
    let list = "apiVersion: v1
kind: List
metadata:
  resourceVersion: \"\"
items:
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  metadata: {name: deny-all, namespace: shop, uid: abc, resourceVersion: \"7\"}
  spec: {podSelector: {}, policyTypes: [Egress]}
  status: {}
- apiVersion: networking.k8s.aws/v1alpha1
  kind: ClusterNetworkPolicy
  metadata: {name: guard}
  spec:
    tier: Baseline
    priority: 5
    subject: {namespaces: {}}
    egress: [{action: Deny, to: [{networks: [10.0.0.0/8]}]}]
";
    let objects = parse_documents(list, "default").unwrap();
    assert_eq!(objects.len(), 2);
    assert_eq!(objects[0].policy.reference.name, "deny-all");
    assert_eq!(
        objects[1].policy.reference.kind,
        PolicyKind::ClusterNetworkPolicy
    );
    // Each item's manifest is the item alone, and parses back to the same policy.
    for object in &objects {
        assert!(!object.manifest.contains("items"), "{}", object.manifest);
        let again = parse_documents(&object.manifest, "default").unwrap();
        assert_eq!(again[0].policy, object.policy);
    }
}

#[test]
fn typed_list_items_inherit_the_list_type() {
    let list = r#"{"apiVersion": "networking.k8s.io/v1", "kind": "NetworkPolicyList",
 "metadata": {"resourceVersion": "9"},
 "items": [{"metadata": {"name": "a", "namespace": "x"}, "spec": {"podSelector": {}}}]}"#;
    let objects = parse_documents(list, "default").unwrap();
    assert_eq!(objects[0].policy.reference.kind, PolicyKind::NetworkPolicy);
    assert!(
        objects[0]
            .manifest
            .starts_with("apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\n")
    );
    assert_eq!(
        parse_documents(&objects[0].manifest, "default").unwrap(),
        objects
    );
}

#[test]
fn list_errors_name_the_item() {
    let list = "apiVersion: v1
kind: List
items:
- apiVersion: v1
  kind: ConfigMap
  metadata: {name: c}
- apiVersion: networking.k8s.io/v1
  kind: NetworkPolicy
  spec: {podSelector: {}}
- {apiVersion: v1, kind: List, items: []}
";
    let errors = errors(list);
    let summary: Vec<(ManifestErrorKind, &str, &str)> = errors
        .iter()
        .map(|e| (e.kind, e.object.as_str(), e.path.as_str()))
        .collect();
    assert_eq!(
        summary,
        [
            (ManifestErrorKind::UnsupportedKind, "c", ""),
            (
                ManifestErrorKind::Invalid,
                "document 1, items[1]",
                "metadata"
            ),
            (ManifestErrorKind::Invalid, "document 1, items[2]", "kind"),
        ]
    );
    let errors = self::errors("apiVersion: v1\nkind: List\nitems: []\nextra: true\n");
    assert_eq!(errors[0].path, "extra");
}

#[test]
fn documents_that_are_not_objects() {
    let errors = errors("- just\n- a list\n");
    assert_eq!(errors[0].kind, ManifestErrorKind::Invalid);
    assert!(
        errors[0].reason.contains("must be a mapping"),
        "{}",
        errors[0].reason
    );
    let errors = self::errors("kind: NetworkPolicy\nmetadata: {name: a}\n");
    assert_eq!(
        (errors[0].object.as_str(), errors[0].path.as_str()),
        ("a", "apiVersion")
    );
    let errors = self::errors("apiVersion: networking.k8s.io/v1\nmetadata: {name: a}\n");
    assert_eq!(errors[0].path, "kind");
    let errors = self::errors("apiVersion: networking.k8s.io/v1beta1\nkind: NetworkPolicy\n");
    assert_eq!(errors[0].kind, ManifestErrorKind::UnsupportedKind);
    assert_eq!(errors[0].object, "document 1");
    assert!(
        errors[0]
            .reason
            .contains("networking.k8s.io/v1beta1/NetworkPolicy")
    );
}
