//! The write use case: what `[source]` promises a writer, whoever calls. A message is
//! checked and made a record ([`super::record`]), its idempotency key is looked up and
//! held, it is admitted (rate limit, writes waiting), appended in a task of its own, and
//! answered only once the backend confirmed it durable. Errors are [`WriteError`]s,
//! which HTTP maps to its answers.

use std::collections::HashSet;
use std::sync::Arc;
use std::time::Duration;

use sha2::Digest;
use tracing::warn;

use super::error::WriteError;
use super::idempotency::{Check, Remembered, Reservation};
use super::limits::Refusal;
use super::record::{BatchIn, MAX_BATCH, MessageIn, to_record};
use crate::message::{Durability, Record, new_id};
use crate::producer::BackendError;
use crate::runtime::Namespace;
use crate::status::{MessageStatus, StatusStore};

/// A message accepted: durable, with its ids.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Accepted {
    pub message_id: String,
    /// The write's transaction; for a repeat, that of the first write.
    pub transaction_id: String,
    pub durability: Durability,
    /// True when an earlier write with the same idempotency key and body got these ids
    /// and nothing was appended now.
    pub repeated: bool,
}

/// A batch written: the valid messages durable together, each message's outcome in
/// order.
#[derive(Debug)]
pub struct BatchWritten {
    /// Shared by the messages appended now.
    pub transaction_id: String,
    pub durability: Durability,
    pub results: Vec<Result<Accepted, WriteError>>,
}

/// Writes one message to `namespace`: durable when this returns `Ok`. `body` is the
/// request as sent, whose hash an idempotency key holds.
pub async fn write(
    namespace: &Arc<Namespace>,
    status: &Arc<StatusStore>,
    message: MessageIn,
    body: &[u8],
    progress: Option<WriteProgress>,
) -> Result<Accepted, WriteError> {
    let transaction_id = new_id();
    let keyed = match check_key(namespace, message.idempotency_key.as_deref(), || {
        hex::encode(sha2::Sha256::digest(body))
    })
    .await?
    {
        KeyCheck::Repeat(repeat) => return Ok(repeated(repeat)),
        KeyCheck::New(keyed) => keyed,
    };
    let (record, accepted) = to_record(
        &namespace.pipeline.config,
        message,
        &transaction_id,
        keyed.as_ref().map(Keyed::key),
    )?;
    let keys = keyed.map(|k| k.into_reserved(&accepted.message_id, &transaction_id));
    let durability = append_detached(status, namespace, vec![record], keys, progress).await?;
    Ok(Accepted {
        message_id: accepted.message_id,
        transaction_id,
        durability,
        repeated: false,
    })
}

/// Writes a batch to `namespace`: each message checked on its own, the valid ones
/// appended together, durable together or not at all.
pub async fn write_batch(
    namespace: &Arc<Namespace>,
    status: &Arc<StatusStore>,
    batch: BatchIn,
    progress: Option<WriteProgress>,
) -> Result<BatchWritten, WriteError> {
    if batch.messages.is_empty() || batch.messages.len() > MAX_BATCH {
        return Err(WriteError::Malformed(format!(
            "a batch holds 1 to {MAX_BATCH} messages"
        )));
    }
    let transaction_id = new_id();
    let mut results = Vec::with_capacity(batch.messages.len());
    let mut records = Vec::new();
    // The keys of the messages to append, reserved: kept once the batch is durable,
    // released if it is not.
    let mut keys: Option<Reserved> = None;
    let mut seen_keys = HashSet::new();
    for message in batch.messages {
        let converted = async {
            if let Some(other) = message
                .namespace
                .as_deref()
                .filter(|n| *n != batch.namespace)
            {
                return Err(WriteError::Invalid(format!(
                    "the message names namespace `{other}`, the batch `{}`",
                    batch.namespace
                )));
            }
            if let Some(key) = &message.idempotency_key
                && !seen_keys.insert(key.clone())
            {
                // Its first message in this batch holds the key until the batch is
                // durable: waiting for it here would wait for ourselves.
                return Err(WriteError::KeyInProgress(key.clone()));
            }
            // A message's "body" is its own JSON: the same message sent again hashes
            // the same.
            let hash = || {
                let json = serde_json::to_vec(&message).unwrap_or_default();
                hex::encode(sha2::Sha256::digest(&json))
            };
            let keyed = match check_key(namespace, message.idempotency_key.as_deref(), hash).await?
            {
                KeyCheck::Repeat(repeat) => return Ok(Err(repeat)),
                KeyCheck::New(keyed) => keyed,
            };
            let (record, accepted) = to_record(
                &namespace.pipeline.config,
                message,
                &transaction_id,
                keyed.as_ref().map(Keyed::key),
            )?;
            Ok(Ok((record, accepted, keyed)))
        }
        .await;
        results.push(match converted {
            Ok(Err(repeat)) => Ok(repeated(repeat)),
            Ok(Ok((record, accepted, keyed))) => {
                records.push(record);
                if let Some(keyed) = keyed {
                    let reserved = keyed.into_reserved(&accepted.message_id, &transaction_id);
                    match &mut keys {
                        Some(keys) => keys.merge(reserved),
                        None => keys = Some(reserved),
                    }
                }
                Ok(Accepted {
                    message_id: accepted.message_id,
                    transaction_id: transaction_id.clone(),
                    // Filled in once the batch is durable.
                    durability: Durability::Durable,
                    repeated: false,
                })
            }
            Err(e) => Err(e),
        });
    }
    // Every valid message was a repeat, or none was valid: nothing to append.
    let durability = if records.is_empty() {
        Durability::Durable
    } else {
        append_detached(status, namespace, records, keys, progress).await?
    };
    for accepted in results.iter_mut().flatten() {
        if !accepted.repeated {
            accepted.durability = durability;
        }
    }
    Ok(BatchWritten {
        transaction_id,
        durability,
        results,
    })
}

/// The answer to a write its idempotency key had seen: its first ids.
fn repeated(first: Remembered) -> Accepted {
    Accepted {
        message_id: first.message_id,
        transaction_id: first.transaction_id,
        durability: Durability::Durable,
        repeated: true,
    }
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
    /// The key and its body's hash, as the record carries them.
    fn key(&self) -> (&str, &str) {
        (&self.key, &self.hash)
    }

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
) -> Result<KeyCheck, WriteError> {
    let Some(key) = key else {
        return Ok(KeyCheck::New(None));
    };
    let Some(store) = &namespace.idempotency else {
        // Writing it without its key could append it twice.
        warn!(namespace = %namespace.name(), "Keyed write refused: the idempotency keys are unavailable.");
        return Err(WriteError::Unavailable(namespace.name().to_string()));
    };
    if key.is_empty() || key.len() > 256 {
        return Err(WriteError::Invalid(
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
        (Check::Conflict, _) => Err(WriteError::KeyConflict(key.to_string())),
        (Check::New | Check::InProgress, _) => Err(WriteError::KeyInProgress(key.to_string())),
    }
}

/// Appends `records` in a task of its own and waits for it, so that neither a client
/// that goes away nor the request timeout can cut a write in two: once begun, the
/// append runs to its end and, once durable, its idempotency keys are kept (if it
/// fails they are released). `progress` tells the request timeout that the append
/// began, so that it answers "durability unknown" from then on.
async fn append_detached(
    status: &Arc<StatusStore>,
    namespace: &Arc<Namespace>,
    records: Vec<Record>,
    keys: Option<Reserved>,
    progress: Option<WriteProgress>,
) -> Result<Durability, WriteError> {
    if let Some(progress) = progress {
        progress.appending();
    }
    let (status, namespace) = (status.clone(), namespace.clone());
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
        Err(WriteError::Internal)
    })
}

/// Admits the records (rate limit, in-flight bound), appends them to the namespace's
/// backend and waits for it to confirm.
async fn append(
    status: &StatusStore,
    namespace: &Namespace,
    records: Vec<Record>,
) -> Result<Durability, WriteError> {
    let name = namespace.name().to_string();
    let count = u32::try_from(records.len()).unwrap_or(u32::MAX);
    let _permit = namespace
        .admission
        .admit(count)
        .map_err(|refusal| match refusal {
            Refusal::Overloaded => WriteError::Overloaded(name.clone()),
            Refusal::RateLimited(wait) => WriteError::RateLimited {
                namespace: name.clone(),
                retry_after: wait.as_secs_f64().ceil().max(1.0) as u64,
            },
        })?;
    let Some(backend) = &namespace.backend else {
        warn!(namespace = %name, reason = ?namespace.failure, "Write refused: namespace unavailable.");
        return Err(WriteError::Unavailable(name));
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
                BackendError::StorageFull(_) => WriteError::StorageFull(name),
                BackendError::Invalid(message) => WriteError::Invalid(message),
                BackendError::Failed(_) => WriteError::Unavailable(name),
                BackendError::Unavailable(reason) => WriteError::BackendUnavailable {
                    namespace: name,
                    reason,
                },
                BackendError::Unknown(reason) => WriteError::DurabilityUnknown(reason),
                BackendError::Unsupported(_) => WriteError::Unavailable(name),
            })
        }
    }
}

/// Whether a write request has begun its append: a request that times out before
/// that wrote nothing, one that times out after may or may not be durable.
#[derive(Clone, Default)]
pub struct WriteProgress(Arc<std::sync::atomic::AtomicBool>);

impl WriteProgress {
    pub fn appending(&self) {
        self.0.store(true, std::sync::atomic::Ordering::Release);
    }

    pub fn appended(&self) -> bool {
        self.0.load(std::sync::atomic::Ordering::Acquire)
    }
}
