//! The datapath's vocabulary in Rust terms: pod modes, protocols, port specs, verdict
//! reasons, flow events and counters. Numeric values are the header's `DF_*` constants.

use std::{fmt, net::IpAddr};

use crate::maps::{self, Counter, RawEvent};

/// How the datapath treats a pod's egress that nothing allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum Mode {
    /// Drop it (`DefaultDeny` or a selecting policy).
    Enforce,
    /// Log it and let it pass (`Audit`).
    Audit,
    /// Let everything pass (`DefaultAllow`, no policy); anti-spoofing still applies.
    Allow,
}

impl Mode {
    /// `DF_MODE_*`.
    pub const fn as_u8(self) -> u8 {
        match self {
            Self::Enforce => 1,
            Self::Audit => 2,
            Self::Allow => 3,
        }
    }

    /// From `DF_MODE_*`; unknown values read as `Enforce` (the datapath fails closed).
    pub const fn from_u8(v: u8) -> Self {
        match v {
            2 => Self::Audit,
            3 => Self::Allow,
            _ => Self::Enforce,
        }
    }
}

/// A transport protocol of a port rule.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Protocol {
    /// Any protocol (a rule without ports: ICMP is allowed too).
    Any,
    /// TCP.
    Tcp,
    /// UDP.
    Udp,
    /// SCTP.
    Sctp,
    /// Another IANA protocol number.
    Other(u8),
}

impl Protocol {
    /// IANA number; 0 for `Any`.
    pub const fn number(self) -> u8 {
        match self {
            Self::Any => 0,
            Self::Tcp => 6,
            Self::Udp => 17,
            Self::Sctp => 132,
            Self::Other(n) => n,
        }
    }

    /// From an IANA number (0 = any).
    pub const fn from_number(n: u8) -> Self {
        match n {
            0 => Self::Any,
            6 => Self::Tcp,
            17 => Self::Udp,
            132 => Self::Sctp,
            n => Self::Other(n),
        }
    }
}

impl fmt::Display for Protocol {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::Any => f.write_str("ANY"),
            Self::Tcp => f.write_str("TCP"),
            Self::Udp => f.write_str("UDP"),
            Self::Sctp => f.write_str("SCTP"),
            Self::Other(n) => write!(f, "proto-{n}"),
        }
    }
}

/// A protocol and an inclusive port range, as granted or as a CIDR rule allows.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct PortSpec {
    /// Protocol (`Any` matches every protocol).
    pub proto: Protocol,
    /// First port.
    pub start: u16,
    /// Last port (inclusive).
    pub end: u16,
}

impl PortSpec {
    /// One port of one protocol.
    pub const fn port(proto: Protocol, port: u16) -> Self {
        Self {
            proto,
            start: port,
            end: port,
        }
    }

    /// Every port of every protocol (a rule without `ports`).
    pub const ALL: Self = Self {
        proto: Protocol::Any,
        start: 0,
        end: u16::MAX,
    };
}

/// A port range held in a grant entry, with its deadline.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct GrantSlot {
    /// What is allowed.
    pub spec: PortSpec,
    /// CLOCK_BOOTTIME deadline in ns.
    pub expiry_boot_ns: u64,
}

/// Why the datapath passed or dropped a packet (`DF_R_*`; the counters' index).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[repr(u8)]
pub enum Reason {
    /// Pass: tracked flow.
    Established = 1,
    /// Pass: ICMP error about a tracked flow.
    Related = 2,
    /// Pass: DNS to a gateway.
    DnsGateway = 3,
    /// Pass: live grant.
    Grant = 4,
    /// Pass: CIDR rule.
    Cidr = 5,
    /// Pass: pod in allow mode.
    Unenforced = 6,
    /// Pass: ARP, IPv6 neighbour discovery, link-local.
    LinkLocal = 7,
    /// Pass: non-first fragment of a tracked flow.
    Fragment = 8,
    /// Pass: would be dropped, pod in audit mode.
    Audit = 9,
    /// Pass: a packet to the pod.
    Ingress = 10,
    /// Drop: nothing allows it.
    DefaultDeny = 11,
    /// Drop: the source is not a pod of this interface.
    Spoofed = 12,
    /// Drop: non-first fragment without a tracked flow.
    FragmentUntracked = 13,
    /// Drop: truncated headers or too many IPv6 extension headers.
    Malformed = 14,
    /// Drop: not IPv4/IPv6/ARP, or VLAN-tagged.
    NonIp = 15,
    /// Counter only: an event was rate-limited.
    EventsSuppressed = 16,
    /// Counter only: the ring buffer was full.
    EventsLost = 17,
}

impl Reason {
    /// Every reason, in code order.
    pub const ALL: [Self; 17] = [
        Self::Established,
        Self::Related,
        Self::DnsGateway,
        Self::Grant,
        Self::Cidr,
        Self::Unenforced,
        Self::LinkLocal,
        Self::Fragment,
        Self::Audit,
        Self::Ingress,
        Self::DefaultDeny,
        Self::Spoofed,
        Self::FragmentUntracked,
        Self::Malformed,
        Self::NonIp,
        Self::EventsSuppressed,
        Self::EventsLost,
    ];

    /// From `DF_R_*`.
    pub fn from_u8(v: u8) -> Option<Self> {
        Self::ALL.into_iter().find(|r| *r as u8 == v)
    }

    /// A stable snake_case name for logs and metric labels.
    pub const fn name(self) -> &'static str {
        match self {
            Self::Established => "established",
            Self::Related => "related",
            Self::DnsGateway => "dns_gateway",
            Self::Grant => "grant",
            Self::Cidr => "cidr",
            Self::Unenforced => "unenforced",
            Self::LinkLocal => "link_local",
            Self::Fragment => "fragment",
            Self::Audit => "audit",
            Self::Ingress => "ingress",
            Self::DefaultDeny => "default_deny",
            Self::Spoofed => "spoofed",
            Self::FragmentUntracked => "fragment_untracked",
            Self::Malformed => "malformed",
            Self::NonIp => "non_ip",
            Self::EventsSuppressed => "events_suppressed",
            Self::EventsLost => "events_lost",
        }
    }
}

/// Whether a logged packet went through.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Verdict {
    /// Dropped.
    Drop,
    /// Passed (audit mode).
    Pass,
}

/// Which way a logged packet travelled.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Direction {
    /// From the pod.
    Egress,
    /// To the pod.
    Ingress,
}

/// One decoded ring-buffer record: a drop, or an audit-mode pass.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct FlowEvent {
    /// CLOCK_BOOTTIME of the packet.
    pub boot_ns: u64,
    /// The pod's address (the claimed source for a spoofed packet).
    pub pod: IpAddr,
    /// The other end.
    pub peer: IpAddr,
    /// The pod's port (ICMP echo: identifier).
    pub pod_port: u16,
    /// The peer's port (ICMP echo: identifier).
    pub peer_port: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// Dropped or passed.
    pub verdict: Verdict,
    /// Why; for an audit pass, the reason it would have been dropped.
    pub reason: Option<Reason>,
    /// Egress or ingress.
    pub direction: Direction,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// The pod's allowlist id (0 when the source is unknown).
    pub policy_id: u32,
}

impl From<RawEvent> for FlowEvent {
    fn from(e: RawEvent) -> Self {
        Self {
            boot_ns: e.timestamp_ns,
            pod: maps::ip_from16(e.pod),
            peer: maps::ip_from16(e.peer),
            pod_port: e.pod_port,
            peer_port: e.peer_port,
            proto: e.proto,
            verdict: if e.verdict == 1 {
                Verdict::Pass
            } else {
                Verdict::Drop
            },
            reason: Reason::from_u8(e.reason),
            direction: if e.direction == 1 {
                Direction::Ingress
            } else {
                Direction::Egress
            },
            ifindex: e.ifindex,
            policy_id: e.policy_id,
        }
    }
}

/// Verdict counters summed over CPUs, indexed by [`Reason`].
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Counters {
    values: Vec<Counter>,
}

impl Counters {
    pub(crate) fn new(values: Vec<Counter>) -> Self {
        Self { values }
    }

    /// Packets counted for `reason`.
    pub fn packets(&self, reason: Reason) -> u64 {
        self.values.get(reason as usize).map_or(0, |c| c.packets)
    }

    /// Bytes counted for `reason`.
    pub fn bytes(&self, reason: Reason) -> u64 {
        self.values.get(reason as usize).map_or(0, |c| c.bytes)
    }

    /// (reason, packets, bytes) for every reason.
    pub fn iter(&self) -> impl Iterator<Item = (Reason, u64, u64)> + '_ {
        Reason::ALL
            .into_iter()
            .map(|r| (r, self.packets(r), self.bytes(r)))
    }
}
