//! Loading, pinning and attaching the datapath.
//!
//! Everything lives under one pin directory (see [`PinLayout`]): maps in `maps/`, programs
//! in `progs/`, TCX links in `links/<ifindex>-{egress,ingress}`. Pinned links keep the
//! programs attached when the enforcer exits, and pinned maps keep grants, pods and
//! conntrack. [`Datapath::open`] therefore *reuses* every pinned map (aya's
//! `EbpfLoader::map_pin_path`) and moves every pinned link to the freshly loaded programs
//! with `BPF_LINK_UPDATE`, which swaps the program of a live TCX link atomically: a restart
//! or an upgrade never leaves an interface without a program, and never attaches twice.

use std::{
    fmt,
    io::ErrorKind,
    path::{Path, PathBuf},
    time::{Duration, Instant},
};

use aya::{
    Ebpf, EbpfLoader,
    programs::{
        LinkOrder, ProgramError, SchedClassifier, TcAttachType,
        links::{FdLink, PinnedLink},
        tc::{SchedClassifierLink, TcAttachOptions},
    },
    sys::SyscallError,
};

use crate::{
    Error, Result,
    bpffs::{self, PinLayout},
    netlink,
};

/// One map of the object: its name and the key/value sizes this build expects.
struct MapSpec {
    name: &'static str,
    key: u32,
    value: u32,
}

/// Every map of `bpf/dnsfence.c`, all pinned.
const MAPS: [MapSpec; 9] = [
    MapSpec {
        name: "pods",
        key: 16,
        value: 16,
    },
    MapSpec {
        name: "grants",
        key: 32,
        value: 128,
    },
    MapSpec {
        name: "cidrs",
        key: 24,
        value: 128,
    },
    MapSpec {
        name: "gateways",
        key: 16,
        value: 4,
    },
    MapSpec {
        name: "conntrack",
        key: 40,
        value: 16,
    },
    MapSpec {
        name: "counters",
        key: 4,
        value: 16,
    },
    MapSpec {
        name: "event_limit",
        key: 16,
        value: 16,
    },
    MapSpec {
        name: "events",
        key: 0,
        value: 0,
    },
    // added with the coarse conntrack clock: a pin directory from an older build lacks it, and
    // open() creates it; an older build ignores it (see bpf/README.md)
    MapSpec {
        name: "clock_cache",
        key: 4,
        value: 16,
    },
];

/// How long [`Datapath::detach`] waits for the kernel to release unpinned links.
pub const DETACH_WAIT: Duration = Duration::from_secs(2);

/// Which program, and so which tc hook of the pod's host-side interface.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Hook {
    /// Packets the pod sends: `pod_egress` at tc *ingress* of the host veth.
    PodEgress,
    /// Packets to the pod: `pod_ingress` at tc *egress* of the host veth.
    PodIngress,
}

impl Hook {
    /// Both hooks.
    pub const BOTH: [Self; 2] = [Self::PodEgress, Self::PodIngress];

    /// The program's name in the object (and its pin name).
    pub const fn program(self) -> &'static str {
        match self {
            Self::PodEgress => "pod_egress",
            Self::PodIngress => "pod_ingress",
        }
    }

    /// The tc attach point on the host-side interface.
    pub const fn attach_type(self) -> TcAttachType {
        match self {
            Self::PodEgress => TcAttachType::Ingress,
            Self::PodIngress => TcAttachType::Egress,
        }
    }

    const fn suffix(self) -> &'static str {
        match self {
            Self::PodEgress => "egress",
            Self::PodIngress => "ingress",
        }
    }

    /// The link's pin file name for `ifindex`.
    pub fn link_name(self, ifindex: u32) -> String {
        format!("{ifindex}-{}", self.suffix())
    }

    fn parse_link_name(name: &str) -> Option<(u32, Self)> {
        let (idx, dir) = name.split_once('-')?;
        let hook = match dir {
            "egress" => Self::PodEgress,
            "ingress" => Self::PodIngress,
            _ => return None,
        };
        Some((idx.parse().ok()?, hook))
    }
}

/// Load-time settings. They size maps only when the maps are created; a pinned map that
/// is reused keeps its size.
#[derive(Debug, Clone, Default)]
pub struct DatapathOptions {
    /// `grants` capacity (default 1,048,576; entries are allocated on demand).
    pub grants_max_entries: Option<u32>,
    /// `conntrack` capacity (default 131,072; an LRU, preallocated).
    pub conntrack_max_entries: Option<u32>,
}

/// A program attached to an interface, as the kernel reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AttachedProgram {
    /// Kernel program id.
    pub id: u32,
    /// Program name (truncated by the kernel to 15 bytes).
    pub name: String,
}

/// The loaded datapath: its maps and programs, pinned under one directory.
pub struct Datapath {
    pub(crate) ebpf: Ebpf,
    pub(crate) layout: PinLayout,
}

impl fmt::Debug for Datapath {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Datapath")
            .field("pin_dir", &self.layout.root)
            .finish_non_exhaustive()
    }
}

fn object() -> &'static [u8] {
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/dnsfence.o"))
}

fn link_err(path: &Path, e: aya::programs::links::LinkError) -> Error {
    Error::Link {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

fn pin_err(path: &Path, e: aya::pin::PinError) -> Error {
    Error::Pin {
        path: path.to_path_buf(),
        source: Box::new(e),
    }
}

/// A map pinned by an older build must have this build's layout, or reusing it would
/// misread every entry. Refuse rather than guess.
fn check_pinned_maps(layout: &PinLayout) -> Result<()> {
    for spec in &MAPS {
        let path = layout.maps.join(spec.name);
        if !path.exists() {
            continue;
        }
        let info = aya::maps::MapInfo::from_pin(&path).map_err(|e| Error::map(spec.name, e))?;
        if info.key_size() != spec.key || info.value_size() != spec.value {
            return Err(Error::IncompatiblePinnedMap {
                name: spec.name,
                path,
                found_key: info.key_size(),
                found_value: info.value_size(),
                want_key: spec.key,
                want_value: spec.value,
            });
        }
    }
    Ok(())
}

impl Datapath {
    /// Loads the datapath with default options, reusing whatever is pinned in `pin_dir`.
    /// See [`Datapath::open_with`].
    pub fn open(pin_dir: &Path) -> Result<Self> {
        Self::open_with(pin_dir, &DatapathOptions::default())
    }

    /// Mounts bpffs if needed, loads the embedded object reusing the maps pinned under
    /// `pin_dir/maps` (creating and pinning missing ones), pins the programs under
    /// `pin_dir/progs`, and moves every link pinned under `pin_dir/links` to the new
    /// programs atomically. Links whose interface is gone are unpinned.
    pub fn open_with(pin_dir: &Path, opts: &DatapathOptions) -> Result<Self> {
        let layout = bpffs::prepare(pin_dir)?;
        check_pinned_maps(&layout)?;

        let mut loader = EbpfLoader::new();
        for spec in &MAPS {
            loader.map_pin_path(spec.name, layout.maps.join(spec.name));
        }
        if let Some(n) = opts.grants_max_entries {
            loader.map_max_entries("grants", n);
        }
        if let Some(n) = opts.conntrack_max_entries {
            loader.map_max_entries("conntrack", n);
        }
        let ebpf = loader
            .load(object())
            .map_err(|e| Error::Load(Box::new(e)))?;
        let mut dp = Self { ebpf, layout };
        for hook in Hook::BOTH {
            dp.load_and_pin(hook)?;
        }
        dp.relink_all()?;
        Ok(dp)
    }

    /// The pin directory.
    pub fn pin_dir(&self) -> &Path {
        &self.layout.root
    }

    fn program(&mut self, hook: Hook) -> Result<&mut SchedClassifier> {
        let name = hook.program();
        let prog = self.ebpf.program_mut(name).ok_or(Error::Missing(name))?;
        prog.try_into().map_err(|e| Error::program(name, e))
    }

    /// Loads (verifies) a program and pins it as `progs/<name>`, replacing an older pin.
    /// The pin is informational (the links keep programs alive); it is swapped by a
    /// rename so the path always names a program.
    fn load_and_pin(&mut self, hook: Hook) -> Result<()> {
        let name = hook.program();
        let final_path = self.layout.progs.join(name);
        let next_path = self.layout.progs.join(format!("{name}_next"));
        let prog = self.program(hook)?;
        prog.load().map_err(|e| Error::program(name, e))?;
        match std::fs::remove_file(&next_path) {
            Ok(()) => {}
            Err(e) if e.kind() == ErrorKind::NotFound => {}
            Err(e) => return Err(Error::io(&next_path, e)),
        }
        prog.pin(&next_path).map_err(|e| pin_err(&next_path, e))?;
        std::fs::rename(&next_path, &final_path).map_err(|e| Error::io(&final_path, e))
    }

    /// Every pinned link, as (ifindex, hook, path).
    fn pinned_links(&self) -> Result<Vec<(u32, Hook, PathBuf)>> {
        let dir = &self.layout.links;
        let mut out = Vec::new();
        for entry in std::fs::read_dir(dir).map_err(|e| Error::io(dir, e))? {
            let entry = entry.map_err(|e| Error::io(dir, e))?;
            let name = entry.file_name();
            if let Some((ifindex, hook)) = name.to_str().and_then(Hook::parse_link_name) {
                out.push((ifindex, hook, entry.path()));
            }
        }
        out.sort();
        Ok(out)
    }

    fn relink_all(&mut self) -> Result<()> {
        for (ifindex, hook, path) in self.pinned_links()? {
            if !self.relink(hook, &path)? {
                tracing::info!(
                    ifindex,
                    hook = hook.program(),
                    "interface gone: unpinned its link"
                );
            }
        }
        Ok(())
    }

    /// Points the pinned link at `path` to this instance's program (`BPF_LINK_UPDATE`,
    /// atomic). Returns false, after unpinning it, when the link's interface is gone.
    fn relink(&mut self, hook: Hook, path: &Path) -> Result<bool> {
        let name = hook.program();
        let pinned = PinnedLink::from_pin(path).map_err(|e| link_err(path, e))?;
        let link =
            SchedClassifierLink::try_from(FdLink::from(pinned)).map_err(|e| link_err(path, e))?;
        let prog = self.program(hook)?;
        match prog.attach_to_link(link) {
            Ok(id) => {
                // Drop our fd: the pin keeps the link, and dropping never detaches a pinned one.
                drop(prog.take_link(id).map_err(|e| Error::program(name, e))?);
                Ok(true)
            }
            Err(ProgramError::SyscallError(SyscallError { io_error, .. }))
                if io_error.raw_os_error() == Some(nix::libc::ENOLINK) =>
            {
                std::fs::remove_file(path).map_err(|e| Error::io(path, e))?;
                Ok(false)
            }
            Err(e) => Err(Error::program(name, e)),
        }
    }

    /// Attaches both programs to the host-side interface `ifindex` (in the calling
    /// thread's network namespace) with TCX and pins the links. Idempotent: an existing
    /// pinned link for the interface is updated in place, never duplicated.
    pub fn attach(&mut self, ifindex: u32) -> Result<()> {
        for hook in Hook::BOTH {
            let path = self.layout.links.join(hook.link_name(ifindex));
            if path.exists() && self.relink(hook, &path)? {
                continue;
            }
            // aya 0.14 attaches by interface name only
            let ifname =
                netlink::interface_name(ifindex)?.ok_or(Error::NoSuchInterface(ifindex))?;
            let name = hook.program();
            let prog = self.program(hook)?;
            let id = prog
                .attach_with_options(
                    &ifname,
                    hook.attach_type(),
                    TcAttachOptions::TcxOrder(LinkOrder::default()),
                )
                .map_err(|e| Error::program(name, e))?;
            let link = prog.take_link(id).map_err(|e| Error::program(name, e))?;
            let fd_link = FdLink::try_from(link).map_err(|e| link_err(&path, e))?;
            fd_link.pin(&path).map_err(|e| pin_err(&path, e))?;
            tracing::debug!(ifindex, ifname, hook = name, "attached");
        }
        Ok(())
    }

    /// Detaches both programs from `ifindex` by unpinning its links. Absent links are fine.
    ///
    /// The kernel drops an unpinned link after an RCU grace period, so this waits (up to
    /// [`DETACH_WAIT`]) until the interface no longer runs our programs: when it returns,
    /// the interface is unenforced.
    pub fn detach(&mut self, ifindex: u32) -> Result<()> {
        for hook in Hook::BOTH {
            let path = self.layout.links.join(hook.link_name(ifindex));
            match std::fs::remove_file(&path) {
                Ok(()) => {}
                Err(e) if e.kind() == ErrorKind::NotFound => {}
                Err(e) => return Err(Error::io(&path, e)),
            }
        }
        let deadline = Instant::now() + DETACH_WAIT;
        loop {
            let mut ours = 0;
            for hook in Hook::BOTH {
                match Self::tcx_programs(ifindex, hook) {
                    Ok(progs) => ours += progs.iter().filter(|p| p.name == hook.program()).count(),
                    // interface gone (or no TCX): nothing is attached any more
                    Err(_) => return Ok(()),
                }
            }
            if ours == 0 {
                return Ok(());
            }
            if Instant::now() >= deadline {
                tracing::warn!(ifindex, "links unpinned but programs still attached");
                return Ok(());
            }
            std::thread::sleep(Duration::from_millis(5));
        }
    }

    /// The interfaces that have a pinned link (for reconciling with the pods of the node).
    pub fn attached_interfaces(&self) -> Result<Vec<u32>> {
        let mut v: Vec<u32> = self
            .pinned_links()?
            .into_iter()
            .map(|(i, _, _)| i)
            .collect();
        v.dedup();
        Ok(v)
    }

    /// The TCX programs the kernel runs at `hook` of `ifindex` (ours and anyone else's),
    /// in order. Queried in the calling thread's network namespace.
    pub fn tcx_programs(ifindex: u32, hook: Hook) -> Result<Vec<AttachedProgram>> {
        let ifname = netlink::interface_name(ifindex)?.ok_or(Error::NoSuchInterface(ifindex))?;
        let (_, infos) = SchedClassifier::query_tcx(&ifname, hook.attach_type())
            .map_err(|e| Error::program(hook.program(), e))?;
        Ok(infos
            .iter()
            .map(|i| AttachedProgram {
                id: i.id(),
                name: i.name_as_str().unwrap_or_default().to_owned(),
            })
            .collect())
    }
}
