//! Scenario 4: delivery end to end to Postgres. Rows written through wald's batch
//! route to a namespace whose target is Postgres, until they are visible in the table,
//! against the same rows by plain batched `INSERT`s (`UNNEST`, one statement per batch)
//! at the same batch size and concurrency. wald's figure includes everything a row goes
//! through: HTTP, the durable append, the consumer and the target. Also reported: the
//! lag from a write's acknowledgement to its row. Needs the local Postgres.

use std::collections::HashMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use sqlx::postgres::PgPool;

use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::servers;

const URL: &str = "postgres://postgres@127.0.0.1:5432/test";
const TABLE: &str = "wald_bench_rows";
const BATCH: usize = 256;
const CONCURRENCY: usize = 4;

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

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let rows = if mode.full { 100_000 } else { 10_000 };
    if std::net::TcpStream::connect_timeout(&"127.0.0.1:5432".parse()?, Duration::from_secs(2))
        .is_err()
    {
        return Err("Postgres is not reachable at 127.0.0.1:5432".into());
    }
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let scratch = tempfile::tempdir_in(".")?;
    let (pool, wald) = runtime.block_on(async {
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
        let pipelines = [
            ("statement.toml", pipeline("statement")),
            ("table.toml", pipeline("table")),
        ];
        let wald = servers::serve(servers::wald_router(scratch.path(), &pipelines).await?).await?;
        Ok::<_, crate::Error>((pool, wald))
    })?;
    let mut lags: [Vec<f64>; 2] = Default::default();
    let samples = alternate(mode.rounds, 3, |variant| {
        runtime.block_on(async {
            truncate(&pool).await?;
            Ok(match variant {
                0 | 1 => {
                    let namespace = if variant == 0 { "statement" } else { "table" };
                    let (rate, lag) = through_wald(wald, namespace, &pool, rows).await?;
                    lags[variant].extend(lag);
                    Sample::of(rate)
                }
                _ => Sample::of(raw_inserts(&pool, rows).await?),
            })
        })
    })?;
    runtime.block_on(truncate(&pool))?;
    let lag = |lags: &mut Vec<f64>| {
        lags.sort_by(f64::total_cmp);
        let at = |q: f64| {
            lags.get(((lags.len().max(1) - 1) as f64 * q) as usize)
                .copied()
                .unwrap_or(f64::NAN)
        };
        format!("p50 {:.0} ms, p99 {:.0} ms", at(0.5), at(0.99))
    };
    let notes = vec![
        format!("{rows} rows a round, batches of {BATCH}, {CONCURRENCY} writers"),
        format!(
            "lag from acknowledgement to row, `statement` target: {}",
            lag(&mut lags[0])
        ),
        format!(
            "lag from acknowledgement to row, `table` target: {}",
            lag(&mut lags[1])
        ),
    ];
    let mut samples = samples.into_iter();
    Ok(vec![Table {
        id: "4-postgres",
        title: "4. End to end to Postgres, against plain batched INSERT".into(),
        unit: "rows/s",
        rows: vec![
            Row::new(
                "wald, `statement` target",
                "fdatasync before 202, then COMMIT",
                samples.next().unwrap_or_default(),
            ),
            Row::new(
                "wald, `table` target",
                "fdatasync before 202, then COMMIT",
                samples.next().unwrap_or_default(),
            ),
            Row::new(
                "raw UNNEST INSERT per batch",
                "COMMIT",
                samples.next().unwrap_or_default(),
            ),
        ],
        of: 0,
        to: 2,
        goal: Goal::AtLeast(0.8),
        notes,
    }])
}

async fn truncate(pool: &PgPool) -> crate::Result {
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
) -> crate::Result<(f64, Vec<f64>)> {
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
async fn raw_inserts(pool: &PgPool, rows: usize) -> crate::Result<f64> {
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
