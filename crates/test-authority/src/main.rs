//! `dnsfence-test-authority`: serves RFC 1035 zone files on UDP and TCP, for the lab and
//! benchmarks.

use std::{net::SocketAddr, path::PathBuf};

use anyhow::Context;
use clap::Parser;
use dnsfence_test_authority::{Authority, Zone};

/// An authoritative DNS server for tests, the lab and benchmarks: serves the given zone files
/// (RFC 1035 master format) on UDP and TCP at one address until SIGINT/SIGTERM.
#[derive(Debug, Parser)]
#[command(name = "dnsfence-test-authority", version)]
struct Args {
    /// Address to serve on, UDP and TCP (port 0: any free port, printed in the log).
    #[arg(
        long,
        env = "DNSFENCE_TEST_AUTHORITY_LISTEN",
        default_value = "127.0.0.1:5300"
    )]
    listen: SocketAddr,

    /// A zone file in RFC 1035 master format; repeat for several zones. The zone's origin is
    /// the owner of its SOA, else its $ORIGIN; a missing SOA (negative TTL 30 s) or NS is
    /// generated.
    #[arg(
        long = "zone-file",
        env = "DNSFENCE_TEST_AUTHORITY_ZONE_FILES",
        value_delimiter = ',',
        required = true
    )]
    zone_files: Vec<PathBuf>,

    /// Log format: text or json.
    #[arg(long, env = "DNSFENCE_LOG_FORMAT", default_value = "text")]
    log_format: dnsfence_telemetry::LogFormat,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    // The authority stands in for the internet: it exports no traces of its own.
    let _telemetry = dnsfence_telemetry::init(args.log_format)?;
    let mut zones = Vec::new();
    for path in &args.zone_files {
        let zone = Zone::from_master_file(path)?;
        tracing::info!(zone = %zone.origin(), path = %path.display(), records = zone.records().len(), "zone loaded");
        zones.push(zone);
    }
    let running = Authority::start(zones, args.listen)
        .await
        .with_context(|| format!("starting on {}", args.listen))?;
    tracing::info!(addr = %running.addr(), "serving (udp and tcp)");
    running
        .run_until(dnsfence_telemetry::shutdown_signal())
        .await?;
    tracing::info!("stopped");
    Ok(())
}
