//! The two port notations of ClusterNetworkPolicy rules. The EKS documentation writes
//! `ports: [{portNumber: {protocol, port}} | {portRange: {protocol, start, end}} | {namedPort}]`
//! (the AdminNetworkPolicy form); the released upstream v1alpha2 API writes
//! `protocols: [{tcp|udp|sctp: {destinationPort: {number} | {range: {start, end}}}} |
//! {destinationNamedPort}]`. A rule may use either, not both.

use serde::Deserialize;

use super::fields::{self, NAMED_PORTS_UNSUPPORTED, PortValue};
use super::findings::Findings;
use crate::ports::{PortRange, Protocol};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct PortSpec {
    port_number: Option<PortNumberSpec>,
    port_range: Option<PortRangeSpec>,
    named_port: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortNumberSpec {
    protocol: Option<String>,
    port: PortValue,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct PortRangeSpec {
    protocol: Option<String>,
    start: i64,
    end: i64,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
pub(super) struct ProtocolSpec {
    tcp: Option<ProtocolPortSpec>,
    udp: Option<ProtocolPortSpec>,
    sctp: Option<ProtocolPortSpec>,
    destination_named_port: Option<String>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct ProtocolPortSpec {
    destination_port: Option<DestinationPortSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct DestinationPortSpec {
    number: Option<i64>,
    range: Option<BoundsSpec>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, rename_all = "camelCase")]
struct BoundsSpec {
    start: i64,
    end: i64,
}

/// The port ranges of one rule (empty: every port and protocol), recording errors under
/// `rule_path.ports[j]` / `rule_path.protocols[j]`.
pub(super) fn rule_ports(
    findings: &mut Findings,
    rule_path: &str,
    ports: Option<&[PortSpec]>,
    protocols: Option<&[ProtocolSpec]>,
) -> Vec<PortRange> {
    match (ports, protocols) {
        (None, None) => Vec::new(),
        (Some(_), Some(_)) => {
            findings.invalid(
                rule_path,
                "set either ports or protocols, not both (they are two notations of the same thing)",
            );
            Vec::new()
        }
        (Some(ports), None) => {
            let path = format!("{rule_path}.ports");
            non_empty(findings, &path, ports.len());
            ports
                .iter()
                .enumerate()
                .filter_map(|(j, spec)| port_entry(findings, &format!("{path}[{j}]"), spec))
                .collect()
        }
        (None, Some(protocols)) => {
            let path = format!("{rule_path}.protocols");
            non_empty(findings, &path, protocols.len());
            protocols
                .iter()
                .enumerate()
                .filter_map(|(j, spec)| protocol_entry(findings, &format!("{path}[{j}]"), spec))
                .collect()
        }
    }
}

/// An empty list would read as "no ports" to some and "all ports" to others.
fn non_empty(findings: &mut Findings, path: &str, len: usize) {
    if len == 0 {
        findings.invalid(
            path,
            "must list at least one entry (omit the field to match every port)",
        );
    }
}

fn port_entry(findings: &mut Findings, path: &str, spec: &PortSpec) -> Option<PortRange> {
    let set = [
        spec.port_number.is_some(),
        spec.port_range.is_some(),
        spec.named_port.is_some(),
    ];
    if set.iter().filter(|is_set| **is_set).count() != 1 {
        findings.invalid(
            path,
            "set exactly one of portNumber, portRange or namedPort",
        );
        return None;
    }
    if let Some(number) = &spec.port_number {
        let protocol = fields::protocol(
            findings,
            &format!("{path}.portNumber.protocol"),
            number.protocol.as_deref(),
        );
        let port = fields::numeric_port(findings, &format!("{path}.portNumber.port"), &number.port);
        return Some(PortRange::single(protocol?, port?));
    }
    if let Some(range) = &spec.port_range {
        let path = format!("{path}.portRange");
        let protocol = fields::protocol(
            findings,
            &format!("{path}.protocol"),
            range.protocol.as_deref(),
        );
        let bounds = bounds(findings, &path, range.start, range.end);
        let (start, end) = bounds?;
        return Some(PortRange {
            protocol: protocol?,
            start,
            end,
        });
    }
    if let Some(name) = &spec.named_port {
        findings.invalid(
            format!("{path}.namedPort"),
            format!("{name:?}: {NAMED_PORTS_UNSUPPORTED}"),
        );
    }
    None
}

fn protocol_entry(findings: &mut Findings, path: &str, spec: &ProtocolSpec) -> Option<PortRange> {
    let set: Vec<(Protocol, &str, &ProtocolPortSpec)> = [
        (Protocol::Tcp, "tcp", &spec.tcp),
        (Protocol::Udp, "udp", &spec.udp),
        (Protocol::Sctp, "sctp", &spec.sctp),
    ]
    .into_iter()
    .filter_map(|(protocol, field, port)| port.as_ref().map(|port| (protocol, field, port)))
    .collect();
    match (set.as_slice(), &spec.destination_named_port) {
        ([(protocol, field, port)], None) => {
            let path = format!("{path}.{field}");
            match &port.destination_port {
                // A protocol without destinationPort matches all its ports.
                None => Some(PortRange::all(*protocol)),
                Some(destination) => destination_port(
                    findings,
                    &format!("{path}.destinationPort"),
                    *protocol,
                    destination,
                ),
            }
        }
        ([], Some(name)) => {
            findings.invalid(
                format!("{path}.destinationNamedPort"),
                format!("{name:?}: {NAMED_PORTS_UNSUPPORTED}"),
            );
            None
        }
        _ => {
            findings.invalid(
                path,
                "set exactly one of tcp, udp, sctp or destinationNamedPort",
            );
            None
        }
    }
}

fn destination_port(
    findings: &mut Findings,
    path: &str,
    protocol: Protocol,
    spec: &DestinationPortSpec,
) -> Option<PortRange> {
    match (spec.number, &spec.range) {
        (Some(number), None) => {
            let port = fields::port_number(findings, &format!("{path}.number"), number)?;
            Some(PortRange::single(protocol, port))
        }
        (None, Some(range)) => {
            let (start, end) = bounds(findings, &format!("{path}.range"), range.start, range.end)?;
            Some(PortRange {
                protocol,
                start,
                end,
            })
        }
        _ => {
            findings.invalid(path, "set exactly one of number or range");
            None
        }
    }
}

/// `start`/`end` of a port range, both valid ports with `start <= end`.
fn bounds(findings: &mut Findings, path: &str, start: i64, end: i64) -> Option<(u16, u16)> {
    let start = fields::port_number(findings, &format!("{path}.start"), start);
    let end = fields::port_number(findings, &format!("{path}.end"), end);
    let (start, end) = (start?, end?);
    if end < start {
        findings.invalid(
            format!("{path}.end"),
            format!("the range ends ({end}) before it starts ({start})"),
        );
        return None;
    }
    Some((start, end))
}
