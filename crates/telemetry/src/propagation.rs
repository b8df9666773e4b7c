//! W3C trace context (`traceparent`, `tracestate`) across process boundaries: gRPC
//! metadata and HTTP headers (both `http::HeaderMap` underneath) and the string map a
//! `GrantBatch` carries. With nothing exported, spans have no context and nothing is written.

use std::collections::{BTreeMap, HashMap};

use http::HeaderMap;
use http::header::{HeaderName, HeaderValue};
use opentelemetry::Context;
use opentelemetry::propagation::TextMapPropagator;
use opentelemetry::trace::TraceContextExt;
use opentelemetry_sdk::propagation::TraceContextPropagator;
use tracing_opentelemetry::OpenTelemetrySpanExt;

/// The trace context of `span` as `traceparent`/`tracestate` entries; empty when the span is
/// not part of a sampled trace (nothing exported, or a span no one traces).
pub fn context_map(span: &tracing::Span) -> HashMap<String, String> {
    let mut map = HashMap::new();
    if span.is_disabled() {
        return map;
    }
    let cx = span.context();
    if cx.span().span_context().is_sampled() {
        TraceContextPropagator::new().inject_context(&cx, &mut map);
    }
    map
}

/// Makes the remote context in `carrier` the parent of `span` (call before the span is
/// first entered). A carrier without a valid `traceparent` leaves the span as it was.
pub fn set_parent(span: &tracing::Span, carrier: &dyn Extractor) {
    if span.is_disabled() {
        return;
    }
    let cx = TraceContextPropagator::new().extract(carrier);
    if cx.span().span_context().is_valid() {
        // Only fails for a span already entered or not known to the OpenTelemetry layer.
        let _ = span.set_parent(cx);
    }
}

/// [`set_parent`] from a string map (what a `GrantBatch` carries).
pub fn set_parent_from_map(span: &tracing::Span, map: &BTreeMap<String, String>) {
    set_parent(span, &MapExtractor(map));
}

struct MapExtractor<'a>(&'a BTreeMap<String, String>);

impl Extractor for MapExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).map(String::as_str)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(String::as_str).collect()
    }
}

/// Makes the caller's context in `headers` (gRPC metadata or HTTP) the parent of `span`.
pub fn set_parent_from_headers(span: &tracing::Span, headers: &HeaderMap) {
    set_parent(span, &HeaderExtractor(headers));
}

/// The remote context in `headers` (gRPC metadata or HTTP), if any.
pub fn extract_headers(headers: &HeaderMap) -> Option<Context> {
    let cx = TraceContextPropagator::new().extract(&HeaderExtractor(headers));
    cx.span().span_context().is_valid().then_some(cx)
}

pub use opentelemetry::propagation::{Extractor, Injector};

/// Writes the context of the current span into `headers` when it belongs to a sampled trace.
pub fn inject_current(headers: &mut HeaderMap) {
    inject_current_into(&mut HeaderInjector(headers));
}

/// Writes the context of the current span into any carrier (gRPC metadata) when it belongs
/// to a sampled trace.
pub fn inject_current_into(carrier: &mut dyn Injector) {
    Context::map_current(|cx| {
        if cx.span().span_context().is_sampled() {
            TraceContextPropagator::new().inject_context(cx, carrier);
        }
    });
}

/// The trace id of the current span, when it belongs to a sampled trace (for log lines).
pub fn current_trace_id() -> Option<String> {
    Context::map_current(|cx| {
        let span = cx.span();
        let sc = span.span_context();
        sc.is_sampled().then(|| sc.trace_id().to_string())
    })
}

/// `http::HeaderMap` as a propagation carrier.
#[derive(Debug)]
pub struct HeaderInjector<'a>(pub &'a mut HeaderMap);

impl Injector for HeaderInjector<'_> {
    fn set(&mut self, key: &str, value: String) {
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(key.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            self.0.insert(name, value);
        }
    }
}

/// `http::HeaderMap` as a propagation source.
#[derive(Debug)]
pub struct HeaderExtractor<'a>(pub &'a HeaderMap);

impl Extractor for HeaderExtractor<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.get(key).and_then(|v| v.to_str().ok())
    }

    fn keys(&self) -> Vec<&str> {
        self.0.keys().map(HeaderName::as_str).collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn headers_round_trip_a_traceparent() {
        let parent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01";
        let mut headers = HeaderMap::new();
        headers.insert("traceparent", HeaderValue::from_static(parent));
        let cx = extract_headers(&headers).unwrap();
        let sc = cx.span().span_context().clone();
        assert_eq!(
            sc.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert!(sc.is_sampled() && sc.is_remote());
        let mut out = HeaderMap::new();
        TraceContextPropagator::new().inject_context(&cx, &mut HeaderInjector(&mut out));
        assert_eq!(out.get("traceparent").unwrap(), parent);
        assert!(extract_headers(&HeaderMap::new()).is_none());
    }

    #[test]
    fn without_an_exporter_nothing_is_injected() {
        let span = tracing::info_span!("no subscriber");
        assert!(context_map(&span).is_empty());
        let mut headers = HeaderMap::new();
        inject_current(&mut headers);
        assert!(headers.is_empty());
    }
}
