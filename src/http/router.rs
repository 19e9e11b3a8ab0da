//! The API's routes and the layers every request passes through: request ids, panics
//! answered 500, JSON error bodies, a declared body over the limit refused at once,
//! the request timeout, the body limit, metrics by route, and the [`hygiene`] layers
//! (security headers, CORS, compression).

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use tracing::error;

use super::error::{self, ApiError};
use super::state::AppState;
use super::{
    admin, dlq, health, hygiene, ingest, messages, metrics, openapi, request_id, transaction, ui,
};

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route(
            "/api/v1/wal/write",
            post(ingest::write).layer(hygiene::decompress_requests()),
        )
        .route(
            "/api/v1/wal/write/batch",
            post(ingest::write_batch).layer(hygiene::decompress_requests()),
        )
        .route("/api/v1/wal/namespaces", get(health::namespaces))
        .route(
            "/api/v1/wal/namespace/{namespace}/status",
            get(health::namespace_status),
        )
        .route(
            "/api/v1/wal/namespace/{namespace}/messages",
            get(messages::recent),
        )
        .route(
            "/api/v1/wal/namespace/{namespace}/metrics",
            get(metrics::namespace_metrics),
        )
        .route("/api/v1/wal/namespace/{namespace}/dlq", get(dlq::list))
        .route(
            "/api/v1/wal/namespace/{namespace}/dlq/replay",
            post(dlq::replay),
        )
        .route(
            "/api/v1/wal/transaction/{id}/status",
            get(transaction::transaction_status),
        )
        .route("/api/v1/admin/pipelines", get(admin::pipelines))
        .route("/api/v1/admin/reload", post(admin::reload))
        .route("/api/v1/admin/plan", post(admin::plan))
        .route(
            "/api/v1/admin/namespaces/{namespace}/pause",
            post(admin::pause),
        )
        .route(
            "/api/v1/admin/namespaces/{namespace}/resume",
            post(admin::resume),
        )
        .route("/metrics", get(metrics::prometheus))
        .route("/api/v1/health", get(health::health))
        .route("/api/v1/health/liveness", get(health::liveness))
        .route("/api/v1/health/readiness", get(health::readiness))
        .merge(openapi::routes())
        .merge(ui::routes());
    with_layers(routes, state)
}

/// `routes` behind what every request of the API passes through: metrics by route,
/// the body limit, the request timeout, panics answered 500, the request id, the
/// security headers, CORS and compressed answers.
pub fn with_layers(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let body_limit =
        usize::try_from(state.service.http.max_body_bytes.bytes()).unwrap_or(usize::MAX);
    let cors = state.service.http.cors.clone();
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.service.http.request_timeout.get(),
            limit_time,
        ))
        .layer(middleware::from_fn_with_state(
            state.service.http.max_body_bytes.bytes(),
            refuse_declared_large_bodies,
        ))
        .layer(catch_panics())
        .layer(middleware::from_fn(error::json_errors))
        .layer(middleware::from_fn(request_id::assign));
    hygiene::layers(routes, &cors).with_state(state)
}

/// Refuses a body whose declared `Content-Length` is over the limit at once, 413,
/// before any of it is read (the body limit itself counts the bytes as they come, for
/// a body without a declared length).
async fn refuse_declared_large_bodies(
    axum::extract::State(limit): axum::extract::State<u64>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    match declared {
        Some(length) if length > limit => ApiError::BodyTooLarge(limit).into_response(),
        _ => next.run(request).await,
    }
}

/// A handler that panics is a bug; its request is still answered, 500
/// `internal_error` with the request id, and the panic is logged with that id, instead
/// of the connection being dropped with no answer.
fn catch_panics()
-> tower_http::catch_panic::CatchPanicLayer<fn(Box<dyn std::any::Any + Send>) -> Response> {
    fn answer(panic: Box<dyn std::any::Any + Send>) -> Response {
        let what = panic
            .downcast_ref::<String>()
            .map(String::as_str)
            .or_else(|| panic.downcast_ref::<&str>().copied())
            .unwrap_or("a panic");
        error!(panic = what, "A request handler panicked.");
        ApiError::Internal.into_response()
    }
    tower_http::catch_panic::CatchPanicLayer::custom(answer as fn(_) -> _)
}

/// Answers when a request takes longer than `[http] request_timeout`: 504 with
/// "durability unknown" once a write began its append (it goes on, and its outcome
/// is kept), else 408 (nothing was written; a body that never arrived in full ends
/// here).
async fn limit_time(
    axum::extract::State(timeout): axum::extract::State<std::time::Duration>,
    mut request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let progress = crate::source::WriteProgress::default();
    request.extensions_mut().insert(progress.clone());
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) if progress.appended() => ApiError::TimedOut(timeout.as_secs()).into_response(),
        Err(_) => ApiError::RequestTimeout(timeout.as_secs()).into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
}

async fn method_not_allowed(method: axum::http::Method) -> Response {
    ApiError::MethodNotAllowed(method.to_string()).into_response()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_panicking_handler_is_answered_500_with_its_request_id()
    -> Result<(), Box<dyn std::error::Error>> {
        async fn boom() -> &'static str {
            panic!("boom")
        }
        let app = Router::new()
            .route("/boom", get(boom))
            .layer(catch_panics())
            .layer(middleware::from_fn(request_id::assign));
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
        let address = listener.local_addr()?;
        tokio::spawn(async move { axum::serve(listener, app).await });
        let response = reqwest::Client::new()
            .get(format!("http://{address}/boom"))
            .header("x-request-id", "req-7")
            .send()
            .await?;
        assert_eq!(response.status(), 500);
        let body: serde_json::Value = response.json().await?;
        assert_eq!(body["error"]["code"], "internal_error");
        assert_eq!(body["error"]["request_id"], "req-7");
        Ok(())
    }
}
