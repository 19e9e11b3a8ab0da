//! Scenarios 1 and 3: HTTP writes of 256-byte payloads to one namespace on the
//! embedded log (`sync = "always"`), against (a) the same server with a write handler
//! that answers 202 without appending and (b) a handler that writes and `fdatasync`s
//! each request, with (c) a bare axum handler (no layers) for reference; and the batch
//! route (100 messages a request) in records/s against single writes.

use std::time::Duration;

use axum::body::Bytes;

use crate::report::{Goal, Mode, Row, Table, alternate};
use crate::{load, servers};

/// A public namespace delivering to a file in `dir`: scenario 1's pipeline.
pub fn pipeline(dir: &std::path::Path) -> String {
    format!(
        "namespace = \"bench\"\n[source]\ntype = \"http\"\npublic = true\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n",
        dir.join("out.jsonl").display()
    )
}

/// Scenario 1's payload: a JSON string of 256 bytes.
fn payload() -> String {
    format!("\"{}\"", "x".repeat(254))
}

/// Scenario 1's single write: its payload to namespace `bench`.
pub fn single_write() -> Bytes {
    Bytes::from(format!(
        "{{\"namespace\":\"bench\",\"payload\":{}}}",
        payload()
    ))
}

/// Messages in one request of the batch route.
const BATCH: usize = 100;

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let connections = if mode.full { 256 } else { 64 };
    let scratch = tempfile::tempdir_in(".")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let (state, wald, same, naive, bare) = runtime.block_on(async {
        let state =
            servers::bench_state(scratch.path(), &[("bench.toml", pipeline(scratch.path()))])
                .await?;
        let wald = servers::serve_as_wald(wald::http::router(state.clone())).await?;
        let same_state = servers::bench_state(&scratch.path().join("same"), &[]).await?;
        let same = servers::serve_as_wald(servers::same_server_router(same_state)).await?;
        let naive = servers::serve(servers::fdatasync_router(
            &scratch.path().join("naive.log"),
        )?)
        .await?;
        let bare = servers::serve(servers::bare_router()).await?;
        Ok::<_, crate::Error>((state, wald, same, naive, bare))
    })?;
    let payload = payload();
    let single = single_write();
    let batch = Bytes::from(format!(
        "{{\"namespace\":\"bench\",\"messages\":[{}]}}",
        vec![format!("{{\"payload\":{payload}}}"); BATCH].join(",")
    ));
    let period = Duration::from_secs(mode.seconds);
    let write = |address| {
        load::post(
            address,
            "/api/v1/wal/write",
            single.clone(),
            connections,
            period,
        )
    };
    // Each round starts once the namespace has delivered and indexed what the rounds
    // before wrote; how long that takes after wald's own rounds is reported.
    let settle = || runtime.block_on(servers::settle(&state, "bench"));
    let (mut after_writes, mut after_batches) = (Vec::new(), Vec::new());
    let samples = alternate(mode.rounds, 5, |variant| {
        let left_over = settle()?;
        match variant {
            1 => after_writes.push(left_over.as_secs_f64() * 1000.0),
            0 if !after_writes.is_empty() => after_batches.push(left_over.as_secs_f64() * 1000.0),
            _ => {}
        }
        Ok(match variant {
            0 => write(wald)?,
            1 => write(same)?,
            2 => write(naive)?,
            3 => write(bare)?,
            _ => {
                let mut sample = load::post(
                    wald,
                    "/api/v1/wal/write/batch",
                    batch.clone(),
                    connections,
                    period,
                )?;
                sample.value *= BATCH as f64;
                sample
            }
        })
    })?;
    let [
        single_wald,
        same_samples,
        naive_samples,
        bare_samples,
        batch_samples,
    ] = <[Vec<_>; 5]>::try_from(samples).map_err(|_| "five variants")?;
    let in_flight = |row: &Row| {
        let p50 = crate::report::median(row.samples.iter().filter_map(|s| s.p50_ms));
        row.median() * p50 / 1000.0
    };
    let writes = Table {
        id: "1-http",
        title: format!("1. HTTP writes, {connections} keep-alive connections, 256-byte payloads"),
        unit: "writes/s",
        rows: vec![
            Row::new("wald write", "fdatasync before 202", single_wald),
            Row::new("(a) same server, no append", "none", same_samples),
            Row::new(
                "(b) fdatasync per request",
                "fdatasync before 202",
                naive_samples,
            ),
            Row::new("(c) bare axum handler", "none", bare_samples),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtLeast(0.8),
        notes: Vec::new(),
    };
    let notes = vec![
        format!(
            "in flight by Little's law (writes/s × p50): wald {:.0}, (a) {:.0}, (b) {:.0}, (c) {:.0}, for {connections} connections",
            in_flight(&writes.rows[0]),
            in_flight(&writes.rows[1]),
            in_flight(&writes.rows[2]),
            in_flight(&writes.rows[3])
        ),
        format!(
            "(a) / (b) = {:.1}: what group commit has to win back",
            writes.rows[1].median() / writes.rows[2].median()
        ),
        format!(
            "wald / (c) = {:.2}: against a handler with none of wald's layers (request id, timeout, metrics, body limit) nor its accept loop",
            writes.rows[0].median() / writes.rows[3].median()
        ),
        format!(
            "each round starts once the namespace has delivered and indexed everything; after a round of wald writes that took {:.0} ms (median), after a batch round {:.0} ms",
            crate::report::median(after_writes.into_iter()),
            crate::report::median(after_batches.into_iter())
        ),
    ];
    let writes = Table { notes, ..writes };
    let batches = Table {
        id: "3-batch",
        title: format!(
            "3. The batch route, {BATCH} messages a request, {connections} connections, against single writes"
        ),
        unit: "records/s",
        rows: vec![
            Row::new(
                format!("wald batch of {BATCH}"),
                "fdatasync before 202",
                batch_samples,
            ),
            Row::new(
                "wald write",
                "fdatasync before 202",
                writes.rows[0].samples.clone(),
            ),
        ],
        of: 0,
        to: 1,
        goal: Goal::None,
        notes: Vec::new(),
    };
    Ok(vec![writes, batches])
}
