//! A namespace's log on a Kafka topic.
//!
//! - Append: the idempotent producer (`enable.idempotence`, `acks=all`), one record per
//!   message, partitioned by key; a write is acknowledged once every record's delivery
//!   report says persisted. The records of one request are not atomic on Kafka: when
//!   some were persisted and others not, the answer is 504 (durability unknown).
//! - Read: each subscription is one member of the consumer group, with manual commits
//!   (`enable.auto.commit = false`); a task receives and hands batches over. A commit
//!   stores, per partition, the offset after the last record done, but never beyond a
//!   delayed message still held: the consumer holds delayed messages itself (in
//!   memory), and after a crash they are read again from the committed offset and held
//!   again. Undelayed messages are not blocked by them.
//! - DLQ: the records go to the DLQ topic.

use std::collections::{BTreeMap, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::consumer::{CommitMode, Consumer, StreamConsumer};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Headers, Message, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{ClientConfig, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{Compression, Config};
use crate::backend::{
    Backend, BackendError, Durability, Handed, Record, StoredRecord, Subscription,
};

/// Messages handed over per batch at most.
const BATCH: usize = 512;
/// Longest wait between tries of a consumer that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A namespace's topic, its DLQ topic, and the delayed messages its consumer holds.
pub struct KafkaTopic {
    producer: FutureProducer,
    /// Base settings of every consumer (brokers and the pipeline's `options`).
    consumer_config: ClientConfig,
    topic: String,
    dlq_topic: String,
    delivery_timeout: Duration,
    delayed: Arc<Mutex<Delayed>>,
    /// The last error, cleared by the next success.
    down: Arc<Mutex<Option<String>>>,
}

/// Delayed messages held by this instance's consumer, by due time.
#[derive(Default)]
struct Delayed {
    /// (due, number) → the record and where it is in the topic.
    by_due: BTreeMap<(u64, u64), (StoredRecord, i32, i64)>,
    /// A record's due time by its number, to forget it.
    due_of: HashMap<u64, u64>,
}

impl Delayed {
    /// Per partition, the lowest offset still held: commits stop there.
    fn floors(&self) -> HashMap<i32, i64> {
        let mut floors: HashMap<i32, i64> = HashMap::new();
        for (_, partition, offset) in self.by_due.values() {
            let floor = floors.entry(*partition).or_insert(*offset);
            *floor = (*floor).min(*offset);
        }
        floors
    }
}

impl KafkaTopic {
    /// The topic of `namespace` as `config` names it. Connects in the background: a
    /// cluster that is down makes writes fail, never the namespace.
    pub fn open(namespace: &str, config: &Config) -> Result<Self, BackendError> {
        let mut base = ClientConfig::new();
        base.set("bootstrap.servers", &config.brokers);
        for (key, value) in &config.options {
            base.set(key, value);
        }
        let mut producer = base.clone();
        producer
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set("linger.ms", config.linger.get().as_millis().to_string())
            .set(
                "message.timeout.ms",
                config.delivery_timeout.get().as_millis().to_string(),
            )
            .set("compression.type", compression(config.compression));
        let producer: FutureProducer = producer.create().map_err(unavailable)?;
        let mut consumer_config = base;
        consumer_config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        Ok(Self {
            producer,
            consumer_config,
            dlq_topic: config
                .dlq_topic
                .clone()
                .unwrap_or_else(|| format!("{}.dlq", config.topic)),
            topic: config.topic.clone(),
            delivery_timeout: config.delivery_timeout.get(),
            delayed: Arc::default(),
            down: Arc::default(),
        })
        .inspect(|_| info!(namespace, topic = %config.topic, "Kafka producer created."))
    }

    /// Produces `records` to `topic` and waits for every delivery report.
    async fn produce(&self, topic: &str, records: &[Record]) -> Result<(), BackendError> {
        let sends = records.iter().map(|record| {
            let mut headers = OwnedHeaders::new_with_capacity(record.headers.len());
            for (key, value) in &record.headers {
                headers = headers.insert(Header {
                    key,
                    value: Some(value),
                });
            }
            let mut message = FutureRecord::to(topic)
                .payload(&record.payload)
                .headers(headers);
            if let Some(key) = &record.key {
                message = message.key(key);
            }
            self.producer.send(message, self.delivery_timeout)
        });
        let reports = futures::future::join_all(sends).await;
        let persisted = reports.iter().filter(|r| r.is_ok()).count();
        let failure = reports.into_iter().find_map(|r| r.err().map(|(e, _)| e));
        note(&self.down, failure.as_ref());
        match failure {
            None => Ok(()),
            Some(e) if persisted > 0 || is_timeout(&e) => Err(BackendError::Unknown(format!(
                "{persisted} of {} records persisted; Kafka: {e}",
                records.len()
            ))),
            Some(e) => Err(unavailable(e)),
        }
    }
}

#[async_trait]
impl Backend for KafkaTopic {
    async fn append(&self, records: Vec<Record>) -> Result<Durability, BackendError> {
        self.produce(&self.topic, &records).await?;
        Ok(Durability::Durable)
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>, BackendError> {
        let consumer: StreamConsumer = self
            .consumer_config
            .clone()
            .set("group.id", group)
            .create()
            .map_err(unavailable)?;
        consumer.subscribe(&[&self.topic]).map_err(unavailable)?;
        let consumer = Arc::new(consumer);
        let held = Arc::new(Mutex::new(BTreeMap::new()));
        let (batches, incoming) = mpsc::channel(2);
        info!(topic = %self.topic, group, "Reading the Kafka topic.");
        let task = tokio::spawn(read(
            consumer.clone(),
            held.clone(),
            self.down.clone(),
            batches,
        ));
        Ok(Box::new(TopicSubscription {
            consumer,
            topic: self.topic.clone(),
            handed: Handed::new(incoming),
            held,
            done_up_to: HashMap::new(),
            delayed: self.delayed.clone(),
            task,
        }))
    }

    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), BackendError> {
        self.produce(&self.dlq_topic, &records).await
    }

    async fn dead_letters(&self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        // A reader of its own that commits nothing: reads the DLQ topic from its start.
        let reader: StreamConsumer = self
            .consumer_config
            .clone()
            .set(
                "group.id",
                format!("wald-dlq-reader-{}", uuid::Uuid::now_v7()),
            )
            .create()
            .map_err(unavailable)?;
        reader.subscribe(&[&self.dlq_topic]).map_err(unavailable)?;
        let mut records = Vec::new();
        let mut wait = Duration::from_secs(10);
        while records.len() < max {
            match tokio::time::timeout(wait, reader.recv()).await {
                Ok(Ok(message)) => {
                    let mut record = to_record(&message);
                    record.offset = records.len() as u64;
                    records.push(record);
                    // Once the first came, the rest follows quickly.
                    wait = Duration::from_secs(1);
                }
                Ok(Err(e)) => return Err(unavailable(e)),
                Err(_) => break,
            }
        }
        Ok(records)
    }

    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), BackendError> {
        let mut held = self.delayed.lock().map_err(|_| poisoned())?;
        for (record, due) in delayed {
            let (partition, offset) = place(&record)?;
            held.due_of.insert(record.offset, due);
            held.by_due
                .insert((due, record.offset), (record, partition, offset));
        }
        Ok(())
    }

    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        let held = self.delayed.lock().map_err(|_| poisoned())?;
        Ok(held
            .by_due
            .range(..(now_ms + 1, 0))
            .take(max)
            .map(|(_, (record, _, _))| record.clone())
            .collect())
    }

    async fn complete(&self, delivered: Vec<StoredRecord>) -> Result<(), BackendError> {
        let mut held = self.delayed.lock().map_err(|_| poisoned())?;
        for record in delivered {
            if let Some(due) = held.due_of.remove(&record.offset) {
                held.by_due.remove(&(due, record.offset));
            }
        }
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<u64>, BackendError> {
        let held = self.delayed.lock().map_err(|_| poisoned())?;
        Ok(held.by_due.keys().next().map(|(due, _)| *due))
    }

    fn unavailable(&self) -> Option<String> {
        self.down.lock().ok()?.clone()
    }
}

/// One member of the consumer group.
struct TopicSubscription {
    consumer: Arc<StreamConsumer>,
    topic: String,
    handed: Handed,
    /// Partition and offset of each record read and not yet committed, by number.
    held: Arc<Mutex<BTreeMap<u64, (i32, i64)>>>,
    /// Per partition, the offset after the last record done.
    done_up_to: HashMap<i32, i64>,
    delayed: Arc<Mutex<Delayed>>,
    task: JoinHandle<()>,
}

impl Drop for TopicSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Subscription for TopicSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        self.handed.next_batch(max).await
    }

    fn position(&self) -> u64 {
        self.handed.position()
    }

    /// Commits, per partition, the offset after the last record done, held back by
    /// any delayed message of that partition. A failed commit (a rebalance took the
    /// partition away) is left: whoever reads the partition next delivers again from
    /// the last commit, which at-least-once allows.
    async fn commit(&mut self, next_offset: u64) -> Result<(), BackendError> {
        let done = {
            let mut held = self.held.lock().map_err(|_| poisoned())?;
            let rest = held.split_off(&next_offset);
            std::mem::replace(&mut *held, rest)
        };
        for (partition, offset) in done.into_values() {
            let up_to = self.done_up_to.entry(partition).or_insert(0);
            *up_to = (*up_to).max(offset + 1);
        }
        let floors = self.delayed.lock().map_err(|_| poisoned())?.floors();
        let mut list = TopicPartitionList::new();
        for (&partition, &up_to) in &self.done_up_to {
            let offset = floors.get(&partition).map_or(up_to, |f| up_to.min(*f));
            list.add_partition_offset(&self.topic, partition, Offset::Offset(offset))
                .map_err(unavailable)?;
        }
        if list.count() == 0 {
            return Ok(());
        }
        let consumer = self.consumer.clone();
        let committed =
            tokio::task::spawn_blocking(move || consumer.commit(&list, CommitMode::Sync)).await;
        if let Ok(Err(e)) = committed {
            warn!(topic = %self.topic, error = %e, "Offsets not committed; what they cover may be delivered again.");
        }
        Ok(())
    }
}

/// Receives messages and hands them over in batches of what is there at once, until
/// the subscription is dropped.
async fn read(
    consumer: Arc<StreamConsumer>,
    held: Arc<Mutex<BTreeMap<u64, (i32, i64)>>>,
    down: Arc<Mutex<Option<String>>>,
    batches: mpsc::Sender<Vec<StoredRecord>>,
) {
    let mut next_seq = 0u64;
    let mut backoff = Duration::from_millis(100);
    loop {
        let first = consumer.recv().await;
        let mut received = Vec::new();
        match first {
            Ok(message) => received.push(place_and_convert(&message)),
            Err(e) => {
                note(&down, Some(&e));
                warn!(error = %e, retry_in = ?backoff, "Reading the Kafka topic failed; trying again.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                continue;
            }
        }
        backoff = Duration::from_millis(100);
        note(&down, None);
        while received.len() < BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => received.push(place_and_convert(&message)),
                _ => break,
            }
        }
        let mut records = Vec::with_capacity(received.len());
        if let Ok(mut held) = held.lock() {
            for (mut record, partition, offset) in received {
                record.offset = next_seq;
                held.insert(next_seq, (partition, offset));
                next_seq += 1;
                records.push(record);
            }
        }
        if batches.send(records).await.is_err() {
            return;
        }
    }
}

fn place_and_convert(message: &impl Message) -> (StoredRecord, i32, i64) {
    let mut record = to_record(message);
    // Where the record is, carried in its headers for `schedule`.
    record.headers.push((
        PLACE_HEADER.into(),
        format!("{}:{}", message.partition(), message.offset()).into_bytes(),
    ));
    (record, message.partition(), message.offset())
}

/// A header the reader adds to each record read: `<partition>:<offset>` in the topic.
const PLACE_HEADER: &str = "wald-kafka-place";

/// Where a record read from the topic is.
fn place(record: &StoredRecord) -> Result<(i32, i64), BackendError> {
    record
        .header(PLACE_HEADER)
        .and_then(|p| p.split_once(':'))
        .and_then(|(p, o)| Some((p.parse().ok()?, o.parse().ok()?)))
        .ok_or_else(|| {
            BackendError::Unavailable("a delayed record without its place in the topic".into())
        })
}

fn to_record(message: &impl Message) -> StoredRecord {
    StoredRecord {
        offset: 0,
        timestamp_ms: message
            .timestamp()
            .to_millis()
            .and_then(|ms| u64::try_from(ms).ok())
            .unwrap_or(0),
        key: message.key().map(<[u8]>::to_vec),
        headers: message
            .headers()
            .map(|headers| {
                headers
                    .iter()
                    .map(|h| (h.key.to_string(), h.value.unwrap_or_default().to_vec()))
                    .collect()
            })
            .unwrap_or_default(),
        payload: message.payload().unwrap_or_default().to_vec(),
    }
}

fn compression(c: Compression) -> &'static str {
    match c {
        Compression::None => "none",
        Compression::Gzip => "gzip",
        Compression::Snappy => "snappy",
        Compression::Lz4 => "lz4",
        Compression::Zstd => "zstd",
    }
}

fn is_timeout(e: &KafkaError) -> bool {
    e.rdkafka_error_code() == Some(RDKafkaErrorCode::MessageTimedOut)
}

/// Remembers whether Kafka answered the last request.
fn note(down: &Mutex<Option<String>>, error: Option<&KafkaError>) {
    if let Ok(mut down) = down.lock() {
        *down = error.map(|e| format!("Kafka: {e}"));
    }
}

fn unavailable(e: KafkaError) -> BackendError {
    BackendError::Unavailable(format!("Kafka: {e}"))
}

fn poisoned() -> BackendError {
    BackendError::Unavailable("a lock was poisoned".into())
}
