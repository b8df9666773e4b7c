//! Building and encoding answers.

use std::time::Duration;

use dnsfence_policy::allowlist::{Allowlist, DefaultPolicy};
use hickory_proto::op::{Edns, Message, OpCode, ResponseCode};
use hickory_proto::rr::Record;
use hickory_proto::rr::rdata::opt::{EdnsCode, EdnsOption};
use tracing::warn;

use super::Answer;
use crate::metrics::QueryVerdict;

/// If `name` is an allowed name with labels appended (a resolver's search list at work),
/// the allowed name. Only names an Accept rule allows count: under DefaultAllow every
/// unlisted prefix would otherwise qualify.
pub(super) fn search_expansion_of<'n>(
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

pub(super) fn response_to(query: &Message, rcode: ResponseCode, payload: u16) -> Message {
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
pub(super) const ERROR_ANSWER_PAYLOAD: u16 = 1232;

pub(super) fn plain(query: &Message, rcode: ResponseCode, verdict: QueryVerdict) -> Answer {
    Answer {
        message: response_to(query, rcode, ERROR_ANSWER_PAYLOAD),
        verdict,
        remember: None,
        denial: None,
    }
}

/// Extended DNS Error (RFC 8914): needs an OPT record, so only for clients that sent one.
pub(super) fn add_ede(message: &mut Message, code: u16, text: &str) {
    if let Some(edns) = message.edns.as_mut() {
        let mut data = Vec::with_capacity(2 + text.len());
        data.extend_from_slice(&code.to_be_bytes());
        data.extend_from_slice(text.as_bytes());
        edns.options_mut()
            .insert(EdnsOption::Unknown(u16::from(EdnsCode::Unknown(15)), data));
    }
}

pub(super) fn cap_ttls(records: &mut [Record], cap: Duration) {
    let cap = u32::try_from(cap.as_secs()).unwrap_or(u32::MAX);
    for r in records {
        if r.ttl > cap {
            r.ttl = cap;
        }
    }
}

/// What a UDP answer may weigh: the client's EDNS buffer (512 without EDNS), at most ours.
pub(super) fn udp_limit(query: &Message, max: u16) -> u16 {
    match &query.edns {
        Some(edns) => edns.max_payload().clamp(512, max),
        None => 512,
    }
}

/// Encodes `message`; when it exceeds `limit`, sends the question with TC set instead so the
/// client retries over TCP.
pub(super) fn encode(message: &Message, limit: u16) -> Option<Vec<u8>> {
    match message.to_vec() {
        Ok(bytes) if bytes.len() <= usize::from(limit) => Some(bytes),
        Ok(_) => {
            let mut truncated = message.truncate();
            match truncated.to_vec() {
                Ok(bytes) if bytes.len() <= usize::from(limit) => Some(bytes),
                // Even the questions do not fit (a query with dozens of them): the header alone.
                _ => {
                    truncated.queries.clear();
                    truncated.edns = None;
                    truncated.to_vec().ok()
                }
            }
        }
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
pub(super) fn format_error_from_header(raw: &[u8]) -> Option<Vec<u8>> {
    if raw.len() < 12 || raw[2] & 0x80 != 0 {
        return None;
    }
    let id = u16::from_be_bytes([raw[0], raw[1]]);
    let op_code = OpCode::from_u8((raw[2] >> 3) & 0x0f);
    Message::error_msg(id, op_code, ResponseCode::FormErr)
        .to_vec()
        .ok()
}
