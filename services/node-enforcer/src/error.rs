//! The crate's one error type: every fallible operation of the datapath returns it,
//! with enough context (map, program, path) to tell an operator what to fix.

use std::{io, path::PathBuf};

/// Errors of the node-enforcer library.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The embedded object could not be loaded (verifier, map creation, ...).
    #[error("loading the eBPF object: {0}")]
    Load(#[from] Box<aya::EbpfError>),
    /// The object lacks a map or program this build expects (a build mix-up).
    #[error("the eBPF object has no {0}")]
    Missing(&'static str),
    /// A map operation failed.
    #[error("map {name}: {source}")]
    Map {
        /// The map's name.
        name: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: Box<aya::maps::MapError>,
    },
    /// Loading, attaching or querying a program failed.
    #[error("program {name}: {source}")]
    Program {
        /// The program's name.
        name: &'static str,
        /// What the kernel or aya said.
        #[source]
        source: Box<aya::programs::ProgramError>,
    },
    /// Pinning an object in bpffs failed.
    #[error("pinning {path}: {source}")]
    Pin {
        /// The pin path.
        path: PathBuf,
        /// What the kernel or aya said.
        #[source]
        source: Box<aya::pin::PinError>,
    },
    /// Opening or converting a pinned link failed.
    #[error("link {path}: {source}")]
    Link {
        /// The pin path.
        path: PathBuf,
        /// What the kernel or aya said.
        #[source]
        source: Box<aya::programs::links::LinkError>,
    },
    /// A file-system operation (pin directory, bpffs) failed.
    #[error("{path}: {source}")]
    Io {
        /// The path operated on.
        path: PathBuf,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// A system call (clock, mount, poll) failed.
    #[error("{call}: {source}")]
    Sys {
        /// The call that failed.
        call: &'static str,
        /// The errno.
        #[source]
        source: nix::Error,
    },
    /// The pin directory is not on a bpf file system.
    #[error("{0} is not on a bpf file system (mount -t bpf bpf /sys/fs/bpf)")]
    NotBpffs(PathBuf),
    /// A netlink request failed or returned something unexpected.
    #[error("netlink: {0}")]
    Netlink(String),
    /// No interface has this index (in the caller's network namespace).
    #[error("no interface with index {0}")]
    NoSuchInterface(u32),
    /// A map pinned by an older build has a different layout than this build's.
    #[error(
        "pinned map {name} at {path} has key/value size {found_key}/{found_value}, this build \
         expects {want_key}/{want_value}; remove the pin to recreate it (grants in it are lost)"
    )]
    IncompatiblePinnedMap {
        /// The map's name.
        name: &'static str,
        /// The pin path.
        path: PathBuf,
        /// Key size of the pinned map.
        found_key: u32,
        /// Value size of the pinned map.
        found_value: u32,
        /// Key size this build uses.
        want_key: u32,
        /// Value size this build uses.
        want_value: u32,
    },
    /// More port ranges than one map entry holds.
    #[error("{0} port ranges do not fit in one entry (at most {max})", max = crate::maps::PORT_SLOTS)]
    TooManyPortRanges(usize),
    /// A port range whose start is after its end.
    #[error("invalid port range {start}-{end}")]
    InvalidPortRange {
        /// First port.
        start: u16,
        /// Last port.
        end: u16,
    },
    /// An allowlist id that does not fit the cidrs key (the top bit marks IPv4).
    #[error("allowlist id {0} is out of range (must be below 2^31)")]
    PolicyIdOutOfRange(u32),
    /// A flag or a combination of flags is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// A gRPC endpoint or TLS setting was rejected, or a call failed.
    #[error(transparent)]
    Api(#[from] dnsfence_api::ApiError),
    /// Binding a listener failed.
    #[error("binding {what} on {address}: {source}")]
    Bind {
        /// Which listener (the flag).
        what: &'static str,
        /// The address asked for.
        address: String,
        /// The OS error.
        #[source]
        source: io::Error,
    },
    /// The state file exists but cannot be decoded.
    #[error("state file {path}: {reason}")]
    StateFile {
        /// The file.
        path: PathBuf,
        /// Why it was rejected.
        reason: String,
    },
    /// A background task of the service failed.
    #[error("{0}")]
    Task(String),
}

/// Result with the crate's [`Error`].
pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn map(name: &'static str, source: aya::maps::MapError) -> Self {
        Self::Map {
            name,
            source: Box::new(source),
        }
    }

    pub(crate) fn program(name: &'static str, source: aya::programs::ProgramError) -> Self {
        Self::Program {
            name,
            source: Box::new(source),
        }
    }

    pub(crate) fn io(path: impl Into<PathBuf>, source: io::Error) -> Self {
        Self::Io {
            path: path.into(),
            source,
        }
    }

    pub(crate) fn sys(call: &'static str, source: nix::Error) -> Self {
        Self::Sys { call, source }
    }
}
