//! The HTTP API server: [`router`] builds the routes over shared state, [`serve`] opens
//! every namespace and runs until a shutdown signal.
//!
//! Routes: the write routes ([`ingest`]), namespace status and the probes
//! ([`health`]), transaction status ([`transaction`]), metrics as JSON and for
//! Prometheus ([`metrics`]), the OpenAPI document and its page ([`openapi`]). Every
//! answer carries `X-Request-Id` ([`request_id`]); every error is JSON with a stable
//! code ([`error`]).

pub mod auth;
pub mod dlq;
pub mod error;
pub mod health;
pub mod ingest;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod server;
pub mod transaction;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use tracing::{error, info, warn};

use crate::config::diagnostic::Severity;
use crate::config::service::ServiceConfig;
use crate::config::{self, env};
use crate::runtime::Namespace;
use crate::status::StatusStore;
use error::ApiError;

/// What every handler can see.
pub struct AppState {
    pub service: ServiceConfig,
    /// The namespaces whose files loaded without errors, in file order.
    pub namespaces: Vec<Namespace>,
    /// Files whose errors kept their namespace from loading.
    pub quarantined: Vec<String>,
    /// Requests answered, by route and status.
    pub http: metrics::HttpCounters,
    /// Transaction status, kept by each namespace's status tailer.
    pub status: Arc<StatusStore>,
}

impl AppState {
    /// The namespace called `name`, or 404.
    pub fn namespace(&self, name: &str) -> Result<&Namespace, ApiError> {
        self.namespaces
            .iter()
            .find(|n| n.name() == name)
            .ok_or_else(|| ApiError::NamespaceNotFound(name.to_string()))
    }
}

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let body_limit =
        usize::try_from(state.service.http.max_body_bytes.bytes()).unwrap_or(usize::MAX);
    Router::new()
        .route("/api/v1/wal/write", post(ingest::write))
        .route("/api/v1/wal/write/batch", post(ingest::write_batch))
        .route(
            "/api/v1/wal/namespace/{namespace}/status",
            get(health::namespace_status),
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
        .route("/metrics", get(metrics::prometheus))
        .route("/api/v1/health", get(health::health))
        .route("/api/v1/health/liveness", get(health::liveness))
        .route("/api/v1/health/readiness", get(health::readiness))
        .merge(openapi::routes())
        .fallback(not_found)
        .route_layer(middleware::from_fn_with_state(
            state.clone(),
            metrics::count,
        ))
        .layer(DefaultBodyLimit::max(body_limit))
        .layer(middleware::from_fn_with_state(
            state.service.http.request_timeout.get(),
            limit_time,
        ))
        .layer(catch_panics())
        .layer(middleware::from_fn(request_id::assign))
        .with_state(state)
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

/// Answers 504 when a request takes longer than `[http] request_timeout`: for a write
/// the append may or may not have become durable.
async fn limit_time(
    axum::extract::State(timeout): axum::extract::State<std::time::Duration>,
    request: axum::extract::Request,
    next: middleware::Next,
) -> Response {
    match tokio::time::timeout(timeout, next.run(request)).await {
        Ok(response) => response,
        Err(_) => ApiError::TimedOut(timeout.as_secs()).into_response(),
    }
}

async fn not_found() -> Response {
    ApiError::RouteNotFound.into_response()
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
    let store = StatusStore::open(&service.status_store, &service.data_dir).await?;
    info!(store = store.kind(), "Transaction status store open.");
    let status = Arc::new(store);
    let namespaces: Vec<Namespace> = report
        .pipelines
        .into_iter()
        .map(|p| Namespace::open(p, &service, &status))
        .collect();
    for n in &namespaces {
        let config = &n.pipeline.config;
        info!(namespace = %config.namespace, backend = config.producer.kind(), targets = config.targets.len(), failure = ?n.unavailable(), "Namespace loaded.");
    }
    let state = Arc::new(AppState {
        service: service.clone(),
        namespaces,
        quarantined,
        http: Default::default(),
        status: status.clone(),
    });
    let (stop_expiry, expiry_stopped) = tokio::sync::watch::channel(false);
    let expiry = tokio::spawn(crate::status::expire_periodically(status, expiry_stopped));
    let listener = tokio::net::TcpListener::bind(service.listen).await?;
    info!(address = %listener.local_addr()?, "Listening.");
    server::run(
        listener,
        router(state.clone()),
        service.http.header_read_timeout.get(),
        service.shutdown_timeout.get(),
        shutdown_signal(),
    )
    .await;
    let _ = stop_expiry.send(true);
    let _ = expiry.await;
    for namespace in &state.namespaces {
        namespace.close().await;
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
