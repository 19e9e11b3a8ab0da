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
//!
//! After an I/O error (a full disk) redb refuses every further request until the
//! database is opened again: the store lets go of it and the next request reopens it,
//! so the store works again by itself once the cause is gone.

use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use redb::{Database, ReadableDatabase, ReadableTable, TableDefinition};
use uuid::Uuid;

use super::model::{MessageStatus, StatusError, TargetStatus, TargetUpdate};
use crate::message::now_ms;

const MESSAGES: TableDefinition<[u8; 32], &[u8]> = TableDefinition::new("messages");
const TARGETS: TableDefinition<&[u8], &[u8]> = TableDefinition::new("targets");
/// redb's page cache: lookups are rare and recent, so a small one does (redb's default
/// is 1 GiB, which a busy store would fill).
const CACHE_BYTES: usize = 4 * 1024 * 1024;

pub struct EmbeddedStore {
    shared: Arc<Shared>,
    retention: Duration,
}

/// What the store's blocking tasks share.
struct Shared {
    path: PathBuf,
    /// The open database; none after an I/O error, until the next request opens it
    /// again (redb refuses every request after one, "Please close and re-open").
    db: RwLock<Option<Arc<Database>>>,
}

fn err(e: impl Into<redb::Error>) -> StatusError {
    let e = e.into();
    StatusError::Embedded {
        reopen: matches!(e, redb::Error::Io(_) | redb::Error::PreviousIo),
        message: e.to_string(),
    }
}

fn io_err(e: impl std::fmt::Display) -> StatusError {
    StatusError::Embedded {
        message: e.to_string(),
        reopen: false,
    }
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

impl Shared {
    /// The open database, opened (or created) first if it is not (blocking I/O).
    fn db(&self) -> Result<Arc<Database>, StatusError> {
        if let Some(db) = self.db.read().unwrap_or_else(|e| e.into_inner()).clone() {
            return Ok(db);
        }
        let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
        if let Some(db) = slot.clone() {
            return Ok(db);
        }
        if let Some(dir) = self.path.parent() {
            std::fs::create_dir_all(dir).map_err(io_err)?;
        }
        // While a request of the failed handle still runs this fails (the file is
        // locked); the caller retries.
        let db = redb::Builder::new()
            .set_cache_size(CACHE_BYTES)
            .create(&self.path)
            .map_err(err)?;
        let write = db.begin_write().map_err(err)?;
        write.open_table(MESSAGES).map_err(err)?;
        write.open_table(TARGETS).map_err(err)?;
        write.commit().map_err(err)?;
        let db = Arc::new(db);
        *slot = Some(db.clone());
        Ok(db)
    }

    /// Runs `work` on the database; after an I/O error, lets go of it so that the next
    /// request opens it again.
    fn with_db<T>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StatusError>,
    ) -> Result<T, StatusError> {
        let db = self.db()?;
        let result = work(&db);
        if let Err(StatusError::Embedded { reopen: true, .. }) = &result {
            let mut slot = self.db.write().unwrap_or_else(|e| e.into_inner());
            if slot.as_ref().is_some_and(|open| Arc::ptr_eq(open, &db)) {
                tracing::warn!(path = %self.path.display(), "The status store had an I/O error; it is opened again on its next request.");
                *slot = None;
            }
        }
        result
    }
}

impl EmbeddedStore {
    /// Opens (or creates) the store at `path`.
    pub async fn open(path: PathBuf, retention: Duration) -> Result<Self, StatusError> {
        let shared = Arc::new(Shared {
            path,
            db: RwLock::new(None),
        });
        let opening = shared.clone();
        tokio::task::spawn_blocking(move || opening.db())
            .await
            .map_err(io_err)??;
        Ok(Self { shared, retention })
    }

    /// The store's file.
    pub fn path(&self) -> &Path {
        &self.shared.path
    }

    /// Runs `work` on the database on a blocking thread.
    async fn blocking<T: Send + 'static>(
        &self,
        work: impl FnOnce(&Database) -> Result<T, StatusError> + Send + 'static,
    ) -> Result<T, StatusError> {
        let shared = self.shared.clone();
        tokio::task::spawn_blocking(move || shared.with_db(work))
            .await
            .map_err(io_err)?
    }

    /// Runs `work` in one write transaction on a blocking thread, and commits it.
    async fn write<T: Send + 'static>(
        &self,
        work: impl FnOnce(&mut Tables) -> Result<T, StatusError> + Send + 'static,
    ) -> Result<T, StatusError> {
        self.blocking(move |db| {
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
    }

    pub async fn record_accepted(&self, messages: &[MessageStatus]) -> Result<(), StatusError> {
        let entries = messages
            .iter()
            .map(|m| {
                Ok((
                    key(&m.transaction_id, &m.message_id),
                    serde_json::to_vec(m)?,
                ))
            })
            .collect::<Result<Vec<_>, StatusError>>()?;
        self.write(move |tables| {
            for (k, value) in entries {
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

    pub async fn update_targets(&self, updates: &[TargetUpdate]) -> Result<(), StatusError> {
        let entries = updates
            .iter()
            .map(|u| {
                let k = target_key(&u.transaction_id, &u.message_id, &u.target);
                Ok((k, serde_json::to_vec(&u.status)?))
            })
            .collect::<Result<Vec<_>, StatusError>>()?;
        self.write(move |tables| {
            for (k, value) in entries {
                tables
                    .targets
                    .insert(k.as_slice(), value.as_slice())
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
        self.blocking(move |db| {
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
