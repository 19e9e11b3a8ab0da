//! What the Kafka backend's parts share (`topic.rs`, `delays.rs`, `dlq.rs`,
//! `recent.rs`): the producer, made anew when it is stuck, and its watch over the
//! brokers; a message read as a record; Kafka's errors as backend errors.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::message::ToBytes;
use rdkafka::message::{Headers, Message};
use rdkafka::producer::future_producer::Delivery;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use rdkafka::{ClientConfig, ClientContext, Statistics};
use tracing::{error, warn};

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

/// How long every send may fail, while a broker is up, before the producer is made
/// anew.
pub(super) const RENEW_AFTER: Duration = Duration::from_secs(10);

/// The backend's idempotent producer, shared by its parts. A producer can get stuck
/// where librdkafka does not recover by itself: a fatal error (it then refuses every
/// send), or a broker that refuses its producer id for good (tansu 0.6.0, restarted
/// under a producer that was sending, fails every later produce of that producer id).
/// A producer whose sends have all failed for [`RENEW_AFTER`] while a broker is up, or
/// that raised a fatal error, is replaced by a new one (a new producer id); the old
/// one's failed sends were never acknowledged.
#[derive(Clone)]
pub(super) struct SharedProducer {
    config: ClientConfig,
    no_broker: Arc<Mutex<Option<String>>>,
    current: Arc<Mutex<Current>>,
}

struct Current {
    producer: FutureProducer<BrokerWatch>,
    /// Since when every send failed, if the last one did.
    failing_since: Option<Instant>,
}

impl SharedProducer {
    pub(super) fn new(config: ClientConfig) -> Result<Self, BackendError> {
        let no_broker = Arc::<Mutex<Option<String>>>::default();
        let producer = make(&config, &no_broker)?;
        Ok(Self {
            config,
            no_broker,
            current: Arc::new(Mutex::new(Current {
                producer,
                failing_since: None,
            })),
        })
    }

    /// The producer to send with now.
    pub(super) fn current(&self) -> FutureProducer<BrokerWatch> {
        self.current
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .producer
            .clone()
    }

    /// Sends `record` with the producer of the moment and waits for its delivery
    /// report; notes how it went, which renews a stuck producer.
    pub(super) async fn send<K, P>(
        &self,
        record: FutureRecord<'_, K, P>,
        timeout: Duration,
    ) -> Result<Delivery, KafkaError>
    where
        K: ToBytes + ?Sized,
        P: ToBytes + ?Sized,
    {
        let producer = self.current();
        let sent = producer.send(record, timeout).await.map_err(|(e, _)| e);
        self.note(&producer, sent.is_err());
        sent
    }

    /// Why no broker can be reached, while none can.
    pub(super) fn no_broker(&self) -> Option<String> {
        self.no_broker.lock().ok().and_then(|n| n.clone())
    }

    /// Notes how a send of `producer` went; renews the producer when it is stuck.
    fn note(&self, producer: &FutureProducer<BrokerWatch>, failed: bool) {
        let Ok(mut current) = self.current.lock() else {
            return;
        };
        // A note about a producer replaced meanwhile says nothing of the new one.
        if current.producer.client().native_ptr() != producer.client().native_ptr() {
            return;
        }
        if !failed {
            current.failing_since = None;
            return;
        }
        let since = *current.failing_since.get_or_insert_with(Instant::now);
        let fatal = producer.client().fatal_error();
        let stuck = since.elapsed() >= RENEW_AFTER && self.no_broker().is_none();
        if fatal.is_none() && !stuck {
            return;
        }
        match make(&self.config, &self.no_broker) {
            Ok(fresh) => {
                warn!(fatal = ?fatal, failing_for = ?since.elapsed(), "Kafka producer made anew: every send failed while a broker was up.");
                let old = std::mem::replace(&mut current.producer, fresh);
                current.failing_since = None;
                // Dropping a producer waits for what it holds: not on this thread.
                tokio::task::spawn_blocking(move || drop(old));
            }
            Err(e) => error!(error = %e, "Making a new Kafka producer failed."),
        }
    }
}

fn make(
    config: &ClientConfig,
    no_broker: &Arc<Mutex<Option<String>>>,
) -> Result<FutureProducer<BrokerWatch>, BackendError> {
    config
        .create_with_context(BrokerWatch {
            no_broker: no_broker.clone(),
        })
        .map_err(unavailable)
}

/// A consumer for reading assigned partitions to their end, outside any group (`name`
/// and a fresh id make its group id): the end comes as `PartitionEOF`, at once, with no
/// offsets request.
pub(super) fn end_reader(config: &ClientConfig, name: &str) -> Result<BaseConsumer, BackendError> {
    config
        .clone()
        .set("group.id", format!("{name}-{}", uuid::Uuid::now_v7()))
        .set("enable.partition.eof", "true")
        .set("fetch.wait.max.ms", "10")
        .create()
        .map_err(unavailable)
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
