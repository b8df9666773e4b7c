//! The resolving half of the gateway: upstream forwarding, a shared answer cache and CNAME
//! chasing.
//!
//! [`Resolver::resolve`] answers one question (class IN) from the cache or the upstreams:
//!
//! - **Upstreams**: a few long-lived *connected* UDP sockets per server (OS-chosen source
//!   ports), each with one receive task that hands answers to the waiting query by ID. IDs are
//!   random and unique among the queries in flight on a socket; an answer whose ID is unknown
//!   or whose question (name case-insensitively, type, class) differs is discarded and
//!   counted, and the query keeps waiting. Queries carry RD and EDNS(0) with a 1232-byte UDP
//!   size. A truncated (TC) answer is asked again over a new TCP connection to the same
//!   server. A timeout, SERVFAIL or network error moves to the next server, within
//!   `attempts`. After 3 consecutive failures (timeouts, network errors; SERVFAIL is about
//!   the name and does not count) a server is skipped (while another is up) for a backoff
//!   that starts at 0.5 s and doubles up to 30 s; one answer resets it. When every server is
//!   down they are still tried.
//! - **Cache**: sharded and bounded (`max_entries`, oldest entries evicted first), keyed by
//!   (name, type), names compared case-insensitively. A hit returns the records with their TTL
//!   reduced by the whole seconds spent in the cache; an entry lives as long as its smallest
//!   TTL, so a hit never returns a TTL of 0. Positive TTLs are capped at `max_ttl`; answers
//!   with a TTL of 0 are not cached. NXDOMAIN and NODATA are cached per RFC 2308 for
//!   min(SOA TTL, SOA MINIMUM, `max_negative_ttl`) when the upstream sent the SOA (not
//!   cached otherwise); SERVFAIL, REFUSED and other errors are never cached.
//! - **CNAME chasing**: for any type but CNAME and ANY, when the answer's chain from the asked
//!   name ends in a CNAME whose target has no records in the answer, the target is asked
//!   (from the cache or upstream) and its answer appended, up to [`MAX_CNAME_HOPS`] times,
//!   stopping at a loop. The rcode and the authority section are the last link's (RFC 6604).
//!   The whole chain is cached under the original question. The answer section is reduced
//!   to the chain (records owned by the asked name or a CNAME target on the chain, in chain
//!   order); the authority section to the SOA of a negative answer.
//! - Concurrent identical misses are coalesced: one upstream exchange, the other callers wait
//!   for its result. Relayed misses of the wire path too: an identical relayed question in
//!   flight on the same server is joined (see the `relay` module).
//!
//! # Metrics
//!
//! Registered by [`ResolverMetrics::register`] (label `pool` is the name given to
//! [`Resolver::new`], `upstream` the server's `ip:port`):
//!
//! | name | type | labels | meaning |
//! |---|---|---|---|
//! | `dnsfence_gateway_cache_hits_total` | counter | pool | questions answered from the cache |
//! | `dnsfence_gateway_cache_misses_total` | counter | pool | questions not in the cache (resolved upstream, or joined an identical query in flight) |
//! | `dnsfence_gateway_cache_entries` | gauge | pool | entries held by the cache |
//! | `dnsfence_gateway_upstream_queries_total` | counter | pool, upstream, result | exchanges with an upstream; result = `ok` (an answer other than SERVFAIL), `timeout`, `servfail`, `error` (network error, ICMP unreachable, malformed answer), `truncated` (a TC answer over UDP, followed by a TCP exchange counted on its own) |
//! | `dnsfence_gateway_upstream_latency_seconds` | histogram | pool, upstream | time from sending a query to its answer (UDP, or TCP including the connection), 50 µs to 5 s buckets |
//! | `dnsfence_gateway_upstream_mismatched_answers_total` | counter | pool, upstream | answers discarded because their ID or question matched no query in flight |
//! | `dnsfence_gateway_upstream_joined_queries_total` | counter | pool, upstream | relayed UDP misses that joined an identical query in flight to that upstream instead of asking it again |

mod cache;
mod error;
mod health;
mod metrics;
mod relay;
mod udp_conn;
mod upstream;

pub use error::ResolveError;
pub use metrics::ResolverMetrics;

use std::{
    net::SocketAddr,
    sync::{Arc, Mutex, MutexGuard, PoisonError},
    time::{Duration, Instant},
};

use hickory_proto::{
    op::ResponseCode,
    rr::{Name, RData, Record, RecordType},
};
use prometheus_client::registry::Registry;
use tokio::sync::watch;

use cache::{Cache, Entry, Key, KeyMap};
use metrics::PoolMetrics;
pub use relay::Continuation;

/// Receive buffer asked for on the UDP sockets (the kernel caps it at `net.core.rmem_max`).
const UDP_RECEIVE_BUFFER: usize = 4 << 20;

/// A UDP socket's receive buffer made room for a burst: at the default (about 200 KiB) a few
/// hundred queued datagrams overflow it, and a dropped upstream answer costs its query a
/// whole upstream timeout. Best effort: the default stays if the kernel refuses.
pub fn enlarge_receive_buffer(socket: &socket2::Socket) {
    if let Err(error) = socket.set_recv_buffer_size(UDP_RECEIVE_BUFFER) {
        tracing::debug!(%error, "enlarging a UDP receive buffer");
    }
}
pub use upstream::Question;
use upstream::{UpstreamAnswer, Upstreams};

/// How many times a CNAME chain is followed with a further query.
pub const MAX_CNAME_HOPS: usize = 8;

/// Where and how to forward questions.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UpstreamConfig {
    /// Upstream resolvers, in preference order.
    pub servers: Vec<SocketAddr>,
    /// Timeout of one attempt (default 1 s).
    pub timeout: Duration,
    /// Attempts per question across the servers (default 3).
    pub attempts: usize,
    /// Long-lived UDP sockets per server (default 4).
    pub sockets_per_server: usize,
}

impl Default for UpstreamConfig {
    fn default() -> Self {
        UpstreamConfig {
            servers: Vec::new(),
            timeout: Duration::from_secs(1),
            attempts: 3,
            sockets_per_server: 4,
        }
    }
}

impl UpstreamConfig {
    /// The defaults with these servers.
    pub fn new(servers: Vec<SocketAddr>) -> UpstreamConfig {
        UpstreamConfig {
            servers,
            ..UpstreamConfig::default()
        }
    }
}

/// The answer cache's bounds.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct CacheConfig {
    /// Most entries held (default 100,000); 0 disables the cache.
    pub max_entries: usize,
    /// Cap on the TTL of cached positive answers (default 1 day).
    pub max_ttl: Duration,
    /// Cap on the TTL of cached negative answers (RFC 2308; default 1 h).
    pub max_negative_ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        CacheConfig {
            max_entries: 100_000,
            max_ttl: Duration::from_secs(86_400),
            max_negative_ttl: Duration::from_secs(3_600),
        }
    }
}

/// The answer to one question.
#[derive(Debug, Clone, PartialEq)]
pub struct Resolved {
    /// NoError, NXDomain, or whatever the upstream said (e.g. Refused, or ServFail when every
    /// attempt ended in SERVFAIL).
    pub rcode: ResponseCode,
    /// The chain in order (CNAMEs, then the records of the asked type), TTLs already reduced
    /// by the time spent in the cache.
    pub answers: Vec<Record>,
    /// The SOA of a negative answer (TTL reduced too); empty otherwise.
    pub authority: Vec<Record>,
    /// Whether the answer came from the cache.
    pub from_cache: bool,
}

/// What one caller waiting on another's identical query gets.
type Shared = Option<Result<Arc<Entry>, ResolveError>>;

/// A forwarding, caching resolver. Cheap to share: use it as `Arc<Resolver>`. Dropping it
/// stops its receive tasks.
#[derive(Debug)]
pub struct Resolver {
    pool: String,
    upstreams: Upstreams,
    cache: Cache,
    inflight: Mutex<KeyMap<watch::Receiver<Shared>>>,
    metrics: PoolMetrics,
    families: ResolverMetrics,
    max_ttl: u32,
    max_negative_ttl: u32,
}

impl Resolver {
    /// Creates the upstream sockets and registers the metric families in `registry`.
    /// `pool` names this resolver in metrics (e.g. "upstream", "cluster").
    ///
    /// Register the families once per registry: for a second resolver reporting into the same
    /// registry, use [`Resolver::with_metrics`] with [`Resolver::metrics`] of the first.
    pub async fn new(
        pool: &str,
        upstreams: UpstreamConfig,
        cache: CacheConfig,
        registry: &mut Registry,
    ) -> Result<Resolver, ResolveError> {
        let families = ResolverMetrics::register(registry);
        Resolver::with_metrics(pool, upstreams, cache, &families).await
    }

    /// Like [`Resolver::new`], reporting into already registered families.
    pub async fn with_metrics(
        pool: &str,
        upstreams: UpstreamConfig,
        cache: CacheConfig,
        metrics: &ResolverMetrics,
    ) -> Result<Resolver, ResolveError> {
        let upstream = Upstreams::new(pool, &upstreams, metrics).await?;
        let pool_metrics = metrics.pool(pool);
        let secs = |d: Duration| u32::try_from(d.as_secs()).unwrap_or(u32::MAX);
        Ok(Resolver {
            pool: pool.to_owned(),
            upstreams: upstream,
            cache: Cache::new(cache.max_entries, pool_metrics.cache_entries.clone()),
            inflight: Mutex::new(KeyMap::default()),
            metrics: pool_metrics,
            families: metrics.clone(),
            max_ttl: secs(cache.max_ttl),
            max_negative_ttl: secs(cache.max_negative_ttl),
        })
    }

    /// The metric families this resolver reports into (to share with another resolver).
    pub fn metrics(&self) -> &ResolverMetrics {
        &self.families
    }

    /// The pool name given at creation.
    pub fn pool(&self) -> &str {
        &self.pool
    }

    /// Answers one question (class IN) from the cache or the upstreams. For every type but
    /// CNAME and ANY, when the answer is a CNAME chain that does not end in records of the
    /// asked type, it follows the chain itself (queries the last target, up to
    /// [`MAX_CNAME_HOPS`] hops, loop-safe), so the result ends in the final records whenever
    /// they exist.
    ///
    /// Errors only when no upstream answered at all; upstream rcodes (NXDOMAIN, REFUSED,
    /// SERVFAIL after every attempt) come back in [`Resolved::rcode`].
    #[tracing::instrument(skip_all, level = "debug", fields(pool = %self.pool, %name, %qtype))]
    pub async fn resolve(&self, name: &Name, qtype: RecordType) -> Result<Resolved, ResolveError> {
        let key = Key::new(name, qtype);
        let now = Instant::now();
        if let Some(entry) = self.cache.get(&key, now) {
            self.metrics.cache_hits.inc();
            return Ok(entry.resolved(now, true));
        }
        self.metrics.cache_misses.inc();
        let entry = self.resolve_coalesced(key).await?;
        Ok(entry.resolved(Instant::now(), false))
    }

    /// Forwards `question` as is and returns the upstream's answer as it came (whole message;
    /// SERVFAIL after every attempt comes back as that answer). No record cache, no CNAME
    /// chasing, no coalescing: for callers that read the answer on the wire and cache it
    /// themselves, and take [`Resolver::resolve`] for answers they cannot use as they are.
    /// Counted as a cache miss.
    pub async fn forward_wire(&self, question: Question) -> Result<Vec<u8>, ResolveError> {
        self.metrics.cache_misses.inc();
        self.upstreams.query_wire(question, 0).await
    }

    /// [`Resolver::forward_wire`] without a task for its first attempt: `then` gets the
    /// answer, or `None` when the caller should go on with [`Resolver::forward_wire_after_relay`]
    /// (see the `relay` module). Counted as a cache miss.
    pub fn relay_wire(&self, question: Question, then: Continuation) {
        self.metrics.cache_misses.inc();
        self.upstreams.relay(question, then);
    }

    /// The attempts of [`Resolver::forward_wire`] after a relayed first one that brought no
    /// answer: `--upstream-attempts` counts the relayed one too.
    pub async fn forward_wire_after_relay(
        &self,
        question: Question,
    ) -> Result<Vec<u8>, ResolveError> {
        self.upstreams.query_wire(question, 1).await
    }

    /// The TTL caps of cached answers, in seconds: (positive, negative).
    pub fn ttl_caps(&self) -> (u32, u32) {
        (self.max_ttl, self.max_negative_ttl)
    }

    fn inflight(&self) -> MutexGuard<'_, KeyMap<watch::Receiver<Shared>>> {
        self.inflight.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// One upstream resolution per key at a time: the first caller leads, the others wait for
    /// its result (and take over if it is cancelled).
    async fn resolve_coalesced(&self, key: Key) -> Result<Arc<Entry>, ResolveError> {
        loop {
            let leader = {
                let mut inflight = self.inflight();
                match inflight.get(&key) {
                    Some(rx) => Err(rx.clone()),
                    None => {
                        let (tx, rx) = watch::channel(None);
                        inflight.insert(key.clone(), rx);
                        Ok(tx)
                    }
                }
            };
            match leader {
                Err(mut rx) => {
                    if let Ok(shared) = rx.wait_for(Option::is_some).await
                        && let Some(result) = shared.clone()
                    {
                        return result;
                    }
                    // The leader was cancelled before it had a result: try again.
                }
                Ok(tx) => {
                    let _guard = InflightGuard {
                        resolver: self,
                        key: &key,
                    };
                    // Another leader may have filled the cache just before we took over.
                    let result = match self.cache.get(&key, Instant::now()) {
                        Some(entry) => Ok(entry),
                        None => self.compute(&key).await.map(Arc::new),
                    };
                    if let Ok(entry) = &result {
                        self.cache.insert(key.clone(), entry.clone());
                    }
                    tx.send_replace(Some(result.clone()));
                    return result;
                }
            }
        }
    }

    /// Asks the upstreams and chases the CNAME chain.
    async fn compute(&self, key: &Key) -> Result<Entry, ResolveError> {
        let qtype = key.qtype;
        let first = self.upstreams.query(&key.name, qtype).await?;
        let (mut answers, mut end) = chain_of(&key.name, qtype, &first.answers, &first.authorities);
        let mut rcode = first.rcode;
        let mut authority = first.authorities;
        let mut asked: Vec<Name> = vec![key.name.clone()];
        while let ChainEnd::Dangling(target) = &end {
            if rcode != ResponseCode::NoError
                || asked.len() > MAX_CNAME_HOPS
                || asked.contains(target)
            {
                break;
            }
            let target = target.clone();
            asked.push(target.clone());
            let sub_key = Key::new(&target, qtype);
            let sub = match self.cache.get(&sub_key, Instant::now()) {
                Some(entry) => entry,
                None => {
                    let answer = self.upstreams.query(&target, qtype).await?;
                    let entry = Arc::new(self.entry(&target, qtype, answer, Instant::now()));
                    // Only an answer that is complete for its own name may serve that name.
                    self.cache.insert(sub_key, entry.clone());
                    entry
                }
            };
            let (_, sub_end) = chain_of(&target, qtype, &sub.answers, &sub.authority);
            let aged = sub.resolved(Instant::now(), true);
            answers.extend(aged.answers);
            rcode = aged.rcode;
            authority = aged.authority;
            end = sub_end;
        }
        Ok(self.finish(rcode, answers, authority, &end, Instant::now()))
    }

    /// The entry for a single upstream answer (no chasing).
    fn entry(&self, name: &Name, qtype: RecordType, answer: UpstreamAnswer, now: Instant) -> Entry {
        let (answers, end) = chain_of(name, qtype, &answer.answers, &answer.authorities);
        self.finish(answer.rcode, answers, answer.authorities, &end, now)
    }

    /// Caps TTLs, keeps the SOA of a negative answer, and works out how long it may be cached.
    fn finish(
        &self,
        rcode: ResponseCode,
        mut answers: Vec<Record>,
        authority: Vec<Record>,
        end: &ChainEnd,
        now: Instant,
    ) -> Entry {
        for record in &mut answers {
            record.ttl = record.ttl.min(self.max_ttl);
        }
        let chain_ttl = answers.iter().map(|r| r.ttl).min();
        let cacheable_rcode = matches!(rcode, ResponseCode::NoError | ResponseCode::NXDomain);
        let (authority, lifetime) = match end {
            ChainEnd::Data if rcode == ResponseCode::NoError => {
                (Vec::new(), chain_ttl.unwrap_or(0))
            }
            ChainEnd::Negative if cacheable_rcode => match negative_soa(authority) {
                Some(mut soa) => {
                    let negative_ttl = match &soa.data {
                        RData::SOA(data) => soa.ttl.min(data.minimum),
                        _ => 0,
                    }
                    .min(self.max_negative_ttl);
                    soa.ttl = negative_ttl;
                    let lifetime = chain_ttl.map_or(negative_ttl, |t| t.min(negative_ttl));
                    (vec![soa], lifetime)
                }
                None => (Vec::new(), 0),
            },
            // Errors keep the upstream's SOA if any (not cached).
            _ => (negative_soa(authority).into_iter().collect(), 0),
        };
        Entry {
            rcode,
            answers,
            authority,
            stored: now,
            lifetime: Duration::from_secs(u64::from(lifetime)),
        }
    }
}

/// Removes the leader's in-flight slot when it finishes or is cancelled.
struct InflightGuard<'a> {
    resolver: &'a Resolver,
    key: &'a Key,
}

impl Drop for InflightGuard<'_> {
    fn drop(&mut self) {
        self.resolver.inflight().remove(self.key);
    }
}

/// How an answer's chain from the asked name ends.
#[derive(Debug, Clone, PartialEq, Eq)]
enum ChainEnd {
    /// In records of the asked type.
    Data,
    /// In nothing: the asked name itself has no records of the type (NXDOMAIN or NODATA), or
    /// the chain's last target does (after chasing).
    Negative,
    /// In a CNAME whose target the answer says nothing about: to be chased.
    Dangling(Name),
}

/// [`follow_chain`], where a chain that leaves the answer beside an SOA is negative: the
/// upstream followed it and found nothing (NXDOMAIN or NODATA at the last target, RFC 2308
/// section 2.1 and 2.2), so there is nothing to chase.
fn chain_of(
    name: &Name,
    qtype: RecordType,
    answers: &[Record],
    authority: &[Record],
) -> (Vec<Record>, ChainEnd) {
    let (chain, end) = follow_chain(name, qtype, answers);
    match end {
        ChainEnd::Dangling(_) if authority.iter().any(|r| r.record_type() == RecordType::SOA) => {
            (chain, ChainEnd::Negative)
        }
        end => (chain, end),
    }
}

/// The records of the chain from `name` in `records`, in chain order, and how it ends.
fn follow_chain(name: &Name, qtype: RecordType, records: &[Record]) -> (Vec<Record>, ChainEnd) {
    if matches!(qtype, RecordType::ANY | RecordType::CNAME) {
        let chain: Vec<Record> = records
            .iter()
            .filter(|r| r.name == *name && (qtype == RecordType::ANY || r.record_type() == qtype))
            .cloned()
            .collect();
        let end = if chain.is_empty() {
            ChainEnd::Negative
        } else {
            ChainEnd::Data
        };
        return (chain, end);
    }
    let mut chain = Vec::new();
    let mut current = name.clone();
    // Each round consumes a CNAME of the answer, so this many rounds always suffice.
    for _ in 0..=records.len() {
        let start = chain.len();
        chain.extend(
            records
                .iter()
                .filter(|r| r.record_type() == qtype && r.name == current)
                .cloned(),
        );
        if chain.len() > start {
            return (chain, ChainEnd::Data);
        }
        let cname = records.iter().find_map(|r| match &r.data {
            RData::CNAME(target) if r.name == current => Some((r, target.0.clone())),
            _ => None,
        });
        let Some((record, target)) = cname else {
            break;
        };
        let looped = chain.iter().any(|r: &Record| r.name == target);
        chain.push(record.clone());
        current = target;
        if looped || current == *name {
            return (chain, ChainEnd::Dangling(current));
        }
    }
    let end = if current == *name {
        ChainEnd::Negative
    } else {
        ChainEnd::Dangling(current)
    };
    (chain, end)
}

/// The SOA of a negative answer's authority section.
fn negative_soa(authority: Vec<Record>) -> Option<Record> {
    authority
        .into_iter()
        .find(|r| r.record_type() == RecordType::SOA)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use std::net::Ipv4Addr;

    use hickory_proto::rr::rdata::{A, CNAME};

    use super::*;

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn a(name: &str, ttl: u32) -> Record {
        Record::from_rdata(n(name), ttl, RData::A(A(Ipv4Addr::LOCALHOST)))
    }

    fn cname(name: &str, target: &str) -> Record {
        Record::from_rdata(n(name), 60, RData::CNAME(CNAME(n(target))))
    }

    #[test]
    fn chains_are_followed_in_order_and_filtered() {
        let records = vec![
            a("c.test.", 5),
            cname("b.test.", "c.test."),
            a("unrelated.test.", 5),
            cname("A.test.", "b.test."),
        ];
        let (chain, end) = follow_chain(&n("a.test."), RecordType::A, &records);
        assert_eq!(end, ChainEnd::Data);
        let owners: Vec<String> = chain.iter().map(|r| r.name.to_ascii()).collect();
        assert_eq!(owners, ["A.test.", "b.test.", "c.test."]);
    }

    #[test]
    fn dangling_negative_and_loops() {
        let records = vec![cname("a.test.", "b.other.")];
        let (chain, end) = follow_chain(&n("a.test."), RecordType::A, &records);
        assert_eq!(chain.len(), 1);
        assert_eq!(end, ChainEnd::Dangling(n("b.other.")));

        let (chain, end) = follow_chain(&n("a.test."), RecordType::A, &[]);
        assert!(chain.is_empty());
        assert_eq!(end, ChainEnd::Negative);

        let records = vec![cname("a.test.", "b.test."), cname("b.test.", "a.test.")];
        let (chain, end) = follow_chain(&n("a.test."), RecordType::A, &records);
        assert_eq!(chain.len(), 2);
        assert_eq!(end, ChainEnd::Dangling(n("a.test.")));

        let (chain, end) = follow_chain(&n("a.test."), RecordType::CNAME, &records);
        assert_eq!(chain.len(), 1);
        assert_eq!(end, ChainEnd::Data);
    }
}
