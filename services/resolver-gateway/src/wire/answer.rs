//! Reading an upstream's answer on the wire, for the miss path that forwards the client's
//! question and re-sends the upstream's bytes instead of decoding and re-encoding a
//! `Message`.
//!
//! [`read_answer`] accepts only answers it can re-send as they are, with the same result as
//! the long way (which reduces the answer section to the CNAME chain, keeps the SOA of a
//! negative answer and chases chains the upstream left dangling): the answer section must
//! *be* the chain from the question, in order, ending in records of the asked type, or a
//! negative answer whose authority section starts with the SOA. Anything else — a dangling
//! chain, records off the chain, an SOA behind other records — is `None`, and the caller
//! takes the long way.

use std::net::{IpAddr, Ipv4Addr, Ipv6Addr};

use super::{HEADER, u16_at};

const TYPE_A: u16 = 1;
const TYPE_CNAME: u16 = 5;
const TYPE_SOA: u16 = 6;
const TYPE_AAAA: u16 = 28;
const CLASS_IN: u16 = 1;
/// CNAME records followed within one answer; more is a loop or abuse.
const MAX_CHAIN: usize = 16;

/// RCODEs the chain reading applies to.
pub const RCODE_NOERROR: u8 = 0;
pub const RCODE_SERVFAIL: u8 = 2;
pub const RCODE_NXDOMAIN: u8 = 3;

/// What an upstream answered, read on the wire.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UpstreamReading {
    /// NOERROR or NXDOMAIN, re-sendable as the bytes up to [`Chain::end`].
    Chain(Chain),
    /// Another RCODE (SERVFAIL, REFUSED...): answered with that RCODE and no records.
    Rcode(u8),
}

/// A NOERROR or NXDOMAIN answer whose first [`Chain::end`] bytes are the answer to send: the
/// header, the question, the chain, and the SOA of a negative answer.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub rcode: u8,
    pub end: usize,
    pub answers: u16,
    /// Offsets of the TTLs of the answer records.
    pub answer_ttls: Vec<usize>,
    /// A negative answer's SOA: its TTL's offset and its MINIMUM (RFC 2308).
    pub soa: Option<(usize, u32)>,
    /// The A/AAAA records at the end of the chain, with their TTLs.
    pub addresses: Vec<(IpAddr, u32)>,
    /// False for a negative answer without SOA: RFC 2308 gives it no lifetime.
    pub cacheable: bool,
}

/// A name in lower-case wire form, decompressed.
struct NameBuf {
    bytes: [u8; 256],
    len: usize,
}

impl NameBuf {
    fn new() -> NameBuf {
        NameBuf {
            bytes: [0; 256],
            len: 0,
        }
    }

    fn as_slice(&self) -> &[u8] {
        &self.bytes[..self.len]
    }
}

/// Reads the possibly compressed name at `at` into `out`; the offset after the name where
/// it sits. Pointers must point backwards, so the walk ends.
fn read_name(b: &[u8], mut at: usize, out: &mut NameBuf) -> Option<usize> {
    out.len = 0;
    let mut after = None;
    loop {
        let len = *b.get(at)?;
        match len {
            0 => {
                *out.bytes.get_mut(out.len)? = 0;
                out.len += 1;
                return Some(after.unwrap_or(at + 1));
            }
            l if l & 0xc0 == 0xc0 => {
                let target = usize::from(l & 0x3f) << 8 | usize::from(*b.get(at + 1)?);
                if target >= at {
                    return None;
                }
                after.get_or_insert(at + 2);
                at = target;
            }
            l if l <= 63 => {
                let l = usize::from(l);
                let label = b.get(at + 1..at + 1 + l)?;
                // 255 bytes at most, the root's 0 included.
                let dst = out.bytes.get_mut(out.len..out.len + 1 + l)?;
                if out.len + 1 + l >= 255 {
                    return None;
                }
                dst[0] = l as u8;
                for (d, s) in dst[1..].iter_mut().zip(label) {
                    *d = s.to_ascii_lowercase();
                }
                out.len += 1 + l;
                at += 1 + l;
            }
            _ => return None,
        }
    }
}

fn u32_at(b: &[u8], at: usize) -> Option<u32> {
    let s = b.get(at..at + 4)?;
    Some(u32::from_be_bytes([s[0], s[1], s[2], s[3]]))
}

/// One record's fixed fields, after its owner name.
struct RecordAt {
    rtype: u16,
    class: u16,
    ttl_at: usize,
    rdata: usize,
    end: usize,
}

fn record_at(b: &[u8], at: usize) -> Option<RecordAt> {
    let rdlen = usize::from(u16_at(b, at + 8)?);
    let end = at + 10 + rdlen;
    if end > b.len() {
        return None;
    }
    Some(RecordAt {
        rtype: u16_at(b, at)?,
        class: u16_at(b, at + 2)?,
        ttl_at: at + 4,
        rdata: at + 10,
        end,
    })
}

/// Reads the answer `b` to a one-question query of type `qtype` (not CNAME or ANY, whose
/// answers are no chain). `None`: the long way must build this answer.
pub fn read_answer(b: &[u8], qtype: u16) -> Option<UpstreamReading> {
    if b.len() < HEADER || b[2] & 0x80 == 0 || u16_at(b, 4)? != 1 {
        return None;
    }
    let rcode = b[3] & 0x0f;
    if rcode != RCODE_NOERROR && rcode != RCODE_NXDOMAIN {
        return Some(UpstreamReading::Rcode(rcode));
    }
    let answers = u16_at(b, 6)?;
    let authorities = u16_at(b, 8)?;
    let mut current = NameBuf::new();
    let mut owner = NameBuf::new();
    let mut at = read_name(b, HEADER, &mut current)? + 4;
    let mut answer_ttls = Vec::with_capacity(usize::from(answers));
    let mut addresses = Vec::new();
    let (mut data, mut links) = (false, 0);
    for _ in 0..answers {
        at = read_name(b, at, &mut owner)?;
        let r = record_at(b, at)?;
        if r.class != CLASS_IN || owner.as_slice() != current.as_slice() {
            return None;
        }
        if r.rtype == TYPE_CNAME && !data {
            links += 1;
            if links > MAX_CHAIN || read_name(b, r.rdata, &mut current)? != r.end {
                return None;
            }
        } else if r.rtype == qtype {
            data = true;
            let ttl = u32_at(b, r.ttl_at)?;
            match (r.rtype, r.end - r.rdata) {
                (TYPE_A, 4) => {
                    let o: [u8; 4] = b.get(r.rdata..r.end)?.try_into().ok()?;
                    addresses.push((IpAddr::V4(Ipv4Addr::from(o)), ttl));
                }
                (TYPE_AAAA, 16) => {
                    let o: [u8; 16] = b.get(r.rdata..r.end)?.try_into().ok()?;
                    addresses.push((IpAddr::V6(Ipv6Addr::from(o)), ttl));
                }
                (TYPE_A | TYPE_AAAA, _) => return None,
                _ => {}
            }
        } else {
            return None;
        }
        answer_ttls.push(r.ttl_at);
        at = r.end;
    }
    let mut chain = Chain {
        rcode,
        end: at,
        answers,
        answer_ttls,
        soa: None,
        addresses,
        cacheable: true,
    };
    if data {
        // Positive: the authority and additional sections are left out, as the long way does.
        return (rcode == RCODE_NOERROR).then_some(UpstreamReading::Chain(chain));
    }
    // Negative at the end of the chain: the upstream followed it (its SOA says so).
    if authorities > 0 {
        let soa_at = read_name(b, at, &mut owner)?;
        let r = record_at(b, soa_at)?;
        if r.rtype == TYPE_SOA && r.class == CLASS_IN && r.end - r.rdata >= 22 {
            chain.soa = Some((r.ttl_at, u32_at(b, r.end - 4)?));
            chain.end = r.end;
            return Some(UpstreamReading::Chain(chain));
        }
    }
    // A chain that ends in a CNAME without an SOA is dangling: the long way chases it.
    if links > 0 {
        return None;
    }
    chain.cacheable = false;
    Some(UpstreamReading::Chain(chain))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hickory_proto::op::{Message, MessageType, Query};
    use hickory_proto::rr::rdata::{A, AAAA, CNAME, NS, SOA, TXT};
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn n(s: &str) -> Name {
        Name::from_ascii(s).unwrap()
    }

    fn response(qname: &str, qtype: RecordType) -> Message {
        let mut m = Message::query();
        m.metadata.message_type = MessageType::Response;
        m.add_query(Query::query(n(qname), qtype));
        m
    }

    fn rec(name: &str, ttl: u32, data: RData) -> Record {
        Record::from_rdata(n(name), ttl, data)
    }

    fn soa(zone: &str, ttl: u32, minimum: u32) -> Record {
        rec(
            zone,
            ttl,
            RData::SOA(SOA::new(
                n(&format!("ns.{zone}")),
                n(&format!("admin.{zone}")),
                1,
                3600,
                600,
                86400,
                minimum,
            )),
        )
    }

    fn chain(m: &Message, qtype: RecordType) -> Chain {
        match read_answer(&m.to_vec().unwrap(), u16::from(qtype)) {
            Some(UpstreamReading::Chain(c)) => c,
            other => panic!("expected a chain, got {other:?}"),
        }
    }

    #[test]
    fn a_compressed_chain_in_order_is_read_with_its_addresses() {
        let mut m = response("WWW.Example.test.", RecordType::A);
        m.add_answer(rec(
            "www.example.test.",
            300,
            RData::CNAME(CNAME(n("edge.cdn.test."))),
        ));
        m.add_answer(rec("edge.cdn.test.", 20, RData::A(A::new(192, 0, 2, 1))));
        m.add_answer(rec("edge.cdn.test.", 30, RData::A(A::new(192, 0, 2, 2))));
        m.add_authority(rec("cdn.test.", 60, RData::NS(NS(n("ns.cdn.test.")))));
        let wire = m.to_vec().unwrap();
        let c = chain(&m, RecordType::A);
        assert_eq!(c.rcode, RCODE_NOERROR);
        assert_eq!(c.answers, 3);
        assert!(c.cacheable && c.soa.is_none());
        // the NS record is left out: the kept part ends with the last A record
        let kept = Message::from_vec(&{
            let mut k = wire[..c.end].to_vec();
            k[8..12].fill(0);
            k
        })
        .unwrap();
        assert_eq!(kept.answers.len(), 3);
        assert_eq!(
            c.addresses,
            vec![
                ("192.0.2.1".parse().unwrap(), 20),
                ("192.0.2.2".parse().unwrap(), 30)
            ]
        );
        let ttls: Vec<u32> = c
            .answer_ttls
            .iter()
            .map(|&o| u32_at(&wire, o).unwrap())
            .collect();
        assert_eq!(ttls, vec![300, 20, 30]);
    }

    #[test]
    fn aaaa_and_other_types_are_read() {
        let mut m = response("v6.test.", RecordType::AAAA);
        m.add_answer(rec(
            "v6.test.",
            5,
            RData::AAAA(AAAA::new(0x2001, 0xdb8, 0, 0, 0, 0, 0, 1)),
        ));
        assert_eq!(
            chain(&m, RecordType::AAAA).addresses,
            vec![("2001:db8::1".parse().unwrap(), 5)]
        );
        let mut m = response("t.test.", RecordType::TXT);
        m.add_answer(rec("t.test.", 5, RData::TXT(TXT::new(vec!["hi".into()]))));
        let c = chain(&m, RecordType::TXT);
        assert!(c.addresses.is_empty());
        assert_eq!(c.answers, 1);
    }

    #[test]
    fn negative_answers_keep_their_soa() {
        let mut m = response("nope.test.", RecordType::A);
        m.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
        m.add_authority(soa("test.", 900, 60));
        m.add_authority(rec("test.", 60, RData::NS(NS(n("ns.test.")))));
        let wire = m.to_vec().unwrap();
        let c = chain(&m, RecordType::A);
        assert_eq!(c.rcode, RCODE_NXDOMAIN);
        let (ttl_at, minimum) = c.soa.unwrap();
        assert_eq!((u32_at(&wire, ttl_at).unwrap(), minimum), (900, 60));
        assert!(c.end < wire.len());
        assert!(c.cacheable);
        // NODATA without SOA: answered, not cached
        let m = response("empty.test.", RecordType::A);
        let c = chain(&m, RecordType::A);
        assert!(!c.cacheable && c.answers == 0);
    }

    #[test]
    fn what_the_long_way_must_build_is_refused() {
        // dangling chain: to be chased
        let mut m = response("a.test.", RecordType::A);
        m.add_answer(rec("a.test.", 60, RData::CNAME(CNAME(n("b.other.")))));
        assert_eq!(read_answer(&m.to_vec().unwrap(), 1), None);
        // ...unless the SOA says the upstream followed it
        m.metadata.response_code = hickory_proto::op::ResponseCode::NXDomain;
        m.add_authority(soa("other.", 60, 60));
        assert!(matches!(
            read_answer(&m.to_vec().unwrap(), 1),
            Some(UpstreamReading::Chain(c)) if c.soa.is_some() && c.answers == 1
        ));
        // a record off the chain
        let mut m = response("a.test.", RecordType::A);
        m.add_answer(rec("a.test.", 60, RData::A(A::new(192, 0, 2, 1))));
        m.add_answer(rec("evil.test.", 60, RData::A(A::new(192, 0, 2, 66))));
        assert_eq!(read_answer(&m.to_vec().unwrap(), 1), None);
        // out of order
        let mut m = response("a.test.", RecordType::A);
        m.add_answer(rec("b.test.", 60, RData::A(A::new(192, 0, 2, 1))));
        m.add_answer(rec("a.test.", 60, RData::CNAME(CNAME(n("b.test.")))));
        assert_eq!(read_answer(&m.to_vec().unwrap(), 1), None);
        // a loop
        let mut m = response("a.test.", RecordType::A);
        m.add_answer(rec("a.test.", 60, RData::CNAME(CNAME(n("b.test.")))));
        m.add_answer(rec("b.test.", 60, RData::CNAME(CNAME(n("a.test.")))));
        assert_eq!(read_answer(&m.to_vec().unwrap(), 1), None);
        // another type at the name
        let mut m = response("a.test.", RecordType::A);
        m.add_answer(rec("a.test.", 60, RData::TXT(TXT::new(vec!["x".into()]))));
        assert_eq!(read_answer(&m.to_vec().unwrap(), 1), None);
        // other rcodes pass through
        let mut m = response("a.test.", RecordType::A);
        m.metadata.response_code = hickory_proto::op::ResponseCode::Refused;
        assert_eq!(
            read_answer(&m.to_vec().unwrap(), 1),
            Some(UpstreamReading::Rcode(5))
        );
    }

    #[test]
    fn truncated_and_hostile_bytes_are_refused_not_panicked_on() {
        let mut m = response("www.example.test.", RecordType::A);
        m.add_answer(rec("www.example.test.", 60, RData::A(A::new(192, 0, 2, 1))));
        let wire = m.to_vec().unwrap();
        for cut in 0..wire.len() {
            assert_eq!(read_answer(&wire[..cut], 1), None, "cut at {cut}");
        }
        // a pointer to itself
        let mut looped = wire.clone();
        let at = wire.len() - 16; // the answer's owner (a pointer to the question)
        looped[at] = 0xc0;
        looped[at + 1] = at as u8;
        assert_eq!(read_answer(&looped, 1), None);
        // every byte flipped in turn: never a panic
        for i in 0..wire.len() {
            let mut b = wire.clone();
            b[i] ^= 0xff;
            let _ = read_answer(&b, 1);
        }
    }
}
