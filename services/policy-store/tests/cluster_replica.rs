//! Followers: a store that copies another store's log by Watch and serves Watch from its copy
//! (`--follow` in standalone mode; in cluster mode the Lease names the leader). Two real
//! stores on 127.0.0.1.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use std::net::SocketAddr;
use std::path::Path;

use common::*;
use dnsfence_api::Listener;
use dnsfence_api::store::v1 as pb;
use pb::watch_response::Kind;
use tempfile::TempDir;
use tokio::sync::oneshot;
use tokio::task::JoinHandle;
use tonic::Code;

/// A follower run as the binary runs it (`run` with `--follow`).
struct Follower {
    addr: SocketAddr,
    stop: Option<oneshot::Sender<()>>,
    task: JoinHandle<Result<(), dnsfence_policy_store::StoreError>>,
}

impl Follower {
    async fn start(dir: &Path, leader: SocketAddr) -> Follower {
        let leader_url = format!("http://{leader}");
        let config = config(dir, &["--follow", &leader_url]);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (stop, stopped) = oneshot::channel::<()>();
        let task = tokio::spawn(dnsfence_policy_store::run(
            config,
            vec![Listener::Tcp(listener)],
            async {
                let _ = stopped.await;
            },
        ));
        Follower {
            addr,
            stop: Some(stop),
            task,
        }
    }

    async fn client(&self) -> Client {
        connect(self.addr).await.unwrap()
    }

    async fn stop(mut self) {
        if let Some(s) = self.stop.take() {
            let _ = s.send(());
        }
        tokio::time::timeout(PATIENCE, &mut self.task)
            .await
            .expect("the follower stops")
            .unwrap()
            .unwrap();
    }
}

/// Waits until the follower's head is the leader's.
async fn in_sync(follower: &mut Client, leader: &mut Client) -> u64 {
    let head = status(leader).await.unwrap().revision;
    wait_status(follower, "the follower at the leader's head", |s| {
        s.revision == head
    })
    .await
    .unwrap();
    head
}

/// Events of `stream` until one at `target` (or past it) arrived.
async fn events_until(
    stream: &mut tonic::Streaming<pb::WatchResponse>,
    target: u64,
) -> Vec<pb::Event> {
    let mut events: Vec<pb::Event> = Vec::new();
    while events.last().is_none_or(|e| e.revision < target) {
        match next(stream).await.unwrap() {
            Kind::Event(e) => events.push(e),
            Kind::CaughtUp(_) => {}
            Kind::Snapshot(s) => panic!("unexpected snapshot at {}", s.revision),
        }
    }
    events
}

async fn add_policy(client: &mut Client, name: &str, app: &str) -> u64 {
    client
        .apply(apply_request(vec![manifest(
            name,
            &network_policy(name, app),
        )]))
        .await
        .unwrap()
        .into_inner()
        .revision
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_copies_the_leader_serves_watch_and_refuses_writes_naming_it() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let leader = InProcess::start(leader_dir.path(), &[]).await.unwrap();
    let mut lc = leader.client().await.unwrap();
    apply_seed(&mut lc).await.unwrap();
    for n in 0..5 {
        add_pod(
            &mut lc,
            "default",
            &format!("pod-{n}"),
            labels(&[("run", "nginx")]),
            &ip_of(n),
            "n1",
        )
        .await;
    }

    let follower = Follower::start(follower_dir.path(), leader.addr).await;
    let mut fc = follower.client().await;
    let head = in_sync(&mut fc, &mut lc).await;
    assert_eq!(
        list_all(&mut fc).await.unwrap(),
        list_all(&mut lc).await.unwrap()
    );

    // Live: both logs get the same events at the same revisions.
    let mut from_leader = watch(&mut lc, watch_request(head)).await.unwrap();
    let mut from_follower = watch(&mut fc, watch_request(head)).await.unwrap();
    add_pod(
        &mut lc,
        "default",
        "late",
        labels(&[("run", "nginx")]),
        "10.9.9.9",
        "n2",
    )
    .await;
    let target = add_policy(&mut lc, "np-late", "late").await;
    let leader_events = events_until(&mut from_leader, target).await;
    let follower_events = events_until(&mut from_follower, target).await;
    assert_consecutive(&leader_events, head + 1);
    assert_eq!(follower_events, leader_events);
    assert_eq!(
        list_all(&mut fc).await.unwrap(),
        list_all(&mut lc).await.unwrap()
    );

    // Writes go to the leader; the follower says where that is.
    let refused = fc
        .apply(apply_request(vec![manifest(
            "x",
            &network_policy("x", "x"),
        )]))
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition, "{refused:?}");
    assert!(
        refused
            .message()
            .contains(&format!("http://{}", leader.addr)),
        "{}",
        refused.message()
    );
    let refused = fc
        .upsert_workloads(pb::UpsertWorkloadsRequest {
            workloads: vec![nginx_pod()],
        })
        .await
        .unwrap_err();
    assert_eq!(refused.code(), Code::FailedPrecondition);
    let s = status(&mut fc).await.unwrap();
    assert!(!s.writes_enabled);
    assert!(status(&mut lc).await.unwrap().writes_enabled);

    drop((from_leader, from_follower, fc));
    follower.stop().await;
    drop(lc);
    leader.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_follower_reconnects_after_a_leader_restart_and_resumes_without_a_snapshot() {
    let leader_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    let leader = InProcess::start(leader_dir.path(), &[]).await.unwrap();
    let addr = leader.addr;
    let mut lc = leader.client().await.unwrap();
    apply_seed(&mut lc).await.unwrap();

    let follower = Follower::start(follower_dir.path(), addr).await;
    let mut fc = follower.client().await;
    let head = in_sync(&mut fc, &mut lc).await;
    // A consumer of the follower: must see one uninterrupted history across the restart.
    let mut consumer = watch(&mut fc, watch_request(head)).await.unwrap();

    drop(lc);
    leader.stop().await.unwrap();
    let leader = InProcess::start_at(leader_dir.path(), &[], addr)
        .await
        .unwrap();
    let mut lc = leader.client().await.unwrap();
    assert_eq!(status(&mut lc).await.unwrap().revision, head);
    add_pod(
        &mut lc,
        "default",
        "after-restart",
        labels(&[("run", "nginx")]),
        "10.8.8.8",
        "n1",
    )
    .await;
    let target = add_policy(&mut lc, "np-after", "after").await;

    let events = events_until(&mut consumer, target).await;
    assert_consecutive(&events, head + 1);
    assert_eq!(events.last().unwrap().revision, target);
    in_sync(&mut fc, &mut lc).await;
    assert_eq!(
        list_all(&mut fc).await.unwrap(),
        list_all(&mut lc).await.unwrap()
    );

    drop((consumer, fc));
    follower.stop().await;
    drop(lc);
    leader.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_follower_of_another_leader_adopts_its_state_wholesale() {
    let a_dir = TempDir::new().unwrap();
    let b_dir = TempDir::new().unwrap();
    let follower_dir = TempDir::new().unwrap();
    // Leader A has a long history; leader B a short, different one.
    let a = InProcess::start(a_dir.path(), &[]).await.unwrap();
    let mut ac = a.client().await.unwrap();
    apply_seed(&mut ac).await.unwrap();
    for n in 0..20 {
        add_pod(
            &mut ac,
            "default",
            &format!("a-{n}"),
            labels(&[("run", "nginx")]),
            &ip_of(n),
            "n1",
        )
        .await;
    }
    let b = InProcess::start(b_dir.path(), &[]).await.unwrap();
    let mut bc = b.client().await.unwrap();
    add_policy(&mut bc, "np-b", "b").await;
    add_pod(
        &mut bc,
        "default",
        "b-0",
        labels(&[("app", "b")]),
        "10.7.0.1",
        "n9",
    )
    .await;
    let b_head = status(&mut bc).await.unwrap().revision;

    let follower = Follower::start(follower_dir.path(), a.addr).await;
    let mut fc = follower.client().await;
    let a_head = in_sync(&mut fc, &mut ac).await;
    assert!(a_head > b_head);
    drop(fc);
    follower.stop().await;

    // Restarted to follow B: its log (ahead of B's) goes back to B's state and numbering.
    let follower = Follower::start(follower_dir.path(), b.addr).await;
    let mut fc = follower.client().await;
    in_sync(&mut fc, &mut bc).await;
    assert_eq!(
        list_all(&mut fc).await.unwrap(),
        list_all(&mut bc).await.unwrap()
    );
    // A consumer still at A's numbering gets B's state as a snapshot, then B's events.
    let mut consumer = watch(&mut fc, watch_request(a_head)).await.unwrap();
    let replay = read_until_caught_up(&mut consumer).await.unwrap();
    assert_eq!(replay.snapshot.last().unwrap().revision, b_head);
    let target = add_policy(&mut bc, "np-b2", "b2").await;
    let events = events_until(&mut consumer, target).await;
    assert_consecutive(&events, b_head + 1);

    drop((consumer, fc, ac, bc));
    follower.stop().await;
    a.stop().await.unwrap();
    b.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_leader_moves_its_numbering_on_and_its_watchers_resume_from_a_snapshot() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    apply_seed(&mut client).await.unwrap();
    let head = status(&mut client).await.unwrap().revision;
    let (_, before) = list_all(&mut client).await.unwrap();
    let mut consumer = watch(&mut client, watch_request(head)).await.unwrap();
    read_until_caught_up(&mut consumer).await.unwrap();

    let target = head + dnsfence_policy_store::cluster::TAKEOVER_REVISION_GAP;
    assert_eq!(store.store().advance_to(target).await.unwrap(), target);
    // The open watch ends: what it would resume into is not this log's history.
    let ended = loop {
        match tokio::time::timeout(PATIENCE, consumer.message())
            .await
            .unwrap()
        {
            Ok(Some(_)) => {}
            Ok(None) => panic!("the watch ended without a status"),
            Err(status) => break status,
        }
    };
    assert_eq!(ended.code(), Code::Unavailable, "{ended:?}");
    // Same state, new numbering; a consumer at the old head gets a snapshot.
    let (at, after) = list_all(&mut client).await.unwrap();
    assert_eq!((at, after), (target, before));
    let mut consumer = watch(&mut client, watch_request(head)).await.unwrap();
    let replay = read_until_caught_up(&mut consumer).await.unwrap();
    assert_eq!(replay.snapshot.last().unwrap().revision, target);
    let written = add_policy(&mut client, "np-new", "new").await;
    assert!(written > target);
    let events = events_until(&mut consumer, written).await;
    assert_consecutive(&events, target + 1);
    drop((consumer, client));
    store.stop().await.unwrap();

    // And it survives a restart.
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    assert_eq!(status(&mut client).await.unwrap().revision, written);
    drop(client);
    store.stop().await.unwrap();
}
