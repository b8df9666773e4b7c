//! Relayed queries: the first upstream attempt of a query whose answer its caller reads on the
//! wire, made without a task. The query waits in its socket's pending map with a continuation;
//! the socket's receive task calls it with the answer's bytes, or the sweep does once the
//! query timed out. Whenever this one attempt brings no usable answer (timeout, SERVFAIL,
//! truncation, a network error, no free query ID), the continuation gets `None` and the
//! caller goes on with `Resolver::forward_wire_after_relay`, which makes the remaining
//! attempts (and TCP): `--upstream-attempts` counts the relayed one.
//!
//! Identical relayed queries (the same lower-cased name and type) in flight at once share one
//! upstream exchange: the later ones join the first one's continuations, on the socket the
//! question's hash picks, and all of them get its answer (or its `None`; each then makes its
//! remaining attempts on its own).
//!
//! Why: under a cache-busting load a forwarded miss is the gateway's most frequent query, and
//! a task, a channel and a timer per query, with their wake-ups, cost as much as filtering and
//! re-sending the answer (profiles in `loadtest/results/`).

use std::hash::BuildHasher;
use std::sync::Arc;
use std::time::{Duration, Instant};

use tracing::debug;

use crate::udp_batch::{self, Datagram, Fallback, Unsent};

use super::udp_conn::{Pending, UdpConn, Waiter};
use super::upstream::{Question, Server, Upstreams, encode_query};

/// A relayed query's continuation: the upstream's answer (matching the question, neither
/// truncated nor SERVFAIL), or `None` when the query should take its regular path; and when
/// that was known (one clock read for the latency metric and the caller).
pub type Continuation = Box<dyn FnOnce(Option<&[u8]>, Instant) + Send>;

/// Hashes questions for [`Relay::key`]. Fixed seed: the hash only spreads questions over a
/// server's sockets and finds them among the relays in flight, where it is checked.
static QUESTION_HASHER: foldhash::fast::FixedState = foldhash::fast::FixedState::with_seed(0x5eed);

/// Shortest and longest interval between two sweeps for timed-out relays.
const SWEEP_MIN: Duration = Duration::from_millis(5);
const SWEEP_MAX: Duration = Duration::from_millis(100);

pub(super) struct Relay {
    pub(super) question: Question,
    /// The question's hash: which socket asks it, and its key among the relays in flight.
    pub(super) key: u64,
    pub(super) deadline: Instant,
    started: Instant,
    epoch: Instant,
    server: Arc<Server>,
    then: Continuation,
    /// Identical queries that arrived while this one was in flight.
    joined: Vec<Continuation>,
}

/// Why a relayed attempt brought no answer, as far as the server's health is concerned.
pub(super) enum Failure {
    Timeout,
    Network,
}

fn micros_since(epoch: Instant, now: Instant) -> u64 {
    u64::try_from(now.saturating_duration_since(epoch).as_micros()).unwrap_or(u64::MAX)
}

impl Relay {
    /// The receive task matched `bytes` (ID and question) to this query.
    pub(super) fn answered(self, bytes: &[u8]) {
        let m = &self.server.metrics;
        let now = Instant::now();
        m.latency
            .observe(now.saturating_duration_since(self.started).as_secs_f64());
        if bytes.get(2).is_some_and(|f| f & 0x02 != 0) {
            m.truncated.inc();
            return self.call(None, now);
        }
        // The server is alive: SERVFAIL is about the name (the regular path asks the others).
        if bytes.get(3).is_some_and(|f| f & 0x0f == 2) {
            m.servfail.inc();
            return self.call(None, now);
        }
        m.ok.inc();
        self.server.health.success();
        self.call(Some(bytes), now);
    }

    /// Hands the outcome to the query and to those that joined it.
    fn call(self, answer: Option<&[u8]>, now: Instant) {
        (self.then)(answer, now);
        for then in self.joined {
            then(answer, now);
        }
    }

    pub(super) fn failed(self, failure: Failure) {
        let m = &self.server.metrics;
        match failure {
            Failure::Timeout => m.timeout.inc(),
            Failure::Network => m.error.inc(),
        };
        let now = Instant::now();
        self.server.health.failure(micros_since(self.epoch, now));
        self.call(None, now);
    }
}

impl Upstreams {
    /// Sends `question` to the first server that is up (the first one if none is) and leaves
    /// `then` waiting for the answer; see the module documentation. `then` may run before this
    /// returns (the query could not be sent).
    pub(super) fn relay(&self, question: Question, then: Continuation) {
        let started = Instant::now();
        let now = micros_since(self.epoch, started);
        let Some(server) = self
            .servers
            .iter()
            .find(|s| s.health.is_up(now))
            .or_else(|| self.servers.first())
        else {
            return then(None, started);
        };
        let key = QUESTION_HASHER.hash_one((question.name(), question.qtype()));
        // Identical questions go to the same socket, where the one in flight is found.
        let conn = &server.conns[(key % server.conns.len() as u64) as usize];
        let token = conn.next_token();
        let (id, bytes) = {
            let mut pending = conn.pending();
            if let Some(relay) = pending.relay_of(key, &question) {
                relay.joined.push(then);
                server.metrics.joined.inc();
                return;
            }
            let Some(id) = pending.free_id() else {
                drop(pending);
                return then(None, started);
            };
            let bytes = encode_query(id, &question);
            let relay = Relay {
                question,
                key,
                deadline: started + self.timeout,
                started,
                epoch: self.epoch,
                server: Arc::clone(server),
                then,
                joined: Vec::new(),
            };
            pending.insert(
                id,
                Pending {
                    token,
                    waiter: Waiter::Relay(relay),
                },
            );
            (id, bytes)
        };
        // Sent with the rest of the receive batch that forwarded it.
        udp_batch::send(Datagram {
            socket: Arc::clone(&conn.socket),
            to: None,
            bytes,
            fallback: Fallback::Query {
                owner: Arc::clone(conn) as Arc<dyn Unsent>,
                id,
                token,
            },
        });
    }
}

impl Unsent for UdpConn {
    /// A relayed query that could not be sent: fails it (unless an answer or the sweep came
    /// first, which they cannot for an unsent query, or the ID went to another query since).
    fn not_sent(&self, id: u16, token: u64, error: &std::io::Error) {
        if let Some(Pending {
            waiter: Waiter::Relay(relay),
            ..
        }) = self.take(id, token)
        {
            debug!(server = %relay.server.addr, %error, "sending a relayed query");
            relay.failed(Failure::Network);
        }
    }
}

/// Fails the relayed queries whose deadline passed, every quarter of the timeout (within
/// [`SWEEP_MIN`]..[`SWEEP_MAX`]): a relay times out between one and a little more than one
/// `timeout` after it was sent.
pub(super) async fn sweep_loop(servers: Vec<Arc<Server>>, timeout: Duration) {
    let mut tick = tokio::time::interval((timeout / 4).clamp(SWEEP_MIN, SWEEP_MAX));
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let now = Instant::now();
        for conn in servers.iter().flat_map(|s| s.conns.iter()) {
            let expired = conn.pending().expired_relays(now);
            for relay in expired {
                relay.failed(Failure::Timeout);
            }
        }
    }
}
