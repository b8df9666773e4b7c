//! The dnsfence lab: the whole system on one machine, in network namespaces.
//!
//! [`Lab::up`] builds the world ([`topology`]): a node namespace between labelled pods and
//! an "internet" namespace (the authority and web servers), starts the store (root
//! namespace, Unix socket), two gateway replicas sharing the cluster DNS address and the
//! enforcer (node namespace, entered with `nsenter --net`, which keeps bpffs visible)
//! ([`world`]), registers the pods, applies the seed manifests verbatim and runs attempts
//! from inside the pods ([`probe`]). Everything it creates is recorded in a state file in
//! the lab directory before it is created, so [`Lab::down`] removes it all, also after a
//! crash or a half-finished `up`. The enforcer's end-to-end tests run their worlds with the
//! same code ([`Lab::start`] with their own [`Spec`]).

pub mod probe;
pub mod process;
pub mod serve;
pub mod topology;
pub mod wait;
pub mod world;

pub use process::ProcessRecord;
pub use topology::write_zones;
pub use wait::{http_get, metric_value, wait_until};
pub use world::{ENFORCER_METRICS, GW1_GRPC, NODE_NAME, Spec, World, gateway_metrics};

/// The store's HTTP endpoint (/metrics) in `dnsfence lab up`: the store runs in the root
/// namespace, so this is reachable from the host.
pub const STORE_METRICS: &str = "127.0.0.1:9155";

use std::{
    fs::File,
    io::Write,
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hickory_proto::rr::RecordType;
use serde::{Deserialize, Serialize};

use crate::{
    probe::{Attempt, Outcome},
    process::{pid_alive, processes_in_netns, processes_mentioning, running, stop_pid},
    topology::{CLUSTER_DNS, NPMJS, Topology, sa},
};

/// The namespace prefix of the lab (`dflab-node`, `dflab-nginx`, ...).
pub const DEFAULT_PREFIX: &str = "dflab";
const PATIENCE: Duration = Duration::from_secs(60);

/// How to build a lab.
#[derive(Debug, Clone)]
pub struct Config {
    /// The lab directory: state file, store data, logs, sockets.
    pub dir: PathBuf,
    /// Where the service binaries and `dnsfence` are.
    pub bin_dir: PathBuf,
    /// The seed manifests (`examples/seed`).
    pub seed_dir: PathBuf,
    /// Namespace prefix.
    pub prefix: String,
}

/// What a lab created, written before each thing is created.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct State {
    pub prefix: String,
    pub namespaces: Vec<String>,
    pub pin_dir: PathBuf,
    pub processes: Vec<ProcessRecord>,
    /// True once `up` finished.
    pub complete: bool,
}

/// A lab directory.
#[derive(Debug, Clone)]
pub struct Lab {
    dir: PathBuf,
}

/// What `status` found.
#[derive(Debug, Clone)]
pub struct Status {
    pub state: Option<State>,
    /// (process, alive)
    pub processes: Vec<(ProcessRecord, bool)>,
    /// (namespace, exists)
    pub namespaces: Vec<(String, bool)>,
}

impl Status {
    /// Everything recorded is running and `up` finished.
    pub fn healthy(&self) -> bool {
        self.state.as_ref().is_some_and(|s| s.complete)
            && self.processes.iter().all(|(_, alive)| *alive)
            && self.namespaces.iter().all(|(_, e)| *e)
    }
}

/// The pin directory of a lab with this prefix.
pub fn pin_dir(prefix: &str) -> PathBuf {
    PathBuf::from(format!("/sys/fs/bpf/dnsfence-lab-{prefix}"))
}

pub(crate) fn progress(step: &str) -> Instant {
    print!("==> {step} ... ");
    let _ = std::io::stdout().flush();
    Instant::now()
}

pub(crate) fn done(started: Instant) {
    println!("done ({:.1}s)", started.elapsed().as_secs_f64());
}

/// Builds `packages` of this workspace into the target directory that holds `bin_dir`, in
/// the same profile (`release` when `bin_dir` is one): what the privileged tests run, built
/// once before they start so they never run stale binaries. Returns how long it took.
pub fn build_binaries(bin_dir: &Path, packages: &[&str]) -> anyhow::Result<Duration> {
    let target = bin_dir
        .parent()
        .with_context(|| format!("{} has no target directory", bin_dir.display()))?;
    let cargo = std::env::var("CARGO").unwrap_or_else(|_| "cargo".into());
    let mut cmd = Command::new(cargo);
    cmd.current_dir(Path::new(env!("CARGO_MANIFEST_DIR")).join("../.."))
        .env("CARGO_TARGET_DIR", target)
        .args(["build", "-q"]);
    for p in packages {
        cmd.args(["-p", p]);
    }
    if bin_dir.file_name().is_some_and(|n| n == "release") {
        cmd.arg("--release");
    }
    let started = Instant::now();
    if !cmd.status().context("running cargo build")?.success() {
        bail!("building {} failed", packages.join(", "));
    }
    Ok(started.elapsed())
}

/// The seed NodeClass: (networkPolicy, networkPolicyEventLogs == Enabled).
pub fn node_class(seed_dir: &Path) -> (String, bool) {
    let text = std::fs::read_to_string(seed_dir.join("my-nodeclass.yaml")).unwrap_or_default();
    let mut default = "DefaultAllow".to_string();
    let mut logs = false;
    for line in text.lines().map(str::trim) {
        if let Some(v) = line.strip_prefix("networkPolicy:") {
            default = v.trim().to_string();
        }
        if let Some(v) = line.strip_prefix("networkPolicyEventLogs:") {
            logs = v.trim() == "Enabled";
        }
    }
    (default, logs)
}

/// The manifests of the seed the store takes (policies), sorted; the NodeClass and the VPC
/// CNI ConfigMap configure the node instead.
pub fn seed_policies(seed_dir: &Path) -> anyhow::Result<Vec<PathBuf>> {
    let mut files: Vec<PathBuf> = std::fs::read_dir(seed_dir)
        .with_context(|| format!("reading {}", seed_dir.display()))?
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|e| e == "yaml" || e == "yml"))
        .filter(|p| {
            let text = std::fs::read_to_string(p).unwrap_or_default();
            !text
                .lines()
                .any(|l| l.trim() == "kind: NodeClass" || l.trim() == "kind: ConfigMap")
        })
        .collect();
    files.sort();
    Ok(files)
}

/// The attempts `up` shows.
pub fn standard_attempts(topology: &Topology) -> Vec<Attempt> {
    let pod = |w: &str| topology.pods.iter().find(|p| p.workload == w);
    let mut v = Vec::new();
    let mut add = |w: &str, target: &str, port: u16, qtype: RecordType| {
        if let Some(p) = pod(w) {
            v.push(Attempt {
                pod: p.workload.clone(),
                netns: p.netns.clone(),
                target: target.into(),
                port,
                qtype,
            });
        }
    };
    use RecordType::{A, AAAA};
    add("default/nginx", "github.com", 443, A);
    add("default/nginx", "api.github.com", 443, A);
    add("default/nginx", "github.com", 443, AAAA);
    add("default/nginx", "github.com", 80, A);
    add("default/nginx", "npmjs.com", 443, A);
    add("default/nginx", "registry.npmjs.org", 443, A);
    add("default/nginx", NPMJS, 443, A);
    add("default/plain", "npmjs.com", 443, A);
    add("default/plain", "github.com", 80, A);
    add("default/web", "static.cdn.example", 443, A);
    add("default/web", "www.cdn.example", 443, A);
    add("default/web", "v6only.cdn.example", 443, AAAA);
    add("shop/nginx", "npmjs.com", 443, A);
    v
}

/// Runs the attempts and returns them with their outcomes.
pub fn run_attempts(attempts: &[Attempt]) -> anyhow::Result<Vec<(Attempt, Outcome)>> {
    attempts
        .iter()
        .map(|a| Ok((a.clone(), probe::attempt(a, sa(CLUSTER_DNS, 53))?)))
        .collect()
}

impl Lab {
    pub fn new(dir: impl Into<PathBuf>) -> Self {
        Self { dir: dir.into() }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    fn state_path(&self) -> PathBuf {
        self.dir.join("state.json")
    }

    pub fn log_dir(&self) -> PathBuf {
        self.dir.join("logs")
    }

    pub fn store_socket(&self) -> PathBuf {
        self.dir.join("store.sock")
    }

    /// The store address for the CLI.
    pub fn store_url(&self) -> String {
        format!("unix://{}", self.store_socket().display())
    }

    pub fn read_state(&self) -> Option<State> {
        let text = std::fs::read_to_string(self.state_path()).ok()?;
        serde_json::from_str(&text).ok()
    }

    pub(crate) fn write_state(&self, state: &State) -> anyhow::Result<()> {
        let tmp = self.dir.join("state.json.tmp");
        std::fs::write(&tmp, serde_json::to_vec_pretty(state)?)?;
        std::fs::rename(&tmp, self.state_path())?;
        Ok(())
    }

    pub fn status(&self) -> Status {
        let state = self.read_state();
        let (processes, namespaces) = match &state {
            Some(s) => (
                s.processes
                    .iter()
                    .map(|p| (p.clone(), pid_alive(p.pid, &p.program)))
                    .collect(),
                s.namespaces
                    .iter()
                    .map(|n| (n.clone(), Path::new("/run/netns").join(n).exists()))
                    .collect(),
            ),
            None => (Vec::new(), Vec::new()),
        };
        Status {
            state,
            processes,
            namespaces,
        }
    }

    /// Removes everything the lab made: processes (recorded ones, and any process whose
    /// command line names the lab directory), namespaces (recorded ones and any with the
    /// prefix), the pin directory. Returns what it did, one line each; empty: nothing left.
    pub fn down(&self, default_prefix: &str) -> Vec<String> {
        let mut did = Vec::new();
        let state = self.read_state();
        let prefix = state
            .as_ref()
            .map(|s| s.prefix.clone())
            .unwrap_or_else(|| default_prefix.to_string());
        if let Some(s) = &state {
            for p in s.processes.iter().rev() {
                if pid_alive(p.pid, &p.program) {
                    stop_pid(p.pid, || pid_alive(p.pid, &p.program));
                    did.push(format!("stopped {} (pid {})", p.name, p.pid));
                }
            }
        }
        // the directory may be gone (removed while the lab ran): match its absolute path
        let abs = std::fs::canonicalize(&self.dir)
            .or_else(|_| std::env::current_dir().map(|d| d.join(&self.dir)));
        if let Ok(abs) = abs {
            let needle = format!("{}/", abs.display());
            for pid in processes_mentioning(&needle) {
                stop_pid(pid, || running(pid));
                did.push(format!("stopped a leftover lab process (pid {pid})"));
            }
        }
        let mut namespaces: Vec<String> = state
            .as_ref()
            .map(|s| s.namespaces.clone())
            .unwrap_or_default();
        for n in topology::namespaces_with_prefix(&prefix) {
            if !namespaces.contains(&n) {
                namespaces.push(n);
            }
        }
        for ns in &namespaces {
            // anything still running inside (a lab process the state file lost)
            for pid in processes_in_netns(ns) {
                stop_pid(pid, || running(pid));
                did.push(format!("stopped a leftover process in {ns} (pid {pid})"));
            }
            if topology::delete_namespace(ns) {
                did.push(format!("deleted namespace {ns}"));
            }
        }
        let pins = state
            .as_ref()
            .map(|s| s.pin_dir.clone())
            .unwrap_or_else(|| pin_dir(&prefix));
        if pins.exists() {
            let _ = std::fs::remove_dir_all(&pins);
            did.push(format!("removed pins {}", pins.display()));
        }
        for f in [self.state_path(), self.store_socket()] {
            let _ = std::fs::remove_file(f);
        }
        did
    }

    /// Starts a process (inside `netns` with `nsenter --net`), its output appended to
    /// `logs/<name>.log`, in its own process group (so a Ctrl-C of `up` leaves it running);
    /// records it in the state file.
    pub(crate) fn spawn(
        &self,
        state: &mut State,
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[String],
        env: &[(String, String)],
    ) -> anyhow::Result<i32> {
        use std::os::unix::process::CommandExt;
        if !program.exists() {
            bail!(
                "{} is missing: build it first (cargo build --release -p ...)",
                program.display()
            );
        }
        let mut cmd = topology::command_in(netns, program);
        std::fs::create_dir_all(self.log_dir())?;
        let log = File::options()
            .create(true)
            .append(true)
            .open(self.log_dir().join(format!("{name}.log")))?;
        cmd.args(args)
            .env("RUST_LOG", "info")
            .envs(env.iter().map(|(k, v)| (k, v)))
            .stdin(Stdio::null())
            .stdout(Stdio::from(log.try_clone()?))
            .stderr(Stdio::from(log))
            .process_group(0);
        let child = cmd.spawn().with_context(|| format!("starting {name}"))?;
        let pid = child.id() as i32;
        // nsenter execs the program: same pid. The child is reaped by init once we exit.
        drop(child);
        state.processes.push(ProcessRecord {
            name: name.into(),
            pid,
            netns: netns.map(String::from),
            program: program
                .file_name()
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default(),
        });
        self.write_state(state)?;
        Ok(pid)
    }

    /// Waits like [`wait_until`], failing at once (with the log's last lines) when a process
    /// of the lab has died.
    pub(crate) fn wait(
        &self,
        state: &State,
        what: &str,
        mut f: impl FnMut() -> bool,
    ) -> anyhow::Result<()> {
        let deadline = Instant::now() + PATIENCE;
        while Instant::now() < deadline {
            if f() {
                return Ok(());
            }
            if let Some(p) = state
                .processes
                .iter()
                .find(|p| !pid_alive(p.pid, &p.program))
            {
                let log = std::fs::read_to_string(self.log_dir().join(format!("{}.log", p.name)))
                    .unwrap_or_default();
                let tail: Vec<&str> = log
                    .lines()
                    .filter(|l| !l.starts_with("  "))
                    .take(15)
                    .collect();
                bail!(
                    "{} exited while waiting until {what}; its log begins:\n{}",
                    p.name,
                    tail.join("\n")
                );
            }
            thread::sleep(Duration::from_millis(50));
        }
        bail!("timed out after {PATIENCE:?} waiting until {what}")
    }

    /// Runs the CLI against the lab's store.
    pub fn cli(&self, bin_dir: &Path, args: &[&str]) -> anyhow::Result<String> {
        let out = Command::new(bin_dir.join("dnsfence"))
            .args(args)
            .env("DNSFENCE_STORE", self.store_url())
            .output()
            .context("running dnsfence")?;
        if !out.status.success() {
            bail!(
                "dnsfence {}: {}{}",
                args.join(" "),
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        Ok(String::from_utf8_lossy(&out.stdout).to_string())
    }

    /// Builds the world, starts the services, applies the seed and returns the attempts with
    /// their verdicts. Already up (everything alive): says so and runs the attempts again.
    /// Half up or crashed: removes the remains first.
    pub fn up(&self, config: &Config) -> anyhow::Result<Vec<(Attempt, Outcome)>> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root (network namespaces, BPF): run it with sudo");
        }
        std::fs::create_dir_all(&self.dir)?;
        let mut spec = Spec::standard(&config.prefix, &config.seed_dir)?;
        spec.store_args = vec!["--metrics-listen".into(), STORE_METRICS.into()];
        // The lab is for looking: with trace export on, every query is traced unless the
        // caller chose a sampler (the services' default samples 1% of new traces).
        if std::env::var_os("OTEL_TRACES_SAMPLER").is_none() {
            spec.env
                .push(("OTEL_TRACES_SAMPLER".into(), "parentbased_always_on".into()));
        }
        let topology = Topology::plan(&config.prefix, spec.pods.clone());
        let status = self.status();
        if status.healthy() {
            println!(
                "the lab is already up in {} (dnsfence lab down removes it); the attempts again:",
                self.dir.display()
            );
            return run_attempts(&standard_attempts(&topology));
        }
        if status.state.is_some() || !topology::namespaces_with_prefix(&config.prefix).is_empty() {
            println!("==> removing the remains of an earlier lab first");
            for line in self.down(&config.prefix) {
                println!("    {line}");
            }
        }
        let world = self.start(&spec, &config.bin_dir)?;
        let t = progress("trying names and addresses from inside the pods");
        let rows = run_attempts(&standard_attempts(&world.topology))?;
        done(t);
        Ok(rows)
    }
}
