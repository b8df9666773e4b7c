//! The service: opens the datapath, restores the state file, and runs the store tail, one
//! grant subscription per gateway replica, the sweeper, the interface retry loop, the flow
//! log reader and the HTTP endpoint until shutdown.

use std::{
    collections::{BTreeSet, HashMap},
    future::Future,
    net::SocketAddr,
    path::PathBuf,
    sync::{
        Arc, Mutex, MutexGuard, RwLock,
        atomic::{AtomicBool, Ordering},
    },
    time::{Duration, Instant},
};

use dnsfence_api::{
    Backoff, ClientTls, Grant,
    grants::v1::{self as gpb, grants_client::GrantsClient},
    tail::{TailConfig, TailUpdate, tail_derived},
};
use prometheus_client::registry::Registry;
use tokio::{net::TcpListener, sync::watch, task::JoinHandle};
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;
use tracing::{Instrument, debug, info, warn};

use crate::{
    Datapath, Error, Result,
    config::Config,
    flowlog,
    metrics::{ConnectionGuard, Metrics},
    node::{Directory, Node},
    state,
};

/// Updates applied (and persisted) together at most.
const MAX_BATCH: usize = 4096;
/// Every this many interface retries, every pod's interface is checked, not only the
/// missing ones.
const FULL_INTERFACE_CHECK_EVERY: u32 = 30;

/// The sockets the service serves on, bound before [`run`] so a caller (or a test) knows
/// the addresses.
#[derive(Debug)]
pub struct Listeners {
    /// `--metrics-listen`, if any.
    pub http: Option<TcpListener>,
}

impl Listeners {
    /// The metrics endpoint's address.
    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

/// Binds the listeners of `config`.
pub async fn bind(config: &Config) -> Result<Listeners> {
    let http = if config.metrics_listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&config.metrics_listen)
                .await
                .map_err(|source| Error::Bind {
                    what: "metrics (--metrics-listen)",
                    address: config.metrics_listen.clone(),
                    source,
                })?,
        )
    };
    Ok(Listeners { http })
}

fn lock(node: &Mutex<Node>) -> MutexGuard<'_, Node> {
    // Node keeps its maps consistent at every step; a panic in one task must not take
    // grant delivery down with it.
    node.lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
}

/// What the tasks share.
struct Shared {
    node: Mutex<Node>,
    /// Pod names for the grant spans.
    directory: Arc<RwLock<Directory>>,
    metrics: Arc<Metrics>,
    node_name: String,
    tls: ClientTls,
    connect_timeout: Duration,
    ready: AtomicBool,
    persister: Persister,
}

/// Serialises state-file writes; the state is taken under its lock, so the last write
/// holds the latest state.
struct Persister {
    path: PathBuf,
    lock: tokio::sync::Mutex<()>,
}

impl Persister {
    async fn persist(&self, node: &Mutex<Node>) {
        let _guard = self.lock.lock().await;
        let state = lock(node).to_state();
        let path = self.path.clone();
        let written = tokio::task::spawn_blocking(move || state::save(&path, &state)).await;
        match written {
            Ok(Ok(())) => {}
            Ok(Err(e)) => warn!(error = %e, "writing the state file failed"),
            Err(e) => warn!(error = %e, "writing the state file failed"),
        }
    }
}

/// Runs the enforcer until `shutdown` completes. Enforcement outlives the process: on
/// shutdown nothing is detached and the maps stay pinned; the state file is written.
///
/// Needs tokio's multi-threaded runtime (datapath work runs under `block_in_place`) and
/// must run in the node's network namespace (interfaces and routes are looked up there)
/// with bpffs visible (enter a lab namespace with `nsenter --net`, not `ip netns exec`).
pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<()> {
    config.validate()?;
    let mut registry = Registry::default();
    let metrics = Arc::new(Metrics::register(&mut registry));
    let directory = Arc::new(RwLock::new(Directory::default()));

    let pin_dir = config.pin_dir.clone();
    let mut dp = tokio::task::spawn_blocking(move || Datapath::open(&pin_dir))
        .await
        .map_err(|e| Error::Task(format!("opening the datapath: {e}")))??;
    dp.set_gateways(&config.gateway_ips)?;
    if config.gateway_ips.is_empty() {
        warn!("no --gateway-ips: enforced pods cannot reach any DNS server");
    }
    let events = if config.event_logs {
        Some(dp.event_reader()?)
    } else {
        None
    };
    info!(pin_dir = %config.pin_dir.display(), gateways = ?config.gateway_ips, default = config.default_policy.as_str(), "datapath open");

    let mut node = Node::new(
        dp,
        config.node_name.clone(),
        config.default_policy,
        Arc::clone(&metrics),
        Arc::clone(&directory),
    );
    match state::load(&config.state_file) {
        Ok(Some(file)) if file.node == config.node_name => {
            let revision = file.revision;
            match node.restore(file) {
                Ok(()) => info!(revision, path = %config.state_file.display(), "state restored"),
                Err(e) => warn!(error = %e, "state file unusable; starting from a store snapshot"),
            }
        }
        Ok(Some(file)) => warn!(
            node = %file.node,
            "the state file belongs to another node; starting from a store snapshot"
        ),
        Ok(None) => info!("no state file; starting from a store snapshot"),
        Err(e) => warn!(error = %e, "starting from a store snapshot"),
    }
    tokio::task::block_in_place(|| node.reconcile())?;
    let from_revision = node.revision();

    let shared = Arc::new(Shared {
        node: Mutex::new(node),
        directory: Arc::clone(&directory),
        metrics: Arc::clone(&metrics),
        node_name: config.node_name.clone(),
        tls: config.tls.clone(),
        connect_timeout: config.connect_timeout,
        ready: AtomicBool::new(false),
        persister: Persister {
            path: config.state_file.clone(),
            lock: tokio::sync::Mutex::new(()),
        },
    });
    let (stop_tx, stop_rx) = watch::channel(false);

    let store = dnsfence_api::connect_lazy(&config.store, &config.tls, config.connect_timeout)?;
    let mut tasks: Vec<JoinHandle<()>> = vec![
        tokio::spawn(store_loop(
            Arc::clone(&shared),
            store,
            from_revision,
            config.connect_timeout,
            stop_rx.clone(),
        )),
        tokio::spawn(gateways_loop(
            Arc::clone(&shared),
            config.gateway_addresses(),
            config.gateway_dns_name.clone(),
            config.gateway_resolve_interval,
            stop_rx.clone(),
        )),
        tokio::spawn(sweep_loop(
            Arc::clone(&shared),
            config.sweep_interval,
            stop_rx.clone(),
        )),
        tokio::spawn(interface_loop(
            Arc::clone(&shared),
            config.interface_retry_interval,
            stop_rx.clone(),
        )),
    ];
    if let Some(listener) = listeners.http {
        let mut stop = stop_rx.clone();
        let probe = Arc::new(HttpProbe(Arc::clone(&shared)));
        let registry = Arc::new(registry);
        tasks.push(tokio::spawn(async move {
            let signal = async move {
                let _ = stop.wait_for(|s| *s).await;
            };
            if let Err(e) = dnsfence_telemetry::http::serve(listener, registry, probe, signal).await
            {
                warn!(error = %e, "metrics endpoint failed");
            }
        }));
    }
    let flow_stop = Arc::new(AtomicBool::new(false));
    let flow = match events {
        Some(reader) => Some(
            flowlog::start(
                reader,
                Arc::clone(&directory),
                dnsfence_telemetry::jsonlog::LineLog::stdout(
                    config.event_log_rate,
                    metrics.flow_log_lines.clone(),
                    metrics.flow_log_lines_dropped.clone(),
                ),
                Arc::clone(&flow_stop),
            )
            .map_err(|e| Error::Task(format!("starting the flow-log thread: {e}")))?,
        ),
        None => None,
    };
    info!(node = %config.node_name, store = %config.store, from_revision, "running");

    shutdown.await;
    info!("shutting down; enforcement stays in place");
    stop_tx.send_replace(true);
    flow_stop.store(true, Ordering::Relaxed);
    for task in tasks {
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(_) => {}
            Err(_) => warn!("a task did not stop in time"),
        }
    }
    if let Some(handle) = flow {
        let _ = tokio::task::spawn_blocking(move || handle.join()).await;
    }
    shared.persister.persist(&shared.node).await;
    Ok(())
}

// ---- the store ----

async fn store_loop(
    shared: Arc<Shared>,
    channel: Channel,
    from_revision: u64,
    connect_timeout: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let tail = |from_revision| {
        tail_derived(
            channel.clone(),
            TailConfig {
                node: shared.node_name.clone(),
                from_revision,
                connect_timeout,
            },
        )
    };
    let mut rx = tail(from_revision);
    loop {
        let first = tokio::select! {
            u = rx.recv() => u,
            _ = stop.wait_for(|s| *s) => return,
        };
        let Some(first) = first else {
            warn!("the store tail ended");
            return;
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(u) => batch.push(u),
                Err(_) => break,
            }
        }
        for u in &batch {
            if let TailUpdate::Disconnected(reason) = u {
                debug!(%reason, "store watch interrupted");
            }
        }
        let started = Instant::now();
        let n = batch.len();
        let applied = {
            let node = &shared.node;
            tokio::task::block_in_place(|| lock(node).apply(batch))
        };
        if applied.changed {
            shared.persister.persist(&shared.node).await;
        }
        debug!(updates = n, elapsed = ?started.elapsed(), "store updates applied");
        if applied.caught_up && !shared.ready.swap(true, Ordering::SeqCst) {
            info!(
                revision = lock(&shared.node).revision(),
                "caught up with the store: ready"
            );
        }
        if applied.resync {
            rx = tail(0);
        }
    }
}

// ---- gateways ----

async fn gateways_loop(
    shared: Arc<Shared>,
    fixed: Vec<String>,
    dns_name: Option<String>,
    resolve_interval: Duration,
    mut stop: watch::Receiver<bool>,
) {
    let mut tasks: HashMap<String, JoinHandle<()>> = HashMap::new();
    for address in fixed {
        let task = tokio::spawn(subscribe_loop(
            Arc::clone(&shared),
            address.clone(),
            stop.clone(),
        ));
        tasks.insert(address, task);
    }
    if let Some(name) = dns_name {
        let mut resolved: HashMap<String, JoinHandle<()>> = HashMap::new();
        let mut tick = tokio::time::interval(resolve_interval);
        loop {
            tokio::select! {
                _ = tick.tick() => {}
                _ = stop.wait_for(|s| *s) => break,
            }
            match tokio::net::lookup_host(name.as_str()).await {
                Ok(addrs) => {
                    let want: BTreeSet<String> = addrs.map(|a| a.to_string()).collect();
                    resolved.retain(|address, task| {
                        let keep = want.contains(address);
                        if !keep {
                            info!(gateway = %address, %name, "gateway replica gone from DNS");
                            task.abort();
                        }
                        keep
                    });
                    for address in want {
                        if let std::collections::hash_map::Entry::Vacant(slot) =
                            resolved.entry(address)
                        {
                            let address = slot.key().clone();
                            info!(gateway = %address, %name, "gateway replica found in DNS");
                            slot.insert(tokio::spawn(subscribe_loop(
                                Arc::clone(&shared),
                                address,
                                stop.clone(),
                            )));
                        }
                    }
                }
                // keep the replicas known so far
                Err(e) => warn!(%name, error = %e, "resolving the gateways failed"),
            }
        }
        tasks.extend(resolved);
    } else {
        let _ = stop.wait_for(|s| *s).await;
    }
    for (_, task) in tasks {
        let _ = tokio::time::timeout(Duration::from_secs(2), task).await;
    }
}

async fn subscribe_loop(shared: Arc<Shared>, address: String, mut stop: watch::Receiver<bool>) {
    let mut backoff = Backoff::new(Duration::from_millis(100), Duration::from_secs(10));
    loop {
        let result = tokio::select! {
            r = subscribe_once(&shared, &address, &mut backoff) => r,
            _ = stop.wait_for(|s| *s) => return,
        };
        match result {
            Ok(()) => {
                info!(gateway = %address, "the gateway ended the grant stream; resubscribing")
            }
            Err(e) => warn!(gateway = %address, error = %e, "grant subscription failed; retrying"),
        }
        let delay = backoff.next_delay();
        tokio::select! {
            () = tokio::time::sleep(delay) => {}
            _ = stop.wait_for(|s| *s) => return,
        }
    }
}

/// One subscription: Hello, then for each batch write every grant into the map and ack
/// it. The ack goes out only after the writes, so the gateway's answer never precedes the
/// grant.
async fn subscribe_once(
    shared: &Shared,
    address: &str,
    backoff: &mut Backoff,
) -> std::result::Result<(), String> {
    let channel = dnsfence_api::connect(address, &shared.tls, shared.connect_timeout)
        .await
        .map_err(|e| e.to_string())?;
    let mut client = GrantsClient::with_interceptor(channel, dnsfence_api::TraceContext);
    let (tx, rx) = tokio::sync::mpsc::channel::<gpb::SubscribeRequest>(1024);
    tx.send(gpb::SubscribeRequest {
        kind: Some(gpb::subscribe_request::Kind::Hello(gpb::Hello {
            node: shared.node_name.clone(),
        })),
    })
    .await
    .map_err(|e| e.to_string())?;
    // Opening the subscription is traced (its gRPC call carries the context); the
    // long-lived stream is not, each batch is.
    let span = tracing::info_span!(
        target: dnsfence_telemetry::OTEL_TARGET,
        "grant subscribe",
        otel.kind = "client",
        rpc.system = "grpc",
        rpc.service = "dnsfence.grants.v1.Grants",
        rpc.method = "Subscribe",
        server.address = address,
        dnsfence.node = %shared.node_name,
    );
    let response = tokio::time::timeout(
        shared.connect_timeout,
        client.subscribe(ReceiverStream::new(rx)),
    )
    .instrument(span)
    .await
    .map_err(|_| format!("subscribing timed out after {:?}", shared.connect_timeout))?
    .map_err(|s| format!("subscribing: {}", s.message()))?;
    let mut stream = response.into_inner();
    let _connected = ConnectionGuard::new(&shared.metrics.gateway_connections);
    info!(gateway = %address, node = %shared.node_name, "subscribed for grants");
    backoff.reset();
    loop {
        let batch = match stream.message().await {
            Ok(Some(b)) => b,
            Ok(None) => return Ok(()),
            Err(status) => return Err(format!("grant stream: {}", status.message())),
        };
        let span = grant_apply_span(shared, address, &batch);
        apply_batch(shared, address, batch, &tx)
            .instrument(span)
            .await?;
    }
}

/// The span of writing and acking one batch, a child of the gateway's "grant send" (and so
/// of the DNS query) when the batch carries a trace context; none otherwise.
fn grant_apply_span(shared: &Shared, address: &str, batch: &gpb::GrantBatch) -> tracing::Span {
    if batch.trace_context.is_empty() {
        return tracing::Span::none();
    }
    let span = tracing::info_span!(
        target: dnsfence_telemetry::OTEL_TARGET,
        "grant apply",
        otel.kind = "consumer",
        rpc.system = "grpc",
        rpc.service = "dnsfence.grants.v1.Grants",
        rpc.method = "Subscribe",
        server.address = address,
        dnsfence.node = %shared.node_name,
        dnsfence.grant.seq = batch.seq,
        dnsfence.grants = batch.grants.len(),
        dnsfence.grants.failed = tracing::field::Empty,
        dnsfence.pod = tracing::field::Empty,
        dnsfence.namespace = tracing::field::Empty,
        dnsfence.revision = tracing::field::Empty,
        dns.question.name = tracing::field::Empty,
    );
    dnsfence_telemetry::propagation::set_parent_from_map(&span, &batch.trace_context);
    span
}

/// Writes one batch into the map, then acks it. A batch not written entirely is not acked:
/// the gateway must not count on grants that are not in the map.
async fn apply_batch(
    shared: &Shared,
    address: &str,
    batch: gpb::GrantBatch,
    tx: &tokio::sync::mpsc::Sender<gpb::SubscribeRequest>,
) -> std::result::Result<(), String> {
    let span = tracing::Span::current();
    let started = Instant::now();
    let mut grants = Vec::with_capacity(batch.grants.len());
    for g in batch.grants {
        match Grant::try_from(g) {
            Ok(g) => grants.push(g),
            Err(e) => warn!(gateway = %address, error = %e, "ignoring a malformed grant"),
        }
    }
    if !span.is_disabled()
        && let Some(first) = grants.first()
    {
        span.record("dns.question.name", first.name.as_str());
        if let Ok(d) = shared.directory.read()
            && let Some(pod) = d.pods.get(&first.pod_ip)
        {
            span.record("dnsfence.pod", pod.name.as_str());
            span.record("dnsfence.namespace", pod.namespace.as_str());
        }
    }
    let count = grants.len() as u64;
    let (written, revision) = {
        let mut node = lock(&shared.node);
        (node.install_grants(grants), node.revision())
    };
    span.record("dnsfence.revision", revision);
    shared
        .metrics
        .grant_write_duration
        .observe(started.elapsed().as_secs_f64());
    shared.metrics.grant_batches.inc();
    shared.metrics.grants_received.inc_by(count);
    match written {
        Ok(0) => {}
        Ok(failed) => {
            span.record("dnsfence.grants.failed", failed);
            warn!(gateway = %address, seq = batch.seq, failed, "grant batch not fully written; not acked");
            return Ok(());
        }
        Err(e) => {
            warn!(gateway = %address, seq = batch.seq, error = %e, "grant batch not written; not acked");
            return Ok(());
        }
    }
    tx.send(gpb::SubscribeRequest {
        kind: Some(gpb::subscribe_request::Kind::Ack(gpb::Ack {
            seq: batch.seq,
        })),
    })
    .await
    .map_err(|_| "the request stream closed".to_string())
}

// ---- periodic work ----

async fn sweep_loop(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        let dirty = {
            let node = &shared.node;
            tokio::task::block_in_place(|| {
                let mut node = lock(node);
                match node.sweep() {
                    Ok(0) => {}
                    Ok(n) => debug!(removed = n, "expired grants swept"),
                    Err(e) => warn!(error = %e, "sweeping grants failed"),
                }
                node.dirty()
            })
        };
        if dirty {
            shared.persister.persist(&shared.node).await;
        }
    }
}

async fn interface_loop(shared: Arc<Shared>, every: Duration, mut stop: watch::Receiver<bool>) {
    let mut tick = tokio::time::interval(every);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut n: u32 = 0;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.wait_for(|s| *s) => return,
        }
        n = n.wrapping_add(1);
        let all = n.is_multiple_of(FULL_INTERFACE_CHECK_EVERY);
        let node = &shared.node;
        tokio::task::block_in_place(|| lock(node).retry_interfaces(all));
    }
}

// ---- HTTP ----

/// The enforcer's answers to the HTTP endpoint: ready once caught up with the store; the
/// datapath's per-CPU counters are read at each scrape.
struct HttpProbe(Arc<Shared>);

impl dnsfence_telemetry::http::Probe for HttpProbe {
    fn ready(&self) -> bool {
        self.0.ready.load(Ordering::SeqCst)
    }

    fn before_scrape(&self) {
        match lock(&self.0.node).counters() {
            Ok(c) => self.0.metrics.observe_counters(&c),
            Err(e) => warn!(error = %e, "reading the datapath counters failed"),
        }
    }
}
