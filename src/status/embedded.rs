//! The embedded status store: one redb file, `<data_dir>/status.redb`.
//!
//! One entry per message, keyed by the transaction id's 16 bytes followed by the
//! message id's: a transaction's messages are one key range, and since ids are UUID v7
//! (time first) the oldest entries are the lowest keys, which is what expiry scans.
//! Values are [`MessageStatus`] as JSON. Every change is one redb transaction, synced
//! before it returns.

use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::{MessageStatus, StatusError, TargetUpdate};
use crate::backend::embedded::writer::now_ms;

const MESSAGES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("messages");
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
        write.commit().map_err(err)?;
        Ok(Self {
            db: Arc::new(db),
            retention,
        })
    }

    /// Runs `work` in one write transaction on a blocking thread, and commits it.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut redb::Table<[u8; 32], &[u8]>) -> Result<T, StatusError> + Send + 'static,
    ) -> Result<T, StatusError> {
        let db = self.db.clone();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(err)?;
            let out = {
                let mut table = txn.open_table(MESSAGES).map_err(err)?;
                work(&mut table)?
            };
            txn.commit().map_err(err)?;
            Ok(out)
        })
        .await
        .map_err(err)?
    }

    pub async fn record_accepted(&self, messages: Vec<MessageStatus>) -> Result<(), StatusError> {
        self.write(move |table| {
            for message in messages {
                let k = key(&message.transaction_id, &message.message_id);
                if table.get(k).map_err(err)?.is_none() {
                    table
                        .insert(k, serde_json::to_vec(&message)?.as_slice())
                        .map_err(err)?;
                }
            }
            Ok(())
        })
        .await
    }

    pub async fn update_targets(&self, updates: Vec<TargetUpdate>) -> Result<(), StatusError> {
        self.write(move |table| {
            for update in updates {
                let k = key(&update.transaction_id, &update.message_id);
                let Some(value) = table.get(k).map_err(err)?.map(|v| v.value().to_vec()) else {
                    continue;
                };
                let mut message: MessageStatus = serde_json::from_slice(&value)?;
                message.updated_at_ms = message.updated_at_ms.max(update.status.updated_at_ms);
                message.targets.insert(update.target, update.status);
                table
                    .insert(k, serde_json::to_vec(&message)?.as_slice())
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
            let table = txn.open_table(MESSAGES).map_err(err)?;
            let mut low = [0u8; 32];
            low[..16].copy_from_slice(id.as_bytes());
            let mut high = [0xffu8; 32];
            high[..16].copy_from_slice(id.as_bytes());
            let mut messages = Vec::new();
            for entry in table.range(low..=high).map_err(err)? {
                let (_, value) = entry.map_err(err)?;
                messages.push(serde_json::from_slice(value.value())?);
            }
            Ok(messages)
        })
        .await
        .map_err(err)?
    }

    pub async fn expire(&self) -> Result<u64, StatusError> {
        let oldest = now_ms().saturating_sub(self.retention.as_millis() as u64);
        // Keys below a transaction id made at `oldest` belong to older transactions.
        let mut below = [0u8; 32];
        below[..6].copy_from_slice(&oldest.to_be_bytes()[2..]);
        self.write(move |table| {
            let mut removed = 0;
            table
                .retain_in(..below, |_, value| {
                    let keep = serde_json::from_slice::<MessageStatus>(value)
                        .map(|m| m.updated_at_ms >= oldest)
                        .unwrap_or(false);
                    removed += u64::from(!keep);
                    keep
                })
                .map_err(err)?;
            Ok(removed)
        })
        .await
    }
}
