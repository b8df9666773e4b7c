//! The cluster-mode controller and the objects policies select by, against a mock
//! Kubernetes API: pods moving, namespaces relabelled, watches ending and failing, and a
//! restart that must notice what was deleted meanwhile. Each scenario asserts the events that
//! reach the store's log and the status written back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kube_mock;

use clap::Parser;
use dnsfence_policy::model::EventPayload;
use dnsfence_policy_store::metrics::{KindLabels, WatchedKind};
use dnsfence_policy_store::{Config, Store};
use kube_mock::harness::*;
use kube_mock::*;
use serde_json::json;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pod_moving_to_another_node() {
    let dir = TempDir::new().unwrap();
    let mut r = Running::start(dir.path()).await;
    let policy = anp(
        "shop",
        "allow-github",
        1,
        "20",
        egress_to("web", &["github.com"], 443),
    );
    let feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns()],
            pods: vec![web_pod("10.0.0.1", "node-a", "11")],
            anps: vec![policy.clone()],
            ..World::default()
        },
    )
    .await;
    let synced = wait_for_state(&r.store, "everything listed", |s| {
        s.compiler.workload_count() == 1 && s.records.len() == 1
    })
    .await;
    let patch = r.api.expect_patch(ANP_STATUS).await;
    let status = patch.body.as_ref().unwrap()["status"].clone();
    assert_eq!(status["selectedPods"], 1);
    patch.respond(200, with_status(&policy, &status, "21"));

    // The StatefulSet pod is deleted on node-a ...
    feeds.pods.deleted(&web_pod("10.0.0.1", "node-a", "30"));
    let gone = wait_for_state(&r.store, "the pod removed", |s| {
        s.compiler.workload(&key("shop", "web-1")).is_none()
    })
    .await;
    assert_eq!(
        describe_all(&events_after(&r.store, synced)),
        vec![
            "WorkloadRemoved shop/web-1",
            "WorkloadUnbound shop/web-1",
            "AllowlistReleased"
        ]
    );
    let patch = r.api.expect_patch(ANP_STATUS).await;
    assert_eq!(patch.body.as_ref().unwrap()["status"]["selectedPods"], 0);
    patch.respond(200, policy.clone());

    // ... comes back pending (no node, no address: not a workload yet) ...
    feeds
        .pods
        .added(&pending_pod("shop", "web-1", json!({"app": "web"}), "31"));
    // ... and runs on node-b with a new address.
    feeds.pods.modified(&web_pod("10.0.9.9", "node-b", "32"));
    wait_for_state(&r.store, "the pod back on node-b", |s| {
        s.compiler
            .workload(&key("shop", "web-1"))
            .is_some_and(|w| w.node == "node-b")
    })
    .await;
    let events = events_after(&r.store, gone);
    assert_eq!(
        describe_all(&events),
        vec![
            "WorkloadUpserted shop/web-1 on node-b",
            "AllowlistCompiled",
            "WorkloadBound shop/web-1 on node-b enforced",
        ],
        "the pending pod wrote nothing"
    );
    let EventPayload::WorkloadBound(binding) = &events[2].payload else {
        unreachable!()
    };
    assert_eq!(
        binding.ips,
        vec!["10.0.9.9".parse::<std::net::IpAddr>().unwrap()]
    );
    let patch = r.api.expect_patch(ANP_STATUS).await;
    assert_eq!(patch.body.as_ref().unwrap()["status"]["selectedPods"], 1);
    patch.respond(200, policy);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_namespace_relabelled_into_a_cluster_policy() {
    const CNP_STATUS: &str =
        "/apis/networking.k8s.aws/v1alpha1/clusternetworkpolicies/prod-egress/status";
    let dir = TempDir::new().unwrap();
    let mut r = Running::start(dir.path()).await;
    let policy = cnp(
        "networking.k8s.aws/v1alpha1",
        "prod-egress",
        1,
        "40",
        json!({"tier": "Admin", "priority": 10,
               "subject": {"namespaces": {"matchLabels": {"env": "prod"}}},
               "egress": [{"name": "api", "action": "Accept",
                           "to": [{"domainNames": ["api.example.com"]}]}]}),
    );
    let feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns()],
            pods: vec![web_pod("10.0.0.1", "node-a", "11")],
            cnps: vec![policy.clone()],
            ..World::default()
        },
    )
    .await;
    let synced = wait_for_state(&r.store, "everything listed", |s| {
        s.compiler.workload_count() == 1 && s.records.len() == 1
    })
    .await;
    let patch = r.api.expect_patch(CNP_STATUS).await;
    let status = patch.body.as_ref().unwrap()["status"].clone();
    assert_eq!(
        status["selectedPods"], 0,
        "no namespace is labelled env=prod yet"
    );
    patch.respond(200, with_status(&policy, &status, "41"));

    feeds
        .namespaces
        .modified(&namespace("shop", json!({"env": "prod"}), "50"));
    wait_for_state(&r.store, "the new labels", |s| {
        s.compiler
            .namespace("shop")
            .is_some_and(|l| l.get("env").map(String::as_str) == Some("prod"))
    })
    .await;
    let events = events_after(&r.store, synced);
    assert_eq!(
        describe_all(&events),
        vec![
            "NamespaceUpserted shop",
            "AllowlistCompiled",
            "WorkloadBound shop/web-1 on node-a enforced",
        ]
    );
    let EventPayload::NamespaceUpserted(ns) = &events[0].payload else {
        unreachable!()
    };
    assert_eq!(
        ns.labels.get("kubernetes.io/metadata.name").unwrap(),
        "shop"
    );
    let patch = r.api.expect_patch(CNP_STATUS).await;
    let status = &patch.body.as_ref().unwrap()["status"];
    assert_eq!(status["selectedPods"], 1);
    assert_eq!(
        accepted_condition(status)["message"],
        format!(
            "compiled at store revision {}; selects 1 pod",
            status["storeRevision"]
        )
    );
    patch.respond(200, policy);
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_watch_that_ends_resumes_and_one_that_errors_relists() {
    let dir = TempDir::new().unwrap();
    let mut r = Running::start(dir.path()).await;
    let web2 = pod(
        "shop",
        "web-2",
        json!({"app": "web"}),
        &["10.0.0.2"],
        "node-a",
        "12",
    );
    let feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns()],
            pods: vec![web_pod("10.0.0.1", "node-a", "11"), web2.clone()],
            ..World::default()
        },
    )
    .await;
    let synced = wait_for_state(&r.store, "two pods", |s| s.compiler.workload_count() == 2).await;

    // A change, then the API server ends the watch (as it does after timeoutSeconds): the
    // watcher resumes from the last version it saw, without a list.
    let relabelled = pod(
        "shop",
        "web-1",
        json!({"app": "web", "tier": "front"}),
        &["10.0.0.1"],
        "node-a",
        "1005",
    );
    feeds.pods.modified(&relabelled);
    let Feeds {
        pods,
        namespaces: _ns,
        network_policies: _np,
        anps: _a,
        cnps: _c,
        ..
    } = feeds;
    pods.close();
    let pods = r.api.expect_watch(PODS, "1005").await.stream();
    let changed = wait_for_state(&r.store, "the new label", |s| {
        s.compiler
            .workload(&key("shop", "web-1"))
            .is_some_and(|w| w.labels.contains_key("tier"))
    })
    .await;
    // Labels are no part of a binding, and no policy selects by `tier`: the source event only.
    assert_eq!(
        describe_all(&events_after(&r.store, synced)),
        vec!["WorkloadUpserted shop/web-1 on node-a"]
    );

    // Now the watch fails with 410 Gone: its version is too old. The watcher backs off and
    // lists afresh; web-2 was deleted meanwhile and web-1 got a new address.
    pods.error(410, "Expired");
    r.api.expect_list(PODS).await.respond(
        200,
        json!({"apiVersion": "v1", "kind": "PodList", "metadata": {"resourceVersion": "2000"},
               "items": [pod("shop", "web-1", json!({"app": "web", "tier": "front"}), &["10.0.0.7"], "node-a", "1990")]}),
    );
    let _pods = r.api.expect_watch(PODS, "2000").await.stream();
    wait_for_state(&r.store, "the relist applied", |s| {
        s.compiler.workload_count() == 1
    })
    .await;
    let mut relisted = describe_all(&events_after(&r.store, changed));
    relisted.sort();
    assert_eq!(
        relisted,
        vec![
            "WorkloadBound shop/web-1 on node-a unenforced",
            "WorkloadRemoved shop/web-2",
            "WorkloadUnbound shop/web-2",
            "WorkloadUpserted shop/web-1 on node-a",
        ]
    );
    assert_eq!(
        r.metrics
            .kube_watch_errors
            .get_or_create(&KindLabels {
                kind: WatchedKind::Pod
            })
            .get(),
        1
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_restart_notices_what_was_deleted_while_down_and_rewrites_nothing_else() {
    let dir = TempDir::new().unwrap();
    let mut r = Running::start(dir.path()).await;
    let keep = anp(
        "shop",
        "allow-github",
        1,
        "20",
        egress_to("web", &["github.com"], 443),
    );
    let mut drop_spec = egress_to("db", &["db.example.com"], 5432);
    drop_spec["podSelector"] = json!({"matchLabels": {"app": "db"}});
    let dropped = anp("shop", "allow-db", 1, "21", drop_spec);
    let web2 = pod(
        "shop",
        "web-2",
        json!({"app": "batch"}),
        &["10.0.0.2"],
        "node-a",
        "12",
    );
    let _feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns(), namespace("old", json!({}), "13")],
            pods: vec![web_pod("10.0.0.1", "node-a", "11"), web2],
            anps: vec![keep.clone(), dropped.clone()],
            ..World::default()
        },
    )
    .await;
    wait_for_state(&r.store, "everything listed", |s| {
        s.compiler.workload_count() == 2
            && s.records.len() == 2
            && s.compiler.namespace_count() == 2
    })
    .await;
    // Both statuses are written, in either order.
    let mut written = std::collections::BTreeMap::new();
    for _ in 0..2 {
        let patch = r
            .api
            .expect("a status patch", |q| q.method == http::Method::PATCH)
            .await;
        let status = patch.body.as_ref().unwrap()["status"].clone();
        written.insert(patch.path.clone(), status);
        patch.respond(200, json!({}));
    }
    let keep_status = written[ANP_STATUS].clone();

    // The store stops; meanwhile allow-db, web-2 and the namespace `old` are deleted (none of
    // which allow-github selects: its status stays what it was).
    let store = r.stop().await;
    let before = store.log().head();
    store.log().close().await.unwrap();
    drop(store);
    let config = Config::parse_from([
        "dnsfence-policy-store",
        "--data-dir",
        &dir.path().display().to_string(),
    ]);
    let store = Store::open(config).await.unwrap();
    assert_eq!(store.log().head(), before);
    let mut r = Running::with_store(store);
    let _feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns()],
            pods: vec![web_pod("10.0.0.1", "node-a", "11")],
            anps: vec![with_status(&keep, &keep_status, "22")],
            ..World::default()
        },
    )
    .await;
    wait_for_state(&r.store, "the deletions noticed", |s| {
        s.compiler.workload_count() == 1
            && s.records.len() == 1
            && s.compiler.namespace_count() == 1
    })
    .await;
    let mut events = describe_all(&events_after(&r.store, before));
    events.sort();
    assert_eq!(
        events,
        vec![
            "NamespaceRemoved old",
            "PolicyDeleted ApplicationNetworkPolicy shop/allow-db",
            "WorkloadRemoved shop/web-2",
            "WorkloadUnbound shop/web-2",
        ],
        "exactly the deletions: nothing unchanged is written again"
    );
    // A later change proves the controller is live; and the kept policy's status (same
    // revision, same pods) was not written again: the next patch is the new policy's.
    let newer = anp(
        "shop",
        "allow-api",
        1,
        "30",
        egress_to("web", &["api.example.com"], 443),
    );
    _feeds.anps.added(&newer);
    let patch = r
        .api
        .expect("a status patch", |q| q.method == http::Method::PATCH)
        .await;
    assert_eq!(
        patch.path,
        "/apis/networking.k8s.aws/v1alpha1/namespaces/shop/applicationnetworkpolicies/allow-api/status"
    );
    patch.respond(200, newer);
    r.stop().await;
}
