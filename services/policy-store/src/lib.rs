//! dnsfence policy-store: the single writer of the event log.
//!
//! `run` opens (and replays) the log, serves the `PolicyStore` gRPC API with health and
//! reflection on the given listeners, and returns when `shutdown` resolves or the log fails.

pub mod cluster;
pub mod codec;
pub mod config;
pub mod error;
pub mod explain;
pub mod metrics;
pub mod role;
pub mod selection;
pub mod service;
pub mod state;
pub mod store;
pub mod watch;
pub mod writes;

use std::future::Future;
use std::sync::Arc;
use std::time::Duration;

use dnsfence_api::Listener;
use dnsfence_api::store::v1::policy_store_server::PolicyStoreServer;
use prometheus_client::registry::Registry;
use tokio::sync::watch as signal;
use tokio::task::JoinHandle;
use tracing::{info, warn};

pub use config::{Config, Mode};
pub use error::StoreError;
pub use store::Store;

use cluster::{ClusterSettings, Readiness};
use metrics::StoreMetrics;
use role::Role;

/// Largest message the store accepts or sends: big applies and snapshot parts fit, runaway
/// clients do not.
const MAX_MESSAGE_BYTES: usize = 64 * 1024 * 1024;

/// Binds the listeners the config names (TCP and/or Unix socket).
pub async fn bind(config: &Config) -> Result<Vec<Listener>, StoreError> {
    let mut listeners = Vec::new();
    if !config.listen.is_empty() {
        let l = Listener::bind(&config.listen)
            .await
            .map_err(|e| StoreError::Config(format!("--listen: {e}")))?;
        listeners.push(l);
    }
    if let Some(path) = &config.unix_socket {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| {
                StoreError::Config(format!("--unix-socket {}: {e}", path.display()))
            })?;
        }
        let l = Listener::bind(&format!("unix://{}", path.display()))
            .await
            .map_err(|e| StoreError::Config(format!("--unix-socket: {e}")))?;
        listeners.push(l);
    }
    if listeners.is_empty() {
        return Err(StoreError::Config(
            "nothing to listen on: give --listen HOST:PORT or --unix-socket PATH".into(),
        ));
    }
    Ok(listeners)
}

/// How long a stopping store waits for its controller or follower to finish (releasing the
/// Lease included) before it closes the log anyway.
const BACKGROUND_STOP_TIMEOUT: Duration = Duration::from_secs(10);

/// What runs beside the gRPC server: the cluster-mode election, controller and follower, or a
/// standalone follower. Stopped before the log closes.
#[derive(Debug)]
pub struct Background {
    stop: signal::Sender<bool>,
    task: JoinHandle<Result<(), StoreError>>,
}

pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    config.validate().map_err(StoreError::Config)?;
    // Cluster mode's settings and client first: a misconfiguration fails before the log opens.
    let kube = match config.mode {
        Mode::Cluster => {
            let settings = ClusterSettings::from_config(&config)?;
            let client = kube::Client::try_default().await.map_err(|e| {
                StoreError::Kube(format!(
                    "no Kubernetes client configuration (in-cluster service account or kubeconfig): {e}"
                ))
            })?;
            Some((settings, client))
        }
        Mode::Standalone => None,
    };
    let store = Store::open(config.clone()).await?;
    let mut registry = Registry::default();
    let metrics = Arc::new(StoreMetrics::register(&mut registry));
    let (stop, stopped) = signal::channel(false);
    let (readiness_tx, readiness) = signal::channel::<Option<Readiness>>(None);
    let task = match (kube, &config.follow) {
        (Some((settings, client)), _) => {
            let running = cluster::run(
                Arc::clone(&store),
                client,
                settings,
                Arc::clone(&metrics),
                stopped,
                readiness_tx,
            );
            let failing = Arc::clone(&store);
            Some(tokio::spawn(async move {
                let result = running.await;
                if let Err(e) = &result {
                    // Crash-only: a store that can no longer play its part stops, and its
                    // restart starts cluster mode afresh.
                    failing.stop_fatally(format!("cluster mode failed: {e}"));
                }
                result
            }))
        }
        (None, Some(address)) => {
            let (progress, replica) = signal::channel(Default::default());
            readiness_tx.send_replace(Some(Readiness::new(
                signal::channel(false).1,
                replica,
                store.subscribe_role(),
            )));
            let follower = cluster::spawn_standalone_follower(
                &store,
                address,
                &config.peer_tls,
                &metrics,
                progress,
            );
            let mut stopped = stopped;
            Some(tokio::spawn(async move {
                let _ = stopped.wait_for(|s| *s).await;
                follower.abort();
                Ok(())
            }))
        }
        (None, None) => None,
    };
    if !config.metrics_listen.is_empty() {
        let listener = tokio::net::TcpListener::bind(&config.metrics_listen)
            .await
            .map_err(|e| {
                StoreError::Config(format!("--metrics-listen {}: {e}", config.metrics_listen))
            })?;
        let probe = Arc::new(StoreProbe {
            store: Arc::clone(&store),
            metrics: Arc::clone(&metrics),
            readiness,
        });
        let mut closing = store.closing();
        tokio::spawn(async move {
            let stop = async move {
                let _ = closing.wait_for(|c| *c).await;
            };
            if let Err(e) =
                dnsfence_telemetry::http::serve(listener, Arc::new(registry), probe, stop).await
            {
                warn!(error = %e, "metrics endpoint failed");
            }
        });
    }
    let background = task.map(|task| Background { stop, task });
    serve_with(store, &config, listeners, shutdown, background).await
}

/// Answers /readyz and refreshes gauges before a scrape.
struct StoreProbe {
    store: Arc<Store>,
    metrics: Arc<StoreMetrics>,
    readiness: signal::Receiver<Option<Readiness>>,
}

impl dnsfence_telemetry::http::Probe for StoreProbe {
    fn ready(&self) -> bool {
        match &*self.readiness.borrow() {
            Some(r) => r.ready(),
            None => self.store.role() == Role::Standalone,
        }
    }

    fn before_scrape(&self) {
        self.metrics
            .revision
            .set(i64::try_from(self.store.log().head()).unwrap_or(i64::MAX));
    }

    fn not_ready_reason(&self) -> &'static str {
        match self.store.role() {
            Role::Leader => "listing the cluster's policies, pods and namespaces",
            Role::Follower { .. } => "catching up with the leader's log",
            Role::Standalone => "starting",
        }
    }
}

/// Serves an opened store; split from `run` so tests can hold the `Store`.
pub async fn serve(
    store: Arc<Store>,
    config: &Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    serve_with(store, config, listeners, shutdown, None).await
}

/// Serves an opened store with what runs beside it, which is stopped (and awaited) before
/// the log closes.
pub async fn serve_with(
    store: Arc<Store>,
    config: &Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
    background: Option<Background>,
) -> Result<(), StoreError> {
    let (reporter, health, reflection) = dnsfence_api::transport::health_and_reflection()?;
    let service = PolicyStoreServer::new(service::StoreService::new(Arc::clone(&store)))
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    reporter
        .set_serving::<PolicyStoreServer<service::StoreService>>()
        .await;
    let router = dnsfence_api::server_builder(&config.tls)?
        .add_service(health)
        .add_service(reflection)
        .add_service(service);
    for l in &listeners {
        info!(listener = %l, revision = store.log().head(), "policy-store serving");
    }
    let mut fatal = store.fatal();
    let stopping = Arc::clone(&store);
    let stop = async move {
        tokio::select! {
            () = shutdown => {}
            _ = fatal.wait_for(Option::is_some) => warn!("stopping: a fatal failure"),
        }
        // The graceful shutdown waits for open streams; watch streams would never end.
        stopping.begin_shutdown();
    };
    let served = dnsfence_api::serve(router, listeners, stop).await;
    if let Some(b) = background {
        b.stop.send_replace(true);
        match tokio::time::timeout(BACKGROUND_STOP_TIMEOUT, b.task).await {
            Ok(Ok(Ok(()))) => {}
            Ok(Ok(Err(e))) => warn!(error = %e, "cluster mode stopped with an error"),
            Ok(Err(e)) => warn!(error = %e, "cluster mode task failed"),
            Err(_) => warn!("cluster mode did not stop in time"),
        }
    }
    served?;
    store.log().close().await?;
    if let Some(reason) = store.fatal().borrow().clone() {
        return Err(StoreError::Config(format!("stopped: {reason}")));
    }
    info!("policy-store stopped");
    Ok(())
}
