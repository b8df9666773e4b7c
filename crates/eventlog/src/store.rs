//! State shared by the public handle, the writer task, readers and compaction, plus the on-disk
//! encoding of keys and metadata.

use std::path::Path;
use std::sync::OnceLock;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use tokio::sync::{Mutex, watch};
use tracing::info;

use crate::{LogConfig, LogError};

pub(crate) const EVENTS_TREE: &str = "events";
pub(crate) const META_TREE: &str = "meta";
/// Highest revision ever durably assigned, written by compaction before it deletes anything so
/// revisions are never reused even when the events tree ends up empty.
pub(crate) const META_LAST_REVISION: &[u8] = b"last_revision";
/// Present while a `reset` has stored its snapshot but may not have dropped every record yet.
pub(crate) const META_RESET_PENDING: &[u8] = b"reset_pending";
/// 8-byte big-endian revision followed by the snapshot bytes; one key so that revision and
/// payload can never be observed out of sync.
pub(crate) const META_SNAPSHOT: &[u8] = b"snapshot";

/// Big-endian so that sled's lexicographic key order is revision order.
pub(crate) fn revision_key(revision: u64) -> [u8; 8] {
    revision.to_be_bytes()
}

pub(crate) fn decode_u64(bytes: &[u8], what: &str) -> Result<u64, LogError> {
    let arr = <[u8; 8]>::try_from(bytes).map_err(|_| LogError::Corrupt {
        detail: format!("{what}: expected 8 bytes, found {}", bytes.len()),
    })?;
    Ok(u64::from_be_bytes(arr))
}

pub(crate) fn encode_snapshot(revision: u64, bytes: &[u8]) -> Vec<u8> {
    let mut value = Vec::with_capacity(8 + bytes.len());
    value.extend_from_slice(&revision.to_be_bytes());
    value.extend_from_slice(bytes);
    value
}

pub(crate) fn decode_snapshot(value: &[u8]) -> Result<(u64, Vec<u8>), LogError> {
    let (rev, rest) = value.split_at_checked(8).ok_or_else(|| LogError::Corrupt {
        detail: format!(
            "snapshot value is {} bytes, shorter than its header",
            value.len()
        ),
    })?;
    Ok((decode_u64(rev, "snapshot revision")?, rest.to_vec()))
}

/// Counters behind [`crate::LogStats`].
#[derive(Debug, Default)]
pub(crate) struct Counters {
    pub appends: AtomicU64,
    pub flushes: AtomicU64,
    pub records: AtomicU64,
}

#[derive(Debug)]
pub(crate) struct Shared {
    pub config: LogConfig,
    pub db: sled::Db,
    pub events: sled::Tree,
    pub meta: sled::Tree,
    /// Last durable revision. Readers never look past it, so records that sled holds in memory
    /// but has not yet flushed are invisible and can safely be lost in a crash.
    pub head: AtomicU64,
    /// Highest revision removed by compaction; `first_retained == floor + 1`. Raised *before*
    /// records are deleted so a concurrent reader gets `Compacted` instead of a silent gap.
    pub floor: AtomicU64,
    pub snapshot_revision: AtomicU64,
    pub head_tx: watch::Sender<u64>,
    pub poison: OnceLock<String>,
    pub counters: Counters,
    /// Serialises compactions; appends never take it.
    pub compaction: Mutex<()>,
}

/// How long `open` waits for sled's directory lock before giving up.
///
/// sled 0.34 writes log buffers from its own I/O threads, which hold the database (and with it
/// the lock file) for a moment after the last handle is dropped; without a short wait, closing
/// and reopening a log in one process fails at random.
const LOCK_WAIT: Duration = Duration::from_millis(500);
const LOCK_RETRY_EVERY: Duration = Duration::from_millis(5);

fn is_lock_contention(err: &sled::Error) -> bool {
    matches!(err, sled::Error::Io(e) if e.to_string().contains("could not acquire lock"))
}

fn open_db(path: &Path) -> Result<sled::Db, LogError> {
    let started = Instant::now();
    loop {
        let opened = sled::Config::new()
            .path(path)
            .mode(sled::Mode::HighThroughput)
            // Every write is made durable by an explicit flush (group commit, snapshot,
            // compaction, reset). sled's own flusher would also fsync an idle log twice a
            // second, and on a virtual disk each fsync can stall the machine for a millisecond
            // or two (seen as p99 spikes every 500 ms of a colocated DNS benchmark).
            .flush_every_ms(None)
            .open();
        match opened {
            Ok(db) => return Ok(db),
            Err(e) if is_lock_contention(&e) && started.elapsed() < LOCK_WAIT => {
                std::thread::sleep(LOCK_RETRY_EVERY);
            }
            Err(source) => {
                return Err(LogError::Open {
                    path: path.to_path_buf(),
                    source,
                });
            }
        }
    }
}

impl Shared {
    pub fn open(config: LogConfig) -> Result<Self, LogError> {
        config.validate()?;
        let path = config.path.clone();
        if path.exists() && !path.is_dir() {
            return Err(LogError::NotADirectory { path });
        }
        let db = open_db(&path)?;
        let events = db.open_tree(EVENTS_TREE)?;
        let meta = db.open_tree(META_TREE)?;
        if meta.get(META_RESET_PENDING)?.is_some() {
            // A reset stored its snapshot and crashed before every old record was gone.
            let removed = remove_all(&events)?;
            meta.remove(META_RESET_PENDING)?;
            db.flush()?;
            info!(removed, "finished an interrupted reset of the event log");
        }

        let last_event = match events.last()? {
            Some((k, _)) => Some(decode_u64(&k, "event key")?),
            None => None,
        };
        let first_event = match events.first()? {
            Some((k, _)) => Some(decode_u64(&k, "event key")?),
            None => None,
        };
        let high_water = match meta.get(META_LAST_REVISION)? {
            Some(v) => decode_u64(&v, "last_revision")?,
            None => 0,
        };
        let snapshot_revision = match meta.get(META_SNAPSHOT)? {
            Some(v) => decode_snapshot(&v)?.0,
            None => 0,
        };
        let head = last_event
            .unwrap_or(0)
            .max(high_water)
            .max(snapshot_revision);
        // Compaction deletes from the low end upwards, so whatever survives (even after a crash
        // in the middle of a compaction) is a contiguous suffix starting at the first key.
        let floor = first_event.map_or(head, |first| first.saturating_sub(1));
        info!(
            path = %path.display(),
            head,
            first_retained = floor + 1,
            snapshot_revision,
            "event log opened"
        );
        let (head_tx, _) = watch::channel(head);
        Ok(Self {
            config,
            db,
            events,
            meta,
            head: AtomicU64::new(head),
            floor: AtomicU64::new(floor),
            snapshot_revision: AtomicU64::new(snapshot_revision),
            head_tx,
            poison: OnceLock::new(),
            counters: Counters::default(),
            compaction: Mutex::new(()),
        })
    }

    pub fn head(&self) -> u64 {
        self.head.load(Ordering::Acquire)
    }

    /// Revision of the stored snapshot (0: none), kept in memory so callers need not read
    /// the snapshot to learn it.
    pub fn snapshot_revision(&self) -> u64 {
        self.snapshot_revision.load(Ordering::Acquire)
    }

    pub fn first_retained(&self) -> u64 {
        self.floor.load(Ordering::Acquire).saturating_add(1)
    }

    pub fn check_poison(&self) -> Result<(), LogError> {
        match self.poison.get() {
            Some(reason) => Err(LogError::Poisoned {
                reason: reason.clone(),
            }),
            None => Ok(()),
        }
    }

    pub fn read_snapshot(&self) -> Result<Option<(u64, Vec<u8>)>, LogError> {
        match self.meta.get(META_SNAPSHOT)? {
            Some(v) => Ok(Some(decode_snapshot(&v)?)),
            None => Ok(None),
        }
    }

    pub fn read_high_water(&self) -> Result<u64, LogError> {
        match self.meta.get(META_LAST_REVISION)? {
            Some(v) => decode_u64(&v, "last_revision"),
            None => Ok(0),
        }
    }
}

/// Drops every record, in chunks (a sled batch holds its global write lock).
fn remove_all(events: &sled::Tree) -> Result<u64, LogError> {
    const CHUNK: usize = 4096;
    let mut removed = 0u64;
    loop {
        let mut batch = sled::Batch::default();
        let mut n = 0usize;
        for key in events.iter().keys().take(CHUNK) {
            batch.remove(key?);
            n += 1;
        }
        if n == 0 {
            return Ok(removed);
        }
        events.apply_batch(batch)?;
        removed += n as u64;
    }
}

pub(crate) fn delete_all_events(shared: &Shared) -> Result<u64, LogError> {
    remove_all(&shared.events)
}

/// Runs blocking sled work off the async workers: large batches and range scans take long
/// enough to stall other tasks on a small machine.
pub(crate) async fn blocking<T, F>(f: F) -> Result<T, LogError>
where
    F: FnOnce() -> Result<T, LogError> + Send + 'static,
    T: Send + 'static,
{
    tokio::task::spawn_blocking(f)
        .await
        .map_err(|e| LogError::Task(e.to_string()))?
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn keys_sort_like_revisions() {
        assert!(revision_key(255) < revision_key(256));
        assert!(revision_key(1) < revision_key(u64::MAX));
        assert_eq!(decode_u64(&revision_key(42), "k").unwrap(), 42);
        assert!(decode_u64(&[1, 2, 3], "k").is_err());
        assert!(decode_u64(&[0; 9], "k").is_err());
    }

    #[test]
    fn snapshot_roundtrip() {
        let v = encode_snapshot(7, b"state");
        assert_eq!(decode_snapshot(&v).unwrap(), (7, b"state".to_vec()));
        assert_eq!(
            decode_snapshot(&encode_snapshot(3, b"")).unwrap(),
            (3, vec![])
        );
        assert!(decode_snapshot(&[0; 7]).is_err());
    }

    #[test]
    #[cfg(target_os = "linux")]
    fn an_open_log_runs_no_periodic_flusher() {
        let dir = tempfile::tempdir().unwrap();
        let db = open_db(&dir.path().join("log")).unwrap();
        // sled names its flusher thread; this test process has no other sled database open.
        let flushers = std::fs::read_dir("/proc/self/task")
            .unwrap()
            .filter_map(|task| std::fs::read_to_string(task.ok()?.path().join("comm")).ok())
            .filter(|comm| comm.trim() == "log flusher")
            .count();
        assert_eq!(flushers, 0);
        drop(db);
    }
}
