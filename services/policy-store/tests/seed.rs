//! The seed manifests of `examples/seed/` applied to a real store over gRPC, and what Explain
//! then decides; plus the all-or-nothing rules of Apply and Delete and the read-only mode.
#![allow(clippy::unwrap_used, clippy::expect_used)]

mod common;

use common::*;
use dnsfence_api::store::v1 as pb;
use pb::applied_object::Outcome;
use tempfile::TempDir;
use tonic::Code;

fn port(protocol: pb::Protocol, port: u32) -> Option<pb::PortRange> {
    Some(pb::PortRange {
        protocol: protocol as i32,
        start: port,
        end: port,
    })
}

async fn explain(
    client: &mut Client,
    pod: (&str, &str),
    destination: &str,
    port: Option<pb::PortRange>,
    default: pb::DefaultPolicy,
) -> pb::ExplainResponse {
    client
        .explain(pb::ExplainRequest {
            pod: Some(pb::explain_request::Pod::Workload(key(pod.0, pod.1))),
            destination: destination.to_string(),
            port,
            default_policy: default as i32,
        })
        .await
        .unwrap_or_else(|e| panic!("explain {destination} for {pod:?}: {e}"))
        .into_inner()
}

/// The origin policy of the rule that decided, if a match rule did.
fn deciding_policy(e: &pb::ExplainResponse) -> Option<pb::PolicyRef> {
    match e.deciding_rule.as_ref()?.kind.as_ref()? {
        pb::rule::Kind::Match(m) => m.origin.as_ref()?.policy.clone(),
        pb::rule::Kind::Isolation(_) => None,
    }
}

/// A store with the seed applied and `default/nginx`, `kube-system/coredns` registered
/// (without registering their namespaces).
async fn seeded() -> (TempDir, InProcess, Client) {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    let applied = apply_seed(&mut client).await.unwrap();
    let mut objects: Vec<(String, i32, u64)> = applied
        .objects
        .iter()
        .map(|o| {
            (
                o.reference.as_ref().unwrap().name.clone(),
                o.outcome,
                o.generation,
            )
        })
        .collect();
    objects.sort();
    assert_eq!(
        objects,
        vec![
            ("allow-dns".to_string(), Outcome::Created as i32, 1),
            ("nginx-egress".to_string(), Outcome::Created as i32, 1),
        ]
    );
    upsert(&mut client, vec![nginx_pod(), coredns_pod()])
        .await
        .unwrap();
    (dir, store, client)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_policies_decide_as_the_readme_says() {
    let (_dir, store, mut client) = seeded().await;
    let nginx = ("default", "nginx");
    let allow = pb::DefaultPolicy::DefaultAllow;

    let e = explain(
        &mut client,
        nginx,
        "api.github.com",
        port(pb::Protocol::Tcp, 443),
        allow,
    )
    .await;
    assert_eq!(e.verdict, pb::Verdict::Allow as i32, "{e:?}");
    assert!(!e.allowlist_id.is_empty(), "nginx is selected: {e:?}");
    assert_eq!(
        deciding_policy(&e),
        Some(policy_ref(
            pb::PolicyKind::ApplicationNetworkPolicy,
            "default",
            "nginx-egress"
        )),
        "{e:?}"
    );
    assert!(e.reason.contains("nginx-egress"), "{}", e.reason);

    // Not in the allowlist: nothing allows it on any port, whatever the node default.
    let e = explain(&mut client, nginx, "npmjs.com", None, allow).await;
    assert_eq!(e.verdict, pb::Verdict::Deny as i32, "{e:?}");
    assert!(e.allowed_ports.is_empty(), "{e:?}");

    // Allowed name, wrong port: the isolation closes it, not a rule.
    let e = explain(
        &mut client,
        nginx,
        "github.com",
        port(pb::Protocol::Tcp, 80),
        allow,
    )
    .await;
    assert_eq!(e.verdict, pb::Verdict::Deny as i32, "{e:?}");
    assert!(e.reason.contains("isolated"), "{}", e.reason);
    assert_eq!(deciding_policy(&e), None, "{e:?}");

    // The same name without a port: allowed on TCP 443 only.
    let e = explain(&mut client, nginx, "github.com", None, allow).await;
    assert_eq!(e.verdict, pb::Verdict::Allow as i32, "{e:?}");
    assert_eq!(e.allowed_ports, vec![port(pb::Protocol::Tcp, 443).unwrap()]);

    // DNS to the coredns pod, selected by its namespace's implicit name label.
    let e = explain(
        &mut client,
        nginx,
        "192.0.2.53",
        port(pb::Protocol::Udp, 53),
        allow,
    )
    .await;
    assert_eq!(e.verdict, pb::Verdict::Allow as i32, "{e:?}");
    assert_eq!(
        deciding_policy(&e),
        Some(policy_ref(
            pb::PolicyKind::NetworkPolicy,
            "default",
            "allow-dns"
        )),
        "{e:?}"
    );
    // ... but not to another address on the same port.
    let e = explain(
        &mut client,
        nginx,
        "192.0.2.99",
        port(pb::Protocol::Udp, 53),
        allow,
    )
    .await;
    assert_eq!(e.verdict, pb::Verdict::Deny as i32, "{e:?}");

    // Explain by the pod's address finds the same pod.
    let e = client
        .explain(pb::ExplainRequest {
            pod: Some(pb::explain_request::Pod::Ip("192.0.2.10".into())),
            destination: "api.github.com".into(),
            port: port(pb::Protocol::Tcp, 443),
            default_policy: allow as i32,
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(e.workload, Some(key("default", "nginx")));
    assert_eq!(e.verdict, pb::Verdict::Allow as i32);

    // A pod no policy selects: the node default decides, as requested.
    add_pod(
        &mut client,
        "default",
        "other",
        Default::default(),
        "192.0.2.11",
        "",
    )
    .await;
    for (default, verdict) in [
        (pb::DefaultPolicy::DefaultAllow, pb::Verdict::Allow),
        (pb::DefaultPolicy::DefaultDeny, pb::Verdict::Deny),
    ] {
        let e = explain(
            &mut client,
            ("default", "other"),
            "npmjs.com",
            port(pb::Protocol::Tcp, 443),
            default,
        )
        .await;
        assert_eq!(e.allowlist_id, "", "no policy selects default/other: {e:?}");
        assert_eq!(e.verdict, verdict as i32, "{default:?}: {e:?}");
        assert_eq!(e.default_policy, default as i32, "{e:?}");
        assert!(e.deciding_rule.is_none(), "{e:?}");
    }
    // Unspecified: the store's configured default (DefaultAllow unless --default-policy).
    let e = explain(
        &mut client,
        ("default", "other"),
        "npmjs.com",
        None,
        pb::DefaultPolicy::Unspecified,
    )
    .await;
    assert_eq!(e.default_policy, pb::DefaultPolicy::DefaultAllow as i32);
    assert_eq!(e.verdict, pb::Verdict::Allow as i32);

    // An unknown pod is NOT_FOUND, not a verdict.
    let err = client
        .explain(pb::ExplainRequest {
            pod: Some(pb::explain_request::Pod::Workload(key("default", "ghost"))),
            destination: "github.com".into(),
            port: None,
            default_policy: 0,
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");

    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_unsupported_kind_rejects_the_whole_batch() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &[]).await.unwrap();
    let mut client = store.client().await.unwrap();
    let before = status(&mut client).await.unwrap().revision;

    let err = client
        .apply(apply_request(vec![
            manifest("my-nodeclass.yaml", MY_NODECLASS),
            manifest("allow-github.yaml", ALLOW_GITHUB),
        ]))
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::InvalidArgument, "{err:?}");
    let message = err.message();
    assert!(message.contains("my-nodeclass.yaml"), "{message}");
    assert!(message.contains("NodeClass"), "{message}");
    for supported in [
        "networking.k8s.io/v1/NetworkPolicy",
        "networking.k8s.aws/v1alpha1/ApplicationNetworkPolicy",
        "networking.k8s.aws/v1alpha1/ClusterNetworkPolicy",
        "policy.networking.k8s.io/v1alpha2/ClusterNetworkPolicy",
    ] {
        assert!(
            message.contains(supported),
            "{supported} missing from {message}"
        );
    }

    // Nothing of the batch was applied, not even the valid policy.
    let after = status(&mut client).await.unwrap();
    assert_eq!(after.revision, before);
    assert_eq!(after.policies, 0);
    let err = get_policy(
        &mut client,
        policy_ref(
            pb::PolicyKind::ApplicationNetworkPolicy,
            "default",
            "nginx-egress",
        ),
    )
    .await
    .unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reapplying_a_manifest_is_unchanged_and_logs_nothing() {
    let (_dir, store, mut client) = seeded().await;
    let before = status(&mut client).await.unwrap().revision;

    let again = client
        .apply(apply_request(vec![manifest(
            "allow-github.yaml",
            ALLOW_GITHUB,
        )]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(again.objects.len(), 1);
    assert_eq!(again.objects[0].outcome, Outcome::Unchanged as i32);
    assert_eq!(again.objects[0].generation, 1);
    assert_eq!(
        again.revision, before,
        "an unchanged apply adds no revision"
    );
    assert_eq!(status(&mut client).await.unwrap().revision, before);

    // A real change does: CONFIGURED, generation 2, a new revision.
    let changed = ALLOW_GITHUB.replace("port: 443", "port: 8443");
    assert_ne!(changed, ALLOW_GITHUB);
    let r = client
        .apply(apply_request(vec![manifest("allow-github.yaml", &changed)]))
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.objects[0].outcome, Outcome::Configured as i32);
    assert_eq!(r.objects[0].generation, 2);
    assert!(r.revision > before);

    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn delete_is_all_or_nothing() {
    let (_dir, store, mut client) = seeded().await;
    let before = status(&mut client).await.unwrap();
    let existing = policy_ref(pb::PolicyKind::NetworkPolicy, "default", "allow-dns");
    let missing = policy_ref(pb::PolicyKind::NetworkPolicy, "default", "no-such-policy");

    let err = client
        .delete(pb::DeleteRequest {
            references: vec![missing.clone()],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("no-such-policy"),
        "{}",
        err.message()
    );

    let err = client
        .delete(pb::DeleteRequest {
            references: vec![existing.clone(), missing],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::NotFound, "{err:?}");
    assert!(
        err.message().contains("no-such-policy"),
        "{}",
        err.message()
    );
    let after = status(&mut client).await.unwrap();
    assert_eq!(after.revision, before.revision, "nothing was deleted");
    assert_eq!(after.policies, before.policies);
    get_policy(&mut client, existing.clone())
        .await
        .expect("allow-dns survived the failed delete");

    // Alone it goes, and with it the DNS allowance.
    let r = client
        .delete(pb::DeleteRequest {
            references: vec![existing.clone()],
            ..Default::default()
        })
        .await
        .unwrap()
        .into_inner();
    assert_eq!(r.objects.len(), 1);
    assert_eq!(r.objects[0].outcome, Outcome::Deleted as i32);
    assert!(r.revision > before.revision);
    let err = get_policy(&mut client, existing).await.unwrap_err();
    assert_eq!(err.code(), Code::NotFound);

    drop(client);
    store.stop().await.unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_read_only_store_refuses_writes() {
    let dir = TempDir::new().unwrap();
    let store = InProcess::start(dir.path(), &["--read-only"])
        .await
        .unwrap();
    let mut client = store.client().await.unwrap();

    let err = apply_seed(&mut client).await.unwrap_err();
    let status_err = err.downcast_ref::<tonic::Status>().expect("a gRPC status");
    assert_eq!(status_err.code(), Code::PermissionDenied, "{status_err:?}");

    let err = client
        .upsert_workloads(pb::UpsertWorkloadsRequest {
            workloads: vec![nginx_pod()],
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);
    let err = client
        .delete(pb::DeleteRequest {
            references: vec![np_ref("allow-dns")],
            ..Default::default()
        })
        .await
        .unwrap_err();
    assert_eq!(err.code(), Code::PermissionDenied);

    let s = status(&mut client).await.unwrap();
    assert!(!s.writes_enabled);
    assert_eq!(s.revision, 0);
    assert_eq!(s.policies, 0);
    assert_eq!(s.workloads, 0);

    drop(client);
    store.stop().await.unwrap();
}
