//! End-to-end tests with real processes in network namespaces, run by the lab's own code
//! (`dnsfence_lab::Lab::start` with a test [`Spec`]): the policy store (root namespace, Unix
//! socket), the resolver-gateway replicas on the cluster DNS address and the node-enforcer
//! (in the "node" namespace, entered with `nsenter --net` so bpffs stays visible), an
//! authoritative DNS server and web servers in the "internet" namespace, and the lab's pods:
//! `nginx` (run=nginx, 192.0.2.10), `plain` (no labels, 192.0.2.12), ... The seed manifests
//! are applied verbatim with the CLI.
//!
//! They need root; without it they skip with a reason, except under `CI=true`, where they
//! fail. `cargo test -p dnsfence-node-enforcer --test e2e -- --nocapture` prints the
//! measured figures (revocation latency, first-connection successes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

use std::{
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    thread,
    time::{Duration, Instant},
};

use dnsfence_lab::{
    Spec, metric_value,
    probe::{addresses, query_within},
    topology::{
        self as lab_topology, API_GITHUB, AUTHORITY, AUTHORITY_V6, CLUSTER_DNS, GITHUB, GITHUB_V6,
        NPMJS, NPMJS_V6, PodNet,
    },
};
use dnsfence_node_enforcer::{Datapath, Hook, netlink};
use hickory_proto::{
    op::{Message, ResponseCode},
    rr::RecordType,
};
use nix::sys::signal::Signal;
use support::world::{TestWorld, seed, unique_prefix};
use support::{in_ns, privileged, run, sa};

const NGINX: &str = "192.0.2.10";
const PLAIN: &str = "192.0.2.12";
/// Names in ttl.test: `z<N>` TTL 0 → 10.250.0.N+1, `o<N>` TTL 1 → 10.250.1.N+1.
const TTL_NAMES: u32 = 220;
const PATIENCE: Duration = Duration::from_secs(30);

fn seed_dir() -> PathBuf {
    seed("")
}

// ---- the world ----

/// The lab's zones plus ttl.test.
fn ttl_zone() -> String {
    let mut ttl = String::from("$ORIGIN ttl.test.\n$TTL 300\n");
    ttl.push_str("zero 0 IN A 10.250.3.1\none 1 IN A 10.250.3.2\n");
    for n in 0..TTL_NAMES {
        ttl.push_str(&format!("z{n} 0 IN A 10.250.0.{}\n", n + 1));
        ttl.push_str(&format!("o{n} 1 IN A 10.250.1.{}\n", n + 1));
    }
    ttl
}

/// Allows the TTL test names to run=nginx pods on 443/TCP.
const TTL_POLICY: &str = r#"apiVersion: networking.k8s.aws/v1alpha1
kind: ApplicationNetworkPolicy
metadata:
  name: ttl-names
  namespace: default
spec:
  podSelector:
    matchLabels:
      run: nginx
  policyTypes:
  - Egress
  egress:
  - to:
    - domainNames:
      - "*.ttl.test"
    ports:
    - protocol: TCP
      port: 443
"#;

/// How a test world differs from the lab's.
#[derive(Clone)]
struct Setup {
    /// The node default (enforcer and gateways).
    default: String,
    event_logs: bool,
    /// Gateway replicas (1 or 2).
    replicas: usize,
    /// The enforcer finds replica 1 through `--gateway-dns-name localhost:PORT` instead of
    /// `--gateways`.
    gateway_by_dns: bool,
}

/// The test's world: the lab's, with the TTL names, short grants and a quick sweeper.
fn start_world(tag: &str, setup: Setup) -> TestWorld {
    let prefix = unique_prefix(&format!("dfe-{tag}"));
    let scratch = tempfile::tempdir().unwrap();
    let ttl_policy = scratch.path().join("ttl-names.yaml");
    std::fs::write(&ttl_policy, TTL_POLICY).unwrap();
    let spec = Spec {
        prefix: prefix.clone(),
        pods: lab_topology::standard_pods(&prefix),
        default_policy: setup.default,
        event_logs: setup.event_logs,
        replicas: setup.replicas,
        policies: vec![
            seed("allow-github.yaml"),
            seed("allow-dns.yaml"),
            ttl_policy,
        ],
        extra_zones: vec![("ttl.test".into(), ttl_zone())],
        // short grants for TTL 0/1 answers and a quick sweeper: expiry is quick to see
        gateway_args: vec!["--grant-min-ttl".into(), "1s".into()],
        enforcer_args: vec!["--sweep-interval".into(), "1s".into()],
        gateway_by_dns: setup.gateway_by_dns,
        store_args: Vec::new(),
        env: Vec::new(),
    };
    TestWorld::launch(spec, scratch)
}

fn wait_until(what: &str, timeout: Duration, f: impl FnMut() -> bool) {
    if let Err(e) = dnsfence_lab::wait_until(what, timeout, f) {
        panic!("{e}");
    }
}

// ---- DNS and TCP from a pod ----

fn query_here(server: SocketAddr, name: &str, wait: Duration) -> Option<Message> {
    query_within(server, name, RecordType::A, wait)
}

fn query_type(
    ns: &str,
    server: &str,
    name: &str,
    qtype: RecordType,
    wait: Duration,
) -> Option<Message> {
    let server = sa(server, 53);
    let name = name.to_string();
    in_ns(ns, move || query_within(server, &name, qtype, wait))
}

fn query(ns: &str, server: &str, name: &str, wait: Duration) -> Option<Message> {
    let server = sa(server, 53);
    let name = name.to_string();
    in_ns(ns, move || query_here(server, &name, wait))
}

/// Resolves `name` through `gateway` from `ns` and expects an answer with addresses.
fn resolve(ns: &str, gateway: &str, name: &str) -> Vec<IpAddr> {
    let m = query(ns, gateway, name, Duration::from_secs(3))
        .unwrap_or_else(|| panic!("no answer for {name} from {gateway}"));
    assert_eq!(m.metadata.response_code, ResponseCode::NoError, "{name}");
    let a = addresses(&m);
    assert!(!a.is_empty(), "{name}: no addresses");
    a
}

fn rcode(ns: &str, gateway: &str, name: &str) -> Option<ResponseCode> {
    query(ns, gateway, name, Duration::from_secs(3)).map(|m| m.metadata.response_code)
}

fn connect_here(to: SocketAddr, timeout: Duration) -> bool {
    match TcpStream::connect_timeout(&to, timeout) {
        Ok(mut c) => support::exchange(&mut c, b"hello"),
        Err(_) => false,
    }
}

fn tcp_ok(ns: &str, addr: &str, port: u16) -> bool {
    support::tcp_works(ns, sa(addr, port))
}

/// Resolves and connects at once, inside the pod: the first packet follows the answer by
/// microseconds.
fn resolve_then_connect(ns: &str, gateway: &str, name: &str) -> bool {
    let gateway = sa(gateway, 53);
    let name = name.to_string();
    in_ns(ns, move || {
        let Some(m) = query_here(gateway, &name, Duration::from_secs(3)) else {
            return false;
        };
        let Some(ip) = addresses(&m).first().copied() else {
            return false;
        };
        connect_here(SocketAddr::new(ip, 443), Duration::from_secs(1))
    })
}

/// (ifindex of the pod's interface, our programs at each hook) seen from the node.
fn attachments(node: &str, pod: &str) -> (u32, usize, usize) {
    let pod: IpAddr = pod.parse().unwrap();
    in_ns(node, move || {
        let ifindex = netlink::pod_interface(pod).unwrap().unwrap();
        let count = |hook: Hook| {
            Datapath::tcx_programs(ifindex, hook)
                .unwrap()
                .iter()
                .filter(|p| p.name == hook.program())
                .count()
        };
        (ifindex, count(Hook::PodEgress), count(Hook::PodIngress))
    })
}

// ---- the tests ----

/// The seed scenario under the seed NodeClass (DefaultAllow, event logs on), then
/// revocation, the first connection after an answer, DNS elsewhere, `kill -9` and restart
/// of the enforcer, and losing one of two gateway replicas, in one world.
#[test]
fn seed_scenario_revocation_restart_and_replicas() {
    if !privileged("seed_scenario_revocation_restart_and_replicas") {
        return;
    }
    let (default, event_logs) = dnsfence_lab::node_class(&seed_dir());
    assert_eq!(default, "DefaultAllow", "the seed NodeClass");
    let mut lab = start_world(
        "seed",
        Setup {
            default: default.clone(),
            event_logs,
            replicas: 2,
            gateway_by_dns: false,
        },
    );
    let nginx = lab.ns("default/nginx");
    let plain = lab.ns("default/plain");
    let node = lab.node();

    // (a) the seed scenario
    let (_, egress, ingress) = attachments(&node, NGINX);
    assert_eq!((egress, ingress), (1, 1), "programs attached once");
    assert!(
        !tcp_ok(&nginx, GITHUB, 443),
        "github.com:443 before any DNS answer"
    );
    assert_eq!(
        resolve(&nginx, CLUSTER_DNS, "github.com"),
        vec![GITHUB.parse::<IpAddr>().unwrap()]
    );
    assert!(
        tcp_ok(&nginx, GITHUB, 443),
        "github.com:443 after the answer"
    );
    assert!(
        resolve_then_connect(&nginx, CLUSTER_DNS, "api.github.com"),
        "api.github.com:443"
    );
    assert_eq!(
        rcode(&nginx, CLUSTER_DNS, "npmjs.com"),
        Some(ResponseCode::Refused)
    );
    assert!(!tcp_ok(&nginx, NPMJS, 443), "npmjs.com's address directly");
    assert!(!tcp_ok(&nginx, GITHUB, 80), "github.com:80");
    // unlabelled pod, DefaultAllow: unrestricted
    assert!(tcp_ok(&plain, NPMJS, 443), "plain pod → npmjs.com:443");
    assert!(tcp_ok(&plain, GITHUB, 80), "plain pod → github.com:80");
    assert_eq!(
        resolve(&plain, CLUSTER_DNS, "npmjs.com"),
        vec![NPMJS.parse::<IpAddr>().unwrap()]
    );
    println!("(a) seed scenario: ok");

    // IPv6 behaves as IPv4
    let v6 = query_type(
        &nginx,
        CLUSTER_DNS,
        "github.com",
        RecordType::AAAA,
        Duration::from_secs(3),
    )
    .expect("AAAA answer");
    assert_eq!(addresses(&v6), vec![GITHUB_V6.parse::<IpAddr>().unwrap()]);
    assert!(tcp_ok(&nginx, GITHUB_V6, 443), "github.com:443 over IPv6");
    assert!(!tcp_ok(&nginx, GITHUB_V6, 80), "github.com:80 over IPv6");
    assert!(!tcp_ok(&nginx, NPMJS_V6, 443), "npmjs.com over IPv6");
    assert!(
        query_type(
            &nginx,
            AUTHORITY_V6,
            "github.com",
            RecordType::A,
            Duration::from_secs(1)
        )
        .is_none(),
        "DNS to another resolver over IPv6"
    );
    assert!(tcp_ok(&plain, NPMJS_V6, 443), "plain pod over IPv6");
    println!("IPv6: ok");

    // flow logs: the drop of nginx → npmjs.com:443 is one JSON line
    if event_logs {
        wait_until(
            "a flow log of the npmjs.com drop",
            Duration::from_secs(5),
            || {
                lab.log("enforcer").lines().any(|l| {
                    serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                        v["pod"] == "nginx"
                            && v["dst"] == NPMJS
                            && v["port"] == 443
                            && v["verdict"] == "deny"
                            && v["reason"] == "default_deny"
                            && v["proto"] == "TCP"
                            && v["namespace"] == "default"
                            && v["allowlist"].as_str().is_some_and(|p| !p.is_empty())
                    })
                })
            },
        );
        println!(
            "flow log: {}",
            lab.log("enforcer")
                .lines()
                .find(|l| l.starts_with('{'))
                .unwrap_or("")
        );
    }

    // (e) DNS to anything but a gateway is dropped
    assert!(
        query(&nginx, AUTHORITY, "github.com", Duration::from_secs(1)).is_none(),
        "DNS from an enforced pod straight to another resolver"
    );
    assert!(
        query(&plain, AUTHORITY, "github.com", Duration::from_secs(2)).is_some(),
        "an unrestricted pod reaches the other resolver"
    );
    println!("(e) DNS elsewhere dropped: ok");

    // (b) the first connection right after the answer: TTL 0 and TTL 1 names, each a fresh
    // address (a fresh grant), 200 times in a row each
    for (prefix, ttl) in [("z", 0), ("o", 1)] {
        let mut ok = 0;
        let started = Instant::now();
        for n in 0..200 {
            if resolve_then_connect(&nginx, CLUSTER_DNS, &format!("{prefix}{n}.ttl.test")) {
                ok += 1;
            } else {
                eprintln!("first connection failed for {prefix}{n}.ttl.test");
            }
        }
        println!(
            "(b) TTL {ttl}: first connection right after the answer succeeded {ok}/200 times ({:?})",
            started.elapsed()
        );
        assert_eq!(ok, 200, "TTL {ttl}");
    }
    for name in ["zero.ttl.test", "one.ttl.test"] {
        assert!(resolve_then_connect(&nginx, CLUSTER_DNS, name), "{name}");
    }

    // (c) revocation: api.github.com leaves the policy
    assert!(
        tcp_ok(&nginx, API_GITHUB, 443),
        "api.github.com before the change"
    );
    let allow_github = std::fs::read_to_string(seed("allow-github.yaml")).unwrap();
    let narrowed: String = allow_github
        .lines()
        .filter(|l| !l.contains("\"api.github.com\""))
        .map(|l| format!("{l}\n"))
        .collect();
    assert_ne!(narrowed, allow_github);
    let narrowed_path = lab.scratch.path().join("allow-github-narrowed.yaml");
    std::fs::write(&narrowed_path, &narrowed).unwrap();
    let revoked_before = lab
        .metric("dnsfence_enforcer_revoked_grants_total")
        .unwrap_or(0.0);
    let api: SocketAddr = sa(API_GITHUB, 443);
    let started = Instant::now();
    lab.cli(&["apply", "-f", &narrowed_path.display().to_string()]);
    let applied = started.elapsed();
    let blocked = in_ns(&nginx, move || {
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            // the attempt's start: its SYN was the one dropped
            let at = started.elapsed();
            if !connect_here(api, Duration::from_millis(50)) {
                return Some(at);
            }
        }
        None
    });
    let blocked = blocked.expect("api.github.com still reachable 5 s after the policy change");
    println!(
        "(c) revocation: apply returned after {applied:?}; new connections to api.github.com \
         blocked {blocked:?} after the apply started ({:?} after it returned)",
        blocked.saturating_sub(applied)
    );
    assert!(
        blocked < Duration::from_secs(1),
        "revocation took {blocked:?}"
    );
    assert!(
        !tcp_ok(&nginx, API_GITHUB, 443),
        "api.github.com stays blocked"
    );
    assert!(
        tcp_ok(&nginx, GITHUB, 443),
        "github.com without a new DNS query"
    );
    wait_until("the gateway refuses api.github.com", PATIENCE, || {
        rcode(&nginx, CLUSTER_DNS, "api.github.com") == Some(ResponseCode::Refused)
    });
    assert!(
        lab.metric("dnsfence_enforcer_revoked_grants_total")
            .unwrap_or(0.0)
            > revoked_before,
        "revocations counted"
    );

    // (d) kill -9 of the enforcer: enforcement stays
    let pid = lab.world.signal("enforcer", Signal::SIGKILL).unwrap();
    println!("(d) killed the enforcer (pid {pid}) with SIGKILL");
    assert!(tcp_ok(&nginx, GITHUB, 443), "allowed stays allowed");
    assert!(!tcp_ok(&nginx, NPMJS, 443), "denied stays denied");
    assert!(!tcp_ok(&nginx, GITHUB, 80), "denied port stays denied");
    assert!(!tcp_ok(&nginx, API_GITHUB, 443), "revoked stays revoked");
    assert!(
        tcp_ok(&plain, NPMJS, 443),
        "unrestricted stays unrestricted"
    );
    let (ifindex, egress, ingress) = attachments(&node, NGINX);
    assert_eq!((egress, ingress), (1, 1), "still attached after the kill");
    // a restart resumes: no second attachment, grants kept, subscriptions back
    lab.world.start_enforcer().unwrap();
    lab.world.wait_enforcer_ready(2).unwrap();
    let (ifindex2, egress, ingress) = attachments(&node, NGINX);
    assert_eq!(ifindex2, ifindex);
    assert_eq!((egress, ingress), (1, 1), "attached once after the restart");
    assert!(
        tcp_ok(&nginx, GITHUB, 443),
        "the grant survived the restart"
    );
    assert!(!tcp_ok(&nginx, NPMJS, 443), "denied after the restart");
    assert!(
        resolve_then_connect(&nginx, CLUSTER_DNS, "z210.ttl.test"),
        "a new grant after the restart"
    );
    assert!(
        lab.log("enforcer").contains("state restored"),
        "the restarted enforcer resumed from its state file"
    );
    println!("(d) kill -9 and restart: ok");

    // (f) two replicas, one killed: the other keeps resolving and granting
    // Both replicas served the cluster DNS address (the kernel spreads clients across
    // their SO_REUSEPORT sockets); with replica 1 gone, replica 2 gets every query.
    let (served_1, served_2) = (lab.gateway_queries(0), lab.gateway_queries(1));
    println!("(f) queries answered so far: replica 1 {served_1}, replica 2 {served_2}");
    assert!(
        served_1 > 0.0 && served_2 > 0.0,
        "both replicas serve {CLUSTER_DNS}"
    );
    lab.world.signal("gateway-1", Signal::SIGKILL).unwrap();
    assert!(
        resolve_then_connect(&nginx, CLUSTER_DNS, "z211.ttl.test"),
        "resolution and grant through the surviving replica"
    );
    assert!(
        resolve_then_connect(&nginx, CLUSTER_DNS, "o211.ttl.test"),
        "again through the surviving replica"
    );
    assert_eq!(
        rcode(&nginx, CLUSTER_DNS, "npmjs.com"),
        Some(ResponseCode::Refused)
    );
    assert!(
        lab.gateway_queries(1) >= served_2 + 3.0,
        "replica 2 answered the queries after replica 1 was killed"
    );
    println!("(f) one of two gateway replicas killed: ok");

    // (g) expiry: a TTL 0 answer earns the gateway's minimum grant (1 s here); after it, a
    // new connection fails while the one opened before keeps working
    let gw2 = sa(CLUSTER_DNS, 53);
    let (mut open, dst) = in_ns(&nginx, move || {
        let m = query_here(gw2, "z212.ttl.test", Duration::from_secs(3)).expect("answer");
        let ip = addresses(&m)[0];
        let to = SocketAddr::new(ip, 443);
        (
            TcpStream::connect_timeout(&to, Duration::from_secs(1)).expect("connect"),
            to,
        )
    });
    assert!(
        support::exchange(&mut open, b"before"),
        "the open connection works"
    );
    thread::sleep(Duration::from_millis(2500));
    assert!(
        !support::tcp_works(&nginx, dst),
        "a new connection after the grant expired"
    );
    assert!(
        support::exchange(&mut open, b"after"),
        "the connection opened before expiry keeps working"
    );
    println!("(g) grant expiry: new connection refused, open one kept: ok");

    // (h) spoofing: nginx sending as the unrestricted plain pod gets nothing through
    run(&[
        "ip",
        "-n",
        &nginx,
        "addr",
        "add",
        &format!("{PLAIN}/32"),
        "dev",
        "eth0",
    ]);
    assert!(
        !support::tcp_works_from(&nginx, sa(PLAIN, 0), sa(NPMJS, 443)),
        "spoofed source"
    );
    assert!(
        tcp_ok(&plain, NPMJS, 443),
        "the real plain pod is unaffected"
    );
    println!("(h) spoofed source dropped: ok");

    let metrics = lab.metrics();
    for name in [
        "dnsfence_enforcer_packets_total{reason=\"grant\"}",
        "dnsfence_enforcer_packets_total{reason=\"default_deny\"}",
        "dnsfence_enforcer_packets_total{reason=\"spoofed\"}",
        "dnsfence_enforcer_grant_batches_total",
        "dnsfence_enforcer_store_revision",
    ] {
        assert!(
            metric_value(&metrics, name).is_some_and(|v| v > 0.0),
            "{name} in\n{metrics}"
        );
    }
    assert!(metrics.contains("dnsfence_enforcer_grant_write_duration_seconds_bucket"));
}

/// The unlabelled pod under DefaultDeny: only DNS to the gateway, and the gateway refuses.
#[test]
fn default_deny_restricts_the_unlabelled_pod() {
    if !privileged("default_deny_restricts_the_unlabelled_pod") {
        return;
    }
    // this world finds its gateway through DNS (--gateway-dns-name)
    let mut lab = start_world(
        "deny",
        Setup {
            default: "DefaultDeny".into(),
            event_logs: false,
            replicas: 1,
            gateway_by_dns: true,
        },
    );
    let nginx = lab.ns("default/nginx");
    let plain = lab.ns("default/plain");
    assert!(!tcp_ok(&plain, NPMJS, 443), "plain pod → npmjs.com:443");
    assert!(!tcp_ok(&plain, GITHUB, 443), "plain pod → github.com:443");
    // DNS to the gateway passes (an answer comes back), and the gateway refuses
    assert_eq!(
        rcode(&plain, CLUSTER_DNS, "github.com"),
        Some(ResponseCode::Refused)
    );
    assert!(
        query(&plain, AUTHORITY, "github.com", Duration::from_secs(1)).is_none(),
        "DNS elsewhere"
    );
    // the labelled pod works as under DefaultAllow
    assert!(resolve_then_connect(&nginx, CLUSTER_DNS, "github.com"));
    assert!(!tcp_ok(&nginx, NPMJS, 443));

    // a pod registered before its interface exists: pending, then enforced once the CNI
    // wired it (the enforcer retries every second)
    const LATE: &str = "192.0.2.14";
    lab.cli(&[
        "workload",
        "add",
        "default/late",
        "--ip",
        LATE,
        "--node",
        dnsfence_lab::NODE_NAME,
    ]);
    wait_until("the late pod is pending", PATIENCE, || {
        lab.metric("dnsfence_enforcer_pods_pending")
            .is_some_and(|v| v >= 1.0)
    });
    let late = format!("{}-late", lab.world.spec.prefix);
    lab.world
        .add_pod(PodNet {
            workload: "default/late".into(),
            labels: Vec::new(),
            netns: late.clone(),
            veth: "vlate".into(),
            v4: LATE.into(),
            v6: None,
        })
        .unwrap();
    let node = lab.node();
    let started = Instant::now();
    wait_until("the late pod's interface is attached", PATIENCE, || {
        let node = node.clone();
        in_ns(&node, move || netlink::pod_interface(LATE.parse().unwrap()))
            .ok()
            .flatten()
            .is_some()
            && attachments(&node, LATE).1 == 1
    });
    println!(
        "late pod attached {:?} after its interface appeared",
        started.elapsed()
    );
    assert!(!tcp_ok(&late, NPMJS, 443), "the late pod is restricted");
    assert_eq!(
        rcode(&late, CLUSTER_DNS, "github.com"),
        Some(ResponseCode::Refused)
    );
    println!("DefaultDeny: the unlabelled pod is restricted; nginx still reaches github.com");
}
