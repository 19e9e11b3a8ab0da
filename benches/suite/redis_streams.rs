//! Scenario 5: writes through the Redis Streams backend against `redis-benchmark`
//! XADD, at equal concurrency (one request in flight per writer or client, no
//! pipelining: `-P 1`), to the same private `redis-server` keeping nothing on disk, so
//! that the figures measure the client path. wald's path is the backend's append: an
//! `XADD` with the record's fields (key, message and transaction ids, payload), Redis's
//! answer awaited.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wald::backend::redis_streams::{Config, RedisStreams};
use wald::backend::{Backend, Record};

use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::servers::PrivateRedis;

const RECORD_BYTES: usize = 256;

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let concurrency = 50;
    let scratch = tempfile::tempdir_in(".")?;
    let redis = PrivateRedis::start(scratch.path(), &["--appendonly", "no"])?
        .ok_or("redis-server or redis-benchmark is missing")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let config: Config = toml::from_str(&format!(
        "url = \"redis://127.0.0.1:{}\"\nstream = \"wald-bench-backend\"",
        redis.port
    ))?;
    let backend: Arc<dyn Backend> = Arc::new(RedisStreams::open("bench", &config)?);
    let period = Duration::from_secs(mode.seconds);
    let samples = alternate(mode.rounds, 2, |variant| {
        let sample = match variant {
            0 => Sample::of(runtime.block_on(appends(&backend, concurrency, period))?),
            _ => redis.xadd(concurrency, RECORD_BYTES, mode.seconds)?,
        };
        redis.flush()?;
        Ok(sample)
    })?;
    let mut samples = samples.into_iter();
    Ok(vec![Table {
        id: "5-redis-streams",
        title: format!("5. Redis Streams backend writes, {concurrency} concurrent writers, {RECORD_BYTES}-byte payloads"),
        unit: "writes/s",
        rows: vec![
            Row::new("wald backend append", "Redis answered XADD", samples.next().unwrap_or_default()),
            Row::new("redis-benchmark XADD -P 1", "Redis answered XADD", samples.next().unwrap_or_default()),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtLeast(0.8),
        notes: vec![
            "wald's writers share one multiplexed connection, which pipelines what they have in flight; redis-benchmark uses one connection per client".into(),
        ],
    }])
}

/// Appends from `concurrency` tasks for `period`: writes per second.
async fn appends(
    backend: &Arc<dyn Backend>,
    concurrency: usize,
    period: Duration,
) -> crate::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + period;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let (backend, done) = (backend.clone(), done.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let record = Record {
                    key: Some(format!("key-{task}").into_bytes()),
                    headers: vec![
                        (
                            "wald-message-id".into(),
                            uuid::Uuid::now_v7().to_string().into_bytes(),
                        ),
                        (
                            "wald-transaction-id".into(),
                            uuid::Uuid::now_v7().to_string().into_bytes(),
                        ),
                    ],
                    payload: vec![b'x'; RECORD_BYTES],
                };
                backend.append(vec![record]).await?;
                n += 1;
            }
            done.fetch_add(n, Ordering::Relaxed);
            Ok::<_, wald::backend::BackendError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
