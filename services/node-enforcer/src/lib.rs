//! dnsfence node-enforcer: the eBPF datapath and the Rust API around it.
//!
//! The kernel side (`bpf/dnsfence.c`, built by `build.rs` with clang-19) runs two tc
//! programs on the host side of every enforced pod's interface: `pod_egress` decides each
//! packet the pod sends (anti-spoofing, tracked flow, DNS to a gateway, live grant, CIDR
//! rule, else drop or audit), `pod_ingress` records inbound connections so their replies
//! pass. This crate loads them ([`Datapath::open`]), pins maps, programs and TCX links
//! under one bpffs directory so enforcement survives the process and an upgrade swaps
//! programs atomically, attaches them to interfaces found by the pod's host route
//! ([`netlink::pod_interface`]), and reads and writes the maps: pods, grants (merged per
//! destination, with CLOCK_BOOTTIME deadlines, see [`clock`]), CIDR rules, gateways,
//! counters and the flow-event ring buffer ([`EventReader`]).
//!
//! Module map: [`maps`] mirrors the C header's structs, [`types`] is the Rust vocabulary,
//! [`merge`] is the pure slot arithmetic, [`datapath`] loads/pins/attaches, `tables`
//! reads/writes maps, [`events`] reads the ring buffer, [`bpffs`] and [`netlink`] are
//! system plumbing.
//!
//! The service on top ([`run`]): [`config`] holds the flags, [`node`] the node's state and
//! how store updates and grants drive the datapath (revocation included), [`policy`] turns
//! allowlists into `cidrs` entries, [`state`] is the state file, [`service`] runs the store
//! tail, the gateway subscriptions, the sweeper and the metrics endpoint, [`flowlog`]
//! writes the flow logs.

pub mod bpffs;
pub mod clock;
pub mod config;
pub mod datapath;
mod error;
pub mod events;
pub mod flowlog;
pub mod maps;
pub mod merge;
pub mod metrics;
pub mod netlink;
pub mod node;
pub mod policy;
pub mod service;
pub mod state;
mod tables;
pub mod types;

pub use config::{Config, NodeDefault};
pub use service::{Listeners, bind, run};

pub use datapath::{AttachedProgram, Datapath, DatapathOptions, Hook};
pub use error::{Error, Result};
pub use events::EventReader;
pub use merge::NarrowOutcome;
pub use tables::PodEntry;
pub use types::{
    Counters, Direction, FlowEvent, GrantSlot, Mode, PortSpec, Protocol, Reason, Verdict,
};
