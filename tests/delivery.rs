//! Delivery through the real binary: to a file, and to a real HTTP server started by
//! the test that fails on purpose: retries with `Idempotency-Key` and a signature, a
//! poison message dead-lettered after exactly its attempts, a permanent error
//! dead-lettered at once, a delayed message never delivered early and surviving
//! SIGKILL, and transaction status following each message.

mod common;

use std::collections::HashMap;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::{HeaderMap, StatusCode};
use common::{PrivateRedis, Server, stop};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// One request the webhook received.
#[derive(Clone)]
struct Call {
    body: Value,
    raw: Vec<u8>,
    headers: HeaderMap,
    at: Instant,
    /// Whether the webhook answered 2xx.
    ok: bool,
}

/// What the webhook received, and how it should fail.
#[derive(Clone, Default)]
struct Hook {
    calls: Arc<Mutex<Vec<Call>>>,
    /// Per payload `kind`: how many of its first calls fail, and with which status.
    failures: Arc<Mutex<HashMap<String, (usize, u16)>>>,
}

async fn hook(State(hook): State<Hook>, headers: HeaderMap, body: axum::body::Bytes) -> StatusCode {
    let raw = body.to_vec();
    let body: Value = serde_json::from_slice(&raw).unwrap_or(Value::Null);
    let kind = body["payload"]["kind"].as_str().unwrap_or("").to_string();
    let answer = {
        let mut failures = hook.failures.lock().expect("lock");
        match failures.get_mut(&kind) {
            Some((left, status)) if *left > 0 => {
                *left -= 1;
                StatusCode::from_u16(*status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR)
            }
            _ => StatusCode::OK,
        }
    };
    let call = Call {
        body,
        raw,
        headers,
        at: Instant::now(),
        ok: answer.is_success(),
    };
    hook.calls.lock().map(|mut c| c.push(call)).ok();
    answer
}

/// Starts the webhook on a free port; returns its URL.
async fn start_hook(state: Hook) -> Result<String> {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(state);
    Ok(format!("http://{}/hook", common::serve(app).await?))
}

/// `shop`: public, targets `audit` (a file) and `hook` (the webhook), fast retries,
/// 3 attempts.
fn pipeline(dir: &Path, hook_url: &str, out: &Path) -> Result {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join("shop.toml"),
        format!(
            "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\nmax_delay = \"1h\"\n\
             [consumer.retry]\nmax_attempts = 3\ninitial_backoff = \"10ms\"\nmax_backoff = \"50ms\"\n\
             [[target]]\nname = \"audit\"\ntype = \"file\"\npath = \"{}\"\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{hook_url}\"\n\
             hmac_secret = \"0123456789abcdef0123\"\n",
            out.display()
        ),
    )?;
    Ok(())
}

async fn write(server: &Server, body: Value) -> Result<Value> {
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write"))
        .json(&body)
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    Ok(response.json().await?)
}

/// Polls the transaction until `done` holds, for at most `limit`.
async fn transaction_until(
    server: &Server,
    id: &str,
    limit: Duration,
    done: impl Fn(&Value) -> bool,
) -> Result<Value> {
    let deadline = Instant::now() + limit;
    loop {
        let status: Value =
            reqwest::get(server.url(&format!("/api/v1/wal/transaction/{id}/status")))
                .await?
                .json()
                .await?;
        if done(&status) {
            return Ok(status);
        }
        if Instant::now() > deadline {
            return Err(format!("transaction never reached the expected state: {status}").into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

/// Writes `body` and waits until its transaction's state is `state`; returns the
/// write's answer and the transaction's status.
async fn write_until(server: &Server, body: Value, state: &str) -> Result<(Value, Value)> {
    let written = write(server, body).await?;
    let tx = written["transaction_id"].as_str().ok_or("id")?;
    let status =
        transaction_until(server, tx, Duration::from_secs(30), |s| s["state"] == state).await?;
    Ok((written, status))
}

/// Writes `messages` to `namespace` as one batch and waits until its transaction's
/// state is `state`; returns the batch's answer and the transaction's status.
async fn batch_until(
    server: &Server,
    namespace: &str,
    messages: Value,
    state: &str,
) -> Result<(Value, Value)> {
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write/batch"))
        .json(&json!({"namespace": namespace, "messages": messages}))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    let batch: Value = response.json().await?;
    let tx = batch["transaction_id"].as_str().ok_or("id")?;
    let status =
        transaction_until(server, tx, Duration::from_secs(30), |s| s["state"] == state).await?;
    Ok((batch, status))
}

/// Each message's state at `target`, in log order.
fn states<'v>(status: &'v Value, target: &str) -> Vec<&'v str> {
    status["messages"]
        .as_array()
        .map(|messages| {
            messages
                .iter()
                .filter_map(|m| m["targets"][target]["state"].as_str())
                .collect()
        })
        .unwrap_or_default()
}

/// A batch's message ids, quoted for SQL.
fn quoted_ids(batch: &Value) -> String {
    batch["results"]
        .as_array()
        .map(|results| {
            results
                .iter()
                .filter_map(|r| r["message_id"].as_str().map(|id| format!("'{id}'")))
                .collect::<Vec<_>>()
                .join(",")
        })
        .unwrap_or_default()
}

fn target<'v>(status: &'v Value, name: &str) -> &'v Value {
    &status["messages"][0]["targets"][name]
}

#[tokio::test]
async fn messages_reach_every_target_with_retries_and_the_dlq_takes_what_keeps_failing() -> Result {
    let hook_state = Hook::default();
    hook_state.failures.lock().map_err(|_| "lock")?.extend([
        ("flaky".to_string(), (2, 503)),
        ("poison".to_string(), (usize::MAX, 500)),
        ("refused".to_string(), (usize::MAX, 422)),
    ]);
    let url = start_hook(hook_state.clone()).await?;
    let dir = tempfile::tempdir()?;
    let out = dir.path().join("out/audit.jsonl");
    pipeline(&dir.path().join("pipelines"), &url, &out)?;
    let server =
        Server::start(&dir.path().join("pipelines"), &dir.path().join("data"), &[]).await?;

    // A message for which the webhook fails twice with 503, then takes it.
    let (flaky, status) = write_until(
        &server,
        json!({"namespace": "shop", "key": "k", "payload": {"kind": "flaky"}}),
        "delivered",
    )
    .await?;
    assert_eq!(target(&status, "hook")["attempts"], 3, "{status}");
    assert_eq!(
        target(&status, "audit")["attempts"],
        1,
        "the file target is not tried again: {status}"
    );
    {
        let calls = hook_state.calls.lock().map_err(|_| "lock")?;
        assert_eq!(calls.len(), 3);
        for call in calls.iter() {
            assert_eq!(call.body["message_id"], flaky["message_id"]);
            assert_eq!(call.body["payload"], json!({"kind": "flaky"}));
            assert_eq!(
                call.headers["idempotency-key"],
                flaky["message_id"].as_str().ok_or("id")?
            );
            use hmac::{KeyInit, Mac};
            let mut mac = hmac::Hmac::<sha2::Sha256>::new_from_slice(b"0123456789abcdef0123")?;
            mac.update(&call.raw);
            let expected = format!("sha256={}", hex::encode(mac.finalize().into_bytes()));
            assert_eq!(call.headers["x-wald-signature"].to_str()?, expected);
        }
    }
    let lines = std::fs::read_to_string(&out)?;
    let line: Value = serde_json::from_str(lines.lines().next().ok_or("no line")?)?;
    assert_eq!(line["message_id"], flaky["message_id"]);
    assert_eq!(line["key"], "k");

    // A poison message: exactly max_attempts calls, then the DLQ.
    let before = hook_state.calls.lock().map_err(|_| "lock")?.len();
    let (poison, status) = write_until(
        &server,
        json!({"namespace": "shop", "payload": {"kind": "poison"}}),
        "dead_lettered",
    )
    .await?;
    let hook_state_calls = hook_state.calls.lock().map_err(|_| "lock")?.len() - before;
    assert_eq!(hook_state_calls, 3, "exactly max_attempts");
    assert_eq!(target(&status, "hook")["attempts"], 3);
    assert!(
        target(&status, "hook")["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("500"),
        "{status}"
    );
    assert_eq!(target(&status, "audit")["state"], "delivered");

    // A permanent error (422 is not in retry_on): one call, then the DLQ.
    let (_, status) = write_until(
        &server,
        json!({"namespace": "shop", "payload": {"kind": "refused"}}),
        "dead_lettered",
    )
    .await?;
    assert_eq!(target(&status, "hook")["attempts"], 1, "{status}");

    let ns = namespace_status(&server, "shop").await?;
    assert_eq!(ns["dlq_depth"], 2, "{ns}");
    let data = dir.path().join("data");
    stop(server.child).await?;

    // The DLQ holds both, with their target, attempts and errors.
    let store = wald::producer::embedded::NamespaceStore::open(&data, "shop", &Default::default())?;
    let parked = store.dlq.read(0, 10, usize::MAX)?;
    let header = |r: &wald::message::StoredRecord, name: &str| {
        r.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| String::from_utf8_lossy(v).into_owned())
    };
    assert_eq!(parked.len(), 2);
    assert_eq!(
        header(&parked[0], "wald-message-id").as_deref(),
        poison["message_id"].as_str()
    );
    assert_eq!(
        header(&parked[0], "wald-dlq-target").as_deref(),
        Some("hook")
    );
    assert_eq!(
        header(&parked[0], "wald-dlq-attempts").as_deref(),
        Some("3")
    );
    assert!(
        header(&parked[0], "wald-dlq-first-error")
            .unwrap_or_default()
            .contains("500")
    );
    assert_eq!(
        header(&parked[1], "wald-dlq-attempts").as_deref(),
        Some("1")
    );
    Ok(())
}

/// `namespace`'s status, as the API shows it.
async fn namespace_status(server: &Server, namespace: &str) -> Result<Value> {
    let url = server.url(&format!("/api/v1/wal/namespace/{namespace}/status"));
    Ok(reqwest::get(url).await?.json().await?)
}

/// A webhook, and in a new directory the `shop` pipeline (`pipelines/`) delivering to
/// it and to `out/audit.jsonl`.
async fn shop() -> Result<(Hook, tempfile::TempDir)> {
    let hook = Hook::default();
    let url = start_hook(hook.clone()).await?;
    let dir = tempfile::tempdir()?;
    pipeline(
        &dir.path().join("pipelines"),
        &url,
        &dir.path().join("out/audit.jsonl"),
    )?;
    Ok((hook, dir))
}

#[tokio::test]
async fn a_delayed_message_is_never_early_and_survives_sigkill() -> Result {
    let (hook_state, dir) = shop().await?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    let server = Server::start(&pipes, &data, &[]).await?;
    let written = write(
        &server,
        json!({"namespace": "shop", "payload": {"kind": "later"}, "delay": "2s"}),
    )
    .await?;
    let due = Instant::now() + Duration::from_millis(1900);
    // Killed before it is due: it is delivered after the restart, not before its time.
    let mut child = server.child;
    child.start_kill()?;
    child.wait().await?;
    let server = Server::start(&pipes, &data, &[]).await?;
    let tx = written["transaction_id"].as_str().ok_or("id")?;
    transaction_until(&server, tx, Duration::from_secs(20), |s| {
        s["state"] == "delivered"
    })
    .await?;
    let calls = hook_state.calls.lock().map_err(|_| "lock")?.clone();
    assert_eq!(calls.len(), 1);
    assert!(calls[0].at >= due, "delivered early");
    assert!(calls[0].at < due + Duration::from_secs(3), "delivered late");
    stop(server.child).await?;
    Ok(())
}

/// The delayed messages' reader passes over every message that is not delayed: it
/// commits what it passed at most every 50 ms (each commit is two syncs), not after
/// each read as a reader that handed messages on does. Killed before such a commit, it
/// passes them over again after the restart: it holds none, and catches up.
#[tokio::test]
async fn a_reader_that_only_passes_messages_over_commits_at_a_pace() -> Result {
    let (hook_state, dir) = shop().await?;
    let (pipes, data) = (dir.path().join("pipelines"), dir.path().join("data"));
    // Writes answered once written (a SIGKILL loses none of them: the kernel has them),
    // so that they come faster than one per 50 ms.
    let file = pipes.join("shop.toml");
    let with_producer =
        std::fs::read_to_string(&file)? + "[producer]\ntype = \"embedded\"\nsync = \"interval\"\n";
    std::fs::write(&file, with_producer)?;
    let server = Server::start(&pipes, &data, &[]).await?;
    let client = reqwest::Client::new();
    let started = Instant::now();
    for n in 0..60 {
        let response = client
            .post(server.url("/api/v1/wal/write"))
            .json(&json!({"namespace": "shop", "payload": {"kind": "steady", "n": n}}))
            .send()
            .await?;
        assert_eq!(response.status(), 202);
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    let shown = namespace_status(&server, "shop").await?;
    let elapsed = started.elapsed();
    let commits = shown["delays_reader"]["commits"]
        .as_u64()
        .ok_or("commits")?;
    // A read every few milliseconds (the reader's linger is 5 ms): a commit after
    // each read would be several per 50 ms. One more for the cursor the reader's group
    // was given when delivery started.
    let most = elapsed.as_millis() as u64 / 50 + 3;
    assert!(commits <= most, "{commits} commits in {elapsed:?}: {shown}");
    let hook_position = shown["targets"]
        .as_array()
        .and_then(|targets| targets.iter().find(|t| t["name"] == "hook"))
        .map(|t| &t["position"]);
    assert!(
        hook_position.and_then(|p| p["commits"].as_u64()) > Some(0),
        "{shown}"
    );
    server.kill().await?;
    let server = Server::start(&pipes, &data, &[]).await?;
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = namespace_status(&server, "shop").await?;
        let delivered: std::collections::BTreeSet<u64> = hook_state
            .calls
            .lock()
            .map_err(|_| "lock")?
            .iter()
            .filter(|c| c.ok)
            .filter_map(|c| c.body["payload"]["n"].as_u64())
            .collect();
        if delivered.len() == 60 && shown["delays_reader"]["lag"] == 0 {
            assert_eq!(shown["delayed_pending"], 0, "{shown}");
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{} delivered: {shown}",
            delivered.len()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn postgres_rows_are_written_by_named_fields_and_survive_killed_connections() -> Result {
    if !common::service_available("Postgres", "127.0.0.1:5432") {
        return Ok(());
    }
    let sql = |q: &str| -> Result<String> {
        let out = common::psql(&["-At".as_ref(), "-c".as_ref(), q.as_ref()])?;
        if !out.status.success() {
            return Err(String::from_utf8_lossy(&out.stderr).into_owned().into());
        }
        Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
    };
    sql("CREATE TABLE IF NOT EXISTS wald_test_delivered (
           id text PRIMARY KEY, body jsonb NOT NULL, amount bigint CHECK (amount >= 0),
           at timestamptz NOT NULL, order_key text)")?;
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("pay.toml"),
        "namespace = \"pay\"\n[source]\ntype = \"http\"\npublic = true\n\
         [consumer.retry]\nmax_attempts = 10\ninitial_backoff = \"10ms\"\nmax_backoff = \"100ms\"\n\
         [[target]]\nname = \"db\"\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/test\"\n\
         statement = \"INSERT INTO wald_test_delivered (id, body, amount, at, order_key) \
         VALUES ($message_id, $payload, $payload.amount, $timestamp, $key) ON CONFLICT (id) DO NOTHING\"\n",
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let mut ids = Vec::new();
    for round in 0..3 {
        for n in 0..5 {
            let written = write(
                &server,
                json!({"namespace": "pay", "key": format!("k{round}"), "payload": {"amount": round * 10 + n, "n": n}}),
            )
            .await?;
            let id = |f: &str| written[f].as_str().map(str::to_string).ok_or("id");
            ids.push((id("message_id")?, id("transaction_id")?));
        }
        for (_, tx) in &ids {
            transaction_until(&server, tx, Duration::from_secs(30), |s| {
                s["state"] == "delivered"
            })
            .await?;
        }
        // Kill every connection wald holds: the next round's deliveries fail once on a
        // dead connection, reconnect and go on.
        let killed = sql(
            "SELECT count(pg_terminate_backend(pid)) FROM pg_stat_activity
              WHERE datname = 'test' AND application_name = 'wald'",
        )?;
        assert_ne!(killed, "0");
    }
    let list = ids
        .iter()
        .map(|(m, _)| format!("'{m}'"))
        .collect::<Vec<_>>()
        .join(",");
    assert_eq!(
        sql(&format!(
            "SELECT count(*) FROM wald_test_delivered WHERE id IN ({list})"
        ))?,
        "15"
    );
    let (first, _) = &ids[0];
    assert_eq!(
        sql(&format!(
            "SELECT body->>'n', amount, order_key, at > now() - interval '1 hour' FROM wald_test_delivered WHERE id = '{first}'"
        ))?,
        "0|0|k0|t"
    );

    // A run of one key with a bad row in the middle: the good rows land, the bad one
    // alone goes to the DLQ.
    let (batch, status) = batch_until(
        &server,
        "pay",
        json!([
            {"key": "mixed", "payload": {"amount": 1}},
            {"key": "mixed", "payload": {"amount": 2}},
            {"key": "mixed", "payload": {"amount": -5}},
            {"key": "mixed", "payload": {"amount": 4}},
            {"key": "mixed", "payload": {"amount": 5}},
        ]),
        "dead_lettered",
    )
    .await?;
    let states = states(&status, "db");
    assert_eq!(
        states,
        [
            "delivered",
            "delivered",
            "dead_lettered",
            "delivered",
            "delivered"
        ]
    );
    let ids = quoted_ids(&batch);
    assert_eq!(
        sql(&format!(
            "SELECT string_agg(amount::text, ',' ORDER BY amount) FROM wald_test_delivered WHERE id IN ({})",
            ids
        ))?,
        "1,2,4,5"
    );

    // A row the table refuses (CHECK) is permanent: one attempt, then the DLQ.
    let (_, status) = write_until(
        &server,
        json!({"namespace": "pay", "payload": {"amount": -1}}),
        "dead_lettered",
    )
    .await?;
    assert_eq!(target(&status, "db")["attempts"], 1, "{status}");
    assert!(
        target(&status, "db")["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("check"),
        "{status}"
    );
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn redis_commands_fill_their_key_templates_and_survive_dropped_connections() -> Result {
    if !common::service_available("Redis", "127.0.0.1:6379") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    let run = uuid::Uuid::now_v7().simple().to_string();
    std::fs::write(
        pipes.join("cache.toml"),
        format!(
            "namespace = \"cache\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer.retry]\nmax_attempts = 10\ninitial_backoff = \"10ms\"\nmax_backoff = \"100ms\"\n\
             [[target]]\nname = \"latest\"\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
             command = \"SET\"\nkey = \"wald-test:{run}:order:{{payload.id}}\"\nttl = \"1h\"\nvalue = \"envelope\"\n\
             [[target]]\nname = \"by-customer\"\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n\
             command = \"HSET\"\nkey = \"wald-test:{run}:customer:{{payload.customer}}\"\nfield = \"{{payload.id}}\"\n"
        ),
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")?
        .get_multiplexed_async_connection()
        .await?;
    for id in 1..=6 {
        if id == 4 {
            // Drop wald's target connections (their last command was a SET or an
            // HSET): wald reconnects and sends again.
            let clients: String = redis::cmd("CLIENT")
                .arg("LIST")
                .query_async(&mut redis)
                .await?;
            let ids: Vec<&str> = clients
                .lines()
                .filter(|c| c.contains(" cmd=set ") || c.contains(" cmd=hset "))
                .filter_map(|c| c.split(' ').find_map(|f| f.strip_prefix("id=")))
                .collect();
            assert!(!ids.is_empty(), "{clients}");
            for id in ids {
                let _: redis::Value = redis::cmd("CLIENT")
                    .arg("KILL")
                    .arg("ID")
                    .arg(id)
                    .query_async(&mut redis)
                    .await?;
            }
        }
        let written = write(
            &server,
            json!({"namespace": "cache", "payload": {"id": id, "customer": "c7"}}),
        )
        .await?;
        let tx = written["transaction_id"].as_str().ok_or("id")?;
        transaction_until(&server, tx, Duration::from_secs(30), |s| {
            s["state"] == "delivered"
        })
        .await?;
    }
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")?
        .get_multiplexed_async_connection()
        .await?;
    let stored: String = redis::cmd("GET")
        .arg(format!("wald-test:{run}:order:5"))
        .query_async(&mut redis)
        .await?;
    let stored: Value = serde_json::from_str(&stored)?;
    assert_eq!(stored["payload"], json!({"id": 5, "customer": "c7"}));
    let ttl: i64 = redis::cmd("PTTL")
        .arg(format!("wald-test:{run}:order:5"))
        .query_async(&mut redis)
        .await?;
    assert!(ttl > 0 && ttl <= 3_600_000);
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("wald-test:{run}:customer:c7"))
        .query_async(&mut redis)
        .await?;
    let mut fields: Vec<u32> = fields.iter().filter_map(|f| f.parse().ok()).collect();
    fields.sort_unstable();
    assert_eq!(fields, [1, 2, 3, 4, 5, 6]);
    // A command the server refuses (HSET on a string: WRONGTYPE) is permanent: its
    // message goes to the DLQ after one attempt, the others of its batch are written.
    let _: () = redis::cmd("SET")
        .arg(format!("wald-test:{run}:customer:bad"))
        .arg("a string")
        .query_async(&mut redis)
        .await?;
    let (_, status) = batch_until(
        &server,
        "cache",
        json!([
            {"key": "same", "payload": {"id": 10, "customer": "c8"}},
            {"key": "same", "payload": {"id": 11, "customer": "bad"}},
            {"key": "same", "payload": {"id": 12, "customer": "c8"}},
        ]),
        "dead_lettered",
    )
    .await?;
    assert_eq!(
        states(&status, "by-customer"),
        ["delivered", "dead_lettered", "delivered"],
        "{status}"
    );
    let refused = &status["messages"][1]["targets"]["by-customer"];
    assert_eq!(refused["attempts"], 1);
    assert!(
        refused["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("WRONGTYPE"),
        "{status}"
    );
    let fields: Vec<String> = redis::cmd("HKEYS")
        .arg(format!("wald-test:{run}:customer:c8"))
        .query_async(&mut redis)
        .await?;
    assert_eq!(fields.len(), 2);
    for key in ["c7", "c8", "bad"] {
        let _: i64 = redis::cmd("DEL")
            .arg(format!("wald-test:{run}:customer:{key}"))
            .query_async(&mut redis)
            .await?;
    }
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn dead_letters_are_listed_and_replayed_and_a_message_cannot_replay_forever() -> Result {
    let hook_state = Hook::default();
    // `fixable` fails its 3 attempts, then the webhook is "fixed"; `hopeless` never works.
    hook_state.failures.lock().map_err(|_| "lock")?.extend([
        ("fixable".to_string(), (3, 500)),
        ("hopeless".to_string(), (usize::MAX, 500)),
    ]);
    let url = start_hook(hook_state.clone()).await?;
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    pipeline(&pipes, &url, &dir.path().join("out/audit.jsonl"))?;
    let toml = std::fs::read_to_string(pipes.join("shop.toml"))?;
    std::fs::write(
        pipes.join("shop.toml"),
        format!("{toml}[consumer.dlq]\nmax_replays = 1\n"),
    )?;
    let config = common::admin_config(dir.path(), "admin-secret")?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[&config[0], &config[1]]).await?;

    let mut txs = Vec::new();
    for kind in ["fixable", "hopeless"] {
        let written = write(
            &server,
            json!({"namespace": "shop", "payload": {"kind": kind}}),
        )
        .await?;
        let tx = written["transaction_id"].as_str().ok_or("id")?.to_string();
        transaction_until(&server, &tx, Duration::from_secs(20), |s| {
            s["state"] == "dead_lettered"
        })
        .await?;
        txs.push((written["message_id"].as_str().ok_or("id")?.to_string(), tx));
    }
    let client = reqwest::Client::new();
    let dlq_url = server.url("/api/v1/wal/namespace/shop/dlq");
    // The admin key is required: entries hold payloads.
    let response = client.get(&dlq_url).send().await?;
    assert_eq!(response.status(), 401);
    let response = client.get(&dlq_url).bearer_auth("wrong").send().await?;
    assert_eq!(response.status(), 401);

    let page: Value = client
        .get(&dlq_url)
        .bearer_auth("admin-secret")
        .send()
        .await?
        .json()
        .await?;
    let entries = page["entries"].as_array().ok_or("entries")?;
    assert_eq!(entries.len(), 2, "{page}");
    assert_eq!(entries[0]["message_id"], txs[0].0.as_str());
    assert_eq!(entries[0]["target"], "hook");
    assert_eq!(entries[0]["attempts"], 3);
    assert_eq!(entries[0]["payload"], json!({"kind": "fixable"}));
    assert!(
        entries[0]["last_error"]
            .as_str()
            .unwrap_or("")
            .contains("500")
    );
    let page: Value = client
        .get(format!("{dlq_url}?limit=1"))
        .bearer_auth("admin-secret")
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(page["entries"].as_array().map(Vec::len), Some(1));
    assert_eq!(page["next_from"], 1);

    // A dry run says what would happen and changes nothing.
    let address = format!("http://{}", server.address);
    let output = common::wald()
        .args([
            "dlq",
            "replay",
            "shop",
            "--dry-run",
            "--server",
            &address,
            "--admin-key",
            "admin-secret",
        ])
        .output()?;
    assert_eq!(output.status.code(), Some(0), "{}", common::stderr(&output));
    let dry: Value = serde_json::from_str(&common::stdout(&output))?;
    assert_eq!(dry["replayed"].as_array().map(Vec::len), Some(2), "{dry}");
    let calls_before = hook_state.calls.lock().map_err(|_| "lock")?.len();

    // Replay everything: `fixable` is delivered now, to the webhook only.
    let outcome: Value = client
        .post(format!("{dlq_url}/replay"))
        .bearer_auth("admin-secret")
        .json(&json!({}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(
        outcome["replayed"].as_array().map(Vec::len),
        Some(2),
        "{outcome}"
    );
    let status = transaction_until(&server, &txs[0].1, Duration::from_secs(20), |s| {
        s["state"] == "delivered"
    })
    .await?;
    assert_eq!(
        target(&status, "audit")["attempts"],
        1,
        "the file target was not delivered again: {status}"
    );
    let audit = std::fs::read_to_string(dir.path().join("out/audit.jsonl"))?;
    assert_eq!(audit.lines().filter(|l| l.contains(&txs[0].0)).count(), 1);
    assert!(hook_state.calls.lock().map_err(|_| "lock")?.len() > calls_before);

    // `hopeless` failed again and is back in the DLQ, replayed once: max_replays is 1,
    // so a second replay skips it.
    let deadline = Instant::now() + Duration::from_secs(20);
    let parked = loop {
        let page: Value = client
            .get(&dlq_url)
            .bearer_auth("admin-secret")
            .send()
            .await?
            .json()
            .await?;
        let entries = page["entries"].as_array().cloned().unwrap_or_default();
        if !entries.is_empty() || Instant::now() > deadline {
            break entries;
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    };
    assert_eq!(parked.len(), 1, "{parked:?}");
    assert_eq!(parked[0]["message_id"], txs[1].0.as_str());
    assert_eq!(parked[0]["replays"], 1);
    let outcome: Value = client
        .post(format!("{dlq_url}/replay"))
        .bearer_auth("admin-secret")
        .json(&json!({"ids": [txs[1].0]}))
        .send()
        .await?
        .json()
        .await?;
    assert_eq!(outcome["replayed"], json!([]), "{outcome}");
    assert!(
        outcome["skipped"][0]["reason"]
            .as_str()
            .unwrap_or("")
            .contains("max_replays")
    );

    let ns = namespace_status(&server, "shop").await?;
    assert_eq!(
        ns["dlq_depth"], 1,
        "only the hopeless message is parked: {ns}"
    );
    let output = common::wald()
        .args([
            "dlq",
            "list",
            "shop",
            "--state",
            "replayed",
            "--server",
            &address,
            "--admin-key",
            "admin-secret",
        ])
        .output()?;
    let replayed: Value = serde_json::from_str(&common::stdout(&output))?;
    assert_eq!(replayed["entries"].as_array().map(Vec::len), Some(2));
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn a_replay_longer_than_the_request_timeout_goes_on_and_shows_in_status() -> Result {
    let hook_state = Hook::default();
    // Each message fails its 3 attempts, then the webhook takes it.
    hook_state
        .failures
        .lock()
        .map_err(|_| "lock")?
        .extend((0..6).map(|n| (format!("late{n}"), (3, 500))));
    let url = start_hook(hook_state.clone()).await?;
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    pipeline(&pipes, &url, &dir.path().join("out/audit.jsonl"))?;
    // Each message's three failures are its own attempts: with the breaker on, a
    // failure while the circuit is open (six messages failing at once) is not the
    // message's, and its fourth call would take the webhook's success.
    let file = pipes.join("shop.toml");
    let text = std::fs::read_to_string(&file)?;
    std::fs::write(
        &file,
        format!("{text}circuit_breaker = {{ enabled = false }}\n"),
    )?;
    let config = common::admin_config(dir.path(), "admin-secret")?;
    let toml = std::fs::read_to_string(&config[1])?;
    std::fs::write(
        &config[1],
        format!("{toml}[http]\nrequest_timeout = \"2s\"\n"),
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[&config[0], &config[1]]).await?;
    let mut txs = Vec::new();
    for n in 0..6 {
        let written = write(
            &server,
            json!({"namespace": "shop", "payload": {"kind": format!("late{n}")}}),
        )
        .await?;
        txs.push(written["transaction_id"].as_str().ok_or("id")?.to_string());
    }
    for tx in &txs {
        transaction_until(&server, tx, Duration::from_secs(20), |s| {
            s["state"] == "dead_lettered"
        })
        .await?;
    }
    // Two a second: six take three seconds, past the two-second request timeout.
    let client = reqwest::Client::new();
    let started = Instant::now();
    let response = client
        .post(server.url("/api/v1/wal/namespace/shop/dlq/replay"))
        .bearer_auth("admin-secret")
        .json(&json!({"rate_per_second": 2}))
        .send()
        .await?;
    assert_eq!(response.status(), 202);
    assert!(started.elapsed() < Duration::from_secs(2));
    let run: Value = response.json().await?;
    assert_eq!(run["state"], "running", "{run}");
    assert!(run["replayed"].as_u64() < Some(6), "{run}");
    // It goes on, and the namespace's status follows it to its end.
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let ns = namespace_status(&server, "shop").await?;
        let shown = ns["dlq_replays"][0].clone();
        if shown["state"] != "running" || Instant::now() > deadline {
            break shown;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(shown["id"], run["id"]);
    assert_eq!(shown["state"], "done", "{shown}");
    assert_eq!(
        (shown["selected"].as_u64(), shown["replayed"].as_u64()),
        (Some(6), Some(6))
    );
    assert!(shown["finished_at_ms"].as_u64() >= run["started_at_ms"].as_u64());
    for tx in &txs {
        transaction_until(&server, tx, Duration::from_secs(20), |s| {
            s["state"] == "delivered"
        })
        .await?;
    }
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn a_key_being_retried_does_not_hold_back_the_others_and_each_key_keeps_its_order() -> Result
{
    let hook_state = Hook::default();
    hook_state
        .failures
        .lock()
        .map_err(|_| "lock")?
        .insert("stuck".to_string(), (usize::MAX, 503));
    let url = start_hook(hook_state.clone()).await?;
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    // One lane: every key shares it with the stuck one.
    std::fs::write(
        pipes.join("lanes.toml"),
        format!(
            "namespace = \"lanes\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer]\nconcurrency = 1\norder = \"per_key\"\n\
             [consumer.retry]\nmax_attempts = 100\ninitial_backoff = \"50ms\"\nmax_backoff = \"200ms\"\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{url}\"\n"
        ),
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let stuck = write(
        &server,
        json!({"namespace": "lanes", "key": "k0", "payload": {"kind": "stuck", "n": 0}}),
    )
    .await?;
    let behind = write(
        &server,
        json!({"namespace": "lanes", "key": "k0", "payload": {"kind": "fine", "n": 1}}),
    )
    .await?;
    let keys: Vec<String> = (1..=8).map(|k| format!("k{k}")).collect();
    let mut last_by_key = Vec::new();
    for n in 0..5 {
        for key in &keys {
            let w = write(
                &server,
                json!({"namespace": "lanes", "key": key, "payload": {"kind": "fine", "n": n}}),
            )
            .await?;
            if n == 4 {
                last_by_key.push(w["transaction_id"].as_str().ok_or("id")?.to_string());
            }
        }
    }
    // While k0 is retried, every other key is delivered, in the same lane.
    for tx in &last_by_key {
        transaction_until(&server, tx, Duration::from_secs(20), |s| {
            s["state"] == "delivered"
        })
        .await?;
    }
    let tx_of = |w: &Value| w["transaction_id"].as_str().map(str::to_string);
    let (stuck_tx, behind_tx) = (tx_of(&stuck).ok_or("id")?, tx_of(&behind).ok_or("id")?);
    let state = |tx: String| {
        let url = server.url(&format!("/api/v1/wal/transaction/{tx}/status"));
        async move { reqwest::get(url).await?.json::<Value>().await }
    };
    assert_eq!(state(stuck_tx.clone()).await?["state"], "retrying");
    // k0's next message waits behind it.
    assert_eq!(state(behind_tx.clone()).await?["state"], "pending");

    // Released, k0 goes through, then the message behind it.
    hook_state.failures.lock().map_err(|_| "lock")?.clear();
    for tx in [&stuck_tx, &behind_tx] {
        transaction_until(&server, tx, Duration::from_secs(20), |s| {
            s["state"] == "delivered"
        })
        .await?;
    }
    let calls = hook_state.calls.lock().map_err(|_| "lock")?.clone();
    let order_of = |key: &str| -> Vec<i64> {
        calls
            .iter()
            .filter(|c| c.ok && c.body["key"] == key)
            .filter_map(|c| c.body["payload"]["n"].as_i64())
            .collect()
    };
    for key in &keys {
        assert_eq!(order_of(key), [0, 1, 2, 3, 4], "key {key} out of order");
    }
    assert_eq!(order_of("k0"), [0, 1]);
    stop(server.child).await?;
    Ok(())
}

/// The resident memory of a process, in KiB.
fn rss_kib(pid: u32) -> Result<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .ok_or_else(|| "no VmRSS".into())
}

#[tokio::test]
async fn a_target_that_never_answers_does_not_stop_writes_and_the_backlog_waits_on_disk() -> Result
{
    // A webhook that accepts connections and never answers.
    let app = axum::Router::new().route(
        "/hang",
        axum::routing::post(std::future::pending::<StatusCode>),
    );
    let address = common::serve(app).await?;
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("slow.toml"),
        format!(
            "namespace = \"slow\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer.retry]\nmax_attempts = 100\ninitial_backoff = \"10ms\"\nmax_backoff = \"20ms\"\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"http://{address}/hang\"\ntimeout = \"200ms\"\n"
        ),
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let pid = server.child.id().ok_or("no pid")?;
    let client = reqwest::Client::new();
    // 100 messages of 8 KB a request.
    let batch = |n: usize| {
        json!({"namespace": "slow", "messages": (0..100)
            .map(|i| json!({"key": format!("k{}", (n * 100 + i) % 50), "payload": {"pad": "x".repeat(8000), "i": i}}))
            .collect::<Vec<_>>()})
    };
    // 16 MB first: more than delivery's lanes hold, so that they are full and the
    // process warmed up (allocator, caches) when the measure starts.
    for n in 0..20 {
        let r = client
            .post(server.url("/api/v1/wal/write/batch"))
            .json(&batch(n))
            .send()
            .await?;
        assert_eq!(r.status(), 202);
    }
    let before = rss_kib(pid)?;
    // A further 68 MB of backlog while the target hangs.
    for n in 20..105 {
        let r = client
            .post(server.url("/api/v1/wal/write/batch"))
            .json(&batch(n))
            .send()
            .await?;
        assert_eq!(r.status(), 202, "writes go on while the target hangs");
    }
    let after = rss_kib(pid)?;
    let ns = namespace_status(&server, "slow").await?;
    assert_eq!(ns["log"]["next_offset"], 10_500);
    let lag = ns["consumer_groups"][0]["lag"].as_u64().unwrap_or(0);
    assert!(
        lag > 9_000,
        "the backlog is in the log, not delivered: {ns}"
    );
    // Holding the backlog would cost at least its 68 MB; what delivery and the status
    // index hold is bounded well below that.
    let grown = after.saturating_sub(before);
    eprintln!("resident memory grew by {grown} KiB for a 68 MB backlog");
    assert!(
        grown < 34 * 1024,
        "resident memory grew by {grown} KiB for a 68 MB backlog"
    );
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn a_batch_goes_as_one_insert_and_leaves_out_a_refused_row_in_both_forms() -> Result {
    if !common::service_available("Postgres", "127.0.0.1:5432") {
        return Ok(());
    }
    let out = common::psql(&[
        "-c".as_ref(),
        "CREATE TABLE IF NOT EXISTS wald_test_table_rows (
           id text PRIMARY KEY, body jsonb NOT NULL, amount bigint CHECK (amount >= 0))"
            .as_ref(),
    ])?;
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    // A `table` with columns, and the same as an INSERT statement: both go as one
    // multi-row INSERT per batch.
    let forms = [
        (
            "table",
            "table = \"wald_test_table_rows\"\n\
                   columns = { id = \"$message_id\", body = \"$payload\", amount = \"$payload.amount\" }\n",
        ),
        (
            "statement",
            "statement = \"INSERT INTO wald_test_table_rows (id, body, amount) \
                       VALUES ($message_id, $payload, $payload.amount) ON CONFLICT (id) DO NOTHING\"\n",
        ),
    ];
    for (form, keys) in forms {
        std::fs::write(
            pipes.join(format!("{form}.toml")),
            format!(
                "namespace = \"{form}\"\n[source]\ntype = \"http\"\npublic = true\n\
                 [[target]]\nname = \"db\"\ntype = \"postgres\"\nurl = \"postgres://postgres@127.0.0.1:5432/test\"\n{keys}"
            ),
        )?;
    }
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    for (form, _) in forms {
        let amounts = [3, 1, -1, 4, 1, 5];
        let messages: Vec<Value> = amounts
            .iter()
            .map(|a| json!({"key": "one-lane", "payload": {"amount": a}}))
            .collect();
        let (batch, status) =
            batch_until(&server, form, Value::Array(messages), "dead_lettered").await?;
        let states = states(&status, "db");
        assert_eq!(
            states,
            [
                "delivered",
                "delivered",
                "dead_lettered",
                "delivered",
                "delivered",
                "delivered"
            ],
            "{form}"
        );
        let ids = quoted_ids(&batch);
        let out = common::psql(&[
            "-At".as_ref(),
            "-c".as_ref(),
            format!(
                "SELECT string_agg(amount::text, ',' ORDER BY id) FROM wald_test_table_rows WHERE id IN ({})",
                ids
            )
            .as_ref(),
        ])?;
        assert_eq!(
            String::from_utf8_lossy(&out.stdout).trim(),
            "3,1,4,1,5",
            "{form}"
        );
    }
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn a_redis_restart_loses_nothing_and_delivery_resumes() -> Result {
    if !common::redis_server_installed() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let redis_dir = dir.path().join("redis");
    let redis_server = PrivateRedis::fresh(&redis_dir).await?;
    let port = redis_server.port;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("cache.toml"),
        format!(
            "namespace = \"cache\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer.retry]\nmax_attempts = 100\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\
             [[target]]\nname = \"cache\"\ntype = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\n\
             command = \"SET\"\nkey = \"restart:{{payload.n}}\"\n"
        ),
    )?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    for n in 1..=5 {
        write_until(
            &server,
            json!({"namespace": "cache", "payload": {"n": n}}),
            "delivered",
        )
        .await?;
    }

    // Redis goes away: writes are still answered, delivery retries.
    redis_server.kill()?;
    let mut waiting = Vec::new();
    for n in 6..=10 {
        let written = write(&server, json!({"namespace": "cache", "payload": {"n": n}})).await?;
        waiting.push(written["transaction_id"].as_str().ok_or("id")?.to_string());
    }
    transaction_until(&server, &waiting[0], Duration::from_secs(30), |s| {
        s["state"] == "retrying"
    })
    .await?;

    // Back on the same port with its data: every message arrives, none dead-lettered.
    let redis_server = PrivateRedis::start(&redis_dir, port).await?;
    for tx in &waiting {
        transaction_until(&server, tx, Duration::from_secs(30), |s| {
            s["state"] == "delivered"
        })
        .await?;
    }
    let mut redis = redis::Client::open(format!("redis://127.0.0.1:{port}"))?
        .get_multiplexed_async_connection()
        .await?;
    for n in 1..=10 {
        let stored: Option<String> = redis::cmd("GET")
            .arg(format!("restart:{n}"))
            .query_async(&mut redis)
            .await?;
        assert_eq!(
            stored.as_deref(),
            Some(format!("{{\"n\":{n}}}").as_str()),
            "message {n}"
        );
    }
    let status = namespace_status(&server, "cache").await?;
    assert_eq!(status["dlq_depth"], 0, "{status:#}");
    assert!(
        status["targets"][0]["delivery"]["retried"].as_u64() > Some(0),
        "{status:#}"
    );
    assert_eq!(
        status["targets"][0]["delivery"]["delivered"], 10,
        "{status:#}"
    );
    redis_server.kill()?;
    assert!(stop(server.child).await?.success());
    Ok(())
}
