//! Upstream server health (consecutive failures, growing backoff) and the order in which a
//! query tries the servers.

use std::sync::atomic::{AtomicU32, AtomicU64, Ordering};
use std::time::Duration;

/// Consecutive failures after which a server is marked down.
const FAILURES_BEFORE_DOWN: u32 = 3;
/// First backoff of a down server; doubles with every further failure.
const BACKOFF_BASE: Duration = Duration::from_millis(500);
/// Longest backoff.
const BACKOFF_MAX: Duration = Duration::from_secs(30);

/// A server's health: consecutive failures and, once down, until when it is skipped.
#[derive(Default)]
pub(super) struct Health {
    failures: AtomicU32,
    /// Microseconds since the resolver's epoch; 0 = up.
    down_until: AtomicU64,
}

impl Health {
    pub(super) fn is_up(&self, now: u64) -> bool {
        now >= self.down_until.load(Ordering::Relaxed)
    }

    pub(super) fn success(&self) {
        // Loads first: the usual case writes nothing, so a busy server's line stays shared.
        if self.failures.load(Ordering::Relaxed) != 0 {
            self.failures.store(0, Ordering::Relaxed);
        }
        if self.down_until.load(Ordering::Relaxed) != 0 {
            self.down_until.store(0, Ordering::Relaxed);
        }
    }

    pub(super) fn failure(&self, now: u64) {
        let failures = self
            .failures
            .fetch_add(1, Ordering::Relaxed)
            .saturating_add(1);
        if failures >= FAILURES_BEFORE_DOWN {
            let doublings = (failures - FAILURES_BEFORE_DOWN).min(16);
            let backoff = BACKOFF_BASE
                .saturating_mul(1u32 << doublings)
                .min(BACKOFF_MAX);
            let backoff = u64::try_from(backoff.as_micros()).unwrap_or(u64::MAX);
            self.down_until
                .store(now.saturating_add(backoff).max(1), Ordering::Relaxed);
        }
    }
}

const INLINE: usize = 8;

/// A fixed-capacity index list, so the usual query allocates nothing for server order.
#[derive(Default)]
pub(super) struct Order {
    inline: [usize; INLINE],
    len: usize,
    spill: Vec<usize>,
}

impl Order {
    pub fn push(&mut self, i: usize) {
        if self.len < INLINE {
            self.inline[self.len] = i;
        } else {
            self.spill.push(i);
        }
        self.len += 1;
    }

    pub fn len(&self) -> usize {
        self.len
    }

    pub fn get(&self, i: usize) -> usize {
        if i < INLINE {
            self.inline[i]
        } else {
            self.spill[i - INLINE]
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn health_goes_down_after_three_failures_and_backs_off() {
        let h = Health::default();
        h.failure(1_000);
        h.failure(1_000);
        assert!(h.is_up(1_000));
        h.failure(1_000);
        assert!(!h.is_up(1_000));
        assert!(h.is_up(1_000 + 500_000));
        h.failure(600_000);
        assert!(!h.is_up(600_000 + 999_999));
        assert!(h.is_up(600_000 + 1_000_000));
        h.success();
        assert!(h.is_up(0));
        for _ in 0..100 {
            h.failure(0);
        }
        assert!(h.is_up(30_000_000));
    }
}
