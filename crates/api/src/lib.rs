//! The dnsfence gRPC API.
//!
//! - [`store::v1`] and [`grants::v1`]: the generated protobuf messages, clients and servers.
//! - [`convert`]: conversions between the generated messages and the domain types of
//!   `dnsfence-policy`. Generated types stay at the edge of each service; everything past the
//!   RPC handler works with the domain types.
//! - [`tail`]: tailing the store's derived view with reconnects, for gateways and enforcers.
//! - [`trace`]: W3C trace context into every call's metadata and out of it on the servers.
//! - [`tls`], [`transport`]: TLS flags, listeners, serving one router on several listeners,
//!   channels to `http(s)://` and `unix://` addresses, and reconnect backoff.

pub mod convert;
pub mod duration;
pub mod error;
pub mod tail;
pub mod tls;
pub mod trace;
pub mod transport;

/// Generated code: not ours to lint or document.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod store {
    pub mod v1 {
        tonic::include_proto!("dnsfence.store.v1");
    }
}

/// Generated code: not ours to lint or document.
#[allow(
    missing_docs,
    missing_debug_implementations,
    clippy::all,
    clippy::pedantic,
    clippy::unwrap_used,
    clippy::expect_used
)]
pub mod grants {
    pub mod v1 {
        tonic::include_proto!("dnsfence.grants.v1");
    }
}

/// The encoded `FileDescriptorSet` of every dnsfence proto, for the reflection service.
pub const FILE_DESCRIPTOR_SET: &[u8] = tonic::include_file_descriptor_set!("dnsfence_descriptor");

pub use convert::grants::Grant;
pub use convert::{default_policy_from_proto, default_policy_to_proto};
pub use duration::parse_duration;
pub use error::ApiError;
pub use tls::{ClientTls, ServerTls};
pub use trace::{GrpcTraceLayer, TraceContext};
pub use transport::{
    Backoff, Listener, connect, connect_lazy, endpoint, health_and_reflection, serve,
    server_builder,
};
