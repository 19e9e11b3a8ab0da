//! What the scenarios serve: wald's real router over pipelines given as text, in this
//! process, and the baselines' handlers.

use std::io::Write as _;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::post;
use wald::http::{AppState, router};
use wald::message::DELIVERY_GROUP;
use wald::pipeline::load_pipeline_set;
use wald::runtime::Namespace;
use wald::service::ServiceConfig;
use wald::status::Store;
use wald::status::embedded::EmbeddedStore;

/// wald's state over `pipelines` (file name, text), data under `service.data_dir`;
/// with none, nothing is loaded yet.
pub async fn wald_state(
    service: ServiceConfig,
    pipelines: &[(&str, String)],
) -> crate::Result<Arc<AppState>> {
    let store = EmbeddedStore::open(
        service.data_dir.join("status.redb"),
        service.status_store.retention.get(),
    )
    .await?;
    let state = AppState::new(service, Arc::new(Store::Embedded(store).into()));
    if pipelines.is_empty() {
        return Ok(Arc::new(state));
    }
    let files = pipelines
        .iter()
        .map(|(name, text)| (PathBuf::from(name), Ok(text.clone().into_bytes())))
        .collect();
    let loaded = state
        .supervisor
        .apply(load_pipeline_set(files, &|_| None), "start")
        .await;
    if loaded.plan.added.len() != pipelines.len() {
        return Err(format!("the bench pipelines did not load: {loaded:?}").into());
    }
    Ok(Arc::new(state))
}

/// wald's state over `pipelines`, data in `dir`, with no bound on in-flight writes.
pub async fn bench_state(dir: &Path, pipelines: &[(&str, String)]) -> crate::Result<Arc<AppState>> {
    let mut service = ServiceConfig {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    service.http.max_in_flight_per_namespace = 100_000;
    wald_state(service, pipelines).await
}

/// The real API over `pipelines`, data in `dir`.
pub async fn wald_router(dir: &Path, pipelines: &[(&str, String)]) -> crate::Result<Router> {
    Ok(router(bench_state(dir, pipelines).await?))
}

/// wald over the one pipeline `text` (namespace `namespace`), data in `dir`, served on
/// a free port: its state, its address and the namespace.
pub async fn serve_pipeline(
    dir: &Path,
    namespace: &str,
    text: String,
) -> crate::Result<(Arc<AppState>, SocketAddr, Arc<Namespace>)> {
    let state = bench_state(dir, &[(&format!("{namespace}.toml"), text)]).await?;
    let address = serve(router(state.clone())).await?;
    let running = state.running().namespaces.get(namespace).cloned();
    let running = running.ok_or("the namespace does not run")?;
    Ok((state, address, running))
}

/// Writes `messages` (each as the batch route takes it) to `namespace` at `address`,
/// 500 a request; a write not answered 202 is an error.
pub async fn write_batches(
    client: &reqwest::Client,
    address: SocketAddr,
    namespace: &str,
    messages: impl Iterator<Item = serde_json::Value>,
) -> crate::Result {
    let messages: Vec<serde_json::Value> = messages.collect();
    for chunk in messages.chunks(500) {
        let status = client
            .post(format!("http://{address}/api/v1/wal/write/batch"))
            .json(&serde_json::json!({"namespace": namespace, "messages": chunk}))
            .send()
            .await?
            .status();
        if status != 202 {
            return Err(format!("a write was answered {status}").into());
        }
    }
    Ok(())
}

/// Waits until namespace `name` has delivered and indexed everything its log holds
/// (its delivery cursor and its status index at the log's end), so that a round starts
/// with no work left over from the one before; how long that took.
pub async fn settle(state: &AppState, name: &str) -> crate::Result<Duration> {
    caught_up(state, name, true).await
}

/// Waits until namespace `name`'s status index is at its log's end (delivery aside).
pub async fn indexed(state: &AppState, name: &str) -> crate::Result<Duration> {
    caught_up(state, name, false).await
}

async fn caught_up(state: &AppState, name: &str, delivery: bool) -> crate::Result<Duration> {
    const LIMIT: Duration = Duration::from_secs(120);
    let started = Instant::now();
    let namespace = state
        .running()
        .namespaces
        .get(name)
        .cloned()
        .ok_or("no such namespace")?;
    let backend = namespace
        .backend
        .as_ref()
        .ok_or("the namespace did not open")?;
    loop {
        let end = backend
            .log_position()
            .ok_or("not on the embedded log")?
            .next_offset;
        let positions = backend
            .positions()
            .await?
            .ok_or("not on the embedded log")?;
        let delivered = !delivery
            || positions
                .groups
                .iter()
                .any(|g| g.group == DELIVERY_GROUP && g.next_offset >= end);
        let indexed = namespace
            .status_indexed()
            .is_none_or(|indexed| *indexed.borrow() >= end);
        if delivered && indexed {
            return Ok(started.elapsed());
        }
        if started.elapsed() > LIMIT {
            return Err(format!("namespace `{name}` did not catch up within {LIMIT:?}").into());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
}

/// Answers 202 like a write does, with fresh ids, without appending anything.
async fn accept_without_appending(_body: axum::body::Bytes) -> impl IntoResponse {
    let id = uuid::Uuid::now_v7().to_string();
    (
        StatusCode::ACCEPTED,
        axum::Json(
            serde_json::json!({"message_id": id, "transaction_id": id, "durability": "durable"}),
        ),
    )
}

/// wald's server with a write route that answers without appending: every layer a
/// request passes in wald (request id, timeout, metrics, body limit), none of the work.
pub fn same_server_router(state: Arc<AppState>) -> Router {
    let routes = Router::new().route("/api/v1/wal/write", post(accept_without_appending));
    wald::http::with_layers(routes, state)
}

/// A bare axum router with the same handler and no layers.
pub fn bare_router() -> Router {
    Router::new().route("/api/v1/wal/write", post(accept_without_appending))
}

/// Appends each body and syncs it before answering, one request at a time.
pub fn fdatasync_router(path: &Path) -> crate::Result<Router> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let log = Arc::new(Mutex::new((file, 0u64)));
    Ok(Router::new().route(
        "/api/v1/wal/write",
        post(move |body: axum::body::Bytes| {
            let log = log.clone();
            async move {
                let written = tokio::task::spawn_blocking(move || {
                    let mut guard = log.lock().unwrap_or_else(|e| e.into_inner());
                    let (file, position) = &mut *guard;
                    file.write_all_at(&body, *position)?;
                    file.sync_data()?;
                    *position += body.len() as u64;
                    Ok::<_, std::io::Error>(())
                })
                .await;
                let id = uuid::Uuid::now_v7().to_string();
                match written {
                    Ok(Ok(())) => (
                        StatusCode::ACCEPTED,
                        axum::Json(serde_json::json!({"message_id": id, "transaction_id": id, "durability": "durable"})),
                    ),
                    _ => (StatusCode::SERVICE_UNAVAILABLE, axum::Json(serde_json::json!({}))),
                }
            }
        }),
    ))
}

/// Serves `app` on a free port of this runtime.
pub async fn serve(app: Router) -> crate::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

/// Serves `app` on a free port with wald's own accept loop (header-read timeout,
/// graceful shutdown), as `wald serve` does.
pub async fn serve_as_wald(app: Router) -> crate::Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let limits = wald::http::server::Limits {
        drain: Duration::from_secs(1),
        ..wald::http::server::Limits::of(&ServiceConfig::default())
    };
    tokio::spawn(wald::http::server::run(
        listener,
        app,
        limits,
        None,
        std::future::pending(),
    ));
    Ok(address)
}

/// A `redis-server` of the suite's own on a free port, files in `dir`, stopped when
/// dropped; `args` set its persistence. None when Redis is not installed.
pub struct PrivateRedis {
    pub port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    pub fn start(dir: &Path, args: &[&str]) -> crate::Result<Option<Self>> {
        if std::process::Command::new("redis-benchmark")
            .arg("--version")
            .output()
            .is_err()
        {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let Ok(child) = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
            ])
            .args(args)
            .arg("--dir")
            .arg(dir)
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
        else {
            return Ok(None);
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Self { port, child }))
    }

    /// `redis-benchmark` XADD of `value_bytes`-byte values from `clients` connections,
    /// sized to last about `seconds`: requests per second and latency.
    pub fn xadd(
        &self,
        clients: usize,
        value_bytes: usize,
        seconds: u64,
    ) -> crate::Result<crate::report::Sample> {
        let probe = self.xadd_requests(clients, value_bytes, 5000)?;
        self.xadd_requests(
            clients,
            value_bytes,
            ((probe.value * seconds as f64) as u64).max(5000),
        )
    }

    fn xadd_requests(
        &self,
        clients: usize,
        value_bytes: usize,
        requests: u64,
    ) -> crate::Result<crate::report::Sample> {
        let value = "x".repeat(value_bytes);
        let output = std::process::Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-c",
                &clients.to_string(),
                "-n",
                &requests.to_string(),
                "-P",
                "1",
                "--csv",
            ])
            .args(["XADD", "wald-bench-baseline", "*", "p", &value])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        let fields: Vec<f64> = text
            .lines()
            .last()
            .unwrap_or_default()
            .split(',')
            .skip(1)
            .filter_map(|f| f.trim_matches('"').parse().ok())
            .collect();
        if fields.len() < 6 {
            return Err(format!("unexpected redis-benchmark output: {text}").into());
        }
        Ok(crate::report::Sample {
            value: fields[0],
            p50_ms: Some(fields[3]),
            p99_ms: Some(fields[5]),
        })
    }

    /// The server's process id.
    pub fn pid(&self) -> u32 {
        self.child.id()
    }

    /// Empties the server between rounds.
    pub fn flush(&self) -> crate::Result {
        let mut stream = std::net::TcpStream::connect(("127.0.0.1", self.port))?;
        stream.write_all(b"FLUSHALL\r\n")?;
        let mut answer = [0u8; 5];
        std::io::Read::read_exact(&mut stream, &mut answer)?;
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
