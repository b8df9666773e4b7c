//! The resolve module's error type.

use std::{net::SocketAddr, sync::Arc};

/// Why a question could not be resolved. `Clone` so one failed upstream exchange can be handed
/// to every caller that waited on it.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ResolveError {
    /// The configuration cannot work (e.g. no upstream server).
    #[error("invalid resolver configuration: {0}")]
    Config(String),
    /// A socket towards an upstream could not be created.
    #[error("creating a socket towards upstream {addr}: {source}")]
    Socket {
        addr: SocketAddr,
        #[source]
        source: Arc<std::io::Error>,
    },
    /// The question could not be encoded as a DNS message.
    #[error("encoding the query for {name}: {reason}")]
    Encode { name: String, reason: String },
    /// Every attempt failed without an answer (timeouts, network errors, malformed answers).
    #[error("{name} {qtype}: no upstream answered after {attempts} attempt(s), last: {last}")]
    Upstream {
        name: String,
        qtype: String,
        attempts: usize,
        last: String,
    },
}
