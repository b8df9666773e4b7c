use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, Parser, Subcommand, ValueEnum};
use dnsfence_api::ClientTls;

/// dnsfence: DNS-based egress control for Kubernetes pods.
///
/// Talks to the policy store. Policies are ApplicationNetworkPolicy, ClusterNetworkPolicy and
/// NetworkPolicy manifests, applied verbatim.
#[derive(Debug, Parser)]
#[command(name = "dnsfence", version, about, long_about = None)]
pub struct Cli {
    /// The policy store: http://HOST:PORT, https://HOST:PORT, HOST:PORT or unix:///PATH.
    #[arg(
        long,
        global = true,
        env = "DNSFENCE_STORE",
        default_value = "http://127.0.0.1:50051"
    )]
    pub store: String,

    /// Deadline of each call to the store.
    #[arg(long, global = true, env = "DNSFENCE_TIMEOUT", default_value = "10s", value_parser = dnsfence_api::parse_duration)]
    pub timeout: Duration,

    #[command(flatten)]
    pub tls: ClientTls,

    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Apply manifests (all-or-nothing): files, directories (*.yaml, *.yml, *.json) or - for stdin.
    Apply(ApplyArgs),
    /// Delete policies named by manifests (-f) or by KIND NAME.
    Delete(DeleteArgs),
    /// List policies, workloads, namespaces, allowlists or bindings.
    Get(GetArgs),
    /// Print the event log, optionally following it.
    Events(EventsArgs),
    /// Register or remove workloads (standalone mode).
    #[command(subcommand)]
    Workload(WorkloadCommand),
    /// Register or remove namespaces and their labels (standalone mode).
    #[command(subcommand)]
    Namespace(NamespaceCommand),
    /// Explain whether a pod may reach a name or address, and which rule decides.
    Explain(ExplainArgs),
    /// Print the client's and the store's version and state.
    Version,
    /// The lab: the whole system in network namespaces on this machine (root).
    #[command(subcommand)]
    Lab(LabCommand),
}

#[derive(Debug, Subcommand)]
pub enum LabCommand {
    /// Build the world, start the services, apply the seed and show the verdicts.
    Up {
        #[command(flatten)]
        dir: LabDir,
        /// Use the release binaries (target/release) even if this is a debug build.
        #[arg(long)]
        release: bool,
        /// The seed manifests (default: examples/seed here, else next to the build).
        #[arg(long)]
        seed: Option<PathBuf>,
    },
    /// Stop every lab process, delete its namespaces and pins (also after a crash).
    Down {
        #[command(flatten)]
        dir: LabDir,
    },
    /// What runs: processes (alive?), namespaces.
    Status {
        #[command(flatten)]
        dir: LabDir,
    },
    /// Run a command inside a pod's network namespace, e.g. `lab exec nginx -- curl ...`.
    Exec {
        #[command(flatten)]
        dir: LabDir,
        /// The pod: `default/nginx`, `default/plain`, `default/web`, `shop/nginx` (or their
        /// short names nginx, plain, web, shop-nginx, or a network namespace's name). The
        /// command sees the pod's network and its resolv.conf (the gateways' cluster DNS
        /// address, the namespace's search list, ndots:5), as in a Kubernetes pod.
        pod: String,
        /// The command and its arguments.
        #[arg(trailing_var_arg = true, allow_hyphen_values = true, required = true)]
        command: Vec<String>,
    },
    /// Print the services' logs (the enforcer's include the flow log).
    Logs {
        #[command(flatten)]
        dir: LabDir,
        /// store, gateway-1, gateway-2, enforcer, authority, web (default: all).
        service: Option<String>,
    },
    /// Apply manifests to the lab's store (takes effect live).
    Apply {
        #[command(flatten)]
        dir: LabDir,
        #[arg(short = 'f', long = "filename", required = true)]
        files: Vec<PathBuf>,
    },
    /// The lab's web servers (run inside the internet namespace by `lab up`).
    #[command(hide = true)]
    ServeHttp {
        /// The lab directory (marks the process as the lab's).
        #[arg(long)]
        lab_dir: Option<PathBuf>,
        #[arg(required = true)]
        addrs: Vec<std::net::SocketAddr>,
    },
}

#[derive(Debug, Args)]
pub struct LabDir {
    /// The lab directory: state, store data, logs.
    #[arg(
        long = "dir",
        env = "DNSFENCE_LAB_DIR",
        default_value = "./.dnsfence-lab"
    )]
    pub path: PathBuf,
    /// Namespace prefix (tests use their own, so they never touch a user's lab).
    #[arg(
        long,
        hide = true,
        env = "DNSFENCE_LAB_PREFIX",
        default_value = "dflab"
    )]
    pub prefix: String,
}

#[derive(Debug, Args)]
pub struct ApplyArgs {
    /// File, directory or - (stdin). Repeatable.
    #[arg(short = 'f', long = "filename", required = true)]
    pub files: Vec<PathBuf>,
    /// Namespace for namespaced objects that name none.
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
    /// Validate and report what would change, without applying.
    #[arg(long)]
    pub dry_run: bool,
}

#[derive(Debug, Args)]
pub struct DeleteArgs {
    /// Delete what these manifests define.
    #[arg(short = 'f', long = "filename")]
    pub files: Vec<PathBuf>,
    /// Kind: anp (ApplicationNetworkPolicy), netpol (NetworkPolicy), cnp (ClusterNetworkPolicy,
    /// networking.k8s.aws) or cnp.policy.networking.k8s.io.
    pub kind: Option<String>,
    /// Names of the objects of KIND.
    pub names: Vec<String>,
    #[arg(short = 'n', long, default_value = "default")]
    pub namespace: String,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum Resource {
    #[value(alias = "policy", alias = "pol")]
    Policies,
    #[value(alias = "workload", alias = "pods", alias = "pod")]
    Workloads,
    #[value(alias = "namespace", alias = "ns")]
    Namespaces,
    #[value(alias = "allowlist", alias = "al")]
    Allowlists,
    #[value(alias = "binding")]
    Bindings,
}

#[derive(Debug, Clone, Copy, ValueEnum, PartialEq, Eq)]
pub enum Output {
    Table,
    Wide,
    Yaml,
    Json,
}

#[derive(Debug, Args)]
pub struct GetArgs {
    pub resource: Resource,
    /// Only this namespace (default: all).
    #[arg(short = 'n', long)]
    pub namespace: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Clone, Copy, ValueEnum)]
pub enum ViewArg {
    All,
    Derived,
    Sources,
}

#[derive(Debug, Args)]
pub struct EventsArgs {
    /// First revision to print.
    #[arg(long, default_value_t = 1)]
    pub from: u64,
    /// Keep printing new events as they are appended.
    #[arg(long)]
    pub follow: bool,
    #[arg(long, value_enum, default_value = "all")]
    pub view: ViewArg,
    /// One JSON object per line instead of text.
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}

#[derive(Debug, Subcommand)]
pub enum WorkloadCommand {
    /// Register (or update) a pod: NAMESPACE/NAME with its addresses, labels and node.
    Add {
        /// NAMESPACE/NAME
        pod: String,
        /// Pod address (repeatable; IPv4 or IPv6).
        #[arg(long = "ip", required = true)]
        ips: Vec<String>,
        /// Label KEY=VALUE (repeatable).
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
        #[arg(long, default_value = "node-1")]
        node: String,
    },
    /// Remove pods: NAMESPACE/NAME ...
    Remove {
        #[arg(required = true)]
        pods: Vec<String>,
    },
}

#[derive(Debug, Subcommand)]
pub enum NamespaceCommand {
    /// Register (or relabel) a namespace.
    Add {
        name: String,
        #[arg(short = 'l', long = "label")]
        labels: Vec<String>,
    },
    Remove {
        #[arg(required = true)]
        names: Vec<String>,
    },
}

#[derive(Debug, Args)]
pub struct ExplainArgs {
    /// The pod: NAMESPACE/NAME or one of its addresses.
    pub pod: String,
    /// A domain name or an IP address.
    pub destination: String,
    /// Port and protocol, e.g. 443/TCP or 53/udp (without: on which ports it is allowed).
    #[arg(long)]
    pub port: Option<String>,
    /// Node default to assume: DefaultAllow or DefaultDeny (default: the store's setting).
    #[arg(long)]
    pub default: Option<String>,
    #[arg(short = 'o', long, value_enum, default_value = "table")]
    pub output: Output,
}
