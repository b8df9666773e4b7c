//! NetworkPolicy and ApplicationNetworkPolicy: accepted shapes, policyTypes defaulting, and
//! every kind of bad input with its path and reason.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dnsfence_policy::domain::DomainPattern;
use dnsfence_policy::manifest::parse_documents;
use dnsfence_policy::model::CidrRule;
use dnsfence_policy::policy::{NamespaceScope, Peer, Policy};
use dnsfence_policy::ports::{PortRange, Protocol};
use dnsfence_policy::selector::LabelSelector;
use dnsfence_policy::{ManifestError, ManifestErrorKind};

fn anp(spec_rest: &str) -> String {
    format!(
        "apiVersion: networking.k8s.aws/v1alpha1\nkind: ApplicationNetworkPolicy\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  podSelector: {{matchLabels: {{app: web}}}}\n{spec_rest}"
    )
}

fn netpol(spec_rest: &str) -> String {
    format!(
        "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata:\n  name: web\n  namespace: shop\nspec:\n  podSelector: {{}}\n{spec_rest}"
    )
}

fn parse(text: &str) -> Policy {
    let mut objects =
        parse_documents(text, "default").unwrap_or_else(|errors| panic!("rejected: {errors:#?}"));
    assert_eq!(objects.len(), 1);
    objects.remove(0).policy
}

/// The one error of `text`; asserts its path and that its reason contains `reason`.
fn rejected(text: &str, path: &str, reason: &str) -> ManifestError {
    let errors = parse_documents(text, "default").expect_err("must be rejected");
    assert_eq!(errors.len(), 1, "expected one error, got {errors:#?}");
    let error = errors.into_iter().next().unwrap();
    assert_eq!(error.kind, ManifestErrorKind::Invalid, "{error:?}");
    assert_eq!(error.path, path, "{error:?}");
    assert!(
        error.reason.contains(reason),
        "reason {:?} lacks {reason:?}",
        error.reason
    );
    error
}

fn labels(key: &str, value: &str) -> LabelSelector {
    LabelSelector {
        match_labels: [(key.to_string(), value.to_string())].into(),
        match_expressions: Vec::new(),
    }
}

#[test]
fn peers_of_every_shape() {
    let policy = parse(&anp("  egress:
  - to:
    - podSelector: {matchLabels: {app: db}}
    - namespaceSelector: {matchLabels: {team: a}}
      podSelector: {matchLabels: {app: cache}}
    - ipBlock: {cidr: 10.0.0.0/8, except: [10.1.0.0/16]}
    - domainNames: ['*.example.com', Example.ORG.]
  - ports: [{port: 8000, endPort: 8080}, {protocol: SCTP}]
  - to: []
"));
    let rules = &policy.egress;
    assert_eq!(rules.len(), 3);
    assert_eq!(
        rules[0].peers.as_deref().unwrap(),
        [
            Peer::Pods {
                namespaces: NamespaceScope::Own("shop".into()),
                pods: labels("app", "db"),
            },
            Peer::Pods {
                namespaces: NamespaceScope::Selector(labels("team", "a")),
                pods: labels("app", "cache"),
            },
            Peer::Cidr(CidrRule {
                cidr: "10.0.0.0/8".parse().unwrap(),
                except: vec!["10.1.0.0/16".parse().unwrap()],
            }),
            Peer::Domains(vec![
                DomainPattern::Wildcard("example.com".into()),
                DomainPattern::Exact("example.org".into()),
            ]),
        ]
    );
    assert!(rules[0].ports.is_empty());
    assert_eq!(rules[1].peers, None);
    assert_eq!(
        rules[1].ports,
        [
            PortRange {
                protocol: Protocol::Tcp,
                start: 8000,
                end: 8080
            },
            PortRange::all(Protocol::Sctp),
        ]
    );
    assert_eq!(
        rules[2].peers, None,
        "an empty `to` allows every destination"
    );
    assert_eq!(rules[2].index, 2);
}

#[test]
fn policy_types_defaulting() {
    // No policyTypes, egress rules present: Ingress + Egress.
    let policy = parse(&netpol(
        "  egress: [{ports: [{port: 53, protocol: UDP}]}]\n",
    ));
    assert!(policy.isolates_egress);
    assert_eq!(policy.egress.len(), 1);
    // No policyTypes, no egress: Ingress only.
    let policy = parse(&netpol("  ingress: [{from: [{podSelector: {}}]}]\n"));
    assert!(!policy.isolates_egress);
    assert!(policy.egress.is_empty());
    // Explicit Egress without rules: isolated, nothing allowed.
    let policy = parse(&netpol("  policyTypes: [Egress]\n"));
    assert!(policy.isolates_egress);
    assert!(policy.egress.is_empty());
    // Explicit Ingress only: egress rules have no effect.
    let policy = parse(&netpol(
        "  policyTypes: [Ingress]\n  egress: [{to: [{podSelector: {}}]}]\n",
    ));
    assert!(!policy.isolates_egress);
    assert!(policy.egress.is_empty());
    // An empty policyTypes list is defaulted like an absent one.
    let policy = parse(&netpol("  policyTypes: []\n  egress: [{}]\n"));
    assert!(policy.isolates_egress);
    rejected(
        &netpol("  policyTypes: [egress]\n"),
        "spec.policyTypes[0]",
        "must be Ingress or Egress",
    );
}

#[test]
fn missing_namespace_takes_the_default() {
    let text = anp("  policyTypes: [Egress]\n").replace("  namespace: shop\n", "");
    let objects = parse_documents(&text, "team-a").unwrap();
    assert_eq!(objects[0].policy.reference.namespace, "team-a");
    let errors = parse_documents(&text.replace("name: web", "name: Web"), "team-a").unwrap_err();
    assert_eq!(errors[0].object, "team-a/Web");
    assert_eq!(errors[0].path, "metadata.name");
}

#[test]
fn unknown_field_deep_in_the_spec() {
    let error = rejected(
        &anp("  egress: [{to: [{domainName: [github.com]}]}]\n"),
        "spec.egress[0].to[0].domainName",
        "unknown field `domainName`",
    );
    assert_eq!(error.object, "shop/web");
    rejected(&anp("  egres: []\n"), "spec.egres", "unknown field `egres`");
    rejected(
        &anp("  policyTypes: [Egress]\nstatus: {}\nextra: 1\n"),
        "extra",
        "unknown field `extra`",
    );
    rejected(
        &anp("  policyTypes: [Egress]\n")
            .replace("namespace: shop", "namespace: shop\n  labelz: {}"),
        "metadata.labelz",
        "unknown field `labelz`",
    );
}

#[test]
fn server_written_metadata_and_status_are_accepted() {
    let text = anp("  policyTypes: [Egress]\nstatus: {conditions: []}\n").replace(
        "namespace: shop\n",
        "namespace: shop
  uid: 0b6d9c2e-1111-2222-3333-444444444444
  resourceVersion: \"12345\"
  generation: 3
  creationTimestamp: \"2025-01-01T00:00:00Z\"
  labels: {team: a}
  annotations: {kubectl.kubernetes.io/last-applied-configuration: \"{}\"}
  finalizers: [x/y]
  managedFields: [{manager: kubectl, fieldsV1: {f:spec: {}}}]
",
    );
    assert!(parse(&text).isolates_egress);
}

#[test]
fn wrong_types_name_the_field() {
    rejected(
        &anp("  egress: [{ports: [{port: [1]}]}]\n"),
        "spec.egress[0].ports[0].port",
        "invalid type",
    );
    rejected(&anp("  egress: {to: []}\n"), "spec.egress", "invalid type");
}

#[test]
fn bad_ports() {
    let port = |entry: &str| anp(&format!("  egress: [{{ports: [{entry}]}}]\n"));
    rejected(
        &port("{port: 0}"),
        "spec.egress[0].ports[0].port",
        "between 1 and 65535",
    );
    rejected(
        &port("{port: 65536}"),
        "spec.egress[0].ports[0].port",
        "between 1 and 65535",
    );
    rejected(
        &port("{port: -1}"),
        "spec.egress[0].ports[0].port",
        "between 1 and 65535",
    );
    rejected(
        &port("{port: 443, endPort: 80}"),
        "spec.egress[0].ports[0].endPort",
        "must not be less than port 443",
    );
    rejected(
        &port("{port: 443, endPort: 70000}"),
        "spec.egress[0].ports[0].endPort",
        "between 1 and 65535",
    );
    rejected(
        &port("{endPort: 80}"),
        "spec.egress[0].ports[0].endPort",
        "endPort requires port",
    );
    rejected(
        &port("{port: https}"),
        "spec.egress[0].ports[0].port",
        "named ports are not supported by dnsfence: use a port number",
    );
    rejected(
        &port("{port: \"443\"}"),
        "spec.egress[0].ports[0].port",
        "named ports are not supported",
    );
    rejected(
        &port("{protocol: tcp, port: 443}"),
        "spec.egress[0].ports[0].protocol",
        "must be one of TCP, UDP, SCTP",
    );
    rejected(
        &port("{protocol: ICMP}"),
        "spec.egress[0].ports[0].protocol",
        "unsupported protocol \"ICMP\"",
    );
}

#[test]
fn bad_peers() {
    rejected(
        &anp("  egress: [{to: [{domainNames: [github.com], ipBlock: {cidr: 10.0.0.0/8}}]}]\n"),
        "spec.egress[0].to[0]",
        "domainNames cannot be combined with ipBlock, podSelector or namespaceSelector in one peer",
    );
    rejected(
        &anp(
            "  egress: [{to: [{podSelector: {}}, {domainNames: [a.com], namespaceSelector: {}}]}]\n",
        ),
        "spec.egress[0].to[1]",
        "domainNames cannot be combined",
    );
    rejected(
        &anp("  egress: [{to: [{ipBlock: {cidr: 10.0.0.0/8}, podSelector: {}}]}]\n"),
        "spec.egress[0].to[0]",
        "ipBlock cannot be combined with podSelector or namespaceSelector",
    );
    rejected(
        &anp("  egress: [{to: [{}]}]\n"),
        "spec.egress[0].to[0]",
        "a peer must set at least one of",
    );
    rejected(
        &anp("  egress: [{to: [{domainNames: []}]}]\n"),
        "spec.egress[0].to[0].domainNames",
        "at least one domain name",
    );
    let error = rejected(
        &netpol("  egress: [{to: [{domainNames: [github.com]}]}]\n"),
        "spec.egress[0].to[0].domainNames",
        "unknown field `domainNames`",
    );
    assert!(
        error.reason.contains("ApplicationNetworkPolicy"),
        "{}",
        error.reason
    );
    // Domain names are destinations: an ingress peer has none even in an ANP.
    rejected(
        &anp("  ingress: [{from: [{domainNames: [github.com]}]}]\n"),
        "spec.ingress[0].from[0].domainNames",
        "unknown field `domainNames`",
    );
}

#[test]
fn bad_cidrs() {
    let block = |block: &str| anp(&format!("  egress: [{{to: [{{ipBlock: {block}}}]}}]\n"));
    rejected(
        &block("{cidr: 10.0.0.0/33}"),
        "spec.egress[0].to[0].ipBlock.cidr",
        "is not a CIDR",
    );
    rejected(
        &block("{cidr: 10.0.0.1/8}"),
        "spec.egress[0].to[0].ipBlock.cidr",
        "host bits set",
    );
    rejected(
        &block("{cidr: 10.0.0.0/8, except: [10.1.0.0/16, 192.168.0.0/16]}"),
        "spec.egress[0].to[0].ipBlock.except[1]",
        "strictly inside the block's cidr 10.0.0.0/8",
    );
    rejected(
        &block("{except: [10.1.0.0/16]}"),
        "spec.egress[0].to[0].ipBlock.cidr",
        "required field is missing",
    );
}

#[test]
fn bad_selectors() {
    rejected(
        &anp(
            "  egress: [{to: [{podSelector: {matchExpressions: [{key: app, operator: Maybe, values: [a]}]}}]}]\n",
        ),
        "spec.egress[0].to[0].podSelector.matchExpressions[0].operator",
        "unknown variant `Maybe`",
    );
    rejected(
        &anp(
            "  egress: [{to: [{namespaceSelector: {matchExpressions: [{key: team, operator: In}]}}]}]\n",
        ),
        "spec.egress[0].to[0].namespaceSelector.matchExpressions[0].values",
        "must be non-empty for operator In",
    );
    rejected(
        &anp("  policyTypes: [Egress]\n").replace("{app: web}", "{app: 'not valid!'}"),
        "spec.podSelector.matchLabels.app",
        "label value",
    );
}

#[test]
fn missing_required_fields() {
    let text = netpol("  policyTypes: [Egress]\n").replace("  podSelector: {}\n", "");
    rejected(&text, "spec.podSelector", "required field is missing");
    let text = netpol("  policyTypes: [Egress]\n").replace("  name: web\n", "");
    let error = rejected(&text, "metadata.name", "required field is missing");
    assert_eq!(error.object, "document 1");
    let text = "apiVersion: networking.k8s.io/v1\nkind: NetworkPolicy\nmetadata: {name: a}\n";
    let error = rejected(text, "spec", "required field is missing");
    assert_eq!(error.object, "default/a");
}

#[test]
fn bad_names() {
    rejected(
        &anp("  policyTypes: [Egress]\n").replace("name: web", "name: Web_Egress"),
        "metadata.name",
        "is not a valid name",
    );
    rejected(
        &anp("  policyTypes: [Egress]\n").replace("namespace: shop", "namespace: shop.eu"),
        "metadata.namespace",
        "is not a valid namespace name",
    );
}

#[test]
fn every_error_of_one_object_is_reported() {
    let errors = parse_documents(
        &anp("  egress: [{to: [{domainNames: ['*.*.com']}], ports: [{port: 0}, {port: http}]}]\n"),
        "default",
    )
    .unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.egress[0].to[0].domainNames[0]",
            "spec.egress[0].ports[0].port",
            "spec.egress[0].ports[1].port",
        ]
    );
}

#[test]
fn both_selectors_of_a_peer_are_checked() {
    let text = anp(
        "  egress: [{to: [{podSelector: {matchLabels: {'a b': x}}, namespaceSelector: {matchLabels: {c: 'y z'}}}]}]\n",
    );
    let errors = parse_documents(&text, "default").unwrap_err();
    let paths: Vec<&str> = errors.iter().map(|e| e.path.as_str()).collect();
    assert_eq!(
        paths,
        [
            "spec.egress[0].to[0].podSelector.matchLabels.a b",
            "spec.egress[0].to[0].namespaceSelector.matchLabels.c",
        ]
    );
}
