//! Idempotency keys: a write that repeats a key with the same body gets the original
//! ids back and appends nothing; with another body it is refused (409).
//!
//! The keys of a namespace live in `idempotency.log` beside its log: append-only
//! entries `crc32c u32 | length u32 | JSON {key, hash, message_id, transaction_id,
//! at_ms}`, each synced before the write is answered, loaded on open (entries older
//! than the retention are dropped, a torn last entry is cut off) and rewritten
//! atomically when most of the file has expired. A crash between the append of the
//! message and the sync of its key leaves the message without its key: a retry then
//! appends it again (at least once, never lost).

use std::collections::HashMap;
use std::fs::File;
use std::io::Write;
use std::path::{Path, PathBuf};
use std::sync::Mutex;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::backend::embedded::LogError;
use crate::backend::embedded::journal;
use crate::backend::embedded::writer::now_ms;

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

/// What a key says about a new write.
#[derive(Debug, PartialEq, Eq)]
pub enum Check {
    /// Never seen (or expired): go on; the key is reserved until [`IdempotencyStore::complete`]
    /// or [`IdempotencyStore::release`].
    New,
    /// The same body was written before: answer with these ids.
    Repeat(Remembered),
    /// Another body used this key.
    Conflict,
    /// A write with this key is being made durable right now.
    InProgress,
}

enum Slot {
    Reserved,
    Done(Remembered),
}

pub struct IdempotencyStore {
    path: PathBuf,
    retention: Duration,
    inner: Mutex<(File, HashMap<String, Slot>, usize)>,
}

impl IdempotencyStore {
    pub fn open(path: &Path, retention: Duration) -> Result<Self, LogError> {
        let oldest = now_ms().saturating_sub(retention.as_millis() as u64);
        let mut slots = HashMap::new();
        let mut entries = 0;
        let file = journal::open(path, "idempotency keys", |rest| {
            let (entry, len) = decode(rest)?;
            entries += 1;
            if entry.at_ms >= oldest {
                slots.insert(entry.key.clone(), Slot::Done(entry));
            }
            Some(len)
        })?;
        let store = Self {
            path: path.to_path_buf(),
            retention,
            inner: Mutex::new((file, slots, entries)),
        };
        store.compact_if_mostly_expired()?;
        Ok(store)
    }

    /// Looks a key up for a write whose body hashes to `hash`, reserving it if new.
    pub fn check(&self, key: &str, hash: &str) -> Check {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let oldest = now_ms().saturating_sub(self.retention.as_millis() as u64);
        match inner.1.get(key) {
            Some(Slot::Reserved) => Check::InProgress,
            Some(Slot::Done(entry)) if entry.at_ms >= oldest => {
                if entry.hash == hash {
                    Check::Repeat(entry.clone())
                } else {
                    Check::Conflict
                }
            }
            _ => {
                inner.1.insert(key.to_string(), Slot::Reserved);
                Check::New
            }
        }
    }

    /// Forgets a reservation whose write failed.
    pub fn release(&self, key: &str) {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        if matches!(inner.1.get(key), Some(Slot::Reserved)) {
            inner.1.remove(key);
        }
    }

    /// Remembers writes that became durable, with one sync for all of them; synced
    /// when it returns (blocking I/O).
    pub fn complete(&self, entries: Vec<Remembered>) -> Result<(), LogError> {
        let encoded: Vec<u8> = entries.iter().flat_map(encode).collect();
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let written = inner
            .0
            .write_all(&encoded)
            .and_then(|()| inner.0.sync_data());
        match written {
            Ok(()) => {
                inner.2 += entries.len();
                for entry in entries {
                    inner.1.insert(entry.key.clone(), Slot::Done(entry));
                }
                Ok(())
            }
            Err(e) => {
                for entry in &entries {
                    inner.1.remove(&entry.key);
                }
                Err(LogError::io(
                    "remembering an idempotency key",
                    &self.path,
                    e,
                ))
            }
        }
    }

    fn compact_if_mostly_expired(&self) -> Result<(), LogError> {
        let mut inner = self.inner.lock().unwrap_or_else(|e| e.into_inner());
        let live = inner.1.len();
        if inner.2 < 1024 || inner.2 < 2 * live {
            return Ok(());
        }
        let bytes: Vec<u8> = inner
            .1
            .values()
            .filter_map(|slot| match slot {
                Slot::Done(entry) => Some(encode(entry)),
                Slot::Reserved => None,
            })
            .flatten()
            .collect();
        inner.0 = journal::rewrite(&self.path, "idempotency keys", &bytes)?;
        inner.2 = live;
        Ok(())
    }
}

fn encode(entry: &Remembered) -> Vec<u8> {
    let json = serde_json::to_vec(entry).unwrap_or_default();
    let mut out = Vec::with_capacity(json.len() + 8);
    out.extend_from_slice(&crc32c::crc32c(&json).to_le_bytes());
    out.extend_from_slice(&(json.len() as u32).to_le_bytes());
    out.extend_from_slice(&json);
    out
}

fn decode(bytes: &[u8]) -> Option<(Remembered, usize)> {
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

    #[test]
    fn keys_are_remembered_across_a_reopen_and_a_torn_entry()
    -> Result<(), Box<dyn std::error::Error>> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("idempotency.log");
        let store = IdempotencyStore::open(&path, Duration::from_secs(3600))?;
        assert_eq!(store.check("a", "h1"), Check::New);
        assert_eq!(store.check("a", "h1"), Check::InProgress);
        store.complete(vec![entry("a", "h1")])?;
        assert_eq!(store.check("b", "h2"), Check::New);
        store.release("b");
        drop(store);
        let mut bytes = std::fs::read(&path)?;
        bytes.extend_from_slice(&[7, 7, 7]);
        std::fs::write(&path, bytes)?;

        let store = IdempotencyStore::open(&path, Duration::from_secs(3600))?;
        match store.check("a", "h1") {
            Check::Repeat(e) => assert_eq!(
                (e.message_id.as_str(), e.transaction_id.as_str()),
                ("m-a", "t-a")
            ),
            other => panic!("expected a repeat, got {other:?}"),
        }
        assert_eq!(store.check("a", "other"), Check::Conflict);
        assert_eq!(store.check("b", "h2"), Check::New);
        Ok(())
    }
}
