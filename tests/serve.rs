//! `wald serve` through the real binary: it starts on the shipped pipelines, opens and
//! recovers their embedded logs, answers its probes, quarantines a bad file or a
//! corrupt log without exiting, and stops on SIGTERM.

mod common;

use common::{Server, stop};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

async fn start(
    pipelines: &std::path::Path,
    data: &std::path::Path,
) -> Result<(tokio::process::Child, String)> {
    let server = Server::start(pipelines, data, &[]).await?;
    Ok((server.child, server.address))
}

#[tokio::test]
async fn serve_runs_the_shipped_pipelines_and_answers_health() -> Result {
    let data = tempfile::tempdir()?;
    let (child, address) = start(&common::root().join("pipelines"), data.path()).await?;
    let health: serde_json::Value = reqwest::get(format!("http://{address}/api/v1/health"))
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "ok", "{health}");
    let names: Vec<&str> = health["namespaces"]
        .as_array()
        .ok_or("namespaces")?
        .iter()
        .filter_map(|n| n["namespace"].as_str())
        .collect();
    assert_eq!(names, ["demo", "orders"]);
    for namespace in health["namespaces"].as_array().ok_or("namespaces")? {
        assert_eq!(namespace["state"], "running", "{namespace}");
        assert_eq!(namespace["log"]["next_offset"], 0, "{namespace}");
    }
    assert!(
        data.path()
            .join("demo/log/00000000000000000000.log")
            .exists()
    );
    let response = reqwest::get(format!("http://{address}/api/v1/health/liveness")).await?;
    assert_eq!(response.status(), 200);
    // Ready once every namespace delivers: 503 "starting" until then.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    loop {
        let response = reqwest::get(format!("http://{address}/api/v1/health/readiness")).await?;
        let status = response.status();
        let body: serde_json::Value = response.json().await?;
        if status == 200 {
            assert_eq!(body["status"], "ready");
            break;
        }
        assert_eq!(
            (status.as_u16(), body["status"].as_str()),
            (503, Some("starting"))
        );
        assert!(std::time::Instant::now() < deadline, "never ready: {body}");
        tokio::time::sleep(std::time::Duration::from_millis(10)).await;
    }
    let missing = reqwest::get(format!("http://{address}/no/such/route")).await?;
    assert_eq!(missing.status(), 404);
    let body: serde_json::Value = missing.json().await?;
    assert_eq!(body["error"]["code"], "route_not_found");
    assert!(stop(child).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_bad_file_is_quarantined_and_the_others_still_run() -> Result {
    let dir = tempfile::tempdir()?;
    std::fs::copy(
        common::root().join("pipelines/demo.toml"),
        dir.path().join("demo.toml"),
    )?;
    std::fs::write(
        dir.path().join("broken.toml"),
        "namespace = \"broken\"\n[source\n",
    )?;
    let (child, address) = start(dir.path(), dir.path()).await?;
    let health: serde_json::Value = reqwest::get(format!("http://{address}/api/v1/health"))
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "degraded", "{health}");
    assert_eq!(health["namespaces"][0]["namespace"], "demo");
    assert!(
        health["quarantined_files"][0]
            .as_str()
            .unwrap_or("")
            .ends_with("broken.toml"),
        "{health}"
    );
    assert!(stop(child).await?.success());
    Ok(())
}

#[tokio::test]
async fn a_corrupt_log_fails_its_namespace_alone_and_keeps_its_data() -> Result {
    use wald::message::Record;
    use wald::producer::embedded::{Config, NamespaceStore};

    let data = tempfile::tempdir()?;
    let store = NamespaceStore::open(data.path(), "demo", &Config::default())?;
    for i in 0..20u8 {
        store
            .log
            .append(vec![Record {
                payload: vec![i; 100],
                ..Record::default()
            }])
            .await?;
    }
    store.log.close().await;
    // Damage the third record: intact records written after it had been synced follow,
    // so this is corruption, not a torn write.
    let segment = data.path().join("demo/log/00000000000000000000.log");
    let mut bytes = std::fs::read(&segment)?;
    let position = wald::producer::embedded::format::SEGMENT_HEADER_LEN + 2 * 170 + 60;
    bytes[position] ^= 0x40;
    std::fs::write(&segment, &bytes)?;

    let (child, address) = start(&common::root().join("pipelines"), data.path()).await?;
    let health: serde_json::Value = reqwest::get(format!("http://{address}/api/v1/health"))
        .await?
        .json()
        .await?;
    assert_eq!(health["status"], "degraded", "{health}");
    let demo = &health["namespaces"][0];
    assert_eq!(
        (demo["namespace"].as_str(), demo["state"].as_str()),
        (Some("demo"), Some("failed")),
        "{health}"
    );
    let error = demo["error"].as_str().unwrap_or_default();
    assert!(
        error.contains("corrupt log") && error.contains("00000000000000000000.log"),
        "{error}"
    );
    assert_eq!(health["namespaces"][1]["state"], "running", "{health}");
    assert!(stop(child).await?.success());
    // Nothing was cut off or deleted.
    assert_eq!(std::fs::read(&segment)?, bytes);
    Ok(())
}

#[tokio::test]
async fn the_openapi_document_and_its_offline_page_are_served() -> Result {
    let data = tempfile::tempdir()?;
    let (child, address) = start(&common::root().join("pipelines"), data.path()).await?;
    let spec: serde_json::Value = reqwest::get(format!("http://{address}/api/openapi.json"))
        .await?
        .json()
        .await?;
    assert!(
        spec["openapi"].as_str().unwrap_or("").starts_with("3."),
        "{spec}"
    );
    let paths: Vec<&String> = spec["paths"].as_object().ok_or("paths")?.keys().collect();
    for route in [
        "/api/v1/wal/write",
        "/api/v1/wal/write/batch",
        "/api/v1/wal/namespace/{namespace}/status",
        "/api/v1/wal/namespace/{namespace}/metrics",
        "/api/v1/wal/transaction/{id}/status",
        "/api/v1/wal/namespace/{namespace}/dlq",
        "/api/v1/wal/namespace/{namespace}/dlq/replay",
        "/api/v1/health",
        "/api/v1/health/liveness",
        "/api/v1/health/readiness",
        "/metrics",
    ] {
        assert!(
            paths.iter().any(|p| *p == route),
            "{route} missing from {paths:?}"
        );
    }
    // Every reference resolves.
    fn refs<'v>(value: &'v serde_json::Value, out: &mut Vec<&'v str>) {
        match value {
            serde_json::Value::Object(map) => {
                if let Some(r) = map.get("$ref").and_then(|r| r.as_str()) {
                    out.push(r);
                }
                map.values().for_each(|v| refs(v, out));
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| refs(v, out)),
            _ => {}
        }
    }
    let mut found = Vec::new();
    refs(&spec, &mut found);
    assert!(!found.is_empty());
    for reference in found {
        let pointer = reference.strip_prefix('#').ok_or(reference)?;
        assert!(spec.pointer(pointer).is_some(), "dangling {reference}");
    }

    // The page and its assets come from the binary itself.
    let page = reqwest::get(format!("http://{address}/api/docs/")).await?;
    assert_eq!(page.status(), 200);
    assert!(page.text().await?.contains("swagger-ui"));
    let asset = reqwest::get(format!("http://{address}/api/docs/swagger-ui-bundle.js")).await?;
    assert_eq!(asset.status(), 200);
    assert!(asset.bytes().await?.len() > 100_000);
    assert!(stop(child).await?.success());
    Ok(())
}

#[tokio::test]
async fn json_logs_are_one_object_per_line_and_carry_the_request_id() -> Result {
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes)?;
    // A namespace whose log is a file, not a directory: its writes fail and are logged.
    std::fs::write(
        pipes.join("broken.toml"),
        "namespace = \"broken\"\n[source]\ntype = \"http\"\npublic = true\n",
    )?;
    let data = dir.path().join("data");
    std::fs::create_dir_all(data.join("broken"))?;
    std::fs::write(data.join("broken/log"), "not a directory")?;
    let config = dir.path().join("wald.toml");
    std::fs::write(&config, "log_format = \"json\"\n")?;
    let server =
        Server::start(&pipes, &data, &["--config", config.to_str().ok_or("path")?]).await?;
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write"))
        .header("x-request-id", "trace-me-42")
        .json(&serde_json::json!({"namespace": "broken", "payload": 1}))
        .send()
        .await?;
    assert_eq!(response.status(), 503);
    let child = server.child;
    assert!(stop(child).await?.success());
    let lines = server.log.lock().map_err(|_| "poisoned")?.clone();
    assert!(lines.len() > 3, "{lines:?}");
    for line in &lines {
        let object: serde_json::Value = serde_json::from_str(line)?;
        assert!(
            object["level"].is_string() && object["timestamp"].is_string(),
            "{line}"
        );
    }
    assert!(
        lines
            .iter()
            .any(|l| l.contains("trace-me-42") && l.contains("Write refused")),
        "the refused write is logged with its request id: {lines:?}"
    );
    Ok(())
}
