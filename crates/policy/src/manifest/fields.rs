//! Field types and validators shared by the NetworkPolicy and ClusterNetworkPolicy parsers:
//! ports, protocols, selectors, domain names and CIDRs. Each validator records what is wrong
//! at the field's path and returns `None`, so the caller can go on checking the rest.

use std::fmt;

use ipnet::IpNet;
use serde::Deserialize;
use serde::de::{self, Deserializer, Visitor};

use super::findings::Findings;
use crate::domain::DomainPattern;
use crate::ports::Protocol;
use crate::selector::LabelSelector;

pub(super) const NAMED_PORTS_UNSUPPORTED: &str =
    "named ports are not supported by dnsfence: use a port number";

/// A Kubernetes IntOrString port: a number, or the name of a container port.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum PortValue {
    Number(i64),
    Name(String),
}

impl<'de> Deserialize<'de> for PortValue {
    fn deserialize<D: Deserializer<'de>>(deserializer: D) -> Result<Self, D::Error> {
        struct PortVisitor;

        impl Visitor<'_> for PortVisitor {
            type Value = PortValue;

            fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str("a port number")
            }

            fn visit_i64<E: de::Error>(self, v: i64) -> Result<PortValue, E> {
                Ok(PortValue::Number(v))
            }

            fn visit_u64<E: de::Error>(self, v: u64) -> Result<PortValue, E> {
                i64::try_from(v)
                    .map(PortValue::Number)
                    .map_err(|_| E::custom(format!("port {v} is out of range 1-65535")))
            }

            fn visit_str<E: de::Error>(self, v: &str) -> Result<PortValue, E> {
                Ok(PortValue::Name(v.to_string()))
            }
        }

        deserializer.deserialize_any(PortVisitor)
    }
}

/// A port number field (`port`, `endPort`, `start`, `number`, …): 1–65535.
pub(super) fn port_number(findings: &mut Findings, path: &str, value: i64) -> Option<u16> {
    match u16::try_from(value) {
        Ok(port) if port != 0 => Some(port),
        _ => {
            findings.invalid(
                path,
                format!("port {value} is out of range: must be between 1 and 65535"),
            );
            None
        }
    }
}

/// A port that may be written as a name in Kubernetes; dnsfence resolves no pod ports, so a
/// name is an error.
pub(super) fn numeric_port(findings: &mut Findings, path: &str, value: &PortValue) -> Option<u16> {
    match value {
        PortValue::Number(number) => port_number(findings, path, *number),
        PortValue::Name(name) => {
            let hint = if !name.is_empty() && name.bytes().all(|b| b.is_ascii_digit()) {
                format!(" (write {name} without quotes)")
            } else {
                String::new()
            };
            findings.invalid(path, format!("{name:?}: {NAMED_PORTS_UNSUPPORTED}{hint}"));
            None
        }
    }
}

/// The `protocol` of a NetworkPolicy port or a ClusterNetworkPolicy `portNumber`/`portRange`:
/// TCP when absent, otherwise exactly `TCP`, `UDP` or `SCTP` (Kubernetes is case-sensitive
/// here, unlike [`Protocol::parse`]).
pub(super) fn protocol(findings: &mut Findings, path: &str, raw: Option<&str>) -> Option<Protocol> {
    let Some(raw) = raw else {
        return Some(Protocol::Tcp);
    };
    match Protocol::ALL.into_iter().find(|p| p.as_str() == raw) {
        Some(protocol) => Some(protocol),
        None => {
            findings.invalid(
                path,
                format!("unsupported protocol {raw:?}: must be one of TCP, UDP, SCTP"),
            );
            None
        }
    }
}

/// Records every rule of metav1.LabelSelector the selector breaks, at `path.<field>`.
pub(super) fn selector(findings: &mut Findings, path: &str, selector: &LabelSelector) -> bool {
    match selector.validate() {
        Ok(()) => true,
        Err((suffix, reason)) => {
            findings.invalid(format!("{path}.{suffix}"), reason);
            false
        }
    }
}

/// A `domainNames` list: at least one entry, each a valid pattern (errors at `path[k]`).
pub(super) fn domain_names(
    findings: &mut Findings,
    path: &str,
    raw: &[String],
) -> Option<Vec<DomainPattern>> {
    if raw.is_empty() {
        findings.invalid(path, "must list at least one domain name");
        return None;
    }
    let mut patterns = Vec::with_capacity(raw.len());
    let mut valid = true;
    for (k, name) in raw.iter().enumerate() {
        match DomainPattern::parse(name) {
            Ok(pattern) => patterns.push(pattern),
            Err(reason) => {
                findings.invalid(format!("{path}[{k}]"), reason);
                valid = false;
            }
        }
    }
    valid.then_some(patterns)
}

/// A CIDR in network form. Host bits are rejected rather than masked: `10.0.0.1/8` is most
/// likely a typo for a /32 or for 10.0.0.0/8, and guessing either widens or narrows a rule.
pub(super) fn cidr(findings: &mut Findings, path: &str, raw: &str) -> Option<IpNet> {
    let Ok(net) = raw.parse::<IpNet>() else {
        findings.invalid(
            path,
            format!("{raw:?} is not a CIDR (for example \"10.0.0.0/8\" or \"fd00::/8\")"),
        );
        return None;
    };
    if net.trunc() != net {
        findings.invalid(
            path,
            format!(
                "{raw:?} has host bits set: write the network address ({}) or a host prefix",
                net.trunc()
            ),
        );
        return None;
    }
    Some(net)
}

/// An `ipBlock.except` entry: a CIDR strictly inside the block's `cidr`.
pub(super) fn except_cidr(
    findings: &mut Findings,
    path: &str,
    raw: &str,
    block: &IpNet,
) -> Option<IpNet> {
    let net = cidr(findings, path, raw)?;
    if !block.contains(&net) || net.prefix_len() <= block.prefix_len() {
        findings.invalid(
            path,
            format!("{raw:?} must be strictly inside the block's cidr {block}"),
        );
        return None;
    }
    Some(net)
}

/// Kubernetes object names: a DNS-1123 subdomain (lower-case alphanumerics, '-' and '.',
/// each dot-separated part starting and ending alphanumeric, at most 253 characters).
pub(super) fn dns_subdomain(name: &str) -> Result<(), String> {
    if name.len() > 253 {
        return Err(format!("{name:?} is longer than 253 characters"));
    }
    if name.split('.').all(is_dns_label_shape) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid name: lower-case letters, digits, '-' and '.', starting and ending with a letter or digit"
        ))
    }
}

/// Namespace names: a DNS-1123 label (lower-case alphanumerics and '-', at most 63).
pub(super) fn dns_label(name: &str) -> Result<(), String> {
    if name.len() <= 63 && is_dns_label_shape(name) {
        Ok(())
    } else {
        Err(format!(
            "{name:?} is not a valid namespace name: at most 63 lower-case letters, digits and '-', starting and ending with a letter or digit"
        ))
    }
}

fn is_dns_label_shape(label: &str) -> bool {
    let edge = |c: char| c.is_ascii_lowercase() || c.is_ascii_digit();
    label.starts_with(edge) && label.ends_with(edge) && label.chars().all(|c| edge(c) || c == '-')
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn dns_names() {
        assert!(dns_subdomain("nginx-egress").is_ok());
        assert!(dns_subdomain("a.b-c.d").is_ok());
        assert!(dns_subdomain("Nginx").is_err());
        assert!(dns_subdomain("a..b").is_err());
        assert!(dns_subdomain("-a").is_err());
        assert!(dns_subdomain("").is_err());
        assert!(dns_subdomain(&"a".repeat(254)).is_err());
        assert!(dns_label("kube-system").is_ok());
        assert!(dns_label("a.b").is_err());
        assert!(dns_label(&"a".repeat(64)).is_err());
    }

    #[test]
    fn cidrs() {
        let mut findings = Findings::new("x");
        assert!(cidr(&mut findings, "p", "10.0.0.0/8").is_some());
        assert!(cidr(&mut findings, "p", "fd00::/8").is_some());
        assert!(findings.is_clean());
        assert!(cidr(&mut findings, "p", "10.0.0.1/8").is_none());
        assert!(cidr(&mut findings, "p", "10.0.0.0/33").is_none());
        assert!(cidr(&mut findings, "p", "10.0.0.1").is_none());
        let block: IpNet = "10.0.0.0/8".parse().unwrap();
        assert!(except_cidr(&mut findings, "p", "10.1.0.0/16", &block).is_some());
        assert!(except_cidr(&mut findings, "p", "10.0.0.0/8", &block).is_none());
        assert!(except_cidr(&mut findings, "p", "11.0.0.0/16", &block).is_none());
        assert!(except_cidr(&mut findings, "p", "fd00::/16", &block).is_none());
        assert_eq!(findings.into_errors().len(), 6);
    }
}
