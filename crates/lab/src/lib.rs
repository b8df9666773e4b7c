//! The dnsfence lab: the whole system on one machine, in network namespaces.
//!
//! [`Lab::up`] builds the world ([`topology`]): a node namespace between two pods and an
//! "internet" namespace (the authority and web servers), starts the store (root namespace,
//! Unix socket), two gateway replicas and the enforcer (node namespace, entered with
//! `nsenter --net`, which keeps bpffs visible), registers the pods, applies the seed
//! manifests verbatim and runs attempts from inside the pods ([`probe`]). Everything it
//! creates is recorded in a state file in the lab directory before it is created, so
//! [`Lab::down`] removes it all, also after a crash or a half-finished `up`.

pub mod probe;
pub mod serve;
pub mod topology;

pub use topology::write_zones;

use std::{
    fs::File,
    io::{Read, Write},
    net::{SocketAddr, TcpStream},
    path::{Path, PathBuf},
    process::{Command, Stdio},
    thread,
    time::{Duration, Instant},
};

use anyhow::{Context, bail};
use hickory_proto::rr::RecordType;
use nix::{
    sys::signal::{Signal, kill},
    unistd::Pid,
};
use serde::{Deserialize, Serialize};

use crate::{
    probe::{Attempt, Outcome},
    topology::{AUTHORITY, AUTHORITY_V6, GITHUB, GW1_DNS, GW2_DNS, NPMJS, Topology, in_ns, sa},
};

/// The namespace prefix of the lab (`dflab-node`, `dflab-nginx`, ...).
pub const DEFAULT_PREFIX: &str = "dflab";
/// The node the lab's pods run on.
pub const NODE_NAME: &str = "node-1";
pub const ENFORCER_METRICS: &str = "127.0.0.1:9154";
pub const GW1_GRPC: &str = "127.0.0.1:50052";
pub const GW1_METRICS: &str = "127.0.0.1:9153";
pub const GW2_METRICS: &str = "127.0.0.1:9163";
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

/// A process the lab started.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct ProcessRecord {
    pub name: String,
    pub pid: i32,
    /// The namespace it runs in (`None`: the root namespace).
    pub netns: Option<String>,
    /// The program's file name (to recognise the pid).
    pub program: String,
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

fn progress(step: &str) -> Instant {
    print!("==> {step} ... ");
    let _ = std::io::stdout().flush();
    Instant::now()
}

fn done(started: Instant) {
    println!("done ({:.1}s)", started.elapsed().as_secs_f64());
}

/// True while `pid` runs (not a zombie) and its program is `program`.
fn pid_alive(pid: i32, program: &str) -> bool {
    let Ok(stat) = std::fs::read_to_string(format!("/proc/{pid}/stat")) else {
        return false;
    };
    // state is the field after the ")" that closes the command name
    let zombie = stat
        .rsplit_once(')')
        .is_some_and(|(_, rest)| rest.trim_start().starts_with('Z'));
    if zombie {
        return false;
    }
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline")).unwrap_or_default();
    // While nsenter execs the program, /proc/PID/cmdline reads empty for a moment: the
    // process is there, just between two programs.
    if cmdline.is_empty() {
        return true;
    }
    let argv0 = cmdline.split(|b| *b == 0).next().unwrap_or_default();
    let argv0 = String::from_utf8_lossy(argv0);
    Path::new(argv0.as_ref())
        .file_name()
        // `nsenter` until it has exec'd the program
        .is_some_and(|n| n.to_string_lossy() == program || n == "nsenter")
}

/// The programs `up` starts (besides `dnsfence lab serve-http`).
const LAB_PROGRAMS: [&str; 5] = [
    "dnsfence-policy-store",
    "dnsfence-resolver-gateway",
    "dnsfence-node-enforcer",
    "dnsfence-test-authority",
    "nsenter",
];

/// Lab programs whose command line mentions `needle` (the lab directory), except this one.
fn processes_mentioning(needle: &str) -> Vec<i32> {
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me)
        .filter(|pid| {
            let Ok(c) = std::fs::read(format!("/proc/{pid}/cmdline")) else {
                return false;
            };
            let argv: Vec<String> = c
                .split(|b| *b == 0)
                .map(|a| String::from_utf8_lossy(a).to_string())
                .collect();
            let program = argv
                .first()
                .and_then(|a| Path::new(a).file_name())
                .map(|n| n.to_string_lossy().to_string())
                .unwrap_or_default();
            // only the lab's own programs: never a user's `tail -f` of a log
            let ours = LAB_PROGRAMS.contains(&program.as_str())
                || (program == "dnsfence" && argv.iter().any(|a| a == "serve-http"));
            ours && argv.iter().any(|a| a.contains(needle))
        })
        .collect()
}

/// True while `pid` exists and is not a zombie.
fn running(pid: i32) -> bool {
    std::fs::read_to_string(format!("/proc/{pid}/stat")).is_ok_and(|stat| {
        !stat
            .rsplit_once(')')
            .is_some_and(|(_, r)| r.trim_start().starts_with('Z'))
    })
}

/// The processes whose network namespace is the named one (`/run/netns/NAME`).
fn processes_in_netns(ns: &str) -> Vec<i32> {
    use std::os::unix::fs::MetadataExt;
    let Ok(want) = std::fs::metadata(Path::new("/run/netns").join(ns)) else {
        return Vec::new();
    };
    let me = std::process::id() as i32;
    let Ok(dir) = std::fs::read_dir("/proc") else {
        return Vec::new();
    };
    dir.flatten()
        .filter_map(|e| e.file_name().to_str()?.parse::<i32>().ok())
        .filter(|pid| *pid != me && running(*pid))
        .filter(|pid| {
            std::fs::metadata(format!("/proc/{pid}/ns/net"))
                .is_ok_and(|m| m.dev() == want.dev() && m.ino() == want.ino())
        })
        .collect()
}

fn stop_pid(pid: i32, alive: impl Fn() -> bool) {
    let _ = kill(Pid::from_raw(pid), Signal::SIGTERM);
    let deadline = Instant::now() + Duration::from_secs(3);
    while Instant::now() < deadline && alive() {
        thread::sleep(Duration::from_millis(50));
    }
    if alive() {
        let _ = kill(Pid::from_raw(pid), Signal::SIGKILL);
    }
}

/// GET from inside `ns`; (status, body).
pub fn http_get(ns: &str, addr: &str, path: &str) -> Option<(u16, String)> {
    let addr: SocketAddr = addr.parse().ok()?;
    let path = path.to_string();
    in_ns(ns, move || {
        let mut s = TcpStream::connect_timeout(&addr, Duration::from_secs(1)).ok()?;
        s.set_read_timeout(Some(Duration::from_secs(3))).ok()?;
        write!(
            s,
            "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n"
        )
        .ok()?;
        let mut text = String::new();
        s.read_to_string(&mut text).ok()?;
        let code = text.split(' ').nth(1)?.parse().ok()?;
        let body = text.split_once("\r\n\r\n").map(|(_, b)| b.to_string())?;
        Some((code, body))
    })
    .ok()
    .flatten()
}

/// The value of the first sample whose line starts with `prefix`.
pub fn metric_value(text: &str, prefix: &str) -> Option<f64> {
    text.lines()
        .find(|l| l.starts_with(prefix))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
}

/// Polls `f` every 50 ms until it holds or `timeout` passes.
pub fn wait_until(
    what: &str,
    timeout: Duration,
    mut f: impl FnMut() -> bool,
) -> anyhow::Result<()> {
    let deadline = Instant::now() + timeout;
    while Instant::now() < deadline {
        if f() {
            return Ok(());
        }
        thread::sleep(Duration::from_millis(50));
    }
    bail!("timed out after {timeout:?} waiting until {what}")
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
    add("default/plain", "static.cdn.example", 443, A);
    add("default/plain", "www.cdn.example", 443, A);
    add("default/plain", "v6only.cdn.example", 443, AAAA);
    v
}

/// Runs the attempts and returns them with their outcomes.
pub fn run_attempts(attempts: &[Attempt]) -> anyhow::Result<Vec<(Attempt, Outcome)>> {
    attempts
        .iter()
        .map(|a| Ok((a.clone(), probe::attempt(a, sa(GW1_DNS, 53))?)))
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

    fn write_state(&self, state: &State) -> anyhow::Result<()> {
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
    fn spawn(
        &self,
        state: &mut State,
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[String],
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
    fn wait(&self, state: &State, what: &str, mut f: impl FnMut() -> bool) -> anyhow::Result<()> {
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

    /// Builds the world, starts the services, applies the seed and prints the verdict table.
    /// Already up (everything alive): says so and shows the table again. Half up or crashed:
    /// removes the remains first.
    pub fn up(&self, config: &Config) -> anyhow::Result<Vec<(Attempt, Outcome)>> {
        if !nix::unistd::geteuid().is_root() {
            bail!("the lab needs root (network namespaces, BPF): run it with sudo");
        }
        std::fs::create_dir_all(&self.dir)?;
        let topology = Topology::plan(&config.prefix, topology::standard_pods(&config.prefix));
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
        // start from a clean directory (keeps nothing of an earlier run but the logs' folder)
        for sub in ["store", "zones", "logs"] {
            let _ = std::fs::remove_dir_all(self.dir.join(sub));
        }
        let _ = std::fs::remove_file(self.dir.join("enforcer.state"));
        let dir = std::fs::canonicalize(&self.dir)?;
        let lab = Lab::new(&dir);
        let bins = &config.bin_dir;
        let mut state = State {
            prefix: config.prefix.clone(),
            namespaces: topology.namespaces(),
            pin_dir: pin_dir(&config.prefix),
            processes: Vec::new(),
            complete: false,
        };
        lab.write_state(&state)?;
        let (default, event_logs) = node_class(&config.seed_dir);
        let policies = seed_policies(&config.seed_dir)?;

        let t = progress("creating namespaces (node, pods nginx and plain, internet)");
        topology.create()?;
        done(t);

        let t = progress("starting the internet: DNS authority and web servers on 443/80");
        let zones = write_zones(&dir.join("zones"))?;
        let zone_list: Vec<String> = zones.iter().map(|p| p.display().to_string()).collect();
        lab.spawn(
            &mut state,
            "authority",
            Some(&topology.inet),
            &bins.join("dnsfence-test-authority"),
            &[
                "--listen".into(),
                format!("{AUTHORITY}:53"),
                "--zone-file".into(),
                zone_list.join(","),
            ],
        )?;
        lab.spawn(
            &mut state,
            "authority-v6",
            Some(&topology.inet),
            &bins.join("dnsfence-test-authority"),
            &[
                "--listen".into(),
                format!("[{AUTHORITY_V6}]:53"),
                "--zone-file".into(),
                zone_list.join(","),
            ],
        )?;
        lab.spawn(
            &mut state,
            "web",
            Some(&topology.inet),
            &bins.join("dnsfence"),
            &[
                "lab".into(),
                "serve-http".into(),
                "--lab-dir".into(),
                format!("{}/", dir.display()),
                "0.0.0.0:443".into(),
                "0.0.0.0:80".into(),
                "[::]:443".into(),
                "[::]:80".into(),
            ],
        )?;
        let inet = topology.inet.clone();
        lab.wait(&state, "the web servers listen", || {
            let inet = inet.clone();
            in_ns(&inet, || {
                TcpStream::connect_timeout(&sa(GITHUB, 443), Duration::from_millis(200)).is_ok()
            })
            .unwrap_or(false)
        })?;
        done(t);

        let t = progress("starting the policy store (Unix socket)");
        lab.spawn(
            &mut state,
            "store",
            None,
            &bins.join("dnsfence-policy-store"),
            &[
                "--data-dir".into(),
                dir.join("store").display().to_string(),
                "--listen".into(),
                String::new(),
                "--unix-socket".into(),
                lab.store_socket().display().to_string(),
            ],
        )?;
        lab.wait(&state, "the store answers", || {
            lab.cli(bins, &["get", "policies"]).is_ok()
        })?;
        done(t);

        let t = progress("registering the pods");
        for pod in &topology.pods {
            let mut args = vec!["workload", "add", &pod.workload, "--ip", &pod.v4];
            if let Some(v6) = &pod.v6 {
                args.extend(["--ip", v6]);
            }
            for l in &pod.labels {
                args.extend(["-l", l]);
            }
            args.extend(["--node", NODE_NAME]);
            lab.cli(bins, &args)?;
        }
        // CoreDNS lives on another node: allow-dns compiles to a CIDR rule for it
        lab.cli(
            bins,
            &[
                "workload",
                "add",
                "kube-system/coredns",
                "--ip",
                "192.0.2.53",
                "-l",
                "k8s-app=kube-dns",
                "--node",
                "node-2",
            ],
        )?;
        done(t);

        let names: Vec<String> = policies
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .collect();
        let t = progress(&format!(
            "applying the seed ({}; node default {default} from my-nodeclass.yaml)",
            names.join(", ")
        ));
        let mut args: Vec<String> = vec!["apply".into()];
        for p in &policies {
            args.extend(["-f".into(), p.display().to_string()]);
        }
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        lab.cli(bins, &args)?;
        done(t);

        let t = progress("starting two resolver-gateway replicas in the node namespace");
        for i in 0..2 {
            let (dns, metrics, grpc) = match i {
                0 => (GW1_DNS, GW1_METRICS, GW1_GRPC.to_string()),
                _ => (
                    GW2_DNS,
                    GW2_METRICS,
                    format!("unix://{}", dir.join("gw2.sock").display()),
                ),
            };
            lab.spawn(
                &mut state,
                &format!("gateway-{}", i + 1),
                Some(&topology.node),
                &bins.join("dnsfence-resolver-gateway"),
                &[
                    "--dns-listen".into(),
                    format!("{dns}:53"),
                    "--grpc-listen".into(),
                    grpc,
                    "--metrics-listen".into(),
                    metrics.into(),
                    "--store".into(),
                    lab.store_url(),
                    "--upstream".into(),
                    format!("{AUTHORITY}:53"),
                    "--default-policy".into(),
                    default.clone(),
                ],
            )?;
        }
        for m in [GW1_METRICS, GW2_METRICS] {
            lab.wait(&state, &format!("the gateway at {m} is ready"), || {
                http_get(&topology.node, m, "/readyz").is_some_and(|(c, _)| c == 200)
            })?;
        }
        done(t);

        let t = progress("starting the node-enforcer (eBPF on the pods' veths)");
        let mut args = vec![
            "--node-name".to_string(),
            NODE_NAME.into(),
            "--store".into(),
            lab.store_url(),
            "--gateways".into(),
            format!(
                "http://{GW1_GRPC},unix://{}",
                dir.join("gw2.sock").display()
            ),
            "--gateway-ips".into(),
            format!("{GW1_DNS},{GW2_DNS}"),
            "--pin-dir".into(),
            state.pin_dir.display().to_string(),
            "--state-file".into(),
            dir.join("enforcer.state").display().to_string(),
            "--default-policy".into(),
            default.clone(),
            "--metrics-listen".into(),
            ENFORCER_METRICS.into(),
        ];
        if event_logs {
            args.push("--event-logs".into());
        }
        lab.spawn(
            &mut state,
            "enforcer",
            Some(&topology.node),
            &bins.join("dnsfence-node-enforcer"),
            &args,
        )?;
        lab.wait(&state, "the enforcer is ready", || {
            http_get(&topology.node, ENFORCER_METRICS, "/readyz").is_some_and(|(c, _)| c == 200)
        })?;
        lab.wait(&state, "the enforcer subscribed to both gateways", || {
            http_get(&topology.node, ENFORCER_METRICS, "/metrics")
                .and_then(|(_, body)| metric_value(&body, "dnsfence_enforcer_gateway_connections"))
                .is_some_and(|v| v as usize == 2)
        })?;
        done(t);

        state.complete = true;
        lab.write_state(&state)?;
        let t = progress("trying names and addresses from inside the pods");
        let rows = run_attempts(&standard_attempts(&topology))?;
        done(t);
        Ok(rows)
    }
}
