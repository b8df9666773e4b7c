//! UDP misses without a task: the wire path, with its upstream exchange relayed (see the
//! resolver's `relay` module). A denial is answered in the receive loop; an allowed name is
//! forwarded there and answered from the upstream socket's receive task when its answer
//! arrives. Only what must wait gets a task: grants the enforcer has to ack first, the
//! remaining upstream attempts when the relayed one brought no answer, and any query the wire
//! path cannot answer (it then takes [`Gateway::handle_later`], the long way).

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use super::fast_path::Miss;
use super::wire_path::{Forward, WireEnd, WireStart};
use super::{Gateway, Now};
use crate::dns_server::UdpClient;
use crate::metrics::{QueryVerdict, Transport};
use crate::wire::PlainQuery;

impl Gateway {
    /// Answers a UDP query that [`Gateway::answer_now`] found in no cache (`miss`: what it
    /// read of it), and sends the answer to `client` when it is ready.
    pub fn relay_miss(
        self: &Arc<Self>,
        raw: &[u8],
        src: SocketAddr,
        client: UdpClient,
        miss: Miss,
    ) {
        let Miss {
            query,
            started,
            source,
        } = miss;
        match self.wire_start(raw, &query, src.ip(), Transport::Udp, source) {
            None => self.later(raw.to_vec(), src, client),
            Some(WireStart::Answer(bytes, verdict)) => {
                let answered = (started, Instant::now());
                self.reply(raw, &query, src, answered, verdict, bytes, client);
            }
            Some(WireStart::Forward(forward)) => {
                let gateway = Arc::clone(self);
                let question = Forward::question(raw, &query);
                let raw = raw.to_vec();
                self.resolver.relay_wire(
                    question,
                    Box::new(move |answer, arrived| {
                        gateway.relayed(raw, query, src, client, started, forward, answer, arrived);
                    }),
                );
            }
        }
    }

    /// The relayed query's upstream answer, arrived at `arrived` (`None`: take the regular
    /// path after all).
    #[allow(clippy::too_many_arguments)]
    fn relayed(
        self: Arc<Self>,
        raw: Vec<u8>,
        query: PlainQuery,
        src: SocketAddr,
        client: UdpClient,
        started: Instant,
        forward: Forward,
        answer: Option<&[u8]>,
        arrived: Instant,
    ) {
        let Some(upstream) = answer else {
            // The first attempt brought nothing usable: the others, in a task.
            tokio::spawn(async move {
                let forwarded = self
                    .wire_forward(&raw, &query, src.ip(), forward, true)
                    .await;
                match forwarded {
                    Some((bytes, verdict)) => {
                        let answered = (started, Instant::now());
                        self.reply(&raw, &query, src, answered, verdict, bytes, client);
                    }
                    None => self.later(raw, src, client),
                }
            });
            return;
        };
        match self.wire_end(&raw, &query, src.ip(), forward, upstream, arrived) {
            None => self.later(raw, src, client),
            Some(WireEnd::Answer(bytes, verdict)) => {
                self.reply(
                    &raw,
                    &query,
                    src,
                    (started, arrived),
                    verdict,
                    bytes,
                    client,
                );
            }
            Some(WireEnd::Deliver(held)) => {
                tokio::spawn(async move {
                    let (bytes, verdict) = self.wire_deliver(&raw, &query, held).await;
                    let answered = (started, Instant::now());
                    self.reply(&raw, &query, src, answered, verdict, bytes, client);
                });
            }
        }
    }

    /// Counts and logs an answered query (`answered`: when it arrived and when its answer
    /// was ready), and sends the answer.
    #[allow(clippy::too_many_arguments)]
    fn reply(
        &self,
        raw: &[u8],
        query: &PlainQuery,
        src: SocketAddr,
        (started, ready): (Instant, Instant),
        verdict: QueryVerdict,
        answer: Vec<u8>,
        client: UdpClient,
    ) {
        self.count_until(verdict, query.qtype, Transport::Udp, started, ready);
        self.log_decision(raw, src, Transport::Udp, verdict, Some(&answer));
        client.send(answer);
    }

    /// The query's regular path, in a task of its own.
    fn later(self: &Arc<Self>, raw: Vec<u8>, src: SocketAddr, client: UdpClient) {
        let gateway = Arc::clone(self);
        tokio::spawn(async move {
            let now = Now::Later { cached: false };
            if let Some(answer) = gateway.handle_later(&raw, src, Transport::Udp, now).await {
                client.send(answer);
            }
        });
    }
}
