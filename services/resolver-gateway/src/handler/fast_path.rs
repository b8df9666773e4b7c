//! The fast path: answers from the encoded-answer and denial caches, without a `Message`.
//! See [`crate::fast`] for what is cached and why the shortcut filters and grants exactly as
//! the long way does.

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, Instant};

use dnsfence_api::Grant;
use dnsfence_policy::allowlist::Allowlist;

use super::Gateway;
use crate::fast::{AnswerKey, CachedAnswer, Verdict};
use crate::identity::{Lookup, PodIdentity};
use crate::metrics::{QueryVerdict, Transport};
use crate::wire::{PlainQuery, parse_plain_query};

/// What [`Gateway::answer_now`] got to.
#[derive(Debug)]
pub enum Now {
    Answer(Vec<u8>),
    /// In no cache: what was learnt on the way, for [`Gateway::relay_miss`].
    Miss(Miss),
    /// To be answered by [`Gateway::handle_later`]; `cached`: the caches may have it (grants to
    /// send first, or a traced query that skipped them), so they are worth asking again.
    Later {
        cached: bool,
    },
}

/// A query the caches did not have, as far as [`Gateway::answer_now`] read it.
#[derive(Debug)]
pub struct Miss {
    pub(super) query: PlainQuery,
    pub(super) started: Instant,
    /// The source's identity, if the fast path looked it up already.
    pub(super) source: Option<Lookup>,
}

/// Where the fast path got to without waiting.
pub(super) enum FastStep {
    Answer(Vec<u8>, QueryVerdict),
    /// Cached and allowed, but these grants must reach the enforcer first.
    Grant {
        cached: Arc<CachedAnswer>,
        pod: PodIdentity,
        grants: Vec<Grant>,
    },
    /// With the source's identity if it was looked up.
    Miss(Option<Lookup>),
}

/// The pod address a grant for `dest` belongs to: a dual-stack pod asks over one family
/// and connects over the other, so the grant goes to its address of the destination's family.
pub(super) fn grant_source(pod: &PodIdentity, src: IpAddr, dest: IpAddr) -> IpAddr {
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

/// SERVFAIL for a query the fast path could parse: the header with QR and RCODE set, the
/// question, nothing else.
pub(super) fn servfail_for(raw: &[u8]) -> Vec<u8> {
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

impl Gateway {
    /// The fast path without waiting: an answer from the encoded-answer cache when the pod
    /// may have the name and its enforcer already holds the grants, or a remembered denial
    /// for a pod of the same allowlist. Otherwise what [`Gateway::handle_later`] needs to
    /// know.
    pub fn answer_now(&self, raw: &[u8], src: SocketAddr, transport: Transport) -> Now {
        // A traced query gets its span in `handle` (which tries the caches just the same).
        if self.traced(raw, src) {
            return Now::Later { cached: true };
        }
        let started = Instant::now();
        let Some(query) = parse_plain_query(raw) else {
            return Now::Later { cached: false };
        };
        match self.fast_step(raw, &query, src.ip(), transport, started) {
            FastStep::Answer(bytes, verdict) => {
                self.count(verdict, query.qtype, transport, started);
                self.log_decision(raw, src, transport, verdict, Some(&bytes));
                Now::Answer(bytes)
            }
            FastStep::Grant { .. } => Now::Later { cached: true },
            FastStep::Miss(source) => Now::Miss(Miss {
                query,
                started,
                source,
            }),
        }
    }

    pub(super) fn fast_step(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        transport: Transport,
        now: Instant,
    ) -> FastStep {
        if !self.identities.is_ready() {
            return FastStep::Miss(None);
        }
        let Some(key) = AnswerKey::of(raw, query) else {
            return FastStep::Miss(None);
        };
        let Some(cached) = self.answers.get(&key, now) else {
            return self.fast_denial(raw, query, &key, src, now);
        };
        if cached.len() > self.size_limit(query, transport) {
            return FastStep::Miss(None);
        }
        let Lookup::Pod(pod) = self.identities.lookup(src) else {
            return FastStep::Miss(Some(Lookup::Unknown));
        };
        let verdict = cached.verdict(pod.allowlist.as_ref(), || {
            self.verdict_for(pod.allowlist.as_deref(), &cached)
        });
        if !verdict.allowed {
            return FastStep::Miss(Some(Lookup::Pod(pod)));
        }
        let mut ttl_cap = self.settings.grant_max_ttl;
        if pod.allowlist.is_some() && !verdict.grants.is_empty() {
            let age = cached.age(now);
            match self.held(&pod, src, &verdict.grants, age, now) {
                Some(remaining) => ttl_cap = ttl_cap.min(remaining),
                None => {
                    let grants = self.grants_of(&pod, src, &cached.name, &verdict.grants, age);
                    return FastStep::Grant {
                        cached,
                        pod,
                        grants,
                    };
                }
            }
        }
        let cap = u32::try_from(ttl_cap.as_secs()).unwrap_or(u32::MAX);
        FastStep::Answer(cached.answer(raw, query, now, cap), QueryVerdict::Allowed)
    }

    /// A denial the long way built for a pod of the same allowlist, re-sent.
    pub(super) fn fast_denial(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        key: &AnswerKey,
        src: IpAddr,
        now: Instant,
    ) -> FastStep {
        let Lookup::Pod(pod) = self.identities.lookup(src) else {
            return FastStep::Miss(Some(Lookup::Unknown));
        };
        let Some(denial) = self.denials.get(key, pod.allowlist.as_ref(), now) else {
            return FastStep::Miss(Some(Lookup::Pod(pod)));
        };
        FastStep::Answer(denial.answer(raw, query), denial.verdict)
    }

    /// The fast path, waiting for the enforcer's ack when grants must be sent.
    pub(super) async fn fast(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        transport: Transport,
        now: Instant,
    ) -> Option<(Vec<u8>, QueryVerdict)> {
        let (cached, pod, grants) = match self.fast_step(raw, query, src, transport, now) {
            FastStep::Answer(bytes, verdict) => return Some((bytes, verdict)),
            FastStep::Miss(_) => return None,
            FastStep::Grant {
                cached,
                pod,
                grants,
            } => (cached, pod, grants),
        };
        let delivered = self.deliver(pod.node(), grants, &cached.name).await;
        if delivered.servfail {
            return Some((servfail_for(raw), QueryVerdict::Allowed));
        }
        let cap = u32::try_from(delivered.ttl_cap.as_secs()).unwrap_or(u32::MAX);
        Some((
            cached.answer(raw, query, Instant::now(), cap),
            QueryVerdict::Allowed,
        ))
    }

    /// What an allowlist (`None`: a pod no policy selects) says about a cached name.
    pub(super) fn verdict_for(
        &self,
        allowlist: Option<&Allowlist>,
        cached: &CachedAnswer,
    ) -> Verdict {
        let allowlist = allowlist.unwrap_or(Allowlist::empty());
        let default = self.settings.default_policy;
        let decision = allowlist.decide_name(&cached.name, default);
        if !decision.is_allowed() {
            return Verdict {
                allowed: false,
                grants: Arc::from(Vec::new()),
            };
        }
        let addresses = cached.addresses.iter().copied();
        let grants =
            self.grant_templates(allowlist, &cached.name, Some(&decision.allowed), addresses);
        Verdict {
            allowed: true,
            grants: Arc::from(grants),
        }
    }

    /// The largest answer `query` may get over `transport`: the client's EDNS buffer (512
    /// without EDNS), at most `--max-udp-payload`, over UDP; a TCP message's 64 KiB.
    pub(super) fn size_limit(&self, query: &PlainQuery, transport: Transport) -> usize {
        match transport {
            Transport::Tcp => usize::from(u16::MAX),
            Transport::Udp => usize::from(match query.edns_payload {
                Some(p) => p.clamp(512, self.settings.max_udp_payload),
                None => 512,
            }),
        }
    }

    pub(super) fn lifetime(&self, ttl: u32) -> Duration {
        Duration::from_secs(u64::from(ttl))
            .clamp(self.settings.grant_min_ttl, self.settings.grant_max_ttl)
    }
}
