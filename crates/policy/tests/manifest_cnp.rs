//! ClusterNetworkPolicy of both groups: tiers, actions, subjects, every peer type, both port
//! notations, and the rules that reject bad objects.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dnsfence_policy::domain::DomainPattern;
use dnsfence_policy::manifest::parse_documents;
use dnsfence_policy::model::{Action, CidrRule, PolicyKind, PolicyRef, Tier};
use dnsfence_policy::policy::{NamespaceScope, Peer, Policy, Subject};
use dnsfence_policy::ports::{PortRange, Protocol};
use dnsfence_policy::selector::LabelSelector;
use dnsfence_policy::{ManifestError, ManifestErrorKind};

const EKS: &str = "networking.k8s.aws/v1alpha1";
const UPSTREAM: &str = "policy.networking.k8s.io/v1alpha2";

fn cnp(api_version: &str, spec: &str) -> String {
    format!(
        "apiVersion: {api_version}\nkind: ClusterNetworkPolicy\nmetadata:\n  name: guard\nspec:\n{spec}"
    )
}

/// A spec with the given tier/priority header already set and `egress` as given.
fn admin_egress(api_version: &str, egress: &str) -> String {
    cnp(
        api_version,
        &format!(
            "  tier: Admin\n  priority: 10\n  subject: {{namespaces: {{}}}}\n  egress:\n{egress}"
        ),
    )
}

fn parse(text: &str) -> Policy {
    let mut objects =
        parse_documents(text, "default").unwrap_or_else(|errors| panic!("rejected: {errors:#?}"));
    assert_eq!(objects.len(), 1);
    objects.remove(0).policy
}

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
fn eks_admin_policy_with_every_peer_and_the_ports_notation() {
    let policy = parse(&cnp(
        EKS,
        "  tier: Admin
  priority: 10
  subject:
    namespaces:
      matchLabels: {env: prod}
  ingress:
  - name: deny-all-in
    action: Deny
    from: [{namespaces: {}}]
  egress:
  - name: allow-github
    action: Accept
    to:
    - domainNames: ['*.github.com']
    ports:
    - portNumber: {protocol: TCP, port: 443}
    - portRange: {protocol: UDP, start: 3000, end: 3100}
  - name: no-metadata
    action: Deny
    to:
    - networks: [169.254.169.254/32, 'fd00:ec2::254/128']
  - name: to-the-platform
    action: Pass
    to:
    - namespaces: {matchLabels: {team: platform}}
    - pods:
        namespaceSelector: {matchLabels: {team: data}}
        podSelector: {matchLabels: {app: db}}
",
    ));
    assert_eq!(
        policy.reference,
        PolicyRef {
            kind: PolicyKind::ClusterNetworkPolicy,
            namespace: String::new(),
            name: "guard".into(),
        }
    );
    assert_eq!(policy.tier, Tier::Admin);
    assert_eq!(policy.priority, 10);
    assert_eq!(policy.subject, Subject::Namespaces(labels("env", "prod")));
    assert!(!policy.isolates_egress);
    let rules = &policy.egress;
    assert_eq!(rules.len(), 3);

    assert_eq!(rules[0].name, "allow-github");
    assert_eq!(rules[0].action, Action::Accept);
    assert_eq!(
        rules[0].peers.as_deref().unwrap(),
        [Peer::Domains(vec![DomainPattern::Wildcard(
            "github.com".into()
        )])]
    );
    assert_eq!(
        rules[0].ports,
        [
            PortRange::single(Protocol::Tcp, 443),
            PortRange {
                protocol: Protocol::Udp,
                start: 3000,
                end: 3100
            },
        ]
    );

    assert_eq!(rules[1].action, Action::Deny);
    assert_eq!(
        rules[1].peers.as_deref().unwrap(),
        [
            Peer::Cidr(CidrRule {
                cidr: "169.254.169.254/32".parse().unwrap(),
                except: Vec::new(),
            }),
            Peer::Cidr(CidrRule {
                cidr: "fd00:ec2::254/128".parse().unwrap(),
                except: Vec::new(),
            }),
        ]
    );
    assert!(rules[1].ports.is_empty());

    assert_eq!(rules[2].action, Action::Pass);
    assert_eq!(rules[2].index, 2);
    assert_eq!(
        rules[2].peers.as_deref().unwrap(),
        [
            Peer::Pods {
                namespaces: NamespaceScope::Selector(labels("team", "platform")),
                pods: LabelSelector::default(),
            },
            Peer::Pods {
                namespaces: NamespaceScope::Selector(labels("team", "data")),
                pods: labels("app", "db"),
            },
        ]
    );
}

#[test]
fn upstream_baseline_policy_with_the_protocols_notation() {
    let policy = parse(&cnp(
        UPSTREAM,
        "  tier: Baseline
  priority: 0
  subject:
    pods:
      namespaceSelector: {}
      podSelector: {matchLabels: {app: web}}
  egress:
  - action: Accept
    to: [{domainNames: [example.com]}]
    protocols:
    - tcp: {destinationPort: {number: 443}}
    - udp: {destinationPort: {range: {start: 5000, end: 5010}}}
    - sctp: {}
",
    ));
    assert_eq!(
        policy.reference.kind,
        PolicyKind::UpstreamClusterNetworkPolicy
    );
    assert_eq!(policy.tier, Tier::Baseline);
    assert_eq!(policy.priority, 0);
    assert_eq!(
        policy.subject,
        Subject::Pods {
            namespaces: LabelSelector::default(),
            pods: labels("app", "web"),
        }
    );
    assert_eq!(policy.egress[0].name, "");
    assert_eq!(
        policy.egress[0].ports,
        [
            PortRange::single(Protocol::Tcp, 443),
            PortRange {
                protocol: Protocol::Udp,
                start: 5000,
                end: 5010
            },
            PortRange::all(Protocol::Sctp),
        ]
    );
}

#[test]
fn both_groups_may_hold_the_same_name() {
    let text = format!(
        "{}---\n{}",
        admin_egress(EKS, "  - {action: Deny, to: [{networks: [10.0.0.0/8]}]}\n"),
        admin_egress(
            UPSTREAM,
            "  - {action: Deny, to: [{networks: [10.0.0.0/8]}]}\n"
        ),
    );
    let objects = parse_documents(&text, "default").unwrap();
    assert_eq!(objects.len(), 2);
    assert_ne!(objects[0].policy.reference, objects[1].policy.reference);
}

#[test]
fn domain_names_only_with_accept() {
    for api_version in [EKS, UPSTREAM] {
        let error = rejected(
            &admin_egress(
                api_version,
                "  - {action: Deny, to: [{domainNames: [github.com]}]}\n",
            ),
            "spec.egress[0].action",
            "domainNames may only be used in rules with action Accept",
        );
        assert_eq!(error.object, "guard");
    }
    rejected(
        &admin_egress(
            EKS,
            "  - {action: Pass, to: [{networks: [10.0.0.0/8]}, {domainNames: [a.com]}]}\n",
        ),
        "spec.egress[0].action",
        "to[1] has domainNames",
    );
}

#[test]
fn priority_range() {
    let with_priority = |priority: &str| {
        cnp(
            EKS,
            &format!("  tier: Admin\n  priority: {priority}\n  subject: {{namespaces: {{}}}}\n"),
        )
    };
    assert_eq!(parse(&with_priority("1000")).priority, 1000);
    rejected(
        &with_priority("1001"),
        "spec.priority",
        "between 0 and 1000",
    );
    rejected(&with_priority("-1"), "spec.priority", "between 0 and 1000");
    rejected(&with_priority("high"), "spec.priority", "invalid type");
}

#[test]
fn subject_needs_exactly_one_selector() {
    let with_subject = |subject: &str| {
        cnp(
            UPSTREAM,
            &format!("  tier: Admin\n  priority: 1\n  subject: {subject}\n"),
        )
    };
    rejected(
        &with_subject("{namespaces: {}, pods: {namespaceSelector: {}, podSelector: {}}}"),
        "spec.subject",
        "not both",
    );
    rejected(
        &with_subject("{}"),
        "spec.subject",
        "set exactly one of namespaces or pods",
    );
    rejected(
        &with_subject("{pods: {podSelector: {}}}"),
        "spec.subject.pods.namespaceSelector",
        "required field is missing",
    );
    rejected(
        &cnp(EKS, "  tier: Admin\n  priority: 1\n"),
        "spec.subject",
        "required field is missing",
    );
}

#[test]
fn cluster_scoped_objects_have_no_namespace() {
    let text = admin_egress(EKS, "  - {action: Deny, to: [{networks: [10.0.0.0/8]}]}\n")
        .replace("  name: guard\n", "  name: guard\n  namespace: default\n");
    let error = rejected(&text, "metadata.namespace", "cluster-scoped");
    assert_eq!(error.object, "guard");
}

#[test]
fn bad_rules() {
    let egress = |rule: &str| admin_egress(EKS, &format!("  - {rule}\n"));
    rejected(
        &egress("{action: Allow, to: [{networks: [10.0.0.0/8]}]}"),
        "spec.egress[0].action",
        "must be Accept, Deny or Pass",
    );
    rejected(
        &egress("{to: [{networks: [10.0.0.0/8]}]}"),
        "spec.egress[0].action",
        "required field is missing",
    );
    rejected(
        &egress("{action: Deny, to: []}"),
        "spec.egress[0].to",
        "at least one peer",
    );
    rejected(
        &egress(&format!(
            "{{name: {}, action: Deny, to: [{{networks: [10.0.0.0/8]}}]}}",
            "x".repeat(101)
        )),
        "spec.egress[0].name",
        "at most 100 characters",
    );
    rejected(
        &egress("{action: Deny, to: [{networks: [10.0.0.0/8], namespaces: {}}]}"),
        "spec.egress[0].to[0]",
        "exactly one of namespaces, pods, nodes, networks or domainNames (found namespaces, networks)",
    );
    rejected(
        &egress("{action: Deny, to: [{}]}"),
        "spec.egress[0].to[0]",
        "none is set",
    );
    rejected(
        &egress("{action: Deny, to: [{nodes: {matchLabels: {role: infra}}}]}"),
        "spec.egress[0].to[0].nodes",
        "nodes peers are not supported by dnsfence",
    );
    rejected(
        &egress("{action: Deny, to: [{networks: [10.0.0.1/8]}]}"),
        "spec.egress[0].to[0].networks[0]",
        "host bits set",
    );
    rejected(
        &egress("{action: Accept, to: [{domainNames: ['*.*.com']}]}"),
        "spec.egress[0].to[0].domainNames[0]",
        "a wildcard may only be the whole leftmost label",
    );
    rejected(
        &egress(
            "{action: Deny, to: [{namespaces: {matchExpressions: [{key: a, operator: Exists, values: [x]}]}}]}",
        ),
        "spec.egress[0].to[0].namespaces.matchExpressions[0].values",
        "must be empty for operator Exists",
    );
    rejected(
        &cnp(
            EKS,
            "  tier: Developer\n  priority: 1\n  subject: {namespaces: {}}\n",
        ),
        "spec.tier",
        "must be Admin or Baseline",
    );
    rejected(
        &cnp(
            EKS,
            "  tier: Admin\n  priority: 1\n  subject: {namespaces: {}}\n  ingress: [{action: Accept, from: [{networks: [10.0.0.0/8]}]}]\n",
        ),
        "spec.ingress[0].from[0].networks",
        "unknown field `networks`",
    );
}

#[test]
fn bad_ports_in_both_notations() {
    let ports = |ports: &str| {
        admin_egress(
            UPSTREAM,
            &format!("  - action: Deny\n    to: [{{networks: [10.0.0.0/8]}}]\n{ports}"),
        )
    };
    rejected(
        &ports("    ports: [{portNumber: {port: 443}}]\n    protocols: [{tcp: {}}]\n"),
        "spec.egress[0]",
        "either ports or protocols, not both",
    );
    rejected(
        &ports("    ports: [{namedPort: https}]\n"),
        "spec.egress[0].ports[0].namedPort",
        "named ports are not supported",
    );
    rejected(
        &ports("    protocols: [{destinationNamedPort: https}]\n"),
        "spec.egress[0].protocols[0].destinationNamedPort",
        "named ports are not supported",
    );
    rejected(
        &ports("    ports: [{portNumber: {protocol: TCP, port: 0}}]\n"),
        "spec.egress[0].ports[0].portNumber.port",
        "between 1 and 65535",
    );
    rejected(
        &ports("    ports: [{portRange: {start: 9000, end: 8000}}]\n"),
        "spec.egress[0].ports[0].portRange.end",
        "before it starts",
    );
    rejected(
        &ports("    protocols: [{tcp: {destinationPort: {number: 65536}}}]\n"),
        "spec.egress[0].protocols[0].tcp.destinationPort.number",
        "between 1 and 65535",
    );
    rejected(
        &ports("    protocols: [{tcp: {}, udp: {}}]\n"),
        "spec.egress[0].protocols[0]",
        "exactly one of tcp, udp, sctp or destinationNamedPort",
    );
    rejected(
        &ports(
            "    protocols: [{tcp: {destinationPort: {number: 1, range: {start: 1, end: 2}}}}]\n",
        ),
        "spec.egress[0].protocols[0].tcp.destinationPort",
        "exactly one of number or range",
    );
    rejected(
        &ports("    ports: [{portNumber: {port: 80}, namedPort: http}]\n"),
        "spec.egress[0].ports[0]",
        "exactly one of portNumber, portRange or namedPort",
    );
    rejected(
        &ports("    protocols: []\n"),
        "spec.egress[0].protocols",
        "at least one entry",
    );
    rejected(
        &ports("    protocols: [{TCP: {}}]\n"),
        "spec.egress[0].protocols[0].TCP",
        "unknown field `TCP`",
    );
}
