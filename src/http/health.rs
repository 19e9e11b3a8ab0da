//! The probes: health (every namespace's state), liveness and readiness.

use std::sync::Arc;

use axum::Json;
use axum::extract::State;
use serde_json::json;

use super::AppState;
use crate::runtime::Namespace;

pub async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let namespaces: Vec<_> = state.namespaces.iter().map(Namespace::health).collect();
    let all_running = namespaces.iter().all(|n| n["state"] == "running");
    Json(json!({
        "status": if state.quarantined.is_empty() && all_running { "ok" } else { "degraded" },
        "namespaces": namespaces,
        "quarantined_files": state.quarantined,
    }))
}

pub async fn liveness() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

pub async fn readiness(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    Json(json!({ "status": "ready", "namespaces": state.namespaces.len() }))
}
