//! Targets that fail alone, through the real binary and real webhooks started by the
//! test: a target that hangs or refuses connections opens its circuit after a few
//! failures and gets a bounded number of attempts, while a healthy target of the same
//! namespace delivers every message promptly; once healed, the broken target gets
//! every message, in order per key, none dead-lettered.

mod common;

use std::collections::HashMap;
use std::net::SocketAddr;
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use common::{Server, stop};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How the broken webhook behaves.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Fault {
    /// Accepts connections and never answers.
    Hang,
    /// Nothing listens on its port.
    Refuse,
}

/// What a webhook received: each message's `i` by key, in arrival order, and the
/// number of requests, answered or not.
#[derive(Clone, Default)]
struct Hook {
    received: Arc<Mutex<Vec<(String, u64, Instant)>>>,
    requests: Arc<Mutex<u64>>,
    /// Hangs every request while set.
    hanging: Arc<std::sync::atomic::AtomicBool>,
    /// Milliseconds each answer takes.
    slow_ms: Arc<AtomicU64>,
    /// Requests being answered now, and the most at once.
    in_flight: Arc<AtomicU64>,
    most_in_flight: Arc<AtomicU64>,
}

impl Hook {
    fn requests(&self) -> u64 {
        *self.requests.lock().expect("lock")
    }

    fn received(&self) -> Vec<(String, u64, Instant)> {
        self.received.lock().expect("lock").clone()
    }
}

async fn hook(State(hook): State<Hook>, body: axum::body::Bytes) -> StatusCode {
    *hook.requests.lock().expect("lock") += 1;
    if hook.hanging.load(Ordering::SeqCst) {
        std::future::pending::<()>().await;
    }
    let now = hook.in_flight.fetch_add(1, Ordering::SeqCst) + 1;
    hook.most_in_flight.fetch_max(now, Ordering::SeqCst);
    tokio::time::sleep(Duration::from_millis(hook.slow_ms.load(Ordering::SeqCst))).await;
    hook.in_flight.fetch_sub(1, Ordering::SeqCst);
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    let key = body["key"].as_str().unwrap_or("").to_string();
    let i = body["i"].as_u64().unwrap_or(u64::MAX);
    hook.received
        .lock()
        .expect("lock")
        .push((key, i, Instant::now()));
    StatusCode::OK
}

async fn serve_hook(hook: Hook, listener: tokio::net::TcpListener) {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(self::hook))
        .with_state(hook);
    let _ = axum::serve(listener, app).await;
}

/// A namespace `shop` with targets `broken` at `broken` and `healthy` at `healthy`,
/// 4 lanes by key, a 2 s timeout, retries that would dead-letter after 8 attempts,
/// and a breaker opening after 5 failures with a 500 ms cool-down (at most 2 s).
fn pipeline(dir: &std::path::Path, broken: SocketAddr, healthy: SocketAddr) -> Result {
    std::fs::create_dir_all(dir)?;
    let target = |name: &str, at: SocketAddr| {
        format!(
            "[[target]]\nname = \"{name}\"\ntype = \"http\"\nurl = \"http://{at}/hook\"\n\
             timeout = \"2s\"\nbody = \"payload\"\n\
             circuit_breaker = {{ failures = 5, cool_down = \"500ms\", max_cool_down = \"2s\" }}\n"
        )
    };
    std::fs::write(
        dir.join("shop.toml"),
        format!(
            "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer]\nconcurrency = 4\norder = \"per_key\"\n\
             [consumer.retry]\nmax_attempts = 8\ninitial_backoff = \"100ms\"\nmax_backoff = \"1s\"\n\
             {}{}",
            target("broken", broken),
            target("healthy", healthy)
        ),
    )?;
    Ok(())
}

/// Writes messages `from..to`, each with its own key `k<i>`.
async fn write(server: &Server, from: u64, to: u64) -> Result {
    let messages: Vec<Value> = (from..to)
        .map(|i| json!({"key": format!("k{i}"), "payload": {"key": format!("k{i}"), "i": i}}))
        .collect();
    let response = reqwest::Client::new()
        .post(server.url("/api/v1/wal/write/batch"))
        .json(&json!({"namespace": "shop", "messages": messages}))
        .send()
        .await?;
    assert_eq!(response.status(), 202, "{}", response.text().await?);
    Ok(())
}

/// Waits until `hook` received `count` distinct messages; how long it took.
async fn received(hook: &Hook, count: usize, limit: Duration) -> Result<Duration> {
    let began = Instant::now();
    loop {
        let distinct: std::collections::HashSet<u64> =
            hook.received().iter().map(|(_, i, _)| *i).collect();
        if distinct.len() >= count {
            return Ok(began.elapsed());
        }
        if began.elapsed() > limit {
            return Err(format!("{} of {count} received within {limit:?}", distinct.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
}

async fn status(server: &Server) -> Result<Value> {
    Ok(
        reqwest::get(server.url("/api/v1/wal/namespace/shop/status"))
            .await?
            .json()
            .await?,
    )
}

fn target<'v>(status: &'v Value, name: &str) -> &'v Value {
    status["targets"]
        .as_array()
        .and_then(|ts| ts.iter().find(|t| t["name"] == name))
        .unwrap_or(&Value::Null)
}

async fn a_broken_target_fails_alone(fault: Fault) -> Result {
    let dir = tempfile::tempdir()?;
    let healthy = Hook::default();
    let healthy_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let healthy_at = healthy_listener.local_addr()?;
    tokio::spawn(serve_hook(healthy.clone(), healthy_listener));
    // The broken webhook: hanging, or not listening until it is healed.
    let broken = Hook::default();
    let broken_listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let broken_at = broken_listener.local_addr()?;
    let mut broken_listener = Some(broken_listener);
    match fault {
        Fault::Hang => {
            broken.hanging.store(true, Ordering::SeqCst);
            let listener = broken_listener.take().ok_or("listener")?;
            tokio::spawn(serve_hook(broken.clone(), listener));
        }
        Fault::Refuse => drop(broken_listener.take()),
    }
    let pipes = dir.path().join("pipelines");
    pipeline(&pipes, broken_at, healthy_at)?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;

    // 500 messages over 500 keys: the healthy target gets them all promptly.
    write(&server, 0, 500).await?;
    let took = received(&healthy, 500, Duration::from_secs(30)).await?;
    eprintln!("healthy target: 500 messages in {took:?}");
    // Messages written while the other target is down reach the healthy one within a
    // second or two of their write.
    for round in 0..5u64 {
        let from = 500 + round * 10;
        write(&server, from, from + 10).await?;
        let took = received(&healthy, from as usize + 10, Duration::from_secs(10)).await?;
        assert!(
            took < Duration::from_secs(2),
            "round {round}: the healthy target took {took:?}"
        );
    }
    // The broken target's circuit opens (a hanging target fails each lane's request
    // after its 2 s timeout), and it is tried a bounded number of times: 5 failures,
    // what the 4 lanes had in flight then, and a probe per cool-down (0.5 s, 1 s,
    // then every 2 s).
    let deadline = Instant::now() + Duration::from_secs(20);
    let shown = loop {
        let shown = status(&server).await?;
        if target(&shown, "broken")["circuit"]["state"] != "closed" {
            break shown;
        }
        assert!(
            Instant::now() < deadline,
            "the circuit never opened: {shown}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    };
    let circuit = &target(&shown, "broken")["circuit"];
    assert!(
        circuit["state"] == "open" || circuit["state"] == "half_open",
        "{shown}"
    );
    assert!(circuit["opened"].as_u64() >= Some(1), "{shown}");
    assert_eq!(target(&shown, "healthy")["circuit"]["state"], "closed");
    let outage = Instant::now();
    tokio::time::sleep(Duration::from_secs(4)).await;
    let attempts = match fault {
        Fault::Hang => broken.requests(),
        // Refused connections are counted by wald (failed probes among them).
        Fault::Refuse => {
            let s = status(&server).await?;
            target(&s, "broken")["delivery"]["retried"]
                .as_u64()
                .unwrap_or(0)
        }
    };
    let probes = 2 + outage.elapsed().as_secs();
    eprintln!("broken target: {attempts} attempts");
    assert!(
        attempts <= 5 + 4 + probes + 4,
        "{attempts} attempts at a target that is down"
    );
    assert!(
        server.logged("circuit opened"),
        "opening is logged with the target"
    );

    // Healed: every message arrives within a few seconds of the next probe, in order
    // per key, none dead-lettered.
    match fault {
        Fault::Hang => broken.hanging.store(false, Ordering::SeqCst),
        Fault::Refuse => {
            let listener = tokio::net::TcpListener::bind(broken_at).await?;
            tokio::spawn(serve_hook(broken.clone(), listener));
        }
    }
    let took = received(&broken, 550, Duration::from_secs(20)).await?;
    eprintln!("broken target, healed: 550 messages in {took:?}");
    assert!(
        took < Duration::from_secs(10),
        "took {took:?} after healing"
    );
    let mut by_key: HashMap<String, Vec<u64>> = HashMap::new();
    for (key, i, _) in broken.received() {
        by_key.entry(key).or_default().push(i);
    }
    for (key, seen) in &by_key {
        assert!(seen.is_sorted(), "{key}: {seen:?} out of order");
    }
    let shown = status(&server).await?;
    assert_eq!(target(&shown, "broken")["circuit"]["state"], "closed");
    assert_eq!(
        target(&shown, "broken")["delivery"]["dead_lettered"],
        0,
        "{shown}"
    );
    assert_eq!(shown["dlq_depth"], 0, "{shown}");
    let metrics = reqwest::get(server.url("/metrics")).await?.text().await?;
    assert!(
        metrics.contains(
            "wald_target_circuit_state{namespace=\"shop\",target=\"broken\",state=\"closed\"} 1"
        ),
        "{metrics}"
    );
    assert!(server.logged("circuit closed"));
    // Both targets caught up: the namespace's cursor is past every message.
    let deadline = Instant::now() + Duration::from_secs(10);
    loop {
        let shown = status(&server).await?;
        if shown["consumer_groups"][0]["next_offset"] == 550 {
            break;
        }
        assert!(Instant::now() < deadline, "cursor never caught up: {shown}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(server.child).await?;
    Ok(())
}

#[tokio::test]
async fn a_target_that_never_answers_opens_its_circuit_and_holds_back_no_other() -> Result {
    a_broken_target_fails_alone(Fault::Hang).await
}

#[tokio::test]
async fn a_target_that_refuses_connections_opens_its_circuit_and_holds_back_no_other() -> Result {
    a_broken_target_fails_alone(Fault::Refuse).await
}

/// The lines of a file target's output, as `i` of each message.
fn delivered(path: &std::path::Path) -> Result<Vec<u64>> {
    let text = std::fs::read_to_string(path).unwrap_or_default();
    text.lines()
        .map(|line| {
            let v: Value = serde_json::from_str(line)?;
            v["payload"]["i"].as_u64().ok_or_else(|| "no i".into())
        })
        .collect()
}

#[tokio::test]
async fn a_paused_target_stays_paused_across_a_restart_and_resumes_in_order() -> Result {
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    let (held, other) = (
        dir.path().join("held.jsonl"),
        dir.path().join("other.jsonl"),
    );
    std::fs::write(
        pipes.join("shop.toml"),
        format!(
            "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\n\
             [[target]]\nname = \"held\"\ntype = \"file\"\npath = \"{}\"\n\
             [[target]]\nname = \"other\"\ntype = \"file\"\npath = \"{}\"\n",
            held.display(),
            other.display()
        ),
    )?;
    let config = common::admin_config(dir.path(), "admin-secret")?;
    let config: Vec<&str> = config.iter().map(String::as_str).collect();
    let data = dir.path().join("data");
    let server = Server::start(&pipes, &data, &config).await?;
    let cli = |verb: &str, server: &Server, target: Option<&str>| {
        let base = server.url("");
        let mut args = vec![verb, "shop", "--server", &base];
        args.extend(target.map(|t| ["--target", t]).into_iter().flatten());
        let mut command = common::wald();
        command.args(&args).env("WALD_ADMIN_KEY", "admin-secret");
        command.output()
    };
    // Not without the admin key, and not a target the namespace does not have.
    let refused = common::wald()
        .args(["pause", "shop", "--server", &server.url("")])
        .env_remove("WALD_ADMIN_KEY")
        .output()?;
    assert_eq!(refused.status.code(), Some(1));
    let unknown = cli("pause", &server, Some("nope"))?;
    assert_eq!(unknown.status.code(), Some(1));
    assert!(common::stdout(&unknown).contains("target_not_found"));

    let paused = cli("pause", &server, Some("held"))?;
    assert!(paused.status.success(), "{}", common::stderr(&paused));
    let answer: Value = serde_json::from_str(&common::stdout(&paused))?;
    assert_eq!(answer["targets"], json!(["held"]));
    write_numbered(&server, 0, 50).await?;
    wait_for(|| Ok(delivered(&other)?.len() == 50)).await?;
    assert!(delivered(&held)?.is_empty(), "a paused target gets nothing");
    let shown = status(&server).await?;
    assert_eq!(target(&shown, "held")["paused"], true, "{shown}");
    assert_eq!(
        target(&shown, "held")["circuit"]["state"],
        "closed",
        "paused, not failing"
    );
    assert_eq!(target(&shown, "held")["position"]["lag"], 50, "{shown}");

    // A restart keeps the pause; more messages wait behind it.
    stop(server.child).await?;
    let server = Server::start(&pipes, &data, &config).await?;
    write_numbered(&server, 50, 80).await?;
    wait_for(|| Ok(delivered(&other)?.len() == 80)).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(delivered(&held)?.is_empty(), "still paused after a restart");
    assert_eq!(target(&status(&server).await?, "held")["paused"], true);

    // Resumed: everything, in order.
    let resumed = cli("resume", &server, Some("held"))?;
    assert!(resumed.status.success(), "{}", common::stderr(&resumed));
    wait_for(|| Ok(delivered(&held)?.len() == 80)).await?;
    assert_eq!(delivered(&held)?, (0..80).collect::<Vec<_>>());

    // The whole namespace paused and resumed.
    assert!(cli("pause", &server, None)?.status.success());
    write_numbered(&server, 80, 90).await?;
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert_eq!(delivered(&other)?.len(), 80, "the namespace is paused");
    assert_eq!(status(&server).await?["paused"]["namespace"], true);
    assert!(cli("resume", &server, None)?.status.success());
    wait_for(|| Ok(delivered(&other)?.len() == 90 && delivered(&held)?.len() == 90)).await?;
    stop(server.child).await?;
    Ok(())
}

/// Writes messages `from..to` one by one, each `{"i": i}` under key `k`.
async fn write_numbered(server: &Server, from: u64, to: u64) -> Result {
    let client = reqwest::Client::new();
    for i in from..to {
        let response = client
            .post(server.url("/api/v1/wal/write"))
            .json(&json!({"namespace": "shop", "key": "k", "payload": {"i": i}}))
            .send()
            .await?;
        assert_eq!(response.status(), 202);
    }
    Ok(())
}

/// Waits up to 20 s for `done`.
async fn wait_for(done: impl Fn() -> Result<bool>) -> Result {
    let deadline = Instant::now() + Duration::from_secs(20);
    while !done()? {
        assert!(Instant::now() < deadline, "timed out");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    Ok(())
}

/// `hook` served on a free port, and `wald serve` over `dir` with namespace `shop`:
/// `lanes` lanes delivering to one target `partner`, which calls it, with `keys`.
async fn serve_partner(hook: &Hook, dir: &Path, lanes: u32, keys: &str) -> Result<Server> {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let at = listener.local_addr()?;
    tokio::spawn(serve_hook(hook.clone(), listener));
    let pipes = dir.join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    std::fs::write(
        pipes.join("shop.toml"),
        format!(
            "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer]\nconcurrency = {lanes}\n\
             [[target]]\nname = \"partner\"\ntype = \"http\"\nurl = \"http://{at}/hook\"\n\
             body = \"payload\"\n{keys}\n"
        ),
    )?;
    Server::start(&pipes, &dir.join("data"), &[]).await
}

#[tokio::test]
async fn a_rate_limited_target_never_exceeds_its_rate() -> Result {
    let hook = Hook::default();
    let dir = tempfile::tempdir()?;
    let keys = "rate_limit = { per_second = 20, burst = 5 }\nmax_in_flight = 2";
    let server = serve_partner(&hook, dir.path(), 4, keys).await?;
    write(&server, 0, 100).await?;
    let took = received(&hook, 100, Duration::from_secs(30)).await?;
    eprintln!("100 messages at 20/s (burst 5) in {took:?}");
    // Counted at the receiver: in any second, at most the rate plus the burst (and one
    // message of tolerance for the clocks of two processes).
    let times: Vec<Instant> = hook.received().iter().map(|(_, _, t)| *t).collect();
    for (i, start) in times.iter().enumerate() {
        let within = times[i..]
            .iter()
            .take_while(|t| t.duration_since(*start) < Duration::from_secs(1))
            .count();
        assert!(within <= 20 + 5 + 1, "{within} messages within a second");
    }
    assert!(
        took >= Duration::from_millis(4000),
        "95 messages past the burst at 20/s take 4.75 s, not {took:?}"
    );
    stop(server.child).await?;
    Ok(())
}

/// Delivers 60 messages through eight lanes to a webhook that takes 50 ms per request,
/// with `keys` on the target; the most requests it had open at once.
async fn most_in_flight(keys: &str) -> Result<u64> {
    let hook = Hook::default();
    hook.slow_ms.store(50, Ordering::SeqCst);
    let dir = tempfile::tempdir()?;
    let server = serve_partner(&hook, dir.path(), 8, keys).await?;
    write(&server, 0, 60).await?;
    received(&hook, 60, Duration::from_secs(30)).await?;
    stop(server.child).await?;
    Ok(hook.most_in_flight.load(Ordering::SeqCst))
}

#[tokio::test]
async fn max_in_flight_bounds_the_requests_a_target_has_open_at_once() -> Result {
    let bounded = most_in_flight("max_in_flight = 3").await?;
    assert_eq!(
        bounded, 3,
        "at most 3 requests at once, and the bound is reached"
    );
    // The same without the bound opens more at once: the bound is what held it.
    let unbounded = most_in_flight("").await?;
    assert!(unbounded > 3, "without max_in_flight {unbounded} at once");
    Ok(())
}

#[tokio::test]
async fn sigkill_during_delivery_loses_nothing_at_either_target_and_keeps_key_order() -> Result {
    let dir = tempfile::tempdir()?;
    let pipes = dir.path().join("pipelines");
    std::fs::create_dir_all(&pipes)?;
    let (a, b) = (dir.path().join("a.jsonl"), dir.path().join("b.jsonl"));
    std::fs::write(
        pipes.join("shop.toml"),
        format!(
            "namespace = \"shop\"\n[source]\ntype = \"http\"\npublic = true\n\
             [consumer]\nconcurrency = 4\norder = \"per_key\"\n\
             [[target]]\nname = \"a\"\ntype = \"file\"\npath = \"{}\"\n\
             [[target]]\nname = \"b\"\ntype = \"file\"\npath = \"{}\"\n",
            a.display(),
            b.display()
        ),
    )?;
    let data = dir.path().join("data");
    let client = reqwest::Client::new();
    let mut written = 0u64;
    let mut server = Server::start(&pipes, &data, &[]).await?;
    // Each round writes (per key `k<i % 7>`) until it is killed mid-delivery.
    for _ in 0..4 {
        for _ in 0..150 {
            let i = written;
            let response = client
                .post(server.url("/api/v1/wal/write"))
                .json(&json!({"namespace": "shop", "key": format!("k{}", i % 7), "payload": {"i": i}}))
                .send()
                .await?;
            assert_eq!(response.status(), 202);
            written += 1;
        }
        server.kill().await?;
        server = Server::start(&pipes, &data, &[]).await?;
    }
    // Every acknowledged message reaches both targets (again after a kill: at least
    // once), and each key's first deliveries keep the log's order.
    for path in [&a, &b] {
        wait_for(|| {
            let seen: std::collections::HashSet<u64> = delivered(path)?.into_iter().collect();
            Ok(seen.len() as u64 == written)
        })
        .await?;
        let mut first = std::collections::HashSet::new();
        let mut last: HashMap<u64, u64> = HashMap::new();
        for i in delivered(path)? {
            if first.insert(i) {
                let previous = last.insert(i % 7, i);
                assert!(
                    previous < Some(i),
                    "{}: key k{} out of order at {i}",
                    path.display(),
                    i % 7
                );
            }
        }
    }
    let deadline = Instant::now() + Duration::from_secs(10);
    while status(&server).await?["consumer_groups"][0]["next_offset"] != written {
        assert!(
            Instant::now() < deadline,
            "the delivery cursor never caught up"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    stop(server.child).await?;
    Ok(())
}
