//! Benchmark of HTTP writes, with its baselines served side by side in the same run and
//! measured alternately (A B C A B C ...), medians reported with their spread:
//!
//! - wald: `POST /api/v1/wal/write` of a 256-byte payload to a public namespace on the
//!   embedded log, answered 202 once durable (group commit, `sync = "always"`);
//! - (a) the same route on a bare axum handler that answers 202 without appending;
//! - (b) a handler that appends the body with one write plus `fdatasync` per request.
//!
//! Plus the batch route (100 messages a request), in records per second.
//!
//! The load comes from `wrk` (Debian package `wrk`) over N keep-alive connections, so
//! that enough requests are in flight for group commit to share each sync.
//!
//! `cargo bench --bench http_ingest` (3 rounds of 3 s, 64 connections)
//! `cargo bench --bench http_ingest -- --full` (5 rounds of 5 s, 64 and 256 connections)

use std::io::Write;
use std::net::SocketAddr;
use std::os::unix::fs::FileExt;
use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use wald::config::load_pipeline_set;
use wald::http::{AppState, router};
use wald::status::StatusStore;
use wald::status::embedded::EmbeddedStore;

/// The allocator of the `wald` binary, so that the server measured is the one shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const PIPELINE: &str = "namespace = \"bench\"\n[source]\ntype = \"http\"\npublic = true\n\
                        [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"out.jsonl\"\n";

#[derive(Clone, Copy, Default)]
struct Sample {
    requests_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
}

fn main() -> Result {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    let (rounds, seconds) = if full { (5, 5) } else { (3, 3) };
    let connection_counts: &[usize] = if full { &[64, 256] } else { &[64] };
    if Command::new("wrk").arg("--version").output().is_err() {
        println!("not measured: wrk is not installed (apt-get install wrk)");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir_in(".")?;
    let _guard = runtime.enter();
    let wald = runtime.block_on(async { serve(wald_router(scratch.path()).await?).await })?;
    let bare = runtime.block_on(serve(bare_router()))?;
    let naive = runtime.block_on(serve(fdatasync_router(&scratch.path().join("naive.log"))?))?;

    let payload = format!("\"{}\"", "x".repeat(254));
    let single = format!("{{\"namespace\":\"bench\",\"payload\":{payload}}}");
    let batch = format!(
        "{{\"namespace\":\"bench\",\"messages\":[{}]}}",
        vec![format!("{{\"payload\":{payload}}}"); 100].join(",")
    );
    let single_script = lua_script(scratch.path(), "single", &single)?;
    let batch_script = lua_script(scratch.path(), "batch", &batch)?;

    for &connections in connection_counts {
        println!(
            "\nHTTP writes of 256-byte payloads, {connections} keep-alive connections, {rounds} rounds of {seconds} s, alternating"
        );
        let mut samples: [Vec<Sample>; 4] = Default::default();
        for _ in 0..rounds {
            samples[0].push(wrk(
                wald,
                "/api/v1/wal/write",
                &single_script,
                connections,
                seconds,
            )?);
            samples[1].push(wrk(
                bare,
                "/api/v1/wal/write",
                &single_script,
                connections,
                seconds,
            )?);
            samples[2].push(wrk(
                naive,
                "/api/v1/wal/write",
                &single_script,
                connections,
                seconds,
            )?);
            samples[3].push(wrk(
                wald,
                "/api/v1/wal/write/batch",
                &batch_script,
                connections,
                seconds,
            )?);
        }
        let base = median(&samples[1], |s| s.requests_per_sec);
        println!(
            "| candidate | durability | requests/s (median) | spread | p50 ms | p99 ms | ratio to (a) |"
        );
        println!("|---|---|---|---|---|---|---|");
        row("wald write", "fdatasync before 202", &samples[0], base, 1.0);
        row(
            "(a) bare handler, no append",
            "none",
            &samples[1],
            base,
            1.0,
        );
        row(
            "(b) write + fdatasync per request",
            "fdatasync before 202",
            &samples[2],
            base,
            1.0,
        );
        row(
            "wald batch of 100 (records/s)",
            "fdatasync before 202",
            &samples[3],
            base,
            100.0,
        );
        let ratio = median(&samples[0], |s| s.requests_per_sec) / base;
        println!(
            "wald / (a) = {ratio:.2} (goal: at least 0.8); (a) / (b) = {:.1}",
            base / median(&samples[2], |s| s.requests_per_sec)
        );
    }
    Ok(())
}

fn row(name: &str, durability: &str, samples: &[Sample], base: f64, scale: f64) {
    let rate = median(samples, |s| s.requests_per_sec) * scale;
    let low = samples
        .iter()
        .map(|s| s.requests_per_sec * scale)
        .fold(f64::INFINITY, f64::min);
    let high = samples
        .iter()
        .map(|s| s.requests_per_sec * scale)
        .fold(0.0, f64::max);
    println!(
        "| {name} | {durability} | {rate:.0} | {low:.0}..{high:.0} | {:.2} | {:.2} | {:.2} |",
        median(samples, |s| s.p50_ms),
        median(samples, |s| s.p99_ms),
        rate / scale / base
    );
}

fn median(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(f).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

/// The real API over one public namespace on the embedded log.
async fn wald_router(dir: &Path) -> Result<Router> {
    let mut service = wald::config::service::ServiceConfig {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    service.http.max_in_flight_per_namespace = 100_000;
    let store = EmbeddedStore::open(
        &service.data_dir.join("status.redb"),
        service.status_store.retention.get(),
    )?;
    let status = Arc::new(StatusStore::Embedded(store));
    let state = AppState::new(service, status);
    let pipelines = load_pipeline_set(
        vec![(
            PathBuf::from("bench.toml"),
            Ok(PIPELINE.as_bytes().to_vec()),
        )],
        &|_| None,
    );
    let loaded = state.supervisor.apply(pipelines, "start").await;
    if loaded.plan.added.len() != 1 {
        return Err(format!("the bench pipeline did not load: {loaded:?}").into());
    }
    Ok(router(Arc::new(state)))
}

/// Answers like wald does, without appending anything.
fn bare_router() -> Router {
    Router::new().route(
        "/api/v1/wal/write",
        post(|_body: axum::body::Bytes| async {
            let id = uuid::Uuid::now_v7().to_string();
            (
                StatusCode::ACCEPTED,
                axum::Json(serde_json::json!({"message_id": id, "transaction_id": id, "durability": "durable"})),
            )
        }),
    )
}

/// Appends each body and syncs it before answering, one request at a time.
fn fdatasync_router(path: &Path) -> Result<Router> {
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

async fn serve(app: Router) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

fn lua_script(dir: &Path, name: &str, body: &str) -> Result<std::path::PathBuf> {
    let path = dir.join(format!("{name}.lua"));
    let mut file = std::fs::File::create(&path)?;
    writeln!(file, "wrk.method = \"POST\"")?;
    writeln!(file, "wrk.headers[\"Content-Type\"] = \"application/json\"")?;
    writeln!(file, "wrk.body = [[{body}]]")?;
    Ok(path)
}

/// Runs wrk against `address` and reads requests/s and the latency percentiles.
fn wrk(
    address: SocketAddr,
    path: &str,
    script: &Path,
    connections: usize,
    seconds: u64,
) -> Result<Sample> {
    let output = Command::new("wrk")
        .args([
            "-t2",
            &format!("-c{connections}"),
            &format!("-d{seconds}s"),
            "--latency",
            "-s",
        ])
        .arg(script)
        .arg(format!("http://{address}{path}"))
        .output()?;
    let text = String::from_utf8_lossy(&output.stdout);
    if text.contains("Non-2xx") {
        return Err(format!("wrk saw errors:\n{text}").into());
    }
    let field = |prefix: &str| -> Option<&str> {
        text.lines()
            .map(str::trim)
            .find(|l| l.starts_with(prefix))
            .and_then(|l| l.split_whitespace().nth(1))
    };
    let millis = |value: &str| -> f64 {
        let (number, unit) = value.split_at(
            value
                .find(|c: char| c.is_alphabetic())
                .unwrap_or(value.len()),
        );
        let number: f64 = number.parse().unwrap_or(f64::NAN);
        match unit {
            "us" => number / 1000.0,
            "s" => number * 1000.0,
            _ => number,
        }
    };
    Ok(Sample {
        requests_per_sec: text
            .lines()
            .find_map(|l| l.strip_prefix("Requests/sec:"))
            .and_then(|v| v.trim().parse().ok())
            .ok_or_else(|| format!("unexpected wrk output:\n{text}"))?,
        p50_ms: field("50%").map_or(f64::NAN, millis),
        p99_ms: field("99%").map_or(f64::NAN, millis),
    })
}
