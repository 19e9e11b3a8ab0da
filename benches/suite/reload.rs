//! Scenario 6: hot reload. Reload latency: a new pipeline file renamed into the
//! watched directory until its namespace accepts a write (goal: p99 under 100 ms after
//! `watch_debounce`). Write latency during reloads: concurrent writers on one namespace,
//! alternately with nothing else happening (A) and while that namespace's file is
//! edited every 250 ms, each edit restarting its consumer (B); goal: p99 of B at most
//! twice that of A. A refused write fails the scenario. The server is wald's real
//! router, supervisor and directory watcher in this process.

use std::net::SocketAddr;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wald::http::router;
use wald::runtime::watcher;
use wald::service::ServiceConfig;

use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::servers;

use crate::Result;

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

pub fn run(mode: &Mode) -> Result<Vec<Table>> {
    let reloads = if mode.full { 100 } else { 20 };
    let scratch = tempfile::tempdir_in(".")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = scratch.path();
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
    let (state, address, _stop, _watch) = runtime.block_on(async {
        let state = servers::wald_state(service, &[]).await?;
        state.supervisor.reload("start").await;
        let stop = wald::shutdown::Shutdown::new();
        let watch = watcher::spawn(
            state.supervisor.clone(),
            &pipelines,
            debounce,
            stop.stopping(),
        );
        let address = servers::serve(router(state.clone())).await?;
        Ok::<_, crate::Error>((state, address, stop, watch))
    })?;
    let client = reqwest::Client::new();

    let mut latencies = Vec::new();
    for i in 0..reloads {
        let name = format!("probe-{i}");
        let latency = runtime.block_on(async {
            let started = Instant::now();
            put(
                &pipelines,
                &format!("{name}.toml"),
                &pipeline(&name, &dir.join("probe.jsonl"), 256),
            )?;
            while write(&client, address, &name).await? != 202 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            let latency = started.elapsed();
            std::fs::remove_file(pipelines.join(format!("{name}.toml")))?;
            while write(&client, address, &name).await? != 404 {
                tokio::time::sleep(Duration::from_millis(1)).await;
            }
            Ok::<_, crate::Error>(latency)
        })?;
        latencies.push(latency.saturating_sub(debounce));
    }
    latencies.sort();
    let reload_p99 = ms(quantile(&latencies, 0.99));

    let mut applied = 0;
    let samples = alternate(mode.rounds, 2, |variant| {
        let editing = (variant == 1).then_some((pipelines.as_path(), out.as_path()));
        let before = state.supervisor.running().generation;
        let sample = runtime.block_on(load(&client, address, mode.seconds, editing))?;
        applied += state.supervisor.running().generation - before;
        Ok(Sample {
            value: sample.p99_ms,
            p50_ms: Some(sample.p50_ms),
            p99_ms: Some(sample.p99_ms),
        })
    })?;
    let mut samples = samples.into_iter();
    let steady = samples.next().unwrap_or_default();
    let reloading = samples.next().unwrap_or_default();
    Ok(vec![Table {
        id: "6-reload",
        title: format!("6. Write latency during reloads, {WRITERS} writers, against steady state"),
        unit: "p99 ms",
        rows: vec![
            Row::new(
                "(B) file edited every 250 ms",
                "fdatasync before 202",
                reloading,
            ),
            Row::new("(A) steady", "fdatasync before 202", steady),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtMost(2.0),
        notes: vec![
            format!(
                "reload latency, file renamed in to the first 202, less the {} ms debounce, {reloads} reloads: p50 {:.1} ms, p99 {reload_p99:.1} ms (goal: p99 under 100 ms: {})",
                debounce.as_millis(),
                ms(quantile(&latencies, 0.5)),
                if reload_p99 < 100.0 {
                    "met"
                } else {
                    "**not met**"
                }
            ),
            format!(
                "{applied} reloads applied during (B), each restarting the consumer; no write refused"
            ),
        ],
    }])
}

struct Latencies {
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
) -> Result<Latencies> {
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
    Ok(Latencies {
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
