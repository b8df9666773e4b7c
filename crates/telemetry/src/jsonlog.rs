//! DNS decision logs (gateway) and flow logs (enforcer): one JSON object per line on stdout,
//! with one schema for both, so one `jq` filter reads either:
//!
//! ```sh
//! jq -c 'select(.verdict == "deny") | {ts, service, pod: "\(.namespace)/\(.pod)", to: (.name // .dst), port, reason, policy}'
//! ```
//!
//! Both are rate-limited: at most `per_second` lines a second are written, the rest are
//! counted (`…_log_lines_dropped_total`), never queued, so a flood of denials costs a counter
//! increment per line, not a write.

use std::io::Write;
use std::net::IpAddr;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use prometheus_client::metrics::counter::Counter;
use serde::Serialize;

/// One decision or flow. Every field is present in every line (`null` where it does not
/// apply), so filters never trip over a missing key.
#[derive(Debug, Clone, Default, Serialize)]
pub struct LogLine {
    /// RFC 3339, UTC, milliseconds.
    pub ts: String,
    /// `resolver-gateway` or `node-enforcer`.
    pub service: &'static str,
    /// `dns` (a query the gateway decided) or `flow` (a packet the datapath decided).
    pub kind: &'static str,
    pub node: Option<String>,
    pub namespace: Option<String>,
    /// The pod's name (without the namespace).
    pub pod: Option<String>,
    /// The pod's address.
    pub src: Option<IpAddr>,
    /// The peer's address (flows).
    pub dst: Option<IpAddr>,
    /// The peer's port (flows).
    pub port: Option<u16>,
    /// `TCP`, `UDP`, `SCTP`, `ICMP`… (for DNS: how the query came).
    pub proto: Option<&'static str>,
    /// `egress` or `ingress`, from the pod's side.
    pub direction: &'static str,
    /// The DNS name asked (dns).
    pub name: Option<String>,
    /// The record type asked (dns).
    pub qtype: Option<String>,
    /// The response code sent (dns).
    pub rcode: Option<String>,
    /// The addresses answered (allowed dns queries).
    pub answers: Option<Vec<IpAddr>>,
    /// `allow`, `deny`, or `audit` (would be denied; passed because the pod is in audit mode).
    pub verdict: &'static str,
    /// Why, in snake_case: `denied`, `allowed`, `search_expansion`, `default_deny`, `spoofed`…
    pub reason: String,
    /// The policy that decided (`ApplicationNetworkPolicy default/nginx-egress`), or the ones
    /// that isolate the pod when nothing allowed it.
    pub policy: Option<String>,
    /// The deciding rule within `policy` (`egress[0]`).
    pub rule: Option<String>,
    /// The compiled allowlist the pod is bound to.
    pub allowlist: Option<String>,
    /// The trace of the query, when it was traced.
    pub trace_id: Option<String>,
}

impl LogLine {
    /// A line stamped now.
    pub fn now(service: &'static str, kind: &'static str) -> LogLine {
        LogLine {
            ts: rfc3339(SystemTime::now()),
            service,
            kind,
            direction: "egress",
            ..LogLine::default()
        }
    }
}

/// A per-second budget of lines, counted in one atomic word.
#[derive(Debug)]
pub struct Budget {
    per_second: u64,
    origin: Instant,
    /// Second (since `origin`) in the high 32 bits, lines admitted in it in the low 32.
    window: AtomicU64,
}

impl Budget {
    /// `per_second` = 0: no limit.
    pub fn new(per_second: u32) -> Budget {
        Budget {
            per_second: u64::from(per_second),
            origin: Instant::now(),
            window: AtomicU64::new(0),
        }
    }

    /// Takes one line of this second's budget.
    pub fn admit(&self) -> bool {
        if self.per_second == 0 {
            return true;
        }
        let second = self.origin.elapsed().as_secs() & 0xffff_ffff;
        let mut current = self.window.load(Ordering::Relaxed);
        loop {
            let (window, used) = (current >> 32, current & 0xffff_ffff);
            let next = if window == second {
                if used >= self.per_second {
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
}

/// A rate-limited JSON-lines log (stdout unless given another writer).
pub struct LineLog {
    budget: Budget,
    written: Counter,
    dropped: Counter,
    out: Mutex<Box<dyn Write + Send>>,
}

impl std::fmt::Debug for LineLog {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LineLog")
            .field("budget", &self.budget)
            .finish_non_exhaustive()
    }
}

impl LineLog {
    /// Lines to stdout, at most `per_second` a second (0: no limit); `written` and `dropped`
    /// count them.
    pub fn stdout(per_second: u32, written: Counter, dropped: Counter) -> LineLog {
        LineLog::to_writer(Box::new(std::io::stdout()), per_second, written, dropped)
    }

    pub fn to_writer(
        out: Box<dyn Write + Send>,
        per_second: u32,
        written: Counter,
        dropped: Counter,
    ) -> LineLog {
        LineLog {
            budget: Budget::new(per_second),
            written,
            dropped,
            out: Mutex::new(out),
        }
    }

    /// May a line be written now? `false` counts it as dropped. Build the line only after a
    /// `true`: what is dropped then costs nothing but this call.
    pub fn admit(&self) -> bool {
        let ok = self.budget.admit();
        if !ok {
            self.dropped.inc();
        }
        ok
    }

    /// Writes an admitted line. A failed write (stdout closed) is counted as dropped.
    pub fn write(&self, line: &LogLine) {
        let Ok(mut text) = serde_json::to_vec(line) else {
            self.dropped.inc();
            return;
        };
        text.push(b'\n');
        let mut out = self.out.lock().unwrap_or_else(|e| e.into_inner());
        if out.write_all(&text).and_then(|()| out.flush()).is_ok() {
            self.written.inc();
        } else {
            self.dropped.inc();
        }
    }
}

/// `2026-11-03T12:34:56.789Z`.
pub fn rfc3339(t: SystemTime) -> String {
    let d = t.duration_since(UNIX_EPOCH).unwrap_or_default();
    let secs = d.as_secs();
    let days = i64::try_from(secs / 86_400).unwrap_or(0);
    let rem = secs % 86_400;
    // civil from days (Howard Hinnant)
    let z = days + 719_468;
    let era = z.div_euclid(146_097);
    let doe = z.rem_euclid(146_097);
    let yoe = (doe - doe / 1460 + doe / 36_524 - doe / 146_096) / 365;
    let doy = doe - (365 * yoe + yoe / 4 - yoe / 100);
    let mp = (5 * doy + 2) / 153;
    let day = doy - (153 * mp + 2) / 5 + 1;
    let month = if mp < 10 { mp + 3 } else { mp - 9 };
    let year = yoe + era * 400 + i64::from(month <= 2);
    format!(
        "{year:04}-{month:02}-{day:02}T{:02}:{:02}:{:02}.{:03}Z",
        rem / 3600,
        rem % 3600 / 60,
        rem % 60,
        d.subsec_millis()
    )
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[test]
    fn dates() {
        assert_eq!(rfc3339(UNIX_EPOCH), "1970-01-01T00:00:00.000Z");
        let t = UNIX_EPOCH + Duration::from_millis(1_709_210_096_123); // 2024-02-29
        assert_eq!(rfc3339(t), "2024-02-29T12:34:56.123Z");
    }

    #[derive(Clone, Default)]
    struct Shared(Arc<Mutex<Vec<u8>>>);

    impl Write for Shared {
        fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
            self.0.lock().unwrap().extend_from_slice(buf);
            Ok(buf.len())
        }
        fn flush(&mut self) -> std::io::Result<()> {
            Ok(())
        }
    }

    #[test]
    fn writes_the_budget_and_counts_the_rest() {
        let sink = Shared::default();
        let (written, dropped) = (Counter::default(), Counter::default());
        let log = LineLog::to_writer(Box::new(sink.clone()), 3, written.clone(), dropped.clone());
        for i in 0..10u16 {
            if log.admit() {
                let mut line = LogLine::now("resolver-gateway", "dns");
                line.port = Some(i);
                line.verdict = "deny";
                log.write(&line);
            }
        }
        assert_eq!((written.get(), dropped.get()), (3, 7));
        let text = String::from_utf8(sink.0.lock().unwrap().clone()).unwrap();
        let lines: Vec<serde_json::Value> = text
            .lines()
            .map(|l| serde_json::from_str(l).unwrap())
            .collect();
        assert_eq!(lines.len(), 3);
        // every field is there, null where it does not apply
        let obj = lines[0].as_object().unwrap();
        for key in ["ts", "pod", "dst", "name", "policy", "rule", "trace_id"] {
            assert!(obj.contains_key(key), "{key} missing in {obj:?}");
        }
        assert!(lines[0]["dst"].is_null());
        assert_eq!(lines[2]["port"], 2);
        assert_eq!(lines[0]["verdict"], "deny");
    }

    #[test]
    fn zero_means_no_limit() {
        let b = Budget::new(0);
        assert!((0..10_000).all(|_| b.admit()));
    }
}
