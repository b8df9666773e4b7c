//! Grant-to-ack latency over the real path: the gateway's `GrantHub` (the code a query
//! runs) sends a `GrantBatch` over gRPC to a real node-enforcer process, which writes it into
//! its eBPF grants map and acks; the time is taken around `GrantHub::grant`, as the gateway's
//! query path waits for it. Batches of 1 and of 1,000 grants, on top of a preloaded map.
//!
//! Needs root (the enforcer loads its BPF programs and pins them under a pin directory of its
//! own, removed at exit). Build the enforcer first:
//! `cargo build --release -p dnsfence-node-enforcer -p dnsfence-loadtest`.

use std::net::{IpAddr, Ipv6Addr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Parser;
use dnsfence_api::Grant;
use dnsfence_api::grants::v1::grants_server::GrantsServer;
use dnsfence_policy::ports::{PortRange, Protocol};
use dnsfence_policy_store::{Config as StoreConfig, Store};
use dnsfence_resolver_gateway::grants::{Delivery, GrantHub, GrantsService};
use dnsfence_resolver_gateway::metrics::GatewayMetrics;

const NODE: &str = "bench-node";

#[derive(Debug, Parser)]
#[command(
    name = "grant-ack-bench",
    about = "Grant-to-ack latency through gRPC and a real enforcer (needs root)"
)]
struct Args {
    /// Grants written before measuring (in batches of 5,000), so the map is not empty.
    #[arg(long, default_value_t = 500_000)]
    preload: usize,
    /// Timed batches of one grant.
    #[arg(long, default_value_t = 2_000)]
    singles: usize,
    /// Timed batches of 1,000 grants.
    #[arg(long, default_value_t = 200)]
    batches: usize,
    /// The enforcer binary (default: beside this one).
    #[arg(long)]
    enforcer: Option<PathBuf>,
}

/// The enforcer process and its pin directory, both gone on drop.
struct Enforcer {
    child: Child,
    pin_dir: PathBuf,
}

impl Drop for Enforcer {
    fn drop(&mut self) {
        let _ = nix::sys::signal::kill(
            nix::unistd::Pid::from_raw(self.child.id() as i32),
            nix::sys::signal::Signal::SIGTERM,
        );
        let deadline = Instant::now() + Duration::from_secs(5);
        while Instant::now() < deadline {
            if matches!(self.child.try_wait(), Ok(Some(_))) {
                break;
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.pin_dir);
    }
}

/// The `n`-th distinct (pod, destination) pair: pods in 2001:db8:1::/64, 1,000
/// destinations each in 2001:db8:2::/64.
fn grant(n: usize) -> Grant {
    let pod = Ipv6Addr::new(
        0x2001,
        0xdb8,
        1,
        0,
        0,
        0,
        ((n / 1000) >> 16) as u16,
        (n / 1000) as u16,
    );
    let dst = Ipv6Addr::new(0x2001, 0xdb8, 2, 0, 0, 0, (n >> 16) as u16, n as u16);
    Grant {
        pod_ip: IpAddr::V6(pod),
        destination_ip: IpAddr::V6(dst),
        ports: vec![PortRange {
            protocol: Protocol::Tcp,
            start: 443,
            end: 443,
        }],
        lifetime: Duration::from_secs(600),
        name: "bench.example".into(),
    }
}

fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}

fn us(d: Duration) -> String {
    format!("{:.1} µs", d.as_secs_f64() * 1e6)
}

async fn timed(hub: &GrantHub, grants: Vec<Grant>) -> Result<Duration> {
    let started = Instant::now();
    let outcome = hub.grant(NODE, grants, Duration::from_secs(5)).await;
    let took = started.elapsed();
    if outcome.delivery != Delivery::Acked {
        bail!("a batch was not acked: {}", outcome.delivery.as_str());
    }
    Ok(took)
}

fn report(what: &str, mut samples: Vec<Duration>) {
    samples.sort();
    println!(
        "{what}: n={} p50 {} p90 {} p99 {} max {}",
        samples.len(),
        us(percentile(&samples, 0.50)),
        us(percentile(&samples, 0.90)),
        us(percentile(&samples, 0.99)),
        us(samples.last().copied().unwrap_or_default()),
    );
}

fn start_enforcer(program: &Path, store: &str, gateway: &str, dir: &Path) -> Result<Enforcer> {
    let pin_dir = PathBuf::from(format!(
        "/sys/fs/bpf/dnsfence-grant-bench-{}",
        std::process::id()
    ));
    let log = std::fs::File::create(dir.join("enforcer.log"))?;
    let child = Command::new(program)
        .args(["--node-name", NODE, "--store", store, "--gateways", gateway])
        .arg("--pin-dir")
        .arg(&pin_dir)
        .arg("--state-file")
        .arg(dir.join("enforcer.state"))
        .args(["--metrics-listen", "", "--default-policy", "DefaultAllow"])
        .env("RUST_LOG", "warn")
        .stdin(Stdio::null())
        .stdout(Stdio::from(log.try_clone()?))
        .stderr(Stdio::from(log))
        .spawn()
        .with_context(|| format!("starting {}", program.display()))?;
    Ok(Enforcer { child, pin_dir })
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    if !nix::unistd::geteuid().is_root() {
        eprintln!("grant-ack-bench needs root (the enforcer loads BPF programs); run it with sudo");
        std::process::exit(2);
    }
    let enforcer_bin = match args.enforcer.clone() {
        Some(p) => p,
        None => std::env::current_exe()?
            .parent()
            .context("no directory for this binary")?
            .join("dnsfence-node-enforcer"),
    };
    if !enforcer_bin.exists() {
        bail!(
            "{} is missing: cargo build --release -p dnsfence-node-enforcer",
            enforcer_bin.display()
        );
    }
    let dir = tempfile::tempdir()?;

    // the store the enforcer tails (no pods on its node: the grants' pods are unknown to it,
    // and it writes them as the gateway sent them)
    let store_config = {
        use clap::Parser as _;
        StoreConfig::parse_from([
            "bench",
            "--data-dir",
            &dir.path().join("store").display().to_string(),
        ])
    };
    let store = Store::open(store_config.clone()).await?;
    let store_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let store_addr = format!("http://{}", store_listener.local_addr()?);
    let (stop_store, stopped) = tokio::sync::oneshot::channel::<()>();
    let store_task = tokio::spawn(async move {
        let _ = dnsfence_policy_store::serve(
            store,
            &store_config,
            vec![dnsfence_api::Listener::Tcp(store_listener)],
            async {
                let _ = stopped.await;
            },
        )
        .await;
    });

    // the gateway's grant side, served on gRPC as the gateway serves it
    let mut registry = prometheus_client::registry::Registry::default();
    let hub = GrantHub::new(Arc::new(GatewayMetrics::register(&mut registry)));
    let grpc = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let gateway_addr = format!("http://{}", grpc.local_addr()?);
    let service = GrantsServer::new(GrantsService::new(Arc::clone(&hub)));
    let (stop_grpc, grpc_stopped) = tokio::sync::oneshot::channel::<()>();
    // the gateway's own server settings (TCP_NODELAY, keepalives)
    let router = dnsfence_api::server_builder(&Default::default())?.add_service(service);
    let grpc_task = tokio::spawn(dnsfence_api::serve(
        router,
        vec![dnsfence_api::Listener::Tcp(grpc)],
        async {
            let _ = grpc_stopped.await;
        },
    ));

    let enforcer = start_enforcer(&enforcer_bin, &store_addr, &gateway_addr, dir.path())?;
    let deadline = Instant::now() + Duration::from_secs(30);
    while hub.subscribers(NODE) == 0 {
        if Instant::now() > deadline {
            let log = std::fs::read_to_string(dir.path().join("enforcer.log")).unwrap_or_default();
            bail!("the enforcer did not subscribe within 30 s; its log:\n{log}");
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    println!("enforcer subscribed ({})", enforcer_bin.display());

    let mut next = 0usize;
    let started = Instant::now();
    while next < args.preload {
        let n = (args.preload - next).min(5_000);
        let batch: Vec<Grant> = (next..next + n).map(grant).collect();
        next += n;
        timed(&hub, batch).await?;
    }
    if args.preload > 0 {
        let secs = started.elapsed().as_secs_f64();
        println!(
            "preloaded {} grants through gRPC in {secs:.2} s ({:.0} grants/s, batches of 5,000)",
            args.preload,
            args.preload as f64 / secs
        );
    }

    let mut singles = Vec::with_capacity(args.singles);
    for _ in 0..args.singles {
        singles.push(timed(&hub, vec![grant(next)]).await?);
        next += 1;
    }
    report("grant-to-ack, batch of 1", singles);

    let mut batches = Vec::with_capacity(args.batches);
    for _ in 0..args.batches {
        let batch: Vec<Grant> = (next..next + 1_000).map(grant).collect();
        next += 1_000;
        batches.push(timed(&hub, batch).await?);
    }
    report("grant-to-ack, batch of 1,000", batches);
    println!("grants in the map at the end: {next}");

    drop(enforcer);
    hub.close_all();
    let _ = stop_grpc.send(());
    let _ = grpc_task.await;
    let _ = stop_store.send(());
    let _ = store_task.await;
    Ok(())
}
