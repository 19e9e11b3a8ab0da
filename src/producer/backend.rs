//! What every producer backend is to the rest of wald: the [`Backend`] trait (append,
//! read as a consumer group and commit, dead-letter, hold delayed messages), its
//! [`Subscription`], its error, and the pieces the shared backends have in common.

use std::sync::{Arc, Mutex};

use async_trait::async_trait;

use super::config::BackendConfig;
use crate::message::{Durability, Record, StoredRecord};

/// Why a backend refused a request. Nothing of a refused append was acknowledged,
/// except with [`BackendError::Unknown`].
#[derive(Debug, thiserror::Error)]
pub enum BackendError {
    /// The backend is out of space; it takes requests again once there is room.
    #[error("{0}")]
    StorageFull(String),
    /// A request the backend cannot take (empty, too large).
    #[error("{0}")]
    Invalid(String),
    /// The backend failed (corruption, a log that was closed) and takes no more
    /// requests until an operator steps in.
    #[error("{0}")]
    Failed(String),
    /// The backend cannot be reached or refused the request for now; it passes by
    /// itself (a broker restarting, a network outage).
    #[error("{0}")]
    Unavailable(String),
    /// The request was sent but whether it took effect is not known (a `WAIT` for
    /// replicas that timed out).
    #[error("{0}")]
    Unknown(String),
    /// The backend cannot do this (yet): the route answers 501.
    #[error("the backend does not support {0}")]
    Unsupported(&'static str),
}

impl BackendError {
    /// Whether trying again later can succeed without anyone stepping in.
    pub fn is_transient(&self) -> bool {
        matches!(self, Self::Unavailable(_) | Self::Unknown(_))
    }
}

/// A namespace's log, whichever backend holds it.
#[async_trait]
pub trait Backend: Send + Sync {
    /// Appends `records`, durable together, and answers once the backend confirmed
    /// (design: durability contract).
    async fn append(&self, records: Vec<Record>) -> Result<Durable, BackendError>;

    /// Reads the log as consumer group `group`, from where the group's commits left
    /// off. What a member of the group read and did not commit before it died is read
    /// again, by this member or another.
    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>, BackendError>;

    /// Whether each target can read the log as a consumer group of its own
    /// ([`crate::message::target_group`]), so that a slow or failing target never holds
    /// back another: the groups are made with [`Backend::branch_group`] and forgotten
    /// with [`Backend::forget_group`]. Otherwise one reader delivers to every target.
    fn reads_per_target(&self) -> bool {
        false
    }

    /// Gives consumer group `group` a cursor where group `from` stands, unless it has
    /// one already.
    async fn branch_group(&self, _group: &str, _from: &str) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("a consumer group per target"))
    }

    /// Forgets consumer group `group` (a target that was removed), so that it holds
    /// nothing back.
    async fn forget_group(&self, _group: &str) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("a consumer group per target"))
    }

    /// Parks `records` in the namespace's dead-letter log.
    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), BackendError>;

    /// Up to `max` entries of the dead-letter log from `from` on, oldest first, each
    /// with whether it was replayed.
    async fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<DeadLetter>, BackendError>;

    /// Whether its dead letters can be listed by offset and replayed, with each replay
    /// claimed ([`Backend::claim_replay`]) and remembered ([`Backend::mark_replayed`]):
    /// the DLQ routes need it.
    fn replays_dead_letters(&self) -> bool {
        false
    }

    /// A replay begins, of these entries (in this order) unless another takes them.
    async fn begin_replay(&self, _selected: &[DeadLetter]) {}

    /// Takes the replay of `entry` for this instance: false when it was replayed
    /// already or another instance is replaying it now. A backend shared by several
    /// instances holds the claim for [`REPLAY_CLAIM`], so that the entry of an instance
    /// that died mid-replay is left to the next replay; one instance alone holds none.
    async fn claim_replay(&self, _entry: &DeadLetter) -> Result<bool, BackendError> {
        Ok(true)
    }

    /// Remembers, durably, that `entry` was replayed.
    async fn mark_replayed(&self, _entry: &DeadLetter) -> Result<(), BackendError> {
        Err(BackendError::Unsupported("replaying the DLQ"))
    }

    /// A replay ended: lets go of what it took along with its entries and did not
    /// replay.
    async fn end_replay(&self) {}

    /// Holds read messages until they are due: (record, due in ms since the epoch).
    /// Once this returns, a commit may pass them.
    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), BackendError>;

    /// Up to `max` held messages that are due at `now_ms`, held until
    /// [`Backend::complete`] forgets them. A backend shared by several instances leases
    /// what it hands out, so that only one delivers it unless that one dies.
    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<StoredRecord>, BackendError>;

    /// Forgets held messages that were delivered.
    async fn complete(&self, delivered: Vec<StoredRecord>) -> Result<(), BackendError>;

    /// When the next held message is due, if one is held.
    async fn next_due(&self) -> Result<Option<u64>, BackendError>;

    /// Why the backend cannot take writes now, if it cannot (for status and
    /// readiness).
    fn unavailable(&self) -> Option<String>;

    /// Applies changed `[producer]` settings in place where the backend can (the
    /// embedded log takes them all); the diff of a reload opens a shared backend anew.
    fn reconfigure(&self, _config: &BackendConfig) {}

    /// The extent of the log, where the backend numbers its log and knows it at once:
    /// its `next_offset` is what a lookup or the idempotency keys wait for.
    fn log_position(&self) -> Option<LogPosition> {
        None
    }

    /// Up to `max` records of the log from `from` on, as written, where the backend can
    /// read its log back.
    async fn read(&self, _from: u64, _max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        Err(BackendError::Unsupported("reading the log back"))
    }

    /// The `max` most recent records of the log, newest first, each with its offset
    /// (on a partitioned log, its offset in its partition, which the record's
    /// [`HEADER_PLACE`](crate::message::HEADER_PLACE) names), where the backend can tell
    /// them.
    async fn recent(&self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        let Some(log) = self.log_position() else {
            return Err(BackendError::Unsupported("listing recent messages"));
        };
        let from = log
            .next_offset
            .saturating_sub(max as u64)
            .max(log.first_offset);
        let mut records = self.read(from, max).await?;
        records.reverse();
        Ok(records)
    }

    /// Where its consumer groups, its DLQ and its delayed messages stand, as far as the
    /// backend can tell; `None` when it cannot.
    async fn positions(&self) -> Result<Option<Positions>, BackendError> {
        Ok(None)
    }

    /// What the log's writer did since it opened, where it counts.
    fn stats(&self) -> Option<LogStats> {
        None
    }

    /// Syncs and closes what the backend holds open (at stop).
    async fn close(&self) {}
}

/// What an append made durable.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Durable {
    pub durability: Durability,
    /// The first record's offset, where the backend numbers its log as it appends.
    pub first_offset: Option<u64>,
}

impl From<Durability> for Durable {
    /// Durable at a place the backend does not tell.
    fn from(durability: Durability) -> Self {
        Self {
            durability,
            first_offset: None,
        }
    }
}

/// How long a shared backend holds an instance's claim on the replay of a dead-letter
/// entry ([`Backend::claim_replay`]): far longer than appending it again takes.
pub const REPLAY_CLAIM: std::time::Duration = std::time::Duration::from_secs(60);

/// One dead-letter entry, as the backend keeps it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct DeadLetter {
    /// `offset` numbers it in the dead-letter log.
    pub record: StoredRecord,
    pub replayed: bool,
    /// The backend's own name for the entry, where it has one besides the offset (a
    /// Redis stream entry's id).
    pub id: Option<String>,
}

/// Where a namespace's consumer groups, DLQ and delayed messages stand
/// ([`Backend::positions`]), as far as the backend can tell: what it cannot is `None`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Positions {
    /// Each consumer group the backend knows of (the status index's among them).
    pub groups: Vec<GroupPosition>,
    /// Dead-letter entries parked (not replayed).
    pub dlq_depth: Option<u64>,
    /// Delayed messages held until they are due.
    pub delayed_pending: Option<u64>,
    /// A queue's approximate counts, where the backend is a queue and has no offsets.
    pub queue: Option<QueueCounts>,
}

/// Where one consumer group stands.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct GroupPosition {
    pub group: String,
    /// The offset it reads next: on a log with partitions, the sum over them; on a
    /// Redis stream, the entries it read.
    pub next_offset: u64,
    /// Records written and not read by it yet, where the backend can tell.
    pub lag: Option<u64>,
    /// Commits of its position since the process started, where the backend counts
    /// them (the embedded log, where each costs two syncs).
    pub commits: Option<u64>,
}

/// A queue's counts, approximate as the queue gives them.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct QueueCounts {
    /// Waiting to be received.
    pub visible: u64,
    /// Received and not deleted yet: being delivered, or held until due.
    pub in_flight: u64,
    /// Sent with a delay that has not run out.
    pub delayed: u64,
}

/// The extent of a log.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogPosition {
    /// The oldest offset still kept.
    pub first_offset: u64,
    /// The offset the next record will get.
    pub next_offset: u64,
    /// Files it is kept in.
    pub segments: usize,
}

/// What a log's writer did since it opened ([`Backend::stats`]).
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct LogStats {
    /// Append requests written.
    pub appends: u64,
    pub records: u64,
    /// `fdatasync` calls: records / syncs is the group-commit factor.
    pub syncs: u64,
    pub bytes: u64,
}

/// One member of a consumer group, reading a log.
#[async_trait]
pub trait Subscription: Send {
    /// Up to `max` records, waiting a while for at least one; may answer none. Each
    /// record's `offset` numbers it within this subscription, in the order read.
    /// Cancelling the call loses nothing.
    async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredRecord>, BackendError>;

    /// The offset the next record read will have.
    fn position(&self) -> u64;

    /// Marks every record below `next_offset` done for the group.
    async fn commit(&mut self, next_offset: u64) -> Result<(), BackendError>;
}

/// The last error of a shared backend's requests, cleared by the next success: what
/// its [`Backend::unavailable`] reports. Clones share it (the backend and its reader
/// tasks).
#[derive(Clone)]
pub(crate) struct LastError {
    /// Which backend, to begin the message with ("Redis", "Kafka", "SQS").
    backend: &'static str,
    error: Arc<Mutex<Option<String>>>,
}

impl LastError {
    pub(crate) fn new(backend: &'static str) -> Self {
        Self {
            backend,
            error: Arc::default(),
        }
    }

    /// Remembers how the last request went: failed with `error`, or (`None`) not.
    pub(crate) fn note<E: std::fmt::Display + ?Sized>(&self, error: Option<&E>) {
        if let Ok(mut last) = self.error.lock() {
            *last = error.map(|e| format!("{}: {e}", self.backend));
        }
    }

    /// Remembers that the last request succeeded.
    pub(crate) fn clear(&self) {
        self.note::<str>(None);
    }

    pub(crate) fn get(&self) -> Option<String> {
        self.error.lock().ok()?.clone()
    }
}

/// The error of a lock whose holder panicked.
pub(crate) fn poisoned() -> BackendError {
    BackendError::Unavailable("a lock was poisoned".into())
}

/// What a subscription's reader task hands over, given out up to `max` at a time: the
/// part the shared backends' subscriptions have in common. The task numbers the
/// records in the order read.
pub(crate) struct Handed {
    incoming: tokio::sync::mpsc::Receiver<Vec<StoredRecord>>,
    buffered: Vec<StoredRecord>,
    position: u64,
}

impl Handed {
    pub(crate) fn new(incoming: tokio::sync::mpsc::Receiver<Vec<StoredRecord>>) -> Self {
        Self {
            incoming,
            buffered: Vec::new(),
            position: 0,
        }
    }

    /// Up to `max` records, waiting for the reader task's next batch if none is left.
    pub(crate) async fn next_batch(
        &mut self,
        max: usize,
    ) -> Result<Vec<StoredRecord>, BackendError> {
        if self.buffered.is_empty() {
            match self.incoming.recv().await {
                Some(batch) => self.buffered = batch,
                None => return Err(BackendError::Unavailable("the reader task stopped".into())),
            }
        }
        let rest = self.buffered.split_off(max.min(self.buffered.len()));
        let batch = std::mem::replace(&mut self.buffered, rest);
        if let Some(last) = batch.last() {
            self.position = last.offset + 1;
        }
        Ok(batch)
    }

    pub(crate) fn position(&self) -> u64 {
        self.position
    }
}
