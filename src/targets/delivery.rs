//! What every target works with: the [`Message`] it receives (read back from the log),
//! the shape of the body it writes ([`ValueShape`]), and how a delivery fails
//! ([`DeliveryError`], [`BatchError`]).

use std::collections::BTreeMap;
use std::time::Duration;

use base64::Engine;
use serde::{Deserialize, Serialize};

use crate::message::{
    HEADER_CONTENT_TYPE, HEADER_MESSAGE_ID, HEADER_TRACEPARENT, HEADER_TRACESTATE,
    HEADER_TRANSACTION_ID, RESERVED_PREFIX, StoredRecord,
};
use crate::telemetry::traces::TraceContext;

/// The body a target writes for each message.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ValueShape {
    #[default]
    Payload,
    Envelope,
}

/// A message as targets receive it, read back from the log.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Message {
    pub namespace: String,
    /// Its place in the namespace's log.
    pub offset: u64,
    pub message_id: String,
    pub transaction_id: String,
    pub key: Option<String>,
    /// When it was made durable, in milliseconds since the Unix epoch.
    pub timestamp_ms: u64,
    /// The client's headers (wald's own `wald-*` headers left out).
    pub headers: BTreeMap<String, String>,
    pub payload: Vec<u8>,
    /// Whether `payload` is JSON (else binary).
    pub payload_is_json: bool,
    /// The trace context sent with the delivery: the write's, or the delivery
    /// attempt's own span's when spans are exported.
    pub trace: Option<TraceContext>,
}

impl Message {
    /// A stored record of `namespace` as targets receive it.
    pub fn of_record(namespace: &str, record: &StoredRecord) -> Self {
        let text = |name| record.header(name).unwrap_or_default().to_string();
        Message {
            namespace: namespace.to_string(),
            offset: record.offset,
            message_id: text(HEADER_MESSAGE_ID),
            transaction_id: text(HEADER_TRANSACTION_ID),
            key: record
                .key
                .as_ref()
                .map(|k| String::from_utf8_lossy(k).into_owned()),
            timestamp_ms: record.timestamp_ms,
            headers: record
                .headers
                .iter()
                .filter(|(n, _)| !n.starts_with(RESERVED_PREFIX))
                .map(|(n, v)| (n.clone(), String::from_utf8_lossy(v).into_owned()))
                .collect(),
            payload: record.payload.clone(),
            payload_is_json: record.header(HEADER_CONTENT_TYPE) != Some("application/octet-stream"),
            // Kept as ingest checked and wrote it: not parsed again for every delivery.
            trace: record
                .header(HEADER_TRACEPARENT)
                .map(|traceparent| TraceContext {
                    traceparent: traceparent.to_string(),
                    tracestate: record.header(HEADER_TRACESTATE).map(str::to_string),
                }),
        }
    }

    /// The payload as JSON: itself when it is JSON, else a base64 string.
    pub fn payload_json(&self) -> serde_json::Value {
        if self.payload_is_json
            && let Ok(value) = serde_json::from_slice(&self.payload)
        {
            return value;
        }
        serde_json::Value::String(base64::engine::general_purpose::STANDARD.encode(&self.payload))
    }

    /// The whole message as one line of JSON: ids, namespace, key, timestamp, headers
    /// and payload. A JSON payload is copied as it came unless it spans lines.
    pub fn envelope(&self) -> Vec<u8> {
        #[derive(Serialize)]
        #[serde(untagged)]
        enum Payload<'m> {
            Raw(&'m serde_json::value::RawValue),
            Value(serde_json::Value),
        }
        #[derive(Serialize)]
        struct Envelope<'m> {
            headers: &'m BTreeMap<String, String>,
            key: &'m Option<String>,
            message_id: &'m str,
            namespace: &'m str,
            offset: u64,
            payload: Payload<'m>,
            timestamp_ms: u64,
            transaction_id: &'m str,
        }
        let one_line_json =
            self.payload_is_json && !self.payload.iter().any(|b| matches!(b, b'\n' | b'\r'));
        let raw = one_line_json
            .then(|| serde_json::from_slice(&self.payload).ok())
            .flatten();
        let payload = match raw {
            Some(raw) => Payload::Raw(raw),
            None => Payload::Value(self.payload_json()),
        };
        let envelope = Envelope {
            headers: &self.headers,
            key: &self.key,
            message_id: &self.message_id,
            namespace: &self.namespace,
            offset: self.offset,
            payload,
            timestamp_ms: self.timestamp_ms,
            transaction_id: &self.transaction_id,
        };
        serde_json::to_vec(&envelope).expect("an envelope is always JSON")
    }
}

/// Bytes a target sends, for people: JSON as itself, other bytes as text.
pub fn shown(bytes: &[u8]) -> serde_json::Value {
    serde_json::from_slice(bytes)
        .unwrap_or_else(|_| String::from_utf8_lossy(bytes).into_owned().into())
}

/// Why a delivery failed, and whether trying again may help.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct DeliveryError {
    pub message: String,
    /// False for errors that no retry can fix (a 4xx, a constraint violation): the
    /// message goes to the DLQ at once.
    pub retriable: bool,
    /// How long the target asked to wait (`Retry-After`).
    pub retry_after: Option<Duration>,
}

impl DeliveryError {
    pub fn retriable(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: true,
            retry_after: None,
        }
    }

    pub fn permanent(message: impl Into<String>) -> Self {
        Self {
            message: message.into(),
            retriable: false,
            retry_after: None,
        }
    }
}

/// A batch that a target delivered only in part: `messages[..delivered]` went
/// through, `messages[delivered]` failed with `error`, the rest was not tried.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BatchError {
    pub delivered: usize,
    pub error: DeliveryError,
}
