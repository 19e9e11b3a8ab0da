//! Benchmark of hot reload, against wald's own steady state measured in the same run:
//!
//! - reload latency: a new pipeline file is renamed into the watched directory, and a
//!   client writes to its namespace until the write is accepted; the time from the
//!   rename to that first 202, and the same less `watch_debounce` (the time the
//!   watcher waits for the directory to be quiet). Goal: under 100 ms after the
//!   debounce, p99.
//! - write latency during reloads: C concurrent writers on one namespace (durable, group
//!   commit) for S seconds, alternately (A B A B ...) with nothing else happening (A)
//!   and while that namespace's file is edited every 250 ms, each edit restarting its
//!   consumer (B). Goal: p99 of B no more than twice p99 of A. Any refused write fails
//!   the benchmark.
//!
//! The server is wald's real router, supervisor and directory watcher in this process;
//! the writers are a small HTTP client in this process too (keep-alive connections).
//!
//! `cargo bench --bench reload` (3 rounds of 3 s, 32 writers, 30 reloads)
//! `cargo bench --bench reload -- --full` (5 rounds of 5 s, 32 writers, 100 reloads)

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wald::config::service::ServiceConfig;
use wald::http::{AppState, router};
use wald::runtime::watcher;
use wald::status::StatusStore;
use wald::status::embedded::EmbeddedStore;

/// The allocator of the `wald` binary, so that the server measured is the one shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error + Send + Sync>>;

const WRITERS: usize = 32;

fn pipeline(namespace: &str, out: &Path, batch_size: u32) -> String {
    format!(
        "namespace = \"{namespace}\"\n[source]\ntype = \"http\"\npublic = true\n\
         [consumer]\nbatch_size = {batch_size}\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n",
        out.display()
    )
}

/// Writes a file the way editors do: a new file renamed over the old one.
fn put(dir: &Path, name: &str, text: &str) -> Result {
    let tmp = dir.join(format!(".{name}.tmp"));
    std::fs::write(&tmp, text)?;
    std::fs::rename(&tmp, dir.join(name))?;
    Ok(())
}

fn main() -> Result {
    let full = std::env::args().any(|a| a == "--full");
    let (rounds, seconds, reloads) = if full { (5, 5, 100) } else { (3, 3, 30) };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir_in(".")?;
    runtime.block_on(run(scratch.path(), rounds, seconds, reloads))
}

async fn run(dir: &Path, rounds: usize, seconds: u64, reloads: usize) -> Result {
    let pipelines = dir.join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    let out = dir.join("out.jsonl");
    put(&pipelines, "steady.toml", &pipeline("steady", &out, 256))?;
    let service = ServiceConfig {
        data_dir: dir.join("data"),
        pipelines_dir: pipelines.clone(),
        ..Default::default()
    };
    let debounce = service.watch_debounce.get();
    let store = EmbeddedStore::open(
        &service.data_dir.join("status.redb"),
        service.status_store.retention.get(),
    )?;
    let state = Arc::new(AppState::new(
        service.clone(),
        Arc::new(StatusStore::Embedded(store)),
    ));
    state.supervisor.reload("start").await;
    let (_stop, stopped) = tokio::sync::watch::channel(false);
    let _watch = watcher::spawn(state.supervisor.clone(), &pipelines, debounce, stopped)?;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    let app = router(state.clone());
    tokio::spawn(async move { axum::serve(listener, app).await });
    let client = reqwest::Client::new();

    println!(
        "\nReload latency: a new file renamed into the watched directory until its namespace accepts a write; {reloads} reloads, watch_debounce {} ms",
        debounce.as_millis()
    );
    let mut latencies = Vec::new();
    for i in 0..reloads {
        let name = format!("probe-{i}");
        let started = Instant::now();
        put(
            &pipelines,
            &format!("{name}.toml"),
            &pipeline(&name, &dir.join("probe.jsonl"), 256),
        )?;
        while write(&client, address, &name).await? != 202 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
        latencies.push(started.elapsed());
        std::fs::remove_file(pipelines.join(format!("{name}.toml")))?;
        while write(&client, address, &name).await? != 404 {
            tokio::time::sleep(Duration::from_millis(1)).await;
        }
    }
    latencies.sort();
    let total = |q: f64| quantile(&latencies, q);
    let after = |q: f64| total(q).saturating_sub(debounce);
    println!("| measure | p50 ms | p99 ms | max ms |");
    println!("|---|---|---|---|");
    println!(
        "| file renamed in -> first 202 | {:.1} | {:.1} | {:.1} |",
        ms(total(0.5)),
        ms(total(0.99)),
        ms(total(1.0))
    );
    println!(
        "| the same, after the debounce | {:.1} | {:.1} | {:.1} |",
        ms(after(0.5)),
        ms(after(0.99)),
        ms(after(1.0))
    );
    println!(
        "p99 after the debounce: {:.1} ms (goal: under 100 ms)",
        ms(after(0.99))
    );

    println!(
        "\nWrite latency, {WRITERS} writers, {rounds} rounds of {seconds} s, alternating: steady (A) and while the namespace's file is edited every 250 ms (B)"
    );
    let mut steady = Vec::new();
    let mut reloading = Vec::new();
    let mut applied = 0;
    let mut reload_seconds = 0.0;
    for _ in 0..rounds {
        steady.push(load(&client, address, seconds, None).await?);
        let before = state.supervisor.running().generation;
        let spent = state.supervisor.history().seconds;
        let editing = Some((pipelines.as_path(), out.as_path()));
        reloading.push(load(&client, address, seconds, editing).await?);
        applied += state.supervisor.running().generation - before;
        reload_seconds += state.supervisor.history().seconds - spent;
    }
    println!("| phase | durability | writes/s (median) | p50 ms | p99 ms (median) | p99 spread |");
    println!("|---|---|---|---|---|---|");
    for (label, samples) in [("(A) steady", &steady), ("(B) during reloads", &reloading)] {
        let p99s: Vec<f64> = samples.iter().map(|s| s.p99_ms).collect();
        println!(
            "| {label} | fdatasync before 202 | {:.0} | {:.2} | {:.2} | {:.2}..{:.2} |",
            median(samples.iter().map(|s| s.rate).collect()),
            median(samples.iter().map(|s| s.p50_ms).collect()),
            median(p99s.clone()),
            p99s.iter().copied().fold(f64::INFINITY, f64::min),
            p99s.iter().copied().fold(0.0, f64::max),
        );
    }
    let ratio = median(reloading.iter().map(|s| s.p99_ms).collect())
        / median(steady.iter().map(|s| s.p99_ms).collect());
    println!(
        "p99 during reloads / steady p99 = {ratio:.2} (goal: at most 2); {applied} reloads applied during (B), {:.1} ms each on average (each restarts the consumer); no write refused",
        reload_seconds * 1000.0 / applied.max(1) as f64
    );
    Ok(())
}

struct Sample {
    rate: f64,
    p50_ms: f64,
    p99_ms: f64,
}

/// `WRITERS` writers for `seconds`; with `editing`, the namespace's file is edited
/// every 250 ms meanwhile (alternating `batch_size`, so that each edit restarts the
/// consumer). A refused write is an error.
async fn load(
    client: &reqwest::Client,
    address: SocketAddr,
    seconds: u64,
    editing: Option<(&Path, &Path)>,
) -> Result<Sample> {
    let running = Arc::new(AtomicBool::new(true));
    let deadline = Instant::now() + Duration::from_secs(seconds);
    let mut writers = Vec::new();
    for _ in 0..WRITERS {
        let (client, running) = (client.clone(), running.clone());
        writers.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            while running.load(Ordering::Relaxed) {
                let started = Instant::now();
                let status = write(&client, address, "steady").await?;
                if status != 202 {
                    return Err::<_, Box<dyn std::error::Error + Send + Sync>>(
                        format!("a write was answered {status}").into(),
                    );
                }
                latencies.push(started.elapsed());
            }
            Ok(latencies)
        }));
    }
    let mut edits = 0u32;
    while Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(250)).await;
        if let Some((pipelines, out)) = editing {
            edits += 1;
            let text = pipeline("steady", out, 256 - edits % 2);
            put(pipelines, "steady.toml", &text)?;
        }
    }
    running.store(false, Ordering::Relaxed);
    let mut all = Vec::new();
    for writer in writers {
        all.extend(writer.await??);
    }
    all.sort();
    Ok(Sample {
        rate: all.len() as f64 / seconds as f64,
        p50_ms: ms(quantile(&all, 0.5)),
        p99_ms: ms(quantile(&all, 0.99)),
    })
}

async fn write(client: &reqwest::Client, address: SocketAddr, namespace: &str) -> Result<u16> {
    let payload = "x".repeat(254);
    let response = client
        .post(format!("http://{address}/api/v1/wal/write"))
        .json(&serde_json::json!({ "namespace": namespace, "payload": payload }))
        .send()
        .await?;
    Ok(response.status().as_u16())
}

fn quantile(sorted: &[Duration], q: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let index = ((sorted.len() - 1) as f64 * q).round() as usize;
    sorted[index.min(sorted.len() - 1)]
}

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1000.0
}

fn median(mut values: Vec<f64>) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}
