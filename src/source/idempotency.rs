//! Idempotency keys: a write that repeats a key with the same body gets the original
//! ids back and appends nothing; with another body it is refused (409).
//!
//! # Durable with the message
//!
//! A keyed message carries its key and its body's hash in its own record (headers
//! `wald-idempotency-key` and `wald-idempotency-hash`), so the key is durable
//! exactly when the message is: no crash can leave a durable message without its key.
//! The keys are also kept in `idempotency.log` beside the log, so that opening a
//! namespace does not read its whole log: append-only entries `crc32c u32 | length u32
//! | JSON`, each either a key (`{key, hash, message_id, transaction_id, at_ms}`) or a
//! checkpoint (`{checkpoint}`: every keyed record below that offset has its entry
//! before it in the file). Entries are written in the background about once a second,
//! off the write path. On open the file is replayed (entries older than the retention
//! are dropped, a torn last entry is cut off), then the log is read from the last
//! checkpoint on for the keys of the records after it. A journal that cannot be
//! written (a full disk) loses nothing: the checkpoint stays where it was, and the
//! next open reads more of the log.
//!
//! The checkpoint is safe because a key is reserved, with the log's end at that
//! moment, before its message is appended (so its offset is at least that end), and
//! a checkpoint is never past the end recorded by a reservation still in flight.
//!
//! On a shared backend (Kafka, SQS, Redis Streams) the log is not read back here: a
//! key's entry is synced to the file before its write is answered, and a crash between
//! the backend's confirmation and that sync leaves the message without its key.
//!
//! # No client behaviour breaks a key
//!
//! A key is held by a [`Reservation`] from the check to the append: dropped without
//! [`Reservation::complete`] (the write failed, or ended before its append) it releases
//! the key. The append itself runs in a task of its own, so a client that goes away or
//! a request that times out cannot stop a write between its append and its key.

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::Notify;

use crate::component::Component;
use crate::message::StoredRecord;
use crate::message::now_ms;
use crate::producer::embedded::journal::Journal;
use crate::producer::embedded::{LogError, blocking};
use crate::producer::{Backend, BackendError};

/// How often new keys and the checkpoint are written to the journal.
const JOURNAL_EVERY: Duration = Duration::from_secs(1);
/// Records read per step when the log is read back on open.
const SCAN_BATCH: usize = 1024;
/// How often expired keys are dropped from memory.
const FORGET_EVERY: Duration = Duration::from_secs(60);

/// The ids a keyed write got.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Remembered {
    pub key: String,
    /// SHA-256 (hex) of the request body.
    pub hash: String,
    pub message_id: String,
    pub transaction_id: String,
    pub at_ms: u64,
}

/// One entry of the journal.
#[derive(Serialize, Deserialize)]
#[serde(untagged)]
enum Entry {
    Key(Remembered),
    /// Every keyed record of the log below this offset has its key before this entry.
    Checkpoint {
        checkpoint: u64,
    },
}

/// What a key says about a new write.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Never seen (or expired): go on; the key is reserved for this write.
    New,
    /// The same body was written before: answer with these ids.
    Repeat(Remembered),
    /// Another body used this key.
    Conflict,
    /// A write with this key is being made durable right now, and did not finish
    /// within the wait.
    InProgress,
}

enum Slot {
    /// Reserved by a write in flight, when the log ended at this offset (the write's
    /// message gets that offset or a later one).
    Reserved {
        log_end: u64,
    },
    Done(Remembered),
}

pub struct IdempotencyStore {
    retention: Duration,
    /// The namespace's log, whose records carry their keys: read back where the
    /// backend numbers its log (the embedded log), else not.
    backend: Arc<dyn Backend>,
    inner: Mutex<Inner>,
    /// Wakes writes waiting for a key in progress.
    settled: Notify,
    /// Failing while the journal cannot be written.
    health: Component,
    /// The task that writes the journal in the background (embedded log only).
    writer: Mutex<Option<tokio::task::JoinHandle<()>>>,
}

struct Inner {
    journal: Journal,
    slots: HashMap<String, Slot>,
    /// Entries in the journal file.
    entries: usize,
    /// Keys of durable messages not in the journal yet (embedded log only).
    unjournaled: Vec<Remembered>,
    /// The last checkpoint written.
    checkpoint: u64,
}

impl IdempotencyStore {
    /// Opens the keys at `path`, reading the namespace's log (where `backend` can read
    /// it back) from the last checkpoint on for the keys after it, and starts writing
    /// the journal in the background.
    pub async fn open(
        path: &Path,
        retention: Duration,
        backend: Arc<dyn Backend>,
        health: Component,
    ) -> Result<Arc<Self>, IdempotencyError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(|e| LogError::io("creating", dir, e))?;
        }
        let oldest = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut slots = HashMap::new();
        let (mut entries, mut checkpoint) = (0, 0);
        let journal = Journal::open(path, "idempotency keys", |rest| {
            let (entry, len) = decode(rest)?;
            entries += 1;
            match entry {
                Entry::Key(key) if key.at_ms >= oldest => {
                    slots.insert(key.key.clone(), Slot::Done(key));
                }
                Entry::Key(_) => {}
                Entry::Checkpoint { checkpoint: at } => checkpoint = checkpoint.max(at),
            }
            Some(len)
        })?;
        // The keys of the records after the checkpoint: into the journal with the next
        // checkpoint.
        let unjournaled = match backend.log_position() {
            Some(_) => keys_in_log(backend.as_ref(), checkpoint, oldest).await?,
            None => Vec::new(),
        };
        for key in &unjournaled {
            slots.insert(key.key.clone(), Slot::Done(key.clone()));
        }
        let store = Arc::new(Self {
            retention,
            inner: Mutex::new(Inner {
                journal,
                slots,
                entries,
                unjournaled,
                checkpoint,
            }),
            settled: Notify::new(),
            health,
            backend,
            writer: Mutex::new(None),
        });
        store.write_journal(true)?;
        if store.reads_back() {
            let writer = tokio::spawn(write_periodically(Arc::downgrade(&store)));
            *store.writer.lock().unwrap_or_else(|e| e.into_inner()) = Some(writer);
        }
        Ok(store)
    }

    /// Looks a key up for a write whose body hashes to `hash`, reserving it if new.
    /// While another write holds it, waits up to `wait` for that one to finish.
    pub async fn reserve(
        self: &Arc<Self>,
        key: &str,
        hash: &str,
        wait: Duration,
    ) -> (Check, Option<Reservation>) {
        let deadline = tokio::time::Instant::now() + wait;
        loop {
            let settled = self.settled.notified();
            tokio::pin!(settled);
            // Registered before the check, so that a key settled in between wakes it.
            settled.as_mut().enable();
            match self.check(key, hash) {
                Check::InProgress => {}
                Check::New => {
                    let reservation = Reservation {
                        store: self.clone(),
                        keys: vec![key.to_string()],
                    };
                    return (Check::New, Some(reservation));
                }
                other => return (other, None),
            }
            if tokio::time::timeout_at(deadline, settled).await.is_err() {
                return (Check::InProgress, None);
            }
        }
    }

    fn check(&self, key: &str, hash: &str) -> Check {
        let mut inner = self.lock();
        let oldest = now_ms().saturating_sub(self.retention.as_millis() as u64);
        match inner.slots.get(key) {
            Some(Slot::Reserved { .. }) => Check::InProgress,
            Some(Slot::Done(entry)) if entry.at_ms >= oldest => {
                if entry.hash == hash {
                    Check::Repeat(entry.clone())
                } else {
                    Check::Conflict
                }
            }
            _ => {
                // Read under the lock: see the module docs.
                let log_end = self.backend.log_position().map_or(0, |p| p.next_offset);
                inner
                    .slots
                    .insert(key.to_string(), Slot::Reserved { log_end });
                Check::New
            }
        }
    }

    /// Forgets reservations whose write did not append.
    fn release(&self, keys: &[String]) {
        let mut inner = self.lock();
        for key in keys {
            if matches!(inner.slots.get(key), Some(Slot::Reserved { .. })) {
                inner.slots.remove(key);
            }
        }
        drop(inner);
        self.settled.notify_waiters();
    }

    /// Remembers writes whose messages are durable. On the embedded log their keys are
    /// in their records already, and the journal follows in the background; on a
    /// shared backend the journal is synced before this returns.
    async fn complete(self: &Arc<Self>, mut entries: Vec<Remembered>) {
        {
            let at_ms = now_ms();
            let mut inner = self.lock();
            for entry in &mut entries {
                entry.at_ms = at_ms;
                inner
                    .slots
                    .insert(entry.key.clone(), Slot::Done(entry.clone()));
            }
            inner.unjournaled.extend(entries);
        }
        self.settled.notify_waiters();
        if !self.reads_back() {
            let store = self.clone();
            // The message is durable whatever happens here: a key not kept only means
            // that a retry appends its message again.
            let _ = blocking(move || store.write_journal(false)).await;
        }
    }

    /// Writes the keys not in the journal yet and, on the embedded log, a checkpoint
    /// (blocking I/O). `compact`: rewrite the file if most of it expired.
    fn write_journal(&self, compact: bool) -> Result<(), LogError> {
        let mut inner = self.lock();
        let checkpoint = self.backend.log_position().map(|log| {
            inner
                .slots
                .values()
                .filter_map(|slot| match slot {
                    Slot::Reserved { log_end } => Some(*log_end),
                    Slot::Done(_) => None,
                })
                .fold(log.next_offset, u64::min)
        });
        let moved = checkpoint.is_some_and(|c| c > inner.checkpoint);
        let live = inner
            .slots
            .values()
            .filter(|s| matches!(s, Slot::Done(_)))
            .count();
        let rewrite = compact && inner.entries >= 1024 && inner.entries >= 2 * live;
        if !rewrite && !moved && inner.unjournaled.is_empty() {
            return Ok(());
        }
        let keys: Vec<&Remembered> = if rewrite {
            inner
                .slots
                .values()
                .filter_map(|slot| match slot {
                    Slot::Done(entry) => Some(entry),
                    Slot::Reserved { .. } => None,
                })
                .collect()
        } else {
            inner.unjournaled.iter().collect()
        };
        let mut bytes: Vec<u8> = keys
            .iter()
            .flat_map(|e| encode(&Entry::Key((*e).clone())))
            .collect();
        let mut written = keys.len();
        if let Some(checkpoint) = checkpoint {
            bytes.extend(encode(&Entry::Checkpoint { checkpoint }));
            written += 1;
        }
        let result = if rewrite {
            inner.journal.rewrite(&bytes)
        } else {
            inner.journal.append(&bytes)
        };
        self.health.report(&result, false);
        result?;
        inner.entries = if rewrite {
            written
        } else {
            inner.entries + written
        };
        inner.unjournaled.clear();
        inner.checkpoint = checkpoint.unwrap_or(inner.checkpoint).max(inner.checkpoint);
        Ok(())
    }

    /// Drops the keys that expired from memory.
    fn forget_expired(&self) {
        let oldest = now_ms().saturating_sub(self.retention.as_millis() as u64);
        self.lock()
            .slots
            .retain(|_, slot| !matches!(slot, Slot::Done(e) if e.at_ms < oldest));
    }

    /// Stops the background writer and writes what is not in the journal yet.
    pub async fn close(self: &Arc<Self>) {
        let writer = self.writer.lock().unwrap_or_else(|e| e.into_inner()).take();
        if let Some(writer) = writer {
            writer.abort();
            let _ = writer.await;
        }
        let store = self.clone();
        let _ = blocking(move || store.write_journal(false)).await;
    }

    /// Whether the keys are read back from the log after a crash (the embedded log),
    /// so that the journal may lag behind it.
    fn reads_back(&self) -> bool {
        self.backend.log_position().is_some()
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Inner> {
        self.inner.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The keys held for one write until its messages are durable; released if dropped
/// before [`Reservation::complete`].
pub struct Reservation {
    store: Arc<IdempotencyStore>,
    keys: Vec<String>,
}

impl Reservation {
    /// Joins another key of the same write (a batch).
    pub fn merge(&mut self, other: Reservation) {
        let mut other = other;
        self.keys.append(&mut other.keys);
    }

    /// The write's messages are durable: their keys answer with these ids from now on
    /// (their `at_ms` is set to now).
    pub async fn complete(mut self, entries: Vec<Remembered>) {
        self.keys.clear();
        self.store.complete(entries).await;
    }
}

impl Drop for Reservation {
    fn drop(&mut self) {
        if !self.keys.is_empty() {
            self.store.release(&self.keys);
        }
    }
}

/// Writes the journal about once a second while the store exists.
async fn write_periodically(store: Weak<IdempotencyStore>) {
    let mut last_forget = tokio::time::Instant::now();
    loop {
        tokio::time::sleep(JOURNAL_EVERY).await;
        let Some(store) = store.upgrade() else {
            return;
        };
        let compact = last_forget.elapsed() >= FORGET_EVERY;
        if compact {
            store.forget_expired();
            last_forget = tokio::time::Instant::now();
        }
        // A failure is reported by the store's health; the next round tries again.
        let _ = blocking(move || store.write_journal(compact)).await;
    }
}

/// The keys of the keyed records of the log from `from` on, written since `oldest`.
async fn keys_in_log(
    backend: &dyn Backend,
    from: u64,
    oldest: u64,
) -> Result<Vec<Remembered>, BackendError> {
    let end = backend.log_position().map_or(0, |p| p.next_offset);
    let mut keys = Vec::new();
    let mut next = from;
    while next < end {
        let records = backend.read(next, SCAN_BATCH).await?;
        let Some(last) = records.last() else { break };
        next = last.offset + 1;
        keys.extend(
            records
                .iter()
                .filter(|r| r.timestamp_ms >= oldest)
                .filter_map(remembered_of),
        );
    }
    Ok(keys)
}

/// The key a keyed record was written with, and its ids.
fn remembered_of(record: &StoredRecord) -> Option<Remembered> {
    use crate::message::header;
    use crate::message::{
        HEADER_IDEMPOTENCY_HASH, HEADER_IDEMPOTENCY_KEY, HEADER_MESSAGE_ID, HEADER_TRANSACTION_ID,
    };
    let text = |name| header(&record.headers, name).map(str::to_string);
    Some(Remembered {
        key: text(HEADER_IDEMPOTENCY_KEY)?,
        hash: text(HEADER_IDEMPOTENCY_HASH)?,
        message_id: text(HEADER_MESSAGE_ID)?,
        transaction_id: text(HEADER_TRANSACTION_ID)?,
        at_ms: record.timestamp_ms,
    })
}

/// Why the keys could not be opened.
#[derive(Debug, thiserror::Error)]
pub enum IdempotencyError {
    #[error(transparent)]
    Journal(#[from] LogError),
    #[error("reading the log back for its keys: {0}")]
    Log(#[from] BackendError),
}

fn encode(entry: &Entry) -> Vec<u8> {
    let json = serde_json::to_vec(entry).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

fn decode(bytes: &[u8]) -> Option<(Entry, usize)> {
    let crc = u32::from_le_bytes(bytes.get(0..4)?.try_into().ok()?);
    let len = u32::from_le_bytes(bytes.get(4..8)?.try_into().ok()?) as usize;
    let json = bytes.get(8..8 + len)?;
    if crc32c::crc32c(json) != crc {
        return None;
    }
    Some((serde_json::from_slice(json).ok()?, 8 + len))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(key: &str, hash: &str) -> Remembered {
        Remembered {
            key: key.into(),
            hash: hash.into(),
            message_id: format!("m-{key}"),
            transaction_id: format!("t-{key}"),
            at_ms: now_ms(),
        }
    }

    const HOUR: Duration = Duration::from_secs(3600);
    const NO_WAIT: Duration = Duration::ZERO;

    /// The embedded log of a namespace in `dir`, as its backend.
    fn log_in(dir: &Path) -> Result<Arc<dyn Backend>, LogError> {
        use crate::producer::embedded::{Embedded, NamespaceStore};
        let store = NamespaceStore::open(dir, "keys", &Default::default())?;
        Ok(Arc::new(Embedded(Arc::new(store))))
    }

    async fn store(
        path: &Path,
        backend: &Arc<dyn Backend>,
    ) -> Result<Arc<IdempotencyStore>, IdempotencyError> {
        let health = Component::new(None, "idempotency_journal");
        IdempotencyStore::open(path, HOUR, backend.clone(), health).await
    }

    #[tokio::test]
    async fn keys_are_remembered_across_a_reopen_and_a_torn_entry()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("idempotency.log");
        let log = log_in(dir.path())?;
        let keys = store(&path, &log).await?;
        let (check, reservation) = keys.reserve("a", "h1", NO_WAIT).await;
        assert_eq!(check, Check::New);
        assert_eq!(keys.reserve("a", "h1", NO_WAIT).await.0, Check::InProgress);
        reservation
            .ok_or("reserved")?
            .complete(vec![entry("a", "h1")])
            .await;
        let (check, reservation) = keys.reserve("b", "h2", NO_WAIT).await;
        assert_eq!(check, Check::New);
        drop(reservation);
        keys.close().await;
        let mut bytes = std::fs::read(&path)?;
        bytes.extend_from_slice(&[7, 7, 7]);
        std::fs::write(&path, bytes)?;

        let keys = store(&path, &log).await?;
        match keys.reserve("a", "h1", NO_WAIT).await.0 {
            Check::Repeat(e) => assert_eq!(
                (e.message_id.as_str(), e.transaction_id.as_str()),
                ("m-a", "t-a")
            ),
            other => panic!("expected a repeat, got {other:?}"),
        }
        assert_eq!(keys.reserve("a", "other", NO_WAIT).await.0, Check::Conflict);
        assert_eq!(keys.reserve("b", "h2", NO_WAIT).await.0, Check::New);
        Ok(())
    }

    #[tokio::test]
    async fn a_retry_waits_for_the_write_in_progress_and_gets_its_ids()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let log = log_in(dir.path())?;
        let keys = store(&dir.path().join("idempotency.log"), &log).await?;
        let (_, first) = keys.reserve("k", "h", NO_WAIT).await;
        let first = first.ok_or("reserved")?;
        let retry = {
            let keys = keys.clone();
            tokio::spawn(async move { keys.reserve("k", "h", Duration::from_secs(10)).await.0 })
        };
        tokio::task::yield_now().await;
        first.complete(vec![entry("k", "h")]).await;
        assert!(matches!(retry.await?, Check::Repeat(e) if e.message_id == "m-k"));
        Ok(())
    }

    #[tokio::test]
    async fn keys_of_records_after_the_checkpoint_are_found_in_the_log_on_every_open()
    -> Result<(), Box<dyn std::error::Error>> {
        use crate::message::Record;
        use crate::message::{
            HEADER_IDEMPOTENCY_HASH, HEADER_IDEMPOTENCY_KEY, HEADER_MESSAGE_ID,
            HEADER_TRANSACTION_ID,
        };
        let dir = tempfile::tempdir()?;
        let log = log_in(dir.path())?;
        let path = dir.path().join("idempotency.log");
        // A journal checkpoint, then keyed records it does not cover (as after a crash
        // before the journal was written).
        store(&path, &log).await?.close().await;
        let keyed = |key: &str| Record {
            key: None,
            headers: [
                (HEADER_MESSAGE_ID, format!("m-{key}")),
                (HEADER_TRANSACTION_ID, format!("t-{key}")),
                (HEADER_IDEMPOTENCY_KEY, key.to_string()),
                (HEADER_IDEMPOTENCY_HASH, "h".to_string()),
            ]
            .map(|(n, v)| (n.to_string(), v.into_bytes()))
            .to_vec(),
            payload: b"{}".to_vec(),
        };
        log.append(vec![keyed("a"), keyed("b")]).await?;
        for round in 0..2 {
            let keys = store(&path, &log).await?;
            for key in ["a", "b"] {
                match keys.reserve(key, "h", NO_WAIT).await.0 {
                    Check::Repeat(e) => assert_eq!(e.message_id, format!("m-{key}")),
                    other => panic!("round {round}, key {key}: {other:?}"),
                }
            }
            keys.close().await;
        }
        Ok(())
    }
}
