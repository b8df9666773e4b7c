//! The cluster-mode controller and policy objects, against a mock Kubernetes API (no API
//! server can run on this machine): policies created, updated, deleted, rejected, and the
//! optional upstream API. Each scenario asserts the events that reach the store's log and the
//! status the controller writes back.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod kube_mock;

use dnsfence_policy::model::{EventPayload, PolicyKind, PolicyRef};
use kube_mock::harness::*;
use kube_mock::*;
use serde_json::json;
use tempfile::TempDir;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_policy_created_updated_and_deleted() {
    let dir = TempDir::new().unwrap();
    let mut r = Running::start(dir.path()).await;
    let feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns()],
            pods: vec![
                web_pod("10.0.0.1", "node-a", "11"),
                pod(
                    "shop",
                    "db-1",
                    json!({"app": "db"}),
                    &["10.0.0.2"],
                    "node-a",
                    "12",
                ),
            ],
            ..World::default()
        },
    )
    .await;
    let synced = wait_for_state(&r.store, "pods and namespaces listed", |s| {
        s.compiler.workload_count() == 2 && s.compiler.namespace("shop").is_some()
    })
    .await;
    let mut listed = describe_all(&events_after(&r.store, 0));
    listed.sort();
    assert_eq!(
        listed,
        vec![
            "NamespaceUpserted shop",
            "WorkloadBound shop/db-1 on node-a unenforced",
            "WorkloadBound shop/web-1 on node-a unenforced",
            "WorkloadUpserted shop/db-1 on node-a",
            "WorkloadUpserted shop/web-1 on node-a",
        ]
    );

    // Created.
    let v1 = anp(
        "shop",
        "allow-github",
        1,
        "1001",
        egress_to("web", &["github.com"], 443),
    );
    feeds.anps.added(&v1);
    let created = wait_for_state(&r.store, "the policy applied", |s| {
        s.records.contains_key(&anp_ref("allow-github"))
    })
    .await;
    let events = events_after(&r.store, synced);
    assert_eq!(
        describe_all(&events),
        vec![
            "PolicyApplied ApplicationNetworkPolicy shop/allow-github gen 1",
            "AllowlistCompiled",
            "WorkloadBound shop/web-1 on node-a enforced",
        ]
    );
    let EventPayload::PolicyApplied(record) = &events[0].payload else {
        unreachable!()
    };
    // The manifest is the object's type, metadata and spec, without server fields.
    assert!(
        record.manifest.contains("github.com"),
        "{}",
        record.manifest
    );
    assert!(!record.manifest.contains("resourceVersion"));
    assert!(!record.manifest.contains("managedFields"));
    let applied_at = events[0].revision;

    let patch = r.api.expect_patch(ANP_STATUS).await;
    let status = patch.body.as_ref().unwrap()["status"].clone();
    assert_eq!(status["observedGeneration"], 1);
    assert_eq!(status["storeRevision"], applied_at);
    assert_eq!(status["selectedPods"], 1);
    let c = accepted_condition(&status);
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("True"), Some("Compiled"))
    );
    assert_eq!(c["observedGeneration"], 1);
    assert_eq!(
        c["message"],
        format!("compiled at store revision {applied_at}; selects 1 pod")
    );
    assert!(c["lastTransitionTime"].is_string());
    let v1_with_status = with_status(&v1, &status, "1002");
    patch.respond(200, v1_with_status.clone());
    // The API server echoes the status change through the watch: same spec, no new event.
    feeds.anps.modified(&v1_with_status);

    // Updated: port 443 → 8443, generation 2.
    let mut v2 = anp(
        "shop",
        "allow-github",
        2,
        "1003",
        egress_to("web", &["github.com"], 8443),
    );
    v2["status"] = status.clone();
    feeds.anps.modified(&v2);
    let updated = wait_for_state(&r.store, "generation 2 applied", |s| {
        s.records
            .get(&anp_ref("allow-github"))
            .is_some_and(|p| p.generation == 2)
    })
    .await;
    assert_eq!(
        describe_all(&events_after(&r.store, created)),
        vec![
            "PolicyApplied ApplicationNetworkPolicy shop/allow-github gen 2",
            "AllowlistCompiled",
            "WorkloadBound shop/web-1 on node-a enforced",
            "AllowlistReleased",
        ],
        "the status echo must not have written anything"
    );
    let patch = r.api.expect_patch(ANP_STATUS).await;
    let status2 = patch.body.as_ref().unwrap()["status"].clone();
    assert_eq!(status2["observedGeneration"], 2);
    let reapplied_at = revision_of(&r.store, created, |p| {
        matches!(p, EventPayload::PolicyApplied(_))
    });
    assert_eq!(status2["storeRevision"], reapplied_at);
    let c2 = accepted_condition(&status2);
    assert_eq!(c2["observedGeneration"], 2);
    // Still accepted: the transition time stays.
    assert_eq!(c2["lastTransitionTime"], c["lastTransitionTime"]);
    patch.respond(200, with_status(&v2, &status2, "1004"));

    // Deleted.
    feeds.anps.deleted(&with_status(&v2, &status2, "1005"));
    wait_for_state(&r.store, "the policy deleted", |s| {
        !s.records.contains_key(&anp_ref("allow-github"))
    })
    .await;
    assert_eq!(
        describe_all(&events_after(&r.store, updated)),
        vec![
            "PolicyDeleted ApplicationNetworkPolicy shop/allow-github",
            "WorkloadBound shop/web-1 on node-a unenforced",
            "AllowlistReleased",
        ]
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_invalid_policy_gets_invalid_status_naming_the_field() {
    let dir = TempDir::new().unwrap();
    let mut r = Running::start(dir.path()).await;
    let feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns()],
            pods: vec![web_pod("10.0.0.1", "node-a", "11")],
            ..World::default()
        },
    )
    .await;
    let synced = wait_for_state(&r.store, "listed", |s| s.compiler.workload_count() == 1).await;

    let bad = anp(
        "shop",
        "allow-github",
        1,
        "60",
        egress_to("web", &["*.*.github.com"], 443),
    );
    feeds.anps.added(&bad);
    let patch = r.api.expect_patch(ANP_STATUS).await;
    let status = patch.body.as_ref().unwrap()["status"].clone();
    let c = accepted_condition(&status);
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("False"), Some("Invalid"))
    );
    let message = c["message"].as_str().unwrap();
    assert!(
        message.starts_with("shop/allow-github: spec.egress[0].to[0].domainNames[0]: "),
        "{message}"
    );
    assert!(message.contains("*.*.github.com"), "{message}");
    assert_eq!(status["observedGeneration"], 1);
    assert!(status["storeRevision"].is_null() && status["selectedPods"].is_null());
    patch.respond(200, with_status(&bad, &status, "61"));

    // Fixed: accepted, and the first version the store ever logged.
    let good = anp(
        "shop",
        "allow-github",
        2,
        "62",
        egress_to("web", &["*.github.com"], 443),
    );
    feeds.anps.modified(&with_status(&good, &status, "62"));
    let fixed = wait_for_state(&r.store, "the fixed policy", |s| {
        s.records.contains_key(&anp_ref("allow-github"))
    })
    .await;
    assert_eq!(
        describe_all(&events_after(&r.store, synced)),
        vec![
            "PolicyApplied ApplicationNetworkPolicy shop/allow-github gen 1",
            "AllowlistCompiled",
            "WorkloadBound shop/web-1 on node-a enforced",
        ],
        "the invalid version wrote nothing"
    );
    let patch = r.api.expect_patch(ANP_STATUS).await;
    let accepted = patch.body.as_ref().unwrap()["status"].clone();
    let c = accepted_condition(&accepted);
    assert_eq!(
        (c["status"].as_str(), c["reason"].as_str()),
        (Some("True"), Some("Compiled"))
    );
    assert_eq!(accepted["observedGeneration"], 2);
    assert!(c["lastTransitionTime"].is_string());
    patch.respond(200, with_status(&good, &accepted, "63"));

    // Broken again (unknown field): the accepted version stays in force.
    let mut broken_spec = egress_to("web", &["*.github.com"], 443);
    broken_spec["egress"][0]["ports"][0]["prot"] = json!("TCP");
    let broken = anp("shop", "allow-github", 3, "64", broken_spec);
    feeds.anps.modified(&with_status(&broken, &accepted, "64"));
    let patch = r.api.expect_patch(ANP_STATUS).await;
    let status = patch.body.as_ref().unwrap()["status"].clone();
    let c = accepted_condition(&status);
    assert_eq!(c["reason"], "Invalid");
    let message = c["message"].as_str().unwrap();
    assert!(message.contains("spec.egress[0].ports[0]"), "{message}");
    assert!(
        message.ends_with(&format!(
            "(the version compiled at store revision {} stays in force)",
            accepted["storeRevision"]
        )),
        "{message}"
    );
    assert_eq!(status["observedGeneration"], 3);
    assert_eq!(status["selectedPods"], 1);
    patch.respond(200, with_status(&broken, &status, "65"));
    assert_eq!(r.head(), fixed, "an invalid update writes nothing");
    assert!(
        r.store.read().await.records[&anp_ref("allow-github")]
            .manifest
            .contains("'*.github.com'")
    );
    r.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_upstream_cluster_network_policy_api_is_used_when_served() {
    const UPSTREAM_STATUS: &str =
        "/apis/policy.networking.k8s.io/v1alpha2/clusternetworkpolicies/baseline-docs/status";
    let dir = TempDir::new().unwrap();
    let mut r = Running::start(dir.path()).await;
    let policy = cnp(
        "policy.networking.k8s.io/v1alpha2",
        "baseline-docs",
        1,
        "70",
        json!({"tier": "Baseline", "priority": 5,
               "subject": {"pods": {"namespaceSelector": {}, "podSelector": {"matchLabels": {"app": "web"}}}},
               "egress": [{"name": "docs", "action": "Accept",
                           "to": [{"domainNames": ["*.kubernetes.io"]}]}]}),
    );
    let _feeds = initial_sync(
        &mut r.api,
        World {
            namespaces: vec![shop_ns()],
            pods: vec![web_pod("10.0.0.1", "node-a", "11")],
            upstream_cnps: Some(vec![policy.clone()]),
            ..World::default()
        },
    )
    .await;
    let reference = PolicyRef {
        kind: PolicyKind::UpstreamClusterNetworkPolicy,
        namespace: String::new(),
        name: "baseline-docs".into(),
    };
    wait_for_state(&r.store, "the upstream policy", |s| {
        s.records.contains_key(&reference)
    })
    .await;
    let patch = r.api.expect_patch(UPSTREAM_STATUS).await;
    let body = patch.body.clone().unwrap();
    let status = body["status"].as_object().unwrap();
    // The upstream CRD's status holds conditions only: anything else would be pruned.
    assert_eq!(status.keys().collect::<Vec<_>>(), vec!["conditions"]);
    let c = accepted_condition(&body["status"]);
    assert_eq!(c["status"], "True");
    assert!(
        c["message"].as_str().unwrap().ends_with("selects 1 pod"),
        "{c}"
    );
    patch.respond(200, policy);
    r.stop().await;
}
