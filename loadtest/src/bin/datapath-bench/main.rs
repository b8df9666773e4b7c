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

mod environment;
mod fdinfo;
mod per_packet;
mod test_run;
mod traffic;

use environment::*;
use fdinfo::*;
use traffic::*;

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
