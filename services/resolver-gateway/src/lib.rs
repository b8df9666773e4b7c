//! dnsfence resolver-gateway: the DNS server pods use as their resolver.
//!
//! `run` tails the policy store for pods and allowlists, serves DNS on UDP and TCP, the
//! `Grants` gRPC service enforcers subscribe to, and an HTTP endpoint with metrics and
//! readiness. A query is answered only after the enforcer of the asking pod's node acked the
//! grants for the answer's addresses (bounded by `--grant-ack-timeout`).

pub mod config;
pub mod dns_server;
pub mod error;
pub mod fast;
pub mod fifo;
pub mod grants;
pub mod handler;
pub mod http;
pub mod identity;
pub mod metrics;
pub mod resolve;
pub mod udp_batch;
pub mod wire;

use std::future::Future;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use dnsfence_api::Listener;
use dnsfence_api::grants::v1::grants_server::GrantsServer;
use dnsfence_api::tail::{TailConfig, TailUpdate, tail_derived};
use prometheus_client::registry::Registry;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::{mpsc, watch};
use tracing::{info, warn};

pub use config::Config;
pub use error::GatewayError;

use crate::dns_server::{TcpServer, bind_dns, serve_udp};
use crate::grants::{GrantHub, GrantsService};
use crate::handler::{Gateway, Settings};
use crate::identity::Identities;
use crate::metrics::GatewayMetrics;
use crate::resolve::{CacheConfig, Resolver, UpstreamConfig};

/// Every socket the gateway serves on, bound before `run` so tests can use port 0.
#[derive(Debug)]
pub struct Listeners {
    pub dns_udp: UdpSocket,
    pub dns_tcp: TcpListener,
    pub grpc: Listener,
    pub http: Option<TcpListener>,
}

impl Listeners {
    pub fn dns_addr(&self) -> std::io::Result<SocketAddr> {
        self.dns_udp.local_addr()
    }

    pub fn http_addr(&self) -> Option<SocketAddr> {
        self.http.as_ref().and_then(|l| l.local_addr().ok())
    }
}

pub async fn bind(config: &Config) -> Result<Listeners, GatewayError> {
    let (dns_udp, dns_tcp) = bind_dns(config.dns_listen, config.dns_reuse_port)
        .await
        .map_err(|source| GatewayError::Bind {
            what: "DNS (--dns-listen)",
            address: config.dns_listen.to_string(),
            source,
        })?;
    let grpc = Listener::bind(&config.grpc_listen)
        .await
        .map_err(|e| GatewayError::Config(format!("--grpc-listen: {e}")))?;
    let http = if config.metrics_listen.is_empty() {
        None
    } else {
        Some(
            TcpListener::bind(&config.metrics_listen)
                .await
                .map_err(|source| GatewayError::Bind {
                    what: "metrics (--metrics-listen)",
                    address: config.metrics_listen.clone(),
                    source,
                })?,
        )
    };
    Ok(Listeners {
        dns_udp,
        dns_tcp,
        grpc,
        http,
    })
}

pub async fn run(
    config: Config,
    listeners: Listeners,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), GatewayError> {
    config.validate().map_err(GatewayError::Config)?;
    let mut registry = Registry::default();
    let metrics = Arc::new(GatewayMetrics::register(&mut registry));
    let cache = CacheConfig {
        max_entries: config.cache_size,
        ..CacheConfig::default()
    };
    let upstream = |servers: Vec<SocketAddr>| UpstreamConfig {
        servers,
        timeout: config.upstream_timeout,
        attempts: config.upstream_attempts,
        sockets_per_server: config.upstream_sockets,
    };
    let resolver = Arc::new(
        Resolver::new(
            "upstream",
            upstream(config.upstream.clone()),
            cache.clone(),
            &mut registry,
        )
        .await?,
    );
    let cluster_resolver = if config.cluster_dns.is_empty() {
        Arc::clone(&resolver)
    } else {
        Arc::new(
            Resolver::with_metrics(
                "cluster",
                upstream(config.cluster_dns.clone()),
                cache,
                resolver.metrics(),
            )
            .await?,
        )
    };
    let registry = Arc::new(registry);

    let identities = Identities::new();
    let channel =
        dnsfence_api::connect_lazy(&config.store, &config.store_tls, config.store_timeout)?;
    let updates = tail_derived(
        channel,
        TailConfig {
            node: String::new(),
            from_revision: 0,
            connect_timeout: config.store_timeout,
        },
    );
    let follower = tokio::spawn(follow_store(
        Arc::clone(&identities),
        updates,
        Arc::clone(&metrics),
    ));

    let hub = GrantHub::new(Arc::clone(&metrics));
    let gateway = Arc::new(Gateway::new(
        Settings::from_config(&config),
        Arc::clone(&identities),
        resolver,
        cluster_resolver,
        Arc::clone(&hub),
        Arc::clone(&metrics),
    ));

    let (stop_tx, stop_rx) = watch::channel(false);
    let stopped = |mut rx: watch::Receiver<bool>| async move {
        let _ = rx.wait_for(|s| *s).await;
    };

    let dns_addr = listeners.dns_addr().ok();
    let udp = tokio::spawn(serve_udp(
        Arc::new(listeners.dns_udp),
        Arc::clone(&gateway),
        config.udp_workers,
        stop_rx.clone(),
    ));
    let tcp = TcpServer::start(
        listeners.dns_tcp,
        Arc::clone(&gateway),
        config.tcp_idle_timeout,
    );

    let http = listeners.http.map(|l| {
        tokio::spawn(dnsfence_telemetry::http::serve(
            l,
            Arc::clone(&registry),
            Arc::clone(&identities) as Arc<dyn dnsfence_telemetry::http::Probe>,
            stopped(stop_rx.clone()),
        ))
    });

    let (reporter, health, reflection) = dnsfence_api::health_and_reflection()?;
    reporter
        .set_not_serving::<GrantsServer<GrantsService>>()
        .await;
    let mut ready = identities.ready_signal();
    let ready_reporter = reporter.clone();
    tokio::spawn(async move {
        if ready.wait_for(|r| *r).await.is_ok() {
            ready_reporter
                .set_serving::<GrantsServer<GrantsService>>()
                .await;
        }
    });
    let janitor_hub = Arc::clone(&hub);
    let ack_timeout = config.grant_ack_timeout;
    let janitor = tokio::spawn(async move {
        let mut tick = tokio::time::interval(Duration::from_secs(1));
        loop {
            tick.tick().await;
            janitor_hub.expire_pending(ack_timeout * 2);
        }
    });

    let router = dnsfence_api::server_builder(&config.server_tls)?
        .add_service(health)
        .add_service(reflection)
        .add_service(GrantsServer::new(GrantsService::new(Arc::clone(&hub))));
    info!(
        dns = ?dns_addr,
        grpc = %listeners.grpc,
        store = %config.store,
        upstreams = ?config.upstream,
        "resolver-gateway serving"
    );
    let stop_hub = Arc::clone(&hub);
    let grpc_stop = async move {
        shutdown.await;
        info!("shutting down");
        let _ = stop_tx.send(true);
        // Subscription streams never end by themselves; the graceful shutdown waits for them.
        stop_hub.close_all();
    };
    let served = dnsfence_api::serve(router, vec![listeners.grpc], grpc_stop).await;

    let _ = udp.await;
    tcp.shutdown().await;
    if let Some(http) = http {
        match http.await {
            Ok(Err(error)) => warn!(%error, "metrics endpoint"),
            Err(error) => warn!(%error, "metrics endpoint task"),
            Ok(Ok(())) => {}
        }
    }
    janitor.abort();
    follower.abort();
    served?;
    info!("resolver-gateway stopped");
    Ok(())
}

async fn follow_store(
    identities: Arc<Identities>,
    mut updates: mpsc::Receiver<TailUpdate>,
    metrics: Arc<GatewayMetrics>,
) {
    while let Some(update) = updates.recv().await {
        identities.apply(update);
        metrics
            .pods
            .set(i64::try_from(identities.pod_addresses()).unwrap_or(i64::MAX));
        metrics
            .store_revision
            .set(i64::try_from(identities.revision()).unwrap_or(i64::MAX));
    }
}
