//! Scenario 10: what processing costs, through wald's real router and delivery in this
//! process.
//!
//! - `10-processing`: delivery throughput to a file target with a filter and a small
//!   transform (`.payload |= del(.card)`) against the same pipeline without processing
//!   (goal: at least 0.8). The messages are written while the target is paused; timed
//!   from the resume until the namespace has delivered them all.
//! - `10-schema`: single writes over HTTP of a 256-byte JSON payload to a namespace with
//!   a `[source] schema` against one without (goal: at least 0.9).

use std::path::Path;
use std::time::{Duration, Instant};

use axum::body::Bytes;
use serde_json::{Value, json};
use wald::http::router;

use crate::Result;
use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::{load, servers};

/// A 256-byte payload, as JSON text.
fn payload(i: u64) -> Value {
    let note = "x".repeat(170);
    json!({"id": format!("order-{i:08}"), "kind": "sale", "amount": 12.5, "card": "4111111111111111", "note": note})
}

fn file_pipeline(namespace: &str, out: &Path, processing: &str) -> String {
    format!(
        "namespace = \"{namespace}\"\n[source]\ntype = \"http\"\npublic = true\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n{processing}\n",
        out.display()
    )
}

const PROCESSING: &str =
    "filter = '.payload.kind != \"test\"'\ntransform = \".payload |= del(.card)\"";

pub fn run(mode: &Mode) -> Result<Vec<Table>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let client = reqwest::Client::new();
    let messages: u64 = if mode.full { 100_000 } else { 20_000 };
    let flow = alternate(mode.rounds, 2, |variant| {
        runtime.block_on(async {
            let scratch = tempfile::tempdir_in(".")?;
            let out = scratch.path().join("out.jsonl");
            let keys = [PROCESSING, ""][variant];
            let (state, address, namespace) =
                servers::serve_pipeline(scratch.path(), "flow", file_pipeline("flow", &out, keys))
                    .await?;
            namespace.kept.pauses.set(Some("out"), true)?;
            let writes = (0..messages).map(|i| json!({"payload": payload(i)}));
            servers::write_batches(&client, address, "flow", writes).await?;
            servers::indexed(&state, "flow").await?;
            let resumed = Instant::now();
            namespace.kept.pauses.set(Some("out"), false)?;
            servers::settle(&state, "flow").await?;
            let took = resumed.elapsed();
            state.supervisor.close().await;
            Ok(Sample::of(messages as f64 / took.as_secs_f64()))
        })
    })?;
    let mut flow = flow.into_iter();
    let (processed, plain) = (
        flow.next().unwrap_or_default(),
        flow.next().unwrap_or_default(),
    );
    let flow_table = Table {
        id: "10-processing",
        title: format!(
            "10. Delivery to a file, {messages} messages, with a filter and a transform against none"
        ),
        unit: "messages/s",
        rows: vec![
            Row::new("filter + transform", "at least once", processed),
            Row::new("no processing", "at least once", plain),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtLeast(0.8),
        notes: vec![format!(
            "filter `.payload.kind != \"test\"`, transform `.payload |= del(.card)`; timed from the resume to the delivery cursor at the log's end"
        )],
    };

    let scratch = tempfile::tempdir_in(".")?;
    let schema = scratch.path().join("order.schema.json");
    std::fs::write(
        &schema,
        json!({
            "$schema": "https://json-schema.org/draft/2020-12/schema",
            "type": "object",
            "required": ["id", "kind", "amount"],
            "properties": {
                "id": {"type": "string", "pattern": "^order-[0-9]+$"},
                "kind": {"enum": ["sale", "refund"]},
                "amount": {"type": "number", "minimum": 0},
                "card": {"type": "string"},
                "note": {"type": "string", "maxLength": 1000}
            }
        })
        .to_string(),
    )?;
    let connections = if mode.full { 256 } else { 64 };
    // One server, both namespaces: only the schema differs.
    let address = runtime.block_on(async {
        let with = format!(
            "namespace = \"checked\"\n[source]\ntype = \"http\"\npublic = true\nschema = \"{}\"\n",
            schema.display()
        );
        let without = "namespace = \"unchecked\"\n[source]\ntype = \"http\"\npublic = true\n";
        let state = servers::bench_state(
            scratch.path(),
            &[
                ("checked.toml", with),
                ("unchecked.toml", without.to_string()),
            ],
        )
        .await?;
        servers::serve_as_wald(router(state)).await
    })?;
    let body = |namespace: &str| {
        Bytes::from(json!({"namespace": namespace, "payload": payload(1)}).to_string())
    };
    let period = Duration::from_secs(mode.seconds);
    let writes = alternate(mode.rounds, 2, |variant| {
        let namespace = ["checked", "unchecked"][variant];
        load::post(
            address,
            "/api/v1/wal/write",
            body(namespace),
            connections,
            period,
        )
    })?;
    let mut writes = writes.into_iter();
    let (with, without) = (
        writes.next().unwrap_or_default(),
        writes.next().unwrap_or_default(),
    );
    let schema_table = Table {
        id: "10-schema",
        title: format!(
            "10. Single writes, 256-byte JSON payloads, {connections} connections, with a JSON Schema against none"
        ),
        unit: "writes/s",
        rows: vec![
            Row::new("[source] schema", "fdatasync before 202", with),
            Row::new("no schema", "fdatasync before 202", without),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtLeast(0.9),
        notes: vec![format!(
            "payload {} bytes; the schema checks 5 properties, a pattern and an enum",
            payload(1).to_string().len()
        )],
    };
    Ok(vec![flow_table, schema_table])
}
