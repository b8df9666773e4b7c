//! `dnsfence lab ...`: the network-namespace lab (crate `dnsfence-lab`).

use std::path::{Path, PathBuf};
use std::process::Command;

use dnsfence_lab::{Config, Lab, probe};

use crate::args::LabCommand;
use crate::failure::Failure;

fn fail(e: impl std::fmt::Display) -> Failure {
    Failure::rejected(e.to_string())
}

/// The directory of the service binaries: this binary's, or the release one beside it.
fn bin_dir(release: bool) -> Result<PathBuf, Failure> {
    let exe = std::env::current_exe().map_err(fail)?;
    let dir = exe
        .parent()
        .map(Path::to_path_buf)
        .ok_or_else(|| fail("cannot tell where dnsfence is"))?;
    if release && dir.file_name().is_some_and(|n| n != "release") {
        let r = dir.parent().map(|p| p.join("release"));
        if let Some(r) = r.filter(|r| r.exists()) {
            return Ok(r);
        }
    }
    Ok(dir)
}

fn seed_dir(given: Option<PathBuf>, bins: &Path) -> PathBuf {
    if let Some(d) = given {
        return d;
    }
    let candidates = [
        PathBuf::from("examples/seed"),
        bins.join("../../examples/seed"),
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/seed"),
    ];
    candidates
        .iter()
        .find(|p| p.join("my-nodeclass.yaml").exists())
        .cloned()
        .unwrap_or_else(|| PathBuf::from("examples/seed"))
}

/// A pod's namespace: a namespace name as is, else `<prefix>-<pod>`.
fn pod_netns(lab: &Lab, default_prefix: &str, pod: &str) -> String {
    if Path::new("/run/netns").join(pod).exists() {
        return pod.to_string();
    }
    let prefix = lab
        .read_state()
        .map(|s| s.prefix)
        .unwrap_or_else(|| default_prefix.to_string());
    // `namespace/name` as registered, or the short name (`nginx`, `shop-nginx`)
    dnsfence_lab::topology::standard_pods(&prefix)
        .into_iter()
        .find(|p| p.workload == pod)
        .map(|p| p.netns)
        .unwrap_or_else(|| format!("{prefix}-{pod}"))
}

pub fn run(cmd: LabCommand) -> Result<(), Failure> {
    match cmd {
        LabCommand::Up { dir, release, seed } => {
            let bins = bin_dir(release)?;
            let config = Config {
                dir: dir.path.clone(),
                seed_dir: seed_dir(seed, &bins),
                bin_dir: bins,
                prefix: dir.prefix.clone(),
            };
            let lab = Lab::new(&dir.path);
            let rows = lab.up(&config).map_err(|e| {
                fail(format!(
                    "{e:#}\n(logs: dnsfence lab logs; clean up: dnsfence lab down)"
                ))
            })?;
            println!();
            print!("{}", probe::table(&rows, probe::stdout_is_terminal()));
            println!();
            println!("The lab keeps running. Try:");
            println!(
                "  dnsfence lab exec nginx -- dig api.github.com         (through the gateways at {})",
                dnsfence_lab::topology::CLUSTER_DNS
            );
            println!("  dnsfence lab exec nginx -- curl -s http://github.com:443/");
            println!("  dnsfence lab exec shop/nginx -- curl -s http://npmjs.com:443/");
            println!("  dnsfence lab logs enforcer      # includes the flow log");
            println!("  dnsfence lab apply -f FILE      # a policy change takes effect live");
            println!("  dnsfence lab status | dnsfence lab down");
            print_observability(&dir.prefix);
            Ok(())
        }
        LabCommand::Down { dir } => {
            let lab = Lab::new(&dir.path);
            let did = lab.down(&dir.prefix);
            if did.is_empty() {
                println!(
                    "nothing to remove: no lab is running from {}",
                    dir.path.display()
                );
            } else {
                for line in did {
                    println!("{line}");
                }
                println!("the lab is down");
            }
            Ok(())
        }
        LabCommand::Status { dir } => {
            let lab = Lab::new(&dir.path);
            let st = lab.status();
            let Some(state) = &st.state else {
                println!("no lab in {}", dir.path.display());
                return Ok(());
            };
            println!(
                "lab in {} ({}):",
                dir.path.display(),
                if st.healthy() {
                    "up"
                } else if state.complete {
                    "degraded: something stopped; `dnsfence lab up` restarts it"
                } else {
                    "half up: `dnsfence lab down` or `up` again"
                }
            );
            for (p, alive) in &st.processes {
                println!(
                    "  {:<12} pid {:<8} {:<8} {}",
                    p.name,
                    p.pid,
                    if *alive { "running" } else { "DEAD" },
                    p.netns.as_deref().unwrap_or("(root namespace)")
                );
            }
            for (n, exists) in &st.namespaces {
                println!(
                    "  netns {n:<20} {}",
                    if *exists { "present" } else { "MISSING" }
                );
            }
            println!("  pins  {}", state.pin_dir.display());
            println!("  store {}", lab.store_url());
            Ok(())
        }
        LabCommand::Exec { dir, pod, command } => {
            let lab = Lab::new(&dir.path);
            let ns = pod_netns(&lab, &dir.prefix, &pod);
            if !Path::new("/run/netns").join(&ns).exists() {
                return Err(fail(format!(
                    "no namespace {ns}: is the lab up? (dnsfence lab status)"
                )));
            }
            // The pod's own resolv.conf (the cluster DNS address, its search list), as the
            // kubelet would mount it: bound over /etc/resolv.conf in a private mount
            // namespace, so the host's file stays as it is.
            let resolv = dnsfence_lab::World::resolv_conf_path(&lab, &ns);
            let mut cmd = if resolv.exists() {
                let mut c = Command::new("unshare");
                c.args(["--mount", "--propagation", "private", "--", "sh", "-c"])
                    .arg(
                        "f=$1; n=$2; shift 2; mount --bind \"$f\" /etc/resolv.conf && \
                         exec nsenter --net=\"$n\" -- \"$@\"",
                    )
                    .arg("sh")
                    .arg(&resolv)
                    .arg(format!("/run/netns/{ns}"));
                c
            } else {
                let mut c = Command::new("nsenter");
                c.arg(format!("--net=/run/netns/{ns}")).arg("--");
                c
            };
            let status = cmd
                .args(&command)
                .status()
                .map_err(|e| fail(format!("running the command in {ns}: {e}")))?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        LabCommand::Logs { dir, service } => {
            let lab = Lab::new(&dir.path);
            let logs = lab.log_dir();
            let mut files: Vec<PathBuf> = std::fs::read_dir(&logs)
                .map_err(|e| fail(format!("{}: {e} (is there a lab?)", logs.display())))?
                .flatten()
                .map(|e| e.path())
                .filter(|p| {
                    service
                        .as_ref()
                        .is_none_or(|s| p.file_stem().is_some_and(|n| n.to_string_lossy() == *s))
                })
                .collect();
            files.sort();
            if files.is_empty() {
                return Err(fail(format!(
                    "no log for {} in {}",
                    service.as_deref().unwrap_or("any service"),
                    logs.display()
                )));
            }
            let many = files.len() > 1;
            for f in files {
                if many {
                    println!("==> {} <==", f.display());
                }
                print!("{}", std::fs::read_to_string(&f).unwrap_or_default());
            }
            Ok(())
        }
        LabCommand::Apply { dir, files } => {
            let lab = Lab::new(&dir.path);
            if !lab.store_socket().exists() {
                return Err(fail("the lab's store is not running: dnsfence lab up"));
            }
            let exe = std::env::current_exe().map_err(fail)?;
            let status = Command::new(exe)
                .env("DNSFENCE_STORE", lab.store_url())
                .arg("apply")
                .args(files.iter().flat_map(|f| [PathBuf::from("-f"), f.clone()]))
                .status()
                .map_err(fail)?;
            if !status.success() {
                std::process::exit(status.code().unwrap_or(1));
            }
            Ok(())
        }
        LabCommand::ServeHttp { lab_dir: _, addrs } => {
            dnsfence_lab::serve::serve_forever(&addrs).map_err(|e| fail(format!("{e:#}")))
        }
    }
}

/// Where the lab's metrics, traces and decision/flow logs are.
fn print_observability(prefix: &str) {
    println!();
    println!("Metrics (Prometheus text; gateways and enforcer listen inside the node namespace):");
    println!(
        "  curl -s http://{}/metrics                               # policy store",
        dnsfence_lab::STORE_METRICS
    );
    for i in 0..2 {
        println!(
            "  dnsfence lab exec node -- curl -s http://{}/metrics   # gateway-{}",
            dnsfence_lab::gateway_metrics(i),
            i + 1
        );
    }
    println!(
        "  dnsfence lab exec node -- curl -s http://{}/metrics   # node-enforcer",
        dnsfence_lab::ENFORCER_METRICS
    );
    match std::env::var("OTEL_EXPORTER_OTLP_ENDPOINT") {
        Ok(endpoint) if !endpoint.trim().is_empty() => println!(
            "Traces: every service exports OTLP/gRPC to {endpoint} (from its own network \
             namespace: the gateways and the enforcer run in {prefix}-node); every query is \
             traced unless OTEL_TRACES_SAMPLER says otherwise"
        ),
        _ => println!(
            "Traces: off. Set OTEL_EXPORTER_OTLP_ENDPOINT before `dnsfence lab up`, e.g. \
             unix:///tmp/otlp.sock (a collector's OTLP gRPC receiver on a Unix socket is \
             reachable from every namespace)"
        ),
    }
    println!("Decision and flow logs (JSON lines, one schema):");
    println!("  dnsfence lab logs | jq -cR 'fromjson? | select(.verdict == \"deny\")'");
}
