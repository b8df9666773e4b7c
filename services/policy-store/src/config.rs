use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dnsfence_api::tls::{ClientTls, ServerTls};

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

    /// Where policies, pods and namespaces come from: `standalone` (the gRPC API, i.e. the
    /// CLI) or `cluster` (the Kubernetes API; the gRPC write API is then off, one replica
    /// elected by a Lease writes and the others replicate it).
    #[arg(long, env = "DNSFENCE_MODE", value_enum, default_value_t = Mode::Standalone)]
    pub mode: Mode,

    /// Standalone mode: run as a read-only replica of the store at this address
    /// (http(s)://HOST:PORT or unix:///path), copying its log by Watch and serving Watch from
    /// the copy. Writes are refused with the leader's address.
    #[arg(long, env = "DNSFENCE_FOLLOW", value_name = "ADDRESS")]
    pub follow: Option<String>,

    #[command(flatten)]
    pub cluster: ClusterConfig,

    /// TLS for connections to the leader (followers only).
    #[command(flatten)]
    pub peer_tls: ClientTls,

    /// HTTP address of /metrics (Prometheus text), /readyz and /healthz. Empty: none.
    #[arg(long, env = "DNSFENCE_METRICS_LISTEN", default_value = "")]
    pub metrics_listen: String,

    /// Log format: text or json.
    #[arg(long, env = "DNSFENCE_LOG_FORMAT", default_value = "text")]
    pub log_format: dnsfence_telemetry::LogFormat,
}

fn parse_default(s: &str) -> Result<dnsfence_policy::allowlist::DefaultPolicy, String> {
    dnsfence_policy::allowlist::DefaultPolicy::parse(s)
        .ok_or_else(|| format!("{s:?}: expected DefaultAllow or DefaultDeny"))
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum Mode {
    /// Policies and workloads arrive through the gRPC API.
    Standalone,
    /// Policies, pods and namespaces come from the Kubernetes API.
    Cluster,
}

/// Cluster mode: leader election and how followers reach the leader.
#[derive(Debug, Clone, clap::Args)]
pub struct ClusterConfig {
    /// Name of the coordination.k8s.io/v1 Lease that elects the writing replica.
    #[arg(
        long,
        env = "DNSFENCE_LEASE_NAME",
        default_value = "dnsfence-policy-store"
    )]
    pub lease_name: String,

    /// Namespace of the Lease. Default: $POD_NAMESPACE, else the namespace of the pod's
    /// service account (/var/run/secrets/kubernetes.io/serviceaccount/namespace).
    #[arg(long, env = "DNSFENCE_LEASE_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// This replica's name in the Lease (holderIdentity). Default: $POD_NAME, else the host
    /// name. Must be unique among replicas.
    #[arg(long, env = "DNSFENCE_IDENTITY")]
    pub identity: Option<String>,

    /// How long a Lease holder that stopped renewing keeps it before another replica takes
    /// over. The holder renews every third of it and steps down when it could not renew for
    /// two thirds of it, so two replicas never write at once.
    #[arg(long, env = "DNSFENCE_LEASE_DURATION", default_value = "15s", value_parser = dnsfence_api::parse_duration)]
    pub lease_duration: Duration,

    /// How followers reach the leader's gRPC API: `{holder}` becomes the Lease's
    /// holderIdentity (the leader's pod name) and `{namespace}` the Lease's namespace. The
    /// default fits a StatefulSet whose headless Service is named dnsfence-policy-store.
    #[arg(
        long,
        env = "DNSFENCE_PEER_ADDRESS_TEMPLATE",
        default_value = "http://{holder}.dnsfence-policy-store.{namespace}.svc:50051"
    )]
    pub peer_address_template: String,

    /// How often the controller looks again for the policy.networking.k8s.io/v1alpha2 API
    /// when the cluster does not serve it (it is optional).
    #[arg(long, env = "DNSFENCE_DISCOVERY_INTERVAL", default_value = "5m", value_parser = dnsfence_api::parse_duration)]
    pub discovery_interval: Duration,

    /// Least time between two rounds of policy status updates, so pod churn does not turn
    /// into a status write per pod.
    #[arg(long, env = "DNSFENCE_STATUS_INTERVAL", default_value = "1s", value_parser = dnsfence_api::parse_duration)]
    pub status_interval: Duration,
}

/// Where the in-cluster service account's namespace is mounted.
pub const SERVICE_ACCOUNT_NAMESPACE_FILE: &str =
    "/var/run/secrets/kubernetes.io/serviceaccount/namespace";

impl ClusterConfig {
    /// The Lease's namespace: the flag, $POD_NAMESPACE, or the service account's namespace.
    pub fn resolved_lease_namespace(&self) -> Result<String, String> {
        if let Some(ns) = self.lease_namespace.as_deref().filter(|ns| !ns.is_empty()) {
            return Ok(ns.to_string());
        }
        if let Ok(ns) = std::env::var("POD_NAMESPACE")
            && !ns.is_empty()
        {
            return Ok(ns);
        }
        match std::fs::read_to_string(SERVICE_ACCOUNT_NAMESPACE_FILE) {
            Ok(ns) if !ns.trim().is_empty() => Ok(ns.trim().to_string()),
            _ => Err(format!(
                "--lease-namespace: not set, and neither $POD_NAMESPACE nor {SERVICE_ACCOUNT_NAMESPACE_FILE} names one"
            )),
        }
    }

    /// This replica's identity: the flag, $POD_NAME, or the host name.
    pub fn resolved_identity(&self) -> Result<String, String> {
        if let Some(id) = self.identity.as_deref().filter(|id| !id.is_empty()) {
            return Ok(id.to_string());
        }
        if let Ok(id) = std::env::var("POD_NAME")
            && !id.is_empty()
        {
            return Ok(id);
        }
        match std::fs::read_to_string("/proc/sys/kernel/hostname") {
            Ok(h) if !h.trim().is_empty() => Ok(h.trim().to_string()),
            _ => {
                Err("--identity: not set, and neither $POD_NAME nor the host name gives one".into())
            }
        }
    }

    /// The leader's gRPC address for a Lease holder.
    pub fn peer_address(&self, holder: &str, namespace: &str) -> String {
        self.peer_address_template
            .replace("{holder}", holder)
            .replace("{namespace}", namespace)
    }
}

impl Config {
    /// Checks combinations clap cannot express.
    pub fn validate(&self) -> Result<(), String> {
        if self.mode == Mode::Cluster && self.follow.is_some() {
            return Err(
                "--follow is for standalone mode; in cluster mode the Lease names the leader"
                    .into(),
            );
        }
        if self.cluster.lease_duration < Duration::from_secs(3) {
            return Err(format!(
                "--lease-duration {:?}: at least 3s (the holder renews every third of it)",
                self.cluster.lease_duration
            ));
        }
        if !self.cluster.peer_address_template.contains("{holder}") {
            return Err(format!(
                "--peer-address-template {:?}: must contain {{holder}}",
                self.cluster.peer_address_template
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]

    use super::*;

    fn parse(args: &[&str]) -> Config {
        let mut all = vec!["dnsfence-policy-store"];
        all.extend_from_slice(args);
        Config::try_parse_from(all).unwrap()
    }

    #[test]
    fn defaults_are_standalone_with_client_go_lease_timing() {
        let c = parse(&[]);
        assert_eq!(c.mode, Mode::Standalone);
        assert_eq!(c.follow, None);
        assert_eq!(c.cluster.lease_name, "dnsfence-policy-store");
        assert_eq!(c.cluster.lease_duration, Duration::from_secs(15));
        assert_eq!(
            c.cluster
                .peer_address("dnsfence-policy-store-1", "dnsfence"),
            "http://dnsfence-policy-store-1.dnsfence-policy-store.dnsfence.svc:50051"
        );
        c.validate().unwrap();
    }

    #[test]
    fn flags_win_over_the_environment_defaults() {
        let c = parse(&[
            "--mode",
            "cluster",
            "--lease-namespace",
            "kube-system",
            "--identity",
            "store-a",
        ]);
        assert_eq!(c.mode, Mode::Cluster);
        assert_eq!(c.cluster.resolved_lease_namespace().unwrap(), "kube-system");
        assert_eq!(c.cluster.resolved_identity().unwrap(), "store-a");
    }

    #[test]
    fn impossible_combinations_are_named() {
        let e = parse(&["--mode", "cluster", "--follow", "http://x:1"])
            .validate()
            .unwrap_err();
        assert!(e.contains("--follow"), "{e}");
        let e = parse(&["--lease-duration", "2s"]).validate().unwrap_err();
        assert!(e.contains("--lease-duration"), "{e}");
        let e = parse(&["--peer-address-template", "http://leader:50051"])
            .validate()
            .unwrap_err();
        assert!(e.contains("{holder}"), "{e}");
        assert!(Config::try_parse_from(["x", "--mode", "swarm"]).is_err());
    }
}
