//! The probes (health with every namespace's state, liveness, readiness) and one
//! namespace's status.

use std::sync::Arc;

use axum::Json;
use axum::extract::{Path, State};
use serde_json::json;

use super::error::{ApiError, ErrorResponse};
use super::state::AppState;
use crate::runtime::Namespace;

/// Every namespace's state, and the files quarantined for errors.
#[utoipa::path(get, path = "/api/v1/health", tag = "health",
    responses((status = 200, description = "`ok`, or `degraded` when a namespace failed or a file was rejected", body = Object)))]
pub async fn health(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let running = state.running();
    let namespaces: Vec<_> = running.namespaces.values().map(|n| n.health()).collect();
    let all_running = namespaces.iter().all(|n| n["state"] == "running");
    let quarantined: Vec<_> = running
        .quarantined
        .iter()
        .map(|q| q.file.display().to_string())
        .collect();
    let components = &state.supervisor.components;
    let ok = quarantined.is_empty() && all_running && components.failing().is_empty();
    Json(json!({
        "status": if ok { "ok" } else { "degraded" },
        "generation": running.generation,
        "components": components.statuses(),
        "namespaces": namespaces,
        "quarantined_files": quarantined,
    }))
}

/// Whether the process answers.
#[utoipa::path(get, path = "/api/v1/health/liveness", tag = "health",
    responses((status = 200, description = "The process is alive", body = Object)))]
pub async fn liveness() -> Json<serde_json::Value> {
    Json(json!({ "status": "ok" }))
}

/// Whether the service takes traffic.
/// Ready once every healthy namespace delivers; a failed one is not waited for (health
/// reports it). Once ready it stays ready: a namespace that a reload adds or restarts
/// does not take the whole server out of rotation while it starts, and neither does a
/// background part that fails (a delivery that cannot commit, a status store that
/// cannot be written): writes stay durable meanwhile, so taking them away would turn a
/// delivery problem into lost writes upstream. Readiness names each such part under
/// `degraded`, and namespaces whose backend cannot take writes under `unavailable`.
#[utoipa::path(get, path = "/api/v1/health/readiness", tag = "health",
    responses(
        (status = 200, description = "Ready", body = Object),
        (status = 503, description = "Some namespace is still starting", body = Object),
    ))]
pub async fn readiness(
    State(state): State<Arc<AppState>>,
) -> (axum::http::StatusCode, Json<serde_json::Value>) {
    use std::sync::atomic::Ordering;
    let running = state.running();
    let starting: Vec<&str> = running
        .namespaces
        .values()
        .filter(|n| !state.ready.load(Ordering::Acquire) && n.starting())
        .map(|n| n.name())
        .collect();
    // A namespace whose backend is down does not take the server out of rotation
    // (the other namespaces work), but readiness names it.
    let unavailable: Vec<_> = running
        .namespaces
        .values()
        .filter_map(|n| {
            let error = n.unavailable()?;
            Some(json!({ "namespace": n.name(), "backend": n.pipeline.config.producer.kind(), "error": error }))
        })
        .collect();
    let failing = |namespace: Option<&str>, components: &crate::component::Components| {
        components
            .failing()
            .into_iter()
            .map(|c| {
                let status = c.status();
                json!({ "namespace": namespace, "component": c.name(), "state": status.state, "error": status.error })
            })
            .collect::<Vec<_>>()
    };
    let mut degraded = failing(None, &state.supervisor.components);
    for n in running.namespaces.values() {
        degraded.extend(failing(Some(n.name()), &n.kept.components));
    }
    let resources = state.resources.status();
    if !starting.is_empty() {
        return (
            axum::http::StatusCode::SERVICE_UNAVAILABLE,
            Json(
                json!({ "status": "starting", "starting": starting, "unavailable": unavailable, "degraded": degraded, "resources": resources }),
            ),
        );
    }
    state.ready.store(true, Ordering::Release);
    // Out of room for writes, or over its memory: out of rotation until that passes
    // (unlike the parts above, the writes would fail or the process be killed).
    let status = if resources.storage_low {
        "storage_low"
    } else if resources.memory_high {
        "memory_high"
    } else {
        "ready"
    };
    let code = if status == "ready" {
        axum::http::StatusCode::OK
    } else {
        axum::http::StatusCode::SERVICE_UNAVAILABLE
    };
    (
        code,
        Json(json!({
            "status": status,
            "namespaces": running.namespaces.len(),
            "unavailable": unavailable,
            "degraded": degraded,
            "resources": resources,
        })),
    )
}

/// `GET /api/v1/wal/namespace/{ns}/status`: state, backend, log positions, consumer
/// groups' cursors and lag, DLQ depth, pending delayed messages, writes accepted,
/// delivery per target, and the file the namespace comes from.
#[utoipa::path(get, path = "/api/v1/wal/namespace/{namespace}/status", tag = "status",
    params(("namespace" = String, Path, description = "The namespace's name", example = "demo")),
    responses(
        (status = 200, description = "The namespace's state", body = Object),
        (status = 404, response = ErrorResponse),
    ))]
pub async fn namespace_status(
    State(state): State<Arc<AppState>>,
    Path(name): Path<String>,
) -> Result<Json<serde_json::Value>, ApiError> {
    let mut status = status_of(&*state.namespace(&name)?).await;
    status["resources"] = json!(state.resources.status());
    Ok(Json(status))
}

/// `GET /api/v1/wal/namespaces`: every namespace's status at once, with the running
/// generation, the last reload and the quarantined files (what the status page shows).
#[utoipa::path(get, path = "/api/v1/wal/namespaces", tag = "status",
    responses((status = 200, description = "Every namespace's status, the generation, the last reload and the quarantined files", body = Object)))]
pub async fn namespaces(State(state): State<Arc<AppState>>) -> Json<serde_json::Value> {
    let running = state.running();
    let last_reload = state.supervisor.history().last.clone().map(|r| {
        json!({
            "result": r.result.as_str(),
            "trigger": r.trigger,
            "finished_at": r.finished_at,
            "generation": r.generation,
            "failed": r.failed,
            "blocked_by": r.plan.blocked_by.iter().map(|d| json!({
                "file": d.file.display().to_string(), "code": d.code, "message": d.message,
            })).collect::<Vec<_>>(),
        })
    });
    let quarantined: Vec<_> = running
        .quarantined
        .iter()
        .map(|q| {
            let first = q.errors.first();
            json!({
                "file": q.file.display().to_string(),
                "namespace": q.namespace,
                "keeps_running": q.keeps_running,
                "error": first.map(|d| json!({
                    "line": d.line, "column": d.column, "code": d.code, "message": d.message,
                })),
            })
        })
        .collect();
    Json(json!({
        "generation": running.generation,
        "last_reload": last_reload,
        "quarantined": quarantined,
        "namespaces": futures::future::join_all(running.namespaces.values().map(|n| status_of(n))).await,
        "resources": state.resources.status(),
    }))
}

/// One namespace's status.
async fn status_of(namespace: &Namespace) -> serde_json::Value {
    let mut status = namespace.health();
    let config = &namespace.pipeline.config;
    status["description"] = json!(config.description);
    status["file"] = json!(namespace.pipeline.source.path.display().to_string());
    let deliveries = namespace.kept.counters.snapshot();
    let circuits = namespace.circuits();
    let pauses = &namespace.kept.pauses;
    status["paused"] = json!(pauses.get());
    status["targets"] = json!(
        config
            .targets
            .iter()
            .map(|t| json!({
                "name": t.name,
                "type": t.kind.kind(),
                "delivery": deliveries.get(&t.name).cloned().unwrap_or_default(),
                "circuit": circuits.get(&t.name).cloned().unwrap_or_default(),
                "paused": pauses.holds(&t.name),
            }))
            .collect::<Vec<_>>()
    );
    status["writes"] = json!({
        "accepted_messages": namespace.counters.accepted.load(std::sync::atomic::Ordering::Relaxed),
    });
    let replays = namespace.kept.replays.status();
    if !replays.is_empty() {
        status["dlq_replays"] = json!(replays);
    }
    let Some(backend) = &namespace.backend else {
        return status;
    };
    let next = backend.log_position().map(|l| l.next_offset);
    // What the backend cannot tell (yet) is left out; a read that fails shows as
    // the namespace's error elsewhere.
    if let Ok(Some(positions)) = backend.positions().await {
        let mut groups = Vec::new();
        for position in positions.groups {
            let mut shown = json!({ "next_offset": position.next_offset, "lag": position.lag });
            if let Some(commits) = position.commits {
                shown["commits"] = json!(commits);
            }
            // A target's own group shows as that target's position; the delayed
            // messages' reader and the status index as themselves.
            match crate::message::target_of_group(&position.group) {
                Some(target) => {
                    if let Some(target) = status["targets"]
                        .as_array_mut()
                        .and_then(|ts| ts.iter_mut().find(|t| t["name"] == target))
                    {
                        target["position"] = shown;
                    }
                }
                None if position.group == crate::message::TAILER_GROUP => {}
                None if position.group == crate::message::DELAYS_GROUP => {
                    status["delays_reader"] = shown;
                }
                None => {
                    let mut shown = shown;
                    shown["group"] = json!(position.group);
                    groups.push(shown);
                }
            }
        }
        status["consumer_groups"] = json!(groups);
        if let (Some(indexed), Some(next)) = (namespace.status_indexed(), next) {
            let indexed = *indexed.borrow();
            status["status_index"] =
                json!({ "next_offset": indexed, "lag": next.saturating_sub(indexed) });
        }
        if let Some(queue) = positions.queue {
            status["queue"] = json!({
                "approximate": true,
                "visible": queue.visible,
                "in_flight": queue.in_flight,
                "delayed": queue.delayed,
            });
        }
        if let Some(depth) = positions.dlq_depth {
            status["dlq_depth"] = json!(depth);
        }
        if let Some(pending) = positions.delayed_pending {
            status["delayed_pending"] = json!(pending);
        }
    }
    status
}
