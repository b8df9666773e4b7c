//! A lab world (`dnsfence_lab::Lab::start`) for one end-to-end test: the service binaries
//! built once, a unique namespace prefix, and `lab down` when the test ends (its logs
//! printed first if it failed).

use std::{
    path::{Path, PathBuf},
    sync::{
        OnceLock,
        atomic::{AtomicUsize, Ordering},
    },
    thread,
};

use dnsfence_lab::{ENFORCER_METRICS, Lab, Spec, World, gateway_metrics};

/// The seed manifests.
pub fn seed(file: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("../../examples/seed")
        .join(file)
}

/// Builds the other services' binaries once (same target directory and profile as this
/// test) and returns their directory, where this crate's binary is too.
pub fn bin_dir() -> &'static Path {
    static BINS: OnceLock<PathBuf> = OnceLock::new();
    BINS.get_or_init(|| {
        let me = PathBuf::from(env!("CARGO_BIN_EXE_dnsfence-node-enforcer"));
        let dir = me.parent().expect("binary directory").to_path_buf();
        // Stale binaries would test old code: a failed build fails the test.
        let took = dnsfence_lab::build_binaries(
            &dir,
            &[
                "dnsfence-policy-store",
                "dnsfence-resolver-gateway",
                "dnsfence-cli",
                "dnsfence-test-authority",
            ],
        )
        .unwrap_or_else(|e| panic!("{e:#}"));
        println!("built the service binaries in {took:?}");
        for n in [
            "dnsfence-policy-store",
            "dnsfence-resolver-gateway",
            "dnsfence",
            "dnsfence-test-authority",
        ] {
            assert!(dir.join(n).exists(), "{n} is missing after the build");
        }
        dir
    })
}

/// A namespace prefix no other world of this process or another uses.
pub fn unique_prefix(tag: &str) -> String {
    static N: AtomicUsize = AtomicUsize::new(0);
    format!(
        "{tag}-{}-{}",
        std::process::id(),
        N.fetch_add(1, Ordering::SeqCst)
    )
}

/// A running world; dropping it runs `lab down` (processes, namespaces, pins).
pub struct TestWorld {
    pub world: World,
    /// Files the test wrote (policies, ...) and the lab directory.
    pub scratch: tempfile::TempDir,
}

impl TestWorld {
    /// Starts `spec` with its lab directory inside `scratch`; a world that fails to start is
    /// removed (logs printed) before the test fails.
    pub fn launch(spec: Spec, scratch: tempfile::TempDir) -> Self {
        let lab = Lab::new(scratch.path().join("lab"));
        match lab.start(&spec, bin_dir()) {
            Ok(world) => Self { world, scratch },
            Err(e) => {
                dump_logs(&lab);
                lab.down(&spec.prefix);
                panic!("starting the world: {e:#}");
            }
        }
    }

    pub fn node(&self) -> String {
        self.world.topology.node.clone()
    }

    /// The enforcer's /metrics.
    pub fn metrics(&self) -> String {
        self.world.metrics(ENFORCER_METRICS)
    }

    /// The enforcer's first sample whose line starts with `prefix`.
    pub fn metric(&self, prefix: &str) -> Option<f64> {
        self.world.enforcer_metric(prefix)
    }

    /// Queries gateway replica `i` answered so far (every verdict, type, transport).
    pub fn gateway_queries(&self, i: usize) -> f64 {
        self.world
            .metrics(&gateway_metrics(i))
            .lines()
            .filter(|l| l.starts_with("dnsfence_gateway_queries_total"))
            .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
            .sum()
    }

    /// Runs the CLI against the world's store; fails the test if it fails.
    pub fn cli(&self, args: &[&str]) {
        if let Err(e) = self.world.cli(args) {
            panic!("{e:#}");
        }
    }

    /// A service's log.
    pub fn log(&self, name: &str) -> String {
        self.world.log(name)
    }

    /// The network namespace of a pod (`namespace/name`).
    pub fn ns(&self, workload: &str) -> String {
        self.world
            .pod(workload)
            .expect("a pod of this world")
            .netns
            .clone()
    }
}

pub fn dump_logs(lab: &Lab) {
    for name in ["enforcer", "gateway-1", "gateway-2", "store", "authority"] {
        let text =
            std::fs::read_to_string(lab.log_dir().join(format!("{name}.log"))).unwrap_or_default();
        if !text.is_empty() {
            let tail: Vec<&str> = text.lines().rev().take(40).collect();
            eprintln!("---- {name} (last lines) ----");
            for l in tail.into_iter().rev() {
                eprintln!("{l}");
            }
        }
    }
}

impl Drop for TestWorld {
    fn drop(&mut self) {
        if thread::panicking() {
            dump_logs(&self.world.lab);
        }
        for line in self.world.lab.down(&self.world.spec.prefix) {
            eprintln!("{line}");
        }
    }
}
