//! One query, start to end: who asks, may they, resolve, grant, answer.
//!
//! Both transports end here: the UDP loop with the datagram, the TCP listener (hickory-server)
//! with the framed message. The handler works on hickory-proto messages and returns the
//! encoded answer, already cut to the size the transport allows.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnsfence_api::Grant;
use dnsfence_policy::allowlist::{Allowlist, DefaultPolicy, Destination};
use dnsfence_policy::domain::normalize_name;
use hickory_proto::op::{Edns, Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use hickory_proto::rr::{DNSClass, RData, Record, RecordType};
use tracing::{debug, info, instrument, warn};

use crate::config::{AckTimeoutAction, Config, DeniedRcode, UnknownSource};
use crate::fast::{AnswerCache, AnswerKey, CachedAnswer, GrantTemplate, Verdict};
use crate::grants::{Delivery, GrantHub};
use crate::identity::{Identities, Lookup, PodIdentity};
use crate::metrics::{GatewayMetrics, QueryLabels, QueryVerdict, ReasonLabels, Transport};
use crate::ratelimit::LogLimiter;
use crate::resolve::Resolver;
use crate::wire::{PlainQuery, parse_plain_query};

/// RFC 8914 info codes.
const EDE_BLOCKED: u16 = 15;
const EDE_PROHIBITED: u16 = 18;
const EDE_NOT_READY: u16 = 14;

/// The settings the query path reads, taken from [`Config`] once.
#[derive(Debug, Clone)]
pub struct Settings {
    pub cluster_domain: String,
    pub default_policy: DefaultPolicy,
    pub unknown_source: UnknownSource,
    pub denied_rcode: DeniedRcode,
    pub grant_min_ttl: Duration,
    pub grant_max_ttl: Duration,
    pub grant_ack_timeout: Duration,
    pub ack_timeout_action: AckTimeoutAction,
    pub max_udp_payload: u16,
    pub answer_cache_size: usize,
}

impl Settings {
    pub fn from_config(config: &Config) -> Settings {
        Settings {
            cluster_domain: normalize_name(&config.cluster_domain),
            default_policy: config.default_policy,
            unknown_source: config.unknown_source,
            denied_rcode: config.denied_rcode,
            grant_min_ttl: config.grant_min_ttl,
            grant_max_ttl: config.grant_max_ttl,
            grant_ack_timeout: config.grant_ack_timeout,
            ack_timeout_action: config.ack_timeout_action,
            max_udp_payload: config.max_udp_payload,
            answer_cache_size: config.cache_size,
        }
    }
}

#[derive(Debug)]
pub struct Gateway {
    pub settings: Settings,
    pub identities: Arc<Identities>,
    pub resolver: Arc<Resolver>,
    pub cluster_resolver: Arc<Resolver>,
    pub hub: Arc<GrantHub>,
    pub metrics: Arc<GatewayMetrics>,
    answers: AnswerCache,
    denied_log: LogLimiter,
}

/// The pod address a grant for `dest` belongs to: a dual-stack pod asks over one family
/// and connects over the other, so the grant goes to its address of the destination's family.
fn grant_source(pod: &PodIdentity, src: IpAddr, dest: IpAddr) -> IpAddr {
    if src.is_ipv4() == dest.is_ipv4() {
        return src;
    }
    pod.binding
        .ips
        .iter()
        .copied()
        .find(|ip| ip.is_ipv4() == dest.is_ipv4())
        .unwrap_or(src)
}

/// Where the fast path got to without waiting.
enum FastStep {
    Answer(Vec<u8>),
    /// Cached and allowed, but these grants must reach the enforcer first.
    Grant {
        cached: Arc<CachedAnswer>,
        pod: PodIdentity,
        grants: Vec<Grant>,
    },
    Miss,
}

/// SERVFAIL for a query the fast path could parse: the header with QR and RCODE set, the
/// question, nothing else.
fn servfail_for(raw: &[u8]) -> Vec<u8> {
    let end = parse_plain_query(raw)
        .map_or(12, |q| q.question_end)
        .min(raw.len());
    let mut out = raw[..end].to_vec();
    out[2] |= 0x80;
    out[3] = (out[3] & 0xf0) | 0x80 | 0x02;
    // One question, no records (the query's OPT record is left out).
    out[6..12].fill(0);
    out
}

/// What the query path decided, before encoding.
struct Answer {
    message: Message,
    verdict: QueryVerdict,
    /// An allowed name's answer the fast path may re-send: the normalized name.
    remember: Option<String>,
}

impl Gateway {
    pub fn new(
        settings: Settings,
        identities: Arc<Identities>,
        resolver: Arc<Resolver>,
        cluster_resolver: Arc<Resolver>,
        hub: Arc<GrantHub>,
        metrics: Arc<GatewayMetrics>,
    ) -> Gateway {
        Gateway {
            answers: AnswerCache::new(settings.answer_cache_size),
            settings,
            identities,
            resolver,
            cluster_resolver,
            hub,
            metrics,
            denied_log: LogLimiter::new(20),
        }
    }

    /// Answers one raw query. `None`: nothing to send (not a query at all, or a response).
    pub async fn handle(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        let started = Instant::now();
        let plain = parse_plain_query(raw);
        if let Some(plain) = &plain
            && let Some(bytes) = self.fast(raw, plain, src.ip(), transport, started).await
        {
            let qtype = RecordType::from(plain.qtype);
            self.count(QueryVerdict::Allowed, qtype, transport, started);
            return Some(bytes);
        }
        let query = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(error) => {
                self.metrics.malformed_packets.inc();
                debug!(%src, %error, "malformed query");
                return format_error_from_header(raw);
            }
        };
        if query.metadata.message_type == MessageType::Response {
            self.metrics.malformed_packets.inc();
            return None;
        }
        let qtype = query
            .queries
            .first()
            .map_or(RecordType::Unknown(0), |q| q.query_type());
        let cacheable = plain.as_ref().map(|p| (raw, p));
        let answer = self.answer(&query, src.ip(), cacheable).await;
        let limit = match transport {
            Transport::Tcp => u16::MAX,
            Transport::Udp => udp_limit(&query, self.settings.max_udp_payload),
        };
        let bytes = encode(&answer.message, limit);
        if let (Some(name), Some(plain), Some(wire)) = (&answer.remember, &plain, &bytes) {
            self.remember(raw, plain, &answer.message, wire, name);
        }
        self.count(answer.verdict, qtype, transport, started);
        bytes
    }

    fn count(
        &self,
        verdict: QueryVerdict,
        qtype: RecordType,
        transport: Transport,
        started: Instant,
    ) {
        self.metrics
            .queries
            .get_or_create(&QueryLabels {
                verdict,
                qtype: type_label(qtype),
                transport,
            })
            .inc();
        self.metrics
            .query_duration
            .observe(started.elapsed().as_secs_f64());
    }

    /// The fast path without waiting: an answer from the encoded-answer cache when the pod
    /// may have the name and its enforcer already holds the grants. `None`: take
    /// [`Gateway::handle`].
    pub fn answer_now(&self, raw: &[u8], src: SocketAddr, transport: Transport) -> Option<Vec<u8>> {
        let started = Instant::now();
        let query = parse_plain_query(raw)?;
        match self.fast_step(raw, &query, src.ip(), transport, started) {
            FastStep::Answer(bytes) => {
                self.count(
                    QueryVerdict::Allowed,
                    RecordType::from(query.qtype),
                    transport,
                    started,
                );
                Some(bytes)
            }
            FastStep::Grant { .. } | FastStep::Miss => None,
        }
    }

    fn fast_step(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        transport: Transport,
        now: Instant,
    ) -> FastStep {
        if !self.identities.is_ready() {
            return FastStep::Miss;
        }
        let Some(key) = AnswerKey::of(raw, query) else {
            return FastStep::Miss;
        };
        let Some(cached) = self.answers.get(&key, now) else {
            return FastStep::Miss;
        };
        let limit = match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => usize::from(match query.edns_payload {
                Some(p) => p.clamp(512, self.settings.max_udp_payload),
                None => 512,
            }),
        };
        if cached.len() > limit {
            return FastStep::Miss;
        }
        let Lookup::Pod(pod) = self.identities.lookup(src) else {
            return FastStep::Miss;
        };
        let verdict = cached.verdict(pod.allowlist.as_ref(), || {
            self.verdict_for(pod.allowlist.as_deref(), &cached)
        });
        if !verdict.allowed {
            return FastStep::Miss;
        }
        let mut ttl_cap = self.settings.grant_max_ttl;
        if pod.allowlist.is_some() && !verdict.grants.is_empty() {
            let age = cached.age(now);
            let wanted = verdict.grants.iter().map(|t| {
                (
                    grant_source(&pod, src, t.ip),
                    t.ip,
                    t.ports.as_slice(),
                    self.lifetime(t.ttl.saturating_sub(age)),
                )
            });
            match self.hub.already_held(pod.node(), wanted) {
                Some(remaining) => {
                    ttl_cap = ttl_cap.min(remaining);
                    self.metrics
                        .grants_deduplicated
                        .inc_by(verdict.grants.len() as u64);
                }
                None => {
                    let grants = verdict
                        .grants
                        .iter()
                        .map(|t| Grant {
                            pod_ip: grant_source(&pod, src, t.ip),
                            destination_ip: t.ip,
                            ports: t.ports.clone(),
                            lifetime: self.lifetime(t.ttl.saturating_sub(age)),
                            name: cached.name.clone(),
                        })
                        .collect();
                    return FastStep::Grant {
                        cached,
                        pod,
                        grants,
                    };
                }
            }
        }
        let cap = u32::try_from(ttl_cap.as_secs()).unwrap_or(u32::MAX);
        FastStep::Answer(cached.answer(raw, query, now, cap))
    }

    /// The fast path, waiting for the enforcer's ack when grants must be sent.
    async fn fast(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        transport: Transport,
        now: Instant,
    ) -> Option<Vec<u8>> {
        let (cached, pod, grants) = match self.fast_step(raw, query, src, transport, now) {
            FastStep::Answer(bytes) => return Some(bytes),
            FastStep::Miss => return None,
            FastStep::Grant {
                cached,
                pod,
                grants,
            } => (cached, pod, grants),
        };
        let outcome = self
            .hub
            .grant(pod.node(), grants, self.settings.grant_ack_timeout)
            .await;
        if let Delivery::Failed(reason) = outcome.delivery {
            self.metrics
                .grant_ack_failures
                .get_or_create(&ReasonLabels { reason })
                .inc();
            if self.settings.ack_timeout_action == AckTimeoutAction::Servfail {
                return Some(servfail_for(raw));
            }
        }
        let ttl_cap = outcome.lifetime.map_or(self.settings.grant_max_ttl, |l| {
            l.min(self.settings.grant_max_ttl)
        });
        let cap = u32::try_from(ttl_cap.as_secs()).unwrap_or(u32::MAX);
        Some(cached.answer(raw, query, Instant::now(), cap))
    }

    /// What an allowlist (`None`: a pod no policy selects) says about a cached name.
    fn verdict_for(&self, allowlist: Option<&Allowlist>, cached: &CachedAnswer) -> Verdict {
        let empty;
        let allowlist = match allowlist {
            Some(a) => a,
            None => {
                empty = Allowlist::new(Vec::new());
                &empty
            }
        };
        let default = self.settings.default_policy;
        if !allowlist.decide_name(&cached.name, default).is_allowed() {
            return Verdict {
                allowed: false,
                grants: Arc::from(Vec::new()),
            };
        }
        let grants: Vec<GrantTemplate> = cached
            .addresses
            .iter()
            .filter_map(|&(ip, ttl)| {
                let ports = allowlist
                    .allowed_ports(Destination::Resolved(&cached.name, ip), default)
                    .allowed
                    .ranges();
                (!ports.is_empty()).then_some(GrantTemplate { ip, ports, ttl })
            })
            .collect();
        Verdict {
            allowed: true,
            grants: Arc::from(grants),
        }
    }

    fn lifetime(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl))
            .clamp(self.settings.grant_min_ttl, self.settings.grant_max_ttl)
    }

    #[instrument(level = "debug", skip_all, fields(%src))]
    async fn answer(
        &self,
        query: &Message,
        src: IpAddr,
        cacheable: Option<(&[u8], &PlainQuery)>,
    ) -> Answer {
        if query.metadata.op_code != OpCode::Query {
            return plain(query, ResponseCode::NotImp, QueryVerdict::Invalid);
        }
        let [question] = query.queries.as_slice() else {
            return plain(query, ResponseCode::FormErr, QueryVerdict::Invalid);
        };
        if question.query_class() != DNSClass::IN {
            return plain(query, ResponseCode::Refused, QueryVerdict::Invalid);
        }
        if !self.identities.is_ready() {
            let mut a = plain(query, ResponseCode::ServFail, QueryVerdict::NotReady);
            add_ede(
                &mut a.message,
                EDE_NOT_READY,
                "gateway has not caught up with the policy store",
            );
            return a;
        }
        let name = normalize_name(&question.name().to_ascii());
        let qtype = question.query_type();

        if self.is_cluster_name(&name) {
            return self
                .forward(query, &self.cluster_resolver, QueryVerdict::Cluster)
                .await;
        }

        let pod = match self.identities.lookup(src) {
            Lookup::Pod(pod) => pod,
            Lookup::Unknown => {
                return match self.settings.unknown_source {
                    UnknownSource::Resolve => {
                        self.forward(query, &self.resolver, QueryVerdict::UnknownSource)
                            .await
                    }
                    UnknownSource::Refuse => {
                        let mut a =
                            plain(query, ResponseCode::Refused, QueryVerdict::UnknownSource);
                        let text = format!("{src} is no known pod");
                        add_ede(&mut a.message, EDE_PROHIBITED, &text);
                        a
                    }
                };
            }
        };
        let empty;
        let allowlist: &Allowlist = match &pod.allowlist {
            Some(a) => a,
            None => {
                empty = Allowlist::new(Vec::new());
                &empty
            }
        };
        let decision = allowlist.decide_name(&name, self.settings.default_policy);
        if !decision.is_allowed() {
            return self.deny(query, &pod, allowlist, &name, &decision.rest.to_string());
        }
        debug!(%name, %qtype, pod = %pod.workload(), "allowed");
        let resolved = match self.resolver.resolve(question.name(), qtype).await {
            Ok(r) => r,
            Err(error) => {
                warn!(%name, %qtype, %error, "upstream resolution failed");
                return plain(query, ResponseCode::ServFail, QueryVerdict::UpstreamFailure);
            }
        };
        let mut message = response_to(query, resolved.rcode, self.settings.max_udp_payload);
        message.answers = resolved.answers;
        message.authorities = resolved.authority;
        cap_ttls(&mut message.answers, self.settings.grant_max_ttl);
        cap_ttls(&mut message.authorities, self.settings.grant_max_ttl);
        let remember = cacheable.is_some().then(|| name.clone());
        let mut ttl_cap = self.settings.grant_max_ttl;
        if pod.allowlist.is_some() {
            let grants = self.grants_for(&pod, allowlist, &name, src, &message.answers);
            if !grants.is_empty() {
                let outcome = self
                    .hub
                    .grant(pod.node(), grants, self.settings.grant_ack_timeout)
                    .await;
                if let Some(lifetime) = outcome.lifetime {
                    ttl_cap = ttl_cap.min(lifetime);
                }
                if let Delivery::Failed(reason) = outcome.delivery {
                    self.metrics
                        .grant_ack_failures
                        .get_or_create(&ReasonLabels { reason })
                        .inc();
                    debug!(%name, node = %pod.node(), ?reason, "grants not acked");
                    if self.settings.ack_timeout_action == AckTimeoutAction::Servfail {
                        return plain(query, ResponseCode::ServFail, QueryVerdict::Allowed);
                    }
                }
            }
        }
        cap_ttls(&mut message.answers, ttl_cap);
        Answer {
            message,
            verdict: QueryVerdict::Allowed,
            remember,
        }
    }

    /// Keeps the encoded answer for the fast path (NOERROR and NXDOMAIN, not truncated). The
    /// TTLs in `wire` may already be lowered to what this pod's grants live; the cached copy
    /// then simply expires sooner.
    fn remember(&self, raw: &[u8], plain: &PlainQuery, message: &Message, wire: &[u8], name: &str) {
        let truncated = wire.get(2).is_some_and(|b| b & 0x02 != 0);
        if truncated
            || !matches!(
                message.metadata.response_code,
                ResponseCode::NoError | ResponseCode::NXDomain
            )
        {
            return;
        }
        let mut template = wire.to_vec();
        template[0..2].fill(0);
        let addresses = message
            .answers
            .iter()
            .filter_map(|r| match &r.data {
                RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
                RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
                _ => None,
            })
            .collect();
        if let (Some(answer), Some(key)) = (
            CachedAnswer::new(template, name.to_owned(), addresses, Instant::now()),
            AnswerKey::of(raw, plain),
        ) {
            self.answers.insert(&key, answer);
        }
    }

    fn is_cluster_name(&self, name: &str) -> bool {
        let domain = &self.settings.cluster_domain;
        name == domain
            || (name.len() > domain.len()
                && name.ends_with(domain.as_str())
                && name.as_bytes()[name.len() - domain.len() - 1] == b'.')
    }

    async fn forward(&self, query: &Message, resolver: &Resolver, verdict: QueryVerdict) -> Answer {
        let Some(question) = query.queries.first() else {
            return plain(query, ResponseCode::FormErr, QueryVerdict::Invalid);
        };
        match resolver
            .resolve(question.name(), question.query_type())
            .await
        {
            Ok(resolved) => {
                let mut message = response_to(query, resolved.rcode, self.settings.max_udp_payload);
                message.answers = resolved.answers;
                message.authorities = resolved.authority;
                Answer {
                    message,
                    verdict,
                    remember: None,
                }
            }
            Err(error) => {
                warn!(name = %question.name(), %error, "upstream resolution failed");
                plain(query, ResponseCode::ServFail, QueryVerdict::UpstreamFailure)
            }
        }
    }

    fn deny(
        &self,
        query: &Message,
        pod: &PodIdentity,
        allowlist: &Allowlist,
        name: &str,
        reason: &str,
    ) -> Answer {
        // musl stops walking the search list at the first REFUSED: an allowed name with a
        // search suffix appended must look like a name that does not exist.
        let expansion_of = search_expansion_of(allowlist, name, self.settings.default_policy);
        let (rcode, verdict) = match (expansion_of, self.settings.denied_rcode) {
            (Some(_), _) | (None, DeniedRcode::Nxdomain) => (
                ResponseCode::NXDomain,
                if expansion_of.is_some() {
                    QueryVerdict::SearchExpansion
                } else {
                    QueryVerdict::Denied
                },
            ),
            (None, DeniedRcode::Refused) => (ResponseCode::Refused, QueryVerdict::Denied),
        };
        if verdict == QueryVerdict::Denied && self.denied_log.allow() {
            info!(
                pod = %pod.workload(),
                name,
                allowlist = %allowlist.id(),
                reason,
                suppressed = self.denied_log.take_suppressed(),
                "denied"
            );
        }
        let mut a = plain(query, rcode, verdict);
        let text = match expansion_of {
            Some(bare) => format!("{name} is a search-list expansion of {bare}; {reason}"),
            None => format!("{name} denied for {}: {reason}", pod.workload()),
        };
        add_ede(&mut a.message, EDE_BLOCKED, &text);
        a
    }

    fn grants_for(
        &self,
        pod: &PodIdentity,
        allowlist: &Allowlist,
        name: &str,
        pod_ip: IpAddr,
        answers: &[Record],
    ) -> Vec<Grant> {
        let addresses = answers.iter().filter_map(|r| match &r.data {
            RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
            RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
            _ => None,
        });
        let mut grants = self.grants_for_addresses(allowlist, name, pod_ip, addresses);
        for g in &mut grants {
            g.pod_ip = grant_source(pod, pod_ip, g.destination_ip);
        }
        debug!(pod = %pod.workload(), count = grants.len(), "grants");
        grants
    }

    /// One grant per address the allowlist lets the pod reach on some port.
    fn grants_for_addresses(
        &self,
        allowlist: &Allowlist,
        name: &str,
        pod_ip: IpAddr,
        addresses: impl Iterator<Item = (IpAddr, u32)>,
    ) -> Vec<Grant> {
        let mut grants: Vec<Grant> = Vec::new();
        for (ip, ttl) in addresses {
            let ports = allowlist
                .allowed_ports(
                    Destination::Resolved(name, ip),
                    self.settings.default_policy,
                )
                .allowed
                .ranges();
            if ports.is_empty() {
                continue;
            }
            let ttl = Duration::from_secs(u64::from(ttl));
            let lifetime = ttl.clamp(self.settings.grant_min_ttl, self.settings.grant_max_ttl);
            if let Some(existing) = grants.iter_mut().find(|g| g.destination_ip == ip) {
                existing.lifetime = existing.lifetime.max(lifetime);
                continue;
            }
            grants.push(Grant {
                pod_ip,
                destination_ip: ip,
                ports,
                lifetime,
                name: name.to_owned(),
            });
        }
        grants
    }
}

/// If `name` is an allowed name with labels appended (a resolver's search list at work),
/// the allowed name. Only names an Accept rule allows count: under DefaultAllow every
/// unlisted prefix would otherwise qualify.
fn search_expansion_of<'n>(
    allowlist: &Allowlist,
    name: &'n str,
    default: DefaultPolicy,
) -> Option<&'n str> {
    let mut end = name.len();
    while let Some(dot) = name[..end].rfind('.') {
        end = dot;
        let prefix = &name[..end];
        if prefix.is_empty() {
            break;
        }
        let decision = allowlist.decide_name(prefix, default);
        if decision.is_allowed() && !decision.accepted_by.is_empty() {
            return Some(prefix);
        }
    }
    None
}

fn response_to(query: &Message, rcode: ResponseCode, payload: u16) -> Message {
    let mut m = Message::response(query.metadata.id, query.metadata.op_code);
    m.metadata.recursion_desired = query.metadata.recursion_desired;
    m.metadata.recursion_available = true;
    m.metadata.checking_disabled = query.metadata.checking_disabled;
    m.metadata.response_code = rcode;
    m.queries = query.queries.clone();
    if query.edns.is_some() {
        // The OPT record of an answer announces our buffer, not the client's.
        let mut edns = Edns::new();
        edns.set_max_payload(payload);
        m.edns = Some(edns);
    }
    m
}

/// The EDNS buffer size error answers announce.
const ERROR_ANSWER_PAYLOAD: u16 = 1232;

fn plain(query: &Message, rcode: ResponseCode, verdict: QueryVerdict) -> Answer {
    Answer {
        message: response_to(query, rcode, ERROR_ANSWER_PAYLOAD),
        verdict,
        remember: None,
    }
}

/// Extended DNS Error (RFC 8914): needs an OPT record, so only for clients that sent one.
fn add_ede(message: &mut Message, code: u16, text: &str) {
    if let Some(edns) = message.edns.as_mut() {
        let mut data = Vec::with_capacity(2 + text.len());
        data.extend_from_slice(&code.to_be_bytes());
        data.extend_from_slice(text.as_bytes());
        edns.options_mut()
            .insert(EdnsOption::Unknown(u16::from(EdnsCode::Unknown(15)), data));
    }
}

fn cap_ttls(records: &mut [Record], cap: Duration) {
    let cap = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX);
    for r in records {
        if r.ttl > cap {
            r.ttl = cap;
        }
    }
}

/// What a UDP answer may weigh: the client's EDNS buffer (512 without EDNS), at most ours.
fn udp_limit(query: &Message, max: u16) -> u16 {
    match &query.edns {
        Some(edns) => edns.max_payload().clamp(512, max),
        None => 512,
    }
}

/// Encodes `message`; when it exceeds `limit`, sends the question with TC set instead so the
/// client retries over TCP.
fn encode(message: &Message, limit: u16) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) if bytes.len() <= usize::from(limit) => Some(bytes),
        Ok(_) => message.truncate().to_vec().ok(),
        Err(error) => {
            warn!(%error, "could not encode an answer");
            let mut failed = Message::error_msg(
                message.metadata.id,
                message.metadata.op_code,
                ResponseCode::ServFail,
            );
            failed.queries = message.queries.clone();
            failed.to_vec().ok()
        }
    }
}

/// FORMERR for a packet with a readable header; nothing for shorter garbage or responses.
fn format_error_from_header(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let op_code = OpCode::from_u8((raw[2] >> 3) & 0x0f);
    Message::error_msg(id, op_code, ResponseCode::FormErr)
        .to_vec()
        .ok()
}

fn type_label(t: RecordType) -> &'static str {
    match t {
        RecordType::A
        | RecordType::AAAA
        | RecordType::CNAME
        | RecordType::TXT
        | RecordType::MX
        | RecordType::SRV
        | RecordType::HTTPS
        | RecordType::SVCB
        | RecordType::PTR
        | RecordType::NS
        | RecordType::SOA
        | RecordType::CAA
        | RecordType::ANY => t.into(),
        _ => "other",
    }
}
