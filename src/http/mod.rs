//! The HTTP API server: [`router`] builds the routes over shared state, [`serve`] binds
//! the listener and runs until a shutdown signal.
//!
//! Today it serves the health probes over the loaded pipelines; ingest, status, admin
//! and DLQ routes are added here as the runtime lands.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::{error, info, warn};

use crate::config::diagnostic::Severity;
use crate::config::service::ServiceConfig;
use crate::config::{self, LoadedPipeline, env};

/// What every handler can see.
pub struct AppState {
    /// The namespaces that loaded without errors, in file order.
    pub pipelines: Vec<LoadedPipeline>,
    /// Files whose errors kept their namespace from loading.
    pub quarantined: Vec<String>,
}

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    Router::new()
        .route("/api/v1/health", get(health))
        .route("/api/v1/health/liveness", get(liveness))
        .route("/api/v1/health/readiness", get(readiness))
        .fallback(not_found)
        .with_state(state)
}

async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let namespaces: Vec<_> = state
        .pipelines
        .iter()
        .map(|p| json!({ "namespace": p.config.namespace, "backend": p.config.producer.kind() }))
        .collect();
    Json(json!({
        "status": if state.quarantined.is_empty() { "ok" } else { "degraded" },
        "namespaces": namespaces,
        "quarantined_files": state.quarantined,
    }))
}

async fn liveness() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readiness(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ready", "namespaces": state.pipelines.len() }))
}

async fn not_found() -> Response {
    let body = json!({ "error": { "code": "route_not_found", "message": "no such route" } });
    (StatusCode::NOT_FOUND, Json(body)).into_response()
}

/// Loads the pipelines, binds `service.listen` and serves until SIGINT or SIGTERM.
pub async fn serve(service: ServiceConfig) -> anyhow::Result<()> {
    let report = config::load_pipelines(
        std::slice::from_ref(&service.pipelines_dir),
        &env::process_env,
    );
    let mut quarantined = Vec::new();
    for d in &report.diagnostics {
        let place = format!(
            "{}:{}:{}",
            d.file.display(),
            d.line.unwrap_or(0),
            d.column.unwrap_or(0)
        );
        match d.severity {
            Severity::Error => {
                error!(file = %place, code = %d.code, "Pipeline file rejected: {}", d.message);
                quarantined.push(d.file.display().to_string());
            }
            Severity::Warning => warn!(file = %place, code = %d.code, "{}", d.message),
        }
    }
    quarantined.dedup();
    for p in &report.pipelines {
        info!(namespace = %p.config.namespace, backend = p.config.producer.kind(), targets = p.config.targets.len(), "Namespace loaded.");
    }
    let state = Arc::new(AppState {
        pipelines: report.pipelines,
        quarantined,
    });
    let listener = tokio::net::TcpListener::bind(service.listen).await?;
    info!(address = %listener.local_addr()?, "Listening.");
    axum::serve(listener, router(state))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    info!("Stopped.");
    Ok(())
}

async fn shutdown_signal() {
    let ctrl_c = tokio::signal::ctrl_c();
    let mut term = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(term) => term,
        Err(e) => {
            warn!(error = %e, "Cannot listen for SIGTERM; only Ctrl-C stops the server.");
            let _ = ctrl_c.await;
            return;
        }
    };
    tokio::select! {
        _ = ctrl_c => {},
        _ = term.recv() => {},
    }
    info!("Shutting down.");
}
