//! Upstream forwarding: long-lived connected UDP sockets per server with one receive task each
//! (`udp_conn`), TCP on truncation, attempts across servers, server health with growing
//! backoff.

use std::{
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc,
        atomic::{AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::serialize::binary::BinDecodable;
use hickory_proto::{
    op::{Header, Message, ResponseCode},
    rr::{Name, Record, RecordType},
    serialize::binary::BinDecoder,
};
use prometheus_client::metrics::counter::Counter;
use tokio::{
    io::{AsyncReadExt, AsyncWriteExt},
    net::{TcpStream, UdpSocket},
    task::JoinHandle,
};

use super::health::{Health, Order};
use super::udp_conn::{ExchangeError, Reply, UdpConn};
use super::{ResolveError, UpstreamConfig, metrics::ResolverMetrics, metrics::UpstreamMetrics};

/// The UDP payload size our queries advertise (EDNS(0); the DNS Flag Day 2020 value).
pub(super) const EDNS_UDP_SIZE: u16 = 1232;

/// An upstream's answer, reduced to what the resolver uses.
#[derive(Debug)]
pub(super) struct UpstreamAnswer {
    pub rcode: ResponseCode,
    pub answers: Vec<Record>,
    pub authorities: Vec<Record>,
}

/// The upstream servers of one resolver.
pub(super) struct Upstreams {
    pub(super) servers: Vec<Arc<Server>>,
    pub(super) timeout: Duration,
    attempts: usize,
    pub(super) epoch: Instant,
    tasks: Vec<JoinHandle<()>>,
}

impl std::fmt::Debug for Upstreams {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Upstreams")
            .field(
                "servers",
                &self.servers.iter().map(|s| s.addr).collect::<Vec<_>>(),
            )
            .field("timeout", &self.timeout)
            .field("attempts", &self.attempts)
            .finish_non_exhaustive()
    }
}

impl Drop for Upstreams {
    fn drop(&mut self) {
        for task in &self.tasks {
            task.abort();
        }
        // Relayed queries still in flight hold their server: let both go.
        for server in &self.servers {
            for conn in &server.conns {
                drop(conn.pending().drain());
            }
        }
    }
}

pub(super) struct Server {
    pub(super) addr: SocketAddr,
    pub(super) conns: Vec<Arc<UdpConn>>,
    pub(super) next_conn: AtomicUsize,
    pub(super) health: Health,
    pub(super) metrics: UpstreamMetrics,
}

/// A question as it goes on the wire: the name in lower-case wire form and the type (class
/// IN). Answers are matched against it byte for byte, case-insensitively, without decoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Question {
    name: Box<[u8]>,
    qtype: u16,
}

impl Question {
    pub fn new(name: &Name, qtype: RecordType) -> Question {
        let mut wire = Vec::with_capacity(name.len() + 2);
        for label in name.iter() {
            // Labels are at most 63 bytes: Name enforces it.
            wire.push(label.len() as u8);
            wire.extend(label.iter().map(u8::to_ascii_lowercase));
        }
        wire.push(0);
        Question {
            name: wire.into_boxed_slice(),
            qtype: u16::from(qtype),
        }
    }

    /// `name` in wire form (uncompressed, any case): what a client's query carries.
    pub fn from_wire(name: &[u8], qtype: u16) -> Question {
        Question {
            name: name.iter().map(u8::to_ascii_lowercase).collect(),
            qtype,
        }
    }

    /// The name in lower-case wire form.
    pub fn name(&self) -> &[u8] {
        &self.name
    }

    pub fn qtype(&self) -> u16 {
        self.qtype
    }

    /// Whether `answer` (a whole message) carries exactly this question.
    pub(super) fn is_asked_by(&self, answer: &[u8]) -> bool {
        let end = HEADER + self.name.len();
        answer.get(4..6) == Some(&[0, 1])
            && answer
                .get(HEADER..end)
                .is_some_and(|n| n.eq_ignore_ascii_case(&self.name))
            && answer.get(end..end + 4)
                == Some(&[(self.qtype >> 8) as u8, self.qtype as u8, 0, 1][..])
    }

    fn describe(&self) -> (String, String) {
        let name = Name::from_bytes(&self.name).map_or_else(
            |_| String::from_utf8_lossy(&self.name).into_owned(),
            |n| n.to_string(),
        );
        (name, RecordType::from(self.qtype).to_string())
    }
}

/// DNS header length.
pub(super) const HEADER: usize = 12;

/// Why one attempt failed.
enum AttemptError {
    Timeout,
    /// The SERVFAIL answer, returned if it is the last attempt's.
    ServFail(Vec<u8>),
    Error(String),
}

impl Upstreams {
    pub async fn new(
        pool: &str,
        config: &UpstreamConfig,
        metrics: &ResolverMetrics,
    ) -> Result<Upstreams, ResolveError> {
        if config.servers.is_empty() {
            return Err(ResolveError::Config("no upstream server".into()));
        }
        if config.timeout.is_zero() {
            return Err(ResolveError::Config("the upstream timeout is zero".into()));
        }
        let mut servers = Vec::with_capacity(config.servers.len());
        let mut tasks = Vec::new();
        for &addr in &config.servers {
            let server_metrics = metrics.upstream(pool, &addr.to_string());
            let mut conns = Vec::new();
            for _ in 0..config.sockets_per_server.max(1) {
                let socket_error = |source: io::Error| ResolveError::Socket {
                    addr,
                    source: Arc::new(source),
                };
                let local: SocketAddr = match addr {
                    SocketAddr::V4(_) => (Ipv4Addr::UNSPECIFIED, 0).into(),
                    SocketAddr::V6(_) => (Ipv6Addr::UNSPECIFIED, 0).into(),
                };
                let socket = UdpSocket::bind(local).await.map_err(socket_error)?;
                socket.connect(addr).await.map_err(socket_error)?;
                super::enlarge_receive_buffer(&socket2::SockRef::from(&socket));
                let (conn, receiving) = UdpConn::start(socket, server_metrics.mismatched.clone());
                tasks.push(receiving);
                conns.push(conn);
            }
            servers.push(Arc::new(Server {
                addr,
                conns,
                next_conn: AtomicUsize::new(0),
                health: Health::default(),
                metrics: server_metrics,
            }));
        }
        let epoch = Instant::now();
        tasks.push(tokio::spawn(super::relay::sweep_loop(
            servers.clone(),
            config.timeout,
        )));
        Ok(Upstreams {
            servers,
            timeout: config.timeout,
            attempts: config.attempts.max(1),
            epoch,
            tasks,
        })
    }

    pub(super) fn now_micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Asks the upstreams `name qtype IN` and decodes the answer's sections.
    pub async fn query(
        &self,
        name: &Name,
        qtype: RecordType,
    ) -> Result<UpstreamAnswer, ResolveError> {
        self.ask(&Arc::new(Question::new(name, qtype)), decode_answer, 0)
            .await
    }

    /// Asks the upstreams `question` and returns the answer as it came (the whole message,
    /// over UDP or, when truncated there, TCP), for callers that read it on the wire.
    /// `first_attempt`: the attempts already made elsewhere (a relayed one), which count
    /// against `--upstream-attempts` and move the server order on as the regular path does.
    pub async fn query_wire(
        &self,
        question: Question,
        first_attempt: usize,
    ) -> Result<Vec<u8>, ResolveError> {
        self.ask(&Arc::new(question), Ok, first_attempt).await
    }

    /// Asks up to `attempts` times: servers that are up in preference order first, then those
    /// marked down (best effort). A timeout, SERVFAIL, network error or an answer `decode`
    /// rejects moves on to the next server; all but SERVFAIL count against the server's
    /// health (SERVFAIL is about the name). When the last attempt got SERVFAIL, that answer
    /// is returned; when no attempt got an answer, an error.
    async fn ask<T>(
        &self,
        question: &Arc<Question>,
        decode: impl Fn(Vec<u8>) -> Result<T, String>,
        first_attempt: usize,
    ) -> Result<T, ResolveError> {
        let now = self.now_micros();
        // Up servers in preference order, then down ones: no allocation for the usual 1-4.
        let mut order = Order::default();
        for (i, s) in self.servers.iter().enumerate() {
            if s.health.is_up(now) {
                order.push(i);
            }
        }
        for (i, s) in self.servers.iter().enumerate() {
            if !s.health.is_up(now) {
                order.push(i);
            }
        }
        let mut last = String::from("no attempt left");
        let mut servfail = None;
        for attempt in first_attempt..self.attempts {
            let server = &self.servers[order.get(attempt % order.len())];
            match self.attempt(server, question, &decode).await {
                Ok(answer) => {
                    server.health.success();
                    return Ok(answer);
                }
                // The server is alive: SERVFAIL is about the name, not the server's health.
                Err(AttemptError::ServFail(answer)) => {
                    last = format!("{}: SERVFAIL", server.addr);
                    servfail = Some(answer);
                }
                Err(AttemptError::Timeout) => {
                    server.health.failure(self.now_micros());
                    last = format!("{}: timed out after {:?}", server.addr, self.timeout);
                    servfail = None;
                }
                Err(AttemptError::Error(e)) => {
                    server.health.failure(self.now_micros());
                    last = format!("{}: {e}", server.addr);
                    servfail = None;
                }
            }
            tracing::debug!(question = ?question.describe(), attempt, error = %last, "upstream attempt failed");
        }
        let (name, qtype) = question.describe();
        if let Some(answer) = servfail {
            return decode(answer).map_err(|e| ResolveError::Upstream {
                name,
                qtype,
                attempts: self.attempts,
                last: format!("malformed SERVFAIL answer: {e}"),
            });
        }
        Err(ResolveError::Upstream {
            name,
            qtype,
            attempts: self.attempts,
            last,
        })
    }

    /// One attempt on one server: UDP, then TCP if the UDP answer is truncated.
    async fn attempt<T>(
        &self,
        server: &Server,
        question: &Arc<Question>,
        decode: &impl Fn(Vec<u8>) -> Result<T, String>,
    ) -> Result<T, AttemptError> {
        let m = &server.metrics;
        let start = Instant::now();
        let conn =
            &server.conns[server.next_conn.fetch_add(1, Ordering::Relaxed) % server.conns.len()];
        let reply = conn.exchange(question, self.timeout).await;
        let answer = match reply {
            Ok(Reply::Answer(answer)) => {
                m.latency.observe(start.elapsed().as_secs_f64());
                answer
            }
            Ok(Reply::Truncated) => {
                m.truncated.inc();
                // TCP gets a full timeout of its own: a handshake plus a round trip, and only
                // large answers take this path.
                let tcp_start = Instant::now();
                match tokio::time::timeout(
                    self.timeout,
                    tcp_exchange(server.addr, question, &conn.mismatched),
                )
                .await
                {
                    Ok(Ok(answer)) if answer.get(2).is_some_and(|f| f & 0x02 != 0) => {
                        m.error.inc();
                        return Err(AttemptError::Error("truncated answer over TCP".into()));
                    }
                    Ok(Ok(answer)) => {
                        m.latency.observe(tcp_start.elapsed().as_secs_f64());
                        answer
                    }
                    Ok(Err(e)) => {
                        m.error.inc();
                        return Err(AttemptError::Error(format!("over TCP: {e}")));
                    }
                    Err(_) => {
                        m.timeout.inc();
                        return Err(AttemptError::Timeout);
                    }
                }
            }
            Ok(Reply::Unreachable) => {
                m.error.inc();
                return Err(AttemptError::Error("port unreachable".into()));
            }
            Err(ExchangeError::Timeout) => {
                m.timeout.inc();
                return Err(AttemptError::Timeout);
            }
            Err(ExchangeError::Io(e)) => {
                m.error.inc();
                return Err(AttemptError::Error(e));
            }
        };
        // RCODE 2 in the header; an extended RCODE (RFC 6891) with these low bits is not
        // SERVFAIL, but our queries (EDNS version 0, no cookies) cannot provoke one.
        if answer.get(3).is_some_and(|f| f & 0x0f == 2) {
            m.servfail.inc();
            return Err(AttemptError::ServFail(answer));
        }
        match decode(answer) {
            Ok(decoded) => {
                m.ok.inc();
                Ok(decoded)
            }
            Err(e) => {
                m.error.inc();
                Err(AttemptError::Error(format!("malformed answer: {e}")))
            }
        }
    }
}

/// The sections of a whole answer, and the rcode with the EDNS extended bits.
fn decode_answer(bytes: Vec<u8>) -> Result<UpstreamAnswer, String> {
    let mut decoder = BinDecoder::new(&bytes);
    let header = Header::read(&mut decoder).map_err(|e| e.to_string())?;
    Message::read_queries(&mut decoder, usize::from(header.counts.queries))
        .map_err(|e| e.to_string())?;
    let op = header.metadata.op_code;
    let counts = &header.counts;
    let (answers, _, _) =
        Message::read_records(&mut decoder, usize::from(counts.answers), false, op)
            .map_err(|e| e.to_string())?;
    let (authorities, _, _) =
        Message::read_records(&mut decoder, usize::from(counts.authorities), false, op)
            .map_err(|e| e.to_string())?;
    let (_, edns, _) =
        Message::read_records(&mut decoder, usize::from(counts.additionals), true, op)
            .map_err(|e| e.to_string())?;
    let low = header.metadata.response_code.low();
    let rcode = match edns {
        Some(edns) => ResponseCode::from(edns.rcode_high(), low),
        None => header.metadata.response_code,
    };
    Ok(UpstreamAnswer {
        rcode,
        answers,
        authorities,
    })
}

/// A query for `question` with ID `id`: RD set, an OPT record announcing
/// [`EDNS_UDP_SIZE`].
pub(super) fn encode_query(id: u16, question: &Question) -> Vec<u8> {
    let mut q = Vec::with_capacity(HEADER + question.name.len() + 4 + 11);
    q.extend_from_slice(&id.to_be_bytes());
    q.extend_from_slice(&[0x01, 0x00, 0, 1, 0, 0, 0, 0, 0, 1]);
    q.extend_from_slice(&question.name);
    q.extend_from_slice(&question.qtype.to_be_bytes());
    q.extend_from_slice(&[0, 1]);
    // OPT: root owner, type 41, class = UDP payload, TTL = ext-rcode 0, version 0, flags 0.
    q.extend_from_slice(&[0, 0, 41]);
    q.extend_from_slice(&EDNS_UDP_SIZE.to_be_bytes());
    q.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    q
}

/// One query over a new TCP connection (2-byte length framing). Answers with another ID or
/// question are counted and skipped. The caller bounds it with the timeout.
async fn tcp_exchange(
    addr: SocketAddr,
    question: &Question,
    mismatched: &Counter,
) -> Result<Vec<u8>, String> {
    let id: u16 = rand::random();
    let bytes = encode_query(id, question);
    let len = u16::try_from(bytes.len()).map_err(|_| "query too long".to_string())?;
    let mut stream = TcpStream::connect(addr)
        .await
        .map_err(|e| format!("connecting: {e}"))?;
    let _ = stream.set_nodelay(true);
    let mut frame = Vec::with_capacity(bytes.len() + 2);
    frame.extend_from_slice(&len.to_be_bytes());
    frame.extend_from_slice(&bytes);
    stream
        .write_all(&frame)
        .await
        .map_err(|e| format!("sending: {e}"))?;
    loop {
        let mut len = [0u8; 2];
        stream
            .read_exact(&mut len)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        let mut buf = vec![0u8; usize::from(u16::from_be_bytes(len))];
        stream
            .read_exact(&mut buf)
            .await
            .map_err(|e| format!("reading: {e}"))?;
        if buf.len() >= HEADER
            && buf[0..2] == id.to_be_bytes()
            && buf[2] & 0x80 != 0
            && question.is_asked_by(&buf)
        {
            return Ok(buf);
        }
        mismatched.inc();
    }
}
