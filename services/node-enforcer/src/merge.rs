//! Pure slot arithmetic for grant and CIDR entries, kept apart from the map I/O so it can
//! be tested without root.
//!
//! A grant entry has [`PORT_SLOTS`] slots of (protocol, port range, expiry). A later grant
//! for the same (pod, destination) merges in: an identical range keeps the later expiry, a
//! range already covered until at least as late is a no-op, a free or expired slot takes a
//! new range, and when the entry is full the slot that expires soonest gives way.

use crate::{
    Error, Result,
    maps::{PORT_SLOTS, PortRange, Ports},
    types::{GrantSlot, PortSpec, Protocol},
};

/// What [`crate::Datapath::narrow_grant`] did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NarrowOutcome {
    /// No entry for the pair.
    Absent,
    /// Everything in the entry is still allowed.
    Unchanged,
    /// Some ranges were removed or shrunk.
    Narrowed,
    /// Nothing was left: the entry was deleted.
    Removed,
}

/// Rejects ranges whose start is after their end.
pub(crate) fn validate(specs: &[PortSpec]) -> Result<()> {
    match specs.iter().find(|s| s.start > s.end) {
        Some(s) => Err(Error::InvalidPortRange {
            start: s.start,
            end: s.end,
        }),
        None => Ok(()),
    }
}

fn slot(spec: PortSpec, expiry_ns: u64) -> PortRange {
    PortRange {
        expiry_ns,
        start: spec.start,
        end: spec.end,
        proto: spec.proto.number(),
        _pad: [0; 3],
    }
}

fn spec_of(r: &PortRange) -> PortSpec {
    PortSpec {
        proto: Protocol::from_number(r.proto),
        start: r.start,
        end: r.end,
    }
}

fn live(r: &PortRange, now: u64) -> bool {
    r.expiry_ns > now
}

/// True when `outer` admits every packet `inner` admits.
fn covers(outer: &PortRange, inner: &PortRange) -> bool {
    (outer.proto == 0 || outer.proto == inner.proto)
        && outer.start <= inner.start
        && inner.end <= outer.end
}

/// Merges `add` (all with deadline `expiry`) into `entry`; slots expired at `now` are free.
pub(crate) fn merge_grant(entry: &mut Ports, add: &[PortSpec], expiry: u64, now: u64) {
    for spec in add {
        let new = slot(*spec, expiry);
        // same range: the later deadline wins
        if let Some(r) = entry.r.iter_mut().find(|r| {
            live(r, now) && r.proto == new.proto && r.start == new.start && r.end == new.end
        }) {
            r.expiry_ns = r.expiry_ns.max(expiry);
            continue;
        }
        // already allowed at least as long by a wider range
        if entry
            .r
            .iter()
            .any(|r| live(r, now) && r.expiry_ns >= expiry && covers(r, &new))
        {
            continue;
        }
        if let Some(r) = entry.r.iter_mut().find(|r| !live(r, now)) {
            *r = new;
            continue;
        }
        // full: the soonest-expiring slot gives way, unless the new one would expire first
        if let Some(r) = entry.r.iter_mut().min_by_key(|r| r.expiry_ns)
            && r.expiry_ns < expiry
        {
            *r = new;
        }
    }
}

/// A CIDR entry: the ranges never expire. Empty `specs` is a valid entry that allows
/// nothing (an `except` block shadowing a wider prefix).
pub(crate) fn cidr_ports(specs: &[PortSpec]) -> Result<Ports> {
    validate(specs)?;
    let mut unique: Vec<PortSpec> = specs.to_vec();
    unique.sort();
    unique.dedup();
    if unique.len() > PORT_SLOTS {
        return Err(Error::TooManyPortRanges(unique.len()));
    }
    let mut ports = Ports::default();
    for (r, spec) in ports.r.iter_mut().zip(unique) {
        *r = slot(spec, u64::MAX);
    }
    Ok(ports)
}

/// The live slots of an entry.
pub(crate) fn slots(entry: &Ports, now: u64) -> Vec<GrantSlot> {
    entry
        .r
        .iter()
        .filter(|r| live(r, now))
        .map(|r| GrantSlot {
            spec: spec_of(r),
            expiry_boot_ns: r.expiry_ns,
        })
        .collect()
}

/// True when no slot is live at `now`.
pub(crate) fn all_expired(entry: &Ports, now: u64) -> bool {
    !entry.r.iter().any(|r| live(r, now))
}

fn intersect(a: PortSpec, b: PortSpec) -> Option<PortSpec> {
    let proto = match (a.proto, b.proto) {
        (Protocol::Any, p) | (p, Protocol::Any) => p,
        (p, q) if p == q => p,
        _ => return None,
    };
    let start = a.start.max(b.start);
    let end = a.end.min(b.end);
    (start <= end).then_some(PortSpec { proto, start, end })
}

/// Restricts every live slot to what `allowed` still permits (keeping its deadline).
/// Returns the new entry, or `None` when nothing is left.
pub(crate) fn narrow(entry: &Ports, allowed: &[PortSpec], now: u64) -> (Option<Ports>, bool) {
    let before: Vec<GrantSlot> = slots(entry, now);
    let mut pieces: Vec<GrantSlot> = Vec::new();
    for s in &before {
        for a in allowed {
            if let Some(spec) = intersect(s.spec, *a) {
                let piece = GrantSlot {
                    spec,
                    expiry_boot_ns: s.expiry_boot_ns,
                };
                if !pieces.contains(&piece) {
                    pieces.push(piece);
                }
            }
        }
    }
    let changed = pieces.len() != before.len() || pieces.iter().any(|p| !before.contains(p));
    if pieces.is_empty() {
        return (None, changed);
    }
    // more pieces than slots (a range split by several allowed ones): keep the longest-lived
    pieces.sort_by_key(|p| std::cmp::Reverse(p.expiry_boot_ns));
    pieces.truncate(PORT_SLOTS);
    let mut out = Ports::default();
    for (r, p) in out.r.iter_mut().zip(&pieces) {
        *r = slot(p.spec, p.expiry_boot_ns);
    }
    (Some(out), changed)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    const TCP443: PortSpec = PortSpec::port(Protocol::Tcp, 443);
    const TCP80: PortSpec = PortSpec::port(Protocol::Tcp, 80);

    fn live_specs(p: &Ports, now: u64) -> Vec<(PortSpec, u64)> {
        slots(p, now)
            .into_iter()
            .map(|s| (s.spec, s.expiry_boot_ns))
            .collect()
    }

    #[test]
    fn same_range_later_expiry_wins() {
        let mut p = Ports::default();
        merge_grant(&mut p, &[TCP443], 100, 0);
        merge_grant(&mut p, &[TCP443], 50, 0);
        assert_eq!(live_specs(&p, 0), vec![(TCP443, 100)]);
        merge_grant(&mut p, &[TCP443], 200, 0);
        assert_eq!(live_specs(&p, 0), vec![(TCP443, 200)]);
    }

    #[test]
    fn different_ports_keep_both() {
        let mut p = Ports::default();
        merge_grant(&mut p, &[TCP443], 100, 0);
        merge_grant(&mut p, &[TCP80], 100, 0);
        assert_eq!(live_specs(&p, 0).len(), 2);
    }

    #[test]
    fn covered_range_is_a_noop_and_expired_slots_are_reused() {
        let mut p = Ports::default();
        merge_grant(&mut p, &[PortSpec::ALL], 100, 0);
        merge_grant(&mut p, &[TCP443], 90, 0);
        assert_eq!(live_specs(&p, 0), vec![(PortSpec::ALL, 100)]);
        // at now=100 the ALL slot is expired and is reused
        merge_grant(&mut p, &[TCP443], 300, 100);
        assert_eq!(live_specs(&p, 100), vec![(TCP443, 300)]);
    }

    #[test]
    fn full_entry_replaces_the_soonest_expiring_slot() {
        let mut p = Ports::default();
        for i in 0..PORT_SLOTS as u16 {
            merge_grant(
                &mut p,
                &[PortSpec::port(Protocol::Tcp, 1000 + i)],
                100 + u64::from(i),
                0,
            );
        }
        merge_grant(&mut p, &[TCP443], 500, 0);
        let s = live_specs(&p, 0);
        assert_eq!(s.len(), PORT_SLOTS);
        assert!(s.contains(&(TCP443, 500)));
        assert!(!s.iter().any(|(spec, _)| spec.start == 1000));
        // a new range expiring before all others is not worth a slot
        merge_grant(&mut p, &[TCP80], 1, 0);
        assert!(!live_specs(&p, 0).iter().any(|(spec, _)| *spec == TCP80));
    }

    #[test]
    fn narrow_intersects_and_removes() {
        let mut p = Ports::default();
        merge_grant(&mut p, &[PortSpec::ALL, TCP80], 100, 0);
        let (out, changed) = narrow(&p, &[TCP443], 0);
        assert!(changed);
        assert_eq!(live_specs(&out.unwrap(), 0), vec![(TCP443, 100)]);
        let (out, changed) = narrow(&p, &[PortSpec::ALL], 0);
        assert!(!changed);
        assert_eq!(out.unwrap(), p);
        let (out, changed) = narrow(&p, &[PortSpec::port(Protocol::Udp, 53)], 0);
        assert!(changed);
        // ALL ∩ udp/53 survives; tcp/80 does not
        assert_eq!(
            live_specs(&out.unwrap(), 0),
            vec![(PortSpec::port(Protocol::Udp, 53), 100)]
        );
        let mut q = Ports::default();
        merge_grant(&mut q, &[TCP80], 100, 0);
        assert_eq!(narrow(&q, &[TCP443], 0), (None, true));
    }

    #[test]
    fn cidr_entries_are_bounded_and_validated() {
        let many: Vec<PortSpec> = (0..9).map(|i| PortSpec::port(Protocol::Tcp, i)).collect();
        assert!(matches!(
            cidr_ports(&many),
            Err(Error::TooManyPortRanges(9))
        ));
        let bad = PortSpec {
            proto: Protocol::Tcp,
            start: 10,
            end: 1,
        };
        assert!(matches!(
            cidr_ports(&[bad]),
            Err(Error::InvalidPortRange { .. })
        ));
        let p = cidr_ports(&[TCP443, TCP443]).unwrap();
        assert_eq!(live_specs(&p, u64::MAX - 1), vec![(TCP443, u64::MAX)]);
        assert!(all_expired(&cidr_ports(&[]).unwrap(), 0));
    }
}
