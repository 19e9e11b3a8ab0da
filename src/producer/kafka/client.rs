//! What the Kafka backend's parts share (`topic.rs`, `delays.rs`, `dlq.rs`): the
//! producer's watch over the brokers, a message read as a record, and Kafka's errors
//! as backend errors.

use std::sync::{Arc, Mutex};

use rdkafka::error::KafkaError;
use rdkafka::message::{Headers, Message};
use rdkafka::{ClientContext, Statistics};

use crate::message::StoredRecord;
use crate::producer::backend::BackendError;

/// The producer's context: reads its statistics to know whether any broker is up.
pub(super) struct BrokerWatch {
    pub(super) no_broker: Arc<Mutex<Option<String>>>,
}

impl ClientContext for BrokerWatch {
    fn stats(&self, statistics: Statistics) {
        // Bootstrap entries (-1) and the internal broker do not count.
        let brokers: Vec<_> = statistics
            .brokers
            .values()
            .filter(|b| b.nodeid >= 0)
            .collect();
        let down = !brokers.is_empty() && brokers.iter().all(|b| b.state != "UP");
        if let Ok(mut no_broker) = self.no_broker.lock() {
            *no_broker = down.then(|| {
                let states: Vec<String> = brokers
                    .iter()
                    .map(|b| format!("{} {}", b.name, b.state))
                    .collect();
                format!("Kafka: no broker is up ({})", states.join(", "))
            });
        }
    }
}

/// The header the reader adds to each record read: `<partition>:<offset>` in the topic.
pub(super) use crate::message::HEADER_PLACE as PLACE_HEADER;

pub(super) fn to_record(message: &impl Message) -> StoredRecord {
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

/// A message read as a record, with [`PLACE_HEADER`] saying where it was read.
pub(super) fn to_placed_record(message: &impl Message) -> StoredRecord {
    let mut record = to_record(message);
    record.headers.push((
        PLACE_HEADER.into(),
        format!("{}:{}", message.partition(), message.offset()).into_bytes(),
    ));
    record
}

pub(super) fn unavailable(e: KafkaError) -> BackendError {
    BackendError::Unavailable(format!("Kafka: {e}"))
}
