//! Watch streams: resuming, snapshots after compaction, many subscribers, a stalled
//! subscriber, and the derived view filtered by node.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use common::*;
use dnsfence_api::store::v1 as pb;
use pb::event::Payload;
use pb::watch_response::Kind;
use tempfile::TempDir;
use tokio::sync::watch as signal;
use tonic::{Code, Streaming};

/// Reads events until one with revision `>= target` arrived, where `target` becomes known
/// (Some) later; returns every event and how many `caught_up` markers came.
async fn read_until_target(
    mut stream: Streaming<pb::WatchResponse>,
    mut target: signal::Receiver<Option<u64>>,
) -> anyhow::Result<(Vec<pb::Event>, Vec<u64>)> {
    let mut events: Vec<pb::Event> = Vec::new();
    let mut caught_up = Vec::new();
    loop {
        let last = events.last().map_or(0, |e| e.revision);
        if let Some(t) = *target.borrow_and_update()
            && last >= t
        {
            return Ok((events, caught_up));
        }
        tokio::select! {
            kind = next(&mut stream) => match kind? {
                Kind::Event(e) => events.push(e),
                Kind::CaughtUp(r) => caught_up.push(r),
                Kind::Snapshot(s) => anyhow::bail!("unexpected snapshot at {}", s.revision),
            },
            changed = target.changed() => changed?,
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn resume_replays_exactly_the_missed_events_then_goes_live() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    apply_seed(&mut client).await.unwrap();
    for n in 0..8 {
        let labels = if n % 2 == 0 {
            labels(&[("run", "nginx")])
        } else {
            Default::default()
        };
        add_pod(
            &mut client,
            "default",
            &format!("pod-{n}"),
            labels,
            &ip_of(n),
            "n1",
        )
        .await;
    }
    let head = status(&mut client).await.unwrap().revision;
    assert!(head >= 10, "head {head}");

    let mut full_stream = watch(&mut client, watch_request(0)).await.unwrap();
    let full = read_until_caught_up(&mut full_stream).await.unwrap();
    drop(full_stream);
    assert_eq!(full.caught_up, head);
    assert_consecutive(&full.events, 1);

    let from = head / 2;
    let mut stream = watch(&mut client, watch_request(from)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    assert!(replay.snapshot.is_empty());
    assert_eq!(replay.caught_up, head);
    assert_consecutive(&replay.events, from + 1);
    assert_eq!(replay.events, full.events[from as usize..].to_vec());

    // Live: what is written now arrives on the same stream, in order, and nothing else.
    let r1 = add_pod(
        &mut client,
        "default",
        "late",
        labels(&[("run", "nginx")]),
        "10.9.9.9",
        "n1",
    )
    .await;
    let r2 = client
        .apply(apply_request(vec![manifest(
            "np-live",
            &network_policy("np-live", "live"),
        )]))
        .await
        .unwrap()
        .into_inner()
        .revision;
    let mut live = Vec::new();
    while live.last().is_none_or(|e: &pb::Event| e.revision < r2) {
        match next(&mut stream).await.unwrap() {
            Kind::Event(e) => live.push(e),
            other => panic!("after caught_up only events come, got {other:?}"),
        }
    }
    assert_consecutive(&live, head + 1);
    assert_eq!(live.last().unwrap().revision, r2);
    assert_eq!(payload_name(&live[0]), "WorkloadUpserted");
    assert!(live.iter().any(|e| e.revision == r1));
    assert_eq!(applied_name(&live[(r1 - head) as usize]), Some("np-live"));

    // Already at the head: caught up at once, nothing replayed.
    let head = r2;
    let mut stream = watch(&mut client, watch_request(head)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    assert!(replay.events.is_empty() && replay.snapshot.is_empty());
    assert_eq!(replay.caught_up, head);
    drop(stream);

    // Ahead of this store (a consumer of another store's log): a snapshot, not silence.
    let mut stream = watch(&mut client, watch_request(head + 1_000))
        .await
        .unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    assert!(
        replay
            .snapshot
            .last()
            .is_some_and(|s| s.last && s.revision == head)
    );
    assert!(replay.events.is_empty());
    assert_eq!(replay.caught_up, head);
    drop(stream);

    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_revision_resumes_from_a_snapshot() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &["--compact-every", "50", "--retention", "10"])
        .await
        .unwrap();
    let mut client = store.client().await.unwrap();
    apply_seed(&mut client).await.unwrap();
    // 1,100 workloads in batches of 10: more than 200 events, and more items than fit in one
    // snapshot part.
    for batch in 0..110 {
        let workloads = (0..10)
            .map(|i| {
                let n = batch * 10 + i;
                let labels = if n % 3 == 0 {
                    labels(&[("run", "nginx")])
                } else {
                    labels(&[("app", &format!("a{}", n % 7))])
                };
                workload("default", &format!("pod-{n}"), labels, &ip_of(n), "n1")
            })
            .collect();
        upsert(&mut client, workloads).await.unwrap();
    }
    let head = status(&mut client).await.unwrap().revision;
    assert!(head > 200, "head {head}");
    let s = wait_status(&mut client, "a snapshot and compaction", |s| {
        s.snapshot_revision > 0 && s.first_retained > 1
    })
    .await
    .unwrap();
    assert!(s.first_retained <= s.snapshot_revision.saturating_sub(10) + 1);

    let mut stream = watch(&mut client, watch_request(1)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    drop(stream);
    assert!(
        replay.snapshot.len() >= 2,
        "{} parts",
        replay.snapshot.len()
    );
    let snapshot_revision = replay.snapshot[0].revision;
    for (i, part) in replay.snapshot.iter().enumerate() {
        assert_eq!(part.revision, snapshot_revision, "part {i}");
        assert_eq!(part.last, i + 1 == replay.snapshot.len(), "part {i}");
    }
    assert_consecutive(&replay.events, snapshot_revision + 1);
    assert_eq!(replay.caught_up, head);
    assert_eq!(
        snapshot_revision + replay.events.len() as u64,
        head,
        "snapshot then events up to the head"
    );

    // The snapshot holds exactly what List shows (nothing writes now, so both are at `head`).
    let (listed_at, listed) = list_all(&mut client).await.unwrap();
    assert_eq!(listed_at, head);
    assert_eq!(snapshot_revision, head);
    let from_snapshot = State::from_snapshot(&replay.snapshot);
    assert_eq!(from_snapshot.workloads.len(), 1_100);
    assert_eq!(from_snapshot.bindings.len(), 1_100);
    assert_eq!(from_snapshot.policies.len(), 2);
    assert!(!from_snapshot.allowlists.is_empty());
    assert_eq!(from_snapshot, listed);

    // A consumer just inside the retained window resumes from events, without a snapshot.
    let s = status(&mut client).await.unwrap();
    let mut stream = watch(&mut client, watch_request(s.first_retained - 1))
        .await
        .unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    drop(stream);
    assert!(replay.snapshot.is_empty());
    assert_consecutive(&replay.events, s.first_retained);
    assert_eq!(replay.caught_up, head);

    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_subscribers_see_the_same_log() {
    const SUBSCRIBERS: usize = 100;
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    apply_seed(&mut client).await.unwrap();
    let (target_tx, target_rx) = signal::channel(None);

    let mut writer_client = store.client().await.unwrap();
    let writer = tokio::spawn(async move {
        for n in 0..40 {
            let name = format!("np-{n}");
            writer_client
                .apply(apply_request(vec![manifest(
                    &name,
                    &network_policy(&name, &format!("a{n}")),
                )]))
                .await
                .unwrap();
            let labels = labels(&[("app", &format!("a{n}"))]);
            add_pod(
                &mut writer_client,
                "default",
                &format!("pod-{n}"),
                labels,
                &ip_of(n),
                "n1",
            )
            .await;
        }
    });

    // Subscribers join while the writer runs, a few connections shared among them.
    let mut channels = Vec::new();
    for _ in 0..4 {
        channels.push(store.client().await.unwrap());
    }
    let mut subscribers = Vec::new();
    for i in 0..SUBSCRIBERS {
        let mut c = channels[i % channels.len()].clone();
        let target = target_rx.clone();
        subscribers.push(tokio::spawn(async move {
            let stream = watch(&mut c, watch_request(0)).await?;
            read_until_target(stream, target).await
        }));
        if i % 10 == 0 {
            tokio::time::sleep(Duration::from_millis(5)).await;
        }
    }

    writer.await.unwrap();
    wait_status(&mut client, "every watcher counted", |s| {
        s.watchers as usize == SUBSCRIBERS
    })
    .await
    .unwrap();
    let head = status(&mut client).await.unwrap().revision;
    target_tx.send_replace(Some(head));

    let mut reference: Option<Vec<pb::Event>> = None;
    for (i, s) in subscribers.into_iter().enumerate() {
        let (events, caught_up) = tokio::time::timeout(PATIENCE, s)
            .await
            .expect("subscriber finishes")
            .unwrap()
            .unwrap();
        assert_consecutive(&events, 1);
        assert_eq!(events.last().unwrap().revision, head, "subscriber {i}");
        assert!(caught_up.len() <= 1, "subscriber {i}: {caught_up:?}");
        assert!(caught_up.iter().all(|r| *r <= head));
        match &reference {
            None => reference = Some(events),
            Some(r) => assert_eq!(&events, r, "subscriber {i} saw a different log"),
        }
    }
    // Subscribers that left are no longer counted.
    wait_status(&mut client, "no watcher left", |s| s.watchers == 0)
        .await
        .unwrap();

    drop((client, channels));
    store.stop().await.unwrap();
}

/// 50 labels of 63 characters: a workload of about 4 KB, still valid for Kubernetes.
fn heavy_labels(n: usize) -> std::collections::BTreeMap<String, String> {
    let mut l = labels(&[("app", "heavy")]);
    for i in 0..50 {
        l.insert(format!("label-{i}"), format!("{n:08}{}", "x".repeat(55)));
    }
    l
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_subscriber_stalls_nobody_and_is_cut_off() {
    const WORKLOADS: usize = 2_000;
    const BATCH: usize = 20;
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &["--watch-stall-timeout", "1s"])
        .await
        .unwrap();
    let mut client = store.client().await.unwrap();
    apply_seed(&mut client).await.unwrap();

    // Each on its own connection: an unread stream holds the connection's flow-control window.
    let mut stalled_client = store.client().await.unwrap();
    let mut stalled = watch(&mut stalled_client, watch_request(0)).await.unwrap();

    let (target_tx, target_rx) = signal::channel(None);
    let mut healthy_client = store.client().await.unwrap();
    let healthy_stream = watch(&mut healthy_client, watch_request(0)).await.unwrap();
    let healthy = tokio::spawn(read_until_target(healthy_stream, target_rx));

    let mut writer = store.client().await.unwrap();
    let mut slowest = Duration::ZERO;
    for batch in 0..WORKLOADS / BATCH {
        let workloads = (0..BATCH)
            .map(|i| {
                let n = batch * BATCH + i;
                workload(
                    "default",
                    &format!("heavy-{n}"),
                    heavy_labels(n),
                    &ip_of(n),
                    "n1",
                )
            })
            .collect();
        let started = Instant::now();
        upsert(&mut writer, workloads).await.unwrap();
        let took = started.elapsed();
        slowest = slowest.max(took);
        assert!(
            took < Duration::from_secs(2),
            "batch {batch}: the write took {took:?} while a subscriber stalled"
        );
    }
    let head = status(&mut client).await.unwrap().revision;
    assert!(head >= 2 * WORKLOADS as u64);
    target_tx.send_replace(Some(head));

    // The other subscriber got everything.
    let (events, _) = tokio::time::timeout(PATIENCE, healthy)
        .await
        .expect("the healthy subscriber finishes")
        .unwrap()
        .unwrap();
    assert_consecutive(&events, 1);
    assert_eq!(events.last().unwrap().revision, head);

    // Past the stall timeout the stalled one is cut off: it gets what was buffered, then
    // RESOURCE_EXHAUSTED, long before the end of the log.
    tokio::time::sleep(Duration::from_millis(1_500)).await;
    let mut received: Vec<pb::Event> = Vec::new();
    let status = loop {
        match tokio::time::timeout(PATIENCE, stalled.message())
            .await
            .expect("the stalled stream ends")
        {
            Ok(Some(m)) => match m.kind.unwrap() {
                Kind::Event(e) => received.push(e),
                Kind::CaughtUp(_) => {}
                Kind::Snapshot(s) => panic!("unexpected snapshot at {}", s.revision),
            },
            Ok(None) => panic!(
                "the stalled stream ended without an error after {} events",
                received.len()
            ),
            Err(status) => break status,
        }
    };
    assert_eq!(status.code(), Code::ResourceExhausted, "{status:?}");
    assert_consecutive(&received, 1);
    let last = received.last().map_or(0, |e| e.revision);
    assert!(
        last < head,
        "the stalled subscriber was not cut off (it got all {head} events)"
    );

    // The resume hint names what it actually has: resuming there loses nothing.
    let hint: u64 = status
        .message()
        .rsplit("from_revision=")
        .next()
        .and_then(|s| s.trim().parse().ok())
        .unwrap_or_else(|| panic!("no resume hint in {:?}", status.message()));
    assert_eq!(
        hint, last,
        "the subscriber received up to {last}; resuming from {hint} would skip revisions"
    );
    let mut resumed = watch(&mut stalled_client, watch_request(hint))
        .await
        .unwrap();
    let first = loop {
        if let Kind::Event(e) = next(&mut resumed).await.unwrap() {
            break e;
        }
    };
    assert_eq!(first.revision, last + 1);
    println!("slowest write while a subscriber stalled: {slowest:?}");

    drop((
        client,
        stalled,
        resumed,
        stalled_client,
        healthy_client,
        writer,
    ));
    store.stop().await.unwrap();
}

fn bound(event: &pb::Event) -> Option<&pb::WorkloadBinding> {
    match &event.payload {
        Some(Payload::WorkloadBound(b)) => Some(b),
        _ => None,
    }
}

fn derived_request(from_revision: u64, node: &str, snapshot: bool) -> pb::WatchRequest {
    pb::WatchRequest {
        from_revision,
        view: pb::View::Derived as i32,
        node: node.to_string(),
        snapshot,
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_derived_view_of_a_node() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    apply_seed(&mut client).await.unwrap();
    client
        .apply(apply_request(vec![manifest(
            "np-web",
            &network_policy("np-web", "web"),
        )]))
        .await
        .unwrap();
    upsert(
        &mut client,
        vec![
            workload(
                "default",
                "nginx",
                labels(&[("run", "nginx")]),
                "10.0.1.1",
                "node-a",
            ),
            workload(
                "default",
                "web-a",
                labels(&[("app", "web")]),
                "10.0.1.2",
                "node-a",
            ),
            workload(
                "default",
                "web-b",
                labels(&[("app", "web")]),
                "10.0.2.2",
                "node-b",
            ),
            workload(
                "default",
                "plain-b",
                Default::default(),
                "10.0.2.3",
                "node-b",
            ),
        ],
    )
    .await
    .unwrap();
    let head = status(&mut client).await.unwrap().revision;

    // Replay: derived events only, and only node-a's bindings.
    let mut stream = watch(&mut client, derived_request(0, "node-a", false))
        .await
        .unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    assert!(replay.snapshot.is_empty());
    assert_eq!(replay.caught_up, head);
    let kinds: BTreeSet<&str> = replay.events.iter().map(payload_name).collect();
    assert!(
        kinds.is_subset(&BTreeSet::from([
            "AllowlistCompiled",
            "AllowlistReleased",
            "WorkloadBound",
            "WorkloadUnbound"
        ])),
        "{kinds:?}"
    );
    assert!(kinds.contains("AllowlistCompiled"), "{kinds:?}");
    let names: BTreeSet<String> = replay
        .events
        .iter()
        .filter_map(bound)
        .map(|b| {
            assert_eq!(b.node, "node-a", "{b:?}");
            b.workload.as_ref().unwrap().name.clone()
        })
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["nginx".to_string(), "web-a".to_string()])
    );
    let revisions: Vec<u64> = replay.events.iter().map(|e| e.revision).collect();
    assert!(revisions.windows(2).all(|w| w[0] < w[1]), "{revisions:?}");

    // Live: a node-b pod is not node-a's business; a node-a pod is.
    add_pod(
        &mut client,
        "default",
        "late-b",
        labels(&[("app", "web")]),
        "10.0.2.9",
        "node-b",
    )
    .await;
    add_pod(
        &mut client,
        "default",
        "late-a",
        labels(&[("app", "web")]),
        "10.0.1.9",
        "node-a",
    )
    .await;
    let b = loop {
        if let Kind::Event(e) = next(&mut stream).await.unwrap()
            && let Some(b) = bound(&e)
        {
            break b.clone();
        }
    };
    assert_eq!(b.workload, Some(key("default", "late-a")));
    assert_eq!(b.node, "node-a");

    // A pod that leaves node-a (recreated on node-b under the same name) must leave node-a's
    // view too: its addresses may not stay bound there.
    let moved_at = add_pod(
        &mut client,
        "default",
        "web-a",
        labels(&[("app", "web")]),
        "10.0.2.7",
        "node-b",
    )
    .await;
    let e = loop {
        if let Kind::Event(e) = next(&mut stream).await.unwrap()
            && matches!(
                e.payload,
                Some(Payload::WorkloadBound(_) | Payload::WorkloadUnbound(_))
            )
        {
            break e;
        }
    };
    assert!(e.revision <= moved_at);
    match e.payload {
        Some(Payload::WorkloadUnbound(k)) => assert_eq!(k, key("default", "web-a")),
        other => panic!("node-a's view was told {other:?} when web-a left node-a"),
    }
    drop(stream);

    // snapshot=true: the derived state of node-a first, then live events.
    let mut stream = watch(&mut client, derived_request(0, "node-a", true))
        .await
        .unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    let head = status(&mut client).await.unwrap().revision;
    assert!(replay.events.is_empty());
    assert_eq!(replay.caught_up, head);
    let last = replay.snapshot.last().expect("a snapshot comes first");
    assert!(last.last);
    assert_eq!(last.revision, head);
    let state = State::from_snapshot(&replay.snapshot);
    assert!(state.policies.is_empty() && state.workloads.is_empty() && state.namespaces.is_empty());
    let names: BTreeSet<String> = state
        .bindings
        .iter()
        .map(|b| {
            assert_eq!(b.node, "node-a");
            b.workload.as_ref().unwrap().name.clone()
        })
        .collect();
    assert_eq!(
        names,
        BTreeSet::from(["late-a".to_string(), "nginx".to_string()])
    );
    // Every allowlist a node-a binding uses is in the snapshot.
    let ids: BTreeSet<&str> = state.allowlists.iter().map(|a| a.id.as_str()).collect();
    for b in &state.bindings {
        assert!(ids.contains(b.allowlist_id.as_str()), "{b:?}");
    }
    drop(stream);

    // The sources view is the other half.
    let mut stream = watch(
        &mut client,
        pb::WatchRequest {
            from_revision: 0,
            view: pb::View::Sources as i32,
            node: String::new(),
            snapshot: false,
        },
    )
    .await
    .unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    let kinds: BTreeSet<&str> = replay.events.iter().map(payload_name).collect();
    // A move is an upsert like any other change: the sources view says what the user said.
    assert_eq!(
        kinds,
        BTreeSet::from(["PolicyApplied", "WorkloadUpserted"]),
        "{kinds:?}"
    );
    let web_a: Vec<&str> = replay
        .events
        .iter()
        .filter(|e| match &e.payload {
            Some(Payload::WorkloadRemoved(k)) => k.name == "web-a",
            Some(Payload::WorkloadUpserted(w)) => w.key.as_ref().unwrap().name == "web-a",
            _ => false,
        })
        .map(payload_name)
        .collect();
    assert_eq!(web_a, vec!["WorkloadUpserted", "WorkloadUpserted"]);
    drop(stream);

    drop(client);
    store.stop().await.unwrap();
}
