//! The write routes through the real binary and the real embedded log: answers only
//! after durability, the auth matrix, limits answered with their codes and nothing
//! appended, per-message batch answers, and an acknowledged write surviving SIGKILL.

mod common;

use std::path::Path;

use common::{Server, stop};
use reqwest::StatusCode;
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn sha256(key: &str) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(key.as_bytes()))
}

/// Namespaces `alpha` and `beta` with a key each, `open` public with small limits,
/// `limited` public with a rate limit of 1 per second and a burst of 3.
fn pipelines(dir: &Path) -> Result {
    // Delivered messages go next to the pipelines, inside the test's own directory.
    let out = dir.join("out");
    for (name, key) in [("alpha", "alpha-key"), ("beta", "beta-key")] {
        std::fs::write(
            dir.join(format!("{name}.toml")),
            format!(
                "namespace = \"{name}\"\n[source]\ntype = \"http\"\napi_keys_sha256 = [\"{}\"]\n\
                 [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}/{name}.jsonl\"\n",
                sha256(key),
                out.display()
            ),
        )?;
    }
    std::fs::write(
        dir.join("open.toml"),
        format!(
            "namespace = \"open\"\n[source]\ntype = \"http\"\npublic = true\nmax_message_bytes = \"100B\"\nmax_delay = \"1h\"\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}/open.jsonl\"\n",
            out.display()
        ),
    )?;
    std::fs::write(
        dir.join("limited.toml"),
        format!(
            "namespace = \"limited\"\n[source]\ntype = \"http\"\npublic = true\nrate_limit = {{ per_second = 1, burst = 3 }}\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}/limited.jsonl\"\n",
            out.display()
        ),
    )?;
    Ok(())
}

struct Setup {
    _dir: tempfile::TempDir,
    data: std::path::PathBuf,
    server: Server,
    client: reqwest::Client,
}

async fn setup() -> Result<Setup> {
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir(&pipes)?;
    pipelines(&pipes)?;
    let config = dir.path().join("wald.toml");
    std::fs::write(
        &config,
        "[http]\nmax_body_bytes = \"2KiB\"\nmax_json_depth = 8\nheader_read_timeout = \"1s\"\nrequest_timeout = \"2s\"\n",
    )?;
    let data = dir.path().join("data");
    let server =
        Server::start(&pipes, &data, &["--config", config.to_str().ok_or("path")?]).await?;
    Ok(Setup {
        _dir: dir,
        data,
        server,
        client: reqwest::Client::new(),
    })
}

impl Setup {
    async fn post(
        &self,
        path: &str,
        body: Value,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value)> {
        self.post_raw(path, body.to_string(), headers).await
    }

    async fn post_raw(
        &self,
        path: &str,
        body: String,
        headers: &[(&str, &str)],
    ) -> Result<(StatusCode, Value)> {
        let mut request = self.client.post(self.server.url(path)).body(body);
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let response = request.send().await?;
        let status = response.status();
        assert!(
            response.headers().contains_key("x-request-id"),
            "every answer carries X-Request-Id"
        );
        Ok((status, response.json().await?))
    }

    async fn next_offset(&self, namespace: &str) -> Result<u64> {
        let health: Value = reqwest::get(self.server.url("/api/v1/health"))
            .await?
            .json()
            .await?;
        let ns = health["namespaces"]
            .as_array()
            .ok_or("namespaces")?
            .iter()
            .find(|n| n["namespace"] == namespace)
            .ok_or("namespace missing")?;
        ns["log"]["next_offset"]
            .as_u64()
            .ok_or_else(|| format!("no offset in {ns}").into())
    }
}

fn code(body: &Value) -> &str {
    body["error"]["code"].as_str().unwrap_or("")
}

#[tokio::test]
async fn a_write_is_answered_202_with_ids_once_durable() -> Result {
    let s = setup().await?;
    let (status, body) = s
        .post(
            "/api/v1/wal/write",
            json!({"namespace": "open", "payload": {"n": 1}, "key": "k"}),
            &[],
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    assert_eq!(body["durability"], "durable");
    for id in ["message_id", "transaction_id"] {
        assert!(
            uuid::Uuid::parse_str(body[id].as_str().unwrap_or("")).is_ok(),
            "{id} in {body}"
        );
    }
    assert_eq!(s.next_offset("open").await?, 1);
    Ok(())
}

#[tokio::test]
async fn the_auth_matrix_holds() -> Result {
    let s = setup().await?;
    let write = |ns: &str| json!({"namespace": ns, "payload": 1});
    // (namespace, headers, expected status, expected code)
    type Case<'a> = (&'a str, Vec<(&'a str, &'a str)>, StatusCode, &'a str);
    let cases: Vec<Case> = vec![
        ("alpha", vec![], StatusCode::UNAUTHORIZED, "missing_api_key"),
        (
            "alpha",
            vec![("authorization", "Bearer wrong")],
            StatusCode::UNAUTHORIZED,
            "invalid_api_key",
        ),
        (
            "alpha",
            vec![("x-api-key", "beta-key")],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "beta",
            vec![("authorization", "Bearer alpha-key")],
            StatusCode::FORBIDDEN,
            "forbidden",
        ),
        (
            "alpha",
            vec![("authorization", "Basic alpha-key")],
            StatusCode::UNAUTHORIZED,
            "missing_api_key",
        ),
    ];
    for (ns, headers, want, want_code) in cases {
        let (status, body) = s.post("/api/v1/wal/write", write(ns), &headers).await?;
        assert_eq!(
            (status, code(&body)),
            (want, want_code),
            "{ns} {headers:?}: {body}"
        );
    }
    assert_eq!(
        s.next_offset("alpha").await?,
        0,
        "refused writes append nothing"
    );
    for headers in [
        [("authorization", "Bearer alpha-key")],
        [("x-api-key", "alpha-key")],
    ] {
        let (status, body) = s
            .post("/api/v1/wal/write", write("alpha"), &headers)
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    assert_eq!(s.next_offset("alpha").await?, 2);
    Ok(())
}

#[tokio::test]
async fn bad_input_is_refused_with_its_code_and_appends_nothing() -> Result {
    let s = setup().await?;
    let big = "x".repeat(3000);
    let deep = format!(
        "{{\"namespace\": \"open\", \"payload\": {}1{}}}",
        "[".repeat(20),
        "]".repeat(20)
    );
    let cases: Vec<(String, StatusCode, &str)> = vec![
        (
            json!({"namespace": "open", "payload": big}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "body_too_large",
        ),
        (
            json!({"namespace": "open", "payload": "x".repeat(200)}).to_string(),
            StatusCode::PAYLOAD_TOO_LARGE,
            "message_too_large",
        ),
        (
            "{\"namespace\": \"open\", \"payload\": ".to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            json!({"namespace": "open", "payload": 1, "colour": "red"}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (
            json!({"payload": 1}).to_string(),
            StatusCode::BAD_REQUEST,
            "malformed_request",
        ),
        (deep, StatusCode::BAD_REQUEST, "malformed_request"),
        (
            json!({"namespace": "nope", "payload": 1}).to_string(),
            StatusCode::NOT_FOUND,
            "namespace_not_found",
        ),
        (
            json!({"namespace": "open"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
        (
            json!({"namespace": "open", "payload_base64": "***"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
        (
            json!({"namespace": "open", "payload": 1, "delay": "2h"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
        (
            json!({"namespace": "open", "payload": 1, "delay": "soon"}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
        (
            json!({"namespace": "open", "payload": 1, "targets": ["nope"]}).to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
        (
            json!({"namespace": "open", "payload": 1, "headers": {"wald-message-id": "x"}})
                .to_string(),
            StatusCode::BAD_REQUEST,
            "invalid_message",
        ),
    ];
    for (body, want, want_code) in cases {
        let (status, answer) = s.post_raw("/api/v1/wal/write", body.clone(), &[]).await?;
        assert_eq!(
            (status, code(&answer)),
            (want, want_code),
            "{body:.80}: {answer}"
        );
        assert!(answer["error"]["request_id"].is_string());
    }
    assert_eq!(s.next_offset("open").await?, 0);
    let (status, body) = s.post("/no/such/route", json!({}), &[]).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::NOT_FOUND, "route_not_found")
    );
    Ok(())
}

#[tokio::test]
async fn a_batch_is_answered_per_message_and_its_valid_messages_appended_together() -> Result {
    let s = setup().await?;
    let batch = json!({"namespace": "open", "messages": [
        {"payload": 1, "key": "a"},
        {"payload": "x".repeat(200)},
        {"payload_base64": "aGVsbG8="},
        {"namespace": "alpha", "payload": 2},
    ]});
    let (status, body) = s.post("/api/v1/wal/write/batch", batch, &[]).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    let statuses: Vec<u64> = body["results"]
        .as_array()
        .ok_or("results")?
        .iter()
        .filter_map(|r| r["status"].as_u64())
        .collect();
    assert_eq!(statuses, [202, 413, 202, 400]);
    assert_eq!(body["results"][1]["error"]["code"], "message_too_large");
    assert_eq!(s.next_offset("open").await?, 2);

    let (status, body) = s
        .post(
            "/api/v1/wal/write/batch",
            json!({"namespace": "open", "messages": [{"payload": "x".repeat(200)}]}),
            &[],
        )
        .await?;
    assert_eq!(status, StatusCode::BAD_REQUEST, "{body}");
    assert_eq!(code(&body), "invalid_message");
    assert_eq!(body["results"][0]["error"]["code"], "message_too_large");
    let (status, _) = s
        .post(
            "/api/v1/wal/write/batch",
            json!({"namespace": "alpha", "messages": [{"payload": 1}]}),
            &[],
        )
        .await?;
    assert_eq!(status, StatusCode::UNAUTHORIZED);
    Ok(())
}

#[tokio::test]
async fn an_acknowledged_write_survives_sigkill() -> Result {
    let s = setup().await?;
    let mut acknowledged = Vec::new();
    for n in 0..20 {
        let (status, body) = s
            .post(
                "/api/v1/wal/write",
                json!({"namespace": "open", "payload": {"n": n}}),
                &[],
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED);
        acknowledged.push(body["message_id"].as_str().ok_or("id")?.to_string());
    }
    let Setup {
        _dir, data, server, ..
    } = s;
    let mut child = server.child;
    child.start_kill()?;
    child.wait().await?;

    let store = wald::producer::embedded::NamespaceStore::open(&data, "open", &Default::default())?;
    let records = store.log.read(0, usize::MAX, usize::MAX)?;
    let ids: Vec<String> = records
        .iter()
        .filter_map(|r| r.headers.iter().find(|(k, _)| k == "wald-message-id"))
        .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
        .collect();
    assert_eq!(ids, acknowledged);
    for (n, record) in records.iter().enumerate() {
        assert_eq!(record.payload, format!("{{\"n\":{n}}}").into_bytes());
    }
    store.log.close().await;
    Ok(())
}

#[tokio::test]
async fn shutdown_is_graceful() -> Result {
    let s = setup().await?;
    let (status, _) = s
        .post(
            "/api/v1/wal/write",
            json!({"namespace": "open", "payload": 1}),
            &[],
        )
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED);
    assert!(stop(s.server.child).await?.success());
    Ok(())
}

#[tokio::test]
async fn the_rate_limit_answers_429_with_retry_after() -> Result {
    let s = setup().await?;
    for _ in 0..3 {
        let (status, body) = s
            .post(
                "/api/v1/wal/write",
                json!({"namespace": "limited", "payload": 1}),
                &[],
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED, "{body}");
    }
    let response = s
        .client
        .post(s.server.url("/api/v1/wal/write"))
        .body(json!({"namespace": "limited", "payload": 1}).to_string())
        .send()
        .await?;
    assert_eq!(response.status(), StatusCode::TOO_MANY_REQUESTS);
    let retry_after: u64 = response
        .headers()
        .get("retry-after")
        .ok_or("no Retry-After")?
        .to_str()?
        .parse()?;
    assert!((1..=2).contains(&retry_after), "{retry_after}");
    let body: Value = response.json().await?;
    assert_eq!(code(&body), "rate_limited");
    assert_eq!(s.next_offset("limited").await?, 3);
    Ok(())
}

#[tokio::test]
async fn wald_write_sends_payloads_and_files_and_says_what_was_refused() -> Result {
    let s = setup().await?;
    let server = format!("http://{}", s.server.address);
    let run = |args: Vec<String>| {
        let mut command = common::wald();
        command.args(["write", "--server", &server]).args(&args);
        command.output()
    };
    let output = run(vec![
        "-n".into(),
        "open".into(),
        "-k".into(),
        "a".into(),
        "{\"n\":1}".into(),
    ])?;
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));
    let answer: Value = serde_json::from_str(common::stdout(&output).trim())?;
    assert_eq!(answer["durability"], "durable");

    let file = s._dir.path().join("requests.jsonl");
    std::fs::write(
        &file,
        "{\"namespace\":\"open\",\"payload\":2}\n\n{\"namespace\":\"open\",\"payload\":\"xxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxxx\"}\n",
    )?;
    let output = run(vec!["--file".into(), file.display().to_string()])?;
    assert_eq!(output.status.code(), Some(1), "one message was too large");
    assert_eq!(common::stdout(&output).lines().count(), 2);
    assert_eq!(s.next_offset("open").await?, 2);

    let output = run(vec![
        "-n".into(),
        "alpha".into(),
        "--api-key".into(),
        "alpha-key".into(),
        "1".into(),
    ])?;
    assert_eq!(output.status.code(), Some(0), "{}", common::stdout(&output));
    let output = common::wald()
        .args(["write", "--server", "http://127.0.0.1:1", "-n", "open", "1"])
        .output()?;
    assert_eq!(output.status.code(), Some(2));
    Ok(())
}

#[tokio::test]
async fn the_seed_messages_write_to_the_shipped_pipelines() -> Result {
    let data = tempfile::tempdir()?;
    let server = Server::start(&common::root().join("pipelines"), data.path(), &[]).await?;
    let url = format!("http://{}", server.address);
    for (file, key) in [
        ("seeds/demo.jsonl", None),
        ("seeds/orders.jsonl", Some("orders-demo-key")),
    ] {
        let mut command = common::wald();
        command.args(["write", "--server", &url, "--file", file]);
        if let Some(key) = key {
            command.args(["--api-key", key]);
        }
        let output = command.output()?;
        assert_eq!(
            output.status.code(),
            Some(0),
            "{file}: {}",
            common::stdout(&output)
        );
    }
    assert!(stop(server.child).await?.success());
    Ok(())
}

#[tokio::test]
async fn namespace_status_shows_positions_and_wald_status_prints_it() -> Result {
    let s = setup().await?;
    for headers in [
        [("authorization", "bearer alpha-key")],
        [("authorization", "BEARER alpha-key")],
    ] {
        let (status, body) = s
            .post(
                "/api/v1/wal/write",
                json!({"namespace": "alpha", "payload": 1}),
                &headers,
            )
            .await?;
        assert_eq!(
            status,
            StatusCode::ACCEPTED,
            "the scheme is case-insensitive: {body}"
        );
    }
    let status: Value = reqwest::get(s.server.url("/api/v1/wal/namespace/alpha/status"))
        .await?
        .json()
        .await?;
    assert_eq!(status["state"], "running", "{status}");
    assert_eq!(status["log"]["next_offset"], 2);
    assert_eq!(status["dlq_depth"], 0);
    let groups: Vec<&str> = status["consumer_groups"]
        .as_array()
        .ok_or("groups")?
        .iter()
        .filter_map(|g| g["group"].as_str())
        .collect();
    assert_eq!(groups, ["wald"], "delivery's group, not the status index's");
    assert_eq!(status["targets"][0]["name"], "out");
    assert_eq!(status["targets"][0]["type"], "file");
    assert_eq!(status["writes"]["accepted_messages"], 2);
    assert!(
        status["file"]
            .as_str()
            .unwrap_or("")
            .ends_with("alpha.toml"),
        "{status}"
    );

    let missing = reqwest::get(s.server.url("/api/v1/wal/namespace/nope/status")).await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let server = format!("http://{}", s.server.address);
    let output = common::wald()
        .args(["status", "alpha", "--server", &server])
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", common::stdout(&output));
    let printed: Value = serde_json::from_str(&common::stdout(&output))?;
    assert_eq!(printed["log"]["next_offset"], 2);
    let output = common::wald()
        .args(["status", "--server", &server])
        .output()?;
    assert_eq!(output.status.code(), Some(0));
    assert_eq!(
        common::wald()
            .args(["status", "nope", "--server", &server])
            .output()?
            .status
            .code(),
        Some(1)
    );
    assert_eq!(
        common::wald()
            .args(["status", "--server", "http://127.0.0.1:1"])
            .output()?
            .status
            .code(),
        Some(2)
    );
    Ok(())
}

#[tokio::test]
async fn slow_clients_cannot_hold_a_connection() -> Result {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let s = setup().await?;

    // Headers that never end: the connection is closed after `header_read_timeout`.
    let mut stream = tokio::net::TcpStream::connect(&s.server.address).await?;
    stream
        .write_all(b"POST /api/v1/wal/write HTTP/1.1\r\nHost: x\r\n")
        .await?;
    let mut buf = Vec::new();
    let closed = tokio::time::timeout(
        std::time::Duration::from_secs(5),
        stream.read_to_end(&mut buf),
    )
    .await;
    assert!(
        closed.is_ok(),
        "the server kept a connection whose headers never ended"
    );

    // A body that never arrives: answered 408 after `request_timeout`; nothing can have
    // been written, so it does not claim "durability unknown".
    let mut stream = tokio::net::TcpStream::connect(&s.server.address).await?;
    stream
        .write_all(b"POST /api/v1/wal/write HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\n{\"namespace\"")
        .await?;
    let mut answer = vec![0u8; 4096];
    let n =
        tokio::time::timeout(std::time::Duration::from_secs(6), stream.read(&mut answer)).await??;
    let answer = String::from_utf8_lossy(&answer[..n]);
    assert!(answer.starts_with("HTTP/1.1 408"), "{answer}");
    assert!(
        answer.contains("\"code\":\"request_timeout\"") && !answer.contains("durability"),
        "{answer}"
    );
    assert_eq!(s.next_offset("open").await?, 0);
    Ok(())
}

#[tokio::test]
async fn metrics_count_writes_refusals_syncs_and_requests() -> Result {
    let s = setup().await?;
    for n in 0..2 {
        let (status, _) = s
            .post(
                "/api/v1/wal/write",
                json!({"namespace": "open", "payload": n}),
                &[],
            )
            .await?;
        assert_eq!(status, StatusCode::ACCEPTED);
    }
    let (status, _) = s
        .post(
            "/api/v1/wal/write",
            json!({"namespace": "open", "payload": "x".repeat(200)}),
            &[],
        )
        .await?;
    assert_eq!(status, StatusCode::PAYLOAD_TOO_LARGE);

    let metrics: Value = reqwest::get(s.server.url("/api/v1/wal/namespace/open/metrics"))
        .await?
        .json()
        .await?;
    assert_eq!(metrics["writes"]["accepted_messages"], 2, "{metrics}");
    assert_eq!(
        metrics["writes"]["refused"],
        json!({"message_too_large": 1})
    );
    assert_eq!(metrics["log"]["records"], 2);
    assert!(metrics["log"]["syncs"].as_u64().unwrap_or(0) >= 1);
    let missing = reqwest::get(s.server.url("/api/v1/wal/namespace/nope/metrics")).await?;
    assert_eq!(missing.status(), StatusCode::NOT_FOUND);

    let text = reqwest::get(s.server.url("/metrics")).await?.text().await?;
    for line in [
        "wald_namespace_up{namespace=\"open\"} 1",
        "wald_write_messages_total{namespace=\"open\"} 2",
        "wald_write_refused_total{namespace=\"open\",code=\"message_too_large\"} 1",
        "wald_log_records_total{namespace=\"open\"} 2",
        "wald_append_latency_seconds_count{namespace=\"open\"} 2",
        "wald_append_latency_seconds_bucket{namespace=\"open\",le=\"+Inf\"} 2",
        "wald_http_requests_total{route=\"/api/v1/wal/write\",status=\"202\"} 2",
        "wald_http_requests_total{route=\"/api/v1/wal/write\",status=\"413\"} 1",
    ] {
        assert!(
            text.lines().any(|l| l == line),
            "missing `{line}` in:\n{text}"
        );
    }
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        let (_, value) = line.rsplit_once(' ').ok_or("no value")?;
        assert!(value.parse::<f64>().is_ok(), "not a sample: {line}");
    }
    Ok(())
}

#[tokio::test]
async fn an_idempotency_key_repeats_the_first_answer_and_survives_a_restart() -> Result {
    let s = setup().await?;
    let write = json!({"namespace": "open", "payload": {"n": 1}, "idempotency_key": "order-1"});
    let (status, first) = s.post("/api/v1/wal/write", write.clone(), &[]).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{first}");
    let (status, again) = s.post("/api/v1/wal/write", write.clone(), &[]).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{again}");
    assert_eq!(
        (&again["message_id"], &again["transaction_id"]),
        (&first["message_id"], &first["transaction_id"])
    );
    assert_eq!(again["repeated"], true);
    assert_eq!(s.next_offset("open").await?, 1, "a repeat appends nothing");

    let other = json!({"namespace": "open", "payload": {"n": 2}, "idempotency_key": "order-1"});
    let (status, body) = s.post("/api/v1/wal/write", other, &[]).await?;
    assert_eq!(
        (status, code(&body)),
        (StatusCode::CONFLICT, "idempotency_conflict")
    );

    // In a batch, each message's key is checked on its own: a repeat gets its first
    // write's ids and appends nothing; a key already taken with another body, or twice
    // in one batch, is refused for that message alone.
    let batch = json!({"namespace": "open", "messages": [
        {"payload": {"n": 1}, "idempotency_key": "b-1"},
        {"payload": {"n": 2}, "idempotency_key": "b-2"},
        {"payload": {"n": 3}},
    ]});
    let (status, first_batch) = s
        .post("/api/v1/wal/write/batch", batch.clone(), &[])
        .await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{first_batch}");
    assert_eq!(s.next_offset("open").await?, 4);
    let again = json!({"namespace": "open", "messages": [
        {"payload": {"n": 1}, "idempotency_key": "b-1"},
        {"payload": {"n": 9}, "idempotency_key": "b-2"},
        {"payload": {"n": 4}, "idempotency_key": "b-3"},
        {"payload": {"n": 5}, "idempotency_key": "b-3"},
    ]});
    let (status, second) = s.post("/api/v1/wal/write/batch", again, &[]).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{second}");
    let results = &second["results"];
    assert_eq!(results[0]["repeated"], true, "{second}");
    assert_eq!(
        results[0]["message_id"],
        first_batch["results"][0]["message_id"]
    );
    assert_eq!(results[0]["transaction_id"], first_batch["transaction_id"]);
    assert_eq!(results[1]["status"], 409);
    assert_eq!(results[1]["error"]["code"], "idempotency_conflict");
    assert_eq!(results[2]["status"], 202);
    assert_eq!(results[3]["error"]["code"], "idempotency_in_progress");
    assert_eq!(s.next_offset("open").await?, 5, "only b-3 was appended");
    // A batch of repeats only is answered 202 and appends nothing.
    let repeats_only = json!({"namespace": "open", "messages": [
        {"payload": {"n": 1}, "idempotency_key": "b-1"},
        {"payload": {"n": 4}, "idempotency_key": "b-3"},
    ]});
    let (status, repeats) = s.post("/api/v1/wal/write/batch", repeats_only, &[]).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{repeats}");
    assert_eq!(s.next_offset("open").await?, 5);

    // After a restart the key is still known.
    let Setup {
        _dir,
        data,
        server,
        client,
    } = s;
    assert!(stop(server.child).await?.success());
    let config = _dir.path().join("wald.toml");
    let server = Server::start(
        &_dir.path().join("pipelines"),
        &data,
        &["--config", config.to_str().ok_or("path")?],
    )
    .await?;
    let s = Setup {
        _dir,
        data,
        server,
        client,
    };
    let (status, after) = s.post("/api/v1/wal/write", write, &[]).await?;
    assert_eq!(status, StatusCode::ACCEPTED, "{after}");
    assert_eq!(after["message_id"], first["message_id"]);
    assert_eq!(s.next_offset("open").await?, 5);
    Ok(())
}
