//! Transaction status: the fate of every acknowledged write, per message and per target,
//! answered by `GET /api/v1/wal/transaction/{id}/status` and `wald tx`.
//!
//! # How status is kept
//!
//! The log is the source of truth. A *status tailer* per namespace
//! ([`tailer::run`]) reads the namespace's log as its own consumer group
//! ([`TAILER_GROUP`]) and records each message as `pending` for each of its targets in
//! the [`StatusStore`]; only then does it commit its cursor. So the write path does no
//! extra work, and a crash loses no acknowledged transaction: whatever the store missed
//! is read again from the log on restart. The delivery runtime updates a target's state
//! (`delivered`, `retrying`, `dead_lettered`, `skipped` by a filter) as it goes.
//!
//! A lookup that finds nothing waits, briefly, for the tailers to reach the end of the
//! log as it was when the lookup started: every write acknowledged before the lookup is
//! then found ([`StatusStore::find`]).
//!
//! The store is embedded ([`embedded`], a file under `data_dir`), Postgres
//! ([`postgres`]) or Redis ([`redis`]); the last two are shared by several instances.
//! Entries are kept for `[status_store] retention` after their last change.

pub mod config;
pub mod embedded;
pub mod model;
pub mod postgres;
pub mod redis;

use std::time::Duration;

use tokio::sync::watch;

use crate::component::Component;
use crate::probe::Unreachable;
use config::{StatusStoreConfig, StatusStoreKind};
pub use model::{
    DeliveryState, MessageStatus, StatusError, TargetStatus, TargetUpdate, TransactionState,
    TransactionStatus,
};

pub use crate::message::TAILER_GROUP;

/// How long a lookup that found nothing waits for the tailers to catch up.
const CATCH_UP_WAIT: Duration = Duration::from_secs(5);

/// The status store: one of [`Store`], and the health of its requests.
pub struct StatusStore {
    store: Store,
    /// Failing while requests to the store fail; every caller retries what it must
    /// keep (the tailer its messages, delivery its outcomes).
    health: Component,
}

/// The status store, by `[status_store] type`.
pub enum Store {
    Embedded(embedded::EmbeddedStore),
    Postgres(postgres::PostgresStore),
    Redis(redis::RedisStore),
}

impl From<Store> for StatusStore {
    fn from(store: Store) -> Self {
        Self {
            store,
            health: Component::new(None, "status_store"),
        }
    }
}

impl StatusStore {
    /// Opens the store `config` names: the embedded one under `data_dir`, or connects to
    /// Postgres (and applies its schema) or Redis.
    pub async fn open(
        config: &StatusStoreConfig,
        data_dir: &std::path::Path,
    ) -> Result<Self, StatusError> {
        let retention = config.retention.get();
        let store = match (config.kind, &config.url) {
            (StatusStoreKind::Postgres, Some(url)) => {
                Store::Postgres(postgres::PostgresStore::connect(url.expose(), retention).await?)
            }
            (StatusStoreKind::Redis, Some(url)) => {
                Store::Redis(redis::RedisStore::connect(url.expose(), retention).await?)
            }
            _ => Store::Embedded(
                embedded::EmbeddedStore::open(data_dir.join("status.redb"), retention).await?,
            ),
        };
        Ok(store.into())
    }

    /// Records messages made durable (pending for each target). A message recorded
    /// before keeps what it has: the tailer may read a message twice after a crash.
    pub async fn record_accepted(&self, messages: &[MessageStatus]) -> Result<(), StatusError> {
        let result = match &self.store {
            Store::Embedded(s) => s.record_accepted(messages).await,
            Store::Postgres(s) => s.record_accepted(messages).await,
            Store::Redis(s) => s.record_accepted(messages).await,
        };
        self.health.report(&result, true);
        result
    }

    /// Changes the state of targets of messages.
    pub async fn update_targets(&self, updates: &[TargetUpdate]) -> Result<(), StatusError> {
        let result = match &self.store {
            Store::Embedded(s) => s.update_targets(updates).await,
            Store::Postgres(s) => s.update_targets(updates).await,
            Store::Redis(s) => s.update_targets(updates).await,
        };
        self.health.report(&result, true);
        result
    }

    /// The messages of a transaction; empty if it is unknown or expired.
    pub async fn messages(&self, transaction_id: &str) -> Result<Vec<MessageStatus>, StatusError> {
        match &self.store {
            Store::Embedded(s) => s.messages(transaction_id).await,
            Store::Postgres(s) => s.messages(transaction_id).await,
            Store::Redis(s) => s.messages(transaction_id).await,
        }
    }

    /// Deletes entries whose last change is older than the retention; returns how many.
    /// Redis expires its entries by itself.
    pub async fn expire(&self) -> Result<u64, StatusError> {
        let result = match &self.store {
            Store::Embedded(s) => s.expire().await,
            Store::Postgres(s) => s.expire().await,
            Store::Redis(_) => Ok(0),
        };
        self.health.report(&result, false);
        result
    }

    pub fn kind(&self) -> &'static str {
        match &self.store {
            Store::Embedded(_) => "embedded",
            Store::Postgres(_) => "postgres",
            Store::Redis(_) => "redis",
        }
    }

    /// The health of the store's requests.
    pub fn health(&self) -> &Component {
        &self.health
    }
}

/// What a lookup waits on for one namespace: the log's committed end when the lookup
/// started, and the tailer's progress.
pub struct CatchUp {
    pub log_end: u64,
    pub indexed: watch::Receiver<u64>,
}

impl StatusStore {
    /// The transaction's status, or `None` when no namespace's log holds it. When the
    /// store has nothing yet, waits (up to a few seconds) for each tailer to index its
    /// log up to `catch_up`'s end, so that an acknowledged write is always found.
    pub async fn find(
        &self,
        transaction_id: &str,
        catch_up: Vec<CatchUp>,
    ) -> Result<Option<TransactionStatus>, StatusError> {
        let messages = self.messages(transaction_id).await?;
        if !messages.is_empty() {
            return Ok(Some(TransactionStatus::new(
                transaction_id.to_string(),
                messages,
            )));
        }
        let waits = catch_up.into_iter().map(|mut c| async move {
            let _ = c.indexed.wait_for(|indexed| *indexed >= c.log_end).await;
        });
        let caught_up = tokio::time::timeout(CATCH_UP_WAIT, futures::future::join_all(waits))
            .await
            .is_ok();
        let messages = self.messages(transaction_id).await?;
        if messages.is_empty() {
            if !caught_up {
                // Not found, but not every acknowledged write is indexed yet: "unknown"
                // would be a guess.
                tracing::warn!(
                    transaction_id,
                    "Status lookup gave up waiting for a status tailer."
                );
                return Err(StatusError::Behind);
            }
            return Ok(None);
        }
        Ok(Some(TransactionStatus::new(
            transaction_id.to_string(),
            messages,
        )))
    }
}

/// Reaches the store `config` names the way [`StatusStore::open`] would, and writes
/// nothing: `wald validate --connect`.
pub async fn probe(
    config: &StatusStoreConfig,
    data_dir: &std::path::Path,
) -> Result<(), Unreachable> {
    match (config.kind, &config.url) {
        (StatusStoreKind::Embedded, _) | (_, None) => crate::probe::writable_dir(data_dir),
        (StatusStoreKind::Postgres, Some(url)) => crate::probe::postgres(url.expose()).await,
        (StatusStoreKind::Redis, Some(url)) => crate::probe::redis(url.expose()).await,
    }
}

/// How often expired entries are deleted.
const EXPIRY_INTERVAL: Duration = Duration::from_secs(600);

/// Deletes expired entries at start and then every few minutes, until `stopped`.
pub async fn expire_periodically(
    store: std::sync::Arc<StatusStore>,
    stopped: crate::shutdown::Stopping,
) {
    let mut ticks = tokio::time::interval(EXPIRY_INTERVAL);
    loop {
        tokio::select! {
            _ = ticks.tick() => {}
            () = stopped.wait() => return,
        }
        match store.expire().await {
            Ok(0) => {}
            Ok(removed) => tracing::info!(removed, "Expired transaction status entries deleted."),
            Err(e) => {
                tracing::warn!(error = %e, "Expiring transaction status failed; trying again later.")
            }
        }
    }
}
