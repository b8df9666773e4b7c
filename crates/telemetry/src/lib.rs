//! Telemetry shared by the dnsfence services:
//!
//! - [`init`]: `tracing` to stderr as text or JSON lines, filtered by `RUST_LOG` (default
//!   `info`), plus OpenTelemetry traces exported over OTLP/gRPC when
//!   `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`) is set ([`otel`]).
//!   Without it no OpenTelemetry layer is installed at all. The returned [`Telemetry`] flushes
//!   the exporter when the service shuts down.
//! - [`propagation`]: W3C trace context in and out of gRPC metadata, HTTP headers and the
//!   string maps of the `Grants` stream.
//! - [`http`]: the endpoint with `/metrics`, `/readyz` and `/healthz`.
//! - [`jsonlog`]: the DNS decision and flow log lines (one schema for both), rate-limited.
//! - [`shutdown_signal`]: what every `main` waits on.

pub mod http;
pub mod jsonlog;
pub mod otel;
pub mod propagation;
#[cfg(feature = "receiver")]
pub mod receiver;

use std::str::FromStr;

use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::filter::{FilterExt, filter_fn};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

pub use otel::{OTEL_TARGET, Sampling, in_sampled_trace, sample_root};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

impl FromStr for LogFormat {
    type Err = String;

    fn from_str(s: &str) -> Result<Self, Self::Err> {
        match s {
            "text" => Ok(LogFormat::Text),
            "json" => Ok(LogFormat::Json),
            _ => Err(format!("{s:?}: expected text or json")),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum TelemetryError {
    #[error("RUST_LOG: {0}")]
    Filter(String),
    #[error("a global tracing subscriber is already set")]
    AlreadySet,
    /// An `OTEL_*` variable (or `DNSFENCE_TRACE_FILTER`) with a value we cannot use.
    #[error("{variable}: {reason}")]
    Otel {
        variable: &'static str,
        reason: String,
    },
    #[error("reading {path}: {source}")]
    Read {
        path: String,
        source: std::io::Error,
    },
}

/// The telemetry of a running service. Keep it until the service stopped: dropping it (or
/// [`Telemetry::shutdown`]) exports the spans still queued and stops the exporter.
#[must_use = "dropping the guard stops trace export"]
#[derive(Debug)]
pub struct Telemetry {
    otel: Option<otel::Exporting>,
}

impl Telemetry {
    /// True when spans are exported (`OTEL_EXPORTER_OTLP_ENDPOINT` was set).
    pub fn exporting(&self) -> bool {
        self.otel.is_some()
    }

    /// Where spans go, for the start-up log line.
    pub fn endpoint(&self) -> Option<&str> {
        self.otel.as_ref().map(otel::Exporting::endpoint)
    }

    /// Exports what is queued now (tests; the batch processor exports on its own schedule).
    pub fn flush(&self) {
        if let Some(otel) = &self.otel {
            otel.flush();
        }
    }

    /// Flushes and stops the exporter without blocking the async runtime.
    pub async fn shutdown(mut self) {
        if let Some(otel) = self.otel.take() {
            let _ = tokio::task::spawn_blocking(move || otel.shutdown()).await;
        }
    }
}

impl Drop for Telemetry {
    fn drop(&mut self) {
        if let Some(otel) = self.otel.take() {
            otel.shutdown();
        }
    }
}

/// Installs the global subscriber. Call once, first thing in `main`, inside the tokio
/// runtime (the OTLP exporter's connection lives on it), and keep the returned guard.
///
/// Two independent layers: log lines to stderr, filtered by `RUST_LOG`; and, only when
/// `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set (and
/// `OTEL_SDK_DISABLED` is not `true`), spans to OpenTelemetry, filtered by
/// `DNSFENCE_TRACE_FILTER` (default `info`). Spans with target [`OTEL_TARGET`] exist for
/// tracing only and never reach the log lines, so with the exporter off they are disabled
/// and cost nothing.
pub fn init(format: LogFormat) -> Result<Telemetry, TelemetryError> {
    init_with_env(format, &|name| std::env::var(name).ok())
}

/// [`init`] with the variables read through `env` (tests give a map).
pub fn init_with_env(format: LogFormat, env: otel::Env<'_>) -> Result<Telemetry, TelemetryError> {
    let filter = match env("RUST_LOG") {
        Some(spec) => {
            EnvFilter::try_new(spec).map_err(|e| TelemetryError::Filter(e.to_string()))?
        }
        None => EnvFilter::new("info"),
    };
    let log_filter = filter.and(filter_fn(|meta| meta.target() != OTEL_TARGET));
    let log_layer = match format {
        LogFormat::Text => tracing_subscriber::fmt::layer()
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
        LogFormat::Json => tracing_subscriber::fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_filter(log_filter)
            .boxed(),
    };
    let exporting = otel::Exporting::from_env(env)?;
    let otel_layer = match &exporting {
        Some(e) => {
            let spec = env("DNSFENCE_TRACE_FILTER").unwrap_or_else(|| "info".into());
            let filter = EnvFilter::try_new(&spec).map_err(|e| TelemetryError::Otel {
                variable: "DNSFENCE_TRACE_FILTER",
                reason: e.to_string(),
            })?;
            Some(
                tracing_opentelemetry::layer()
                    .with_tracer(e.tracer())
                    // Span names and attributes are ours; code locations would only add bytes.
                    .with_location(false)
                    .with_threads(false)
                    .with_target(false)
                    // busy/idle times per span cost two clock reads per poll
                    .with_tracked_inactivity(false)
                    .with_filter(filter),
            )
        }
        None => None,
    };
    let installed = tracing_subscriber::registry()
        .with(log_layer)
        .with(otel_layer)
        .try_init();
    if installed.is_err() {
        if let Some(e) = exporting {
            e.shutdown();
        }
        return Err(TelemetryError::AlreadySet);
    }
    if let Some(e) = &exporting {
        e.activate();
        tracing::info!(
            endpoint = e.endpoint(),
            sampler = %e.sampling(),
            "exporting traces over OTLP/gRPC"
        );
    }
    Ok(Telemetry { otel: exporting })
}

/// Resolves on SIGINT or SIGTERM: the services' graceful-shutdown trigger.
pub async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    #[cfg(unix)]
    {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut term) => {
                tokio::select! {
                    _ = ctrl_c => {}
                    _ = term.recv() => {}
                }
            }
            Err(_) => {
                let _ = ctrl_c.await;
            }
        }
    }
    #[cfg(not(unix))]
    {
        let _ = ctrl_c.await;
    }
}
