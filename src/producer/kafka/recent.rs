//! A topic's most recent records, for the namespace's recent messages: each partition
//! read from `max` before its end up to its end (`enable.partition.eof`), newest first
//! across the partitions by their timestamps.

use std::collections::HashSet;
use std::time::{Duration, Instant};

use rdkafka::consumer::Consumer;
use rdkafka::error::KafkaError;
use rdkafka::{ClientConfig, Message, Offset, TopicPartitionList};

use super::client::{end_reader, to_placed_record, unavailable};
use crate::message::StoredRecord;
use crate::producer::backend::BackendError;

/// How long reading the partitions' ends may take.
const READ_TIMEOUT: Duration = Duration::from_secs(10);

/// The `max` newest records of `topic` (blocking), each with its partition offset and
/// its place header.
pub(super) fn recent(
    config: &ClientConfig,
    topic: &str,
    max: usize,
) -> Result<Vec<StoredRecord>, BackendError> {
    let reader = end_reader(config, "wald-recent-reader")?;
    let metadata = reader
        .fetch_metadata(Some(topic), READ_TIMEOUT)
        .map_err(unavailable)?;
    let mut assignment = TopicPartitionList::new();
    let mut reading = HashSet::new();
    for found in metadata.topics().iter().filter(|t| t.error().is_none()) {
        for partition in found.partitions() {
            assignment
                .add_partition_offset(topic, partition.id(), Offset::OffsetTail(max as i64))
                .map_err(unavailable)?;
            reading.insert(partition.id());
        }
    }
    if reading.is_empty() {
        return Ok(Vec::new());
    }
    reader.assign(&assignment).map_err(unavailable)?;
    let deadline = Instant::now() + READ_TIMEOUT;
    let mut records = Vec::new();
    while !reading.is_empty() {
        let left = deadline.saturating_duration_since(Instant::now());
        if left.is_zero() {
            return Err(BackendError::Unavailable(format!(
                "Kafka: reading the end of topic `{topic}` took over {READ_TIMEOUT:?}"
            )));
        }
        match reader.poll(left) {
            None => {}
            Some(Err(KafkaError::PartitionEOF(partition))) => {
                reading.remove(&partition);
            }
            Some(Err(e)) => return Err(unavailable(e)),
            Some(Ok(message)) => {
                let mut record = to_placed_record(&message);
                record.offset = message.offset().max(0) as u64;
                records.push((message.partition(), record));
            }
        }
    }
    records.sort_by(|(pa, a), (pb, b)| {
        (b.timestamp_ms, b.offset, pb).cmp(&(a.timestamp_ms, a.offset, pa))
    });
    records.truncate(max);
    Ok(records.into_iter().map(|(_, record)| record).collect())
}
