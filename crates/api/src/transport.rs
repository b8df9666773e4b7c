//! gRPC transport plumbing shared by every dnsfence service and client: listeners, serving one
//! router on several listeners, the health and reflection services, channels to `http(s)://`
//! and `unix://` addresses, and reconnect backoff.

use std::error::Error as StdError;
use std::fmt;
use std::future::Future;
use std::path::{Path, PathBuf};
use std::time::Duration;

use hyper_util::rt::TokioIo;
use rand::Rng;
use tokio::net::{TcpListener, UnixListener, UnixStream};
use tokio::sync::watch;
use tokio_stream::wrappers::UnixListenerStream;
use tonic::body::Body;
use tonic::codegen::Bytes;
use tonic::codegen::http::{Request, Response};
use tonic::service::Routes;
use tonic::transport::server::{Router, TcpIncoming};
use tonic::transport::{Channel, Endpoint, Server, Uri};
use tonic_health::pb::health_server::{Health, HealthServer};
use tonic_health::server::HealthReporter;
use tonic_reflection::server::v1::{ServerReflection, ServerReflectionServer};
use tower::layer::util::{Identity, Stack};
use tower::{Layer, Service};

use crate::error::ApiError;
use crate::tls::{ClientTls, ServerTls};
use crate::trace::GrpcTraceLayer;

/// HTTP/2 pings: a peer that vanished without a FIN (node lost, NAT entry dropped) is noticed
/// within interval + timeout instead of when the next write fails, which for an idle watch
/// stream might be never.
const KEEPALIVE_INTERVAL: Duration = Duration::from_secs(30);
const KEEPALIVE_TIMEOUT: Duration = Duration::from_secs(10);

type BoxError = Box<dyn StdError + Send + Sync>;

/// A bound socket to serve on.
#[derive(Debug)]
pub enum Listener {
    Tcp(TcpListener),
    Unix(UnixListener),
}

impl Listener {
    /// Binds `unix:///path/to/sock` (or `unix:/path`) or a TCP `host:port` (`0.0.0.0:7000`,
    /// `[::]:7000`, `127.0.0.1:0`).
    ///
    /// A socket file left behind by a process that died is removed first; one that a live
    /// process still accepts on is an error, not something to steal.
    pub async fn bind(address: &str) -> Result<Listener, ApiError> {
        if let Some(path) = unix_path(address)? {
            return Listener::bind_unix(&path).await;
        }
        let listener = TcpListener::bind(address)
            .await
            .map_err(|e| ApiError::io(format!("binding {address}"), e))?;
        Ok(Listener::Tcp(listener))
    }

    async fn bind_unix(path: &Path) -> Result<Listener, ApiError> {
        let context = || format!("binding unix://{}", path.display());
        if tokio::fs::symlink_metadata(path).await.is_ok() {
            if UnixStream::connect(path).await.is_ok() {
                return Err(ApiError::io(
                    context(),
                    std::io::Error::new(
                        std::io::ErrorKind::AddrInUse,
                        "another process is listening on it",
                    ),
                ));
            }
            tokio::fs::remove_file(path)
                .await
                .map_err(|e| ApiError::io(format!("removing stale {}", path.display()), e))?;
        }
        let listener = UnixListener::bind(path).map_err(|e| ApiError::io(context(), e))?;
        Ok(Listener::Unix(listener))
    }
}

impl fmt::Display for Listener {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Listener::Tcp(l) => match l.local_addr() {
                Ok(addr) => write!(f, "{addr}"),
                Err(_) => f.write_str("tcp (unknown address)"),
            },
            Listener::Unix(l) => match l.local_addr() {
                Ok(addr) => match addr.as_pathname() {
                    Some(path) => write!(f, "unix://{}", path.display()),
                    None => f.write_str("unix (unnamed)"),
                },
                Err(_) => f.write_str("unix (unknown address)"),
            },
        }
    }
}

/// Serves `router` on every listener at once until `shutdown` completes, then stops accepting
/// everywhere and drains the open connections.
///
/// TLS, if the router's server has it, applies to every listener, Unix sockets included; to
/// serve a plaintext socket beside a TLS port, call `serve` twice with routers from two
/// [`server_builder`]s and shutdown futures from one `watch` channel.
///
/// If one listener fails, the others are shut down too and the first error is returned:
/// half a service is worse than a restarted one.
pub async fn serve<L, ResBody>(
    router: Router<L>,
    listeners: Vec<Listener>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), ApiError>
where
    L: Layer<Routes> + Clone,
    L::Service: Service<Request<Body>, Response = Response<ResBody>> + Clone + Send + 'static,
    <L::Service as Service<Request<Body>>>::Future: Send,
    <L::Service as Service<Request<Body>>>::Error: Into<BoxError> + Send,
    ResBody: tonic::transport::Body<Data = Bytes> + Send + 'static,
    ResBody::Error: Into<BoxError>,
{
    if listeners.is_empty() {
        return Err(ApiError::Endpoint("no listener to serve on".into()));
    }
    let (stop, stopped) = watch::channel(false);
    let stop = &stop;
    let servers = listeners.into_iter().map(|listener| {
        // `Router` is `Clone` (its services are cheap `Arc`-backed handles), so every listener
        // gets its own copy of the same routes.
        let router = router.clone();
        let mut stopped = stopped.clone();
        let signal = async move {
            // An error means the sender is gone, which only happens once `serve` is done.
            let _ = stopped.wait_for(|stop| *stop).await;
        };
        async move {
            let name = listener.to_string();
            let result = match listener {
                // `serve_with_incoming*` ignores the builder's TCP options, so TCP_NODELAY is
                // set on each accepted socket here.
                Listener::Tcp(l) => {
                    let incoming = TcpIncoming::from(l).with_nodelay(Some(true));
                    router.serve_with_incoming_shutdown(incoming, signal).await
                }
                Listener::Unix(l) => {
                    router
                        .serve_with_incoming_shutdown(UnixListenerStream::new(l), signal)
                        .await
                }
            };
            result.map_err(|e| {
                stop.send_replace(true);
                ApiError::Serve {
                    listener: name,
                    reason: error_chain(&e),
                }
            })
        }
    });
    let servers = futures::future::join_all(servers);
    let trigger = async {
        shutdown.await;
        stop.send_replace(true);
    };
    tokio::pin!(servers, trigger);
    let results = tokio::select! {
        results = &mut servers => results,
        () = &mut trigger => servers.await,
    };
    results.into_iter().collect()
}

/// A server builder with dnsfence's settings: TLS from the flags, TCP_NODELAY, HTTP/2
/// keepalive pings, and a server span per call whose parent is the caller's trace context
/// ([`GrpcTraceLayer`]). Add services to it and hand the router to [`serve`].
pub fn server_builder(
    tls: &ServerTls,
) -> Result<Server<Stack<GrpcTraceLayer, Identity>>, ApiError> {
    let mut server = Server::builder()
        .tcp_nodelay(true)
        .http2_keepalive_interval(Some(KEEPALIVE_INTERVAL))
        .http2_keepalive_timeout(Some(KEEPALIVE_TIMEOUT));
    if let Some(config) = tls.server_config()? {
        server = server
            .tls_config(config)
            .map_err(|e| ApiError::Tls(error_chain(&e)))?;
    }
    Ok(server.layer(GrpcTraceLayer))
}

/// The standard `grpc.health.v1` service and the v1 reflection service describing every
/// dnsfence API (and the health API), for `grpcurl` and Kubernetes gRPC probes.
///
/// The reporter starts with the overall service (`""`) SERVING; a service marks its own
/// services with `reporter.set_serving::<FooServer<_>>()` once it is ready, and
/// `set_not_serving` when it is draining. Add both servers to the router:
///
/// ```no_run
/// # fn main() -> Result<(), dnsfence_api::ApiError> {
/// let tls = dnsfence_api::ServerTls::default();
/// let (reporter, health, reflection) = dnsfence_api::health_and_reflection()?;
/// let router = dnsfence_api::server_builder(&tls)?
///     .add_service(health)
///     .add_service(reflection);
/// # let _ = (reporter, router);
/// # Ok(())
/// # }
/// ```
pub fn health_and_reflection() -> Result<
    (
        HealthReporter,
        HealthServer<impl Health>,
        ServerReflectionServer<impl ServerReflection>,
    ),
    ApiError,
> {
    let (reporter, health) = tonic_health::server::health_reporter();
    let reflection = tonic_reflection::server::Builder::configure()
        .register_encoded_file_descriptor_set(crate::FILE_DESCRIPTOR_SET)
        .register_encoded_file_descriptor_set(tonic_health::pb::FILE_DESCRIPTOR_SET)
        .build_v1()
        .map_err(|e| ApiError::Reflection(e.to_string()))?;
    Ok((reporter, health, reflection))
}

/// Where a client connects.
enum Target {
    Uri(String),
    Unix(PathBuf),
}

/// `Some(path)` for `unix://` and `unix:` addresses.
fn unix_path(address: &str) -> Result<Option<PathBuf>, ApiError> {
    let Some(rest) = address.strip_prefix("unix:") else {
        return Ok(None);
    };
    let path = rest.strip_prefix("//").unwrap_or(rest);
    if path.is_empty() {
        return Err(ApiError::Endpoint(format!("{address:?}: no socket path")));
    }
    Ok(Some(PathBuf::from(path)))
}

/// Picks the scheme: `host:port` follows the TLS flags; an explicit scheme must agree with
/// them, since silently sending plaintext to an address the user wrote as `https://` (or TLS
/// flags being ignored for `http://`) hides a misconfiguration.
fn target(address: &str, tls: bool) -> Result<Target, ApiError> {
    if let Some(path) = unix_path(address)? {
        if tls {
            return Err(ApiError::Endpoint(format!(
                "{address}: TLS flags do not apply to unix sockets"
            )));
        }
        return Ok(Target::Unix(path));
    }
    let uri = match address.split_once("://") {
        Some(("https", _)) if !tls => {
            return Err(ApiError::Endpoint(format!(
                "{address}: https:// needs --tls-ca"
            )));
        }
        Some(("http", _)) if tls => {
            return Err(ApiError::Endpoint(format!(
                "{address}: http:// is plaintext but TLS flags are set; use https:// or host:port"
            )));
        }
        Some(("http" | "https", _)) => address.to_owned(),
        Some((scheme, _)) => {
            return Err(ApiError::Endpoint(format!(
                "{address}: unsupported scheme {scheme:?} (http, https or unix)"
            )));
        }
        None if tls => format!("https://{address}"),
        None => format!("http://{address}"),
    };
    let parsed: Uri = uri
        .parse()
        .map_err(|e| ApiError::Endpoint(format!("{address}: {e}")))?;
    // gRPC has no well-known port; falling back to 80/443 would only produce a confusing
    // connection error later.
    if parsed.port().is_none() {
        return Err(ApiError::Endpoint(format!("{address}: no port")));
    }
    Ok(Target::Uri(uri))
}

/// A configured endpoint for `address`: `http://host:port`, `https://host:port`, `host:port`
/// (TLS when the flags enable it) or `unix:///path/to/sock`.
///
/// `timeout` bounds connecting and each call (until the response headers arrive, so it does
/// not cut long-lived streams short). Prefer [`connect`] / [`connect_lazy`], which also apply
/// the connect timeout to Unix sockets.
pub fn endpoint(address: &str, tls: &ClientTls, timeout: Duration) -> Result<Endpoint, ApiError> {
    let tls_config = tls.client_config()?;
    let endpoint = match target(address, tls_config.is_some())? {
        Target::Unix(path) => Endpoint::from_shared(format!("unix://{}", path.display()))
            .map_err(|e| ApiError::Endpoint(format!("{address}: {}", error_chain(&e))))?,
        Target::Uri(uri) => {
            let endpoint = Endpoint::from_shared(uri)
                .map_err(|e| ApiError::Endpoint(format!("{address}: {}", error_chain(&e))))?;
            match tls_config {
                Some(config) => endpoint
                    .tls_config(config)
                    .map_err(|e| ApiError::Tls(error_chain(&e)))?,
                None => endpoint,
            }
        }
    };
    Ok(endpoint
        .connect_timeout(timeout)
        .timeout(timeout)
        .tcp_nodelay(true)
        .http2_keep_alive_interval(KEEPALIVE_INTERVAL)
        .keep_alive_timeout(KEEPALIVE_TIMEOUT)
        // Idle channels (a gateway between queries) learn of a dead peer before a call does.
        .keep_alive_while_idle(true))
}

/// Connects a Unix socket. tonic's built-in Unix connector ignores the connect timeout; this
/// one runs under it like a TCP connect.
fn unix_connector(
    path: PathBuf,
) -> impl Service<
    Uri,
    Response = TokioIo<UnixStream>,
    Error = std::io::Error,
    Future = impl Future<Output = Result<TokioIo<UnixStream>, std::io::Error>> + Send,
> + Clone
+ Send
+ 'static {
    tower::service_fn(move |_: Uri| {
        let path = path.clone();
        async move { UnixStream::connect(path).await.map(TokioIo::new) }
    })
}

/// Connects to `address` (see [`endpoint`]) and waits until the connection is up.
pub async fn connect(
    address: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<Channel, ApiError> {
    let endpoint = endpoint(address, tls, timeout)?;
    let channel = match unix_path(address)? {
        Some(path) => endpoint.connect_with_connector(unix_connector(path)).await,
        None => endpoint.connect().await,
    };
    channel.map_err(|e| ApiError::Connect {
        address: address.to_owned(),
        reason: error_chain(&e),
    })
}

/// A channel to `address` (see [`endpoint`]) that connects on first use and reconnects by
/// itself; errors here are configuration errors only.
pub fn connect_lazy(
    address: &str,
    tls: &ClientTls,
    timeout: Duration,
) -> Result<Channel, ApiError> {
    let endpoint = endpoint(address, tls, timeout)?;
    Ok(match unix_path(address)? {
        Some(path) => endpoint.connect_with_connector_lazy(unix_connector(path)),
        None => endpoint.connect_lazy(),
    })
}

/// tonic's errors print as "transport error" with the cause only in the source chain; users
/// need the cause ("Connection refused", "invalid peer certificate").
pub(crate) fn error_chain(error: &dyn StdError) -> String {
    let mut text = error.to_string();
    let mut source = error.source();
    while let Some(cause) = source {
        let cause_text = cause.to_string();
        if !text.ends_with(&cause_text) {
            text.push_str(": ");
            text.push_str(&cause_text);
        }
        source = cause.source();
    }
    text
}

/// Jittered exponential backoff for reconnect loops ("full jitter": each delay is uniform in
/// `[0, min(max, initial * 2^attempt)]`), so that many clients that lost the same server do not
/// come back in lockstep.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    max: Duration,
    attempt: u32,
}

impl Default for Backoff {
    fn default() -> Self {
        Backoff::new(Duration::from_millis(100), Duration::from_secs(10))
    }
}

impl Backoff {
    pub fn new(initial: Duration, max: Duration) -> Backoff {
        Backoff {
            initial,
            max: max.max(initial),
            attempt: 0,
        }
    }

    /// The upper bound of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        // 2^31 × any positive initial already exceeds every sensible max; capping the shift
        // keeps the multiplication from overflowing.
        let factor = 1u32 << self.attempt.min(31);
        self.initial.saturating_mul(factor).min(self.max)
    }

    pub fn next_delay(&mut self) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let nanos = u64::try_from(ceiling.as_nanos()).unwrap_or(u64::MAX);
        Duration::from_nanos(rand::rng().random_range(0..=nanos))
    }

    /// Call after a success (a connection that delivered something), so the next failure
    /// starts from the initial delay again.
    pub fn reset(&mut self) {
        self.attempt = 0;
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn backoff_stays_within_bounds_and_grows() {
        let mut backoff = Backoff::default();
        let expected_ceilings = [100, 200, 400, 800, 1600, 3200, 6400, 10_000, 10_000, 10_000];
        for ceiling in expected_ceilings {
            assert_eq!(backoff.ceiling(), Duration::from_millis(ceiling));
            let delay = backoff.next_delay();
            assert!(
                delay <= Duration::from_millis(ceiling),
                "{delay:?} > {ceiling}ms"
            );
        }
        for _ in 0..100 {
            assert!(backoff.next_delay() <= Duration::from_secs(10));
        }
        backoff.reset();
        assert_eq!(backoff.ceiling(), Duration::from_millis(100));
        assert!(backoff.next_delay() <= Duration::from_millis(100));
    }

    #[test]
    fn backoff_is_jittered_and_survives_many_attempts() {
        let mut backoff = Backoff::new(Duration::from_secs(1), Duration::from_secs(1));
        let delays: Vec<Duration> = (0..50).map(|_| backoff.next_delay()).collect();
        assert!(
            delays.iter().any(|d| *d != delays[0]),
            "no jitter: {delays:?}"
        );
        let mut backoff = Backoff::default();
        for _ in 0..10_000 {
            assert!(backoff.next_delay() <= Duration::from_secs(10));
        }
    }

    #[test]
    fn targets() {
        let uri = |a: &str, tls| match target(a, tls).unwrap() {
            Target::Uri(u) => u,
            Target::Unix(p) => format!("unix {}", p.display()),
        };
        assert_eq!(uri("127.0.0.1:7000", false), "http://127.0.0.1:7000");
        assert_eq!(uri("store:7000", true), "https://store:7000");
        assert_eq!(uri("http://[::1]:7000", false), "http://[::1]:7000");
        assert_eq!(uri("https://store:7000", true), "https://store:7000");
        assert_eq!(
            uri("unix:///run/dnsfence.sock", false),
            "unix /run/dnsfence.sock"
        );
        assert_eq!(
            uri("unix:/run/dnsfence.sock", false),
            "unix /run/dnsfence.sock"
        );

        let err = |a: &str, tls| match target(a, tls) {
            Err(e) => e.to_string(),
            Ok(_) => panic!("{a} accepted"),
        };
        assert!(err("https://store:7000", false).contains("needs --tls-ca"));
        assert!(err("http://store:7000", true).contains("plaintext but TLS flags are set"));
        assert!(err("unix:///x.sock", true).contains("do not apply to unix sockets"));
        assert!(err("ftp://store:21", false).contains("unsupported scheme"));
        assert!(err("store", false).contains("no port"));
        assert!(err("unix://", false).contains("no socket path"));
    }

    #[test]
    fn endpoint_applies_settings() {
        let endpoint = endpoint(
            "127.0.0.1:7000",
            &ClientTls::default(),
            Duration::from_secs(3),
        )
        .unwrap();
        assert_eq!(endpoint.get_connect_timeout(), Some(Duration::from_secs(3)));
        assert!(endpoint.get_tcp_nodelay());
        assert_eq!(endpoint.uri().to_string(), "http://127.0.0.1:7000/");
    }

    #[tokio::test]
    async fn bind_replaces_a_stale_socket_but_not_a_live_one() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("s.sock");
        let address = format!("unix://{}", path.display());
        let live = Listener::bind(&address).await.unwrap();
        assert_eq!(live.to_string(), address);
        let err = Listener::bind(&address).await.unwrap_err();
        assert!(
            err.to_string().contains("another process is listening"),
            "{err}"
        );
        drop(live);
        // The file is still there, but nobody accepts on it any more.
        assert!(path.exists());
        Listener::bind(&address).await.unwrap();
    }

    #[tokio::test]
    async fn serve_needs_a_listener() {
        let router = Server::builder().add_routes(Routes::default());
        let err = serve(router, Vec::new(), async {}).await.unwrap_err();
        assert!(err.to_string().contains("no listener"));
    }
}
