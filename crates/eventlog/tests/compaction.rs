#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::Path;

use dnsfence_eventlog::{EventLog, LogConfig, LogError, Snapshot};

fn config(dir: &Path, retention: u64) -> LogConfig {
    LogConfig::new(dir).with_retention(retention)
}

async fn append_n(log: &EventLog, n: u64) {
    for i in 0..n {
        log.append(vec![format!("e{i}").into_bytes()])
            .await
            .unwrap();
    }
}

async fn reopen(log: EventLog, dir: &Path, retention: u64) -> EventLog {
    log.close().await.unwrap();
    drop(log);
    EventLog::open(config(dir, retention)).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_keeps_retention_and_reports_compacted_reads() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(config(dir.path(), 10)).unwrap();
    append_n(&log, 100).await;

    let removed = log.compact(60, b"state@60".to_vec()).await.unwrap();
    assert_eq!(removed, 50, "revisions 1..=50 are below 60 - retention");
    assert_eq!(log.first_retained(), 51);
    assert_eq!(log.head(), 100);
    assert_eq!(
        log.snapshot().unwrap(),
        Some(Snapshot {
            revision: 60,
            bytes: b"state@60".to_vec()
        })
    );

    match log.read_from(50, 10) {
        Err(LogError::Compacted {
            requested: 50,
            first_retained: 51,
        }) => {}
        other => panic!("expected Compacted, got {other:?}"),
    }
    assert!(matches!(
        log.read_from(0, 10),
        Err(LogError::Compacted { .. })
    ));
    let kept = log.read_from(51, 1000).unwrap();
    assert_eq!(kept.len(), 50);
    assert_eq!(kept[0].revision, 51);
    assert_eq!(kept[0].bytes, b"e50");

    let mut replay = log.replay_after(0);
    assert!(matches!(
        replay.next(),
        Some(Err(LogError::Compacted {
            first_retained: 51,
            ..
        }))
    ));
    assert!(replay.next().is_none());
    // The iterator shares the database; release it so the directory can be reopened below.
    drop(replay);
    assert_eq!(log.replay_after(50).count(), 50);

    assert_eq!(
        log.append(vec![b"after".to_vec()]).await.unwrap(),
        101..=101
    );

    // Going back to an older snapshot is refused; compacting again at the same point is a no-op.
    assert!(matches!(
        log.compact(59, vec![]).await,
        Err(LogError::SnapshotRegression {
            requested: 59,
            current: 60
        })
    ));
    assert_eq!(log.compact(60, b"state@60".to_vec()).await.unwrap(), 0);

    let log = reopen(log, dir.path(), 10).await;
    assert_eq!(log.head(), 101);
    assert_eq!(log.first_retained(), 51);
    assert_eq!(log.snapshot().unwrap().unwrap().revision, 60);
    assert_eq!(log.append(vec![b"x".to_vec()]).await.unwrap(), 102..=102);

    // Retention larger than the snapshot revision removes nothing.
    let log = reopen(log, dir.path(), 1_000).await;
    assert_eq!(log.compact(102, b"s".to_vec()).await.unwrap(), 0);
    assert_eq!(log.first_retained(), 51);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn revisions_continue_after_compacting_everything() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(config(dir.path(), 0)).unwrap();
    append_n(&log, 20).await;

    assert_eq!(log.compact(20, b"all".to_vec()).await.unwrap(), 20);
    assert_eq!(log.head(), 20);
    assert_eq!(log.first_retained(), 21, "nothing retained: head + 1");
    assert!(log.read_from(21, 10).unwrap().is_empty());
    assert_eq!(log.replay_after(20).count(), 0);
    assert!(matches!(
        log.read_from(20, 10),
        Err(LogError::Compacted { .. })
    ));

    // The events tree is empty now; the revision must still come back after a restart.
    let log = reopen(log, dir.path(), 0).await;
    assert_eq!(log.head(), 20);
    assert_eq!(log.first_retained(), 21);
    assert_eq!(log.append(vec![b"x".to_vec()]).await.unwrap(), 21..=21);
    assert_eq!(log.first_retained(), 21);
    assert_eq!(log.read_from(21, 10).unwrap()[0].bytes, b"x");

    assert_eq!(log.compact(21, b"all2".to_vec()).await.unwrap(), 1);
    let log = reopen(log, dir.path(), 0).await;
    assert_eq!(log.head(), 21);
    assert_eq!(log.append(vec![b"y".to_vec()]).await.unwrap(), 22..=22);
    assert_eq!(log.snapshot().unwrap().unwrap().bytes, b"all2");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn compaction_runs_alongside_appends_and_readers() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(config(dir.path(), 1_000)).unwrap();
    let batch: Vec<Vec<u8>> = (0..1_000).map(|i| vec![(i % 251) as u8; 64]).collect();
    for _ in 0..30 {
        log.append(batch.clone()).await.unwrap();
    }
    assert_eq!(log.head(), 30_000);

    let writer = tokio::spawn({
        let log = log.clone();
        async move {
            let mut last = 0;
            for i in 0..200u32 {
                let r = log.append(vec![i.to_be_bytes().to_vec()]).await.unwrap();
                assert!(*r.start() > last);
                last = *r.end();
            }
        }
    });
    let reader = tokio::task::spawn_blocking({
        let log = log.clone();
        move || {
            let mut compacted = 0;
            for from in (1..30_000).step_by(997) {
                match log.read_from(from, 500) {
                    Ok(records) => {
                        for (i, r) in records.iter().enumerate() {
                            assert_eq!(r.revision, from + i as u64, "gap in read");
                        }
                    }
                    Err(LogError::Compacted { .. }) => compacted += 1,
                    Err(e) => panic!("unexpected read error {e}"),
                }
            }
            compacted
        }
    });

    let removed = log.compact(30_000, b"snap".to_vec()).await.unwrap();
    assert_eq!(removed, 29_000);
    writer.await.unwrap();
    reader.await.unwrap();

    assert_eq!(log.first_retained(), 29_001);
    assert_eq!(log.head(), 30_200);
    let rest: Vec<_> = log.replay_after(29_000).collect::<Result<_, _>>().unwrap();
    assert_eq!(rest.len(), 1_200);
    assert!(rest.windows(2).all(|w| w[1].revision == w[0].revision + 1));
    log.close().await.unwrap();
}
