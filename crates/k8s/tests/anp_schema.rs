//! The ApplicationNetworkPolicy CRD admits the seed's policy and the EKS user guide's example
//! (schema, defaults and CEL rules, as the API server applies them), and rejects what the EKS
//! CRD rejects, at the field the API server would name.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::{Crd, examples, parser_accepts, with, without, yaml};
use dnsfence_k8s::ApplicationNetworkPolicy;
use serde_json::{Value, json};

fn crd() -> Crd {
    Crd::load(common::ANP_CRD)
}

/// The seed's ApplicationNetworkPolicy (examples/seed/allow-github.yaml).
fn seed() -> Value {
    let seed = examples("examples/seed", "ApplicationNetworkPolicy");
    assert_eq!(seed.len(), 1, "the seed holds one ApplicationNetworkPolicy");
    seed[0].1.clone()
}

/// A policy using every field: ingress, both port forms, every egress peer type.
fn full() -> Value {
    yaml(
        r#"
apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata: {name: full, namespace: shop}
spec:
  podSelector:
    matchExpressions:
    - {key: app, operator: In, values: [web, api]}
  policyTypes: [Ingress, Egress]
  ingress:
  - from:
    - namespaceSelector: {matchLabels: {team: edge}}
      podSelector: {matchLabels: {app: lb}}
    - ipBlock: {cidr: 198.51.100.0/24, except: [198.51.100.128/25]}
    ports:
    - {protocol: TCP, port: 8080}
  egress:
  - to:
    - domainNames: ["github.com", "*.githubusercontent.com", "api.github.com."]
    ports:
    - {protocol: TCP, port: 443}
    - {protocol: UDP, port: 3000, endPort: 3100}
  - to:
    - ipBlock: {cidr: "2001:db8::/32"}
    - podSelector: {}
      namespaceSelector: {matchLabels: {kubernetes.io/metadata.name: kube-system}}
    ports:
    - {port: dns}
"#,
    )
}

#[test]
fn the_seed_and_the_eks_examples_are_admitted() {
    let crd = crd();
    let mut checked = vec![("the seed".to_string(), seed())];
    checked.extend(examples("examples/eks", "ApplicationNetworkPolicy"));
    checked.push(("every field".into(), full()));
    assert!(checked.len() >= 3, "{checked:?}");
    for (what, object) in &checked {
        crd.assert_valid(what, object);
    }
}

#[test]
fn admitted_examples_round_trip_through_the_rust_types() {
    // The types the CRD is generated from read every admitted example without losing a field.
    let crd = crd();
    let mut checked = examples("examples/eks", "ApplicationNetworkPolicy");
    checked.push(("the seed".into(), seed()));
    checked.push(("every field".into(), full()));
    for (what, object) in checked {
        let stored = crd.defaulted(&object);
        let typed: ApplicationNetworkPolicy = serde_json::from_value(stored.clone())
            .unwrap_or_else(|e| panic!("{what} does not read into the type: {e}"));
        assert_eq!(serde_json::to_value(&typed).unwrap(), stored, "{what}");
    }
}

#[test]
fn the_store_parser_accepts_what_the_examples_say() {
    // The seed and the EKS example are policies dnsfence enforces, not only admits.
    for (what, object) in examples("examples/eks", "ApplicationNetworkPolicy")
        .into_iter()
        .chain([
            ("the seed".to_string(), seed()),
            ("every field".into(), full()),
        ])
    {
        // `port: dns` (a named port) is admitted by the API but not by dnsfence.
        if what == "every field" {
            let error = parser_accepts(&object).unwrap_err();
            assert!(error.contains("named ports are not supported"), "{error}");
            continue;
        }
        parser_accepts(&object).unwrap_or_else(|e| panic!("{what}: {e}"));
    }
}

#[test]
fn a_missing_pod_selector_is_rejected() {
    crd().assert_rejected(
        &without(&seed(), "/spec/podSelector"),
        "spec",
        "podSelector",
    );
}

#[test]
fn a_missing_spec_is_rejected() {
    crd().assert_rejected(&without(&seed(), "/spec"), "", "spec");
}

#[test]
fn bad_domain_names_are_rejected() {
    let crd = crd();
    for bad in [
        "*.*.example.com", // a wildcard is one whole leftmost label
        "github.*",        // ... never anywhere else
        "*github.com",     // ... and never part of a label
        "localhost",       // at least two labels
        "-github.com",     // labels start with a letter or digit
        "github..com",     // no empty label
        "git hub.com",     // no spaces
        "",
    ] {
        let object = with(&seed(), "/spec/egress/0/to/0/domainNames/1", json!(bad));
        crd.assert_rejected(
            &object,
            "spec.egress[0].to[0].domainNames[1]",
            "does not match",
        );
    }
}

#[test]
fn wildcards_and_trailing_dots_are_admitted() {
    let crd = crd();
    for good in [
        "*.github.com",
        "github.com.",
        "*.a.b.example",
        "xn--bcher-kva.example",
        "_srv.example.com",
    ] {
        let object = with(&seed(), "/spec/egress/0/to/0/domainNames/0", json!(good));
        crd.assert_valid(good, &object);
    }
}

#[test]
fn domain_names_are_a_set() {
    let object = with(
        &seed(),
        "/spec/egress/0/to/0/domainNames",
        json!(["github.com", "github.com"]),
    );
    crd().assert_rejected(&object, "spec.egress[0].to[0].domainNames", "non-unique");
}

#[test]
fn an_empty_domain_names_list_is_rejected() {
    let object = with(&seed(), "/spec/egress/0/to/0/domainNames", json!([]));
    crd().assert_rejected(
        &object,
        "spec.egress[0].to[0].domainNames",
        "less than 1 item",
    );
}

#[test]
fn domain_names_stand_alone_in_their_peer() {
    // The EKS CRD's three CEL rules on ApplicationNetworkPolicyPeer.
    let crd = crd();
    let peer = "/spec/egress/0/to/0";
    for (field, value, message) in [
        (
            "ipBlock",
            json!({"cidr": "192.0.2.0/24"}),
            "ipBlock and domainNames are mutually exclusive",
        ),
        (
            "podSelector",
            json!({}),
            "podSelector and domainNames are mutually exclusive",
        ),
        (
            "namespaceSelector",
            json!({"matchLabels": {"team": "a"}}),
            "namespaceSelector and domainNames are mutually exclusive",
        ),
    ] {
        let object = with(&seed(), &format!("{peer}/{field}"), value);
        crd.assert_rejected(&object, "spec.egress[0].to[0]", message);
        // The store's parser says the same, naming the peer.
        let error = parser_accepts(&object).unwrap_err();
        assert!(error.contains("domainNames cannot be combined"), "{error}");
    }
}

#[test]
fn wrong_types_are_rejected() {
    let crd = crd();
    crd.assert_rejected(
        &with(&seed(), "/spec/egress/0/ports/0/port", json!(true)),
        "spec.egress[0].ports[0].port",
        "true",
    );
    crd.assert_rejected(
        &with(&seed(), "/spec/egress/0/ports/0/endPort", json!("444")),
        "spec.egress[0].ports[0].endPort",
        "is not of type \"integer\"",
    );
    crd.assert_rejected(
        &with(&seed(), "/spec/egress", json!({"to": []})),
        "spec.egress",
        "is not of type \"array\"",
    );
    crd.assert_rejected(
        &with(&seed(), "/spec/podSelector/matchLabels/run", json!(7)),
        "spec.podSelector.matchLabels.run",
        "is not of type \"string\"",
    );
    crd.assert_rejected(
        &with(&seed(), "/spec/egress/0/to/0/domainNames/0", json!(443)),
        "spec.egress[0].to[0].domainNames[0]",
        "is not of type \"string\"",
    );
}

#[test]
fn a_selector_requirement_needs_key_and_operator() {
    let object = with(
        &seed(),
        "/spec/podSelector/matchExpressions",
        json!([{"key": "app", "values": ["web"]}]),
    );
    crd().assert_rejected(&object, "spec.podSelector.matchExpressions[0]", "operator");
}

#[test]
fn an_ip_block_needs_a_cidr() {
    let object = with(
        &seed(),
        "/spec/egress/0/to/0",
        json!({"ipBlock": {"except": []}}),
    );
    crd().assert_rejected(&object, "spec.egress[0].to[0].ipBlock", "cidr");
}

#[test]
fn unknown_fields_are_rejected() {
    // kubectl's default strict field validation turns the API server's pruning into errors.
    let crd = crd();
    let typo = with(
        &without(&seed(), "/spec/egress/0/to/0/domainNames"),
        "/spec/egress/0/to/0/domainName",
        json!(["github.com"]),
    );
    crd.assert_rejected(&typo, "spec.egress[0].to[0]", "domainName");
    // `domainNames` belongs in the peer, not in the rule (an earlier draft of the EKS API).
    let misplaced = with(&seed(), "/spec/egress/0/domainNames", json!(["github.com"]));
    crd.assert_rejected(&misplaced, "spec.egress[0]", "domainNames");
    // Ingress peers are plain NetworkPolicy peers: no domain names.
    let ingress = with(
        &seed(),
        "/spec/ingress",
        json!([{"from": [{"domainNames": ["github.com"]}]}]),
    );
    crd.assert_rejected(&ingress, "spec.ingress[0].from[0]", "domainNames");
}

#[test]
fn status_is_the_stores_to_write() {
    // What the store writes is admitted; a malformed condition is not.
    let crd = crd();
    let status = json!({
        "conditions": [{
            "type": "Accepted",
            "status": "False",
            "reason": "Invalid",
            "message": "default/nginx-egress: spec.egress[0].to[0].domainNames[1]: \"github.*\": a wildcard may only be the whole leftmost label",
            "lastTransitionTime": "2026-11-30T10:00:00Z",
            "observedGeneration": 3
        }],
        "observedGeneration": 3,
        "storeRevision": 42,
        "selectedPods": 2
    });
    let mut object = seed();
    object["status"] = status.clone();
    crd.assert_valid("a status", &object);
    let typed: ApplicationNetworkPolicy = serde_json::from_value(object.clone()).unwrap();
    assert_eq!(serde_json::to_value(&typed).unwrap()["status"], status);

    crd.assert_rejected(
        &with(&object, "/status/conditions/0/status", json!("Yes")),
        "status.conditions[0].status",
        "is not one of",
    );
    crd.assert_rejected(
        &without(&object, "/status/conditions/0/reason"),
        "status.conditions[0]",
        "reason",
    );
    crd.assert_rejected(
        &with(&object, "/status/selectedPods", json!(-1)),
        "status.selectedPods",
        "minimum",
    );
}
