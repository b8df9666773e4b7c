//! The world as network namespaces, Calico style: each pod behind a host veth in the node
//! namespace (routed, proxy ARP, `169.254.1.1`/`fe80::1` next hops), the node routing to an
//! "internet" namespace that holds the authority and the web servers. Documentation-range
//! addresses only. Namespaces and links are made with `ip` (the enforcer itself uses netlink).

use std::{
    fs::File,
    net::{IpAddr, SocketAddr},
    path::{Path, PathBuf},
    process::Command,
    thread,
};

use anyhow::{Context, bail};
use nix::sched::{CloneFlags, setns};

/// The cluster's DNS address (the "kube-dns" Service in kube-system), on the node: every
/// gateway replica serves it (SO_REUSEPORT), and it is the pods' resolver.
pub const CLUSTER_DNS: &str = "192.0.2.53";
/// The cluster domain, served by the authority as CoreDNS would (for the search list).
pub const CLUSTER_DOMAIN: &str = "cluster.local";
/// The authority in the internet namespace (the gateways' upstream).
pub const AUTHORITY: &str = "203.0.113.53";
pub const AUTHORITY_V6: &str = "2001:db8:2::53";
pub const GITHUB: &str = "203.0.113.10";
pub const GITHUB_V6: &str = "2001:db8:2::10";
pub const API_GITHUB: &str = "203.0.113.11";
pub const NPMJS: &str = "203.0.113.20";
pub const NPMJS_V6: &str = "2001:db8:2::20";
pub const REGISTRY_NPMJS: &str = "203.0.113.21";
/// The IPv6-only name's address.
pub const V6_ONLY: &str = "2001:db8:2::30";
/// Every address of these ranges is local to the internet namespace (CDN-like names, TTL
/// test names).
pub const CDN_RANGE: &str = "198.51.100.0/24";
pub const TTL_RANGE: &str = "10.250.0.0/16";

/// A pod: its namespace, host veth on the node and addresses.
#[derive(Debug, Clone)]
pub struct PodNet {
    /// `namespace/name` as registered with the store.
    pub workload: String,
    /// Labels, `key=value`.
    pub labels: Vec<String>,
    /// The network namespace.
    pub netns: String,
    /// The host side of the veth, in the node namespace.
    pub veth: String,
    pub v4: String,
    pub v6: Option<String>,
}

/// The namespaces of one world. Removal is explicit ([`Topology::remove`]).
#[derive(Debug, Clone)]
pub struct Topology {
    pub node: String,
    pub inet: String,
    pub pods: Vec<PodNet>,
}

/// The standard pods, all on the lab's one node:
/// - `default/nginx` (run=nginx): the seed's policies select it;
/// - `default/plain` (no labels) and `default/web` (app=web): in the same namespace, not
///   selected: the node default applies;
/// - `shop/nginx` (run=nginx) in another namespace: the seed's namespaced policy does not
///   reach it.
pub fn standard_pods(prefix: &str) -> Vec<PodNet> {
    let pod = |workload: &str, short: &str, labels: &[&str], last: u8| PodNet {
        workload: workload.into(),
        labels: labels.iter().map(|l| l.to_string()).collect(),
        netns: format!("{prefix}-{short}"),
        veth: format!("v{short}"),
        v4: format!("192.0.2.{last}"),
        v6: Some(format!("2001:db8:1::{last}")),
    };
    vec![
        pod("default/nginx", "nginx", &["run=nginx"], 10),
        pod("default/plain", "plain", &[], 12),
        pod("default/web", "web", &["app=web", "tier=frontend"], 16),
        pod("shop/nginx", "shop-nginx", &["run=nginx"], 18),
    ]
}

/// A pod's resolv.conf as the kubelet writes it (ClusterFirst): the cluster DNS address,
/// the pod namespace's search list, ndots:5.
pub fn resolv_conf(pod: &PodNet) -> String {
    let namespace = pod.workload.split('/').next().unwrap_or("default");
    format!(
        "nameserver {CLUSTER_DNS}\nsearch {namespace}.svc.{CLUSTER_DOMAIN} svc.{CLUSTER_DOMAIN} {CLUSTER_DOMAIN}\noptions ndots:5\n"
    )
}

/// Runs a command; fails with its stderr.
pub fn run(args: &[&str]) -> anyhow::Result<()> {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .with_context(|| format!("running {}", args.join(" ")))?;
    if !out.status.success() {
        bail!(
            "`{}` failed: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim()
        );
    }
    Ok(())
}

fn sysctl(ns: &str, settings: &[String]) -> anyhow::Result<()> {
    let mut args = vec!["ip", "netns", "exec", ns, "sysctl", "-qw"];
    args.extend(settings.iter().map(String::as_str));
    run(&args)
}

/// The namespaces whose names start with `prefix-`.
pub fn namespaces_with_prefix(prefix: &str) -> Vec<String> {
    let want = format!("{prefix}-");
    std::fs::read_dir("/run/netns")
        .map(|d| {
            d.flatten()
                .filter_map(|e| e.file_name().into_string().ok())
                .filter(|n| n.starts_with(&want))
                .collect()
        })
        .unwrap_or_default()
}

/// Deletes a namespace (its veths go with it); true if it existed.
pub fn delete_namespace(ns: &str) -> bool {
    if !PathBuf::from("/run/netns").join(ns).exists() {
        return false;
    }
    Command::new("ip")
        .args(["netns", "del", ns])
        .status()
        .is_ok_and(|s| s.success())
}

impl Topology {
    /// Names the world: `<prefix>-node`, `<prefix>-inet` and the given pods.
    pub fn plan(prefix: &str, pods: Vec<PodNet>) -> Self {
        Self {
            node: format!("{prefix}-node"),
            inet: format!("{prefix}-inet"),
            pods,
        }
    }

    /// Every namespace of the world.
    pub fn namespaces(&self) -> Vec<String> {
        let mut v: Vec<String> = self.pods.iter().map(|p| p.netns.clone()).collect();
        v.push(self.inet.clone());
        v.push(self.node.clone());
        v
    }

    /// Removes every namespace (and so every veth); ignores missing ones.
    pub fn remove(&self) {
        for ns in self.namespaces() {
            delete_namespace(&ns);
        }
    }

    fn add_ns(ns: &str) -> anyhow::Result<()> {
        run(&["ip", "netns", "add", ns])?;
        run(&["ip", "-n", ns, "link", "set", "lo", "up"])?;
        // no duplicate address detection: tentative addresses delay the first packets
        sysctl(
            ns,
            &[
                "net.ipv6.conf.all.accept_dad=0".into(),
                "net.ipv6.conf.default.accept_dad=0".into(),
            ],
        )
    }

    /// Creates the namespaces, links, addresses and routes.
    pub fn create(&self) -> anyhow::Result<()> {
        let node = self.node.as_str();
        let inet = self.inet.as_str();
        Self::add_ns(node)?;
        Self::add_ns(inet)?;
        sysctl(
            node,
            &[
                "net.ipv4.ip_forward=1".into(),
                "net.ipv6.conf.all.forwarding=1".into(),
                "net.ipv4.conf.all.rp_filter=0".into(),
                "net.ipv4.conf.default.rp_filter=0".into(),
            ],
        )?;
        // the cluster DNS address: what pods use as their resolver
        run(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            &format!("{CLUSTER_DNS}/32"),
            "dev",
            "lo",
        ])?;
        run(&[
            "ip", "-n", node, "link", "add", "vinet", "type", "veth", "peer", "name", "eth0",
            "netns", inet,
        ])?;
        run(&["ip", "-n", node, "link", "set", "vinet", "up"])?;
        run(&[
            "ip",
            "-n",
            node,
            "addr",
            "add",
            "203.0.113.1/24",
            "dev",
            "vinet",
        ])?;
        run(&[
            "ip",
            "-n",
            node,
            "-6",
            "addr",
            "add",
            "2001:db8:2::1/64",
            "dev",
            "vinet",
            "nodad",
        ])?;
        // a default route also makes proxy_arp answer for the pods' 169.254.1.1 next hop
        run(&[
            "ip",
            "-n",
            node,
            "route",
            "add",
            "default",
            "via",
            "203.0.113.2",
        ])?;
        for range in [CDN_RANGE, TTL_RANGE] {
            run(&[
                "ip",
                "-n",
                node,
                "route",
                "add",
                range,
                "via",
                "203.0.113.2",
            ])?;
        }
        run(&["ip", "-n", inet, "link", "set", "eth0", "up"])?;
        for a in [
            "203.0.113.2",
            GITHUB,
            API_GITHUB,
            NPMJS,
            REGISTRY_NPMJS,
            AUTHORITY,
        ] {
            run(&[
                "ip",
                "-n",
                inet,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "eth0",
            ])?;
        }
        for a in ["2001:db8:2::2", GITHUB_V6, NPMJS_V6, V6_ONLY, AUTHORITY_V6] {
            run(&[
                "ip",
                "-n",
                inet,
                "-6",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "eth0",
                "nodad",
            ])?;
        }
        run(&[
            "ip",
            "-n",
            inet,
            "route",
            "add",
            "192.0.2.0/24",
            "via",
            "203.0.113.1",
        ])?;
        run(&[
            "ip",
            "-n",
            inet,
            "-6",
            "route",
            "add",
            "2001:db8:1::/64",
            "via",
            "2001:db8:2::1",
        ])?;
        for range in [CDN_RANGE, TTL_RANGE] {
            run(&[
                "ip", "-n", inet, "route", "add", "local", range, "dev", "lo",
            ])?;
        }
        for pod in &self.pods {
            self.wire_pod(pod)?;
        }
        Ok(())
    }

    /// Creates a pod's namespace and wires it behind its host veth, the way a CNI would.
    pub fn wire_pod(&self, pod: &PodNet) -> anyhow::Result<()> {
        let node = self.node.as_str();
        let ns = pod.netns.as_str();
        let veth = pod.veth.as_str();
        Self::add_ns(ns)?;
        run(&[
            "ip", "-n", node, "link", "add", veth, "type", "veth", "peer", "name", "eth0", "netns",
            ns,
        ])?;
        sysctl(
            node,
            &[
                format!("net.ipv4.conf.{veth}.rp_filter=0"),
                format!("net.ipv4.conf.{veth}.proxy_arp=1"),
                // answer proxy ARP at once, not after up to 0.8 s (Calico does the same)
                format!("net.ipv4.neigh.{veth}.proxy_delay=0"),
            ],
        )?;
        run(&["ip", "-n", ns, "link", "set", "eth0", "up"])?;
        run(&[
            "ip",
            "-n",
            ns,
            "addr",
            "add",
            &format!("{}/32", pod.v4),
            "dev",
            "eth0",
        ])?;
        run(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "169.254.1.1",
            "dev",
            "eth0",
            "scope",
            "link",
        ])?;
        run(&[
            "ip",
            "-n",
            ns,
            "route",
            "add",
            "default",
            "via",
            "169.254.1.1",
            "dev",
            "eth0",
        ])?;
        run(&["ip", "-n", node, "link", "set", veth, "up"])?;
        run(&[
            "ip",
            "-n",
            node,
            "route",
            "add",
            &format!("{}/32", pod.v4),
            "dev",
            veth,
        ])?;
        if let Some(v6) = &pod.v6 {
            run(&[
                "ip",
                "-n",
                ns,
                "-6",
                "addr",
                "add",
                &format!("{v6}/128"),
                "dev",
                "eth0",
                "nodad",
            ])?;
            run(&[
                "ip", "-n", ns, "-6", "route", "add", "default", "via", "fe80::1", "dev", "eth0",
            ])?;
            run(&[
                "ip",
                "-n",
                node,
                "-6",
                "addr",
                "add",
                "fe80::1/64",
                "dev",
                veth,
                "nodad",
            ])?;
            run(&[
                "ip",
                "-n",
                node,
                "-6",
                "route",
                "add",
                &format!("{v6}/128"),
                "dev",
                veth,
            ])?;
        }
        Ok(())
    }
}

/// Runs `f` on a new thread inside network namespace `ns` (`setns` is per thread).
pub fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> T + Send + 'static,
) -> anyhow::Result<T> {
    let path = format!("/run/netns/{ns}");
    let handle = thread::spawn(move || -> anyhow::Result<T> {
        let file = File::open(&path).with_context(|| path.clone())?;
        setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
        Ok(f())
    });
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// A socket address from text; panics only on a malformed constant.
pub fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(
        addr.parse::<IpAddr>().unwrap_or(IpAddr::from([0, 0, 0, 0])),
        port,
    )
}

/// A command that runs `program` inside `netns` (`nsenter --net`, which, unlike
/// `ip netns exec`, keeps bpffs visible), or in the current namespace.
pub fn command_in(netns: Option<&str>, program: &Path) -> Command {
    match netns {
        Some(ns) => {
            let mut c = Command::new("nsenter");
            c.arg(format!("--net=/run/netns/{ns}"))
                .arg("--")
                .arg(program);
            c
        }
        None => Command::new(program),
    }
}

/// Writes the internet's zone files into `dir` and returns their paths.
pub fn write_zones(dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    std::fs::create_dir_all(dir)?;
    let mut cdn = String::from("$ORIGIN cdn.example.\n$TTL 60\n");
    // a CDN-like name with many addresses
    for i in 1..=16 {
        cdn.push_str(&format!("static IN A 198.51.100.{i}\n"));
    }
    // a CNAME chain: www -> edge -> static
    cdn.push_str("www IN CNAME edge\nedge IN CNAME static\n");
    // an IPv6-only name
    cdn.push_str(&format!("v6only IN AAAA {V6_ONLY}\n"));
    let zones = [
        (
            "github.com",
            format!(
                "$ORIGIN github.com.\n$TTL 300\n@ IN A {GITHUB}\n@ IN AAAA {GITHUB_V6}\napi IN A {API_GITHUB}\n"
            ),
        ),
        (
            "npmjs.com",
            format!("$ORIGIN npmjs.com.\n$TTL 300\n@ IN A {NPMJS}\n@ IN AAAA {NPMJS_V6}\n"),
        ),
        (
            "npmjs.org",
            format!("$ORIGIN npmjs.org.\n$TTL 300\nregistry IN A {REGISTRY_NPMJS}\n"),
        ),
        ("cdn.example", cdn),
        // what CoreDNS answers for the cluster domain: names of the pods' search list that
        // are not Services get NXDOMAIN
        (
            CLUSTER_DOMAIN,
            format!(
                "$ORIGIN {CLUSTER_DOMAIN}.\n$TTL 30\nkube-dns.kube-system.svc IN A {CLUSTER_DNS}\n"
            ),
        ),
    ];
    let mut paths = Vec::new();
    for (name, text) in zones {
        let p = dir.join(format!("{name}.zone"));
        std::fs::write(&p, text)?;
        paths.push(p);
    }
    Ok(paths)
}
