//! Times the policy store's start-up replay of a large log, alone (so it can be profiled):
//! `cargo run --release -p dnsfence-loadtest --bin store-replay -- --dir /tmp/replay`. The first
//! run fills the log with `--events` events through the store's own write path; later runs on
//! the same directory only reopen it.
#![allow(clippy::unwrap_used, clippy::expect_used)]

use std::path::PathBuf;
use std::time::Instant;

use anyhow::Result;
use clap::Parser;
use dnsfence_loadtest::synthetic_workload;
use dnsfence_policy::model::Workload;
use dnsfence_policy_store::{Config, Store, writes};

#[derive(Debug, Parser)]
struct Args {
    /// Data directory (kept, so a second run measures only the reopen).
    #[arg(long)]
    dir: PathBuf,
    #[arg(long, default_value_t = 1_000_000)]
    events: u64,
    /// Reopens to time.
    #[arg(long, default_value_t = 3)]
    runs: u32,
}

fn config(dir: &std::path::Path) -> Config {
    Config::parse_from([
        "store-replay",
        "--data-dir",
        dir.to_str().unwrap(),
        "--compact-every",
        "100000000",
    ])
}

#[tokio::main]
async fn main() -> Result<()> {
    let args = Args::parse();
    let store = Store::open(config(&args.dir)).await?;
    let mut i = 0usize;
    if store.log().head() < args.events {
        let t = Instant::now();
        while store.log().head() < args.events {
            let batch: Vec<Workload> = (i..i + 5_000)
                .map(|n| synthetic_workload(n, 100, 50))
                .collect();
            store
                .write(|state| Ok::<_, ()>((writes::upsert_workloads(state, batch), ())))
                .await
                .map_err(|e| anyhow::anyhow!("{e}"))?;
            i += 5_000;
        }
        println!(
            "filled {} events in {:.1} s",
            store.log().head(),
            t.elapsed().as_secs_f64()
        );
    }
    let events = store.log().head();
    store.log().close().await?;
    drop(store);
    for _ in 0..args.runs {
        let t = Instant::now();
        let store = Store::open(config(&args.dir)).await?;
        let secs = t.elapsed().as_secs_f64();
        let workloads = store.read().await.compiler.workloads().count();
        println!(
            "replay: {events} events in {secs:.2} s ({:.0} events/s), {workloads} workloads",
            events as f64 / secs
        );
        store.log().close().await?;
        drop(store);
    }
    Ok(())
}
