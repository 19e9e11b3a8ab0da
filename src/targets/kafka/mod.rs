//! The Kafka target: produces each message to a topic, keyed by a template.
//! Its table and checks are in `config.rs`.

pub mod config;

use crate::targets::template::Template;

use crate::targets::delivery::{Message, ValueShape, shown};

pub use config::*;

/// The key and value `message` is produced with.
fn record(
    key: Option<&Template>,
    value: ValueShape,
    message: &Message,
) -> (Option<Vec<u8>>, Vec<u8>) {
    let key = match key {
        Some(template) => Some(template.render(message).into_bytes()),
        None => message.key.clone().map(String::into_bytes),
    };
    let value = match value {
        ValueShape::Payload => message.payload.clone(),
        ValueShape::Envelope => message.envelope(),
    };
    (key, value)
}

/// The record delivering `message` would produce.
pub fn preview(config: &Config, message: &Message) -> serde_json::Value {
    let template = config.key.as_deref().and_then(|k| Template::parse(k).ok());
    let (key, value) = record(template.as_ref(), config.value, message);
    serde_json::json!({
        "topic": config.topic,
        "key": key.map(|k| String::from_utf8_lossy(&k).into_owned()),
        "headers": { "wald-message-id": message.message_id },
        "value": shown(&value),
    })
}

/// A Kafka target ready to deliver: an idempotent producer (`acks=all`).
#[cfg(feature = "kafka")]
pub struct KafkaTarget {
    producer: rdkafka::producer::FutureProducer,
    topic: String,
    key: Option<Template>,
    value: ValueShape,
    timeout: std::time::Duration,
}

#[cfg(feature = "kafka")]
impl KafkaTarget {
    pub fn new(config: &Config) -> Result<Self, super::delivery::DeliveryError> {
        let mut client = rdkafka::ClientConfig::new();
        client.set("bootstrap.servers", &config.brokers);
        for (key, value) in &config.options {
            client.set(key, value);
        }
        client
            .set("enable.idempotence", "true")
            .set("acks", "all")
            .set(
                "message.timeout.ms",
                config.delivery_timeout.get().as_millis().to_string(),
            );
        let invalid =
            |e: String| super::delivery::DeliveryError::permanent(format!("the Kafka target: {e}"));
        Ok(Self {
            producer: client.create().map_err(|e| invalid(e.to_string()))?,
            topic: config.topic.clone(),
            key: config
                .key
                .as_deref()
                .map(Template::parse)
                .transpose()
                .map_err(|_| invalid("`key` is not a valid template".into()))?,
            value: config.value,
            timeout: config.delivery_timeout.get(),
        })
    }

    /// Produces the messages, in order, each with its message id in the
    /// `wald-message-id` header (for consumers that deduplicate) and its trace context
    /// in `traceparent` and `tracestate` when it has one, and waits for every
    /// delivery report. Reports the ones before the first failure delivered.
    pub async fn deliver_batch(
        &self,
        messages: &[super::delivery::Message],
    ) -> Result<(), super::delivery::BatchError> {
        use rdkafka::message::{Header, OwnedHeaders};
        let rendered: Vec<(Option<Vec<u8>>, Vec<u8>)> = messages
            .iter()
            .map(|m| record(self.key.as_ref(), self.value, m))
            .collect();
        let sends = messages.iter().zip(&rendered).map(|(m, (key, value))| {
            let mut headers = OwnedHeaders::new().insert(Header {
                key: "wald-message-id",
                value: Some(m.message_id.as_bytes()),
            });
            if let Some(trace) = &m.trace {
                headers = headers.insert(Header {
                    key: "traceparent",
                    value: Some(trace.traceparent.as_bytes()),
                });
                if let Some(state) = &trace.tracestate {
                    headers = headers.insert(Header {
                        key: "tracestate",
                        value: Some(state.as_bytes()),
                    });
                }
            }
            let mut record = rdkafka::producer::FutureRecord::to(&self.topic)
                .payload(value)
                .headers(headers);
            if let Some(key) = key {
                record = record.key(key);
            }
            self.producer.send(record, self.timeout)
        });
        let reports = futures::future::join_all(sends).await;
        match reports.iter().position(Result::is_err) {
            None => Ok(()),
            Some(delivered) => {
                let error = match &reports[delivered] {
                    Err((e, _)) => classify(e),
                    Ok(_) => super::delivery::DeliveryError::retriable("kafka: unknown failure"),
                };
                Err(super::delivery::BatchError { delivered, error })
            }
        }
    }
}

/// A message too large, or a topic that does not exist or may not be written, is
/// permanent; everything else (brokers down, timeouts, leadership changes) is retried.
#[cfg(feature = "kafka")]
fn classify(e: &rdkafka::error::KafkaError) -> super::delivery::DeliveryError {
    use rdkafka::types::RDKafkaErrorCode as Code;
    let permanent = matches!(
        e.rdkafka_error_code(),
        Some(
            Code::MessageSizeTooLarge
                | Code::InvalidRecord
                | Code::TopicAuthorizationFailed
                | Code::UnknownTopic
                | Code::InvalidTopic
        )
    );
    super::delivery::DeliveryError {
        message: format!("kafka: {e}"),
        retriable: !permanent,
        retry_after: None,
    }
}
