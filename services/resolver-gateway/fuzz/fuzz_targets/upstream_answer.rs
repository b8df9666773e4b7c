//! Any bytes as an upstream's answer: the wire reader the miss path trusts must never panic,
//! and what it accepts must stay within the message.
#![no_main]

use dnsfence_resolver_gateway::wire::answer::{UpstreamReading, read_answer};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for qtype in [1u16, 28, 16] {
        if let Some(UpstreamReading::Chain(chain)) = read_answer(data, qtype) {
            assert!(chain.end <= data.len());
            assert!(chain.answer_ttls.iter().all(|&at| at + 4 <= chain.end));
        }
    }
});
