//! Transaction status through the real binary: every acknowledged write is found at
//! once, per message and per target, on the embedded store and on Postgres; it
//! survives SIGKILL; unknown and malformed ids are answered with their codes; `wald tx`
//! prints it.

mod common;

use std::path::Path;

use common::{Server, psql, service_available};
use reqwest::StatusCode;
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// A public namespace `shop` with targets `db` and `hook`, both files.
fn pipeline(dir: &Path) -> Result {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("shop.toml"),
        format!(
            "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"db\"\ntype = \"file\"\npath = \"{out}/db.jsonl\"\n\
             [[target]]\nname = \"hook\"\ntype = \"file\"\npath = \"{out}/hook.jsonl\"\n",
            out = dir.join("out").display()
        ),
    )?;
    Ok(())
}

async fn post(server: &Server, path: &str, body: Value) -> Result<Value> {
    let response = reqwest::Client::new()
        .post(server.url(path))
        .json(&body)
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::ACCEPTED);
    Ok(response.json().await?)
}

async fn transaction(server: &Server, id: &str) -> Result<(StatusCode, Value)> {
    let response =
        reqwest::get(server.url(&format!("/api/v1/wal/transaction/{id}/status"))).await?;
    Ok((response.status(), response.json().await?))
}

/// Writes one message and a batch of three (the last to `hook` only), and checks that
/// both transactions are found at once with every message pending for its targets.
async fn write_and_look_up(server: &Server) -> Result<(String, String)> {
    let single = post(
        server,
        "/api/v1/wal/write",
        json!({"namespace": "shop", "payload": {"order": 1}}),
    )
    .await?;
    let batch = post(
        server,
        "/api/v1/wal/write/batch",
        json!({"namespace": "shop", "messages": [
            {"payload": 1}, {"payload": 2}, {"payload": 3, "targets": ["hook"]}
        ]}),
    )
    .await?;
    let single_id = single["transaction_id"].as_str().ok_or("id")?.to_string();
    let batch_id = batch["transaction_id"].as_str().ok_or("id")?.to_string();

    let (status, body) = transaction(server, &single_id).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    assert_eq!(body["transaction_id"], single_id.as_str());
    // Found at once: pending, or already delivered (the targets are files).
    assert!(
        ["pending", "delivered"].contains(&body["state"].as_str().unwrap_or("")),
        "{body}"
    );
    let messages = body["messages"].as_array().ok_or("messages")?;
    assert_eq!(messages.len(), 1);
    assert_eq!(messages[0]["message_id"], single["message_id"]);
    assert_eq!(messages[0]["namespace"], "shop");
    assert_eq!(messages[0]["offset"], 0);
    for target in ["db", "hook"] {
        let state = &messages[0]["targets"][target];
        match state["state"].as_str() {
            Some("pending") => assert_eq!(state["attempts"], 0, "{body}"),
            Some("delivered") => assert_eq!(state["attempts"], 1, "{body}"),
            _ => panic!("unexpected state: {body}"),
        }
    }

    let (status, body) = transaction(server, &batch_id).await?;
    assert_eq!(status, StatusCode::OK, "{body}");
    let messages = body["messages"].as_array().ok_or("messages")?;
    let ids: Vec<&Value> = messages.iter().map(|m| &m["message_id"]).collect();
    let sent: Vec<&Value> = batch["results"]
        .as_array()
        .ok_or("results")?
        .iter()
        .map(|r| &r["message_id"])
        .collect();
    assert_eq!(ids, sent, "messages in log order");
    let targets: Vec<Vec<String>> = messages
        .iter()
        .map(|m| {
            m["targets"]
                .as_object()
                .map(|t| t.keys().cloned().collect())
                .unwrap_or_default()
        })
        .collect();
    assert_eq!(
        targets,
        [vec!["db", "hook"], vec!["db", "hook"], vec!["hook"]]
    );
    Ok((single_id, batch_id))
}

#[tokio::test]
async fn every_acknowledged_write_is_found_at_once_and_after_sigkill() -> Result {
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    let data = dir.path().join("data");
    pipeline(&pipes)?;
    let server = Server::start(&pipes, &data, &[]).await?;
    let (single, batch) = write_and_look_up(&server).await?;

    // Unknown and malformed ids.
    let (status, body) = transaction(&server, &uuid::Uuid::now_v7().to_string()).await?;
    assert_eq!(status, StatusCode::NOT_FOUND);
    assert_eq!(body["error"]["code"], "transaction_not_found");
    let (status, body) = transaction(&server, "not-an-id").await?;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert_eq!(body["error"]["code"], "malformed_request");

    // `wald tx` prints it, and says when it is unknown.
    let address = format!("http://{}", server.address);
    let output = common::wald()
        .args(["tx", &single, "--server", &address])
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));
    let printed: Value = serde_json::from_str(&common::stdout(&output))?;
    assert_eq!(printed["transaction_id"], single.as_str());
    let unknown = uuid::Uuid::now_v7().to_string();
    let output = common::wald()
        .args(["tx", &unknown, "--server", &address])
        .output()?;
    assert_eq!(output.status.code(), Some(1));

    // Killed without a chance to flush anything: the status is still there after a
    // restart, read again from the log if the store had not kept it.
    let mut child = server.child;
    child.start_kill()?;
    child.wait().await?;
    let server = Server::start(&pipes, &data, &[]).await?;
    for id in [&single, &batch] {
        let (status, body) = transaction(&server, id).await?;
        assert_eq!(status, StatusCode::OK, "{body}");
    }
    let (status, body) = transaction(&server, &batch).await?;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(body["messages"].as_array().map(Vec::len), Some(3));
    common::stop(server.child).await?;
    Ok(())
}

/// Starts wald on the `shop` pipeline with `[status_store]` set to `store`.
async fn start_with_store(dir: &Path, store: &str) -> Result<Server> {
    let pipes = dir.join("pipelines");
    pipeline(&pipes)?;
    let config = dir.join("wald.toml");
    std::fs::write(&config, format!("[status_store]\n{store}\n"))?;
    Server::start(
        &pipes,
        &dir.join("data"),
        &["--config", config.to_str().ok_or("path")?],
    )
    .await
}

#[tokio::test]
async fn the_postgres_store_keeps_status_in_its_table() -> Result {
    if !service_available("Postgres", "127.0.0.1:5432") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = start_with_store(
        dir.path(),
        "type = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/test\"",
    )
    .await?;
    let (single, batch) = write_and_look_up(&server).await?;
    let rows = psql(&[
        "-At".as_ref(),
        "-c".as_ref(),
        format!(
            "SELECT count(*) FROM wald_message_status WHERE transaction_id IN ('{single}', '{batch}')"
        )
        .as_ref(),
    ])?;
    assert!(
        rows.status.success(),
        "{}",
        String::from_utf8_lossy(&rows.stderr)
    );
    assert_eq!(String::from_utf8_lossy(&rows.stdout).trim(), "4");
    common::stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn the_redis_store_keeps_status_in_a_hash_that_expires() -> Result {
    if !service_available("Redis", "127.0.0.1:6379") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let server = start_with_store(
        dir.path(),
        "type = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nretention = \"1h\"",
    )
    .await?;
    let (single, _) = write_and_look_up(&server).await?;
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")?
        .get_multiplexed_async_connection()
        .await?;
    let key = format!("wald:status:{single}");
    // One field for the message, one per target state change since.
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(&key)
        .query_async(&mut redis)
        .await?;
    assert_eq!(
        fields.iter().filter(|f| f.starts_with("m:")).count(),
        1,
        "{fields:?}"
    );
    assert!(
        fields
            .iter()
            .all(|f| f.starts_with("m:") || f.starts_with("t:")),
        "{fields:?}"
    );
    let ttl: i64 = redis::cmd("PTTL").arg(&key).query_async(&mut redis).await?;
    assert!(ttl > 0 && ttl <= 3_600_000, "{ttl}");
    common::stop(server.child).await?;
    Ok(())
}
