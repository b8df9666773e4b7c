//! The store: state + log, and the one write path every mutation takes.
//!
//! A write locks the state, computes its events, hands them to the log in order (so revisions
//! in memory and on disk agree), unlocks, then waits until the log has made them durable. The
//! log group-commits what concurrent writers queued meanwhile into one flush.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};

use dnsfence_eventlog::{EventLog, LogConfig};
use dnsfence_policy::model::{Event, EventPayload};
use tokio::sync::{RwLock, watch};
use tracing::{info, warn};

use crate::codec;
use crate::config::{Config, Mode};
use crate::error::StoreError;
use crate::role::{Peer, Role};
use crate::state::{SnapshotContent, StoreState};

/// Why a write did not happen.
#[derive(Debug, thiserror::Error)]
pub enum WriteError<E> {
    /// The request was wrong; nothing changed.
    #[error("{0:?}")]
    Rejected(E),
    /// The log failed: the store stops (crash-only), and a restart replays what was durable.
    #[error("the event log failed: {0}")]
    Log(String),
}

/// Runs `work` to its end even if the caller is dropped: these writes change the state and
/// the log together, and stopping one half-way (a follower is aborted when it becomes leader)
/// would leave them disagreeing.
async fn shielded<T: Send + 'static>(
    work: impl std::future::Future<Output = T> + Send + 'static,
) -> Result<T, StoreError> {
    tokio::spawn(work)
        .await
        .map_err(|e| StoreError::LogFailed(format!("a store write task failed: {e}")))
}

/// Holds the compaction flag; releases it when dropped.
struct CompactionClaim<'a>(&'a AtomicBool);

impl Drop for CompactionClaim<'_> {
    fn drop(&mut self) {
        self.0.store(false, Ordering::Release);
    }
}

/// Decrements the watcher count when a watch stream's task ends.
#[derive(Debug)]
pub struct WatcherGuard<'a>(&'a AtomicUsize);

impl Drop for WatcherGuard<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::Relaxed);
    }
}

#[derive(Debug)]
pub struct Store {
    state: RwLock<StoreState>,
    log: EventLog,
    config: Config,
    compacting: AtomicBool,
    /// Open Watch streams.
    watchers: AtomicUsize,
    /// Set on a failure the store cannot go on after (the log failed, or cluster mode could
    /// not continue): `serve` shuts the server down.
    fatal: watch::Sender<Option<String>>,
    /// Set when the server begins to shut down: watch streams end, so that the server's
    /// graceful shutdown, which waits for every open stream, can finish.
    closing: watch::Sender<bool>,
    /// Counts resets of the log (a replica adopting the leader's snapshot, a new leader moving
    /// its numbering on): watch streams end, and their consumers resume from a snapshot.
    resets: watch::Sender<u64>,
    role: watch::Sender<Role>,
}

impl Store {
    /// Opens the log and rebuilds the state from its snapshot and events.
    pub async fn open(config: Config) -> Result<Arc<Store>, StoreError> {
        std::fs::create_dir_all(&config.data_dir).map_err(|e| {
            StoreError::Config(format!("--data-dir {}: {e}", config.data_dir.display()))
        })?;
        let log = EventLog::open(
            LogConfig::new(config.data_dir.join("log")).with_retention(config.retention),
        )?;
        let started = std::time::Instant::now();
        let mut state = StoreState::default();
        if let Some(snapshot) = log.snapshot()? {
            let content = codec::decode_snapshot(&snapshot.bytes).map_err(|reason| {
                StoreError::CorruptSnapshot {
                    revision: snapshot.revision,
                    reason,
                }
            })?;
            state
                .restore_snapshot(content)
                .map_err(|reason| StoreError::CorruptSnapshot {
                    revision: snapshot.revision,
                    reason,
                })?;
        }
        let replayed = replay(&log, &mut state)?;
        // Compaction can leave the log's head above the last retained record.
        state.revision = state.revision.max(log.head());
        info!(
            revision = state.revision,
            replayed,
            elapsed_ms = started.elapsed().as_millis() as u64,
            "state rebuilt from the log"
        );
        let (fatal, _) = watch::channel(None);
        let (closing, _) = watch::channel(false);
        let (resets, _) = watch::channel(0);
        let role = match (&config.mode, &config.follow) {
            (Mode::Standalone, None) => Role::Standalone,
            (Mode::Standalone, Some(address)) => Role::Follower {
                leader: Some(Peer {
                    identity: address.clone(),
                    address: address.clone(),
                }),
            },
            (Mode::Cluster, _) => Role::Follower { leader: None },
        };
        let (role, _) = watch::channel(role);
        Ok(Arc::new(Store {
            state: RwLock::new(state),
            log,
            config,
            compacting: AtomicBool::new(false),
            watchers: AtomicUsize::new(0),
            fatal,
            closing,
            resets,
            role,
        }))
    }

    pub fn role(&self) -> Role {
        self.role.borrow().clone()
    }

    pub fn subscribe_role(&self) -> watch::Receiver<Role> {
        self.role.subscribe()
    }

    pub fn set_role(&self, role: Role) {
        self.role.send_if_modified(|current| {
            if *current == role {
                return false;
            }
            info!(from = current.name(), to = role.name(), "role changed");
            *current = role;
            true
        });
    }

    /// Changes when the log is reset: open watch streams end so consumers resume afresh.
    pub fn resets(&self) -> watch::Receiver<u64> {
        self.resets.subscribe()
    }

    pub fn config(&self) -> &Config {
        &self.config
    }

    pub fn log(&self) -> &EventLog {
        &self.log
    }

    pub async fn read(&self) -> tokio::sync::RwLockReadGuard<'_, StoreState> {
        self.state.read().await
    }

    /// Revision of the latest snapshot (0: none yet).
    pub fn snapshot_revision(&self) -> u64 {
        self.log.snapshot_revision()
    }

    pub fn watchers(&self) -> usize {
        self.watchers.load(Ordering::Relaxed)
    }

    /// Counts a watch stream for as long as the returned guard lives.
    pub fn watcher_started(&self) -> WatcherGuard<'_> {
        self.watchers.fetch_add(1, Ordering::Relaxed);
        WatcherGuard(&self.watchers)
    }

    pub fn fatal(&self) -> watch::Receiver<Option<String>> {
        self.fatal.subscribe()
    }

    /// Ends every watch stream (and refuses new ones): called when the server stops.
    pub fn begin_shutdown(&self) {
        self.closing.send_replace(true);
    }

    /// Becomes `true` when the server stops.
    pub fn closing(&self) -> watch::Receiver<bool> {
        self.closing.subscribe()
    }

    /// The write path. `plan` validates and mutates the state, returning the events to log;
    /// the result is the log's head once those events are durable.
    pub async fn write<T, E>(
        self: &Arc<Self>,
        plan: impl FnOnce(&mut StoreState) -> Result<(Vec<EventPayload>, T), E>,
    ) -> Result<(u64, T), WriteError<E>> {
        let (ticket, revision, out) = {
            let mut state = self.state.write().await;
            let (payloads, out) = plan(&mut state).map_err(WriteError::Rejected)?;
            if payloads.is_empty() {
                let revision = state.revision;
                drop(state);
                self.wait_durable(revision).await?;
                return Ok((revision, out));
            }
            let first = state.revision + 1;
            let count = payloads.len() as u64;
            for (i, payload) in payloads.iter().enumerate() {
                state.note_written(first + i as u64, payload);
            }
            let records: Vec<Vec<u8>> = payloads
                .into_iter()
                .enumerate()
                .map(|(i, payload)| {
                    codec::encode_event(&Event {
                        revision: first + i as u64,
                        payload,
                    })
                })
                .collect();
            let ticket = match self.log.enqueue(records).await {
                Ok(t) => t,
                Err(e) => return Err(self.fail(e.to_string())),
            };
            state.revision += count;
            (ticket, state.revision, out)
        };
        match ticket.await {
            Ok(range) if *range.end() == revision => {}
            Ok(range) => {
                return Err(self.fail(format!(
                    "log assigned revisions {range:?}, the store expected up to {revision}"
                )));
            }
            Err(e) => return Err(self.fail(e.to_string())),
        }
        self.maybe_compact(revision);
        Ok((revision, out))
    }

    /// A replica's write path: appends events copied from the leader at their revisions,
    /// which must continue this store's log without a gap. Returns the new head. Runs to its
    /// end even if the caller is dropped.
    ///
    /// On an error the in-memory state may hold part of the batch; the replica then starts
    /// over from a snapshot ([`Store::install_snapshot`]), which replaces it.
    pub async fn replicate(self: &Arc<Self>, events: Vec<Event>) -> Result<u64, StoreError> {
        let me = Arc::clone(self);
        shielded(async move { me.replicate_now(events).await }).await?
    }

    async fn replicate_now(self: &Arc<Self>, events: Vec<Event>) -> Result<u64, StoreError> {
        let (ticket, last) = {
            let mut state = self.state.write().await;
            let first = state.revision + 1;
            let Some(last_event) = events.last() else {
                return Ok(state.revision);
            };
            let last = last_event.revision;
            for (i, event) in events.iter().enumerate() {
                if event.revision != first + i as u64 {
                    return Err(StoreError::Replication(format!(
                        "the leader sent revision {} where {} was expected",
                        event.revision,
                        first + i as u64
                    )));
                }
            }
            let records: Vec<Vec<u8>> = events.iter().map(codec::encode_event).collect();
            for event in events {
                let revision = event.revision;
                if let Err(reason) = state.restore(revision, event.payload) {
                    // Nothing of the batch reached the log; the replica starts over from a
                    // snapshot, which replaces what of it reached the state.
                    state.revision = first - 1;
                    return Err(StoreError::Replication(format!(
                        "event {revision} from the leader does not apply: {reason}"
                    )));
                }
            }
            let ticket = self
                .log
                .enqueue_at(first, records)
                .await
                .map_err(|e| self.log_failed(e.to_string()))?;
            state.revision = last;
            (ticket, last)
        };
        match ticket.await {
            Ok(range) if *range.end() == last => {}
            Ok(range) => {
                return Err(self.log_failed(format!(
                    "log assigned revisions {range:?}, the replica expected up to {last}"
                )));
            }
            Err(e) => return Err(self.log_failed(e.to_string())),
        }
        self.maybe_compact(last);
        Ok(last)
    }

    /// A replica adopts the leader's state at `content.revision`: the log is reset to it and
    /// the in-memory state rebuilt from it; open watch streams end.
    pub async fn install_snapshot(
        self: &Arc<Self>,
        content: SnapshotContent,
    ) -> Result<u64, StoreError> {
        let me = Arc::clone(self);
        shielded(async move { me.install_snapshot_now(content).await }).await?
    }

    async fn install_snapshot_now(&self, content: SnapshotContent) -> Result<u64, StoreError> {
        let revision = content.revision;
        let bytes = codec::encode_snapshot(&content);
        let mut fresh = StoreState::default();
        fresh
            .restore_snapshot(content)
            .map_err(|reason| StoreError::CorruptSnapshot { revision, reason })?;
        // Before the state lock: a compaction takes the state lock after claiming its flag.
        let _no_compaction = self.exclude_compaction().await;
        let mut state = self.state.write().await;
        self.log
            .reset(revision, bytes)
            .await
            .map_err(|e| self.log_failed(e.to_string()))?;
        *state = fresh;
        drop(state);
        self.resets.send_modify(|n| *n += 1);
        Ok(revision)
    }

    /// A new leader moves its log's numbering to `revision` (if it is ahead), keeping its
    /// state: a consumer that saw revisions of the previous leader this store never had gets
    /// a snapshot instead of resuming into a history that is not this store's.
    pub async fn advance_to(self: &Arc<Self>, revision: u64) -> Result<u64, StoreError> {
        let me = Arc::clone(self);
        shielded(async move { me.advance_to_now(revision).await }).await?
    }

    async fn advance_to_now(&self, revision: u64) -> Result<u64, StoreError> {
        let _no_compaction = self.exclude_compaction().await;
        let mut state = self.state.write().await;
        if revision <= state.revision {
            return Ok(state.revision);
        }
        // Only durable state may become the snapshot.
        self.wait_durable::<()>(state.revision)
            .await
            .map_err(|e| self.log_failed(e.to_string()))?;
        let mut content = state.snapshot();
        content.revision = revision;
        self.log
            .reset(revision, codec::encode_snapshot(&content))
            .await
            .map_err(|e| self.log_failed(e.to_string()))?;
        let previous = state.revision;
        state.revision = revision;
        // As a restart from that snapshot would have them.
        for applied in state.applied_at.values_mut() {
            *applied = revision;
        }
        drop(state);
        info!(
            previous,
            revision, "log numbering moved on past the previous leader's"
        );
        self.resets.send_modify(|n| *n += 1);
        Ok(revision)
    }

    /// Waits until no compaction runs and keeps new ones from starting while the guard lives.
    async fn exclude_compaction(&self) -> CompactionClaim<'_> {
        while self.compacting.swap(true, Ordering::AcqRel) {
            tokio::time::sleep(std::time::Duration::from_millis(10)).await;
        }
        CompactionClaim(&self.compacting)
    }

    fn log_failed(&self, reason: String) -> StoreError {
        let _: WriteError<()> = self.fail(reason.clone());
        StoreError::LogFailed(reason)
    }

    async fn wait_durable<E>(&self, revision: u64) -> Result<(), WriteError<E>> {
        let mut head = self.log.subscribe();
        while *head.borrow_and_update() < revision {
            if head.changed().await.is_err() {
                return Err(WriteError::Log("the log writer stopped".into()));
            }
        }
        Ok(())
    }

    /// Stops the server (as a failed log does) for a failure the store cannot recover from.
    pub fn stop_fatally(&self, reason: String) {
        warn!(%reason, "stopping");
        self.fatal.send_replace(Some(reason));
    }

    fn fail<E>(&self, reason: String) -> WriteError<E> {
        warn!(%reason, "event log failed; the store stops so that a restart replays a consistent log");
        self.fatal.send_replace(Some(reason.clone()));
        WriteError::Log(reason)
    }

    /// Snapshots and compacts once enough events piled up since the last snapshot. Runs in the
    /// background: writers do not wait for it.
    fn maybe_compact(self: &Arc<Self>, revision: u64) {
        let since = revision.saturating_sub(self.log.snapshot_revision());
        if since < self.config.compact_every || self.compacting.swap(true, Ordering::AcqRel) {
            return;
        }
        let store = Arc::clone(self);
        tokio::spawn(async move {
            if let Err(e) = store.compact().await {
                warn!(error = %e, "compaction failed; will retry after more events");
            }
            store.compacting.store(false, Ordering::Release);
        });
    }

    /// Writes a snapshot of the current state and drops old events (keeping `retention`).
    pub async fn compact(&self) -> Result<u64, StoreError> {
        let (revision, bytes) = {
            let state = self.state.read().await;
            if state.revision <= self.log.snapshot_revision() {
                return Ok(0);
            }
            (state.revision, codec::encode_snapshot(&state.snapshot()))
        };
        // Only durable state may become a snapshot.
        self.wait_durable::<()>(revision)
            .await
            .map_err(|e| StoreError::Config(e.to_string()))?;
        let removed = self.log.compact(revision, bytes).await?;
        info!(revision, removed, "snapshot written, log compacted");
        Ok(removed)
    }
}

/// Events decoded per hand-over from the reader thread.
const REPLAY_BATCH: usize = 1024;

/// Replays the log after the state's revision. One thread reads and decodes records while
/// this one applies them: decoding and applying cost about the same, so the two overlap.
fn replay(log: &EventLog, state: &mut StoreState) -> Result<u64, StoreError> {
    let records = log.replay_after(state.revision);
    let (tx, rx) = std::sync::mpsc::sync_channel::<Result<Vec<Event>, StoreError>>(16);
    let reader = std::thread::spawn(move || {
        let mut batch = Vec::with_capacity(REPLAY_BATCH);
        for record in records {
            let decoded = record.map_err(StoreError::from).and_then(|record| {
                let event = codec::decode_event(&record.bytes).map_err(|reason| {
                    StoreError::CorruptRecord {
                        revision: record.revision,
                        reason,
                    }
                })?;
                if event.revision != record.revision {
                    return Err(StoreError::CorruptRecord {
                        revision: record.revision,
                        reason: format!("holds revision {}", event.revision),
                    });
                }
                Ok(event)
            });
            match decoded {
                Ok(event) => batch.push(event),
                Err(e) => {
                    let _ = tx.send(Err(e));
                    return;
                }
            }
            if batch.len() == REPLAY_BATCH
                && tx
                    .send(Ok(std::mem::replace(
                        &mut batch,
                        Vec::with_capacity(REPLAY_BATCH),
                    )))
                    .is_err()
            {
                return;
            }
        }
        let _ = tx.send(Ok(batch));
    });
    let mut replayed = 0u64;
    let mut outcome = Ok(());
    for batch in rx {
        let applied = batch.and_then(|events| {
            for event in events {
                let revision = event.revision;
                state
                    .restore(revision, event.payload)
                    .map_err(|reason| StoreError::CorruptRecord { revision, reason })?;
                replayed += 1;
            }
            Ok(())
        });
        if let Err(e) = applied {
            outcome = Err(e);
            break;
        }
    }
    // Dropping the receiver stops the reader at its next send.
    let _ = reader.join();
    outcome.map(|()| replayed)
}
