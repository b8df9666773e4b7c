//! The service's flags (each with its `DNSFENCE_*` variable) and the checks clap cannot do.

use std::{net::IpAddr, path::PathBuf, time::Duration};

use clap::{Parser, ValueEnum};
use dnsfence_api::ClientTls;
use dnsfence_policy::allowlist::DefaultPolicy;

use crate::{Error, Mode, Result};

/// Where the state file lives unless `--state-file` says otherwise. Not under the pin
/// directory: bpffs holds only maps, programs and links, not regular files.
pub const DEFAULT_STATE_FILE: &str = "/var/lib/dnsfence/node-enforcer.state";

/// The node's fate for traffic no rule decides, named as in the EKS NodeClass
/// (`networkPolicy: DefaultAllow|DefaultDeny`), plus `Audit`: enforce nothing, log what
/// `DefaultDeny` would drop.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, ValueEnum)]
pub enum NodeDefault {
    /// Pods no policy selects are not restricted.
    #[default]
    #[value(name = "DefaultAllow")]
    DefaultAllow,
    /// Pods no policy selects may only use DNS to the gateways.
    #[value(name = "DefaultDeny")]
    DefaultDeny,
    /// Nothing is dropped; what `DefaultDeny` and the policies would drop is logged.
    #[value(name = "Audit")]
    Audit,
}

impl NodeDefault {
    /// The default the allowlists are evaluated with (for CIDR rules and revocation
    /// checks). Audit evaluates as `DefaultDeny`: its logs show what enforcing would drop.
    pub fn evaluation(self) -> DefaultPolicy {
        match self {
            Self::DefaultAllow => DefaultPolicy::DefaultAllow,
            Self::DefaultDeny | Self::Audit => DefaultPolicy::DefaultDeny,
        }
    }

    /// The datapath mode of a pod some policy selects.
    pub fn enforced_mode(self) -> Mode {
        match self {
            Self::Audit => Mode::Audit,
            Self::DefaultAllow | Self::DefaultDeny => Mode::Enforce,
        }
    }

    /// The datapath mode of a pod no policy selects.
    pub fn unenforced_mode(self) -> Mode {
        match self {
            Self::DefaultAllow => Mode::Allow,
            Self::DefaultDeny => Mode::Enforce,
            Self::Audit => Mode::Audit,
        }
    }

    /// The flag value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::DefaultAllow => "DefaultAllow",
            Self::DefaultDeny => "DefaultDeny",
            Self::Audit => "Audit",
        }
    }
}

/// The dnsfence node-enforcer: one per node. Loads the eBPF datapath onto the host side of
/// each pod's interface, tails the policy store for this node's pods and their allowlists,
/// subscribes to every resolver gateway for grants, writes them into the datapath's maps and
/// acks them, and revokes what a policy change no longer allows.
#[derive(Debug, Clone, Parser)]
#[command(name = "dnsfence-node-enforcer", version, about, long_about = None)]
pub struct Config {
    /// This node's name, as the store knows it (the pods' `node`).
    #[arg(long, env = "DNSFENCE_NODE_NAME")]
    pub node_name: String,

    /// The policy store to tail: http(s)://HOST:PORT, HOST:PORT or unix:///path.
    #[arg(long, env = "DNSFENCE_STORE", default_value = "http://127.0.0.1:50051")]
    pub store: String,

    /// Gateway replicas to subscribe to for grants (comma-separated gRPC addresses:
    /// http(s)://HOST:PORT, HOST:PORT or unix:///path). Combine with --gateway-dns-name.
    #[arg(long, env = "DNSFENCE_GATEWAYS", value_delimiter = ',')]
    pub gateways: Vec<String>,

    /// NAME:PORT whose A/AAAA records are the gateway replicas (e.g. a headless Service),
    /// re-resolved every --gateway-resolve-interval; one subscription per address.
    #[arg(long, env = "DNSFENCE_GATEWAY_DNS_NAME", value_name = "NAME:PORT")]
    pub gateway_dns_name: Option<String>,

    /// How often --gateway-dns-name is resolved again.
    #[arg(long, env = "DNSFENCE_GATEWAY_RESOLVE_INTERVAL", default_value = "30s", value_parser = dnsfence_api::parse_duration)]
    pub gateway_resolve_interval: Duration,

    /// The DNS addresses pods send their queries to (the gateways' Service address, or
    /// their own): UDP/TCP 53 to these always passes (comma-separated IPs).
    #[arg(long, env = "DNSFENCE_GATEWAY_IPS", value_delimiter = ',')]
    pub gateway_ips: Vec<IpAddr>,

    /// bpffs directory of the pinned maps, programs and links (bpffs is mounted at
    /// /sys/fs/bpf when missing).
    #[arg(long, env = "DNSFENCE_PIN_DIR", default_value = "/sys/fs/bpf/dnsfence")]
    pub pin_dir: PathBuf,

    /// What no rule decides: DefaultAllow, DefaultDeny (the EKS NodeClass
    /// `networkPolicy`) or Audit (drop nothing, log what DefaultDeny would drop).
    #[arg(long, env = "DNSFENCE_DEFAULT_POLICY", value_enum, default_value_t = NodeDefault::DefaultAllow)]
    pub default_policy: NodeDefault,

    /// Flow logs: one JSON line per dropped (or, in audit mode, would-be-dropped) packet on
    /// stdout (the EKS NodeClass `networkPolicyEventLogs: Enabled`).
    #[arg(long, env = "DNSFENCE_EVENT_LOGS")]
    pub event_logs: bool,

    /// Flow-log lines written per second at most (0: no limit); the rest are counted in
    /// dnsfence_enforcer_flow_log_lines_dropped_total.
    #[arg(long, env = "DNSFENCE_EVENT_LOG_RATE", default_value_t = 100)]
    pub event_log_rate: u32,

    /// HTTP address of /metrics (Prometheus text), /readyz and /healthz. Empty: none.
    #[arg(
        long,
        env = "DNSFENCE_METRICS_LISTEN",
        default_value = "127.0.0.1:9154"
    )]
    pub metrics_listen: String,

    /// Where the last applied store revision, the derived state it stands for and the
    /// grants' names are kept across restarts (written atomically).
    #[arg(long, env = "DNSFENCE_STATE_FILE", default_value = DEFAULT_STATE_FILE)]
    pub state_file: PathBuf,

    /// How often expired grants are removed from the map (the kernel already refuses new
    /// flows to them) and the state file is refreshed.
    #[arg(long, env = "DNSFENCE_SWEEP_INTERVAL", default_value = "5s", value_parser = dnsfence_api::parse_duration)]
    pub sweep_interval: Duration,

    /// How often pods whose interface (host route) is missing are looked up again.
    #[arg(long, env = "DNSFENCE_INTERFACE_RETRY_INTERVAL", default_value = "1s", value_parser = dnsfence_api::parse_duration)]
    pub interface_retry_interval: Duration,

    /// Deadline for connecting to the store or a gateway and opening a stream.
    #[arg(long, env = "DNSFENCE_CONNECT_TIMEOUT", default_value = "5s", value_parser = dnsfence_api::parse_duration)]
    pub connect_timeout: Duration,

    /// TLS towards the store and the gateways.
    #[command(flatten)]
    pub tls: ClientTls,

    /// Log format: text or json.
    #[arg(long, env = "DNSFENCE_LOG_FORMAT", default_value = "text")]
    pub log_format: dnsfence_telemetry::LogFormat,
}

impl Config {
    /// Checks what clap cannot: relations between flags.
    pub fn validate(&self) -> Result<()> {
        if self.node_name.trim().is_empty() {
            return Err(Error::Config("--node-name is empty".into()));
        }
        if self.gateways.iter().all(|g| g.trim().is_empty()) && self.gateway_dns_name.is_none() {
            return Err(Error::Config(
                "give the gateways: --gateways and/or --gateway-dns-name".into(),
            ));
        }
        if let Some(name) = &self.gateway_dns_name
            && !name
                .rsplit_once(':')
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
        {
            return Err(Error::Config(format!(
                "--gateway-dns-name {name:?}: expected NAME:PORT"
            )));
        }
        for (flag, d) in [
            ("--sweep-interval", self.sweep_interval),
            ("--gateway-resolve-interval", self.gateway_resolve_interval),
            ("--interface-retry-interval", self.interface_retry_interval),
            ("--connect-timeout", self.connect_timeout),
        ] {
            if d.is_zero() {
                return Err(Error::Config(format!("{flag} must be longer than 0")));
            }
        }
        // a bad TLS flag combination is reported at start, not at the first connection
        self.tls.client_config()?;
        Ok(())
    }

    /// The static gateway addresses (empty entries dropped).
    pub fn gateway_addresses(&self) -> Vec<String> {
        self.gateways
            .iter()
            .map(|g| g.trim().to_owned())
            .filter(|g| !g.is_empty())
            .collect()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used, clippy::expect_used)]
    use super::*;

    #[test]
    fn flags_parse_and_validate() {
        let c = Config::try_parse_from([
            "x",
            "--node-name",
            "n1",
            "--gateways",
            "http://10.0.0.1:50052,unix:///run/gw.sock",
            "--gateway-ips",
            "10.96.0.10,fd00::a",
            "--default-policy",
            "DefaultDeny",
            "--event-logs",
        ])
        .unwrap();
        c.validate().unwrap();
        assert_eq!(c.gateway_addresses().len(), 2);
        assert_eq!(c.gateway_ips.len(), 2);
        assert_eq!(c.default_policy, NodeDefault::DefaultDeny);
        assert!(c.event_logs);
        assert_eq!(c.sweep_interval, Duration::from_secs(5));
        assert_eq!(c.state_file, PathBuf::from(DEFAULT_STATE_FILE));

        let none = Config::try_parse_from(["x", "--node-name", "n1"]).unwrap();
        assert!(
            none.validate()
                .unwrap_err()
                .to_string()
                .contains("gateways")
        );
        let bad =
            Config::try_parse_from(["x", "--node-name", "n1", "--gateway-dns-name", "gw"]).unwrap();
        assert!(
            bad.validate()
                .unwrap_err()
                .to_string()
                .contains("NAME:PORT")
        );
        assert!(Config::try_parse_from(["x", "--gateways", "a:1"]).is_err());
        assert!(
            Config::try_parse_from(["x", "--node-name", "n", "--default-policy", "Allow"]).is_err()
        );
    }

    #[test]
    fn modes_follow_the_node_default() {
        assert_eq!(NodeDefault::DefaultAllow.unenforced_mode(), Mode::Allow);
        assert_eq!(NodeDefault::DefaultDeny.unenforced_mode(), Mode::Enforce);
        assert_eq!(NodeDefault::Audit.unenforced_mode(), Mode::Audit);
        assert_eq!(NodeDefault::Audit.enforced_mode(), Mode::Audit);
        assert_eq!(NodeDefault::DefaultAllow.enforced_mode(), Mode::Enforce);
        assert_eq!(NodeDefault::Audit.evaluation(), DefaultPolicy::DefaultDeny);
    }
}
