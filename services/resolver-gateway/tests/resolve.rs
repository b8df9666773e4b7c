#![allow(clippy::unwrap_used, clippy::expect_used)]
//! The resolve module against a real authoritative server (dnsfence-test-authority on
//! 127.0.0.1:0) and a few hand-made upstreams (silent, lying).

use std::{
    net::{Ipv4Addr, SocketAddr},
    sync::Arc,
    time::Duration,
};

use dnsfence_resolver_gateway::resolve::{
    CacheConfig, Question, Resolved, Resolver, ResolverMetrics, UpstreamConfig,
};
use dnsfence_test_authority::{Authority, RunningAuthority, Zone};
use hickory_proto::{
    op::{Message, MessageType, OpCode, Query, ResponseCode},
    rr::{
        Name, RData, Record, RecordType,
        rdata::{A, CNAME, SOA},
    },
};
use prometheus_client::registry::Registry;
use tokio::net::UdpSocket;

const BIG: usize = 2_000;

fn example_zone() -> Zone {
    Zone::new("example.test.")
        .a("www", Ipv4Addr::new(192, 0, 2, 1), 300)
        .a("www", Ipv4Addr::new(192, 0, 2, 2), 300)
        .aaaa("www", "2001:db8::1".parse().unwrap(), 300)
        .a("short", Ipv4Addr::new(192, 0, 2, 5), 5)
        .a("zero", Ipv4Addr::new(192, 0, 2, 0), 0)
        .cname("alias", "www", 120)
        .cname("alias2", "alias", 60)
        .cname("away", "www.other.test.", 60)
        .cname("away-nx", "missing.other.test.", 60)
        .cname("loop1", "loop2.other.test.", 60)
        .cname("dangling", "missing", 60)
        .cname("self1", "self2", 60)
        .cname("self2", "self1", 60)
        .a("*.dyn", Ipv4Addr::new(192, 0, 2, 99), 30)
        .txt("www", "hello", 60)
}

/// A zone with one name holding 2,000 A records (only where needed: it takes a while to
/// build in debug builds).
fn big_zone() -> Zone {
    let mut zone = Zone::new("big.test.");
    for i in 0..BIG {
        let i = u32::try_from(i).unwrap();
        zone = zone.a("many", Ipv4Addr::from(0x0a00_0000 + i), 60);
    }
    zone
}

fn other_zone() -> Zone {
    Zone::new("other.test.")
        .a("www", Ipv4Addr::new(198, 51, 100, 7), 45)
        .cname("loop2", "loop1.example.test.", 60)
}

async fn authority() -> RunningAuthority {
    Authority::start(
        vec![example_zone(), other_zone()],
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

async fn resolver_with(
    servers: Vec<SocketAddr>,
    timeout: Duration,
    registry: &mut Registry,
) -> Resolver {
    let upstreams = UpstreamConfig {
        servers,
        timeout,
        attempts: 3,
        sockets_per_server: 2,
    };
    Resolver::new("upstream", upstreams, CacheConfig::default(), registry)
        .await
        .unwrap()
}

async fn resolver(auth: &RunningAuthority) -> (Resolver, Registry) {
    let mut registry = Registry::default();
    let r = resolver_with(vec![auth.addr()], Duration::from_secs(2), &mut registry).await;
    (r, registry)
}

fn name(s: &str) -> Name {
    Name::from_ascii(s).unwrap()
}

async fn resolve(r: &Resolver, n: &str, qtype: RecordType) -> Resolved {
    tokio::time::timeout(Duration::from_secs(10), r.resolve(&name(n), qtype))
        .await
        .expect("resolve returns in time")
        .unwrap()
}

fn v4(resolved: &Resolved) -> Vec<Ipv4Addr> {
    let mut v: Vec<Ipv4Addr> = resolved
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect();
    v.sort();
    v
}

fn types(resolved: &Resolved) -> Vec<RecordType> {
    resolved.answers.iter().map(|r| r.record_type()).collect()
}

/// `dnsfence_gateway_upstream_queries_total` of the upstream pool's server `addr` for `result`.
fn upstream_queries(registry: &Registry, addr: impl std::fmt::Display, result: &str) -> f64 {
    metric(
        registry,
        &format!(
            "dnsfence_gateway_upstream_queries_total{{pool=\"upstream\",upstream=\"{addr}\",result=\"{result}\"}}"
        ),
    )
}

/// The value of the sample whose line starts with `prefix` (name and labels), 0 if absent.
fn metric(registry: &Registry, prefix: &str) -> f64 {
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, registry).unwrap();
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .map(|v| v.parse().unwrap())
        .unwrap_or(0.0)
}

#[tokio::test]
async fn a_and_aaaa_then_cache_hits() {
    let auth = authority().await;
    let (r, registry) = resolver(&auth).await;

    let first = resolve(&r, "www.example.test.", RecordType::A).await;
    assert_eq!(first.rcode, ResponseCode::NoError);
    assert!(!first.from_cache);
    assert_eq!(
        v4(&first),
        [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]
    );
    assert!(first.authority.is_empty());

    let aaaa = resolve(&r, "www.example.test.", RecordType::AAAA).await;
    assert_eq!(aaaa.answers.len(), 1);
    assert!(
        matches!(&aaaa.answers[0].data, RData::AAAA(a) if a.0 == "2001:db8::1".parse::<std::net::Ipv6Addr>().unwrap())
    );
    assert_eq!(auth.queries(), 2);

    // Case and the trailing dot do not matter to the cache.
    let again = resolve(&r, "WWW.Example.Test", RecordType::A).await;
    assert!(again.from_cache);
    assert_eq!(v4(&again), v4(&first));
    assert!(
        again
            .answers
            .iter()
            .all(|rec| rec.ttl <= 300 && rec.ttl >= 299)
    );
    assert_eq!(auth.queries(), 2);

    let txt = resolve(&r, "www.example.test.", RecordType::TXT).await;
    assert_eq!(types(&txt), [RecordType::TXT]);

    assert_eq!(
        metric(
            &registry,
            "dnsfence_gateway_cache_hits_total{pool=\"upstream\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "dnsfence_gateway_cache_misses_total{pool=\"upstream\"}"
        ),
        3.0
    );
    assert_eq!(
        metric(
            &registry,
            "dnsfence_gateway_cache_entries{pool=\"upstream\"}"
        ),
        3.0
    );
    assert_eq!(upstream_queries(&registry, auth.addr(), "ok"), 3.0);
    let latency = format!(
        "dnsfence_gateway_upstream_latency_seconds_count{{pool=\"upstream\",upstream=\"{}\"}}",
        auth.addr()
    );
    assert_eq!(metric(&registry, &latency), 3.0);
}

#[tokio::test]
async fn nxdomain_and_nodata_are_cached_negatively() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;

    let nx = resolve(&r, "nope.example.test.", RecordType::A).await;
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert!(nx.answers.is_empty());
    assert_eq!(nx.authority.len(), 1);
    assert_eq!(nx.authority[0].record_type(), RecordType::SOA);
    assert!(nx.authority[0].ttl <= 30);
    assert!(!nx.from_cache);
    assert_eq!(auth.queries(), 1);

    let again = resolve(&r, "nope.example.test.", RecordType::A).await;
    assert_eq!(again.rcode, ResponseCode::NXDomain);
    assert!(again.from_cache);
    assert_eq!(again.authority[0].record_type(), RecordType::SOA);
    assert_eq!(
        auth.queries(),
        1,
        "a negative cache hit must not reach the authority"
    );

    // NODATA: the name exists without records of the type.
    let nodata = resolve(&r, "short.example.test.", RecordType::AAAA).await;
    assert_eq!(nodata.rcode, ResponseCode::NoError);
    assert!(nodata.answers.is_empty());
    assert_eq!(nodata.authority[0].record_type(), RecordType::SOA);
    let again = resolve(&r, "short.example.test.", RecordType::AAAA).await;
    assert!(again.from_cache);
    assert_eq!(auth.queries(), 2);
}

#[tokio::test]
async fn negative_ttl_is_capped() {
    let auth = authority().await;
    let mut registry = Registry::default();
    let upstreams = UpstreamConfig::new(vec![auth.addr()]);
    let cache = CacheConfig {
        max_negative_ttl: Duration::from_secs(1),
        ..CacheConfig::default()
    };
    let r = Resolver::new("upstream", upstreams, cache, &mut registry)
        .await
        .unwrap();
    let nx = resolve(&r, "nope.example.test.", RecordType::A).await;
    assert_eq!(nx.authority[0].ttl, 1);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let again = resolve(&r, "nope.example.test.", RecordType::A).await;
    assert!(!again.from_cache);
    assert_eq!(auth.queries(), 2);
}

#[tokio::test]
async fn short_ttl_is_cached_with_reduced_ttl_and_ttl_zero_is_not_cached() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;

    let first = resolve(&r, "short.example.test.", RecordType::A).await;
    assert_eq!(first.answers[0].ttl, 5);
    tokio::time::sleep(Duration::from_millis(1100)).await;
    let second = resolve(&r, "short.example.test.", RecordType::A).await;
    assert!(second.from_cache);
    assert!(second.answers[0].ttl <= 4 && second.answers[0].ttl >= 1);
    assert_eq!(auth.queries(), 1);

    let zero = resolve(&r, "zero.example.test.", RecordType::A).await;
    assert_eq!(v4(&zero), [Ipv4Addr::new(192, 0, 2, 0)]);
    assert_eq!(zero.answers[0].ttl, 0);
    let zero = resolve(&r, "zero.example.test.", RecordType::A).await;
    assert!(!zero.from_cache);
    assert_eq!(auth.queries(), 3, "TTL 0 answers must not be cached");
}

#[tokio::test]
async fn cname_chain_answered_by_the_authority() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;
    let res = resolve(&r, "alias2.example.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::NoError);
    assert_eq!(
        types(&res),
        [
            RecordType::CNAME,
            RecordType::CNAME,
            RecordType::A,
            RecordType::A
        ]
    );
    assert_eq!(res.answers[0].name, name("alias2.example.test."));
    assert_eq!(res.answers[1].name, name("alias.example.test."));
    assert_eq!(
        v4(&res),
        [Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]
    );
    assert_eq!(auth.queries(), 1);

    // Asked for the CNAME itself: no chasing.
    let res = resolve(&r, "alias.example.test.", RecordType::CNAME).await;
    assert_eq!(types(&res), [RecordType::CNAME]);
}

#[tokio::test]
async fn split_chain_is_chased_and_cached_under_the_question() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;
    let res = resolve(&r, "away.example.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::NoError);
    assert_eq!(types(&res), [RecordType::CNAME, RecordType::A]);
    assert_eq!(res.answers[1].name, name("www.other.test."));
    assert_eq!(v4(&res), [Ipv4Addr::new(198, 51, 100, 7)]);
    assert_eq!(auth.queries(), 2, "the CNAME, then its target");

    let again = resolve(&r, "away.example.test.", RecordType::A).await;
    assert!(again.from_cache);
    assert_eq!(types(&again), [RecordType::CNAME, RecordType::A]);
    // The target was cached on its own too.
    let target = resolve(&r, "www.other.test.", RecordType::A).await;
    assert!(target.from_cache);
    assert_eq!(auth.queries(), 2);

    // A chain into a name that does not exist: NXDOMAIN with the chain and the target's SOA.
    let nx = resolve(&r, "away-nx.example.test.", RecordType::A).await;
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
    assert_eq!(types(&nx), [RecordType::CNAME]);
    assert_eq!(nx.authority[0].name, name("other.test."));
    let nx = resolve(&r, "away-nx.example.test.", RecordType::A).await;
    assert!(nx.from_cache);
    assert_eq!(nx.rcode, ResponseCode::NXDomain);
}

#[tokio::test]
async fn chain_to_a_missing_name_in_the_same_zone() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;
    let res = resolve(&r, "dangling.example.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::NXDomain);
    assert_eq!(types(&res), [RecordType::CNAME]);
    assert_eq!(res.authority[0].record_type(), RecordType::SOA);
    let queries = auth.queries();
    let again = resolve(&r, "dangling.example.test.", RecordType::A).await;
    assert!(again.from_cache);
    assert_eq!(again.rcode, ResponseCode::NXDomain);
    assert_eq!(auth.queries(), queries);
}

/// A recursive upstream's NXDOMAIN at the end of a chain (RFC 6604): the CNAME, the rcode of
/// the last name and the SOA of its zone. Nothing to chase; cached negatively.
#[tokio::test]
async fn negative_chain_end_from_a_recursive_upstream_is_not_chased() {
    let (addr, task) = fake_upstream(|query| {
        let q = query.queries[0].clone();
        let cname = Record::from_rdata(
            q.name.clone(),
            300,
            RData::CNAME(CNAME(Name::from_ascii("gone.elsewhere.test.").unwrap())),
        );
        let mut m = response(query.metadata.id, q, ResponseCode::NXDomain, vec![cname]);
        let soa = SOA::new(
            Name::from_ascii("ns.elsewhere.test.").unwrap(),
            Name::from_ascii("hostmaster.elsewhere.test.").unwrap(),
            1,
            3600,
            600,
            86400,
            20,
        );
        m.add_authority(Record::from_rdata(
            Name::from_ascii("elsewhere.test.").unwrap(),
            60,
            RData::SOA(soa),
        ));
        vec![m]
    })
    .await;
    let mut registry = Registry::default();
    let r = resolver_with(vec![addr], Duration::from_secs(2), &mut registry).await;
    let res = resolve(&r, "www.recursive.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::NXDomain);
    assert_eq!(types(&res), [RecordType::CNAME]);
    assert_eq!(res.authority[0].ttl, 20, "min(SOA TTL, MINIMUM)");
    let again = resolve(&r, "www.recursive.test.", RecordType::A).await;
    assert!(again.from_cache);
    assert_eq!(upstream_queries(&registry, addr, "ok"), 1.0);
    task.abort();
}

/// SERVFAIL from every attempt comes back as SERVFAIL (and is not cached).
#[tokio::test]
async fn servfail_everywhere_is_reported_and_not_cached() {
    let (addr, task) = fake_upstream(servfail).await;
    let mut registry = Registry::default();
    let r = resolver_with(vec![addr], Duration::from_secs(2), &mut registry).await;
    let res = resolve(&r, "www.broken.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::ServFail);
    let res = resolve(&r, "www.broken.test.", RecordType::A).await;
    assert!(!res.from_cache);
    assert_eq!(
        upstream_queries(&registry, addr, "servfail"),
        6.0,
        "3 attempts per question"
    );
    task.abort();
}

#[tokio::test]
async fn cname_loops_end() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;
    // Across zones: every answer holds one CNAME of the loop.
    let res = resolve(&r, "loop1.example.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::NoError);
    assert!(v4(&res).is_empty());
    assert!(types(&res).iter().all(|t| *t == RecordType::CNAME));
    assert!(auth.queries() <= 3, "{}", auth.queries());
    // Within one zone: the authority's answer holds the whole loop.
    let res = resolve(&r, "self1.example.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::NoError);
    assert!(v4(&res).is_empty());
}

#[tokio::test]
async fn wildcard_names_resolve() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;
    let res = resolve(&r, "pod-1.dyn.example.test.", RecordType::A).await;
    assert_eq!(v4(&res), [Ipv4Addr::new(192, 0, 2, 99)]);
    assert_eq!(res.answers[0].name, name("pod-1.dyn.example.test."));
}

#[tokio::test]
async fn big_answer_falls_back_to_tcp() {
    let auth = Authority::start(
        vec![example_zone(), big_zone()],
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap();
    let (r, registry) = resolver(&auth).await;
    let res = resolve(&r, "many.big.test.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::NoError);
    let addrs = v4(&res);
    assert_eq!(addrs.len(), BIG);
    assert_eq!(addrs[0], Ipv4Addr::new(10, 0, 0, 0));
    assert_eq!(auth.queries(), 2, "UDP (truncated), then TCP");
    assert_eq!(upstream_queries(&registry, auth.addr(), "truncated"), 1.0);
    let again = resolve(&r, "many.big.test.", RecordType::A).await;
    assert!(again.from_cache);
    assert_eq!(again.answers.len(), BIG);
}

#[tokio::test]
async fn refused_is_passed_through_and_not_cached() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;
    let res = resolve(&r, "example.com.", RecordType::A).await;
    assert_eq!(res.rcode, ResponseCode::Refused);
    let res = resolve(&r, "example.com.", RecordType::A).await;
    assert!(!res.from_cache);
    assert_eq!(auth.queries(), 2);
}

#[tokio::test]
async fn failover_from_a_silent_upstream() {
    let auth = authority().await;
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut registry = Registry::default();
    let r = resolver_with(
        vec![silent.local_addr().unwrap(), auth.addr()],
        Duration::from_millis(200),
        &mut registry,
    )
    .await;
    let res = resolve(&r, "www.example.test.", RecordType::A).await;
    assert_eq!(v4(&res).len(), 2);
    assert_eq!(
        upstream_queries(&registry, silent.local_addr().unwrap(), "timeout"),
        1.0
    );

    // After three failures the silent server is skipped: answers come at once.
    for i in 0..2 {
        let res = resolve(&r, &format!("h{i}.dyn.example.test."), RecordType::A).await;
        assert_eq!(v4(&res).len(), 1);
    }
    assert_eq!(
        upstream_queries(&registry, silent.local_addr().unwrap(), "timeout"),
        3.0
    );
    let start = std::time::Instant::now();
    let res = resolve(&r, "alias.example.test.", RecordType::A).await;
    assert_eq!(v4(&res).len(), 2);
    assert!(
        start.elapsed() < Duration::from_millis(150),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(
        upstream_queries(&registry, silent.local_addr().unwrap(), "timeout"),
        3.0
    );
}

#[tokio::test]
async fn failover_from_a_closed_port_does_not_wait_for_the_timeout() {
    let auth = authority().await;
    let closed = {
        let s = UdpSocket::bind("127.0.0.1:0").await.unwrap();
        s.local_addr().unwrap()
    };
    let mut registry = Registry::default();
    let r = resolver_with(
        vec![closed, auth.addr()],
        Duration::from_secs(5),
        &mut registry,
    )
    .await;
    let start = std::time::Instant::now();
    let res = resolve(&r, "www.example.test.", RecordType::A).await;
    assert_eq!(v4(&res).len(), 2);
    assert!(
        start.elapsed() < Duration::from_secs(1),
        "{:?}",
        start.elapsed()
    );
    assert_eq!(upstream_queries(&registry, closed, "error"), 1.0);
}

#[tokio::test]
async fn all_upstreams_silent_is_an_error() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut registry = Registry::default();
    let r = resolver_with(
        vec![silent.local_addr().unwrap()],
        Duration::from_millis(50),
        &mut registry,
    )
    .await;
    let err = r
        .resolve(&name("www.example.test."), RecordType::A)
        .await
        .unwrap_err();
    assert!(err.to_string().contains("no upstream answered"), "{err}");
}

/// A hand-made upstream: `answer` turns each query into the datagrams sent back.
async fn fake_upstream(
    answer: impl Fn(&Message) -> Vec<Message> + Send + 'static,
) -> (SocketAddr, tokio::task::JoinHandle<()>) {
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = socket.local_addr().unwrap();
    let task = tokio::spawn(async move {
        let mut buf = vec![0u8; 4096];
        loop {
            let (n, from) = socket.recv_from(&mut buf).await.unwrap();
            let query = Message::from_vec(&buf[..n]).unwrap();
            for packet in answer(&query) {
                socket
                    .send_to(&packet.to_vec().unwrap(), from)
                    .await
                    .unwrap();
            }
        }
    });
    (addr, task)
}

fn response(id: u16, question: Query, rcode: ResponseCode, answers: Vec<Record>) -> Message {
    let mut m = Message::new(id, MessageType::Response, OpCode::Query);
    m.metadata.recursion_available = true;
    m.metadata.response_code = rcode;
    m.add_query(question);
    m.answers = answers;
    m
}

/// Answers every query SERVFAIL.
fn servfail(query: &Message) -> Vec<Message> {
    let q = query.queries[0].clone();
    vec![response(
        query.metadata.id,
        q,
        ResponseCode::ServFail,
        Vec::new(),
    )]
}

/// Answers every query four times: wrong ID, wrong name, wrong type, then right.
fn lying(query: &Message) -> Vec<Message> {
    let question = query.queries[0].clone();
    let a = |q: &Query, ip: Ipv4Addr| vec![Record::from_rdata(q.name.clone(), 60, RData::A(A(ip)))];
    let id = query.metadata.id;
    let evil = Ipv4Addr::new(6, 6, 6, 6);
    let ok = ResponseCode::NoError;
    let wrong_id = response(id.wrapping_add(1), question.clone(), ok, a(&question, evil));
    let mut other = question.clone();
    other.name = Name::from_ascii("evil.test.").unwrap();
    let wrong_name = response(id, other.clone(), ok, a(&other, evil));
    let mut wrong_type = question.clone();
    wrong_type.query_type = RecordType::AAAA;
    let wrong_type = response(id, wrong_type, ok, a(&question, evil));
    let right = response(
        id,
        question.clone(),
        ok,
        a(&question, Ipv4Addr::new(1, 2, 3, 4)),
    );
    vec![wrong_id, wrong_name, wrong_type, right]
}

#[tokio::test]
async fn mismatched_answers_are_discarded_and_counted() {
    let (addr, task) = fake_upstream(lying).await;
    let mut registry = Registry::default();
    let r = resolver_with(vec![addr], Duration::from_secs(2), &mut registry).await;
    // The question's case differs from the answer's: still a match.
    let res = resolve(&r, "Www.Lies.Test.", RecordType::A).await;
    assert_eq!(v4(&res), [Ipv4Addr::new(1, 2, 3, 4)]);
    let mismatched = format!(
        "dnsfence_gateway_upstream_mismatched_answers_total{{pool=\"upstream\",upstream=\"{addr}\"}}"
    );
    assert_eq!(metric(&registry, &mismatched), 3.0);
    task.abort();
}

#[tokio::test]
async fn concurrent_identical_misses_are_coalesced() {
    let auth = authority().await;
    let (r, _registry) = resolver(&auth).await;
    let r = Arc::new(r);
    let all = futures::future::join_all(
        (0..20).map(|_| resolve(&r, "alias2.example.test.", RecordType::A)),
    )
    .await;
    assert!(all.iter().all(|res| v4(res).len() == 2));
    assert_eq!(auth.queries(), 1);

    // Spawned on several tasks too.
    let handles: Vec<_> = (0..20)
        .map(|_| {
            let r = r.clone();
            tokio::spawn(async move { r.resolve(&name("www.other.test."), RecordType::A).await })
        })
        .collect();
    for h in handles {
        assert_eq!(v4(&h.await.unwrap().unwrap()).len(), 1);
    }
    assert_eq!(auth.queries(), 2);
}

#[tokio::test]
async fn two_resolvers_share_one_set_of_families() {
    let auth = authority().await;
    let mut registry = Registry::default();
    let metrics = ResolverMetrics::register(&mut registry);
    let a = Resolver::with_metrics(
        "upstream",
        UpstreamConfig::new(vec![auth.addr()]),
        CacheConfig::default(),
        &metrics,
    )
    .await
    .unwrap();
    let b = Resolver::with_metrics(
        "cluster",
        UpstreamConfig::new(vec![auth.addr()]),
        CacheConfig::default(),
        a.metrics(),
    )
    .await
    .unwrap();
    resolve(&a, "www.example.test.", RecordType::A).await;
    resolve(&b, "www.example.test.", RecordType::A).await;
    resolve(&b, "www.example.test.", RecordType::A).await;
    let mut text = String::new();
    prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
    for family in [
        "dnsfence_gateway_cache_hits",
        "dnsfence_gateway_cache_misses",
        "dnsfence_gateway_cache_entries",
        "dnsfence_gateway_upstream_queries",
        "dnsfence_gateway_upstream_latency_seconds",
        "dnsfence_gateway_upstream_mismatched_answers",
    ] {
        let help = format!("# HELP {family} ");
        assert_eq!(text.matches(&help).count(), 1, "{family}\n{text}");
    }
    assert_eq!(
        metric(
            &registry,
            "dnsfence_gateway_cache_hits_total{pool=\"cluster\"}"
        ),
        1.0
    );
    assert_eq!(
        metric(
            &registry,
            "dnsfence_gateway_cache_hits_total{pool=\"upstream\"}"
        ),
        0.0
    );
}

#[tokio::test]
async fn bad_configuration_is_refused() {
    let mut registry = Registry::default();
    let err = Resolver::new(
        "upstream",
        UpstreamConfig::default(),
        CacheConfig::default(),
        &mut registry,
    )
    .await
    .unwrap_err();
    assert!(err.to_string().contains("no upstream"), "{err}");
}

/// Relays `name A` and returns what its continuation got, and when.
async fn relayed(r: &Resolver, name: &str) -> (Option<Vec<u8>>, std::time::Instant) {
    let (tx, rx) = tokio::sync::oneshot::channel();
    let question = Question::new(&Name::from_ascii(name).unwrap(), RecordType::A);
    r.relay_wire(
        question,
        Box::new(move |answer, known_at| {
            let _ = tx.send((answer.map(<[u8]>::to_vec), known_at));
        }),
    );
    rx.await.expect("the continuation is called")
}

#[tokio::test]
async fn a_relayed_query_hands_its_answer_to_the_continuation() {
    let auth = authority().await;
    let mut registry = Registry::default();
    let r = resolver_with(vec![auth.addr()], Duration::from_secs(5), &mut registry).await;
    let (answer, _) = relayed(&r, "WWW.example.test.").await;
    let message = Message::from_vec(&answer.expect("an answer")).unwrap();
    assert_eq!(message.metadata.response_code, ResponseCode::NoError);
    assert_eq!(message.answers.len(), 2);
    assert_eq!(auth.queries(), 1);
    assert_eq!(upstream_queries(&registry, auth.addr(), "ok"), 1.0);
}

#[tokio::test]
async fn a_relayed_query_without_an_answer_gets_none_once_it_timed_out() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let mut registry = Registry::default();
    let timeout = Duration::from_millis(200);
    let r = resolver_with(vec![silent.local_addr().unwrap()], timeout, &mut registry).await;
    let sent = std::time::Instant::now();
    let (answer, called) = relayed(&r, "www.example.test.").await;
    assert!(answer.is_none(), "no answer: take the regular path");
    let waited = called - sent;
    // The sweep runs every quarter of the timeout.
    assert!(waited >= timeout, "{waited:?}");
    assert!(waited < timeout * 3, "{waited:?}");
    assert_eq!(
        upstream_queries(&registry, silent.local_addr().unwrap(), "timeout"),
        1.0
    );
}

#[tokio::test]
async fn a_relayed_query_answered_servfail_or_by_liars_gets_only_the_true_answer_or_none() {
    let (addr, task) = fake_upstream(servfail).await;
    let mut registry = Registry::default();
    let r = resolver_with(vec![addr], Duration::from_secs(2), &mut registry).await;
    let (answer, _) = relayed(&r, "www.broken.test.").await;
    assert!(answer.is_none(), "SERVFAIL: the regular path asks again");
    assert_eq!(upstream_queries(&registry, addr, "servfail"), 1.0);
    task.abort();

    // Wrong ID, wrong name and wrong type are skipped; the matching answer comes through.
    let (addr, task) = fake_upstream(lying).await;
    let r = resolver_with(vec![addr], Duration::from_secs(2), &mut Registry::default()).await;
    let (answer, _) = relayed(&r, "www.example.test.").await;
    let message = Message::from_vec(&answer.expect("the true answer")).unwrap();
    let evil = RData::A(A(Ipv4Addr::new(6, 6, 6, 6)));
    assert!(!message.answers.is_empty());
    assert!(
        message.answers.iter().all(|r| r.data != evil),
        "{message:?}"
    );
    task.abort();
}

/// Relays `name qtype` and sends what its continuation got to `answers`.
fn relay_into(
    r: &Resolver,
    name: &str,
    qtype: RecordType,
    answers: &tokio::sync::mpsc::UnboundedSender<Option<Vec<u8>>>,
) {
    let answers = answers.clone();
    let question = Question::new(&Name::from_ascii(name).unwrap(), qtype);
    r.relay_wire(
        question,
        Box::new(move |answer, _| {
            let _ = answers.send(answer.map(<[u8]>::to_vec));
        }),
    );
}

#[tokio::test]
async fn identical_relayed_queries_in_flight_share_one_upstream_exchange() {
    let auth = authority().await;
    let mut registry = Registry::default();
    let r = resolver_with(vec![auth.addr()], Duration::from_secs(5), &mut registry).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    // Relayed back to back on this one-thread runtime, before the receive task can see an
    // answer: the same name in any case is one question; another type is another.
    for n in [
        "www.example.test.",
        "WWW.Example.TEST.",
        "www.example.test.",
    ] {
        relay_into(&r, n, RecordType::A, &tx);
    }
    relay_into(&r, "www.example.test.", RecordType::AAAA, &tx);
    let mut answers = Vec::new();
    for _ in 0..4 {
        answers.push(rx.recv().await.unwrap().expect("an answer"));
    }
    assert_eq!(auth.queries(), 2);
    let joined = format!(
        "dnsfence_gateway_upstream_joined_queries_total{{pool=\"upstream\",upstream=\"{}\"}}",
        auth.addr()
    );
    assert_eq!(metric(&registry, &joined), 2.0);
    let counts: Vec<(RecordType, usize)> = answers
        .iter()
        .map(|a| {
            let m = Message::from_vec(a).unwrap();
            (m.queries[0].query_type, m.answers.len())
        })
        .collect();
    assert_eq!(
        counts.iter().filter(|c| **c == (RecordType::A, 2)).count(),
        3,
        "{counts:?}"
    );
    assert!(counts.contains(&(RecordType::AAAA, 1)), "{counts:?}");

    // Once answered, the question is asked again.
    let (answer, _) = relayed(&r, "www.example.test.").await;
    assert!(answer.is_some());
    assert_eq!(auth.queries(), 3);
    assert_eq!(metric(&registry, &joined), 2.0);
}

#[tokio::test]
async fn queries_that_joined_a_relay_that_timed_out_get_none_with_it() {
    let silent = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    let addr = silent.local_addr().unwrap();
    let mut registry = Registry::default();
    let r = resolver_with(vec![addr], Duration::from_millis(100), &mut registry).await;
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    for _ in 0..3 {
        relay_into(&r, "www.example.test.", RecordType::A, &tx);
    }
    for _ in 0..3 {
        assert_eq!(rx.recv().await.unwrap(), None);
    }
    assert_eq!(upstream_queries(&registry, addr, "timeout"), 1.0);
    // The silent server saw the one query.
    let mut buf = [0u8; 512];
    tokio::time::timeout(Duration::from_secs(1), silent.recv(&mut buf))
        .await
        .expect("the query reached the server")
        .unwrap();
    assert!(
        silent.try_recv(&mut buf).is_err(),
        "a second query was sent"
    );
}
