//! Privileged end-to-end tests of the eBPF datapath in network namespaces: a pod's egress
//! through the node's host-side veth is allowed only by a grant, DNS to a gateway, a CIDR
//! rule or a tracked flow. They need root; without it they skip (and fail under CI=true).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{net::IpAddr, thread, time::Duration};

use dnsfence_node_enforcer::{
    Datapath, Direction, Hook, Mode, NarrowOutcome, PortSpec, Protocol, Reason, Verdict, clock,
    netlink,
};
use support::*;

const TCP443: PortSpec = PortSpec::port(Protocol::Tcp, 443);
const UDP443: PortSpec = PortSpec::port(Protocol::Udp, 443);
const TCP80: PortSpec = PortSpec::port(Protocol::Tcp, 80);

/// Opens the datapath from inside the node namespace, registers both pods (found by their
/// host routes over netlink) as enforced, sets the gateways and attaches. Returns the
/// datapath and pod1's interface.
fn setup(t: &Topology) -> (Datapath, u32) {
    enter_ns(&t.node);
    let mut dp = Datapath::open(&t.pin_dir).expect("open datapath");
    let mut pod1_if = 0;
    for (v4, v6) in [(POD1_V4, POD1_V6), (POD2_V4, POD2_V6)] {
        let ifindex = netlink::pod_interface(ip(v4))
            .unwrap()
            .expect("host route to the pod");
        assert_eq!(netlink::pod_interface(ip(v6)).unwrap(), Some(ifindex));
        dp.upsert_pod(ip(v4), ifindex, Mode::Enforce, 1).unwrap();
        dp.upsert_pod(ip(v6), ifindex, Mode::Enforce, 1).unwrap();
        dp.attach(ifindex).unwrap();
        if v4 == POD1_V4 {
            pod1_if = ifindex;
        }
    }
    assert_eq!(netlink::pod_interface(ip("192.0.2.99")).unwrap(), None);
    dp.set_gateways(&[ip(GW_V4), ip(GW_V6)]).unwrap();
    (dp, pod1_if)
}

fn grant(dp: &mut Datapath, pod: &str, dst: &str, ports: &[PortSpec], ttl: Duration) {
    let deadline = clock::deadline_after(ttl).unwrap();
    dp.put_grant(ip(pod), ip(dst), ports, deadline).unwrap();
}

#[test]
fn grants_dns_cidrs_spoofing_fragments_counters_events() {
    if !privileged("grants_dns_cidrs_spoofing_fragments_counters_events") {
        return;
    }
    let t = Topology::new("enf");
    let received = start_servers(&t.inet);
    let (mut dp, pod1_if) = setup(&t);

    // enforced, nothing granted: blocked, both families
    assert!(
        !tcp_works(&t.pod1, sa(WEB_V4, 443)),
        "v4 443 before any grant"
    );
    assert!(
        !tcp_works(&t.pod1, sa(WEB_V6, 443)),
        "v6 443 before any grant"
    );

    // DNS to a gateway passes; to any other resolver it is dropped
    assert!(
        udp_echo(&t.pod1, None, sa(GW_V4, 53), b"query-v4".to_vec()),
        "DNS to the v4 gateway"
    );
    assert!(
        udp_echo(&t.pod1, None, sa(GW_V6, 53), b"query-v6".to_vec()),
        "DNS to the v6 gateway"
    );
    assert!(
        !udp_echo(&t.pod1, None, sa(OTHER_DNS_V4, 53), b"q".to_vec()),
        "DNS elsewhere (v4)"
    );
    assert!(
        !udp_echo(&t.pod1, None, sa(OTHER_DNS_V6, 53), b"q".to_vec()),
        "DNS elsewhere (v6)"
    );

    // a grant opens exactly its ports, at once
    for dst in [WEB_V4, WEB_V6] {
        let pod = if dst == WEB_V4 { POD1_V4 } else { POD1_V6 };
        grant(
            &mut dp,
            pod,
            dst,
            &[TCP443, UDP443],
            Duration::from_secs(60),
        );
        assert!(
            tcp_works(&t.pod1, sa(dst, 443)),
            "{dst}:443 after the grant"
        );
        assert!(!tcp_works(&t.pod1, sa(dst, 80)), "{dst}:80 is not granted");
    }
    let slots = dp.grant(ip(POD1_V4), ip(WEB_V4)).unwrap().unwrap();
    assert_eq!(slots.len(), 2);

    // fragmented datagrams: the first fragment is allowed by the grant and admits the rest
    for dst in [WEB_V4, WEB_V6] {
        assert!(
            udp_echo(&t.pod1, None, sa(dst, 443), vec![7u8; 3000]),
            "3000-byte UDP to {dst}"
        );
    }
    assert!(
        !udp_echo(&t.pod1, None, sa(OTHER_DNS_V4, 53), vec![7u8; 3000]),
        "fragments, no grant"
    );

    // spoofing: pod1 claims pod2's address; even with a grant for pod2 nothing goes through
    grant(
        &mut dp,
        POD2_V4,
        WEB_V4,
        &[TCP443, UDP443],
        Duration::from_secs(60),
    );
    assert!(
        udp_echo(&t.pod2, None, sa(WEB_V4, 443), b"legit".to_vec()),
        "pod2 itself passes"
    );
    t.add_pod1_addr(&format!("{POD2_V4}/32"));
    let spoofed_before = dp.counters().unwrap().packets(Reason::Spoofed);
    assert!(!udp_echo(
        &t.pod1,
        Some(sa(POD2_V4, 0)),
        sa(WEB_V4, 443),
        b"spoofed".to_vec()
    ));
    assert!(!tcp_works_from(&t.pod1, sa(POD2_V4, 0), sa(WEB_V4, 443)));
    assert!(
        !received
            .lock()
            .unwrap()
            .iter()
            .any(|(_, p)| p == b"spoofed"),
        "a spoofed datagram reached the server"
    );
    assert!(dp.counters().unwrap().packets(Reason::Spoofed) > spoofed_before);

    // CIDR rules: ::/0 does not cover IPv4; the longest prefix wins; an empty entry denies
    dp.put_cidr(1, "::/0".parse().unwrap(), &[PortSpec::ALL])
        .unwrap();
    assert!(tcp_works(&t.pod1, sa(WEB_V6, 80)), "v6:80 by ::/0");
    assert!(
        !tcp_works(&t.pod1, sa(WEB_V4, 80)),
        "::/0 must not open IPv4"
    );
    dp.put_cidr(1, "203.0.113.0/24".parse().unwrap(), &[TCP80])
        .unwrap();
    assert!(
        tcp_works(&t.pod1, sa(WEB_V4, 80)),
        "v4:80 by 203.0.113.0/24"
    );
    dp.put_cidr(1, "203.0.113.80/32".parse().unwrap(), &[])
        .unwrap();
    assert!(
        !tcp_works(&t.pod1, sa(WEB_V4, 80)),
        "a /32 without ports shadows the /24"
    );
    assert!(
        dp.remove_cidr(1, "203.0.113.80/32".parse().unwrap())
            .unwrap()
    );
    assert!(
        dp.remove_cidr(1, "203.0.113.0/24".parse().unwrap())
            .unwrap()
    );
    assert!(dp.remove_cidr(1, "::/0".parse().unwrap()).unwrap());
    assert!(!dp.remove_cidr(1, "::/0".parse().unwrap()).unwrap());

    // counters saw every kind of verdict exercised above
    let c = dp.counters().unwrap();
    for r in [
        Reason::Grant,
        Reason::Cidr,
        Reason::DnsGateway,
        Reason::Established,
        Reason::Fragment,
        Reason::DefaultDeny,
        Reason::Spoofed,
        Reason::Ingress,
        Reason::LinkLocal,
    ] {
        assert!(c.packets(r) > 0, "counter {} is zero: {c:?}", r.name());
    }

    // a drop was logged
    let mut events = dp.event_reader().unwrap();
    let evs = events.drain();
    assert!(
        evs.iter().any(|e| e.reason == Some(Reason::DefaultDeny)
            && e.verdict == Verdict::Drop
            && e.direction == Direction::Egress
            && e.pod == ip(POD1_V4)
            && e.peer == ip(WEB_V4)
            && e.peer_port == 80
            && e.proto == 6
            && e.ifindex == pod1_if
            && e.policy_id == 1),
        "no default-deny event for pod1 -> {WEB_V4}:80 in {evs:?}"
    );
    assert!(
        evs.iter()
            .any(|e| e.reason == Some(Reason::Spoofed) && e.pod == ip(POD2_V4))
    );

    // audit mode: the same packet passes and is logged as a pass...
    dp.upsert_pod(ip(POD1_V4), pod1_if, Mode::Audit, 1).unwrap();
    assert!(tcp_works(&t.pod1, sa(WEB_V4, 80)), "audit mode passes");
    let ev = events
        .next_timeout(Duration::from_secs(1))
        .unwrap()
        .expect("audit event");
    assert_eq!(
        (ev.verdict, ev.reason, ev.peer_port),
        (Verdict::Pass, Some(Reason::DefaultDeny), 80)
    );
    assert!(dp.counters().unwrap().packets(Reason::Audit) > 0);
    // ...and flows tracked in audit mode do not survive a switch back to enforcing
    dp.upsert_pod(ip(POD1_V4), pod1_if, Mode::Enforce, 1)
        .unwrap();
    assert!(!tcp_works(&t.pod1, sa(WEB_V4, 80)), "enforced again");
    // allow mode: unrestricted (but still anti-spoofed)
    dp.upsert_pod(ip(POD1_V4), pod1_if, Mode::Allow, 1).unwrap();
    assert!(tcp_works(&t.pod1, sa(WEB_V4, 80)), "allow mode");
    assert!(!udp_echo(
        &t.pod1,
        Some(sa(POD2_V4, 0)),
        sa(WEB_V4, 443),
        b"spoofed".to_vec()
    ));
}

#[test]
fn expired_grant_stops_new_connections_but_not_open_ones() {
    if !privileged("expired_grant_stops_new_connections_but_not_open_ones") {
        return;
    }
    let t = Topology::new("exp");
    start_servers(&t.inet);
    let (mut dp, _) = setup(&t);

    let ttl = Duration::from_millis(1500);
    grant(&mut dp, POD1_V4, WEB_V4, &[TCP443], ttl);
    grant(&mut dp, POD1_V6, WEB_V6, &[TCP443], ttl);
    let mut open = Vec::new();
    for dst in [WEB_V4, WEB_V6] {
        let mut c = tcp_connect(&t.pod1, sa(dst, 443))
            .unwrap_or_else(|e| panic!("connect to {dst} before expiry: {e}; {:?}", dp.counters()));
        assert!(exchange(&mut c, b"before"), "{dst} before expiry");
        open.push((dst, c));
    }
    thread::sleep(ttl + Duration::from_millis(300));
    for (dst, c) in &mut open {
        assert!(
            !tcp_works(&t.pod1, sa(dst, 443)),
            "new connection to {dst} after expiry"
        );
        assert!(
            exchange(c, b"after"),
            "connection to {dst} opened before expiry must go on"
        );
    }
    // the sweeper frees the expired entries; the kernel had already refused them
    let removed = dp.sweep_expired(clock::boot_time_ns().unwrap()).unwrap();
    assert_eq!(removed, 2);
    assert_eq!(dp.grant(ip(POD1_V4), ip(WEB_V4)).unwrap(), None);
    assert_eq!(dp.grant_count().unwrap(), 0);
}

/// The number of TCX programs at each hook of `ifindex`, checking they are ours.
fn our_programs(ifindex: u32) -> [usize; 2] {
    Hook::BOTH.map(|hook| {
        let progs = Datapath::tcx_programs(ifindex, hook).unwrap();
        assert!(progs.iter().all(|p| p.name == hook.program()), "{progs:?}");
        progs.len()
    })
}

#[test]
fn restart_reuses_pinned_maps_and_links_without_attaching_twice() {
    if !privileged("restart_reuses_pinned_maps_and_links_without_attaching_twice") {
        return;
    }
    let t = Topology::new("rst");
    start_servers(&t.inet);
    let (mut dp, pod1_if) = setup(&t);
    grant(&mut dp, POD1_V4, WEB_V4, &[TCP443], Duration::from_secs(60));
    assert!(tcp_works(&t.pod1, sa(WEB_V4, 443)));
    assert_eq!(our_programs(pod1_if), [1, 1]);

    // the enforcer goes away: pinned links and maps keep enforcing
    drop(dp);
    assert!(
        tcp_works(&t.pod1, sa(WEB_V4, 443)),
        "allowed stays allowed without the process"
    );
    assert!(
        !tcp_works(&t.pod1, sa(WEB_V4, 80)),
        "denied stays denied without the process"
    );

    // a new enforcer: maps reused (the grant is there), links moved to the new programs
    let mut dp = Datapath::open(&t.pin_dir).expect("reopen");
    assert_eq!(
        our_programs(pod1_if),
        [1, 1],
        "reopen must not attach twice"
    );
    assert!(
        dp.grant(ip(POD1_V4), ip(WEB_V4)).unwrap().is_some(),
        "grant survived"
    );
    assert!(
        tcp_works(&t.pod1, sa(WEB_V4, 443)),
        "grant works after reopen"
    );
    assert!(!tcp_works(&t.pod1, sa(WEB_V4, 80)));
    dp.attach(pod1_if).unwrap();
    assert_eq!(
        our_programs(pod1_if),
        [1, 1],
        "attach after reopen must not attach twice"
    );
    let mut ifs = dp.attached_interfaces().unwrap();
    ifs.sort_unstable();
    assert_eq!(ifs.len(), 2);
    assert!(ifs.contains(&pod1_if));

    // revocation by narrowing: what is still allowed stays, the rest goes at once
    let (pod, web): (IpAddr, IpAddr) = (ip(POD1_V4), ip(WEB_V4));
    assert_eq!(
        dp.narrow_grant(pod, web, &[PortSpec::ALL]).unwrap(),
        NarrowOutcome::Unchanged
    );
    assert_eq!(
        dp.narrow_grant(pod, web, &[TCP80]).unwrap(),
        NarrowOutcome::Removed
    );
    assert_eq!(
        dp.narrow_grant(pod, web, &[TCP80]).unwrap(),
        NarrowOutcome::Absent
    );
    assert!(!tcp_works(&t.pod1, sa(WEB_V4, 443)), "revoked grant");
    grant(&mut dp, POD1_V4, WEB_V4, &[TCP443], Duration::from_secs(60));
    assert!(dp.remove_grant(pod, web).unwrap());
    assert!(!tcp_works(&t.pod1, sa(WEB_V4, 443)), "removed grant");

    // detaching lifts enforcement from the interface
    dp.detach(pod1_if).unwrap();
    assert_eq!(our_programs(pod1_if), [0, 0]);
    assert!(
        tcp_works(&t.pod1, sa(WEB_V4, 80)),
        "no program, no enforcement"
    );
    assert!(dp.remove_pod(ip(POD1_V4)).unwrap());
    assert!(!dp.remove_pod(ip(POD1_V4)).unwrap());
}
