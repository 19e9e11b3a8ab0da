//! `GET /api/v1/wal/namespace/{ns}/messages`: a namespace's most recent messages, newest
//! first, as the status page lists them: ids, key, time, size, delay and targets; not
//! the payloads. Behind the admin key, like the DLQ: message ids lead to transaction
//! status.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::QueryRejection;
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use serde::{Deserialize, Serialize};

use super::error::{ApiError, ErrorResponse};
use super::state::AppState;
use crate::message::{
    HEADER_DELIVER_AT, HEADER_MESSAGE_ID, HEADER_PLACE, HEADER_TARGETS, HEADER_TRANSACTION_ID,
};

/// Most messages one request lists.
const MAX_LIMIT: u64 = 1000;

#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct RecentQuery {
    /// How many messages, newest first. Default: 20. Range: 1..=1000.
    #[param(minimum = 1, maximum = 1000)]
    pub limit: Option<u64>,
}

/// One logged message, without its payload.
#[derive(Serialize, utoipa::ToSchema)]
pub struct MessageSummary {
    /// Its offset in the log (on Kafka, in its partition).
    pub offset: u64,
    /// Its partition, on Kafka.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub partition: Option<u32>,
    /// When it was logged (milliseconds since the epoch).
    pub timestamp_ms: u64,
    pub message_id: Option<String>,
    pub transaction_id: Option<String>,
    pub key: Option<String>,
    pub payload_bytes: usize,
    /// When a delayed message is due (milliseconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub deliver_at_ms: Option<u64>,
    /// The targets it was written for, when it named some.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub targets: Option<Vec<String>>,
}

#[utoipa::path(get, path = "/api/v1/wal/namespace/{namespace}/messages", tag = "status",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo"), RecentQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The most recent messages, newest first", body = Vec<MessageSummary>),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 501, response = ErrorResponse), (status = 503, response = ErrorResponse),
    ))]
pub async fn recent(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<RecentQuery>, QueryRejection>,
) -> Result<Json<Vec<MessageSummary>>, ApiError> {
    let (namespace, backend) = state.admin_backend(&name, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::Malformed(e.body_text()))?;
    let limit = query.limit.unwrap_or(20);
    if !(1..=MAX_LIMIT).contains(&limit) {
        return Err(ApiError::Malformed(format!("`limit` is 1 to {MAX_LIMIT}")));
    }
    let records = backend
        .recent(limit as usize)
        .await
        .map_err(|e| super::dlq::backend_error(&namespace, e, "Reading recent messages failed."))?;
    Ok(Json(
        records
            .iter()
            .map(|r| MessageSummary {
                offset: r.offset,
                partition: r
                    .header(HEADER_PLACE)
                    .and_then(|place| place.split_once(':')?.0.parse().ok()),
                timestamp_ms: r.timestamp_ms,
                message_id: r.header(HEADER_MESSAGE_ID).map(str::to_string),
                transaction_id: r.header(HEADER_TRANSACTION_ID).map(str::to_string),
                key: r
                    .key
                    .as_ref()
                    .map(|k| String::from_utf8_lossy(k).into_owned()),
                payload_bytes: r.payload.len(),
                deliver_at_ms: r.header(HEADER_DELIVER_AT).and_then(|d| d.parse().ok()),
                targets: r
                    .header(HEADER_TARGETS)
                    .map(|t| t.split(',').map(str::to_string).collect()),
            })
            .collect(),
    ))
}
