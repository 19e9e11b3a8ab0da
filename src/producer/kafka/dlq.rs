//! A namespace's dead-letter queue on its DLQ topic.
//!
//! Every entry goes to partition 0, so that the DLQ has one order and an entry's
//! `dlq_offset` is its Kafka offset there, the same for every instance. The same
//! partition holds the replay marks, records with a `wald-dlq-mark` header (`claim`
//! or `replayed`) naming the entry's offset: an instance that replays an entry first
//! produces a claim, valid for [`REPLAY_CLAIM`], then reads the partition up to its
//! own claim; the first live claim (the lowest offset) wins, whoever reads it. Once the
//! entry is appended to the log again, a `replayed` mark records it. The marks read
//! are kept in memory and read on from where the last read stopped.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::FutureRecord;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::client::{SharedProducer, end_reader, to_record, unavailable};
use crate::message::{StoredRecord, now_ms};
use crate::producer::backend::{BackendError, DeadLetter, REPLAY_CLAIM, poisoned};

/// The DLQ's partition.
pub(super) const PARTITION: i32 = 0;
/// A mark's kind: `claim` or `replayed`.
const MARK: &str = "wald-dlq-mark";
/// The offset of the entry a mark is about.
const MARK_ENTRY: &str = "wald-dlq-mark-entry";
/// Until when a claim holds (ms since the epoch).
const MARK_UNTIL: &str = "wald-dlq-mark-until";
/// How long one read of the partition may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The DLQ topic's reader, and the marks it read.
pub(super) struct DeadLetters {
    topic: String,
    consumer_config: ClientConfig,
    /// Reads entries for listings; made at the first.
    entries: Arc<Mutex<Option<BaseConsumer>>>,
    /// Reads the replay marks; made at the first read.
    marks_reader: Arc<Mutex<Option<BaseConsumer>>>,
    marks: Arc<Mutex<Marks>>,
}

/// The replay marks read so far.
#[derive(Default)]
struct Marks {
    /// The partition is read up to here (exclusive).
    read_up_to: i64,
    /// Entries (records that are not marks) read so far.
    entries: u64,
    replayed: HashSet<i64>,
    /// Each entry's claims: (the claim's offset, valid until ms).
    claims: HashMap<i64, Vec<(i64, u64)>>,
}

impl Marks {
    fn note(&mut self, offset: i64, record: &StoredRecord) {
        let number = |name| record.header(name).and_then(|v| v.parse().ok());
        let Some(entry) = number(MARK_ENTRY) else {
            return;
        };
        match record.header(MARK) {
            Some("replayed") => {
                self.replayed.insert(entry);
            }
            Some("claim") => {
                let until = number(MARK_UNTIL).unwrap_or(0) as u64;
                self.claims.entry(entry).or_default().push((offset, until));
            }
            _ => {}
        }
    }
}

impl DeadLetters {
    pub(super) fn new(topic: String, consumer_config: ClientConfig) -> Self {
        Self {
            topic,
            consumer_config,
            entries: Arc::default(),
            marks_reader: Arc::default(),
            marks: Arc::default(),
        }
    }

    pub(super) fn topic(&self) -> &str {
        &self.topic
    }

    /// Up to `max` entries from offset `from` on, with whether each was replayed.
    pub(super) async fn list(
        &self,
        from: u64,
        max: usize,
    ) -> Result<Vec<DeadLetter>, BackendError> {
        let entries = self
            .read(from as i64, None, Kind::Entries, max)
            .await?
            .records;
        // The marks of these entries come after them, up to the partition's end.
        self.read_marks(None).await?;
        let marks = self.marks.lock().map_err(|_| poisoned())?;
        Ok(entries
            .into_iter()
            .map(|(offset, mut record)| {
                record.offset = offset as u64;
                DeadLetter {
                    replayed: marks.replayed.contains(&offset),
                    record,
                    id: None,
                }
            })
            .collect())
    }

    /// Claims the replay of `entry` for this instance (see the module's notes).
    pub(super) async fn claim(
        &self,
        producer: &SharedProducer,
        entry: &DeadLetter,
    ) -> Result<bool, BackendError> {
        let entry = entry.record.offset as i64;
        let until = now_ms() + REPLAY_CLAIM.as_millis() as u64;
        let claim = self.mark(producer, "claim", entry, Some(until)).await?;
        self.read_marks(Some(claim + 1)).await?;
        let marks = self.marks.lock().map_err(|_| poisoned())?;
        let now = now_ms();
        let taken = marks
            .claims
            .get(&entry)
            .into_iter()
            .flatten()
            .any(|(offset, until)| *offset < claim && *until > now);
        Ok(!marks.replayed.contains(&entry) && !taken)
    }

    /// Records that `entry` was replayed.
    pub(super) async fn mark_replayed(
        &self,
        producer: &SharedProducer,
        entry: &DeadLetter,
    ) -> Result<(), BackendError> {
        let offset = entry.record.offset as i64;
        self.mark(producer, "replayed", offset, None).await?;
        if let Ok(mut marks) = self.marks.lock() {
            marks.replayed.insert(offset);
        }
        Ok(())
    }

    /// Produces a mark; answers its offset.
    async fn mark(
        &self,
        producer: &SharedProducer,
        kind: &str,
        entry: i64,
        until: Option<u64>,
    ) -> Result<i64, BackendError> {
        let (entry, until) = (entry.to_string(), until.map(|u| u.to_string()));
        let mut headers = OwnedHeaders::new()
            .insert(Header {
                key: MARK,
                value: Some(kind),
            })
            .insert(Header {
                key: MARK_ENTRY,
                value: Some(&entry),
            });
        if let Some(until) = &until {
            headers = headers.insert(Header {
                key: MARK_UNTIL,
                value: Some(until),
            });
        }
        let record = FutureRecord::<(), [u8]>::to(&self.topic)
            .partition(PARTITION)
            .payload(&[])
            .headers(headers);
        let delivered = producer
            .send(record, READ_TIMEOUT)
            .await
            .map_err(unavailable)?;
        Ok(delivered.offset)
    }

    /// How many entries are parked (not replayed), once the marks are read to the
    /// partition's end.
    pub(super) async fn depth(&self) -> Result<u64, BackendError> {
        self.read_marks(None).await?;
        let marks = self.marks.lock().map_err(|_| poisoned())?;
        Ok(marks.entries.saturating_sub(marks.replayed.len() as u64))
    }

    /// Reads the marks not read yet, up to `end` (exclusive; waiting for the partition
    /// to get there), or up to the partition's end. Fails when no read gets further
    /// for [`READ_TIMEOUT`].
    async fn read_marks(&self, end: Option<i64>) -> Result<(), BackendError> {
        let mut deadline = Instant::now() + READ_TIMEOUT;
        loop {
            let from = self.marks.lock().map_err(|_| poisoned())?.read_up_to;
            if end.is_some_and(|end| from >= end) {
                return Ok(());
            }
            if Instant::now() > deadline {
                return Err(BackendError::Unavailable(format!(
                    "Kafka: the DLQ topic `{}` did not reach offset {} within {READ_TIMEOUT:?}",
                    self.topic,
                    end.unwrap_or_default()
                )));
            }
            let read = self.read(from, end, Kind::Marks, usize::MAX).await?;
            if read.next > from {
                deadline = Instant::now() + READ_TIMEOUT;
            }
            {
                let mut marks = self.marks.lock().map_err(|_| poisoned())?;
                // Another read may have gone on meanwhile: then read on from where it
                // ended.
                if marks.read_up_to == from {
                    for (offset, record) in &read.records {
                        marks.note(*offset, record);
                    }
                    marks.entries += read.passed;
                    marks.read_up_to = read.next;
                }
            }
            if end.is_none() && read.at_end {
                return Ok(());
            }
        }
    }

    /// Reads the partition from `from` up to `end` (exclusive; waiting for records not
    /// in yet), or without `end` up to where it ends now: up to `max` records of `kind`. The end is where the broker says
    /// the partition ends (`enable.partition.eof`), so no offsets request is needed.
    /// A read that takes over [`READ_TIMEOUT`]
    /// answers what it read, or fails if that is nothing.
    async fn read(
        &self,
        from: i64,
        end: Option<i64>,
        kind: Kind,
        max: usize,
    ) -> Result<Read, BackendError> {
        let reader = match kind {
            Kind::Entries => self.entries.clone(),
            Kind::Marks => self.marks_reader.clone(),
        };
        let (config, topic) = (self.consumer_config.clone(), self.topic.clone());
        tokio::task::spawn_blocking(move || {
            let mut reader = reader.lock().map_err(|_| poisoned())?;
            if reader.is_none() {
                *reader = Some(end_reader(&config, "wald-dlq-reader")?);
            }
            let reader = reader.as_ref().ok_or_else(poisoned)?;
            let mut read = Read {
                next: from,
                ..Read::default()
            };
            if end.is_some_and(|end| from >= end) || max == 0 {
                return Ok(read);
            }
            let mut assignment = TopicPartitionList::new();
            assignment
                .add_partition_offset(&topic, PARTITION, Offset::Offset(from))
                .map_err(unavailable)?;
            reader.assign(&assignment).map_err(unavailable)?;
            let deadline = Instant::now() + READ_TIMEOUT;
            loop {
                let left = deadline.saturating_duration_since(Instant::now());
                if left.is_zero() {
                    if read.next > from {
                        return Ok(read);
                    }
                    return Err(BackendError::Unavailable(format!(
                        "Kafka: reading the DLQ topic `{topic}` took over {READ_TIMEOUT:?}"
                    )));
                }
                let message = match reader.poll(left) {
                    None => continue,
                    // Short of `end`, the end may be one met before the assignment
                    // (an event still queued) or records not in yet: read on.
                    Some(Err(KafkaError::PartitionEOF(_))) if end.is_some() => continue,
                    Some(Err(KafkaError::PartitionEOF(_))) => {
                        read.at_end = true;
                        return Ok(read);
                    }
                    Some(message) => message.map_err(unavailable)?,
                };
                let offset = message.offset();
                if offset < from {
                    continue;
                }
                if let Some(end) = end.filter(|end| offset >= *end) {
                    // Nothing is left before `end` (offsets may skip).
                    read.next = end;
                    return Ok(read);
                }
                let record = to_record(&message);
                if (record.header(MARK).is_some()) == (kind == Kind::Marks) {
                    read.records.push((offset, record));
                } else {
                    read.passed += 1;
                }
                read.next = offset + 1;
                if end.is_some_and(|end| read.next >= end) || read.records.len() >= max {
                    return Ok(read);
                }
            }
        })
        .await
        .map_err(|e| BackendError::Unavailable(format!("reading the DLQ topic: {e}")))?
    }
}

/// What one read of the partition got.
#[derive(Default)]
struct Read {
    /// Where it ended (exclusive).
    next: i64,
    /// The records of the kind asked for, with their offsets.
    records: Vec<(i64, StoredRecord)>,
    /// How many records of the other kind it passed.
    passed: u64,
    /// Whether it reached the partition's end.
    at_end: bool,
}

/// What a read of the partition keeps.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Entries,
    Marks,
}
