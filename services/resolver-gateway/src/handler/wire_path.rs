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
use std::time::Instant;

use dnsfence_policy::allowlist::Allowlist;
use tracing::{debug, warn};

use super::fast_path::grant_source;
use super::response::ERROR_ANSWER_PAYLOAD;
use super::{EDE_BLOCKED, Gateway};
use crate::fast::{AnswerKey, CachedAnswer, Denial};
use crate::identity::Lookup;
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
    let mut name = String::with_capacity(wire_name.len());
    let mut at = 0;
    loop {
        let len = usize::from(*wire_name.get(at)?);
        if len == 0 {
            return Some(name);
        }
        let label = wire_name.get(at + 1..at + 1 + len)?;
        if !label
            .iter()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'*'))
        {
            return None;
        }
        if !name.is_empty() {
            name.push('.');
        }
        name.extend(label.iter().map(|b| char::from(b.to_ascii_lowercase())));
        at += 1 + len;
    }
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
        let Lookup::Pod(pod) = self.identities.lookup(src) else {
            return None;
        };
        let allowlist = pod.allowlist.as_deref().unwrap_or(Allowlist::empty());
        let payload = self.settings.max_udp_payload;
        let limit = self.size_limit(query, transport);
        let decision = allowlist.decide_name(&name, self.settings.default_policy);
        if !decision.is_allowed() {
            let reason = decision.rest.to_string();
            let (rcode, verdict, text) = self.denial(allowlist, &name, &reason);
            let out = denial_answer(raw, query, rcode.low(), &text)?;
            if out.len() > limit {
                return None;
            }
            if let Some(key) = AnswerKey::of(raw, query).filter(|k| self.doorkeeper.asked_before(k))
            {
                let denial = Denial::new(&out, verdict, name, reason);
                self.denials.insert(&key, pod.allowlist.clone(), denial);
            }
            return Some((out, verdict));
        }
        let upstream = match self
            .resolver
            .forward_wire(Question::from_wire(wire_name, query.qtype))
            .await
        {
            Ok(bytes) => bytes,
            Err(error) => {
                warn!(%name, qtype = query.qtype, %error, "upstream resolution failed");
                return Some((
                    bare_answer(raw, query, RCODE_SERVFAIL, false, payload),
                    QueryVerdict::UpstreamFailure,
                ));
            }
        };
        let chain = match read_answer(&upstream, query.qtype)? {
            UpstreamReading::Rcode(rcode) => {
                return Some((
                    bare_answer(raw, query, rcode, false, payload),
                    QueryVerdict::Allowed,
                ));
            }
            UpstreamReading::Chain(chain) => chain,
        };
        let (max_ttl, max_negative_ttl) = self.resolver.ttl_caps();
        let ttl_max = max_ttl.min(secs(self.settings.grant_max_ttl));
        let mut out = answer_from_chain(
            raw,
            query,
            &upstream,
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
            return Some((
                bare_answer(raw, query, chain.rcode, true, payload),
                QueryVerdict::Allowed,
            ));
        }
        let mut ttl_cap = self.settings.grant_max_ttl;
        if pod.allowlist.is_some() {
            let mut grants = self.grants_for_addresses(
                allowlist,
                &name,
                Some(&decision.allowed),
                src,
                addresses.iter().copied(),
            );
            for g in &mut grants {
                g.pod_ip = grant_source(&pod, src, g.destination_ip);
            }
            debug!(pod = %pod.workload(), count = grants.len(), "grants");
            let delivered = self.deliver(pod.node(), grants, &name).await;
            if delivered.servfail {
                return Some((
                    bare_answer(raw, query, RCODE_SERVFAIL, false, payload),
                    QueryVerdict::Allowed,
                ));
            }
            ttl_cap = delivered.ttl_cap;
        }
        cap_ttls(&mut out, &chain.answer_ttls, secs(ttl_cap));
        self.cache_wire_answer(key, &out, name, addresses, false);
        Some((out, QueryVerdict::Allowed))
    }

    /// Stores the answer for the fast path under `key` (`None`: not cacheable): on the
    /// question's second miss (see [`crate::fast::Doorkeeper`]), or at once when the client is
    /// told to retry over TCP.
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
        if !self.doorkeeper.asked_before(&key) && !retry_expected {
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

fn secs(d: std::time::Duration) -> u32 {
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
    }
}
