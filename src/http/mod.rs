//! The HTTP API server: [`router`] builds the routes over shared state, [`serve`] starts
//! the namespaces, reloads them on change, and runs until a shutdown signal.
//!
//! Routes: the write routes ([`ingest`]), namespace status and the probes
//! ([`health`]), transaction status ([`transaction`]), metrics as JSON and for
//! Prometheus ([`metrics`]), the DLQ ([`dlq`]), pipelines, reload and plan
//! ([`admin`]), recent messages ([`messages`]), the OpenAPI document and its page
//! ([`openapi`]), the status page ([`ui`]). Every
//! answer carries `X-Request-Id` ([`request_id`]); every error is JSON with a stable
//! code ([`error`]).

pub mod admin;
pub mod auth;
pub mod dlq;
pub mod error;
pub mod health;
pub mod ingest;
pub mod messages;
pub mod metrics;
pub mod openapi;
pub mod request_id;
pub mod server;
pub mod transaction;
pub mod ui;

use std::sync::Arc;

use axum::extract::DefaultBodyLimit;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Router, middleware};
use tracing::{error, info, warn};

use crate::runtime::Namespace;
use crate::runtime::supervisor::{Running, Supervisor};
use crate::runtime::watcher;
use crate::service::ServiceConfig;
use crate::status::StatusStore;
use error::ApiError;

/// What every handler can see.
pub struct AppState {
    pub service: ServiceConfig,
    /// The running namespaces, and reload.
    pub supervisor: Arc<Supervisor>,
    /// Requests answered, by route and status.
    pub http: metrics::HttpCounters,
    /// Set once every namespace of the start-up has started delivering; readiness
    /// answers 200 from then on.
    pub ready: std::sync::atomic::AtomicBool,
}

impl AppState {
    /// State over `status`, with no namespace running yet: [`Supervisor::reload`] or
    /// [`Supervisor::apply`] starts them.
    pub fn new(service: ServiceConfig, status: Arc<StatusStore>) -> Self {
        Self {
            supervisor: Arc::new(Supervisor::new(service.clone(), status)),
            service,
            http: Default::default(),
            ready: Default::default(),
        }
    }

    /// The running namespaces as of now; a request keeps the snapshot it started with.
    pub fn running(&self) -> Arc<Running> {
        self.supervisor.running()
    }

    /// The namespace called `name` and its log, once the request carries the admin key
    /// (the DLQ and message routes: they show what was written).
    pub fn admin_backend(
        &self,
        name: &str,
        headers: &axum::http::HeaderMap,
    ) -> Result<(Arc<Namespace>, Arc<dyn crate::producer::Backend>), ApiError> {
        auth::authorize_admin(headers, &self.service)?;
        let namespace = self.namespace(name)?;
        match namespace.backend.clone() {
            Some(backend) => Ok((namespace, backend)),
            None => Err(ApiError::Unavailable(name.to_string())),
        }
    }

    /// The namespace called `name`, or 404.
    pub fn namespace(&self, name: &str) -> Result<Arc<Namespace>, ApiError> {
        self.running()
            .namespaces
            .get(name)
            .cloned()
            .ok_or_else(|| ApiError::NamespaceNotFound(name.to_string()))
    }
}

/// The API's routes over `state`.
pub fn router(state: Arc<AppState>) -> Router {
    let routes = Router::new()
        .route("/api/v1/wal/write", post(ingest::write))
        .route("/api/v1/wal/write/batch", post(ingest::write_batch))
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
        .route("/metrics", get(metrics::prometheus))
        .route("/api/v1/health", get(health::health))
        .route("/api/v1/health/liveness", get(health::liveness))
        .route("/api/v1/health/readiness", get(health::readiness))
        .merge(openapi::routes())
        .merge(ui::routes());
    with_layers(routes, state)
}

/// `routes` behind what every request of the API passes through: metrics by route,
/// the body limit, the request timeout, panics answered 500 and the request id.
pub fn with_layers(routes: Router<Arc<AppState>>, state: Arc<AppState>) -> Router {
    let body_limit =
        usize::try_from(state.service.http.max_body_bytes.bytes()).unwrap_or(usize::MAX);
    routes
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
        .layer(middleware::from_fn(request_id::assign))
        .with_state(state)
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

/// Whether a write request has begun its append: a request that times out before
/// that wrote nothing, one that times out after may or may not be durable.
#[derive(Clone, Default)]
pub struct WriteProgress(Arc<std::sync::atomic::AtomicBool>);

impl WriteProgress {
    pub fn appending(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    fn appended(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
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
    let progress = WriteProgress::default();
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

/// Loads the pipelines, binds `service.listen` and serves until SIGINT or SIGTERM.
/// The pipelines are reloaded on a change in their directory (when `watch` is on), on
/// SIGHUP and on `POST /api/v1/admin/reload`.
pub async fn serve(service: ServiceConfig) -> anyhow::Result<()> {
    // First: the namespaces about to open take file descriptors too.
    let limits = server::Limits::of(&service);
    let store = StatusStore::open(&service.status_store, &service.data_dir).await?;
    info!(store = store.kind(), "Transaction status store open.");
    let status = Arc::new(store);
    let state = Arc::new(AppState::new(service.clone(), status.clone()));
    let supervisor = state.supervisor.clone();
    supervisor.reload("start").await;
    for n in supervisor.running().namespaces.values() {
        let config = &n.pipeline.config;
        info!(namespace = %config.namespace, backend = config.producer.kind(), targets = config.targets.len(), failure = ?n.unavailable(), "Namespace loaded.");
    }
    let stop_tasks = crate::shutdown::Shutdown::new();
    let mut tasks = vec![
        tokio::spawn(crate::status::expire_periodically(
            status,
            stop_tasks.stopping(),
        )),
        tokio::spawn(reload_on_sighup(supervisor.clone(), stop_tasks.stopping())),
    ];
    if service.watch {
        tasks.push(watcher::spawn(
            supervisor.clone(),
            &service.pipelines_dir,
            service.watch_debounce.get(),
            stop_tasks.stopping(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(service.listen).await?;
    info!(address = %listener.local_addr()?, "Listening.");
    server::run(listener, router(state.clone()), limits, shutdown_signal()).await;
    stop_tasks.stop();
    // A reload in progress ends within its own deadlines; shutdown does not wait
    // longer than its own for it.
    let deadline = tokio::time::Instant::now() + service.shutdown_timeout.get();
    for mut task in tasks {
        if tokio::time::timeout_at(deadline, &mut task).await.is_err() {
            warn!("A background task did not stop in time; it is abandoned.");
            task.abort();
        }
    }
    supervisor.close().await;
    info!("Stopped.");
    Ok(())
}

/// Reloads the pipelines on every SIGHUP until `stop` turns true.
async fn reload_on_sighup(supervisor: Arc<Supervisor>, stop: crate::shutdown::Stopping) {
    let mut hangup = match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()) {
        Ok(hangup) => hangup,
        Err(e) => {
            warn!(error = %e, "Cannot listen for SIGHUP; reload with the admin API.");
            return;
        }
    };
    loop {
        tokio::select! {
            _ = hangup.recv() => { supervisor.reload("signal").await; }
            () = stop.wait() => return,
        }
    }
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
