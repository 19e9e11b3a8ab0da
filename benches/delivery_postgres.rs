//! Benchmark of delivery end to end: rows written through wald's API to a namespace
//! whose target is Postgres, until they are visible in the table, against the same rows
//! written by plain batched `INSERT`s (`UNNEST`, one statement per batch) at the same
//! batch size and concurrency, measured alternately (A B A B ...), medians reported.
//!
//! wald's figure includes everything a row goes through: the HTTP batch route, the
//! durable append (group commit), the consumer and the target. Also reported: the lag
//! from a write's acknowledgement to its row (the row's `clock_timestamp()`).
//!
//! `cargo bench --bench delivery_postgres` (3 rounds of 20,000 rows)
//! `cargo bench --bench delivery_postgres -- --full` (5 rounds of 100,000 rows)
//! Needs the local Postgres (127.0.0.1:5432, database `test`).

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgPool;
use wald::config::load_pipeline_set;
use wald::http::{AppState, router};
use wald::status::StatusStore;
use wald::status::embedded::EmbeddedStore;

/// The allocator of the `wald` binary, so that the server measured is the one shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TABLE: &str = "wald_bench_rows";
const BATCH: usize = 256;
const CONCURRENCY: usize = 4;

/// Namespace `statement` writes with an `INSERT ... VALUES` statement, namespace `table`
/// with `table` and `columns`; both go as one multi-row INSERT per batch.
fn pipeline(namespace: &str) -> String {
    let target = match namespace {
        "statement" => format!(
            "statement = \"INSERT INTO {TABLE} (id, body) VALUES ($message_id, $payload) ON CONFLICT (id) DO NOTHING\"\n"
        ),
        _ => format!(
            "table = \"{TABLE}\"\ncolumns = {{ id = \"$message_id\", body = \"$payload\" }}\n"
        ),
    };
    format!(
        "namespace = \"{namespace}\"\n[source]\ntype = \"http\"\npublic = true\n\
         [consumer]\nbatch_size = {BATCH}\nconcurrency = {CONCURRENCY}\norder = \"none\"\n\
         [[target]]\nname = \"db\"\ntype = \"postgres\"\nurl = \"{URL}\"\nmax_connections = {CONCURRENCY}\n{target}"
    )
}

fn main() -> Result {
    let full = std::env::args().any(|a| a == "--full");
    let (rounds, rows) = if full { (5, 100_000) } else { (3, 20_000) };
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:5432".parse()?, Duration::from_secs(2))
        .is_err()
    {
        println!("not measured: Postgres is not reachable at 127.0.0.1:5432");
        return Ok(());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let _guard = runtime.enter();
    let scratch = tempfile::tempdir_in(".")?;
    runtime.block_on(async {
        let pool = sqlx::postgres::PgPoolOptions::new()
            .max_connections(CONCURRENCY as u32 + 1)
            .connect(URL)
            .await?;
        sqlx::query(sqlx::AssertSqlSafe(format!(
            "CREATE TABLE IF NOT EXISTS {TABLE} (id text PRIMARY KEY, body jsonb NOT NULL, \
             written_at timestamptz NOT NULL DEFAULT clock_timestamp())"
        )))
        .execute(&pool)
        .await?;
        let wald = serve(wald_router(scratch.path()).await?).await?;
        println!(
            "\nRows to Postgres, {rows} rows of 256-byte payloads a round, batches of {BATCH}, \
             concurrency {CONCURRENCY}, {rounds} rounds, alternating"
        );
        let (mut statement, mut table, mut raw) = (Vec::new(), Vec::new(), Vec::new());
        let (mut statement_lags, mut table_lags) = (Vec::new(), Vec::new());
        for _ in 0..rounds {
            truncate(&pool).await?;
            let (rate, lag) = through_wald(wald, "statement", &pool, rows).await?;
            statement.push(rate);
            statement_lags.extend(lag);
            truncate(&pool).await?;
            let (rate, lag) = through_wald(wald, "table", &pool, rows).await?;
            table.push(rate);
            table_lags.extend(lag);
            truncate(&pool).await?;
            raw.push(raw_inserts(&pool, rows).await?);
        }
        let raw_rate = median(&mut raw);
        println!(
            "| candidate | rows/s (median) | spread | lag p50 ms | lag p99 ms | ratio to raw |"
        );
        println!("|---|---|---|---|---|---|");
        for (name, rates, lags) in [
            (
                "wald, `statement` target (INSERT ... VALUES, multi-row per batch)",
                &mut statement,
                &mut statement_lags,
            ),
            (
                "wald, `table` target (multi-row INSERT)",
                &mut table,
                &mut table_lags,
            ),
            (
                "raw: sqlx UNNEST INSERT per batch",
                &mut raw,
                &mut Vec::new(),
            ),
        ] {
            let rate = median(rates);
            lags.sort_by(f64::total_cmp);
            println!(
                "| {name} | {rate:.0} | {:.0}..{:.0} | {:.1} | {:.1} | {:.2} |",
                rates.first().copied().unwrap_or(0.0),
                rates.last().copied().unwrap_or(0.0),
                percentile(lags, 0.50),
                percentile(lags, 0.99),
                rate / raw_rate
            );
        }
        println!(
            "goal: wald at least 0.8 of raw; lag is measured while the writers outrun delivery"
        );
        truncate(&pool).await?;
        Ok(())
    })
}

async fn truncate(pool: &PgPool) -> Result {
    sqlx::query(sqlx::AssertSqlSafe(format!("TRUNCATE {TABLE}")))
        .execute(pool)
        .await?;
    Ok(())
}

fn payload(n: usize) -> serde_json::Value {
    serde_json::json!({ "n": n, "pad": "x".repeat(240) })
}

/// Writes `rows` messages through the batch route (CONCURRENCY writers, BATCH a
/// request) and waits until all are in the table; rows/s, and each row's lag (ms).
async fn through_wald(
    wald: SocketAddr,
    namespace: &'static str,
    pool: &PgPool,
    rows: usize,
) -> Result<(f64, Vec<f64>)> {
    let client = reqwest::Client::new();
    let started = Instant::now();
    let mut writers = tokio::task::JoinSet::new();
    for writer in 0..CONCURRENCY {
        let client = client.clone();
        writers.spawn(async move {
            let mut acked = HashMap::new();
            let mut n = writer * BATCH;
            while n < rows {
                let count = BATCH.min(rows - n);
                let messages: Vec<_> = (n..n + count)
                    .map(|i| serde_json::json!({ "payload": payload(i) }))
                    .collect();
                let answer: serde_json::Value = client
                    .post(format!("http://{wald}/api/v1/wal/write/batch"))
                    .json(&serde_json::json!({ "namespace": namespace, "messages": messages }))
                    .send()
                    .await?
                    .json()
                    .await?;
                let at = SystemTime::now().duration_since(UNIX_EPOCH)?.as_secs_f64();
                for result in answer["results"].as_array().ok_or("no results")? {
                    let id = result["message_id"].as_str().ok_or("not accepted")?;
                    acked.insert(id.to_string(), at);
                }
                n += CONCURRENCY * BATCH;
            }
            Ok::<_, Box<dyn std::error::Error + Send + Sync>>(acked)
        });
    }
    let mut acked = HashMap::new();
    while let Some(done) = writers.join_next().await {
        acked.extend(done?.map_err(|e| e.to_string())?);
    }
    let deadline = Instant::now() + Duration::from_secs(600);
    loop {
        let count: i64 =
            sqlx::query_scalar(sqlx::AssertSqlSafe(format!("SELECT count(*) FROM {TABLE}")))
                .fetch_one(pool)
                .await?;
        if count as usize >= rows {
            break;
        }
        if Instant::now() > deadline {
            return Err(format!("only {count} of {rows} rows arrived").into());
        }
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let elapsed = started.elapsed().as_secs_f64();
    let written: Vec<(String, f64)> = sqlx::query_as(sqlx::AssertSqlSafe(format!(
        "SELECT id, extract(epoch FROM written_at)::float8 FROM {TABLE}"
    )))
    .fetch_all(pool)
    .await?;
    let lags = written
        .iter()
        .filter_map(|(id, at)| acked.get(id).map(|acked| (at - acked).max(0.0) * 1000.0))
        .collect();
    Ok((rows as f64 / elapsed, lags))
}

/// The same rows by plain batched INSERTs: CONCURRENCY tasks, one statement per BATCH.
async fn raw_inserts(pool: &PgPool, rows: usize) -> Result<f64> {
    let started = Instant::now();
    let mut tasks = tokio::task::JoinSet::new();
    for writer in 0..CONCURRENCY {
        let pool = pool.clone();
        tasks.spawn(async move {
            let mut n = writer * BATCH;
            while n < rows {
                let count = BATCH.min(rows - n);
                let ids: Vec<String> = (0..count).map(|_| uuid::Uuid::now_v7().to_string()).collect();
                let bodies: Vec<String> = (n..n + count).map(|i| payload(i).to_string()).collect();
                sqlx::query(sqlx::AssertSqlSafe(format!(
                    "INSERT INTO {TABLE} (id, body) SELECT i, b::jsonb FROM UNNEST($1::text[], $2::text[]) AS u(i, b) \
                     ON CONFLICT (id) DO NOTHING"
                )))
                .bind(ids)
                .bind(bodies)
                .execute(&pool)
                .await?;
                n += CONCURRENCY * BATCH;
            }
            Ok::<_, sqlx::Error>(())
        });
    }
    while let Some(done) = tasks.join_next().await {
        done??;
    }
    Ok(rows as f64 / started.elapsed().as_secs_f64())
}

/// The real API over the `statement` and `table` namespaces on the embedded log.
async fn wald_router(dir: &Path) -> Result<axum::Router> {
    let service = wald::config::service::ServiceConfig {
        data_dir: dir.join("data"),
        ..Default::default()
    };
    let store = EmbeddedStore::open(
        &service.data_dir.join("status.redb"),
        service.status_store.retention.get(),
    )?;
    let status = Arc::new(StatusStore::Embedded(store));
    let files = ["statement", "table"]
        .into_iter()
        .map(|name| {
            let file = PathBuf::from(format!("{name}.toml"));
            (file, Ok(pipeline(name).into_bytes()))
        })
        .collect();
    let state = AppState::new(service, status);
    let loaded = state
        .supervisor
        .apply(load_pipeline_set(files, &|_| None), "start")
        .await;
    if loaded.plan.added.len() != 2 {
        return Err(format!("the bench pipelines did not load: {loaded:?}").into());
    }
    Ok(router(Arc::new(state)))
}

async fn serve(app: axum::Router) -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let address = listener.local_addr()?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    Ok(address)
}

fn median(values: &mut [f64]) -> f64 {
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    sorted[((sorted.len() - 1) as f64 * p).round() as usize]
}
