//! Scenario 2: the embedded log alone. Concurrent appenders of 256-byte records, each
//! waiting for its record to be durable (group commit, `sync = "always"`), against
//! (a) one `write` plus `fdatasync` per record and (b) a private Redis with
//! `appendfsync always` driven by `redis-benchmark` XADD with as many clients.

use std::os::unix::fs::FileExt;
use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wald::message::Record;
use wald::producer::embedded::{Config, Log};

use crate::report::{Goal, Mode, Row, Sample, Table, alternate, quantile_ms};
use crate::servers::PrivateRedis;

pub const RECORD_BYTES: usize = 256;

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let concurrency = if mode.full { 256 } else { 64 };
    let scratch = tempfile::tempdir_in(".")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let redis = PrivateRedis::start(
        scratch.path(),
        &["--appendonly", "yes", "--appendfsync", "always"],
    )?;
    let variants = if redis.is_some() { 3 } else { 2 };
    let mut round = 0;
    let mut syncs_shared = Vec::new();
    let samples = alternate(mode.rounds, variants, |variant| {
        round += 1;
        let dir = scratch.path().join(format!("run-{round}"));
        match variant {
            0 => {
                let (sample, per_sync) =
                    runtime.block_on(appends(&dir, concurrency, mode.seconds))?;
                syncs_shared.push(per_sync);
                Ok(sample)
            }
            1 => fdatasync_per_record(&dir, mode.seconds),
            _ => match &redis {
                Some(redis) => {
                    let sample = redis.xadd(concurrency, RECORD_BYTES, mode.seconds)?;
                    redis.flush()?;
                    Ok(sample)
                }
                None => Err("no Redis".into()),
            },
        }
    })?;
    let mut samples = samples.into_iter();
    let mut rows = vec![
        Row::new(
            "wald embedded log",
            "fdatasync before ack",
            samples.next().unwrap_or_default(),
        ),
        Row::new(
            "(a) write + fdatasync per record",
            "fdatasync before ack",
            samples.next().unwrap_or_default(),
        ),
    ];
    let mut notes = vec![format!(
        "{concurrency} concurrent appenders; records per fdatasync (median): {:.1}",
        crate::report::median(syncs_shared.into_iter())
    )];
    match samples.next() {
        Some(redis) => rows.push(Row::new(
            "(b) Redis XADD, appendfsync always",
            "fsync before reply",
            redis,
        )),
        None => notes.push("(b) not measured: redis-server or redis-benchmark is missing".into()),
    }
    if rows.len() == 3 {
        notes.push(format!(
            "wald / (b) = {:.2} (goal: at least 1, stretch 2)",
            rows[0].median() / rows[2].median()
        ));
    }
    Ok(vec![Table {
        id: "2-log",
        title: format!(
            "2. The embedded log alone, {concurrency} appenders, {RECORD_BYTES}-byte records"
        ),
        unit: "records/s",
        rows,
        of: 0,
        to: 1,
        goal: Goal::AtLeast(30.0),
        notes,
    }])
}

pub fn payload(i: u64) -> Vec<u8> {
    let mut payload = vec![b'x'; RECORD_BYTES];
    payload[..8].copy_from_slice(&i.to_le_bytes());
    payload
}

/// `concurrency` appenders for `seconds`: records/s with latency, and records per sync.
async fn appends(dir: &Path, concurrency: usize, seconds: u64) -> crate::Result<(Sample, f64)> {
    let log = Log::open(dir, Config::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let (_, _, syncs_before, _) = log.stats();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..concurrency as u64 {
        let (log, stop) = (log.clone(), stop.clone());
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = writer << 40;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                let record = Record {
                    key: None,
                    headers: Vec::new(),
                    payload: payload(i),
                };
                log.append(vec![record]).await?;
                latencies.push(t.elapsed().as_micros() as u32);
                i += 1;
            }
            Ok::<_, wald::producer::embedded::LogError>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (_, records, syncs, _) = log.stats();
    log.close().await;
    std::fs::remove_dir_all(dir)?;
    latencies.sort_unstable();
    let sample = Sample {
        value: records as f64 / elapsed,
        p50_ms: Some(quantile_ms(&latencies, 0.5)),
        p99_ms: Some(quantile_ms(&latencies, 0.99)),
    };
    Ok((
        sample,
        records as f64 / (syncs - syncs_before).max(1) as f64,
    ))
}

/// The naive durable log: every record written and synced on its own.
fn fdatasync_per_record(path: &Path, seconds: u64) -> crate::Result<Sample> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let record = payload(0);
    let started = Instant::now();
    let deadline = started + Duration::from_secs(seconds);
    let mut latencies = Vec::new();
    let mut position = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        file.write_all_at(&record, position)?;
        file.sync_data()?;
        position += record.len() as u64;
        latencies.push(t.elapsed().as_micros() as u32);
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    latencies.sort_unstable();
    Ok(Sample {
        value: latencies.len() as f64 / elapsed,
        p50_ms: Some(quantile_ms(&latencies, 0.5)),
        p99_ms: Some(quantile_ms(&latencies, 0.99)),
    })
}
