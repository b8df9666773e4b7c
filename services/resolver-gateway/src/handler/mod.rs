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
use dnsfence_policy::ports::{PortRange, PortSet};
use hickory_proto::op::{Message, MessageType, OpCode, ResponseCode};
use hickory_proto::rr::{DNSClass, RData, Record};
use tracing::{Instrument, debug, instrument, warn};

mod fast_path;
mod observe;
mod relay;
mod response;
mod wire_path;

pub use fast_path::Now;
use fast_path::grant_source;
use response::{
    add_ede, cap_ttls, encode, format_error_from_header, plain, response_to, search_expansion_of,
    udp_limit,
};

use crate::config::{AckTimeoutAction, Config, DecisionLogs, DeniedRcode, UnknownSource};
use crate::fast::{
    AnswerCache, AnswerKey, CachedAnswer, Denial, DenialCache, Doorkeeper, GrantTemplate,
};
use crate::grants::{Delivery, GrantHub};
use crate::identity::{Identities, Lookup, PodIdentity};
use crate::metrics::{GatewayMetrics, QueryVerdict, ReasonLabels, Transport};
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
    pub decision_logs: DecisionLogs,
    pub decision_log_rate: u32,
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
            decision_logs: config.decision_logs,
            decision_log_rate: config.decision_log_rate,
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
    denials: DenialCache,
    /// Admission to `answers` and `denials`: a question gets in on its second miss.
    doorkeeper: Doorkeeper,
    /// The DNS decision log (`--decision-logs`), JSON lines on stdout.
    decision_log: dnsfence_telemetry::jsonlog::LineLog,
}

/// The A/AAAA addresses among `records`, with their TTLs.
pub(super) fn record_addresses(records: &[Record]) -> impl Iterator<Item = (IpAddr, u32)> + '_ {
    records.iter().filter_map(|r| match &r.data {
        RData::A(a) => Some((IpAddr::V4(a.0), r.ttl)),
        RData::AAAA(a) => Some((IpAddr::V6(a.0), r.ttl)),
        _ => None,
    })
}

/// What became of a query's grants: the TTL the answer may carry, and whether it must be
/// SERVFAIL (not acked, `--ack-timeout-action servfail`).
struct Delivered {
    ttl_cap: Duration,
    servfail: bool,
}

/// What the query path decided, before encoding.
struct Answer {
    message: Message,
    verdict: QueryVerdict,
    /// An allowed name's answer the fast path may re-send: the normalized name.
    remember: Option<String>,
    /// A denial the fast path may re-send to pods of the same allowlist.
    denial: Option<DenialNote>,
}

struct DenialNote {
    allowlist: Option<Arc<Allowlist>>,
    name: String,
    reason: String,
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
        let decision_log = dnsfence_telemetry::jsonlog::LineLog::stdout(
            settings.decision_log_rate,
            metrics.decision_log_lines.clone(),
            metrics.decision_log_lines_dropped.clone(),
        );
        Gateway {
            answers: AnswerCache::new(settings.answer_cache_size),
            denials: DenialCache::new(settings.answer_cache_size),
            doorkeeper: Doorkeeper::new(settings.answer_cache_size),
            settings,
            identities,
            resolver,
            cluster_resolver,
            hub,
            metrics,
            decision_log,
        }
    }

    /// Answers one raw query. `None`: nothing to send (not a query at all, or a response).
    ///
    /// A sampled query ([`Gateway::traced`]) runs inside its own trace span ("DNS query"),
    /// described once the answer is known.
    pub async fn handle(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
    ) -> Option<Vec<u8>> {
        self.handle_later(raw, src, transport, Now::Later { cached: true })
            .await
    }

    /// [`Gateway::handle`] after [`Gateway::answer_now`] said `now`: a query it found in no
    /// cache skips them.
    pub async fn handle_later(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        now: Now,
    ) -> Option<Vec<u8>> {
        let try_caches = match now {
            Now::Answer(bytes) => return Some(bytes),
            Now::Later { cached } => cached,
            Now::Miss(_) => false,
        };
        if !self.traced(raw, src) {
            return self.handle_query(raw, src, transport, try_caches).await.0;
        }
        let span = Self::query_span(src, transport);
        let (bytes, verdict) = self
            .handle_query(raw, src, transport, true)
            .instrument(span.clone())
            .await;
        self.describe_span(&span, raw, src, verdict, bytes.as_deref());
        bytes
    }

    /// The answer and the verdict (`None`: a packet that is no query).
    async fn handle_query(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        try_caches: bool,
    ) -> (Option<Vec<u8>>, Option<QueryVerdict>) {
        let started = Instant::now();
        let plain = parse_plain_query(raw);
        if let Some(plain) = &plain
            && try_caches
            && let Some((bytes, verdict)) =
                self.fast(raw, plain, src.ip(), transport, started).await
        {
            self.count(verdict, plain.qtype, transport, started);
            self.log_decision(raw, src, transport, verdict, Some(&bytes));
            return (Some(bytes), Some(verdict));
        }
        if let Some(plain) = &plain
            && let Some((bytes, verdict)) = self.wire_miss(raw, plain, src.ip(), transport).await
        {
            self.count(verdict, plain.qtype, transport, started);
            self.log_decision(raw, src, transport, verdict, Some(&bytes));
            return (Some(bytes), Some(verdict));
        }
        let query = match Message::from_vec(raw) {
            Ok(m) => m,
            Err(error) => {
                self.metrics.malformed_packets.inc();
                debug!(%src, %error, "malformed query");
                return (format_error_from_header(raw), Some(QueryVerdict::Invalid));
            }
        };
        if query.metadata.message_type == MessageType::Response {
            self.metrics.malformed_packets.inc();
            return (None, None);
        }
        let qtype = query
            .queries
            .first()
            .map_or(0, |q| u16::from(q.query_type()));
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
        if let (Some(note), Some(plain), Some(wire)) = (answer.denial, &plain, &bytes)
            && let Some(key) =
                AnswerKey::of(raw, plain).filter(|k| self.admitted(k, self.denials.holds(k)))
        {
            let denial = Denial::new(wire, answer.verdict, note.name, note.reason);
            self.denials.insert(&key, note.allowlist, denial);
        }
        self.count(answer.verdict, qtype, transport, started);
        self.log_decision(raw, src, transport, answer.verdict, bytes.as_deref());
        (bytes, Some(answer.verdict))
    }

    fn count(&self, verdict: QueryVerdict, qtype: u16, transport: Transport, started: Instant) {
        self.count_until(verdict, qtype, transport, started, Instant::now());
    }

    /// [`Gateway::count`] for a query whose answer was ready at `ended`.
    fn count_until(
        &self,
        verdict: QueryVerdict,
        qtype: u16,
        transport: Transport,
        started: Instant,
        ended: Instant,
    ) {
        self.metrics.queries.inc(verdict, qtype, transport);
        self.metrics
            .query_duration
            .observe(ended.saturating_duration_since(started).as_secs_f64());
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
            // Echoing dozens of questions back would only amplify; the header says it all.
            let mut a = plain(query, ResponseCode::FormErr, QueryVerdict::Invalid);
            a.message.queries.clear();
            return a;
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
        let allowlist = pod.allowlist.as_deref().unwrap_or(Allowlist::empty());
        let decision = allowlist.decide_name(&name, self.settings.default_policy);
        if !decision.is_allowed() {
            let reason = decision.rest.to_string();
            let mut answer = self.deny(query, allowlist, &name, &reason);
            answer.denial = Some(DenialNote {
                allowlist: pod.allowlist.clone(),
                name,
                reason,
            });
            return answer;
        }
        debug!(%name, %qtype, pod = %pod.workload(), "allowed");
        let resolved = match self.resolver.resolve(question.name(), qtype).await {
            Ok(r) => r,
            Err(error) => {
                warn!(%name, %qtype, %error, "upstream resolution failed");
                return plain(query, ResponseCode::ServFail, QueryVerdict::UpstreamFailure);
            }
        };
        let remember = cacheable.is_some().then(|| name.clone());
        let mut message = response_to(query, resolved.rcode, self.settings.max_udp_payload);
        message.answers = resolved.answers;
        message.authorities = resolved.authority;
        cap_ttls(&mut message.answers, self.settings.grant_max_ttl);
        cap_ttls(&mut message.authorities, self.settings.grant_max_ttl);
        let mut ttl_cap = self.settings.grant_max_ttl;
        if pod.allowlist.is_some() {
            let grants = self.grants_for(&pod, allowlist, &name, src, &message.answers);
            let delivered = self.deliver(pod.node(), grants, &name).await;
            if delivered.servfail {
                return plain(query, ResponseCode::ServFail, QueryVerdict::Allowed);
            }
            ttl_cap = delivered.ttl_cap;
        }
        cap_ttls(&mut message.answers, ttl_cap);
        Answer {
            message,
            verdict: QueryVerdict::Allowed,
            remember,
            denial: None,
        }
    }

    /// Cache admission (see [`crate::fast::Doorkeeper`]): on a question's second miss within a
    /// while, or on its first when an expired answer of it is still stored (it was asked
    /// before). The doorkeeper is asked either way, so it remembers this miss.
    fn admitted(&self, key: &AnswerKey, stored_before: bool) -> bool {
        self.doorkeeper.asked_before(key) | stored_before
    }

    /// Sends a query's grants to the enforcers of `node` and waits for the ack (bounded by
    /// `--grant-ack-timeout`); counts a failure.
    async fn deliver(&self, node: &str, grants: Vec<Grant>, name: &str) -> Delivered {
        let mut delivered = Delivered {
            ttl_cap: self.settings.grant_max_ttl,
            servfail: false,
        };
        if grants.is_empty() {
            return delivered;
        }
        let outcome = self
            .hub
            .grant(node, grants, self.settings.grant_ack_timeout)
            .await;
        if let Some(lifetime) = outcome.lifetime {
            delivered.ttl_cap = delivered.ttl_cap.min(lifetime);
        }
        if let Delivery::Failed(reason) = outcome.delivery {
            self.metrics
                .grant_ack_failures
                .get_or_create(&ReasonLabels { reason })
                .inc();
            debug!(%name, %node, ?reason, "grants not acked");
            delivered.servfail = self.settings.ack_timeout_action == AckTimeoutAction::Servfail;
        }
        delivered
    }

    /// Keeps the encoded answer for the fast path (NOERROR and NXDOMAIN, not truncated), from
    /// the question's second miss on, as the wire path does (see [`crate::fast::Doorkeeper`]).
    /// The TTLs in `wire` may already be lowered to what this pod's grants live; the cached
    /// copy then simply expires sooner.
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
        let Some(key) =
            AnswerKey::of(raw, plain).filter(|k| self.admitted(k, self.answers.holds(k)))
        else {
            return;
        };
        let mut template = wire.to_vec();
        template[0..2].fill(0);
        let addresses = record_addresses(&message.answers).collect();
        if let Some(answer) =
            CachedAnswer::new(template, name.to_owned(), addresses, Instant::now())
        {
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
                    denial: None,
                }
            }
            Err(error) => {
                warn!(name = %question.name(), %error, "upstream resolution failed");
                plain(query, ResponseCode::ServFail, QueryVerdict::UpstreamFailure)
            }
        }
    }

    fn deny(&self, query: &Message, allowlist: &Allowlist, name: &str, reason: &str) -> Answer {
        let (rcode, verdict, text) = self.denial(allowlist, name, reason);
        let mut a = plain(query, rcode, verdict);
        add_ede(&mut a.message, EDE_BLOCKED, &text);
        a
    }

    /// The RCODE, verdict and extended error text of a denied name.
    fn denial(
        &self,
        allowlist: &Allowlist,
        name: &str,
        reason: &str,
    ) -> (ResponseCode, QueryVerdict, String) {
        // musl stops walking the search list at the first REFUSED: an allowed name with a
        // search suffix appended must look like a name that does not exist.
        let expansion_of = search_expansion_of(allowlist, name, self.settings.default_policy);
        let (rcode, verdict) = match (expansion_of, self.settings.denied_rcode) {
            (Some(_), _) => (ResponseCode::NXDomain, QueryVerdict::SearchExpansion),
            (None, DeniedRcode::Nxdomain) => (ResponseCode::NXDomain, QueryVerdict::Denied),
            (None, DeniedRcode::Refused) => (ResponseCode::Refused, QueryVerdict::Denied),
        };
        let text = match expansion_of {
            Some(bare) => format!("{name} is a search-list expansion of {bare}; {reason}"),
            None => format!("{name} denied: {reason}"),
        };
        (rcode, verdict, text)
    }

    fn grants_for(
        &self,
        pod: &PodIdentity,
        allowlist: &Allowlist,
        name: &str,
        pod_ip: IpAddr,
        answers: &[Record],
    ) -> Vec<Grant> {
        let addresses = record_addresses(answers);
        let templates = self.grant_templates(allowlist, name, None, addresses);
        let grants = self.grants_of(pod, pod_ip, name, &templates, 0);
        debug!(pod = %pod.workload(), count = grants.len(), "grants");
        grants
    }

    /// One grant template per address the allowlist lets the pod reach on some port (a
    /// repeated address once, with its longest TTL). `name_ports`: what `decide_name` gave
    /// the name, if the caller has it (used when no rule names addresses).
    fn grant_templates(
        &self,
        allowlist: &Allowlist,
        name: &str,
        name_ports: Option<&PortSet>,
        addresses: impl Iterator<Item = (IpAddr, u32)>,
    ) -> Vec<GrantTemplate> {
        let default = self.settings.default_policy;
        // Without CIDR rules every address of the name gets the name's ports: evaluate once.
        let shared = allowlist
            .is_address_independent()
            .then(|| match name_ports {
                Some(ports) => Arc::from(ports.ranges()),
                None => Arc::from(
                    allowlist
                        .allowed_ports(Destination::Name(name), default)
                        .allowed
                        .ranges(),
                ),
            });
        let mut templates: Vec<GrantTemplate> = Vec::new();
        for (ip, ttl) in addresses {
            if let Some(existing) = templates.iter_mut().find(|t| t.ip == ip) {
                existing.ttl = existing.ttl.max(ttl);
                continue;
            }
            let ports: Arc<[PortRange]> = match &shared {
                Some(ports) => Arc::clone(ports),
                None => Arc::from(
                    allowlist
                        .allowed_ports(Destination::Resolved(name, ip), default)
                        .allowed
                        .ranges(),
                ),
            };
            if !ports.is_empty() {
                templates.push(GrantTemplate { ip, ports, ttl });
            }
        }
        templates
    }

    /// The time the shortest of `templates`' grants (their TTLs less `age` seconds) still
    /// lives at the enforcers of `pod`'s node, if they hold every one: counted as deduplicated.
    /// `None`: they must be sent ([`Gateway::grants_of`]).
    fn held(
        &self,
        pod: &PodIdentity,
        src: IpAddr,
        templates: &[GrantTemplate],
        age: u32,
        now: Instant,
    ) -> Option<Duration> {
        let wanted = templates.iter().map(|t| {
            (
                grant_source(pod, src, t.ip),
                t.ip,
                &t.ports[..],
                self.lifetime(t.ttl.saturating_sub(age)),
            )
        });
        let remaining = self.hub.already_held(pod.node(), wanted, now)?;
        self.metrics
            .grants_deduplicated
            .inc_by(templates.len() as u64);
        Some(remaining)
    }

    /// `templates` as grants for `pod` asking from `src` (TTLs less `age` seconds).
    fn grants_of(
        &self,
        pod: &PodIdentity,
        src: IpAddr,
        name: &str,
        templates: &[GrantTemplate],
        age: u32,
    ) -> Vec<Grant> {
        templates
            .iter()
            .map(|t| Grant {
                pod_ip: grant_source(pod, src, t.ip),
                destination_ip: t.ip,
                ports: t.ports.to_vec(),
                lifetime: self.lifetime(t.ttl.saturating_sub(age)),
                name: name.to_owned(),
            })
            .collect()
    }
}
