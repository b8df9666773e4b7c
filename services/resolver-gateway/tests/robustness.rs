//! Bad input, failing upstreams, a missing store: the gateway keeps serving and says why.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use hickory_proto::op::{Message, ResponseCode};
use hickory_proto::rr::{Name, RecordType};
use tokio::io::AsyncWriteExt;

async fn still_serves(world: &World) {
    let udp_answer = udp(world.gateway.dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(udp_answer.metadata.response_code, ResponseCode::NoError);
    let tcp_answer = tcp(world.gateway.dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(tcp_answer.metadata.response_code, ResponseCode::NoError);
}

#[tokio::test]
async fn malformed_oversized_and_multi_question_queries_get_errors_and_the_server_goes_on() {
    let world = World::start(&[]).await.unwrap();
    let dns = world.gateway.dns;
    let short_wait = Duration::from_millis(300);

    // Shorter than a header: nothing to answer to.
    assert_eq!(
        udp_raw(dns, NGINX_A, b"\x01\x02\x03", short_wait)
            .await
            .unwrap(),
        None
    );

    // A header followed by garbage: FORMERR with the query's ID.
    let mut garbage = vec![0xbe, 0xef, 0x01, 0x00, 0x00, 0x01, 0, 0, 0, 0, 0, 0];
    garbage.extend_from_slice(&[0xff; 40]);
    let formerr = udp_raw(dns, NGINX_A, &garbage, Duration::from_secs(5))
        .await
        .unwrap()
        .unwrap();
    let formerr = Message::from_vec(&formerr).unwrap();
    assert_eq!(formerr.metadata.id, 0xbeef);
    assert_eq!(formerr.metadata.response_code, ResponseCode::FormErr);

    // An oversized datagram of garbage.
    let big = vec![0x41u8; 9000];
    let _ = udp_raw(dns, NGINX_A, &big, short_wait).await.unwrap();

    // A "response" sent to the server is ignored (no reflection).
    let mut response = query("github.com.", RecordType::A, true);
    response.metadata.message_type = hickory_proto::op::MessageType::Response;
    assert_eq!(
        udp_raw(dns, NGINX_A, &response.to_vec().unwrap(), short_wait)
            .await
            .unwrap(),
        None
    );

    // Two questions in one query.
    let mut two = query("github.com.", RecordType::A, true);
    two.add_query(hickory_proto::op::Query::query(
        Name::from_ascii("api.github.com.").unwrap(),
        RecordType::A,
    ));
    let answer = udp_exchange(dns, NGINX_A, &two).await.unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::FormErr);

    // Forty questions without EDNS (found by the fuzzer): the answer still fits 512 bytes.
    let mut many = query(
        "a-long-label-to-make-the-question-big.github.com.",
        RecordType::A,
        false,
    );
    for i in 0..39 {
        many.add_query(hickory_proto::op::Query::query(
            Name::from_ascii(format!(
                "q{i}-another-long-label-for-the-question.github.com."
            ))
            .unwrap(),
            RecordType::A,
        ));
    }
    let raw = udp_raw(
        dns,
        NGINX_A,
        &many.to_vec().unwrap(),
        Duration::from_secs(5),
    )
    .await
    .unwrap()
    .expect("an answer");
    assert!(
        raw.len() <= 512,
        "{} bytes to a client without EDNS",
        raw.len()
    );
    assert_eq!(
        Message::from_vec(&raw).unwrap().metadata.response_code,
        ResponseCode::FormErr
    );

    // Garbage on TCP, framed and unframed.
    let mut stream = tcp_connect(dns, NGINX_A).await.unwrap();
    tcp_send(&mut stream, &[0xff; 30]).await.unwrap();
    drop(stream);
    let mut stream = tcp_connect(dns, NGINX_A).await.unwrap();
    stream.write_all(&[0xff; 5000]).await.unwrap();
    drop(stream);

    still_serves(&world).await;
    let metrics = world.gateway.metrics().await.unwrap();
    assert!(
        metric(&metrics, "dnsfence_gateway_malformed_packets_total", &[]) >= 2.0,
        "{metrics}"
    );
}

/// More queries at once than the gateway reads in one receive batch (32), and than one
/// `sendmmsg` carries: forwarded misses, cache hits and denials interleaved, each answered
/// once with its own ID and the right code.
#[tokio::test]
async fn a_burst_longer_than_a_receive_batch_is_answered_whole() {
    let world = World::start(&[]).await.unwrap();
    let socket = tokio::net::UdpSocket::bind((NGINX_A, 0)).await.unwrap();
    let mut expected = std::collections::HashMap::new();
    for i in 0..120u16 {
        let (name, rcode) = match i % 3 {
            // a name of an allowed zone the upstream does not have: a miss, NXDOMAIN
            0 => (format!("n{i}.example.test."), ResponseCode::NXDomain),
            1 => ("github.com.".to_string(), ResponseCode::NoError),
            _ => ("npmjs.com.".to_string(), ResponseCode::Refused),
        };
        let mut q = query(&name, RecordType::A, false);
        q.metadata.id = 1000 + i;
        socket
            .send_to(&q.to_vec().unwrap(), world.gateway.dns)
            .await
            .unwrap();
        expected.insert(1000 + i, rcode);
    }
    let mut buf = vec![0u8; 4096];
    let deadline = Instant::now() + PATIENCE;
    while !expected.is_empty() {
        let wait = deadline.saturating_duration_since(Instant::now());
        let Ok(received) = tokio::time::timeout(wait, socket.recv(&mut buf)).await else {
            panic!("{} queries unanswered: {expected:?}", expected.len());
        };
        let answer = Message::from_vec(&buf[..received.unwrap()]).unwrap();
        let id = answer.metadata.id;
        let want = expected
            .remove(&id)
            .unwrap_or_else(|| panic!("answer {id} twice"));
        assert_eq!(answer.metadata.response_code, want, "query {id}");
    }
    still_serves(&world).await;
}

#[tokio::test]
async fn a_dead_upstream_is_skipped_and_with_none_left_the_answer_is_servfail() {
    let authority = start_authority().await.unwrap();
    let store = StoreHandle::start().await.unwrap();
    store.seed().await.unwrap();
    let (silent, _task) = silent_upstream().await.unwrap();

    let failover = GatewayHandle::start_ready(
        store.addr,
        &[silent, authority.addr()],
        &["--upstream-timeout=200ms"],
    )
    .await
    .unwrap();
    let answer = udp(failover.dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(answer.metadata.response_code, ResponseCode::NoError);

    let dead = GatewayHandle::start_ready(
        store.addr,
        &[silent],
        &["--upstream-timeout=150ms", "--upstream-attempts=2"],
    )
    .await
    .unwrap();
    let started = Instant::now();
    let failed = udp(dead.dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(failed.metadata.response_code, ResponseCode::ServFail);
    assert!(
        started.elapsed() >= Duration::from_millis(300),
        "two attempts of 150 ms"
    );
    let metrics = dead.metrics().await.unwrap();
    assert!(
        metric(
            &metrics,
            "dnsfence_gateway_queries_total",
            &["verdict=\"upstream_failure\""]
        ) >= 1.0,
        "{metrics}"
    );
    // The relayed first attempt counts against --upstream-attempts: two in all.
    assert_eq!(
        metric(
            &metrics,
            "dnsfence_gateway_upstream_queries_total",
            &["result=\"timeout\""]
        ),
        2.0,
        "{metrics}"
    );
}

#[tokio::test]
async fn before_the_store_is_reached_the_gateway_is_not_ready_and_answers_servfail() {
    let authority = start_authority().await.unwrap();
    // A port nobody serves yet; the store comes up on it later.
    let reserved = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let store_addr = reserved.local_addr().unwrap();
    drop(reserved);

    let gateway = GatewayHandle::start(store_addr, &[authority.addr()], &[])
        .await
        .unwrap();
    let (status, body) = http_get(gateway.http, "/readyz").await.unwrap();
    assert_eq!(status, 503, "{body}");
    let early = udp(gateway.dns, NGINX_A, "github.com", RecordType::A)
        .await
        .unwrap();
    assert_eq!(early.metadata.response_code, ResponseCode::ServFail);
    assert_eq!(ede(&early).unwrap().0, 14, "RFC 8914 Not Ready");

    let store = StoreHandle::start_on(store_addr).await.unwrap();
    store.seed().await.unwrap();
    gateway.ready().await.unwrap();
    // Ready means caught up with what the store had when the watch opened; the seed may
    // still be arriving.
    udp_until(
        gateway.dns,
        NGINX_A,
        "github.com",
        RecordType::A,
        ResponseCode::NoError,
    )
    .await
    .unwrap();
}
