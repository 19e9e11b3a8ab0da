//! Delayed messages of a Kafka namespace, held in its delay topic (`<topic>.delays`)
//! rather than in memory, so that they survive restarts and cost no memory however
//! many there are.
//!
//! The delay topic has one partition per tier of [`TIERS`]. A message that is not due
//! goes to the partition of the longest tier not longer than the time it has left,
//! with the time that tier lets it go (`wald-delay-wake`, the time it was produced
//! plus the tier). Within a partition those times never decrease, so a reader waits
//! for the first record of each partition only: it pauses the partition until the
//! record wakes. A record that wakes and is due is handed to delivery; one that is not
//! due yet goes on to a shorter tier. A message is never delivered early, and late by
//! at most the shortest tier. The reader is a member of the group
//! `<delivery group>.delays`: with several instances, each reads some tiers, and the
//! records of an instance that dies are read again by another (at least once).
//!
//! What the reader holds is bounded: the records woken and not yet delivered (at most
//! [`READY_MAX`]; past that it pauses every partition) and what librdkafka prefetched.
//! A record stays in the topic no longer than its tier and its delivery: the topic's
//! retention must be longer than the longest tier (a day is plenty), whatever the
//! delays.

use std::collections::{BTreeMap, BTreeSet, HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer, StreamConsumer};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};
use tokio::task::JoinHandle;
use tracing::warn;

use super::client::{SharedProducer, to_record, unavailable};
use crate::message::{HEADER_DELIVER_AT, StoredRecord, now_ms};
use crate::producer::backend::{BackendError, poisoned};

/// The tiers, shortest first: the delay topic's partitions, in this order.
pub(super) const TIERS: [Duration; 7] = [
    Duration::from_millis(100),
    Duration::from_secs(1),
    Duration::from_secs(10),
    Duration::from_secs(60),
    Duration::from_secs(600),
    Duration::from_secs(3600),
    Duration::from_secs(36_000),
];
/// When a record's tier lets it go (ms since the epoch).
const WAKE: &str = "wald-delay-wake";
/// When the message is due (ms since the epoch).
const DUE: &str = "wald-delay-due";
/// The message's own time, which the delay topic's records do not keep.
const TIMESTAMP: &str = "wald-delay-timestamp";
/// On a record handed to delivery: `<partition>:<offset>` in the delay topic.
const POSITION: &str = "wald-delay-position";
/// Headers of records read from the namespace's topic that do not go on.
const DROPPED: [&str; 5] = [WAKE, DUE, TIMESTAMP, POSITION, super::client::PLACE_HEADER];
/// Most woken records held for delivery; past it the reader waits.
pub(super) const READY_MAX: usize = 1024;
/// How long one produce may take.
const PRODUCE_TIMEOUT: Duration = Duration::from_secs(30);
/// Longest wait of the reader between looks at its paused partitions.
const TICK: Duration = Duration::from_millis(50);

/// The tier for a message that has `left` ms to wait.
fn tier(left: u64) -> usize {
    TIERS
        .iter()
        .rposition(|t| t.as_millis() as u64 <= left)
        .unwrap_or(0)
}

/// A namespace's delay topic: writes to it, and the reader started at the first look
/// for due messages.
pub(super) struct Delays {
    topic: String,
    producer: SharedProducer,
    /// The reader's settings (group `<delivery group>.delays`).
    consumer_config: ClientConfig,
    state: Arc<Mutex<State>>,
    reader: Mutex<Option<JoinHandle<()>>>,
    /// The topic's partitions, once known.
    partitions: Mutex<Option<i32>>,
    /// Asks for the topic's partitions until it exists; made at the first question.
    asker: Arc<Mutex<Option<BaseConsumer>>>,
}

impl Drop for Delays {
    fn drop(&mut self) {
        if let Ok(Some(reader)) = self.reader.lock().map(|mut r| r.take()) {
            reader.abort();
        }
    }
}

/// What the reader shares with the backend.
#[derive(Default)]
struct State {
    /// Woken, due records to deliver, by (due, partition, offset).
    ready: BTreeMap<(u64, i32, i64), StoredRecord>,
    /// Per partition, the records read and not done with (delivered or moved on).
    open: HashMap<i32, BTreeSet<i64>>,
    /// Records handed to delivery and done since: the reader forgets and commits them.
    completed: Vec<(i32, i64)>,
    /// Per partition, the offset after the last record read.
    read_up_to: HashMap<i32, i64>,
    /// The earliest time a paused partition's first record wakes.
    next_wake: Option<u64>,
    /// Why the reader cannot read, while it cannot.
    error: Option<String>,
}

impl Delays {
    pub(super) fn new(
        topic: String,
        producer: SharedProducer,
        consumer_config: ClientConfig,
    ) -> Self {
        Self {
            topic,
            producer,
            consumer_config,
            state: Arc::default(),
            reader: Mutex::default(),
            partitions: Mutex::default(),
            asker: Arc::default(),
        }
    }

    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Writes each record to its tier; returns once all are persisted.
    pub(super) async fn schedule(
        &self,
        delayed: Vec<(StoredRecord, u64)>,
    ) -> Result<(), BackendError> {
        if self.partitions().await?.is_none() {
            return Err(BackendError::Unavailable(format!(
                "Kafka: the delay topic `{}` does not exist; create it with {} partitions",
                self.topic,
                TIERS.len()
            )));
        }
        let sends = delayed.iter().map(|(record, due)| {
            let now = now_ms();
            let tier = tier(due.saturating_sub(now));
            let wake = now + TIERS[tier].as_millis() as u64;
            send(&self.producer, &self.topic, tier as i32, record, wake, *due)
        });
        for sent in futures::future::join_all(sends).await {
            sent?;
        }
        Ok(())
    }

    /// Up to `max` due records, starting the reader if it is not running.
    pub(super) async fn due(
        &self,
        now: u64,
        max: usize,
    ) -> Result<Vec<StoredRecord>, BackendError> {
        // Without a delay topic nothing can be held there, so nothing is due.
        if self.partitions().await?.is_none() {
            return Ok(Vec::new());
        }
        self.start()?;
        let state = self.state.lock().map_err(|_| poisoned())?;
        if let Some(error) = &state.error {
            return Err(BackendError::Unavailable(error.clone()));
        }
        Ok(state
            .ready
            .range(..(now + 1, i32::MIN, i64::MIN))
            .take(max)
            .map(|((_, partition, offset), record)| {
                let mut record = record.clone();
                record.headers.push((
                    POSITION.into(),
                    format!("{partition}:{offset}").into_bytes(),
                ));
                record
            })
            .collect())
    }

    /// Forgets delivered records: the reader commits past them.
    pub(super) fn complete(&self, delivered: &[StoredRecord]) -> Result<(), BackendError> {
        let mut state = self.state.lock().map_err(|_| poisoned())?;
        for record in delivered {
            let Some((partition, offset)) = record
                .header(POSITION)
                .and_then(|p| p.split_once(':'))
                .and_then(|(p, o)| Some((p.parse::<i32>().ok()?, o.parse::<i64>().ok()?)))
            else {
                continue;
            };
            state
                .ready
                .retain(|(_, p, o), _| (*p, *o) != (partition, offset));
            state.completed.push((partition, offset));
        }
        Ok(())
    }

    /// When the next record is due or wakes, as far as the reader knows.
    pub(super) fn next_due(&self) -> Result<Option<u64>, BackendError> {
        let state = self.state.lock().map_err(|_| poisoned())?;
        let ready = state.ready.keys().next().map(|(due, _, _)| *due);
        Ok(match (ready, state.next_wake) {
            (Some(a), Some(b)) => Some(a.min(b)),
            (a, b) => a.or(b),
        })
    }

    fn start(&self) -> Result<(), BackendError> {
        let mut reader = self.reader.lock().map_err(|_| poisoned())?;
        if reader.as_ref().is_some_and(|r| !r.is_finished()) {
            return Ok(());
        }
        let consumer: StreamConsumer = self.consumer_config.create().map_err(unavailable)?;
        consumer.subscribe(&[&self.topic]).map_err(unavailable)?;
        let read = Reader {
            consumer,
            topic: self.topic.clone(),
            producer: self.producer.clone(),
            state: self.state.clone(),
            waiting: HashMap::new(),
            paused: BTreeSet::new(),
            assigned: Vec::new(),
        };
        *reader = Some(tokio::spawn(read.run()));
        Ok(())
    }

    /// How many partitions the delay topic has, `None` while it does not exist; an
    /// error when it has fewer than [`TIERS`] (tiers sharing a partition would hold
    /// short delays behind long ones).
    async fn partitions(&self) -> Result<Option<i32>, BackendError> {
        if let Some(known) = *self.partitions.lock().map_err(|_| poisoned())? {
            return Ok(Some(known));
        }
        let (config, topic) = (self.consumer_config.clone(), self.topic.clone());
        let asker = self.asker.clone();
        let count = tokio::task::spawn_blocking(move || {
            let mut asker = asker.lock().map_err(|_| poisoned())?;
            if asker.is_none() {
                // Asked as a consumer: a producer's question may make the broker
                // create the topic, with its default partitions.
                *asker = Some(config.create().map_err(unavailable)?);
            }
            let metadata = asker
                .as_ref()
                .ok_or_else(poisoned)?
                .fetch_metadata(Some(&topic), Duration::from_secs(10))
                .map_err(unavailable)?;
            Ok::<_, BackendError>(
                metadata
                    .topics()
                    .first()
                    .map_or(0, |t| t.partitions().len() as i32),
            )
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("the delay topic's metadata: {e}")))??;
        if count == 0 {
            return Ok(None);
        }
        if (count as usize) < TIERS.len() {
            return Err(BackendError::Unavailable(format!(
                "Kafka: the delay topic `{}` has {count} partitions; it needs {}, one per delay tier",
                self.topic,
                TIERS.len()
            )));
        }
        *self.partitions.lock().map_err(|_| poisoned())? = Some(count);
        Ok(Some(count))
    }
}

/// Produces `record` to `partition` of the delay topic, to wake at `wake`, due at
/// `due`.
async fn send(
    producer: &SharedProducer,
    topic: &str,
    partition: i32,
    record: &StoredRecord,
    wake: u64,
    due: u64,
) -> Result<(), BackendError> {
    let (wake, due) = (wake.to_string(), due.to_string());
    // A record moving on to a shorter tier keeps the message's own time.
    let timestamp = record
        .header(TIMESTAMP)
        .map_or_else(|| record.timestamp_ms.to_string(), str::to_string);
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + 2);
    for (key, value) in &record.headers {
        if !DROPPED.contains(&key.as_str()) {
            headers = headers.insert(Header {
                key,
                value: Some(value),
            });
        }
    }
    headers = headers
        .insert(Header {
            key: WAKE,
            value: Some(&wake),
        })
        .insert(Header {
            key: DUE,
            value: Some(&due),
        })
        .insert(Header {
            key: TIMESTAMP,
            value: Some(&timestamp),
        });
    let mut message = FutureRecord::to(topic)
        .partition(partition)
        .payload(&record.payload)
        .headers(headers);
    if let Some(key) = &record.key {
        message = message.key(key);
    }
    producer
        .send(message, PRODUCE_TIMEOUT)
        .await
        .map(|_| ())
        .map_err(unavailable)
}

/// Reads the delay topic as a member of its group, until the backend drops it.
struct Reader {
    consumer: StreamConsumer,
    topic: String,
    producer: SharedProducer,
    state: Arc<Mutex<State>>,
    /// Per partition, records read that are asleep, first to wake first.
    waiting: HashMap<i32, VecDeque<(i64, StoredRecord, u64)>>,
    /// Partitions paused: asleep, or everything while delivery is behind.
    paused: BTreeSet<i32>,
    /// The partitions assigned at the last look: a new assignment forgets the rest.
    assigned: Vec<i32>,
}

impl Reader {
    async fn run(mut self) {
        let mut last_commit = tokio::time::Instant::now();
        loop {
            let received = tokio::time::timeout(TICK, self.consumer.recv()).await;
            match received {
                Ok(Ok(message)) => {
                    let (partition, offset) = (message.partition(), message.offset());
                    let record = to_record(&message);
                    let wake = record
                        .header(WAKE)
                        .and_then(|w| w.parse().ok())
                        .unwrap_or(0);
                    if let Ok(mut state) = self.state.lock() {
                        state.error = None;
                        state.open.entry(partition).or_default().insert(offset);
                        state.read_up_to.insert(partition, offset + 1);
                    }
                    self.waiting
                        .entry(partition)
                        .or_default()
                        .push_back((offset, record, wake));
                }
                Ok(Err(e)) => {
                    if let Ok(mut state) = self.state.lock() {
                        state.error = Some(format!("Kafka: reading the delay topic: {e}"));
                    }
                    tokio::time::sleep(TICK).await;
                }
                // A quiet moment: no error either.
                Err(_) => {
                    if let Ok(mut state) = self.state.lock() {
                        state.error = None;
                    }
                }
            }
            self.wake().await;
            self.pace();
            if last_commit.elapsed() >= Duration::from_secs(1) {
                self.commit();
                last_commit = tokio::time::Instant::now();
            }
        }
    }

    /// Takes every partition's records that woke: due ones to delivery, the rest on
    /// to a shorter tier. A partition whose first record sleeps is paused.
    async fn wake(&mut self) {
        let now = now_ms();
        let mut next_wake: Option<u64> = None;
        let partitions: Vec<i32> = self.waiting.keys().copied().collect();
        for partition in partitions {
            while let Some((offset, record, wake)) = self
                .waiting
                .get(&partition)
                .and_then(|w| w.front().cloned())
            {
                if wake > now {
                    next_wake = Some(next_wake.map_or(wake, |n| n.min(wake)));
                    self.pause(partition, true);
                    break;
                }
                let due = record
                    .header(DUE)
                    .or_else(|| record.header(HEADER_DELIVER_AT))
                    .and_then(|d| d.parse().ok())
                    .unwrap_or(0);
                if due > now {
                    let tier = tier(due - now);
                    let wake = now + TIERS[tier].as_millis() as u64;
                    let to = tier as i32;
                    if let Err(e) = send(&self.producer, &self.topic, to, &record, wake, due).await
                    {
                        // Tried again at the next look.
                        if let Ok(mut state) = self.state.lock() {
                            state.error = Some(e.to_string());
                        }
                        break;
                    }
                    if let Ok(mut state) = self.state.lock() {
                        state.completed.push((partition, offset));
                    }
                } else if let Ok(mut state) = self.state.lock() {
                    let mut record = record;
                    if let Some(timestamp) = record.header(TIMESTAMP).and_then(|t| t.parse().ok()) {
                        record.timestamp_ms = timestamp;
                    }
                    record
                        .headers
                        .retain(|(name, _)| !DROPPED.contains(&name.as_str()));
                    state.ready.insert((due, partition, offset), record);
                }
                if let Some(waiting) = self.waiting.get_mut(&partition) {
                    waiting.pop_front();
                }
            }
            if self.waiting.get(&partition).is_some_and(VecDeque::is_empty) {
                self.pause(partition, false);
            }
        }
        if let Ok(mut state) = self.state.lock() {
            state.next_wake = next_wake;
        }
    }

    /// Pauses every partition while delivery has [`READY_MAX`] records to take.
    fn pace(&mut self) {
        let behind = self
            .state
            .lock()
            .map(|s| s.ready.len() >= READY_MAX)
            .unwrap_or(false);
        let assigned: Vec<i32> = self
            .consumer
            .assignment()
            .map(|a| a.elements().iter().map(|e| e.partition()).collect())
            .unwrap_or_default();
        if assigned != self.assigned {
            // A rebalance: what was read of partitions gone is read again by their new
            // reader; a new assignment starts unpaused.
            self.waiting.retain(|p, _| assigned.contains(p));
            if let Ok(mut state) = self.state.lock() {
                state.open.retain(|p, _| assigned.contains(p));
                state.read_up_to.retain(|p, _| assigned.contains(p));
            }
            self.paused.clear();
            self.assigned = assigned.clone();
        }
        for partition in assigned {
            let asleep = self.waiting.get(&partition).is_some_and(|w| !w.is_empty());
            self.pause(partition, behind || asleep);
        }
    }

    fn pause(&mut self, partition: i32, pause: bool) {
        if pause == self.paused.contains(&partition) {
            return;
        }
        let mut list = TopicPartitionList::new();
        list.add_partition(&self.topic, partition);
        let done = if pause {
            self.consumer.pause(&list)
        } else {
            self.consumer.resume(&list)
        };
        if done.is_ok() {
            if pause {
                self.paused.insert(partition);
            } else {
                self.paused.remove(&partition);
            }
        }
    }

    /// Commits, per partition, up to the first record not done with.
    fn commit(&mut self) {
        let mut list = TopicPartitionList::new();
        if let Ok(mut state) = self.state.lock() {
            let mut touched = BTreeSet::new();
            for (partition, offset) in std::mem::take(&mut state.completed) {
                if let Some(open) = state.open.get_mut(&partition) {
                    open.remove(&offset);
                    touched.insert(partition);
                }
            }
            for partition in touched {
                let first_open = state.open.get(&partition).and_then(|o| o.first().copied());
                if let Some(to) = first_open.or_else(|| state.read_up_to.get(&partition).copied()) {
                    let _ = list.add_partition_offset(&self.topic, partition, Offset::Offset(to));
                }
            }
        }
        if list.count() > 0
            && let Err(e) = self.consumer.commit(&list, CommitMode::Async)
        {
            warn!(topic = %self.topic, error = %e, "Delay topic offsets not committed; the records they cover may come again.");
        }
    }
}
