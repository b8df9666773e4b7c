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
    pub queries: Family<QueryLabels, Counter>,
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
            queries: Family::default(),
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
            m.queries.clone(),
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
