#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::collections::HashMap;

use dnsfence_eventlog::{EventLog, LogConfig};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_single_appends_are_group_committed() {
    const TASKS: usize = 50;
    const PER_TASK: usize = 200;
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();

    let mut handles = Vec::new();
    for t in 0..TASKS {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::with_capacity(PER_TASK);
            for i in 0..PER_TASK {
                let payload = format!("t{t}-{i}").into_bytes();
                let range = log.append(vec![payload.clone()]).await.unwrap();
                assert_eq!(range.start(), range.end(), "one record, one revision");
                got.push((*range.start(), payload));
            }
            got
        }));
    }
    let mut by_revision = HashMap::new();
    for h in handles {
        let got = h.await.unwrap();
        // A task's own appends are sequential, so its revisions must increase.
        assert!(got.windows(2).all(|w| w[0].0 < w[1].0));
        for (rev, payload) in got {
            assert!(
                by_revision.insert(rev, payload).is_none(),
                "revision {rev} given twice"
            );
        }
    }

    let total = (TASKS * PER_TASK) as u64;
    assert_eq!(by_revision.len() as u64, total);
    assert_eq!(log.head(), total);
    let mut revisions: Vec<u64> = by_revision.keys().copied().collect();
    revisions.sort_unstable();
    assert_eq!(
        revisions,
        (1..=total).collect::<Vec<_>>(),
        "gap or stray revision"
    );

    // What each caller was told is what is stored.
    for record in log.read_from(1, usize::MAX).unwrap() {
        assert_eq!(by_revision[&record.revision], record.bytes);
    }

    let stats = log.stats();
    assert_eq!(stats.appends, total);
    assert_eq!(stats.records, total);
    assert!(
        stats.flushes < stats.appends,
        "no batching: {} flushes for {} appends",
        stats.flushes,
        stats.appends
    );
    eprintln!("group commit: {stats:?}");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_sizes_with_small_batch_cap_stay_atomic_and_ordered() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path()).with_max_batch_records(16)).unwrap();
    let mut handles = Vec::new();
    for t in 0..8usize {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            let mut got = Vec::new();
            for i in 0..40usize {
                let n = 1 + (t * 7 + i * 13) % 23;
                let records: Vec<Vec<u8>> = (0..n)
                    .map(|j| format!("{t}/{i}/{j}").into_bytes())
                    .collect();
                let range = log.append(records.clone()).await.unwrap();
                assert_eq!(range.clone().count(), n);
                got.push((range, records));
            }
            got
        }));
    }
    let mut expected = HashMap::new();
    for h in handles {
        for (range, records) in h.await.unwrap() {
            for (rev, bytes) in range.zip(records) {
                assert!(expected.insert(rev, bytes).is_none());
            }
        }
    }
    let stored = log.read_from(1, usize::MAX).unwrap();
    assert_eq!(stored.len(), expected.len());
    assert_eq!(log.head(), expected.len() as u64);
    for (i, r) in stored.iter().enumerate() {
        assert_eq!(r.revision, i as u64 + 1);
        assert_eq!(expected[&r.revision], r.bytes);
    }
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn close_commits_already_queued_appends() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let mut handles = Vec::new();
    for i in 0..100u32 {
        let log = log.clone();
        handles.push(tokio::spawn(async move {
            log.append(vec![i.to_be_bytes().to_vec()]).await
        }));
    }
    // Let the appends reach the queue before closing.
    tokio::task::yield_now().await;
    log.close().await.unwrap();
    let mut ok = 0u64;
    for h in handles {
        match h.await.unwrap() {
            Ok(_) => ok += 1,
            Err(dnsfence_eventlog::LogError::Closed) => {}
            Err(e) => panic!("unexpected error {e}"),
        }
    }
    // Every append acknowledged before close is durable and nothing else is visible.
    assert_eq!(log.head(), ok);
    drop(log);
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(log.head(), ok);
    assert_eq!(log.read_from(1, 1000).unwrap().len() as u64, ok);
    log.close().await.unwrap();
}
