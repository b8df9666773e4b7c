//! Compiled allowlists and their first-match evaluation.
//!
//! An allowlist is the ordered rule list of one set of workloads: Admin-tier rules by priority,
//! then either the NetworkPolicy tier (its allows followed by an `Isolation` rule) or the
//! Baseline tier; what no rule decides falls to the node default. The gateway asks it "on which
//! ports may this name be reached" ([`Allowlist::decide_name`]); the enforcer and `explain` ask
//! about one destination and port ([`Allowlist::decide`]).

use std::fmt;
use std::hash::{Hash, Hasher};
use std::net::IpAddr;
use std::sync::{Arc, LazyLock};

use sha2::{Digest, Sha256};
use smallvec::SmallVec;

use crate::domain::DomainTrie;
use crate::model::{
    Action, AllowlistId, Destinations, PolicyRef, Rule, RuleKind, RuleOrigin, Tier,
};
use crate::ports::{PortSet, Protocol};

/// The node-wide fate of traffic no rule decides, named as in the EKS NodeClass.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum DefaultPolicy {
    #[default]
    DefaultAllow,
    DefaultDeny,
}

impl DefaultPolicy {
    pub fn parse(s: &str) -> Option<DefaultPolicy> {
        match s {
            "DefaultAllow" => Some(DefaultPolicy::DefaultAllow),
            "DefaultDeny" => Some(DefaultPolicy::DefaultDeny),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            DefaultPolicy::DefaultAllow => "DefaultAllow",
            DefaultPolicy::DefaultDeny => "DefaultDeny",
        }
    }
}

impl fmt::Display for DefaultPolicy {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// A destination as a policy sees it: a DNS name before resolution, an address, or an address
/// a name resolved to (what a grant is for: both the name's rules and the address's CIDR
/// rules apply to it, so an Admin Deny on a network also narrows what a name may be granted).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Destination<'a> {
    Name(&'a str),
    Address(IpAddr),
    Resolved(&'a str, IpAddr),
}

impl fmt::Display for Destination<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Destination::Name(n) => f.write_str(n),
            Destination::Address(a) => write!(f, "{a}"),
            Destination::Resolved(n, a) => write!(f, "{n} ({a})"),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    Allow,
    Deny,
}

impl fmt::Display for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            Verdict::Allow => "allow",
            Verdict::Deny => "deny",
        })
    }
}

/// Why a verdict was reached.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Cause {
    /// A rule with an Accept or Deny action matched.
    Rule {
        index: usize,
        tier: Tier,
        priority: u32,
        action: Action,
        origin: RuleOrigin,
    },
    /// The pod is isolated for egress by these NetworkPolicy-tier policies and none of their
    /// rules allowed the traffic.
    Isolation { by: Arc<[PolicyRef]> },
    /// No rule decided; the node default applied.
    Default(DefaultPolicy),
}

impl Cause {
    /// The policy behind the verdict, as logs name it: the rule's policy, or the isolating
    /// policies comma-separated; `None` when the node default decided.
    pub fn policies(&self) -> Option<String> {
        match self {
            Cause::Rule { origin, .. } => Some(origin.policy.to_string()),
            Cause::Isolation { by } => Some(
                by.iter()
                    .map(ToString::to_string)
                    .collect::<Vec<_>>()
                    .join(", "),
            ),
            Cause::Default(_) => None,
        }
    }
}

impl fmt::Display for Cause {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Cause::Rule {
                tier,
                priority,
                action,
                origin,
                ..
            } => {
                write!(f, "{action} by {origin}, tier {tier}")?;
                if *tier != Tier::NetworkPolicy {
                    write!(f, " priority {priority}")?;
                }
                Ok(())
            }
            Cause::Isolation { by } => {
                let names: Vec<String> = by.iter().map(ToString::to_string).collect();
                write!(
                    f,
                    "no egress rule allows it; the pod is isolated for egress by {}",
                    names.join(", ")
                )
            }
            Cause::Default(d) => write!(f, "no rule matches; node default {d}"),
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Decision {
    pub verdict: Verdict,
    pub cause: Cause,
}

/// The answer to "may this pod resolve (and then reach) this name": the ports it may use, the
/// rules that allowed them, and what closed the rest.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NameDecision {
    /// Empty: the name is denied.
    pub allowed: PortSet,
    /// Accept rules that contributed ports (indices into the allowlist's rules).
    pub accepted_by: SmallVec<[usize; 4]>,
    /// What denied the remaining ports, if anything did before the end of the list.
    pub rest: Cause,
}

impl NameDecision {
    pub fn is_allowed(&self) -> bool {
        !self.allowed.is_empty()
    }
}

/// An ordered, content-addressed rule list.
#[derive(Clone)]
pub struct Allowlist {
    id: AllowlistId,
    rules: Vec<Rule>,
    /// Rules by domain pattern.
    domains: DomainTrie<u32>,
    /// Rules every destination meets: `Any` destinations and the isolation rule.
    unconditional: Vec<u32>,
    /// Rules with CIDRs, the only ones an address can match besides `unconditional`.
    with_cidrs: Vec<u32>,
    /// The ports each rule covers (empty for the isolation rule), built once: the gateway
    /// decides a name per query.
    rule_ports: Vec<PortSet>,
}

impl fmt::Debug for Allowlist {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Allowlist")
            .field("id", &self.id)
            .field("rules", &self.rules)
            .finish()
    }
}

impl PartialEq for Allowlist {
    fn eq(&self, other: &Self) -> bool {
        self.id == other.id && self.rules == other.rules
    }
}

impl Eq for Allowlist {}

impl Allowlist {
    /// Builds an allowlist from rules already in evaluation order and derives its id.
    pub fn new(rules: Vec<Rule>) -> Allowlist {
        let id = content_id(&rules);
        Allowlist::from_parts(id, rules)
    }

    /// The allowlist without rules, shared: what a pod no policy selects is judged by (the
    /// default decides everything).
    pub fn empty() -> &'static Allowlist {
        static EMPTY: LazyLock<Allowlist> = LazyLock::new(|| Allowlist::new(Vec::new()));
        &EMPTY
    }

    /// Rebuilds an allowlist received from the store (keeps the store's id).
    pub fn from_parts(id: AllowlistId, rules: Vec<Rule>) -> Allowlist {
        let mut domains = DomainTrie::new();
        let mut unconditional = Vec::new();
        let mut with_cidrs = Vec::new();
        for (i, rule) in rules.iter().enumerate() {
            let i = i as u32;
            match &rule.kind {
                RuleKind::Isolation { .. }
                | RuleKind::Match {
                    destinations: Destinations::Any,
                    ..
                } => unconditional.push(i),
                RuleKind::Match {
                    destinations:
                        Destinations::Peers {
                            domains: pats,
                            cidrs,
                        },
                    ..
                } => {
                    for pat in pats {
                        domains.insert(pat, i);
                    }
                    if !cidrs.is_empty() {
                        with_cidrs.push(i);
                    }
                }
            }
        }
        let rule_ports = rules
            .iter()
            .map(|rule| match &rule.kind {
                RuleKind::Match { ports, .. } => PortSet::from_rule_ports(ports),
                RuleKind::Isolation { .. } => PortSet::empty(),
            })
            .collect();
        Allowlist {
            id,
            rules,
            domains,
            unconditional,
            with_cidrs,
            rule_ports,
        }
    }

    pub fn id(&self) -> &AllowlistId {
        &self.id
    }

    pub fn rules(&self) -> &[Rule] {
        &self.rules
    }

    /// Indices of the rules that can match `dest`, in order. Names go through the trie, so the
    /// cost is O(labels + matching rules), not O(rules).
    fn candidates(&self, dest: Destination<'_>) -> SmallVec<[usize; 8]> {
        let mut out: SmallVec<[usize; 8]> =
            self.unconditional.iter().map(|&i| i as usize).collect();
        let (name, address) = match dest {
            Destination::Name(n) => (Some(n), None),
            Destination::Address(a) => (None, Some(a)),
            Destination::Resolved(n, a) => (Some(n), Some(a)),
        };
        if let Some(name) = name {
            self.domains.for_each_match(name, |i| out.push(i as usize));
        }
        if let Some(ip) = address {
            out.extend(self.with_cidrs.iter().map(|&i| i as usize).filter(|&i| {
                match &self.rules[i].kind {
                    RuleKind::Match {
                        destinations: Destinations::Peers { cidrs, .. },
                        ..
                    } => cidrs.iter().any(|c| c.contains(&ip)),
                    RuleKind::Match { .. } | RuleKind::Isolation { .. } => false,
                }
            }));
        }
        out.sort_unstable();
        out.dedup();
        out
    }

    /// The verdict for one packet-like question: `dest` on `port` of `protocol`; `None` for
    /// protocols without ports (ICMP).
    pub fn decide(
        &self,
        dest: Destination<'_>,
        port: Option<(Protocol, u16)>,
        default: DefaultPolicy,
    ) -> Decision {
        let mut skip_admin = false;
        for i in self.candidates(dest) {
            let rule = &self.rules[i];
            if skip_admin && rule.tier == Tier::Admin {
                continue;
            }
            match &rule.kind {
                RuleKind::Isolation { by } => {
                    return Decision {
                        verdict: Verdict::Deny,
                        cause: Cause::Isolation { by: Arc::clone(by) },
                    };
                }
                RuleKind::Match {
                    action,
                    ports,
                    origin,
                    ..
                } => {
                    let port_ok = match port {
                        Some((proto, p)) => {
                            ports.is_empty() || ports.iter().any(|r| r.contains(proto, p))
                        }
                        None => ports.is_empty(),
                    };
                    if !port_ok {
                        continue;
                    }
                    let verdict = match action {
                        Action::Pass => {
                            skip_admin = true;
                            continue;
                        }
                        Action::Accept => Verdict::Allow,
                        Action::Deny => Verdict::Deny,
                    };
                    return Decision {
                        verdict,
                        cause: rule_cause(i, rule, *action, origin),
                    };
                }
            }
        }
        Decision {
            verdict: match default {
                DefaultPolicy::DefaultAllow => Verdict::Allow,
                DefaultPolicy::DefaultDeny => Verdict::Deny,
            },
            cause: Cause::Default(default),
        }
    }

    /// The ports on which `name` may be reached, as far as rules about names and every
    /// destination can tell; the DNS decision. What a resolved address may be granted is
    /// [`Allowlist::allowed_ports`] of [`Destination::Resolved`], which CIDR rules narrow too.
    /// True when no rule of the allowlist names addresses (CIDRs): then
    /// `allowed_ports(Destination::Resolved(name, ip))` is `allowed_ports(Destination::Name(name))`
    /// for every `ip`, and a caller with many addresses of one name can evaluate once.
    pub fn is_address_independent(&self) -> bool {
        self.with_cidrs.is_empty()
    }

    pub fn decide_name(&self, name: &str, default: DefaultPolicy) -> NameDecision {
        self.allowed_ports(Destination::Name(name), default)
    }

    /// The ports on which `dest` may be reached: walks the matching rules in order, handing out
    /// what each Accept covers and removing what each Deny covers from what is still open.
    pub fn allowed_ports(&self, dest: Destination<'_>, default: DefaultPolicy) -> NameDecision {
        let mut open = PortSet::everything();
        let mut allowed = PortSet::empty();
        let mut accepted_by = SmallVec::new();
        let mut skip_admin = false;
        let mut closing_cause: Option<Cause> = None;
        for i in self.candidates(dest) {
            if open.is_empty() {
                break;
            }
            let rule = &self.rules[i];
            if skip_admin && rule.tier == Tier::Admin {
                continue;
            }
            match &rule.kind {
                RuleKind::Isolation { by } => {
                    return NameDecision {
                        allowed,
                        accepted_by,
                        rest: Cause::Isolation { by: Arc::clone(by) },
                    };
                }
                RuleKind::Match { action, origin, .. } => {
                    let covered = open.intersect(&self.rule_ports[i]);
                    if covered.is_empty() {
                        continue;
                    }
                    match action {
                        // Pass hands the rest of the evaluation to the next tier for the
                        // ports it covers; a name-level answer cannot split tiers per port,
                        // so treat it as leaving the Admin tier.
                        Action::Pass => skip_admin = true,
                        Action::Accept => {
                            allowed.add(&covered);
                            open.remove(&covered);
                            accepted_by.push(i);
                        }
                        Action::Deny => {
                            open.remove(&covered);
                            closing_cause
                                .get_or_insert_with(|| rule_cause(i, rule, *action, origin));
                        }
                    }
                }
            }
        }
        let rest = match closing_cause {
            Some(cause) if open.is_empty() => cause,
            _ => {
                if default == DefaultPolicy::DefaultAllow {
                    allowed.add(&open);
                }
                Cause::Default(default)
            }
        };
        NameDecision {
            allowed,
            accepted_by,
            rest,
        }
    }
}

fn rule_cause(index: usize, rule: &Rule, action: Action, origin: &RuleOrigin) -> Cause {
    Cause::Rule {
        index,
        tier: rule.tier,
        priority: rule.priority,
        action,
        origin: origin.clone(),
    }
}

/// 128 bits of SHA-256 over the rules' `Hash` encoding: collisions are out of reach for any
/// realistic number of allowlists, and the id stays short enough to print.
fn content_id(rules: &[Rule]) -> AllowlistId {
    struct Sha(Sha256);
    impl Hasher for Sha {
        fn finish(&self) -> u64 {
            0
        }
        fn write(&mut self, bytes: &[u8]) {
            self.0.update(bytes);
        }
    }
    let mut h = Sha(Sha256::new());
    rules.hash(&mut h);
    let digest = h.0.finalize();
    AllowlistId(hex::encode(&digest[..16]))
}
