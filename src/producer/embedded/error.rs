//! Errors of the embedded log.

use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
pub enum LogError {
    /// Reading or writing failed; for appends, nothing of the request was acknowledged.
    #[error("{context} ({}): {source}", path.display())]
    Io {
        context: String,
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// A record that had been made durable does not read back intact. The log stops
    /// serving from this place; nothing is skipped or deleted.
    #[error("corrupt log: {} at byte {position} (offset {offset}): {reason}", segment.display())]
    Corrupt {
        segment: PathBuf,
        position: u64,
        offset: u64,
        reason: String,
    },
    /// The log found corruption or an unrecoverable write error earlier and serves no
    /// more appends until it is reopened.
    #[error("the log is in a failed state: {0}")]
    Failed(String),
    /// The log was closed.
    #[error("the log is closed")]
    Closed,
    /// A request that the log cannot take (too large, empty, a bad name).
    #[error("{0}")]
    Invalid(String),
}

impl LogError {
    pub fn io(context: &str, path: &Path, source: std::io::Error) -> Self {
        Self::Io {
            context: context.to_string(),
            path: path.to_path_buf(),
            source,
        }
    }

    /// Whether the same request may succeed later without anyone acting (a full disk
    /// that is being freed, an I/O error that passes). Corruption never is.
    pub fn is_retriable(&self) -> bool {
        matches!(self, Self::Io { .. })
    }

    /// Whether the disk is full.
    pub fn is_storage_full(&self) -> bool {
        matches!(self, Self::Io { source, .. } if source.raw_os_error() == Some(rustix::io::Errno::NOSPC.raw_os_error()))
    }
}

impl From<LogError> for crate::producer::backend::BackendError {
    /// The embedded log's errors as every backend's: a full disk, a request it cannot
    /// take, and the rest, which leave the log failed or closed.
    fn from(e: LogError) -> Self {
        use crate::producer::backend::BackendError;
        match e {
            e if e.is_storage_full() => BackendError::StorageFull(e.to_string()),
            LogError::Invalid(message) => BackendError::Invalid(message),
            e => BackendError::Failed(e.to_string()),
        }
    }
}
