//! What a replica of another log needs: appends at given revisions, and resetting the whole
//! log to a snapshot at a given revision (higher or lower than its head), durably.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use dnsfence_eventlog::{EventLog, LogConfig, LogError, Record, Snapshot};

fn recs(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn revs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.revision).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn enqueue_at_writes_only_at_the_revision_asked_for() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let range = log
        .enqueue_at(1, recs(&["a", "b"]))
        .await
        .unwrap()
        .await
        .unwrap();
    assert_eq!(range, 1..=2);

    // A gap (3 is next) and a repeat are both refused, and leave nothing behind.
    for wrong in [5, 2] {
        let err = log
            .enqueue_at(wrong, recs(&["x"]))
            .await
            .unwrap()
            .await
            .unwrap_err();
        match err {
            LogError::RevisionMismatch { requested, next } => {
                assert_eq!((requested, next), (wrong, 3));
            }
            other => panic!("expected RevisionMismatch, got {other:?}"),
        }
    }
    assert_eq!(log.head(), 2);
    assert_eq!(revs(&log.read_from(0, 10).unwrap()), vec![1, 2]);

    // Refused and accepted appends queued together: only the refused one is left out.
    let ok = log.enqueue_at(3, recs(&["c"])).await.unwrap();
    let refused = log.enqueue_at(3, recs(&["dup"])).await.unwrap();
    let plain = log.enqueue(recs(&["d"])).await.unwrap();
    assert_eq!(ok.await.unwrap(), 3..=3);
    assert!(matches!(
        refused.await,
        Err(LogError::RevisionMismatch {
            requested: 3,
            next: 4
        })
    ));
    assert_eq!(plain.await.unwrap(), 4..=4);
    let all = log.read_from(0, 10).unwrap();
    assert_eq!(revs(&all), vec![1, 2, 3, 4]);
    assert_eq!(all[3].bytes, b"d");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_forward_drops_records_and_continues_after_the_snapshot() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    log.append(recs(&["a", "b", "c"])).await.unwrap();
    let mut head = log.subscribe();

    log.reset(1_000, b"state at 1000".to_vec()).await.unwrap();
    assert_eq!(log.head(), 1_000);
    assert_eq!(*head.borrow_and_update(), 1_000);
    assert_eq!(log.first_retained(), 1_001);
    assert_eq!(log.snapshot_revision(), 1_000);
    assert!(matches!(
        log.read_from(2, 10),
        Err(LogError::Compacted {
            first_retained: 1_001,
            ..
        })
    ));
    assert_eq!(
        log.snapshot().unwrap(),
        Some(Snapshot {
            revision: 1_000,
            bytes: b"state at 1000".to_vec()
        })
    );
    assert_eq!(log.append(recs(&["d"])).await.unwrap(), 1_001..=1_001);
    assert_eq!(
        log.enqueue_at(1_002, recs(&["e"]))
            .await
            .unwrap()
            .await
            .unwrap(),
        1_002..=1_002
    );
    log.close().await.unwrap();
    drop(log);

    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(log.head(), 1_002);
    assert_eq!(log.snapshot().unwrap().unwrap().revision, 1_000);
    let after: Vec<Record> = log.replay_after(1_000).collect::<Result<_, _>>().unwrap();
    assert_eq!(revs(&after), vec![1_001, 1_002]);
    assert_eq!(after[0].bytes, b"d");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reset_backwards_forgets_a_diverged_tail() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path()).with_retention(2)).unwrap();
    log.append(recs(&["1", "2", "3", "4", "5", "6"]))
        .await
        .unwrap();
    log.compact(5, b"old snapshot".to_vec()).await.unwrap();

    // Another log's state at 3: our records 4..6 never happened there.
    log.reset(3, b"theirs at 3".to_vec()).await.unwrap();
    assert_eq!(log.head(), 3);
    assert!(log.read_from(4, 10).unwrap().is_empty());
    assert_eq!(log.append(recs(&["their 4"])).await.unwrap(), 4..=4);
    assert_eq!(log.read_from(4, 10).unwrap()[0].bytes, b"their 4");
    // Compaction keeps working on the new numbering.
    log.append(recs(&["their 5"])).await.unwrap();
    log.compact(5, b"theirs at 5".to_vec()).await.unwrap();
    log.close().await.unwrap();
    drop(log);

    let log = EventLog::open(LogConfig::new(dir.path()).with_retention(2)).unwrap();
    assert_eq!(log.head(), 5);
    assert_eq!(log.snapshot().unwrap().unwrap().bytes, b"theirs at 5");
    let kept = log.read_from(4, 10).unwrap();
    assert_eq!(revs(&kept), vec![4, 5]);
    assert_eq!(kept[1].bytes, b"their 5");
    assert_eq!(log.append(recs(&["7"])).await.unwrap(), 6..=6);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn appends_queued_before_a_reset_are_committed_before_it() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let before = log.enqueue(recs(&["a"])).await.unwrap();
    let reset = {
        let log = log.clone();
        tokio::spawn(async move { log.reset(10, b"s".to_vec()).await })
    };
    assert_eq!(before.await.unwrap(), 1..=1);
    reset.await.unwrap().unwrap();
    assert_eq!(log.head(), 10);
    assert_eq!(log.append(recs(&["b"])).await.unwrap(), 11..=11);
    log.close().await.unwrap();
}
