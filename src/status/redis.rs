//! The Redis status store, for several wald instances that share backends: one hash
//! per transaction, `wald:status:<transaction_id>`, with a field `m:<message_id>` per
//! message (as accepted) and a field `t:<message_id>:<target>` per target state change,
//! so that an update is one `HSET` and never a read-modify-write. Each change renews
//! the hash's expiry to the retention, which is how entries expire after their last
//! change.

use std::time::Duration;

use redis::AsyncCommands;
use redis::aio::ConnectionManager;

use super::model::{MessageStatus, StatusError, TargetStatus, TargetUpdate};

const KEY_PREFIX: &str = "wald:status:";

pub struct RedisStore {
    connection: ConnectionManager,
    retention_ms: i64,
}

fn key(transaction_id: &str) -> String {
    format!("{KEY_PREFIX}{transaction_id}")
}

impl RedisStore {
    pub async fn connect(url: &str, retention: Duration) -> Result<Self, StatusError> {
        let connection = redis::Client::open(url)?.get_connection_manager().await?;
        Ok(Self {
            connection,
            retention_ms: i64::try_from(retention.as_millis()).unwrap_or(i64::MAX),
        })
    }

    pub async fn record_accepted(&self, messages: &[MessageStatus]) -> Result<(), StatusError> {
        let mut pipe = redis::pipe();
        for m in messages {
            let key = key(&m.transaction_id);
            pipe.hset_nx(
                &key,
                format!("m:{}", m.message_id),
                serde_json::to_string(m)?,
            )
            .ignore()
            .pexpire(&key, self.retention_ms)
            .ignore();
        }
        pipe.query_async::<()>(&mut self.connection.clone()).await?;
        Ok(())
    }

    pub async fn update_targets(&self, updates: &[TargetUpdate]) -> Result<(), StatusError> {
        let mut pipe = redis::pipe();
        for u in updates {
            let key = key(&u.transaction_id);
            pipe.hset(
                &key,
                format!("t:{}:{}", u.message_id, u.target),
                serde_json::to_string(&u.status)?,
            )
            .ignore()
            .pexpire(&key, self.retention_ms)
            .ignore();
        }
        pipe.query_async::<()>(&mut self.connection.clone()).await?;
        Ok(())
    }

    pub async fn messages(&self, transaction_id: &str) -> Result<Vec<MessageStatus>, StatusError> {
        let fields: Vec<(String, String)> =
            self.connection.clone().hgetall(key(transaction_id)).await?;
        let mut messages: Vec<MessageStatus> = fields
            .iter()
            .filter(|(field, _)| field.starts_with("m:"))
            .map(|(_, value)| serde_json::from_str(value))
            .collect::<Result<_, _>>()?;
        for (field, value) in &fields {
            let Some((message_id, target)) = field
                .strip_prefix("t:")
                .and_then(|rest| rest.split_once(':'))
            else {
                continue;
            };
            let status: TargetStatus = serde_json::from_str(value)?;
            if let Some(m) = messages.iter_mut().find(|m| m.message_id == message_id) {
                m.updated_at_ms = m.updated_at_ms.max(status.updated_at_ms);
                m.targets.insert(target.to_string(), status);
            }
        }
        Ok(messages)
    }
}
