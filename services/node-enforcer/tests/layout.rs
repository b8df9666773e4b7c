//! The map layouts, checked against the C header's own assertions without root: every
//! `DF_ASSERT_SIZE`/`DF_ASSERT_OFF` line of `bpf/include/dnsfence_maps.h` must hold for
//! the Rust mirror too, and every mirrored struct must be asserted in the header. (The
//! `const` assertions in `maps.rs` check the same numbers at compile time; this test keeps
//! the two lists from drifting apart.)

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::{collections::BTreeMap, mem::offset_of, mem::size_of};

use dnsfence_node_enforcer::maps::*;

const HEADER: &str = include_str!("../../../bpf/include/dnsfence_maps.h");

/// (C struct name, Rust size, [(field, Rust offset)]).
fn rust_layouts() -> BTreeMap<&'static str, (usize, BTreeMap<&'static str, usize>)> {
    let mut m = BTreeMap::new();
    let mut add = |c: &'static str, size: usize, fields: &[(&'static str, usize)]| {
        m.insert(c, (size, fields.iter().copied().collect()));
    };
    add(
        "df_pod_key",
        size_of::<PodKey>(),
        &[("addr", offset_of!(PodKey, addr))],
    );
    add(
        "df_pod_value",
        size_of::<PodValue>(),
        &[
            ("ifindex", offset_of!(PodValue, ifindex)),
            ("policy_id", offset_of!(PodValue, policy_id)),
            ("mode", offset_of!(PodValue, mode)),
        ],
    );
    add(
        "df_port_range",
        size_of::<PortRange>(),
        &[
            ("expiry_ns", offset_of!(PortRange, expiry_ns)),
            ("start", offset_of!(PortRange, start)),
            ("end", offset_of!(PortRange, end)),
            ("proto", offset_of!(PortRange, proto)),
        ],
    );
    add("df_ports", size_of::<Ports>(), &[]);
    add(
        "df_grant_key",
        size_of::<GrantKey>(),
        &[("dst", offset_of!(GrantKey, dst))],
    );
    add(
        "df_cidr_key",
        size_of::<CidrKey>(),
        &[
            ("id", offset_of!(CidrKey, id)),
            ("addr", offset_of!(CidrKey, addr)),
        ],
    );
    add("df_gateway_value", size_of::<GatewayValue>(), &[]);
    add(
        "df_ct_key",
        size_of::<CtKey>(),
        &[
            ("peer", offset_of!(CtKey, peer)),
            ("pod_port", offset_of!(CtKey, pod_port)),
            ("peer_port", offset_of!(CtKey, peer_port)),
            ("proto", offset_of!(CtKey, proto)),
        ],
    );
    add(
        "df_ct_value",
        size_of::<CtValue>(),
        &[("flags", offset_of!(CtValue, flags))],
    );
    add("df_counter", size_of::<Counter>(), &[]);
    add("df_event_limit", size_of::<EventLimit>(), &[]);
    add(
        "df_clock",
        size_of::<ClockCache>(),
        &[("boot_ns", offset_of!(ClockCache, boot_ns))],
    );
    add(
        "df_event",
        size_of::<RawEvent>(),
        &[
            ("pod", offset_of!(RawEvent, pod)),
            ("peer", offset_of!(RawEvent, peer)),
            ("pod_port", offset_of!(RawEvent, pod_port)),
            ("peer_port", offset_of!(RawEvent, peer_port)),
            ("proto", offset_of!(RawEvent, proto)),
            ("verdict", offset_of!(RawEvent, verdict)),
            ("reason", offset_of!(RawEvent, reason)),
            ("direction", offset_of!(RawEvent, direction)),
            ("ifindex", offset_of!(RawEvent, ifindex)),
            ("policy_id", offset_of!(RawEvent, policy_id)),
        ],
    );
    m
}

/// Evaluates the header's size expressions: a number, or `16 * DF_PORT_SLOTS`.
fn eval(expr: &str) -> usize {
    let expr = expr.replace("DF_PORT_SLOTS", &PORT_SLOTS.to_string());
    expr.split('*')
        .map(|f| f.trim().parse::<usize>().expect(&expr))
        .product()
}

#[test]
fn header_assertions_hold_for_the_rust_mirrors() {
    let rust = rust_layouts();
    let mut sized = Vec::new();
    let mut checked = 0;
    for line in HEADER.lines().map(str::trim) {
        let (kind, args) = if let Some(a) = line.strip_prefix("DF_ASSERT_SIZE(struct ") {
            ("size", a)
        } else if let Some(a) = line.strip_prefix("DF_ASSERT_OFF(struct ") {
            ("off", a)
        } else {
            continue;
        };
        let args: Vec<&str> = args
            .trim_end_matches(");")
            .split(',')
            .map(str::trim)
            .collect();
        let (size, fields) = rust
            .get(args[0])
            .unwrap_or_else(|| panic!("no Rust mirror of {}", args[0]));
        if kind == "size" {
            assert_eq!(*size, eval(args[1]), "size of {}", args[0]);
            sized.push(args[0]);
        } else {
            let off = fields
                .get(args[1])
                .unwrap_or_else(|| panic!("{}.{} is asserted in C but not here", args[0], args[1]));
            assert_eq!(*off, eval(args[2]), "offset of {}.{}", args[0], args[1]);
        }
        checked += 1;
    }
    for name in rust.keys() {
        assert!(
            sized.contains(name),
            "{name} has no DF_ASSERT_SIZE in the header"
        );
    }
    assert!(
        checked > 30,
        "only {checked} assertions found: did the header's macros change?"
    );
    assert_eq!(PORT_SLOTS, 8);
    assert!(HEADER.contains("#define DF_PORT_SLOTS 8"));
    assert!(HEADER.contains("#define DF_CIDR_ID_V4 0x80000000u"));
    assert!(HEADER.contains(&format!("#define DF_R_MAX {COUNTERS_LEN}")));
}

#[test]
fn reason_codes_match_the_header() {
    use dnsfence_node_enforcer::Reason;
    let defines: BTreeMap<String, u8> = HEADER
        .lines()
        .filter_map(|l| l.strip_prefix("#define DF_R_"))
        .filter_map(|l| {
            let mut it = l.split_whitespace();
            Some((it.next()?.to_ascii_lowercase(), it.next()?.parse().ok()?))
        })
        .collect();
    let c_name = |r: Reason| match r {
        Reason::Established => "ct_established".to_owned(),
        Reason::Related => "ct_related".to_owned(),
        Reason::FragmentUntracked => "frag_untracked".to_owned(),
        other => other.name().to_owned(),
    };
    for r in Reason::ALL {
        assert_eq!(defines.get(&c_name(r)), Some(&(r as u8)), "{r:?}");
    }
}
