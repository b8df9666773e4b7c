//! The bpf file system that holds the pinned maps, programs and links. Pins are what make
//! the datapath outlive the enforcer process; bpffs is not mounted by default on every
//! host, so the enforcer mounts it at `/sys/fs/bpf` when missing.

use std::path::{Path, PathBuf};

use nix::{
    mount::{MsFlags, mount},
    sys::statfs::{BPF_FS_MAGIC, statfs},
};

use crate::{Error, Result};

/// Where bpffs is conventionally mounted.
pub const BPFFS_ROOT: &str = "/sys/fs/bpf";

/// The layout under a pin directory.
#[derive(Debug, Clone)]
pub struct PinLayout {
    /// The pin directory itself.
    pub root: PathBuf,
    /// `root/maps/<map name>`.
    pub maps: PathBuf,
    /// `root/progs/<program name>`.
    pub progs: PathBuf,
    /// `root/links/<ifindex>-{egress,ingress}`.
    pub links: PathBuf,
}

impl PinLayout {
    /// The layout for `root` (nothing is created).
    pub fn new(root: &Path) -> Self {
        Self {
            root: root.to_path_buf(),
            maps: root.join("maps"),
            progs: root.join("progs"),
            links: root.join("links"),
        }
    }
}

/// Whether `path` lies on a bpf file system.
pub fn is_bpffs(path: &Path) -> Result<bool> {
    let st = statfs(path).map_err(|e| Error::sys("statfs", e))?;
    Ok(st.filesystem_type() == BPF_FS_MAGIC)
}

/// Mounts bpffs at [`BPFFS_ROOT`] unless a bpf file system is already there.
pub fn ensure_mounted() -> Result<()> {
    let root = Path::new(BPFFS_ROOT);
    if root.exists() && is_bpffs(root)? {
        return Ok(());
    }
    std::fs::create_dir_all(root).map_err(|e| Error::io(root, e))?;
    mount(
        Some("bpf"),
        root,
        Some("bpf"),
        MsFlags::MS_NOSUID | MsFlags::MS_NODEV | MsFlags::MS_NOEXEC,
        Some("mode=0700"),
    )
    .map_err(|e| Error::sys("mount bpffs", e))?;
    tracing::info!(path = BPFFS_ROOT, "mounted bpffs");
    Ok(())
}

/// Makes sure bpffs is mounted and creates the pin directory and its subdirectories.
pub fn prepare(pin_dir: &Path) -> Result<PinLayout> {
    ensure_mounted()?;
    let layout = PinLayout::new(pin_dir);
    for dir in [&layout.root, &layout.maps, &layout.progs, &layout.links] {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }
    if !is_bpffs(&layout.root)? {
        return Err(Error::NotBpffs(layout.root));
    }
    Ok(layout)
}
