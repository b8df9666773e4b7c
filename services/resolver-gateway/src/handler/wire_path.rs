//! The miss path on the wire: an allowed name that is in no cache is forwarded as the
//! client's question, and the upstream's answer is re-sent as bytes (ID, flags, the client's
//! question, TTLs capped, an OPT record of ours) instead of being decoded into records and
//! encoded again. The answer then goes into the encoded-answer cache, so the next query for
//! the name takes the fast path.
//!
//! A denied name is answered here too (the long way's RCODE and extended error, built on the
//! wire). Filtering and grants are the long way's: the same allowlist decision before forwarding,
//! one grant per A/AAAA address of the chain with the ports the allowlist gives it, the answer
//! held back until the enforcer acked. What this path cannot re-send as it came
//! ([`crate::wire::answer::read_answer`] says `None`: a chain to chase, records off the chain,
//! an answer too big for the client's UDP buffer...) goes the long way, which asks the
//! upstream again.

use std::net::IpAddr;
use std::time::{Duration, Instant};

use dnsfence_api::Grant;
use dnsfence_policy::allowlist::NameDecision;

use dnsfence_policy::allowlist::Allowlist;
use tracing::{debug, warn};

use super::response::ERROR_ANSWER_PAYLOAD;
use super::{EDE_BLOCKED, Gateway};
use crate::fast::{AnswerKey, CachedAnswer, Denial};
use crate::identity::{Lookup, PodIdentity};
use crate::metrics::{QueryVerdict, Transport};
use crate::resolve::Question;
use crate::wire::answer::{Chain, RCODE_SERVFAIL, UpstreamReading, read_answer};
use crate::wire::{self, PlainQuery};

const TYPE_CNAME: u16 = 5;
const TYPE_OPT: u16 = 41;
/// The EDNS option code of an Extended DNS Error (RFC 8914).
const EDE_OPTION: u16 = 15;

/// The name of a wire-form question as the policy library spells it (lower case, no trailing
/// dot), if every label is plain (letters, digits, `-`, `_`, `*`); other names go the long
/// way, whose `Name` handles escapes.
fn dotted_name(wire_name: &[u8]) -> Option<String> {
    // The dotted name is the wire name without its first length byte and its root label,
    // with the other length bytes turned into dots: copied once, then mended label by label.
    let mut end = 0;
    loop {
        let len = usize::from(*wire_name.get(end)?);
        if len == 0 {
            break;
        }
        end += 1 + len;
    }
    if end == 0 {
        return Some(String::new());
    }
    let mut name = wire_name.get(1..end)?.to_vec();
    let mut at = 0;
    while at < name.len() {
        let len = usize::from(wire_name[at]);
        let label = &mut name[at..at + len];
        for b in label.iter_mut() {
            if !(b.is_ascii_alphanumeric() || matches!(*b, b'-' | b'_' | b'*')) {
                return None;
            }
            b.make_ascii_lowercase();
        }
        at += len;
        if let Some(dot) = name.get_mut(at) {
            *dot = b'.';
        }
        at += 1;
    }
    // ASCII only, checked above
    String::from_utf8(name).ok()
}

/// Header, question and (for an EDNS client) our OPT record, with `rcode` and no records.
fn bare_answer(
    raw: &[u8],
    query: &PlainQuery,
    rcode: u8,
    truncated: bool,
    payload: u16,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(query.question_end + 11);
    out.extend_from_slice(&raw[..query.question_end]);
    stamp_header(&mut out, query, rcode, 0, 0);
    if truncated {
        out[2] |= 0x02;
    }
    push_opt(&mut out, query, payload);
    out
}

/// The client's ID, QR, RD, RA, CD, `rcode` and the section counts (additional: our OPT for
/// an EDNS client).
fn stamp_header(out: &mut [u8], query: &PlainQuery, rcode: u8, answers: u16, authorities: u16) {
    out[0..2].copy_from_slice(&query.id.to_be_bytes());
    out[2] = 0x80 | u8::from(query.recursion_desired);
    out[3] = 0x80 | if query.checking_disabled { 0x10 } else { 0 } | (rcode & 0x0f);
    out[4..6].copy_from_slice(&1u16.to_be_bytes());
    out[6..8].copy_from_slice(&answers.to_be_bytes());
    out[8..10].copy_from_slice(&authorities.to_be_bytes());
    out[10..12].copy_from_slice(&u16::from(query.edns_payload.is_some()).to_be_bytes());
}

/// A denial: `rcode`, and for an EDNS client an Extended DNS Error "Blocked" with `text`.
/// `None` if the text does not fit an option.
fn denial_answer(raw: &[u8], query: &PlainQuery, rcode: u8, text: &str) -> Option<Vec<u8>> {
    let mut out = bare_answer(raw, query, rcode, false, ERROR_ANSWER_PAYLOAD);
    if query.edns_payload.is_some() {
        let option_len = u16::try_from(2 + text.len()).ok()?;
        let rdlen = option_len.checked_add(4)?;
        let end = out.len();
        out[end - 2..].copy_from_slice(&rdlen.to_be_bytes());
        out.extend_from_slice(&EDE_OPTION.to_be_bytes());
        out.extend_from_slice(&option_len.to_be_bytes());
        out.extend_from_slice(&EDE_BLOCKED.to_be_bytes());
        out.extend_from_slice(text.as_bytes());
    }
    Some(out)
}

/// The OPT record of an answer announces our buffer, not the client's.
fn push_opt(out: &mut Vec<u8>, query: &PlainQuery, payload: u16) {
    if query.edns_payload.is_some() {
        out.extend_from_slice(&[0]);
        out.extend_from_slice(&TYPE_OPT.to_be_bytes());
        out.extend_from_slice(&payload.to_be_bytes());
        out.extend_from_slice(&[0, 0, 0, 0, 0, 0]);
    }
}

/// An allowed name's query on its way upstream: what [`Gateway::wire_start`] decided.
pub(super) struct Forward {
    name: String,
    pod: PodIdentity,
    decision: NameDecision,
    limit: usize,
}

impl Forward {
    /// The question to ask the upstream: the client's, lower-cased.
    pub(super) fn question(raw: &[u8], query: &PlainQuery) -> Question {
        Question::from_wire(&raw[12..query.question_end - 4], query.qtype)
    }
}

/// What the wire path does before asking the upstream.
// Made and matched once per miss: boxing the forward would cost an allocation per query.
#[allow(clippy::large_enum_variant)]
pub(super) enum WireStart {
    /// A denial, answered at once.
    Answer(Vec<u8>, QueryVerdict),
    Forward(Forward),
}

/// The upstream's answer, made the client's.
pub(super) enum WireEnd {
    /// To be sent at once (the enforcer already holds its grants, or there are none).
    Answer(Vec<u8>, QueryVerdict),
    /// To be sent once the enforcer acked its grants ([`Gateway::wire_deliver`]).
    Deliver(Box<HeldAnswer>),
}

/// An answer waiting for its grants' ack.
pub(super) struct HeldAnswer {
    out: Vec<u8>,
    answer_ttls: Vec<usize>,
    grants: Vec<Grant>,
    node: String,
    name: String,
    key: Option<AnswerKey>,
    addresses: Vec<(IpAddr, u32)>,
}

impl Gateway {
    /// Answers a plain query that missed the caches on the wire: a denial, or the
    /// upstream's answer for an allowed name. `None`: the long way answers (not ready, an
    /// unknown source, a cluster name, a type whose answer is no chain, a name with unusual
    /// characters, an answer this path cannot re-send).
    pub(super) async fn wire_miss(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        transport: Transport,
    ) -> Option<(Vec<u8>, QueryVerdict)> {
        match self.wire_start(raw, query, src, transport, None)? {
            WireStart::Answer(bytes, verdict) => Some((bytes, verdict)),
            WireStart::Forward(forward) => self.wire_forward(raw, query, src, forward, false).await,
        }
    }

    /// Asks the upstream for an allowed name and answers with what it says. `after_relay`:
    /// a relayed first attempt brought no answer, these are the others. `None`: the long way
    /// answers.
    pub(super) async fn wire_forward(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        forward: Forward,
        after_relay: bool,
    ) -> Option<(Vec<u8>, QueryVerdict)> {
        let question = Forward::question(raw, query);
        let asked = if after_relay {
            self.resolver.forward_wire_after_relay(question).await
        } else {
            self.resolver.forward_wire(question).await
        };
        let upstream = match asked {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(name = %forward.name, qtype = query.qtype, %error, "upstream resolution failed");
                return Some(self.wire_servfail(raw, query, QueryVerdict::UpstreamFailure));
            }
        };
        match self.wire_end(raw, query, src, forward, &upstream, Instant::now())? {
            WireEnd::Answer(bytes, verdict) => Some((bytes, verdict)),
            WireEnd::Deliver(held) => Some(self.wire_deliver(raw, query, held).await),
        }
    }

    /// SERVFAIL with the client's header and question.
    pub(super) fn wire_servfail(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        verdict: QueryVerdict,
    ) -> (Vec<u8>, QueryVerdict) {
        let payload = self.settings.max_udp_payload;
        (
            bare_answer(raw, query, RCODE_SERVFAIL, false, payload),
            verdict,
        )
    }

    /// The wire path up to the upstream: a denial, or the allowed name to forward. `None`:
    /// the long way answers. `source`: the source's identity, if looked up already.
    pub(super) fn wire_start(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        transport: Transport,
        source: Option<Lookup>,
    ) -> Option<WireStart> {
        // CNAME and ANY answers are no chain; OPT and the meta types (128-255) no question.
        if query.qtype == TYPE_CNAME
            || query.qtype == TYPE_OPT
            || (128..=255).contains(&query.qtype)
        {
            return None;
        }
        if !self.identities.is_ready() {
            return None;
        }
        let wire_name = raw.get(12..query.question_end.checked_sub(4)?)?;
        let name = dotted_name(wire_name)?;
        if self.is_cluster_name(&name) {
            return None;
        }
        let Lookup::Pod(pod) = source.unwrap_or_else(|| self.identities.lookup(src)) else {
            return None;
        };
        let allowlist = pod.allowlist.as_deref().unwrap_or(Allowlist::empty());
        let limit = self.size_limit(query, transport);
        let decision = allowlist.decide_name(&name, self.settings.default_policy);
        if decision.is_allowed() {
            return Some(WireStart::Forward(Forward {
                name,
                pod,
                decision,
                limit,
            }));
        }
        let reason = decision.rest.to_string();
        let (rcode, verdict, text) = self.denial(allowlist, &name, &reason);
        let out = denial_answer(raw, query, rcode.low(), &text)?;
        if out.len() > limit {
            return None;
        }
        if let Some(key) =
            AnswerKey::of(raw, query).filter(|k| self.admitted(k, self.denials.holds(k)))
        {
            let denial = Denial::new(&out, verdict, name, reason);
            self.denials.insert(&key, pod.allowlist.clone(), denial);
        }
        Some(WireStart::Answer(out, verdict))
    }

    /// The upstream's answer (arrived at `now`) made the client's, with the grants of its
    /// addresses: to send now when the enforcer holds them already, else to hold until it
    /// acked. `None`: the long way answers (it asks the upstream again).
    pub(super) fn wire_end(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: IpAddr,
        forward: Forward,
        upstream: &[u8],
        now: Instant,
    ) -> Option<WireEnd> {
        let payload = self.settings.max_udp_payload;
        let Forward {
            name,
            pod,
            decision,
            limit,
        } = forward;
        let chain = match read_answer(upstream, query.qtype)? {
            UpstreamReading::Rcode(rcode) => {
                return Some(WireEnd::Answer(
                    bare_answer(raw, query, rcode, false, payload),
                    QueryVerdict::Allowed,
                ));
            }
            UpstreamReading::Chain(chain) => chain,
        };
        let (max_ttl, max_negative_ttl) = self.resolver.ttl_caps();
        let ttl_max = max_ttl.min(secs(self.settings.grant_max_ttl));
        let out = answer_from_chain(
            raw,
            query,
            upstream,
            &chain,
            ttl_max,
            max_negative_ttl,
            payload,
        );
        let addresses: Vec<(IpAddr, u32)> = chain
            .addresses
            .iter()
            .map(|&(ip, ttl)| (ip, ttl.min(ttl_max)))
            .collect();
        let key = AnswerKey::of(raw, query).filter(|_| chain.cacheable);
        if out.len() > limit {
            // Too big for the client's buffer: TC, so it asks again over TCP, where the cached
            // answer (and its grants) are waiting.
            self.cache_wire_answer(key, &out, name, addresses, true);
            return Some(WireEnd::Answer(
                bare_answer(raw, query, chain.rcode, true, payload),
                QueryVerdict::Allowed,
            ));
        }
        let mut ttl_cap = self.settings.grant_max_ttl;
        if let Some(allowlist) = &pod.allowlist {
            let templates = self.grant_templates(
                allowlist,
                &name,
                Some(&decision.allowed),
                addresses.iter().copied(),
            );
            if !templates.is_empty() {
                let Some(remaining) = self.held(&pod, src, &templates, 0, now) else {
                    let grants = self.grants_of(&pod, src, &name, &templates, 0);
                    debug!(pod = %pod.workload(), count = grants.len(), "grants");
                    return Some(WireEnd::Deliver(Box::new(HeldAnswer {
                        out,
                        answer_ttls: chain.answer_ttls,
                        grants,
                        node: pod.node().to_owned(),
                        name,
                        key,
                        addresses,
                    })));
                };
                ttl_cap = ttl_cap.min(remaining);
            }
        }
        let out = self.wire_finish(out, &chain.answer_ttls, ttl_cap, key, name, addresses);
        Some(WireEnd::Answer(out, QueryVerdict::Allowed))
    }

    /// Sends a held answer's grants, waits for the ack, and makes the answer.
    pub(super) async fn wire_deliver(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        held: Box<HeldAnswer>,
    ) -> (Vec<u8>, QueryVerdict) {
        let delivered = self.deliver(&held.node, held.grants, &held.name).await;
        if delivered.servfail {
            return self.wire_servfail(raw, query, QueryVerdict::Allowed);
        }
        let out = self.wire_finish(
            held.out,
            &held.answer_ttls,
            delivered.ttl_cap,
            held.key,
            held.name,
            held.addresses,
        );
        (out, QueryVerdict::Allowed)
    }

    /// The answer's TTLs capped at what its grants live, and the answer kept for the fast path.
    fn wire_finish(
        &self,
        mut out: Vec<u8>,
        answer_ttls: &[usize],
        ttl_cap: Duration,
        key: Option<AnswerKey>,
        name: String,
        addresses: Vec<(IpAddr, u32)>,
    ) -> Vec<u8> {
        cap_ttls(&mut out, answer_ttls, secs(ttl_cap));
        self.cache_wire_answer(key, &out, name, addresses, false);
        out
    }

    /// Stores the answer for the fast path under `key` (`None`: not cacheable) when
    /// [`Gateway::admitted`], or at once when the client is told to retry over TCP.
    fn cache_wire_answer(
        &self,
        key: Option<AnswerKey>,
        out: &[u8],
        name: String,
        addresses: Vec<(IpAddr, u32)>,
        retry_expected: bool,
    ) {
        let Some(key) = key else {
            return;
        };
        if !self.admitted(&key, self.answers.holds(&key)) && !retry_expected {
            return;
        }
        let mut template = out.to_vec();
        template[0..2].fill(0);
        if let Some(answer) = CachedAnswer::new(template, name, addresses, Instant::now()) {
            self.answers.insert(&key, answer);
        }
    }
}

/// The upstream's answer made the client's: header, question as asked, the chain (and a
/// negative answer's SOA) with TTLs capped at `ttl_max` (the SOA's at RFC 2308's negative
/// TTL, at most `max_negative_ttl`), our OPT record announcing `payload`.
fn answer_from_chain(
    raw: &[u8],
    query: &PlainQuery,
    upstream: &[u8],
    chain: &Chain,
    ttl_max: u32,
    max_negative_ttl: u32,
    payload: u16,
) -> Vec<u8> {
    let mut out = Vec::with_capacity(chain.end + 11);
    out.extend_from_slice(&upstream[..chain.end]);
    // Same name, maybe another case (DNS 0x20): pointers into it stay valid.
    out[12..query.question_end].copy_from_slice(&raw[12..query.question_end]);
    stamp_header(
        &mut out,
        query,
        chain.rcode,
        chain.answers,
        u16::from(chain.soa.is_some()),
    );
    cap_ttls(&mut out, &chain.answer_ttls, ttl_max);
    if let Some((at, minimum)) = chain.soa {
        // RFC 2308: a negative answer lives min(SOA TTL, SOA MINIMUM).
        let ttl = minimum.min(max_negative_ttl).min(ttl_max);
        cap_ttls(&mut out, &[at], ttl);
    }
    push_opt(&mut out, query, payload);
    out
}

/// Lowers the TTLs at `offsets` to at most `cap`.
fn cap_ttls(out: &mut [u8], offsets: &[usize], cap: u32) {
    for &at in offsets {
        let ttl = wire::read_u32(out, at).min(cap);
        wire::write_u32(out, at, ttl);
    }
}

fn secs(d: Duration) -> u32 {
    u32::try_from(d.as_secs()).unwrap_or(u32::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn plain_names_are_spelled_as_the_policy_library_does() {
        assert_eq!(
            dotted_name(b"\x03WwW\x06GitHub\x03com\x00").as_deref(),
            Some("www.github.com")
        );
        assert_eq!(dotted_name(b"\x01*\x04test\x00").as_deref(), Some("*.test"));
        // a dot or a space inside a label: the long way's Name escapes it
        assert_eq!(dotted_name(b"\x03a.b\x04test\x00"), None);
        assert_eq!(dotted_name(b"\x03a b\x04test\x00"), None);
        assert_eq!(dotted_name(b"\x03abc"), None);
        assert_eq!(dotted_name(b"\x00").as_deref(), Some(""));
        assert_eq!(dotted_name(b"\x02a\x00\x00"), None);
        assert_eq!(
            dotted_name(b"\x01A\x02b-\x03c_D\x00trailing").as_deref(),
            Some("a.b-.c_d")
        );
    }
}
