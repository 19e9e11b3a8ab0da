//! `GET /api/v1/wal/transaction/{id}/status`: the state of each message of a write's
//! transaction, per target.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use tracing::error;

use super::error::{ApiError, ErrorResponse};
use super::state::AppState;
use crate::status::{CatchUp, TransactionStatus};

#[utoipa::path(get, path = "/api/v1/wal/transaction/{id}/status", tag = "status",
    params(("id" = String, Path, description = "The `transaction_id` a write was answered with")),
    responses(
        (status = 200, description = "Each message's state per target", body = TransactionStatus),
        (status = 400, response = ErrorResponse),
        (status = 404, response = ErrorResponse),
        (status = 503, response = ErrorResponse),
    ))]
pub async fn transaction_status(
    State(state): State<Arc<AppState>>,
    Path(id): Path<String>,
) -> Result<Json<TransactionStatus>, ApiError> {
    if uuid::Uuid::parse_str(&id).is_err() {
        return Err(ApiError::Malformed(format!(
            "`{id}` is not a transaction id (a UUID)"
        )));
    }
    let catch_up = state
        .running()
        .namespaces
        .values()
        .filter_map(|n| {
            Some(CatchUp {
                log_end: n.backend.as_ref()?.log_position()?.next_offset,
                indexed: n.status_indexed()?,
            })
        })
        .collect();
    match state.supervisor.status().find(&id, catch_up).await {
        Ok(Some(status)) => Ok(Json(status)),
        Ok(None) => Err(ApiError::TransactionNotFound(id)),
        Err(e) => {
            error!(transaction_id = %id, error = %e, "Status lookup failed.");
            Err(ApiError::StatusUnavailable)
        }
    }
}
