//! The server: hickory's `Server` over a `Catalog` of in-memory zones, with a query counter.

use std::{
    collections::HashSet,
    io,
    net::SocketAddr,
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::Duration,
};

use hickory_server::{
    Server,
    net::runtime::Time,
    server::{Request, RequestHandler, ResponseHandler, ResponseInfo},
    zone_handler::Catalog,
};
use tokio::net::{TcpListener, UdpSocket};

use crate::{Error, Zone};

/// How long an idle TCP connection is kept open.
const TCP_IDLE_TIMEOUT: Duration = Duration::from_secs(10);
/// Responses buffered per TCP connection.
const TCP_RESPONSE_BUFFER: usize = 64;
/// Tries to find a port free for both UDP and TCP when the listen port is 0.
const BIND_ATTEMPTS: usize = 16;

/// The server entry point (see [`Authority::start`]).
#[derive(Debug)]
pub struct Authority;

impl Authority {
    /// Serves `zones` on UDP and TCP at `listen` until the returned handle is shut down or
    /// dropped. With port 0, UDP gets a port from the OS and TCP binds the same port (retrying
    /// with a new port if TCP's is taken), so [`RunningAuthority::addr`] serves both.
    ///
    /// Must be called within a tokio runtime.
    pub async fn start(zones: Vec<Zone>, listen: SocketAddr) -> Result<RunningAuthority, Error> {
        let mut catalog = Catalog::new();
        let mut origins = HashSet::new();
        for zone in zones {
            let (origin, handler) = zone.into_handler()?;
            if !origins.insert(origin.clone()) {
                return Err(Error::DuplicateZone(origin.to_string()));
            }
            catalog.upsert(origin, vec![Arc::new(handler)]);
        }
        let (udp, tcp) = bind_pair(listen).await?;
        let addr = udp.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        let queries = Arc::new(AtomicU64::new(0));
        let mut server = Server::new(CountingHandler {
            catalog,
            queries: queries.clone(),
        });
        server.register_socket(udp);
        server.register_listener(tcp, TCP_IDLE_TIMEOUT, TCP_RESPONSE_BUFFER);
        tracing::debug!(%addr, "test authority listening on udp and tcp");
        Ok(RunningAuthority {
            addr,
            queries,
            server,
        })
    }
}

/// A running server. Dropping it stops the server (its tasks are aborted); prefer
/// [`RunningAuthority::shutdown`] for a graceful stop.
pub struct RunningAuthority {
    addr: SocketAddr,
    queries: Arc<AtomicU64>,
    server: Server<CountingHandler>,
}

impl std::fmt::Debug for RunningAuthority {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("RunningAuthority")
            .field("addr", &self.addr)
            .field("queries", &self.queries())
            .finish_non_exhaustive()
    }
}

impl RunningAuthority {
    /// The address served on both UDP and TCP.
    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// How many DNS messages (queries) the server has received so far, UDP and TCP.
    pub fn queries(&self) -> u64 {
        self.queries.load(Ordering::Relaxed)
    }

    /// Resets the query counter to zero.
    pub fn reset_queries(&self) {
        self.queries.store(0, Ordering::Relaxed);
    }

    /// Stops accepting queries and waits for the server's tasks to finish.
    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            tracing::debug!(%error, "test authority stopped with an error");
        }
    }

    /// Serves until the server stops by itself (e.g. a socket failed); returns why.
    pub async fn wait(mut self) -> Result<(), Error> {
        self.server
            .block_until_done()
            .await
            .map_err(|e| Error::Server(e.to_string()))
    }

    /// Serves until `signal` resolves, then shuts down gracefully.
    pub async fn run_until(mut self, signal: impl Future<Output = ()>) -> Result<(), Error> {
        tokio::select! {
            () = signal => {
                self.server
                    .shutdown_gracefully()
                    .await
                    .map_err(|e| Error::Server(e.to_string()))
            }
            result = self.server.block_until_done() => {
                result.map_err(|e| Error::Server(e.to_string()))
            }
        }
    }
}

/// Binds UDP, then TCP on the port UDP got.
async fn bind_pair(listen: SocketAddr) -> Result<(UdpSocket, TcpListener), Error> {
    let attempts = if listen.port() == 0 { BIND_ATTEMPTS } else { 1 };
    let mut last_error = io::Error::new(io::ErrorKind::AddrInUse, "no free port");
    for _ in 0..attempts {
        let udp = UdpSocket::bind(listen)
            .await
            .map_err(|source| Error::Bind {
                addr: listen,
                source,
            })?;
        let udp_addr = udp.local_addr().map_err(|source| Error::Bind {
            addr: listen,
            source,
        })?;
        match TcpListener::bind(udp_addr).await {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) if e.kind() == io::ErrorKind::AddrInUse && listen.port() == 0 => {
                last_error = e;
            }
            Err(source) => {
                return Err(Error::Bind {
                    addr: udp_addr,
                    source,
                });
            }
        }
    }
    Err(Error::Bind {
        addr: listen,
        source: last_error,
    })
}

/// Counts every request, then lets the catalog answer it.
struct CountingHandler {
    catalog: Catalog,
    queries: Arc<AtomicU64>,
}

#[async_trait::async_trait]
impl RequestHandler for CountingHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        response_handle: R,
    ) -> ResponseInfo {
        self.queries.fetch_add(1, Ordering::Relaxed);
        self.catalog
            .handle_request::<R, T>(request, response_handle)
            .await
    }
}
