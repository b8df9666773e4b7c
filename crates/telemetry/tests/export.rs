//! `init` with an OTLP endpoint exports to a real OTLP/gRPC receiver (the collector's
//! `TraceService` served by tonic on 127.0.0.1): resource from the `OTEL_*` variables, the
//! configured sampler for ordinary roots, pre-sampled hot-path roots kept, and trace context
//! carried through a string map and HTTP/gRPC headers into a child of the same trace.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;
use std::time::{Duration, Instant};

use dnsfence_telemetry::receiver::{OtlpReceiver, ReceiverListener, render_trace};
use dnsfence_telemetry::{LogFormat, OTEL_TARGET, in_sampled_trace, propagation, sample_root};
use tokio::net::TcpListener;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn spans_reach_an_otlp_receiver_with_their_resource_sampler_and_parents() {
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    let receiver = OtlpReceiver::start(ReceiverListener::Tcp(listener));
    let vars: HashMap<&str, String> = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", endpoint),
        ("OTEL_SERVICE_NAME", "export-test".into()),
        (
            "OTEL_RESOURCE_ATTRIBUTES",
            "deployment.environment=test".into(),
        ),
        // Roots are never sampled by the SDK: only pre-sampled ones and children get out.
        ("OTEL_TRACES_SAMPLER", "parentbased_traceidratio".into()),
        ("OTEL_TRACES_SAMPLER_ARG", "0".into()),
    ]
    .into_iter()
    .collect();
    let telemetry =
        dnsfence_telemetry::init_with_env(LogFormat::Text, &|n| vars.get(n).cloned()).unwrap();
    assert!(telemetry.exporting());
    // ratio 0: the hot-path draw says no to every key
    assert!((0..1000).all(|k| !sample_root(k)));

    {
        let ordinary = tracing::info_span!("ordinary root");
        let _in = ordinary.enter();
        assert!(!in_sampled_trace());
    }
    let (map, header_parent) = {
        let root = tracing::info_span!(
            target: OTEL_TARGET,
            "presampled root",
            otel.kind = "server",
            sampling.priority = 1,
            dns.question.name = "github.com"
        );
        let header_parent = root.in_scope(|| {
            assert!(in_sampled_trace());
            let child = tracing::info_span!(target: OTEL_TARGET, "local child");
            let _in = child.enter();
            let mut headers = http::HeaderMap::new();
            propagation::inject_current(&mut headers);
            headers
        });
        (propagation::context_map(&root), header_parent)
    };
    assert!(map.contains_key("traceparent"), "{map:?}");
    // the far side of the Grants stream
    let remote = tracing::info_span!(target: OTEL_TARGET, "remote child", otel.kind = "consumer");
    propagation::set_parent(&remote, &map);
    remote.in_scope(|| assert!(in_sampled_trace()));
    drop(remote);
    // the far side of a gRPC call
    let server = tracing::info_span!(target: OTEL_TARGET, "grpc server");
    let cx = propagation::extract_headers(&header_parent).unwrap();
    tracing_opentelemetry::OpenTelemetrySpanExt::set_parent(&server, cx).unwrap();
    drop(server);

    telemetry.flush();
    let deadline = Instant::now() + Duration::from_secs(20);
    while receiver.spans().len() < 4 && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let spans = receiver.spans();
    let names: Vec<&str> = spans.iter().map(|s| s.name.as_str()).collect();
    assert!(!names.contains(&"ordinary root"), "{names:?}");
    let by_name = |n: &str| {
        spans
            .iter()
            .find(|s| s.name == n)
            .unwrap_or_else(|| panic!("no span {n} in {names:?}"))
    };
    let root = by_name("presampled root");
    let local = by_name("local child");
    let remote = by_name("remote child");
    let server = by_name("grpc server");
    assert_eq!(root.service, "export-test");
    assert_eq!(root.kind, "server");
    assert_eq!(root.attribute("dns.question.name"), Some("github.com"));
    assert!(root.parent_span_id.is_empty());
    assert_eq!(local.parent_span_id, root.span_id);
    assert_eq!(remote.parent_span_id, root.span_id);
    assert_eq!(remote.kind, "consumer");
    assert_eq!(server.parent_span_id, local.span_id);
    for s in [local, remote, server] {
        assert_eq!(s.trace_id, root.trace_id);
    }
    println!("{}", render_trace(&spans, &root.trace_id));
    telemetry.shutdown().await;
}
