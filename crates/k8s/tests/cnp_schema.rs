//! The ClusterNetworkPolicy CRD admits the EKS examples (the user guide's and the EKS
//! controller's own test manifests) and rejects what the EKS CRD rejects, at the field the API
//! server would name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Crd, examples, parser_accepts, with, without, yaml};
use dnsfence_k8s::ClusterNetworkPolicy;
use serde_json::{Value, json};

fn crd() -> Crd {
    Crd::load(common::CNP_CRD)
}

/// An Admin policy with one rule of each kind: the base the bad variants change.
fn base() -> Value {
    yaml(
        r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ClusterNetworkPolicy
metadata: {name: guard}
spec:
  tier: Admin
  priority: 10
  subject:
    namespaces:
      matchLabels: {env: prod}
  ingress:
  - name: from-the-platform
    action: Accept
    from:
    - namespaces: {matchLabels: {team: platform}}
  egress:
  - name: allow-github
    action: Accept
    to:
    - domainNames: ["github.com", "*.githubusercontent.com"]
    ports:
    - portNumber: {protocol: TCP, port: 443}
    - portRange: {protocol: UDP, start: 3000, end: 3100}
  - name: no-metadata-service
    action: Deny
    to:
    - networks: [169.254.169.254/32, "fd00:ec2::254/128"]
  - name: to-the-data-team
    action: Pass
    to:
    - pods:
        namespaceSelector: {matchLabels: {team: data}}
        podSelector: {matchLabels: {app: db}}
"#,
    )
}

fn eks_examples() -> Vec<(String, Value)> {
    let found = examples("examples/eks", "ClusterNetworkPolicy");
    assert!(
        found.len() >= 4,
        "examples/eks holds the EKS ClusterNetworkPolicies: {found:?}"
    );
    found
}

#[test]
fn the_eks_examples_are_admitted() {
    let crd = crd();
    for (what, object) in eks_examples()
        .into_iter()
        .chain([("the base".to_string(), base())])
    {
        crd.assert_valid(&what, &object);
    }
}

#[test]
fn admitted_examples_round_trip_through_the_rust_types() {
    let crd = crd();
    for (what, object) in eks_examples()
        .into_iter()
        .chain([("the base".to_string(), base())])
    {
        let stored = crd.defaulted(&object);
        let typed: ClusterNetworkPolicy = serde_json::from_value(stored.clone())
            .unwrap_or_else(|e| panic!("{what} does not read into the type: {e}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), stored, "{what}");
    }
}

#[test]
fn the_store_parser_accepts_the_eks_examples() {
    for (what, object) in eks_examples()
        .into_iter()
        .chain([("the base".to_string(), base())])
    {
        parser_accepts(&object).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn the_protocol_defaults_to_tcp() {
    let object = without(&base(), "/spec/egress/0/ports/0/portNumber/protocol");
    let crd = crd();
    crd.assert_valid("portNumber without protocol", &object);
    assert_eq!(
        crd.defaulted(&object)
            .pointer("/spec/egress/0/ports/0/portNumber/protocol"),
        Some(&json!("TCP"))
    );
}

#[test]
fn a_wrong_action_is_rejected() {
    let crd = crd();
    // `Allow` is the AdminNetworkPolicy spelling; EKS and v1alpha2 say `Accept`.
    for bad in ["Allow", "accept", "Drop", ""] {
        crd.assert_rejected(
            &with(&base(), "/spec/egress/0/action", json!(bad)),
            "spec.egress[0].action",
            "is not one of",
        );
    }
    crd.assert_rejected(
        &with(&base(), "/spec/ingress/0/action", json!("Allow")),
        "spec.ingress[0].action",
        "is not one of",
    );
}

#[test]
fn a_wrong_tier_is_rejected() {
    let crd = crd();
    for bad in ["admin", "Override", "NetworkPolicy"] {
        crd.assert_rejected(
            &with(&base(), "/spec/tier", json!(bad)),
            "spec.tier",
            "is not one of",
        );
    }
}

#[test]
fn the_priority_is_0_to_1000() {
    let crd = crd();
    crd.assert_valid("priority 0", &with(&base(), "/spec/priority", json!(0)));
    crd.assert_valid(
        "priority 1000",
        &with(&base(), "/spec/priority", json!(1000)),
    );
    crd.assert_rejected(
        &with(&base(), "/spec/priority", json!(1001)),
        "spec.priority",
        "greater than the maximum of 1000",
    );
    crd.assert_rejected(
        &with(&base(), "/spec/priority", json!(-1)),
        "spec.priority",
        "less than the minimum of 0",
    );
    crd.assert_rejected(
        &with(&base(), "/spec/priority", json!("10")),
        "spec.priority",
        "is not of type \"integer\"",
    );
}

#[test]
fn required_fields_are_required() {
    let crd = crd();
    for (pointer, path, field) in [
        ("/spec/tier", "spec", "tier"),
        ("/spec/priority", "spec", "priority"),
        ("/spec/subject", "spec", "subject"),
        ("/spec/egress/0/action", "spec.egress[0]", "action"),
        ("/spec/egress/0/to", "spec.egress[0]", "to"),
        ("/spec/ingress/0/from", "spec.ingress[0]", "from"),
        (
            "/spec/egress/0/ports/0/portNumber/port",
            "spec.egress[0].ports[0].portNumber",
            "port",
        ),
        (
            "/spec/egress/0/ports/1/portRange/start",
            "spec.egress[0].ports[1].portRange",
            "start",
        ),
        (
            "/spec/egress/2/to/0/pods/podSelector",
            "spec.egress[2].to[0].pods",
            "podSelector",
        ),
    ] {
        crd.assert_rejected(&without(&base(), pointer), path, field);
    }
}

#[test]
fn a_subject_sets_exactly_one_field() {
    let crd = crd();
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/subject/pods",
            json!({"namespaceSelector": {}, "podSelector": {}}),
        ),
        "spec.subject",
        "more than 1 property",
    );
    crd.assert_rejected(
        &with(&base(), "/spec/subject", json!({})),
        "spec.subject",
        "less than 1 property",
    );
}

#[test]
fn a_peer_sets_exactly_one_field() {
    let crd = crd();
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/egress/1/to/0/domainNames",
            json!(["github.com"]),
        ),
        "spec.egress[1].to[0]",
        "more than 1 property",
    );
    crd.assert_rejected(
        &with(&base(), "/spec/egress/1/to/0", json!({})),
        "spec.egress[1].to[0]",
        "less than 1 property",
    );
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/ingress/0/from/0/pods",
            json!({"namespaceSelector": {}, "podSelector": {}}),
        ),
        "spec.ingress[0].from[0]",
        "more than 1 property",
    );
}

#[test]
fn too_many_items_are_rejected() {
    let crd = crd();
    let names: Vec<String> = (0..26).map(|i| format!("host{i}.example.com")).collect();
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/egress/0/to/0/domainNames",
            json!(names[..26]),
        ),
        "spec.egress[0].to[0].domainNames",
        "more than 25 items",
    );
    crd.assert_valid(
        "25 domain names",
        &with(
            &base(),
            "/spec/egress/0/to/0/domainNames",
            json!(names[..25]),
        ),
    );
    let networks: Vec<String> = (0..26).map(|i| format!("198.51.100.{i}/32")).collect();
    crd.assert_rejected(
        &with(&base(), "/spec/egress/1/to/0/networks", json!(networks)),
        "spec.egress[1].to[0].networks",
        "more than 25 items",
    );
    let rule = base()["spec"]["egress"][1].clone();
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/egress",
            Value::Array(vec![rule.clone(); 101]),
        ),
        "spec.egress",
        "more than 100 items",
    );
    crd.assert_valid(
        "100 egress rules",
        &with(&base(), "/spec/egress", Value::Array(vec![rule; 100])),
    );
    let peer = json!({"namespaces": {}});
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/ingress/0/from",
            Value::Array(vec![peer; 101]),
        ),
        "spec.ingress[0].from",
        "more than 100 items",
    );
}

#[test]
fn empty_lists_are_rejected() {
    let crd = crd();
    for (pointer, path) in [
        ("/spec/egress/0/to", "spec.egress[0].to"),
        ("/spec/egress/0/ports", "spec.egress[0].ports"),
        (
            "/spec/egress/0/to/0/domainNames",
            "spec.egress[0].to[0].domainNames",
        ),
        (
            "/spec/egress/1/to/0/networks",
            "spec.egress[1].to[0].networks",
        ),
        ("/spec/ingress/0/from", "spec.ingress[0].from"),
    ] {
        crd.assert_rejected(&with(&base(), pointer, json!([])), path, "less than 1 item");
    }
}

#[test]
fn bad_domain_names_are_rejected() {
    let crd = crd();
    for bad in [
        "*.*.example.com",
        "api.*.example.com",
        "example",
        "exa mple.com",
    ] {
        crd.assert_rejected(
            &with(&base(), "/spec/egress/0/to/0/domainNames/0", json!(bad)),
            "spec.egress[0].to[0].domainNames[0]",
            "does not match",
        );
    }
}

#[test]
fn bounded_strings_and_ports() {
    let crd = crd();
    crd.assert_rejected(
        &with(&base(), "/spec/egress/0/name", json!("x".repeat(101))),
        "spec.egress[0].name",
        "longer than 100 characters",
    );
    crd.assert_valid(
        "a 100-character rule name",
        &with(&base(), "/spec/egress/0/name", json!("x".repeat(100))),
    );
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/egress/1/to/0/networks/0",
            json!(format!("2001:db8:{}::/48", "0".repeat(40))),
        ),
        "spec.egress[1].to[0].networks[0]",
        "longer than 43 characters",
    );
    for (port, reason) in [
        (0, "less than the minimum of 1"),
        (65536, "greater than the maximum of 65535"),
    ] {
        crd.assert_rejected(
            &with(
                &base(),
                "/spec/egress/0/ports/0/portNumber/port",
                json!(port),
            ),
            "spec.egress[0].ports[0].portNumber.port",
            reason,
        );
    }
    crd.assert_rejected(
        &with(
            &base(),
            "/spec/egress/0/ports/0/portNumber/port",
            json!("443"),
        ),
        "spec.egress[0].ports[0].portNumber.port",
        "is not of type \"integer\"",
    );
}

#[test]
fn a_port_range_must_ascend() {
    // CEL `self.start < self.end` (EKS): a one-port range is written as portNumber.
    let crd = crd();
    for (start, end) in [(3100, 3000), (3000, 3000)] {
        let object = with(
            &base(),
            "/spec/egress/0/ports/1/portRange",
            json!({"protocol": "UDP", "start": start, "end": end}),
        );
        crd.assert_rejected(
            &object,
            "spec.egress[0].ports[1].portRange",
            "Start port must be less than End port",
        );
    }
}

#[test]
fn domain_names_are_not_for_deny_rules() {
    // The EKS CEL rule rejects Deny with domainNames; it admits Pass, which the store's
    // parser (following the upstream API: domain names only in Accept rules) then rejects,
    // naming the field in the policy's status.
    let crd = crd();
    let deny = with(&base(), "/spec/egress/0/action", json!("Deny"));
    crd.assert_rejected(
        &deny,
        "spec.egress[0]",
        "domainNames peer cannot be used with Deny action",
    );
    let pass = with(&base(), "/spec/egress/0/action", json!("Pass"));
    crd.assert_valid("Pass with domainNames", &pass);
    let error = parser_accepts(&pass).unwrap_err();
    assert!(error.contains("spec.egress[0].action"), "{error}");
    assert!(
        error.contains("only be used in rules with action Accept"),
        "{error}"
    );
}

#[test]
fn unknown_fields_are_rejected() {
    let crd = crd();
    // The upstream v1alpha2 port notation is not part of the EKS API.
    let protocols = with(
        &without(&base(), "/spec/egress/0/ports"),
        "/spec/egress/0/protocols",
        json!([{"tcp": {"destinationPort": {"number": 443}}}]),
    );
    crd.assert_rejected(&protocols, "spec.egress[0]", "protocols");
    // Nor are `nodes` peers.
    crd.assert_rejected(
        &with(&base(), "/spec/egress/1/to/0", json!({"nodes": {}})),
        "spec.egress[1].to[0]",
        "nodes",
    );
    crd.assert_rejected(
        &with(&base(), "/spec/subject/namespace", json!({})),
        "spec.subject",
        "namespace",
    );
}
