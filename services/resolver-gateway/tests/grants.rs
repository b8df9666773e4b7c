//! Grants: what is sent to the enforcer of the asking pod's node, and that the answer waits
//! for its ack.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::HashSet;
use std::net::IpAddr;
use std::time::{Duration, Instant};

use common::*;
use dnsfence_api::grants::v1 as gpb;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::RecordType;

/// `www.example.test A`, asked by nginx-a.
async fn www_from_nginx_a(world: &World) -> Message {
    udp(
        world.gateway.dns,
        NGINX_A,
        "www.example.test",
        RecordType::A,
    )
    .await
    .unwrap()
}

fn grant_for<'g>(grants: &'g [gpb::Grant], dest: &str) -> &'g gpb::Grant {
    let dest: IpAddr = dest.parse().unwrap();
    grants
        .iter()
        .find(|g| ip_of(&g.destination_ip) == dest)
        .unwrap_or_else(|| panic!("no grant for {dest} in {grants:?}"))
}

fn tcp_range(start: u32, end: u32) -> gpb::PortRange {
    gpb::PortRange {
        protocol: 6,
        start,
        end,
    }
}

#[tokio::test]
async fn the_answer_is_sent_only_after_the_enforcer_acked() {
    let world = World::start(&["--grant-ack-timeout=5s"]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::After(Duration::from_millis(300)))
        .await
        .unwrap();

    let sent = Instant::now();
    let answer = www_from_nginx_a(&world).await;
    let answered = Instant::now();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    let batches = sub.batches.lock().unwrap().clone();
    assert_eq!(batches.len(), 1, "{batches:?}");
    let acked = batches[0].acked.expect("acked");
    assert!(batches[0].received >= sent);
    assert!(
        answered >= acked,
        "the answer arrived before the ack was sent"
    );
    assert!(answered - sent >= Duration::from_millis(300));

    let metrics = world.gateway.metrics().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "dnsfence_gateway_grant_ack_latency_seconds_count",
            &[]
        ),
        1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn without_an_ack_the_answer_goes_out_after_the_timeout_and_is_counted() {
    let world = World::start(&["--grant-ack-timeout=150ms"]).await.unwrap();
    let _sub = world
        .gateway
        .subscribe("node-a", AckMode::Never)
        .await
        .unwrap();
    let sent = Instant::now();
    let answer = www_from_nginx_a(&world).await;
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert!(sent.elapsed() >= Duration::from_millis(150));
    let metrics = world.gateway.metrics().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "dnsfence_gateway_grant_ack_failures_total",
            &["reason=\"timeout\""]
        ),
        1.0,
        "{metrics}"
    );

    // No enforcer at all for node-b: counted, answered at once.
    let other = udp(
        world.gateway.dns,
        NGINX_B,
        "www.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(other.metadata.response_code, ResponseCode::NoError);
    let metrics = world.gateway.metrics().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "dnsfence_gateway_grant_ack_failures_total",
            &["reason=\"no_subscriber\""]
        ),
        1.0
    );
    world.gateway.stop().await.unwrap();

    let strict = GatewayHandle::start_ready(
        world.store.addr,
        &[world.authority.addr()],
        &["--grant-ack-timeout=100ms", "--ack-timeout-action=servfail"],
    )
    .await
    .unwrap();
    let _sub = strict.subscribe("node-a", AckMode::Never).await.unwrap();
    let failed = udp(strict.dns, NGINX_A, "www.example.test", RecordType::A)
        .await
        .unwrap();
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
}

#[tokio::test]
async fn grants_carry_the_allowed_ports_and_clamped_lifetimes() {
    let world = World::start(&["--grant-max-ttl=1h"]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    let dns = world.gateway.dns;

    let www = udp(dns, NGINX_A, "www.example.test", RecordType::A)
        .await
        .unwrap();
    assert_eq!(www.answers[0].ttl, 300);
    let zero = udp(dns, NGINX_A, "zero.example.test", RecordType::A)
        .await
        .unwrap();
    assert_eq!(zero.answers[0].ttl, 0, "TTL 0 stays 0 for the client");
    let five = udp(dns, NGINX_A, "five.example.test", RecordType::A)
        .await
        .unwrap();
    assert!(five.answers[0].ttl <= 5);
    let long = udp(dns, NGINX_A, "long.example.test", RecordType::A)
        .await
        .unwrap();
    assert_eq!(long.answers[0].ttl, 3600, "lowered to the longest grant");
    let github = udp(dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(github.metadata.response_code, ResponseCode::NoError);

    let grants = sub.grants();
    let www_grant = grant_for(&grants, "198.51.100.1");
    assert_eq!(www_grant.pod_ip, NGINX_A.octets().to_vec());
    assert_eq!(www_grant.name, "www.example.test");
    assert_eq!(
        www_grant.ports,
        vec![tcp_range(443, 443), tcp_range(8000, 8099)]
    );
    assert_eq!(www_grant.lifetime_ms, 300_000);
    assert_eq!(
        grant_for(&grants, "198.51.100.2").lifetime_ms,
        30_000,
        "TTL 0 → minimum"
    );
    assert_eq!(
        grant_for(&grants, "198.51.100.3").lifetime_ms,
        30_000,
        "TTL 5 → minimum"
    );
    assert_eq!(
        grant_for(&grants, "198.51.100.4").lifetime_ms,
        3_600_000,
        "1 day → maximum"
    );
    let github_grant = grant_for(&grants, "203.0.113.10");
    assert_eq!(
        github_grant.ports,
        vec![tcp_range(443, 443)],
        "the seed allows 443/TCP only"
    );

    world.gateway.stop().await.unwrap();
    let short = GatewayHandle::start_ready(
        world.store.addr,
        &[world.authority.addr()],
        &["--grant-min-ttl=2s"],
    )
    .await
    .unwrap();
    let sub = short
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    udp(short.dns, NGINX_A, "zero.example.test", RecordType::A)
        .await
        .unwrap();
    assert_eq!(grant_for(&sub.grants(), "198.51.100.2").lifetime_ms, 2_000);
}

#[tokio::test]
async fn a_name_with_two_thousand_addresses_is_granted_completely_over_tcp() {
    let world = World::start(&[]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();

    let over_udp = udp(
        world.gateway.dns,
        NGINX_A,
        "big.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert!(over_udp.metadata.truncation, "too big for UDP: TC set");
    assert!(over_udp.answers.is_empty());

    let over_tcp = tcp(
        world.gateway.dns,
        NGINX_A,
        "big.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(over_tcp.metadata.response_code, ResponseCode::NoError);
    assert_eq!(addresses(&over_tcp).len(), BIG_COUNT);
    let granted: HashSet<IpAddr> = sub
        .grants()
        .iter()
        .map(|g| ip_of(&g.destination_ip))
        .collect();
    assert_eq!(granted.len(), BIG_COUNT);
}

#[tokio::test]
async fn a_big_answer_truncated_for_udp_is_asked_upstream_once_and_granted_on_the_tcp_retry() {
    let world = World::start(&[]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    // no EDNS: a 512-byte client
    let over_udp = udp_exchange(
        world.gateway.dns,
        NGINX_A,
        &query("big.example.test", RecordType::A, false),
    )
    .await
    .unwrap();
    assert!(over_udp.metadata.truncation, "too big for UDP: TC set");
    assert!(over_udp.answers.is_empty() && over_udp.edns.is_none());
    assert!(
        sub.grants().is_empty(),
        "no grants for an answer without addresses"
    );
    let asked = world.authority.queries();

    // the same client retries over TCP, still without EDNS
    let mut stream = tcp_connect(world.gateway.dns, NGINX_A).await.unwrap();
    let retry = query("big.example.test", RecordType::A, false);
    tcp_send(&mut stream, &retry.to_vec().unwrap())
        .await
        .unwrap();
    let over_tcp = tcp_receive(&mut stream).await.unwrap();
    assert_eq!(addresses(&over_tcp).len(), BIG_COUNT);
    assert_eq!(
        world.authority.queries(),
        asked,
        "the retry is answered from what the truncated answer stored"
    );
    let granted: HashSet<IpAddr> = sub
        .grants()
        .iter()
        .map(|g| ip_of(&g.destination_ip))
        .collect();
    assert_eq!(granted.len(), BIG_COUNT);
}

#[tokio::test]
async fn a_miss_is_the_upstreams_answer_made_the_clients() {
    let world = World::start(&["--grant-max-ttl", "120s"]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    let mut q = query("AlIaS.Example.TEST", RecordType::A, true);
    q.metadata.id = 4242;
    q.metadata.checking_disabled = true;
    let before = world.authority.queries();
    let answer = udp_exchange(world.gateway.dns, NGINX_A, &q).await.unwrap();
    assert_eq!(
        world.authority.queries(),
        before + 1,
        "one upstream exchange for a whole chain"
    );
    assert_eq!(answer.metadata.id, 4242);
    assert!(answer.metadata.recursion_available && answer.metadata.checking_disabled);
    assert!(!answer.metadata.authoritative);
    assert_eq!(answer.queries[0].name().to_ascii(), "AlIaS.Example.TEST.");
    let kinds: Vec<RecordType> = answer.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        kinds,
        [RecordType::CNAME, RecordType::CNAME, RecordType::A],
        "the chain, in order"
    );
    assert!(answer.authorities.is_empty());
    // TTLs 300 in the zone, capped at --grant-max-ttl
    assert!(answer.answers.iter().all(|r| r.ttl == 120), "{answer:?}");
    assert_eq!(answer.edns.as_ref().map(|e| e.max_payload()), Some(1232));
    assert_eq!(
        grant_for(&sub.grants(), "198.51.100.1").lifetime_ms,
        120_000
    );

    // a negative answer keeps the SOA, with the RFC 2308 TTL
    let nx = udp(
        world.gateway.dns,
        NGINX_A,
        "nope.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(nx.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(nx.authorities.len(), 1);
    assert_eq!(nx.authorities[0].record_type(), RecordType::SOA);
}

#[tokio::test]
async fn a_cache_hit_still_grants_another_pod_and_held_grants_are_not_resent() {
    let world = World::start(&[]).await.unwrap();
    let node_a = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    let node_b = world
        .gateway
        .subscribe("node-b", AckMode::Immediately)
        .await
        .unwrap();

    // The answer cache admits a question on its second miss: ask twice.
    for _ in 0..2 {
        www_from_nginx_a(&world).await;
    }
    let upstream_queries = world.authority.queries();
    let from_cache = udp(
        world.gateway.dns,
        NGINX_B,
        "www.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(
        addresses(&from_cache),
        vec!["198.51.100.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        world.authority.queries(),
        upstream_queries,
        "answered from the cache"
    );

    let b_grants = node_b.grants();
    assert_eq!(b_grants.len(), 1, "{b_grants:?}");
    assert_eq!(b_grants[0].pod_ip, NGINX_B.octets().to_vec());
    assert_eq!(
        node_a.grants().len(),
        1,
        "node-a's enforcer gets nothing for node-b's pod"
    );

    // Asking again: node-a already holds the grant with a later expiry.
    www_from_nginx_a(&world).await;
    assert_eq!(node_a.batches.lock().unwrap().len(), 1, "not re-sent");
    let metrics = world.gateway.metrics().await.unwrap();
    assert!(metric(&metrics, "dnsfence_gateway_grants_deduplicated_total", &[]) >= 1.0);

    // A new subscription (an enforcer restart) holds nothing: the grant is sent again.
    drop(node_a);
    world.gateway.wait_subscribers(1).await.unwrap();
    let restarted = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    www_from_nginx_a(&world).await;
    assert_eq!(restarted.grants().len(), 1);
}

#[tokio::test]
async fn a_miss_whose_grants_are_held_is_answered_at_once_with_the_ttl_they_have_left() {
    let world = World::start(&["--grant-max-ttl=30s"]).await.unwrap();
    let node_a = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    let first = www_from_nginx_a(&world).await;
    assert_eq!(first.answers[0].ttl, 30);
    assert_eq!(node_a.batches.lock().unwrap().len(), 1);

    // Not cached yet (the cache admits a question on its second miss): the upstream is asked
    // again, and the grant the enforcer holds since then caps the answer's TTL.
    tokio::time::sleep(Duration::from_millis(2_100)).await;
    let queries = world.authority.queries();
    let second = www_from_nginx_a(&world).await;
    assert_eq!(world.authority.queries(), queries + 1, "a miss");
    assert_eq!(addresses(&second), addresses(&first));
    let ttl = second.answers[0].ttl;
    assert!((26..=28).contains(&ttl), "ttl {ttl}");
    assert_eq!(node_a.batches.lock().unwrap().len(), 1, "not re-sent");
    let metrics = world.gateway.metrics().await.unwrap();
    assert_eq!(
        metric(&metrics, "dnsfence_gateway_grants_deduplicated_total", &[]),
        1.0
    );
}

/// An upstream that passes every query on to `authority` after `delay`.
async fn delaying_upstream(
    authority: std::net::SocketAddr,
    delay: Duration,
) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = std::sync::Arc::new(tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap());
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        while let Ok((n, from)) = socket.recv_from(&mut buf).await {
            let query = buf[..n].to_vec();
            let socket = std::sync::Arc::clone(&socket);
            tokio::spawn(async move {
                tokio::time::sleep(delay).await;
                let out = tokio::net::UdpSocket::bind("127.0.0.1:0").await.unwrap();
                out.send_to(&query, authority).await.unwrap();
                let mut answer = vec![0u8; 4096];
                let n = out.recv(&mut answer).await.unwrap();
                socket.send_to(&answer[..n], from).await.unwrap();
            });
        }
    });
    (addr, task)
}

#[tokio::test]
async fn two_pods_asking_the_same_name_at_once_share_one_upstream_query_but_not_their_grants() {
    let authority = start_authority().await.unwrap();
    let (upstream, proxy) = delaying_upstream(authority.addr(), Duration::from_millis(300)).await;
    let store = StoreHandle::start().await.unwrap();
    store.seed().await.unwrap();
    let gateway = GatewayHandle::start(store.addr, &[upstream], &[])
        .await
        .unwrap();
    gateway.ready().await.unwrap();
    let node_a = gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    let node_b = gateway
        .subscribe("node-b", AckMode::Immediately)
        .await
        .unwrap();

    // The second query arrives while the first one's upstream query is held up.
    let (a, b) = tokio::join!(
        udp(gateway.dns, NGINX_A, "www.example.test", RecordType::A),
        async {
            tokio::time::sleep(Duration::from_millis(50)).await;
            udp(gateway.dns, NGINX_B, "www.example.test", RecordType::A).await
        }
    );
    let expected: Vec<IpAddr> = vec!["198.51.100.1".parse().unwrap()];
    for answer in [a.unwrap(), b.unwrap()] {
        assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
        assert_eq!(addresses(&answer), expected);
    }
    assert_eq!(authority.queries(), 1, "one upstream query for both");
    let metrics = gateway.metrics().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "dnsfence_gateway_upstream_joined_queries_total",
            &[]
        ),
        1.0,
        "{metrics}"
    );
    // Each pod's grant went to its own node's enforcer.
    for (node, pod) in [(&node_a, NGINX_A), (&node_b, NGINX_B)] {
        let grants = node.grants();
        assert_eq!(grants.len(), 1, "{grants:?}");
        assert_eq!(grants[0].pod_ip, pod.octets().to_vec());
        assert_eq!(ip_of(&grants[0].destination_ip), expected[0]);
    }
    proxy.abort();
}

#[tokio::test]
async fn a_dual_stack_pod_asking_over_ipv4_is_granted_ipv6_answers_on_its_ipv6_address() {
    let world = World::start(&[]).await.unwrap();
    let dual_v4 = std::net::Ipv4Addr::new(127, 0, 0, 5);
    let dual_v6: IpAddr = "2001:db8::5".parse().unwrap();
    world
        .store
        .pod("dual", &[("run", "nginx")], dual_v4.into(), "node-a")
        .await
        .unwrap();
    // Register the second address too (a pod's addresses are set as a whole).
    let mut client = world.store.client().await.unwrap();
    client
        .upsert_workloads(dnsfence_api::store::v1::UpsertWorkloadsRequest {
            workloads: vec![dnsfence_api::store::v1::Workload {
                key: Some(dnsfence_api::store::v1::WorkloadKey {
                    namespace: "default".into(),
                    name: "dual".into(),
                }),
                labels: [("run".to_string(), "nginx".to_string())].into(),
                ips: vec![dual_v4.to_string(), dual_v6.to_string()],
                node: "node-a".into(),
            }],
        })
        .await
        .unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    // The gateway learns the pod from the store asynchronously.
    udp_until(
        world.gateway.dns,
        dual_v4,
        "www.example.test",
        RecordType::A,
        ResponseCode::NoError,
    )
    .await
    .unwrap();
    udp(
        world.gateway.dns,
        dual_v4,
        "www.example.test",
        RecordType::AAAA,
    )
    .await
    .unwrap();
    let grants = sub.grants();
    let v4 = grant_for(&grants, "198.51.100.1");
    assert_eq!(ip_of(&v4.pod_ip), IpAddr::V4(dual_v4));
    let v6 = grant_for(&grants, "2001:db8::1");
    assert_eq!(
        ip_of(&v6.pod_ip),
        dual_v6,
        "granted on the pod's IPv6 address"
    );
}
