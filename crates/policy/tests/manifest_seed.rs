//! The seed manifests: the two policies parse to the expected IR, the two other objects are
//! rejected as unsupported kinds.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dnsfence_policy::domain::DomainPattern;
use dnsfence_policy::manifest::{ParsedObject, parse_documents};
use dnsfence_policy::model::{Action, PolicyKind, PolicyRef, Tier};
use dnsfence_policy::policy::{EgressRule, NamespaceScope, Peer, Subject};
use dnsfence_policy::ports::{PortRange, Protocol};
use dnsfence_policy::selector::LabelSelector;
use dnsfence_policy::{ManifestError, ManifestErrorKind};

const ALLOW_GITHUB: &str = include_str!("fixtures/seed/allow-github.yaml");
const ALLOW_DNS: &str = include_str!("fixtures/seed/allow-dns.yaml");
const NODECLASS: &str = include_str!("fixtures/seed/my-nodeclass.yaml");
const NP_CONTROLLER: &str = include_str!("fixtures/seed/np-controller.yaml");

/// The ApplicationNetworkPolicy seed as given in the task, to catch a drifting fixture.
const ALLOW_GITHUB_AS_GIVEN: &str = r#"apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata:
  name: nginx-egress
  namespace: default
spec:
  podSelector:
    matchLabels:
      run: nginx
  policyTypes:
  - Egress
  egress:
  - to:
    - domainNames:
      - "github.com"
      - "api.github.com"
    ports:
    - protocol: TCP
      port: 443
"#;

fn parse_one(text: &str) -> ParsedObject {
    let mut objects = parse_documents(text, "default").expect("parses");
    assert_eq!(objects.len(), 1);
    objects.remove(0)
}

fn parse_errors(text: &str) -> Vec<ManifestError> {
    parse_documents(text, "default").expect_err("must be rejected")
}

fn selector(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: [(key.to_string(), value.to_string())].into(),
        match_expressions: Vec::new(),
    }
}

#[test]
fn fixture_is_the_seed_as_given() {
    assert_eq!(ALLOW_GITHUB, ALLOW_GITHUB_AS_GIVEN);
}

#[test]
fn application_network_policy_seed() {
    let object = parse_one(ALLOW_GITHUB);
    assert_eq!(object.manifest, ALLOW_GITHUB);
    let policy = object.policy;
    assert_eq!(
        policy.reference,
        PolicyRef {
            kind: PolicyKind::ApplicationNetworkPolicy,
            namespace: "default".into(),
            name: "nginx-egress".into(),
        }
    );
    assert_eq!(policy.tier, Tier::NetworkPolicy);
    assert_eq!(policy.priority, 0);
    assert_eq!(
        policy.subject,
        Subject::Namespace {
            namespace: "default".into(),
            pods: selector("run", "nginx"),
        }
    );
    assert!(policy.isolates_egress);
    assert_eq!(
        policy.egress,
        vec![EgressRule {
            index: 0,
            name: String::new(),
            action: Action::Accept,
            peers: Some(vec![Peer::Domains(vec![
                DomainPattern::Exact("github.com".into()),
                DomainPattern::Exact("api.github.com".into()),
            ])]),
            ports: vec![PortRange::single(Protocol::Tcp, 443)],
        }]
    );
}

#[test]
fn network_policy_seed() {
    let object = parse_one(ALLOW_DNS);
    assert_eq!(object.manifest, ALLOW_DNS);
    let policy = object.policy;
    assert_eq!(policy.reference.kind, PolicyKind::NetworkPolicy);
    assert_eq!(
        policy.reference.to_string(),
        "NetworkPolicy default/allow-dns"
    );
    assert!(policy.isolates_egress);
    assert!(policy.has_workload_peers());
    assert_eq!(
        policy.egress,
        vec![EgressRule {
            index: 0,
            name: String::new(),
            action: Action::Accept,
            peers: Some(vec![Peer::Pods {
                namespaces: NamespaceScope::Selector(selector(
                    "kubernetes.io/metadata.name",
                    "kube-system"
                )),
                pods: LabelSelector::default(),
            }]),
            ports: vec![
                PortRange::single(Protocol::Udp, 53),
                PortRange::single(Protocol::Tcp, 53),
            ],
        }]
    );
}

#[test]
fn both_seed_policies_in_one_text() {
    let text = format!("{ALLOW_GITHUB}---\n{ALLOW_DNS}");
    let objects = parse_documents(&text, "default").unwrap();
    let names: Vec<&str> = objects
        .iter()
        .map(|o| o.policy.reference.name.as_str())
        .collect();
    assert_eq!(names, ["nginx-egress", "allow-dns"]);
    assert_eq!(objects[0].manifest, ALLOW_GITHUB);
    assert_eq!(objects[1].manifest, ALLOW_DNS);
}

#[test]
fn nodeclass_is_an_unsupported_kind() {
    let errors = parse_errors(NODECLASS);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let error = &errors[0];
    assert_eq!(error.kind, ManifestErrorKind::UnsupportedKind);
    assert_eq!(error.object, "network-policy-enabled");
    assert!(
        error.reason.contains("eks.amazonaws.com/v1/NodeClass"),
        "{}",
        error.reason
    );
    assert!(error.reason.contains(&PolicyKind::supported_list()));
}

#[test]
fn configmap_is_an_unsupported_kind() {
    let errors = parse_errors(NP_CONTROLLER);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    let error = &errors[0];
    assert_eq!(error.kind, ManifestErrorKind::UnsupportedKind);
    assert_eq!(error.object, "kube-system/amazon-vpc-cni");
    assert!(error.reason.contains("v1/ConfigMap"), "{}", error.reason);
    assert!(error.reason.contains(&PolicyKind::supported_list()));
}

#[test]
fn a_good_policy_next_to_a_configmap_is_rejected() {
    let text = format!("{ALLOW_GITHUB}---\n{NP_CONTROLLER}");
    let errors = parse_errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].kind, ManifestErrorKind::UnsupportedKind);
    assert_eq!(errors[0].object, "kube-system/amazon-vpc-cni");
}

#[test]
fn every_bad_document_is_reported() {
    let text = format!("{NODECLASS}\n---\n{ALLOW_DNS}---\n{NP_CONTROLLER}");
    let errors = parse_errors(&text);
    let objects: Vec<&str> = errors.iter().map(|e| e.object.as_str()).collect();
    assert_eq!(
        objects,
        ["network-policy-enabled", "kube-system/amazon-vpc-cni"]
    );
}

#[test]
fn bad_wildcard_is_displayed_with_object_path_and_reason() {
    let text = ALLOW_GITHUB.replace("\"api.github.com\"", "\"*.*.com\"");
    let errors = parse_errors(&text);
    assert_eq!(errors.len(), 1, "{errors:#?}");
    assert_eq!(errors[0].kind, ManifestErrorKind::Invalid);
    assert_eq!(
        errors[0].to_string(),
        r#"default/nginx-egress: spec.egress[0].to[0].domainNames[1]: "*.*.com": a wildcard may only be the whole leftmost label ("*.example.com")"#
    );
}
