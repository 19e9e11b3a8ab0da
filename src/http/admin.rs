//! The admin routes, behind the admin key: `GET /api/v1/admin/pipelines` (what runs,
//! from which file, and every file's errors), `POST /api/v1/admin/reload` (reload now
//! and answer what it did) and `POST /api/v1/admin/plan` (what a reload of the files
//! sent would do, changing nothing), and `POST /api/v1/admin/namespaces/{ns}/pause` and
//! `.../resume` (a namespace's delivery, or one target's).

use std::sync::Arc;

use axum::Json;
use axum::extract::rejection::{JsonRejection, QueryRejection};
use axum::extract::{Path, Query, State};
use axum::http::HeaderMap;
use base64::Engine;
use serde::{Deserialize, Serialize};

use tracing::{error, info, warn};

use super::auth::authorize_admin;
use super::error::{ApiError, ErrorResponse};
use super::state::AppState;
use crate::config::diagnostic::Diagnostic;
use crate::config::env;
use crate::consumer::pause::Paused;
use crate::pipeline::diff::{Plan, Quarantined, config_hash};
use crate::pipeline::load_pipeline_set;
use crate::runtime::supervisor::{ReloadOutcome, ReloadResult};

/// `GET /api/v1/admin/pipelines`.
#[derive(Serialize, utoipa::ToSchema)]
pub struct Pipelines {
    /// The generation running now.
    pub generation: u64,
    pub namespaces: Vec<PipelineState>,
    /// Files the last reload rejected.
    pub quarantined: Vec<Quarantined>,
    /// Reloads since start, by result (`ok`, `partial`, `blocked`).
    #[schema(value_type = Object)]
    pub reloads: serde_json::Map<String, serde_json::Value>,
    /// What the last reload did.
    #[schema(value_type = Option<ReloadOutcome>)]
    pub last_reload: Option<Arc<ReloadOutcome>>,
}

/// One namespace as it runs.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PipelineState {
    pub namespace: String,
    /// The file it was loaded from.
    pub file: String,
    /// `running`; `quarantined` (its file has errors now: it runs on its last good
    /// configuration); `failed` (its log or its delivery is down).
    pub state: &'static str,
    pub backend: &'static str,
    /// A hash of the configuration it runs (secrets included through fingerprints).
    pub config_hash: String,
    /// The first error of its quarantined file, with file, line and column.
    #[schema(value_type = Object)]
    #[serde(skip_serializing_if = "Option::is_none")]
    pub file_error: Option<Diagnostic>,
    /// Why it failed, when it did.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

#[utoipa::path(get, path = "/api/v1/admin/pipelines", tag = "admin",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "The running generation, each namespace's state and the quarantined files", body = Pipelines),
        (status = 401, response = ErrorResponse), (status = 403, response = ErrorResponse),
    ))]
pub async fn pipelines(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Pipelines>, ApiError> {
    authorize_admin(&headers, &state.service)?;
    let running = state.running();
    let namespaces = running
        .namespaces
        .values()
        .map(|n| {
            let quarantine = running.quarantine_of(n.name());
            let error = n.unavailable().or_else(|| n.delivery_failure());
            PipelineState {
                namespace: n.name().to_string(),
                file: n.pipeline.source.path.display().to_string(),
                state: match (&error, quarantine) {
                    (Some(_), _) => "failed",
                    (None, Some(_)) => "quarantined",
                    (None, None) => "running",
                },
                backend: n.pipeline.config.producer.kind(),
                config_hash: config_hash(&n.pipeline.config),
                file_error: quarantine.and_then(|q| q.errors.first().cloned()),
                error,
            }
        })
        .collect();
    let history = state.supervisor.history();
    let reloads = ReloadResult::ALL
        .iter()
        .zip(history.counts)
        .map(|(result, count)| (result.as_str().to_string(), count.into()))
        .collect();
    Ok(Json(Pipelines {
        generation: running.generation,
        namespaces,
        quarantined: running.quarantined.clone(),
        reloads,
        last_reload: history.last.clone(),
    }))
}

#[utoipa::path(post, path = "/api/v1/admin/reload", tag = "admin",
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "What the reload did: generation, added, changed, removed, quarantined files with their errors, changes that failed to build", body = ReloadOutcome),
        (status = 401, response = ErrorResponse), (status = 403, response = ErrorResponse),
    ))]
pub async fn reload(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
) -> Result<Json<Arc<ReloadOutcome>>, ApiError> {
    authorize_admin(&headers, &state.service)?;
    Ok(Json(state.supervisor.reload("api").await))
}

/// `POST /api/v1/admin/plan`: the pipeline files a reload would see.
#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanRequest {
    /// Every file of the pipelines directory as it would be: namespaces of files not
    /// listed are shown as removed.
    pub files: Vec<PlanFile>,
}

#[derive(Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct PlanFile {
    /// The file's name in the pipelines directory, such as `orders.toml`.
    pub name: String,
    /// The file's bytes, base64-encoded.
    pub content_base64: String,
}

/// What a reload of the files sent would do.
#[derive(Serialize, utoipa::ToSchema)]
pub struct PlanAnswer {
    /// The generation the plan was made against.
    pub generation: u64,
    #[serde(flatten)]
    pub plan: Plan,
}

#[utoipa::path(post, path = "/api/v1/admin/plan", tag = "admin",
    request_body = PlanRequest,
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "Per namespace: added, changed (which keys, secrets as fingerprints, whether the consumer restarts), removed; every file's errors", body = PlanAnswer),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse),
    ))]
pub async fn plan(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    request: Result<Json<PlanRequest>, JsonRejection>,
) -> Result<Json<PlanAnswer>, ApiError> {
    authorize_admin(&headers, &state.service)?;
    let Json(request) = request.map_err(|e| ApiError::Malformed(e.body_text()))?;
    if request.files.is_empty() {
        return Err(ApiError::Malformed(
            "`files` is empty: send every pipeline file the directory would hold".into(),
        ));
    }
    let mut files = Vec::with_capacity(request.files.len());
    for file in request.files {
        let plain = !file.name.contains(['/', '\\']) && !file.name.starts_with('.');
        if !plain || !file.name.ends_with(".toml") {
            return Err(ApiError::Malformed(format!(
                "`{}` is not a pipeline file name: give a name such as `orders.toml`, without a directory",
                file.name
            )));
        }
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(file.content_base64.as_bytes())
            .map_err(|e| {
                ApiError::Malformed(format!("`content_base64` of `{}`: {e}", file.name))
            })?;
        files.push((state.service.pipelines_dir.join(&file.name), Ok(bytes)));
    }
    files.sort_by(|a, b| a.0.cmp(&b.0));
    if let Some(twice) = files.windows(2).find(|w| w[0].0 == w[1].0) {
        return Err(ApiError::Malformed(format!(
            "`{}` is sent twice",
            twice[0].0.display()
        )));
    }
    let report = load_pipeline_set(files, &env::process_env);
    let generation = state.running().generation;
    Ok(Json(PlanAnswer {
        generation,
        plan: state.supervisor.plan(report),
    }))
}

/// Which target to pause or resume: none for the namespace's whole delivery.
#[derive(Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct PauseQuery {
    /// A target of the namespace; without it, the namespace's whole delivery.
    pub target: Option<String>,
}

#[utoipa::path(post, path = "/api/v1/admin/namespaces/{namespace}/pause", tag = "admin",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo"), PauseQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "What is paused now, kept durably: ingest goes on, messages wait in the log", body = Paused),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 503, response = ErrorResponse),
    ))]
pub async fn pause(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    query: Result<Query<PauseQuery>, QueryRejection>,
) -> Result<Json<Paused>, ApiError> {
    set_paused(&state, &headers, &namespace, query, true).await
}

#[utoipa::path(post, path = "/api/v1/admin/namespaces/{namespace}/resume", tag = "admin",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo"), PauseQuery),
    security(("api_key" = []), ("bearer" = [])),
    responses(
        (status = 200, description = "What is paused now: what waited is delivered in order", body = Paused),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 503, response = ErrorResponse),
    ))]
pub async fn resume(
    State(state): State<Arc<AppState>>,
    headers: HeaderMap,
    Path(namespace): Path<String>,
    query: Result<Query<PauseQuery>, QueryRejection>,
) -> Result<Json<Paused>, ApiError> {
    set_paused(&state, &headers, &namespace, query, false).await
}

async fn set_paused(
    state: &AppState,
    headers: &HeaderMap,
    name: &str,
    query: Result<Query<PauseQuery>, QueryRejection>,
    paused: bool,
) -> Result<Json<Paused>, ApiError> {
    authorize_admin(headers, &state.service)?;
    let Query(PauseQuery { target }) = query.map_err(|e| ApiError::Malformed(e.body_text()))?;
    let namespace = state.namespace(name)?;
    if let Some(target) = &target
        && !namespace
            .pipeline
            .config
            .targets
            .iter()
            .any(|t| &t.name == target)
    {
        return Err(ApiError::TargetNotFound {
            namespace: name.to_string(),
            target: target.clone(),
        });
    }
    let pauses = namespace.kept.pauses.clone();
    let which = target.clone();
    let now = tokio::task::spawn_blocking(move || pauses.set(which.as_deref(), paused))
        .await
        .map_err(|_| ApiError::Internal)?
        .map_err(|e| {
            error!(namespace = %name, error = %e, "Keeping a pause failed.");
            ApiError::Unavailable(name.to_string())
        })?;
    let target = target.as_deref().unwrap_or("*");
    if paused {
        warn!(namespace = %name, target, "Delivery paused.");
    } else {
        info!(namespace = %name, target, "Delivery resumed.");
    }
    Ok(Json(now))
}
