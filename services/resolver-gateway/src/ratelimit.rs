//! A per-second budget for log lines on the query path: a flood of denied queries must not
//! turn into a flood of log lines (and CPU), but the first ones of every second are logged,
//! with a count of what was left out.

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

#[derive(Debug)]
pub struct LogLimiter {
    per_second: u64,
    origin: Instant,
    /// Second (since `origin`) in the high 32 bits, lines logged in it in the low 32.
    window: AtomicU64,
    suppressed: AtomicU64,
}

impl LogLimiter {
    pub fn new(per_second: u64) -> LogLimiter {
        LogLimiter {
            per_second,
            origin: Instant::now(),
            window: AtomicU64::new(0),
            suppressed: AtomicU64::new(0),
        }
    }

    /// May the caller log a line now?
    pub fn allow(&self) -> bool {
        let second = self.origin.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (win, used) = (current >> 32, current & 0xffff_ffff);
            let next = if win == second {
                if used >= self.per_second {
                    self.suppressed.fetch_add(1, Ordering::Relaxed);
                    return false;
                }
                current + 1
            } else {
                (second << 32) | 1
            };
            match self.window.compare_exchange_weak(
                current,
                next,
                Ordering::Relaxed,
                Ordering::Relaxed,
            ) {
                Ok(_) => return true,
                Err(actual) => current = actual,
            }
        }
    }

    /// Lines left out since the last call.
    pub fn take_suppressed(&self) -> u64 {
        self.suppressed.swap(0, Ordering::Relaxed)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn allows_the_budget_then_counts_the_rest() {
        let limiter = LogLimiter::new(3);
        let allowed = (0..10).filter(|_| limiter.allow()).count();
        assert_eq!(allowed, 3);
        assert_eq!(limiter.take_suppressed(), 7);
        assert_eq!(limiter.take_suppressed(), 0);
    }
}
