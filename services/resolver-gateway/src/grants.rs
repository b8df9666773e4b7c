//! Grant distribution: the `Grants` service enforcers subscribe to, and the hub the query
//! path hands an answer's grants to and waits on for the ack.
//!
//! Each subscription is one enforcer stream (`Hello{node}` first, then `Ack{seq}`s). A batch
//! goes to every subscription of the pod's node; the answer waits until all of them acked
//! (normally one), bounded by the caller's timeout. Per subscription the hub remembers what
//! was acked, so a grant the enforcer already holds with a later expiry is not sent again;
//! a new subscription (an enforcer restart) starts with nothing remembered.

use std::collections::{BTreeMap, HashMap};

use foldhash::fast::RandomState as Seeded;
use std::net::IpAddr;
use std::pin::Pin;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::{Duration, Instant};

use dnsfence_api::Grant;
use dnsfence_api::grants::v1 as pb;
use dnsfence_api::grants::v1::grants_server::Grants;
use dnsfence_policy::ports::PortRange;
use futures::Stream;
use tokio::sync::{mpsc, oneshot};
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::{Instrument, debug, info, warn};

use crate::metrics::{AckFailure, GatewayMetrics};

/// Batches queued towards one enforcer before the hub counts it as not keeping up.
const SUBSCRIBER_QUEUE: usize = 4096;
/// How long a new stream may take to say hello.
const HELLO_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Delivery {
    /// Every subscription of the node acked.
    Acked,
    /// Nothing new to send: the enforcer holds all of it already.
    AlreadyHeld,
    Failed(AckFailure),
}

impl Delivery {
    pub fn as_str(self) -> &'static str {
        match self {
            Delivery::Acked => "acked",
            Delivery::AlreadyHeld => "already_held",
            Delivery::Failed(f) => f.as_str(),
        }
    }
}

/// The outcome of granting one answer.
#[derive(Debug, Clone, Copy)]
pub struct GrantOutcome {
    pub delivery: Delivery,
    /// The shortest time any of the answer's grants is known to live from now: answer TTLs
    /// must not exceed it, or a client could use a cached address after its grant expired.
    pub lifetime: Option<Duration>,
}

/// What an enforcer acked for one (pod, destination): port ranges with their expiries.
type Held = Vec<(PortRange, Instant)>;

struct PendingBatch {
    done: oneshot::Sender<()>,
    grants: Vec<Grant>,
    sent_at: Instant,
}

struct Subscription {
    id: u64,
    node: String,
    tx: mpsc::Sender<Result<pb::GrantBatch, Status>>,
    next_seq: AtomicU64,
    pending: Mutex<HashMap<u64, PendingBatch, Seeded>>,
    held: Mutex<HashMap<(IpAddr, IpAddr), Held, Seeded>>,
    /// Size of `held` at which expired entries are pruned next: twice what was left after
    /// the last pruning (at least [`PRUNE_FROM`]), so pruning costs O(1) per grant amortised
    /// instead of a full scan per batch once the map is big.
    prune_at: AtomicUsize,
}

/// Below this many (pod, destination) entries, `held` is never pruned.
const PRUNE_FROM: usize = 100_000;

impl std::fmt::Debug for Subscription {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Subscription")
            .field("id", &self.id)
            .field("node", &self.node)
            .finish_non_exhaustive()
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // The guarded maps stay consistent at every await-free step; a panic elsewhere must not
    // take grant delivery down with it.
    m.lock().unwrap_or_else(|e| e.into_inner())
}

impl Subscription {
    /// How long the grant of `ports` on `dst` for `pod` still lives, if this subscription
    /// holds it well enough that a new `lifetime` need not be sent: refreshed once a quarter
    /// of the new lifetime is used up (at most a minute early), so busy names are re-sent
    /// rarely but never run dry.
    fn held_remaining(
        &self,
        pod: IpAddr,
        dst: IpAddr,
        ports: &[PortRange],
        lifetime: Duration,
        now: Instant,
    ) -> Option<Duration> {
        let held = lock(&self.held);
        let remaining = held_lifetime(held.get(&(pod, dst))?, ports, now)?;
        let slack = (lifetime / 4).min(Duration::from_secs(60));
        (remaining + slack >= lifetime).then_some(remaining)
    }

    /// Grants this subscription does not hold well enough yet, and the shortest remaining
    /// lifetime among those it does hold.
    fn missing(&self, grants: &[Grant], now: Instant) -> (Vec<Grant>, Option<Duration>) {
        let mut missing = Vec::new();
        let mut shortest: Option<Duration> = None;
        for g in grants {
            match self.held_remaining(g.pod_ip, g.destination_ip, &g.ports, g.lifetime, now) {
                Some(remaining) => {
                    shortest = Some(shortest.map_or(remaining, |s| s.min(remaining)));
                }
                None => missing.push(g.clone()),
            }
        }
        (missing, shortest)
    }

    fn ack(&self, seq: u64, metrics: &GatewayMetrics) {
        let Some(batch) = lock(&self.pending).remove(&seq) else {
            debug!(seq, node = %self.node, "ack for an unknown or timed-out batch");
            return;
        };
        metrics
            .grant_ack_latency
            .observe(batch.sent_at.elapsed().as_secs_f64());
        {
            let mut held = lock(&self.held);
            for g in batch.grants {
                let expires = batch.sent_at + g.lifetime;
                let entry = held.entry((g.pod_ip, g.destination_ip)).or_default();
                for p in g.ports {
                    match entry.iter_mut().find(|(range, _)| *range == p) {
                        Some((_, e)) => *e = (*e).max(expires),
                        None => entry.push((p, expires)),
                    }
                }
            }
            if held.len() > self.prune_at.load(Ordering::Relaxed) {
                let now = Instant::now();
                held.retain(|_, h| h.iter().any(|(_, e)| *e > now));
                self.prune_at
                    .store((held.len() * 2).max(PRUNE_FROM), Ordering::Relaxed);
            }
        }
        let _ = batch.done.send(());
    }
}

/// How long every one of `wanted` stays covered by `held`, or `None` if one is not.
fn held_lifetime(held: &Held, wanted: &[PortRange], now: Instant) -> Option<Duration> {
    let mut shortest: Option<Duration> = None;
    for w in wanted {
        let best = held
            .iter()
            .filter(|(h, _)| h.protocol == w.protocol && h.start <= w.start && w.end <= h.end)
            .map(|(_, e)| *e)
            .max()?;
        let remaining = best.checked_duration_since(now)?;
        shortest = Some(shortest.map_or(remaining, |s| s.min(remaining)));
    }
    shortest
}

/// Subscriptions by node, shared by the gRPC service and the query path.
#[derive(Debug)]
pub struct GrantHub {
    by_node: RwLock<HashMap<String, Vec<Arc<Subscription>>, Seeded>>,
    next_id: AtomicU64,
    metrics: Arc<GatewayMetrics>,
}

impl GrantHub {
    pub fn new(metrics: Arc<GatewayMetrics>) -> Arc<GrantHub> {
        Arc::new(GrantHub {
            by_node: RwLock::new(HashMap::default()),
            next_id: AtomicU64::new(1),
            metrics,
        })
    }

    pub fn subscribers(&self, node: &str) -> usize {
        self.read().get(node).map_or(0, Vec::len)
    }

    /// If every subscription of `node` holds all of `wanted` (pod address, destination,
    /// ports, lifetime) at `now`: the shortest time one of them still lives. `None`: something
    /// must be sent.
    pub fn already_held<'a>(
        &self,
        node: &str,
        wanted: impl Iterator<Item = (IpAddr, IpAddr, &'a [PortRange], Duration)> + Clone,
        now: Instant,
    ) -> Option<Duration> {
        let map = self.read();
        let subscriptions = map.get(node)?;
        let mut shortest: Option<Duration> = None;
        for sub in subscriptions {
            for (pod, dst, ports, lifetime) in wanted.clone() {
                let remaining = sub.held_remaining(pod, dst, ports, lifetime, now)?;
                shortest = Some(shortest.map_or(remaining, |s| s.min(remaining)));
            }
        }
        shortest
    }

    /// Sends `grants` (all for pods of `node`) to the node's enforcers and waits for their
    /// acks, at most `timeout`.
    ///
    /// Inside a traced query this is a span of its own, from sending to the last ack, and the
    /// batches carry its trace context: the enforcer's span for writing and acking them
    /// becomes its child, so the query, the send and the ack are one trace.
    pub async fn grant(&self, node: &str, grants: Vec<Grant>, timeout: Duration) -> GrantOutcome {
        if !dnsfence_telemetry::in_sampled_trace() {
            return self
                .grant_untraced(node, grants, timeout, BTreeMap::new())
                .await;
        }
        let span = tracing::info_span!(
            target: dnsfence_telemetry::OTEL_TARGET,
            "grant send",
            otel.kind = "producer",
            rpc.system = "grpc",
            rpc.service = "dnsfence.grants.v1.Grants",
            rpc.method = "Subscribe",
            dnsfence.node = node,
            dnsfence.grants = grants.len(),
            dnsfence.delivery = tracing::field::Empty,
        );
        let context: BTreeMap<String, String> = dnsfence_telemetry::propagation::context_map(&span)
            .into_iter()
            .collect();
        let outcome = self
            .grant_untraced(node, grants, timeout, context)
            .instrument(span.clone())
            .await;
        span.record("dnsfence.delivery", outcome.delivery.as_str());
        outcome
    }

    async fn grant_untraced(
        &self,
        node: &str,
        grants: Vec<Grant>,
        timeout: Duration,
        trace_context: BTreeMap<String, String>,
    ) -> GrantOutcome {
        let subscriptions = self.read().get(node).cloned().unwrap_or_default();
        if subscriptions.is_empty() {
            return GrantOutcome {
                delivery: Delivery::Failed(AckFailure::NoSubscriber),
                lifetime: None,
            };
        }
        let now = Instant::now();
        let mut waits = Vec::with_capacity(subscriptions.len());
        let mut lifetime: Option<Duration> = None;
        let mut min_with = |d: Duration| lifetime = Some(lifetime.map_or(d, |l| l.min(d)));
        for sub in &subscriptions {
            let (missing, held) = sub.missing(&grants, now);
            if let Some(h) = held {
                min_with(h);
            }
            self.metrics
                .grants_deduplicated
                .inc_by((grants.len() - missing.len()) as u64);
            if missing.is_empty() {
                continue;
            }
            for g in &missing {
                min_with(g.lifetime);
            }
            match self.send(sub, missing, &trace_context) {
                Ok(rx) => waits.push(rx),
                Err(failure) => {
                    return GrantOutcome {
                        delivery: Delivery::Failed(failure),
                        lifetime,
                    };
                }
            }
        }
        if waits.is_empty() {
            return GrantOutcome {
                delivery: Delivery::AlreadyHeld,
                lifetime,
            };
        }
        let all = futures::future::join_all(waits);
        let delivery = match tokio::time::timeout(timeout, all).await {
            Err(_) => Delivery::Failed(AckFailure::Timeout),
            Ok(results) if results.iter().all(Result::is_ok) => Delivery::Acked,
            Ok(_) => Delivery::Failed(AckFailure::Disconnected),
        };
        GrantOutcome { delivery, lifetime }
    }

    fn send(
        &self,
        sub: &Arc<Subscription>,
        grants: Vec<Grant>,
        trace_context: &BTreeMap<String, String>,
    ) -> Result<oneshot::Receiver<()>, AckFailure> {
        let seq = sub.next_seq.fetch_add(1, Ordering::Relaxed);
        let batch = pb::GrantBatch {
            seq,
            grants: grants.iter().map(pb::Grant::from).collect(),
            trace_context: trace_context.clone(),
        };
        let (done, rx) = oneshot::channel();
        let count = grants.len() as u64;
        lock(&sub.pending).insert(
            seq,
            PendingBatch {
                done,
                grants,
                sent_at: Instant::now(),
            },
        );
        if sub.tx.try_send(Ok(batch)).is_err() {
            lock(&sub.pending).remove(&seq);
            warn!(node = %sub.node, "enforcer subscription is not keeping up; batch dropped");
            return Err(AckFailure::Disconnected);
        }
        self.metrics.grant_batches.inc();
        self.metrics.grants_sent.inc_by(count);
        Ok(rx)
    }

    /// Forgets timed-out batches so their senders do not pile up.
    pub fn expire_pending(&self, older_than: Duration) {
        let now = Instant::now();
        for subs in self.read().values() {
            for sub in subs {
                lock(&sub.pending).retain(|_, b| now.duration_since(b.sent_at) < older_than);
            }
        }
    }

    /// Ends every subscription stream (shutdown): enforcers reconnect to another replica.
    pub fn close_all(&self) {
        for subs in self.read().values() {
            for sub in subs {
                let _ = sub
                    .tx
                    .try_send(Err(Status::unavailable("gateway shutting down")));
            }
        }
    }

    fn register(
        &self,
        node: String,
        tx: mpsc::Sender<Result<pb::GrantBatch, Status>>,
    ) -> Arc<Subscription> {
        let sub = Arc::new(Subscription {
            id: self.next_id.fetch_add(1, Ordering::Relaxed),
            node: node.clone(),
            tx,
            next_seq: AtomicU64::new(1),
            pending: Mutex::new(HashMap::default()),
            held: Mutex::new(HashMap::default()),
            prune_at: AtomicUsize::new(PRUNE_FROM),
        });
        self.write().entry(node).or_default().push(Arc::clone(&sub));
        self.metrics.subscribers.inc();
        sub
    }

    fn unregister(&self, sub: &Subscription) {
        let mut map = self.write();
        if let Some(list) = map.get_mut(&sub.node) {
            list.retain(|s| s.id != sub.id);
            if list.is_empty() {
                map.remove(&sub.node);
            }
        }
        drop(map);
        // Dropping the senders wakes the waiting answers at once.
        lock(&sub.pending).clear();
        self.metrics.subscribers.dec();
    }

    fn read(
        &self,
    ) -> std::sync::RwLockReadGuard<'_, HashMap<String, Vec<Arc<Subscription>>, Seeded>> {
        self.by_node.read().unwrap_or_else(|e| e.into_inner())
    }

    fn write(
        &self,
    ) -> std::sync::RwLockWriteGuard<'_, HashMap<String, Vec<Arc<Subscription>>, Seeded>> {
        self.by_node.write().unwrap_or_else(|e| e.into_inner())
    }
}

/// The gRPC face of the hub.
#[derive(Debug, Clone)]
pub struct GrantsService {
    hub: Arc<GrantHub>,
}

impl GrantsService {
    pub fn new(hub: Arc<GrantHub>) -> GrantsService {
        GrantsService { hub }
    }
}

type BatchStream = Pin<Box<dyn Stream<Item = Result<pb::GrantBatch, Status>> + Send>>;

#[tonic::async_trait]
impl Grants for GrantsService {
    type SubscribeStream = BatchStream;

    async fn subscribe(
        &self,
        request: Request<Streaming<pb::SubscribeRequest>>,
    ) -> Result<Response<Self::SubscribeStream>, Status> {
        let peer = request.remote_addr();
        let mut inbound = request.into_inner();
        let first = tokio::time::timeout(HELLO_TIMEOUT, inbound.message())
            .await
            .map_err(|_| Status::deadline_exceeded("no hello within 10 s"))??;
        let node = match first.and_then(|m| m.kind) {
            Some(pb::subscribe_request::Kind::Hello(hello)) if !hello.node.trim().is_empty() => {
                hello.node
            }
            Some(pb::subscribe_request::Kind::Hello(_)) => {
                return Err(Status::invalid_argument("hello.node: empty"));
            }
            _ => {
                return Err(Status::invalid_argument(
                    "the first message must be hello{node}",
                ));
            }
        };
        let (tx, rx) = mpsc::channel(SUBSCRIBER_QUEUE);
        let sub = self.hub.register(node.clone(), tx);
        info!(%node, ?peer, subscription = sub.id, "enforcer subscribed");
        let hub = Arc::clone(&self.hub);
        tokio::spawn(async move {
            loop {
                match inbound.message().await {
                    Ok(Some(pb::SubscribeRequest {
                        kind: Some(pb::subscribe_request::Kind::Ack(ack)),
                    })) => sub.ack(ack.seq, &hub.metrics),
                    Ok(Some(_)) => debug!(node = %sub.node, "ignoring a repeated hello"),
                    Ok(None) => break,
                    Err(status) => {
                        debug!(node = %sub.node, %status, "subscription stream error");
                        break;
                    }
                }
            }
            hub.unregister(&sub);
            info!(node = %sub.node, subscription = sub.id, "enforcer unsubscribed");
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}
