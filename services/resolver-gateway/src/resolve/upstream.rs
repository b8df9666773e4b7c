//! Upstream forwarding: long-lived connected UDP sockets per server with one receive task each,
//! TCP on truncation, attempts across servers, server health with growing backoff.

use std::{
    collections::HashMap,
    io,
    net::{Ipv4Addr, Ipv6Addr, SocketAddr},
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU32, AtomicU64, AtomicUsize, Ordering},
    },
    time::{Duration, Instant},
};

use hickory_proto::serialize::binary::BinDecodable;
use hickory_proto::{
    op::{Edns, Header, Message, MessageType, OpCode, Query, ResponseCode},
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

use super::{ResolveError, UpstreamConfig, metrics::ResolverMetrics, metrics::UpstreamMetrics};

/// The UDP payload size our queries advertise (EDNS(0); the DNS Flag Day 2020 value).
pub(super) const EDNS_UDP_SIZE: u16 = 1232;
/// Consecutive failures after which a server is marked down.
const FAILURES_BEFORE_DOWN: u32 = 3;
/// First backoff of a down server; doubles with every further failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(30);
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
    servers: Vec<Server>,
    timeout: Duration,
    attempts: usize,
    epoch: Instant,
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
    }
}

struct Server {
    addr: SocketAddr,
    conns: Vec<Arc<UdpConn>>,
    next_conn: AtomicUsize,
    health: Health,
    metrics: UpstreamMetrics,
}

/// One connected UDP socket and the queries in flight on it.
struct UdpConn {
    socket: UdpSocket,
    pending: Mutex<HashMap<u16, Pending>>,
    /// Distinguishes successive users of one query ID.
    next_token: AtomicU64,
    mismatched: Counter,
}

struct Pending {
    question: Query,
    token: u64,
    reply: oneshot::Sender<Reply>,
}

enum Reply {
    Answer(UpstreamAnswer),
    Truncated,
    Malformed(String),
    Unreachable,
}

/// Why one attempt failed.
enum AttemptError {
    Timeout,
    ServFail,
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
                let conn = Arc::new(UdpConn {
                    socket,
                    pending: Mutex::new(HashMap::new()),
                    next_token: AtomicU64::new(0),
                    mismatched: server_metrics.mismatched.clone(),
                });
                tasks.push(tokio::spawn(receive_loop(conn.clone())));
                conns.push(conn);
            }
            servers.push(Server {
                addr,
                conns,
                next_conn: AtomicUsize::new(0),
                health: Health::default(),
                metrics: server_metrics,
            });
        }
        Ok(Upstreams {
            servers,
            timeout: config.timeout,
            attempts: config.attempts.max(1),
            epoch: Instant::now(),
            tasks,
        })
    }

    fn now_micros(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_micros()).unwrap_or(u64::MAX)
    }

    /// Asks the upstreams `name qtype IN`, up to `attempts` times: servers that are up in
    /// preference order first, then those marked down (best effort). A timeout, SERVFAIL or
    /// network error moves on to the next server; timeouts and network errors count against
    /// the server's health, SERVFAIL does not (it is about the name). When the last attempt
    /// got SERVFAIL, that answer is returned; when no attempt got an answer, an error.
    pub async fn query(
        &self,
        name: &Name,
        qtype: RecordType,
    ) -> Result<UpstreamAnswer, ResolveError> {
        let question = Query::query(name.clone(), qtype);
        let now = self.now_micros();
        // Up servers in preference order, then down ones: no allocation for the usual 1-4.
        let mut order: smallvec_lite::Order = smallvec_lite::Order::default();
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
        let mut last = String::from("no attempt");
        let mut servfail = None;
        for attempt in 0..self.attempts {
            let server = &self.servers[order.get(attempt % order.len())];
            match self.attempt(server, &question).await {
                Ok(answer) => {
                    server.health.success();
                    return Ok(answer);
                }
                // The server is alive: SERVFAIL is about the name, not the server's health.
                Err(AttemptError::ServFail) => {
                    last = format!("{}: SERVFAIL", server.addr);
                    servfail = Some(server.addr);
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
            tracing::debug!(%name, %qtype, attempt, error = %last, "upstream attempt failed");
        }
        if servfail.is_some() {
            return Ok(UpstreamAnswer {
                rcode: ResponseCode::ServFail,
                answers: Vec::new(),
                authorities: Vec::new(),
            });
        }
        Err(ResolveError::Upstream {
            name: name.to_string(),
            qtype: qtype.to_string(),
            attempts: self.attempts,
            last,
        })
    }

    /// One attempt on one server: UDP, then TCP if the UDP answer is truncated.
    async fn attempt(
        &self,
        server: &Server,
        question: &Query,
    ) -> Result<UpstreamAnswer, AttemptError> {
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
                    Ok(Ok(message)) if message.metadata.truncation => {
                        m.error.inc();
                        return Err(AttemptError::Error("truncated answer over TCP".into()));
                    }
                    Ok(Ok(message)) => {
                        m.latency.observe(tcp_start.elapsed().as_secs_f64());
                        UpstreamAnswer {
                            rcode: message.metadata.response_code,
                            answers: message.answers,
                            authorities: message.authorities,
                        }
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
            Ok(Reply::Malformed(e)) => {
                m.error.inc();
                return Err(AttemptError::Error(format!("malformed answer: {e}")));
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
        if answer.rcode == ResponseCode::ServFail {
            m.servfail.inc();
            return Err(AttemptError::ServFail);
        }
        m.ok.inc();
        Ok(answer)
    }
}

enum ExchangeError {
    Timeout,
    Io(String),
}

impl UdpConn {
    fn pending(&self) -> MutexGuard<'_, HashMap<u16, Pending>> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Sends `question` with a fresh random ID and waits for the matching answer.
    async fn exchange(&self, question: &Query, timeout: Duration) -> Result<Reply, ExchangeError> {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token.fetch_add(1, Ordering::Relaxed);
        let id = {
            let mut pending = self.pending();
            let mut chosen = None;
            for _ in 0..ID_TRIES {
                let id: u16 = rand::random();
                if !pending.contains_key(&id) {
                    chosen = Some(id);
                    break;
                }
            }
            let Some(id) = chosen else {
                return Err(ExchangeError::Io("no free query ID on the socket".into()));
            };
            pending.insert(
                id,
                Pending {
                    question: question.clone(),
                    token,
                    reply: tx,
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
        let bytes = encode_query(id, question).map_err(ExchangeError::Io)?;
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
    fn dispatch(&self, bytes: &[u8]) {
        let mut decoder = BinDecoder::new(bytes);
        let Ok(header) = Header::read(&mut decoder) else {
            self.mismatched.inc();
            return;
        };
        if header.metadata.message_type != MessageType::Response {
            self.mismatched.inc();
            return;
        }
        let Ok(queries) = Message::read_queries(&mut decoder, usize::from(header.counts.queries))
        else {
            self.mismatched.inc();
            return;
        };
        let pending = {
            let mut map = self.pending();
            match map.get(&header.metadata.id) {
                Some(p) if queries.len() == 1 && same_question(&queries[0], &p.question) => {
                    map.remove(&header.metadata.id)
                }
                _ => None,
            }
        };
        let Some(pending) = pending else {
            tracing::debug!(
                id = header.metadata.id,
                "discarding an upstream answer that matches no query in flight"
            );
            self.mismatched.inc();
            return;
        };
        let reply = if header.metadata.truncation {
            Reply::Truncated
        } else {
            match read_sections(&mut decoder, &header) {
                Ok(answer) => Reply::Answer(answer),
                Err(e) => Reply::Malformed(e),
            }
        };
        let _ = pending.reply.send(reply);
    }

    /// An ICMP port unreachable fails every query in flight on the socket at once.
    fn fail_all(&self) {
        let drained: Vec<Pending> = self.pending().drain().map(|(_, p)| p).collect();
        for p in drained {
            let _ = p.reply.send(Reply::Unreachable);
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
        let mut pending = self.conn.pending();
        if pending.get(&self.id).is_some_and(|p| p.token == self.token) {
            pending.remove(&self.id);
        }
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

/// The rest of an answer whose header and question were read: its sections, and the rcode
/// with the EDNS extended bits.
fn read_sections(decoder: &mut BinDecoder<'_>, header: &Header) -> Result<UpstreamAnswer, String> {
    let op = header.metadata.op_code;
    let counts = &header.counts;
    let (answers, _, _) = Message::read_records(decoder, usize::from(counts.answers), false, op)
        .map_err(|e| e.to_string())?;
    let (authorities, _, _) =
        Message::read_records(decoder, usize::from(counts.authorities), false, op)
            .map_err(|e| e.to_string())?;
    let (_, edns, _) = Message::read_records(decoder, usize::from(counts.additionals), true, op)
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

/// Name (ASCII case-insensitively), type and class.
fn same_question(a: &Query, b: &Query) -> bool {
    a.query_type == b.query_type && a.query_class == b.query_class && a.name == b.name
}

fn encode_query(id: u16, question: &Query) -> Result<Vec<u8>, String> {
    let mut message = Message::new(id, MessageType::Query, OpCode::Query);
    message.metadata.recursion_desired = true;
    message.add_query(question.clone());
    let mut edns = Edns::new();
    edns.set_max_payload(EDNS_UDP_SIZE);
    message.set_edns(edns);
    message
        .to_vec()
        .map_err(|e| format!("encoding the query: {e}"))
}

/// One query over a new TCP connection (2-byte length framing). Answers with another ID or
/// question are counted and skipped. The caller bounds it with the timeout.
async fn tcp_exchange(
    addr: SocketAddr,
    question: &Query,
    mismatched: &Counter,
) -> Result<Message, String> {
    let id: u16 = rand::random();
    let bytes = encode_query(id, question)?;
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
        let message = Message::from_vec(&buf).map_err(|e| format!("malformed answer: {e}"))?;
        if message.metadata.id == id
            && message.metadata.message_type == MessageType::Response
            && message.queries.len() == 1
            && same_question(&message.queries[0], question)
        {
            return Ok(message);
        }
        mismatched.inc();
    }
}

/// A server's health: consecutive failures and, once down, until when it is skipped.
#[derive(Default)]
struct Health {
    failures: AtomicU32,
    /// Microseconds since the resolver's epoch; 0 = up.
    down_until: AtomicU64,
}

impl Health {
    fn is_up(&self, now: u64) -> bool {
        now >= self.down_until.load(Ordering::Relaxed)
    }

    fn success(&self) {
        // Loads first: the usual case writes nothing, so a busy server's line stays shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    fn failure(&self, now: u64) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= FAILURES_BEFORE_DOWN {
            let doublings = (failures - FAILURES_BEFORE_DOWN).min(16);
            let backoff = BACKOFF_BASE
                .saturating_mul(1u32 << doublings)
                .min(BACKOFF_MAX);
            let backoff = u64::try_from(backoff.as_micros()).unwrap_or(u64::MAX);
            self.down_until
                .store(now.saturating_add(backoff).max(1), Ordering::Relaxed);
        }
    }
}

/// A fixed-capacity index list, so the usual query allocates nothing for server order.
mod smallvec_lite {
    const INLINE: usize = 8;

    #[derive(Default)]
    pub(super) struct Order {
        inline: [usize; INLINE],
        len: usize,
        spill: Vec<usize>,
    }

    impl Order {
        pub fn push(&mut self, i: usize) {
            if self.len < INLINE {
                self.inline[self.len] = i;
            } else {
                self.spill.push(i);
            }
            self.len += 1;
        }

        pub fn len(&self) -> usize {
            self.len
        }

        pub fn get(&self, i: usize) -> usize {
            if i < INLINE {
                self.inline[i]
            } else {
                self.spill[i - INLINE]
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_goes_down_after_three_failures_and_backs_off() {
        let h = Health::default();
        h.failure(1_000);
        h.failure(1_000);
        assert!(h.is_up(1_000));
        h.failure(1_000);
        assert!(!h.is_up(1_000));
        assert!(h.is_up(1_000 + 500_000));
        h.failure(600_000);
        assert!(!h.is_up(600_000 + 999_999));
        assert!(h.is_up(600_000 + 1_000_000));
        h.success();
        assert!(h.is_up(0));
        for _ in 0..100 {
            h.failure(0);
        }
        assert!(h.is_up(30_000_000));
    }
}
