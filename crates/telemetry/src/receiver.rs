//! An OTLP/gRPC trace receiver: the collector's `TraceService` (from `opentelemetry-proto`)
//! served by tonic, keeping every span it is sent. The tests run the services against it,
//! and the benchmarks use it as the collector; [`render_trace`] prints a trace as a tree.
//!
//! Enabled by the `receiver` feature.

use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use opentelemetry_proto::tonic::collector::trace::v1::trace_service_server::{
    TraceService, TraceServiceServer,
};
use opentelemetry_proto::tonic::collector::trace::v1::{
    ExportTraceServiceRequest, ExportTraceServiceResponse,
};
use opentelemetry_proto::tonic::common::v1::{AnyValue, any_value};
use opentelemetry_proto::tonic::trace::v1::span::SpanKind;
use tokio::net::{TcpListener, UnixListener};
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tokio_stream::wrappers::{TcpListenerStream, UnixListenerStream};
use tonic::{Request, Response, Status};

/// One span as received, with its resource's `service.name`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ReceivedSpan {
    pub service: String,
    /// 32 hex digits.
    pub trace_id: String,
    /// 16 hex digits.
    pub span_id: String,
    /// Empty for a root span.
    pub parent_span_id: String,
    pub name: String,
    /// `server`, `client`, `producer`, `consumer`, `internal`.
    pub kind: &'static str,
    pub start_unix_nano: u64,
    pub end_unix_nano: u64,
    /// Values rendered as text (`42`, `true`, `a,b` for arrays).
    pub attributes: BTreeMap<String, String>,
}

impl ReceivedSpan {
    pub fn attribute(&self, key: &str) -> Option<&str> {
        self.attributes.get(key).map(String::as_str)
    }

    pub fn duration_micros(&self) -> u64 {
        self.end_unix_nano.saturating_sub(self.start_unix_nano) / 1000
    }
}

#[derive(Debug, Default, Clone)]
struct Collector {
    spans: Arc<Mutex<Vec<ReceivedSpan>>>,
    requests: Arc<Mutex<u64>>,
    total: Arc<AtomicU64>,
}

fn text(value: Option<&AnyValue>) -> String {
    match value.and_then(|v| v.value.as_ref()) {
        Some(any_value::Value::StringValue(s)) => s.clone(),
        Some(any_value::Value::BoolValue(b)) => b.to_string(),
        Some(any_value::Value::IntValue(i)) => i.to_string(),
        Some(any_value::Value::DoubleValue(d)) => d.to_string(),
        Some(any_value::Value::ArrayValue(a)) => a
            .values
            .iter()
            .map(|v| text(Some(v)))
            .collect::<Vec<_>>()
            .join(","),
        Some(other) => format!("{other:?}"),
        None => String::new(),
    }
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().fold(String::new(), |mut s, b| {
        let _ = write!(s, "{b:02x}");
        s
    })
}

fn kind_name(kind: i32) -> &'static str {
    match SpanKind::try_from(kind) {
        Ok(SpanKind::Server) => "server",
        Ok(SpanKind::Client) => "client",
        Ok(SpanKind::Producer) => "producer",
        Ok(SpanKind::Consumer) => "consumer",
        Ok(SpanKind::Internal) => "internal",
        _ => "unspecified",
    }
}

#[tonic::async_trait]
impl TraceService for Collector {
    async fn export(
        &self,
        request: Request<ExportTraceServiceRequest>,
    ) -> Result<Response<ExportTraceServiceResponse>, Status> {
        let mut received = Vec::new();
        for resource_spans in request.into_inner().resource_spans {
            let service = resource_spans
                .resource
                .as_ref()
                .and_then(|r| r.attributes.iter().find(|kv| kv.key == "service.name"))
                .map(|kv| text(kv.value.as_ref()))
                .unwrap_or_default();
            for scope in resource_spans.scope_spans {
                for span in scope.spans {
                    received.push(ReceivedSpan {
                        service: service.clone(),
                        trace_id: hex(&span.trace_id),
                        span_id: hex(&span.span_id),
                        parent_span_id: hex(&span.parent_span_id),
                        name: span.name,
                        kind: kind_name(span.kind),
                        start_unix_nano: span.start_time_unix_nano,
                        end_unix_nano: span.end_time_unix_nano,
                        attributes: span
                            .attributes
                            .iter()
                            .map(|kv| (kv.key.clone(), text(kv.value.as_ref())))
                            .collect(),
                    });
                }
            }
        }
        self.total
            .fetch_add(received.len() as u64, Ordering::Relaxed);
        self.spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .extend(received);
        *self.requests.lock().unwrap_or_else(|e| e.into_inner()) += 1;
        Ok(Response::new(ExportTraceServiceResponse {
            partial_success: None,
        }))
    }
}

/// A running receiver; stops when dropped.
#[derive(Debug)]
pub struct OtlpReceiver {
    collector: Collector,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<()>,
}

/// Where a receiver listens.
#[derive(Debug)]
pub enum ReceiverListener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl OtlpReceiver {
    /// Serves on `listener` (on the current tokio runtime) until dropped.
    pub fn start(listener: ReceiverListener) -> OtlpReceiver {
        let collector = Collector::default();
        let (stop, stopped) = oneshot::channel::<()>();
        let service = TraceServiceServer::new(collector.clone());
        let signal = async {
            let _ = stopped.await;
        };
        let task = tokio::spawn(async move {
            let router = tonic::transport::Server::builder().add_service(service);
            let served = match listener {
                ReceiverListener::Tcp(l) => {
                    router
                        .serve_with_incoming_shutdown(TcpListenerStream::new(l), signal)
                        .await
                }
                ReceiverListener::Unix(l) => {
                    router
                        .serve_with_incoming_shutdown(UnixListenerStream::new(l), signal)
                        .await
                }
            };
            if let Err(error) = served {
                eprintln!("OTLP receiver: {error}");
            }
        });
        OtlpReceiver {
            collector,
            stop: Some(stop),
            task,
        }
    }

    /// Every span received so far.
    pub fn spans(&self) -> Vec<ReceivedSpan> {
        self.collector
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Export requests received so far.
    pub fn requests(&self) -> u64 {
        *self
            .collector
            .requests
            .lock()
            .unwrap_or_else(|e| e.into_inner())
    }

    /// Spans received since the start, cleared ones included.
    pub fn total_spans(&self) -> u64 {
        self.collector.total.load(Ordering::Relaxed)
    }

    /// Forgets what was received (the total stays).
    pub fn clear(&self) {
        self.collector
            .spans
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clear();
    }
}

impl Drop for OtlpReceiver {
    fn drop(&mut self) {
        if let Some(stop) = self.stop.take() {
            let _ = stop.send(());
        }
        self.task.abort();
    }
}

/// The spans of `trace_id` as an indented tree, children by start time: name, service,
/// kind, duration and attributes (`sampling.priority` left out):
///
/// ```text
/// DNS query  [dnsfence-resolver-gateway, server, 1843 µs]
///     dns.question.name=github.com ...
/// └─ dnsfence.grants.v1.Grants/Subscribe  [dnsfence-resolver-gateway, producer, 1612 µs]
/// ```
pub fn render_trace(spans: &[ReceivedSpan], trace_id: &str) -> String {
    let mut ours: Vec<&ReceivedSpan> = spans.iter().filter(|s| s.trace_id == trace_id).collect();
    ours.sort_by_key(|s| s.start_unix_nano);
    let known: std::collections::HashSet<&str> = ours.iter().map(|s| s.span_id.as_str()).collect();
    let mut out = format!("trace {trace_id}\n");
    for root in ours
        .iter()
        .filter(|s| !known.contains(s.parent_span_id.as_str()))
    {
        render(&ours, root, 0, &mut out);
    }
    out
}

fn render(spans: &[&ReceivedSpan], span: &ReceivedSpan, depth: usize, out: &mut String) {
    let indent = "   ".repeat(depth);
    let branch = if depth == 0 { "" } else { "└─ " };
    let _ = writeln!(
        out,
        "{indent}{branch}{}  [{}, {}, {} µs]",
        span.name,
        span.service,
        span.kind,
        span.duration_micros()
    );
    let attrs: Vec<String> = span
        .attributes
        .iter()
        .filter(|(k, _)| k.as_str() != crate::otel::PRESAMPLED_KEY)
        .map(|(k, v)| format!("{k}={v}"))
        .collect();
    let pad = "   ".repeat(depth + 1);
    for chunk in attrs.chunks(3) {
        let _ = writeln!(out, "{pad}{}", chunk.join("  "));
    }
    for child in spans.iter().filter(|s| s.parent_span_id == span.span_id) {
        render(spans, child, depth + 1, out);
    }
}
