use dnsfence_eventlog::LogError;

#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("event log: {0}")]
    Log(#[from] LogError),
    #[error("log record at revision {revision} is unreadable: {reason}")]
    CorruptRecord { revision: u64, reason: String },
    #[error("snapshot at revision {revision} is unreadable: {reason}")]
    CorruptSnapshot { revision: u64, reason: String },
    #[error("serving gRPC: {0}")]
    Serve(#[from] dnsfence_api::ApiError),
    #[error("{0}")]
    Config(String),
    #[error("the event log failed: {0}")]
    LogFailed(String),
    #[error("replication: {0}")]
    Replication(String),
    #[error("Kubernetes API: {0}")]
    Kube(String),
}
