//! What one log's writer thread, its readers and its retention share: how far the log
//! is committed, its segments, its cursors, whether it failed, its counters.

use std::path::PathBuf;
use std::sync::atomic::AtomicU64;
use std::sync::{Arc, Mutex, RwLock};

use tokio::sync::watch;
use tracing::{error, info, warn};

use super::config::Config;
use super::cursor::{CursorStore, sync_dir};
use super::error::LogError;
use super::segment::Segment;
use crate::message::{Durability, TAILER_GROUP};

/// How far the log is committed: readers never read past it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Committed {
    /// The offset the next record will get.
    pub next_offset: u64,
    /// The active segment and the end of its committed bytes.
    pub segment_base: u64,
    pub end_pos: u64,
}

/// The answer to an append: the offsets the records got and how durable they are.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Appended {
    pub first_offset: u64,
    pub last_offset: u64,
    pub durability: Durability,
}

/// What the writer, the readers and retention share.
pub struct Shared {
    pub dir: PathBuf,
    /// Replaced whole by [`Log::reconfigure`]; the writer reads it per group.
    pub(super) config: RwLock<Config>,
    /// Segments in offset order; the last is the active one.
    pub(super) segments: RwLock<Vec<Arc<Segment>>>,
    pub committed: watch::Sender<Committed>,
    pub cursors: CursorStore,
    /// Set once corruption or an unrecoverable error was found.
    pub(super) failed: Mutex<Option<String>>,
    /// An offset retention must keep, besides the groups' cursors (the lowest delayed
    /// message still pending).
    pub(super) retention_floor: Mutex<Option<u64>>,
    /// Counters for status and benchmarks.
    pub stats: Stats,
}

/// What the writer did since the log was opened.
#[derive(Debug, Default)]
pub struct Stats {
    pub appends: AtomicU64,
    pub records: AtomicU64,
    pub syncs: AtomicU64,
    pub bytes: AtomicU64,
}

impl Shared {
    /// The log's settings as they are now.
    pub fn config(&self) -> Config {
        self.config.read().map(|c| c.clone()).unwrap_or_default()
    }

    pub fn failure(&self) -> Option<String> {
        self.failed.lock().ok().and_then(|f| f.clone())
    }

    pub fn fail(&self, reason: String) {
        error!(log = %self.dir.display(), reason = %reason, "Log failed; it serves no appends until reopened.");
        if let Ok(mut failed) = self.failed.lock() {
            failed.get_or_insert(reason);
        }
    }

    pub fn push_segment(&self, segment: Arc<Segment>) {
        if let Ok(mut segments) = self.segments.write() {
            segments.push(segment);
        }
    }

    pub(super) fn segments(&self) -> Vec<Arc<Segment>> {
        self.segments.read().map(|s| s.clone()).unwrap_or_default()
    }

    /// Deletes sealed segments that every consumer group has passed and that are older
    /// than the retention period or beyond the size cap. Unconsumed segments stay,
    /// unless `delete_unconsumed` is set.
    pub fn apply_retention(&self, now_ms: u64) -> Result<Vec<PathBuf>, LogError> {
        let segments = self.segments();
        let floor = self.retention_floor.lock().ok().and_then(|f| *f);
        let cursors = self.cursors.all()?;
        let consumed_up_to = if cursors.iter().all(|(group, _)| group == TAILER_GROUP) {
            None
        } else {
            cursors
                .into_iter()
                .map(|(_, offset)| offset)
                .chain(floor)
                .min()
        };
        let mut total: u64 = segments.iter().map(|s| s.sealed_len().unwrap_or(0)).sum();
        let config = self.config();
        let retention_ms = config.retention.get().as_millis() as u64;
        let mut deleted = Vec::new();
        for pair in segments.windows(2) {
            let (segment, next) = (&pair[0], &pair[1]);
            let consumed = consumed_up_to.is_some_and(|c| c >= next.base_offset);
            if !consumed && !config.delete_unconsumed {
                break;
            }
            let old = now_ms.saturating_sub(next.created_ms) > retention_ms;
            let over_cap = config
                .retention_bytes
                .is_some_and(|cap| total > cap.bytes());
            if !old && !over_cap {
                break;
            }
            if let Ok(mut list) = self.segments.write() {
                list.retain(|s| s.base_offset != segment.base_offset);
            }
            for path in [segment.path.clone(), segment.path.with_extension("idx")] {
                if let Err(e) = std::fs::remove_file(&path)
                    && e.kind() != std::io::ErrorKind::NotFound
                {
                    warn!(path = %path.display(), error = %e, "Could not delete a retired segment file.");
                }
            }
            total = total.saturating_sub(segment.sealed_len().unwrap_or(0));
            info!(segment = %segment.path.display(), consumed, "Segment deleted by retention.");
            deleted.push(segment.path.clone());
        }
        if !deleted.is_empty() {
            sync_dir(&self.dir)
                .map_err(|e| LogError::io("syncing the log directory", &self.dir, e))?;
        }
        Ok(deleted)
    }
}
