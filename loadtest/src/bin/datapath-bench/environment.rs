//! The benchmark's environment.
//!
//! - cleanup: namespaces, pin directory, sysctl — from Drop and from the signal thread
//! - topology (adapted from services/node-enforcer/tests/support)

use super::*;

#[derive(Default)]
pub(crate) struct Cleanup {
    pub(crate) namespaces: Vec<String>,
    pub(crate) pin_dir: Option<PathBuf>,
    pub(crate) stats_old: Option<String>,
}

pub(crate) static CLEANUP: Mutex<Option<Cleanup>> = Mutex::new(None);

pub(crate) const STATS_SYSCTL: &str = "/proc/sys/kernel/bpf_stats_enabled";

pub(crate) fn with_cleanup(f: impl FnOnce(&mut Cleanup)) {
    if let Ok(mut g) = CLEANUP.lock() {
        f(g.get_or_insert_with(Cleanup::default));
    }
}

pub(crate) fn cleanup_now() {
    let taken = CLEANUP.lock().ok().and_then(|mut g| g.take());
    let Some(c) = taken else { return };
    if let Some(old) = &c.stats_old {
        let _ = std::fs::write(STATS_SYSCTL, old);
    }
    // unpinning the links detaches the programs; deleting the namespaces removes the veths
    if let Some(dir) = &c.pin_dir {
        let _ = std::fs::remove_dir_all(dir);
    }
    for ns in c.namespaces.iter().rev() {
        let _ = Command::new("ip").args(["netns", "del", ns]).status();
    }
}

pub(crate) struct Guard;

impl Drop for Guard {
    fn drop(&mut self) {
        cleanup_now();
    }
}

/// Blocks SIGINT/SIGTERM in this thread (and so in every thread spawned later) and waits
/// for them on a dedicated thread, which cleans up and exits.
pub(crate) fn install_signal_cleanup() -> anyhow::Result<()> {
    let mut set = SigSet::empty();
    set.add(Signal::SIGINT);
    set.add(Signal::SIGTERM);
    set.thread_block().context("block signals")?;
    thread::spawn(move || {
        if let Ok(sig) = set.wait() {
            eprintln!("datapath-bench: {sig}, cleaning up");
            cleanup_now();
            std::process::exit(130);
        }
    });
    Ok(())
}

// topology (adapted from services/node-enforcer/tests/support)

pub(crate) fn enter_ns(ns: &str) -> anyhow::Result<()> {
    let path = format!("/run/netns/{ns}");
    let file = File::open(&path).with_context(|| path.clone())?;
    setns(&file, CloneFlags::CLONE_NEWNET).with_context(|| format!("setns {path}"))?;
    Ok(())
}

/// Runs `f` on a new thread inside network namespace `ns`.
pub(crate) fn in_ns<T: Send + 'static>(
    ns: &str,
    f: impl FnOnce() -> anyhow::Result<T> + Send + 'static,
) -> anyhow::Result<T> {
    let ns = ns.to_owned();
    let handle = thread::spawn(move || {
        enter_ns(&ns)?;
        f()
    });
    match handle.join() {
        Ok(v) => v,
        Err(_) => bail!("thread in a namespace panicked"),
    }
}

pub(crate) struct Topology {
    pub(crate) node: String,
    pub(crate) pod1: String,
    pub(crate) inet: String,
    pub(crate) pin_dir: PathBuf,
}

impl Topology {
    /// The lab's world (crates/lab) with one pod: node between the pod and the internet.
    pub(crate) fn new() -> anyhow::Result<Self> {
        let suffix = format!("bench-{}", std::process::id());
        let pod = PodNet {
            workload: "default/bench".into(),
            labels: Vec::new(),
            netns: format!("dfp1-{suffix}"),
            veth: "vpod1".into(),
            v4: POD1_V4.into(),
            v6: None,
        };
        let world = LabTopology::plan(&format!("df-{suffix}"), vec![pod.clone()]);
        let t = Self {
            node: world.node.clone(),
            pod1: pod.netns,
            inet: world.inet.clone(),
            pin_dir: PathBuf::from(format!("/sys/fs/bpf/dnsfence-{suffix}")),
        };
        with_cleanup(|c| {
            c.pin_dir = Some(t.pin_dir.clone());
            c.namespaces.extend(world.namespaces());
        });
        world.create()?;
        Ok(t)
    }
}
