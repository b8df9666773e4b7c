#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::time::Duration;

use dnsfence_eventlog::{EventLog, LogConfig, LogError, Record};

fn recs(items: &[&str]) -> Vec<Vec<u8>> {
    items.iter().map(|s| s.as_bytes().to_vec()).collect()
}

fn revs(records: &[Record]) -> Vec<u64> {
    records.iter().map(|r| r.revision).collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_read_and_resume_after_reopen() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(log.head(), 0);
    assert_eq!(log.first_retained(), 1);
    assert!(log.read_from(0, 10).unwrap().is_empty());
    assert!(log.snapshot().unwrap().is_none());

    assert_eq!(log.append(recs(&["a"])).await.unwrap(), 1..=1);
    assert_eq!(log.append(recs(&["b", "c", "d"])).await.unwrap(), 2..=4);
    assert_eq!(log.append(recs(&["e"])).await.unwrap(), 5..=5);
    assert_eq!(log.head(), 5);

    let mid = log.read_from(3, 10).unwrap();
    assert_eq!(revs(&mid), vec![3, 4, 5]);
    assert_eq!(mid[0].bytes, b"c");
    assert_eq!(mid[2].bytes, b"e");
    assert_eq!(revs(&log.read_from(2, 2).unwrap()), vec![2, 3]);
    assert!(log.read_from(6, 10).unwrap().is_empty());
    assert!(log.read_from(3, 0).unwrap().is_empty());
    let all = log.read_from(0, 100).unwrap();
    assert_eq!(revs(&all), vec![1, 2, 3, 4, 5]);
    let replayed: Vec<Record> = log.replay_after(2).collect::<Result<_, _>>().unwrap();
    assert_eq!(replayed, all[2..].to_vec());
    assert_eq!(log.replay_after(5).count(), 0);

    let stats = log.stats();
    assert_eq!((stats.appends, stats.records), (3, 5));
    assert!(log.size_on_disk().unwrap() > 0);

    log.close().await.unwrap();
    drop(log);

    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(log.head(), 5);
    assert_eq!(log.first_retained(), 1);
    assert_eq!(log.read_from(0, 100).unwrap(), all);
    assert_eq!(log.append(recs(&["f", "g"])).await.unwrap(), 6..=7);
    assert_eq!(log.read_from(6, 10).unwrap()[1].bytes, b"g");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn append_larger_than_max_batch_stays_one_unit() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path()).with_max_batch_records(10)).unwrap();
    assert_eq!(log.append(recs(&["x"])).await.unwrap(), 1..=1);
    let big: Vec<Vec<u8>> = (0..25).map(|i| format!("r{i}").into_bytes()).collect();
    assert_eq!(log.append(big).await.unwrap(), 2..=26);
    assert_eq!(log.append(recs(&["y"])).await.unwrap(), 27..=27);
    let got = log.read_from(2, 100).unwrap();
    assert_eq!(got.len(), 26);
    assert_eq!(got[24].bytes, b"r24");
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn subscribers_see_head_move() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let mut rx = log.subscribe();
    assert_eq!(*rx.borrow_and_update(), 0);

    // A tailing consumer: wait for the head, then pull what is new.
    let tail = tokio::spawn({
        let log = log.clone();
        let mut rx = log.subscribe();
        async move {
            let mut seen = Vec::new();
            let mut next = 1;
            while seen.len() < 6 {
                rx.changed().await.unwrap();
                for r in log.read_from(next, 100).unwrap() {
                    next = r.revision + 1;
                    seen.push(r.bytes);
                }
            }
            seen
        }
    });

    log.append(recs(&["one"])).await.unwrap();
    tokio::time::timeout(Duration::from_secs(5), rx.changed())
        .await
        .expect("head change not seen")
        .unwrap();
    assert_eq!(*rx.borrow_and_update(), 1);

    log.append(recs(&["two", "three"])).await.unwrap();
    log.append(recs(&["four", "five", "six"])).await.unwrap();
    let head = tokio::time::timeout(Duration::from_secs(5), rx.wait_for(|h| *h >= 6))
        .await
        .expect("head 6 not seen")
        .map(|h| *h)
        .unwrap();
    assert_eq!(head, 6);

    let seen = tokio::time::timeout(Duration::from_secs(5), tail)
        .await
        .expect("tailing consumer stuck")
        .unwrap();
    assert_eq!(seen, recs(&["one", "two", "three", "four", "five", "six"]));

    // A subscriber created after reopen starts at the recovered head.
    log.close().await.unwrap();
    drop(log);
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    assert_eq!(*log.subscribe().borrow(), 6);
    log.close().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn error_paths() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path().join("log"))).unwrap();

    assert!(matches!(
        log.append(Vec::new()).await,
        Err(LogError::EmptyAppend)
    ));
    assert_eq!(log.head(), 0, "an empty append must not consume a revision");

    // The directory is locked while open: a second open is an error, not a panic.
    let second = EventLog::open(LogConfig::new(dir.path().join("log")));
    assert!(matches!(second, Err(LogError::Open { .. })), "{second:?}");

    log.append(recs(&["a"])).await.unwrap();
    assert!(matches!(
        log.compact(2, b"s".to_vec()).await,
        Err(LogError::SnapshotAhead {
            requested: 2,
            head: 1
        })
    ));

    log.close().await.unwrap();
    log.close().await.unwrap();
    assert!(matches!(
        log.append(recs(&["b"])).await,
        Err(LogError::Closed)
    ));
    // Reads still work on a closed log.
    assert_eq!(log.read_from(1, 10).unwrap().len(), 1);

    let file = dir.path().join("plain-file");
    std::fs::write(&file, b"not a database").unwrap();
    let err = EventLog::open(LogConfig::new(&file)).unwrap_err();
    assert!(matches!(err, LogError::NotADirectory { .. }), "{err:?}");
    assert!(err.to_string().contains("plain-file"), "{err}");

    let err =
        EventLog::open(LogConfig::new(dir.path().join("z")).with_max_batch_records(0)).unwrap_err();
    assert!(matches!(err, LogError::InvalidConfig { .. }), "{err:?}");
}

#[test]
fn open_outside_runtime_is_an_error() {
    let dir = tempfile::tempdir().unwrap();
    let err = EventLog::open(LogConfig::new(dir.path())).unwrap_err();
    assert!(matches!(err, LogError::NoRuntime), "{err:?}");
}

#[tokio::test(flavor = "current_thread")]
async fn works_on_a_current_thread_runtime() {
    let dir = tempfile::tempdir().unwrap();
    let log = EventLog::open(LogConfig::new(dir.path())).unwrap();
    let a = log.clone();
    let b = log.clone();
    let (ra, rb) = tokio::join!(a.append(recs(&["a"])), b.append(recs(&["b", "c"])));
    let (ra, rb) = (ra.unwrap(), rb.unwrap());
    assert_eq!(ra.clone().count() + rb.clone().count(), 3);
    assert_ne!(ra.start(), rb.start());
    assert_eq!(log.head(), 3);
    log.close().await.unwrap();
}

#[test]
fn default_config() {
    let c = LogConfig::new("/x");
    assert_eq!(c.retention, 10_000);
    assert_eq!(c.max_batch_records, 65_536);
}
