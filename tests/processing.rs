//! Processing through the real binary, with real targets: a namespace step drops a
//! field from every message; a filter sends refunds to Postgres and everything to a
//! file; transforms reshape a Postgres statement's parameters and a webhook's body; an
//! expression that fails on a message sends it to the DLQ with its error; a filter
//! changed by a reload applies to what is delivered after it, nothing lost; `wald
//! validate` places a bad expression inside its string.

mod common;

use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use common::{Server, stop, validate_json};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// Bodies a webhook received.
type Bodies = Arc<Mutex<Vec<Value>>>;

async fn webhook() -> Result<(String, Bodies)> {
    let bodies = Bodies::default();
    let kept = bodies.clone();
    let app = axum::Router::new().route(
        "/hook",
        axum::routing::post(move |body: axum::Json<Value>| {
            let kept = kept.clone();
            async move {
                kept.lock().map(|mut b| b.push(body.0)).ok();
                axum::http::StatusCode::OK
            }
        }),
    );
    Ok((format!("http://{}/hook", common::serve(app).await?), bodies))
}

async fn write(server: &Server, namespace: &str, payload: Value) -> Result<Value> {
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write"))
        .json(&json!({"namespace": namespace, "payload": payload}))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    Ok(response.json().await?)
}

fn lines(path: &Path) -> Vec<Value> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect()
}

async fn until(what: &str, done: impl Fn() -> Result<bool>) -> Result {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done()? {
        if Instant::now() > deadline {
            return Err(format!("timed out waiting for {what}").into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    Ok(())
}

fn psql(sql: &str) -> Result<String> {
    let out = common::psql(&["-At".as_ref(), "-c".as_ref(), sql.as_ref()])?;
    if !out.status.success() {
        return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

#[tokio::test]
async fn filters_and_transforms_decide_what_each_target_receives() -> Result {
    if !common::service_available("Postgres", "127.0.0.1:5432") {
        return Ok(());
    }
    let table = format!("wald_test_refunds_{}", std::process::id());
    psql(&format!(
        "DROP TABLE IF EXISTS {table}; CREATE TABLE {table} (id text PRIMARY KEY, cents bigint NOT NULL, reason text)"
    ))?;
    let dir = tempfile::tempdir()?;
    let (hook_url, bodies) = webhook().await?;
    let all = dir.path().join("all.jsonl");
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("shop.toml"),
        format!(
            r#"namespace = "shop"
[source]
type = "http"
public = true

[[processor]]
name = "drop card numbers"
transform = ".payload |= del(.card)"

[[target]]
name = "refunds"
type = "postgres"
url = "postgres://postgres@127.0.0.1:5432/test"
statement = "INSERT INTO {table} (id, cents, reason) VALUES ($message_id, $payload.cents, $payload.reason) ON CONFLICT (id) DO NOTHING"
filter = '.payload.kind == "refund"'
transform = ".payload |= {{cents: (.amount * 100 | floor), reason: (.reason // \"none\")}}"

[[target]]
name = "all"
type = "file"
path = "{all}"

[[target]]
name = "hook"
type = "http"
url = "{hook_url}"
body = "payload"
transform = "{{payload: {{event: .payload.kind, id: .message_id, at: .timestamp_ms}}}}"
"#,
            all = all.display()
        ),
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;

    let sale = write(
        &server,
        "shop",
        json!({"kind": "sale", "amount": 10, "card": "4111"}),
    )
    .await?;
    let refund = write(
        &server,
        "shop",
        json!({"kind": "refund", "amount": 2.5, "reason": "broken", "card": "4111"}),
    )
    .await?;
    let bad = write(&server, "shop", json!({"kind": "refund", "amount": "lots"})).await?;

    until("three messages in the file", || Ok(lines(&all).len() >= 3)).await?;
    until("three webhook calls", || {
        Ok(bodies.lock().map_or(0, |b| b.len()) >= 3)
    })
    .await?;
    // Every target got the messages without their card number.
    for line in lines(&all) {
        assert!(line["payload"].get("card").is_none(), "{line}");
    }
    let kinds: Vec<Value> = lines(&all)
        .iter()
        .map(|l| l["payload"]["kind"].clone())
        .collect();
    assert_eq!(kinds, [json!("sale"), json!("refund"), json!("refund")]);
    // The webhook got the reshaped body.
    let first = bodies.lock().map_err(|_| "lock")?[0].clone();
    assert_eq!(first["event"], "sale");
    assert_eq!(first["id"], sale["message_id"]);
    assert!(first["at"].as_u64().is_some(), "{first}");
    assert_eq!(first.as_object().map(|o| o.len()), Some(3), "{first}");

    // Postgres got the one good refund, in cents, with its reshaped parameters.
    let counted = until("the refund row", || {
        Ok(psql(&format!("SELECT count(*) FROM {table}"))? == "1")
    })
    .await;
    if counted.is_err() {
        for line in server.log.lock().map_err(|_| "lock")?.iter() {
            eprintln!("{line}");
        }
        counted?;
    }
    let row = psql(&format!("SELECT id, cents, reason FROM {table}"))?;
    assert_eq!(
        row,
        format!("{}|250|broken", refund["message_id"].as_str().unwrap_or(""))
    );

    // The sale was skipped for `refunds`, the bad refund dead-lettered with the error.
    let tx = |id: &Value| {
        let url = server.url(&format!(
            "/api/v1/wal/transaction/{}/status",
            id.as_str().unwrap_or("")
        ));
        async move { Ok::<Value, Box<dyn std::error::Error>>(reqwest::get(url).await?.json().await?) }
    };
    let sold = tx(&sale["transaction_id"]).await?;
    let sold_refunds = &sold["messages"][0]["targets"]["refunds"];
    assert_eq!(sold_refunds["state"], "skipped", "{sold}");
    assert!(
        sold_refunds["last_error"]
            .as_str()
            .is_some_and(|e| e.contains("filter"))
    );
    assert_eq!(sold["state"], "delivered", "skipped counts as done: {sold}");
    let deadline = Instant::now() + Duration::from_secs(20);
    let failed = loop {
        let status = tx(&bad["transaction_id"]).await?;
        if status["messages"][0]["targets"]["refunds"]["state"] == "dead_lettered" {
            break status;
        }
        assert!(Instant::now() < deadline, "{status}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let error = failed["messages"][0]["targets"]["refunds"]["last_error"]
        .as_str()
        .unwrap_or("");
    assert!(error.starts_with("transform:"), "{error}");
    assert_eq!(
        failed["messages"][0]["targets"]["all"]["state"],
        "delivered"
    );

    let status: Value = reqwest::get(server.url("/api/v1/wal/namespace/shop/status"))
        .await?
        .json()
        .await?;
    let refunds = status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == "refunds"))
        .cloned()
        .unwrap_or_default();
    assert_eq!(refunds["delivery"]["skipped"], 1, "{status}");
    assert_eq!(refunds["delivery"]["dead_lettered"], 1, "{status}");
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(
        metrics.contains(
            "wald_deliveries_total{namespace=\"shop\",target=\"refunds\",outcome=\"skipped\"} 1"
        ),
        "{metrics}"
    );
    stop(server.child).await?;
    psql(&format!("DROP TABLE IF EXISTS {table}"))?;
    Ok(())
}

#[tokio::test]
async fn a_filter_changed_by_a_reload_applies_to_what_comes_after_and_loses_nothing() -> Result {
    let dir = tempfile::tempdir()?;
    let (big, small) = (dir.path().join("big.jsonl"), dir.path().join("small.jsonl"));
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    let file = |limit: u32| {
        format!(
            "namespace = \"nums\"\n[source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"big\"\ntype = \"file\"\npath = \"{}\"\nfilter = \".payload.n >= {limit}\"\n\
             [[target]]\nname = \"small\"\ntype = \"file\"\npath = \"{}\"\nfilter = \".payload.n < {limit}\"\n",
            big.display(),
            small.display()
        )
    };
    std::fs::write(pipes.join("nums.toml"), file(50))?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let writer = {
        let url = server.url("/api/v1/wal/write");
        tokio::spawn(async move {
            let client = reqwest::Client::new();
            for i in 0..200u32 {
                let body = json!({"namespace": "nums", "payload": {"i": i, "n": i % 100}});
                let status = client.post(&url).json(&body).send().await?.status();
                assert_eq!(status, 202);
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok::<_, reqwest::Error>(())
        })
    };
    tokio::time::sleep(Duration::from_millis(300)).await;
    std::fs::write(pipes.join("nums.toml"), file(90))?;
    writer.await??;
    // Each message went to exactly one of the two, by the filter of its time: none
    // lost, none to both.
    until("every message at one target", || {
        Ok(lines(&big).len() + lines(&small).len() >= 200)
    })
    .await?;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let mut seen: Vec<u64> = lines(&big)
        .iter()
        .chain(lines(&small).iter())
        .filter_map(|l| l["payload"]["i"].as_u64())
        .collect();
    seen.sort_unstable();
    assert_eq!(seen, (0..200).collect::<Vec<u64>>());
    // The last messages, written well after the reload, follow the new filter.
    let late_big: Vec<u64> = lines(&big)
        .iter()
        .filter(|l| l["payload"]["i"].as_u64() >= Some(190))
        .filter_map(|l| l["payload"]["n"].as_u64())
        .collect();
    assert_eq!(late_big, [90, 91, 92, 93, 94, 95, 96, 97, 98, 99]);

    // A filter that does not compile quarantines the file: the namespace runs on with
    // the last good one.
    std::fs::write(
        pipes.join("nums.toml"),
        file(90).replace(".payload.n >= 90", ".payload.n >= "),
    )?;
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let health: Value = reqwest::get(server.url("/api/v1/health"))
            .await?
            .json()
            .await?;
        if health["quarantined_files"]
            .as_array()
            .is_some_and(|f| !f.is_empty())
        {
            break;
        }
        assert!(Instant::now() < deadline, "not quarantined: {health}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let body = json!({"namespace": "nums", "payload": {"i": 1000, "n": 95}});
    let status = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write"))
        .json(&body)
        .send()
        .await?
        .status();
    assert_eq!(status, 202);
    until("the message after the broken edit", || {
        Ok(lines(&big)
            .iter()
            .any(|l| l["payload"]["i"].as_u64() == Some(1000)))
    })
    .await?;
    stop(server.child).await?;
    Ok(())
}

#[test]
fn validate_places_a_bad_expression_inside_its_string() -> Result {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("shop.toml");
    std::fs::write(
        &file,
        "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\n\
         [[processor]]\nfilter = \".payload.ok\"\ntransform = \".\"\n\
         [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"out.jsonl\"\n\
         filter = \".payload | nosuchfn(1)\"\ntransform = \".payload |= (. + \"\n",
    )?;
    let (code, found) = validate_json(&[&file]);
    assert_eq!(code, Some(1), "{found:?}");
    let places: Vec<(&str, &str)> = found
        .iter()
        .map(|f| (f.code.as_str(), f.place.as_str()))
        .collect();
    assert_eq!(
        places,
        [
            ("invalid_value", "5:1"),
            ("invalid_expression", "12:22"),
            ("invalid_expression", "13:13"),
        ],
        "{found:?}"
    );
    Ok(())
}

/// A namespace with one target of each type, a schema, a namespace step, filters and
/// transforms, for the dry run.
const DRY_RUN: &str = r#"namespace = "shop"
[source]
type = "http"
public = true
schema = "order.schema.json"

[[processor]]
name = "drop cards"
transform = ".payload |= del(.card)"

[[target]]
name = "archive"
type = "file"
path = "/var/lib/wald/out/shop.jsonl"

[[target]]
name = "partner"
type = "http"
url = "https://user:secret@partner.example/hooks?token=abc"
body = "payload"
headers = { Authorization = "Bearer ${PARTNER_TOKEN:-t}" }
signing_secrets = ["whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"]
filter = ".payload.total > 100"
transform = "{payload: {event: (\"order.\" + .payload.status), id: .message_id}}"

[[target]]
name = "refunds"
type = "postgres"
url = "postgres://wald@db.invalid/shop"
statement = "INSERT INTO refunds (id, cents) VALUES ($message_id, $payload.cents) ON CONFLICT (id) DO NOTHING"
filter = '.payload.status == "refunded"'
transform = ".payload |= {cents: (.total * 100 | floor)}"

[[target]]
name = "cache"
type = "redis"
url = "redis://cache.invalid:6379"
command = "SET"
key = "order:{payload.id}"
value = "payload"

[[target]]
name = "events"
type = "kafka"
brokers = "kafka.invalid:9092"
topic = "orders"
key = "{payload.id}"
value = "payload"
"#;

const DRY_RUN_SAMPLES: &str = r#"{"namespace": "shop", "key": "o-1", "payload": {"id": "o-1", "status": "paid", "total": 150, "card": "4111"}}
{"namespace": "shop", "payload": {"id": "o-2", "status": "refunded", "total": 2.5}}
{"namespace": "shop", "payload": {"id": 3, "status": "paid"}}
{"namespace": "shop", "payload": {"id": "o-4", "status": 7, "total": 500}, "targets": ["partner", "archive"]}
not json
"#;

#[test]
fn the_dry_run_shows_what_each_target_would_be_sent() -> Result {
    let dir = tempfile::tempdir()?;
    std::fs::write(
        dir.path().join("order.schema.json"),
        r#"{"type": "object", "required": ["id", "status"], "properties": {"id": {"type": "string"}, "total": {"type": "number"}}}"#,
    )?;
    let file = dir.path().join("shop.toml");
    std::fs::write(&file, DRY_RUN)?;
    let samples = dir.path().join("samples.jsonl");
    std::fs::write(&samples, DRY_RUN_SAMPLES)?;
    let output = common::wald()
        .arg("validate")
        .arg("--sample")
        .arg(&samples)
        .arg(&file)
        .output()?;
    let text = common::stdout(&output)
        .replace(&samples.display().to_string(), "samples.jsonl")
        .replace(&dir.path().display().to_string(), "<dir>");
    assert_eq!(
        output.status.code(),
        Some(1),
        "line 5 is not a write request\n{text}"
    );
    let expected = std::fs::read_to_string(common::root().join("tests/fixtures/dry-run.txt"))?;
    assert_eq!(text, expected, "\n--- got ---\n{text}");

    let output = common::wald()
        .args(["validate", "--format", "json", "--sample"])
        .arg(&samples)
        .arg(&file)
        .output()?;
    let lines: Vec<Value> = common::stdout(&output)
        .lines()
        .map(serde_json::from_str)
        .collect::<std::result::Result<_, _>>()?;
    let samples: Vec<&Value> = lines.iter().filter(|l| l.get("sample").is_some()).collect();
    let outcomes: Vec<&str> = samples
        .iter()
        .filter_map(|l| l["outcome"].as_str())
        .collect();
    assert_eq!(
        outcomes,
        ["accepted", "accepted", "refused", "accepted", "unreadable"]
    );
    let results: Vec<&str> = samples[0]["targets"]
        .as_array()
        .map(|ts| ts.iter().filter_map(|t| t["result"].as_str()).collect())
        .unwrap_or_default();
    assert_eq!(results, ["send", "send", "skipped", "send", "send"]);
    assert_eq!(
        samples[1]["targets"][2]["sends"]["parameters"],
        json!(["sample-2", 250])
    );
    Ok(())
}

#[test]
fn test_cases_in_the_pipeline_file_pass_or_say_what_differs() -> Result {
    let dir = tempfile::tempdir()?;
    let file = dir.path().join("shop.toml");
    let pipeline = r#"namespace = "shop"
[source]
type = "http"
public = true

[[target]]
name = "partner"
type = "http"
url = "https://partner.example/hooks"
body = "payload"
filter = ".payload.total > 100"
transform = "{payload: {event: (\"order.\" + .payload.status), id: .message_id}}"

[[target.processor]]
name = "no cancelled orders"
filter = '.payload.status != "cancelled"'

[[target]]
name = "archive"
type = "file"
path = "out.jsonl"

[[test]]
name = "the partner's own step keeps cancelled orders from it"
input = { payload = { status = "cancelled", total = 500 } }
expect.partner = "skipped"
expect.archive = { line = { payload = { status = "cancelled" } } }

[[test]]
name = "big orders reach the partner, reshaped"
input = { payload = { status = "paid", total = 150 } }
expect.partner = { method = "POST", body = { event = "order.paid", id = "sample-2" } }
expect.archive = { line = { payload = { total = 150 } } }

[[test]]
name = "small orders do not"
input = { payload = { status = "paid", total = 5 } }
expect.partner = "skipped"

[[test]]
name = "a status that is not text fails the partner"
input = { payload = { status = 7, total = 500 }, targets = ["partner"] }
expect.partner = "failed"
expect.archive = "not_addressed"
"#;
    std::fs::write(&file, pipeline)?;
    let (code, found) = validate_json(&[&file]);
    assert_eq!(code, Some(0), "every case holds: {found:?}");

    let broken = format!(
        "{pipeline}\n[[test]]\nname = \"wrong on purpose\"\n\
         input = {{ payload = {{ status = \"paid\", total = 150 }} }}\n\
         expect.partner = {{ body = {{ event = \"order.shipped\" }} }}\n\
         expect.archive = \"skipped\"\n"
    );
    std::fs::write(&file, broken)?;
    let output = common::wald().arg("validate").arg(&file).output()?;
    let text = common::stdout(&output);
    assert_eq!(output.status.code(), Some(1), "{text}");
    assert!(text.contains("error[test_failed]"), "{text}");
    assert!(
        text.contains("test `wrong on purpose` does not hold"),
        "{text}"
    );
    assert!(
        text.contains(r#"partner.body.event: expected "order.shipped", got "order.paid""#),
        "{text}"
    );
    assert!(
        text.contains("archive: expected \"skipped\", got {"),
        "{text}"
    );
    assert!(
        text.contains(":46:1"),
        "at the failing case's header: {text}"
    );
    Ok(())
}
