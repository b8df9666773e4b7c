//! What a pod may resolve: the seed policy through a real store, a real upstream, and DNS
//! queries from the pod's source address.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::{IpAddr, Ipv4Addr};
use std::time::Duration;

use common::*;
use hickory_proto::op::ResponseCode;
use hickory_proto::rr::{RData, RecordType};

#[tokio::test]
async fn seed_policy_allows_github_and_refuses_npmjs_with_an_extended_error() {
    let world = World::start(&[]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();

    for (name, ip) in [("github.com", GITHUB), ("api.github.com", API_GITHUB)] {
        let answer = udp(world.gateway.dns, NGINX_A, name, RecordType::A)
            .await
            .unwrap();
        assert_eq!(
            answer.metadata.response_code,
            ResponseCode::NoError,
            "{name}"
        );
        assert_eq!(addresses(&answer), vec![IpAddr::V4(ip)], "{name}");
    }

    let denied = udp(world.gateway.dns, NGINX_A, "npmjs.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(denied.metadata.response_code, ResponseCode::Refused);
    assert!(denied.answers.is_empty());
    let (code, text) = ede(&denied).expect("an extended DNS error");
    assert_eq!(code, 15, "RFC 8914 Blocked");
    assert!(text.contains("npmjs.com"), "{text}");
    assert!(text.contains("isolated for egress"), "{text}");

    let granted: Vec<IpAddr> = sub
        .grants()
        .iter()
        .map(|g| ip_of(&g.destination_ip))
        .collect();
    assert!(granted.contains(&IpAddr::V4(GITHUB)));
    assert!(granted.contains(&IpAddr::V4(API_GITHUB)));
    assert!(
        !granted.contains(&IpAddr::V4(NPMJS)),
        "a denied name is never granted"
    );

    let metrics = world.gateway.metrics().await.unwrap();
    assert!(
        metric(
            &metrics,
            "dnsfence_gateway_queries_total",
            &["verdict=\"denied\""]
        ) >= 1.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn denied_names_are_denied_for_every_type_and_allowed_names_resolve_every_type() {
    let world = World::start(&[]).await.unwrap();
    for qtype in [
        RecordType::A,
        RecordType::AAAA,
        RecordType::TXT,
        RecordType::MX,
        RecordType::HTTPS,
    ] {
        let denied = udp(world.gateway.dns, NGINX_A, "npmjs.com", qtype)
            .await
            .unwrap();
        assert_eq!(
            denied.metadata.response_code,
            ResponseCode::Refused,
            "{qtype}"
        );
    }
    let txt = udp(
        world.gateway.dns,
        NGINX_A,
        "www.example.test",
        RecordType::TXT,
    )
    .await
    .unwrap();
    assert_eq!(txt.metadata.response_code, ResponseCode::NoError);
    assert!(
        txt.answers
            .iter()
            .any(|r| matches!(&r.data, RData::TXT(t) if t.to_string().contains("hello"))),
        "{txt:?}"
    );
    let aaaa = udp(
        world.gateway.dns,
        NGINX_A,
        "www.example.test",
        RecordType::AAAA,
    )
    .await
    .unwrap();
    assert_eq!(
        addresses(&aaaa),
        vec!["2001:db8::1".parse::<IpAddr>().unwrap()]
    );
}

#[tokio::test]
async fn denied_rcode_can_be_nxdomain() {
    let world = World::start(&["--denied-rcode=nxdomain"]).await.unwrap();
    let denied = udp(world.gateway.dns, NGINX_A, "npmjs.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(denied.metadata.response_code, ResponseCode::NXDomain);
    assert_eq!(ede(&denied).unwrap().0, 15);
}

#[tokio::test]
async fn a_search_suffix_expansion_of_an_allowed_name_is_nxdomain_so_musl_goes_on() {
    let world = World::start(&[]).await.unwrap();
    let expanded = udp(
        world.gateway.dns,
        NGINX_A,
        "github.com.us-west-2.compute.internal",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(expanded.metadata.response_code, ResponseCode::NXDomain);
    let (_, text) = ede(&expanded).unwrap();
    assert!(
        text.contains("search-list expansion of github.com"),
        "{text}"
    );

    // An expansion of a name that is not allowed either stays REFUSED.
    let other = udp(
        world.gateway.dns,
        NGINX_A,
        "npmjs.com.us-west-2.compute.internal",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(other.metadata.response_code, ResponseCode::Refused);

    // The walk a musl client does with ndots:5 ends at the bare name, which resolves.
    for name in [
        "github.com.default.svc.cluster.local",
        "github.com.svc.cluster.local",
        "github.com.cluster.local",
        "github.com.us-west-2.compute.internal",
    ] {
        let step = udp(world.gateway.dns, NGINX_A, name, RecordType::A)
            .await
            .unwrap();
        assert_eq!(
            step.metadata.response_code,
            ResponseCode::NXDomain,
            "{name}"
        );
    }
    let bare = udp(world.gateway.dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(bare.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn cluster_domain_names_are_forwarded_unfiltered_and_without_grants() {
    let world = World::start(&[]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();
    let answer = udp(
        world.gateway.dns,
        NGINX_A,
        "kubernetes.default.svc.cluster.local",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        addresses(&answer),
        vec![IpAddr::V4(Ipv4Addr::new(192, 0, 2, 1))]
    );
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(sub.grants().is_empty(), "{:?}", sub.grants());
    let metrics = world.gateway.metrics().await.unwrap();
    assert!(
        metric(
            &metrics,
            "dnsfence_gateway_queries_total",
            &["verdict=\"cluster\""]
        ) >= 1.0
    );
}

#[tokio::test]
async fn pods_no_policy_selects_follow_the_node_default_and_strangers_are_refused() {
    let world = World::start(&[]).await.unwrap();
    let free = udp(world.gateway.dns, PLAIN, "npmjs.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        free.metadata.response_code,
        ResponseCode::NoError,
        "DefaultAllow"
    );
    assert_eq!(addresses(&free), vec![IpAddr::V4(NPMJS)]);

    let stranger = udp(world.gateway.dns, STRANGER, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(stranger.metadata.response_code, ResponseCode::Refused);
    let (code, text) = ede(&stranger).unwrap();
    assert_eq!(code, 18, "RFC 8914 Prohibited");
    assert!(text.contains("127.0.0.9"), "{text}");
    world.gateway.stop().await.unwrap();

    let deny = GatewayHandle::start_ready(
        world.store.addr,
        &[world.authority.addr()],
        &["--default-policy=DefaultDeny", "--unknown-source=resolve"],
    )
    .await
    .unwrap();
    let closed = udp(deny.dns, PLAIN, "npmjs.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        closed.metadata.response_code,
        ResponseCode::Refused,
        "DefaultDeny"
    );
    let (_, text) = ede(&closed).unwrap();
    assert!(text.contains("DefaultDeny"), "{text}");
    let resolved = udp(deny.dns, STRANGER, "npmjs.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(
        resolved.metadata.response_code,
        ResponseCode::NoError,
        "--unknown-source=resolve"
    );
}

#[tokio::test]
async fn cname_chains_are_followed_to_the_final_addresses_even_when_split() {
    let world = World::start(&[]).await.unwrap();
    let sub = world
        .gateway
        .subscribe("node-a", AckMode::Immediately)
        .await
        .unwrap();

    let alias = udp(
        world.gateway.dns,
        NGINX_A,
        "alias.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(alias.metadata.response_code, ResponseCode::NoError);
    let cnames = alias
        .answers
        .iter()
        .filter(|r| matches!(r.data, RData::CNAME(_)))
        .count();
    assert_eq!(cnames, 2, "{alias:?}");
    assert_eq!(
        addresses(&alias),
        vec!["198.51.100.1".parse::<IpAddr>().unwrap()]
    );

    // split.example.test is a CNAME into another zone: the upstream's answer ends at the
    // CNAME and the gateway asks for the target itself.
    let split = udp(
        world.gateway.dns,
        NGINX_A,
        "split.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(split.metadata.response_code, ResponseCode::NoError);
    assert_eq!(
        addresses(&split),
        vec!["198.51.100.50".parse::<IpAddr>().unwrap()]
    );

    let grants = sub.grants();
    let split_grant = grants
        .iter()
        .find(|g| ip_of(&g.destination_ip) == "198.51.100.50".parse::<IpAddr>().unwrap())
        .expect("the chain's final address is granted");
    assert_eq!(
        split_grant.name, "split.example.test",
        "granted for the allowed name"
    );
}

#[tokio::test]
async fn a_policy_change_takes_effect_without_a_restart() {
    let world = World::start(&[]).await.unwrap();
    // Twice: the second answer is kept for the fast path, which must not outlive the policy.
    for _ in 0..2 {
        let before = udp(
            world.gateway.dns,
            NGINX_A,
            "www.example.test",
            RecordType::A,
        )
        .await
        .unwrap();
        assert_eq!(before.metadata.response_code, ResponseCode::NoError);
    }
    world
        .store
        .delete("test-egress.yaml", TEST_EGRESS)
        .await
        .unwrap();
    udp_until(
        world.gateway.dns,
        NGINX_A,
        "www.example.test",
        RecordType::A,
        ResponseCode::Refused,
    )
    .await
    .expect("refused once the policy is deleted");
    // The seed policy is untouched.
    let github = udp(world.gateway.dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(github.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn cached_answers_keep_the_clients_case_and_id_and_are_filtered_per_pod() {
    let world = World::start(&[]).await.unwrap();
    // The answer cache admits a question on its second miss: ask twice.
    for asked in 1..=2 {
        let first = udp(
            world.gateway.dns,
            NGINX_A,
            "www.example.test",
            RecordType::A,
        )
        .await
        .unwrap();
        assert_eq!(first.metadata.response_code, ResponseCode::NoError);
        assert_eq!(world.authority.queries(), asked, "not cached before");
    }
    let upstream_queries = world.authority.queries();

    // DNS 0x20: resolvers that randomise the case check that the answer echoes it.
    let mixed = query("wWw.ExAmPlE.tEsT.", RecordType::A, true);
    let answer = udp_exchange(world.gateway.dns, NGINX_B, &mixed)
        .await
        .unwrap();
    assert_eq!(answer.metadata.id, mixed.metadata.id);
    assert_eq!(answer.queries[0].name().to_ascii(), "wWw.ExAmPlE.tEsT.");
    assert_eq!(
        addresses(&answer),
        vec!["198.51.100.1".parse::<IpAddr>().unwrap()]
    );
    assert_eq!(
        world.authority.queries(),
        upstream_queries,
        "served from the cache"
    );

    // The same cached name for a source that may not have it.
    let stranger = udp(
        world.gateway.dns,
        STRANGER,
        "www.example.test",
        RecordType::A,
    )
    .await
    .unwrap();
    assert_eq!(stranger.metadata.response_code, ResponseCode::Refused);
}

#[tokio::test]
async fn remembered_denials_answer_only_pods_of_the_same_allowlist() {
    let world = World::start(&[]).await.unwrap();
    for round in 0..3 {
        let mixed = query(
            if round == 2 {
                "NpmJS.com."
            } else {
                "npmjs.com."
            },
            RecordType::A,
            true,
        );
        let denied = udp_exchange(world.gateway.dns, NGINX_A, &mixed)
            .await
            .unwrap();
        assert_eq!(denied.metadata.id, mixed.metadata.id);
        assert_eq!(
            denied.metadata.response_code,
            ResponseCode::Refused,
            "round {round}"
        );
        assert_eq!(
            denied.queries[0].name().to_ascii(),
            mixed.queries[0].name().to_ascii()
        );
        let (code, text) = ede(&denied).expect("the extended error survives");
        assert_eq!(code, 15);
        assert!(text.contains("npmjs.com"), "{text}");
    }
    // A pod no policy selects (DefaultAllow) is not answered with nginx's denial.
    let free = udp(world.gateway.dns, PLAIN, "npmjs.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(free.metadata.response_code, ResponseCode::NoError);
    let metrics = world.gateway.metrics().await.unwrap();
    assert_eq!(
        metric(
            &metrics,
            "dnsfence_gateway_queries_total",
            &["verdict=\"denied\""]
        ),
        3.0,
        "{metrics}"
    );
}
