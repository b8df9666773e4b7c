use std::path::PathBuf;

use crate::LogError;

/// Default number of events kept before the latest snapshot.
pub const DEFAULT_RETENTION: u64 = 10_000;
/// Default cap on records written by one group commit.
pub const DEFAULT_MAX_BATCH_RECORDS: usize = 65_536;

/// Settings for [`crate::EventLog::open`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LogConfig {
    /// Directory holding the sled database (created if missing).
    pub path: PathBuf,
    /// How many events *before* the latest snapshot stay readable after compaction, so a
    /// consumer slightly behind can resume without fetching the snapshot.
    pub retention: u64,
    /// Upper bound on records per group commit. It bounds the latency of a single flush and
    /// the memory of one batch; a single append larger than this is still written whole,
    /// because an append is atomic and must never be split.
    pub max_batch_records: usize,
}

impl LogConfig {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self {
            path: path.into(),
            retention: DEFAULT_RETENTION,
            max_batch_records: DEFAULT_MAX_BATCH_RECORDS,
        }
    }

    pub fn with_retention(mut self, retention: u64) -> Self {
        self.retention = retention;
        self
    }

    pub fn with_max_batch_records(mut self, max_batch_records: usize) -> Self {
        self.max_batch_records = max_batch_records;
        self
    }

    pub(crate) fn validate(&self) -> Result<(), LogError> {
        if self.max_batch_records == 0 {
            return Err(LogError::InvalidConfig {
                reason: "max_batch_records must be at least 1".to_owned(),
            });
        }
        if self.path.as_os_str().is_empty() {
            return Err(LogError::InvalidConfig {
                reason: "path must not be empty".to_owned(),
            });
        }
        Ok(())
    }
}
