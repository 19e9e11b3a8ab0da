//! The HTTP API server: [`router`] builds the routes over shared state, [`serve`] binds
//! the listener and runs until a shutdown signal.
//!
//! Today it opens every namespace's storage (recovering the embedded logs) and serves
//! the health probes; ingest, status, admin and DLQ routes are added here as the
//! runtime lands.

use std::sync::Arc;

use axum::extract::State;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;
use tracing::{error, info, warn};

use crate::backend::BackendConfig;
use crate::backend::embedded::NamespaceStore;
use crate::config::diagnostic::Severity;
use crate::config::service::ServiceConfig;
use crate::config::{self, LoadedPipeline, env};

/// What every handler can see.
pub struct AppState {
    /// The namespaces whose files loaded without errors, in file order.
    pub namespaces: Vec<Namespace>,
    /// Files whose errors kept their namespace from loading.
    pub quarantined: Vec<String>,
}

/// A namespace as the server runs it.
pub struct Namespace {
    pub pipeline: LoadedPipeline,
    /// Its storage, when its backend is the embedded log and the log opened.
    pub store: Option<NamespaceStore>,
    /// Why it does not run, if it does not.
    pub failure: Option<String>,
}

impl Namespace {
    /// Opens the namespace's storage; a failure (corruption found by recovery) keeps
    /// this namespace down and leaves the others alone.
    fn open(pipeline: LoadedPipeline, data_dir: &std::path::Path) -> Self {
        let (store, failure) = match &pipeline.config.producer {
            BackendConfig::Embedded(config) => {
                match NamespaceStore::open(data_dir, &pipeline.config.namespace, config) {
                    Ok(store) => (Some(store), None),
                    Err(e) => {
                        error!(namespace = %pipeline.config.namespace, error = %e, "Namespace failed to open its log.");
                        (None, Some(e.to_string()))
                    }
                }
            }
            other => (
                None,
                Some(format!(
                    "the {} backend is not available in this version",
                    other.kind()
                )),
            ),
        };
        Self {
            pipeline,
            store,
            failure,
        }
    }

    /// `running` or `failed`, and why.
    fn state(&self) -> (&'static str, Option<String>) {
        let failure = self
            .failure
            .clone()
            .or_else(|| self.store.as_ref().and_then(|s| s.log.failure()));
        match failure {
            Some(reason) => ("failed", Some(reason)),
            None => ("running", None),
        }
    }

    fn health(&self) -> serde_json::Value {
        let (state, error) = self.state();
        let mut health = json!({
            "namespace": self.pipeline.config.namespace,
            "backend": self.pipeline.config.producer.kind(),
            "state": state,
        });
        if let Some(error) = error {
            health["error"] = json!(error);
        }
        if let Some(store) = &self.store {
            health["log"] = json!({
                "first_offset": store.log.first_offset(),
                "next_offset": store.log.committed().next_offset,
                "segments": store.log.segment_paths().len(),
            });
        }
        health
    }
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
    let namespaces: Vec<_> = state.namespaces.iter().map(Namespace::health).collect();
    let all_running = namespaces.iter().all(|n| n["state"] == "running");
    Json(json!({
        "status": if state.quarantined.is_empty() && all_running { "ok" } else { "degraded" },
        "namespaces": namespaces,
        "quarantined_files": state.quarantined,
    }))
}

async fn liveness() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

async fn readiness(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ready", "namespaces": state.namespaces.len() }))
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
    let namespaces: Vec<Namespace> = report
        .pipelines
        .into_iter()
        .map(|p| Namespace::open(p, &service.data_dir))
        .collect();
    for n in &namespaces {
        let config = &n.pipeline.config;
        info!(namespace = %config.namespace, backend = config.producer.kind(), targets = config.targets.len(), state = n.state().0, "Namespace loaded.");
    }
    let state = Arc::new(AppState {
        namespaces,
        quarantined,
    });
    let listener = tokio::net::TcpListener::bind(service.listen).await?;
    info!(address = %listener.local_addr()?, "Listening.");
    axum::serve(listener, router(state.clone()))
        .with_graceful_shutdown(shutdown_signal())
        .await?;
    for store in state.namespaces.iter().filter_map(|n| n.store.as_ref()) {
        store.log.clone().close().await;
        store.dlq.clone().close().await;
    }
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
