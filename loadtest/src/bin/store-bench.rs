//! Policy-store benchmark: prints durable events/s with batching, replay time, compile time and
//! peak memory at scale, and Watch fan-out catch-up. Run: `cargo run --release -p
//! dnsfence-loadtest --bin store-bench` (flags scale it down for a quick look).
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use clap::Parser;
use dnsfence_api::store::v1 as pb;
use dnsfence_api::store::v1::policy_store_client::PolicyStoreClient;
use dnsfence_loadtest::synthetic_workload;
use dnsfence_policy::compile::{Compiler, SourceChange};
use dnsfence_policy::model::Workload;
use dnsfence_policy_store::{Config, Store};
use tonic::transport::Channel;

#[derive(Debug, Parser)]
struct Args {
    /// Seconds of each throughput run.
    #[arg(long, default_value_t = 5)]
    seconds: u64,
    /// Events to replay.
    #[arg(long, default_value_t = 1_000_000)]
    replay_events: u64,
    #[arg(long, default_value_t = 100_000)]
    workloads: usize,
    #[arg(long, default_value_t = 10_000)]
    policies: usize,
    #[arg(long, default_value_t = 100)]
    subscribers: usize,
    /// Workloads in the log the subscribers catch up on (about 2 events each).
    #[arg(long, default_value_t = 10_000)]
    fanout_workloads: usize,
}

fn peak_rss_mib() -> f64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find(|l| l.starts_with("VmHWM:"))
        .and_then(|l| l.split_whitespace().nth(1))
        .and_then(|kb| kb.parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

fn anp(i: usize, namespaces: usize, apps: usize) -> String {
    format!(
        "apiVersion: networking.k8s.aws/v1alpha1\nkind: ApplicationNetworkPolicy\nmetadata:\n  name: egress-{i}\n  namespace: ns-{}\nspec:\n  podSelector:\n    matchLabels:\n      app: app-{}\n  policyTypes: [Egress]\n  egress:\n  - to:\n    - domainNames: [\"api{i}.example.com\", \"*.cdn{i}.example.net\"]\n    ports:\n    - {{protocol: TCP, port: 443}}\n",
        i % namespaces,
        (i / namespaces) % apps
    )
}

fn config(dir: &std::path::Path) -> Config {
    use clap::Parser as _;
    Config::parse_from([
        "bench",
        "--data-dir",
        dir.to_str().unwrap(),
        "--compact-every",
        "100000000",
    ])
}

/// A store served in this process; `stop` waits until the server let go of it.
struct Running {
    stop: tokio::sync::oneshot::Sender<()>,
    server: tokio::task::JoinHandle<()>,
}

impl Running {
    async fn stop(self) {
        let _ = self.stop.send(());
        let _ = self.server.await;
    }
}

async fn start(dir: &std::path::Path) -> Result<(Arc<Store>, String, Running)> {
    let cfg = config(dir);
    let store = Store::open(cfg.clone()).await?;
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let addr = format!("http://{}", l.local_addr()?);
    let (stop, rx) = tokio::sync::oneshot::channel::<()>();
    let s = Arc::clone(&store);
    let server = tokio::spawn(async move {
        let _ =
            dnsfence_policy_store::serve(s, &cfg, vec![dnsfence_api::Listener::Tcp(l)], async {
                let _ = rx.await;
            })
            .await;
    });
    Ok((store, addr, Running { stop, server }))
}

async fn client(addr: &str) -> Result<PolicyStoreClient<Channel>> {
    let ch = dnsfence_api::connect(addr, &Default::default(), Duration::from_secs(60)).await?;
    Ok(PolicyStoreClient::new(ch).max_decoding_message_size(256 << 20))
}

fn pb_workload(w: &Workload) -> pb::Workload {
    w.into()
}

/// Concurrent writers, each upserting `batch` workloads per call, for `seconds`.
async fn throughput(
    addr: &str,
    writers: usize,
    batch: usize,
    seconds: u64,
    offset: usize,
) -> Result<(u64, f64)> {
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let start = Instant::now();
    let mut tasks = Vec::new();
    for t in 0..writers {
        let mut c = client(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut calls = 0u64;
            let mut round = 0usize;
            while Instant::now() < deadline {
                let workloads = (0..batch)
                    .map(|j| {
                        let mut w = synthetic_workload(
                            offset + (t * 1_000_000) + round * batch + j,
                            100,
                            50,
                        );
                        w.node = format!("node-{round}");
                        pb_workload(&w)
                    })
                    .collect();
                c.upsert_workloads(pb::UpsertWorkloadsRequest { workloads })
                    .await
                    .unwrap();
                calls += 1;
                round += 1;
            }
            calls
        }));
    }
    let mut calls = 0;
    for t in tasks {
        calls += t.await?;
    }
    Ok((calls, start.elapsed().as_secs_f64()))
}

/// `subscribers` concurrent derived-view watches from revision 0, each read until it is caught
/// up; returns how many events they received in total.
async fn fan_out(addr: &str, subscribers: usize, snapshot: bool) -> Result<u64> {
    let mut tasks = Vec::new();
    for _ in 0..subscribers {
        let mut c = client(addr).await?;
        tasks.push(tokio::spawn(async move {
            let mut s = c
                .watch(pb::WatchRequest {
                    from_revision: 0,
                    view: pb::View::Derived as i32,
                    node: String::new(),
                    snapshot,
                })
                .await
                .unwrap()
                .into_inner();
            let mut n = 0u64;
            while let Some(m) = s.message().await.unwrap() {
                match m.kind {
                    Some(pb::watch_response::Kind::Event(_)) => n += 1,
                    Some(pb::watch_response::Kind::CaughtUp(_)) => break,
                    _ => {}
                }
            }
            n
        }));
    }
    let mut delivered = 0;
    for t in tasks {
        delivered += t.await?;
    }
    Ok(delivered)
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    println!(
        "dnsfence policy-store benchmark ({} cores)",
        std::thread::available_parallelism().map_or(1, |n| n.get())
    );

    // Compile at scale first, so peak RSS is the compiler's alone.
    {
        let namespaces = 100;
        let apps = (args.policies / namespaces).max(1);
        let t = Instant::now();
        let mut changes = Vec::with_capacity(args.workloads + args.policies);
        for i in 0..args.policies {
            let text = anp(i, namespaces, apps);
            let parsed = dnsfence_policy::manifest::parse_documents(&text, "default")
                .map_err(|e| anyhow::anyhow!("{e:?}"))?;
            changes.extend(
                parsed
                    .into_iter()
                    .map(|o| SourceChange::ApplyPolicy(o.policy)),
            );
        }
        let parse_secs = t.elapsed().as_secs_f64();
        changes.extend(
            (0..args.workloads)
                .map(|i| SourceChange::UpsertWorkload(synthetic_workload(i, namespaces, apps))),
        );
        let mut compiler = Compiler::new();
        let t = Instant::now();
        let events = compiler.apply(changes);
        let secs = t.elapsed().as_secs_f64();
        println!(
            "compile: {} workloads x {} policies in {secs:.2} s (+{parse_secs:.2} s parsing): {} events, {} allowlists; peak RSS {:.0} MiB",
            args.workloads,
            args.policies,
            events.len(),
            compiler.allowlists().count(),
            peak_rss_mib()
        );
        let text = anp(7, namespaces, apps).replace("api7.example.com", "changed.example.com");
        let parsed = dnsfence_policy::manifest::parse_documents(&text, "default")
            .map_err(|e| anyhow::anyhow!("{e:?}"))?;
        let t = Instant::now();
        let events = compiler.apply(
            parsed
                .into_iter()
                .map(|o| SourceChange::ApplyPolicy(o.policy))
                .collect(),
        );
        println!(
            "incremental: one policy changed -> {} events in {:.2} ms",
            events.len(),
            t.elapsed().as_secs_f64() * 1e3
        );
    }

    // 1. Durable events/s.
    {
        let dir = tempfile::tempdir()?;
        let (store, addr, stop) = start(dir.path()).await?;
        for (writers, batch) in [(64usize, 1usize), (16, 100)] {
            let before = store.log().head();
            let stats0 = store.log().stats();
            let (calls, secs) =
                throughput(&addr, writers, batch, args.seconds, before as usize).await?;
            let events = store.log().head() - before;
            let flushes = store.log().stats().flushes - stats0.flushes;
            println!(
                "durable writes: {writers:>3} writers x {batch:>3} workloads/call: {:>9.0} events/s, {:>7.0} calls/s, {:>6.0} flushes/s ({events} events in {secs:.1} s)",
                events as f64 / secs,
                calls as f64 / secs,
                flushes as f64 / secs
            );
        }
        stop.stop().await;
    }

    // 2. Replay of N events.
    {
        let dir = tempfile::tempdir()?;
        let (store, addr, stop) = start(dir.path()).await?;
        let mut c = client(&addr).await?;
        let mut i = 0usize;
        let t = Instant::now();
        while store.log().head() < args.replay_events {
            let workloads = (0..5_000)
                .map(|j| pb_workload(&synthetic_workload(i + j, 100, 50)))
                .collect();
            c.upsert_workloads(pb::UpsertWorkloadsRequest { workloads })
                .await?;
            i += 5_000;
        }
        let events = store.log().head();
        println!(
            "loaded {events} events ({i} workload upserts) in {:.1} s",
            t.elapsed().as_secs_f64()
        );
        drop(c);
        stop.stop().await;
        store.log().close().await?;
        drop(store);
        let t = Instant::now();
        let reopened = Store::open(config(dir.path())).await.context("reopen")?;
        let secs = t.elapsed().as_secs_f64();
        let workloads = reopened.read().await.compiler.workloads().count();
        println!(
            "replay: {events} events in {secs:.2} s ({:.0} events/s), {workloads} workloads restored",
            events as f64 / secs
        );

        reopened.log().close().await?;
        drop(reopened);
    }

    // 4. Watch fan-out: N subscribers replay everything from revision 0.
    {
        let dir = tempfile::tempdir()?;
        let (store, addr, stop) = start(dir.path()).await?;
        let mut c = client(&addr).await?;
        for chunk in 0..(args.fanout_workloads / 1_000).max(1) {
            let workloads = (0..1_000)
                .map(|j| pb_workload(&synthetic_workload(chunk * 1_000 + j, 100, 50)))
                .collect();
            c.upsert_workloads(pb::UpsertWorkloadsRequest { workloads })
                .await?;
        }
        let head = store.log().head();
        let t = Instant::now();
        let delivered = fan_out(&addr, args.subscribers, false).await?;
        let secs = t.elapsed().as_secs_f64();
        println!(
            "watch fan-out: {} subscribers caught up on {head} events (derived view) in {secs:.1} s, {:.0} events/s delivered in total",
            args.subscribers,
            delivered as f64 / secs
        );
        let t = Instant::now();
        fan_out(&addr, args.subscribers, true).await?;
        println!(
            "watch fan-out with snapshot: {} subscribers caught up in {:.1} s",
            args.subscribers,
            t.elapsed().as_secs_f64()
        );
        stop.stop().await;
    }

    Ok(())
}
