#![allow(clippy::unwrap_used, clippy::expect_used)]

use super::*;
use crate::convert::policy::tests::{anp, cnp};

fn pattern(raw: &str) -> DomainPattern {
    DomainPattern::parse(raw).unwrap()
}

fn net(raw: &str) -> IpNet {
    raw.parse().unwrap()
}

pub(crate) fn sample_rules() -> Vec<Rule> {
    vec![
        Rule {
            tier: Tier::Admin,
            priority: 10,
            kind: RuleKind::Match {
                action: Action::Deny,
                destinations: Destinations::Peers {
                    domains: vec![pattern("evil.example.com"), pattern("*.evil.test")],
                    cidrs: vec![CidrRule {
                        cidr: net("10.0.0.0/8"),
                        except: vec![net("10.1.0.0/16"), net("10.2.3.4/32")],
                    }],
                },
                ports: vec![],
                origin: RuleOrigin {
                    policy: cnp("deny-evil"),
                    rule_index: 0,
                    rule_name: "deny-evil".into(),
                },
            },
        },
        Rule {
            tier: Tier::Admin,
            priority: 20,
            kind: RuleKind::Match {
                action: Action::Pass,
                destinations: Destinations::Any,
                ports: vec![PortRange::single(Protocol::Udp, 53)],
                origin: RuleOrigin {
                    policy: cnp("pass-dns"),
                    rule_index: 1,
                    rule_name: String::new(),
                },
            },
        },
        Rule {
            tier: Tier::NetworkPolicy,
            priority: 0,
            kind: RuleKind::Match {
                action: Action::Accept,
                destinations: Destinations::Peers {
                    domains: vec![pattern("github.com"), pattern("*.github.com")],
                    cidrs: vec![CidrRule::host("2001:db8::1".parse().unwrap())],
                },
                ports: vec![
                    PortRange::single(Protocol::Tcp, 443),
                    PortRange {
                        protocol: Protocol::Sctp,
                        start: 8000,
                        end: 8080,
                    },
                    PortRange::all(Protocol::Udp),
                ],
                origin: RuleOrigin {
                    policy: anp("team-a", "egress"),
                    rule_index: 3,
                    rule_name: String::new(),
                },
            },
        },
        Rule {
            tier: Tier::NetworkPolicy,
            priority: 0,
            kind: RuleKind::Isolation {
                by: vec![anp("team-a", "egress"), anp("team-a", "other")].into(),
            },
        },
        Rule {
            tier: Tier::Baseline,
            priority: 1000,
            kind: RuleKind::Match {
                action: Action::Deny,
                // A rule whose peers select nothing (a pod selector without pods).
                destinations: Destinations::Peers {
                    domains: vec![],
                    cidrs: vec![],
                },
                ports: vec![],
                origin: RuleOrigin {
                    policy: cnp("baseline"),
                    rule_index: 0,
                    rule_name: "nothing".into(),
                },
            },
        },
    ]
}

pub(crate) fn sample_allowlist() -> Allowlist {
    Allowlist::new(sample_rules())
}

#[test]
fn enums_round_trip() {
    for tier in [Tier::Admin, Tier::NetworkPolicy, Tier::Baseline] {
        assert_eq!(Tier::try_from(pb::Tier::from(tier)).unwrap(), tier);
    }
    for action in [Action::Accept, Action::Deny, Action::Pass] {
        assert_eq!(Action::try_from(pb::Action::from(action)).unwrap(), action);
    }
    for protocol in Protocol::ALL {
        assert_eq!(
            Protocol::try_from(pb::Protocol::from(protocol)).unwrap(),
            protocol
        );
    }
    assert!(Tier::try_from(pb::Tier::Unspecified).is_err());
    assert!(Action::try_from(pb::Action::Unspecified).is_err());
    assert!(Protocol::try_from(pb::Protocol::Unspecified).is_err());
}

#[test]
fn port_range_round_trip() {
    for range in [
        PortRange::single(Protocol::Tcp, 1),
        PortRange::all(Protocol::Sctp),
        PortRange {
            protocol: Protocol::Udp,
            start: 5000,
            end: 5010,
        },
    ] {
        assert_eq!(
            PortRange::try_from(pb::PortRange::from(range)).unwrap(),
            range
        );
    }
}

#[test]
fn port_range_rejections() {
    let good = pb::PortRange::from(PortRange::single(Protocol::Tcp, 443));
    let cases = [
        (
            pb::PortRange {
                protocol: 0,
                ..good
            },
            "port_range.protocol: unspecified",
        ),
        (
            pb::PortRange {
                protocol: 7,
                ..good
            },
            "port_range.protocol: unknown value 7",
        ),
        (
            pb::PortRange { start: 0, ..good },
            "port_range.start: 0 is not a port (1-65535)",
        ),
        (
            pb::PortRange { end: 65536, ..good },
            "port_range.end: 65536 is not a port (1-65535)",
        ),
        (
            pb::PortRange {
                start: 90,
                end: 80,
                ..good
            },
            "port_range.end: the range ends (80) before it starts (90)",
        ),
    ];
    for (message, expected) in cases {
        assert_eq!(
            PortRange::try_from(message).unwrap_err().to_string(),
            expected
        );
    }
}

#[test]
fn cidr_round_trip_and_rejections() {
    let rule = CidrRule {
        cidr: net("192.168.0.0/16"),
        except: vec![net("192.168.1.0/24")],
    };
    assert_eq!(CidrRule::try_from(pb::Cidr::from(&rule)).unwrap(), rule);

    let err = CidrRule::try_from(pb::Cidr {
        cidr: "192.168.0.0/33".into(),
        except: vec![],
    })
    .unwrap_err();
    assert!(
        err.to_string()
            .starts_with("cidr.cidr: \"192.168.0.0/33\" is not a CIDR"),
        "{err}"
    );
    let err = CidrRule::try_from(pb::Cidr {
        cidr: "10.0.0.0/8".into(),
        except: vec!["10.1.0.0/16".into(), "10.2.0.0".into()],
    })
    .unwrap_err();
    assert!(err.to_string().starts_with("cidr.except[1]: "), "{err}");
}

#[test]
fn rule_origin_round_trip_and_missing_policy() {
    let origin = RuleOrigin {
        policy: anp("ns", "p"),
        rule_index: 4,
        rule_name: "r".into(),
    };
    assert_eq!(
        RuleOrigin::try_from(pb::RuleOrigin::from(&origin)).unwrap(),
        origin
    );
    let err = RuleOrigin::try_from(pb::RuleOrigin {
        policy: None,
        ..pb::RuleOrigin::from(&origin)
    })
    .unwrap_err();
    assert_eq!(err.to_string(), "rule_origin.policy: missing");
}

#[test]
fn rules_round_trip() {
    for rule in sample_rules() {
        assert_eq!(Rule::try_from(pb::Rule::from(&rule)).unwrap(), rule);
    }
}

#[test]
fn domains_print_back_as_written() {
    let rules = sample_rules();
    let pb::Rule {
        kind: Some(pb::rule::Kind::Match(m)),
        ..
    } = pb::Rule::from(&rules[2])
    else {
        panic!("expected a match rule");
    };
    assert_eq!(m.domains, vec!["github.com", "*.github.com"]);
    assert!(!m.any_destination);
    assert_eq!(m.cidrs[0].cidr, "2001:db8::1/128");
}

#[test]
fn allowlist_round_trip_keeps_the_id() {
    let allowlist = sample_allowlist();
    let message = pb::Allowlist::from(&allowlist);
    assert_eq!(message.id, allowlist.id().0);
    let decoded = Allowlist::try_from(message.clone()).unwrap();
    assert_eq!(decoded, allowlist);

    // A foreign id is kept as sent, not recomputed.
    let decoded = Allowlist::try_from(pb::Allowlist {
        id: "from-the-store".into(),
        ..message
    })
    .unwrap();
    assert_eq!(decoded.id().0, "from-the-store");
    assert_eq!(decoded.rules(), allowlist.rules());
}

fn match_of(message: &mut pb::Allowlist, index: usize) -> &mut pb::MatchRule {
    match message.rules[index].kind.as_mut() {
        Some(pb::rule::Kind::Match(m)) => m,
        _ => panic!("rule {index} is not a match rule"),
    }
}

#[test]
fn allowlist_rejections_name_the_nested_field() {
    let good = pb::Allowlist::from(&sample_allowlist());
    type Edit = fn(&mut pb::Allowlist);
    let cases: [(Edit, &str); 13] = [
        (|m| m.id.clear(), "allowlist.id: empty"),
        (
            |m| m.rules[1].tier = 0,
            "allowlist.rules[1].tier: unspecified",
        ),
        (
            |m| m.rules[1].tier = 8,
            "allowlist.rules[1].tier: unknown value 8",
        ),
        (
            |m| m.rules[0].kind = None,
            "allowlist.rules[0].kind: missing",
        ),
        (
            |m| match_of(m, 2).ports[0].end = 0,
            "allowlist.rules[2].match.ports[0].end: 0 is not a port (1-65535)",
        ),
        (
            |m| match_of(m, 2).ports[1].end = 7999,
            "allowlist.rules[2].match.ports[1].end: the range ends (7999) before it starts (8000)",
        ),
        (
            |m| match_of(m, 2).ports[2].protocol = 0,
            "allowlist.rules[2].match.ports[2].protocol: unspecified",
        ),
        (
            |m| match_of(m, 0).action = 0,
            "allowlist.rules[0].match.action: unspecified",
        ),
        (
            |m| match_of(m, 0).action = 12,
            "allowlist.rules[0].match.action: unknown value 12",
        ),
        (
            |m| match_of(m, 0).any_destination = true,
            "allowlist.rules[0].match.any_destination: set together with domains or cidrs",
        ),
        (
            |m| match_of(m, 2).origin = None,
            "allowlist.rules[2].match.origin: missing",
        ),
        (
            |m| {
                if let Some(pb::rule::Kind::Isolation(i)) = m.rules[3].kind.as_mut() {
                    i.by[1].kind = 0;
                }
            },
            "allowlist.rules[3].isolation.by[1].kind: unspecified",
        ),
        (
            |m| match_of(m, 0).cidrs[0].except[1] = "10.2.3.4/99".into(),
            "allowlist.rules[0].match.cidrs[0].except[1]: ",
        ),
    ];
    for (edit, expected) in cases {
        let mut message = good.clone();
        edit(&mut message);
        let err = Allowlist::try_from(message).unwrap_err().to_string();
        assert!(err.starts_with(expected), "got {err:?}, want {expected:?}");
    }
}

#[test]
fn bad_domain_patterns_are_rejected_with_the_parser_reason() {
    let mut message = pb::Allowlist::from(&sample_allowlist());
    match_of(&mut message, 2).domains[1] = "api.*.github.com".into();
    let err = Allowlist::try_from(message).unwrap_err().to_string();
    assert!(
        err.starts_with("allowlist.rules[2].match.domains[1]: \"api.*.github.com\": a wildcard"),
        "{err}"
    );
}
