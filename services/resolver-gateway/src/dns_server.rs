//! The DNS listeners.
//!
//! TCP is served by hickory-server's `Server` (framing, idle timeouts, per-connection
//! ordering) with [`TcpHandler`] as its `RequestHandler`. UDP has a loop of its own around
//! hickory-proto: hickory-server's UDP path re-encodes every answer through its
//! `MessageResponse` and hands each one through a channel to a single sender task, which
//! costs more per query than the whole cache-hit path. Here each worker receives and answers
//! cache hits itself, forwards misses itself (their answers go out from the upstream socket's
//! receive task, see `handler::relay`), and spawns a task only for a query that must wait.
//! It reads in batches and sends what a batch produced with one `sendmmsg` per socket
//! (`crate::udp_batch`).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use futures::FutureExt;
use hickory_proto::op::{Header, HeaderCounts, Message, Metadata, ResponseCode};
use hickory_server::Server;
use hickory_server::net::runtime::Time;
use hickory_server::server::{Request, RequestHandler, ResponseHandler, ResponseInfo};
use hickory_server::zone_handler::MessageResponseBuilder;
use tokio::net::{TcpListener, UdpSocket};
use tokio::sync::watch;
use tracing::{debug, warn};

use crate::handler::{Gateway, Now};
use crate::metrics::Transport;
use crate::udp_batch::{self, Datagram, Fallback, receive_batch};

/// Largest datagram read; bigger ones are truncated by the kernel and fail to parse.
const UDP_RECV_BUFFER: usize = 4096;

/// Receives on `socket` with `workers` loops until `stop` turns true.
pub async fn serve_udp(
    socket: Arc<UdpSocket>,
    gateway: Arc<Gateway>,
    workers: usize,
    stop: watch::Receiver<bool>,
) {
    let mut loops = Vec::with_capacity(workers);
    for _ in 0..workers {
        let socket = Arc::clone(&socket);
        let gateway = Arc::clone(&gateway);
        let mut stop = stop.clone();
        loops.push(tokio::spawn(async move {
            let mut buf = vec![0u8; UDP_RECV_BUFFER];
            // One stop future for the loop's life (a new one per wait registers and
            // deregisters a waiter each time), polled only when no datagram is waiting; under
            // a load that never pauses, each batch looks at the flag instead.
            let stop_now = stop.clone();
            let stopped = stop.wait_for(|s| *s);
            tokio::pin!(stopped);
            loop {
                let first = tokio::select! {
                    biased;
                    received = socket.recv_from(&mut buf) => received,
                    _ = &mut stopped => return,
                };
                if *stop_now.borrow() {
                    return;
                }
                let batch = receive_batch(
                    &mut buf,
                    first,
                    |buf| socket.try_recv_from(buf),
                    |packet, src| handle_datagram(&gateway, &socket, packet, src),
                    |error| {
                        // ICMP port unreachable from an earlier answer surfaces here on Linux
                        // as ECONNREFUSED; it concerns that client only.
                        debug!(%error, "udp receive");
                        true
                    },
                );
                batch.pause().await;
            }
        }));
    }
    for l in loops {
        let _ = l.await;
    }
}

/// Where a UDP query's answer goes.
#[derive(Debug)]
pub struct UdpClient {
    socket: Arc<UdpSocket>,
    addr: SocketAddr,
}

impl UdpClient {
    /// Sends `answer` with the receive batch under way on this thread, or now; a task waits
    /// for room in a full send buffer.
    pub fn send(self, answer: Vec<u8>) {
        udp_batch::send(Datagram {
            socket: self.socket,
            to: Some(self.addr),
            bytes: answer,
            fallback: Fallback::Answer,
        });
    }
}

/// One query: answered here from the caches, forwarded from here on a miss, or handed to a
/// task when it must wait (grants to ack for a cached answer, a traced query).
fn handle_datagram(
    gateway: &Arc<Gateway>,
    socket: &Arc<UdpSocket>,
    packet: &[u8],
    src: SocketAddr,
) {
    let client = UdpClient {
        socket: Arc::clone(socket),
        addr: src,
    };
    let now = match gateway.answer_now(packet, src, Transport::Udp) {
        Now::Answer(answer) => return client.send(answer),
        // Misses are forwarded from here and answered from the upstream socket's receive
        // task: no task of their own either.
        Now::Miss(miss) => return gateway.relay_miss(packet, src, client, miss),
        later => later,
    };
    let packet = packet.to_vec();
    let gateway_for_query = Arc::clone(gateway);
    let mut query = Box::pin(async move {
        if let Some(answer) = gateway_for_query
            .handle_later(&packet, src, Transport::Udp, now)
            .await
        {
            client.send(answer);
        }
    });
    // Answers that need no waiting finish here too.
    if (&mut query).now_or_never().is_none() {
        tokio::spawn(query);
    }
}

/// hickory-server's view of the gateway, for TCP.
#[derive(Debug, Clone)]
pub struct TcpHandler {
    gateway: Arc<Gateway>,
}

impl TcpHandler {
    pub fn new(gateway: Arc<Gateway>) -> TcpHandler {
        TcpHandler { gateway }
    }
}

#[async_trait::async_trait]
impl RequestHandler for TcpHandler {
    async fn handle_request<R: ResponseHandler, T: Time>(
        &self,
        request: &Request,
        mut response_handle: R,
    ) -> ResponseInfo {
        let failed = || {
            let mut metadata = Metadata::response_from_request(&request.metadata);
            metadata.response_code = ResponseCode::ServFail;
            ResponseInfo::from(Header {
                metadata,
                counts: HeaderCounts::default(),
            })
        };
        let Some(bytes) = self
            .gateway
            .handle(request.as_slice(), request.src(), Transport::Tcp)
            .await
        else {
            return failed();
        };
        let answer = match Message::from_vec(&bytes) {
            Ok(m) => m,
            Err(error) => {
                warn!(%error, "could not re-read our own answer");
                return failed();
            }
        };
        let mut builder = MessageResponseBuilder::from_message_request(request);
        if let Some(edns) = &answer.edns {
            builder.edns(edns);
        }
        let response = builder.build(
            answer.metadata,
            answer.answers.iter(),
            answer.authorities.iter(),
            std::iter::empty(),
            answer.additionals.iter(),
        );
        match response_handle.send_response(response).await {
            Ok(info) => info,
            Err(error) => {
                debug!(%error, "tcp send");
                failed()
            }
        }
    }
}

/// A running TCP server: shut it down with [`TcpServer::shutdown`].
pub struct TcpServer {
    server: Server<TcpHandler>,
}

impl std::fmt::Debug for TcpServer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcpServer").finish_non_exhaustive()
    }
}

impl TcpServer {
    pub fn start(
        listener: TcpListener,
        gateway: Arc<Gateway>,
        idle_timeout: Duration,
    ) -> TcpServer {
        let mut server = Server::new(TcpHandler::new(gateway));
        // 64 answers queued per connection before the reader waits for the writer.
        server.register_listener(listener, idle_timeout, 64);
        TcpServer { server }
    }

    pub async fn shutdown(mut self) {
        if let Err(error) = self.server.shutdown_gracefully().await {
            warn!(%error, "tcp server shutdown");
        }
    }
}

/// Binds UDP and TCP on one address; with port 0 both get the same port. `reuse_port`
/// lets other processes bind the same address too (SO_REUSEPORT).
pub async fn bind_dns(
    addr: SocketAddr,
    reuse_port: bool,
) -> std::io::Result<(UdpSocket, TcpListener)> {
    if addr.port() != 0 {
        let udp = bind_udp(addr, reuse_port)?;
        let tcp = bind_tcp(addr, reuse_port)?;
        return Ok((udp, tcp));
    }
    let mut last_error = None;
    for _ in 0..16 {
        let udp = bind_udp(addr, reuse_port)?;
        let port = udp.local_addr()?.port();
        match bind_tcp(SocketAddr::new(addr.ip(), port), reuse_port) {
            Ok(tcp) => return Ok((udp, tcp)),
            Err(e) => last_error = Some(e),
        }
    }
    Err(last_error.unwrap_or_else(|| std::io::Error::other("no free port for UDP and TCP")))
}

fn socket_for(
    addr: SocketAddr,
    kind: socket2::Type,
    reuse_port: bool,
) -> std::io::Result<socket2::Socket> {
    let socket = socket2::Socket::new(socket2::Domain::for_address(addr), kind, None)?;
    if kind == socket2::Type::STREAM {
        socket.set_reuse_address(true)?;
    }
    socket.set_reuse_port(reuse_port)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    Ok(socket)
}

fn bind_udp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<UdpSocket> {
    let socket = socket_for(addr, socket2::Type::DGRAM, reuse_port)?;
    crate::resolve::enlarge_receive_buffer(&socket);
    UdpSocket::from_std(socket.into())
}

fn bind_tcp(addr: SocketAddr, reuse_port: bool) -> std::io::Result<TcpListener> {
    let socket = socket_for(addr, socket2::Type::STREAM, reuse_port)?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn reuse_port_lets_two_gateways_share_one_address() -> std::io::Result<()> {
        let (udp, _tcp) =
            bind_dns("127.0.0.1:0".parse().map_err(std::io::Error::other)?, true).await?;
        let shared = udp.local_addr()?;
        let (second_udp, second_tcp) = bind_dns(shared, true).await?;
        assert_eq!(second_udp.local_addr()?, shared);
        assert_eq!(second_tcp.local_addr()?, shared);
        // without the option the address stays exclusive, as before
        assert!(bind_dns(shared, false).await.is_err());
        Ok(())
    }
}
