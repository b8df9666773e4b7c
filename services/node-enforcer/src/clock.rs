//! CLOCK_BOOTTIME, the clock grant deadlines are written in: the program compares them
//! with `bpf_ktime_get_boot_ns()`, which keeps counting through suspend. (`Instant` is
//! CLOCK_MONOTONIC and must not be used for map values.)

use std::time::Duration;

use nix::time::{ClockId, clock_gettime};

use crate::{Error, Result};

/// Now, in CLOCK_BOOTTIME nanoseconds.
pub fn boot_time_ns() -> Result<u64> {
    let ts = clock_gettime(ClockId::CLOCK_BOOTTIME).map_err(|e| Error::sys("clock_gettime", e))?;
    let secs = u64::try_from(ts.tv_sec()).unwrap_or(0);
    let nanos = u64::try_from(ts.tv_nsec()).unwrap_or(0);
    Ok(secs.saturating_mul(1_000_000_000).saturating_add(nanos))
}

/// The CLOCK_BOOTTIME deadline `ttl` from now (a grant's lifetime as sent on the wire).
pub fn deadline_after(ttl: Duration) -> Result<u64> {
    let ttl_ns = u64::try_from(ttl.as_nanos()).unwrap_or(u64::MAX);
    Ok(boot_time_ns()?.saturating_add(ttl_ns))
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn boot_time_advances_and_deadlines_add() {
        let a = boot_time_ns().unwrap();
        let d = deadline_after(Duration::from_secs(5)).unwrap();
        assert!(d >= a + 5_000_000_000);
        assert!(boot_time_ns().unwrap() >= a);
    }
}
