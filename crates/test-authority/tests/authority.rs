#![allow(clippy::unwrap_used, clippy::expect_used)]
//! Real client queries (hickory-proto messages over tokio sockets) against the test authority.

use std::{
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    time::Duration,
};

use dnsfence_test_authority::{Authority, Error, RunningAuthority, Zone};
use hickory_proto::{
    op::{Edns, Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
};

const BIG: usize = 2_000;

fn example_zone() -> Zone {
    let mut zone = Zone::new("example.test.")
        .a("www", Ipv4Addr::new(192, 0, 2, 1), 300)
        .a("www", Ipv4Addr::new(192, 0, 2, 2), 300)
        .aaaa("www", "2001:db8::1".parse().unwrap(), 300)
        .cname("alias", "www", 120)
        .cname("alias2", "alias", 60)
        .cname("away", "www.other.test.", 60)
        .a("*.dyn", Ipv4Addr::new(192, 0, 2, 99), 30)
        .txt("@", "hello world", 60)
        .mx("@", 10, "mail", 60)
        .a("mail", Ipv4Addr::new(192, 0, 2, 25), 60)
        .srv("_http._tcp", 1, 2, 8080, "www", 60);
    for i in 0..BIG {
        let i = u32::try_from(i).unwrap();
        zone = zone.a("big", Ipv4Addr::from(0x0a00_0000 + i), 60);
    }
    zone
}

fn other_zone() -> Zone {
    Zone::new("other.test").a("www", Ipv4Addr::new(198, 51, 100, 7), 45)
}

async fn start() -> RunningAuthority {
    Authority::start(
        vec![example_zone(), other_zone()],
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap()
}

fn query(name: &str, qtype: RecordType, edns: Option<u16>) -> (u16, Vec<u8>) {
    let mut msg = Message::query();
    msg.metadata.recursion_desired = true;
    msg.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    if let Some(size) = edns {
        let mut e = Edns::new();
        e.set_max_payload(size);
        msg.set_edns(e);
    }
    (msg.metadata.id, msg.to_vec().unwrap())
}

async fn udp(server: SocketAddr, name: &str, qtype: RecordType, edns: Option<u16>) -> Message {
    let (id, bytes) = query(name, qtype, edns);
    let socket = UdpSocket::bind("127.0.0.1:0").await.unwrap();
    socket.connect(server).await.unwrap();
    socket.send(&bytes).await.unwrap();
    let mut buf = vec![0u8; 65_535];
    let n = tokio::time::timeout(Duration::from_secs(5), socket.recv(&mut buf))
        .await
        .expect("udp answer in time")
        .unwrap();
    let answer = Message::from_vec(&buf[..n]).unwrap();
    assert_eq!(answer.metadata.id, id);
    answer
}

async fn tcp(server: SocketAddr, name: &str, qtype: RecordType) -> Message {
    let (id, bytes) = query(name, qtype, None);
    let mut stream = TcpStream::connect(server).await.unwrap();
    let len = u16::try_from(bytes.len()).unwrap();
    stream.write_all(&len.to_be_bytes()).await.unwrap();
    stream.write_all(&bytes).await.unwrap();
    let mut len = [0u8; 2];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut len))
        .await
        .expect("tcp answer in time")
        .unwrap();
    let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
    stream.read_exact(&mut buf).await.unwrap();
    let answer = Message::from_vec(&buf).unwrap();
    assert_eq!(answer.metadata.id, id);
    answer
}

fn addrs_v4(msg: &Message) -> Vec<Ipv4Addr> {
    msg.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(a.0),
            _ => None,
        })
        .collect()
}

#[tokio::test]
async fn answers_a_and_aaaa() {
    let auth = start().await;
    let msg = udp(auth.addr(), "www.example.test.", RecordType::A, Some(1232)).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.metadata.authoritative);
    let mut v4 = addrs_v4(&msg);
    v4.sort();
    assert_eq!(
        v4,
        vec![Ipv4Addr::new(192, 0, 2, 1), Ipv4Addr::new(192, 0, 2, 2)]
    );
    assert!(msg.answers.iter().all(|r| r.ttl == 300));

    let msg = udp(auth.addr(), "WWW.Example.TEST.", RecordType::AAAA, None).await;
    let v6: Vec<Ipv6Addr> = msg
        .answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::AAAA(a) => Some(a.0),
            _ => None,
        })
        .collect();
    assert_eq!(v6, vec!["2001:db8::1".parse::<Ipv6Addr>().unwrap()]);
    assert_eq!(auth.queries(), 2);
    auth.shutdown().await;
}

#[tokio::test]
async fn nxdomain_and_nodata_carry_the_soa() {
    let auth = start().await;
    let msg = udp(auth.addr(), "nope.example.test.", RecordType::A, Some(1232)).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    assert!(msg.answers.is_empty());
    let soa = msg
        .authorities
        .iter()
        .find_map(|r| match &r.data {
            RData::SOA(soa) => Some((r.ttl, soa.minimum)),
            _ => None,
        })
        .expect("SOA in the authority section");
    assert_eq!(soa.1, 30);
    assert!(soa.0 <= 30);

    // NODATA: the name exists, the type does not.
    let msg = udp(auth.addr(), "mail.example.test.", RecordType::AAAA, None).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert!(msg.answers.is_empty());
    assert!(
        msg.authorities
            .iter()
            .any(|r| r.record_type() == RecordType::SOA)
    );

    // A name outside every zone is refused.
    let msg = udp(auth.addr(), "example.com.", RecordType::A, None).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::Refused);
    auth.shutdown().await;
}

#[tokio::test]
async fn cname_chains_and_split_chains() {
    let auth = start().await;
    let msg = udp(auth.addr(), "alias2.example.test.", RecordType::A, None).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    let types: Vec<RecordType> = msg.answers.iter().map(|r| r.record_type()).collect();
    assert_eq!(
        types,
        vec![
            RecordType::CNAME,
            RecordType::CNAME,
            RecordType::A,
            RecordType::A
        ]
    );
    assert_eq!(addrs_v4(&msg).len(), 2);

    // A CNAME into another zone: the answer holds only the CNAME.
    let msg = udp(auth.addr(), "away.example.test.", RecordType::A, None).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    assert_eq!(msg.answers.len(), 1);
    match &msg.answers[0].data {
        RData::CNAME(target) => assert_eq!(target.0, Name::from_ascii("www.other.test.").unwrap()),
        other => panic!("expected a CNAME, got {other:?}"),
    }
    let msg = udp(auth.addr(), "www.other.test.", RecordType::A, None).await;
    assert_eq!(addrs_v4(&msg), vec![Ipv4Addr::new(198, 51, 100, 7)]);
    auth.shutdown().await;
}

#[tokio::test]
async fn wildcard_txt_mx_srv() {
    let auth = start().await;
    let msg = udp(
        auth.addr(),
        "anything.dyn.example.test.",
        RecordType::A,
        None,
    )
    .await;
    assert_eq!(addrs_v4(&msg), vec![Ipv4Addr::new(192, 0, 2, 99)]);
    assert_eq!(
        msg.answers[0].name,
        Name::from_ascii("anything.dyn.example.test.").unwrap()
    );
    let msg = udp(auth.addr(), "a.b.dyn.example.test.", RecordType::A, None).await;
    assert_eq!(addrs_v4(&msg), vec![Ipv4Addr::new(192, 0, 2, 99)]);

    let msg = udp(auth.addr(), "example.test.", RecordType::TXT, None).await;
    assert!(matches!(&msg.answers[0].data, RData::TXT(t) if t.to_string().contains("hello world")));
    let msg = udp(auth.addr(), "example.test.", RecordType::MX, None).await;
    assert!(matches!(&msg.answers[0].data, RData::MX(mx) if mx.preference == 10));
    let msg = udp(
        auth.addr(),
        "_http._tcp.example.test.",
        RecordType::SRV,
        None,
    )
    .await;
    assert!(matches!(&msg.answers[0].data, RData::SRV(srv) if srv.port == 8080));
    auth.shutdown().await;
}

#[tokio::test]
async fn big_answer_over_tcp_truncated_over_udp() {
    let auth = start().await;
    let msg = udp(auth.addr(), "big.example.test.", RecordType::A, Some(1232)).await;
    assert!(msg.metadata.truncation, "UDP answer must have TC set");
    assert!(msg.answers.len() < BIG);

    let msg = udp(auth.addr(), "big.example.test.", RecordType::A, None).await;
    assert!(
        msg.metadata.truncation,
        "512-byte UDP answer must have TC set"
    );

    let msg = tcp(auth.addr(), "big.example.test.", RecordType::A).await;
    assert!(!msg.metadata.truncation);
    assert_eq!(msg.metadata.response_code, ResponseCode::NoError);
    let mut v4 = addrs_v4(&msg);
    v4.sort();
    v4.dedup();
    assert_eq!(v4.len(), BIG);
    assert_eq!(auth.queries(), 3);
    auth.shutdown().await;
}

#[tokio::test]
async fn udp_and_tcp_share_the_port_and_drop_stops_the_server() {
    let auth = start().await;
    let addr = auth.addr();
    assert_ne!(addr.port(), 0);
    let msg = tcp(addr, "www.example.test.", RecordType::A).await;
    assert_eq!(addrs_v4(&msg).len(), 2);
    drop(auth);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(TcpStream::connect(addr).await.is_err());
}

#[tokio::test]
async fn zone_files_load() {
    let text = "\
$ORIGIN files.test.
$TTL 120
@       IN SOA ns1 hostmaster 7 3600 600 86400 15
@       IN NS  ns1
ns1     IN A   192.0.2.53
www     60 IN A 192.0.2.80
www     IN AAAA 2001:db8::80
alias   IN CNAME www
*.wild  IN A   192.0.2.81
";
    let dir = std::env::temp_dir().join(format!("dnsfence-ta-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let path = dir.join("files.test.zone");
    std::fs::write(&path, text).unwrap();
    let zone = Zone::from_master_file(&path).unwrap();
    assert_eq!(zone.origin(), &Name::from_ascii("files.test.").unwrap());

    // A file without SOA gets one generated.
    let bare = Zone::parse_master("www 30 IN A 192.0.2.1\n", None, Some("bare.test.")).unwrap();

    let auth = Authority::start(vec![zone, bare], "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap();
    let msg = udp(auth.addr(), "alias.files.test.", RecordType::A, None).await;
    assert_eq!(addrs_v4(&msg), vec![Ipv4Addr::new(192, 0, 2, 80)]);
    assert_eq!(msg.answers[0].ttl, 120);
    assert_eq!(msg.answers[1].ttl, 60);
    let msg = udp(auth.addr(), "x.wild.files.test.", RecordType::A, None).await;
    assert_eq!(addrs_v4(&msg), vec![Ipv4Addr::new(192, 0, 2, 81)]);
    let msg = udp(auth.addr(), "nope.files.test.", RecordType::A, None).await;
    assert_eq!(msg.metadata.response_code, ResponseCode::NXDomain);
    let msg = udp(auth.addr(), "www.bare.test.", RecordType::A, None).await;
    assert_eq!(addrs_v4(&msg), vec![Ipv4Addr::new(192, 0, 2, 1)]);
    auth.shutdown().await;
    std::fs::remove_dir_all(&dir).unwrap();
}

#[tokio::test]
async fn builder_errors_are_reported() {
    let zone = Zone::new("example.test.").a("www.elsewhere.test.", Ipv4Addr::LOCALHOST, 5);
    let err = Authority::start(vec![zone], "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::OutOfZone { .. }), "{err}");

    let zone = Zone::new("example.test.")
        .a("www", Ipv4Addr::LOCALHOST, 5)
        .cname("www", "other", 5);
    let err = Authority::start(vec![zone], "127.0.0.1:0".parse().unwrap())
        .await
        .unwrap_err();
    assert!(matches!(err, Error::Zone { .. }), "{err}");

    let err = Authority::start(
        vec![Zone::new("a.test."), Zone::new("A.test")],
        "127.0.0.1:0".parse().unwrap(),
    )
    .await
    .unwrap_err();
    assert!(matches!(err, Error::DuplicateZone(_)), "{err}");
}
