//! ClusterNetworkPolicy of both groups: `networking.k8s.aws/v1alpha1` (EKS) and
//! `policy.networking.k8s.io/v1alpha2` (upstream network-policy-api). The two share one
//! schema; both port notations are accepted in both groups (see [`super::cnp_ports`]).

use serde::Deserialize;
use serde_yaml::Value;

use super::cnp_ports::{self, PortSpec, ProtocolSpec};
use super::fields;
use super::findings::Findings;
use super::meta::{self, Document};
use crate::model::{Action, CidrRule, PolicyKind, Tier};
use crate::policy::{EgressRule, NamespaceScope, Peer, Policy, Subject};
use crate::selector::LabelSelector;

const MAX_PRIORITY: i64 = 1000;
const MAX_RULE_NAME_LEN: usize = 100;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ClusterPolicySpec {
    tier: String,
    priority: i64,
    subject: SubjectSpec,
    ingress: Option<Vec<IngressRuleSpec>>,
    egress: Option<Vec<EgressRuleSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct SubjectSpec {
    namespaces: Option<LabelSelector>,
    pods: Option<PodsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PodsSpec {
    namespace_selector: LabelSelector,
    pod_selector: LabelSelector,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressRuleSpec {
    name: Option<String>,
    action: String,
    from: Vec<IngressPeerSpec>,
    ports: Option<Vec<PortSpec>>,
    protocols: Option<Vec<ProtocolSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressPeerSpec {
    namespaces: Option<LabelSelector>,
    pods: Option<PodsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressRuleSpec {
    name: Option<String>,
    action: String,
    to: Vec<EgressPeerSpec>,
    ports: Option<Vec<PortSpec>>,
    protocols: Option<Vec<ProtocolSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressPeerSpec {
    namespaces: Option<LabelSelector>,
    pods: Option<PodsSpec>,
    nodes: Option<LabelSelector>,
    networks: Option<Vec<String>>,
    domain_names: Option<Vec<String>>,
}

/// Parses a ClusterNetworkPolicy document of either group.
pub(super) fn parse(findings: &mut Findings, kind: PolicyKind, document: Value) -> Option<Policy> {
    let document: Document<ClusterPolicySpec> = findings.deserialize(document)?;
    // Cluster-scoped: the default namespace never applies.
    let reference = meta::validate(findings, kind, &document.metadata, "");
    let spec = document.spec;
    let tier = tier(findings, &spec.tier);
    let priority = priority(findings, spec.priority);
    let subject = subject(findings, spec.subject);
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        ingress_rule(findings, &format!("spec.ingress[{i}]"), rule);
    }
    let egress: Vec<EgressRule> = spec
        .egress
        .iter()
        .flatten()
        .enumerate()
        .filter_map(|(i, rule)| egress_rule(findings, i, rule))
        .collect();
    if !findings.is_clean() {
        return None;
    }
    Some(Policy {
        reference: reference?,
        tier: tier?,
        priority: priority?,
        subject: subject?,
        isolates_egress: false,
        egress,
    })
}

fn tier(findings: &mut Findings, raw: &str) -> Option<Tier> {
    match raw {
        "Admin" => Some(Tier::Admin),
        "Baseline" => Some(Tier::Baseline),
        _ => {
            findings.invalid(
                "spec.tier",
                format!("unsupported tier {raw:?}: must be Admin or Baseline"),
            );
            None
        }
    }
}

fn priority(findings: &mut Findings, raw: i64) -> Option<u32> {
    match u32::try_from(raw) {
        Ok(priority) if raw <= MAX_PRIORITY => Some(priority),
        _ => {
            findings.invalid(
                "spec.priority",
                format!("priority {raw} is out of range: must be between 0 and {MAX_PRIORITY}"),
            );
            None
        }
    }
}

fn subject(findings: &mut Findings, spec: SubjectSpec) -> Option<Subject> {
    match (spec.namespaces, spec.pods) {
        (Some(namespaces), None) => {
            fields::selector(findings, "spec.subject.namespaces", &namespaces)
                .then_some(Subject::Namespaces(namespaces))
        }
        (None, Some(pods)) => {
            pods_selectors(findings, "spec.subject.pods", &pods).then_some(Subject::Pods {
                namespaces: pods.namespace_selector,
                pods: pods.pod_selector,
            })
        }
        (Some(_), Some(_)) => {
            findings.invalid(
                "spec.subject",
                "set exactly one of namespaces or pods, not both",
            );
            None
        }
        (None, None) => {
            findings.invalid("spec.subject", "set exactly one of namespaces or pods");
            None
        }
    }
}

fn pods_selectors(findings: &mut Findings, path: &str, pods: &PodsSpec) -> bool {
    let namespaces_ok = fields::selector(
        findings,
        &format!("{path}.namespaceSelector"),
        &pods.namespace_selector,
    );
    let pods_ok = fields::selector(findings, &format!("{path}.podSelector"), &pods.pod_selector);
    namespaces_ok && pods_ok
}

fn action(findings: &mut Findings, path: &str, raw: &str) -> Option<Action> {
    match raw {
        "Accept" => Some(Action::Accept),
        "Deny" => Some(Action::Deny),
        "Pass" => Some(Action::Pass),
        _ => {
            findings.invalid(
                format!("{path}.action"),
                format!("unsupported action {raw:?}: must be Accept, Deny or Pass"),
            );
            None
        }
    }
}

fn rule_name(findings: &mut Findings, path: &str, name: Option<&str>) -> String {
    let name = name.unwrap_or_default();
    if name.chars().count() > MAX_RULE_NAME_LEN {
        findings.invalid(
            format!("{path}.name"),
            format!("a rule name may be at most {MAX_RULE_NAME_LEN} characters"),
        );
    }
    name.to_string()
}

/// Ingress rules are checked as strictly as egress ones but produce nothing: dnsfence
/// enforces egress only.
fn ingress_rule(findings: &mut Findings, path: &str, rule: &IngressRuleSpec) {
    rule_name(findings, path, rule.name.as_deref());
    action(findings, path, &rule.action);
    if rule.from.is_empty() {
        findings.invalid(format!("{path}.from"), "must list at least one peer");
    }
    for (j, peer) in rule.from.iter().enumerate() {
        let peer_path = format!("{path}.from[{j}]");
        match (&peer.namespaces, &peer.pods) {
            (Some(namespaces), None) => {
                fields::selector(findings, &format!("{peer_path}.namespaces"), namespaces);
            }
            (None, Some(pods)) => {
                pods_selectors(findings, &format!("{peer_path}.pods"), pods);
            }
            _ => findings.invalid(
                peer_path,
                "a peer must set exactly one of namespaces or pods",
            ),
        }
    }
    cnp_ports::rule_ports(
        findings,
        path,
        rule.ports.as_deref(),
        rule.protocols.as_deref(),
    );
}

fn egress_rule(findings: &mut Findings, index: usize, rule: &EgressRuleSpec) -> Option<EgressRule> {
    let path = format!("spec.egress[{index}]");
    let name = rule_name(findings, &path, rule.name.as_deref());
    let action = action(findings, &path, &rule.action);
    if rule.to.is_empty() {
        findings.invalid(format!("{path}.to"), "must list at least one peer");
    }
    let mut peers = Vec::new();
    for (j, peer) in rule.to.iter().enumerate() {
        peers.extend(egress_peer(findings, &format!("{path}.to[{j}]"), peer));
    }
    // Which domains a Deny or Pass would cover depends on what the workload resolves, which
    // dnsfence cannot bound; the EKS API allows domainNames in Accept rules only.
    if let Some(action) = action
        && action != Action::Accept
        && let Some(j) = rule.to.iter().position(|peer| peer.domain_names.is_some())
    {
        findings.invalid(
            format!("{path}.action"),
            format!(
                "domainNames may only be used in rules with action Accept (to[{j}] has domainNames, the action is {action})"
            ),
        );
    }
    let ports = cnp_ports::rule_ports(
        findings,
        &path,
        rule.ports.as_deref(),
        rule.protocols.as_deref(),
    );
    Some(EgressRule {
        index: u32::try_from(index).unwrap_or(u32::MAX),
        name,
        action: action?,
        peers: Some(peers),
        ports,
    })
}

/// One egress peer as policy peers: a `networks` peer yields one CIDR peer per entry.
fn egress_peer(findings: &mut Findings, path: &str, peer: &EgressPeerSpec) -> Vec<Peer> {
    let set: Vec<&str> = [
        ("namespaces", peer.namespaces.is_some()),
        ("pods", peer.pods.is_some()),
        ("nodes", peer.nodes.is_some()),
        ("networks", peer.networks.is_some()),
        ("domainNames", peer.domain_names.is_some()),
    ]
    .into_iter()
    .filter_map(|(field, is_set)| is_set.then_some(field))
    .collect();
    if set.len() != 1 {
        let found = if set.is_empty() {
            "none is set".to_string()
        } else {
            format!("found {}", set.join(", "))
        };
        findings.invalid(
            path,
            format!(
                "a peer must set exactly one of namespaces, pods, nodes, networks or domainNames ({found})"
            ),
        );
        return Vec::new();
    }
    if let Some(namespaces) = &peer.namespaces {
        let valid = fields::selector(findings, &format!("{path}.namespaces"), namespaces);
        return valid
            .then(|| Peer::Pods {
                namespaces: NamespaceScope::Selector(namespaces.clone()),
                pods: LabelSelector::default(),
            })
            .into_iter()
            .collect();
    }
    if let Some(pods) = &peer.pods {
        let valid = pods_selectors(findings, &format!("{path}.pods"), pods);
        return valid
            .then(|| Peer::Pods {
                namespaces: NamespaceScope::Selector(pods.namespace_selector.clone()),
                pods: pods.pod_selector.clone(),
            })
            .into_iter()
            .collect();
    }
    if let Some(networks) = &peer.networks {
        return networks_peers(findings, &format!("{path}.networks"), networks);
    }
    if let Some(domain_names) = &peer.domain_names {
        return fields::domain_names(findings, &format!("{path}.domainNames"), domain_names)
            .map(Peer::Domains)
            .into_iter()
            .collect();
    }
    // Only `nodes` is left: dnsfence does not know node addresses.
    findings.invalid(
        format!("{path}.nodes"),
        "nodes peers are not supported by dnsfence",
    );
    Vec::new()
}

fn networks_peers(findings: &mut Findings, path: &str, networks: &[String]) -> Vec<Peer> {
    if networks.is_empty() {
        findings.invalid(path, "must list at least one CIDR");
    }
    networks
        .iter()
        .enumerate()
        .filter_map(|(k, raw)| fields::cidr(findings, &format!("{path}[{k}]"), raw))
        .map(|cidr| {
            Peer::Cidr(CidrRule {
                cidr,
                except: Vec::new(),
            })
        })
        .collect()
}
