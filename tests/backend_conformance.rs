//! One suite, every backend: the same scenarios through the `Backend` trait on the
//! embedded log, on Redis Streams (the local Redis), on Kafka (librdkafka's mock
//! cluster, in process, and tansu, a broker of its own) and on SQS (moto's server, started here on a free port): append and acknowledge,
//! redelivery of what a consumer that died did not commit, the DLQ (listing and
//! replay, two replays at once on two instances), delays (many of them, across a
//! restart), per-key order and the most recent records.

mod common;

use std::sync::Arc;
use std::time::Duration;

use wald::consumer::replay::{self, EntryState, ListQuery, ReplayRequest};
use wald::message::{
    Durability, HEADER_DLQ_ATTEMPTS, HEADER_DLQ_LAST_ERROR, HEADER_DLQ_TARGET, HEADER_PLACE,
    HEADER_REPLAYS, HEADER_TARGETS, Record, StoredRecord,
};
use wald::producer::embedded::{Embedded, NamespaceStore};
use wald::producer::redis_streams::{self, RedisStreams};
use wald::producer::{Backend, BackendError, Subscription};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

/// How long a scenario waits for records it expects.
const PATIENCE: Duration = Duration::from_secs(15);

fn record(key: &str, payload: &str) -> Record {
    Record {
        key: Some(key.as_bytes().to_vec()),
        headers: vec![("wald-message-id".into(), payload.as_bytes().to_vec())],
        payload: payload.as_bytes().to_vec(),
    }
}

fn payloads(records: &[StoredRecord]) -> Vec<String> {
    records
        .iter()
        .map(|r| String::from_utf8_lossy(&r.payload).into_owned())
        .collect()
}

/// The payloads sorted: records of different keys may come in any order (Kafka orders
/// within a partition only), so scenarios compare them sorted and check each key's
/// order on its own.
fn sorted(records: &[StoredRecord]) -> Vec<String> {
    let mut payloads = payloads(records);
    payloads.sort();
    payloads
}

/// Reads until `count` records came, or fails after [`PATIENCE`].
async fn read(subscription: &mut dyn Subscription, count: usize) -> Result<Vec<StoredRecord>> {
    let mut read = Vec::new();
    tokio::time::timeout(PATIENCE, async {
        while read.len() < count {
            read.extend(subscription.next_batch(count - read.len()).await?);
        }
        Ok::<_, wald::producer::BackendError>(())
    })
    .await
    .map_err(|_| format!("only {} of {count} records came", read.len()))??;
    Ok(read)
}

/// Whether nothing more comes within a short while.
async fn nothing_more(subscription: &mut dyn Subscription) -> Result<bool> {
    let more = tokio::time::timeout(Duration::from_millis(1500), async {
        loop {
            if !subscription.next_batch(10).await?.is_empty() {
                return Ok::<_, wald::producer::BackendError>(());
            }
        }
    })
    .await;
    Ok(more.is_err())
}

/// Appended records are read back in order with what they carried; committed ones
/// are not read again by the next member of the group.
async fn append_and_acknowledge(backend: &dyn Backend) -> Result {
    let appended = backend
        .append(vec![record("a", "1"), record("b", "2")])
        .await?;
    assert_eq!(appended.durability, Durability::Durable);
    backend.append(vec![record("a", "3")]).await?;
    let mut first = backend.subscribe("conformance").await?;
    let got = read(first.as_mut(), 3).await?;
    assert_eq!(sorted(&got), ["1", "2", "3"]);
    let one = got.iter().find(|r| r.payload == b"1").ok_or("1 missing")?;
    assert_eq!(one.key.as_deref(), Some(&b"a"[..]));
    assert_eq!(
        one.header("wald-message-id"),
        Some("1"),
        "{:?}",
        one.headers
    );
    assert!(one.timestamp_ms > 0);
    first.commit(got[2].offset + 1).await?;
    drop(first);
    backend.append(vec![record("c", "4")]).await?;
    let mut next = backend.subscribe("conformance").await?;
    assert_eq!(payloads(&read(next.as_mut(), 1).await?), ["4"]);
    assert!(
        nothing_more(next.as_mut()).await?,
        "a committed record came again"
    );
    Ok(())
}

/// What a member read and did not commit before it went away is read again.
async fn redelivery_after_a_consumer_dies(backend: &dyn Backend) -> Result {
    backend
        .append(vec![record("a", "1"), record("b", "2"), record("a", "3")])
        .await?;
    let mut dying = backend.subscribe("redelivery").await?;
    let got = read(dying.as_mut(), 3).await?;
    // Only the first is done when the member dies.
    dying.commit(got[0].offset + 1).await?;
    drop(dying);
    let mut heir = backend.subscribe("redelivery").await?;
    assert_eq!(sorted(&read(heir.as_mut(), 2).await?), sorted(&got[1..]));
    Ok(())
}

/// Dead-lettered records are kept, in order, with their headers.
async fn dead_letter(backend: &dyn Backend) -> Result {
    let mut parked = record("k", "poison");
    parked
        .headers
        .push(("wald-dlq-last-error".into(), b"500".to_vec()));
    backend.dead_letter(vec![parked.clone()]).await?;
    backend.dead_letter(vec![record("k", "second")]).await?;
    let entries: Vec<StoredRecord> = backend
        .dead_letters(0, 2)
        .await?
        .into_iter()
        .map(|dead| dead.record)
        .collect();
    assert_eq!(payloads(&entries), ["poison", "second"]);
    // In any order: tansu keeps headers sorted by name.
    let sorted_headers = |mut headers: Vec<(String, Vec<u8>)>| {
        headers.sort();
        headers
    };
    assert_eq!(
        sorted_headers(entries[0].headers.clone()),
        sorted_headers(parked.headers)
    );
    Ok(())
}

/// The DLQ lists its entries a page at a time; a dry run appends nothing; a replay
/// appends each parked entry to the log again, for its target alone, once, even when
/// two replays run at once on two instances; an entry replayed `max_replays` times
/// is not replayed again; a replayed entry is listed as such where the backend keeps
/// it (`keeps_replayed`).
async fn dlq_replay(
    one: Arc<dyn Backend>,
    other: Arc<dyn Backend>,
    keeps_replayed: bool,
) -> Result {
    const MAX_REPLAYS: u32 = 3;
    // One key: a FIFO queue keeps the order of one message group only.
    let parked = |id: &str, target: &str, replays: u32| {
        let mut record = record("k", id);
        for (name, value) in [
            (HEADER_DLQ_TARGET, target.to_string()),
            (HEADER_DLQ_ATTEMPTS, "5".into()),
            (HEADER_DLQ_LAST_ERROR, "503 from the hook".into()),
            (HEADER_REPLAYS, replays.to_string()),
        ] {
            record.headers.push((name.into(), value.into_bytes()));
        }
        record
    };
    let entries = [("a", "hook", 0), ("b", "db", 1), ("c", "hook", 0)];
    one.dead_letter(entries.iter().map(|(i, t, r)| parked(i, t, *r)).collect())
        .await?;
    one.dead_letter(vec![parked("looping", "hook", MAX_REPLAYS)])
        .await?;
    let page = |from, state| ListQuery {
        from: Some(from),
        limit: Some(3),
        state: Some(state),
        target: None,
    };
    let ids = |entries: &[replay::DlqEntry]| -> Vec<String> {
        entries.iter().map(|e| e.message_id.clone()).collect()
    };
    let first = replay::list("ns", &*other, &page(0, EntryState::Parked)).await?;
    assert_eq!(ids(&first.entries), ["a", "b", "c"]);
    assert_eq!(first.entries[0].target, "hook");
    assert_eq!(first.entries[0].attempts, 5);
    assert_eq!(first.entries[0].last_error, "503 from the hook");
    let next = first.next_from.ok_or("a second page")?;
    let second = replay::list("ns", &*other, &page(next, EntryState::Parked)).await?;
    assert_eq!(
        (ids(&second.entries), second.next_from),
        (vec!["looping".to_string()], None)
    );

    // The messages were written and read before they failed: a replay is no
    // duplicate of the original (a FIFO queue deduplicates by id for five minutes).
    let mut log = one.subscribe("replayed").await?;
    one.append(entries.iter().map(|(id, _, _)| record("k", id)).collect())
        .await?;
    let mut originals = Vec::new();
    while originals.len() < entries.len() {
        let got = read(log.as_mut(), 1).await?;
        log.commit(got[0].offset + 1).await?;
        originals.extend(got);
    }
    let dry = ReplayRequest {
        target: Some("hook".into()),
        dry_run: true,
        ..ReplayRequest::default()
    };
    let outcome = replay::replay("ns", &*one, &dry, MAX_REPLAYS, &Default::default()).await?;
    let replayed: Vec<&str> = outcome
        .replayed
        .iter()
        .map(|r| r.message_id.as_str())
        .collect();
    assert_eq!(replayed, ["a", "c"]);
    assert_eq!(outcome.skipped[0].message_id, "looping");
    assert!(nothing_more(log.as_mut()).await?, "a dry run appended");

    // Two replays at once, one on each instance.
    let all = ReplayRequest {
        rate_per_second: Some(100_000),
        ..ReplayRequest::default()
    };
    let (run_a, run_b) = (replay::Run::default(), replay::Run::default());
    let (a, b) = tokio::join!(
        replay::replay("ns", &*one, &all, MAX_REPLAYS, &run_a),
        replay::replay("ns", &*other, &all, MAX_REPLAYS, &run_b)
    );
    let (a, b) = (a?, b?);
    let mut replayed: Vec<String> = a
        .replayed
        .iter()
        .chain(&b.replayed)
        .map(|r| r.message_id.clone())
        .collect();
    replayed.sort();
    assert_eq!(replayed, ["a", "b", "c"], "each entry replayed once");
    // Committed as read: a FIFO queue holds back the rest of a message group until
    // what was read of it is done.
    let mut appended = Vec::new();
    while appended.len() < 3 {
        let got = read(log.as_mut(), 1).await?;
        log.commit(got[0].offset + 1).await?;
        appended.extend(got);
    }
    assert_eq!(sorted(&appended), ["a", "b", "c"]);
    for record in &appended {
        let (_, target, replays) = entries
            .iter()
            .find(|(id, _, _)| record.payload == id.as_bytes())
            .ok_or("an entry that was not parked")?;
        assert_eq!(record.header(HEADER_TARGETS), Some(*target));
        assert_eq!(
            record.header(HEADER_REPLAYS),
            Some(&*(replays + 1).to_string())
        );
        assert_eq!(record.header(HEADER_DLQ_TARGET), None);
    }
    assert!(nothing_more(log.as_mut()).await?, "an entry replayed twice");

    let parked_now = replay::list("ns", &*one, &page(0, EntryState::Parked)).await?;
    assert_eq!(ids(&parked_now.entries), ["looping"]);
    // A queue lets a replayed entry go.
    let done = replay::list("ns", &*other, &page(0, EntryState::Replayed)).await?;
    let kept: &[&str] = if keeps_replayed {
        &["a", "b", "c"]
    } else {
        &[]
    };
    assert_eq!(ids(&done.entries), kept);
    let again = replay::replay("ns", &*other, &all, MAX_REPLAYS, &Default::default()).await?;
    assert!(again.replayed.is_empty(), "{:?}", again.replayed);
    Ok(())
}

/// A message held until it is due comes back once due and not before: from the
/// backend's `due` (the embedded log, Redis, Kafka hold it) or through the
/// subscription again (SQS makes it invisible until then). Once delivered it is gone.
async fn delay(backend: &dyn Backend) -> Result {
    backend.append(vec![record("d", "later")]).await?;
    let mut subscription = backend.subscribe("delays").await?;
    let read_back = read(subscription.as_mut(), 1).await?;
    let due = wald::message::now_ms() + 2000;
    backend.schedule(vec![(read_back[0].clone(), due)]).await?;
    subscription.commit(read_back[0].offset + 1).await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    loop {
        let now = wald::message::now_ms();
        let held = backend.due(now, 10).await?;
        let again = tokio::time::timeout(Duration::from_millis(200), subscription.next_batch(10))
            .await
            .unwrap_or(Ok(Vec::new()))?;
        if held.is_empty() && again.is_empty() {
            assert!(
                tokio::time::Instant::now() < deadline,
                "the delayed message never came back"
            );
            continue;
        }
        assert!(now + 250 >= due, "came back {} ms early", due - now);
        assert_eq!([payloads(&held), payloads(&again)].concat(), ["later"]);
        backend.complete(held).await?;
        if let Some(last) = again.last() {
            subscription.commit(last.offset + 1).await?;
        }
        break;
    }
    assert_eq!(backend.next_due().await?, None);
    assert!(backend.due(u64::MAX / 2, 10).await?.is_empty());
    assert!(
        nothing_more(subscription.as_mut()).await?,
        "delivered twice"
    );
    Ok(())
}

/// Each key's records come in the order they were appended, whatever else is in
/// between.
async fn per_key_order(backend: &dyn Backend) -> Result {
    for i in 0..30 {
        let key = ["x", "y", "z"][i % 3];
        backend
            .append(vec![record(key, &format!("{key}{i}"))])
            .await?;
    }
    let mut subscription = backend.subscribe("order").await?;
    // Committed as it goes: a FIFO queue hands out a key's next messages only once
    // the ones before are done.
    let mut got = Vec::new();
    while got.len() < 30 {
        let batch = read(subscription.as_mut(), 1).await?;
        subscription.commit(batch[0].offset + 1).await?;
        got.extend(batch);
    }
    for key in ["x", "y", "z"] {
        let seen: Vec<usize> = got
            .iter()
            .filter(|r| r.key.as_deref() == Some(key.as_bytes()))
            .map(|r| {
                String::from_utf8_lossy(&r.payload)[1..]
                    .parse()
                    .unwrap_or(0)
            })
            .collect();
        assert_eq!(seen.len(), 10);
        assert!(seen.windows(2).all(|w| w[0] < w[1]), "{key}: {seen:?}");
    }
    Ok(())
}

/// The most recent records, newest first, each with its own offset; a queue says it
/// cannot list them.
async fn recent(backend: &dyn Backend, lists: bool) -> Result {
    for i in 0..10 {
        backend
            .append(vec![record(["x", "y", "z"][i % 3], &format!("r{i}"))])
            .await?;
        // Apart in time: a partitioned log orders its partitions' records by time.
        tokio::time::sleep(Duration::from_millis(3)).await;
    }
    let listed = backend.recent(4).await;
    if !lists {
        assert!(
            matches!(listed, Err(BackendError::Unsupported(_))),
            "{listed:?}"
        );
        return Ok(());
    }
    assert_eq!(payloads(&listed?), ["r9", "r8", "r7", "r6"]);
    let all = backend.recent(100).await?;
    let expected: Vec<String> = (0..10).rev().map(|i| format!("r{i}")).collect();
    assert_eq!(payloads(&all), expected);
    // Each record's place is its own: its offset, and on a partitioned log its
    // partition.
    let places: std::collections::HashSet<_> = all
        .iter()
        .map(|r| (r.header(HEADER_PLACE).map(str::to_string), r.offset))
        .collect();
    assert_eq!(places.len(), 10, "{places:?}");
    assert!(all.iter().all(|r| r.timestamp_ms > 0));
    let keys: Vec<_> = all.iter().map(|r| r.key.clone()).collect();
    assert_eq!(keys[0].as_deref(), Some(&b"x"[..]), "r9's key");
    Ok(())
}

/// Many delayed messages, due over a few seconds, held by one instance that then goes
/// away: a backend opened anew gives each back once, when due and not before.
async fn many_delays(
    first: Arc<dyn Backend>,
    again: impl std::future::Future<Output = Result<Arc<dyn Backend>>>,
) -> Result {
    const COUNT: usize = 300;
    let start = wald::message::now_ms();
    let due_of = |i: usize| start + 1500 + (i as u64 % 30) * 100;
    let records = (0..COUNT)
        .map(|i| record(&format!("k{}", i % 7), &format!("{i}")))
        .collect();
    first.append(records).await?;
    // Held as they are read, and committed past, as delivery does (a FIFO queue hands
    // out no more of a key until what was read of it is done).
    let mut subscription = first.subscribe("many").await?;
    let mut scheduled = 0;
    while scheduled < COUNT {
        let batch = read(subscription.as_mut(), 1).await?;
        let more = tokio::time::timeout(
            Duration::from_millis(100),
            subscription.next_batch(COUNT - scheduled - 1),
        )
        .await
        .unwrap_or(Ok(Vec::new()))?;
        let batch: Vec<StoredRecord> = batch.into_iter().chain(more).collect();
        let delayed = batch
            .iter()
            .map(|r| {
                let i: usize = String::from_utf8_lossy(&r.payload).parse().unwrap_or(0);
                (r.clone(), due_of(i))
            })
            .collect();
        first.schedule(delayed).await?;
        let last = batch.iter().map(|r| r.offset).max().unwrap_or(0);
        subscription.commit(last + 1).await?;
        scheduled += batch.len();
    }
    drop(subscription);
    drop(first);

    let backend = again.await?;
    let mut subscription = backend.subscribe("many").await?;
    let mut came = std::collections::BTreeMap::new();
    // Longer than one record's patience: a queue hands 300 back ten at a time.
    let deadline = tokio::time::Instant::now() + 4 * PATIENCE;
    while came.len() < COUNT {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} of {COUNT} delayed messages came back",
            came.len()
        );
        let now = wald::message::now_ms();
        let held = backend.due(now, 100).await?;
        let read_again =
            tokio::time::timeout(Duration::from_millis(100), subscription.next_batch(100))
                .await
                .unwrap_or(Ok(Vec::new()))?;
        for record in held.iter().chain(&read_again) {
            let i: usize = String::from_utf8_lossy(&record.payload).parse()?;
            assert!(
                now + 250 >= due_of(i),
                "{i} came back {} ms early",
                due_of(i) - now
            );
            assert!(came.insert(i, now).is_none(), "{i} came back twice");
        }
        if let Some(last) = read_again.iter().map(|r| r.offset).max() {
            subscription.commit(last + 1).await?;
        }
        backend.complete(held).await?;
    }
    assert!(
        nothing_more(subscription.as_mut()).await?,
        "delivered twice"
    );
    assert!(backend.due(u64::MAX / 2, 10).await?.is_empty());
    Ok(())
}

/// Runs every scenario, each on a fresh backend from `open`. A backend that several
/// instances share is opened twice where a scenario wants two instances; the
/// embedded log, one instance's own, is shared by the two. `keeps_replayed`: whether
/// replayed DLQ entries stay listed (not on a queue).
/// A backend's kind, which decides what the suite expects of it.
#[derive(Clone, Copy, PartialEq)]
enum Kind {
    /// One instance's own log (opened once, shared by the "two instances").
    Embedded,
    /// A log several instances share: Redis Streams, Kafka.
    SharedLog,
    /// A queue (SQS): replayed entries leave it, and it cannot be read back.
    Queue,
}

async fn conformance<F, Fut>(open: F, kind: Kind) -> Result
where
    F: Fn(&'static str) -> Fut,
    Fut: std::future::Future<Output = Result<Arc<dyn Backend>>>,
{
    append_and_acknowledge(&*open("ack").await?).await?;
    redelivery_after_a_consumer_dies(&*open("redelivery").await?).await?;
    dead_letter(&*open("dlq").await?).await?;
    let one = open("replay").await?;
    let other = if kind == Kind::Embedded {
        one.clone()
    } else {
        open("replay").await?
    };
    dlq_replay(one, other, kind != Kind::Queue).await?;
    delay(&*open("delay").await?).await?;
    many_delays(open("many").await?, open("many")).await?;
    per_key_order(&*open("order").await?).await?;
    recent(&*open("recent").await?, kind != Kind::Queue).await?;
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_log_conforms() -> Result {
    let dir = tempfile::tempdir()?;
    let root = dir.path().to_path_buf();
    conformance(
        |name| {
            let root = root.clone();
            async move {
                let store = NamespaceStore::open(&root, name, &Default::default())?;
                Ok(Arc::new(Embedded(Arc::new(store))) as Arc<dyn Backend>)
            }
        },
        Kind::Embedded,
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_conforms() -> Result {
    if !common::service_available("Redis", "127.0.0.1:6379") {
        return Ok(());
    }
    let run = uuid::Uuid::now_v7().simple().to_string();
    let result = conformance(
        |name| {
            let stream = format!("wal:conformance:{run}:{name}");
            async move {
                // A short claim time, so that a dead member's entries move on quickly.
                let config: redis_streams::Config = toml::from_str(&format!(
                    "url = \"redis://127.0.0.1:6379\"\nstream = \"{stream}\"\nclaim_idle = \"1s\""
                ))?;
                Ok(Arc::new(RedisStreams::open(name, &config)?) as Arc<dyn Backend>)
            }
        },
        Kind::SharedLog,
    )
    .await;
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let keys: Vec<String> = redis::cmd("KEYS")
        .arg(format!("wal:conformance:{run}:*"))
        .query_async(&mut conn)
        .await?;
    if !keys.is_empty() {
        let _: () = redis::cmd("DEL").arg(&keys).query_async(&mut conn).await?;
    }
    result
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_conforms() -> Result {
    // librdkafka's in-process mock cluster: produce, consumer groups, commits.
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    let brokers = cluster.bootstrap_servers();
    // Opened twice for two instances, made once. The DLQ topic has partitions to
    // spare: its entries go to the first.
    let made = std::sync::Mutex::new(std::collections::HashSet::new());
    conformance(|name| {
        let topic = format!("conformance-{name}");
        let created = match made.lock().map(|mut made| made.insert(name)) {
            Ok(false) => Ok(()),
            _ => cluster
                .create_topic(&topic, 3, 1)
                .and_then(|()| cluster.create_topic(&format!("{topic}.dlq"), 3, 1))
                .and_then(|()| cluster.create_topic(&format!("{topic}.delays"), 7, 1)),
        };
        let brokers = brokers.clone();
        async move {
            created?;
            let config: wald::producer::kafka::Config = toml::from_str(&format!(
                "brokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
                 [options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n"
            ))?;
            Ok(Arc::new(wald::producer::kafka::KafkaTopic::open(name, &config)?) as Arc<dyn Backend>)
        }
    }, Kind::SharedLog)
    .await
}

#[cfg(feature = "kafka")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kafka_conforms_on_tansu() -> Result {
    // A broker of its own, with PostgreSQL storage.
    let Some(tansu) = common::Tansu::start().await? else {
        return Ok(());
    };
    let made = tokio::sync::Mutex::new(std::collections::HashSet::new());
    let (tansu, made) = (&tansu, &made);
    conformance(
        |name| async move {
            let topic = format!("conformance-{name}");
            if made.lock().await.insert(name) {
                tansu.create_topic(&topic, 3).await?;
                tansu.create_topic(&format!("{topic}.dlq"), 3).await?;
                tansu.create_topic(&format!("{topic}.delays"), 7).await?;
            }
            let config: wald::producer::kafka::Config = toml::from_str(&format!(
                "brokers = \"{}\"\ntopic = \"{topic}\"\n\
                 [options]\n\"session.timeout.ms\" = \"6000\"\n\"heartbeat.interval.ms\" = \"500\"\n{}",
                tansu.brokers,
                common::Tansu::OPTIONS
            ))?;
            Ok(Arc::new(wald::producer::kafka::KafkaTopic::open(name, &config)?) as Arc<dyn Backend>)
        },
        Kind::SharedLog,
    )
    .await
}

#[cfg(feature = "sqs")]
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sqs_conforms() -> Result {
    use aws_sdk_sqs::types::QueueAttributeName;
    let Some(moto) = common::Moto::start().await? else {
        return Ok(());
    };
    let client = moto.client();
    let endpoint = moto.endpoint.clone();
    conformance(
        |name| {
            let (client, endpoint) = (client.clone(), endpoint.clone());
            async move {
                // A FIFO queue: per-key order is what it promises. A standard queue
                // as the DLQ, as docs/operations.md advises.
                let queue = client
                    .create_queue()
                    .queue_name(format!("conformance-{name}.fifo"))
                    .attributes(QueueAttributeName::FifoQueue, "true")
                    .send()
                    .await?;
                let dlq = client
                    .create_queue()
                    .queue_name(format!("conformance-{name}-dlq"))
                    .send()
                    .await?;
                let config: wald::producer::sqs::Config = toml::from_str(&format!(
                    "queue_url = \"{}\"\ndlq_queue_url = \"{}\"\nendpoint = \"{endpoint}\"\n\
                     access_key_id = \"test\"\nsecret_access_key = \"test\"\nwait_time = \"1s\"\n\
                     visibility_timeout = \"4s\"\n",
                    queue.queue_url().unwrap_or_default(),
                    dlq.queue_url().unwrap_or_default(),
                ))?;
                Ok(
                    Arc::new(wald::producer::sqs::SqsQueue::open(name, &config)?)
                        as Arc<dyn Backend>,
                )
            }
        },
        Kind::Queue,
    )
    .await
}

/// Redis Streams alone: every start is a new consumer of the group, so the ones that
/// left (nothing pending, idle for three `claim_idle`) are deleted by those still
/// reading.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_streams_forgets_consumers_that_left() -> Result {
    if !common::service_available("Redis", "127.0.0.1:6379") {
        return Ok(());
    }
    let stream = format!("wal:departed:{}", uuid::Uuid::now_v7().simple());
    let config: redis_streams::Config = toml::from_str(&format!(
        "url = \"redis://127.0.0.1:6379\"\nstream = \"{stream}\"\nclaim_idle = \"1s\""
    ))?;
    let backend = RedisStreams::open("departed", &config)?;
    backend.append(vec![record("a", "1")]).await?;
    let mut leaving = backend.subscribe("g").await?;
    let got = read(leaving.as_mut(), 1).await?;
    leaving.commit(got[0].offset + 1).await?;
    drop(leaving);
    let client = redis::Client::open("redis://127.0.0.1:6379")?;
    let conn = client.get_multiplexed_async_connection().await?;
    let consumers = || {
        let (mut conn, stream) = (conn.clone(), stream.clone());
        async move {
            let listed: Vec<std::collections::HashMap<String, redis::Value>> = redis::cmd("XINFO")
                .arg("CONSUMERS")
                .arg(&stream)
                .arg("g")
                .query_async(&mut conn)
                .await?;
            Ok::<_, redis::RedisError>(
                listed
                    .iter()
                    .filter_map(|c| redis::from_redis_value_ref::<String>(c.get("name")?).ok())
                    .collect::<Vec<_>>(),
            )
        }
    };
    let left = consumers().await?;
    assert_eq!(left.len(), 1, "{left:?}");
    let _staying = backend.subscribe("g").await?;
    let deadline = tokio::time::Instant::now() + PATIENCE;
    while consumers().await?.contains(&left[0]) {
        assert!(
            tokio::time::Instant::now() < deadline,
            "{} is still listed",
            left[0]
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    let mut conn = conn;
    let _: () = redis::cmd("DEL")
        .arg(&stream)
        .query_async(&mut conn)
        .await?;
    Ok(())
}
