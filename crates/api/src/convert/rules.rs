//! Compiled rules and allowlists: tiers, actions, ports, CIDRs, origins.

use dnsfence_policy::allowlist::Allowlist;
use dnsfence_policy::domain::DomainPattern;
use dnsfence_policy::model::{
    Action, AllowlistId, CidrRule, Destinations, Rule, RuleKind, RuleOrigin, Tier,
};
use dnsfence_policy::ports::{PortRange, Protocol};
use ipnet::IpNet;

use super::policy::decode_policy_ref;
use super::{decode_list, from_owned, known_enum, required, try_from_proto};
use crate::error::{ApiError, Within};
use crate::store::v1 as pb;

impl From<Tier> for pb::Tier {
    fn from(value: Tier) -> Self {
        match value {
            Tier::Admin => pb::Tier::Admin,
            Tier::NetworkPolicy => pb::Tier::NetworkPolicyTier,
            Tier::Baseline => pb::Tier::Baseline,
        }
    }
}

impl TryFrom<pb::Tier> for Tier {
    type Error = ApiError;

    fn try_from(value: pb::Tier) -> Result<Self, ApiError> {
        match value {
            pb::Tier::Admin => Ok(Tier::Admin),
            pb::Tier::NetworkPolicyTier => Ok(Tier::NetworkPolicy),
            pb::Tier::Baseline => Ok(Tier::Baseline),
            pb::Tier::Unspecified => Err(ApiError::invalid("tier", "unspecified")),
        }
    }
}

impl From<Action> for pb::Action {
    fn from(value: Action) -> Self {
        match value {
            Action::Accept => pb::Action::Accept,
            Action::Deny => pb::Action::Deny,
            Action::Pass => pb::Action::Pass,
        }
    }
}

impl TryFrom<pb::Action> for Action {
    type Error = ApiError;

    fn try_from(value: pb::Action) -> Result<Self, ApiError> {
        match value {
            pb::Action::Accept => Ok(Action::Accept),
            pb::Action::Deny => Ok(Action::Deny),
            pb::Action::Pass => Ok(Action::Pass),
            pb::Action::Unspecified => Err(ApiError::invalid("action", "unspecified")),
        }
    }
}

impl From<Protocol> for pb::Protocol {
    fn from(value: Protocol) -> Self {
        match value {
            Protocol::Tcp => pb::Protocol::Tcp,
            Protocol::Udp => pb::Protocol::Udp,
            Protocol::Sctp => pb::Protocol::Sctp,
        }
    }
}

impl TryFrom<pb::Protocol> for Protocol {
    type Error = ApiError;

    fn try_from(value: pb::Protocol) -> Result<Self, ApiError> {
        match value {
            pb::Protocol::Tcp => Ok(Protocol::Tcp),
            pb::Protocol::Udp => Ok(Protocol::Udp),
            pb::Protocol::Sctp => Ok(Protocol::Sctp),
            pb::Protocol::Unspecified => Err(ApiError::invalid("protocol", "unspecified")),
        }
    }
}

/// Validates a wire port range: ports are 1–65535 and the range may not end before it starts.
/// Shared with the grants API, whose ranges carry the protocol differently.
pub(crate) fn port_bounds(start: u32, end: u32) -> Result<(u16, u16), ApiError> {
    let port = |value: u32, field: &str| match u16::try_from(value) {
        Ok(p) if p != 0 => Ok(p),
        _ => Err(ApiError::invalid(
            field,
            format!("{value} is not a port (1-65535)"),
        )),
    };
    let start = port(start, "start")?;
    let end = port(end, "end")?;
    if end < start {
        return Err(ApiError::invalid(
            "end",
            format!("the range ends ({end}) before it starts ({start})"),
        ));
    }
    Ok((start, end))
}

impl From<&PortRange> for pb::PortRange {
    fn from(value: &PortRange) -> Self {
        pb::PortRange {
            protocol: pb::Protocol::from(value.protocol) as i32,
            start: value.start.into(),
            end: value.end.into(),
        }
    }
}
from_owned!(PortRange => pb::PortRange);

pub(crate) fn decode_port_range(message: pb::PortRange) -> Result<PortRange, ApiError> {
    let protocol =
        known_enum::<pb::Protocol>(message.protocol, "protocol").and_then(Protocol::try_from)?;
    let (start, end) = port_bounds(message.start, message.end)?;
    Ok(PortRange {
        protocol,
        start,
        end,
    })
}
try_from_proto!(pb::PortRange => PortRange, decode_port_range, "port_range");

impl From<&CidrRule> for pb::Cidr {
    fn from(value: &CidrRule) -> Self {
        pb::Cidr {
            cidr: value.cidr.to_string(),
            except: value.except.iter().map(ToString::to_string).collect(),
        }
    }
}
from_owned!(CidrRule => pb::Cidr);

fn ip_net(text: &str) -> Result<IpNet, ApiError> {
    text.parse::<IpNet>()
        .map_err(|e| ApiError::invalid("", format!("{text:?} is not a CIDR ({e})")))
}

pub(crate) fn decode_cidr(message: pb::Cidr) -> Result<CidrRule, ApiError> {
    Ok(CidrRule {
        cidr: ip_net(&message.cidr).within("cidr")?,
        except: decode_list(message.except, "except", |s| ip_net(&s))?,
    })
}
try_from_proto!(pb::Cidr => CidrRule, decode_cidr, "cidr");

impl From<&RuleOrigin> for pb::RuleOrigin {
    fn from(value: &RuleOrigin) -> Self {
        pb::RuleOrigin {
            policy: Some((&value.policy).into()),
            rule_index: value.rule_index,
            rule_name: value.rule_name.clone(),
        }
    }
}
from_owned!(RuleOrigin => pb::RuleOrigin);

pub(crate) fn decode_rule_origin(message: pb::RuleOrigin) -> Result<RuleOrigin, ApiError> {
    Ok(RuleOrigin {
        policy: decode_policy_ref(required(message.policy, "policy")?).within("policy")?,
        rule_index: message.rule_index,
        rule_name: message.rule_name,
    })
}
try_from_proto!(pb::RuleOrigin => RuleOrigin, decode_rule_origin, "rule_origin");

impl From<&Rule> for pb::Rule {
    fn from(value: &Rule) -> Self {
        let kind = match &value.kind {
            RuleKind::Match {
                action,
                destinations,
                ports,
                origin,
            } => {
                let (any_destination, domains, cidrs) = match destinations {
                    Destinations::Any => (true, Vec::new(), Vec::new()),
                    Destinations::Peers { domains, cidrs } => (
                        false,
                        domains.iter().map(ToString::to_string).collect(),
                        cidrs.iter().map(pb::Cidr::from).collect(),
                    ),
                };
                pb::rule::Kind::Match(pb::MatchRule {
                    action: pb::Action::from(*action) as i32,
                    any_destination,
                    domains,
                    cidrs,
                    ports: ports.iter().map(pb::PortRange::from).collect(),
                    origin: Some(origin.into()),
                })
            }
            RuleKind::Isolation { by } => pb::rule::Kind::Isolation(pb::Isolation {
                by: by.iter().map(pb::PolicyRef::from).collect(),
            }),
        };
        pb::Rule {
            tier: pb::Tier::from(value.tier) as i32,
            priority: value.priority,
            kind: Some(kind),
        }
    }
}
from_owned!(Rule => pb::Rule);

fn decode_match(message: pb::MatchRule) -> Result<RuleKind, ApiError> {
    let action = known_enum::<pb::Action>(message.action, "action").and_then(Action::try_from)?;
    let destinations = if message.any_destination {
        // Both at once would be ambiguous: the encoder never produces it, so it is a bug on
        // the sender's side, not something to guess about.
        if !message.domains.is_empty() || !message.cidrs.is_empty() {
            return Err(ApiError::invalid(
                "any_destination",
                "set together with domains or cidrs",
            ));
        }
        Destinations::Any
    } else {
        Destinations::Peers {
            domains: decode_list(message.domains, "domains", |raw| {
                DomainPattern::parse(&raw).map_err(|reason| ApiError::invalid("", reason))
            })?,
            cidrs: decode_list(message.cidrs, "cidrs", decode_cidr)?,
        }
    };
    Ok(RuleKind::Match {
        action,
        destinations,
        ports: decode_list(message.ports, "ports", decode_port_range)?,
        origin: decode_rule_origin(required(message.origin, "origin")?).within("origin")?,
    })
}

pub(crate) fn decode_rule(message: pb::Rule) -> Result<Rule, ApiError> {
    let tier = known_enum::<pb::Tier>(message.tier, "tier").and_then(Tier::try_from)?;
    let kind = match required(message.kind, "kind")? {
        pb::rule::Kind::Match(m) => decode_match(m).within("match")?,
        pb::rule::Kind::Isolation(isolation) => RuleKind::Isolation {
            by: decode_list(isolation.by, "by", decode_policy_ref)
                .within("isolation")?
                .into(),
        },
    };
    Ok(Rule {
        tier,
        priority: message.priority,
        kind,
    })
}
try_from_proto!(pb::Rule => Rule, decode_rule, "rule");

impl From<&Allowlist> for pb::Allowlist {
    fn from(value: &Allowlist) -> Self {
        pb::Allowlist {
            id: value.id().0.clone(),
            rules: value.rules().iter().map(pb::Rule::from).collect(),
        }
    }
}
from_owned!(Allowlist => pb::Allowlist);

/// Keeps the sender's id rather than recomputing it: the id is the store's content address,
/// and consumers must agree with the store on it even if the hash ever changes.
pub(crate) fn decode_allowlist(message: pb::Allowlist) -> Result<Allowlist, ApiError> {
    if message.id.is_empty() {
        return Err(ApiError::invalid("id", "empty"));
    }
    let rules = decode_list(message.rules, "rules", decode_rule)?;
    Ok(Allowlist::from_parts(AllowlistId(message.id), rules))
}
try_from_proto!(pb::Allowlist => Allowlist, decode_allowlist, "allowlist");

#[cfg(test)]
#[path = "rules_tests.rs"]
pub(crate) mod tests;
