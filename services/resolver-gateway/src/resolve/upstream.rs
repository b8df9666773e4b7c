//! Upstream forwarding: long-lived connected UDP sockets per server with one receive task each,
//! TCP on truncation, attempts across servers, server health with growing backoff.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, AtomicUsize, Ordering},
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
    sync::oneshot,
    task::JoinHandle,
};

use super::health::{Health, Order};
use super::{ResolveError, UpstreamConfig, metrics::ResolverMetrics, metrics::UpstreamMetrics};

/// The UDP payload size our queries advertise (EDNS(0); the DNS Flag Day 2020 value).
pub(super) const EDNS_UDP_SIZE: u16 = 1232;
/// Tries to find a query ID not in flight on a socket.
const ID_TRIES: usize = 32;
/// Receive buffer: the largest UDP payload.
const RECV_BUFFER: usize = 65_535;

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
                conn.pending().clear();
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

/// One connected UDP socket and the queries in flight on it.
pub(super) struct UdpConn {
    pub(super) socket: UdpSocket,
    pending: Mutex<PendingMap>,
    /// Distinguishes successive users of one query ID.
    next_token: AtomicU64,
    mismatched: Counter,
}

pub(super) type PendingMap = HashMap<u16, Pending, foldhash::fast::RandomState>;

pub(super) struct Pending {
    pub(super) token: u64,
    pub(super) waiter: Waiter,
}

/// Who gets the answer of a query in flight.
pub(super) enum Waiter {
    /// An exchange awaiting it (bounded by its own timeout, freed by its guard).
    Task {
        question: Arc<Question>,
        reply: oneshot::Sender<Reply>,
    },
    /// A relayed query ([`super::relay`]): called in the receive task, or by the sweep once
    /// it timed out.
    Relay(super::relay::Relay),
}

impl Waiter {
    fn question(&self) -> &Question {
        match self {
            Waiter::Task { question, .. } => question,
            Waiter::Relay(relay) => &relay.question,
        }
    }
}

pub(super) enum Reply {
    /// The whole datagram of an answer to the question (not truncated).
    Answer(Vec<u8>),
    Truncated,
    Unreachable,
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
const HEADER: usize = 12;

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
                let conn = Arc::new(UdpConn {
                    socket,
                    pending: Mutex::new(PendingMap::default()),
                    next_token: AtomicU64::new(0),
                    mismatched: server_metrics.mismatched.clone(),
                });
                tasks.push(tokio::spawn(receive_loop(conn.clone())));
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

enum ExchangeError {
    Timeout,
    Io(String),
}

impl UdpConn {
    pub(super) fn pending(&self) -> MutexGuard<'_, PendingMap> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// A random query ID not in flight on this socket.
    pub(super) fn free_id(pending: &PendingMap) -> Option<u16> {
        (0..ID_TRIES)
            .map(|_| rand::random::<u16>())
            .find(|id| !pending.contains_key(id))
    }

    /// Removes the query in flight under `id` if it is still the one of `token` (not
    /// answered, timed out or replaced by a later query since).
    pub(super) fn take(&self, id: u16, token: u64) -> Option<Pending> {
        let mut pending = self.pending();
        match pending.get(&id) {
            Some(p) if p.token == token => pending.remove(&id),
            _ => None,
        }
    }

    pub(super) fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `question` with a fresh random ID and waits for the matching answer.
    async fn exchange(
        &self,
        question: &Arc<Question>,
        timeout: Duration,
    ) -> Result<Reply, ExchangeError> {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token();
        let id = {
            let mut pending = self.pending();
            let Some(id) = Self::free_id(&pending) else {
                return Err(ExchangeError::Io("no free query ID on the socket".into()));
            };
            pending.insert(
                id,
                Pending {
                    token,
                    waiter: Waiter::Task {
                        question: Arc::clone(question),
                        reply: tx,
                    },
                },
            );
            id
        };
        // From here on, leaving (answer, timeout, error or cancellation) frees the ID.
        let _guard = PendingGuard {
            conn: self,
            id,
            token,
        };
        let bytes = encode_query(id, question);
        self.socket
            .send(&bytes)
            .await
            .map_err(|e| ExchangeError::Io(format!("sending: {e}")))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            // The sender is only dropped with the receive task (resolver shutting down).
            Ok(Err(_)) => Err(ExchangeError::Io("receive task stopped".into())),
            Err(_) => Err(ExchangeError::Timeout),
        }
    }

    /// Hands one received datagram to the query it answers, or counts it as mismatched.
    /// Only the header and the question are read here; the answer goes on as bytes.
    fn dispatch(&self, bytes: &[u8]) {
        let id = match bytes {
            [hi, lo, flags, ..] if bytes.len() >= HEADER && flags & 0x80 != 0 => {
                Some(u16::from_be_bytes([*hi, *lo]))
            }
            _ => None,
        };
        let pending = id.and_then(|id| {
            let mut map = self.pending();
            match map.get(&id) {
                Some(p) if p.waiter.question().is_asked_by(bytes) => map.remove(&id),
                _ => None,
            }
        });
        let Some(pending) = pending else {
            tracing::debug!(
                ?id,
                "discarding an upstream answer that matches no query in flight"
            );
            self.mismatched.inc();
            return;
        };
        match pending.waiter {
            Waiter::Task { reply, .. } => {
                let answer = if bytes[2] & 0x02 != 0 {
                    Reply::Truncated
                } else {
                    Reply::Answer(bytes.to_vec())
                };
                let _ = reply.send(answer);
            }
            Waiter::Relay(relay) => relay.answered(bytes),
        }
    }

    /// An ICMP port unreachable fails every query in flight on the socket at once.
    fn fail_all(&self) {
        let drained: Vec<Pending> = self.pending().drain().map(|(_, p)| p).collect();
        for p in drained {
            match p.waiter {
                Waiter::Task { reply, .. } => {
                    let _ = reply.send(Reply::Unreachable);
                }
                Waiter::Relay(relay) => relay.failed(super::relay::Failure::Network),
            }
        }
    }
}

/// Removes a query's pending slot when its exchange ends, unless the ID was reused since.
struct PendingGuard<'a> {
    conn: &'a UdpConn,
    id: u16,
    token: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        // The waiter is the exchange's own (a oneshot sender): nothing to tell.
        drop(self.conn.take(self.id, self.token));
    }
}

async fn receive_loop(conn: Arc<UdpConn>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        match conn.socket.recv(&mut buf).await {
            Ok(n) => conn.dispatch(&buf[..n]),
            Err(e) if e.kind() == io::ErrorKind::ConnectionRefused => conn.fail_all(),
            Err(e) => {
                tracing::warn!(error = %e, "receiving from an upstream socket");
                tokio::time::sleep(Duration::from_millis(10)).await;
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
