//! Protocols, port ranges and port sets (for "on which ports is this name allowed").

use std::fmt;

use smallvec::{SmallVec, smallvec};

#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum Protocol {
    Tcp,
    Udp,
    Sctp,
}

impl Protocol {
    pub const ALL: [Protocol; 3] = [Protocol::Tcp, Protocol::Udp, Protocol::Sctp];

    pub fn parse(s: &str) -> Option<Protocol> {
        match s.to_ascii_uppercase().as_str() {
            "TCP" => Some(Protocol::Tcp),
            "UDP" => Some(Protocol::Udp),
            "SCTP" => Some(Protocol::Sctp),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Protocol::Tcp => "TCP",
            Protocol::Udp => "UDP",
            Protocol::Sctp => "SCTP",
        }
    }

    /// IANA protocol number, as the datapath sees it.
    pub fn number(self) -> u8 {
        match self {
            Protocol::Tcp => 6,
            Protocol::Udp => 17,
            Protocol::Sctp => 132,
        }
    }

    fn index(self) -> usize {
        match self {
            Protocol::Tcp => 0,
            Protocol::Udp => 1,
            Protocol::Sctp => 2,
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// An inclusive port range of one protocol; `start == end` for a single port. Port 0 is never
/// valid in a policy.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct PortRange {
    pub protocol: Protocol,
    pub start: u16,
    pub end: u16,
}

impl PortRange {
    pub fn single(protocol: Protocol, port: u16) -> PortRange {
        PortRange {
            protocol,
            start: port,
            end: port,
        }
    }

    pub fn all(protocol: Protocol) -> PortRange {
        PortRange {
            protocol,
            start: 1,
            end: u16::MAX,
        }
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.protocol == protocol && (self.start..=self.end).contains(&port)
    }
}

impl fmt::Display for PortRange {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.start == self.end {
            write!(f, "{}/{}", self.start, self.protocol)
        } else if self.start == 1 && self.end == u16::MAX {
            write!(f, "*/{}", self.protocol)
        } else {
            write!(f, "{}-{}/{}", self.start, self.end, self.protocol)
        }
    }
}

/// Parses `443`, `443/tcp`, `8000-8080/UDP` (TCP when no protocol is given).
impl std::str::FromStr for PortRange {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (ports, protocol) = match s.split_once('/') {
            Some((ports, proto)) => (
                ports,
                Protocol::parse(proto)
                    .ok_or_else(|| format!("{proto:?} is not a protocol (TCP, UDP or SCTP)"))?,
            ),
            None => (s, Protocol::Tcp),
        };
        let parse = |p: &str| -> Result<u16, String> {
            match p.parse::<u32>() {
                Ok(n) if (1..=65535).contains(&n) => Ok(n as u16),
                _ => Err(format!("{p:?} is not a port (1-65535)")),
            }
        };
        let (start, end) = match ports.split_once('-') {
            Some((a, b)) => (parse(a)?, parse(b)?),
            None => {
                let p = parse(ports)?;
                (p, p)
            }
        };
        if end < start {
            return Err(format!("{s:?}: the range ends before it starts"));
        }
        Ok(PortRange {
            protocol,
            start,
            end,
        })
    }
}

/// A set of (protocol, port) pairs plus "other protocols" (ICMP and the like, which have no
/// ports), kept as sorted disjoint ranges per protocol.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct PortSet {
    ranges: [Ranges; 3],
    other_protocols: bool,
}

/// Rules name a handful of ports: kept inline, the set operations the gateway runs per query
/// allocate nothing.
type Ranges = SmallVec<[(u16, u16); 4]>;

impl PortSet {
    pub fn empty() -> PortSet {
        PortSet::default()
    }

    pub fn everything() -> PortSet {
        PortSet {
            ranges: [
                smallvec![(1, u16::MAX)],
                smallvec![(1, u16::MAX)],
                smallvec![(1, u16::MAX)],
            ],
            other_protocols: true,
        }
    }

    /// The set a rule's `ports` list covers: empty list means every port and protocol.
    pub fn from_rule_ports(ports: &[PortRange]) -> PortSet {
        if ports.is_empty() {
            return PortSet::everything();
        }
        let mut set = PortSet::empty();
        for p in ports {
            set.insert(*p);
        }
        set
    }

    pub fn is_empty(&self) -> bool {
        !self.other_protocols && self.ranges.iter().all(SmallVec::is_empty)
    }

    pub fn other_protocols(&self) -> bool {
        self.other_protocols
    }

    pub fn contains(&self, protocol: Protocol, port: u16) -> bool {
        self.ranges[protocol.index()]
            .iter()
            .any(|&(s, e)| (s..=e).contains(&port))
    }

    pub fn insert(&mut self, range: PortRange) {
        let list = &mut self.ranges[range.protocol.index()];
        list.push((range.start, range.end));
        normalize(list);
    }

    pub fn union(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        out.add(other);
        out
    }

    /// `self ∪ other`, in place.
    pub fn add(&mut self, other: &PortSet) {
        for (list, more) in self.ranges.iter_mut().zip(&other.ranges) {
            if !more.is_empty() {
                list.extend_from_slice(more);
                normalize(list);
            }
        }
        self.other_protocols |= other.other_protocols;
    }

    pub fn intersect(&self, other: &PortSet) -> PortSet {
        let mut out = PortSet::empty();
        for i in 0..3 {
            for &(a, b) in &self.ranges[i] {
                for &(c, d) in &other.ranges[i] {
                    let (s, e) = (a.max(c), b.min(d));
                    if s <= e {
                        out.ranges[i].push((s, e));
                    }
                }
            }
            // Pieces of two normalized lists come out sorted and apart already; this only
            // guards the invariant.
            if out.ranges[i].len() > 1 {
                normalize(&mut out.ranges[i]);
            }
        }
        out.other_protocols = self.other_protocols && other.other_protocols;
        out
    }

    pub fn subtract(&self, other: &PortSet) -> PortSet {
        let mut out = self.clone();
        out.remove(other);
        out
    }

    /// `self ∖ other`, in place.
    pub fn remove(&mut self, other: &PortSet) {
        for (list, gone) in self.ranges.iter_mut().zip(&other.ranges) {
            for &(c, d) in gone {
                if !list.iter().any(|&(a, b)| c <= b && a <= d) {
                    continue;
                }
                let mut next = Ranges::new();
                for &(a, b) in list.iter() {
                    if d < a || c > b {
                        next.push((a, b));
                        continue;
                    }
                    if a < c {
                        next.push((a, c - 1));
                    }
                    if d < b {
                        next.push((d + 1, b));
                    }
                }
                *list = next;
            }
        }
        self.other_protocols &= !other.other_protocols;
    }

    /// The set as port ranges (what a grant carries).
    pub fn ranges(&self) -> Vec<PortRange> {
        Protocol::ALL
            .into_iter()
            .flat_map(|protocol| {
                self.ranges[protocol.index()]
                    .iter()
                    .map(move |&(start, end)| PortRange {
                        protocol,
                        start,
                        end,
                    })
            })
            .collect()
    }
}

impl fmt::Display for PortSet {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if *self == PortSet::everything() {
            return f.write_str("all ports");
        }
        let mut parts: Vec<String> = self.ranges().iter().map(ToString::to_string).collect();
        if self.other_protocols {
            parts.push("other protocols".into());
        }
        if parts.is_empty() {
            return f.write_str("no ports");
        }
        f.write_str(&parts.join(", "))
    }
}

/// Sorts and merges overlapping or adjacent ranges, in place.
fn normalize(list: &mut Ranges) {
    list.sort_unstable();
    let mut kept = 0;
    for i in 0..list.len() {
        let (s, e) = list[i];
        if kept > 0 && u32::from(s) <= u32::from(list[kept - 1].1) + 1 {
            list[kept - 1].1 = list[kept - 1].1.max(e);
        } else {
            list[kept] = (s, e);
            kept += 1;
        }
    }
    list.truncate(kept);
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn r(s: &str) -> PortRange {
        s.parse().unwrap()
    }

    #[test]
    fn parse_port_specs() {
        assert_eq!(r("443"), PortRange::single(Protocol::Tcp, 443));
        assert_eq!(r("53/udp"), PortRange::single(Protocol::Udp, 53));
        assert_eq!(
            r("8000-8080/SCTP"),
            PortRange {
                protocol: Protocol::Sctp,
                start: 8000,
                end: 8080
            }
        );
        assert!("0".parse::<PortRange>().is_err());
        assert!("65536".parse::<PortRange>().is_err());
        assert!("90-80".parse::<PortRange>().is_err());
        assert!("80/icmp".parse::<PortRange>().is_err());
    }

    #[test]
    fn set_algebra() {
        let all = PortSet::everything();
        let https = PortSet::from_rule_ports(&[r("443")]);
        let rest = all.subtract(&https);
        assert!(!rest.contains(Protocol::Tcp, 443));
        assert!(rest.contains(Protocol::Tcp, 442));
        assert!(rest.contains(Protocol::Tcp, 444));
        assert!(rest.contains(Protocol::Udp, 443));
        assert!(rest.other_protocols());
        assert_eq!(rest.intersect(&https), PortSet::empty());
        assert_eq!(rest.union(&https), all);
        let web = PortSet::from_rule_ports(&[r("80"), r("81"), r("443-444")]);
        assert_eq!(web.ranges(), vec![r("80-81"), r("443-444")]);
        assert_eq!(web.to_string(), "80-81/TCP, 443-444/TCP");
        assert_eq!(PortSet::empty().to_string(), "no ports");
        assert!(PortSet::from_rule_ports(&[]).other_protocols());
    }
}
