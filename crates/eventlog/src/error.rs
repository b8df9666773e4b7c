use std::path::PathBuf;

/// Every failure the event log can report.
#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// An append must carry at least one record: an empty unit would consume no revision and
    /// callers could not tell it apart from a lost write.
    #[error("append called with no records")]
    EmptyAppend,

    /// The requested revision was removed by compaction; the caller must restart from the
    /// snapshot.
    #[error("revision {requested} was compacted away; first retained revision is {first_retained}")]
    Compacted { requested: u64, first_retained: u64 },

    /// The configured path exists but cannot hold a database.
    #[error("event log path {} exists and is not a directory", path.display())]
    NotADirectory { path: PathBuf },

    /// The configuration cannot work (for example `max_batch_records == 0`).
    #[error("invalid event log configuration: {reason}")]
    InvalidConfig { reason: String },

    /// sled refused to open the directory (locked by another process, unreadable, corrupt...).
    #[error("cannot open event log at {}: {source}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        source: sled::Error,
    },

    /// `open` spawns the group-commit writer, which needs a tokio runtime.
    #[error("EventLog::open must be called from inside a tokio runtime")]
    NoRuntime,

    /// Any other storage failure reported by sled.
    #[error("storage error: {0}")]
    Storage(#[from] sled::Error),

    /// A previous write or flush failed. After a failed fsync the on-disk state is unknown, so
    /// the log refuses further appends rather than risk acknowledging data that is not durable.
    #[error("event log writer failed earlier and no longer accepts appends: {reason}")]
    Poisoned { reason: String },

    /// The writer was stopped by `close` (or every handle was dropped).
    #[error("event log is closed")]
    Closed,

    /// A snapshot cannot describe state the log has not durably reached.
    #[error("snapshot revision {requested} is ahead of the log head {head}")]
    SnapshotAhead { requested: u64, head: u64 },

    /// Replacing a snapshot with an older one would lose state that compaction already dropped.
    #[error("snapshot revision {requested} is older than the stored snapshot at {current}")]
    SnapshotRegression { requested: u64, current: u64 },

    /// `enqueue_at` asked for revisions the log would not assign.
    #[error("append at revision {requested} refused: the log's next revision is {next}")]
    RevisionMismatch { requested: u64, next: u64 },

    /// Stored data does not have the shape this crate writes.
    #[error("event log data is corrupt: {detail}")]
    Corrupt { detail: String },

    /// A blocking storage task died (panicked or was cancelled at runtime shutdown).
    #[error("background storage task failed: {0}")]
    Task(String),
}
