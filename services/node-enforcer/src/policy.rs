//! From compiled allowlists to what the datapath holds: the `cidrs` entries of an allowlist,
//! and port-set conversions for grants. Pure functions, tested without root.

use std::{collections::BTreeSet, net::IpAddr};

use dnsfence_policy::{
    allowlist::{Allowlist, DefaultPolicy, Destination},
    model::{Destinations, RuleKind},
    ports::{PortRange, PortSet, Protocol as PolicyProtocol},
};
use ipnet::{IpNet, Ipv4Net, Ipv6Net};

use crate::{
    maps::PORT_SLOTS,
    types::{PortSpec, Protocol},
};

/// A policy port range as the datapath's port spec.
pub fn port_spec(r: &PortRange) -> PortSpec {
    PortSpec {
        proto: match r.protocol {
            PolicyProtocol::Tcp => Protocol::Tcp,
            PolicyProtocol::Udp => Protocol::Udp,
            PolicyProtocol::Sctp => Protocol::Sctp,
        },
        start: r.start,
        end: r.end,
    }
}

/// The datapath port specs of a port set: every port of every protocol is one "any" range
/// (which also admits ICMP); otherwise one range per TCP/UDP/SCTP range. "Other protocols"
/// in a set that is not everything cannot be expressed without also admitting every TCP
/// port, so it is left out (fails closed).
pub fn port_specs(set: &PortSet) -> Vec<PortSpec> {
    if *set == PortSet::everything() {
        return vec![PortSpec::ALL];
    }
    set.ranges().iter().map(port_spec).collect()
}

/// A port set from grant ranges.
pub fn port_set(ranges: &[PortRange]) -> PortSet {
    let mut set = PortSet::empty();
    for r in ranges {
        set.insert(*r);
    }
    set
}

/// What `allowlist` still allows of `granted` for `name` resolved to `dst`.
pub fn allowed_of_grant(
    allowlist: &Allowlist,
    name: &str,
    dst: IpAddr,
    granted: &[PortRange],
    default: DefaultPolicy,
) -> PortSet {
    let decision = allowlist.allowed_ports(Destination::Resolved(name, dst), default);
    decision.allowed.intersect(&port_set(granted))
}

fn universe() -> [IpNet; 2] {
    [IpNet::V4(Ipv4Net::default()), IpNet::V6(Ipv6Net::default())]
}

/// An address of `p` that no prefix of `inside` (all strictly longer, within `p`) covers,
/// or `None` when they cover all of `p`.
fn representative(p: IpNet, inside: &[IpNet]) -> Option<IpAddr> {
    let within: Vec<IpNet> = inside
        .iter()
        .filter(|q| p.contains(*q) && **q != p)
        .copied()
        .collect();
    if inside.contains(&p) {
        return None;
    }
    if within.is_empty() {
        return Some(p.network());
    }
    let halves = p.subnets(p.prefix_len().saturating_add(1)).ok()?;
    for half in halves {
        if let Some(a) = representative(half, &within) {
            return Some(a);
        }
    }
    None
}

/// The `cidrs` entries of `allowlist`: (prefix, allowed ports), longest prefix winning.
///
/// The datapath's LPM trie answers one entry per packet, so each entry must already hold
/// everything the allowlist decides for the addresses it is the longest match of. Every
/// rule prefix and `except` block (plus `0.0.0.0/0` and `::/0`) becomes an entry; the
/// addresses an entry answers for — inside it, outside every longer listed prefix — meet
/// the same rules, so evaluating the allowlist for one of them
/// ([`Allowlist::allowed_ports`] of an address) gives the entry's ports exactly. That
/// copies a wider prefix's ports into the narrower entries it covers, empties an `except`
/// block, honours Deny and Pass rules and tier order, and, for a pod that no policy
/// isolates, lets the node default reach addresses no rule names. Universal entries that
/// allow nothing are left out. More than [`PORT_SLOTS`] ranges for one prefix keep the
/// first ones (fail closed).
pub fn cidr_entries(allowlist: &Allowlist, default: DefaultPolicy) -> Vec<(IpNet, Vec<PortSpec>)> {
    let mut prefixes: BTreeSet<IpNet> = universe().into_iter().collect();
    for rule in allowlist.rules() {
        if let RuleKind::Match {
            destinations: Destinations::Peers { cidrs, .. },
            ..
        } = &rule.kind
        {
            for c in cidrs {
                prefixes.insert(c.cidr.trunc());
                for e in &c.except {
                    prefixes.insert(e.trunc());
                }
            }
        }
    }
    let list: Vec<IpNet> = prefixes.into_iter().collect();
    let mut out = Vec::new();
    for p in &list {
        let longer: Vec<IpNet> = list
            .iter()
            .filter(|q| q.prefix_len() > p.prefix_len() && p.contains(*q))
            .copied()
            .collect();
        let Some(rep) = representative(*p, &longer) else {
            continue;
        };
        let allowed = allowlist
            .allowed_ports(Destination::Address(rep), default)
            .allowed;
        let mut specs = port_specs(&allowed);
        if specs.is_empty() && p.prefix_len() == 0 {
            continue;
        }
        if specs.len() > PORT_SLOTS {
            tracing::warn!(
                allowlist = %allowlist.id(),
                prefix = %p,
                ranges = specs.len(),
                "more port ranges than a cidrs entry holds; keeping the first {PORT_SLOTS}"
            );
            specs.truncate(PORT_SLOTS);
        }
        out.push((*p, specs));
    }
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use dnsfence_policy::{
        domain::DomainPattern,
        model::{Action, CidrRule, PolicyKind, PolicyRef, Rule, RuleOrigin, Tier},
    };

    use super::*;

    fn origin() -> RuleOrigin {
        RuleOrigin {
            policy: PolicyRef {
                kind: PolicyKind::NetworkPolicy,
                namespace: "default".into(),
                name: "p".into(),
            },
            rule_index: 0,
            rule_name: String::new(),
        }
    }

    fn accept(cidrs: Vec<CidrRule>, domains: Vec<&str>, ports: Vec<PortRange>) -> Rule {
        Rule {
            tier: Tier::NetworkPolicy,
            priority: 0,
            kind: RuleKind::Match {
                action: Action::Accept,
                destinations: Destinations::Peers {
                    domains: domains
                        .into_iter()
                        .map(|d| DomainPattern::parse(d).unwrap())
                        .collect(),
                    cidrs,
                },
                ports,
                origin: origin(),
            },
        }
    }

    fn isolation() -> Rule {
        Rule {
            tier: Tier::NetworkPolicy,
            priority: 0,
            kind: RuleKind::Isolation {
                by: vec![origin().policy].into(),
            },
        }
    }

    fn net(s: &str) -> IpNet {
        s.parse().unwrap()
    }

    fn tcp(p: u16) -> PortRange {
        PortRange::single(PolicyProtocol::Tcp, p)
    }

    fn entry(entries: &[(IpNet, Vec<PortSpec>)], p: &str) -> Option<Vec<PortSpec>> {
        entries
            .iter()
            .find(|(n, _)| *n == net(p))
            .map(|(_, s)| s.clone())
    }

    #[test]
    fn nested_prefixes_carry_the_wider_ports_and_except_blocks_deny() {
        let al = Allowlist::new(vec![
            accept(
                vec![CidrRule {
                    cidr: net("10.0.0.0/8"),
                    except: vec![net("10.9.0.0/16")],
                }],
                vec![],
                vec![tcp(443)],
            ),
            accept(
                vec![CidrRule::host("10.1.2.3".parse().unwrap())],
                vec![],
                vec![tcp(80)],
            ),
            isolation(),
        ]);
        let e = cidr_entries(&al, DefaultPolicy::DefaultAllow);
        let t443 = PortSpec::port(Protocol::Tcp, 443);
        let t80 = PortSpec::port(Protocol::Tcp, 80);
        assert_eq!(entry(&e, "10.0.0.0/8"), Some(vec![t443]));
        assert_eq!(entry(&e, "10.9.0.0/16"), Some(vec![]));
        let mut host = entry(&e, "10.1.2.3/32").unwrap();
        host.sort();
        assert_eq!(host, vec![t80, t443]);
        // isolated: the universal entries allow nothing and are left out
        assert_eq!(entry(&e, "0.0.0.0/0"), None);
        assert_eq!(entry(&e, "::/0"), None);
    }

    #[test]
    fn an_unisolated_pod_reaches_the_rest_under_default_allow_only() {
        let al = Allowlist::new(vec![accept(vec![], vec!["github.com"], vec![tcp(443)])]);
        let allow = cidr_entries(&al, DefaultPolicy::DefaultAllow);
        assert_eq!(entry(&allow, "0.0.0.0/0"), Some(vec![PortSpec::ALL]));
        assert_eq!(entry(&allow, "::/0"), Some(vec![PortSpec::ALL]));
        assert!(cidr_entries(&al, DefaultPolicy::DefaultDeny).is_empty());
    }

    #[test]
    fn a_prefix_covered_by_longer_ones_is_skipped() {
        // 10.0.0.0/31 = 10.0.0.0/32 + 10.0.0.1/32: no address answers to the /31
        let al = Allowlist::new(vec![
            accept(
                vec![CidrRule::host("10.0.0.0".parse().unwrap())],
                vec![],
                vec![],
            ),
            accept(
                vec![CidrRule::host("10.0.0.1".parse().unwrap())],
                vec![],
                vec![],
            ),
            accept(
                vec![CidrRule {
                    cidr: net("10.0.0.0/31"),
                    except: vec![],
                }],
                vec![],
                vec![tcp(22)],
            ),
            isolation(),
        ]);
        let e = cidr_entries(&al, DefaultPolicy::DefaultDeny);
        assert_eq!(entry(&e, "10.0.0.0/31"), None);
        assert_eq!(entry(&e, "10.0.0.1/32"), Some(vec![PortSpec::ALL]));
    }

    #[test]
    fn grants_are_rechecked_by_name_and_ports() {
        let al = Allowlist::new(vec![
            accept(vec![], vec!["github.com"], vec![tcp(443)]),
            isolation(),
        ]);
        let dst: IpAddr = "203.0.113.10".parse().unwrap();
        let kept = allowed_of_grant(
            &al,
            "github.com",
            dst,
            &[tcp(443), tcp(80)],
            DefaultPolicy::DefaultDeny,
        );
        assert_eq!(port_specs(&kept), vec![PortSpec::port(Protocol::Tcp, 443)]);
        let gone = allowed_of_grant(
            &al,
            "api.github.com",
            dst,
            &[tcp(443)],
            DefaultPolicy::DefaultAllow,
        );
        assert!(gone.is_empty());
        assert_eq!(port_specs(&PortSet::everything()), vec![PortSpec::ALL]);
    }
}
