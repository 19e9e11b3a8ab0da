//! The shared backends through the real binary.
//!
//! - Redis Streams: two `wald serve` processes on one stream share the work, and one
//!   killed with SIGKILL loses nothing (the other takes over its pending entries); a
//!   Redis outage answers that namespace's writes 503 while another namespace goes on,
//!   readiness and status name the backend, and everything resumes by itself.
//! - Kafka (librdkafka's mock cluster in this process, the servers connecting to it):
//!   the same two instances and SIGKILL, delivering to a webhook and to a Kafka target;
//!   a broker outage answered 503 and recovered from.
//! - DLQ on Redis Streams, Kafka and SQS: two instances, messages a webhook refused
//!   dead-lettered, listed through one, replayed through both at once: each message
//!   delivered once; the DLQ's depth, the delivery group's lag and the recent messages
//!   in status.
//! - tansu (a Kafka-protocol broker of its own, PostgreSQL storage): DLQ replay through
//!   two instances, and the broker killed and restarted mid-delivery with nothing
//!   acknowledged lost; two instances with SIGKILL is kept but ignored (a tansu 0.6.0
//!   group coordinator bug, fixed upstream after 0.6.0).
//! - Kafka delays: delayed writes held in the delay topic outlive the instance that
//!   took them (SIGKILL) and are delivered once, when due, by another.
//! - SQS (moto): writes, delivery, and a delayed message that arrives when due; the
//!   recent-messages route answers 501.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use common::{PrivateRedis, Server, stop};
use serde_json::{Value, json};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// The `n` of every message the webhook received; it takes `delay` per request so
/// that deliveries are in flight when an instance dies.
#[derive(Clone, Default)]
struct Hook {
    received: Arc<Mutex<Vec<u64>>>,
    delay: Duration,
    /// While set, every message is refused for good (400).
    refuse: Arc<std::sync::atomic::AtomicBool>,
}

async fn hook(State(hook): State<Hook>, body: axum::body::Bytes) -> StatusCode {
    tokio::time::sleep(hook.delay).await;
    if hook.refuse.load(Ordering::SeqCst) {
        return StatusCode::BAD_REQUEST;
    }
    let body: Value = serde_json::from_slice(&body).unwrap_or(Value::Null);
    if let (Some(n), Ok(mut received)) = (body["payload"]["n"].as_u64(), hook.received.lock()) {
        received.push(n);
    }
    StatusCode::OK
}

async fn start_hook(state: Hook) -> Result<String> {
    let app = axum::Router::new()
        .route("/hook", axum::routing::post(hook))
        .with_state(state);
    Ok(format!("http://{}/hook", common::serve(app).await?))
}

/// A namespace on the backend `producer` (a `[producer]` table's body), delivering to
/// the webhook, and to `more` targets.
fn pipeline(dir: &Path, name: &str, producer: &str, hook: &str, more: &str) -> Result {
    std::fs::create_dir_all(dir)?;
    std::fs::write(
        dir.join(format!("{name}.toml")),
        format!(
            "namespace = \"{name}\"\n[source]\ntype = \"http\"\npublic = true\nmax_delay = \"1h\"\n\
             [producer]\n{producer}\n\
             [consumer]\nconcurrency = 4\n\
             [consumer.retry]\nmax_attempts = 100\ninitial_backoff = \"20ms\"\nmax_backoff = \"200ms\"\n\
             [[target]]\nname = \"hook\"\ntype = \"http\"\nurl = \"{hook}\"\n{more}"
        ),
    )?;
    Ok(())
}

/// A namespace on `stream` of the Redis at `url`, delivering to the webhook.
fn stream_pipeline(dir: &Path, name: &str, url: &str, stream: &str, hook: &str) -> Result {
    let producer = format!(
        "type = \"redis_streams\"\nurl = \"{url}\"\nstream = \"{stream}\"\nclaim_idle = \"1s\""
    );
    pipeline(dir, name, &producer, hook, "")
}

async fn write(
    client: &reqwest::Client,
    server: &Server,
    namespace: &str,
    n: u64,
) -> Result<reqwest::Response> {
    Ok(client
        .post(server.url("/api/v1/wal/write"))
        .json(&json!({"namespace": namespace, "payload": {"n": n}}))
        .send()
        .await?)
}

/// Waits until the webhook has received every one of `expected`.
async fn all_received(hook: &Hook, expected: &BTreeSet<u64>, limit: Duration) -> Result {
    let deadline = Instant::now() + limit;
    loop {
        let received: BTreeSet<u64> = hook
            .received
            .lock()
            .map_err(|_| "lock")?
            .iter()
            .copied()
            .collect();
        let missing: Vec<_> = expected.difference(&received).collect();
        if missing.is_empty() {
            return Ok(());
        }
        if Instant::now() > deadline {
            return Err(format!("{} messages never arrived: {missing:?}", missing.len()).into());
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn delivered(server: &Server, namespace: &str) -> Result<u64> {
    let status: Value =
        reqwest::get(server.url(&format!("/api/v1/wal/namespace/{namespace}/status")))
            .await?
            .json()
            .await?;
    Ok(status["targets"][0]["delivery"]["delivered"]
        .as_u64()
        .unwrap_or(0))
}

/// Two instances on the same pipeline: writes through both, both deliver; the first
/// is killed with SIGKILL in the middle of its deliveries and the second, written to
/// alone, delivers everything acknowledged, the first's unacknowledged messages too.
/// Returns the second's log.
async fn two_instances_lose_nothing(pipes: &Path, data: &Path, hook: &Hook) -> Result<String> {
    let first = Server::start(pipes, &data.join("1"), &[]).await?;
    let second = Server::start(pipes, &data.join("2"), &[]).await?;
    let client = reqwest::Client::new();
    let mut acknowledged = BTreeSet::new();
    for n in 0..200u64 {
        let server = if n % 2 == 0 { &first } else { &second };
        let response = write(&client, server, "orders", n).await?;
        assert_eq!(response.status(), 202, "{}", response.text().await?);
        acknowledged.insert(n);
    }
    let deadline = Instant::now() + Duration::from_secs(60);
    while delivered(&first, "orders").await? == 0 || delivered(&second, "orders").await? == 0 {
        assert!(Instant::now() < deadline, "one instance never delivered");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let mut first = first;
    first.child.kill().await?;
    for n in 200..300u64 {
        let response = write(&client, &second, "orders", n).await?;
        assert_eq!(response.status(), 202);
        acknowledged.insert(n);
    }
    all_received(hook, &acknowledged, Duration::from_secs(90)).await?;
    let log = second.log.lock().map_err(|_| "lock")?.join("\n");
    assert!(stop(second.child).await?.success());
    Ok(log)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_stream_and_a_killed_one_loses_nothing() -> Result {
    if !common::service_available("Redis", "127.0.0.1:6379") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let hook = Hook {
        delay: Duration::from_millis(100),
        ..Hook::default()
    };
    let hook_url = start_hook(hook.clone()).await?;
    let stream = format!("wal:multi:{}", uuid::Uuid::now_v7().simple());
    let pipes = dir.path().join("pipelines");
    stream_pipeline(
        &pipes,
        "orders",
        "redis://127.0.0.1:6379",
        &stream,
        &hook_url,
    )?;
    let log = two_instances_lose_nothing(&pipes, dir.path(), &hook).await?;
    assert!(
        log.contains("Took over entries"),
        "the second never claimed: {log}"
    );
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")?
        .get_multiplexed_async_connection()
        .await?;
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .arg(format!("{stream}:dlq"))
        .arg(format!("{stream}:delayed"))
        .query_async(&mut redis)
        .await?;
    Ok(())
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn two_instances_share_a_kafka_topic_and_a_killed_one_loses_nothing() -> Result {
    use rdkafka::consumer::{Consumer, StreamConsumer};
    use rdkafka::message::Message;
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic("orders", 4, 1)?;
    cluster.create_topic("orders.dlq", 1, 1)?;
    cluster.create_topic("delivered", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let hook = Hook {
        delay: Duration::from_millis(100),
        ..Hook::default()
    };
    let hook_url = start_hook(hook.clone()).await?;
    let pipes = dir.path().join("pipelines");
    // A short session, so that the dead member's partitions move on quickly; the
    // cooperative strategy (the other Kafka tests use librdkafka's default, eager).
    let options = format!(
        "[producer.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n\
         \"partition.assignment.strategy\" = \"cooperative-sticky\"\n{}",
        common::Tansu::OPTIONS
    );
    pipeline(
        &pipes,
        "orders",
        &format!("type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"orders\"\n{options}"),
        &hook_url,
        &format!(
            "[[target]]\nname = \"out\"\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"delivered\"\n"
        ),
    )?;
    let log = two_instances_lose_nothing(&pipes, dir.path(), &hook).await?;
    // Cooperative: the survivor kept reading its partitions and took the dead one's on
    // top, never giving any up.
    assert!(log.contains("reading={0, 1, 2, 3}"), "{log}");
    assert!(!log.contains("Kafka partitions given up"), "{log}");

    // The Kafka target produced every message too.
    let consumer: StreamConsumer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", &brokers)
        .set("group.id", "check")
        .set("auto.offset.reset", "earliest")
        .create()?;
    consumer.subscribe(&["delivered"])?;
    let mut produced = BTreeSet::new();
    while produced.len() < 300 {
        let message = tokio::time::timeout(Duration::from_secs(20), consumer.recv()).await??;
        let value: Value = serde_json::from_slice(message.payload().unwrap_or_default())?;
        produced.insert(value["n"].as_u64().ok_or("n")?);
    }
    assert_eq!(produced, (0..300).collect());
    Ok(())
}

/// Waits until `server`'s member of a Kafka consumer group has been assigned partitions.
async fn reading_partitions(server: &Server) -> Result {
    let deadline = Instant::now() + Duration::from_secs(60);
    while !server
        .logged_line(|l| l.contains("Kafka partitions assigned") && !l.contains("reading={}"))
    {
        assert!(Instant::now() < deadline, "never assigned partitions");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    Ok(())
}

/// Two instances on the pipeline in `pipes` (on a shared backend): 20 messages the
/// webhook refuses are dead-lettered, listed through the first, and replayed through
/// both at once once the webhook takes them: each is delivered once, and every entry
/// is listed as replayed (but on SQS, a queue, which lets them go). The namespace's
/// status shows what the backend `kind` (`redis`, `kafka`, `tansu`, `sqs`) can tell of
/// the DLQ and the delivery group.
async fn dlq_replayed_through_two_instances_once(dir: &Path, hook: &Hook, kind: &str) -> Result {
    let keeps_replayed = kind != "sqs";
    let pipes = dir.join("pipelines");
    let config = common::admin_config(dir, "admin-secret")?;
    let first = Server::start(&pipes, &dir.join("1"), &[&config[0], &config[1]]).await?;
    let second = Server::start(&pipes, &dir.join("2"), &[&config[0], &config[1]]).await?;
    if kind != "redis" && kind != "sqs" {
        // Written once both members read, so that no partition moves while its
        // messages are being dead-lettered (a moved partition's messages in flight
        // are delivered again by its new reader, as at-least-once allows).
        reading_partitions(&second).await?;
    }
    let client = reqwest::Client::new();
    hook.refuse.store(true, Ordering::SeqCst);
    for n in 0..20u64 {
        let response = write(&client, &first, "orders", n).await?;
        assert_eq!(response.status(), 202, "{}", response.text().await?);
    }
    let list = |server: &Server, state: &str| {
        client
            .get(server.url(&format!(
                "/api/v1/wal/namespace/orders/dlq?state={state}&limit=1000"
            )))
            .bearer_auth("admin-secret")
            .send()
    };
    let deadline = Instant::now() + Duration::from_secs(60);
    loop {
        let page: Value = list(&first, "parked").await?.json().await?;
        let parked = page["entries"].as_array().map_or(0, Vec::len);
        if parked == 20 {
            assert_eq!(page["entries"][0]["target"], "hook", "{page}");
            assert!(
                page["entries"][0]["last_error"]
                    .as_str()
                    .is_some_and(|e| e.contains("400")),
                "{page}"
            );
            break;
        }
        assert!(
            Instant::now() < deadline,
            "{parked} of 20 dead-lettered: {page}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let status = |server: &Server| {
        let url = server.url("/api/v1/wal/namespace/orders/status");
        async move { Ok::<Value, Box<dyn std::error::Error>>(reqwest::get(url).await?.json().await?) }
    };
    let shown = status(&first).await?;
    let delivery_lag = |shown: &Value| {
        shown["consumer_groups"]
            .as_array()
            // `wald` on Redis, `wald.<namespace>` on Kafka.
            .and_then(|groups| {
                groups
                    .iter()
                    .find(|g| g["group"].as_str().is_some_and(|g| g.starts_with("wald")))
            })
            .and_then(|g| g["lag"].as_u64())
    };
    assert_eq!(shown["dlq_depth"], 20, "{shown}");
    // The most recent messages, newest first, but on SQS (a queue), which says so.
    let recent = client
        .get(first.url("/api/v1/wal/namespace/orders/messages?limit=5"))
        .bearer_auth("admin-secret")
        .send()
        .await?;
    if kind == "sqs" {
        assert_eq!(recent.status(), 501);
    } else {
        let recent: Value = recent.json().await?;
        let recent = recent.as_array().ok_or("a list")?;
        assert_eq!(recent.len(), 5, "{recent:?}");
        assert!(recent.iter().all(|m| m["message_id"].is_string()));
        assert!(
            recent
                .windows(2)
                .all(|w| w[0]["timestamp_ms"].as_u64() >= w[1]["timestamp_ms"].as_u64()),
            "{recent:?}"
        );
        // On Kafka each names its partition.
        assert_eq!(
            kind != "redis",
            recent[0]["partition"].is_u64(),
            "{recent:?}"
        );
    }
    match kind {
        "sqs" => assert!(shown["queue"]["visible"].is_u64(), "{shown}"),
        _ => assert!(delivery_lag(&shown).is_some(), "{shown}"),
    }
    hook.refuse.store(false, Ordering::SeqCst);
    let replay = |server: &Server| {
        client
            .post(server.url("/api/v1/wal/namespace/orders/dlq/replay"))
            .bearer_auth("admin-secret")
            .json(&json!({"rate_per_second": 100000}))
            .send()
    };
    // At once, but on SQS one after the other: there moto, slow under a loaded
    // machine, made one replay outlast the request timeout (30 s) while it held the
    // entries; two at once on SQS are in the conformance suite.
    let (one, other) = if kind == "sqs" {
        let one = replay(&first).await;
        (one, replay(&second).await)
    } else {
        tokio::join!(replay(&first), replay(&second))
    };
    let (one, other): (Value, Value) = (one?.json().await?, other?.json().await?);
    let replayed = |outcome: &Value| outcome["replayed"].as_array().map_or(0, Vec::len);
    assert_eq!(replayed(&one) + replayed(&other), 20, "{one}\n{other}");
    let expected: BTreeSet<u64> = (0..20).collect();
    all_received(hook, &expected, Duration::from_secs(60)).await?;
    // Nothing comes twice.
    tokio::time::sleep(Duration::from_secs(2)).await;
    let mut received = hook.received.lock().map_err(|_| "lock")?.clone();
    received.sort_unstable();
    assert_eq!(received, expected.into_iter().collect::<Vec<_>>());
    let page: Value = list(&second, "replayed").await?.json().await?;
    let kept = if keeps_replayed { 20 } else { 0 };
    assert_eq!(
        page["entries"].as_array().map_or(0, Vec::len),
        kept,
        "{page}"
    );
    let page: Value = list(&second, "parked").await?.json().await?;
    assert_eq!(page["entries"], json!([]), "{page}");
    // Everything delivered and acknowledged: nothing left behind in the status.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let shown = status(&second).await?;
        let done = match kind {
            "sqs" => shown["dlq_depth"] == 0 && shown["queue"]["visible"] == 0,
            _ => shown["dlq_depth"] == 0 && delivery_lag(&shown) == Some(0),
        };
        if done {
            break;
        }
        assert!(Instant::now() < deadline, "still behind: {shown}");
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    assert!(stop(first.child).await?.success());
    assert!(stop(second.child).await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_dlq_is_replayed_through_two_instances_once() -> Result {
    if !common::service_available("Redis", "127.0.0.1:6379") {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    let stream = format!("wal:dlq:{}", uuid::Uuid::now_v7().simple());
    let pipes = dir.path().join("pipelines");
    stream_pipeline(
        &pipes,
        "orders",
        "redis://127.0.0.1:6379",
        &stream,
        &hook_url,
    )?;
    let result = dlq_replayed_through_two_instances_once(dir.path(), &hook, "redis").await;
    let mut redis = redis::Client::open("redis://127.0.0.1:6379")?
        .get_multiplexed_async_connection()
        .await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("{stream}*"))
        .query_async(&mut redis)
        .await?;
    let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut redis).await?;
    result
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_dlq_is_replayed_through_two_instances_once() -> Result {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic("orders", 4, 1)?;
    cluster.create_topic("orders.dlq", 2, 1)?;
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    let options = format!(
        "[producer.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n{}",
        common::Tansu::OPTIONS
    );
    pipeline(
        &dir.path().join("pipelines"),
        "orders",
        &format!("type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"orders\"\n{options}"),
        &hook_url,
        "",
    )?;
    dlq_replayed_through_two_instances_once(dir.path(), &hook, "kafka").await
}

/// A namespace `orders` on a new SQS queue `orders` (and `orders-dlq`) of `moto`,
/// delivering to the webhook.
#[cfg(feature = "sqs")]
async fn sqs_pipeline(moto: &common::Moto, pipes: &Path, hook: &str) -> Result {
    let sqs = moto.client();
    let queue = sqs.create_queue().queue_name("orders").send().await?;
    let queue_url = queue.queue_url().ok_or("no queue url")?.to_string();
    sqs.create_queue().queue_name("orders-dlq").send().await?;
    pipeline(
        pipes,
        "orders",
        &format!(
            "type = \"sqs\"\nqueue_url = \"{queue_url}\"\nendpoint = \"{}\"\n\
             access_key_id = \"test\"\nsecret_access_key = \"test\"\nwait_time = \"1s\"\n\
             visibility_timeout = \"5s\"",
            moto.endpoint
        ),
        hook,
        "",
    )
}

#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_dlq_is_replayed_through_two_instances_once() -> Result {
    let Some(moto) = common::Moto::start().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    sqs_pipeline(&moto, &dir.path().join("pipelines"), &hook_url).await?;
    dlq_replayed_through_two_instances_once(dir.path(), &hook, "sqs").await
}

/// Delayed writes on Kafka live in the delay topic: the instance that took them is
/// killed with SIGKILL before they are due, and another delivers each once, when due.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_delays_survive_a_killed_instance() -> Result {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic("orders", 4, 1)?;
    cluster.create_topic("orders.dlq", 1, 1)?;
    cluster.create_topic("orders.delays", 7, 1)?;
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    let pipes = dir.path().join("pipelines");
    let options = format!(
        "[producer.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n{}",
        common::Tansu::OPTIONS
    );
    pipeline(
        &pipes,
        "orders",
        &format!("type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"orders\"\n{options}"),
        &hook_url,
        "",
    )?;
    let mut first = Server::start(&pipes, &dir.path().join("1"), &[]).await?;
    let client = reqwest::Client::new();
    let written = Instant::now();
    for n in 0..20u64 {
        let response = client
            .post(first.url("/api/v1/wal/write"))
            .json(&json!({"namespace": "orders", "payload": {"n": n}, "delay": "6s"}))
            .send()
            .await?;
        assert_eq!(response.status(), 202, "{}", response.text().await?);
    }
    // Read and put in the delay topic (the status counts them there), then killed.
    let deadline = Instant::now() + Duration::from_secs(30);
    loop {
        let status: Value = reqwest::get(first.url("/api/v1/wal/namespace/orders/status"))
            .await?
            .json()
            .await?;
        if status["delayed_pending"] == 20 {
            break;
        }
        assert!(Instant::now() < deadline, "never held: {status}");
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    first.child.kill().await?;
    let second = Server::start(&pipes, &dir.path().join("2"), &[]).await?;
    let expected: BTreeSet<u64> = (0..20).collect();
    all_received(&hook, &expected, Duration::from_secs(60)).await?;
    assert!(
        written.elapsed() >= Duration::from_millis(5900),
        "delivered before due"
    );
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        hook.received.lock().map_err(|_| "lock")?.len(),
        20,
        "delivered twice"
    );
    assert!(stop(second.child).await?.success());
    Ok(())
}

/// A namespace `orders` on `topic` of the tansu broker, its DLQ and delay topics made,
/// delivering to the webhook.
#[cfg(feature = "kafka")]
async fn tansu_pipeline(tansu: &common::Tansu, pipes: &Path, topic: &str, hook: &str) -> Result {
    tansu.create_topic(topic, 4).await?;
    tansu.create_topic(&format!("{topic}.dlq"), 1).await?;
    tansu.create_topic(&format!("{topic}.delays"), 7).await?;
    let options = format!(
        "[producer.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n{}",
        common::Tansu::OPTIONS
    );
    pipeline(
        pipes,
        "orders",
        &format!(
            "type = \"kafka\"\nbrokers = \"{}\"\ntopic = \"{topic}\"\ndelivery_timeout = \"5s\"\n{options}",
            tansu.brokers
        ),
        hook,
        "",
    )
}

/// On tansu, a broker of its own: a DLQ replayed through two instances at once
/// delivers each message once.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tansu_dlq_is_replayed_through_two_instances_once() -> Result {
    let Some(tansu) = common::Tansu::start().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    tansu_pipeline(&tansu, &dir.path().join("pipelines"), "replayed", &hook_url).await?;
    dlq_replayed_through_two_instances_once(dir.path(), &hook, "tansu").await
}

/// On tansu: two instances share the topic and a killed one loses nothing.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "tansu 0.6.0's group coordinator: once the killed member expires, the survivor rejoins as leader of one member in the same generation (1) and SyncGroup hands it its old assignment, so the dead member's partitions are never read (seen in librdkafka's cgrp log); fixed upstream in tansu commit 50e5666 (v0.7.0-pre.1), not on crates.io. The same test passes on Redis and on librdkafka's mock cluster"]
async fn two_instances_on_tansu_and_a_killed_one_loses_nothing() -> Result {
    let Some(tansu) = common::Tansu::start().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let hook = Hook {
        delay: Duration::from_millis(100),
        ..Hook::default()
    };
    let hook_url = start_hook(hook.clone()).await?;
    let pipes = dir.path().join("pipelines");
    tansu_pipeline(&tansu, &pipes, "orders", &hook_url).await?;
    two_instances_lose_nothing(&pipes, dir.path(), &hook).await?;
    Ok(())
}

/// The tansu broker is killed (SIGKILL) while messages are being delivered and
/// started again on its data: every write answered 202 is delivered.
#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_tansu_restart_mid_delivery_loses_nothing_acknowledged() -> Result {
    let Some(mut tansu) = common::Tansu::start().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let hook = Hook {
        delay: Duration::from_millis(50),
        ..Hook::default()
    };
    let hook_url = start_hook(hook.clone()).await?;
    let pipes = dir.path().join("pipelines");
    tansu_pipeline(&tansu, &pipes, "orders", &hook_url).await?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let client = reqwest::Client::new();
    let mut acknowledged = BTreeSet::new();
    write_until_accepted(&client, &server, "orders", 0..100, &mut acknowledged).await?;
    // Mid-delivery: the hook takes 50 ms a message.
    let deadline = Instant::now() + Duration::from_secs(30);
    while delivered(&server, "orders").await? == 0 {
        assert!(Instant::now() < deadline, "nothing delivered");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    tansu.kill()?;
    // Writes meanwhile are refused or of unknown outcome: only 202s count.
    for n in 100..110 {
        if write(&client, &server, "orders", n).await?.status() == 202 {
            acknowledged.insert(n);
        }
    }
    tansu.run().await?;
    write_until_accepted(&client, &server, "orders", 110..120, &mut acknowledged).await?;
    if let Err(e) = all_received(&hook, &acknowledged, Duration::from_secs(90)).await {
        let log = server.log.lock().map_err(|_| "lock")?.join("\n");
        eprintln!("{log}");
        return Err(e);
    }
    assert!(stop(server.child).await?.success());
    Ok(())
}

/// A namespace that writes only: what must go on while another one's backend is down.
fn local_pipeline(dir: &Path) -> Result {
    std::fs::write(
        dir.join("local.toml"),
        "namespace = \"local\"\n[source]\ntype = \"http\"\npublic = true\n",
    )?;
    Ok(())
}

/// Writes messages `ns` to `namespace`, each acknowledged, into `acknowledged`; while
/// its backend comes back, a refused write is tried again (for at most 30 s).
async fn write_until_accepted(
    client: &reqwest::Client,
    server: &Server,
    namespace: &str,
    ns: std::ops::Range<u64>,
    acknowledged: &mut BTreeSet<u64>,
) -> Result {
    let deadline = Instant::now() + Duration::from_secs(30);
    for n in ns {
        loop {
            let response = write(client, server, namespace, n).await?;
            if response.status() == 202 {
                acknowledged.insert(n);
                break;
            }
            assert!(
                Instant::now() < deadline,
                "writes never resumed: {}",
                response.status()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
    Ok(())
}

/// With `namespace`'s backend (`kind`) down: writes to it are never acknowledged and
/// soon answered 503 `backend_unavailable` with `Retry-After` (one sent just before may
/// answer 504, durability unknown); the `local` namespace still takes writes; and
/// readiness and the namespace's status say which backend is down.
async fn refused_while_down(
    client: &reqwest::Client,
    server: &Server,
    namespace: &str,
    kind: &str,
) -> Result {
    let deadline = Instant::now() + Duration::from_secs(30);
    let refused = loop {
        let response = write(client, server, namespace, 1000).await?;
        assert_ne!(
            response.status(),
            202,
            "a write was acknowledged with its backend down"
        );
        if response.status() == 503 {
            break response;
        }
        assert!(Instant::now() < deadline, "never answered 503");
    };
    assert!(refused.headers().contains_key("retry-after"));
    let body: Value = refused.json().await?;
    assert_eq!(body["error"]["code"], "backend_unavailable", "{body}");
    assert_eq!(write(client, server, "local", 1).await?.status(), 202);
    let ready: Value = reqwest::get(server.url("/api/v1/health/readiness"))
        .await?
        .json()
        .await?;
    assert_eq!(ready["unavailable"][0]["namespace"], namespace, "{ready}");
    assert_eq!(ready["unavailable"][0]["backend"], kind, "{ready}");
    let status: Value =
        reqwest::get(server.url(&format!("/api/v1/wal/namespace/{namespace}/status")))
            .await?
            .json()
            .await?;
    assert_eq!(status["state"], "backend_unavailable", "{status}");
    Ok(())
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kafka_outage_answers_503_and_everything_resumes_by_itself() -> Result {
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic("events", 2, 1)?;
    cluster.create_topic("events.dlq", 1, 1)?;
    let brokers = cluster.bootstrap_servers();
    let dir = tempfile::tempdir()?;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    let pipes = dir.path().join("pipelines");
    pipeline(
        &pipes,
        "events",
        &format!(
            "type = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"events\"\ndelivery_timeout = \"2s\"\n\
             [producer.options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\""
        ),
        &hook_url,
        "",
    )?;
    local_pipeline(&pipes)?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let client = reqwest::Client::new();
    let mut acknowledged = BTreeSet::new();
    write_until_accepted(&client, &server, "events", 0..5, &mut acknowledged).await?;

    // The broker goes down: once the producer knows it, writes are refused at once
    // (before that they may wait for their report and answer 504).
    cluster.broker_down(1)?;
    refused_while_down(&client, &server, "events", "kafka").await?;

    // Back up: writes are taken again and every acknowledged message is delivered.
    cluster.broker_up(1)?;
    write_until_accepted(&client, &server, "events", 5..10, &mut acknowledged).await?;
    // The consumer may need to join the group anew (after 10 s of failing).
    if let Err(e) = all_received(&hook, &acknowledged, Duration::from_secs(60)).await {
        let log = server.log.lock().map_err(|_| "lock")?.join("\n");
        eprintln!("{log}");
        return Err(e);
    }
    assert!(stop(server.child).await?.success());
    Ok(())
}

#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_sqs_queue_delivers_everything_and_a_delayed_message_when_due() -> Result {
    let Some(moto) = common::Moto::start().await? else {
        return Ok(());
    };
    let dir = tempfile::tempdir()?;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    let pipes = dir.path().join("pipelines");
    sqs_pipeline(&moto, &pipes, &hook_url).await?;
    let config = common::admin_config(dir.path(), "admin-secret")?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[&config[0], &config[1]]).await?;
    let client = reqwest::Client::new();
    // Recent messages are not served on SQS (a queue cannot be read back), and say so.
    let recent = client
        .get(server.url("/api/v1/wal/namespace/orders/messages"))
        .bearer_auth("admin-secret")
        .send()
        .await?;
    assert_eq!(recent.status(), 501);
    let body: Value = recent.json().await?;
    assert_eq!(body["error"]["code"], "unsupported_by_backend", "{body}");
    let mut acknowledged = BTreeSet::new();
    for n in 0..20u64 {
        assert_eq!(write(&client, &server, "orders", n).await?.status(), 202);
        acknowledged.insert(n);
    }
    let written = Instant::now();
    let delayed = client
        .post(server.url("/api/v1/wal/write"))
        .json(&json!({"namespace": "orders", "payload": {"n": 100}, "delay": "3s"}))
        .send()
        .await?;
    assert_eq!(delayed.status(), 202, "{}", delayed.text().await?);
    all_received(&hook, &acknowledged, Duration::from_secs(30)).await?;
    acknowledged.insert(100);
    all_received(&hook, &acknowledged, Duration::from_secs(30)).await?;
    assert!(
        written.elapsed() >= Duration::from_millis(2900),
        "the delayed message came early"
    );
    let received = hook.received.lock().map_err(|_| "lock")?.len();
    assert_eq!(received, 21, "a message was delivered twice");
    assert!(stop(server.child).await?.success());
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_outage_answers_503_and_everything_resumes_by_itself() -> Result {
    if !common::redis_server_installed() {
        return Ok(());
    }
    let dir = tempfile::tempdir()?;
    let redis_dir = dir.path().join("redis");
    let redis_server = PrivateRedis::fresh(&redis_dir).await?;
    let port = redis_server.port;
    let hook = Hook::default();
    let hook_url = start_hook(hook.clone()).await?;
    let pipes = dir.path().join("pipelines");
    let url = format!("redis://127.0.0.1:{port}");
    stream_pipeline(&pipes, "streamed", &url, "wal:streamed", &hook_url)?;
    local_pipeline(&pipes)?;
    let server = Server::start(&pipes, &dir.path().join("data"), &[]).await?;
    let client = reqwest::Client::new();
    let mut acknowledged = BTreeSet::new();
    write_until_accepted(&client, &server, "streamed", 0..5, &mut acknowledged).await?;

    redis_server.kill()?;
    refused_while_down(&client, &server, "streamed", "redis_streams").await?;

    // Redis comes back with its data: writes are taken again, and every acknowledged
    // message is delivered.
    let redis_server = PrivateRedis::start(&redis_dir, port).await?;
    write_until_accepted(&client, &server, "streamed", 5..10, &mut acknowledged).await?;
    all_received(&hook, &acknowledged, Duration::from_secs(30)).await?;
    let status: Value = reqwest::get(server.url("/api/v1/wal/namespace/streamed/status"))
        .await?
        .json()
        .await?;
    assert_eq!(status["state"], "running", "{status}");
    redis_server.kill()?;
    assert!(stop(server.child).await?.success());
    Ok(())
}
