//! `wald serve`: the service's whole life, in order. Open the status store, load the
//! pipelines (each namespace opens its log and starts delivering), start the
//! background tasks (status expiry, reload on SIGHUP and on a change in the pipelines
//! directory), serve the API until SIGINT or SIGTERM, then stop the tasks and close
//! every namespace.

use std::sync::Arc;

use tracing::{info, warn};

use crate::http::server;
use crate::http::tls::Tls;
use crate::http::{AppState, router};
use crate::runtime::supervisor::Supervisor;
use crate::runtime::watcher;
use crate::service::ServiceConfig;
use crate::shutdown::{Shutdown, Stopping};
use crate::status::StatusStore;

/// Loads the pipelines, binds `service.listen` and serves until SIGINT or SIGTERM.
/// The pipelines are reloaded on a change in their directory (when `watch` is on), on
/// SIGHUP and on `POST /api/v1/admin/reload`.
pub async fn run(service: ServiceConfig) -> anyhow::Result<()> {
    // First: the namespaces about to open take file descriptors too.
    let limits = server::Limits::of(&service);
    // Certificates that do not load stop the start before anything opens.
    let tls = service.tls.as_ref().map(Tls::load).transpose()?;
    let store = StatusStore::open(&service.status_store, &service.data_dir).await?;
    info!(store = store.kind(), "Transaction status store open.");
    let status = Arc::new(store);
    let state = Arc::new(AppState::new(service.clone(), status.clone()));
    let supervisor = state.supervisor.clone();
    if let Some(health) = crate::telemetry::traces::health() {
        supervisor.components.add(health);
    }
    supervisor.reload("start").await;
    for n in supervisor.running().namespaces.values() {
        let config = &n.pipeline.config;
        info!(namespace = %config.namespace, backend = config.producer.kind(), targets = config.targets.len(), failure = ?n.unavailable(), "Namespace loaded.");
    }
    let stop_tasks = Shutdown::new();
    let mut tasks = vec![
        tokio::spawn(crate::status::expire_periodically(
            status,
            stop_tasks.stopping(),
        )),
        tokio::spawn(reload_on_sighup(supervisor.clone(), stop_tasks.stopping())),
        state.resources.spawn(stop_tasks.stopping()),
    ];
    if let Some(tls) = &tls {
        let health = supervisor.components.get("tls");
        tasks.push(tls.spawn_reload(health, stop_tasks.stopping()));
    }
    if service.watch {
        tasks.push(watcher::spawn(
            supervisor.clone(),
            &service.pipelines_dir,
            service.watch_debounce.get(),
            stop_tasks.stopping(),
        ));
    }
    let listener = tokio::net::TcpListener::bind(service.listen).await?;
    let scheme = if tls.is_some() { "https" } else { "http" };
    info!(address = %listener.local_addr()?, scheme, "Listening.");
    server::run(
        listener,
        router(state.clone()),
        limits,
        tls,
        shutdown_signal(),
    )
    .await;
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
async fn reload_on_sighup(supervisor: Arc<Supervisor>, stop: Stopping) {
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
