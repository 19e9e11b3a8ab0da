//! The embedded status store: one redb file, `<data_dir>/status.redb`.
//!
//! Two tables, both keyed by the transaction id's 16 bytes followed by the message
//! id's, so that a transaction is one key range in each; since ids are UUID v7 (time
//! first) the oldest entries are the lowest keys, which is what expiry scans.
//! `messages` holds each message as accepted ([`MessageStatus`] as JSON, written once);
//! `targets` holds each target's latest state ([`TargetStatus`] as JSON) under the
//! message's key followed by the target's name, so that an update is one write, not a
//! read, a decode and a write of the whole message. Every change is one redb
//! transaction, synced before it returns.

use std::collections::HashSet;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::{MessageStatus, StatusError, TargetStatus, TargetUpdate};
use crate::backend::embedded::writer::now_ms;

const MESSAGES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("messages");
const TARGETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("targets");
/// redb's page cache: lookups are rare and recent, so a small one does (redb's default
/// is 1 GiB, which a busy store would fill).
const CACHE_BYTES: usize = 4 * 1024 * 1024;

pub struct EmbeddedStore {
    db: Arc<Database>,
    retention: Duration,
}

fn err(e: impl std::fmt::Display) -> StatusError {
    StatusError::Embedded(e.to_string())
}

/// The key of one message: transaction id then message id. Ids that are not UUIDs
/// (none that wald makes) sort as zero.
fn key(transaction_id: &str, message_id: &str) -> [u8; 32] {
    let mut key = [0u8; 32];
    key[..16].copy_from_slice(
        Uuid::parse_str(transaction_id)
            .unwrap_or_default()
            .as_bytes(),
    );
    key[16..].copy_from_slice(Uuid::parse_str(message_id).unwrap_or_default().as_bytes());
    key
}

/// The key of one target of one message: the message's key, then the target's name.
fn target_key(transaction_id: &str, message_id: &str, target: &str) -> Vec<u8> {
    let mut key = key(transaction_id, message_id).to_vec();
    key.extend_from_slice(target.as_bytes());
    key
}

/// The key of the message a target's key belongs to.
fn message_key(target_key: &[u8]) -> Option<[u8; 32]> {
    target_key.get(..32)?.try_into().ok()
}

/// The keys of every transaction made before `ms` are below this.
fn made_before(ms: u64) -> [u8; 32] {
    let mut below = [0u8; 32];
    below[..6].copy_from_slice(&ms.to_be_bytes()[2..]);
    below
}

/// The tables one write transaction works on.
struct Tables<'t> {
    messages: redb::Table<'t, [u8; 32], &'static [u8]>,
    targets: redb::Table<'t, &'static [u8], &'static [u8]>,
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path` (blocking I/O).
    pub fn open(path: &Path, retention: Duration) -> Result<Self, StatusError> {
        if let Some(dir) = path.parent() {
            std::fs::create_dir_all(dir).map_err(err)?;
        }
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(path)
            .map_err(err)?;
        let write = db.begin_write().map_err(err)?;
        write.open_table(MESSAGES).map_err(err)?;
        write.open_table(TARGETS).map_err(err)?;
        write.commit().map_err(err)?;
        Ok(Self {
            db: Arc::new(db),
            retention,
        })
    }

    /// Runs `work` in one write transaction on a blocking thread, and commits it.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Tables) -> Result<T, StatusError> + Send + 'static,
    ) -> Result<T, StatusError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            let out = {
                let mut tables = Tables {
                    messages: txn.open_table(MESSAGES).map_err(err)?,
                    targets: txn.open_table(TARGETS).map_err(err)?,
                };
                work(&mut tables)?
            };
            txn.commit().map_err(err)?;
            Ok(out)
        })
        .await
        .map_err(err)?
    }

    pub async fn record_accepted(&self, messages: Vec<MessageStatus>) -> Result<(), StatusError> {
        self.write(move |tables| {
            for message in messages {
                let k = key(&message.transaction_id, &message.message_id);
                let value = serde_json::to_vec(&message)?;
                // A message recorded before keeps its entry: put the old one back.
                let old = tables
                    .messages
                    .insert(k, value.as_slice())
                    .map_err(err)?
                    .map(|old| old.value().to_vec());
                if let Some(old) = old {
                    tables.messages.insert(k, old.as_slice()).map_err(err)?;
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn update_targets(&self, updates: Vec<TargetUpdate>) -> Result<(), StatusError> {
        self.write(move |tables| {
            for update in updates {
                let k = target_key(&update.transaction_id, &update.message_id, &update.target);
                tables
                    .targets
                    .insert(k.as_slice(), serde_json::to_vec(&update.status)?.as_slice())
                    .map_err(err)?;
            }
            Ok(())
        })
        .await
    }

    pub async fn messages(&self, transaction_id: &str) -> Result<Vec<MessageStatus>, StatusError> {
        let Ok(id) = Uuid::parse_str(transaction_id) else {
            return Ok(Vec::new());
        };
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(err)?;
            let mut low = [0u8; 32];
            low[..16].copy_from_slice(id.as_bytes());
            let mut high = [0xffu8; 32];
            high[..16].copy_from_slice(id.as_bytes());
            let mut messages: Vec<([u8; 32], MessageStatus)> = Vec::new();
            for entry in txn
                .open_table(MESSAGES)
                .map_err(err)?
                .range(low..=high)
                .map_err(err)?
            {
                let (key, value) = entry.map_err(err)?;
                messages.push((key.value(), serde_json::from_slice(value.value())?));
            }
            let targets = txn.open_table(TARGETS).map_err(err)?;
            for entry in targets.range(&low[..]..&high[..]).map_err(err)? {
                let (key, value) = entry.map_err(err)?;
                let key = key.value();
                let found = message_key(key)
                    .and_then(|k| messages.binary_search_by(|(m, _)| m.cmp(&k)).ok());
                let Some(found) = found else {
                    continue;
                };
                let message = &mut messages[found].1;
                let status: TargetStatus = serde_json::from_slice(value.value())?;
                let name = String::from_utf8_lossy(&key[32..]).into_owned();
                message.updated_at_ms = message.updated_at_ms.max(status.updated_at_ms);
                message.targets.insert(name, status);
            }
            Ok(messages.into_iter().map(|(_, m)| m).collect())
        })
        .await
        .map_err(err)?
    }

    /// Deletes the messages of transactions made before the retention whose last
    /// change (acceptance or any target's update) is older than it, with their targets.
    pub async fn expire(&self) -> Result<u64, StatusError> {
        let oldest = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let below = made_before(oldest);
        self.write(move |tables| {
            let mut changed: HashSet<[u8; 32]> = HashSet::new();
            for entry in tables.targets.range(..&below[..]).map_err(err)? {
                let (key, value) = entry.map_err(err)?;
                let status: TargetStatus = serde_json::from_slice(value.value())?;
                if status.updated_at_ms >= oldest {
                    changed.extend(message_key(key.value()));
                }
            }
            let mut removed = 0;
            tables
                .messages
                .retain_in(..below, |key, value| {
                    let keep = changed.contains(&key)
                        || serde_json::from_slice::<MessageStatus>(value)
                            .is_ok_and(|m| m.updated_at_ms >= oldest);
                    if keep {
                        changed.insert(key);
                    }
                    removed += u64::from(!keep);
                    keep
                })
                .map_err(err)?;
            tables
                .targets
                .retain_in(..&below[..], |key, _| {
                    message_key(key).is_some_and(|k| changed.contains(&k))
                })
                .map_err(err)?;
            Ok(removed)
        })
        .await
    }
}
