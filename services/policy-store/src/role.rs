//! Which part this store plays: the writer, or a read-only replica of another store.

use std::fmt;

/// Another store this one replicates: its name (the Lease holder, or the address given to
/// `--follow`) and its gRPC address.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Peer {
    pub identity: String,
    pub address: String,
}

impl fmt::Display for Peer {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        if self.identity == self.address {
            f.write_str(&self.address)
        } else {
            write!(f, "{} ({})", self.identity, self.address)
        }
    }
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Role {
    /// Standalone: policies and workloads arrive through the gRPC API (unless --read-only).
    Standalone,
    /// Cluster mode, holding the Lease: the Kubernetes controller writes the log and the
    /// gRPC write API is off.
    Leader,
    /// A read-only replica copying the leader's log; `None` while no leader is known.
    Follower { leader: Option<Peer> },
}

impl Role {
    pub fn is_leader(&self) -> bool {
        matches!(self, Role::Leader)
    }

    pub fn name(&self) -> &'static str {
        match self {
            Role::Standalone => "standalone",
            Role::Leader => "leader",
            Role::Follower { .. } => "follower",
        }
    }
}
