//! Test scaffolding for the privileged datapath tests: the lab's Calico-style routed world
//! (pods ─ node ─ internet, `dnsfence_lab::topology`), echo servers, and helpers that run
//! a closure inside a namespace on its own thread (`setns` is per thread).
//!
//! The namespaces are removed by [`Topology`]'s `Drop`, even when a test panics.

#![allow(dead_code)]

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpListener, TcpStream, UdpSocket},
    path::PathBuf,
    process::Command,
    sync::{
        Arc, Mutex,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
    time::Duration,
};

pub mod world;

use dnsfence_lab::topology as lab_topology;
use nix::sched::{CloneFlags, setns};

/// How long a connect or a reply may take before it counts as blocked.
pub const TIMEOUT: Duration = Duration::from_millis(800);

/// True when the privileged tests can run. Not root: skip with a reason, unless
/// `CI=true`, where skipping would hide a broken datapath: then fail.
pub fn privileged(test: &str) -> bool {
    if nix::unistd::geteuid().is_root() {
        return true;
    }
    assert!(
        std::env::var("CI").as_deref() != Ok("true"),
        "{test}: CI=true but not root: the datapath tests must run as root"
    );
    eprintln!(
        "skipping {test}: needs root (network namespaces, BPF); CI=true makes this a failure"
    );
    false
}

pub fn run(args: &[&str]) {
    let out = Command::new(args[0])
        .args(&args[1..])
        .output()
        .unwrap_or_else(|e| panic!("{}: {e}", args.join(" ")));
    assert!(
        out.status.success(),
        "`{}` failed: {}",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Runs `f` on a new thread inside network namespace `ns` and returns its result.
pub fn in_ns<T: Send + 'static>(ns: &str, f: impl FnOnce() -> T + Send + 'static) -> T {
    let path = format!("/run/netns/{ns}");
    let handle = thread::spawn(move || {
        let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
        setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(p) => std::panic::resume_unwind(p),
    }
}

/// Enters `ns` for the rest of the calling thread's life.
pub fn enter_ns(ns: &str) {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).unwrap_or_else(|e| panic!("{path}: {e}"));
    setns(&file, CloneFlags::CLONE_NEWNET).expect("setns");
}

/// The world: the lab's node and internet (`dnsfence_lab::topology`, the same code `lab up`
/// runs) with two pods of its own, and extra internet addresses (a web server, a second
/// resolver). Names carry a unique suffix; dropping it removes the namespaces and pins.
pub struct Topology {
    pub node: String,
    pub pod1: String,
    pub pod2: String,
    pub inet: String,
    /// Per-test bpffs pin directory (removed on drop).
    pub pin_dir: PathBuf,
    world: lab_topology::Topology,
}

pub const POD1_V4: &str = "192.0.2.10";
pub const POD1_V6: &str = "2001:db8:1::10";
pub const POD2_V4: &str = "192.0.2.11";
pub const POD2_V6: &str = "2001:db8:1::11";
pub const WEB_V4: &str = "203.0.113.80";
pub const WEB_V6: &str = "2001:db8:2::80";
/// The lab's authority address stands in for a gateway.
pub const GW_V4: &str = lab_topology::AUTHORITY;
pub const GW_V6: &str = lab_topology::AUTHORITY_V6;
pub const OTHER_DNS_V4: &str = "203.0.113.54";
pub const OTHER_DNS_V6: &str = "2001:db8:2::54";

pub fn ip(s: &str) -> IpAddr {
    s.parse().expect("address")
}

pub fn sa(addr: &str, port: u16) -> SocketAddr {
    SocketAddr::new(ip(addr), port)
}

impl Topology {
    pub fn new(tag: &str) -> Self {
        static N: AtomicUsize = AtomicUsize::new(0);
        let prefix = format!(
            "dft-{}-{}-{}",
            tag,
            std::process::id(),
            N.fetch_add(1, Ordering::SeqCst)
        );
        let pod = |short: &str, v4: &str, v6: &str| lab_topology::PodNet {
            workload: format!("default/{short}"),
            labels: Vec::new(),
            netns: format!("{prefix}-{short}"),
            veth: format!("v{short}"),
            v4: v4.into(),
            v6: Some(v6.into()),
        };
        let world = lab_topology::Topology::plan(
            &prefix,
            vec![pod("pod1", POD1_V4, POD1_V6), pod("pod2", POD2_V4, POD2_V6)],
        );
        let t = Self {
            node: world.node.clone(),
            pod1: world.pods[0].netns.clone(),
            pod2: world.pods[1].netns.clone(),
            inet: world.inet.clone(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dnsfence-test-{prefix}")),
            world,
        };
        // `t` exists first: its Drop removes a half-built world
        t.world.create().expect("building the namespaces");
        for a in [WEB_V4, OTHER_DNS_V4] {
            run(&[
                "ip",
                "-n",
                &t.inet,
                "addr",
                "add",
                &format!("{a}/24"),
                "dev",
                "eth0",
            ]);
        }
        for a in [WEB_V6, OTHER_DNS_V6] {
            run(&[
                "ip",
                "-n",
                &t.inet,
                "-6",
                "addr",
                "add",
                &format!("{a}/64"),
                "dev",
                "eth0",
                "nodad",
            ]);
        }
        t
    }

    /// Adds an extra address to pod1's interface (for the spoofing test).
    pub fn add_pod1_addr(&self, cidr: &str) {
        run(&["ip", "-n", &self.pod1, "addr", "add", cidr, "dev", "eth0"]);
    }
}

impl Drop for Topology {
    fn drop(&mut self) {
        self.world.remove();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// What the UDP servers received, as (server address, payload).
pub type Received = Arc<Mutex<Vec<(SocketAddr, Vec<u8>)>>>;

/// Starts echo servers in the internet namespace: TCP on the web addresses' 443 and 80,
/// UDP on the web addresses' 443 and on port 53 of the gateway and the other resolver.
/// Threads live until the process exits.
pub fn start_servers(inet: &str) -> Received {
    let received: Received = Arc::default();
    let rec = received.clone();
    in_ns(inet, move || {
        for addr in [WEB_V4, WEB_V6] {
            for port in [443, 80] {
                let l = TcpListener::bind(sa(addr, port)).expect("bind tcp");
                thread::spawn(move || {
                    for conn in l.incoming().flatten() {
                        thread::spawn(move || echo_tcp(conn));
                    }
                });
            }
        }
        for (addr, port) in [
            (WEB_V4, 443),
            (WEB_V6, 443),
            (GW_V4, 53),
            (GW_V6, 53),
            (OTHER_DNS_V4, 53),
            (OTHER_DNS_V6, 53),
        ] {
            let s = UdpSocket::bind(sa(addr, port)).expect("bind udp");
            let rec = rec.clone();
            thread::spawn(move || {
                let mut buf = vec![0u8; 65536];
                while let Ok((n, from)) = s.recv_from(&mut buf) {
                    if let Ok(mut r) = rec.lock() {
                        r.push((sa(addr, port), buf[..n].to_vec()));
                    }
                    let _ = s.send_to(&buf[..n], from);
                }
            });
        }
    });
    received
}

fn echo_tcp(mut conn: TcpStream) {
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

/// Opens a TCP connection from inside `ns`.
pub fn tcp_connect(ns: &str, to: SocketAddr) -> std::io::Result<TcpStream> {
    in_ns(ns, move || TcpStream::connect_timeout(&to, TIMEOUT))
}

/// Sends a line over an open connection and expects it echoed.
pub fn exchange(conn: &mut TcpStream, msg: &[u8]) -> bool {
    let _ = conn.set_read_timeout(Some(TIMEOUT));
    if conn.write_all(msg).is_err() {
        return false;
    }
    let mut buf = vec![0u8; msg.len()];
    conn.read_exact(&mut buf).is_ok() && buf == msg
}

/// Connects from `ns` and exchanges one message: the whole path works both ways.
pub fn tcp_works(ns: &str, to: SocketAddr) -> bool {
    match tcp_connect(ns, to) {
        Ok(mut c) => exchange(&mut c, b"hello"),
        Err(_) => false,
    }
}

/// Connects from `ns` with the socket bound to `from` first (to spoof a source).
pub fn tcp_works_from(ns: &str, from: SocketAddr, to: SocketAddr) -> bool {
    in_ns(ns, move || {
        let domain = socket2::Domain::for_address(to);
        let s = socket2::Socket::new(domain, socket2::Type::STREAM, None).expect("socket");
        s.bind(&from.into()).expect("bind");
        if s.connect_timeout(&to.into(), TIMEOUT).is_err() {
            return false;
        }
        let mut c: TcpStream = s.into();
        exchange(&mut c, b"hello")
    })
}

/// Sends one UDP datagram from `ns` (bound to `from`, or any) and waits for the echo.
pub fn udp_echo(ns: &str, from: Option<SocketAddr>, to: SocketAddr, payload: Vec<u8>) -> bool {
    in_ns(ns, move || {
        let bind = from.unwrap_or_else(|| {
            if to.is_ipv4() {
                sa("0.0.0.0", 0)
            } else {
                sa("::", 0)
            }
        });
        let s = UdpSocket::bind(bind).expect("bind");
        s.set_read_timeout(Some(TIMEOUT)).expect("timeout");
        if s.send_to(&payload, to).is_err() {
            return false;
        }
        let mut buf = vec![0u8; 65536];
        matches!(s.recv_from(&mut buf), Ok((n, _)) if buf[..n] == payload[..])
    })
}
