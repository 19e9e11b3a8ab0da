//! A message as a client writes it ([`MessageIn`], [`BatchIn`]) and the rules that make
//! it a record of the log: one payload (JSON or base64), within the namespace's size,
//! headers that are not wald's own, a delay within `max_delay`, targets the namespace
//! has, its ids and, for a keyed write, its key.

use std::collections::BTreeMap;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;

use super::error::WriteError;
use crate::message::{
    HEADER_CONTENT_TYPE, HEADER_DELIVER_AT, HEADER_IDEMPOTENCY_HASH, HEADER_IDEMPOTENCY_KEY,
    HEADER_MESSAGE_ID, HEADER_TARGETS, HEADER_TRACEPARENT, HEADER_TRACESTATE,
    HEADER_TRANSACTION_ID, RESERVED_PREFIX, Record, new_id,
};
use crate::pipeline::config::PipelineConfig;
use crate::telemetry::traces::TraceContext;

/// Most headers one message may carry.
const MAX_HEADERS: usize = 64;
/// Most messages in one batch.
pub const MAX_BATCH: usize = 10_000;

/// One message as a client sends it. In a single write it names its namespace; in a
/// batch the batch does.
#[derive(Debug, Deserialize, Serialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct MessageIn {
    /// The namespace to write to; required on a single write, optional in a batch.
    #[serde(default)]
    #[schema(example = "demo")]
    pub namespace: Option<String>,
    /// Any JSON value, stored byte for byte.
    #[serde(default)]
    #[schema(value_type = Option<serde_json::Value>, example = json!({"hello": "world"}))]
    pub payload: Option<Box<RawValue>>,
    /// Binary payload, base64 (standard alphabet); instead of `payload`.
    #[serde(default)]
    pub payload_base64: Option<String>,
    /// Partitions and orders: one key's messages are delivered in order.
    #[serde(default)]
    pub key: Option<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    /// Deliver no sooner than this long from now ("10m").
    #[serde(default)]
    pub delay: Option<String>,
    /// Deliver no sooner than this time (RFC 3339).
    #[serde(default)]
    pub deliver_at: Option<String>,
    /// Deliver to these targets of the namespace only. Default: all.
    #[serde(default)]
    pub targets: Option<Vec<String>>,
    /// A write repeated with this key and the same body gets the first write's ids and
    /// appends nothing; with another body it is refused (409). In a batch, each
    /// message's key is checked on its own, against the message's own JSON.
    #[serde(default)]
    pub idempotency_key: Option<String>,
    /// The write's trace context (its `traceparent` header), kept with the message.
    #[serde(skip)]
    pub trace: Option<TraceContext>,
}

/// Many messages for one namespace, appended together.
#[derive(Debug, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct BatchIn {
    #[schema(example = "demo")]
    pub namespace: String,
    /// 1 to 10000 messages.
    pub messages: Vec<MessageIn>,
}

/// Ids a message was given.
pub struct Accepted {
    pub message_id: String,
}

/// Checks one message against its namespace's configuration and makes it a record.
pub fn to_record(
    config: &PipelineConfig,
    message: MessageIn,
    transaction_id: &str,
    key: Option<(&str, &str)>,
) -> Result<(Record, Accepted), WriteError> {
    let (payload, content_type) = match (message.payload, message.payload_base64) {
        (Some(json), None) => (json.get().as_bytes().to_vec(), "application/json"),
        (None, Some(encoded)) => (
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| WriteError::Invalid(format!("`payload_base64` is not base64: {e}")))?,
            "application/octet-stream",
        ),
        _ => {
            return Err(WriteError::Invalid(
                "give exactly one of `payload` and `payload_base64`".into(),
            ));
        }
    };
    let limit = config.max_message_bytes().bytes();
    if payload.len() as u64 > limit {
        return Err(WriteError::TooLarge(limit));
    }
    if let Some(schema) = config
        .source
        .schema
        .as_ref()
        .and_then(|s| s.loaded.as_ref())
    {
        schema
            .check(&payload)
            .map_err(WriteError::SchemaViolation)?;
    }
    if message.headers.len() > MAX_HEADERS {
        return Err(WriteError::Invalid(format!(
            "a message carries at most {MAX_HEADERS} headers"
        )));
    }
    if let Some(name) = message.headers.keys().find(|n| {
        n.is_empty() || n.to_ascii_lowercase().starts_with(RESERVED_PREFIX) || n.len() > 256
    }) {
        return Err(WriteError::Invalid(format!(
            "header `{name}` is not allowed: names are 1 to 256 characters and do not start with `{RESERVED_PREFIX}`"
        )));
    }
    let message_id = new_id();
    let mut headers: Vec<(String, Vec<u8>)> = vec![
        (HEADER_MESSAGE_ID.into(), message_id.clone().into_bytes()),
        (
            HEADER_TRANSACTION_ID.into(),
            transaction_id.as_bytes().to_vec(),
        ),
        (HEADER_CONTENT_TYPE.into(), content_type.as_bytes().to_vec()),
    ];
    if let Some(trace) = message.trace {
        headers.push((HEADER_TRACEPARENT.into(), trace.traceparent.into_bytes()));
        if let Some(state) = trace.tracestate {
            headers.push((HEADER_TRACESTATE.into(), state.into_bytes()));
        }
    }
    if let Some(due) = deliver_at(
        &message.delay,
        &message.deliver_at,
        config.source.max_delay.get(),
    )? {
        headers.push((HEADER_DELIVER_AT.into(), due.to_string().into_bytes()));
    }
    if let Some(targets) = &message.targets {
        let known: Vec<&str> = config.targets.iter().map(|t| t.name.as_str()).collect();
        if targets.is_empty() {
            return Err(WriteError::Invalid(
                "`targets` is empty; leave it out to deliver to all".into(),
            ));
        }
        if let Some(unknown) = targets.iter().find(|t| !known.contains(&t.as_str())) {
            return Err(WriteError::Invalid(format!(
                "namespace `{}` has no target `{unknown}`; its targets: {}",
                config.namespace,
                known.join(", ")
            )));
        }
        headers.push((HEADER_TARGETS.into(), targets.join(",").into_bytes()));
    }
    if let Some((key, hash)) = key {
        headers.push((HEADER_IDEMPOTENCY_KEY.into(), key.as_bytes().to_vec()));
        headers.push((HEADER_IDEMPOTENCY_HASH.into(), hash.as_bytes().to_vec()));
    }
    headers.extend(
        message
            .headers
            .into_iter()
            .map(|(k, v)| (k, v.into_bytes())),
    );
    let record = Record {
        key: message.key.map(String::into_bytes),
        headers,
        payload,
    };
    Ok((record, Accepted { message_id }))
}

/// When a delayed message is due (milliseconds since the epoch), if it is delayed.
fn deliver_at(
    delay: &Option<String>,
    at: &Option<String>,
    max_delay: Duration,
) -> Result<Option<u64>, WriteError> {
    let now = SystemTime::now();
    let due = match (delay, at) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(WriteError::Invalid(
                "give `delay` or `deliver_at`, not both".into(),
            ));
        }
        (Some(delay), None) => {
            now + humantime::parse_duration(delay).map_err(|e| {
                WriteError::Invalid(format!("`delay` is not a duration such as \"10m\": {e}"))
            })?
        }
        (None, Some(at)) => humantime::parse_rfc3339_weak(at).map_err(|e| {
            WriteError::Invalid(format!("`deliver_at` is not an RFC 3339 time: {e}"))
        })?,
    };
    if due.duration_since(now).unwrap_or_default() > max_delay {
        return Err(WriteError::Invalid(format!(
            "the delay is longer than the namespace's `max_delay` of {}",
            humantime::format_duration(max_delay)
        )));
    }
    Ok(Some(
        due.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    ))
}
