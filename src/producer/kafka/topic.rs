//! A namespace's log on a Kafka topic.
//!
//! - Append: the idempotent producer (`enable.idempotence`, `acks=all`), one record per
//!   message, partitioned by key; a write is acknowledged once every record's delivery
//!   report says persisted. The records of one request are not atomic on Kafka: when
//!   some were persisted and others not, the answer is 504 (durability unknown).
//! - Read: each subscription is one member of the consumer group, with manual commits
//!   (`enable.auto.commit = false`); a task receives and hands batches over. A commit
//!   stores, per partition, the offset after the last record done. A member commits
//!   what is done in a partition before giving it up in a rebalance, and never after
//!   (`Ownership`), whichever assignment strategy the group uses.
//! - Delays: a message read before it is due goes to the delay topic, by tiers, and
//!   comes back from there when due (`delays.rs`); the commit passes it once written.
//! - DLQ: the records go to partition 0 of the DLQ topic, where replays are claimed and
//!   marked (`dlq.rs`).
//! - Outage: the producer's statistics (every second) say which brokers are up; while
//!   none is, writes are refused at once (503) instead of waiting `delivery_timeout`
//!   in librdkafka's queue, and the namespace reports it; meanwhile a metadata request
//!   every second makes the producer connect again (it connects only when it has
//!   something to send), so that writes resume by themselves.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use futures::FutureExt;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, Message, OwnedHeaders};
use rdkafka::producer::{FutureRecord, Producer};
use rdkafka::{ClientConfig, ClientContext, Offset, TopicPartitionList};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::client::{SharedProducer, to_placed_record, unavailable};
use super::config::{Compression, Config};
use super::delays::Delays;
use super::dlq::{self, DeadLetters};
use crate::message::{Durability, Record, StoredRecord};
use crate::producer::backend::{
    Backend, BackendError, DeadLetter, Durable, GroupPosition, Handed, LastError, Positions,
    Subscription, poisoned,
};

/// Messages handed over per batch at most.
const BATCH: usize = 512;
/// Longest wait between tries of a consumer that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a consumer may keep failing before a new one joins in its place.
const REJOIN_AFTER: Duration = Duration::from_secs(10);

/// A namespace's topic, its DLQ topic, and the delayed messages its consumer holds.
pub struct KafkaTopic {
    producer: SharedProducer,
    /// Base settings of every consumer (brokers and the pipeline's `options`).
    consumer_config: ClientConfig,
    topic: String,
    dlq: DeadLetters,
    /// The delivery group.
    group: String,
    /// Read the groups' offsets for the status: one consumer per group, made at the
    /// first read.
    watchers: Arc<Mutex<HashMap<String, BaseConsumer>>>,
    delivery_timeout: Duration,
    delays: Delays,
    /// The last error, cleared by the next success.
    down: LastError,
    /// Asks for metadata while no broker is up.
    reconnect: JoinHandle<()>,
}

impl Drop for KafkaTopic {
    fn drop(&mut self) {
        self.reconnect.abort();
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
        if !config.options.contains_key("statistics.interval.ms") {
            producer.set("statistics.interval.ms", "1000");
        }
        let producer = SharedProducer::new(producer)?;
        let mut consumer_config = base;
        consumer_config
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest");
        // The delay topic's reader: its own group, and a bounded prefetch.
        let mut delays_config = consumer_config.clone();
        delays_config
            .set("group.id", format!("{}.delays", config.group(namespace)))
            .set("queued.max.messages.kbytes", "4096");
        let delays = Delays::new(
            config
                .delay_topic
                .clone()
                .unwrap_or_else(|| format!("{}.delays", config.topic)),
            producer.clone(),
            delays_config,
        );
        let dlq_topic = config
            .dlq_topic
            .clone()
            .unwrap_or_else(|| format!("{}.dlq", config.topic));
        let reconnect = tokio::spawn(reconnect(producer.clone(), config.topic.clone()));
        Ok(Self {
            producer,
            reconnect,
            dlq: DeadLetters::new(dlq_topic, consumer_config.clone()),
            group: config.group(namespace),
            watchers: Arc::default(),
            consumer_config,
            topic: config.topic.clone(),
            delivery_timeout: config.delivery_timeout.get(),
            delays,
            down: LastError::new("Kafka"),
        })
        .inspect(|_| info!(namespace, topic = %config.topic, "Kafka producer created."))
    }

    /// Produces `records` to `topic` (to its `partition`, else by key) and waits for
    /// every delivery report.
    async fn produce(
        &self,
        topic: &str,
        partition: Option<i32>,
        records: &[Record],
    ) -> Result<(), BackendError> {
        if let Some(reason) = self.producer.no_broker() {
            return Err(BackendError::Unavailable(reason));
        }
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
            if let Some(partition) = partition {
                message = message.partition(partition);
            }
            self.producer.send(message, self.delivery_timeout)
        });
        let reports = futures::future::join_all(sends).await;
        let persisted = reports.iter().filter(|r| r.is_ok()).count();
        let failure = reports.into_iter().find_map(Result::err);
        self.down.note(failure.as_ref());
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
    async fn append(&self, records: Vec<Record>) -> Result<Durable, BackendError> {
        self.produce(&self.topic, None, &records).await?;
        Ok(Durability::Durable.into())
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>, BackendError> {
        let member = Member {
            config: self.consumer_config.clone().set("group.id", group).clone(),
            topic: self.topic.clone(),
        };
        let consumer = Arc::new(Mutex::new(Arc::new(member.join()?)));
        let (batches, incoming) = mpsc::channel(2);
        info!(topic = %self.topic, group, "Reading the Kafka topic.");
        let task = tokio::spawn(read(member, consumer.clone(), self.down.clone(), batches));
        Ok(Box::new(TopicSubscription {
            consumer,
            topic: self.topic.clone(),
            handed: Handed::new(incoming),
            task,
        }))
    }

    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), BackendError> {
        self.produce(self.dlq.topic(), Some(dlq::PARTITION), &records)
            .await
    }

    async fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<DeadLetter>, BackendError> {
        self.dlq.list(from, max).await
    }

    fn replays_dead_letters(&self) -> bool {
        true
    }

    async fn claim_replay(&self, entry: &DeadLetter) -> Result<bool, BackendError> {
        self.dlq.claim(&self.producer, entry).await
    }

    async fn mark_replayed(&self, entry: &DeadLetter) -> Result<(), BackendError> {
        self.dlq.mark_replayed(&self.producer, entry).await
    }

    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), BackendError> {
        self.delays.schedule(delayed).await
    }

    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        self.delays.due(now_ms, max).await
    }

    async fn complete(&self, delivered: Vec<StoredRecord>) -> Result<(), BackendError> {
        self.delays.complete(&delivered)
    }

    async fn next_due(&self) -> Result<Option<u64>, BackendError> {
        self.delays.next_due()
    }

    fn unavailable(&self) -> Option<String> {
        self.producer.no_broker().or_else(|| self.down.get())
    }

    async fn recent(&self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        let (config, topic) = (self.consumer_config.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || super::recent::recent(&config, &topic, max))
            .await
            .map_err(|e| BackendError::Unavailable(format!("reading recent records: {e}")))?
    }

    /// The delivery group's committed offsets against the partitions' ends, summed
    /// over the partitions; the delayed messages, those of the delay topic its reader
    /// did not commit past; the DLQ's entries without a `replayed` mark (the DLQ
    /// partition is read on from where the last read ended).
    async fn positions(&self) -> Result<Option<Positions>, BackendError> {
        let dlq_depth = self.dlq.depth().await.ok();
        let (watchers, config) = (self.watchers.clone(), self.consumer_config.clone());
        let (group, topic) = (self.group.clone(), self.topic.clone());
        let delays_topic = self.delays.topic().to_string();
        tokio::task::spawn_blocking(move || {
            let mut watchers = watchers.lock().map_err(|_| poisoned())?;
            let (next_offset, lag) = group_lag(&mut watchers, &config, &group, &topic)?;
            let delays_group = format!("{group}.delays");
            // A missing delay topic holds nothing.
            let delayed = group_lag(&mut watchers, &config, &delays_group, &delays_topic)
                .map_or(0, |(_, lag)| lag);
            Ok(Some(Positions {
                groups: vec![GroupPosition {
                    group,
                    next_offset,
                    lag: Some(lag),
                    commits: None,
                }],
                dlq_depth,
                delayed_pending: Some(delayed),
                queue: None,
            }))
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("reading the group's offsets: {e}")))?
    }
}

/// Consumer `group`'s committed offsets in `topic` and how far they trail each
/// partition's end, summed over the partitions (blocking). `watchers` keeps a consumer
/// per group to read its commits with; it never joins the group.
fn group_lag(
    watchers: &mut HashMap<String, BaseConsumer>,
    config: &ClientConfig,
    group: &str,
    topic: &str,
) -> Result<(u64, u64), BackendError> {
    if !watchers.contains_key(group) {
        let made: BaseConsumer = config
            .clone()
            .set("group.id", group)
            .create()
            .map_err(unavailable)?;
        watchers.insert(group.to_string(), made);
    }
    let watcher = &watchers[group];
    let metadata = watcher
        .fetch_metadata(Some(topic), WATCH_TIMEOUT)
        .map_err(unavailable)?;
    let mut partitions = TopicPartitionList::new();
    for found in metadata.topics() {
        for partition in found.partitions() {
            partitions.add_partition(found.name(), partition.id());
        }
    }
    let committed = watcher
        .committed_offsets(partitions, WATCH_TIMEOUT)
        .map_err(unavailable)?;
    let (mut next_offset, mut lag) = (0, 0);
    for element in committed.elements() {
        let (low, high) = watcher
            .fetch_watermarks(topic, element.partition(), WATCH_TIMEOUT)
            .map_err(unavailable)?;
        let at = match element.offset() {
            Offset::Offset(at) => at,
            _ => low,
        };
        next_offset += at.max(0) as u64;
        lag += (high - at).max(0) as u64;
    }
    Ok((next_offset, lag))
}

/// How long a status read of the group's offsets may wait for the cluster.
const WATCH_TIMEOUT: Duration = Duration::from_secs(5);

/// While no broker is up, asks for the topic's metadata every second, which makes the
/// producer connect; the statistics then clear the state once a broker is up.
async fn reconnect(producer: SharedProducer, topic: String) {
    loop {
        tokio::time::sleep(Duration::from_secs(1)).await;
        let current = producer.current();
        if producer.no_broker().is_none() {
            continue;
        }
        let topic = topic.clone();
        let _ = tokio::task::spawn_blocking(move || {
            current
                .client()
                .fetch_metadata(Some(&topic), Duration::from_secs(1))
        })
        .await;
    }
}

/// How to join the consumer group as a new member.
struct Member {
    config: ClientConfig,
    topic: String,
}

impl Member {
    /// A new member, with nothing read yet: it reads from the group's commits.
    fn join(&self) -> Result<GroupConsumer, BackendError> {
        let context = Rebalances {
            topic: self.topic.clone(),
            ownership: Mutex::default(),
        };
        let consumer: GroupConsumer = self
            .config
            .create_with_context(context)
            .map_err(unavailable)?;
        consumer.subscribe(&[&self.topic]).map_err(unavailable)?;
        Ok(consumer)
    }
}

type GroupConsumer = StreamConsumer<Rebalances>;

/// The member a subscription reads and commits as; replaced when it fails for long.
type Current = Arc<Mutex<Arc<GroupConsumer>>>;

/// The partitions a member reads, and what it read and did in them. A partition given
/// up is forgotten: its records still being delivered are not committed by this member
/// (the next reader delivers them again from the last commit, as at-least-once allows),
/// so that a commit never moves another member's offset back.
#[derive(Default)]
struct Ownership {
    assigned: BTreeSet<i32>,
    /// Partition and offset of each record read and not yet committed, by number.
    held: BTreeMap<u64, (i32, i64)>,
    /// Per partition, the offset after the last record done.
    done_up_to: HashMap<i32, i64>,
}

impl Ownership {
    /// The offsets to commit for what is done in the partitions `partitions` picks.
    fn done(&self, topic: &str, partitions: impl Fn(i32) -> bool) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        for (&partition, &up_to) in &self.done_up_to {
            if partitions(partition) {
                let _ = list.add_partition_offset(topic, partition, Offset::Offset(up_to));
            }
        }
        list
    }
}

/// A member's [`Ownership`], kept in step with the group's rebalances.
struct Rebalances {
    topic: String,
    ownership: Mutex<Ownership>,
}

impl ClientContext for Rebalances {}

impl ConsumerContext for Rebalances {
    /// Before partitions go: commits what is done in them, then forgets them.
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Revoke(revoked) = rebalance else {
            return;
        };
        let gone: BTreeSet<i32> = revoked.elements().iter().map(|e| e.partition()).collect();
        let Ok(mut ownership) = self.ownership.lock() else {
            return;
        };
        let done = ownership.done(&self.topic, |p| gone.contains(&p));
        if done.count() > 0
            && let Err(e) = consumer.commit(&done, CommitMode::Sync)
        {
            warn!(topic = %self.topic, error = %e, "Offsets of partitions given up not committed; what they cover may be delivered again.");
        }
        ownership.assigned.retain(|p| !gone.contains(p));
        ownership.done_up_to.retain(|p, _| !gone.contains(p));
        ownership.held.retain(|_, (p, _)| !gone.contains(p));
        info!(topic = %self.topic, partitions = ?gone, "Kafka partitions given up.");
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        let Rebalance::Assign(added) = rebalance else {
            return;
        };
        let added: BTreeSet<i32> = added.elements().iter().map(|e| e.partition()).collect();
        if let Ok(mut ownership) = self.ownership.lock() {
            ownership.assigned.extend(&added);
            info!(topic = %self.topic, partitions = ?added, reading = ?ownership.assigned, "Kafka partitions assigned.");
        }
    }
}

/// One member of the consumer group.
struct TopicSubscription {
    consumer: Current,
    topic: String,
    handed: Handed,
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

    /// Commits, per partition still assigned, the offset after the last record done.
    /// The ownership stays locked until the commit is made, so that a rebalance cannot
    /// take a partition away in between. A failed commit is left: whoever reads the
    /// partition next delivers again from the last commit, which at-least-once allows.
    async fn commit(&mut self, next_offset: u64) -> Result<(), BackendError> {
        let consumer = self.consumer.lock().map_err(|_| poisoned())?.clone();
        let topic = self.topic.clone();
        let committed = tokio::task::spawn_blocking(move || {
            let mut ownership = consumer.context().ownership.lock().map_err(|_| poisoned())?;
            let rest = ownership.held.split_off(&next_offset);
            let done = std::mem::replace(&mut ownership.held, rest);
            for (partition, offset) in done.into_values() {
                let up_to = ownership.done_up_to.entry(partition).or_insert(0);
                *up_to = (*up_to).max(offset + 1);
            }
            let list = ownership.done(&topic, |p| ownership.assigned.contains(&p));
            if list.count() > 0
                && let Err(e) = consumer.commit(&list, CommitMode::Sync)
            {
                warn!(%topic, error = %e, "Offsets not committed; what they cover may be delivered again.");
            }
            Ok(())
        })
        .await;
        committed.map_err(|e| BackendError::Unavailable(format!("committing offsets: {e}")))?
    }
}

/// Receives messages and hands them over in batches of what is there at once, until
/// the subscription is dropped. A member that keeps failing for `REJOIN_AFTER` (after
/// an outage librdkafka's consumer may not find its way back into the group) is
/// replaced by a new one, which reads from the group's commits: what the old one had
/// read and not committed comes again, as at-least-once allows.
async fn read(
    member: Member,
    current: Current,
    down: LastError,
    batches: mpsc::Sender<Vec<StoredRecord>>,
) {
    let mut next_seq = 0u64;
    let mut backoff = Duration::from_millis(100);
    let mut failing_since: Option<tokio::time::Instant> = None;
    loop {
        let Ok(consumer) = current.lock().map(|c| c.clone()) else {
            return;
        };
        let first = consumer.recv().await;
        let mut received = Vec::new();
        match first {
            Ok(message) => received.push(place_and_convert(&message)),
            Err(e) => {
                down.note(Some(&e));
                warn!(error = %e, retry_in = ?backoff, "Reading the Kafka topic failed; trying again.");
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
                let since = *failing_since.get_or_insert_with(tokio::time::Instant::now);
                if since.elapsed() >= REJOIN_AFTER {
                    drop(consumer);
                    match member.join() {
                        Ok(fresh) => {
                            info!(topic = %member.topic, "Joined the consumer group anew after a failure.");
                            replace_consumer(&current, fresh, &member.topic);
                            failing_since = None;
                        }
                        Err(e) => warn!(error = %e, "Joining the consumer group anew failed."),
                    }
                }
                continue;
            }
        }
        backoff = Duration::from_millis(100);
        failing_since = None;
        down.clear();
        while received.len() < BATCH {
            match consumer.recv().now_or_never() {
                Some(Ok(message)) => received.push(place_and_convert(&message)),
                _ => break,
            }
        }
        let mut records = Vec::with_capacity(received.len());
        if let Ok(mut ownership) = consumer.context().ownership.lock() {
            for (mut record, partition, offset) in received {
                // Of a partition given up while the batch was read: its next reader
                // delivers it.
                if !ownership.assigned.contains(&partition) {
                    continue;
                }
                record.offset = next_seq;
                ownership.held.insert(next_seq, (partition, offset));
                next_seq += 1;
                records.push(record);
            }
        }
        if batches.send(records).await.is_err() {
            return;
        }
    }
}

/// Puts `fresh` in the place of the current consumer. Dropping a consumer blocks until
/// it has left the group, which after an outage can take long or not end: the old one
/// is dropped on a blocking thread, so that the reader goes on with the new member.
fn replace_consumer(current: &Current, fresh: GroupConsumer, topic: &str) {
    let Ok(old) = current
        .lock()
        .map(|mut current| std::mem::replace(&mut *current, Arc::new(fresh)))
    else {
        return;
    };
    let topic = topic.to_string();
    tokio::task::spawn_blocking(move || {
        let started = std::time::Instant::now();
        drop(old);
        info!(%topic, took = ?started.elapsed(), "The replaced consumer left the group.");
    });
}

fn place_and_convert(message: &impl Message) -> (StoredRecord, i32, i64) {
    // Where the record is, carried in its headers for `schedule`.
    let record = to_placed_record(message);
    (record, message.partition(), message.offset())
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
