//! dnsfence policy-store: the single writer of the event log.
//!
//! `run` opens (and replays) the log, serves the `PolicyStore` gRPC API with health and
//! reflection on the given listeners, and returns when `shutdown` resolves or the log fails.

pub mod codec;
pub mod config;
pub mod error;
pub mod explain;
pub mod service;
pub mod state;
pub mod store;
pub mod watch;
pub mod writes;

use std::future::Future;
use std::sync::Arc;

use dnsfence_api::Listener;
use dnsfence_api::store::v1::policy_store_server::PolicyStoreServer;
use tracing::{info, warn};

pub use config::Config;
pub use error::StoreError;
pub use store::Store;

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

pub async fn run(
    config: Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> Result<(), StoreError> {
    let store = Store::open(config.clone()).await?;
    serve(store, &config, listeners, shutdown).await
}

/// Serves an opened store; split from `run` so tests can hold the `Store`.
pub async fn serve(
    store: Arc<Store>,
    config: &Config,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()> + Send + 'static,
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
            _ = fatal.wait_for(Option::is_some) => warn!("stopping: the event log failed"),
        }
        // The graceful shutdown waits for open streams; watch streams would never end.
        stopping.begin_shutdown();
    };
    dnsfence_api::serve(router, listeners, stop).await?;
    store.log().close().await?;
    if let Some(reason) = store.fatal().borrow().clone() {
        return Err(StoreError::Config(format!("event log failed: {reason}")));
    }
    info!("policy-store stopped");
    Ok(())
}
