//! The gateway's own metrics (the resolve module registers its cache and upstream metrics
//! into the same registry). Names are listed in the service README.

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
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

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct QueryLabels {
    pub verdict: QueryVerdict,
    /// Record type name (A, AAAA, TXT, ...), "other" for rare ones.
    pub qtype: &'static str,
    pub transport: Transport,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum Transport {
    Udp,
    Tcp,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: AckFailure,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum AckFailure {
    /// The enforcer did not ack within --grant-ack-timeout.
    Timeout,
    /// No enforcer of the pod's node is subscribed to this gateway.
    NoSubscriber,
    /// The subscriber's stream broke or its queue was full.
    Disconnected,
}

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
        };
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
            "dnsfence_gateway_grant_ack_timeouts",
            "Answers sent without an enforcer ack, by reason",
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
        m
    }
}
