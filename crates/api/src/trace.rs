//! W3C trace context on every gRPC hop.
//!
//! - Clients: [`TraceContext`] is a tonic interceptor that writes the current span's
//!   `traceparent` (and `tracestate`) into the request metadata:
//!   `PolicyStoreClient::with_interceptor(channel, TraceContext)`.
//! - Servers: [`GrpcTraceLayer`] (added by [`crate::server_builder`]) opens a server span per
//!   call named `package.Service/Method` with the RPC semantic-convention attributes, whose
//!   parent is the caller's context from the metadata; the handler's own spans nest inside.
//!
//! Both cost nothing while no trace is exported: the interceptor finds no sampled span, and
//! the layer's span (target [`dnsfence_telemetry::OTEL_TARGET`]) is disabled.

use std::task::{Context, Poll};

use dnsfence_telemetry::propagation::{self, Injector};
use futures::future::Either;
use tonic::codegen::http::{Request, Response};
use tonic::metadata::{MetadataKey, MetadataMap, MetadataValue};
use tonic::service::Interceptor;
use tower::{Layer, Service};
use tracing::Instrument;

/// Writes the current trace context into each request's metadata.
#[derive(Debug, Clone, Copy, Default)]
pub struct TraceContext;

impl Interceptor for TraceContext {
    fn call(
        &mut self,
        mut request: tonic::Request<()>,
    ) -> Result<tonic::Request<()>, tonic::Status> {
        propagation::inject_current_into(&mut MetadataInjector(request.metadata_mut()));
        Ok(request)
    }
}

/// gRPC metadata as a propagation carrier.
struct MetadataInjector<'a>(&'a mut MetadataMap);

impl Injector for MetadataInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(key), Ok(value)) = (
            MetadataKey::from_bytes(key.as_bytes()),
            MetadataValue::try_from(value.as_str()),
        ) {
            self.0.insert(key, value);
        }
    }
}

/// Server spans for gRPC calls (see the module docs). Health checks and reflection are not
/// traced: probes every few seconds would bury the calls that matter.
#[derive(Debug, Clone, Copy, Default)]
pub struct GrpcTraceLayer;

impl<S> Layer<S> for GrpcTraceLayer {
    type Service = GrpcTrace<S>;

    fn layer(&self, inner: S) -> GrpcTrace<S> {
        GrpcTrace { inner }
    }
}

#[derive(Debug, Clone)]
pub struct GrpcTrace<S> {
    inner: S,
}

impl<S, B, ResBody> Service<Request<B>> for GrpcTrace<S>
where
    S: Service<Request<B>, Response = Response<ResBody>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = Either<S::Future, tracing::instrument::Instrumented<S::Future>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, request: Request<B>) -> Self::Future {
        let path = request.uri().path();
        let (service, method) = path
            .trim_start_matches('/')
            .split_once('/')
            .unwrap_or(("", ""));
        if service.is_empty() || service.starts_with("grpc.") {
            return Either::Left(self.inner.call(request));
        }
        let span = tracing::info_span!(
            target: dnsfence_telemetry::OTEL_TARGET,
            "grpc server",
            otel.name = %path.trim_start_matches('/'),
            otel.kind = "server",
            rpc.system = "grpc",
            rpc.service = service,
            rpc.method = method,
        );
        if span.is_disabled() {
            return Either::Left(self.inner.call(request));
        }
        propagation::set_parent_from_headers(&span, request.headers());
        Either::Right(self.inner.call(request).instrument(span))
    }
}
