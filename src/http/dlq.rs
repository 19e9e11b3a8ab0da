//! The dead-letter queue routes: `GET /api/v1/wal/namespace/{ns}/dlq` lists entries,
//! `POST /api/v1/wal/namespace/{ns}/dlq/replay` redrives them. Both take the admin key:
//! entries hold payloads.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use tracing::{error, info};

use super::AppState;
use super::error::{ApiError, ErrorResponse};
use crate::producer::embedded::blocking;
use crate::runtime::dlq::{self, DlqPage, ListQuery, ReplayOutcome, ReplayRequest};

#[utoipa::path(get, path = "/api/v1/wal/namespace/{namespace}/dlq", tag = "dlq",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo"), ListQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "A page of dead-letter entries", body = DlqPage),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 501, response = ErrorResponse), (status = 503, response = ErrorResponse),
    ))]
pub async fn list(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<DlqPage>, ApiError> {
    let store = state.admin_store(&name, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::Malformed(e.body_text()))?;
    let namespace = name.clone();
    blocking(move || dlq::list(&namespace, &store, &query))
        .await
        .map(Json)
        .map_err(|e| {
            error!(namespace = %name, error = %e, "Reading the DLQ failed.");
            ApiError::Unavailable(name)
        })
}

#[utoipa::path(post, path = "/api/v1/wal/namespace/{namespace}/dlq/replay", tag = "dlq",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo")),
    request_body = ReplayRequest,
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "What was replayed and what was skipped", body = ReplayOutcome),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 501, response = ErrorResponse), (status = 503, response = ErrorResponse), (status = 504, response = ErrorResponse),
    ))]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<Json<ReplayOutcome>, ApiError> {
    let store = state.admin_store(&name, &headers)?;
    let Json(request) = request.map_err(|e| ApiError::Malformed(e.body_text()))?;
    if request
        .rate_per_second
        .is_some_and(|r| r == 0 || r > dlq::MAX_RATE)
    {
        return Err(ApiError::InvalidMessage(format!(
            "`rate_per_second` is 1 to {}",
            dlq::MAX_RATE
        )));
    }
    let max_replays = state
        .namespace(&name)?
        .pipeline
        .config
        .consumer
        .dlq
        .max_replays;
    let outcome = dlq::replay(&name, &store, &request, max_replays)
        .await
        .map_err(|e| {
            error!(namespace = %name, error = %e, "DLQ replay failed.");
            ApiError::Unavailable(name.clone())
        })?;
    info!(namespace = %name, replayed = outcome.replayed.len(), skipped = outcome.skipped.len(), dry_run = outcome.dry_run, "DLQ replay.");
    Ok(Json(outcome))
}
