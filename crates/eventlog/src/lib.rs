//! Durable, append-only event log on sled.
//!
//! * Appends are group-committed by one writer task: everything queued while the previous
//!   fsync ran is written as one `sled::Batch` and made durable with one flush.
//! * Revisions start at 1, are gap-free, and are never reused, also across restarts and
//!   compactions (a high-water mark is persisted before compaction deletes anything).
//! * Compaction stores a snapshot and deletes old records, keeping `retention` of them so a
//!   consumer slightly behind can resume without the snapshot.
//! * A replica copies another log with `enqueue_at` (records at given revisions) and `reset`
//!   (adopt a snapshot at a given revision, dropping every record).
//! * Subscribers watch the durable head and pull with `read_from`, so the writer never blocks
//!   on or buffers for slow consumers.

mod config;
mod error;
mod reader;
mod snapshot;
mod store;
mod writer;

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot, watch};

pub use config::{DEFAULT_MAX_BATCH_RECORDS, DEFAULT_RETENTION, LogConfig};
pub use error::LogError;

use store::Shared;
use writer::{Msg, Pending};

/// A snapshot of the consumer's state as of `revision`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Snapshot {
    pub revision: u64,
    pub bytes: Vec<u8>,
}

/// One event.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub revision: u64,
    pub bytes: Vec<u8>,
}

/// Counters since this process opened the log.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Completed `append` calls.
    pub appends: u64,
    /// Group commits, i.e. sled flushes issued by the writer.
    pub flushes: u64,
    /// Records appended.
    pub records: u64,
}

/// Resolves to the revisions of an enqueued append once it is durable.
#[derive(Debug)]
pub struct AppendTicket {
    answer: oneshot::Receiver<Result<RangeInclusive<u64>, LogError>>,
    log: EventLog,
}

impl std::future::IntoFuture for AppendTicket {
    type Output = Result<RangeInclusive<u64>, LogError>;
    type IntoFuture = std::pin::Pin<Box<dyn std::future::Future<Output = Self::Output> + Send>>;

    fn into_future(self) -> Self::IntoFuture {
        Box::pin(async move {
            match self.answer.await {
                Ok(result) => result,
                Err(_) => Err(self.log.stopped_error()),
            }
        })
    }
}

/// Handle to an open event log. Cheap to clone; all clones share one writer.
#[derive(Clone)]
pub struct EventLog {
    inner: Arc<Inner>,
}

struct Inner {
    shared: Arc<Shared>,
    tx: mpsc::Sender<Msg>,
    stopped: watch::Receiver<bool>,
}

impl std::fmt::Debug for EventLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("EventLog")
            .field("path", &self.inner.shared.config.path)
            .field("head", &self.head())
            .field("first_retained", &self.first_retained())
            .finish()
    }
}

impl EventLog {
    /// Opens (creating if missing). Must be called inside a tokio runtime: it spawns the
    /// writer task.
    ///
    /// To reopen the same directory in the same process, `close().await` first: sled holds an
    /// exclusive lock until the writer has let go of the database.
    pub fn open(config: LogConfig) -> Result<EventLog, LogError> {
        let runtime = tokio::runtime::Handle::try_current().map_err(|_| LogError::NoRuntime)?;
        let shared = Arc::new(Shared::open(config)?);
        let (tx, rx) = mpsc::channel(writer::QUEUE_CAPACITY);
        let (stopped_tx, stopped) = watch::channel(false);
        runtime.spawn(writer::run(rx, Arc::clone(&shared), stopped_tx));
        Ok(EventLog {
            inner: Arc::new(Inner {
                shared,
                tx,
                stopped,
            }),
        })
    }

    /// Appends the records as one atomic unit with consecutive revisions and returns the first
    /// and last revision assigned. The records are durable when this returns.
    ///
    /// If the returned future is dropped early the records may still be committed.
    pub async fn append(&self, records: Vec<Vec<u8>>) -> Result<RangeInclusive<u64>, LogError> {
        self.enqueue(records).await?.await
    }

    /// Queues the records and returns once they have their place in the log's order; the
    /// returned ticket resolves when they are durable. A caller that serialises its own
    /// enqueues (the policy store, under its state lock) thereby knows the revisions they get,
    /// while durability is still group-committed with everyone else's.
    pub async fn enqueue(&self, records: Vec<Vec<u8>>) -> Result<AppendTicket, LogError> {
        self.enqueue_inner(records, None).await
    }

    /// Like [`EventLog::enqueue`], for a replica copying another log: the records must get
    /// revisions `first..`, or the ticket fails with [`LogError::RevisionMismatch`] and
    /// nothing is written.
    pub async fn enqueue_at(
        &self,
        first: u64,
        records: Vec<Vec<u8>>,
    ) -> Result<AppendTicket, LogError> {
        self.enqueue_inner(records, Some(first)).await
    }

    async fn enqueue_inner(
        &self,
        records: Vec<Vec<u8>>,
        at: Option<u64>,
    ) -> Result<AppendTicket, LogError> {
        if records.is_empty() {
            return Err(LogError::EmptyAppend);
        }
        self.inner.shared.check_poison()?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Append(Pending { records, reply, at }))
            .await
            .map_err(|_| self.stopped_error())?;
        Ok(AppendTicket {
            answer,
            log: self.clone(),
        })
    }

    /// Replaces the whole log by `bytes` as the snapshot at `revision`: every record goes,
    /// the head becomes `revision` (lower or higher than before), and the next append gets
    /// `revision + 1`. For a replica adopting another log's state, or a new leader moving its
    /// numbering past anything a previous leader may have handed out. Crash-safe: a restart
    /// sees the old log or the new one, never a mix. Queued appends before it are committed
    /// first.
    pub async fn reset(&self, revision: u64, bytes: Vec<u8>) -> Result<(), LogError> {
        self.inner.shared.check_poison()?;
        let (reply, answer) = oneshot::channel();
        self.inner
            .tx
            .send(Msg::Reset(writer::Reset {
                revision,
                bytes,
                reply,
            }))
            .await
            .map_err(|_| self.stopped_error())?;
        answer.await.map_err(|_| self.stopped_error())?
    }

    /// Last durable revision (0 when the log has never had an event).
    pub fn head(&self) -> u64 {
        self.inner.shared.head()
    }

    /// Lowest revision still readable as a record (`head() + 1` if none is retained).
    pub fn first_retained(&self) -> u64 {
        self.inner.shared.first_retained()
    }

    /// Up to `max` records with revision `>= from`, in order, never past `head()`.
    ///
    /// `from == 0` means "from the beginning". Fails with [`LogError::Compacted`] when
    /// `from < first_retained()` and records in that range were removed.
    pub fn read_from(&self, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
        reader::read_from(&self.inner.shared, from, max)
    }

    /// Every record after `after` up to the head at the time of the call. Yields a single
    /// `Compacted` error first if part of that range is gone (or, mid-way, if a concurrent
    /// compaction overtakes it). The iterator owns its handles, so it can be moved into
    /// `spawn_blocking`; it also keeps the database open until it is dropped.
    pub fn replay_after(
        &self,
        after: u64,
    ) -> impl Iterator<Item = Result<Record, LogError>> + Send + use<> {
        reader::Replay::new(Arc::clone(&self.inner.shared), after)
    }

    /// Revision of the latest snapshot (0: none), without reading it.
    pub fn snapshot_revision(&self) -> u64 {
        self.inner.shared.snapshot_revision()
    }

    /// Latest snapshot, if any.
    pub fn snapshot(&self) -> Result<Option<Snapshot>, LogError> {
        Ok(self
            .inner
            .shared
            .read_snapshot()?
            .map(|(revision, bytes)| Snapshot { revision, bytes }))
    }

    /// Stores `bytes` as the snapshot of the state at `revision` (`<= head()`, and not older
    /// than the stored snapshot) durably, then deletes records with revision
    /// `<= revision - retention` in small chunks so appends keep flowing. Returns how many
    /// records were removed.
    pub async fn compact(&self, revision: u64, bytes: Vec<u8>) -> Result<u64, LogError> {
        snapshot::compact(&self.inner.shared, revision, bytes).await
    }

    /// A watch channel of `head()`; every durable append publishes the new head.
    pub fn subscribe(&self) -> watch::Receiver<u64> {
        self.inner.shared.head_tx.subscribe()
    }

    /// Stops the writer after committing the appends already queued, and flushes. Later
    /// appends fail with [`LogError::Closed`]; reads and compaction keep working on this
    /// handle. Calling it again is harmless.
    pub async fn close(&self) -> Result<(), LogError> {
        // A send error only means the writer already stopped, which is the goal.
        let _ = self.inner.tx.send(Msg::Close).await;
        let mut stopped = self.inner.stopped.clone();
        // An error here means the writer task is gone (runtime shut down): also stopped.
        let _ = stopped.wait_for(|s| *s).await;
        self.inner.shared.check_poison()
    }

    /// Disk bytes used by sled, for metrics.
    pub fn size_on_disk(&self) -> Result<u64, LogError> {
        Ok(self.inner.shared.db.size_on_disk()?)
    }

    /// Counters since open: group commits vs. appends shows how well batching works.
    pub fn stats(&self) -> LogStats {
        let c = &self.inner.shared.counters;
        LogStats {
            appends: c.appends.load(Ordering::Relaxed),
            flushes: c.flushes.load(Ordering::Relaxed),
            records: c.records.load(Ordering::Relaxed),
        }
    }

    /// The configuration this log was opened with.
    pub fn config(&self) -> &LogConfig {
        &self.inner.shared.config
    }

    fn stopped_error(&self) -> LogError {
        match self.inner.shared.check_poison() {
            Err(e) => e,
            Ok(()) => LogError::Closed,
        }
    }
}
