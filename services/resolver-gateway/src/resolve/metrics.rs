//! The resolve module's metric families (see the list in `resolve/mod.rs`).

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

/// Upper bounds of `upstream_latency_seconds`: 50 µs to 5 s.
const LATENCY_BUCKETS: [f64; 16] = [
    0.000_05, 0.000_1, 0.000_25, 0.000_5, 0.001, 0.002_5, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5,
    1.0, 2.5, 5.0,
];

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolLabels {
    pool: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamLabels {
    pool: String,
    upstream: String,
}

#[derive(Debug, Clone, Hash, PartialEq, Eq, EncodeLabelSet)]
struct UpstreamResultLabels {
    pool: String,
    upstream: String,
    result: &'static str,
}

type HistogramFamily = Family<UpstreamLabels, Histogram, fn() -> Histogram>;

fn latency_histogram() -> Histogram {
    Histogram::new(LATENCY_BUCKETS)
}

/// The metric families of every [`Resolver`](super::Resolver) of one registry.
///
/// [`Resolver::new`](super::Resolver::new) registers a fresh set; several resolvers meant to
/// report into the same registry (e.g. the "upstream" and "cluster" pools) must share one set
/// through [`Resolver::with_metrics`](super::Resolver::with_metrics), since registering the same
/// family names twice would publish duplicate families. Cloning shares the families.
#[derive(Debug, Clone)]
pub struct ResolverMetrics {
    cache_hits: Family<PoolLabels, Counter>,
    cache_misses: Family<PoolLabels, Counter>,
    cache_entries: Family<PoolLabels, Gauge>,
    upstream_queries: Family<UpstreamResultLabels, Counter>,
    upstream_latency: HistogramFamily,
    upstream_mismatched: Family<UpstreamLabels, Counter>,
    upstream_joined: Family<UpstreamLabels, Counter>,
}

impl ResolverMetrics {
    /// Registers the families in `registry` (once per registry).
    pub fn register(registry: &mut Registry) -> ResolverMetrics {
        let metrics = ResolverMetrics {
            cache_hits: Family::default(),
            cache_misses: Family::default(),
            cache_entries: Family::default(),
            upstream_queries: Family::default(),
            upstream_latency: Family::new_with_constructor(latency_histogram as fn() -> Histogram),
            upstream_mismatched: Family::default(),
            upstream_joined: Family::default(),
        };
        // Counters get their `_total` suffix from prometheus-client.
        registry.register(
            "dnsfence_gateway_cache_hits",
            "Questions answered from the answer cache",
            metrics.cache_hits.clone(),
        );
        registry.register(
            "dnsfence_gateway_cache_misses",
            "Questions not in the answer cache (resolved upstream or joined an in-flight query)",
            metrics.cache_misses.clone(),
        );
        registry.register(
            "dnsfence_gateway_cache_entries",
            "Entries in the answer cache",
            metrics.cache_entries.clone(),
        );
        registry.register(
            "dnsfence_gateway_upstream_queries",
            "Queries sent to upstream servers, by result (ok, timeout, servfail, error, truncated)",
            metrics.upstream_queries.clone(),
        );
        registry.register(
            "dnsfence_gateway_upstream_latency_seconds",
            "Time from sending a query to an upstream to its answer",
            metrics.upstream_latency.clone(),
        );
        registry.register(
            "dnsfence_gateway_upstream_mismatched_answers",
            "UDP answers discarded because their ID or question matched no query in flight",
            metrics.upstream_mismatched.clone(),
        );
        registry.register(
            "dnsfence_gateway_upstream_joined_queries",
            "Relayed UDP misses that joined an identical query in flight instead of asking again",
            metrics.upstream_joined.clone(),
        );
        metrics
    }

    pub(super) fn pool(&self, pool: &str) -> PoolMetrics {
        let labels = PoolLabels {
            pool: pool.to_owned(),
        };
        PoolMetrics {
            cache_hits: self.cache_hits.get_or_create(&labels).clone(),
            cache_misses: self.cache_misses.get_or_create(&labels).clone(),
            cache_entries: self.cache_entries.get_or_create(&labels).clone(),
        }
    }

    pub(super) fn upstream(&self, pool: &str, upstream: &str) -> UpstreamMetrics {
        let labels = UpstreamLabels {
            pool: pool.to_owned(),
            upstream: upstream.to_owned(),
        };
        let result = |result: &'static str| {
            self.upstream_queries
                .get_or_create(&UpstreamResultLabels {
                    pool: pool.to_owned(),
                    upstream: upstream.to_owned(),
                    result,
                })
                .clone()
        };
        UpstreamMetrics {
            ok: result("ok"),
            timeout: result("timeout"),
            servfail: result("servfail"),
            error: result("error"),
            truncated: result("truncated"),
            latency: self.upstream_latency.get_or_create(&labels).clone(),
            mismatched: self.upstream_mismatched.get_or_create(&labels).clone(),
            joined: self.upstream_joined.get_or_create(&labels).clone(),
        }
    }
}

/// The per-pool handles, resolved once so the query path takes no family lock.
#[derive(Debug, Clone)]
pub(super) struct PoolMetrics {
    pub cache_hits: Counter,
    pub cache_misses: Counter,
    pub cache_entries: Gauge,
}

/// The per-upstream handles.
#[derive(Debug, Clone)]
pub(super) struct UpstreamMetrics {
    pub ok: Counter,
    pub timeout: Counter,
    pub servfail: Counter,
    pub error: Counter,
    pub truncated: Counter,
    pub latency: Histogram,
    pub mismatched: Counter,
    pub joined: Counter,
}
