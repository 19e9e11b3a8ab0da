//! The message model that every layer shares: a record as it is appended and as it is
//! stored, how durable an append is, the names of the headers wald sets on every
//! message, the consumer groups it reads each log as, ids and the clock.
//!
//! Nothing here knows where a record is kept or how it travels: the producer backends,
//! the targets, the runtime and HTTP all build on these names.

use std::time::{SystemTime, UNIX_EPOCH};

/// Header names wald sets on stored messages; clients may not use the prefix.
pub const RESERVED_PREFIX: &str = "wald-";
pub const HEADER_MESSAGE_ID: &str = "wald-message-id";
pub const HEADER_TRANSACTION_ID: &str = "wald-transaction-id";
/// `application/json`, or `application/octet-stream` for a binary payload.
pub const HEADER_CONTENT_TYPE: &str = "wald-content-type";
/// When a delayed message is due, in milliseconds since the Unix epoch.
pub const HEADER_DELIVER_AT: &str = "wald-deliver-at";
/// The targets a message goes to, comma-separated, when it names some.
pub const HEADER_TARGETS: &str = "wald-targets";
/// A keyed message's idempotency key, and the SHA-256 (hex) of the body it was written
/// with: the key is durable with its message.
pub const HEADER_IDEMPOTENCY_KEY: &str = "wald-idempotency-key";
pub const HEADER_IDEMPOTENCY_HASH: &str = "wald-idempotency-hash";
/// How often a message was replayed from the DLQ.
pub const HEADER_REPLAYS: &str = "wald-replays";
/// The W3C trace context of the write (see [`crate::telemetry::traces`]).
pub const HEADER_TRACEPARENT: &str = "wald-traceparent";
pub const HEADER_TRACESTATE: &str = "wald-tracestate";
/// Where a record read from a partitioned log (Kafka) is: `<partition>:<offset>`.
pub const HEADER_PLACE: &str = "wald-kafka-place";

/// Headers a dead-lettered message carries besides its own.
pub const HEADER_DLQ_TARGET: &str = "wald-dlq-target";
pub const HEADER_DLQ_ATTEMPTS: &str = "wald-dlq-attempts";
pub const HEADER_DLQ_FIRST_ERROR: &str = "wald-dlq-first-error";
pub const HEADER_DLQ_LAST_ERROR: &str = "wald-dlq-last-error";
pub const HEADER_DLQ_FIRST_FAILED_MS: &str = "wald-dlq-first-failed-ms";
pub const HEADER_DLQ_LAST_FAILED_MS: &str = "wald-dlq-last-failed-ms";
pub const HEADER_DLQ_SOURCE_OFFSET: &str = "wald-dlq-source-offset";
/// The prefix of every `wald-dlq-*` header.
pub const DLQ_PREFIX: &str = "wald-dlq-";

/// The consumer group delivery reads each log as (on Kafka and Redis Streams, the
/// `[producer]` table may name another).
pub const DELIVERY_GROUP: &str = "wald";
/// The consumer group of the status index: on the embedded log it holds segments back
/// like any group, but a log that only it has read is not consumed.
pub const TAILER_GROUP: &str = "wald-status";

/// Where each target keeps its own position (the embedded log), the consumer group one
/// target reads the log as is `wald.target.<target>`, and delayed messages are read as
/// [`DELAYS_GROUP`]; the delivery group's cursor then stands at the lowest of them.
pub fn target_group(target: &str) -> String {
    format!("{TARGET_GROUP_PREFIX}{target}")
}

/// The target whose own consumer group `group` is, if it is one.
pub fn target_of_group(group: &str) -> Option<&str> {
    group.strip_prefix(TARGET_GROUP_PREFIX)
}

const TARGET_GROUP_PREFIX: &str = "wald.target.";

/// The consumer group of the reader that holds delayed messages until they are due,
/// where each target reads the log as a group of its own.
pub const DELAYS_GROUP: &str = "wald.delays";

/// A message as a backend stores it: the log adds an offset and a timestamp.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Record {
    /// Partitions and orders messages: one key's messages keep their order.
    pub key: Option<Vec<u8>>,
    /// Name and value pairs carried with the message (ids, content type, delay).
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

/// A record as stored: what was appended, with the offset and timestamp the log gave it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct StoredRecord {
    pub offset: u64,
    /// Milliseconds since the Unix epoch; never decreases along the log.
    pub timestamp_ms: u64,
    pub key: Option<Vec<u8>>,
    pub headers: Vec<(String, Vec<u8>)>,
    pub payload: Vec<u8>,
}

impl StoredRecord {
    /// The value of header `name`, if it is there and is text.
    pub fn header(&self, name: &str) -> Option<&str> {
        header(&self.headers, name)
    }
}

/// The value of header `name` among `headers`, if it is there and is text.
pub fn header<'h>(headers: &'h [(String, Vec<u8>)], name: &str) -> Option<&'h str> {
    headers
        .iter()
        .find(|(n, _)| n == name)
        .and_then(|(_, v)| std::str::from_utf8(v).ok())
}

/// How durable an acknowledged append is; every write answer says which applied.
#[derive(Clone, Copy, Debug, PartialEq, Eq, serde::Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum Durability {
    /// On stable storage: synced (`fdatasync`), or confirmed by a replicated backend.
    Durable,
    /// Written but not yet synced (`sync = "interval"`): a crash can lose it.
    Written,
}

/// Milliseconds since the Unix epoch.
pub fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_millis() as u64)
}

/// A new time-ordered id (UUID v7): message and transaction ids sort by time.
pub fn new_id() -> String {
    // Encoded into a buffer rather than through `Display`, which writes it piece by piece.
    let mut buf = uuid::Uuid::encode_buffer();
    uuid::Uuid::now_v7()
        .hyphenated()
        .encode_lower(&mut buf)
        .to_string()
}
