//! The gateway's own metrics (the resolve module registers its cache and upstream metrics
//! into the same registry). Names, labels and units are in the root README's "Metrics"
//! table; label values are snake_case, the same words the decision log uses.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

/// A label value written as its snake_case name.
macro_rules! snake_label {
    ($t:ty) => {
        impl EncodeLabelValue for $t {
            fn encode(&self, encoder: &mut LabelValueEncoder) -> Result<(), std::fmt::Error> {
                std::fmt::Write::write_str(encoder, self.as_str())
            }
        }
    };
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum QueryVerdict {
    /// Allowed by the pod's allowlist and answered.
    Allowed,
    /// Denied by the pod's allowlist.
    Denied,
    /// A search-list expansion of an allowed name, answered NXDOMAIN.
    SearchExpansion,
    /// Under the cluster domain: forwarded unfiltered.
    Cluster,
    /// From an address that is no known pod.
    UnknownSource,
    /// Before the first catch-up with the store.
    NotReady,
    /// Malformed, several questions, unsupported opcode or class.
    Invalid,
    /// The upstreams failed.
    UpstreamFailure,
}

impl QueryVerdict {
    const COUNT: usize = 8;

    pub fn as_str(self) -> &'static str {
        match self {
            QueryVerdict::Allowed => "allowed",
            QueryVerdict::Denied => "denied",
            QueryVerdict::SearchExpansion => "search_expansion",
            QueryVerdict::Cluster => "cluster",
            QueryVerdict::UnknownSource => "unknown_source",
            QueryVerdict::NotReady => "not_ready",
            QueryVerdict::Invalid => "invalid",
            QueryVerdict::UpstreamFailure => "upstream_failure",
        }
    }
}
snake_label!(QueryVerdict);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub verdict: QueryVerdict,
    /// Record type name (A, AAAA, TXT, ...), "other" for rare ones.
    pub qtype: &'static str,
    pub transport: Transport,
}

/// The record types counted by name; the rest are "other".
const QTYPE_LABELS: [(u16, &str); 13] = [
    (1, "A"),
    (28, "AAAA"),
    (5, "CNAME"),
    (16, "TXT"),
    (15, "MX"),
    (33, "SRV"),
    (65, "HTTPS"),
    (64, "SVCB"),
    (12, "PTR"),
    (2, "NS"),
    (6, "SOA"),
    (257, "CAA"),
    (255, "ANY"),
];

/// The `qtype` label of a record type: its name, or "other" for rare ones.
pub fn qtype_label(qtype: u16) -> &'static str {
    QTYPE_LABELS
        .iter()
        .find(|(t, _)| *t == qtype)
        .map_or("other", |(_, name)| name)
}

fn qtype_index(qtype: u16) -> usize {
    QTYPE_LABELS
        .iter()
        .position(|(t, _)| *t == qtype)
        .unwrap_or(QTYPE_LABELS.len())
}

/// `dnsfence_gateway_queries`: the family's label set is hashed into its map once per
/// combination; every query after that indexes a table of the same counters.
#[derive(Debug, Clone)]
pub struct QueryCounters {
    family: Family<QueryLabels, Counter>,
    table: std::sync::Arc<[std::sync::OnceLock<Counter>]>,
}

impl Default for QueryCounters {
    fn default() -> QueryCounters {
        let size = QueryVerdict::COUNT * (QTYPE_LABELS.len() + 1) * 2;
        QueryCounters {
            family: Family::default(),
            table: (0..size).map(|_| std::sync::OnceLock::new()).collect(),
        }
    }
}

impl QueryCounters {
    pub fn inc(&self, verdict: QueryVerdict, qtype: u16, transport: Transport) {
        let index = ((verdict as usize) * (QTYPE_LABELS.len() + 1) + qtype_index(qtype)) * 2
            + transport as usize;
        let Some(slot) = self.table.get(index) else {
            return;
        };
        slot.get_or_init(|| {
            self.family
                .get_or_create(&QueryLabels {
                    verdict,
                    qtype: qtype_label(qtype),
                    transport,
                })
                .clone()
        })
        .inc();
    }
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum Transport {
    Udp,
    Tcp,
}

impl Transport {
    pub fn as_str(self) -> &'static str {
        match self {
            Transport::Udp => "udp",
            Transport::Tcp => "tcp",
        }
    }
}
snake_label!(Transport);

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: AckFailure,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq)]
pub enum AckFailure {
    /// The enforcer did not ack within --grant-ack-timeout.
    Timeout,
    /// No enforcer of the pod's node is subscribed to this gateway.
    NoSubscriber,
    /// The subscriber's stream broke or its queue was full.
    Disconnected,
}

impl AckFailure {
    pub fn as_str(self) -> &'static str {
        match self {
            AckFailure::Timeout => "timeout",
            AckFailure::NoSubscriber => "no_subscriber",
            AckFailure::Disconnected => "disconnected",
        }
    }
}
snake_label!(AckFailure);

#[derive(Debug, Clone)]
pub struct GatewayMetrics {
    pub queries: QueryCounters,
    pub query_duration: Histogram,
    pub grant_ack_latency: Histogram,
    pub grant_ack_failures: Family<ReasonLabels, Counter>,
    pub grants_sent: Counter,
    pub grants_deduplicated: Counter,
    pub grant_batches: Counter,
    pub subscribers: Gauge,
    pub malformed_packets: Counter,
    pub pods: Gauge,
    pub store_revision: Gauge,
    pub decision_log_lines: Counter,
    pub decision_log_lines_dropped: Counter,
}

impl GatewayMetrics {
    pub fn register(registry: &mut Registry) -> GatewayMetrics {
        let m = GatewayMetrics {
            queries: QueryCounters::default(),
            query_duration: Histogram::new(exponential_buckets(25e-6, 2.0, 18)),
            grant_ack_latency: Histogram::new(exponential_buckets(25e-6, 2.0, 16)),
            grant_ack_failures: Family::default(),
            grants_sent: Counter::default(),
            grants_deduplicated: Counter::default(),
            grant_batches: Counter::default(),
            subscribers: Gauge::default(),
            malformed_packets: Counter::default(),
            pods: Gauge::default(),
            store_revision: Gauge::default(),
            decision_log_lines: Counter::default(),
            decision_log_lines_dropped: Counter::default(),
        };
        // Counters get their `_total` suffix from prometheus-client.
        let r = registry;
        r.register(
            "dnsfence_gateway_queries",
            "DNS queries by verdict, record type and transport",
            m.queries.family.clone(),
        );
        r.register(
            "dnsfence_gateway_query_duration_seconds",
            "Time from receiving a query to sending its answer, grant ack included",
            m.query_duration.clone(),
        );
        r.register(
            "dnsfence_gateway_grant_ack_latency_seconds",
            "Time from sending a grant batch to the enforcer's ack",
            m.grant_ack_latency.clone(),
        );
        r.register(
            "dnsfence_gateway_grant_ack_failures",
            "Answers sent (or SERVFAILed) without an enforcer ack, by reason",
            m.grant_ack_failures.clone(),
        );
        r.register(
            "dnsfence_gateway_grants_sent",
            "Grants sent to enforcers",
            m.grants_sent.clone(),
        );
        r.register(
            "dnsfence_gateway_grants_deduplicated",
            "Grants not sent because the enforcer already holds them with a later expiry",
            m.grants_deduplicated.clone(),
        );
        r.register(
            "dnsfence_gateway_grant_batches",
            "Grant batches sent to enforcers",
            m.grant_batches.clone(),
        );
        r.register(
            "dnsfence_gateway_subscribers",
            "Enforcer subscriptions to this gateway",
            m.subscribers.clone(),
        );
        r.register(
            "dnsfence_gateway_malformed_packets",
            "Packets that are no parsable DNS query",
            m.malformed_packets.clone(),
        );
        r.register(
            "dnsfence_gateway_pods",
            "Pod addresses known from the store",
            m.pods.clone(),
        );
        r.register(
            "dnsfence_gateway_store_revision",
            "Last store revision applied",
            m.store_revision.clone(),
        );
        r.register(
            "dnsfence_gateway_decision_log_lines",
            "DNS decision-log lines written",
            m.decision_log_lines.clone(),
        );
        r.register(
            "dnsfence_gateway_decision_log_lines_dropped",
            "DNS decision-log lines left out by the --decision-log-rate limit (or a failed write)",
            m.decision_log_lines_dropped.clone(),
        );
        m
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn query_counters_count_each_label_set_on_its_own() {
        let counters = QueryCounters::default();
        counters.inc(QueryVerdict::Allowed, 1, Transport::Udp);
        counters.inc(QueryVerdict::Allowed, 1, Transport::Udp);
        counters.inc(QueryVerdict::Allowed, 1, Transport::Tcp);
        counters.inc(QueryVerdict::UpstreamFailure, 28, Transport::Tcp);
        counters.inc(QueryVerdict::Denied, 4242, Transport::Udp);
        counters.inc(QueryVerdict::Denied, 99, Transport::Udp);
        let count = |verdict, qtype, transport| {
            counters
                .family
                .get_or_create(&QueryLabels {
                    verdict,
                    qtype,
                    transport,
                })
                .get()
        };
        assert_eq!(count(QueryVerdict::Allowed, "A", Transport::Udp), 2);
        assert_eq!(count(QueryVerdict::Allowed, "A", Transport::Tcp), 1);
        assert_eq!(
            count(QueryVerdict::UpstreamFailure, "AAAA", Transport::Tcp),
            1
        );
        assert_eq!(count(QueryVerdict::Denied, "other", Transport::Udp), 2);
        assert_eq!(count(QueryVerdict::Denied, "A", Transport::Udp), 0);
    }

    #[test]
    fn every_verdict_has_a_row_of_its_own() {
        let all = [
            QueryVerdict::Allowed,
            QueryVerdict::Denied,
            QueryVerdict::SearchExpansion,
            QueryVerdict::Cluster,
            QueryVerdict::UnknownSource,
            QueryVerdict::NotReady,
            QueryVerdict::Invalid,
            QueryVerdict::UpstreamFailure,
        ];
        assert_eq!(all.len(), QueryVerdict::COUNT);
        assert!(all.iter().all(|v| (*v as usize) < QueryVerdict::COUNT));
        assert_eq!(qtype_label(65), "HTTPS");
        assert_eq!(qtype_label(0), "other");
    }
}
