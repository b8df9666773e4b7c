//! Starting and driving a world's services: what `dnsfence lab up` runs, and what the
//! end-to-end tests run with their own [`Spec`] (so both use one copy of this code).
//!
//! The authority, the web servers, the store, the gateway replicas and the enforcer are real
//! processes, started detached and recorded in the lab's state file; [`Lab::down`] stops
//! them whether or not the [`World`] value still exists.

use std::{
    net::TcpStream,
    path::{Path, PathBuf},
    time::Duration,
};

use anyhow::{Context, bail};
use nix::sys::signal::{Signal, kill};
use nix::unistd::Pid;

use crate::{
    Lab, State, done, pin_dir,
    process::{pid_alive, stop_pid},
    progress,
    topology::{self, AUTHORITY, AUTHORITY_V6, CLUSTER_DNS, GITHUB, PodNet, Topology, in_ns, sa},
    wait::{http_get, metric_value},
};

/// The node the lab's pods run on.
pub const NODE_NAME: &str = "node-1";
/// The enforcer's HTTP endpoint (/metrics, /readyz), inside the node namespace.
pub const ENFORCER_METRICS: &str = "127.0.0.1:9154";
/// Replica 1's gRPC address (inside the node namespace); the others listen on Unix sockets
/// in the lab directory.
pub const GW1_GRPC: &str = "127.0.0.1:50052";

/// The HTTP endpoint of gateway replica `i` (0-based), inside the node namespace.
pub fn gateway_metrics(i: usize) -> String {
    format!("127.0.0.1:{}", 9153 + 10 * i)
}

/// What a world runs.
#[derive(Debug, Clone)]
pub struct Spec {
    /// Namespace prefix.
    pub prefix: String,
    pub pods: Vec<PodNet>,
    /// The node default: `DefaultAllow`, `DefaultDeny` or `Audit`.
    pub default_policy: String,
    /// `networkPolicyEventLogs: Enabled`: the enforcer writes flow logs.
    pub event_logs: bool,
    /// Gateway replicas, all serving the cluster DNS address.
    pub replicas: usize,
    /// Manifests applied verbatim once the pods are registered.
    pub policies: Vec<PathBuf>,
    /// More zones for the authority: (file stem, RFC 1035 master file text).
    pub extra_zones: Vec<(String, String)>,
    /// Extra flags for every gateway replica.
    pub gateway_args: Vec<String>,
    /// Extra flags for the enforcer.
    pub enforcer_args: Vec<String>,
    /// The enforcer finds replica 1 through `--gateway-dns-name localhost:PORT` instead of
    /// `--gateways`.
    pub gateway_by_dns: bool,
    /// Extra flags for the store.
    pub store_args: Vec<String>,
    /// Environment for every service process (e.g. `OTEL_*` for trace export), on top of
    /// what the caller's environment passes down.
    pub env: Vec<(String, String)>,
}

impl Spec {
    /// The lab's world: the standard pods, two replicas, the seed's NodeClass and policies.
    pub fn standard(prefix: &str, seed_dir: &Path) -> anyhow::Result<Self> {
        let (default_policy, event_logs) = crate::node_class(seed_dir);
        Ok(Self {
            prefix: prefix.to_string(),
            pods: topology::standard_pods(prefix),
            default_policy,
            event_logs,
            replicas: 2,
            policies: crate::seed_policies(seed_dir)?,
            extra_zones: Vec::new(),
            gateway_args: Vec::new(),
            enforcer_args: Vec::new(),
            gateway_by_dns: false,
            store_args: Vec::new(),
            env: Vec::new(),
        })
    }

    /// The gateway's `--default-policy`: it knows allow and deny (audit passes).
    fn gateway_default(&self) -> &str {
        if self.default_policy == "DefaultDeny" {
            "DefaultDeny"
        } else {
            "DefaultAllow"
        }
    }
}

/// A running world: its lab directory, what it runs, and its state file's contents.
#[derive(Debug)]
pub struct World {
    pub lab: Lab,
    pub spec: Spec,
    pub bin_dir: PathBuf,
    pub topology: Topology,
    pub state: State,
}

impl Lab {
    /// Builds the world of `spec` and starts every service, with a progress line per step.
    /// The directory's earlier contents (store, zones, logs) are removed first; the caller
    /// has cleaned up an earlier lab.
    pub fn start(&self, spec: &Spec, bin_dir: &Path) -> anyhow::Result<World> {
        std::fs::create_dir_all(self.dir())?;
        for sub in ["store", "zones", "logs", "resolv"] {
            let _ = std::fs::remove_dir_all(self.dir().join(sub));
        }
        let _ = std::fs::remove_file(self.dir().join("enforcer.state"));
        let dir = std::fs::canonicalize(self.dir())?;
        let topology = Topology::plan(&spec.prefix, spec.pods.clone());
        let mut world = World {
            lab: Lab::new(&dir),
            spec: spec.clone(),
            bin_dir: bin_dir.to_path_buf(),
            state: State {
                prefix: spec.prefix.clone(),
                namespaces: topology.namespaces(),
                pin_dir: pin_dir(&spec.prefix),
                processes: Vec::new(),
                complete: false,
            },
            topology,
        };
        world.lab.write_state(&world.state)?;

        let pods: Vec<&str> = spec.pods.iter().map(|p| p.workload.as_str()).collect();
        let t = progress(&format!(
            "creating namespaces (a node; pods {}; the internet)",
            pods.join(", ")
        ));
        world.topology.create()?;
        world.write_resolv_confs()?;
        done(t);

        let t = progress("starting the internet: DNS authority and web servers on 443/80");
        world.start_internet()?;
        done(t);

        let t = progress("starting the policy store (Unix socket)");
        world.start_store()?;
        done(t);

        let t = progress("registering the pods");
        world.register_pods()?;
        done(t);

        let names: Vec<String> = spec
            .policies
            .iter()
            .filter_map(|p| p.file_name().map(|n| n.to_string_lossy().to_string()))
            .collect();
        let t = progress(&format!(
            "applying {} (node default {})",
            names.join(", "),
            spec.default_policy
        ));
        let mut args: Vec<String> = vec!["apply".into()];
        for p in &spec.policies {
            args.extend(["-f".into(), p.display().to_string()]);
        }
        world.cli(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        done(t);

        let t = progress(&format!(
            "starting {} resolver-gateway replicas on the cluster DNS address {CLUSTER_DNS}",
            spec.replicas
        ));
        for i in 0..spec.replicas {
            world.start_gateway(i)?;
        }
        done(t);

        let t = progress("starting the node-enforcer (eBPF on the pods' veths)");
        world.start_enforcer()?;
        world.wait_enforcer_ready(spec.replicas)?;
        done(t);

        world.state.complete = true;
        world.lab.write_state(&world.state)?;
        Ok(world)
    }
}

impl World {
    /// The pod registered as `workload` (`namespace/name`).
    pub fn pod(&self, workload: &str) -> anyhow::Result<&PodNet> {
        self.topology
            .pods
            .iter()
            .find(|p| p.workload == workload)
            .with_context(|| format!("no pod {workload} in this world"))
    }

    /// The resolv.conf `dnsfence lab exec` shows a pod's commands.
    pub fn resolv_conf_path(lab: &Lab, netns: &str) -> PathBuf {
        lab.dir().join("resolv").join(format!("{netns}.conf"))
    }

    fn write_resolv_confs(&self) -> anyhow::Result<()> {
        std::fs::create_dir_all(self.lab.dir().join("resolv"))?;
        for pod in &self.topology.pods {
            std::fs::write(
                Self::resolv_conf_path(&self.lab, &pod.netns),
                topology::resolv_conf(pod),
            )?;
        }
        Ok(())
    }

    fn program(&self, name: &str) -> PathBuf {
        self.bin_dir.join(name)
    }

    fn start_internet(&mut self) -> anyhow::Result<()> {
        let zones_dir = self.lab.dir().join("zones");
        let mut zones = topology::write_zones(&zones_dir)?;
        for (stem, text) in &self.spec.extra_zones {
            let path = zones_dir.join(format!("{stem}.zone"));
            std::fs::write(&path, text)?;
            zones.push(path);
        }
        let zone_list: Vec<String> = zones.iter().map(|p| p.display().to_string()).collect();
        let inet = self.topology.inet.clone();
        for (name, listen) in [
            ("authority", format!("{AUTHORITY}:53")),
            ("authority-v6", format!("[{AUTHORITY_V6}]:53")),
        ] {
            let program = self.program("dnsfence-test-authority");
            self.spawn(
                name,
                Some(&inet),
                &program,
                &[
                    "--listen".into(),
                    listen,
                    "--zone-file".into(),
                    zone_list.join(","),
                ],
            )?;
        }
        let program = self.program("dnsfence");
        let lab_dir = format!("{}/", self.lab.dir().display());
        self.spawn(
            "web",
            Some(&inet),
            &program,
            &[
                "lab".into(),
                "serve-http".into(),
                "--lab-dir".into(),
                lab_dir,
                "0.0.0.0:443".into(),
                "0.0.0.0:80".into(),
                "[::]:443".into(),
                "[::]:80".into(),
            ],
        )?;
        self.wait("the web servers listen", || {
            let inet = inet.clone();
            in_ns(&inet, || {
                TcpStream::connect_timeout(&sa(GITHUB, 443), Duration::from_millis(200)).is_ok()
            })
            .unwrap_or(false)
        })
    }

    fn start_store(&mut self) -> anyhow::Result<()> {
        let program = self.program("dnsfence-policy-store");
        let mut args = vec![
            "--data-dir".into(),
            self.lab.dir().join("store").display().to_string(),
            "--listen".into(),
            String::new(),
            "--unix-socket".into(),
            self.lab.store_socket().display().to_string(),
        ];
        args.extend(self.spec.store_args.iter().cloned());
        self.spawn("store", None, &program, &args)?;
        self.wait("the store answers", || {
            self.cli(&["get", "policies"]).is_ok()
        })
    }

    fn register_pods(&self) -> anyhow::Result<()> {
        for pod in &self.topology.pods {
            self.register(pod)?;
        }
        // The cluster DNS address as the NetworkPolicy tier sees it: kube-system pods
        // labelled k8s-app=kube-dns on another node (allow-dns compiles to a CIDR rule).
        self.cli(&[
            "workload",
            "add",
            "kube-system/kube-dns",
            "--ip",
            CLUSTER_DNS,
            "-l",
            "k8s-app=kube-dns",
            "--node",
            "node-2",
        ])?;
        Ok(())
    }

    /// Registers a pod with the store, on this world's node.
    pub fn register(&self, pod: &PodNet) -> anyhow::Result<()> {
        let mut args = vec!["workload", "add", &pod.workload, "--ip", &pod.v4];
        if let Some(v6) = &pod.v6 {
            args.extend(["--ip", v6]);
        }
        for l in &pod.labels {
            args.extend(["-l", l]);
        }
        args.extend(["--node", NODE_NAME]);
        self.cli(&args).map(|_| ())
    }

    /// Wires one more pod's namespace behind its veth (as a CNI would once the pod starts);
    /// `lab down` removes it with the others.
    pub fn add_pod(&mut self, pod: PodNet) -> anyhow::Result<()> {
        self.state.namespaces.push(pod.netns.clone());
        self.lab.write_state(&self.state)?;
        self.topology.wire_pod(&pod)?;
        self.topology.pods.push(pod);
        Ok(())
    }

    /// gRPC address of replica `i` as the enforcer dials it.
    pub fn gateway_grpc(&self, i: usize) -> String {
        if i == 0 {
            format!("http://{GW1_GRPC}")
        } else {
            format!(
                "unix://{}",
                self.lab.dir().join(format!("gw{}.sock", i + 1)).display()
            )
        }
    }

    /// Starts gateway replica `i` (0-based) and waits until it is ready.
    pub fn start_gateway(&mut self, i: usize) -> anyhow::Result<()> {
        let grpc = self.gateway_grpc(i);
        let grpc_listen = grpc.strip_prefix("http://").unwrap_or(&grpc).to_string();
        let metrics = gateway_metrics(i);
        let mut args = vec![
            "--dns-listen".to_string(),
            format!("{CLUSTER_DNS}:53"),
            "--dns-reuse-port".into(),
            "--grpc-listen".into(),
            grpc_listen,
            "--metrics-listen".into(),
            metrics.clone(),
            "--store".into(),
            self.lab.store_url(),
            "--upstream".into(),
            format!("{AUTHORITY}:53"),
            "--default-policy".into(),
            self.spec.gateway_default().into(),
        ];
        args.extend(self.spec.gateway_args.iter().cloned());
        let program = self.program("dnsfence-resolver-gateway");
        let node = self.topology.node.clone();
        self.spawn(&format!("gateway-{}", i + 1), Some(&node), &program, &args)?;
        self.wait(&format!("gateway replica {} is ready", i + 1), || {
            http_get(&node, &metrics, "/readyz").is_some_and(|(c, _)| c == 200)
        })
    }

    /// Starts the enforcer (it resumes from its pins and state file when they exist).
    pub fn start_enforcer(&mut self) -> anyhow::Result<()> {
        let mut gateways: Vec<String> = (0..self.spec.replicas)
            .map(|i| self.gateway_grpc(i))
            .collect();
        let mut args = vec![
            "--node-name".to_string(),
            NODE_NAME.into(),
            "--store".into(),
            self.lab.store_url(),
        ];
        if self.spec.gateway_by_dns {
            let port = GW1_GRPC.rsplit_once(':').map(|(_, p)| p).unwrap_or("50052");
            args.extend([
                "--gateway-dns-name".into(),
                format!("localhost:{port}"),
                "--gateway-resolve-interval".into(),
                "2s".into(),
            ]);
            gateways.remove(0);
        }
        if !gateways.is_empty() {
            args.extend(["--gateways".into(), gateways.join(",")]);
        }
        args.extend([
            "--gateway-ips".to_string(),
            CLUSTER_DNS.into(),
            "--pin-dir".into(),
            self.state.pin_dir.display().to_string(),
            "--state-file".into(),
            self.lab.dir().join("enforcer.state").display().to_string(),
            "--default-policy".into(),
            self.spec.default_policy.clone(),
            "--metrics-listen".into(),
            ENFORCER_METRICS.into(),
        ]);
        if self.spec.event_logs {
            args.push("--event-logs".into());
        }
        args.extend(self.spec.enforcer_args.iter().cloned());
        let program = self.program("dnsfence-node-enforcer");
        let node = self.topology.node.clone();
        self.spawn("enforcer", Some(&node), &program, &args)?;
        Ok(())
    }

    /// Waits until the enforcer is ready and subscribed to `subscriptions` gateways.
    pub fn wait_enforcer_ready(&self, subscriptions: usize) -> anyhow::Result<()> {
        self.wait("the enforcer is ready", || {
            http_get(&self.topology.node, ENFORCER_METRICS, "/readyz")
                .is_some_and(|(c, _)| c == 200)
        })?;
        self.wait(
            &format!("the enforcer subscribed to {subscriptions} gateways"),
            || {
                self.enforcer_metric("dnsfence_enforcer_gateway_connections")
                    .is_some_and(|v| v as usize == subscriptions)
            },
        )
    }

    /// The text of an HTTP endpoint's /metrics inside the node namespace ("" if none).
    pub fn metrics(&self, endpoint: &str) -> String {
        http_get(&self.topology.node, endpoint, "/metrics")
            .map(|(_, body)| body)
            .unwrap_or_default()
    }

    /// The enforcer's first sample whose line starts with `prefix`.
    pub fn enforcer_metric(&self, prefix: &str) -> Option<f64> {
        metric_value(&self.metrics(ENFORCER_METRICS), prefix)
    }

    /// A service's log (stdout and stderr; the enforcer's includes the flow log).
    pub fn log(&self, name: &str) -> String {
        std::fs::read_to_string(self.lab.log_dir().join(format!("{name}.log"))).unwrap_or_default()
    }

    /// Sends `signal` to the named process and, for SIGKILL/SIGTERM, waits until it is gone
    /// and forgets it. Returns its pid.
    pub fn signal(&mut self, name: &str, signal: Signal) -> anyhow::Result<i32> {
        let Some(index) = self.state.processes.iter().position(|p| p.name == name) else {
            bail!("no process {name} in this world");
        };
        let record = self.state.processes[index].clone();
        if matches!(signal, Signal::SIGKILL | Signal::SIGTERM) {
            let _ = kill(Pid::from_raw(record.pid), signal);
            stop_pid(record.pid, || pid_alive(record.pid, &record.program));
            self.state.processes.remove(index);
            self.lab.write_state(&self.state)?;
        } else {
            kill(Pid::from_raw(record.pid), signal)
                .with_context(|| format!("signalling {name}"))?;
        }
        Ok(record.pid)
    }

    /// Runs the CLI against this world's store.
    pub fn cli(&self, args: &[&str]) -> anyhow::Result<String> {
        self.lab.cli(&self.bin_dir, args)
    }

    fn spawn(
        &mut self,
        name: &str,
        netns: Option<&str>,
        program: &Path,
        args: &[String],
    ) -> anyhow::Result<i32> {
        self.lab
            .spawn(&mut self.state, name, netns, program, args, &self.spec.env)
    }

    fn wait(&self, what: &str, f: impl FnMut() -> bool) -> anyhow::Result<()> {
        self.lab.wait(&self.state, what, f)
    }
}
