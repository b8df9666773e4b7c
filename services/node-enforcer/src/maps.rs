//! `#[repr(C)]` mirrors of the map keys and values in `bpf/include/dnsfence_maps.h`.
//!
//! The C header is the single definition; every struct here repeats it field by field and
//! the `const` assertions below check sizes and offsets at compile time, as the header's
//! `_Static_assert`s do on the C side. A layout change made on one side only fails a build.
//! Field names follow the header; addresses are 16 bytes, IPv4 mapped into IPv6.

// aya reads and writes map entries as raw bytes of types that implement the unsafe marker
// trait `aya::Pod`. Implementing it is sound for these plain-old-data structs (repr(C),
// only integers and byte arrays, explicit padding fields, no invalid bit patterns), and this
// is the only module of the crate that needs `unsafe`.
#![allow(unsafe_code)]

use core::mem::{offset_of, size_of};
use std::net::{IpAddr, Ipv6Addr};

/// Port-range slots per grant or CIDR entry (`DF_PORT_SLOTS`).
pub const PORT_SLOTS: usize = 8;
/// The cidrs key's id bit that marks an IPv4 rule (`DF_CIDR_ID_V4`).
pub const CIDR_ID_V4: u32 = 0x8000_0000;
/// Size of the counters array (`DF_R_MAX`).
pub const COUNTERS_LEN: u32 = 32;

/// `pods` key.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct PodKey {
    /// The pod's address.
    pub addr: [u8; 16],
}

/// `pods` value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PodValue {
    /// Host-side interface the pod sits behind.
    pub ifindex: u32,
    /// Allowlist id: the cidrs key's id for this pod.
    pub policy_id: u32,
    /// `DF_MODE_*`.
    pub mode: u8,
    /// Explicit padding.
    pub _pad: [u8; 7],
}

/// One allowed (protocol, port range) and its CLOCK_BOOTTIME deadline (`struct df_port_range`).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct PortRange {
    /// Deadline; 0 = empty slot, `u64::MAX` = never (CIDR rules).
    pub expiry_ns: u64,
    /// First port, host order.
    pub start: u16,
    /// Last port, host order, inclusive.
    pub end: u16,
    /// IANA protocol number, 0 = any.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// `grants` and `cidrs` value: the slots.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Ports {
    /// Slots; unused ones have `expiry_ns == 0`.
    pub r: [PortRange; PORT_SLOTS],
}

/// `grants` key.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct GrantKey {
    /// The pod's address.
    pub pod: [u8; 16],
    /// The granted destination.
    pub dst: [u8; 16],
}

/// `cidrs` key as C sees it (prefix length first). aya's `lpm_trie::Key<CidrKeyData>` has
/// the same bytes; this mirror exists for the layout assertions.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CidrKey {
    /// Bits of (id, addr) that must match: 32 + address bits.
    pub prefixlen: u32,
    /// Allowlist id, `| CIDR_ID_V4` for IPv4 rules.
    pub id: u32,
    /// Prefix address, IPv4 mapped.
    pub addr: [u8; 16],
}

/// The data part of the cidrs key, for `aya::maps::lpm_trie::Key`.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CidrKeyData {
    /// Allowlist id, `| CIDR_ID_V4` for IPv4 rules.
    pub id: u32,
    /// Prefix address, IPv4 mapped.
    pub addr: [u8; 16],
}

/// `gateways` value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct GatewayValue {
    /// `DF_GW_*`.
    pub flags: u32,
}

/// `conntrack` key, in the pod's orientation.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default)]
pub struct CtKey {
    /// The pod's address.
    pub pod: [u8; 16],
    /// The other end.
    pub peer: [u8; 16],
    /// Network order.
    pub pod_port: u16,
    /// Network order.
    pub peer_port: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// Explicit padding.
    pub _pad: [u8; 3],
}

/// `conntrack` value.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct CtValue {
    /// CLOCK_BOOTTIME of the last packet (refreshed at most once a second).
    pub last_seen_ns: u64,
    /// `DF_CT_*`.
    pub flags: u32,
    /// Explicit padding.
    pub _pad: u32,
}

/// `counters` value (per CPU).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct Counter {
    /// Packets.
    pub packets: u64,
    /// Bytes (skb length).
    pub bytes: u64,
}

/// `event_limit` value: a per-pod token bucket.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct EventLimit {
    /// Last refill.
    pub last_ns: u64,
    /// Tokens left.
    pub tokens: u64,
}

/// `clock_cache` value (per CPU): CLOCK_BOOTTIME as last read, and the jiffies value at
/// that read. Only the programs use it (conntrack timestamps).
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct ClockCache {
    /// `bpf_jiffies64()` when `boot_ns` was read.
    pub jiffies: u64,
    /// CLOCK_BOOTTIME; 0 = not read yet.
    pub boot_ns: u64,
}

/// `events` ring-buffer record.
#[repr(C)]
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub struct RawEvent {
    /// CLOCK_BOOTTIME.
    pub timestamp_ns: u64,
    /// The pod's address (the claimed source when spoofed).
    pub pod: [u8; 16],
    /// The other end.
    pub peer: [u8; 16],
    /// Host order.
    pub pod_port: u16,
    /// Host order.
    pub peer_port: u16,
    /// IANA protocol number.
    pub proto: u8,
    /// `DF_VERDICT_*`.
    pub verdict: u8,
    /// `DF_R_*`.
    pub reason: u8,
    /// `DF_DIR_*`.
    pub direction: u8,
    /// Interface the packet was seen on.
    pub ifindex: u32,
    /// The pod's allowlist id (0 when the source is unknown).
    pub policy_id: u32,
}

unsafe impl aya::Pod for PodKey {}
unsafe impl aya::Pod for PodValue {}
unsafe impl aya::Pod for PortRange {}
unsafe impl aya::Pod for Ports {}
unsafe impl aya::Pod for GrantKey {}
unsafe impl aya::Pod for CidrKeyData {}
unsafe impl aya::Pod for GatewayValue {}
unsafe impl aya::Pod for CtKey {}
unsafe impl aya::Pod for CtValue {}
unsafe impl aya::Pod for Counter {}
unsafe impl aya::Pod for EventLimit {}
unsafe impl aya::Pod for ClockCache {}

// ---- layout assertions: the same numbers as the header's _Static_asserts ----
const _: () = assert!(size_of::<PodKey>() == 16);
const _: () = assert!(size_of::<PodValue>() == 16);
const _: () = assert!(offset_of!(PodValue, ifindex) == 0);
const _: () = assert!(offset_of!(PodValue, policy_id) == 4);
const _: () = assert!(offset_of!(PodValue, mode) == 8);
const _: () = assert!(size_of::<PortRange>() == 16);
const _: () = assert!(offset_of!(PortRange, expiry_ns) == 0);
const _: () = assert!(offset_of!(PortRange, start) == 8);
const _: () = assert!(offset_of!(PortRange, end) == 10);
const _: () = assert!(offset_of!(PortRange, proto) == 12);
const _: () = assert!(size_of::<Ports>() == 16 * PORT_SLOTS);
const _: () = assert!(size_of::<GrantKey>() == 32);
const _: () = assert!(offset_of!(GrantKey, dst) == 16);
const _: () = assert!(size_of::<CidrKey>() == 24);
const _: () = assert!(offset_of!(CidrKey, id) == 4);
const _: () = assert!(offset_of!(CidrKey, addr) == 8);
const _: () = assert!(size_of::<aya::maps::lpm_trie::Key<CidrKeyData>>() == size_of::<CidrKey>());
const _: () = assert!(size_of::<GatewayValue>() == 4);
const _: () = assert!(size_of::<CtKey>() == 40);
const _: () = assert!(offset_of!(CtKey, peer) == 16);
const _: () = assert!(offset_of!(CtKey, pod_port) == 32);
const _: () = assert!(offset_of!(CtKey, peer_port) == 34);
const _: () = assert!(offset_of!(CtKey, proto) == 36);
const _: () = assert!(size_of::<CtValue>() == 16);
const _: () = assert!(offset_of!(CtValue, flags) == 8);
const _: () = assert!(size_of::<Counter>() == 16);
const _: () = assert!(size_of::<EventLimit>() == 16);
const _: () = assert!(size_of::<ClockCache>() == 16);
const _: () = assert!(offset_of!(ClockCache, boot_ns) == 8);
const _: () = assert!(size_of::<RawEvent>() == 56);
const _: () = assert!(offset_of!(RawEvent, pod) == 8);
const _: () = assert!(offset_of!(RawEvent, peer) == 24);
const _: () = assert!(offset_of!(RawEvent, pod_port) == 40);
const _: () = assert!(offset_of!(RawEvent, peer_port) == 42);
const _: () = assert!(offset_of!(RawEvent, proto) == 44);
const _: () = assert!(offset_of!(RawEvent, verdict) == 45);
const _: () = assert!(offset_of!(RawEvent, reason) == 46);
const _: () = assert!(offset_of!(RawEvent, direction) == 47);
const _: () = assert!(offset_of!(RawEvent, ifindex) == 48);
const _: () = assert!(offset_of!(RawEvent, policy_id) == 52);

/// The 16-byte map form of an address: IPv6 as is, IPv4 as `::ffff:a.b.c.d`.
pub fn addr16(ip: IpAddr) -> [u8; 16] {
    match ip {
        IpAddr::V4(v4) => v4.to_ipv6_mapped().octets(),
        IpAddr::V6(v6) => v6.octets(),
    }
}

/// The inverse of [`addr16`]: a v4-mapped address becomes IPv4 again.
pub fn ip_from16(addr: [u8; 16]) -> IpAddr {
    let v6 = Ipv6Addr::from(addr);
    match v6.to_ipv4_mapped() {
        Some(v4) => IpAddr::V4(v4),
        None => IpAddr::V6(v6),
    }
}

impl RawEvent {
    /// Decodes a ring-buffer record (which need not be aligned); `None` when it is short.
    pub fn from_bytes(b: &[u8]) -> Option<Self> {
        if b.len() < size_of::<Self>() {
            return None;
        }
        let arr16 = |at: usize| -> [u8; 16] {
            let mut a = [0u8; 16];
            a.copy_from_slice(&b[at..at + 16]);
            a
        };
        let u16_at = |at: usize| u16::from_ne_bytes([b[at], b[at + 1]]);
        let u32_at = |at: usize| u32::from_ne_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
        let mut ts = [0u8; 8];
        ts.copy_from_slice(&b[0..8]);
        Some(Self {
            timestamp_ns: u64::from_ne_bytes(ts),
            pod: arr16(8),
            peer: arr16(24),
            pod_port: u16_at(40),
            peer_port: u16_at(42),
            proto: b[44],
            verdict: b[45],
            reason: b[46],
            direction: b[47],
            ifindex: u32_at(48),
            policy_id: u32_at(52),
        })
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use std::net::Ipv4Addr;

    fn v4(a: u8, b: u8, c: u8, d: u8) -> IpAddr {
        IpAddr::V4(Ipv4Addr::new(a, b, c, d))
    }

    #[test]
    fn v4_is_mapped_and_back() {
        let a = addr16(v4(192, 0, 2, 10));
        assert_eq!(&a[..12], &[0, 0, 0, 0, 0, 0, 0, 0, 0, 0, 0xff, 0xff]);
        assert_eq!(&a[12..], &[192, 0, 2, 10]);
        assert_eq!(ip_from16(a), v4(192, 0, 2, 10));
        let v6: IpAddr = "2001:db8::1".parse().unwrap();
        assert_eq!(ip_from16(addr16(v6)), v6);
    }

    #[test]
    fn raw_event_decodes_header_layout() {
        let mut b = [0u8; 56];
        b[0..8].copy_from_slice(&42u64.to_ne_bytes());
        b[8..24].copy_from_slice(&addr16(v4(192, 0, 2, 10)));
        b[40..42].copy_from_slice(&1234u16.to_ne_bytes());
        b[42..44].copy_from_slice(&443u16.to_ne_bytes());
        b[44] = 6;
        b[46] = 11;
        b[48..52].copy_from_slice(&7u32.to_ne_bytes());
        let e = RawEvent::from_bytes(&b).unwrap();
        assert_eq!(e.timestamp_ns, 42);
        assert_eq!(ip_from16(e.pod), v4(192, 0, 2, 10));
        assert_eq!(
            (e.pod_port, e.peer_port, e.proto, e.reason),
            (1234, 443, 6, 11)
        );
        assert_eq!(e.ifindex, 7);
        assert!(RawEvent::from_bytes(&b[..55]).is_none());
    }
}
