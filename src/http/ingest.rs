//! The write routes: `POST /api/v1/wal/write` (one message) and
//! `POST /api/v1/wal/write/batch` (many messages for one namespace, answered per
//! message). A write is answered 202 only after the namespace's backend confirmed it.

use std::collections::BTreeMap;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use axum::Json;
use axum::body::Bytes;
use axum::extract::State;
use axum::extract::rejection::BytesRejection;
use axum::http::{HeaderMap, StatusCode};
use base64::Engine;
use serde::{Deserialize, Serialize};
use serde_json::value::RawValue;
use sha2::Digest;
use tracing::warn;

use super::auth::authorize;
use super::error::{ApiError, BatchResult, ErrorResponse};
use super::state::AppState;
use crate::message::{
    Durability, HEADER_CONTENT_TYPE, HEADER_DELIVER_AT, HEADER_IDEMPOTENCY_HASH,
    HEADER_IDEMPOTENCY_KEY, HEADER_MESSAGE_ID, HEADER_TARGETS, HEADER_TRANSACTION_ID,
    RESERVED_PREFIX, Record, new_id,
};
use crate::producer::BackendError;
use crate::runtime::Namespace;
use crate::runtime::idempotency::{Check, Remembered, Reservation};
use crate::runtime::limits::Refusal;
use crate::source::WriteProgress;
use crate::status::{MessageStatus, StatusStore};

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

/// The answer to a write: it is durable (or written, see `durability`).
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct WriteAccepted {
    pub message_id: String,
    /// Look it up at `/api/v1/wal/transaction/{id}/status`.
    pub transaction_id: String,
    pub durability: Durability,
    /// True when an earlier write with the same idempotency key and body got these ids
    /// and nothing was appended now.
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub repeated: bool,
}

/// The answer to a batch some of whose messages were accepted: one result per
/// message, in order.
#[derive(Debug, Serialize, utoipa::ToSchema)]
pub struct BatchAccepted {
    /// Shared by the batch's accepted messages.
    pub transaction_id: String,
    /// How durable the accepted messages are.
    pub durability: Durability,
    pub results: Vec<BatchResult>,
}

/// Ids a message was given.
struct Accepted {
    message_id: String,
}

#[utoipa::path(post, path = "/api/v1/wal/write", tag = "write",
    request_body = MessageIn,
    security((), ("api_key" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "Durable on the namespace's backend", body = WriteAccepted),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse),
        (status = 403, response = ErrorResponse), (status = 404, response = ErrorResponse),
        (status = 409, response = ErrorResponse), (status = 413, response = ErrorResponse),
        (status = 429, response = ErrorResponse), (status = 503, response = ErrorResponse),
        (status = 504, response = ErrorResponse),
    ))]
pub async fn write(
    State(state): State<Arc<AppState>>,
    progress: Option<axum::Extension<WriteProgress>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<WriteAccepted>), ApiError> {
    let (message, body): (MessageIn, Bytes) = parse_body(&state, body)?;
    let namespace_name = message
        .namespace
        .clone()
        .ok_or_else(|| ApiError::Malformed("missing field `namespace`".into()))?;
    let namespace = find_namespace(&state, &namespace_name, &headers)?;
    let transaction_id = new_id();
    let written = async {
        let keyed = match check_key(&namespace, message.idempotency_key.as_deref(), || {
            hex::encode(sha2::Sha256::digest(&body))
        })
        .await?
        {
            KeyCheck::Repeat(repeat) => return Ok(Err(repeat)),
            KeyCheck::New(keyed) => keyed,
        };
        let (record, accepted) = to_record(&namespace, message, &transaction_id, keyed.as_ref())?;
        let keys = keyed.map(|k| k.into_reserved(&accepted.message_id, &transaction_id));
        let durability = append_detached(
            state.supervisor.status().clone(),
            namespace.clone(),
            vec![record],
            keys,
            progress.map(|p| p.0),
        )
        .await?;
        Ok::<_, ApiError>(Ok((durability, accepted)))
    }
    .await
    .inspect_err(|e| namespace.counters.refused(e.code()))?;
    let accepted = match written {
        Ok((durability, accepted)) => WriteAccepted {
            message_id: accepted.message_id,
            transaction_id,
            durability,
            repeated: false,
        },
        Err(repeat) => WriteAccepted {
            message_id: repeat.message_id,
            transaction_id: repeat.transaction_id,
            durability: Durability::Durable,
            repeated: true,
        },
    };
    Ok((StatusCode::ACCEPTED, Json(accepted)))
}

#[utoipa::path(post, path = "/api/v1/wal/write/batch", tag = "write",
    request_body = BatchIn,
    security((), ("api_key" = []), ("bearer" = [])),
    responses(
        (status = 202, description = "The accepted messages are durable together; see each result", body = BatchAccepted),
        (status = 400, response = ErrorResponse), (status = 401, response = ErrorResponse), (status = 403, response = ErrorResponse),
        (status = 404, response = ErrorResponse), (status = 413, response = ErrorResponse),
        (status = 429, response = ErrorResponse), (status = 503, response = ErrorResponse),
        (status = 504, response = ErrorResponse),
    ))]
pub async fn write_batch(
    State(state): State<Arc<AppState>>,
    progress: Option<axum::Extension<WriteProgress>>,
    headers: HeaderMap,
    body: Result<Bytes, BytesRejection>,
) -> Result<(StatusCode, Json<BatchAccepted>), ApiError> {
    let (batch, _): (BatchIn, Bytes) = parse_body(&state, body)?;
    let namespace = find_namespace(&state, &batch.namespace, &headers)?;
    if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH {
        return Err(ApiError::Malformed(format!(
            "a batch holds 1 to {MAX_BATCH} messages"
        )));
    }
    let transaction_id = new_id();
    let mut results = Vec::with_capacity(batch.messages.len());
    let mut records = Vec::new();
    // The keys of the messages to append, reserved: kept once the batch is durable,
    // released if it is not.
    let mut keys: Option<Reserved> = None;
    let mut seen_keys = std::collections::HashSet::new();
    for (index, message) in batch.messages.into_iter().enumerate() {
        let converted = async {
            if let Some(other) = message
                .namespace
                .as_deref()
                .filter(|n| *n != batch.namespace)
            {
                return Err(ApiError::InvalidMessage(format!(
                    "the message names namespace `{other}`, the batch `{}`",
                    batch.namespace
                )));
            }
            if let Some(key) = &message.idempotency_key
                && !seen_keys.insert(key.clone())
            {
                // Its first message in this batch holds the key until the batch is
                // durable: waiting for it here would wait for ourselves.
                return Err(ApiError::IdempotencyInProgress(key.clone()));
            }
            // A message's "body" is its own JSON: the same message sent again hashes
            // the same.
            let hash = || {
                let json = serde_json::to_vec(&message).unwrap_or_default();
                hex::encode(sha2::Sha256::digest(&json))
            };
            let keyed =
                match check_key(&namespace, message.idempotency_key.as_deref(), hash).await? {
                    KeyCheck::Repeat(repeat) => return Ok(Err(repeat)),
                    KeyCheck::New(keyed) => keyed,
                };
            let (record, accepted) =
                to_record(&namespace, message, &transaction_id, keyed.as_ref())?;
            Ok(Ok((record, accepted, keyed)))
        }
        .await;
        match converted {
            Ok(Err(repeat)) => results.push(BatchResult {
                index,
                status: StatusCode::ACCEPTED.as_u16(),
                message_id: Some(repeat.message_id),
                transaction_id: Some(repeat.transaction_id),
                repeated: true,
                error: None,
            }),
            Ok(Ok((record, accepted, keyed))) => {
                records.push(record);
                if let Some(keyed) = keyed {
                    let reserved = keyed.into_reserved(&accepted.message_id, &transaction_id);
                    match &mut keys {
                        Some(keys) => keys.merge(reserved),
                        None => keys = Some(reserved),
                    }
                }
                results.push(BatchResult {
                    index,
                    status: StatusCode::ACCEPTED.as_u16(),
                    message_id: Some(accepted.message_id),
                    transaction_id: None,
                    repeated: false,
                    error: None,
                });
            }
            Err(e) => {
                namespace.counters.refused(e.code());
                results.push(BatchResult {
                    index,
                    status: e.status().as_u16(),
                    message_id: None,
                    transaction_id: None,
                    repeated: false,
                    error: Some(e.body().error),
                });
            }
        }
    }
    if results.iter().all(|r| r.error.is_some()) {
        return Err(ApiError::InvalidBatch(results));
    }
    // The valid messages are appended together: durable together or not at all.
    let durability = if records.is_empty() {
        // Every valid message was a repeat: nothing to append.
        Durability::Durable
    } else {
        append_detached(
            state.supervisor.status().clone(),
            namespace.clone(),
            records,
            keys,
            progress.map(|p| p.0),
        )
        .await
        .inspect_err(|e| namespace.counters.refused(e.code()))?
    };
    Ok((
        StatusCode::ACCEPTED,
        Json(BatchAccepted {
            transaction_id,
            durability,
            results,
        }),
    ))
}

/// The request body as `T`, within the body limit and the JSON depth limit.
fn parse_body<T: serde::de::DeserializeOwned>(
    state: &AppState,
    body: Result<Bytes, BytesRejection>,
) -> Result<(T, Bytes), ApiError> {
    let body = body.map_err(|rejection| {
        if rejection.status() == StatusCode::PAYLOAD_TOO_LARGE {
            ApiError::BodyTooLarge(state.service.http.max_body_bytes.bytes())
        } else {
            // Mostly a body that ended before its declared `Content-Length`.
            ApiError::Malformed(format!(
                "the request body could not be read in full ({})",
                rejection.body_text()
            ))
        }
    })?;
    let max_depth = state.service.http.max_json_depth as usize;
    if json_depth(&body) > max_depth {
        return Err(ApiError::Malformed(format!(
            "JSON nested deeper than {max_depth} levels"
        )));
    }
    let parsed = serde_json::from_slice(&body).map_err(|e| ApiError::Malformed(e.to_string()))?;
    Ok((parsed, body))
}

/// How long a write waits for another write with the same idempotency key to finish
/// before it is answered 409 `idempotency_in_progress`.
const KEY_WAIT: Duration = Duration::from_secs(5);

/// A message's idempotency key with its body's hash, reserved for its write.
struct Keyed {
    key: String,
    hash: String,
    reservation: Reservation,
}

impl Keyed {
    /// The reservation with the ids its key answers with once the write is durable.
    fn into_reserved(self, message_id: &str, transaction_id: &str) -> Reserved {
        Reserved {
            reservation: self.reservation,
            entries: vec![Remembered {
                key: self.key,
                hash: self.hash,
                message_id: message_id.to_string(),
                transaction_id: transaction_id.to_string(),
                at_ms: 0,
            }],
        }
    }
}

/// The keys of one write, held until it is durable, with what each then remembers.
struct Reserved {
    reservation: Reservation,
    entries: Vec<Remembered>,
}

impl Reserved {
    fn merge(&mut self, other: Reserved) {
        self.reservation.merge(other.reservation);
        self.entries.extend(other.entries);
    }
}

/// What a message's idempotency key says.
enum KeyCheck {
    /// Go on: a new write, its key (if it has one) reserved.
    New(Option<Keyed>),
    /// The same body was written before with this key: answer with its ids.
    Repeat(Remembered),
}

/// Checks a message's idempotency key (`hash` gives its body's hash, computed only
/// for a keyed write) and reserves it if it is new. A write in progress with the same
/// key is waited for, up to [`KEY_WAIT`].
async fn check_key(
    namespace: &Namespace,
    key: Option<&str>,
    hash: impl FnOnce() -> String,
) -> Result<KeyCheck, ApiError> {
    let Some(key) = key else {
        return Ok(KeyCheck::New(None));
    };
    let Some(store) = &namespace.idempotency else {
        // Writing it without its key could append it twice.
        warn!(namespace = %namespace.name(), "Keyed write refused: the idempotency keys are unavailable.");
        return Err(ApiError::Unavailable(namespace.name().to_string()));
    };
    if key.is_empty() || key.len() > 256 {
        return Err(ApiError::InvalidMessage(
            "`idempotency_key` is 1 to 256 characters".into(),
        ));
    }
    let hash = hash();
    match store.reserve(key, &hash, KEY_WAIT).await {
        (Check::New, Some(reservation)) => Ok(KeyCheck::New(Some(Keyed {
            key: key.to_string(),
            hash,
            reservation,
        }))),
        (Check::Repeat(remembered), _) => Ok(KeyCheck::Repeat(remembered)),
        (Check::Conflict, _) => Err(ApiError::IdempotencyConflict(key.to_string())),
        (Check::New | Check::InProgress, _) => {
            Err(ApiError::IdempotencyInProgress(key.to_string()))
        }
    }
}

/// Appends `records` in a task of its own and waits for it, so that neither a client
/// that goes away nor the request timeout can cut a write in two: once begun, the
/// append runs to its end and, once durable, its idempotency keys are kept (if it
/// fails they are released). `progress` tells the request timeout that the append
/// began, so that it answers "durability unknown" from then on.
async fn append_detached(
    status: Arc<StatusStore>,
    namespace: Arc<Namespace>,
    records: Vec<Record>,
    keys: Option<Reserved>,
    progress: Option<WriteProgress>,
) -> Result<Durability, ApiError> {
    if let Some(progress) = progress {
        progress.appending();
    }
    let appending = async move {
        let durability = append(&status, &namespace, records).await?;
        if let Some(keys) = keys {
            keys.reservation.complete(keys.entries).await;
        }
        Ok(durability)
    };
    // The request's span goes along, so that what the append logs carries its id.
    tokio::spawn(tracing::Instrument::instrument(
        appending,
        tracing::Span::current(),
    ))
    .await
    .unwrap_or_else(|e| {
        tracing::error!(error = %e, "An append task failed.");
        Err(ApiError::Internal)
    })
}

/// The namespace a write goes to, once the caller may write to it.
fn find_namespace(
    state: &AppState,
    name: &str,
    headers: &HeaderMap,
) -> Result<Arc<Namespace>, ApiError> {
    let running = state.running();
    let namespace = running
        .namespaces
        .get(name)
        .ok_or_else(|| ApiError::NamespaceNotFound(name.to_string()))?;
    authorize(headers, namespace, running.namespaces.values())?;
    Ok(namespace.clone())
}

/// Checks one message against its namespace and makes it a record.
fn to_record(
    namespace: &Namespace,
    message: MessageIn,
    transaction_id: &str,
    keyed: Option<&Keyed>,
) -> Result<(Record, Accepted), ApiError> {
    let config = &namespace.pipeline.config;
    let (payload, content_type) = match (message.payload, message.payload_base64) {
        (Some(json), None) => (json.get().as_bytes().to_vec(), "application/json"),
        (None, Some(encoded)) => (
            base64::engine::general_purpose::STANDARD
                .decode(encoded.as_bytes())
                .map_err(|e| {
                    ApiError::InvalidMessage(format!("`payload_base64` is not base64: {e}"))
                })?,
            "application/octet-stream",
        ),
        _ => {
            return Err(ApiError::InvalidMessage(
                "give exactly one of `payload` and `payload_base64`".into(),
            ));
        }
    };
    let limit = config.max_message_bytes().bytes();
    if payload.len() as u64 > limit {
        return Err(ApiError::MessageTooLarge(limit));
    }
    if message.headers.len() > MAX_HEADERS {
        return Err(ApiError::InvalidMessage(format!(
            "a message carries at most {MAX_HEADERS} headers"
        )));
    }
    if let Some(name) = message.headers.keys().find(|n| {
        n.is_empty() || n.to_ascii_lowercase().starts_with(RESERVED_PREFIX) || n.len() > 256
    }) {
        return Err(ApiError::InvalidMessage(format!(
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
            return Err(ApiError::InvalidMessage(
                "`targets` is empty; leave it out to deliver to all".into(),
            ));
        }
        if let Some(unknown) = targets.iter().find(|t| !known.contains(&t.as_str())) {
            return Err(ApiError::InvalidMessage(format!(
                "namespace `{}` has no target `{unknown}`; its targets: {}",
                config.namespace,
                known.join(", ")
            )));
        }
        headers.push((HEADER_TARGETS.into(), targets.join(",").into_bytes()));
    }
    if let Some(keyed) = keyed {
        headers.push((HEADER_IDEMPOTENCY_KEY.into(), keyed.key.as_bytes().to_vec()));
        headers.push((
            HEADER_IDEMPOTENCY_HASH.into(),
            keyed.hash.as_bytes().to_vec(),
        ));
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
) -> Result<Option<u64>, ApiError> {
    let now = SystemTime::now();
    let due = match (delay, at) {
        (None, None) => return Ok(None),
        (Some(_), Some(_)) => {
            return Err(ApiError::InvalidMessage(
                "give `delay` or `deliver_at`, not both".into(),
            ));
        }
        (Some(delay), None) => {
            now + humantime::parse_duration(delay).map_err(|e| {
                ApiError::InvalidMessage(format!("`delay` is not a duration such as \"10m\": {e}"))
            })?
        }
        (None, Some(at)) => humantime::parse_rfc3339_weak(at).map_err(|e| {
            ApiError::InvalidMessage(format!("`deliver_at` is not an RFC 3339 time: {e}"))
        })?,
    };
    if due.duration_since(now).unwrap_or_default() > max_delay {
        return Err(ApiError::InvalidMessage(format!(
            "the delay is longer than the namespace's `max_delay` of {}",
            humantime::format_duration(max_delay)
        )));
    }
    Ok(Some(
        due.duration_since(UNIX_EPOCH)
            .map_or(0, |d| d.as_millis() as u64),
    ))
}

/// Admits the records (rate limit, in-flight bound), appends them to the namespace's
/// backend and waits for it to confirm.
async fn append(
    status: &StatusStore,
    namespace: &Namespace,
    records: Vec<Record>,
) -> Result<Durability, ApiError> {
    let name = namespace.name().to_string();
    let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
    let _permit = namespace
        .admission
        .admit(count)
        .map_err(|refusal| match refusal {
            Refusal::Overloaded => ApiError::Overloaded(name.clone()),
            Refusal::RateLimited(wait) => ApiError::RateLimited {
                namespace: name.clone(),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            },
        })?;
    let Some(backend) = &namespace.backend else {
        warn!(namespace = %name, reason = ?namespace.failure, "Write refused: namespace unavailable.");
        return Err(ApiError::Unavailable(name));
    };
    // Without the embedded log's status tailer, the write's status is recorded here,
    // so that its transaction can be looked up as soon as it is acknowledged.
    let accepted: Vec<MessageStatus> = if !namespace.pipeline.config.producer.is_embedded() {
        let targets = &namespace.pipeline.config.targets;
        let now = crate::message::now_ms();
        records
            .iter()
            .enumerate()
            .filter_map(|(i, r)| {
                let names = targets.iter().map(|t| &t.name);
                MessageStatus::of_headers(&r.headers, &name, names, i as u64, now)
            })
            .collect()
    } else {
        Vec::new()
    };
    let started = std::time::Instant::now();
    let payload_bytes: u64 = records.iter().map(|r| r.payload.len() as u64).sum();
    match backend.append(records).await {
        Ok(appended) => {
            let durability = appended.durability;
            namespace
                .counters
                .accepted(u64::from(count), payload_bytes, started.elapsed());
            if !accepted.is_empty()
                && let Err(e) = status.record_accepted(&accepted).await
            {
                warn!(namespace = %name, error = %e, "Transaction status not recorded; delivery records it.");
            }
            Ok(durability)
        }
        Err(e) => {
            warn!(namespace = %name, error = %e, "Write failed; nothing was acknowledged.");
            Err(match e {
                BackendError::StorageFull(_) => ApiError::StorageFull(name),
                BackendError::Invalid(message) => ApiError::InvalidMessage(message),
                BackendError::Failed(_) => ApiError::Unavailable(name),
                BackendError::Unavailable(reason) => ApiError::BackendUnavailable {
                    namespace: name,
                    reason,
                },
                BackendError::Unknown(reason) => ApiError::DurabilityUnknown(reason),
                BackendError::Unsupported(_) => ApiError::Unavailable(name),
            })
        }
    }
}

/// How deeply `bytes` nest arrays and objects, strings skipped; a cheap bound checked
/// before parsing so that a deep document costs no recursion.
pub fn json_depth(bytes: &[u8]) -> usize {
    let (mut depth, mut max, mut in_string, mut escaped) = (0usize, 0usize, false, false);
    for &b in bytes {
        if in_string {
            match (escaped, b) {
                (true, _) => escaped = false,
                (false, b'\\') => escaped = true,
                (false, b'"') => in_string = false,
                _ => {}
            }
            continue;
        }
        match b {
            b'"' => in_string = true,
            b'[' | b'{' => {
                depth += 1;
                max = max.max(depth);
            }
            b']' | b'}' => depth = depth.saturating_sub(1),
            _ => {}
        }
    }
    max
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_depth_skips_strings() {
        assert_eq!(json_depth(br#"{"a": [1, {"b": "[[[{{{"}]}"#), 3);
        assert_eq!(json_depth(br#""\"[""#), 0);
        assert_eq!(json_depth(b"[[[[]]]]"), 4);
    }
}
