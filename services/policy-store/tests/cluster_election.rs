//! One replica's whole life in cluster mode, against a mock Kubernetes API and a real leader
//! store on 127.0.0.1: it follows the Lease holder (copying its log), takes the Lease over once
//! the holder stops renewing, moves its log's numbering past the old leader's, runs the
//! controller (which reconciles the copied state against the cluster), and releases the
//! Lease when it stops.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;
mod kube_mock;

use std::sync::Arc;

use clap::Parser;
use dnsfence_policy::model::EventPayload;
use dnsfence_policy_store::cluster::{self, ClusterSettings, TAKEOVER_REVISION_GAP};
use dnsfence_policy_store::metrics::StoreMetrics;
use dnsfence_policy_store::role::Role;
use dnsfence_policy_store::{Config, Store};
use http::Method;
use kube_mock::{MockApi, World, events_after, initial_sync, mock_api, wait_for_state};
use serde_json::{Value, json};
use tempfile::TempDir;
use tokio::sync::watch;

const LEASE: &str = "/apis/coordination.k8s.io/v1/namespaces/dnsfence/leases/dnsfence-policy-store";

fn lease(holder: Option<&str>, rv: &str, revision: u64) -> Value {
    json!({"apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
           "metadata": {"name": "dnsfence-policy-store", "namespace": "dnsfence", "resourceVersion": rv,
                        "annotations": {"dnsfence.io/store-revision": revision.to_string()}},
           "spec": {"holderIdentity": holder, "leaseDurationSeconds": 3,
                    "renewTime": "2026-11-02T10:00:00.000000Z", "leaseTransitions": 1}})
}

/// Answers Lease reads with `current` until a write comes; returns the write.
async fn serve_lease_until_write(api: &mut MockApi, current: &Value) -> kube_mock::ApiRequest {
    loop {
        let r = api.expect("a Lease request", |r| r.path == LEASE).await;
        if r.method == Method::GET {
            r.respond(200, current.clone());
        } else {
            return r;
        }
    }
}

async fn wait_ready(readiness: &watch::Receiver<Option<cluster::Readiness>>, what: &str) {
    let mut readiness = readiness.clone();
    let ready = async move {
        loop {
            if readiness
                .borrow_and_update()
                .as_ref()
                .is_some_and(|r| r.ready())
            {
                return;
            }
            // Readiness is read through several channels; look again shortly.
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
    };
    tokio::time::timeout(kube_mock::PATIENCE, ready)
        .await
        .unwrap_or_else(|_| panic!("not ready: {what}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn follow_take_over_reconcile_and_release() {
    // The current leader: a store with some history, reached as `http://{holder}`.
    let leader_dir = TempDir::new().unwrap();
    let leader = common::InProcess::start(leader_dir.path(), &[])
        .await
        .unwrap();
    let mut lc = leader.client().await.unwrap();
    common::apply_seed(&mut lc).await.unwrap();
    common::upsert(&mut lc, vec![common::nginx_pod()])
        .await
        .unwrap();
    let leader_head = common::status(&mut lc).await.unwrap().revision;
    let holder = leader.addr.to_string();

    let dir = TempDir::new().unwrap();
    let config = Config::parse_from([
        "dnsfence-policy-store",
        "--data-dir",
        &dir.path().display().to_string(),
        "--mode",
        "cluster",
        "--lease-namespace",
        "dnsfence",
        "--identity",
        "store-1",
        "--lease-duration",
        "3s",
        "--peer-address-template",
        "http://{holder}",
        "--status-interval",
        "10ms",
    ]);
    config.validate().unwrap();
    let settings = ClusterSettings::from_config(&config).unwrap();
    let store = Store::open(config).await.unwrap();
    let (client, mut api) = mock_api();
    let (stop, stopped) = watch::channel(false);
    let (readiness_tx, readiness) = watch::channel(None);
    let metrics = Arc::new(StoreMetrics::default());
    let running = tokio::spawn(cluster::run(
        Arc::clone(&store),
        client,
        settings,
        Arc::clone(&metrics),
        stopped,
        readiness_tx,
    ));

    // Follower: the Lease names the leader; its log is copied.
    let held = lease(Some(&holder), "10", leader_head);
    api.expect("the first Lease read", |r| {
        r.method == Method::GET && r.path == LEASE
    })
    .await
    .respond(200, held.clone());
    wait_for_state(&store, "the leader's log copied", |s| {
        s.revision == leader_head
    })
    .await;
    assert_eq!(
        store.role(),
        Role::Follower {
            leader: Some(dnsfence_policy_store::role::Peer {
                identity: holder.clone(),
                address: format!("http://{holder}"),
            })
        }
    );
    wait_ready(&readiness, "the follower caught up").await;
    let copied = store.read().await.snapshot();
    assert_eq!(copied.policies.len(), 2);
    assert_eq!(copied.workloads.len(), 1);

    // The leader stops renewing: after the Lease's duration, this replica takes it over.
    drop(lc);
    leader.stop().await.unwrap();
    let take = serve_lease_until_write(&mut api, &held).await;
    assert_eq!(take.method, Method::PUT);
    let body = take.body.clone().unwrap();
    assert_eq!(body["spec"]["holderIdentity"], "store-1");
    assert_eq!(body["metadata"]["resourceVersion"], "10");
    take.respond(200, lease(Some("store-1"), "11", leader_head));

    // Leader: the controller lists the cluster, which has none of the copied objects.
    let _feeds = initial_sync(&mut api, World::default()).await;
    let moved = leader_head + TAKEOVER_REVISION_GAP;
    wait_for_state(&store, "the copied state reconciled away", |s| {
        s.records.is_empty() && s.compiler.workload_count() == 0
    })
    .await;
    assert_eq!(store.role(), Role::Leader);
    let events = events_after(&store, moved);
    assert_eq!(
        events.first().unwrap().revision,
        moved + 1,
        "numbering moved on"
    );
    let deleted = events
        .iter()
        .filter(|e| matches!(e.payload, EventPayload::PolicyDeleted(_)))
        .count();
    assert_eq!(deleted, 2);
    assert!(
        events
            .iter()
            .any(|e| matches!(&e.payload, EventPayload::WorkloadRemoved(k) if k.name == "nginx"))
    );
    wait_ready(&readiness, "every kind listed").await;
    assert_eq!(metrics.leader.get(), 1);

    // Stopping: the Lease is released (renewals may come first).
    stop.send_replace(true);
    let mut rv = 12;
    let released = loop {
        let current = lease(Some("store-1"), &rv.to_string(), store.log().head());
        let write = serve_lease_until_write(&mut api, &current).await;
        let body = write.body.clone().unwrap();
        rv += 1;
        write.respond(
            200,
            lease(Some("store-1"), &rv.to_string(), store.log().head()),
        );
        if body["spec"]
            .get("holderIdentity")
            .is_none_or(Value::is_null)
        {
            break body;
        }
    };
    assert_eq!(released["spec"]["leaseDurationSeconds"], 1);
    assert_eq!(
        released["metadata"]["annotations"]["dnsfence.io/store-revision"],
        store.log().head().to_string()
    );
    tokio::time::timeout(kube_mock::PATIENCE, running)
        .await
        .expect("cluster mode stops")
        .unwrap()
        .unwrap();
    assert_eq!(metrics.leader.get(), 0);
}
