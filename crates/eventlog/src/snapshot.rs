//! Snapshot storage and compaction of the events tree.

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Instant;

use tracing::info;

use crate::LogError;
use crate::store::{
    META_LAST_REVISION, META_RESET_PENDING, META_SNAPSHOT, Shared, blocking, delete_all_events,
    encode_snapshot,
};

/// Records deleted per sled batch. A batch holds sled's global write lock, so small chunks
/// keep the group-commit writer from waiting behind a compaction for more than a few ms.
const DELETE_CHUNK: usize = 4096;

pub(crate) async fn compact(
    shared: &Arc<Shared>,
    revision: u64,
    bytes: Vec<u8>,
) -> Result<u64, LogError> {
    let _serial = shared.compaction.lock().await;
    shared.check_poison()?;
    let started = Instant::now();
    let head = shared.head();
    if revision > head {
        return Err(LogError::SnapshotAhead {
            requested: revision,
            head,
        });
    }
    let current = shared.snapshot_revision();
    if revision < current {
        return Err(LogError::SnapshotRegression {
            requested: revision,
            current,
        });
    }

    // The high-water mark must be durable before any record is deleted; otherwise deleting
    // the newest records and crashing would let revisions be handed out again.
    let high_water = head.max(shared.read_high_water()?);
    let mut meta_batch = sled::Batch::default();
    meta_batch.insert(META_SNAPSHOT, encode_snapshot(revision, &bytes));
    meta_batch.insert(META_LAST_REVISION, &high_water.to_be_bytes()[..]);
    let meta = shared.meta.clone();
    blocking(move || meta.apply_batch(meta_batch).map_err(LogError::from)).await?;
    shared.db.flush_async().await?;
    // Published before the floor rises, so a reader never sees records gone without the
    // snapshot that replaces them.
    shared
        .snapshot_revision
        .store(revision, std::sync::atomic::Ordering::Release);

    let cutoff = revision.saturating_sub(shared.config.retention);
    let removed = delete_through(shared, cutoff).await?;
    if removed > 0 {
        // Not needed for correctness (records that reappear after a crash are merely readable
        // again), but it returns the space promptly and bounds recovery work.
        shared.db.flush_async().await?;
    }
    info!(
        revision,
        cutoff,
        removed,
        first_retained = shared.first_retained(),
        snapshot_bytes = bytes.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "event log compacted"
    );
    Ok(removed)
}

async fn delete_through(shared: &Arc<Shared>, cutoff: u64) -> Result<u64, LogError> {
    if cutoff == 0 {
        return Ok(0);
    }
    // Raise the floor first so readers racing with the delete get `Compacted`, never a gap.
    shared.floor.fetch_max(cutoff, Ordering::AcqRel);
    let end = cutoff.to_be_bytes();
    let mut removed = 0u64;
    loop {
        let events = shared.events.clone();
        let n = blocking(move || {
            let mut batch = sled::Batch::default();
            let mut n = 0usize;
            // Deleted keys are gone, so each pass starts again at the lowest remaining key.
            for key in events.range(..=end).keys().take(DELETE_CHUNK) {
                batch.remove(key?);
                n += 1;
            }
            if n > 0 {
                events.apply_batch(batch)?;
            }
            Ok(n)
        })
        .await?;
        removed += n as u64;
        if n < DELETE_CHUNK {
            return Ok(removed);
        }
        tokio::task::yield_now().await;
    }
}

/// The log becomes the snapshot at `revision` and nothing else. Runs on the writer task, so no
/// append is in flight. The snapshot, the new high-water mark and a reset marker are made
/// durable in one batch first; a restart that finds the marker finishes the job (drops every
/// record) before it computes the head, so a crash at any point leaves either the old log or
/// the new one.
pub(crate) async fn reset(
    shared: &Arc<Shared>,
    revision: u64,
    bytes: Vec<u8>,
) -> Result<(), LogError> {
    let _serial = shared.compaction.lock().await;
    shared.check_poison()?;
    let started = Instant::now();
    let previous_head = shared.head();
    let mut meta_batch = sled::Batch::default();
    meta_batch.insert(META_SNAPSHOT, encode_snapshot(revision, &bytes));
    meta_batch.insert(META_LAST_REVISION, &revision.to_be_bytes()[..]);
    meta_batch.insert(META_RESET_PENDING, &[1u8][..]);
    let meta = shared.meta.clone();
    blocking(move || meta.apply_batch(meta_batch).map_err(LogError::from)).await?;
    shared.db.flush_async().await?;
    // Readers see no record from here on: everything up to `revision` is "compacted", and
    // nothing above it is visible until appended anew.
    shared.floor.store(revision, Ordering::Release);
    shared.head.store(revision, Ordering::Release);
    shared.snapshot_revision.store(revision, Ordering::Release);
    let shared_for_delete = Arc::clone(shared);
    let removed = blocking(move || delete_all_events(&shared_for_delete)).await?;
    let meta = shared.meta.clone();
    blocking(move || {
        meta.remove(META_RESET_PENDING)?;
        Ok(())
    })
    .await?;
    shared.db.flush_async().await?;
    shared.head_tx.send_replace(revision);
    info!(
        revision,
        previous_head,
        removed,
        snapshot_bytes = bytes.len(),
        elapsed_ms = started.elapsed().as_millis() as u64,
        "event log reset to a snapshot"
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;
    use crate::LogConfig;
    use crate::store::revision_key;

    /// A crash after a reset stored its snapshot but before it removed the old records: the
    /// next open must finish the reset, not resurrect the old records.
    #[test]
    fn an_interrupted_reset_is_finished_at_open() {
        let dir = tempfile::tempdir().unwrap();
        {
            let shared = Shared::open(LogConfig::new(dir.path())).unwrap();
            for rev in 1..=20u64 {
                shared
                    .events
                    .insert(revision_key(rev), b"old".to_vec())
                    .unwrap();
            }
            // What `reset` makes durable in its first step.
            shared
                .meta
                .insert(META_SNAPSHOT, encode_snapshot(7, b"new state"))
                .unwrap();
            shared
                .meta
                .insert(META_LAST_REVISION, &7u64.to_be_bytes()[..])
                .unwrap();
            shared.meta.insert(META_RESET_PENDING, &[1u8][..]).unwrap();
            shared.db.flush().unwrap();
        }
        let shared = Shared::open(LogConfig::new(dir.path())).unwrap();
        assert_eq!(shared.head(), 7);
        assert_eq!(shared.first_retained(), 8);
        assert_eq!(shared.events.len(), 0);
        assert!(shared.meta.get(META_RESET_PENDING).unwrap().is_none());
        assert_eq!(
            shared.read_snapshot().unwrap(),
            Some((7, b"new state".to_vec()))
        );
    }
}
