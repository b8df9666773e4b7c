//! Observability end to end, on the lab's world (`dnsfence_lab::Lab::start`: the real store,
//! gateway and enforcer processes in network namespaces, the lab's pods and internet):
//!
//! - one DNS query from a pod is one OpenTelemetry trace: the gateway's query span, its
//!   grant send and the enforcer's grant apply (map write + ack), exported over OTLP/gRPC
//!   to a real receiver in this test process (the collector's `TraceService` served by
//!   tonic on a Unix socket, which every network namespace reaches);
//! - gRPC calls carry the trace context in their metadata (the store's Watch server span is
//!   a child of the client's span);
//! - every service's `/metrics` parses as OpenMetrics text and its counters move as the
//!   test drives queries and connections;
//! - the gateway's DNS decision log and the enforcer's flow log are JSON lines one `jq`
//!   filter reads, rate-limited with a count of what the limit dropped.
//!
//! They need root; without it they skip with a reason, except under `CI=true`, where they
//! fail. `--nocapture` prints the trace as a tree.

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    collections::BTreeMap,
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::Path,
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use dnsfence_lab::{
    ENFORCER_METRICS, Spec, gateway_metrics,
    probe::{addresses, query_here},
    topology::{self as lab_topology, CLUSTER_DNS, NPMJS},
};
use dnsfence_telemetry::receiver::{OtlpReceiver, ReceivedSpan, ReceiverListener, render_trace};
use hickory_proto::rr::RecordType;
use openmetrics_parser::{MetricsExposition, OpenMetricsType, OpenMetricsValue};
use support::world::{TestWorld, seed, unique_prefix};
use support::{in_ns, privileged, sa};

const PATIENCE: Duration = Duration::from_secs(30);

/// Lets run=nginx pods reach static.cdn.example (in the lab's zones) on 443/TCP: a name no
/// other step of the world asks for, so its grant is new and must be sent.
const CDN_POLICY: &str = r#"apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata:
  name: nginx-cdn
  namespace: default
spec:
  podSelector:
    matchLabels:
      run: nginx
  policyTypes:
  - Egress
  egress:
  - to:
    - domainNames:
      - "static.cdn.example"
    ports:
    - protocol: TCP
      port: 443
"#;

/// The lab's world with one gateway replica, event logs on and a policy for
/// static.cdn.example; `customise` adjusts the rest.
fn start_world(
    tag: &str,
    scratch: tempfile::TempDir,
    customise: impl FnOnce(&mut Spec),
) -> TestWorld {
    let prefix = unique_prefix(&format!("dfo-{tag}"));
    let cdn_policy = scratch.path().join("nginx-cdn.yaml");
    std::fs::write(&cdn_policy, CDN_POLICY).unwrap();
    let mut spec = Spec::standard(&prefix, &seed("")).unwrap();
    spec.pods = lab_topology::standard_pods(&prefix);
    spec.default_policy = "DefaultAllow".into();
    spec.event_logs = true;
    spec.replicas = 1;
    spec.policies = vec![
        seed("allow-github.yaml"),
        seed("allow-dns.yaml"),
        cdn_policy,
    ];
    customise(&mut spec);
    TestWorld::launch(spec, scratch)
}

/// Asks the cluster DNS address from inside `workload`'s namespace.
fn query(t: &TestWorld, workload: &str, name: &str) -> Option<hickory_proto::op::Message> {
    let name = name.to_string();
    in_ns(&t.ns(workload), move || {
        query_here(sa(CLUSTER_DNS, 53), &name, RecordType::A)
    })
}

fn wait_for<T>(what: &str, mut f: impl FnMut() -> Option<T>) -> T {
    let deadline = Instant::now() + PATIENCE;
    loop {
        if let Some(v) = f() {
            return v;
        }
        assert!(
            Instant::now() < deadline,
            "timed out after {PATIENCE:?} waiting for {what}"
        );
        thread::sleep(Duration::from_millis(100));
    }
}

// ---- one query, one trace ----

fn span<'a>(spans: &'a [ReceivedSpan], trace: &str, name: &str) -> &'a ReceivedSpan {
    spans
        .iter()
        .find(|s| s.trace_id == trace && s.name == name)
        .unwrap_or_else(|| panic!("no {name:?} span in trace {trace}:\n{spans:#?}"))
}

#[test]
fn one_dns_query_is_one_trace_across_gateway_and_enforcer() {
    if !privileged("one_dns_query_is_one_trace_across_gateway_and_enforcer") {
        return;
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    let scratch = tempfile::tempdir().unwrap();
    let socket = scratch.path().join("otlp.sock");
    let receiver = {
        let _in_runtime = runtime.enter();
        let listener = tokio::net::UnixListener::bind(&socket).unwrap();
        OtlpReceiver::start(ReceiverListener::Unix(listener))
    };
    let endpoint = format!("unix://{}", socket.display());
    let t = start_world("trace", scratch, |spec| {
        spec.env = vec![
            ("OTEL_EXPORTER_OTLP_ENDPOINT".into(), endpoint),
            // every query is traced whatever the default sampler is
            ("OTEL_TRACES_SAMPLER".into(), "parentbased_always_on".into()),
            ("OTEL_BSP_SCHEDULE_DELAY".into(), "100".into()),
            (
                "OTEL_RESOURCE_ATTRIBUTES".into(),
                "deployment.environment=e2e".into(),
            ),
        ];
        spec.gateway_args = vec!["--decision-logs".into(), "all".into()];
    });

    // the one query
    let answer =
        query(&t, "default/nginx", "static.cdn.example").expect("an answer for static.cdn.example");
    let answered = addresses(&answer);
    assert!(!answered.is_empty(), "no addresses in {answer:?}");

    let spans = wait_for("the query's trace to reach the receiver", || {
        let spans = receiver.spans();
        let query = spans.iter().find(|s| {
            s.name == "DNS query" && s.attribute("dns.question.name") == Some("static.cdn.example")
        })?;
        spans
            .iter()
            .any(|s| s.trace_id == query.trace_id && s.name == "grant apply")
            .then_some(spans)
    });
    let query = spans
        .iter()
        .find(|s| {
            s.name == "DNS query" && s.attribute("dns.question.name") == Some("static.cdn.example")
        })
        .unwrap();
    let trace = query.trace_id.clone();
    println!("{}", render_trace(&spans, &trace));

    // the gateway's query span: the root, with DNS and dnsfence attributes
    assert!(
        query.parent_span_id.is_empty(),
        "the query span is the root"
    );
    assert_eq!(query.service, "dnsfence-resolver-gateway");
    assert_eq!(query.kind, "server");
    let attrs = |s: &ReceivedSpan, expected: &[(&str, &str)]| {
        for (k, v) in expected {
            assert_eq!(
                s.attribute(k),
                Some(*v),
                "{k} of {} in {:?}",
                s.name,
                s.attributes
            );
        }
    };
    attrs(
        query,
        &[
            ("dns.question.type", "A"),
            ("dns.response_code", "NOERROR"),
            ("network.transport", "udp"),
            ("client.address", "192.0.2.10"),
            ("dnsfence.pod", "nginx"),
            ("dnsfence.namespace", "default"),
            ("dnsfence.node", dnsfence_lab::NODE_NAME),
            ("dnsfence.verdict", "allowed"),
            (
                "dnsfence.policy",
                "ApplicationNetworkPolicy default/nginx-cdn",
            ),
            ("dnsfence.rule", "egress[0]"),
        ],
    );
    let answers = query.attribute("dns.answers").unwrap_or_default();
    for ip in &answered {
        assert!(answers.contains(&ip.to_string()), "{ip} not in {answers}");
    }
    // the grant send: a child of the query, an RPC message on the Grants stream
    let send = span(&spans, &trace, "grant send");
    assert_eq!(send.parent_span_id, query.span_id);
    assert_eq!(send.service, "dnsfence-resolver-gateway");
    assert_eq!(send.kind, "producer");
    attrs(
        send,
        &[
            ("rpc.system", "grpc"),
            ("rpc.service", "dnsfence.grants.v1.Grants"),
            ("rpc.method", "Subscribe"),
            ("dnsfence.node", dnsfence_lab::NODE_NAME),
            ("dnsfence.delivery", "acked"),
        ],
    );
    // the enforcer's map write + ack: a child of the send, in the other process
    let apply = span(&spans, &trace, "grant apply");
    assert_eq!(apply.parent_span_id, send.span_id);
    assert_eq!(apply.service, "dnsfence-node-enforcer");
    assert_eq!(apply.kind, "consumer");
    attrs(
        apply,
        &[
            ("rpc.system", "grpc"),
            ("rpc.service", "dnsfence.grants.v1.Grants"),
            ("rpc.method", "Subscribe"),
            ("dns.question.name", "static.cdn.example"),
            ("dnsfence.pod", "nginx"),
            ("dnsfence.namespace", "default"),
            ("dnsfence.node", dnsfence_lab::NODE_NAME),
        ],
    );
    let revision: u64 = apply
        .attribute("dnsfence.revision")
        .unwrap()
        .parse()
        .unwrap();
    assert!(
        revision > 0,
        "the enforcer applied store revision {revision}"
    );
    // the ack came back within the send, as the answer waited for it
    assert!(apply.start_unix_nano >= send.start_unix_nano);
    assert!(apply.end_unix_nano <= send.end_unix_nano);

    // gRPC calls carry traceparent: the store's Watch server span is a child of the
    // gateway's (or enforcer's) client span, the gateway's Subscribe of the enforcer's
    for (server, client, server_service) in [
        (
            "dnsfence.store.v1.PolicyStore/Watch",
            "store watch",
            "dnsfence-policy-store",
        ),
        (
            "dnsfence.grants.v1.Grants/Subscribe",
            "grant subscribe",
            "dnsfence-resolver-gateway",
        ),
    ] {
        let s = spans
            .iter()
            .find(|s| s.name == server && s.service == server_service)
            .unwrap_or_else(|| panic!("no {server} span from {server_service}"));
        let parent = spans
            .iter()
            .find(|c| c.span_id == s.parent_span_id)
            .unwrap_or_else(|| panic!("the parent of {server} was not received"));
        assert_eq!(parent.name, client);
        assert_eq!(parent.trace_id, s.trace_id);
        assert_ne!(parent.service, s.service);
        assert_eq!(s.kind, "server");
        assert_eq!(s.attribute("rpc.system"), Some("grpc"));
    }
    // the resource: service name by binary, attributes from OTEL_RESOURCE_ATTRIBUTES
    // (spans carry the resource's service.name; the rest is checked by the telemetry tests)

    // the decision log names the trace
    let log = t.world.log("gateway-1");
    let line = log
        .lines()
        .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
        .find(|v| v["name"] == "static.cdn.example")
        .unwrap_or_else(|| panic!("no decision-log line for the query in\n{log}"));
    assert_eq!(line["trace_id"], trace.as_str());
    assert_eq!(line["verdict"], "allow");
    drop(t);
    drop(receiver);
}

// ---- metrics and logs ----

type Exposition = MetricsExposition<OpenMetricsType, OpenMetricsValue>;

fn parse(service: &str, text: &str) -> Exposition {
    openmetrics_parser::openmetrics::parse_openmetrics(text)
        .unwrap_or_else(|e| panic!("{service}'s /metrics does not parse: {e:?}\n{text}"))
}

/// The sum of a family's samples whose labels include `labels` (counter, gauge, or a
/// histogram's count).
fn value(expo: &Exposition, family: &str, labels: &[(&str, &str)]) -> f64 {
    let Some(f) = expo.families.get(family) else {
        return 0.0;
    };
    f.iter_samples()
        .filter(|s| {
            let set = s.get_labelset().unwrap();
            labels
                .iter()
                .all(|(k, v)| set.get_label_value(k) == Some(*v))
        })
        .map(|s| match &s.value {
            OpenMetricsValue::Counter(c) => c.value.as_f64(),
            OpenMetricsValue::Gauge(g) | OpenMetricsValue::Unknown(g) => g.as_f64(),
            OpenMetricsValue::Histogram(h) => h.count.map_or(0.0, |c| c as f64),
            other => panic!("{family}: unexpected {other:?}"),
        })
        .sum()
}

/// GET /metrics over plain TCP from this (the root) namespace.
fn scrape_here(addr: &str) -> String {
    let mut s = TcpStream::connect(addr).unwrap();
    write!(
        s,
        "GET /metrics HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
    )
    .unwrap();
    let mut text = String::new();
    s.read_to_string(&mut text).unwrap();
    text.split_once("\r\n\r\n").unwrap().1.to_string()
}

/// A TCP port free on 127.0.0.1 of this namespace a moment ago.
fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// The services' JSON log lines (their logs also hold text lines from `tracing`).
fn json_lines(text: &str) -> Vec<serde_json::Value> {
    text.lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

/// The README's filter: denied things, gateway and enforcer alike.
const DENIED_FILTER: &str = r#"select(.verdict == "deny") | {service, kind, pod: "\(.namespace)/\(.pod)", to: (.name // .dst), port, reason, policy}"#;

#[test]
fn every_service_serves_metrics_that_parse_and_move() {
    if !privileged("every_service_serves_metrics_that_parse_and_move") {
        return;
    }
    let store_metrics = format!("127.0.0.1:{}", free_port());
    let store_listen = store_metrics.clone();
    let t = start_world("metrics", tempfile::tempdir().unwrap(), |spec| {
        spec.store_args = vec!["--metrics-listen".into(), store_listen];
        // the limiter's count is part of what is checked: 2 lines a second
        spec.gateway_args = vec![
            "--decision-logs".into(),
            "denied".into(),
            "--decision-log-rate".into(),
            "2".into(),
        ];
    });
    let gateway = gateway_metrics(0);
    let scrape = |t: &TestWorld| {
        (
            parse("store", &scrape_here(&store_metrics)),
            parse("gateway", &t.world.metrics(&gateway)),
            parse("enforcer", &t.world.metrics(ENFORCER_METRICS)),
        )
    };
    let (store0, gw0, enf0) = scrape(&t);

    // drive: an allowed name (its grant is new), a burst of denied ones, a connection to
    // an address nothing granted, and a policy change
    assert!(!addresses(&query(&t, "default/nginx", "static.cdn.example").unwrap()).is_empty());
    const DENIED: usize = 20;
    for _ in 0..DENIED {
        let m = query(&t, "default/nginx", "npmjs.com").unwrap();
        assert!(addresses(&m).is_empty());
    }
    let ns = t.ns("default/nginx");
    let blocked = in_ns(&ns, || {
        TcpStream::connect_timeout(
            &SocketAddr::new(NPMJS.parse().unwrap(), 443),
            Duration::from_millis(500),
        )
        .is_err()
    });
    assert!(blocked, "nginx reached npmjs.com's address without a grant");
    t.world
        .cli(&["namespace", "add", "observability-test"])
        .unwrap();

    let moved = |before: f64, after: f64, what: &str| {
        assert!(after > before, "{what}: {before} -> {after}");
    };
    wait_for("the flow log line and the datapath counter", || {
        let (_, _, enf) = scrape(&t);
        (value(&enf, "dnsfence_enforcer_flow_log_lines", &[]) > 0.0).then_some(())
    });
    let (store1, gw1, enf1) = scrape(&t);

    // store
    moved(
        value(&store0, "dnsfence_store_revision", &[]),
        value(&store1, "dnsfence_store_revision", &[]),
        "dnsfence_store_revision",
    );
    // gateway
    let allowed = [("verdict", "allowed"), ("qtype", "A"), ("transport", "udp")];
    moved(
        value(&gw0, "dnsfence_gateway_queries", &allowed),
        value(&gw1, "dnsfence_gateway_queries", &allowed),
        "queries_total{verdict=allowed}",
    );
    let denied = value(&gw1, "dnsfence_gateway_queries", &[("verdict", "denied")])
        - value(&gw0, "dnsfence_gateway_queries", &[("verdict", "denied")]);
    assert_eq!(
        denied, DENIED as f64,
        "queries_total{{verdict=denied}} moved by {denied}"
    );
    for family in [
        "dnsfence_gateway_grants_sent",
        "dnsfence_gateway_grant_batches",
        "dnsfence_gateway_grant_ack_latency_seconds",
        "dnsfence_gateway_query_duration_seconds",
    ] {
        moved(value(&gw0, family, &[]), value(&gw1, family, &[]), family);
    }
    // the decision log: at most 2 lines a second were written, the rest counted
    let written = value(&gw1, "dnsfence_gateway_decision_log_lines", &[]);
    let dropped = value(&gw1, "dnsfence_gateway_decision_log_lines_dropped", &[]);
    assert_eq!(
        written + dropped,
        DENIED as f64,
        "written {written}, dropped {dropped}"
    );
    assert!(
        dropped > 0.0 && written >= 1.0,
        "written {written}, dropped {dropped}"
    );
    // enforcer
    for (family, labels) in [
        ("dnsfence_enforcer_grant_batches", &[][..]),
        ("dnsfence_enforcer_grants_received", &[][..]),
        ("dnsfence_enforcer_grant_write_duration_seconds", &[][..]),
        (
            "dnsfence_enforcer_packets",
            &[("reason", "default_deny")][..],
        ),
        ("dnsfence_enforcer_flow_log_lines", &[][..]),
    ] {
        moved(
            value(&enf0, family, labels),
            value(&enf1, family, labels),
            family,
        );
    }
    assert_eq!(
        value(&enf1, "dnsfence_enforcer_gateway_connections", &[]),
        1.0
    );

    // The README's Metrics table documents every family served, and the Grafana dashboard
    // asks only for documented families. Families with no sample yet (ack failures in a
    // healthy world, the store's cluster-mode counters) are not in the text at all, so what
    // is served is checked against the table, and the dashboard against the table.
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let readme = std::fs::read_to_string(root.join("README.md")).unwrap();
    let table = &readme[readme.find("## Metrics").unwrap()..];
    let table = &table[..table[3..].find("\n## ").map_or(table.len(), |e| e + 3)];
    let documented: Vec<String> = metric_names(table)
        .iter()
        .map(|n| family_of(n).to_string())
        .collect();
    for expo in [&store1, &gw1, &enf1] {
        for family in expo.families.keys() {
            assert!(
                documented.contains(family),
                "{family} is served but not in the README's Metrics table"
            );
        }
    }
    let dashboard = std::fs::read_to_string(root.join("deploy/grafana/dnsfence.json")).unwrap();
    let asked = metric_names(&dashboard);
    assert!(asked.len() > 30, "{asked:?}");
    for name in &asked {
        assert!(
            documented.iter().any(|d| d == family_of(name)),
            "the dashboard uses {name}, which the README's Metrics table does not list"
        );
    }

    // one jq filter over both logs
    let gateway_log = json_lines(&t.world.log("gateway-1"));
    let flow_log = json_lines(&t.world.log("enforcer"));
    assert_eq!(gateway_log.len() as f64, written);
    let denied_dns = gateway_log
        .iter()
        .find(|v| v["name"] == "npmjs.com")
        .expect("a decision-log line for npmjs.com");
    let dropped_flow = flow_log
        .iter()
        .find(|v| v["dst"] == NPMJS && v["port"] == 443)
        .expect("a flow-log line for the blocked connection");
    let keys =
        |v: &serde_json::Value| -> Vec<String> { v.as_object().unwrap().keys().cloned().collect() };
    assert_eq!(
        keys(denied_dns),
        keys(dropped_flow),
        "one schema for both logs"
    );
    for v in [denied_dns, dropped_flow] {
        assert_eq!(v["pod"], "nginx");
        assert_eq!(v["namespace"], "default");
        assert_eq!(v["node"], dnsfence_lab::NODE_NAME);
        assert_eq!(v["verdict"], "deny");
        assert_eq!(v["src"], "192.0.2.10");
        // nothing allowed it: the policies that isolate the pod are named
        let policy = v["policy"].as_str().unwrap_or_default();
        assert!(policy.contains("default/nginx-egress"), "{v}");
    }
    assert_eq!(denied_dns["reason"], "denied");
    assert_eq!(dropped_flow["reason"], "default_deny");

    let Some(jq) = jq() else {
        return;
    };
    let mut input = String::new();
    for v in gateway_log.iter().chain(&flow_log) {
        input.push_str(&format!("{v}\n"));
    }
    let mut child = Command::new(jq)
        .args(["-c", DENIED_FILTER])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .spawn()
        .unwrap();
    child
        .stdin
        .take()
        .unwrap()
        .write_all(input.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(out.status.success(), "jq failed");
    let rows: Vec<BTreeMap<String, serde_json::Value>> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    println!("jq -c '{DENIED_FILTER}':");
    for r in &rows {
        println!("  {}", serde_json::to_string(r).unwrap());
    }
    assert!(rows.iter().any(|r| r["service"] == "resolver-gateway"
        && r["pod"] == "default/nginx"
        && r["to"] == "npmjs.com"));
    assert!(rows.iter().any(|r| r["service"] == "node-enforcer"
        && r["pod"] == "default/nginx"
        && r["to"] == NPMJS
        && r["port"] == 443));
}

/// A sample name's family: without `_bucket`, `_total`, `_count`, `_sum`.
fn family_of(name: &str) -> &str {
    ["_bucket", "_total", "_count", "_sum"]
        .iter()
        .find_map(|suffix| name.strip_suffix(suffix))
        .unwrap_or(name)
}

/// Every `dnsfence_…` metric name in a text (dashboard queries, the README's table), once.
fn metric_names(text: &str) -> Vec<String> {
    let mut names = Vec::new();
    let mut rest = text;
    while let Some(at) = rest.find("dnsfence_") {
        let name: String = rest[at..]
            .chars()
            .take_while(|c| c.is_ascii_lowercase() || c.is_ascii_digit() || *c == '_')
            .collect();
        rest = &rest[at + name.len()..];
        // `{__name__=~"dnsfence_.+"}` in the instance variable is no metric
        if !name.ends_with('_') {
            names.push(name);
        }
    }
    names.sort();
    names.dedup();
    names
}

/// `jq`, which scripts/test.sh installs; elsewhere its part is skipped with a reason.
fn jq() -> Option<&'static str> {
    let found = Command::new("jq")
        .arg("--version")
        .output()
        .is_ok_and(|o| o.status.success());
    if found {
        return Some("jq");
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "jq is missing (scripts/test.sh installs it)"
    );
    eprintln!("skipping the jq part: jq is not installed (scripts/test.sh installs it)");
    None
}
