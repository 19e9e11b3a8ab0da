//! The dead-letter queue routes: `GET /api/v1/wal/namespace/{ns}/dlq` lists entries,
//! `POST /api/v1/wal/namespace/{ns}/dlq/replay` redrives them. Both take the admin key:
//! entries hold payloads.

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use tracing::{error, info};

use super::error::{ApiError, ErrorResponse};
use super::state::AppState;
use crate::consumer::replay::{
    self as dlq, DlqPage, ListQuery, ReplayOutcome, ReplayRequest, ReplayRun,
};
use crate::producer::{Backend, BackendError};
use crate::runtime::Namespace;

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
    let (namespace, backend) = dlq_of(&state, &name, &headers)?;
    let Query(query) = query.map_err(|e| ApiError::Malformed(e.body_text()))?;
    dlq::list(&name, backend.as_ref(), &query)
        .await
        .map(Json)
        .map_err(|e| backend_error(&namespace, e, "Reading the DLQ failed."))
}

#[utoipa::path(post, path = "/api/v1/wal/namespace/{namespace}/dlq/replay", tag = "dlq",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo")),
    request_body = ReplayRequest,
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "What was replayed and what was skipped", body = ReplayOutcome),
        (status = 202, description = "The replay outlasted most of the request timeout and goes on in the background: how far it got (the namespace's status follows it)", body = ReplayRun),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 501, response = ErrorResponse), (status = 503, response = ErrorResponse), (status = 504, response = ErrorResponse),
    ))]
pub async fn replay(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
    headers: HeaderMap,
    request: Result<Json<ReplayRequest>, JsonRejection>,
) -> Result<Response, ApiError> {
    let (namespace, backend) = dlq_of(&state, &name, &headers)?;
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
    let max_replays = namespace.pipeline.config.consumer.dlq.max_replays;
    let (run, task) = namespace
        .kept
        .replays
        .spawn(name.clone(), backend, request, max_replays);
    // Answered with the outcome when the replay ends well within the request timeout;
    // else with how far it got, while it goes on.
    let wait = state.service.http.request_timeout.get().mul_f64(0.75);
    let Ok(ended) = tokio::time::timeout(wait, task).await else {
        info!(namespace = %name, replay = %run.status().id, "DLQ replay goes on in the background.");
        return Ok((StatusCode::ACCEPTED, Json(run.status())).into_response());
    };
    let outcome = ended
        .map_err(|e| BackendError::Unavailable(format!("the replay task ended: {e}")))
        .and_then(|result| result)
        .map_err(|e| backend_error(&namespace, e, "DLQ replay failed."))?;
    Ok(Json(outcome).into_response())
}

/// The namespace and its log, once the request carries the admin key and the backend
/// lists and replays its DLQ (else 501).
fn dlq_of(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
) -> Result<(Arc<Namespace>, Arc<dyn Backend>), ApiError> {
    let (namespace, backend) = state.admin_backend(name, headers)?;
    if !backend.replays_dead_letters() {
        return Err(unsupported(&namespace));
    }
    Ok((namespace, backend))
}

/// 501 for a route the namespace's backend does not serve.
pub(super) fn unsupported(namespace: &Namespace) -> ApiError {
    ApiError::UnsupportedByBackend {
        namespace: namespace.name().to_string(),
        backend: namespace.pipeline.config.producer.kind(),
    }
}

/// A backend's refusal of a DLQ or message route: 501 for what it does not support,
/// else 503 (logged, with `what`).
pub(super) fn backend_error(namespace: &Namespace, e: BackendError, what: &str) -> ApiError {
    if let BackendError::Unsupported(_) = e {
        return unsupported(namespace);
    }
    error!(namespace = %namespace.name(), error = %e, "{what}");
    ApiError::Unavailable(namespace.name().to_string())
}
