//! The HTTP endpoint every dnsfence service serves: `/metrics` (Prometheus text format),
//! `/readyz` (200 once the service caught up with what it depends on, 503 before) and
//! `/healthz` (200 while the process serves).

use std::future::Future;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::response::IntoResponse;
use axum::routing::get;
use prometheus_client::registry::Registry;
use tokio::net::TcpListener;

/// What the endpoint asks the service.
pub trait Probe: Send + Sync + 'static {
    /// Ready to serve: caught up with the store.
    fn ready(&self) -> bool;

    /// Called before each scrape, to refresh metrics that are read rather than counted.
    fn before_scrape(&self) {}

    /// Why the service is not ready, for the 503 body.
    fn not_ready_reason(&self) -> &'static str {
        "catching up with the policy store"
    }
}

#[derive(Clone)]
struct HttpState {
    registry: Arc<Registry>,
    probe: Arc<dyn Probe>,
}

pub fn router(registry: Arc<Registry>, probe: Arc<dyn Probe>) -> Router {
    Router::new()
        .route("/metrics", get(metrics))
        .route("/readyz", get(readyz))
        .route("/healthz", get(|| async { "ok\n" }))
        .with_state(HttpState { registry, probe })
}

/// Serves the endpoint on `listener` until `shutdown` completes.
pub async fn serve(
    listener: TcpListener,
    registry: Arc<Registry>,
    probe: Arc<dyn Probe>,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    axum::serve(listener, router(registry, probe))
        .with_graceful_shutdown(shutdown)
        .await
}

async fn metrics(State(state): State<HttpState>) -> impl IntoResponse {
    state.probe.before_scrape();
    let mut text = String::with_capacity(16 * 1024);
    match prometheus_client::encoding::text::encode(&mut text, &state.registry) {
        Ok(()) => (
            StatusCode::OK,
            [(
                header::CONTENT_TYPE,
                "application/openmetrics-text; version=1.0.0; charset=utf-8",
            )],
            text,
        ),
        Err(error) => (
            StatusCode::INTERNAL_SERVER_ERROR,
            [(header::CONTENT_TYPE, "text/plain; charset=utf-8")],
            format!("encoding metrics: {error}\n"),
        ),
    }
}

async fn readyz(State(state): State<HttpState>) -> impl IntoResponse {
    if state.probe.ready() {
        (StatusCode::OK, "ready\n".to_string())
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            format!("not ready: {}\n", state.probe.not_ready_reason()),
        )
    }
}
