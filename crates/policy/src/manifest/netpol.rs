//! `networking.k8s.io/v1` NetworkPolicy and `networking.k8s.aws/v1alpha1`
//! ApplicationNetworkPolicy. They share one spec; the ApplicationNetworkPolicy egress peer
//! adds `domainNames`.

use serde::Deserialize;
use serde_yaml::Value;

use super::fields::{self, PortValue};
use super::findings::Findings;
use super::meta::{self, Document};
use crate::model::{Action, CidrRule, PolicyKind, Tier};
use crate::policy::{EgressRule, NamespaceScope, Peer, Policy, Subject};
use crate::ports::PortRange;
use crate::selector::LabelSelector;

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PolicySpec<EgressPeer> {
    pod_selector: LabelSelector,
    policy_types: Option<Vec<String>>,
    ingress: Option<Vec<IngressRuleSpec>>,
    egress: Option<Vec<EgressRuleSpec<EgressPeer>>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IngressRuleSpec {
    from: Option<Vec<NetworkPolicyPeer>>,
    ports: Option<Vec<PortSpec>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct EgressRuleSpec<EgressPeer> {
    to: Option<Vec<EgressPeer>>,
    ports: Option<Vec<PortSpec>>,
}

/// The NetworkPolicy peer, also used for every ingress peer: domain names only make sense
/// as destinations.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct NetworkPolicyPeer {
    ip_block: Option<IpBlockSpec>,
    pod_selector: Option<LabelSelector>,
    namespace_selector: Option<LabelSelector>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ApplicationPeer {
    ip_block: Option<IpBlockSpec>,
    pod_selector: Option<LabelSelector>,
    namespace_selector: Option<LabelSelector>,
    domain_names: Option<Vec<String>>,
}

impl From<NetworkPolicyPeer> for ApplicationPeer {
    fn from(peer: NetworkPolicyPeer) -> ApplicationPeer {
        ApplicationPeer {
            ip_block: peer.ip_block,
            pod_selector: peer.pod_selector,
            namespace_selector: peer.namespace_selector,
            domain_names: None,
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct IpBlockSpec {
    cidr: String,
    except: Option<Vec<String>>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortSpec {
    protocol: Option<String>,
    port: Option<PortValue>,
    end_port: Option<i64>,
}

/// Parses a NetworkPolicy or ApplicationNetworkPolicy document.
pub(super) fn parse(
    findings: &mut Findings,
    kind: PolicyKind,
    document: Value,
    default_namespace: &str,
) -> Option<Policy> {
    let (metadata, spec) = match kind {
        PolicyKind::ApplicationNetworkPolicy => {
            let document: Document<PolicySpec<ApplicationPeer>> = findings.deserialize(document)?;
            (document.metadata, document.spec)
        }
        _ => {
            let document: Document<PolicySpec<NetworkPolicyPeer>> =
                findings.deserialize_with_hint(document, domain_names_hint)?;
            (document.metadata, widen_peers(document.spec))
        }
    };
    let reference = meta::validate(findings, kind, &metadata, default_namespace);
    // Peers with only a podSelector need the namespace even when metadata is invalid, so
    // that the spec is still checked in full.
    let namespace = reference
        .as_ref()
        .map_or(default_namespace, |r| r.namespace.as_str())
        .to_string();
    let (isolates_egress, egress) = convert(findings, kind, &spec, &namespace);
    let reference = reference.filter(|_| findings.is_clean())?;
    Some(Policy {
        reference,
        tier: Tier::NetworkPolicy,
        priority: 0,
        subject: Subject::Namespace {
            namespace,
            pods: spec.pod_selector,
        },
        isolates_egress,
        egress,
    })
}

/// The most likely cause of `domainNames` in a NetworkPolicy is a wrong apiVersion/kind.
fn domain_names_hint(reason: &str) -> Option<String> {
    reason.starts_with("unknown field `domainNames`").then(|| {
        format!(
            "{reason} (domainNames is only accepted in {}/{})",
            PolicyKind::ApplicationNetworkPolicy.api_version(),
            PolicyKind::ApplicationNetworkPolicy.kind()
        )
    })
}

fn widen_peers(spec: PolicySpec<NetworkPolicyPeer>) -> PolicySpec<ApplicationPeer> {
    PolicySpec {
        pod_selector: spec.pod_selector,
        policy_types: spec.policy_types,
        ingress: spec.ingress,
        egress: spec.egress.map(|rules| {
            rules
                .into_iter()
                .map(|rule| EgressRuleSpec {
                    to: rule
                        .to
                        .map(|peers| peers.into_iter().map(ApplicationPeer::from).collect()),
                    ports: rule.ports,
                })
                .collect()
        }),
    }
}

/// Validates the spec, recording every error, and returns whether the policy isolates egress
/// and its egress rules (meaningful only when `findings` stays clean).
fn convert(
    findings: &mut Findings,
    kind: PolicyKind,
    spec: &PolicySpec<ApplicationPeer>,
    namespace: &str,
) -> (bool, Vec<EgressRule>) {
    fields::selector(findings, "spec.podSelector", &spec.pod_selector);
    let isolates_egress = isolates_egress(findings, spec);
    for (i, rule) in spec.ingress.iter().flatten().enumerate() {
        let path = format!("spec.ingress[{i}]");
        for (j, peer) in rule.from.iter().flatten().enumerate() {
            let peer = ApplicationPeer::from(peer.clone());
            peer_of(
                findings,
                &format!("{path}.from[{j}]"),
                &peer,
                kind,
                namespace,
            );
        }
        ports(findings, &path, rule.ports.as_deref());
    }
    let mut egress = Vec::new();
    for (i, rule) in spec.egress.iter().flatten().enumerate() {
        let path = format!("spec.egress[{i}]");
        let peers = match rule.to.as_deref() {
            // No `to` (or an empty one) allows every destination, as in Kubernetes.
            None | Some([]) => None,
            Some(to) => Some(
                to.iter()
                    .enumerate()
                    .filter_map(|(j, peer)| {
                        peer_of(findings, &format!("{path}.to[{j}]"), peer, kind, namespace)
                    })
                    .collect(),
            ),
        };
        let ports = ports(findings, &path, rule.ports.as_deref());
        egress.push(EgressRule {
            index: u32::try_from(i).unwrap_or(u32::MAX),
            name: String::new(),
            action: Action::Accept,
            peers,
            ports,
        });
    }
    // Egress rules of a policy that is not of type Egress have no effect in Kubernetes; they
    // were validated above but must not grant anything.
    if !isolates_egress {
        egress.clear();
    }
    (isolates_egress, egress)
}

/// The Kubernetes defaulting rule: without `policyTypes` (or with an empty list) a policy is
/// of type Ingress, plus Egress when it has egress rules (a non-empty `egress`, as in the API
/// server's defaulting).
fn isolates_egress(findings: &mut Findings, spec: &PolicySpec<ApplicationPeer>) -> bool {
    match spec.policy_types.as_deref() {
        None | Some([]) => spec.egress.as_ref().is_some_and(|rules| !rules.is_empty()),
        Some(types) => {
            for (k, policy_type) in types.iter().enumerate() {
                if policy_type != "Ingress" && policy_type != "Egress" {
                    findings.invalid(
                        format!("spec.policyTypes[{k}]"),
                        format!(
                            "unsupported policy type {policy_type:?}: must be Ingress or Egress"
                        ),
                    );
                }
            }
            types.iter().any(|t| t == "Egress")
        }
    }
}

fn peer_of(
    findings: &mut Findings,
    path: &str,
    peer: &ApplicationPeer,
    kind: PolicyKind,
    own_namespace: &str,
) -> Option<Peer> {
    let has_selectors = peer.pod_selector.is_some() || peer.namespace_selector.is_some();
    if let Some(domain_names) = &peer.domain_names {
        if peer.ip_block.is_some() || has_selectors {
            findings.invalid(
                path,
                "domainNames cannot be combined with ipBlock, podSelector or namespaceSelector in one peer: use a separate peer",
            );
            return None;
        }
        return fields::domain_names(findings, &format!("{path}.domainNames"), domain_names)
            .map(Peer::Domains);
    }
    if let Some(block) = &peer.ip_block {
        if has_selectors {
            findings.invalid(
                path,
                "ipBlock cannot be combined with podSelector or namespaceSelector in one peer",
            );
            return None;
        }
        return ip_block(findings, &format!("{path}.ipBlock"), block).map(Peer::Cidr);
    }
    if !has_selectors {
        let fields = if kind == PolicyKind::ApplicationNetworkPolicy {
            "podSelector, namespaceSelector, ipBlock or domainNames"
        } else {
            "podSelector, namespaceSelector or ipBlock"
        };
        findings.invalid(path, format!("a peer must set at least one of {fields}"));
        return None;
    }
    let pods_valid = peer
        .pod_selector
        .as_ref()
        .is_none_or(|s| fields::selector(findings, &format!("{path}.podSelector"), s));
    let namespaces_valid = peer
        .namespace_selector
        .as_ref()
        .is_none_or(|s| fields::selector(findings, &format!("{path}.namespaceSelector"), s));
    if !(pods_valid && namespaces_valid) {
        return None;
    }
    let namespaces = match &peer.namespace_selector {
        Some(selector) => NamespaceScope::Selector(selector.clone()),
        // Kubernetes: a podSelector alone selects pods of the policy's own namespace.
        None => NamespaceScope::Own(own_namespace.to_string()),
    };
    Some(Peer::Pods {
        namespaces,
        pods: peer.pod_selector.clone().unwrap_or_default(),
    })
}

fn ip_block(findings: &mut Findings, path: &str, block: &IpBlockSpec) -> Option<CidrRule> {
    let cidr = fields::cidr(findings, &format!("{path}.cidr"), &block.cidr)?;
    let mut except = Vec::new();
    let mut valid = true;
    for (k, raw) in block.except.iter().flatten().enumerate() {
        match fields::except_cidr(findings, &format!("{path}.except[{k}]"), raw, &cidr) {
            Some(net) => except.push(net),
            None => valid = false,
        }
    }
    valid.then_some(CidrRule { cidr, except })
}

/// A rule's `ports`: empty (or absent) means every port and protocol; an entry without
/// `port` means every port of its protocol.
fn ports(findings: &mut Findings, rule_path: &str, ports: Option<&[PortSpec]>) -> Vec<PortRange> {
    let mut ranges = Vec::new();
    for (j, spec) in ports.into_iter().flatten().enumerate() {
        let path = format!("{rule_path}.ports[{j}]");
        if let Some(range) = port_range(findings, &path, spec) {
            ranges.push(range);
        }
    }
    ranges
}

fn port_range(findings: &mut Findings, path: &str, spec: &PortSpec) -> Option<PortRange> {
    let protocol = fields::protocol(
        findings,
        &format!("{path}.protocol"),
        spec.protocol.as_deref(),
    );
    let Some(port) = &spec.port else {
        if spec.end_port.is_some() {
            findings.invalid(format!("{path}.endPort"), "endPort requires port to be set");
            return None;
        }
        return protocol.map(PortRange::all);
    };
    let start = fields::numeric_port(findings, &format!("{path}.port"), port);
    let end = match spec.end_port {
        None => start,
        Some(end_port) => {
            let end_path = format!("{path}.endPort");
            let end = fields::port_number(findings, &end_path, end_port)?;
            if let Some(start) = start
                && end < start
            {
                findings.invalid(
                    end_path,
                    format!("endPort {end} must not be less than port {start}"),
                );
                return None;
            }
            Some(end)
        }
    };
    Some(PortRange {
        protocol: protocol?,
        start: start?,
        end: end?,
    })
}
