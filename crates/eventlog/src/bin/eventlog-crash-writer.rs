//! Crash-test child: appends to an event log until it is killed, printing one line per
//! acknowledged (durable) append so the parent can check that nothing acknowledged is lost.
//!
//! Usage: `eventlog-crash-writer DIR RUN`
//!
//! Output lines: `ack FIRST LAST SEQ`, where records FIRST..=LAST carry the payloads
//! `RUN:SEQ+i:i/N` (i = position in the append, N = its size). The payload depends on the
//! record's sequence number, never on the revision, so the parent can tell a record stored
//! under the wrong revision from a correct one; `i/N` lets it verify that unacknowledged
//! appends that survived the crash did so whole.

use std::io::Write;
use std::sync::Arc;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

use dnsfence_eventlog::{EventLog, LogConfig};

/// Concurrent appenders, so crashes also hit multi-caller group commits.
const TASKS: u64 = 4;
const MAX_BATCH: u64 = 50;

type BoxError = Box<dyn std::error::Error + Send + Sync>;

fn main() -> Result<(), BoxError> {
    let mut args = std::env::args().skip(1);
    let (Some(dir), Some(run)) = (args.next(), args.next()) else {
        return Err("usage: eventlog-crash-writer DIR RUN".into());
    };
    let run: u64 = run.parse()?;
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?
        .block_on(write_forever(dir, run))
}

async fn write_forever(dir: String, run: u64) -> Result<(), BoxError> {
    let log = EventLog::open(LogConfig::new(dir))?;
    let seq = Arc::new(AtomicU64::new(0));
    let out = Arc::new(Mutex::new(std::io::stdout()));
    let seed = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0x9e37_79b9)
        ^ run.wrapping_mul(0x2545_f491_4f6c_dd1d);

    let mut tasks = Vec::new();
    for t in 0..TASKS {
        let (log, seq, out) = (log.clone(), Arc::clone(&seq), Arc::clone(&out));
        let rng = (seed ^ (t + 1).wrapping_mul(0x9e37_79b9_7f4a_7c15)) | 1;
        tasks.push(tokio::spawn(append_forever(log, seq, out, rng, run)));
    }
    for task in tasks {
        task.await??;
    }
    Ok(())
}

async fn append_forever(
    log: EventLog,
    seq: Arc<AtomicU64>,
    out: Arc<Mutex<std::io::Stdout>>,
    mut rng: u64,
    run: u64,
) -> Result<(), BoxError> {
    loop {
        let n = 1 + next_random(&mut rng) % MAX_BATCH;
        let first_seq = seq.fetch_add(n, Ordering::Relaxed);
        let records = (0..n)
            .map(|i| format!("{run}:{}:{i}/{n}", first_seq + i).into_bytes())
            .collect();
        let range = log.append(records).await?;
        // One locked write+flush per line: the parent must see every ack that was made, and a
        // line must never be torn by another task's output.
        let mut out = out.lock().map_err(|_| "stdout lock poisoned")?;
        writeln!(out, "ack {} {} {first_seq}", range.start(), range.end())?;
        out.flush()?;
    }
}

fn next_random(state: &mut u64) -> u64 {
    *state ^= *state << 13;
    *state ^= *state >> 7;
    *state ^= *state << 17;
    *state
}
