//! The Postgres status store, for several wald instances that share backends: table
//! `wald_message_status`, one row per message, created by the migrations in
//! `migrations/status/` (applied at start, tracked in `_wald_migrations` so that they
//! never mix with an application's own migrations in the same database).

use std::time::Duration;

use sqlx::migrate::{Migration, MigrationType, Migrator};
use sqlx::postgres::{PgPool, PgPoolOptions};
use sqlx::{AssertSqlSafe, Row, SqlSafeStr};
use uuid::Uuid;

use super::model::{MessageStatus, StatusError, TargetStatus, TargetUpdate};
use crate::message::now_ms;

/// The schema, in order; each file is applied once per database.
const MIGRATIONS: &[(i64, &str, &str)] = &[(
    1,
    "message status",
    include_str!("../../migrations/status/0001_message_status.sql"),
)];

pub struct PostgresStore {
    pool: PgPool,
    retention: Duration,
}

/// Milliseconds since the epoch as a timestamp, in SQL.
const FROM_MS: &str = "to_timestamp(($1::bigint)::float8 / 1000)";

impl PostgresStore {
    /// Connects and applies the schema.
    pub async fn connect(url: &str, retention: Duration) -> Result<Self, StatusError> {
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(Duration::from_secs(10))
            .connect(url)
            .await?;
        let mut migrator = Migrator::with_migrations(
            MIGRATIONS
                .iter()
                .map(|(version, description, sql)| {
                    Migration::new(
                        *version,
                        (*description).into(),
                        MigrationType::Simple,
                        AssertSqlSafe(*sql).into_sql_str(),
                        false,
                    )
                })
                .collect(),
        );
        migrator.dangerous_set_table_name("_wald_migrations");
        migrator.run(&pool).await?;
        Ok(Self { pool, retention })
    }

    pub async fn record_accepted(&self, messages: &[MessageStatus]) -> Result<(), StatusError> {
        let mut transactions = Vec::with_capacity(messages.len());
        let mut ids = Vec::with_capacity(messages.len());
        let mut namespaces = Vec::with_capacity(messages.len());
        let mut offsets = Vec::with_capacity(messages.len());
        let mut accepted = Vec::with_capacity(messages.len());
        let mut targets = Vec::with_capacity(messages.len());
        for m in messages {
            transactions.push(Uuid::parse_str(&m.transaction_id).unwrap_or_default());
            ids.push(Uuid::parse_str(&m.message_id).unwrap_or_default());
            namespaces.push(m.namespace.as_str());
            offsets.push(i64::try_from(m.offset).unwrap_or(i64::MAX));
            accepted.push(i64::try_from(m.accepted_at_ms).unwrap_or(i64::MAX));
            targets.push(serde_json::to_string(&m.targets)?);
        }
        sqlx::query(
            "INSERT INTO wald_message_status
               (transaction_id, message_id, namespace, log_offset, accepted_at, updated_at, targets)
             SELECT t, m, n, o, to_timestamp(a::float8 / 1000), to_timestamp(a::float8 / 1000), g::jsonb
               FROM UNNEST($1::uuid[], $2::uuid[], $3::text[], $4::bigint[], $5::bigint[], $6::text[])
                 AS u(t, m, n, o, a, g)
             ON CONFLICT (transaction_id, message_id) DO NOTHING",
        )
        .bind(transactions)
        .bind(ids)
        .bind(namespaces)
        .bind(offsets)
        .bind(accepted)
        .bind(targets)
        .execute(&self.pool)
        .await?;
        Ok(())
    }

    pub async fn update_targets(&self, updates: &[TargetUpdate]) -> Result<(), StatusError> {
        let mut txn = self.pool.begin().await?;
        // One statement per update: two updates of one row in a batch must both apply.
        for update in updates {
            let at = i64::try_from(update.status.updated_at_ms).unwrap_or(i64::MAX);
            sqlx::query(AssertSqlSafe(format!(
                "UPDATE wald_message_status
                    SET targets = targets || jsonb_build_object($4::text, $5::jsonb),
                        updated_at = greatest(updated_at, {FROM_MS})
                  WHERE transaction_id = $2 AND message_id = $3"
            )))
            .bind(at)
            .bind(Uuid::parse_str(&update.transaction_id).unwrap_or_default())
            .bind(Uuid::parse_str(&update.message_id).unwrap_or_default())
            .bind(&update.target)
            .bind(serde_json::to_string(&update.status)?)
            .execute(&mut *txn)
            .await?;
        }
        txn.commit().await?;
        Ok(())
    }

    pub async fn messages(&self, transaction_id: &str) -> Result<Vec<MessageStatus>, StatusError> {
        let Ok(id) = Uuid::parse_str(transaction_id) else {
            return Ok(Vec::new());
        };
        let rows = sqlx::query(
            "SELECT transaction_id::text, message_id::text, namespace, log_offset,
                    (extract(epoch FROM accepted_at) * 1000)::bigint AS accepted_ms,
                    (extract(epoch FROM updated_at) * 1000)::bigint AS updated_ms,
                    targets::text
               FROM wald_message_status WHERE transaction_id = $1",
        )
        .bind(id)
        .fetch_all(&self.pool)
        .await?;
        rows.into_iter()
            .map(|row| {
                let targets: String = row.try_get(6)?;
                Ok(MessageStatus {
                    transaction_id: row.try_get(0)?,
                    message_id: row.try_get(1)?,
                    namespace: row.try_get(2)?,
                    offset: row.try_get::<i64, _>(3)?.max(0) as u64,
                    accepted_at_ms: row.try_get::<i64, _>(4)?.max(0) as u64,
                    updated_at_ms: row.try_get::<i64, _>(5)?.max(0) as u64,
                    targets: serde_json::from_str::<
                        std::collections::BTreeMap<String, TargetStatus>,
                    >(&targets)?,
                })
            })
            .collect()
    }

    pub async fn expire(&self) -> Result<u64, StatusError> {
        let oldest = now_ms().saturating_sub(self.retention.as_millis() as u64);
        let done = sqlx::query(AssertSqlSafe(format!(
            "DELETE FROM wald_message_status WHERE updated_at < {FROM_MS}"
        )))
        .bind(i64::try_from(oldest).unwrap_or(i64::MAX))
        .execute(&self.pool)
        .await?;
        Ok(done.rows_affected())
    }
}
