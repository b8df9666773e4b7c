//! What a query leaves behind besides its answer: the trace span and the decision-log line.
//!
//! Both are described *after* the answer, from the raw query, the source, the verdict and
//! the encoded answer, so the query path itself carries no observability code: a query
//! that is neither traced nor logged costs one atomic load ([`Gateway::traced`]) and one
//! comparison ([`Gateway::log_decision`]). What is traced or logged re-reads the query and
//! answer and re-asks the pod's allowlist which rule decided; that is bounded by the sampler
//! and the log's rate limit.

use std::net::{IpAddr, SocketAddr};

use dnsfence_policy::allowlist::{Allowlist, Cause};
use dnsfence_policy::domain::normalize_name;
use dnsfence_policy::model::{Rule, RuleKind, RuleOrigin};
use dnsfence_telemetry::jsonlog::LogLine;
use hickory_proto::op::Message;
use tracing::Span;
use tracing::field::Empty;

use super::{Gateway, record_addresses};
use crate::config::{DecisionLogs, UnknownSource};
use crate::identity::{Lookup, PodIdentity};
use crate::metrics::{QueryVerdict, Transport, qtype_label};

/// What is known about one answered query.
struct QueryFacts {
    /// As asked (case kept), without the trailing dot.
    name: Option<String>,
    qtype: Option<&'static str>,
    rcode: Option<String>,
    answers: Vec<IpAddr>,
    pod: Option<PodIdentity>,
    /// The deciding policy (or the isolating ones) and rule.
    policy: Option<String>,
    rule: Option<String>,
}

fn rule_ref(origin: &RuleOrigin) -> String {
    if origin.rule_name.is_empty() {
        format!("egress[{}]", origin.rule_index)
    } else {
        format!("egress[{}] ({})", origin.rule_index, origin.rule_name)
    }
}

/// (policy, rule) of what decided `name` for a pod with this allowlist.
fn cause_of(
    allowlist: &Allowlist,
    name: &str,
    gateway: &Gateway,
) -> (Option<String>, Option<String>) {
    let decision = allowlist.decide_name(name, gateway.settings.default_policy);
    if let Some(&index) = decision.accepted_by.first()
        && let Some(Rule {
            kind: RuleKind::Match { origin, .. },
            ..
        }) = allowlist.rules().get(index)
    {
        return (Some(origin.policy.to_string()), Some(rule_ref(origin)));
    }
    let rule = match &decision.rest {
        Cause::Rule { origin, .. } => Some(rule_ref(origin)),
        _ => None,
    };
    (decision.rest.policies(), rule)
}

/// The RFC 1035/6895 mnemonic (`NOERROR`, `NXDOMAIN`), as DNS tools print it.
fn rcode_name(code: u16) -> String {
    match code {
        0 => "NOERROR".into(),
        1 => "FORMERR".into(),
        2 => "SERVFAIL".into(),
        3 => "NXDOMAIN".into(),
        4 => "NOTIMP".into(),
        5 => "REFUSED".into(),
        n => format!("RCODE{n}"),
    }
}

/// `allow`, `deny` or `error`, the decision log's word for a verdict.
fn log_verdict(verdict: QueryVerdict, unknown: UnknownSource) -> &'static str {
    match verdict {
        QueryVerdict::Allowed | QueryVerdict::Cluster => "allow",
        QueryVerdict::Denied | QueryVerdict::SearchExpansion => "deny",
        QueryVerdict::UnknownSource => match unknown {
            UnknownSource::Refuse => "deny",
            UnknownSource::Resolve => "allow",
        },
        QueryVerdict::NotReady | QueryVerdict::Invalid | QueryVerdict::UpstreamFailure => "error",
    }
}

impl Gateway {
    /// Is this query traced? The same packet gets the same answer on the receive loop's
    /// shortcut and in [`Gateway::handle`] (the key is the DNS id, source port and address),
    /// so a traced query skips the shortcut and is traced once.
    #[inline]
    pub(super) fn traced(&self, raw: &[u8], src: SocketAddr) -> bool {
        let id = match raw {
            [a, b, ..] => u64::from(u16::from_be_bytes([*a, *b])),
            _ => 0,
        };
        let ip = match src.ip() {
            IpAddr::V4(v4) => u64::from(u32::from(v4)),
            IpAddr::V6(v6) => {
                let o = v6.octets();
                u64::from(u32::from_be_bytes([o[12], o[13], o[14], o[15]]))
            }
        };
        dnsfence_telemetry::sample_root((id << 48) | (u64::from(src.port()) << 32) | ip)
    }

    /// The server span of a traced query; its attributes are recorded by
    /// [`Gateway::describe_span`] once the answer is known.
    pub(super) fn query_span(src: SocketAddr, transport: Transport) -> Span {
        tracing::info_span!(
            target: dnsfence_telemetry::OTEL_TARGET,
            "DNS query",
            otel.kind = "server",
            // sampled by `traced`: the SDK keeps it without a second draw
            sampling.priority = 1,
            network.transport = transport.as_str(),
            client.address = %src.ip(),
            client.port = src.port(),
            dns.question.name = Empty,
            dns.question.type = Empty,
            dns.response_code = Empty,
            dns.answers = Empty,
            dnsfence.pod = Empty,
            dnsfence.namespace = Empty,
            dnsfence.node = Empty,
            dnsfence.verdict = Empty,
            dnsfence.policy = Empty,
            dnsfence.rule = Empty,
            dnsfence.allowlist = Empty,
            dnsfence.revision = Empty,
        )
    }

    fn facts(&self, raw: &[u8], src: IpAddr, answer: Option<&[u8]>) -> QueryFacts {
        let question = Message::from_vec(raw)
            .ok()
            .and_then(|m| m.queries.into_iter().next());
        let name = question.as_ref().map(|q| {
            let text = q.name().to_string();
            text.strip_suffix('.').unwrap_or(&text).to_owned()
        });
        let qtype = question
            .as_ref()
            .map(|q| qtype_label(u16::from(q.query_type())));
        let response = answer.and_then(|a| Message::from_vec(a).ok());
        let rcode = response
            .as_ref()
            .map(|m| rcode_name(u16::from(m.metadata.response_code)));
        let answers = response
            .map(|m| record_addresses(&m.answers).map(|(ip, _)| ip).collect())
            .unwrap_or_default();
        let pod = match self.identities.lookup(src) {
            Lookup::Pod(p) => Some(p),
            Lookup::Unknown => None,
        };
        let (policy, rule) = match (&pod, &name) {
            (Some(p), Some(n)) => {
                let normalized = normalize_name(n);
                if self.is_cluster_name(&normalized) {
                    (None, None)
                } else {
                    let allowlist = p.allowlist.as_deref().unwrap_or(Allowlist::empty());
                    cause_of(allowlist, &normalized, self)
                }
            }
            _ => (None, None),
        };
        QueryFacts {
            name,
            qtype,
            rcode,
            answers,
            pod,
            policy,
            rule,
        }
    }

    /// Records what the query asked, who asked and what was decided on its span.
    pub(super) fn describe_span(
        &self,
        span: &Span,
        raw: &[u8],
        src: SocketAddr,
        verdict: Option<QueryVerdict>,
        answer: Option<&[u8]>,
    ) {
        let facts = self.facts(raw, src.ip(), answer);
        if let Some(n) = &facts.name {
            span.record("dns.question.name", n.as_str());
        }
        if let Some(t) = facts.qtype {
            span.record("dns.question.type", t);
        }
        if let Some(r) = &facts.rcode {
            span.record("dns.response_code", r.as_str());
        }
        if !facts.answers.is_empty() {
            let list: Vec<String> = facts.answers.iter().map(ToString::to_string).collect();
            span.record("dns.answers", list.join(",").as_str());
        }
        if let Some(p) = &facts.pod {
            span.record("dnsfence.pod", p.workload().name.as_str());
            span.record("dnsfence.namespace", p.workload().namespace.as_str());
            span.record("dnsfence.node", p.node());
            if let Some(a) = &p.allowlist {
                span.record("dnsfence.allowlist", a.id().0.as_str());
            }
        }
        if let Some(v) = verdict {
            span.record("dnsfence.verdict", v.as_str());
        }
        if let Some(p) = &facts.policy {
            span.record("dnsfence.policy", p.as_str());
        }
        if let Some(r) = &facts.rule {
            span.record("dnsfence.rule", r.as_str());
        }
        span.record("dnsfence.revision", self.identities.revision());
    }

    /// One decision-log line for this query, if `--decision-logs` asks for its verdict and
    /// the rate limit has room.
    pub(super) fn log_decision(
        &self,
        raw: &[u8],
        src: SocketAddr,
        transport: Transport,
        verdict: QueryVerdict,
        answer: Option<&[u8]>,
    ) {
        let wanted = match self.settings.decision_logs {
            DecisionLogs::None => false,
            DecisionLogs::Denied => {
                verdict == QueryVerdict::Denied
                    || (verdict == QueryVerdict::UnknownSource
                        && self.settings.unknown_source == UnknownSource::Refuse)
            }
            DecisionLogs::All => true,
        };
        if !wanted || !self.decision_log.admit() {
            return;
        }
        let facts = self.facts(raw, src.ip(), answer);
        let mut line = LogLine::now("resolver-gateway", "dns");
        if let Some(p) = &facts.pod {
            line.node = Some(p.node().to_owned());
            line.namespace = Some(p.workload().namespace.clone());
            line.pod = Some(p.workload().name.clone());
            line.allowlist = p.allowlist.as_ref().map(|a| a.id().0.clone());
        }
        line.src = Some(src.ip());
        line.proto = Some(match transport {
            Transport::Udp => "UDP",
            Transport::Tcp => "TCP",
        });
        line.name = facts.name;
        line.qtype = facts.qtype.map(str::to_owned);
        line.rcode = facts.rcode;
        line.answers = (!facts.answers.is_empty()).then_some(facts.answers);
        line.verdict = log_verdict(verdict, self.settings.unknown_source);
        line.reason = verdict.as_str().to_owned();
        line.policy = facts.policy;
        line.rule = facts.rule;
        line.trace_id = dnsfence_telemetry::propagation::current_trace_id();
        self.decision_log.write(&line);
    }
}
