use std::path::PathBuf;
use std::time::Duration;

use clap::Parser;
use dnsfence_api::tls::ServerTls;

/// The dnsfence policy store: the single writer of the event log that every gateway and
/// enforcer tails. In standalone mode policies, namespaces and workloads arrive through its
/// gRPC API (the `dnsfence` CLI); in cluster mode from the Kubernetes API.
#[derive(Debug, Clone, Parser)]
#[command(name = "dnsfence-policy-store", version, about, long_about = None)]
pub struct Config {
    /// Directory of the event log (created if missing).
    #[arg(long, env = "DNSFENCE_DATA_DIR", default_value = "./.dnsfence-store")]
    pub data_dir: PathBuf,

    /// TCP address of the gRPC API (HOST:PORT). Empty to serve only on the Unix socket.
    #[arg(long, env = "DNSFENCE_LISTEN", default_value = "127.0.0.1:50051")]
    pub listen: String,

    /// Also serve the gRPC API on this Unix socket (reachable from other network namespaces).
    #[arg(long, env = "DNSFENCE_UNIX_SOCKET")]
    pub unix_socket: Option<PathBuf>,

    /// Refuse Apply/Delete/Upsert/Remove (cluster mode, where the kube API is the only writer).
    #[arg(long, env = "DNSFENCE_READ_ONLY")]
    pub read_only: bool,

    /// Events kept readable before the latest snapshot, so a consumer slightly behind resumes
    /// from events rather than a snapshot.
    #[arg(long, env = "DNSFENCE_RETENTION", default_value_t = 100_000)]
    pub retention: u64,

    /// Take a snapshot and compact after this many events.
    #[arg(long, env = "DNSFENCE_COMPACT_EVERY", default_value_t = 200_000)]
    pub compact_every: u64,

    /// Node default used by `explain` when the request names none: DefaultAllow or
    /// DefaultDeny (as the EKS NodeClass `networkPolicy`).
    #[arg(long, env = "DNSFENCE_DEFAULT_POLICY", default_value = "DefaultAllow", value_parser = parse_default)]
    pub default_policy: dnsfence_policy::allowlist::DefaultPolicy,

    /// A watcher that accepts nothing for this long is cut off (it reconnects and resumes),
    /// so one stalled consumer never holds memory or the writer.
    #[arg(long, env = "DNSFENCE_WATCH_STALL_TIMEOUT", default_value = "30s", value_parser = dnsfence_api::parse_duration)]
    pub watch_stall_timeout: Duration,

    #[command(flatten)]
    pub tls: ServerTls,

    /// Log format: text or json.
    #[arg(long, env = "DNSFENCE_LOG_FORMAT", default_value = "text")]
    pub log_format: dnsfence_telemetry::LogFormat,
}

fn parse_default(s: &str) -> Result<dnsfence_policy::allowlist::DefaultPolicy, String> {
    dnsfence_policy::allowlist::DefaultPolicy::parse(s)
        .ok_or_else(|| format!("{s:?}: expected DefaultAllow or DefaultDeny"))
}
