//! One connected UDP socket towards an upstream server and the queries in flight on it: the
//! table of pending queries (by ID, with a token telling successive users of an ID apart, and
//! the relayed ones also by question, so that an identical relayed query joins the one in
//! flight), the exchange of a task that awaits its answer, and the receive task that matches
//! every answer (ID and question) to its waiter.

use std::{
    collections::HashMap,
    io,
    sync::{
        Arc, Mutex, MutexGuard, PoisonError,
        atomic::{AtomicU64, Ordering},
    },
    time::{Duration, Instant},
};

use prometheus_client::metrics::counter::Counter;
use tokio::{net::UdpSocket, sync::oneshot};

use super::relay::Relay;
use super::upstream::{HEADER, Question, encode_query};
use crate::udp_batch::receive_batch;

/// Tries to find a query ID not in flight on a socket.
const ID_TRIES: usize = 32;
/// Receive buffer: the largest UDP payload.
const RECV_BUFFER: usize = 65_535;

/// One connected UDP socket and the queries in flight on it.
pub(super) struct UdpConn {
    pub(super) socket: Arc<UdpSocket>,
    pending: Mutex<PendingTable>,
    /// Distinguishes successive users of one query ID.
    next_token: AtomicU64,
    pub(super) mismatched: Counter,
}

type Seeded = foldhash::fast::RandomState;

/// The queries in flight on one socket.
#[derive(Default)]
pub(super) struct PendingTable {
    by_id: HashMap<u16, Pending, Seeded>,
    /// The ID of the relayed query in flight for a question, by [`Relay::key`]. An entry
    /// is a hint checked against `by_id` (hash collisions, reused IDs), never trusted alone.
    relays: HashMap<u64, u16, Seeded>,
}

pub(super) struct Pending {
    pub(super) token: u64,
    pub(super) waiter: Waiter,
}

/// Who gets the answer of a query in flight.
pub(super) enum Waiter {
    /// An exchange awaiting it (bounded by its own timeout, freed by its guard).
    Task {
        question: Arc<Question>,
        reply: oneshot::Sender<Reply>,
    },
    /// A relayed query ([`super::relay`]): called in the receive task, or by the sweep once
    /// it timed out.
    Relay(Relay),
}

impl Waiter {
    fn question(&self) -> &Question {
        match self {
            Waiter::Task { question, .. } => question,
            Waiter::Relay(relay) => &relay.question,
        }
    }
}

pub(super) enum Reply {
    /// The whole datagram of an answer to the question (not truncated).
    Answer(Vec<u8>),
    Truncated,
    Unreachable,
}

impl UdpConn {
    /// A socket connected to its server, with its receive task running.
    pub(super) fn start(
        socket: UdpSocket,
        mismatched: Counter,
    ) -> (Arc<UdpConn>, tokio::task::JoinHandle<()>) {
        let conn = Arc::new(UdpConn {
            socket: Arc::new(socket),
            pending: Mutex::new(PendingTable::default()),
            next_token: AtomicU64::new(0),
            mismatched,
        });
        let receiving = tokio::spawn(receive_loop(Arc::clone(&conn)));
        (conn, receiving)
    }
}

pub(super) enum ExchangeError {
    Timeout,
    Io(String),
}

impl PendingTable {
    /// A random query ID not in flight on this socket.
    pub(super) fn free_id(&self) -> Option<u16> {
        (0..ID_TRIES)
            .map(|_| rand::random::<u16>())
            .find(|id| !self.by_id.contains_key(id))
    }

    pub(super) fn insert(&mut self, id: u16, pending: Pending) {
        let key = match &pending.waiter {
            Waiter::Relay(relay) => Some(relay.key),
            Waiter::Task { .. } => None,
        };
        if let Some(replaced) = self.by_id.insert(id, pending) {
            self.unindex(id, &replaced);
        }
        if let Some(key) = key {
            self.relays.insert(key, id);
        }
    }

    pub(super) fn get(&self, id: u16) -> Option<&Pending> {
        self.by_id.get(&id)
    }

    pub(super) fn remove(&mut self, id: u16) -> Option<Pending> {
        let pending = self.by_id.remove(&id)?;
        self.unindex(id, &pending);
        Some(pending)
    }

    fn unindex(&mut self, id: u16, pending: &Pending) {
        if let Waiter::Relay(relay) = &pending.waiter
            && self.relays.get(&relay.key) == Some(&id)
        {
            self.relays.remove(&relay.key);
        }
    }

    /// The relayed query in flight for `question` (`key`: its hash), to join.
    pub(super) fn relay_of(&mut self, key: u64, question: &Question) -> Option<&mut Relay> {
        let id = *self.relays.get(&key)?;
        match &mut self.by_id.get_mut(&id)?.waiter {
            Waiter::Relay(relay) if relay.question == *question => Some(relay),
            _ => None,
        }
    }

    /// Removes and returns the relayed queries whose deadline passed.
    pub(super) fn expired_relays(&mut self, now: Instant) -> Vec<Relay> {
        let expired: Vec<(u16, Pending)> = self
            .by_id
            .extract_if(|_, p| matches!(&p.waiter, Waiter::Relay(r) if r.deadline <= now))
            .collect();
        expired
            .into_iter()
            .filter_map(|(id, pending)| {
                self.unindex(id, &pending);
                match pending.waiter {
                    Waiter::Relay(relay) => Some(relay),
                    Waiter::Task { .. } => None,
                }
            })
            .collect()
    }

    pub(super) fn drain(&mut self) -> Vec<Pending> {
        self.relays.clear();
        self.by_id.drain().map(|(_, p)| p).collect()
    }
}

impl UdpConn {
    pub(super) fn pending(&self) -> MutexGuard<'_, PendingTable> {
        self.pending.lock().unwrap_or_else(PoisonError::into_inner)
    }

    /// Removes the query in flight under `id` if it is still the one of `token` (not
    /// answered, timed out or replaced by a later query since).
    pub(super) fn take(&self, id: u16, token: u64) -> Option<Pending> {
        let mut pending = self.pending();
        match pending.get(id) {
            Some(p) if p.token == token => pending.remove(id),
            _ => None,
        }
    }

    pub(super) fn next_token(&self) -> u64 {
        self.next_token.fetch_add(1, Ordering::Relaxed)
    }

    /// Sends `question` with a fresh random ID and waits for the matching answer.
    pub(super) async fn exchange(
        &self,
        question: &Arc<Question>,
        timeout: Duration,
    ) -> Result<Reply, ExchangeError> {
        let (tx, rx) = oneshot::channel();
        let token = self.next_token();
        let id = {
            let mut pending = self.pending();
            let Some(id) = pending.free_id() else {
                return Err(ExchangeError::Io("no free query ID on the socket".into()));
            };
            pending.insert(
                id,
                Pending {
                    token,
                    waiter: Waiter::Task {
                        question: Arc::clone(question),
                        reply: tx,
                    },
                },
            );
            id
        };
        // From here on, leaving (answer, timeout, error or cancellation) frees the ID.
        let _guard = PendingGuard {
            conn: self,
            id,
            token,
        };
        let bytes = encode_query(id, question);
        self.socket
            .send(&bytes)
            .await
            .map_err(|e| ExchangeError::Io(format!("sending: {e}")))?;
        match tokio::time::timeout(timeout, rx).await {
            Ok(Ok(reply)) => Ok(reply),
            // The sender is only dropped with the receive task (resolver shutting down).
            Ok(Err(_)) => Err(ExchangeError::Io("receive task stopped".into())),
            Err(_) => Err(ExchangeError::Timeout),
        }
    }

    /// Hands one received datagram to the query it answers, or counts it as mismatched.
    /// Only the header and the question are read here; the answer goes on as bytes.
    fn dispatch(&self, bytes: &[u8]) {
        let id = match bytes {
            [hi, lo, flags, ..] if bytes.len() >= HEADER && flags & 0x80 != 0 => {
                Some(u16::from_be_bytes([*hi, *lo]))
            }
            _ => None,
        };
        let pending = id.and_then(|id| {
            let mut map = self.pending();
            match map.get(id) {
                Some(p) if p.waiter.question().is_asked_by(bytes) => map.remove(id),
                _ => None,
            }
        });
        let Some(pending) = pending else {
            tracing::debug!(
                ?id,
                "discarding an upstream answer that matches no query in flight"
            );
            self.mismatched.inc();
            return;
        };
        match pending.waiter {
            Waiter::Task { reply, .. } => {
                let answer = if bytes[2] & 0x02 != 0 {
                    Reply::Truncated
                } else {
                    Reply::Answer(bytes.to_vec())
                };
                let _ = reply.send(answer);
            }
            Waiter::Relay(relay) => relay.answered(bytes),
        }
    }

    /// An ICMP port unreachable fails every query in flight on the socket at once.
    fn fail_all(&self) {
        let drained = self.pending().drain();
        for p in drained {
            match p.waiter {
                Waiter::Task { reply, .. } => {
                    let _ = reply.send(Reply::Unreachable);
                }
                Waiter::Relay(relay) => relay.failed(super::relay::Failure::Network),
            }
        }
    }
}

/// Removes a query's pending slot when its exchange ends, unless the ID was reused since.
struct PendingGuard<'a> {
    conn: &'a UdpConn,
    id: u16,
    token: u64,
}

impl Drop for PendingGuard<'_> {
    fn drop(&mut self) {
        // The waiter is the exchange's own (a oneshot sender): nothing to tell.
        drop(self.conn.take(self.id, self.token));
    }
}

/// Reads answers in batches, the datagrams their continuations send going out together at the
/// end of each batch (see `crate::udp_batch`).
async fn receive_loop(conn: Arc<UdpConn>) {
    let mut buf = vec![0u8; RECV_BUFFER];
    loop {
        // Awaiting `recv` rather than `readable`: an ICMP port unreachable only raises an error
        // on the socket, which `readable` does not wake for, and the queries in flight would
        // wait out their timeout instead of failing over at once (tests/resolve.rs,
        // `failover_from_a_closed_port_does_not_wait_for_the_timeout`).
        let first = conn.socket.recv(&mut buf).await.map(|n| (n, ()));
        let batch = receive_batch(
            &mut buf,
            first,
            |buf| conn.socket.try_recv(buf).map(|n| (n, ())),
            |answer, ()| conn.dispatch(answer),
            |error| {
                if error.kind() == io::ErrorKind::ConnectionRefused {
                    conn.fail_all();
                    return true;
                }
                tracing::warn!(%error, "receiving from an upstream socket");
                false
            },
        );
        batch.pause().await;
    }
}
