use std::net::SocketAddr;
use std::time::Duration;

use clap::{Parser, ValueEnum};
use dnsfence_api::tls::{ClientTls, ServerTls};
use dnsfence_policy::allowlist::DefaultPolicy;

/// The dnsfence resolver gateway: the DNS server pods use as their resolver. It answers only
/// names the pod's allowlist allows, resolves them through the upstream resolvers, and grants
/// the pod the answered addresses on its node's enforcer before it answers.
#[derive(Debug, Clone, Parser)]
#[command(name = "dnsfence-resolver-gateway", version, about, long_about = None)]
pub struct Config {
    /// DNS address (UDP and TCP) pods send their queries to.
    #[arg(long, env = "DNSFENCE_DNS_LISTEN", default_value = "127.0.0.1:5353")]
    pub dns_listen: SocketAddr,

    /// Bind the DNS address with SO_REUSEPORT, so several gateway processes on one host
    /// (replicas, or an old and a new one during an upgrade) serve the same address; the
    /// kernel spreads clients across them.
    #[arg(long, env = "DNSFENCE_DNS_REUSE_PORT")]
    pub dns_reuse_port: bool,

    /// gRPC address enforcers subscribe to for grants (`dnsfence.grants.v1.Grants`), with
    /// health and reflection: HOST:PORT or unix:///path.
    #[arg(long, env = "DNSFENCE_GRPC_LISTEN", default_value = "127.0.0.1:50052")]
    pub grpc_listen: String,

    /// HTTP address of /metrics (Prometheus text), /readyz and /healthz. Empty: none.
    #[arg(
        long,
        env = "DNSFENCE_METRICS_LISTEN",
        default_value = "127.0.0.1:9153"
    )]
    pub metrics_listen: String,

    /// The policy store to tail: http(s)://HOST:PORT, HOST:PORT or unix:///path.
    #[arg(long, env = "DNSFENCE_STORE", default_value = "http://127.0.0.1:50051")]
    pub store: String,

    /// Upstream resolvers for allowed names, in preference order (comma-separated
    /// IP:PORT list). Failed ones are skipped for a while; answers come over UDP with TCP
    /// fallback.
    #[arg(
        long,
        env = "DNSFENCE_UPSTREAM",
        value_delimiter = ',',
        required = true
    )]
    pub upstream: Vec<SocketAddr>,

    /// Cluster DNS (e.g. the kube-dns Service address) for names under --cluster-domain,
    /// forwarded unfiltered and without grants. Defaults to --upstream.
    #[arg(long, env = "DNSFENCE_CLUSTER_DNS", value_delimiter = ',')]
    pub cluster_dns: Vec<SocketAddr>,

    /// The cluster's DNS domain; names under it are the NetworkPolicy tier's business.
    #[arg(long, env = "DNSFENCE_CLUSTER_DOMAIN", default_value = "cluster.local")]
    pub cluster_domain: String,

    /// What no rule decides: DefaultAllow or DefaultDeny (the EKS NodeClass `networkPolicy`).
    /// A pod no policy selects resolves everything under DefaultAllow and nothing under
    /// DefaultDeny.
    #[arg(long, env = "DNSFENCE_DEFAULT_POLICY", default_value = "DefaultAllow", value_parser = parse_default)]
    pub default_policy: DefaultPolicy,

    /// Queries from addresses that are no known pod: refuse them, or resolve them without
    /// filtering and without grants (nodes, host-network pods).
    #[arg(long, env = "DNSFENCE_UNKNOWN_SOURCE", value_enum, default_value_t = UnknownSource::Refuse)]
    pub unknown_source: UnknownSource,

    /// Response code for a denied name: refused or nxdomain. Either carries an Extended DNS
    /// Error (RFC 8914, Blocked) naming the policy decision.
    #[arg(long, env = "DNSFENCE_DENIED_RCODE", value_enum, default_value_t = DeniedRcode::Refused)]
    pub denied_rcode: DeniedRcode,

    /// Shortest grant: an answer with a smaller TTL (even 0) is granted this long. 30 s covers
    /// the JVM's default positive DNS cache (networkaddress.cache.ttl=30) and connection
    /// retries; much longer keeps addresses a CDN has moved on from reachable (Cilium's old
    /// 3600 s minimum filled its maps with stale entries).
    #[arg(long, env = "DNSFENCE_GRANT_MIN_TTL", default_value = "30s", value_parser = dnsfence_api::parse_duration)]
    pub grant_min_ttl: Duration,

    /// Longest grant. Answer TTLs above it are lowered to it, so no client caches an address
    /// longer than its grant lives.
    #[arg(long, env = "DNSFENCE_GRANT_MAX_TTL", default_value = "1h", value_parser = dnsfence_api::parse_duration)]
    pub grant_max_ttl: Duration,

    /// How long an answer waits for the pod's enforcer to ack its grants.
    #[arg(long, env = "DNSFENCE_GRANT_ACK_TIMEOUT", default_value = "100ms", value_parser = dnsfence_api::parse_duration)]
    pub grant_ack_timeout: Duration,

    /// What to do when the ack does not come in time: answer anyway (the first packet may be
    /// dropped) or answer SERVFAIL (the client retries).
    #[arg(long, env = "DNSFENCE_ACK_TIMEOUT_ACTION", value_enum, default_value_t = AckTimeoutAction::Answer)]
    pub ack_timeout_action: AckTimeoutAction,

    /// Per-attempt timeout of an upstream query.
    #[arg(long, env = "DNSFENCE_UPSTREAM_TIMEOUT", default_value = "1s", value_parser = dnsfence_api::parse_duration)]
    pub upstream_timeout: Duration,

    /// Attempts per question across the upstreams before answering SERVFAIL.
    #[arg(long, env = "DNSFENCE_UPSTREAM_ATTEMPTS", default_value_t = 3)]
    pub upstream_attempts: usize,

    /// Long-lived UDP sockets per upstream (random source ports, query IDs mapped per socket).
    #[arg(long, env = "DNSFENCE_UPSTREAM_SOCKETS", default_value_t = 4)]
    pub upstream_sockets: usize,

    /// Answers kept in the shared cache.
    #[arg(long, env = "DNSFENCE_CACHE_SIZE", default_value_t = 100_000)]
    pub cache_size: usize,

    /// Largest UDP answer sent to a client that advertises a bigger EDNS buffer (RFC 9715's
    /// 1232 avoids fragmentation); larger answers are truncated so the client retries on TCP.
    #[arg(long, env = "DNSFENCE_MAX_UDP_PAYLOAD", default_value_t = 1232)]
    pub max_udp_payload: u16,

    /// A TCP client that sends nothing for this long is disconnected.
    #[arg(long, env = "DNSFENCE_TCP_IDLE_TIMEOUT", default_value = "10s", value_parser = dnsfence_api::parse_duration)]
    pub tcp_idle_timeout: Duration,

    /// Deadline for opening the store watch.
    #[arg(long, env = "DNSFENCE_STORE_TIMEOUT", default_value = "5s", value_parser = dnsfence_api::parse_duration)]
    pub store_timeout: Duration,

    /// Worker tasks receiving on the UDP socket.
    #[arg(long, env = "DNSFENCE_UDP_WORKERS", default_value_t = 2)]
    pub udp_workers: usize,

    /// Threads running the gateway (DNS, gRPC, metrics). 1 runs everything on one thread
    /// without the work-stealing scheduler, the cheapest setting for a gateway limited to one
    /// CPU. Default: one per CPU (or tokio's TOKIO_WORKER_THREADS).
    #[arg(long, env = "DNSFENCE_WORKER_THREADS")]
    pub worker_threads: Option<usize>,

    #[command(flatten)]
    pub server_tls: ServerTls,

    #[command(flatten)]
    pub store_tls: ClientTls,

    /// Log format: text or json.
    #[arg(long, env = "DNSFENCE_LOG_FORMAT", default_value = "text")]
    pub log_format: dnsfence_telemetry::LogFormat,

    /// DNS decision log on stdout, one JSON line per query (the enforcer's flow-log schema):
    /// none, denied (denied queries and search-list expansions) or all.
    #[arg(
        long,
        env = "DNSFENCE_DECISION_LOGS",
        value_enum,
        default_value = "denied"
    )]
    pub decision_logs: DecisionLogs,

    /// Decision-log lines written per second at most (0: no limit); the rest are counted in
    /// dnsfence_gateway_decision_log_lines_dropped_total.
    #[arg(long, env = "DNSFENCE_DECISION_LOG_RATE", default_value_t = 100)]
    pub decision_log_rate: u32,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DecisionLogs {
    None,
    Denied,
    All,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum UnknownSource {
    Refuse,
    Resolve,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum DeniedRcode {
    Refused,
    Nxdomain,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum AckTimeoutAction {
    Answer,
    Servfail,
}

fn parse_default(s: &str) -> Result<DefaultPolicy, String> {
    DefaultPolicy::parse(s).ok_or_else(|| format!("{s:?}: expected DefaultAllow or DefaultDeny"))
}

impl Config {
    /// Checks what clap cannot: relations between flags.
    pub fn validate(&self) -> Result<(), String> {
        if self.grant_min_ttl > self.grant_max_ttl {
            return Err(format!(
                "--grant-min-ttl ({:?}) is longer than --grant-max-ttl ({:?})",
                self.grant_min_ttl, self.grant_max_ttl
            ));
        }
        if self.upstream.is_empty() {
            return Err("--upstream: give at least one IP:PORT".into());
        }
        if self.upstream_attempts == 0 {
            return Err("--upstream-attempts must be at least 1".into());
        }
        if self.upstream_sockets == 0 {
            return Err("--upstream-sockets must be at least 1".into());
        }
        if self.worker_threads == Some(0) {
            return Err("--worker-threads must be at least 1".into());
        }
        if self.udp_workers == 0 {
            return Err("--udp-workers must be at least 1".into());
        }
        if self.max_udp_payload < 512 {
            return Err("--max-udp-payload must be at least 512".into());
        }
        let domain = self.cluster_domain.trim_end_matches('.');
        if domain.is_empty() {
            return Err("--cluster-domain is empty".into());
        }
        Ok(())
    }

    /// A config for tests and embedding: every default, these upstreams.
    pub fn with_upstreams(upstream: Vec<SocketAddr>) -> Config {
        let mut args = vec!["dnsfence-resolver-gateway".to_string()];
        let list: Vec<String> = upstream.iter().map(ToString::to_string).collect();
        args.push(format!("--upstream={}", list.join(",")));
        // Parsing our own well-formed arguments cannot fail; fall back to clap's error exit
        // only if the flag definitions themselves are broken.
        Config::parse_from(args)
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn validated(extra: &[&str]) -> Result<(), String> {
        let mut args = vec!["dnsfence-resolver-gateway", "--upstream=127.0.0.1:53"];
        args.extend_from_slice(extra);
        Config::try_parse_from(args).unwrap().validate()
    }

    #[test]
    fn counts_of_zero_are_refused_naming_the_flag() {
        for flag in [
            "--worker-threads",
            "--udp-workers",
            "--upstream-sockets",
            "--upstream-attempts",
        ] {
            let error = validated(&[flag, "0"]).unwrap_err();
            assert!(error.starts_with(flag), "{flag}: {error}");
            assert_eq!(validated(&[flag, "1"]), Ok(()), "{flag}");
        }
        assert_eq!(validated(&[]), Ok(()));
    }
}
