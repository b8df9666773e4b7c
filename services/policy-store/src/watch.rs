//! Watch streams. Each subscriber has its own task that reads the log from disk at its own
//! pace: the writer never waits for subscribers, and a subscriber's memory is bounded by its
//! channel. One that accepts nothing for `--watch-stall-timeout` is cut off with
//! RESOURCE_EXHAUSTED and resumes by reconnecting from its last revision.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::Duration;

use dnsfence_api::store::v1 as pb;
use dnsfence_eventlog::LogError;
use dnsfence_policy::model::EventPayload;
use futures::Stream;
use tokio::sync::{mpsc, watch};
use tonic::Status;
use tracing::{debug, info};

use crate::codec;
use crate::store::Store;

/// Records read from the log per step.
const READ_CHUNK: usize = 512;
/// Items per snapshot part: keeps each message far below gRPC's 4 MiB default.
pub const SNAPSHOT_PART_ITEMS: usize = 1_000;
const CHANNEL_CAPACITY: usize = 256;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum View {
    All,
    Derived,
    Sources,
}

#[derive(Debug, Clone)]
pub struct WatchParams {
    /// Events after this revision are sent.
    pub from_revision: u64,
    pub view: View,
    /// Only bindings of this node (empty: all).
    pub node: String,
    /// Begin with a snapshot of the current state instead of replaying the log.
    pub snapshot: bool,
}

impl WatchParams {
    pub fn wants(&self, payload: &EventPayload) -> bool {
        let view_ok = match self.view {
            View::All => true,
            View::Derived => payload.is_derived(),
            View::Sources => !payload.is_derived(),
        };
        let node_ok = match payload {
            EventPayload::WorkloadBound(b) => self.node.is_empty() || b.node == self.node,
            _ => true,
        };
        view_ok && node_ok
    }
}

/// The response stream tonic sends: the subscriber's items, then the status that ended it.
#[derive(Debug)]
pub struct WatchStream {
    rx: mpsc::Receiver<pb::WatchResponse>,
    ended: Arc<Mutex<Option<Status>>>,
    done: bool,
}

impl Stream for WatchStream {
    type Item = Result<pb::WatchResponse, Status>;

    fn poll_next(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Self::Item>> {
        if self.done {
            return Poll::Ready(None);
        }
        match self.rx.poll_recv(cx) {
            Poll::Ready(Some(item)) => Poll::Ready(Some(Ok(item))),
            Poll::Ready(None) => {
                self.done = true;
                let status = self.ended.lock().ok().and_then(|mut s| s.take());
                Poll::Ready(status.map(Err))
            }
            Poll::Pending => Poll::Pending,
        }
    }
}

pub fn start(store: Arc<Store>, params: WatchParams) -> WatchStream {
    let (tx, rx) = mpsc::channel(CHANNEL_CAPACITY);
    let ended = Arc::new(Mutex::new(None));
    let end = Arc::clone(&ended);
    let stall = store.config().watch_stall_timeout;
    let closing = store.closing();
    let mut resets = store.resets();
    resets.borrow_and_update();
    tokio::spawn(async move {
        let _counted = store.watcher_started();
        let mut sub = Subscriber {
            tx,
            stall,
            closing,
            resets,
        };
        let result = sub.run(&store, params).await;
        if let (Err(status), Ok(mut slot)) = (result, end.lock()) {
            *slot = Some(status);
        }
    });
    WatchStream {
        rx,
        ended,
        done: false,
    }
}

struct Subscriber {
    tx: mpsc::Sender<pb::WatchResponse>,
    stall: Duration,
    /// The server is stopping: end the stream so its graceful shutdown can finish.
    closing: watch::Receiver<bool>,
    /// The log was reset under this stream: what it sent may not be the log's history any
    /// more, so it ends and the consumer resumes (from a snapshot where needed).
    resets: watch::Receiver<u64>,
}

fn shutting_down() -> Stop {
    Stop::Status(Status::unavailable("the store is shutting down"))
}

fn log_reset() -> Stop {
    Stop::Status(Status::unavailable(
        "the store's log was reset (a replica took the leader's state, or a new leader took over); resume from your last revision",
    ))
}

/// How a subscriber stopped without an error for the client.
enum Stop {
    ClientGone,
    Status(Status),
}

impl Subscriber {
    async fn run(&mut self, store: &Store, params: WatchParams) -> Result<(), Status> {
        match self.stream(store, &params).await {
            Ok(()) | Err(Stop::ClientGone) => {
                debug!(node = %params.node, "watcher left");
                Ok(())
            }
            Err(Stop::Status(s)) => Err(s),
        }
    }

    /// Queues `item`; `resume_from` is the revision a consumer cut off before receiving it
    /// has everything up to, which the error tells it.
    async fn send(&mut self, item: pb::WatchResponse, resume_from: u64) -> Result<(), Stop> {
        if self.resets.has_changed().unwrap_or(true) {
            return Err(log_reset());
        }
        let sent = tokio::select! {
            sent = tokio::time::timeout(self.stall, self.tx.send(item)) => sent,
            _ = self.closing.wait_for(|closing| *closing) => return Err(shutting_down()),
            _ = self.resets.changed() => return Err(log_reset()),
        };
        match sent {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(Stop::ClientGone),
            Err(_) => {
                info!(
                    resume_from,
                    "cutting off a watcher that accepted nothing for {:?}", self.stall
                );
                Err(Stop::Status(Status::resource_exhausted(format!(
                    "watcher too slow: accepted nothing for {:?}; resume with from_revision={resume_from}",
                    self.stall,
                ))))
            }
        }
    }

    async fn stream(&mut self, store: &Store, params: &WatchParams) -> Result<(), Stop> {
        let log = store.log();
        let mut head_rx = log.subscribe();
        let target = log.head();
        let mut next = params.from_revision.saturating_add(1);
        let mut caught_up_sent = false;
        let mut need_snapshot =
            params.snapshot || next < log.first_retained() || params.from_revision > target;
        loop {
            if need_snapshot {
                next = self.send_snapshot(store, params).await? + 1;
                need_snapshot = false;
            }
            let head = *head_rx.borrow_and_update();
            if next <= head {
                match log.read_from(next, READ_CHUNK) {
                    Ok(records) => {
                        for record in records {
                            let event = codec::decode_event(&record.bytes).map_err(|reason| {
                                Stop::Status(Status::data_loss(format!(
                                    "log record {} unreadable: {reason}",
                                    record.revision
                                )))
                            })?;
                            next = record.revision + 1;
                            if params.wants(&event.payload) {
                                let item = pb::WatchResponse {
                                    kind: Some(pb::watch_response::Kind::Event(
                                        codec::event_to_proto(&event),
                                    )),
                                };
                                // Not delivered yet: the consumer has what came before.
                                self.send(item, record.revision - 1).await?;
                            }
                        }
                    }
                    // Compacted under our feet: continue from a snapshot.
                    Err(LogError::Compacted { .. }) => need_snapshot = true,
                    Err(e) => {
                        return Err(Stop::Status(Status::unavailable(format!(
                            "reading the log: {e}"
                        ))));
                    }
                }
                continue;
            }
            if !caught_up_sent && next > target {
                caught_up_sent = true;
                let item = pb::WatchResponse {
                    kind: Some(pb::watch_response::Kind::CaughtUp(next - 1)),
                };
                self.send(item, next - 1).await?;
            }
            tokio::select! {
                changed = head_rx.changed() => {
                    if changed.is_err() {
                        return Err(Stop::Status(Status::unavailable("the store is shutting down")));
                    }
                }
                () = self.tx.closed() => return Err(Stop::ClientGone),
                _ = self.closing.wait_for(|closing| *closing) => return Err(shutting_down()),
                _ = self.resets.changed() => return Err(log_reset()),
            }
        }
    }

    /// Sends the current state in parts and returns its revision.
    async fn send_snapshot(&mut self, store: &Store, params: &WatchParams) -> Result<u64, Stop> {
        let content = store.read().await.snapshot();
        let revision = content.revision;
        // Only durable state may be shown.
        let mut head = store.log().subscribe();
        while *head.borrow_and_update() < revision {
            if head.changed().await.is_err() {
                return Err(Stop::Status(Status::unavailable(
                    "the store is shutting down",
                )));
            }
        }
        for part in codec::snapshot_parts(content, params, SNAPSHOT_PART_ITEMS) {
            let item = pb::WatchResponse {
                kind: Some(pb::watch_response::Kind::Snapshot(part)),
            };
            // An incomplete snapshot is no state: the consumer starts over from what it had.
            self.send(item, params.from_revision).await?;
        }
        Ok(revision)
    }
}
