//! Gateway → enforcer grants: "this pod may reach this address on these ports, for this long".

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};
use std::time::Duration;

use dnsfence_policy::ports::{PortRange, Protocol};

use super::rules::port_bounds;
use super::{decode_list, from_owned, try_from_proto};
use crate::error::{ApiError, Within};
use crate::grants::v1 as pb;

/// One grant as the gateway creates it and the enforcer installs it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grant {
    pub pod_ip: IpAddr,
    pub destination_ip: IpAddr,
    /// Never empty in practice: a name allowed on no port creates no grant.
    pub ports: Vec<PortRange>,
    /// Remaining lifetime when sent. The wire carries whole milliseconds; sub-millisecond
    /// parts are dropped, which only ever shortens a grant.
    pub lifetime: Duration,
    /// The name that was allowed.
    pub name: String,
}

fn ip_bytes(ip: &IpAddr) -> Vec<u8> {
    match ip {
        IpAddr::V4(v4) => v4.octets().to_vec(),
        IpAddr::V6(v6) => v6.octets().to_vec(),
    }
}

fn ip_from_bytes(bytes: &[u8]) -> Result<IpAddr, ApiError> {
    if let Ok(v4) = <[u8; 4]>::try_from(bytes) {
        return Ok(IpAddr::V4(Ipv4Addr::from(v4)));
    }
    if let Ok(v6) = <[u8; 16]>::try_from(bytes) {
        return Ok(IpAddr::V6(Ipv6Addr::from(v6)));
    }
    Err(ApiError::invalid(
        "",
        format!("{} bytes; an address has 4 or 16", bytes.len()),
    ))
}

fn protocol_from_number(number: u32) -> Result<Protocol, ApiError> {
    Protocol::ALL
        .into_iter()
        .find(|p| u32::from(p.number()) == number)
        .ok_or_else(|| {
            ApiError::invalid(
                "protocol",
                format!("{number} is not a supported protocol number (6 TCP, 17 UDP, 132 SCTP)"),
            )
        })
}

impl From<&PortRange> for pb::PortRange {
    fn from(value: &PortRange) -> Self {
        pb::PortRange {
            protocol: value.protocol.number().into(),
            start: value.start.into(),
            end: value.end.into(),
        }
    }
}
from_owned!(PortRange => pb::PortRange);

pub(crate) fn decode_grant_port_range(message: pb::PortRange) -> Result<PortRange, ApiError> {
    let protocol = protocol_from_number(message.protocol)?;
    let (start, end) = port_bounds(message.start, message.end)?;
    Ok(PortRange {
        protocol,
        start,
        end,
    })
}
try_from_proto!(pb::PortRange => PortRange, decode_grant_port_range, "port_range");

impl From<&Grant> for pb::Grant {
    fn from(value: &Grant) -> Self {
        pb::Grant {
            pod_ip: ip_bytes(&value.pod_ip),
            destination_ip: ip_bytes(&value.destination_ip),
            ports: value.ports.iter().map(pb::PortRange::from).collect(),
            // Saturates only past 584 million years.
            lifetime_ms: u64::try_from(value.lifetime.as_millis()).unwrap_or(u64::MAX),
            name: value.name.clone(),
        }
    }
}
from_owned!(Grant => pb::Grant);

pub(crate) fn decode_grant(message: pb::Grant) -> Result<Grant, ApiError> {
    Ok(Grant {
        pod_ip: ip_from_bytes(&message.pod_ip).within("pod_ip")?,
        destination_ip: ip_from_bytes(&message.destination_ip).within("destination_ip")?,
        ports: decode_list(message.ports, "ports", decode_grant_port_range)?,
        lifetime: Duration::from_millis(message.lifetime_ms),
        name: message.name,
    })
}
try_from_proto!(pb::Grant => Grant, decode_grant, "grant");

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    fn sample() -> Grant {
        Grant {
            pod_ip: "10.0.0.7".parse().unwrap(),
            destination_ip: "2606:50c0:8000::153".parse().unwrap(),
            ports: vec![
                PortRange::single(Protocol::Tcp, 443),
                PortRange::all(Protocol::Udp),
                PortRange {
                    protocol: Protocol::Sctp,
                    start: 3868,
                    end: 3869,
                },
            ],
            lifetime: Duration::from_millis(30_500),
            name: "api.github.com".into(),
        }
    }

    #[test]
    fn grant_round_trip() {
        let grant = sample();
        let message = pb::Grant::from(&grant);
        assert_eq!(message.pod_ip, vec![10, 0, 0, 7]);
        assert_eq!(message.destination_ip.len(), 16);
        assert_eq!(message.lifetime_ms, 30_500);
        assert_eq!(
            message.ports.iter().map(|p| p.protocol).collect::<Vec<_>>(),
            vec![6, 17, 132]
        );
        assert_eq!(Grant::try_from(message).unwrap(), grant);

        let v6_pod = Grant {
            pod_ip: "fd00::7".parse().unwrap(),
            destination_ip: "140.82.112.3".parse().unwrap(),
            ..grant
        };
        assert_eq!(Grant::try_from(pb::Grant::from(&v6_pod)).unwrap(), v6_pod);
    }

    #[test]
    fn lifetime_drops_sub_milliseconds() {
        let grant = Grant {
            lifetime: Duration::from_micros(1_999),
            ..sample()
        };
        assert_eq!(pb::Grant::from(&grant).lifetime_ms, 1);
    }

    #[test]
    fn port_range_round_trip() {
        for protocol in Protocol::ALL {
            let range = PortRange::single(protocol, 53);
            assert_eq!(
                PortRange::try_from(pb::PortRange::from(range)).unwrap(),
                range
            );
        }
    }

    #[test]
    fn grant_rejections() {
        let good = pb::Grant::from(sample());
        type Edit = fn(&mut pb::Grant);
        let cases: [(Edit, &str); 7] = [
            (
                |g| g.pod_ip = vec![10, 0, 0],
                "grant.pod_ip: 3 bytes; an address has 4 or 16",
            ),
            (
                |g| g.destination_ip.clear(),
                "grant.destination_ip: 0 bytes; an address has 4 or 16",
            ),
            (
                |g| g.ports[1].protocol = 1,
                "grant.ports[1].protocol: 1 is not a supported protocol number (6 TCP, 17 UDP, 132 SCTP)",
            ),
            (
                |g| g.ports[0].start = 0,
                "grant.ports[0].start: 0 is not a port (1-65535)",
            ),
            (
                |g| g.ports[0].end = 70_000,
                "grant.ports[0].end: 70000 is not a port (1-65535)",
            ),
            (
                |g| g.ports[2].end = 1,
                "grant.ports[2].end: the range ends (1) before it starts (3868)",
            ),
            (
                |g| g.ports[2].protocol = 0,
                "grant.ports[2].protocol: 0 is not a supported protocol number (6 TCP, 17 UDP, 132 SCTP)",
            ),
        ];
        for (edit, expected) in cases {
            let mut message = good.clone();
            edit(&mut message);
            assert_eq!(Grant::try_from(message).unwrap_err().to_string(), expected);
        }
    }
}
