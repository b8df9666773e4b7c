#[derive(Debug, thiserror::Error)]
pub enum GatewayError {
    #[error("{0}")]
    Config(String),
    #[error("binding {what} on {address}: {source}")]
    Bind {
        what: &'static str,
        address: String,
        source: std::io::Error,
    },
    #[error("resolver: {0}")]
    Resolve(#[from] crate::resolve::ResolveError),
    #[error("gRPC: {0}")]
    Api(#[from] dnsfence_api::ApiError),
    #[error("metrics endpoint: {0}")]
    Http(std::io::Error),
}
