//! The `dnsfence` binary against a real store: the seed scenario, exit codes, bad input.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::process::Output;

use clap::Parser;
use dnsfence_policy_store::{Config, Store};

const SEED: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/../../examples/seed");

struct Running {
    addr: String,
    _dir: tempfile::TempDir,
    _stop: tokio::sync::oneshot::Sender<()>,
}

async fn start_store() -> Running {
    let dir = tempfile::tempdir().unwrap();
    let config = Config::parse_from([
        "dnsfence-policy-store",
        "--data-dir",
        dir.path().to_str().unwrap(),
    ]);
    let store = Store::open(config.clone()).await.unwrap();
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = format!("http://{}", listener.local_addr().unwrap());
    let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
    tokio::spawn(async move {
        dnsfence_policy_store::serve(
            store,
            &config,
            vec![dnsfence_api::Listener::Tcp(listener)],
            async {
                let _ = stopped.await;
            },
        )
        .await
        .unwrap();
    });
    Running {
        addr,
        _dir: dir,
        _stop: stop,
    }
}

async fn dnsfence(store: &str, args: &[&str]) -> Output {
    let mut cmd = tokio::process::Command::new(env!("CARGO_BIN_EXE_dnsfence"));
    cmd.arg("--store").arg(store).args(args);
    cmd.output().await.unwrap()
}

fn text(o: &Output) -> String {
    format!(
        "{}{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn seed_scenario_through_the_cli() {
    let s = start_store().await;
    let a = &s.addr;
    let github = format!("{SEED}/allow-github.yaml");
    let dns = format!("{SEED}/allow-dns.yaml");
    let out = dnsfence(a, &["apply", "-f", &github, "-f", &dns]).await;
    assert!(out.status.success(), "{}", text(&out));
    assert!(text(&out).contains("ApplicationNetworkPolicy default/nginx-egress created"));
    for (pod, ip, label) in [
        ("default/nginx", "192.0.2.10", "run=nginx"),
        ("kube-system/coredns", "192.0.2.53", "k8s-app=kube-dns"),
    ] {
        let out = dnsfence(a, &["workload", "add", pod, "--ip", ip, "-l", label]).await;
        assert!(out.status.success(), "{}", text(&out));
    }

    let out = dnsfence(
        a,
        &[
            "explain",
            "default/nginx",
            "api.github.com",
            "--port",
            "443/TCP",
        ],
    )
    .await;
    let t = text(&out);
    assert!(t.starts_with("ALLOW"), "{t}");
    assert!(
        t.contains("ApplicationNetworkPolicy default/nginx-egress egress[0]"),
        "{t}"
    );

    let out = dnsfence(a, &["explain", "default/nginx", "npmjs.com"]).await;
    let t = text(&out);
    assert!(t.starts_with("DENY"), "{t}");
    assert!(t.contains("isolated for egress"), "{t}");

    let out = dnsfence(
        a,
        &["explain", "192.0.2.10", "github.com", "--port", "80/TCP"],
    )
    .await;
    let t = text(&out);
    assert!(t.starts_with("DENY"), "{t}");

    let out = dnsfence(
        a,
        &[
            "explain",
            "default/nginx",
            "192.0.2.53",
            "--port",
            "53/UDP",
            "-o",
            "json",
        ],
    )
    .await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["verdict"], "ALLOW");
    assert_eq!(v["rule"]["policy"], "NetworkPolicy default/allow-dns");

    let out = dnsfence(a, &["get", "policies", "-o", "json"]).await;
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["items"].as_array().unwrap().len(), 2);

    let out = dnsfence(a, &["events", "-o", "json"]).await;
    assert!(out.status.success(), "{}", text(&out));
    let revisions: Vec<u64> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .map(|l| {
            serde_json::from_str::<serde_json::Value>(l).unwrap()["revision"]
                .as_u64()
                .unwrap()
        })
        .collect();
    assert_eq!(revisions, (1..=revisions.len() as u64).collect::<Vec<_>>());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_input_exits_1_and_applies_nothing() {
    let s = start_store().await;
    let out = dnsfence(&s.addr, &["apply", "-f", SEED]).await;
    assert_eq!(out.status.code(), Some(1), "{}", text(&out));
    let t = text(&out);
    assert!(t.contains("eks.amazonaws.com/v1/NodeClass"), "{t}");
    assert!(t.contains("v1/ConfigMap"), "{t}");
    assert!(
        t.contains("networking.k8s.aws/v1alpha1/ApplicationNetworkPolicy"),
        "{t}"
    );
    let out = dnsfence(&s.addr, &["get", "policies"]).await;
    assert_eq!(
        text(&out).lines().count(),
        1,
        "only the header: {}",
        text(&out)
    );

    let bad = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        bad.path(),
        std::fs::read_to_string(format!("{SEED}/allow-github.yaml"))
            .unwrap()
            .replace("\"api.github.com\"", "\"*.*.com\""),
    )
    .unwrap();
    let out = dnsfence(&s.addr, &["apply", "-f", bad.path().to_str().unwrap()]).await;
    assert_eq!(out.status.code(), Some(1));
    assert!(
        text(&out).contains("default/nginx-egress: spec.egress[0].to[0].domainNames[1]: \"*.*.com\": a wildcard may only be the whole leftmost label"),
        "{}",
        text(&out)
    );

    let out = dnsfence(&s.addr, &["explain", "default/nobody", "github.com"]).await;
    assert_eq!(out.status.code(), Some(1));
    let out = dnsfence(
        &s.addr,
        &["workload", "add", "nonamespace", "--ip", "192.0.2.1"],
    )
    .await;
    assert_eq!(out.status.code(), Some(1));
}

#[tokio::test]
async fn unreachable_store_exits_2() {
    let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = format!("http://{}", l.local_addr().unwrap());
    drop(l);
    let out = dnsfence(&addr, &["--timeout", "2s", "get", "policies"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
    let out = dnsfence("unix:///nonexistent/dnsfence.sock", &["version"]).await;
    assert_eq!(out.status.code(), Some(2), "{}", text(&out));
}
