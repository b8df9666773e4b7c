//! Plain benchmark (no harness): `cargo bench -p dnsfence-eventlog` prints the figures.
//!
//! (a) durable append throughput with 64 concurrent appenders, batches of 1 and of 100;
//! (b) bulk write of 1,000,000 records, then full `replay_after(0)`, warm and after reopen;
//! (c) compaction of that log down to the default retention, with an appender running.

#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use dnsfence_eventlog::{EventLog, LogConfig};

const RECORD_BYTES: usize = 200;
const APPENDERS: usize = 64;
const APPEND_RUN: Duration = Duration::from_secs(5);
const REPLAY_RECORDS: u64 = 1_000_000;

fn payload(i: u64) -> Vec<u8> {
    let mut v = format!("event-{i:012}-").into_bytes();
    v.resize(RECORD_BYTES, b'x');
    v
}

fn main() {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap();
    rt.block_on(async {
        append_throughput(1).await;
        append_throughput(100).await;
        replay_and_compaction().await;
    });
}

async fn append_throughput(batch: usize) {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let stop = Arc::new(AtomicBool::new(false));
    let max_latency_us = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..APPENDERS {
        let (log, stop, max_latency_us) = (log.clone(), stop.clone(), max_latency_us.clone());
        tasks.push(tokio::spawn(async move {
            let mut i = (t as u64) << 40;
            while !stop.load(Ordering::Relaxed) {
                let records = (0..batch)
                    .map(|_| {
                        i += 1;
                        payload(i)
                    })
                    .collect();
                let t0 = Instant::now();
                log.append(records).await.unwrap();
                max_latency_us.fetch_max(t0.elapsed().as_micros() as u64, Ordering::Relaxed);
            }
        }));
    }
    tokio::time::sleep(APPEND_RUN).await;
    stop.store(true, Ordering::Relaxed);
    for t in tasks {
        t.await.unwrap();
    }
    let secs = started.elapsed().as_secs_f64();
    let s = log.stats();
    println!(
        "append  batch={batch:<3} tasks={APPENDERS}: {:>9.0} events/s  {:>8.0} appends/s  \
         {:>6.0} flushes/s  {:>7.1} records/flush  max latency {:.1} ms  ({} events in {secs:.2} s)",
        s.records as f64 / secs,
        s.appends as f64 / secs,
        s.flushes as f64 / secs,
        s.records as f64 / s.flushes.max(1) as f64,
        max_latency_us.load(Ordering::Relaxed) as f64 / 1000.0,
        s.records,
    );
    log.close().await.unwrap();
}

async fn replay_and_compaction() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let started = Instant::now();
    let chunk = 10_000u64;
    for c in 0..REPLAY_RECORDS / chunk {
        let records = (0..chunk).map(|i| payload(c * chunk + i)).collect();
        log.append(records).await.unwrap();
    }
    let write_secs = started.elapsed().as_secs_f64();
    println!(
        "write   {REPLAY_RECORDS} records x {RECORD_BYTES} B in batches of {chunk}: {write_secs:.2} s \
         ({:.0} events/s), size on disk {:.0} MiB",
        REPLAY_RECORDS as f64 / write_secs,
        log.size_on_disk().unwrap() as f64 / (1 << 20) as f64
    );

    let replay = |log: &EventLog, label: &str| {
        let started = Instant::now();
        let mut n = 0u64;
        let mut bytes = 0usize;
        for r in log.replay_after(0) {
            let r = r.unwrap();
            n += 1;
            bytes += r.bytes.len();
        }
        let secs = started.elapsed().as_secs_f64();
        assert_eq!(n, REPLAY_RECORDS);
        println!(
            "replay  {label}: {n} records ({:.0} MiB) in {secs:.3} s ({:.0} records/s)",
            bytes as f64 / (1 << 20) as f64,
            n as f64 / secs
        );
    };
    let replay_log = log.clone();
    tokio::task::spawn_blocking(move || replay(&replay_log, "warm (same process)"))
        .await
        .unwrap();
    log.close().await.unwrap();
    drop(log);

    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let replay_log = log.clone();
    tokio::task::spawn_blocking(move || replay(&replay_log, "after reopen       "))
        .await
        .unwrap();

    // An appender keeps running during compaction to show compaction does not stall writes.
    let stop = Arc::new(AtomicBool::new(false));
    let appender = tokio::spawn({
        let (log, stop) = (log.clone(), stop.clone());
        async move {
            let (mut n, mut worst) = (0u64, Duration::ZERO);
            while !stop.load(Ordering::Relaxed) {
                let t0 = Instant::now();
                log.append(vec![payload(n)]).await.unwrap();
                worst = worst.max(t0.elapsed());
                n += 1;
            }
            (n, worst)
        }
    });
    let size_before = log.size_on_disk().unwrap();
    let started = Instant::now();
    let removed = log.compact(REPLAY_RECORDS, vec![0u8; 4096]).await.unwrap();
    let secs = started.elapsed().as_secs_f64();
    stop.store(true, Ordering::Relaxed);
    let (appended, worst) = appender.await.unwrap();
    println!(
        "compact {removed} records removed (retention {}) in {secs:.2} s ({:.0} records/s); \
         concurrent appender: {appended} appends, worst latency {:.1} ms; \
         size on disk {:.0} -> {:.0} MiB",
        log.config().retention,
        removed as f64 / secs,
        worst.as_secs_f64() * 1000.0,
        size_before as f64 / (1 << 20) as f64,
        log.size_on_disk().unwrap() as f64 / (1 << 20) as f64,
    );
    log.close().await.unwrap();
}
