//! Datagrams received and sent in batches: a receive loop reads up to [`RECEIVE_BATCH`]
//! waiting datagrams ([`receive_batch`]), and everything they produced (the answers of the
//! cache hits and denials among the queries read, the queries forwarded upstream, the answers
//! that came back from upstream) leaves with one `sendmmsg` per socket.
//!
//! Why: a forwarded miss is four datagrams (query in, query up, answer back, answer out), and
//! sent one `sendto` each they cost four system calls per query. Batched, the sends cost a
//! fraction of one (about 9 datagrams per `sendmmsg` on the saturating `uniq` benchmark), and
//! the clients and the upstream receive answers and queries in bursts, which wakes them less
//! often (`loadtest/README.md` has the figures).
//!
//! How: [`receive_batch`] opens an [`Outbox`] on its thread, reads what is waiting, and flushes
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

/// Most datagrams a receive loop reads before it lets the other tasks run.
pub const RECEIVE_BATCH: usize = 32;

/// How a receive batch ended.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Batch {
    /// Nothing more to read.
    Drained,
    /// [`RECEIVE_BATCH`] datagrams read: more may be waiting.
    Full,
    /// A receive error the loop should not go on reading after.
    Failed,
}

impl Batch {
    /// What the loop does before it waits for the next datagram: nothing after a drained
    /// socket, the other tasks first after a full batch, a pause after an error.
    pub async fn pause(self) {
        match self {
            Batch::Drained => {}
            Batch::Full => tokio::task::yield_now().await,
            Batch::Failed => tokio::time::sleep(std::time::Duration::from_millis(10)).await,
        }
    }
}

/// Handles `first` (the receive the loop awaited) and what else is waiting (`try_receive`, until
/// it would block), up to [`RECEIVE_BATCH`] datagrams, with an [`Outbox`] open: what `handle`
/// sends leaves together at the end. `on_error` says whether to go on reading after an error.
pub fn receive_batch<From>(
    buf: &mut [u8],
    first: io::Result<(usize, From)>,
    mut try_receive: impl FnMut(&mut [u8]) -> io::Result<(usize, From)>,
    mut handle: impl FnMut(&[u8], From),
    mut on_error: impl FnMut(io::Error) -> bool,
) -> Batch {
    let _outbox = Outbox::open();
    let mut received = first;
    for read in 1..=RECEIVE_BATCH {
        match received {
            Ok((len, from)) => handle(&buf[..len], from),
            Err(e) if e.kind() == io::ErrorKind::WouldBlock => return Batch::Drained,
            Err(e) => {
                if !on_error(e) {
                    return Batch::Failed;
                }
            }
        }
        if read == RECEIVE_BATCH {
            break;
        }
        received = try_receive(buf);
    }
    Batch::Full
}

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
    // Datagrams of one socket keep their order; sockets are few (one listener, a few
    // upstream sockets), so a stable sort by socket groups them cheaply.
    queued.sort_by_key(|d| d.socket.as_raw_fd());
    let mut rest = queued.into_iter().peekable();
    let mut run: Vec<Datagram> = Vec::new();
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

    /// How a batch that starts with one datagram ends, and how many it handled.
    fn batch_of(try_receive: impl FnMut(&mut [u8]) -> io::Result<(usize, ())>) -> (Batch, usize) {
        let mut handled = 0;
        let end = receive_batch(
            &mut [0u8; 8],
            Ok((1, ())),
            try_receive,
            |_, ()| handled += 1,
            |_| true,
        );
        (end, handled)
    }

    #[test]
    fn a_receive_batch_ends_full_drained_or_failed() {
        assert_eq!(batch_of(|_| Ok((1, ()))), (Batch::Full, RECEIVE_BATCH));

        let mut waiting = 2;
        let two_more = |_: &mut [u8]| {
            if waiting == 0 {
                return Err(io::ErrorKind::WouldBlock.into());
            }
            waiting -= 1;
            Ok((1, ()))
        };
        assert_eq!(batch_of(two_more), (Batch::Drained, 3));

        // an error the loop goes on after is skipped; one it does not go on after ends it
        let mut errors = 0;
        let refused = |_: &mut [u8]| Err(io::ErrorKind::ConnectionRefused.into());
        let end = receive_batch(
            &mut [0u8; 8],
            Ok((1, ())),
            refused,
            |_, ()| {},
            |_| {
                errors += 1;
                errors < 3
            },
        );
        assert_eq!((end, errors), (Batch::Failed, 3));
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
