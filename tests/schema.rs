//! `[source] schema` through the real binary: a payload that breaks the namespace's
//! JSON Schema is answered 422 `schema_violation` with every violation's pointer, and
//! nothing of it is appended or delivered; in a batch only that message is refused; a
//! change of the schema file alone is reloaded; `wald validate` places a bad schema at
//! the `schema` key.

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::{Server, stop, validate_json};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const ORDERS: &str = r#"{
  "$schema": "https://json-schema.org/draft/2020-12/schema",
  "type": "object",
  "required": ["id", "amount"],
  "properties": {
    "id": {"type": "string"},
    "amount": {"type": "number", "minimum": 0}
  }
}"#;

/// `pipelines/orders.toml` with its schema in `pipelines/schemas/`, delivering to a
/// file; the file's path.
fn pipeline(dir: &Path) -> Result<std::path::PathBuf> {
    let pipes = dir.join("pipelines");
    std::fs::create_dir_all(pipes.join("schemas"))?;
    std::fs::write(pipes.join("schemas/orders.schema.json"), ORDERS)?;
    let out = dir.join("out.jsonl");
    std::fs::write(
        pipes.join("orders.toml"),
        format!(
            "namespace = \"orders\"\n[source]\ntype = \"http\"\npublic = true\n\
             schema = \"schemas/orders.schema.json\"\n\
             [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n",
            out.display()
        ),
    )?;
    Ok(out)
}

async fn post(server: &Server, path: &str, body: Value) -> Result<(u16, Value)> {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await?;
    let status = response.status().as_u16();
    Ok((status, response.json().await.unwrap_or(Value::Null)))
}

async fn next_offset(server: &Server) -> Result<u64> {
    let status: Value = reqwest::get(server.url("/api/v1/wal/namespace/orders/status"))
        .await?
        .json()
        .await?;
    status["log"]["next_offset"]
        .as_u64()
        .ok_or_else(|| format!("no log.next_offset in {status}").into())
}

fn delivered(out: &Path) -> Vec<Value> {
    std::fs::read_to_string(out)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| v["payload"].clone())
        .collect()
}

#[tokio::test]
async fn payloads_that_break_the_schema_are_refused_and_never_appended() -> Result {
    let dir = tempfile::tempdir()?;
    let out = pipeline(dir.path())?;
    let server =
        Server::start(&dir.path().join("pipelines"), &dir.path().join("data"), &[]).await?;

    let (status, _) = post(
        &server,
        "/api/v1/wal/write",
        json!({"namespace": "orders", "payload": {"id": "a1", "amount": 5}}),
    )
    .await?;
    assert_eq!(status, 202);
    let before = next_offset(&server).await?;

    let (status, body) = post(
        &server,
        "/api/v1/wal/write",
        json!({"namespace": "orders", "payload": {"amount": -3, "note": "x"}}),
    )
    .await?;
    assert_eq!(status, 422, "{body}");
    assert_eq!(body["error"]["code"], "schema_violation");
    let violations = body["error"]["violations"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    let pointers: Vec<&str> = violations
        .iter()
        .filter_map(|v| v["pointer"].as_str())
        .collect();
    assert!(pointers.contains(&"/amount"), "{body}");
    assert!(
        pointers.contains(&""),
        "the missing `id` is reported: {body}"
    );
    assert!(
        violations
            .iter()
            .all(|v| v["message"].as_str().is_some_and(|m| !m.is_empty()))
    );
    let (status, body) = post(
        &server,
        "/api/v1/wal/write",
        json!({"namespace": "orders", "payload_base64": "AAEC"}),
    )
    .await?;
    assert_eq!(
        status, 422,
        "a binary payload cannot satisfy a schema: {body}"
    );
    assert_eq!(next_offset(&server).await?, before, "nothing was appended");

    // In a batch only the message that breaks the schema is refused.
    let (status, body) = post(
        &server,
        "/api/v1/wal/write/batch",
        json!({"namespace": "orders", "messages": [
            {"payload": {"id": "b1", "amount": 1}},
            {"payload": {"id": 7, "amount": 1}},
            {"payload": {"id": "b3", "amount": 2}},
        ]}),
    )
    .await?;
    assert_eq!(status, 202, "{body}");
    let results = body["results"].as_array().cloned().unwrap_or_default();
    let statuses: Vec<u64> = results
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [202, 422, 202], "{body}");
    assert_eq!(results[1]["error"]["code"], "schema_violation");
    assert_eq!(results[1]["error"]["violations"][0]["pointer"], "/id");
    assert_eq!(next_offset(&server).await?, before + 2);

    let deadline = Instant::now() + Duration::from_secs(10);
    while delivered(&out).len() < 3 {
        assert!(Instant::now() < deadline, "{:?}", delivered(&out));
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let ids: Vec<Value> = delivered(&out).iter().map(|p| p["id"].clone()).collect();
    assert_eq!(ids, [json!("a1"), json!("b1"), json!("b3")]);

    // A change of the schema file alone changes the namespace.
    let schema = dir.path().join("pipelines/schemas/orders.schema.json");
    std::fs::write(&schema, ORDERS.replace("\"minimum\": 0", "\"minimum\": 10"))?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let (status, body) = post(
            &server,
            "/api/v1/wal/write",
            json!({"namespace": "orders", "payload": {"id": "c1", "amount": 5}}),
        )
        .await?;
        if status == 422 {
            assert_eq!(body["error"]["violations"][0]["pointer"], "/amount");
            break;
        }
        assert_eq!(status, 202);
        assert!(Instant::now() < deadline, "the new schema never applied");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    stop(server.child).await?;
    Ok(())
}

#[test]
fn validate_places_a_bad_schema_at_the_schema_key() -> Result {
    let dir = tempfile::tempdir()?;
    pipeline(dir.path())?;
    let pipes = dir.path().join("pipelines");
    let file = pipes.join("orders.toml");
    let (code, found) = validate_json(&[&file]);
    assert_eq!(code, Some(0), "{found:?}");

    for (schema, what) in [
        (None, "missing"),
        (Some("{\"type\": \"nope\"}"), "not a schema"),
        (Some("not json"), "not JSON"),
    ] {
        let path = pipes.join("schemas/orders.schema.json");
        match schema {
            Some(text) => std::fs::write(&path, text)?,
            None => {
                let _ = std::fs::remove_file(&path);
            }
        }
        let (code, found) = validate_json(&[&file]);
        assert_eq!(code, Some(1), "{what}: {found:?}");
        assert_eq!(found.len(), 1, "{what}: {found:?}");
        assert_eq!(found[0].code, "invalid_schema", "{what}");
        assert_eq!(found[0].place, "5:10", "{what}: at the value of `schema`");
    }
    Ok(())
}
