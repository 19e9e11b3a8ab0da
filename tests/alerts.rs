//! Alerts through the real binary, to an endpoint started by the test: a dead-lettered
//! message, a circuit that opens and a quarantined pipeline file each post one signed
//! event; a storm of dead-letters posts the burst and then one summary.

mod common;

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{Server, serve, stop};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const SECRET: &str = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw";

/// Alerts received, each with its headers.
type Received = Arc<Mutex<Vec<(HeaderMap, Vec<u8>)>>>;

async fn alert(State(received): State<Received>, headers: HeaderMap, body: axum::body::Bytes) {
    received
        .lock()
        .expect("lock")
        .push((headers, body.to_vec()));
}

/// A webhook that refuses every message for good (400).
async fn picky() -> StatusCode {
    StatusCode::BAD_REQUEST
}

/// Serves `/alerts` and `/picky`.
async fn endpoints() -> Result<(SocketAddr, Received)> {
    let received = Received::default();
    let app = axum::Router::new()
        .route("/alerts", axum::routing::post(alert))
        .route("/picky", axum::routing::post(picky))
        .with_state(received.clone());
    Ok((serve(app).await?, received))
}

/// A port nothing listens on.
async fn refusing() -> Result<SocketAddr> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    Ok(listener.local_addr()?)
}

/// `wald serve` posting alerts to `at` (with `burst` and `window`) and running the
/// namespace `shop` with `targets` (its `[[target]]` tables) and fast retries; the
/// server and its pipelines directory.
async fn start(
    dir: &std::path::Path,
    at: SocketAddr,
    burst: u32,
    window: &str,
    targets: &str,
) -> Result<(Server, std::path::PathBuf)> {
    let config = dir.join("wald.toml");
    std::fs::write(
        &config,
        format!(
            "[alerts]\nurl = \"http://{at}/alerts\"\nsigning_secrets = [\"{SECRET}\"]\n\
             burst = {burst}\nwindow = \"{window}\"\n"
        ),
    )?;
    let pipes = dir.join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("shop.toml"),
        format!(
            "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer.retry]\ninitial_backoff = \"50ms\"\n{targets}"
        ),
    )?;
    let config = config.display().to_string();
    let server = Server::start(&pipes, &dir.join("data"), &["--config", &config]).await?;
    Ok((server, pipes))
}

/// Checks a Standard Webhooks signature: `v1,base64(HMAC-SHA256(key, "id.ts.body"))`.
fn signed(headers: &HeaderMap, body: &[u8]) -> bool {
    use base64::Engine;
    use hmac::{KeyInit, Mac};
    let engine = base64::engine::general_purpose::STANDARD;
    let header = |name| {
        headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
    };
    let key = engine
        .decode(SECRET.trim_start_matches("whsec_"))
        .expect("key");
    let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(&key).expect("key");
    mac.update(format!("{}.{}.", header("webhook-id"), header("webhook-timestamp")).as_bytes());
    mac.update(body);
    let expected = format!("v1,{}", engine.encode(mac.finalize().into_bytes()));
    header("webhook-signature")
        .split(' ')
        .any(|s| s == expected)
}

/// The alerts received so far, as JSON, once each was checked to be signed.
fn alerts(received: &Received) -> Vec<Value> {
    received
        .lock()
        .expect("lock")
        .iter()
        .map(|(headers, body)| {
            assert!(signed(headers, body), "an alert is not signed right");
            serde_json::from_slice(body).expect("an alert is JSON")
        })
        .collect()
}

/// Waits until an alert of type `kind` matching `pick` arrived; that alert.
async fn wait_for(received: &Received, kind: &str, pick: impl Fn(&Value) -> bool) -> Result<Value> {
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        if let Some(found) = alerts(received)
            .into_iter()
            .find(|a| a["type"] == kind && pick(a))
        {
            return Ok(found);
        }
        if Instant::now() > deadline {
            return Err(format!("no `{kind}` alert; got {:?}", alerts(received)).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn write(server: &Server, namespace: &str, count: usize) -> Result {
    let messages: Vec<Value> = (0..count)
        .map(|i| json!({"key": format!("k{i}"), "payload": {"i": i}}))
        .collect();
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write/batch"))
        .json(&json!({"namespace": namespace, "messages": messages}))
        .send()
        .await?;
    assert_eq!(response.status(), 202, "{}", response.text().await?);
    Ok(())
}

#[tokio::test]
async fn a_dead_letter_an_open_circuit_and_a_quarantined_file_are_alerted() -> Result {
    let dir = tempfile::tempdir()?;
    let (at, received) = endpoints().await?;
    let down = refusing().await?;
    let targets = format!(
        "[[target]]\nname = \"picky\"\ntype = \"http\"\nurl = \"http://{at}/picky\"\n\
         [[target]]\nname = \"down\"\ntype = \"http\"\nurl = \"http://{down}/hook\"\n\
         circuit_breaker = {{ failures = 3, cool_down = \"5s\" }}\n"
    );
    let (server, pipes) = start(dir.path(), at, 10, "1m", &targets).await?;

    write(&server, "shop", 1).await?;
    let dead = wait_for(&received, "message.dead_lettered", |_| true).await?;
    assert_eq!(dead["data"]["namespace"], "shop");
    assert_eq!(dead["data"]["target"], "picky");
    assert_eq!(dead["data"]["attempts"], 1);
    assert_eq!(dead["data"]["kept"], true);
    assert!(
        dead["data"]["error"]
            .as_str()
            .is_some_and(|e| e.contains("400")),
        "{dead}"
    );
    assert!(
        dead["data"]["message_id"]
            .as_str()
            .is_some_and(|id| !id.is_empty())
    );
    assert!(dead["timestamp"].as_str().is_some_and(|t| t.ends_with('Z')));

    let opened = wait_for(&received, "target.circuit_opened", |_| true).await?;
    assert_eq!(opened["data"]["target"], "down");
    assert_eq!(opened["data"]["cool_down_ms"], 5000);

    // A broken file is quarantined once, however many reloads see it.
    std::fs::write(
        pipes.join("bad.toml"),
        "namespace = \"bad\"\n[source]\ntype = \"smtp\"\n",
    )?;
    let quarantined = wait_for(&received, "pipeline.quarantined", |_| true).await?;
    assert!(
        quarantined["data"]["file"]
            .as_str()
            .is_some_and(|f| f.ends_with("bad.toml")),
        "{quarantined}"
    );
    let error = &quarantined["data"]["errors"][0];
    assert_eq!(error["line"], 3, "{quarantined}");
    std::fs::write(
        pipes.join("other.toml"),
        "namespace = \"other\"\n[source]\ntype = \"http\"\npublic = true\n",
    )?;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let count = |kind: &str| {
        alerts(&received)
            .iter()
            .filter(|a| a["type"] == kind)
            .count()
    };
    assert_eq!(count("pipeline.quarantined"), 1, "{:?}", alerts(&received));
    assert_eq!(
        count("target.circuit_opened"),
        1,
        "a failed probe is not a new opening"
    );

    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("wald_alerts_total{outcome=\"posted\"}") && !l.ends_with(" 0")),
        "{metrics}"
    );
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn a_storm_posts_the_burst_then_one_summary() -> Result {
    let dir = tempfile::tempdir()?;
    let (at, received) = endpoints().await?;
    let picky =
        format!("[[target]]\nname = \"picky\"\ntype = \"http\"\nurl = \"http://{at}/picky\"\n");
    let (server, _) = start(dir.path(), at, 2, "2s", &picky).await?;

    write(&server, "shop", 30).await?;
    let summary = wait_for(&received, "alerts.summary", |_| true).await?;
    let got = alerts(&received);
    assert_eq!(got.len(), 3, "two alerts and a summary: {got:?}");
    assert_eq!(got[0]["type"], "message.dead_lettered");
    assert_eq!(got[1]["type"], "message.dead_lettered");
    assert_eq!(summary["data"]["held"], 28, "{summary}");
    assert_eq!(
        summary["data"]["counts"],
        json!([{"type": "message.dead_lettered", "namespace": "shop", "target": "picky", "count": 28}])
    );
    assert_eq!(
        summary["data"]["examples"].as_array().map(Vec::len),
        Some(3)
    );
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    for line in [
        "wald_alerts_total{outcome=\"posted\"} 3",
        "wald_alerts_total{outcome=\"held\"} 28",
        "wald_alerts_total{outcome=\"failed\"} 0",
    ] {
        assert!(metrics.lines().any(|l| l == line), "{line} in {metrics}");
    }
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn an_unreachable_endpoint_holds_up_nothing_and_shows_in_metrics() -> Result {
    let dir = tempfile::tempdir()?;
    let (at, received) = endpoints().await?;
    let nowhere = refusing().await?;
    let picky =
        format!("[[target]]\nname = \"picky\"\ntype = \"http\"\nurl = \"http://{at}/picky\"\n");
    let (server, _) = start(dir.path(), nowhere, 10, "1m", &picky).await?;
    let began = Instant::now();
    write(&server, "shop", 5).await?;
    let deadline = began + Duration::from_secs(20);
    loop {
        let status: Value = reqwest::get(server.url("/api/v1/wal/namespace/shop/status"))
            .await?
            .json()
            .await?;
        let dead = status["targets"][0]["delivery"]["dead_lettered"].as_u64();
        if dead == Some(5) {
            break;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(
        began.elapsed() < Duration::from_secs(2),
        "delivery waited for alerts: {:?}",
        began.elapsed()
    );
    let deadline = Instant::now() + Duration::from_secs(20);
    loop {
        let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
        let failing = metrics
            .lines()
            .any(|l| l == "wald_component_up{namespace=\"\",component=\"alerts\"} 0");
        if failing && !metrics.contains("wald_alerts_total{outcome=\"failed\"} 0") {
            break;
        }
        assert!(Instant::now() < deadline, "{metrics}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(received.lock().expect("lock").is_empty());
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn a_circuit_that_closes_again_is_alerted() -> Result {
    let dir = tempfile::tempdir()?;
    let (at, received) = endpoints().await?;
    let down = refusing().await?;
    let targets = format!(
        "[[target]]\nname = \"flaky\"\ntype = \"http\"\nurl = \"http://{down}/hook\"\n\
         circuit_breaker = {{ failures = 2, cool_down = \"200ms\", max_cool_down = \"400ms\" }}\n"
    );
    let (server, _) = start(dir.path(), at, 10, "1m", &targets).await?;
    write(&server, "shop", 1).await?;
    wait_for(&received, "target.circuit_opened", |a| {
        a["data"]["target"] == "flaky"
    })
    .await?;
    // The target comes back on the same port: the next probe closes the circuit.
    let app = axum::Router::new().route("/hook", axum::routing::post(|| async { StatusCode::OK }));
    let listener = tokio::net::TcpListener::bind(down).await?;
    tokio::spawn(async move { axum::serve(listener, app).await });
    let closed = wait_for(&received, "target.circuit_closed", |_| true).await?;
    assert_eq!(closed["data"]["target"], "flaky");
    assert!(closed["data"]["open_ms"].as_u64() > Some(0), "{closed}");
    stop(server.child).await?;
    Ok(())
}
