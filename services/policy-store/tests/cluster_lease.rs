//! Leader election against a mock Kubernetes API: the requests the elector sends for each
//! state of the Lease (missing, ours, another holder's, released, raced) and what it concludes.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kube_mock;

use std::time::Duration;

use dnsfence_policy_store::cluster::lease::{
    Acquired, LeaseElector, REVISION_ANNOTATION, Standing,
};
use http::Method;
use kube_mock::*;
use serde_json::{Value, json};

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/dnsfence/leases/dnsfence-policy-store";
const LEASES: &str = "/apis/coordination.k8s.io/v1/namespaces/dnsfence/leases";

fn lease(holder: Option<&str>, duration: i64, rv: &str, revision: u64, transitions: i64) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "dnsfence-policy-store", "namespace": "dnsfence", "resourceVersion": rv,
                        "annotations": {REVISION_ANNOTATION: revision.to_string()}},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": duration,
                    "renewTime": "2026-11-02T10:00:00.000000Z", "leaseTransitions": transitions}})
}

async fn expect_get(api: &mut MockApi) -> ApiRequest {
    api.expect("GET the Lease", |r| {
        r.method == Method::GET && r.path == LEASE
    })
    .await
}

async fn expect_put(api: &mut MockApi) -> ApiRequest {
    let r = api
        .expect("PUT the Lease", |r| {
            r.method == Method::PUT && r.path == LEASE
        })
        .await;
    assert_eq!(r.content_type.as_deref(), Some("application/json"));
    r
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_missing_lease_is_created_then_renewed_then_released() {
    let (client, mut api) = mock_api();
    let mut elector = LeaseElector::new(
        client,
        "dnsfence",
        "dnsfence-policy-store",
        "store-0",
        Duration::from_secs(15),
    );
    let round = tokio::spawn(async move {
        let first = elector.try_acquire_or_renew(7).await.unwrap();
        let second = elector.try_acquire_or_renew(9).await.unwrap();
        elector.release(12).await.unwrap();
        (first, second)
    });

    expect_get(&mut api).await.not_found();
    let create = api
        .expect("POST a Lease", |r| {
            r.method == Method::POST && r.path == LEASES
        })
        .await;
    let body = create.body.clone().unwrap();
    assert_eq!(body["metadata"]["name"], "dnsfence-policy-store");
    assert_eq!(body["metadata"]["annotations"][REVISION_ANNOTATION], "7");
    assert_eq!(body["spec"]["holderIdentity"], "store-0");
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    assert_eq!(body["spec"]["leaseTransitions"], 0);
    assert!(body["spec"]["renewTime"].is_string() && body["spec"]["acquireTime"].is_string());
    create.respond(201, lease(Some("store-0"), 15, "100", 7, 0));

    // Ours: renewed with the version read (optimistic concurrency) and the new head.
    expect_get(&mut api)
        .await
        .respond(200, lease(Some("store-0"), 15, "100", 7, 0));
    let renew = expect_put(&mut api).await;
    let body = renew.body.clone().unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], "100");
    assert_eq!(body["metadata"]["annotations"][REVISION_ANNOTATION], "9");
    assert_eq!(body["spec"]["holderIdentity"], "store-0");
    assert_eq!(
        body["spec"]["leaseTransitions"], 0,
        "a renewal is no transition"
    );
    assert_ne!(body["spec"]["renewTime"], "2026-11-02T10:00:00.000000Z");
    renew.respond(200, lease(Some("store-0"), 15, "101", 9, 0));

    // Release: no holder, and a 1 s duration so that others need not wait out 15 s.
    expect_get(&mut api)
        .await
        .respond(200, lease(Some("store-0"), 15, "101", 9, 0));
    let release = expect_put(&mut api).await;
    let body = release.body.clone().unwrap();
    assert!(
        body["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null),
        "{body}"
    );
    assert_eq!(body["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(body["metadata"]["annotations"][REVISION_ANNOTATION], "12");
    release.respond(200, lease(None, 1, "102", 12, 0));

    let (first, second) = tokio::time::timeout(PATIENCE, round)
        .await
        .unwrap()
        .unwrap();
    assert_eq!(
        first,
        Standing::Leading {
            acquired: Some(Acquired {
                previous_holder: None,
                previous_revision: 0
            })
        }
    );
    assert_eq!(second, Standing::Leading { acquired: None });
    assert!(api.backlog().is_empty(), "{:?}", api.backlog());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn another_holders_lease_is_taken_only_once_it_stood_still_and_a_lost_race_is_no_win() {
    let (client, mut api) = mock_api();
    let mut elector = LeaseElector::new(
        client,
        "dnsfence",
        "dnsfence-policy-store",
        "store-1",
        Duration::from_secs(15),
    );
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel();
    let rounds = tokio::spawn(async move {
        for _ in 0..5 {
            let standing = elector.try_acquire_or_renew(50).await.unwrap();
            tx.send(standing).unwrap();
        }
    });
    // The Lease says 1 s, so that this test waits little; its own duration is what counts.
    let held = lease(Some("store-0"), 1, "200", 4_000, 3);

    // First sight: the holder may be renewing right now; follow it.
    expect_get(&mut api).await.respond(200, held.clone());
    assert_eq!(
        rx.recv().await.unwrap(),
        Standing::Following {
            holder: Some("store-0".into())
        }
    );

    // Renewed meanwhile (new resourceVersion): the clock starts again; still following.
    let renewed = lease(Some("store-0"), 1, "201", 4_100, 3);
    expect_get(&mut api).await.respond(200, renewed.clone());
    assert_eq!(
        rx.recv().await.unwrap(),
        Standing::Following {
            holder: Some("store-0".into())
        }
    );

    // Unchanged for longer than its duration: take it over. Another replica wins the race.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    expect_get(&mut api).await.respond(200, renewed.clone());
    let take = expect_put(&mut api).await;
    let body = take.body.clone().unwrap();
    assert_eq!(body["metadata"]["resourceVersion"], "201");
    assert_eq!(body["spec"]["holderIdentity"], "store-1");
    assert_eq!(body["spec"]["leaseTransitions"], 4);
    assert_eq!(body["spec"]["leaseDurationSeconds"], 15);
    take.conflict();
    assert_eq!(
        rx.recv().await.unwrap(),
        Standing::Following { holder: None }
    );

    // The winner's Lease: a new version, so no takeover yet.
    let winner = lease(Some("store-2"), 1, "202", 4_100, 4);
    expect_get(&mut api).await.respond(200, winner.clone());
    assert_eq!(
        rx.recv().await.unwrap(),
        Standing::Following {
            holder: Some("store-2".into())
        }
    );

    // The winner dies at once: after its duration, this replica takes over and learns the
    // revision it last published.
    tokio::time::sleep(Duration::from_millis(1_100)).await;
    expect_get(&mut api).await.respond(200, winner);
    let take = expect_put(&mut api).await;
    assert_eq!(
        take.body.as_ref().unwrap()["spec"]["holderIdentity"],
        "store-1"
    );
    take.respond(200, lease(Some("store-1"), 15, "203", 50, 5));
    assert_eq!(
        rx.recv().await.unwrap(),
        Standing::Leading {
            acquired: Some(Acquired {
                previous_holder: Some("store-2".into()),
                previous_revision: 4_100
            })
        }
    );
    tokio::time::timeout(PATIENCE, rounds)
        .await
        .unwrap()
        .unwrap();
    assert!(api.backlog().is_empty(), "{:?}", api.backlog());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_released_lease_is_taken_at_once() {
    let (client, mut api) = mock_api();
    let mut elector = LeaseElector::new(
        client,
        "dnsfence",
        "dnsfence-policy-store",
        "store-1",
        Duration::from_secs(15),
    );
    let round = tokio::spawn(async move { elector.try_acquire_or_renew(3).await.unwrap() });
    expect_get(&mut api)
        .await
        .respond(200, lease(None, 1, "300", 900, 6));
    let take = expect_put(&mut api).await;
    assert_eq!(
        take.body.as_ref().unwrap()["spec"]["holderIdentity"],
        "store-1"
    );
    take.respond(200, lease(Some("store-1"), 15, "301", 3, 7));
    assert_eq!(
        tokio::time::timeout(PATIENCE, round)
            .await
            .unwrap()
            .unwrap(),
        Standing::Leading {
            acquired: Some(Acquired {
                previous_holder: None,
                previous_revision: 900
            })
        }
    );
}
