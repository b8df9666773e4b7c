//! The single group-commit writer task.
//!
//! Every append goes through one task so revisions are assigned in exactly one place and each
//! fsync is shared by every caller that queued up while the previous one was running: under
//! load the number of flushes stays roughly constant while the records per flush grow.

use std::ops::RangeInclusive;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use tokio::sync::{mpsc, oneshot, watch};
use tracing::{debug, error};

use crate::LogError;
use crate::store::{Shared, blocking, revision_key};

pub(crate) type AppendReply = oneshot::Sender<Result<RangeInclusive<u64>, LogError>>;

pub(crate) struct Pending {
    pub records: Vec<Vec<u8>>,
    pub reply: AppendReply,
    /// The revision the first record must get (a replica copying another log); the append
    /// is refused, and nothing written, when the log would assign another.
    pub at: Option<u64>,
}

/// Replaces the whole log by a snapshot at `revision`.
pub(crate) struct Reset {
    pub revision: u64,
    pub bytes: Vec<u8>,
    pub reply: oneshot::Sender<Result<(), LogError>>,
}

pub(crate) enum Msg {
    Append(Pending),
    /// Handled in queue order, between appends, so revisions after it continue from it.
    Reset(Reset),
    /// Stop accepting appends, commit what is already queued, flush, exit.
    Close,
}

/// Requests (not records) that may wait in the queue; beyond this, `append` callers wait for
/// room, which is the back-pressure that keeps a stalled disk from growing memory unbounded.
pub(crate) const QUEUE_CAPACITY: usize = 4096;

pub(crate) async fn run(
    mut rx: mpsc::Receiver<Msg>,
    shared: Arc<Shared>,
    stopped: watch::Sender<bool>,
) {
    let max = shared.config.max_batch_records;
    let mut next = shared.head().saturating_add(1);
    let mut carry: Option<Msg> = None;
    loop {
        let msg = match carry.take() {
            Some(m) => m,
            None => match rx.recv().await {
                Some(m) => m,
                None => break,
            },
        };
        let first = match msg {
            Msg::Append(p) => p,
            Msg::Reset(reset) => {
                let result = crate::snapshot::reset(&shared, reset.revision, reset.bytes).await;
                if result.is_ok() {
                    next = reset.revision.saturating_add(1);
                }
                let _ = reset.reply.send(result);
                continue;
            }
            Msg::Close => {
                // Already-queued appends are still delivered by recv(); new sends fail.
                rx.close();
                continue;
            }
        };
        let mut records = first.records.len();
        let mut group = vec![first];
        while records < max {
            match rx.try_recv() {
                Ok(Msg::Append(p)) => {
                    if records + p.records.len() > max {
                        carry = Some(Msg::Append(p));
                        break;
                    }
                    records += p.records.len();
                    group.push(p);
                }
                // A reset is a barrier: what was queued before it is committed first.
                Ok(reset @ Msg::Reset(_)) => {
                    carry = Some(reset);
                    break;
                }
                Ok(Msg::Close) => rx.close(),
                Err(_) => break,
            }
        }
        commit(&shared, &mut next, group).await;
    }

    if shared.poison.get().is_none()
        && let Err(e) = shared.db.flush_async().await
    {
        poison(&shared, &LogError::from(e));
    }
    debug!(head = shared.head(), "event log writer stopped");
    // The sled file lock is released only when the last Db handle goes, so drop ours before
    // announcing the stop: a caller that awaited close() may immediately reopen the directory.
    drop(shared);
    stopped.send_replace(true);
}

async fn commit(shared: &Arc<Shared>, next: &mut u64, group: Vec<Pending>) {
    if let Err(e) = shared.check_poison() {
        let reason = e.to_string();
        for p in group {
            let _ = p.reply.send(Err(LogError::Poisoned {
                reason: reason.clone(),
            }));
        }
        return;
    }
    let first_rev = *next;
    let mut batch = sled::Batch::default();
    let mut answers = Vec::with_capacity(group.len());
    let mut rev = first_rev;
    let mut records = 0usize;
    for p in group {
        if let Some(at) = p.at
            && at != rev
        {
            let _ = p.reply.send(Err(LogError::RevisionMismatch {
                requested: at,
                next: rev,
            }));
            continue;
        }
        let Some(end) = rev.checked_add(p.records.len() as u64) else {
            fail(
                shared,
                vec![p],
                LogError::Corrupt {
                    detail: "revision space exhausted".to_owned(),
                },
            );
            return;
        };
        let start = rev;
        records += p.records.len();
        for record in p.records {
            batch.insert(&revision_key(rev)[..], record);
            rev += 1;
        }
        debug_assert_eq!(rev, end);
        answers.push((p.reply, start..=rev - 1));
    }
    if answers.is_empty() {
        return;
    }
    let end = rev;
    let last_rev = end - 1;

    let events = shared.events.clone();
    let result = match blocking(move || events.apply_batch(batch).map_err(LogError::from)).await {
        Ok(()) => shared
            .db
            .flush_async()
            .await
            .map(drop)
            .map_err(LogError::from),
        Err(e) => Err(e),
    };

    match result {
        Ok(()) => {
            *next = end;
            // Publish before answering so a caller that got its range back already sees
            // head() >= its last revision.
            shared.head.store(last_rev, Ordering::Release);
            let c = &shared.counters;
            c.appends.fetch_add(answers.len() as u64, Ordering::Relaxed);
            c.records.fetch_add(records as u64, Ordering::Relaxed);
            c.flushes.fetch_add(1, Ordering::Relaxed);
            shared.head_tx.send_replace(last_rev);
            debug!(
                first = first_rev,
                last = last_rev,
                appends = answers.len(),
                "group committed"
            );
            for (reply, range) in answers {
                // A caller that gave up waiting still had its records committed; nothing to do.
                let _ = reply.send(Ok(range));
            }
        }
        Err(e) => {
            poison(shared, &e);
            let reason = poison_reason(shared);
            for (reply, _) in answers {
                let _ = reply.send(Err(LogError::Poisoned {
                    reason: reason.clone(),
                }));
            }
        }
    }
}

fn fail(shared: &Shared, group: Vec<Pending>, err: LogError) {
    poison(shared, &err);
    let reason = poison_reason(shared);
    for p in group {
        let _ = p.reply.send(Err(LogError::Poisoned {
            reason: reason.clone(),
        }));
    }
}

fn poison(shared: &Shared, err: &LogError) {
    error!(error = %err, "event log write failed; refusing further appends");
    let _ = shared.poison.set(err.to_string());
}

fn poison_reason(shared: &Shared) -> String {
    shared.poison.get().cloned().unwrap_or_default()
}
