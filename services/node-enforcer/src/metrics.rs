//! The enforcer's Prometheus metrics (names, labels and units: the root README's "Metrics"
//! table).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{
        counter::Counter,
        family::Family,
        gauge::Gauge,
        histogram::{Histogram, exponential_buckets},
    },
    registry::Registry,
};

use crate::types::Counters;

/// The `reason` label of the datapath's verdict counters.
#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    /// [`crate::Reason::name`].
    pub reason: &'static str,
}

/// Every metric the service exports.
#[derive(Debug, Clone)]
pub struct Metrics {
    /// Datapath verdicts by reason (packets), mirrored from the per-CPU `counters` map.
    pub packets: Family<ReasonLabels, Counter>,
    /// Datapath verdicts by reason (bytes).
    pub bytes: Family<ReasonLabels, Counter>,
    /// Grant entries ((pod, destination) pairs) in the map, as of the last sweep.
    pub grants: Gauge,
    /// Grant batches received from gateways (and acked when written).
    pub grant_batches: Counter,
    /// Grants received from gateways.
    pub grants_received: Counter,
    /// Time to write one batch into the map, before its ack.
    pub grant_write_duration: Histogram,
    /// Grant entries removed or narrowed because a policy change no longer allows them.
    pub revoked_grants: Counter,
    /// Expired grant entries removed by the sweeper.
    pub swept_grants: Counter,
    /// Open grant subscriptions to gateways.
    pub gateway_connections: Gauge,
    /// Last store revision applied to the datapath.
    pub store_revision: Gauge,
    /// Pod addresses of this node in the datapath.
    pub pods: Gauge,
    /// Pod addresses whose interface (host route) is not found yet.
    pub pods_pending: Gauge,
    /// Interfaces the programs are attached to.
    pub interfaces: Gauge,
    /// Flow-log lines written.
    pub flow_log_lines: Counter,
    /// Flow-log lines left out by the rate limit (or a failed write).
    pub flow_log_lines_dropped: Counter,
    /// Store updates or datapath writes that failed.
    pub errors: Counter,
}

impl Metrics {
    /// Creates the metrics and registers them in `registry`.
    pub fn register(registry: &mut Registry) -> Self {
        let m = Self {
            packets: Family::default(),
            bytes: Family::default(),
            grants: Gauge::default(),
            grant_batches: Counter::default(),
            grants_received: Counter::default(),
            grant_write_duration: Histogram::new(exponential_buckets(5e-6, 2.0, 18)),
            revoked_grants: Counter::default(),
            swept_grants: Counter::default(),
            gateway_connections: Gauge::default(),
            store_revision: Gauge::default(),
            pods: Gauge::default(),
            pods_pending: Gauge::default(),
            interfaces: Gauge::default(),
            flow_log_lines: Counter::default(),
            flow_log_lines_dropped: Counter::default(),
            errors: Counter::default(),
        };
        // Counters get their `_total` suffix from prometheus-client.
        let r = registry;
        r.register(
            "dnsfence_enforcer_packets",
            "Packets the datapath decided, by verdict reason",
            m.packets.clone(),
        );
        r.register(
            "dnsfence_enforcer_bytes",
            "Bytes the datapath decided, by verdict reason",
            m.bytes.clone(),
        );
        r.register(
            "dnsfence_enforcer_grants",
            "Grant entries ((pod, destination) pairs) in the map at the last sweep",
            m.grants.clone(),
        );
        r.register(
            "dnsfence_enforcer_grant_batches",
            "Grant batches received from gateways",
            m.grant_batches.clone(),
        );
        r.register(
            "dnsfence_enforcer_grants_received",
            "Grants received from gateways",
            m.grants_received.clone(),
        );
        r.register(
            "dnsfence_enforcer_grant_write_duration_seconds",
            "Time to write one grant batch into the map (the ack follows)",
            m.grant_write_duration.clone(),
        );
        r.register(
            "dnsfence_enforcer_revoked_grants",
            "Grant entries removed or narrowed because a policy change no longer allows them",
            m.revoked_grants.clone(),
        );
        r.register(
            "dnsfence_enforcer_swept_grants",
            "Expired grant entries removed by the sweeper",
            m.swept_grants.clone(),
        );
        r.register(
            "dnsfence_enforcer_gateway_connections",
            "Open grant subscriptions to gateway replicas",
            m.gateway_connections.clone(),
        );
        r.register(
            "dnsfence_enforcer_store_revision",
            "Last store revision applied to the datapath",
            m.store_revision.clone(),
        );
        r.register(
            "dnsfence_enforcer_pods",
            "Pod addresses of this node written into the datapath",
            m.pods.clone(),
        );
        r.register(
            "dnsfence_enforcer_pods_pending",
            "Pod addresses whose host-side interface is not found yet (retried)",
            m.pods_pending.clone(),
        );
        r.register(
            "dnsfence_enforcer_interfaces",
            "Interfaces the programs are attached to",
            m.interfaces.clone(),
        );
        r.register(
            "dnsfence_enforcer_flow_log_lines",
            "Flow-log lines written",
            m.flow_log_lines.clone(),
        );
        r.register(
            "dnsfence_enforcer_flow_log_lines_dropped",
            "Flow-log lines left out by the --event-log-rate limit (or a failed write)",
            m.flow_log_lines_dropped.clone(),
        );
        r.register(
            "dnsfence_enforcer_errors",
            "Store updates or datapath writes that failed",
            m.errors.clone(),
        );
        m
    }

    /// Brings the verdict counters up to the datapath's values. The map's counters only
    /// grow (they survive enforcer restarts), so the difference is added.
    pub fn observe_counters(&self, counters: &Counters) {
        for (reason, packets, bytes) in counters.iter() {
            let labels = ReasonLabels {
                reason: reason.name(),
            };
            let p = self.packets.get_or_create(&labels);
            p.inc_by(packets.saturating_sub(p.get()));
            let b = self.bytes.get_or_create(&labels);
            b.inc_by(bytes.saturating_sub(b.get()));
        }
    }
}

/// Counts an open gateway subscription for as long as it lives.
#[derive(Debug)]
pub struct ConnectionGuard(Gauge);

impl ConnectionGuard {
    /// Increments `gauge` until dropped.
    pub fn new(gauge: &Gauge) -> Self {
        gauge.inc();
        Self(gauge.clone())
    }
}

impl Drop for ConnectionGuard {
    fn drop(&mut self) {
        self.0.dec();
    }
}
