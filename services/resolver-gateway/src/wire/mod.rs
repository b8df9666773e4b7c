//! Just enough DNS wire format for the answer cache's fast path: read a plain query's header
//! and question without building a `Message`, and find the TTL fields of an encoded answer so
//! a cached answer can be re-sent with its TTLs counted down; [`answer`] reads an upstream's
//! answer for the miss path.

pub mod answer;

/// A query the fast path can answer: one question, opcode QUERY, no answer or authority
/// records, at most an OPT record.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PlainQuery {
    pub id: u16,
    pub recursion_desired: bool,
    pub checking_disabled: bool,
    /// The question's name in wire form, as the client wrote it (case preserved): bytes
    /// `12..question_end - 4`.
    pub question_end: usize,
    pub qtype: u16,
    /// The client's EDNS UDP payload size, if it sent an OPT record.
    pub edns_payload: Option<u16>,
    pub dnssec_ok: bool,
}

const HEADER: usize = 12;
const TYPE_OPT: u16 = 41;
const CLASS_IN: u16 = 1;

fn u16_at(b: &[u8], at: usize) -> Option<u16> {
    Some(u16::from_be_bytes([*b.get(at)?, *b.get(at + 1)?]))
}

/// Parses `raw` if it is a query the fast path handles; `None` sends it the long way (which
/// also answers malformed input properly).
pub fn parse_plain_query(raw: &[u8]) -> Option<PlainQuery> {
    if raw.len() < HEADER + 5 {
        return None;
    }
    let flags = u16_at(raw, 2)?;
    let is_response = flags & 0x8000 != 0;
    let opcode = (flags >> 11) & 0x0f;
    if is_response || opcode != 0 || flags & 0x0200 != 0 {
        return None;
    }
    let (qd, an, ns, ar) = (
        u16_at(raw, 4)?,
        u16_at(raw, 6)?,
        u16_at(raw, 8)?,
        u16_at(raw, 10)?,
    );
    if qd != 1 || an != 0 || ns != 0 || ar > 1 {
        return None;
    }
    // The name: uncompressed labels (a query has nothing to point back to).
    let mut at = HEADER;
    loop {
        let len = usize::from(*raw.get(at)?);
        if len == 0 {
            at += 1;
            break;
        }
        if len > 63 {
            return None;
        }
        at += 1 + len;
        if at - HEADER > 255 {
            return None;
        }
    }
    if at == HEADER + 1 {
        return None; // the root: nothing the fast path caches
    }
    let qtype = u16_at(raw, at)?;
    let qclass = u16_at(raw, at + 2)?;
    if qclass != CLASS_IN {
        return None;
    }
    let question_end = at + 4;
    let (mut edns_payload, mut dnssec_ok) = (None, false);
    if ar == 1 {
        // OPT: root name, type 41, class = payload, ttl = ext-rcode/version/flags, rdata.
        if *raw.get(question_end)? != 0 || u16_at(raw, question_end + 1)? != TYPE_OPT {
            return None;
        }
        let payload = u16_at(raw, question_end + 3)?;
        let version = *raw.get(question_end + 6)?;
        let edns_flags = u16_at(raw, question_end + 7)?;
        let rdlen = usize::from(u16_at(raw, question_end + 9)?);
        if version != 0 || question_end + 11 + rdlen != raw.len() {
            return None;
        }
        edns_payload = Some(payload);
        dnssec_ok = edns_flags & 0x8000 != 0;
    } else if question_end != raw.len() {
        return None;
    }
    Some(PlainQuery {
        id: u16_at(raw, 0)?,
        recursion_desired: flags & 0x0100 != 0,
        checking_disabled: flags & 0x0010 != 0,
        question_end,
        qtype,
        edns_payload,
        dnssec_ok,
    })
}

/// Skips a possibly compressed name starting at `at`; returns the offset after it.
fn skip_name(b: &[u8], mut at: usize) -> Option<usize> {
    loop {
        let len = *b.get(at)?;
        match len {
            0 => return Some(at + 1),
            l if l & 0xc0 == 0xc0 => return Some(at + 2),
            l if l <= 63 => at += 1 + usize::from(l),
            _ => return None,
        }
    }
}

/// Offsets of the TTL fields of every answer and authority record of an encoded message
/// (the OPT record's "TTL" is flags, not a TTL, and lives in the additional section).
pub fn ttl_offsets(b: &[u8]) -> Option<Vec<usize>> {
    let qd = u16_at(b, 4)?;
    let records = usize::from(u16_at(b, 6)?) + usize::from(u16_at(b, 8)?);
    let mut at = HEADER;
    for _ in 0..qd {
        at = skip_name(b, at)? + 4;
    }
    let mut offsets = Vec::with_capacity(records);
    for _ in 0..records {
        at = skip_name(b, at)?;
        offsets.push(at + 4);
        let rdlen = usize::from(u16_at(b, at + 8)?);
        at += 10 + rdlen;
        if at > b.len() {
            return None;
        }
    }
    Some(offsets)
}

pub fn read_u32(b: &[u8], at: usize) -> u32 {
    match b.get(at..at + 4) {
        Some(s) => u32::from_be_bytes([s[0], s[1], s[2], s[3]]),
        None => 0,
    }
}

pub fn write_u32(b: &mut [u8], at: usize, value: u32) {
    if let Some(s) = b.get_mut(at..at + 4) {
        s.copy_from_slice(&value.to_be_bytes());
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use hickory_proto::op::{Edns, Message, Query};
    use hickory_proto::rr::rdata::A;
    use hickory_proto::rr::{Name, RData, Record, RecordType};

    fn query(name: &str, edns: bool) -> Message {
        let mut m = Message::query();
        m.metadata.recursion_desired = true;
        m.add_query(Query::query(
            Name::from_ascii(name).unwrap(),
            RecordType::AAAA,
        ));
        if edns {
            let mut e = Edns::new();
            e.set_max_payload(1400);
            e.set_dnssec_ok(true);
            m.set_edns(e);
        }
        m
    }

    #[test]
    fn reads_what_hickory_writes() {
        for edns in [false, true] {
            let m = query("WwW.Example.test.", edns);
            let raw = m.to_vec().unwrap();
            let q = parse_plain_query(&raw).unwrap();
            assert_eq!(q.id, m.metadata.id);
            assert!(q.recursion_desired);
            assert_eq!(q.qtype, 28);
            assert_eq!(
                &raw[12..q.question_end - 4],
                b"\x03WwW\x07Example\x04test\x00"
            );
            assert_eq!(q.edns_payload, edns.then_some(1400));
            assert_eq!(q.dnssec_ok, edns);
        }
    }

    #[test]
    fn leaves_everything_unusual_to_the_long_way() {
        let raw = query("a.test.", false).to_vec().unwrap();
        let mut response = raw.clone();
        response[2] |= 0x80;
        assert_eq!(parse_plain_query(&response), None);
        let mut two = raw.clone();
        two[5] = 2;
        assert_eq!(parse_plain_query(&two), None);
        let mut trailing = raw.clone();
        trailing.push(0);
        assert_eq!(parse_plain_query(&trailing), None);
        assert_eq!(parse_plain_query(&raw[..raw.len() - 1]), None);
        let mut chaos = raw.clone();
        let n = chaos.len();
        chaos[n - 1] = 3;
        assert_eq!(parse_plain_query(&chaos), None);
        assert_eq!(parse_plain_query(b"garbage"), None);
    }

    #[test]
    fn finds_every_ttl() {
        let mut m = query("www.example.test.", true);
        m.metadata.message_type = hickory_proto::op::MessageType::Response;
        for (i, ttl) in [300u32, 20, 7].into_iter().enumerate() {
            let ip = std::net::Ipv4Addr::new(192, 0, 2, i as u8 + 1);
            m.add_answer(Record::from_rdata(
                Name::from_ascii("www.example.test.").unwrap(),
                ttl,
                RData::A(A(ip)),
            ));
        }
        let wire = m.to_vec().unwrap();
        let offsets = ttl_offsets(&wire).unwrap();
        let ttls: Vec<u32> = offsets.iter().map(|&o| read_u32(&wire, o)).collect();
        assert_eq!(ttls, vec![300, 20, 7]);
    }
}
