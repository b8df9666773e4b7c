//! `Explain`: the decision for one pod and one destination, with the rule and policy that made
//! it — the same evaluation code the gateway and enforcer use.

use std::net::IpAddr;

use dnsfence_policy::allowlist::{Cause, DefaultPolicy, Destination, Verdict};
use dnsfence_policy::model::{AllowlistId, Binding, Rule, WorkloadKey};
use dnsfence_policy::ports::{PortRange, PortSet};

use crate::state::StoreState;

#[derive(Debug, Clone)]
pub enum PodSelector {
    Key(WorkloadKey),
    Ip(IpAddr),
}

#[derive(Debug, Clone)]
pub struct Explanation {
    pub workload: WorkloadKey,
    pub allowlist: Option<AllowlistId>,
    pub verdict: Verdict,
    pub reason: String,
    pub deciding_rule: Option<Rule>,
    pub allowed_ports: Vec<PortRange>,
}

#[derive(Debug, thiserror::Error)]
pub enum ExplainError {
    #[error("no workload {0}")]
    UnknownWorkload(String),
    #[error("{0}")]
    BadDestination(String),
}

pub fn explain(
    state: &StoreState,
    pod: &PodSelector,
    destination: &str,
    port: Option<PortRange>,
    default: DefaultPolicy,
) -> Result<Explanation, ExplainError> {
    let workload = match pod {
        PodSelector::Key(key) => state.compiler.workload(key),
        PodSelector::Ip(ip) => state.compiler.workload_by_ip(ip),
    }
    .ok_or_else(|| {
        ExplainError::UnknownWorkload(match pod {
            PodSelector::Key(k) => k.to_string(),
            PodSelector::Ip(ip) => format!("with address {ip}"),
        })
    })?;
    let dest = match destination.parse::<IpAddr>() {
        Ok(ip) => Destination::Address(ip),
        Err(_) => {
            dnsfence_policy::domain::parse_query_name(destination).map_err(|reason| {
                ExplainError::BadDestination(format!(
                    "destination {reason}; give a domain name or an IP address"
                ))
            })?;
            Destination::Name(destination)
        }
    };
    let key = workload.key.clone();
    let binding = state.compiler.binding(&key).map(|b| b.binding.clone());
    let allowlist = match &binding {
        Some(Binding::Enforced(id)) => state.compiler.allowlist(id).cloned(),
        _ => None,
    };
    let Some(allowlist) = allowlist else {
        let verdict = match default {
            DefaultPolicy::DefaultAllow => Verdict::Allow,
            DefaultPolicy::DefaultDeny => Verdict::Deny,
        };
        return Ok(Explanation {
            workload: key.clone(),
            allowlist: None,
            verdict,
            reason: format!("no policy applies to {key} for egress; node default {default}"),
            deciding_rule: None,
            allowed_ports: match verdict {
                Verdict::Allow => PortSet::everything().ranges(),
                Verdict::Deny => Vec::new(),
            },
        });
    };
    let id = Some(allowlist.id().clone());
    if let Some(port) = port {
        let decision = allowlist.decide(dest, Some((port.protocol, port.start)), default);
        let deciding_rule = match &decision.cause {
            Cause::Rule { index, .. } => allowlist.rules().get(*index).cloned(),
            _ => None,
        };
        return Ok(Explanation {
            workload: key,
            allowlist: id,
            verdict: decision.verdict,
            reason: decision.cause.to_string(),
            deciding_rule,
            allowed_ports: Vec::new(),
        });
    }
    let ports = allowlist.allowed_ports(dest, default);
    let accepted: Vec<String> = ports
        .accepted_by
        .iter()
        .filter_map(|i| allowlist.rules().get(*i))
        .filter_map(|r| match &r.kind {
            dnsfence_policy::model::RuleKind::Match { origin, .. } => Some(origin.to_string()),
            _ => None,
        })
        .collect();
    let (verdict, reason) = if ports.is_allowed() {
        let by = if accepted.is_empty() {
            ports.rest.to_string()
        } else {
            format!("Accept by {}", accepted.join(", "))
        };
        (
            Verdict::Allow,
            format!(
                "allowed on {} ({by}); anything else: {}",
                ports.allowed, ports.rest
            ),
        )
    } else {
        (Verdict::Deny, ports.rest.to_string())
    };
    let deciding_rule = ports
        .accepted_by
        .first()
        .and_then(|i| allowlist.rules().get(*i).cloned());
    Ok(Explanation {
        workload: key,
        allowlist: id,
        verdict,
        reason,
        deciding_rule,
        allowed_ports: ports.allowed.ranges(),
    })
}
