//! A real authoritative DNS server for tests, the lab and benchmarks.
//!
//! It serves in-memory zones with hickory-server's `Catalog` and `InMemoryZoneHandler`, on UDP
//! and TCP at the same address, and counts the queries it receives (tests use the counter to
//! check that cache hits never reach the upstream).
//!
//! ```no_run
//! # async fn demo() -> Result<(), dnsfence_test_authority::Error> {
//! use dnsfence_test_authority::{Authority, Zone};
//!
//! let zone = Zone::new("example.test.")
//!     .a("www", "192.0.2.1".parse().unwrap(), 300)
//!     .cname("alias", "www", 300)
//!     .a("*.dyn", "192.0.2.9".parse().unwrap(), 60);
//! let running = Authority::start(vec![zone], "127.0.0.1:0".parse().unwrap()).await?;
//! println!("serving on {} (udp and tcp)", running.addr());
//! running.shutdown().await;
//! # Ok(()) }
//! ```
//!
//! Names given to the [`Zone`] builder are relative to the zone origin unless they end with a
//! dot; `@` is the origin itself. Every zone gets an SOA (negative-answer TTL 30 s, RFC 2308)
//! and an NS record unless it defines its own.

mod server;
mod zone;

pub use server::{Authority, RunningAuthority};
pub use zone::{DEFAULT_NEGATIVE_TTL, Zone};

use std::{net::SocketAddr, path::PathBuf};

/// Everything that can go wrong building zones or starting the server.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A name given to the zone builder does not parse.
    #[error("invalid name {name:?}: {source}")]
    Name {
        name: String,
        #[source]
        source: hickory_proto::ProtoError,
    },
    /// A record's owner name is not inside the zone it was added to.
    #[error("zone {origin}: {name} is outside the zone")]
    OutOfZone { origin: String, name: String },
    /// A zone's records are inconsistent (e.g. a CNAME beside other data).
    #[error("zone {origin}: {reason}")]
    Zone { origin: String, reason: String },
    /// Two zones with the same origin.
    #[error("zone {0} is defined twice")]
    DuplicateZone(String),
    /// A zone file could not be read.
    #[error("reading zone file {path}: {source}")]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A zone file (RFC 1035 master format) does not parse.
    #[error("parsing zone file {path}: {source}")]
    Parse {
        path: PathBuf,
        #[source]
        source: hickory_proto::serialize::txt::ParseError,
    },
    /// A listening socket could not be bound or set up.
    #[error("binding {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
    /// The server stopped with an error.
    #[error("server: {0}")]
    Server(String),
}
