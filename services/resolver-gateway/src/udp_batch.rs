//! Datagrams sent in batches: one `sendmmsg` per socket for everything one receive batch
//! produced (the answers of the cache hits and denials among the queries read, the queries
//! forwarded upstream, the answers that came back from upstream).
//!
//! Why: a forwarded miss is four datagrams (query in, query up, answer back, answer out), and
//! sent one `sendto` each they cost four system calls per query. Batched, the sends cost a
//! fraction of one (about 9 datagrams per `sendmmsg` on the saturating `uniq` benchmark), and
//! the clients and the upstream receive answers and queries in bursts, which wakes them less
//! often (`loadtest/README.md` has the figures).
//!
//! How: a receive loop opens an [`Outbox`] on its thread, reads what is waiting, and flushes
//! it before it waits again; whoever sends meanwhile (the handler, the relay, the upstream
//! receive task calling a relayed query's continuation) goes through [`send`], which queues
//! while an outbox is open on the thread and sends at once otherwise. Nothing waits across an
//! `.await`: a batch is opened and flushed within one poll, so it never outlives the sockets
//! it holds and never mixes with another task's.

use std::cell::RefCell;
use std::io::{self, IoSlice};
use std::net::SocketAddr;
use std::os::fd::AsRawFd;
use std::sync::Arc;

use nix::sys::socket::{MsgFlags, MultiHeaders, SockaddrStorage, sendmmsg};
use tokio::net::UdpSocket;
use tracing::debug;

/// Most datagrams one `sendmmsg` carries (the kernel's limit is `UIO_MAXIOV`, 1024).
const MAX_BATCH: usize = 64;

/// Who hears of an upstream query that could not be sent.
pub trait Unsent: Send + Sync {
    /// The query `id` (`token`: which use of that ID) was not sent: `error`.
    fn not_sent(&self, id: u16, token: u64, error: &io::Error);
}

/// What happens to a datagram the kernel refused. A full send buffer is waited out by a task
/// first; this is for the other errors (and for that task's).
pub enum Fallback {
    /// An answer to a client: dropped with a log line (the client asks again).
    Answer,
    /// An upstream query: its owner is told.
    Query {
        owner: Arc<dyn Unsent>,
        id: u16,
        token: u64,
    },
}

impl std::fmt::Debug for Fallback {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Fallback::Answer => f.write_str("Answer"),
            Fallback::Query { id, token, .. } => f
                .debug_struct("Query")
                .field("id", id)
                .field("token", token)
                .finish(),
        }
    }
}

/// One datagram to send.
#[derive(Debug)]
pub struct Datagram {
    pub socket: Arc<UdpSocket>,
    /// `None` on a connected socket.
    pub to: Option<SocketAddr>,
    pub bytes: Vec<u8>,
    pub fallback: Fallback,
}

thread_local! {
    static OUTBOX: RefCell<Option<Vec<Datagram>>> = const { RefCell::new(None) };
}

/// Sends `datagram` now, or queues it in the outbox open on this thread.
pub fn send(datagram: Datagram) {
    let queued = OUTBOX.with(|outbox| match outbox.borrow_mut().as_mut() {
        Some(queue) => {
            queue.push(datagram);
            None
        }
        None => Some(datagram),
    });
    if let Some(datagram) = queued {
        send_one(datagram);
    }
}

/// The outbox of one receive batch; flushed when dropped.
#[derive(Debug)]
pub struct Outbox(());

impl Outbox {
    /// Opens the outbox of this thread (a nested one is the same outbox).
    pub fn open() -> Option<Outbox> {
        OUTBOX.with(|outbox| {
            let mut outbox = outbox.borrow_mut();
            if outbox.is_some() {
                return None;
            }
            *outbox = Some(Vec::new());
            Some(Outbox(()))
        })
    }
}

impl Drop for Outbox {
    fn drop(&mut self) {
        let queued = OUTBOX.with(|outbox| outbox.borrow_mut().take());
        if let Some(queued) = queued {
            flush(queued);
        }
    }
}

fn flush(mut queued: Vec<Datagram>) {
    if queued.len() == 1 {
        if let Some(datagram) = queued.pop() {
            send_one(datagram);
        }
        return;
    }
    // Datagrams of one socket keep their order; sockets are few (one listener, a few
    // upstream sockets), so a stable sort by socket groups them cheaply.
    queued.sort_by_key(|d| d.socket.as_raw_fd());
    let mut rest = queued.into_iter().peekable();
    let mut run: Vec<Datagram> = Vec::with_capacity(MAX_BATCH);
    while let Some(first) = rest.next() {
        let fd = first.socket.as_raw_fd();
        run.push(first);
        while run.len() < MAX_BATCH
            && let Some(next) = rest.next_if(|d| d.socket.as_raw_fd() == fd)
        {
            run.push(next);
        }
        send_run(&mut run);
        run.clear();
    }
}

/// Sends datagrams of one socket with as few `sendmmsg` calls as the kernel allows; a
/// datagram it refuses takes the one-by-one path (and its fallback), alone.
fn send_run(run: &mut Vec<Datagram>) {
    let mut start = 0;
    while start < run.len() {
        let batch = &run[start..];
        if batch.len() == 1 {
            break;
        }
        let fd = batch[0].socket.as_raw_fd();
        let slices: Vec<[IoSlice<'_>; 1]> =
            batch.iter().map(|d| [IoSlice::new(&d.bytes)]).collect();
        let addrs: Vec<Option<SockaddrStorage>> = batch
            .iter()
            .map(|d| d.to.map(SockaddrStorage::from))
            .collect();
        let mut headers = MultiHeaders::<SockaddrStorage>::preallocate(batch.len(), None);
        let sent = match sendmmsg(fd, &mut headers, &slices, &addrs, [], MsgFlags::empty()) {
            Ok(results) => results.count(),
            Err(_) => 0,
        };
        if sent == 0 {
            // The first one fails: its own path says why (and waits for room if it must);
            // the ones after it go on in batches.
            send_one(run.remove(start));
            continue;
        }
        start += sent;
    }
    for datagram in run.drain(start..) {
        send_one(datagram);
    }
}

fn send_one(datagram: Datagram) {
    let Datagram {
        socket,
        to,
        bytes,
        fallback,
    } = datagram;
    let sent = match to {
        Some(to) => socket.try_send_to(&bytes, to),
        None => socket.try_send(&bytes),
    };
    match sent {
        Ok(_) => {}
        Err(error) if error.kind() == io::ErrorKind::WouldBlock => {
            tokio::spawn(async move {
                let sent = match to {
                    Some(to) => socket.send_to(&bytes, to).await,
                    None => socket.send(&bytes).await,
                };
                if let Err(error) = sent {
                    failed(fallback, to, &error);
                }
            });
        }
        Err(error) => failed(fallback, to, &error),
    }
}

fn failed(fallback: Fallback, to: Option<SocketAddr>, error: &io::Error) {
    match fallback {
        Fallback::Answer => debug!(?to, %error, "udp send"),
        Fallback::Query { owner, id, token } => owner.not_sent(id, token, error),
    }
}

#[cfg(test)]
#[allow(clippy::unwrap_used, clippy::expect_used)]
mod tests {
    use std::sync::Mutex;
    use std::time::Duration;

    use super::*;

    async fn bound() -> Arc<UdpSocket> {
        Arc::new(UdpSocket::bind("127.0.0.1:0").await.unwrap())
    }

    fn answer(from: &Arc<UdpSocket>, to: &UdpSocket, bytes: &[u8]) -> Datagram {
        Datagram {
            socket: Arc::clone(from),
            to: Some(to.local_addr().unwrap()),
            bytes: bytes.to_vec(),
            fallback: Fallback::Answer,
        }
    }

    /// Everything `socket` received within a short wait, in order.
    async fn received(socket: &UdpSocket) -> Vec<Vec<u8>> {
        let mut got = Vec::new();
        let mut buf = [0u8; 512];
        while let Ok(Ok(n)) =
            tokio::time::timeout(Duration::from_millis(200), socket.recv(&mut buf)).await
        {
            got.push(buf[..n].to_vec());
        }
        got
    }

    fn texts(got: &[Vec<u8>]) -> Vec<String> {
        got.iter()
            .map(|b| String::from_utf8_lossy(b).into_owned())
            .collect()
    }

    #[derive(Default)]
    struct Recorder(Mutex<Vec<(u16, u64)>>);

    impl Unsent for Recorder {
        fn not_sent(&self, id: u16, token: u64, _error: &io::Error) {
            self.0.lock().unwrap().push((id, token));
        }
    }

    #[tokio::test]
    async fn datagrams_sent_while_an_outbox_is_open_leave_in_order_when_it_closes() {
        let (from, a, b) = (bound().await, bound().await, bound().await);
        let outbox = Outbox::open().expect("no outbox open yet");
        for text in ["a1", "a2", "a3"] {
            send(answer(&from, &a, text.as_bytes()));
        }
        // a second socket in the same batch, interleaved
        let upstream = bound().await;
        upstream.connect(b.local_addr().unwrap()).await.unwrap();
        for text in ["b1", "b2"] {
            send(Datagram {
                socket: Arc::clone(&upstream),
                to: None,
                bytes: text.as_bytes().to_vec(),
                fallback: Fallback::Answer,
            });
            send(answer(
                &from,
                &b,
                format!("{text}-from-listener").as_bytes(),
            ));
        }
        let mut buf = [0u8; 16];
        assert_eq!(
            a.try_recv(&mut buf).unwrap_err().kind(),
            io::ErrorKind::WouldBlock,
            "sent before the batch ended"
        );
        drop(outbox);
        assert_eq!(texts(&received(&a).await), ["a1", "a2", "a3"]);
        let at_b = texts(&received(&b).await);
        let from_upstream: Vec<_> = at_b.iter().filter(|t| !t.contains("listener")).collect();
        assert_eq!(from_upstream, ["b1", "b2"]);
        assert_eq!(at_b.len(), 4, "{at_b:?}");
    }

    #[tokio::test]
    async fn without_an_outbox_a_datagram_leaves_at_once() {
        let (from, to) = (bound().await, bound().await);
        send(answer(&from, &to, b"now"));
        let mut buf = [0u8; 16];
        let n = tokio::time::timeout(Duration::from_secs(1), to.recv(&mut buf))
            .await
            .expect("sent at once")
            .unwrap();
        assert_eq!(&buf[..n], b"now");
    }

    #[tokio::test]
    async fn an_outbox_opened_inside_another_is_the_same_one() {
        let (from, to) = (bound().await, bound().await);
        let outer = Outbox::open().expect("no outbox open yet");
        assert!(Outbox::open().is_none());
        send(answer(&from, &to, b"inner"));
        drop(outer);
        assert_eq!(texts(&received(&to).await), ["inner"]);
        assert!(Outbox::open().is_some(), "closed with the outer one");
    }

    #[tokio::test]
    async fn a_batch_longer_than_one_sendmmsg_arrives_whole_and_in_order() {
        let (from, to) = (bound().await, bound().await);
        let outbox = Outbox::open().expect("no outbox open yet");
        let sent: Vec<String> = (0..MAX_BATCH * 2 + 7).map(|i| format!("q{i}")).collect();
        for text in &sent {
            send(answer(&from, &to, text.as_bytes()));
        }
        drop(outbox);
        assert_eq!(texts(&received(&to).await), sent);
    }

    #[tokio::test]
    async fn a_datagram_the_kernel_refuses_is_handed_to_its_owner_and_the_rest_still_leave() {
        let (from, to) = (bound().await, bound().await);
        let owner = Arc::new(Recorder::default());
        let outbox = Outbox::open().expect("no outbox open yet");
        send(answer(&from, &to, b"before"));
        // limited broadcast without SO_BROADCAST: refused by the kernel
        send(Datagram {
            socket: Arc::clone(&from),
            to: Some("255.255.255.255:53".parse().unwrap()),
            bytes: b"refused".to_vec(),
            fallback: Fallback::Query {
                owner: Arc::clone(&owner) as Arc<dyn Unsent>,
                id: 7,
                token: 42,
            },
        });
        send(answer(&from, &to, b"after"));
        drop(outbox);
        assert_eq!(texts(&received(&to).await), ["before", "after"]);
        assert_eq!(*owner.0.lock().unwrap(), [(7, 42)]);
    }
}
