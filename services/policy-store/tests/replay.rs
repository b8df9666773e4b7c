//! Restarts: the state rebuilt from the log (and from a snapshot after compaction) is the
//! state that was served before, and stopping is not held up by open watch streams.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::time::{Duration, Instant};

use common::*;
use dnsfence_api::store::v1 as pb;
use tempfile::TempDir;
use tonic::Code;

/// Writes of every kind: policies applied, changed and deleted, namespaces, workloads upserted,
/// moved and removed. `round` keeps names distinct between calls.
async fn write_everything(client: &mut Client, round: usize) {
    apply_seed(client).await.unwrap();
    client
        .upsert_namespaces(pb::UpsertNamespacesRequest {
            namespaces: vec![pb::Namespace {
                name: format!("team-{round}"),
                labels: labels(&[("tier", "web")]),
            }],
        })
        .await
        .unwrap();
    for n in 0..5 {
        let name = format!("np-{round}-{n}");
        client
            .apply(apply_request(vec![manifest(
                &name,
                &network_policy(&name, &format!("a{n}")),
            )]))
            .await
            .unwrap();
    }
    let mut workloads = Vec::new();
    for n in 0..30 {
        let i = round * 100 + n;
        let labels = match n % 3 {
            0 => labels(&[("run", "nginx")]),
            1 => labels(&[("app", &format!("a{}", n % 5))]),
            _ => Default::default(),
        };
        let namespace = if n % 4 == 0 {
            format!("team-{round}")
        } else {
            "default".to_string()
        };
        workloads.push(workload(
            &namespace,
            &format!("pod-{i}"),
            labels,
            &ip_of(i),
            &format!("node-{}", n % 3),
        ));
    }
    upsert(client, workloads.clone()).await.unwrap();
    // Changed: a policy reconfigured, one deleted, a pod moved, one removed.
    let changed = network_policy(&format!("np-{round}-0"), "a0").replace("443", "8443");
    client
        .apply(apply_request(vec![manifest("changed", &changed)]))
        .await
        .unwrap();
    client
        .delete(pb::DeleteRequest {
            references: vec![np_ref(&format!("np-{round}-1"))],
            ..Default::default()
        })
        .await
        .unwrap();
    let mut moved = workloads[1].clone();
    moved.node = "node-9".into();
    upsert(client, vec![moved]).await.unwrap();
    client
        .remove_workloads(pb::RemoveWorkloadsRequest {
            workloads: vec![workloads[2].key.clone().unwrap()],
        })
        .await
        .unwrap();
}

async fn explain_nginx(client: &mut Client) -> pb::ExplainResponse {
    client
        .explain(pb::ExplainRequest {
            pod: Some(pb::explain_request::Pod::Workload(key("default", "pod-3"))),
            destination: "api.github.com".into(),
            port: None,
            default_policy: 0,
        })
        .await
        .unwrap()
        .into_inner()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_graceful_restart_preserves_the_state() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    write_everything(&mut client, 0).await;
    let (revision, before) = list_all(&mut client).await.unwrap();
    let status_before = status(&mut client).await.unwrap();
    let explained = explain_nginx(&mut client).await;
    assert_eq!(explained.verdict, pb::Verdict::Allow as i32);
    assert!(!before.allowlists.is_empty() && !before.bindings.is_empty());
    assert!(!before.namespaces.is_empty());
    drop(client);
    store.stop().await.unwrap();

    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    let (revision_after, after) = list_all(&mut client).await.unwrap();
    assert_eq!(revision_after, revision);
    assert_eq!(after, before);
    let status_after = status(&mut client).await.unwrap();
    assert_eq!(status_after.policies, status_before.policies);
    assert_eq!(status_after.workloads, status_before.workloads);
    assert_eq!(status_after.allowlists, status_before.allowlists);
    assert_eq!(explain_nginx(&mut client).await, explained);

    // And it goes on from there.
    let r = add_pod(
        &mut client,
        "default",
        "new",
        Default::default(),
        "10.8.8.8",
        "",
    )
    .await;
    assert!(r > revision);
    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_after_compaction_preserves_the_state() {
    let args = ["--compact-every", "50", "--retention", "10"];
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &args).await.unwrap();
    let mut client = store.client().await.unwrap();
    let mut round = 0;
    loop {
        write_everything(&mut client, round).await;
        round += 1;
        let s = status(&mut client).await.unwrap();
        if s.revision > 200 && s.snapshot_revision > 0 && s.first_retained > 1 {
            break;
        }
        assert!(round < 50, "no compaction after {round} rounds: {s:?}");
    }
    let s = wait_status(&mut client, "the latest compaction", |s| {
        s.snapshot_revision > 0 && s.first_retained > 1
    })
    .await
    .unwrap();
    // Some events after the snapshot, so the restart replays snapshot + tail.
    let tail = add_pod(
        &mut client,
        "default",
        "tail",
        labels(&[("run", "nginx")]),
        "10.7.7.7",
        "",
    )
    .await;
    assert!(tail > s.snapshot_revision);
    let (revision, before) = list_all(&mut client).await.unwrap();
    let explained = explain_nginx(&mut client).await;
    drop(client);
    store.stop().await.unwrap();

    let store = InProcess::start(dir.path(), &args).await.unwrap();
    let mut client = store.client().await.unwrap();
    let (revision_after, after) = list_all(&mut client).await.unwrap();
    assert_eq!(revision_after, revision);
    assert_eq!(after, before);
    assert_eq!(explain_nginx(&mut client).await, explained);
    let s2 = status(&mut client).await.unwrap();
    assert!(s2.snapshot_revision >= s.snapshot_revision, "{s2:?}");
    assert!(s2.first_retained > 1);

    // Watching from the start gets the state as a snapshot, equal to what List shows.
    let mut stream = watch(&mut client, watch_request(0)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    drop(stream);
    assert_eq!(replay.caught_up, revision);
    assert!(replay.snapshot.last().unwrap().last);
    assert_eq!(replay.snapshot.last().unwrap().revision, revision);
    assert!(replay.events.is_empty());
    assert_eq!(State::from_snapshot(&replay.snapshot), after);

    // No revision is handed out twice.
    let r = add_pod(
        &mut client,
        "default",
        "after",
        Default::default(),
        "10.7.7.8",
        "",
    )
    .await;
    assert!(r > revision);
    let mut stream = watch(&mut client, watch_request(revision)).await.unwrap();
    let replay = read_until_caught_up(&mut stream).await.unwrap();
    drop(stream);
    assert_eq!(replay.events.first().unwrap().revision, revision + 1);
    assert_eq!(payload_name(&replay.events[0]), "WorkloadUpserted");

    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn stopping_ends_open_watch_streams() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    apply_seed(&mut client).await.unwrap();
    // Consumers tailing the store, as gateways and enforcers do.
    let mut tails = Vec::new();
    for from in [0, 1] {
        let mut stream = watch(&mut client, watch_request(from)).await.unwrap();
        read_until_caught_up(&mut stream).await.unwrap();
        tails.push(stream);
    }

    let started = Instant::now();
    tokio::time::timeout(Duration::from_secs(10), store.stop())
        .await
        .expect("the store stops within 10 s while watchers are connected")
        .unwrap();
    assert!(started.elapsed() < Duration::from_secs(10));
    for mut stream in tails {
        let end = tokio::time::timeout(PATIENCE, stream.message())
            .await
            .expect("the watch stream ends");
        match end {
            Err(status) => assert_eq!(status.code(), Code::Unavailable, "{status:?}"),
            Ok(other) => panic!("a watch stream ended with {other:?} instead of UNAVAILABLE"),
        }
    }
    drop(client);

    // The data directory is free again.
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    assert_eq!(status(&mut client).await.unwrap().policies, 2);
    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_stops_the_binary_with_watchers_connected() {
    let dir = TempDir::new().unwrap();
    let data = dir.path().join("data");
    let (mut child, mut client) = ChildStore::start(&data, &dir.path().join("1.log"), &[])
        .await
        .unwrap();
    apply_seed(&mut client).await.unwrap();
    let mut stream = watch(&mut client, watch_request(0)).await.unwrap();
    read_until_caught_up(&mut stream).await.unwrap();
    child.terminate().await.unwrap();
    drop((stream, client));

    let (_child, mut client) = ChildStore::start(&data, &dir.path().join("2.log"), &[])
        .await
        .unwrap();
    let s = status(&mut client).await.unwrap();
    assert_eq!(s.policies, 2);
}
