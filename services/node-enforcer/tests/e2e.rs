//! End-to-end tests with real processes in network namespaces: the policy store (root
//! namespace, Unix socket), the resolver gateway(s) and the node-enforcer (in the "node"
//! namespace, entered with `nsenter --net` so bpffs stays visible), an authoritative DNS
//! server and TCP servers in the "internet" namespace, and two pods: `nginx` (run=nginx,
//! 192.0.2.10) and `plain` (no labels, 192.0.2.12). The seed manifests are applied verbatim
//! with the CLI.
//!
//! They need root; without it they skip with a reason, except under `CI=true`, where they
//! fail. `cargo test -p dnsfence-node-enforcer --test e2e -- --nocapture` prints the
//! measured figures (revocation latency, first-connection successes).

#![allow(clippy::unwrap_used, clippy::expect_used)]

mod support;

// The world is the lab's (crates/lab): the same namespaces, addresses, web servers and zones
// that `dnsfence lab up` builds.
use dnsfence_lab::{serve as lab_serve, topology as lab_topology};

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream, UdpSocket},
    path::{Path, PathBuf},
    process::{Child, Command, Stdio},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::{Duration, Instant},
};

use dnsfence_node_enforcer::{Datapath, Hook, netlink};
use hickory_proto::{
    op::{Message, Query, ResponseCode},
    rr::{Name, RData, RecordType},
};
use support::{in_ns, privileged, run, sa};

const NODE_NAME: &str = "node-1";
const NGINX: &str = "192.0.2.10";
const PLAIN: &str = "192.0.2.12";
const NGINX_V6: &str = "2001:db8:1::10";
const PLAIN_V6: &str = "2001:db8:1::12";
use lab_topology::{
    API_GITHUB, AUTHORITY, AUTHORITY_V6, GITHUB, GITHUB_V6, GW1_DNS, GW2_DNS, NPMJS, NPMJS_V6,
    PodNet, Topology,
};
/// Names in ttl.test: `z<N>` TTL 0 → 10.250.0.N+1, `o<N>` TTL 1 → 10.250.1.N+1.
const TTL_NAMES: u32 = 220;
const ENFORCER_METRICS: &str = "127.0.0.1:9154";
const GW1_GRPC: &str = "127.0.0.1:50052";
const GW1_METRICS: &str = "127.0.0.1:9153";
const GW2_METRICS: &str = "127.0.0.1:9163";
const PATIENCE: Duration = Duration::from_secs(30);

fn seed(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed")
        .join(file)
}

/// The NodeClass of the seed: (networkPolicy, networkPolicyEventLogs == Enabled).
fn node_class() -> (String, bool) {
    let text = std::fs::read_to_string(seed("my-nodeclass.yaml")).unwrap();
    let mut default = "DefaultAllow".to_string();
    let mut logs = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("networkPolicy:") {
            default = v.trim().to_string();
        }
        if let Some(v) = line.strip_prefix("networkPolicyEventLogs:") {
            logs = v.trim() == "Enabled";
        }
    }
    (default, logs)
}

// ---- binaries ----

struct Bins {
    dir: PathBuf,
}

impl Bins {
    fn path(&self, name: &str) -> PathBuf {
        self.dir.join(name)
    }
}

/// Builds the other services' binaries once (same target directory and profile as this
/// test) and returns their directory.
fn bins() -> &'static Bins {
    static BINS: OnceLock<Bins> = OnceLock::new();
    BINS.get_or_init(|| {
        let me = PathBuf::from(env!("CARGO_BIN_EXE_dnsfence-node-enforcer"));
        let dir = me.parent().unwrap().to_path_buf();
        let target = dir.parent().unwrap().to_path_buf();
        let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
        let mut cmd = Command::new(cargo);
        cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
            .env("CARGO_TARGET_DIR", &target)
            .args([
                "build",
                "-q",
                "-p",
                "dnsfence-policy-store",
                "-p",
                "dnsfence-resolver-gateway",
                "-p",
                "dnsfence-cli",
                "-p",
                "dnsfence-test-authority",
            ]);
        if dir.file_name().is_some_and(|n| n == "release") {
            cmd.arg("--release");
        }
        let started = Instant::now();
        let status = cmd.status().expect("running cargo build");
        let names = [
            "dnsfence-policy-store",
            "dnsfence-resolver-gateway",
            "dnsfence",
            "dnsfence-test-authority",
        ];
        // Stale binaries would test old code: a failed build fails the test.
        assert!(status.success(), "building the service binaries failed");
        println!("built the service binaries in {:?}", started.elapsed());
        assert!(
            names.iter().all(|n| dir.join(n).exists()),
            "a service binary is missing after the build"
        );
        Bins { dir }
    })
}

// ---- processes ----

/// A child process, killed (SIGKILL) and reaped on drop.
struct Proc {
    name: &'static str,
    child: Child,
}

impl Proc {
    /// SIGKILL (what dropping does too), named for the reader.
    fn kill9(self) {
        drop(self);
    }

    fn pid(&self) -> u32 {
        self.child.id()
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        eprintln!("stopped {}", self.name);
    }
}

fn spawn(
    name: &'static str,
    netns: Option<&str>,
    program: &Path,
    args: &[String],
    log_dir: &Path,
) -> Proc {
    let mut cmd = lab_topology::command_in(netns, program);
    let open = |suffix: &str| {
        File::options()
            .create(true)
            .append(true)
            .open(log_dir.join(format!("{name}.{suffix}")))
            .unwrap()
    };
    cmd.args(args)
        .env("RUST_LOG", "info")
        .stdin(Stdio::null())
        .stdout(Stdio::from(open("out")))
        .stderr(Stdio::from(open("log")));
    let child = cmd
        .spawn()
        .unwrap_or_else(|e| panic!("starting {name}: {e}"));
    Proc { name, child }
}

// ---- the world ----

struct Namespaces {
    node: String,
    nginx: String,
    plain: String,
    inet: String,
    /// Pods wired after the enforcer started.
    extra: Vec<String>,
    pin_dir: PathBuf,
    /// The lab's world: node, pods nginx (run=nginx) and plain, internet.
    topology: Topology,
}

impl Namespaces {
    fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let suffix = format!(
            "{tag}-{}-{}",
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let topology = Topology::plan(
            &format!("dfe-{suffix}"),
            lab_topology::standard_pods(&format!("dfe-{suffix}")),
        );
        let pod = |w: &str| {
            topology
                .pods
                .iter()
                .find(|p| p.workload == w)
                .map(|p| p.netns.clone())
                .unwrap()
        };
        let t = Self {
            node: topology.node.clone(),
            nginx: pod("default/nginx"),
            plain: pod("default/plain"),
            inet: topology.inet.clone(),
            extra: Vec::new(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dnsfence-e2e-{suffix}")),
            topology,
        };
        // `t` exists first: its Drop removes a half-built world
        t.topology.create().expect("building the namespaces");
        t
    }

    /// Wires an IPv4-only pod namespace `<node>-<tag>` behind host veth `veth`, the way a
    /// CNI would once the pod starts; returns the namespace's name.
    fn add_pod(&mut self, tag: &str, veth: &str, addr: &str) -> String {
        let pod = PodNet {
            workload: String::new(),
            labels: Vec::new(),
            netns: format!("{}-{tag}", self.node),
            veth: veth.into(),
            v4: addr.into(),
            v6: None,
        };
        self.extra.push(pod.netns.clone());
        self.topology.wire_pod(&pod).expect("wiring a pod");
        pod.netns
    }
}

impl Drop for Namespaces {
    fn drop(&mut self) {
        let _ = std::fs::remove_dir_all(&self.pin_dir);
        for ns in &self.extra {
            lab_topology::delete_namespace(ns);
        }
        self.topology.remove();
    }
}

/// The lab's web servers (HTTP, and echo for anything else) on 0.0.0.0 and [::] ports 443
/// and 80 in the internet namespace; threads live until the test process exits.
fn start_web(inet: &str) {
    in_ns(inet, || {
        let addrs = [
            sa("0.0.0.0", 443),
            sa("0.0.0.0", 80),
            sa("::", 443),
            sa("::", 80),
        ];
        lab_serve::spawn(lab_serve::bind(&addrs).expect("bind the web servers"));
    });
}

/// The lab's zones (github.com, npmjs.com, ...) and ttl.test.
fn write_zones(dir: &Path) -> Vec<PathBuf> {
    let mut zones = lab_topology::write_zones(dir).unwrap();
    let mut ttl = String::from("$ORIGIN ttl.test.\n$TTL 300\n");
    ttl.push_str("zero 0 IN A 10.250.3.1\none 1 IN A 10.250.3.2\n");
    for n in 0..TTL_NAMES {
        ttl.push_str(&format!("z{n} 0 IN A 10.250.0.{}\n", n + 1));
        ttl.push_str(&format!("o{n} 1 IN A 10.250.1.{}\n", n + 1));
    }
    let ttl_zone = dir.join("ttl.test.zone");
    std::fs::write(&ttl_zone, ttl).unwrap();
    zones.push(ttl_zone);
    zones
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

/// How a lab is set up.
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

struct Lab {
    // processes first: they are dropped (killed) before the namespaces go
    enforcer: Option<Proc>,
    gateways: Vec<Option<Proc>>,
    authority: Option<Proc>,
    store: Option<Proc>,
    ns: Namespaces,
    dir: tempfile::TempDir,
    setup: Setup,
}

impl Lab {
    fn start(tag: &str, setup: Setup) -> Self {
        let bins = bins();
        let ns = Namespaces::new(tag);
        let dir = tempfile::tempdir().unwrap();
        start_web(&ns.inet);
        let mut lab = Lab {
            enforcer: None,
            gateways: Vec::new(),
            authority: None,
            store: None,
            ns,
            dir,
            setup: setup.clone(),
        };
        let d = lab.dir.path().to_path_buf();
        let zones = write_zones(&d);
        let zone_list: Vec<String> = zones.iter().map(|p| p.display().to_string()).collect();
        lab.authority = Some(spawn(
            "authority",
            Some(&lab.ns.inet),
            &bins.path("dnsfence-test-authority"),
            &[
                "--listen".into(),
                format!("{AUTHORITY}:53"),
                "--zone-file".into(),
                zone_list.join(","),
            ],
            &d,
        ));
        lab.store = Some(spawn(
            "store",
            None,
            &bins.path("dnsfence-policy-store"),
            &[
                "--data-dir".into(),
                d.join("store").display().to_string(),
                "--listen".into(),
                String::new(),
                "--unix-socket".into(),
                lab.store_socket().display().to_string(),
            ],
            &d,
        ));
        wait_until("the store answers", PATIENCE, || {
            lab.cli_ok(&["get", "policies"])
        });
        // the pods, and the seed manifests verbatim
        lab.cli(&[
            "workload",
            "add",
            "default/nginx",
            "--ip",
            NGINX,
            "--ip",
            NGINX_V6,
            "-l",
            "run=nginx",
            "--node",
            NODE_NAME,
        ]);
        lab.cli(&[
            "workload",
            "add",
            "default/plain",
            "--ip",
            PLAIN,
            "--ip",
            PLAIN_V6,
            "--node",
            NODE_NAME,
        ]);
        // CoreDNS lives on another node: allow-dns compiles to a CIDR rule for it
        lab.cli(&[
            "workload",
            "add",
            "kube-system/coredns",
            "--ip",
            "192.0.2.53",
            "-l",
            "k8s-app=kube-dns",
            "--node",
            "node-2",
        ]);
        let ttl_policy = d.join("ttl-names.yaml");
        std::fs::write(&ttl_policy, TTL_POLICY).unwrap();
        lab.cli(&[
            "apply",
            "-f",
            &seed("allow-github.yaml").display().to_string(),
            "-f",
            &seed("allow-dns.yaml").display().to_string(),
            "-f",
            &ttl_policy.display().to_string(),
        ]);
        for i in 0..setup.replicas {
            lab.start_gateway(i);
        }
        lab.start_enforcer();
        lab.wait_enforcer_ready(setup.replicas);
        lab
    }

    fn store_socket(&self) -> PathBuf {
        self.dir.path().join("store.sock")
    }

    fn gateway_grpc(i: usize, dir: &Path) -> String {
        if i == 0 {
            format!("http://{GW1_GRPC}")
        } else {
            format!("unix://{}", dir.join(format!("gw{i}.sock")).display())
        }
    }

    fn start_gateway(&mut self, i: usize) {
        let d = self.dir.path().to_path_buf();
        let (dns, metrics, name) = match i {
            0 => (GW1_DNS, GW1_METRICS, "gateway-1"),
            _ => (GW2_DNS, GW2_METRICS, "gateway-2"),
        };
        let grpc = Self::gateway_grpc(i, &d);
        let grpc_listen = grpc.strip_prefix("http://").unwrap_or(&grpc).to_string();
        let proc = spawn(
            name,
            Some(&self.ns.node),
            &bins().path("dnsfence-resolver-gateway"),
            &[
                "--dns-listen".into(),
                format!("{dns}:53"),
                "--grpc-listen".into(),
                grpc_listen,
                "--metrics-listen".into(),
                metrics.into(),
                "--store".into(),
                format!("unix://{}", self.store_socket().display()),
                "--upstream".into(),
                format!("{AUTHORITY}:53"),
                // short grants for TTL 0/1 answers, so expiry is quick to observe
                "--grant-min-ttl".into(),
                "1s".into(),
                "--default-policy".into(),
                if self.setup.default == "DefaultDeny" {
                    "DefaultDeny".into()
                } else {
                    "DefaultAllow".into()
                },
            ],
            &d,
        );
        if self.gateways.len() <= i {
            self.gateways.resize_with(i + 1, || None);
        }
        self.gateways[i] = Some(proc);
        let node = self.ns.node.clone();
        wait_until(&format!("{name} ready"), PATIENCE, || {
            http_get(&node, metrics, "/readyz").is_some_and(|(code, _)| code == 200)
        });
    }

    fn start_enforcer(&mut self) {
        let d = self.dir.path().to_path_buf();
        let mut gateways: Vec<String> = (0..self.gateways.len())
            .map(|i| Self::gateway_grpc(i, &d))
            .collect();
        let mut args = vec![
            "--node-name".to_string(),
            NODE_NAME.into(),
            "--store".into(),
            format!("unix://{}", self.store_socket().display()),
        ];
        if self.setup.gateway_by_dns {
            let port = GW1_GRPC.rsplit_once(':').unwrap().1;
            args.extend([
                "--gateway-dns-name".into(),
                format!("localhost:{port}"),
                "--gateway-resolve-interval".into(),
                "2s".into(),
            ]);
            gateways.remove(0);
        }
        if !gateways.is_empty() {
            args.extend(["--gateways".into(), gateways.join(",")]);
        }
        args.extend([
            "--gateway-ips".to_string(),
            format!("{GW1_DNS},{GW2_DNS}"),
            "--pin-dir".into(),
            self.ns.pin_dir.display().to_string(),
            "--state-file".into(),
            d.join("enforcer.state").display().to_string(),
            "--default-policy".into(),
            self.setup.default.clone(),
            "--metrics-listen".into(),
            ENFORCER_METRICS.into(),
            "--sweep-interval".into(),
            "1s".into(),
        ]);
        if self.setup.event_logs {
            args.push("--event-logs".into());
        }
        self.enforcer = Some(spawn(
            "enforcer",
            Some(&self.ns.node),
            Path::new(env!("CARGO_BIN_EXE_dnsfence-node-enforcer")),
            &args,
            &d,
        ));
    }

    fn wait_enforcer_ready(&self, subscriptions: usize) {
        let node = self.ns.node.clone();
        wait_until("the enforcer is ready", PATIENCE, || {
            http_get(&node, ENFORCER_METRICS, "/readyz").is_some_and(|(code, _)| code == 200)
        });
        wait_until("the enforcer subscribed to every gateway", PATIENCE, || {
            self.metric("dnsfence_enforcer_gateway_connections")
                .is_some_and(|v| v as usize == subscriptions)
        });
    }

    fn metrics(&self) -> String {
        http_get(&self.ns.node, ENFORCER_METRICS, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The value of the first sample whose line starts with `prefix`.
    fn metric(&self, prefix: &str) -> Option<f64> {
        metric_value(&self.metrics(), prefix)
    }

    fn cli_ok(&self, args: &[&str]) -> bool {
        // the global flag goes after the subcommand for the CLI's subcommands
        let out = Command::new(bins().path("dnsfence"))
            .args(args)
            .env(
                "DNSFENCE_STORE",
                format!("unix://{}", self.store_socket().display()),
            )
            .output()
            .unwrap();
        out.status.success()
    }

    fn cli(&self, args: &[&str]) {
        let out = Command::new(bins().path("dnsfence"))
            .args(args)
            .env(
                "DNSFENCE_STORE",
                format!("unix://{}", self.store_socket().display()),
            )
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "dnsfence {}: {}{}",
            args.join(" "),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }

    fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.dir.path().join(name)).unwrap_or_default()
    }

    fn dump_logs(&self) {
        for name in [
            "enforcer.log",
            "gateway-1.log",
            "gateway-2.log",
            "store.log",
            "authority.log",
        ] {
            let text = self.log(name);
            if !text.is_empty() {
                let tail: Vec<&str> = text.lines().rev().take(40).collect();
                eprintln!("---- {name} (last lines) ----");
                for l in tail.into_iter().rev() {
                    eprintln!("{l}");
                }
            }
        }
    }
}

impl Drop for Lab {
    fn drop(&mut self) {
        if thread::panicking() {
            self.dump_logs();
        }
    }
}

fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

fn wait_until(what: &str, timeout: Duration, mut f: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return;
        }
        thread::sleep(Duration::from_millis(50));
    }
    panic!("timed out waiting until {what}");
}

/// GET from inside `ns`; (status, body).
fn http_get(ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().unwrap();
    let path = path.to_string();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
}

// ---- DNS and TCP from a pod ----

fn dns_message(name: &str, qtype: RecordType) -> Vec<u8> {
    let mut m = Message::query();
    m.metadata.recursion_desired = true;
    m.metadata.id = rand_id();
    m.add_query(Query::query(Name::from_ascii(name).unwrap(), qtype));
    m.to_vec().unwrap()
}

fn rand_id() -> u16 {
    static N: AtomicUsize = AtomicUsize::new(1);
    (N.fetch_add(7919, Ordering::Relaxed) % 65_521) as u16
}

/// Sends a query over UDP from the calling thread's namespace; `None` without an answer
/// within `wait`.
fn query_type_here(
    server: SocketAddr,
    name: &str,
    qtype: RecordType,
    wait: Duration,
) -> Option<Message> {
    let bind = if server.is_ipv4() { "0.0.0.0" } else { "::" };
    let s = UdpSocket::bind(sa(bind, 0)).ok()?;
    s.set_read_timeout(Some(wait)).ok()?;
    s.send_to(&dns_message(name, qtype), server).ok()?;
    let mut buf = vec![0u8; 4096];
    let (n, _) = s.recv_from(&mut buf).ok()?;
    Message::from_vec(&buf[..n]).ok()
}

fn query_here(server: SocketAddr, name: &str, wait: Duration) -> Option<Message> {
    query_type_here(server, name, RecordType::A, wait)
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
    in_ns(ns, move || query_type_here(server, &name, qtype, wait))
}

fn query(ns: &str, server: &str, name: &str, wait: Duration) -> Option<Message> {
    let server = sa(server, 53);
    let name = name.to_string();
    in_ns(ns, move || query_here(server, &name, wait))
}

fn addresses(m: &Message) -> Vec<IpAddr> {
    m.answers
        .iter()
        .filter_map(|r| match &r.data {
            RData::A(a) => Some(IpAddr::V4(a.0)),
            RData::AAAA(a) => Some(IpAddr::V6(a.0)),
            _ => None,
        })
        .collect()
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
    let (default, event_logs) = node_class();
    assert_eq!(default, "DefaultAllow", "the seed NodeClass");
    let mut lab = Lab::start(
        "seed",
        Setup {
            default: default.clone(),
            event_logs,
            replicas: 2,
            gateway_by_dns: false,
        },
    );
    let nginx = lab.ns.nginx.clone();
    let plain = lab.ns.plain.clone();
    let node = lab.ns.node.clone();

    // (a) the seed scenario
    let (_, egress, ingress) = attachments(&node, NGINX);
    assert_eq!((egress, ingress), (1, 1), "programs attached once");
    assert!(
        !tcp_ok(&nginx, GITHUB, 443),
        "github.com:443 before any DNS answer"
    );
    assert_eq!(
        resolve(&nginx, GW1_DNS, "github.com"),
        vec![GITHUB.parse::<IpAddr>().unwrap()]
    );
    assert!(
        tcp_ok(&nginx, GITHUB, 443),
        "github.com:443 after the answer"
    );
    assert!(
        resolve_then_connect(&nginx, GW1_DNS, "api.github.com"),
        "api.github.com:443"
    );
    assert_eq!(
        rcode(&nginx, GW1_DNS, "npmjs.com"),
        Some(ResponseCode::Refused)
    );
    assert!(!tcp_ok(&nginx, NPMJS, 443), "npmjs.com's address directly");
    assert!(!tcp_ok(&nginx, GITHUB, 80), "github.com:80");
    // unlabelled pod, DefaultAllow: unrestricted
    assert!(tcp_ok(&plain, NPMJS, 443), "plain pod → npmjs.com:443");
    assert!(tcp_ok(&plain, GITHUB, 80), "plain pod → github.com:80");
    assert_eq!(
        resolve(&plain, GW1_DNS, "npmjs.com"),
        vec![NPMJS.parse::<IpAddr>().unwrap()]
    );
    println!("(a) seed scenario: ok");

    // IPv6 behaves as IPv4
    let v6 = query_type(
        &nginx,
        GW1_DNS,
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
                lab.log("enforcer.out").lines().any(|l| {
                    serde_json::from_str::<serde_json::Value>(l).is_ok_and(|v| {
                        v["pod"] == "default/nginx"
                            && v["destination"] == NPMJS
                            && v["port"] == 443
                            && v["verdict"] == "drop"
                            && v["reason"] == "default_deny"
                            && v["protocol"] == "TCP"
                            && v["namespace"] == "default"
                            && v["policy"].as_str().is_some_and(|p| !p.is_empty())
                    })
                })
            },
        );
        println!(
            "flow log: {}",
            lab.log("enforcer.out").lines().next().unwrap_or("")
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
            if resolve_then_connect(&nginx, GW1_DNS, &format!("{prefix}{n}.ttl.test")) {
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
        assert!(resolve_then_connect(&nginx, GW1_DNS, name), "{name}");
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
    let narrowed_path = lab.dir.path().join("allow-github-narrowed.yaml");
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
        rcode(&nginx, GW1_DNS, "api.github.com") == Some(ResponseCode::Refused)
    });
    assert!(
        lab.metric("dnsfence_enforcer_revoked_grants_total")
            .unwrap_or(0.0)
            > revoked_before,
        "revocations counted"
    );

    // (d) kill -9 of the enforcer: enforcement stays
    let pid = lab.enforcer.as_ref().unwrap().pid();
    lab.enforcer.take().unwrap().kill9();
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
    lab.start_enforcer();
    lab.wait_enforcer_ready(2);
    let (ifindex2, egress, ingress) = attachments(&node, NGINX);
    assert_eq!(ifindex2, ifindex);
    assert_eq!((egress, ingress), (1, 1), "attached once after the restart");
    assert!(
        tcp_ok(&nginx, GITHUB, 443),
        "the grant survived the restart"
    );
    assert!(!tcp_ok(&nginx, NPMJS, 443), "denied after the restart");
    assert!(
        resolve_then_connect(&nginx, GW1_DNS, "z210.ttl.test"),
        "a new grant after the restart"
    );
    assert!(
        lab.log("enforcer.log").contains("state restored"),
        "the restarted enforcer resumed from its state file"
    );
    println!("(d) kill -9 and restart: ok");

    // (f) two replicas, one killed: the other keeps resolving and granting
    lab.gateways[0].take().unwrap().kill9();
    assert!(
        resolve_then_connect(&nginx, GW2_DNS, "z211.ttl.test"),
        "resolution and grant through the surviving replica"
    );
    assert!(
        resolve_then_connect(&nginx, GW2_DNS, "o211.ttl.test"),
        "again through the surviving replica"
    );
    assert_eq!(
        rcode(&nginx, GW2_DNS, "npmjs.com"),
        Some(ResponseCode::Refused)
    );
    println!("(f) one of two gateway replicas killed: ok");

    // (g) expiry: a TTL 0 answer earns the gateway's minimum grant (1 s here); after it, a
    // new connection fails while the one opened before keeps working
    let gw2 = sa(GW2_DNS, 53);
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
    assert!(metrics.contains("dnsfence_enforcer_grant_write_seconds_bucket"));
}

/// The unlabelled pod under DefaultDeny: only DNS to the gateway, and the gateway refuses.
#[test]
fn default_deny_restricts_the_unlabelled_pod() {
    if !privileged("default_deny_restricts_the_unlabelled_pod") {
        return;
    }
    // this world finds its gateway through DNS (--gateway-dns-name)
    let mut lab = Lab::start(
        "deny",
        Setup {
            default: "DefaultDeny".into(),
            event_logs: false,
            replicas: 1,
            gateway_by_dns: true,
        },
    );
    let nginx = lab.ns.nginx.clone();
    let plain = lab.ns.plain.clone();
    assert!(!tcp_ok(&plain, NPMJS, 443), "plain pod → npmjs.com:443");
    assert!(!tcp_ok(&plain, GITHUB, 443), "plain pod → github.com:443");
    // DNS to the gateway passes (an answer comes back), and the gateway refuses
    assert_eq!(
        rcode(&plain, GW1_DNS, "github.com"),
        Some(ResponseCode::Refused)
    );
    assert!(
        query(&plain, AUTHORITY, "github.com", Duration::from_secs(1)).is_none(),
        "DNS elsewhere"
    );
    // the labelled pod works as under DefaultAllow
    assert!(resolve_then_connect(&nginx, GW1_DNS, "github.com"));
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
        NODE_NAME,
    ]);
    wait_until("the late pod is pending", PATIENCE, || {
        lab.metric("dnsfence_enforcer_pods_pending")
            .is_some_and(|v| v >= 1.0)
    });
    let late = lab.ns.add_pod("late", "vlate", LATE);
    let node = lab.ns.node.clone();
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
        rcode(&late, GW1_DNS, "github.com"),
        Some(ResponseCode::Refused)
    );
    println!("DefaultDeny: the unlabelled pod is restricted; nginx still reaches github.com");
}
