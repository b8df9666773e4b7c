//! OpenTelemetry traces over OTLP/gRPC, configured by the standard `OTEL_*` variables:
//!
//! | variable | effect |
//! |---|---|
//! | `OTEL_EXPORTER_OTLP_ENDPOINT`, `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` | set: export (`http://host:4317`, `https://…`, or `unix:///path.sock`); unset: no OpenTelemetry at all |
//! | `OTEL_SDK_DISABLED=true`, `OTEL_TRACES_EXPORTER=none` | no export even with an endpoint |
//! | `OTEL_EXPORTER_OTLP_PROTOCOL` | only `grpc` |
//! | `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES` | the resource; `service.name` defaults to the binary's name |
//! | `OTEL_TRACES_SAMPLER`, `OTEL_TRACES_SAMPLER_ARG` | the sampler (default [`DEFAULT_SAMPLING`]: `parentbased_traceidratio` 0.01) |
//! | `OTEL_EXPORTER_OTLP_TIMEOUT`, `_HEADERS`, `_COMPRESSION`, `_INSECURE` | read by the OTLP exporter |
//! | `OTEL_EXPORTER_OTLP_CERTIFICATE`, `_CLIENT_CERTIFICATE`, `_CLIENT_KEY` | TLS to the collector (PEM files) |
//! | `OTEL_BSP_*` | the batch span processor (queue size, delay, batch size, timeout) |
//!
//! Hot paths (the gateway's query path) decide sampling *before* they create a span, with
//! [`sample_root`]: an unsampled query then creates no span at all, which is what keeps
//! tracing affordable at DNS rates. A span created that way carries `sampling.priority = 1`
//! (the OpenTracing convention) and the SDK's sampler keeps it as is; every other span goes
//! through the configured sampler.

use std::fmt;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use opentelemetry::trace::{Link, SpanKind, TraceContextExt, TraceId, TraceState, TracerProvider};
use opentelemetry::{Context, KeyValue};
use opentelemetry_otlp::{WithExportConfig, WithTonicConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::{
    BatchSpanProcessor, Sampler, SamplingDecision, SamplingResult, SdkTracerProvider, ShouldSample,
    Tracer,
};
use tokio::net::UnixStream;
use tonic::transport::{Certificate, ClientTlsConfig, Endpoint, Identity};

use crate::TelemetryError;

/// The target of spans that exist for tracing only: never logged, and disabled (free) when
/// nothing is exported.
pub const OTEL_TARGET: &str = "dnsfence::otel";

/// The attribute a pre-sampled root span carries (see the module docs).
pub const PRESAMPLED_KEY: &str = "sampling.priority";

/// The sampler when `OTEL_TRACES_SAMPLER` is unset: `parentbased_traceidratio` with 0.01, one
/// new trace in a hundred (children follow their parent). Not the specification's
/// `parentbased_always_on`: a gateway answers hundreds of thousands of queries a second, and
/// tracing each costs about 70% of its throughput (`loadtest/dns-peers/bench-tracing.sh`),
/// while 1% costs nothing measurable. Set `OTEL_TRACES_SAMPLER=parentbased_always_on` to trace
/// everything (the lab does).
pub const DEFAULT_SAMPLING: Sampling = Sampling {
    parent_based: true,
    root: Root::Ratio(0.01),
};

/// Probability × 2^64 that [`sample_root`] says yes: 0 while nothing is exported.
static ROOT_THRESHOLD: AtomicU64 = AtomicU64::new(0);

/// Should a hot path trace this request as a new trace? `key` is any value that differs
/// between requests (mixed here, so a DNS id and port are fine); the same key gets the same
/// answer, so two places on one request's path agree without passing a flag.
///
/// One relaxed atomic load when nothing is exported.
#[inline]
pub fn sample_root(key: u64) -> bool {
    let threshold = ROOT_THRESHOLD.load(Ordering::Relaxed);
    threshold != 0 && (threshold == u64::MAX || mix(key ^ seed()) < threshold)
}

/// True inside a span of a sampled trace: a child span is worth creating.
pub fn in_sampled_trace() -> bool {
    Context::map_current(|cx| cx.span().span_context().is_sampled())
}

/// A per-process seed, so which keys are sampled differs between replicas.
fn seed() -> u64 {
    static SEED: AtomicU64 = AtomicU64::new(0);
    let s = SEED.load(Ordering::Relaxed);
    if s != 0 {
        return s;
    }
    let fresh = rand::random::<u64>() | 1;
    SEED.store(fresh, Ordering::Relaxed);
    fresh
}

/// SplitMix64's finaliser: a cheap, well-mixing bijection.
#[inline]
fn mix(mut z: u64) -> u64 {
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// What decides a trace with no parent.
#[derive(Debug, Clone, Copy, PartialEq)]
pub enum Root {
    On,
    Off,
    /// Probability in [0, 1].
    Ratio(f64),
}

/// `OTEL_TRACES_SAMPLER` and its argument.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Sampling {
    /// Follow a sampled/unsampled parent (`parentbased_*`).
    pub parent_based: bool,
    pub root: Root,
}

impl Sampling {
    /// Parses the standard sampler names; a missing or bad argument is an error naming the
    /// variable (the SDK would silently sample everything instead).
    pub fn parse(name: Option<&str>, arg: Option<&str>) -> Result<Sampling, TelemetryError> {
        let ratio = || -> Result<f64, TelemetryError> {
            let Some(arg) = arg.filter(|a| !a.trim().is_empty()) else {
                // the specification's default for the ratio samplers
                return Ok(1.0);
            };
            match arg.trim().parse::<f64>() {
                Ok(r) if (0.0..=1.0).contains(&r) => Ok(r),
                _ => Err(TelemetryError::Otel {
                    variable: "OTEL_TRACES_SAMPLER_ARG",
                    reason: format!("{arg:?}: expected a probability between 0 and 1"),
                }),
            }
        };
        let (parent_based, root) = match name.map(str::trim) {
            None | Some("") => return Ok(DEFAULT_SAMPLING),
            Some("always_on") => (false, Root::On),
            Some("always_off") => (false, Root::Off),
            Some("traceidratio") => (false, Root::Ratio(ratio()?)),
            Some("parentbased_always_on") => (true, Root::On),
            Some("parentbased_always_off") => (true, Root::Off),
            Some("parentbased_traceidratio") => (true, Root::Ratio(ratio()?)),
            Some(other) => {
                return Err(TelemetryError::Otel {
                    variable: "OTEL_TRACES_SAMPLER",
                    reason: format!(
                        "{other:?}: expected always_on, always_off, traceidratio, \
                         parentbased_always_on, parentbased_always_off or parentbased_traceidratio"
                    ),
                });
            }
        };
        Ok(Sampling { parent_based, root })
    }

    fn sdk_sampler(&self) -> Sampler {
        let root = match self.root {
            Root::On => Sampler::AlwaysOn,
            Root::Off => Sampler::AlwaysOff,
            Root::Ratio(r) => Sampler::TraceIdRatioBased(r),
        };
        if self.parent_based {
            Sampler::ParentBased(Box::new(root))
        } else {
            root
        }
    }

    /// [`ROOT_THRESHOLD`] for this sampler.
    fn root_threshold(&self) -> u64 {
        match self.root {
            Root::On => u64::MAX,
            Root::Off => 0,
            Root::Ratio(r) if r >= 1.0 => u64::MAX,
            Root::Ratio(r) if r <= 0.0 => 0,
            // r < 1, so the product stays below 2^64.
            Root::Ratio(r) => (r * 18_446_744_073_709_551_616.0) as u64,
        }
    }
}

impl fmt::Display for Sampling {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.parent_based {
            f.write_str("parentbased_")?;
        }
        match self.root {
            Root::On => f.write_str("always_on"),
            Root::Off => f.write_str("always_off"),
            Root::Ratio(r) => write!(f, "traceidratio {r}"),
        }
    }
}

/// The configured sampler, except that a root span a hot path already sampled (it carries
/// [`PRESAMPLED_KEY`]) is kept without a second draw.
#[derive(Debug, Clone)]
struct PresampledOr {
    configured: Sampler,
}

impl ShouldSample for PresampledOr {
    fn should_sample(
        &self,
        parent_context: Option<&Context>,
        trace_id: TraceId,
        name: &str,
        span_kind: &SpanKind,
        attributes: &[KeyValue],
        links: &[Link],
    ) -> SamplingResult {
        let has_parent = parent_context.is_some_and(|cx| cx.has_active_span());
        if !has_parent
            && attributes
                .iter()
                .any(|kv| kv.key.as_str() == PRESAMPLED_KEY)
        {
            return SamplingResult {
                decision: SamplingDecision::RecordAndSample,
                attributes: Vec::new(),
                trace_state: TraceState::default(),
            };
        }
        self.configured
            .should_sample(parent_context, trace_id, name, span_kind, attributes, links)
    }
}

/// Reads a variable: `std::env::var` in the services, a map in tests.
pub type Env<'a> = &'a dyn Fn(&str) -> Option<String>;

fn get(env: Env<'_>, name: &str) -> Option<String> {
    env(name).filter(|v| !v.trim().is_empty())
}

/// The traces endpoint from the environment, if export is on.
fn endpoint_from_env(env: Env<'_>) -> Result<Option<(&'static str, String)>, TelemetryError> {
    if get(env, "OTEL_SDK_DISABLED").is_some_and(|v| v.trim().eq_ignore_ascii_case("true")) {
        return Ok(None);
    }
    match get(env, "OTEL_TRACES_EXPORTER").as_deref().map(str::trim) {
        None | Some("otlp") => {}
        Some("none") => return Ok(None),
        Some(other) => {
            return Err(TelemetryError::Otel {
                variable: "OTEL_TRACES_EXPORTER",
                reason: format!("{other:?}: only otlp (or none) is supported"),
            });
        }
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        "OTEL_EXPORTER_OTLP_PROTOCOL",
    ] {
        if let Some(p) = get(env, variable)
            && p.trim() != "grpc"
        {
            return Err(TelemetryError::Otel {
                variable,
                reason: format!("{p:?}: only grpc is supported"),
            });
        }
    }
    for variable in [
        "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
        "OTEL_EXPORTER_OTLP_ENDPOINT",
    ] {
        if let Some(e) = get(env, variable) {
            return Ok(Some((variable, e.trim().to_owned())));
        }
    }
    Ok(None)
}

/// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` names one:
/// the binary (`dnsfence-resolver-gateway`).
fn binary_name() -> String {
    std::env::current_exe()
        .ok()
        .and_then(|p| p.file_name().map(|n| n.to_string_lossy().into_owned()))
        .unwrap_or_else(|| "dnsfence".into())
}

/// `OTEL_RESOURCE_ATTRIBUTES` (`k=v,k2=v2`, values percent-encoded), then
/// `OTEL_SERVICE_NAME`, which wins for `service.name`; defaults: the binary's name and the
/// workspace version.
fn resource(env: Env<'_>) -> Resource {
    let mut attributes: Vec<(String, String)> = get(env, "OTEL_RESOURCE_ATTRIBUTES")
        .unwrap_or_default()
        .split(',')
        .filter_map(|kv| kv.split_once('='))
        .map(|(k, v)| (k.trim().to_owned(), percent_decode(v.trim())))
        .filter(|(k, _)| !k.is_empty())
        .collect();
    if let Some(name) = get(env, "OTEL_SERVICE_NAME") {
        attributes.retain(|(k, _)| k != "service.name");
        attributes.push(("service.name".into(), name.trim().to_owned()));
    }
    let has = |key: &str, a: &[(String, String)]| a.iter().any(|(k, _)| k == key);
    if !has("service.name", &attributes) {
        attributes.push(("service.name".into(), binary_name()));
    }
    if !has("service.version", &attributes) {
        attributes.push(("service.version".into(), env!("CARGO_PKG_VERSION").into()));
    }
    Resource::builder_empty()
        .with_detector(Box::new(
            opentelemetry_sdk::resource::TelemetryResourceDetector,
        ))
        .with_attributes(attributes.into_iter().map(|(k, v)| KeyValue::new(k, v)))
        .build()
}

/// `%2C` → `,` (W3C Baggage octet encoding, as OTEL_RESOURCE_ATTRIBUTES uses it).
fn percent_decode(s: &str) -> String {
    let bytes = s.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        match (bytes[i], bytes.get(i + 1), bytes.get(i + 2)) {
            (b'%', Some(&h), Some(&l)) if hex(h).is_some() && hex(l).is_some() => {
                let (h, l) = (hex(h).unwrap_or(0), hex(l).unwrap_or(0));
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (b, _, _) => {
                out.push(b);
                i += 1;
            }
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn read_pem(env: Env<'_>, variable: &'static str) -> Result<Option<Vec<u8>>, TelemetryError> {
    let Some(path) = get(env, variable) else {
        return Ok(None);
    };
    std::fs::read(&path)
        .map(Some)
        .map_err(|source| TelemetryError::Read {
            path: format!("{variable} {path}"),
            source,
        })
}

/// TLS settings from `OTEL_EXPORTER_OTLP_CERTIFICATE` (CA) and the client pair, if any.
fn tls_from_env(env: Env<'_>) -> Result<Option<ClientTlsConfig>, TelemetryError> {
    let ca = read_pem(env, "OTEL_EXPORTER_OTLP_CERTIFICATE")?;
    let cert = read_pem(env, "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE")?;
    let key = read_pem(env, "OTEL_EXPORTER_OTLP_CLIENT_KEY")?;
    if ca.is_none() && cert.is_none() && key.is_none() {
        return Ok(None);
    }
    let mut tls = ClientTlsConfig::new();
    if let Some(ca) = ca {
        tls = tls.ca_certificate(Certificate::from_pem(ca));
    }
    match (cert, key) {
        (Some(cert), Some(key)) => tls = tls.identity(Identity::from_pem(cert, key)),
        (None, None) => {}
        _ => {
            return Err(TelemetryError::Otel {
                variable: "OTEL_EXPORTER_OTLP_CLIENT_CERTIFICATE",
                reason: "needs OTEL_EXPORTER_OTLP_CLIENT_KEY too (and the other way round)".into(),
            });
        }
    }
    Ok(Some(tls))
}

/// A lazily connected channel to a collector listening on a Unix socket (which, unlike
/// 127.0.0.1, is the same place from every network namespace of the machine).
fn unix_channel(path: PathBuf) -> Result<tonic::transport::Channel, TelemetryError> {
    let endpoint =
        Endpoint::from_static("http://collector.invalid").connect_timeout(Duration::from_secs(5));
    Ok(
        endpoint.connect_with_connector_lazy(tower::service_fn(move |_: http::Uri| {
            let path = path.clone();
            async move { UnixStream::connect(path).await.map(TokioIo::new) }
        })),
    )
}

/// The running exporter.
pub(crate) struct Exporting {
    provider: SdkTracerProvider,
    endpoint: String,
    sampling: Sampling,
}

impl fmt::Debug for Exporting {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Exporting")
            .field("endpoint", &self.endpoint)
            .field("sampling", &self.sampling)
            .finish_non_exhaustive()
    }
}

impl Exporting {
    /// The exporter the environment asks for, or `None` when export is off.
    pub(crate) fn from_env(env: Env<'_>) -> Result<Option<Exporting>, TelemetryError> {
        let Some((variable, endpoint)) = endpoint_from_env(env)? else {
            return Ok(None);
        };
        let sampler_name = get(env, "OTEL_TRACES_SAMPLER");
        let sampler_arg = get(env, "OTEL_TRACES_SAMPLER_ARG");
        let sampling = Sampling::parse(sampler_name.as_deref(), sampler_arg.as_deref())?;

        let mut builder = opentelemetry_otlp::SpanExporter::builder().with_tonic();
        if let Some(path) = endpoint.strip_prefix("unix:") {
            let path = path.strip_prefix("//").unwrap_or(path);
            if path.is_empty() {
                return Err(TelemetryError::Otel {
                    variable,
                    reason: format!("{endpoint:?}: no socket path"),
                });
            }
            builder = builder.with_channel(unix_channel(PathBuf::from(path))?);
        } else {
            // The exporter reads the endpoint (and timeout, headers, compression) itself.
            builder = builder.with_endpoint(endpoint.clone());
            if let Some(tls) = tls_from_env(env)? {
                builder = builder.with_tls_config(tls);
            }
        }
        let exporter = builder.build().map_err(|e| TelemetryError::Otel {
            variable,
            reason: e.to_string(),
        })?;
        let provider = SdkTracerProvider::builder()
            .with_span_processor(BatchSpanProcessor::builder(exporter).build())
            .with_sampler(PresampledOr {
                configured: sampling.sdk_sampler(),
            })
            .with_resource(resource(env))
            .build();
        Ok(Some(Exporting {
            provider,
            endpoint,
            sampling,
        }))
    }

    pub(crate) fn tracer(&self) -> Tracer {
        self.provider.tracer("dnsfence")
    }

    pub(crate) fn endpoint(&self) -> &str {
        &self.endpoint
    }

    pub(crate) fn sampling(&self) -> Sampling {
        self.sampling
    }

    /// Turns on [`sample_root`] and the W3C propagator (once the layer is installed).
    pub(crate) fn activate(&self) {
        opentelemetry::global::set_text_map_propagator(
            opentelemetry_sdk::propagation::TraceContextPropagator::new(),
        );
        ROOT_THRESHOLD.store(self.sampling.root_threshold(), Ordering::Relaxed);
    }

    pub(crate) fn flush(&self) {
        if let Err(error) = self.provider.force_flush() {
            tracing::warn!(%error, "flushing traces");
        }
    }

    /// Exports what is queued (bounded by the processor's export timeout) and stops.
    pub(crate) fn shutdown(self) {
        ROOT_THRESHOLD.store(0, Ordering::Relaxed);
        if let Err(error) = self.provider.shutdown_with_timeout(Duration::from_secs(5)) {
            eprintln!("flushing traces on shutdown: {error}");
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn sampler_names_and_arguments() {
        assert_eq!(Sampling::parse(None, None).unwrap(), DEFAULT_SAMPLING);
        let s = Sampling::parse(Some("parentbased_traceidratio"), Some("0.25")).unwrap();
        assert_eq!(
            s,
            Sampling {
                parent_based: true,
                root: Root::Ratio(0.25)
            }
        );
        assert_eq!(s.to_string(), "parentbased_traceidratio 0.25");
        assert_eq!(
            Sampling::parse(Some("traceidratio"), None).unwrap().root,
            Root::Ratio(1.0)
        );
        assert_eq!(
            Sampling::parse(Some("always_off"), None).unwrap(),
            Sampling {
                parent_based: false,
                root: Root::Off
            }
        );
        let err = Sampling::parse(Some("traceidratio"), Some("1.5")).unwrap_err();
        assert!(
            err.to_string().starts_with("OTEL_TRACES_SAMPLER_ARG"),
            "{err}"
        );
        let err = Sampling::parse(Some("jaeger_remote"), None).unwrap_err();
        assert!(err.to_string().starts_with("OTEL_TRACES_SAMPLER:"), "{err}");
    }

    #[test]
    fn resource_from_the_environment() {
        let vars = |name: &str| match name {
            "OTEL_RESOURCE_ATTRIBUTES" => Some(
                "deployment.environment=lab,service.name=ignored,k8s.node.name=node%2D1".into(),
            ),
            "OTEL_SERVICE_NAME" => Some("gw-a".into()),
            _ => None,
        };
        let r = resource(&vars);
        let get = |k: &str| {
            r.get(&opentelemetry::Key::from(k.to_owned()))
                .map(|v| v.to_string())
        };
        assert_eq!(get("service.name").as_deref(), Some("gw-a"));
        assert_eq!(get("deployment.environment").as_deref(), Some("lab"));
        assert_eq!(get("k8s.node.name").as_deref(), Some("node-1"));
        assert_eq!(
            get("service.version").as_deref(),
            Some(env!("CARGO_PKG_VERSION"))
        );
        let none = |_: &str| None;
        let r = resource(&none);
        assert!(r.get(&opentelemetry::Key::from("service.name")).is_some());
    }

    #[test]
    fn export_is_off_without_an_endpoint_and_strict_about_the_rest() {
        let none = |_: &str| None;
        assert!(endpoint_from_env(&none).unwrap().is_none());
        let disabled = |n: &str| match n {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://127.0.0.1:4317".into()),
            "OTEL_SDK_DISABLED" => Some("true".into()),
            _ => None,
        };
        assert!(endpoint_from_env(&disabled).unwrap().is_none());
        let traces = |n: &str| match n {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://a:4317".into()),
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT" => Some("http://b:4317".into()),
            _ => None,
        };
        assert_eq!(
            endpoint_from_env(&traces).unwrap(),
            Some(("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://b:4317".into()))
        );
        let http = |n: &str| match n {
            "OTEL_EXPORTER_OTLP_ENDPOINT" => Some("http://a:4318".into()),
            "OTEL_EXPORTER_OTLP_PROTOCOL" => Some("http/protobuf".into()),
            _ => None,
        };
        let err = endpoint_from_env(&http).unwrap_err().to_string();
        assert!(err.starts_with("OTEL_EXPORTER_OTLP_PROTOCOL"), "{err}");
    }

    #[test]
    fn root_thresholds_sample_the_asked_share() {
        let s = |root| Sampling {
            parent_based: true,
            root,
        };
        assert_eq!(s(Root::On).root_threshold(), u64::MAX);
        assert_eq!(s(Root::Off).root_threshold(), 0);
        assert_eq!(s(Root::Ratio(0.0)).root_threshold(), 0);
        let quarter = s(Root::Ratio(0.25)).root_threshold();
        // sequential keys (DNS ids) mix into a uniform spread
        let hits = (0..100_000u64).filter(|k| mix(*k) < quarter).count();
        assert!((23_000..27_000).contains(&hits), "{hits} of 100000");
    }

    #[test]
    fn nothing_is_sampled_while_nothing_is_exported() {
        assert!((0..1000).all(|k| !sample_root(k)));
        assert!(!in_sampled_trace());
    }
}
