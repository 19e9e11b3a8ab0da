//! What transaction status is made of: each message of a transaction with each of its
//! targets' state, as the stores keep it and the API answers it, the changes delivery
//! makes to it, and the stores' error.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::message::{
    HEADER_MESSAGE_ID, HEADER_TARGETS, HEADER_TRANSACTION_ID, StoredRecord, header,
};

#[derive(Debug, thiserror::Error)]
pub enum StatusError {
    /// `reopen`: redb refuses every request after an I/O error until the database is
    /// opened again, which the next request does.
    #[error("the embedded status store failed: {message}")]
    Embedded { message: String, reopen: bool },
    #[error("the status tailers have not indexed every acknowledged write yet")]
    Behind,
    #[error("the Postgres status store failed: {0}")]
    Postgres(#[from] sqlx::Error),
    #[error("the Postgres status store's schema could not be applied: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("the Redis status store failed: {0}")]
    Redis(#[from] ::redis::RedisError),
    #[error("a stored status entry is not valid: {0}")]
    Decode(#[from] serde_json::Error),
}

/// Where delivery to one target stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum DeliveryState {
    /// Not delivered yet (or delayed until its time).
    Pending,
    /// Failed, and will be tried again.
    Retrying,
    /// The target confirmed it.
    Delivered,
    /// Given up on: the message is in the namespace's dead-letter queue.
    DeadLettered,
    /// Kept from this target by a filter (`last_error` says which): done with.
    Skipped,
}

/// One target's state for one message.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct TargetStatus {
    pub state: DeliveryState,
    /// Delivery attempts made so far.
    pub attempts: u32,
    /// The last attempt's error, if it failed.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Milliseconds since the Unix epoch.
    pub updated_at_ms: u64,
}

/// One message of a transaction.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize, utoipa::ToSchema)]
pub struct MessageStatus {
    pub transaction_id: String,
    pub message_id: String,
    pub namespace: String,
    /// Its place in the namespace's log.
    pub offset: u64,
    /// When it was made durable (milliseconds since the Unix epoch).
    pub accepted_at_ms: u64,
    /// When any of its targets' states last changed.
    pub updated_at_ms: u64,
    /// Per target of the message, by target name.
    pub targets: BTreeMap<String, TargetStatus>,
}

impl MessageStatus {
    /// A message just made durable: pending for each of `targets`.
    pub fn accepted(
        transaction_id: String,
        message_id: String,
        namespace: String,
        offset: u64,
        accepted_at_ms: u64,
        targets: impl IntoIterator<Item = String>,
    ) -> Self {
        let pending = TargetStatus {
            state: DeliveryState::Pending,
            attempts: 0,
            last_error: None,
            updated_at_ms: accepted_at_ms,
        };
        Self {
            transaction_id,
            message_id,
            namespace,
            offset,
            accepted_at_ms,
            updated_at_ms: accepted_at_ms,
            targets: targets.into_iter().map(|t| (t, pending.clone())).collect(),
        }
    }

    /// The status of a message as read from its log: pending for each of its targets
    /// (those it names, or `targets`). None for a record without ids.
    pub fn of_record<'t>(
        record: &StoredRecord,
        namespace: &str,
        targets: impl IntoIterator<Item = &'t String>,
    ) -> Option<Self> {
        Self::of_headers(
            &record.headers,
            namespace,
            targets,
            record.offset,
            record.timestamp_ms,
        )
    }

    /// [`MessageStatus::of_record`] from a message's headers, place and time.
    pub fn of_headers<'t>(
        headers: &[(String, Vec<u8>)],
        namespace: &str,
        targets: impl IntoIterator<Item = &'t String>,
        offset: u64,
        accepted_at_ms: u64,
    ) -> Option<Self> {
        let header = |name| header(headers, name);
        let targets: Vec<String> = match header(HEADER_TARGETS) {
            Some(named) => named.split(',').map(str::to_string).collect(),
            None => targets.into_iter().cloned().collect(),
        };
        Some(Self::accepted(
            header(HEADER_TRANSACTION_ID)?.to_string(),
            header(HEADER_MESSAGE_ID)?.to_string(),
            namespace.to_string(),
            offset,
            accepted_at_ms,
            targets,
        ))
    }
}

/// What a transaction's messages amount to.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum TransactionState {
    /// Some target of some message has not been reached yet.
    Pending,
    /// Some delivery failed and is being retried.
    Retrying,
    /// Every target of every message confirmed.
    Delivered,
    /// Some delivery was given up on (the rest is delivered).
    DeadLettered,
}

/// `GET /api/v1/wal/transaction/{id}/status`.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct TransactionStatus {
    pub transaction_id: String,
    pub state: TransactionState,
    pub messages: Vec<MessageStatus>,
}

impl TransactionStatus {
    pub fn new(transaction_id: String, mut messages: Vec<MessageStatus>) -> Self {
        messages.sort_by(|a, b| (&a.namespace, a.offset).cmp(&(&b.namespace, b.offset)));
        let states: Vec<DeliveryState> = messages
            .iter()
            .flat_map(|m| m.targets.values().map(|t| t.state))
            .collect();
        let state = if states.contains(&DeliveryState::Retrying) {
            TransactionState::Retrying
        } else if states.contains(&DeliveryState::Pending) {
            TransactionState::Pending
        } else if states.contains(&DeliveryState::DeadLettered) {
            TransactionState::DeadLettered
        } else {
            TransactionState::Delivered
        };
        Self {
            transaction_id,
            state,
            messages,
        }
    }
}

/// A change to the status of one message's target, made by the delivery runtime.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct TargetUpdate {
    pub transaction_id: String,
    pub message_id: String,
    pub target: String,
    pub status: TargetStatus,
}

#[cfg(test)]
mod tests {
    use super::*;

    fn message(targets: &[(&str, DeliveryState)]) -> MessageStatus {
        let mut m = MessageStatus::accepted("t".into(), "m".into(), "ns".into(), 0, 1, []);
        for (name, state) in targets {
            m.targets.insert(
                name.to_string(),
                TargetStatus {
                    state: *state,
                    attempts: 1,
                    last_error: None,
                    updated_at_ms: 1,
                },
            );
        }
        m
    }

    #[test]
    fn a_transaction_is_as_far_as_its_least_advanced_target() {
        use DeliveryState::*;
        let state = |targets: &[(&str, DeliveryState)]| {
            TransactionStatus::new("t".into(), vec![message(targets)]).state
        };
        assert_eq!(
            state(&[("a", Delivered), ("b", Pending)]),
            TransactionState::Pending
        );
        assert_eq!(
            state(&[("a", Retrying), ("b", Pending)]),
            TransactionState::Retrying
        );
        assert_eq!(
            state(&[("a", Delivered), ("b", DeadLettered)]),
            TransactionState::DeadLettered
        );
        assert_eq!(state(&[("a", Delivered)]), TransactionState::Delivered);
        assert_eq!(state(&[]), TransactionState::Delivered);
    }
}
