//! Reads of the events tree. Both paths stop at the durable head and verify that revisions are
//! contiguous, so a concurrent compaction surfaces as `Compacted` instead of a silent gap.

use std::sync::Arc;

use crate::store::{Shared, decode_u64, revision_key};
use crate::{LogError, Record};

/// Error for a read starting at `requested`, given that the first record it needs is `start`.
fn compacted_or_ok(shared: &Shared, requested: u64, start: u64) -> Result<(), LogError> {
    let first_retained = shared.first_retained();
    if start < first_retained {
        return Err(LogError::Compacted {
            requested,
            first_retained,
        });
    }
    Ok(())
}

fn decode(key: &[u8], value: &[u8]) -> Result<Record, LogError> {
    Ok(Record {
        revision: decode_u64(key, "event key")?,
        bytes: value.to_vec(),
    })
}

/// A record was missing between two revisions that should both exist: either compaction
/// overtook the reader or the tree is damaged.
fn gap_error(shared: &Shared, requested: u64, expected: u64, found: Option<u64>) -> LogError {
    match compacted_or_ok(shared, requested, expected) {
        Err(e) => e,
        Ok(()) => LogError::Corrupt {
            detail: match found {
                Some(found) => format!("expected revision {expected}, found {found}"),
                None => format!("revision {expected} is missing"),
            },
        },
    }
}

pub(crate) fn read_from(shared: &Shared, from: u64, max: usize) -> Result<Vec<Record>, LogError> {
    // Revision 0 never exists, so "from 0" means "from the beginning".
    let start = from.max(1);
    compacted_or_ok(shared, from, start)?;
    let head = shared.head();
    if max == 0 || start > head {
        return Ok(Vec::new());
    }
    let end = head.min(start.saturating_add(max as u64 - 1));
    let capacity = usize::try_from(end - start + 1).unwrap_or(max).min(max);
    let mut out = Vec::with_capacity(capacity.min(4096));
    let mut expected = start;
    for item in shared.events.range(revision_key(start)..=revision_key(end)) {
        let (k, v) = item?;
        let record = decode(&k, &v)?;
        if record.revision != expected {
            return Err(gap_error(shared, from, expected, Some(record.revision)));
        }
        expected += 1;
        out.push(record);
    }
    if expected != end + 1 {
        return Err(gap_error(shared, from, expected, None));
    }
    // Compaction may have started after the first check and removed records we already
    // copied; the copies are still correct, but report consistently with a reader that lost
    // the race slightly later.
    compacted_or_ok(shared, from, start)?;
    Ok(out)
}

/// Iterator returned by `EventLog::replay_after`.
pub(crate) struct Replay {
    shared: Arc<Shared>,
    requested: u64,
    iter: Option<sled::Iter>,
    expected: u64,
    end: u64,
    pending_error: Option<LogError>,
}

impl Replay {
    pub(crate) fn new(shared: Arc<Shared>, after: u64) -> Self {
        let start = after.saturating_add(1);
        let end = shared.head();
        let mut replay = Self {
            requested: start,
            iter: None,
            expected: start,
            end,
            pending_error: None,
            shared,
        };
        if let Err(e) = compacted_or_ok(&replay.shared, start, start) {
            replay.pending_error = Some(e);
        } else if start <= end {
            replay.iter = Some(
                replay
                    .shared
                    .events
                    .range(revision_key(start)..=revision_key(end)),
            );
        }
        replay
    }

    fn fail(&mut self, err: LogError) -> Option<Result<Record, LogError>> {
        self.iter = None;
        Some(Err(err))
    }
}

impl Iterator for Replay {
    type Item = Result<Record, LogError>;

    fn next(&mut self) -> Option<Self::Item> {
        if let Some(e) = self.pending_error.take() {
            return Some(Err(e));
        }
        let iter = self.iter.as_mut()?;
        match iter.next() {
            Some(Ok((k, v))) => {
                let record = match decode(&k, &v) {
                    Ok(r) => r,
                    Err(e) => return self.fail(e),
                };
                if record.revision != self.expected {
                    let err = gap_error(
                        &self.shared,
                        self.requested,
                        self.expected,
                        Some(record.revision),
                    );
                    return self.fail(err);
                }
                self.expected += 1;
                Some(Ok(record))
            }
            Some(Err(e)) => self.fail(e.into()),
            None => {
                self.iter = None;
                if self.expected <= self.end {
                    let err = gap_error(&self.shared, self.requested, self.expected, None);
                    return Some(Err(err));
                }
                None
            }
        }
    }
}

impl std::fmt::Debug for Replay {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Replay")
            .field("next_revision", &self.expected)
            .field("end", &self.end)
            .field("finished", &self.iter.is_none())
            .finish()
    }
}
