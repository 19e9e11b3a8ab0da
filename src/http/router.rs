//! The API's routes and the layers every request passes through: request ids, panics
//! answered 500, JSON error bodies, a declared body over the limit refused at once,
//! the request timeout, the body limit, metrics by route, and the [`hygiene`] layers
//! (security headers, CORS, compression).

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::http::HeaderValue;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use tracing::{Instrument, error};

use super::error::{self, ApiError};
use super::state::AppState;
use super::{
    admin, dlq, health, hygiene, ingest, messages, metrics, openapi, request_id, transaction, ui,
};

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let writes = Router::new()
        .route("/api/v1/wal/write", post(ingest::write))
        .route("/api/v1/wal/write/batch", post(ingest::write_batch))
        .layer(hygiene::decompress_requests());
    let reads = Router::new()
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
        .merge(ui::routes())
        .layer(hygiene::compress_answers());
    with_layers(writes.merge(reads), state)
}

/// `routes` behind what every request of the API passes through: metrics by route,
/// the body limit, panics answered 500, the [`envelope`] and CORS.
pub fn with_layers(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let http = &state.service.http;
    let body_limit = usize::try_from(http.max_body_bytes.bytes()).unwrap_or(usize::MAX);
    let limits = Envelope {
        request_timeout: http.request_timeout.get(),
        max_body_bytes: http.max_body_bytes.bytes(),
    };
    let cors = http.cors.clone();
    let routes = routes
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(catch_panics())
        .layer(middleware::from_fn_with_state(limits, envelope));
    hygiene::with_cors(routes, &cors).with_state(state)
}

/// The limits the [`envelope`] keeps.
#[derive(Clone, Copy)]
struct Envelope {
    request_timeout: std::time::Duration,
    max_body_bytes: u64,
}

/// What every request passes through, in this order: it is given its id (the span of
/// its log lines, its error bodies, `X-Request-Id` on its answer); a body whose
/// declared `Content-Length` is over the limit is refused at once, 413, before any of
/// it is read (the body limit itself counts the bytes of a body without one); the
/// request is answered within `[http] request_timeout`: 504 with "durability unknown"
/// once a write began its append (it goes on, and its outcome is kept), else 408
/// (nothing was written; a body that never arrived in full ends here); an error answer
/// is made JSON; the answer gets the security headers, and `Connection: close` when it
/// was given before the request's body was read to its end.
async fn envelope(
    axum::extract::State(limits): axum::extract::State<Envelope>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    let id = request_id::of(request.headers());
    let page = hygiene::is_page(request.uri().path());
    let span = tracing::info_span!("request", request_id = %id, method = %request.method(), path = %request.uri().path());
    let (mut request, body_read) = hygiene::watch_body(request);
    let declared = request
        .headers()
        .get(axum::http::header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok());
    let answer = async move {
        if declared.is_some_and(|length| length > limits.max_body_bytes) {
            return ApiError::BodyTooLarge(limits.max_body_bytes).into_response();
        }
        let progress = crate::source::WriteProgress::default();
        request.extensions_mut().insert(progress.clone());
        let timeout = limits.request_timeout;
        let response = match tokio::time::timeout(timeout, next.run(request)).await {
            Ok(response) => response,
            Err(_) if progress.appended() => ApiError::TimedOut(timeout.as_secs()).into_response(),
            Err(_) => ApiError::RequestTimeout(timeout.as_secs()).into_response(),
        };
        error::as_json(response).await
    };
    let mut response = request_id::scope(id.clone(), answer).instrument(span).await;
    let headers = response.headers_mut();
    hygiene::secure(headers, page);
    hygiene::close_if_unread(headers, body_read.as_deref());
    if let Ok(value) = HeaderValue::from_str(&id) {
        headers.insert(request_id::HEADER, value);
    }
    response
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
            .layer(middleware::from_fn_with_state(
                Envelope {
                    request_timeout: std::time::Duration::from_secs(5),
                    max_body_bytes: 1024,
                },
                envelope,
            ));
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
