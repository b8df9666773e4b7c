//! A trace collector for benchmarks: an OTLP/gRPC receiver (the collector's `TraceService`,
//! `dnsfence_telemetry::receiver`) that keeps nothing but counts. Every second it prints the
//! totals so far (`spans=N requests=M`); the tracing benchmark reads them before and after
//! each run.

use std::time::Duration;

use anyhow::Context;
use clap::Parser;
use dnsfence_telemetry::receiver::{OtlpReceiver, ReceiverListener};

#[derive(Debug, Parser)]
#[command(name = "otlp-sink", about = "Receive OTLP/gRPC traces and count them")]
struct Args {
    /// Where to listen: HOST:PORT or unix:///path.
    #[arg(long, default_value = "127.0.0.1:4317")]
    listen: String,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let listener = match args.listen.strip_prefix("unix://") {
        Some(path) => {
            let _ = std::fs::remove_file(path);
            ReceiverListener::Unix(
                tokio::net::UnixListener::bind(path).with_context(|| format!("binding {path}"))?,
            )
        }
        None => ReceiverListener::Tcp(
            tokio::net::TcpListener::bind(&args.listen)
                .await
                .with_context(|| format!("binding {}", args.listen))?,
        ),
    };
    let receiver = OtlpReceiver::start(listener);
    let mut tick = tokio::time::interval(Duration::from_secs(1));
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = term.recv() => break,
            _ = tokio::signal::ctrl_c() => break,
        }
        // Counting only: what was received is dropped so memory stays flat.
        receiver.clear();
        println!(
            "spans={} requests={}",
            receiver.total_spans(),
            receiver.requests()
        );
    }
    Ok(())
}
