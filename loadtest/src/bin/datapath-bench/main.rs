//! Benchmark of the node-enforcer datapath (needs root): builds pods ─ node ─ internet in
//! network namespaces, loads the eBPF programs through `dnsfence_node_enforcer::Datapath`
//! into a private pin directory, fills the `grants` map with N distinct entries and prints
//!
//! 1. TCP bulk throughput, 64-byte request/response latency and new-connection time from a
//!    pod whose interface runs the programs (enforced, its grant among N others) and from the
//!    same pod with the programs detached, alternating, and the ratio;
//! 2. the programs' run time per invocation from `kernel.bpf_stats_enabled` (an average);
//! 3. the time to write one grant and a batch of 1,000 grants into the full map (the
//!    enforcer's work between receiving a `GrantBatch` and sending its `Ack`);
//! 4. the kernel's memory accounting of the grants map per entry;
//! 5. the programs' own run time on one crafted packet with `BPF_PROG_TEST_RUN` (established
//!    TCP flow over IPv4 and IPv6, and a pod in allow mode); `--test-run-only` runs just this.
//!
//! Namespaces, the pin directory and the sysctl are restored by a guard on every exit path,
//! including SIGINT/SIGTERM.

use std::{
    fs::File,
    io::{Read, Write},
    net::{IpAddr, Ipv6Addr, Shutdown, SocketAddr, TcpListener, TcpStream},
    os::fd::{AsFd, AsRawFd},
    path::{Path, PathBuf},
    process::Command,
    sync::{Mutex, mpsc},
    thread,
    time::{Duration, Instant},
};

mod per_packet;
mod test_run;

use anyhow::{Context, bail};
use clap::Parser;
use dnsfence_lab::topology::{PodNet, Topology as LabTopology};
use dnsfence_node_enforcer::{
    Datapath, DatapathOptions, Hook, Mode, PortSpec, Protocol, Reason, clock, netlink,
};
use nix::sched::{CloneFlags, setns};
use nix::sys::signal::{SigSet, Signal};

#[derive(Debug, Parser)]
#[command(
    name = "datapath-bench",
    about = "Benchmark of the eBPF datapath: throughput/latency enforced vs not, program run time, grant write latency, map memory (root)"
)]
struct Args {
    /// Grant entries loaded into the map before measuring.
    #[arg(long, default_value_t = 1_000_000)]
    grants: u32,
    /// Seconds of each bulk-throughput run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Rounds of (enforced, unenforced) traffic, interleaved; medians over rounds are shown.
    #[arg(long, default_value_t = 5)]
    rounds: usize,
    /// Sequential 64-byte round trips per latency run.
    #[arg(long, default_value_t = 20_000)]
    round_trips: usize,
    /// New connections per connection-setup run.
    #[arg(long, default_value_t = 2_000)]
    connections: usize,
    /// Repetitions of the one-grant write.
    #[arg(long, default_value_t = 2_000)]
    single_reps: usize,
    /// Repetitions of the 1,000-grant batch write.
    #[arg(long, default_value_t = 200)]
    batch_reps: usize,
    /// Small numbers for a smoke run (overrides the others).
    #[arg(long)]
    quick: bool,
    /// Only the programs' run time on crafted packets (BPF_PROG_TEST_RUN: established TCP
    /// flow over IPv4 and IPv6, and a pod in allow mode): skips the traffic, bpf_stats and
    /// grant-write phases. Still loads --grants grants first (with --quick: 20,000).
    #[arg(long)]
    test_run_only: bool,
}

const POD1_V4: &str = "192.0.2.10";
/// Registered for pod1 in `pods` (with a grant to WEB_V6) for the IPv6 BPF_PROG_TEST_RUN
/// figures only; the pod's interface has no IPv6 address, no IPv6 traffic is sent.
const POD1_V6: &str = "2001:db8:1::10";
const WEB_V6: &str = dnsfence_lab::topology::GITHUB_V6;
/// A web address and the DNS address of the lab's internet.
const WEB_V4: &str = dnsfence_lab::topology::GITHUB;
const GW_V4: &str = dnsfence_lab::topology::AUTHORITY;
const BULK_PORT: u16 = 5001;
const ECHO_PORT: u16 = 5002;
const BATCH: usize = 1_000;

// ---------------------------------------------------------------------------------------
// cleanup: namespaces, pin directory, sysctl — from Drop and from the signal thread

#[derive(Default)]
struct Cleanup {
    namespaces: Vec<String>,
    pin_dir: Option<PathBuf>,
    stats_old: Option<String>,
}

static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

fn with_cleanup(f: impl FnOnce(&mut Cleanup)) {
    if let Ok(mut g) = CLEANUP.lock() {
        f(g.get_or_insert_with(Cleanup::default));
    }
}

fn cleanup_now() {
    let taken = CLEANUP.lock().ok().and_then(|mut g| g.take());
    let Some(c) = taken else { return };
    if let Some(old) = &c.stats_old {
        let _ = std::fs::write(STATS_SYSCTL, old);
    }
    // unpinning the links detaches the programs; deleting the namespaces removes the veths
    if let Some(dir) = &c.pin_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    for ns in c.namespaces.iter().rev() {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        cleanup_now();
    }
}

/// Blocks SIGINT/SIGTERM in this thread (and so in every thread spawned later) and waits
/// for them on a dedicated thread, which cleans up and exits.
fn install_signal_cleanup() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block signals")?;
    thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("datapath-bench: {sig}, cleaning up");
            cleanup_now();
            std::process::exit(130);
        }
    });
    Ok(())
}

// ---------------------------------------------------------------------------------------
// topology (adapted from services/node-enforcer/tests/support)

fn enter_ns(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| path.clone())?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns`.
fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = ns.to_owned();
    let handle = thread::spawn(move || {
        enter_ns(&ns)?;
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(_) => bail!("thread in a namespace panicked"),
    }
}

struct Topology {
    node: String,
    pod1: String,
    inet: String,
    pin_dir: PathBuf,
}

impl Topology {
    /// The lab's world (crates/lab) with one pod: node between the pod and the internet.
    fn new() -> anyhow::Result<Self> {
        let suffix = format!("bench-{}", std::process::id());
        let pod = PodNet {
            workload: "default/bench".into(),
            labels: Vec::new(),
            netns: format!("dfp1-{suffix}"),
            veth: "vpod1".into(),
            v4: POD1_V4.into(),
            v6: None,
        };
        let world = LabTopology::plan(&format!("df-{suffix}"), vec![pod.clone()]);
        let t = Self {
            node: world.node.clone(),
            pod1: pod.netns,
            inet: world.inet.clone(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dnsfence-{suffix}")),
        };
        with_cleanup(|c| {
            c.pin_dir = Some(t.pin_dir.clone());
            c.namespaces.extend(world.namespaces());
        });
        world.create()?;
        Ok(t)
    }
}

// ---------------------------------------------------------------------------------------
// servers in the internet namespace: a byte sink and an echo

fn ip(s: &str) -> anyhow::Result<IpAddr> {
    s.parse().with_context(|| format!("address {s}"))
}

fn start_servers(inet: &str) -> anyhow::Result<mpsc::Receiver<(u64, Duration)>> {
    let (tx, rx) = mpsc::channel();
    let web = ip(WEB_V4)?;
    in_ns(inet, move || {
        let sink = TcpListener::bind(SocketAddr::new(web, BULK_PORT))?;
        let echo = TcpListener::bind(SocketAddr::new(web, ECHO_PORT))?;
        thread::spawn(move || {
            for conn in sink.incoming().flatten() {
                let tx = tx.clone();
                thread::spawn(move || {
                    let (bytes, elapsed) = drain(conn);
                    let _ = tx.send((bytes, elapsed));
                });
            }
        });
        thread::spawn(move || {
            for conn in echo.incoming().flatten() {
                thread::spawn(move || echo_tcp(conn));
            }
        });
        Ok(())
    })?;
    Ok(rx)
}

/// Reads to EOF; returns the bytes and the time from the first byte to EOF.
fn drain(mut conn: TcpStream) -> (u64, Duration) {
    let mut buf = vec![0u8; 256 * 1024];
    let mut total = 0u64;
    let mut first = None;
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 {
            break;
        }
        first.get_or_insert_with(Instant::now);
        total += n as u64;
    }
    (total, first.map(|t| t.elapsed()).unwrap_or_default())
}

fn echo_tcp(mut conn: TcpStream) {
    let _ = conn.set_nodelay(true);
    let mut buf = [0u8; 4096];
    while let Ok(n) = conn.read(&mut buf) {
        if n == 0 || conn.write_all(&buf[..n]).is_err() {
            break;
        }
    }
}

// ---------------------------------------------------------------------------------------
// traffic from a pod

struct Traffic {
    gbps: f64,
    rtt: Vec<Duration>,
    rtt_wall: Duration,
    connect: Vec<Duration>,
}

fn bulk(pod: &str, seconds: f64, results: &mpsc::Receiver<(u64, Duration)>) -> anyhow::Result<f64> {
    let to = SocketAddr::new(ip(WEB_V4)?, BULK_PORT);
    in_ns(pod, move || {
        let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
            .with_context(|| format!("connect {to}"))?;
        let buf = vec![0x5au8; 128 * 1024];
        let end = Instant::now() + Duration::from_secs_f64(seconds);
        while Instant::now() < end {
            c.write_all(&buf)?;
        }
        c.shutdown(Shutdown::Write)?;
        let mut rest = [0u8; 16];
        let _ = c.read(&mut rest);
        Ok(())
    })?;
    let (bytes, elapsed) = results
        .recv_timeout(Duration::from_secs(10))
        .context("bulk receiver result")?;
    Ok(bytes as f64 * 8.0 / elapsed.as_secs_f64().max(1e-9) / 1e9)
}

/// A connection to the echo server (call inside the pod's namespace), warmed up with 100
/// 64-byte round trips.
fn warm_echo_connection() -> anyhow::Result<TcpStream> {
    let to = SocketAddr::new(ip(WEB_V4)?, ECHO_PORT);
    let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
        .with_context(|| format!("connect {to}"))?;
    c.set_nodelay(true)?;
    c.set_read_timeout(Some(Duration::from_secs(2)))?;
    let msg = [0x42u8; 64];
    let mut back = [0u8; 64];
    for _ in 0..100 {
        c.write_all(&msg)?;
        c.read_exact(&mut back)?;
    }
    Ok(c)
}

fn ping_pong(pod: &str, n: usize) -> anyhow::Result<(Vec<Duration>, Duration)> {
    in_ns(pod, move || {
        let mut c = warm_echo_connection()?;
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        let mut v = Vec::with_capacity(n);
        let start = Instant::now();
        for _ in 0..n {
            let t = Instant::now();
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
            v.push(t.elapsed());
        }
        Ok((v, start.elapsed()))
    })
}

/// New connections: connect (SYN, SYN-ACK, ACK) plus one 64-byte exchange, then close
/// (with a RST, untimed).
fn connects(pod: &str, n: usize) -> anyhow::Result<Vec<Duration>> {
    let to = SocketAddr::new(ip(WEB_V4)?, ECHO_PORT);
    in_ns(pod, move || {
        let mut v = Vec::with_capacity(n);
        let msg = [0x42u8; 64];
        let mut back = [0u8; 64];
        for _ in 0..n {
            let t = Instant::now();
            let mut c = TcpStream::connect_timeout(&to, Duration::from_secs(2))
                .with_context(|| format!("connect {to}"))?;
            c.set_nodelay(true)?;
            c.write_all(&msg)?;
            c.read_exact(&mut back)?;
            v.push(t.elapsed());
            // close with a RST: thousands of client TIME_WAIT sockets to one address and
            // port make the kernel's ephemeral port search slow (then EADDRNOTAVAIL), which
            // would be measured as connection time
            socket2::SockRef::from(&c).set_linger(Some(Duration::ZERO))?;
            drop(c);
        }
        Ok(v)
    })
}

fn traffic(
    pod: &str,
    args: &Args,
    results: &mpsc::Receiver<(u64, Duration)>,
) -> anyhow::Result<Traffic> {
    let gbps = bulk(pod, args.seconds as f64, results)?;
    let (rtt, rtt_wall) = ping_pong(pod, args.round_trips)?;
    let connect = connects(pod, args.connections)?;
    Ok(Traffic {
        gbps,
        rtt,
        rtt_wall,
        connect,
    })
}

fn pct(v: &mut [Duration], p: f64) -> Duration {
    if v.is_empty() {
        return Duration::ZERO;
    }
    v.sort_unstable();
    let i = ((v.len() as f64 - 1.0) * p).round() as usize;
    v[i.min(v.len() - 1)]
}

fn median(mut v: Vec<f64>) -> f64 {
    v.sort_by(f64::total_cmp);
    v.get(v.len() / 2).copied().unwrap_or(0.0)
}

fn us(d: Duration) -> f64 {
    d.as_secs_f64() * 1e6
}

// ---------------------------------------------------------------------------------------
// fdinfo: program run time, map memory

fn fdinfo(fd: &impl AsFd) -> anyhow::Result<Vec<(String, u64)>> {
    let raw = fd.as_fd().as_raw_fd();
    let text = std::fs::read_to_string(format!("/proc/self/fdinfo/{raw}"))?;
    Ok(text
        .lines()
        .filter_map(|l| {
            let (k, v) = l.split_once(':')?;
            Some((k.trim().to_owned(), v.trim().parse().ok()?))
        })
        .collect())
}

fn field(info: &[(String, u64)], name: &str) -> u64 {
    info.iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| *v)
        .unwrap_or(0)
}

/// (run_time_ns, run_cnt) of the pinned program of `hook`.
fn prog_stats(pin_dir: &Path, hook: Hook) -> anyhow::Result<(u64, u64)> {
    let path = pin_dir.join("progs").join(hook.program());
    let info = aya::programs::ProgramInfo::from_pin(&path)
        .with_context(|| format!("program pin {}", path.display()))?;
    let fd = info.fd()?;
    let f = fdinfo(&fd)?;
    Ok((field(&f, "run_time_ns"), field(&f, "run_cnt")))
}

/// (memlock bytes, max_entries, key size, value size) of the pinned grants map.
fn grants_map_info(pin_dir: &Path) -> anyhow::Result<(u64, u32, u32, u32)> {
    let path = pin_dir.join("maps").join("grants");
    let info = aya::maps::MapInfo::from_pin(&path)
        .with_context(|| format!("map pin {}", path.display()))?;
    let fd = info.fd()?;
    let f = fdinfo(&fd)?;
    Ok((
        field(&f, "memlock"),
        info.max_entries(),
        info.key_size(),
        info.value_size(),
    ))
}

// ---------------------------------------------------------------------------------------
// grants

/// The i-th bulk grant key: pods in 2001:db8:1::/64, destinations in 2001:db8:2::/64
/// (documentation ranges), 1,000 destinations per pod, all (pod, dst) pairs distinct.
fn bulk_key(prefix: u16, i: u32) -> (IpAddr, IpAddr) {
    let p = i / 1000;
    let pod = Ipv6Addr::new(0x2001, 0xdb8, 1, prefix, 0, 0, (p >> 16) as u16, p as u16);
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 2, prefix, 0, 0, (i >> 16) as u16, i as u16);
    (IpAddr::V6(pod), IpAddr::V6(dst))
}

const TCP443: PortSpec = PortSpec::port(Protocol::Tcp, 443);

fn main() -> anyhow::Result<()> {
    let mut args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!(
            "datapath-bench: needs root (network namespaces, BPF programs, bpf_stats_enabled)"
        );
        std::process::exit(2);
    }
    if args.quick {
        args.grants = 20_000;
        args.seconds = 1;
        args.rounds = 2;
        args.round_trips = 2_000;
        args.connections = 200;
        args.single_reps = 200;
        args.batch_reps = 10;
    }
    install_signal_cleanup()?;
    let _guard = Guard;
    bench(&args)
}

/// Runs per BPF_PROG_TEST_RUN sample, and samples per figure.
const TEST_RUN_REPEAT: u32 = 100_000;
const TEST_RUN_SAMPLES: usize = 21;

/// One BPF_PROG_TEST_RUN figure: program, what it ran on, median ns (None: no bpftool).
struct TestRunRow {
    hook: Hook,
    case: &'static str,
    ns: Option<f64>,
}

/// A BPF_PROG_TEST_RUN flow: (label, pod address, web server address).
type Flow = (&'static str, IpAddr, IpAddr);

/// The programs' own run time on one packet (BPF_PROG_TEST_RUN): an established TCP flow
/// of pod1 to the web server over IPv4 and over IPv6 (egress: pod → web server, the warm-up
/// run of the frame takes the grant path among the N grants and creates the conntrack
/// entry, the rest are established; ingress: the reply), the four interleaved; then the
/// IPv4 frames with pod1 switched to allow mode (parse, `pods` lookup, counter), after which
/// pod1 is enforced again.
fn test_run_figures(
    dp: &mut Datapath,
    pin_dir: &Path,
    pod1_if: u32,
) -> anyhow::Result<Vec<TestRunRow>> {
    let scratch = tempfile::tempdir()?;
    let (pod4, web4, pod6, web6) = (ip(POD1_V4)?, ip(WEB_V4)?, ip(POD1_V6)?, ip(WEB_V6)?);
    let programs = Hook::BOTH.map(|hook| (hook, pin_dir.join("progs").join(hook.program())));
    let flow = |hook: Hook, pod: IpAddr, web: IpAddr| match hook {
        Hook::PodEgress => test_run::tcp_ack_frame(pod, 40_000, web, BULK_PORT),
        Hook::PodIngress => test_run::tcp_ack_frame(web, BULK_PORT, pod, 40_000),
    };
    let groups: [(Mode, &[Flow]); 2] = [
        (
            Mode::Enforce,
            &[
                ("established TCP flow, IPv4", pod4, web4),
                ("established TCP flow, IPv6", pod6, web6),
            ],
        ),
        (Mode::Allow, &[("pod in allow mode, IPv4 TCP", pod4, web4)]),
    ];
    let mut rows = Vec::new();
    for (mode, flows) in groups {
        if mode != Mode::Enforce {
            dp.upsert_pod(pod4, pod1_if, mode, 1)?;
        }
        let mut labels = Vec::new();
        let mut cases = Vec::new();
        for &(case, pod, web) in flows {
            for (hook, program) in &programs {
                labels.push((*hook, case));
                cases.push(test_run::Case {
                    program,
                    frame: flow(*hook, pod, web),
                });
            }
        }
        let measured = test_run::median_run_ns(
            &cases,
            pod1_if,
            TEST_RUN_REPEAT,
            TEST_RUN_SAMPLES,
            scratch.path(),
        )?;
        for (i, (hook, case)) in labels.into_iter().enumerate() {
            let ns = match &measured {
                Some(m) => {
                    let (ns, verdict) = m[i];
                    println!(
                        "{}: {ns:.0} ns per run (median of {TEST_RUN_SAMPLES} x {TEST_RUN_REPEAT} BPF_PROG_TEST_RUN runs, {case}; program returned {verdict})",
                        hook.program()
                    );
                    Some(ns)
                }
                None => {
                    println!(
                        "{}: BPF_PROG_TEST_RUN figure ({case}) skipped: bpftool is not installed (apt-get install bpftool)",
                        hook.program()
                    );
                    None
                }
            };
            rows.push(TestRunRow { hook, case, ns });
        }
        if mode != Mode::Enforce {
            dp.upsert_pod(pod4, pod1_if, Mode::Enforce, 1)?;
        }
    }
    Ok(rows)
}

fn print_test_run_rows(rows: &[TestRunRow]) {
    for r in rows {
        if let Some(ns) = r.ns {
            println!(
                "| `{}` run time, {} (BPF_PROG_TEST_RUN, median of {TEST_RUN_SAMPLES} × {TEST_RUN_REPEAT}) | {ns:.0} ns | {} |",
                r.hook.program(),
                r.case,
                if r.case.starts_with("established") {
                    "≤ 100 ns median"
                } else {
                    ""
                }
            );
        }
    }
}

fn loadavg() -> String {
    std::fs::read_to_string("/proc/loadavg")
        .map(|s| s.split_whitespace().take(3).collect::<Vec<_>>().join(" "))
        .unwrap_or_default()
}

fn bench(args: &Args) -> anyhow::Result<()> {
    println!(
        "load average at start: {} (2-core figures are only meaningful on an idle machine)",
        loadavg()
    );
    let t = Topology::new()?;
    let results = start_servers(&t.inet)?;
    // the datapath is driven from the node namespace (interfaces are looked up there)
    enter_ns(&t.node)?;
    let capacity = args.grants.saturating_add(2 * BATCH as u32).max(1 << 20);
    let mut dp = Datapath::open_with(
        &t.pin_dir,
        &DatapathOptions {
            grants_max_entries: Some(capacity),
            ..DatapathOptions::default()
        },
    )?;
    let pod1_if = netlink::pod_interface(ip(POD1_V4)?)?.context("host route to pod1")?;
    dp.upsert_pod(ip(POD1_V4)?, pod1_if, Mode::Enforce, 1)?;
    dp.set_gateways(&[ip(GW_V4)?])?;
    dp.attach(pod1_if)?;
    dp.upsert_pod(ip(POD1_V6)?, pod1_if, Mode::Enforce, 1)?;
    let far = clock::deadline_after(Duration::from_secs(24 * 3600))?;
    for (pod, web) in [(POD1_V4, WEB_V4), (POD1_V6, WEB_V6)] {
        dp.put_grant(
            ip(pod)?,
            ip(web)?,
            &[PortSpec {
                proto: Protocol::Tcp,
                start: BULK_PORT,
                end: ECHO_PORT,
            }],
            far,
        )?;
    }

    // ---- load N grants ----
    let (mem0, max_entries, key_size, value_size) = grants_map_info(&t.pin_dir)?;
    let start = Instant::now();
    for i in 0..args.grants {
        let (pod, dst) = bulk_key(0, i);
        dp.put_grant(pod, dst, &[TCP443], far)?;
    }
    let load = start.elapsed();
    let (mem1, ..) = grants_map_info(&t.pin_dir)?;
    let count = dp.grant_count()?;
    println!(
        "loaded {} grants in {:.2} s ({:.0} grants/s, put_grant one by one); map holds {count} entries (max {max_entries})",
        args.grants,
        load.as_secs_f64(),
        f64::from(args.grants) / load.as_secs_f64().max(1e-9)
    );
    let per_grant = (mem1.saturating_sub(mem0)) as f64 / f64::from(args.grants.max(1));
    println!(
        "grants map memlock (fdinfo): {mem0} B empty, {mem1} B with {count} entries: {per_grant:.1} B per grant (key {key_size} B + value {value_size} B)"
    );

    if args.test_run_only {
        let rows = test_run_figures(&mut dp, &t.pin_dir, pod1_if)?;
        println!();
        println!("load average at end: {}", loadavg());
        println!(
            "## datapath-bench summary, --test-run-only ({} grants loaded)",
            args.grants
        );
        println!();
        print_test_run_rows(&rows);
        return Ok(());
    }

    // ---- throughput and latency, interleaved: enforced, plain, enforced, plain, ... ----
    // one untimed warm-up of each path first
    let _ = bulk(&t.pod1, 0.5, &results)?;
    let _ = ping_pong(&t.pod1, 1_000)?;
    // Same pod, same veth, both ways: programs attached (pod enforced, its grant among the
    // N others) and detached (no program on the interface), alternating, the order flipped
    // every round.
    let mut enf = Vec::new();
    let mut plain = Vec::new();
    for round in 0..args.rounds {
        let order = if round % 2 == 0 {
            [true, false]
        } else {
            [false, true]
        };
        for enforced in order {
            if enforced {
                dp.attach(pod1_if)?;
            } else {
                dp.detach(pod1_if)?;
            }
            let r = traffic(&t.pod1, args, &results)?;
            println!(
                "round {round} {:>10}: {:.2} Gbit/s, {:.0} req/s, rtt p50 {:.1} µs p99 {:.1} µs, connect p50 {:.1} µs",
                if enforced { "enforced" } else { "unenforced" },
                r.gbps,
                r.rtt.len() as f64 / r.rtt_wall.as_secs_f64().max(1e-9),
                us(pct(&mut r.rtt.clone(), 0.5)),
                us(pct(&mut r.rtt.clone(), 0.99)),
                us(pct(&mut r.connect.clone(), 0.5))
            );
            if enforced { enf.push(r) } else { plain.push(r) }
        }
    }
    dp.attach(pod1_if)?;
    let c = dp.counters()?;
    println!(
        "verdict counters: grant {} established {} default_deny {} spoofed {}",
        c.packets(Reason::Grant),
        c.packets(Reason::Established),
        c.packets(Reason::DefaultDeny),
        c.packets(Reason::Spoofed)
    );
    let summary = |rs: &[Traffic]| {
        let gbps = median(rs.iter().map(|r| r.gbps).collect());
        let rps = median(
            rs.iter()
                .map(|r| r.rtt.len() as f64 / r.rtt_wall.as_secs_f64().max(1e-9))
                .collect(),
        );
        let mut rtt: Vec<Duration> = rs.iter().flat_map(|r| r.rtt.iter().copied()).collect();
        let mut conn: Vec<Duration> = rs.iter().flat_map(|r| r.connect.iter().copied()).collect();
        (
            gbps,
            us(pct(&mut rtt, 0.5)),
            us(pct(&mut rtt, 0.99)),
            rps,
            us(pct(&mut conn, 0.5)),
            us(pct(&mut conn, 0.99)),
        )
    };
    let e = summary(&enf);
    let p = summary(&plain);

    // ---- program run time per invocation ----
    let old = std::fs::read_to_string(STATS_SYSCTL)?;
    with_cleanup(|c| c.stats_old = Some(old.clone()));
    std::fs::write(STATS_SYSCTL, "1")?;
    let before = [
        prog_stats(&t.pin_dir, Hook::PodEgress)?,
        prog_stats(&t.pin_dir, Hook::PodIngress)?,
    ];
    let stats_bulk = bulk(&t.pod1, args.seconds.min(2) as f64, &results)?;
    let _ = ping_pong(&t.pod1, args.round_trips / 2)?;
    let _ = connects(&t.pod1, args.connections / 2)?;
    let after = [
        prog_stats(&t.pin_dir, Hook::PodEgress)?,
        prog_stats(&t.pin_dir, Hook::PodIngress)?,
    ];
    let samples = args.round_trips.min(5_000);
    let (mut egress_runs, mut ingress_runs) = per_packet::samples(&t.pin_dir, &t.pod1, samples)?;
    // The same with the pod in allow mode (parse, `pods` lookup, counter): what any packet
    // through the hook costs here, the kernel's clock reads and cold caches included.
    dp.upsert_pod(ip(POD1_V4)?, pod1_if, Mode::Allow, 1)?;
    let allow = per_packet::samples(&t.pin_dir, &t.pod1, samples);
    dp.upsert_pod(ip(POD1_V4)?, pod1_if, Mode::Enforce, 1)?;
    let (mut allow_egress, mut allow_ingress) = allow?;
    std::fs::write(STATS_SYSCTL, old.trim())?;
    let per_run = [
        (egress_runs.len(), per_packet::median_p90(&mut egress_runs)),
        (
            ingress_runs.len(),
            per_packet::median_p90(&mut ingress_runs),
        ),
    ];
    let per_run_allow = [
        per_packet::median_p90(&mut allow_egress).0,
        per_packet::median_p90(&mut allow_ingress).0,
    ];
    for ((hook, (count, (p50, p90))), allow) in Hook::BOTH
        .iter()
        .zip(per_run.iter())
        .zip(per_run_allow.iter())
    {
        println!(
            "{}: {p50} ns per run (median of {count} single runs from bpf_stats, established TCP flow, one request at a time; p90 {p90} ns; pod in allow mode {allow} ns)",
            hook.program()
        );
    }
    let run_ns: Vec<(u64, u64, f64)> = before
        .iter()
        .zip(after.iter())
        .map(|(b, a)| {
            let ns = a.0.saturating_sub(b.0);
            let cnt = a.1.saturating_sub(b.1);
            (ns, cnt, ns as f64 / cnt.max(1) as f64)
        })
        .collect();
    for (hook, (ns, cnt, avg)) in Hook::BOTH.iter().zip(run_ns.iter()) {
        println!(
            "{}: {cnt} runs, {ns} ns total, {avg:.1} ns per run (average; stats run at {stats_bulk:.2} Gbit/s bulk + ping-pong + connects)",
            hook.program()
        );
    }

    // ---- the programs' own run time on one packet (BPF_PROG_TEST_RUN) ----
    let test_runs = test_run_figures(&mut dp, &t.pin_dir, pod1_if)?;

    // ---- grant write latency into the full map ----
    let mut one = Vec::with_capacity(args.single_reps);
    for i in 0..args.single_reps {
        let (pod, dst) = bulk_key(3, i as u32);
        let deadline = clock::deadline_after(Duration::from_secs(30))?;
        let t0 = Instant::now();
        dp.put_grant(pod, dst, &[TCP443], deadline)?;
        one.push(t0.elapsed());
        dp.remove_grant(pod, dst)?;
    }
    let mut batch = Vec::with_capacity(args.batch_reps);
    for r in 0..args.batch_reps {
        let keys: Vec<(IpAddr, IpAddr)> = (0..BATCH as u32)
            .map(|j| bulk_key(4, r as u32 * BATCH as u32 + j))
            .collect();
        let t0 = Instant::now();
        // what the enforcer does per batch before acking: one deadline, one put per grant
        let deadline = clock::deadline_after(Duration::from_secs(30))?;
        for (pod, dst) in &keys {
            dp.put_grant(*pod, *dst, &[TCP443], deadline)?;
        }
        batch.push(t0.elapsed());
        for (pod, dst) in &keys {
            dp.remove_grant(*pod, *dst)?;
        }
    }
    let one50 = us(pct(&mut one, 0.5));
    let one99 = us(pct(&mut one, 0.99));
    let b50 = us(pct(&mut batch, 0.5));
    let b99 = us(pct(&mut batch, 0.99));
    println!(
        "put_grant into a map of {count} entries: 1 grant p50 {one50:.1} µs p99 {one99:.1} µs ({} reps); 1,000 grants p50 {b50:.0} µs p99 {b99:.0} µs ({} reps)",
        args.single_reps, args.batch_reps
    );

    // ---- summary ----
    println!();
    println!("load average at end: {}", loadavg());
    println!(
        "## datapath-bench summary ({} grants loaded, {} rounds per side: {} s bulk, {} round trips, {} connections; throughput and req/s are medians over rounds, percentiles over all samples)",
        args.grants, args.rounds, args.seconds, args.round_trips, args.connections
    );
    println!();
    println!("| figure | enforced | unenforced | enforced/unenforced | target |");
    println!("|---|---|---|---|---|");
    println!(
        "| TCP bulk throughput | {:.2} Gbit/s | {:.2} Gbit/s | {:.1}% | ≥ 97% |",
        e.0,
        p.0,
        100.0 * e.0 / p.0.max(1e-9)
    );
    println!(
        "| 64 B request/response, one connection | {:.0} req/s (p50 {:.1} µs, p99 {:.1} µs) | {:.0} req/s (p50 {:.1} µs, p99 {:.1} µs) | {:.1}% | ≥ 97% |",
        e.3,
        e.1,
        e.2,
        p.3,
        p.1,
        p.2,
        100.0 * e.3 / p.3.max(1e-9)
    );
    println!(
        "| new connection + 64 B exchange | p50 {:.1} µs, p99 {:.1} µs | p50 {:.1} µs, p99 {:.1} µs | {:.1}% (p50 time unenforced/enforced) | |",
        e.4,
        e.5,
        p.4,
        p.5,
        100.0 * p.4 / e.4.max(1e-9)
    );
    println!();
    println!("| figure | measured | target |");
    println!("|---|---|---|");
    for (hook, (_, cnt, avg)) in Hook::BOTH.iter().zip(run_ns.iter()) {
        println!(
            "| `{}` run time (average over {cnt} runs) | {avg:.0} ns | ≤ 100 ns median |",
            hook.program()
        );
    }
    for ((hook, (count, (p50, p90))), allow) in Hook::BOTH
        .iter()
        .zip(per_run.iter())
        .zip(per_run_allow.iter())
    {
        println!(
            "| `{}` run time per packet, established TCP flow, `bpf_stats_enabled` (median of {count} single runs; p90 {p90} ns; pod in allow mode {allow} ns) | {p50} ns | ≤ 100 ns median |",
            hook.program()
        );
    }
    print_test_run_rows(&test_runs);
    println!(
        "| write 1 grant (map of {count}) | p50 {one50:.1} µs, p99 {one99:.1} µs | p99 ≤ 500 µs |"
    );
    println!("| write 1,000 grants (map of {count}) | p50 {b50:.0} µs, p99 {b99:.0} µs | |");
    println!(
        "| load {} grants | {:.2} s, {:.0} grants/s | |",
        args.grants,
        load.as_secs_f64(),
        f64::from(args.grants) / load.as_secs_f64().max(1e-9)
    );
    println!("| grants map memory (fdinfo memlock delta) | {per_grant:.0} B per grant | |");
    Ok(())
}
