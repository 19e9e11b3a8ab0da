//! The embedded log: the default backend, segment files on local disk.
//!
//! # Layout on disk
//!
//! ```text
//! <data_dir>/<namespace>/
//!   log/                         the namespace's messages
//!     00000000000000000000.log   segments, named by the offset of their first record
//!     00000000000000000000.idx   sparse index of a sealed segment
//!     cursors/<group>.cursor     each consumer group's next offset
//!   dlq/                         the dead-letter log, laid out the same way
//!   dlq-replayed.log             offsets of the dead-letter entries replayed
//!   delays.log                   delayed messages by due time
//! ```
//!
//! # Invariants
//!
//! 1. An append is answered only after its bytes are synced (`fdatasync`), or, with
//!    `sync = "interval"`, written; the answer says which. One sync serves every request
//!    of a group (group commit).
//! 2. The records of one append request are durable together or not at all: the last
//!    frame of a request carries `END_OF_BATCH`, and recovery keeps no request partly.
//! 3. Offsets are contiguous and timestamps never decrease along a log.
//! 4. Every segment but the last is whole and synced; a new segment's header and
//!    directory entry are durable before any record goes into it. So only the last
//!    segment can have a torn tail, and opening a log reads only the last segment.
//! 5. A damaged frame is a torn tail only if nothing intact after it was written after
//!    it had been synced (each frame records the segment's `durable_len` when it was
//!    written). Otherwise it is corruption: reported with segment and byte position,
//!    the log refuses to go on, and nothing is cut off or skipped.
//! 6. Every read checks each frame's CRC32C; a damaged committed frame is an error,
//!    never skipped and never served.
//! 7. Cursors and indexes are replaced atomically: write a temporary file, sync it,
//!    rename it, sync the directory.
//! 8. Retention deletes only sealed segments that every consumer group has passed
//!    (unless `delete_unconsumed`), and only when they are older than `retention` or
//!    beyond `retention_bytes`. The status index's group (`wald-status`) holds segments
//!    back but never lets one go on its own: a log only it has read is unconsumed.
//!
//! The byte layout is in [`format`] and in `docs/on-disk-format.md`.

pub mod config;
pub mod cursor;
pub mod delay;
pub mod error;
pub mod format;
pub mod journal;
pub mod log;
pub mod replayed;
pub mod segment;
pub mod shared;
pub mod writer;

use std::path::{Path, PathBuf};
use std::sync::Arc;

use async_trait::async_trait;

use super::backend::{
    Backend, BackendError, DeadLetter, Durable, GroupPosition, LogPosition, LogStats, Positions,
    REPLAY_CLAIM,
};
use super::config::BackendConfig;
use crate::message::{DELIVERY_GROUP, Record, StoredRecord};

pub use config::{Config, SyncMode};
pub use delay::DelayIndex;
pub use error::LogError;
pub use log::{Log, Position, Subscription, blocking};
pub use shared::{Appended, Committed};

/// A namespace's storage on the embedded backend: its log, its dead-letter log (and
/// which of its entries were replayed) and its index of delayed messages.
pub struct NamespaceStore {
    pub log: Log,
    pub dlq: Log,
    pub replayed: replayed::ReplayedSet,
    pub delays: DelayIndex,
}

impl NamespaceStore {
    /// Opens (or creates) the storage of `namespace` under `data_dir`.
    pub fn open(data_dir: &Path, namespace: &str, config: &Config) -> Result<Self, LogError> {
        let dir = namespace_dir(data_dir, namespace);
        let log = Log::open(&dir.join("log"), config.clone())?;
        // The delivery group's cursor exists from the start, so that retention never
        // deletes what delivery has not read, even before delivery runs.
        log.commit(DELIVERY_GROUP, log.cursor(DELIVERY_GROUP)?)?;
        let store = Self {
            log,
            dlq: Log::open(&dir.join("dlq"), config.clone())?,
            replayed: replayed::ReplayedSet::open(&dir.join("dlq-replayed.log"))?,
            delays: DelayIndex::open(&dir.join("delays.log"))?,
        };
        store
            .log
            .set_retention_floor(store.delays.lowest_pending_offset());
        Ok(store)
    }

    /// Applies new settings to the open log and dead-letter log.
    pub fn reconfigure(&self, config: &Config) {
        self.log.reconfigure(config.clone());
        self.dlq.reconfigure(config.clone());
    }

    /// Remembers delayed messages by due time: (offset, due_ms) pairs (blocking I/O).
    pub fn schedule(&self, items: &[(u64, u64)]) -> Result<(), LogError> {
        self.delays.schedule(items)?;
        self.log
            .set_retention_floor(self.delays.lowest_pending_offset());
        Ok(())
    }

    /// Forgets delayed messages that were delivered (blocking I/O).
    pub fn complete(&self, offsets: &[u64]) -> Result<(), LogError> {
        self.delays.complete(offsets)?;
        self.log
            .set_retention_floor(self.delays.lowest_pending_offset());
        Ok(())
    }
}

/// [`NamespaceStore`] as a [`Backend`].
pub struct Embedded(pub Arc<NamespaceStore>);

#[async_trait]
impl Backend for Embedded {
    async fn append(&self, records: Vec<Record>) -> Result<Durable, BackendError> {
        let appended = self.0.log.append(records).await?;
        Ok(Durable {
            durability: appended.durability,
            first_offset: Some(appended.first_offset),
        })
    }

    async fn subscribe(
        &self,
        group: &str,
    ) -> Result<Box<dyn super::backend::Subscription>, BackendError> {
        Ok(Box::new(GroupReader {
            reader: self.0.log.subscribe(group)?,
            log: self.0.log.clone(),
            group: group.to_string(),
        }))
    }

    fn reads_per_target(&self) -> bool {
        true
    }

    async fn branch_group(&self, group: &str, from: &str) -> Result<(), BackendError> {
        let (log, group, from) = (self.0.log.clone(), group.to_string(), from.to_string());
        Ok(blocking(move || log.branch(&group, &from)).await?)
    }

    async fn forget_group(&self, group: &str) -> Result<(), BackendError> {
        let (log, group) = (self.0.log.clone(), group.to_string());
        Ok(blocking(move || log.forget(&group)).await?)
    }

    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), BackendError> {
        self.0.dlq.append(records).await?;
        Ok(())
    }

    async fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let store = self.0.clone();
        let records = blocking(move || {
            let from = from.max(store.dlq.first_offset());
            store.dlq.read(from, max, READ_BYTES)
        })
        .await?;
        Ok(records
            .into_iter()
            .map(|record| DeadLetter {
                replayed: self.0.replayed.contains(record.offset),
                record,
                id: None,
            })
            .collect())
    }

    fn replays_dead_letters(&self) -> bool {
        true
    }

    async fn claim_replay(&self, entry: &DeadLetter) -> Result<bool, BackendError> {
        Ok(self.0.replayed.claim(entry.record.offset, REPLAY_CLAIM))
    }

    async fn mark_replayed(&self, entry: &DeadLetter) -> Result<(), BackendError> {
        let (store, offset) = (self.0.clone(), entry.record.offset);
        Ok(blocking(move || store.replayed.insert(&[offset])).await?)
    }

    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), BackendError> {
        let store = self.0.clone();
        let items: Vec<(u64, u64)> = delayed.iter().map(|(r, due)| (r.offset, *due)).collect();
        Ok(blocking(move || store.schedule(&items)).await?)
    }

    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        let store = self.0.clone();
        Ok(blocking(move || {
            let mut records = Vec::new();
            for (offset, _) in store.delays.due(now_ms, max) {
                match store.log.read(offset, 1, usize::MAX).map(|mut r| r.pop()) {
                    Ok(Some(record)) => records.push(record),
                    Ok(None) => {
                        tracing::error!(offset, "A delayed message is no longer in the log.");
                        store.complete(&[offset])?;
                    }
                    Err(e) => {
                        tracing::error!(offset, error = %e, "A delayed message could not be read; it stays pending.");
                    }
                }
            }
            Ok(records)
        })
        .await?)
    }

    async fn complete(&self, delivered: Vec<StoredRecord>) -> Result<(), BackendError> {
        let store = self.0.clone();
        let offsets: Vec<u64> = delivered.iter().map(|r| r.offset).collect();
        Ok(blocking(move || store.complete(&offsets)).await?)
    }

    async fn next_due(&self) -> Result<Option<u64>, BackendError> {
        Ok(self.0.delays.next_due())
    }

    fn unavailable(&self) -> Option<String> {
        self.0.log.failure()
    }

    fn reconfigure(&self, config: &BackendConfig) {
        if let BackendConfig::Embedded(config) = config {
            self.0.reconfigure(config);
        }
    }

    fn log_position(&self) -> Option<LogPosition> {
        let log = &self.0.log;
        Some(LogPosition {
            first_offset: log.first_offset(),
            next_offset: log.committed().next_offset,
            segments: log.segment_paths().len(),
        })
    }

    async fn read(&self, from: u64, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        let log = self.0.log.clone();
        Ok(blocking(move || log.read(from.max(log.first_offset()), max, READ_BYTES)).await?)
    }

    async fn positions(&self) -> Result<Option<Positions>, BackendError> {
        let store = self.0.clone();
        let cursors = blocking(move || store.log.cursors()).await?;
        let next = self.0.log.committed().next_offset;
        let groups = cursors
            .into_iter()
            .map(|(group, next_offset)| GroupPosition {
                commits: Some(self.0.log.cursor_commits(&group)),
                group,
                next_offset,
                lag: Some(next.saturating_sub(next_offset)),
            })
            .collect();
        let dlq = &self.0.dlq;
        // Parked entries: those kept and not replayed.
        let dlq_depth = (dlq.committed().next_offset - dlq.first_offset())
            .saturating_sub(self.0.replayed.len() as u64);
        Ok(Some(Positions {
            groups,
            dlq_depth: Some(dlq_depth),
            delayed_pending: Some(self.0.delays.pending() as u64),
            queue: None,
        }))
    }

    fn stats(&self) -> Option<LogStats> {
        let (appends, records, syncs, bytes) = self.0.log.stats();
        Some(LogStats {
            appends,
            records,
            syncs,
            bytes,
        })
    }

    async fn close(&self) {
        self.0.log.clone().close().await;
        self.0.dlq.clone().close().await;
    }
}

/// Most bytes one read of the log or the DLQ returns (at least one record).
const READ_BYTES: usize = 16 * 1024 * 1024;

/// A consumer group's reader of the embedded log; commits move the group's cursor.
struct GroupReader {
    reader: Subscription,
    log: Log,
    group: String,
}

#[async_trait]
impl super::backend::Subscription for GroupReader {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        Ok(self.reader.next_batch(max).await?)
    }

    fn position(&self) -> u64 {
        self.reader.position()
    }

    async fn commit(&mut self, next_offset: u64) -> Result<(), BackendError> {
        let (log, group) = (self.log.clone(), self.group.clone());
        Ok(blocking(move || log.commit(&group, next_offset)).await?)
    }
}

/// Where a namespace's files are.
pub fn namespace_dir(data_dir: &Path, namespace: &str) -> PathBuf {
    data_dir.join(namespace)
}
