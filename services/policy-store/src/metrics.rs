//! The store's metrics, served on `--metrics-listen` (names listed in the README).

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::registry::Registry;

/// The kinds of Kubernetes objects the controller watches.
#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum WatchedKind {
    Pod,
    Namespace,
    NetworkPolicy,
    ApplicationNetworkPolicy,
    ClusterNetworkPolicy,
    UpstreamClusterNetworkPolicy,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum KubeEvent {
    /// An object was created or changed.
    Apply,
    /// An object was deleted.
    Delete,
    /// A full list finished (start, or a watch restarted with a relist).
    Resync,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindLabels {
    pub kind: WatchedKind,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KindEventLabels {
    pub kind: WatchedKind,
    pub event: KubeEvent,
}

#[derive(Debug, Clone, Copy, Hash, PartialEq, Eq, EncodeLabelValue)]
pub enum PatchResult {
    Ok,
    Error,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: PatchResult,
}

#[derive(Debug, Clone, Default)]
pub struct StoreMetrics {
    /// Head of the log.
    pub revision: Gauge,
    /// 1 while this replica holds the Lease (cluster mode).
    pub leader: Gauge,
    /// Times this replica became the leader.
    pub leader_transitions: Counter,
    pub kube_events: Family<KindEventLabels, Counter>,
    pub kube_watch_errors: Family<KindLabels, Counter>,
    pub status_patches: Family<ResultLabels, Counter>,
    /// Policies whose last seen version the parser rejected.
    pub invalid_policies: Gauge,
    /// Events copied from the leader.
    pub replicated_events: Counter,
    /// Snapshots adopted from the leader (start, a new leader, or too far behind).
    pub replica_resyncs: Counter,
    /// 1 while a follower's Watch on the leader is open.
    pub replica_connected: Gauge,
}

impl StoreMetrics {
    pub fn register(registry: &mut Registry) -> StoreMetrics {
        let m = StoreMetrics::default();
        let r = registry.sub_registry_with_prefix("dnsfence_store");
        r.register("revision", "Head of the event log", m.revision.clone());
        r.register(
            "leader",
            "1 while this replica holds the Lease and writes the log",
            m.leader.clone(),
        );
        r.register(
            "leader_transitions",
            "Times this replica became the leader",
            m.leader_transitions.clone(),
        );
        r.register(
            "kube_events",
            "Kubernetes watch events handled, by kind and event",
            m.kube_events.clone(),
        );
        r.register(
            "kube_watch_errors",
            "Kubernetes watch errors (each followed by a backoff and a retry), by kind",
            m.kube_watch_errors.clone(),
        );
        r.register(
            "status_patches",
            "Policy status updates written to the Kubernetes API, by result",
            m.status_patches.clone(),
        );
        r.register(
            "invalid_policies",
            "Policies whose current version the parser rejects",
            m.invalid_policies.clone(),
        );
        r.register(
            "replicated_events",
            "Events a follower copied from the leader",
            m.replicated_events.clone(),
        );
        r.register(
            "replica_resyncs",
            "Snapshots a follower adopted from the leader",
            m.replica_resyncs.clone(),
        );
        r.register(
            "replica_connected",
            "1 while a follower's Watch on the leader is open",
            m.replica_connected.clone(),
        );
        m
    }

    pub fn kube_event(&self, kind: WatchedKind, event: KubeEvent) {
        self.kube_events
            .get_or_create(&KindEventLabels { kind, event })
            .inc();
    }

    pub fn watch_error(&self, kind: WatchedKind) {
        self.kube_watch_errors
            .get_or_create(&KindLabels { kind })
            .inc();
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    /// The names the README lists are the names served.
    #[test]
    fn exported_names() {
        let mut registry = Registry::default();
        let m = StoreMetrics::register(&mut registry);
        m.kube_event(WatchedKind::ApplicationNetworkPolicy, KubeEvent::Apply);
        m.watch_error(WatchedKind::Pod);
        m.status_patches
            .get_or_create(&ResultLabels {
                result: PatchResult::Ok,
            })
            .inc();
        let mut text = String::new();
        prometheus_client::encoding::text::encode(&mut text, &registry).unwrap();
        for line in [
            "dnsfence_store_revision 0",
            "dnsfence_store_leader 0",
            "dnsfence_store_leader_transitions_total 0",
            "dnsfence_store_kube_events_total{kind=\"ApplicationNetworkPolicy\",event=\"Apply\"} 1",
            "dnsfence_store_kube_watch_errors_total{kind=\"Pod\"} 1",
            "dnsfence_store_status_patches_total{result=\"Ok\"} 1",
            "dnsfence_store_invalid_policies 0",
            "dnsfence_store_replicated_events_total 0",
            "dnsfence_store_replica_resyncs_total 0",
            "dnsfence_store_replica_connected 0",
        ] {
            assert!(text.lines().any(|l| l == line), "{line} missing in\n{text}");
        }
    }
}
