//! A namespace's log on an SQS queue.
//!
//! - Append: `SendMessageBatch` (ten at a time); each message's body is the record
//!   (`envelope`). On a FIFO queue the key is the `MessageGroupId` (per-key order) and
//!   the message id the deduplication id. A message due within 15 minutes is sent with
//!   `DelaySeconds` (standard queues; FIFO queues have no per-message delay). The
//!   messages of one request are not atomic on SQS: when some were sent and others
//!   not, the answer is 504 (durability unknown).
//! - Read: each subscription long-polls `ReceiveMessage` in a task of its own, and
//!   another task extends the visibility of the messages it holds (retries included)
//!   every half `visibility_timeout`, so that they stay with it while it lives; when
//!   it dies they become visible again and another consumer receives them. A commit
//!   deletes (`DeleteMessageBatch`) what was done.
//! - Delays: a message read before it is due is made invisible until then
//!   (`ChangeMessageVisibility`, at most 12 hours at a time, so a longer delay is
//!   re-delayed when it comes back) and is not deleted: SQS holds it, and it comes
//!   back through the subscription when due.
//! - DLQ: `SendMessageBatch` to the DLQ queue. Listing peeks (receives every entry,
//!   invisible to others for a few seconds, then makes them visible again), numbering
//!   the entries it saw by the time they were dead-lettered: a snapshot of the first
//!   10,000, renumbered when entries leave. A replay receives
//!   entries with a visibility timeout of [`REPLAY_CLAIM`] (its claim: no other instance
//!   receives them meanwhile), sends each it wants to the queue again and deletes it
//!   from the DLQ; the rest are made visible again when the replay ends. A replayed
//!   entry is gone from the DLQ: there is no `replayed` list on SQS. On FIFO queues a
//!   message's deduplication id is its message id with its replay count and, in the
//!   DLQ, its target, so that neither a replay nor a second target's dead letter is
//!   taken for a duplicate.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use async_trait::async_trait;
use aws_sdk_sqs::Client;
use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
use aws_sdk_sqs::error::DisplayErrorContext;
use aws_sdk_sqs::types::{
    ChangeMessageVisibilityBatchRequestEntry, DeleteMessageBatchRequestEntry,
    MessageSystemAttributeName, QueueAttributeName, SendMessageBatchRequestEntry,
};
use tokio::sync::{OnceCell, mpsc};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::config::Config;
use crate::message::header;
use crate::message::now_ms;
use crate::message::{Durability, Record, StoredRecord};
use crate::message::{HEADER_DELIVER_AT, HEADER_DLQ_TARGET, HEADER_MESSAGE_ID, HEADER_REPLAYS};
use crate::producer::backend::{
    Backend, BackendError, DeadLetter, Durable, Handed, LastError, Positions, QueueCounts,
    REPLAY_CLAIM, Subscription, poisoned,
};
use crate::producer::envelope;

/// SQS's most entries per batch request.
const BATCH: usize = 10;
/// SQS's longest `DelaySeconds`.
const MAX_DELAY: Duration = Duration::from_secs(15 * 60);
/// SQS's longest visibility timeout.
const MAX_VISIBILITY: Duration = Duration::from_secs(12 * 3600);
/// Longest wait between tries of a reader that fails.
const MAX_BACKOFF: Duration = Duration::from_secs(5);
/// How long a peek at the DLQ keeps the entries it saw from others, at most.
const PEEK_HOLD: Duration = Duration::from_secs(5);
/// Most DLQ entries a peek reads.
const MAX_PEEK: usize = 10_000;
/// A header each record read carries: the receipt handle of the message.
const RECEIPT_HEADER: &str = "wald-sqs-receipt";

/// A namespace's queue and its DLQ.
pub struct SqsQueue {
    config: Config,
    /// Built on first use (the default credential chain is looked up asynchronously).
    client: Arc<OnceCell<Client>>,
    /// Receipt handles of messages made invisible until due: not deleted on commit.
    parked: Arc<Mutex<HashSet<String>>>,
    /// What this instance's replays hold of the DLQ.
    replays: Mutex<Replays>,
    down: LastError,
}

/// DLQ entries received by replays, by message id: their receipt handles.
#[derive(Default)]
struct Replays {
    /// The entries the replays under way want; others received are given back at once.
    wanted: HashSet<String>,
    /// Received, not taken by a replay yet.
    received: HashMap<String, String>,
    /// Taken by a replay, to be deleted once replayed.
    taken: HashMap<String, String>,
    /// Receives found nothing for longer than a peek holds entries, since the last
    /// replay ended.
    exhausted: bool,
    /// Since when receives find nothing.
    empty_since: Option<Instant>,
}

impl SqsQueue {
    pub fn open(namespace: &str, config: &Config) -> Result<Self, BackendError> {
        info!(namespace, queue = %config.queue_url, "SQS queue configured.");
        Ok(Self {
            config: config.clone(),
            client: Arc::default(),
            parked: Arc::default(),
            replays: Mutex::default(),
            down: LastError::new("SQS"),
        })
    }

    async fn client(&self) -> Client {
        self.client
            .get_or_init(|| build_client(&self.config))
            .await
            .clone()
    }

    /// Makes the DLQ entries of `receipts` visible again at once. Not fatal when it
    /// fails: they come back when their visibility timeout ends.
    async fn make_visible(&self, receipts: &[String]) {
        let client = self.client().await;
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk.iter().enumerate().filter_map(|(i, receipt)| {
                ChangeMessageVisibilityBatchRequestEntry::builder()
                    .id(i.to_string())
                    .receipt_handle(receipt)
                    .visibility_timeout(0)
                    .build()
                    .ok()
            });
            let result = client
                .change_message_visibility_batch()
                .queue_url(self.config.dlq_url())
                .set_entries(Some(entries.collect()))
                .send()
                .await;
            if let Err(e) = result {
                warn!(error = %DisplayErrorContext(e), "Could not make DLQ entries visible again.");
            }
        }
    }

    /// Sends `records` to `queue`, ten at a time.
    async fn send(&self, queue: &str, records: &[Record]) -> Result<(), BackendError> {
        let client = self.client().await;
        let fifo = queue.trim_end_matches('/').ends_with(".fifo");
        let now = now_ms();
        let mut sent = 0;
        for chunk in records.chunks(BATCH) {
            let mut entries = Vec::with_capacity(chunk.len());
            for (i, record) in chunk.iter().enumerate() {
                entries.push(entry(i, record, fifo, now)?);
            }
            let result = client
                .send_message_batch()
                .queue_url(queue)
                .set_entries(Some(entries))
                .send()
                .await;
            let failure = match result {
                Ok(output) if output.failed().is_empty() => None,
                Ok(output) => {
                    sent += output.successful().len();
                    let f = &output.failed()[0];
                    Some(format!("{}: {}", f.code(), f.message().unwrap_or_default()))
                }
                Err(e) => Some(DisplayErrorContext(e).to_string()),
            };
            self.down.note(failure.as_deref());
            if let Some(reason) = failure {
                return Err(if sent > 0 {
                    BackendError::Unknown(format!(
                        "{sent} of {} messages sent; SQS: {reason}",
                        records.len()
                    ))
                } else {
                    BackendError::Unavailable(format!("SQS: {reason}"))
                });
            }
            sent += chunk.len();
        }
        Ok(())
    }
}

/// One `SendMessageBatch` entry for `record`.
fn entry(
    i: usize,
    record: &Record,
    fifo: bool,
    now: u64,
) -> Result<SendMessageBatchRequestEntry, BackendError> {
    let header = |name| header(&record.headers, name).map(str::to_string);
    let body = envelope::encode_parts(now, record.key.as_deref(), &record.headers, &record.payload);
    let mut entry = SendMessageBatchRequestEntry::builder()
        .id(i.to_string())
        .message_body(body);
    if fifo {
        let group = record.key.as_ref().map_or_else(
            || "wald".to_string(),
            |k| String::from_utf8_lossy(k).into_owned(),
        );
        let mut deduplication =
            header(HEADER_MESSAGE_ID).unwrap_or_else(|| uuid::Uuid::now_v7().to_string());
        for part in [HEADER_REPLAYS, HEADER_DLQ_TARGET]
            .into_iter()
            .filter_map(header)
        {
            deduplication.push(':');
            deduplication.push_str(&part);
        }
        entry = entry
            .message_group_id(group)
            .message_deduplication_id(deduplication);
    } else if let Some(due) = header(HEADER_DELIVER_AT).and_then(|d| d.parse::<u64>().ok()) {
        let delay = Duration::from_millis(due.saturating_sub(now)).min(MAX_DELAY);
        entry = entry.delay_seconds(delay.as_secs_f64().ceil() as i32);
    }
    entry
        .build()
        .map_err(|e| BackendError::Unavailable(format!("SQS: {e}")))
}

async fn build_client(config: &Config) -> Client {
    let region = Region::new(config.region.clone());
    let mut builder = match (&config.access_key_id, &config.secret_access_key) {
        (Some(id), Some(secret)) => aws_sdk_sqs::Config::builder()
            .behavior_version(BehaviorVersion::latest())
            .region(region)
            .credentials_provider(Credentials::new(id, secret.expose(), None, None, "wald")),
        _ => {
            let shared = aws_config::defaults(BehaviorVersion::latest())
                .region(region)
                .load()
                .await;
            aws_sdk_sqs::config::Builder::from(&shared)
        }
    };
    if let Some(endpoint) = &config.endpoint {
        builder = builder.endpoint_url(endpoint);
    }
    Client::from_conf(builder.build())
}

#[async_trait]
impl Backend for SqsQueue {
    async fn append(&self, records: Vec<Record>) -> Result<Durable, BackendError> {
        self.send(&self.config.queue_url, &records).await?;
        Ok(Durability::Durable.into())
    }

    async fn subscribe(&self, _group: &str) -> Result<Box<dyn Subscription>, BackendError> {
        let client = self.client().await;
        let held = Arc::new(Mutex::new(BTreeMap::new()));
        let (batches, incoming) = mpsc::channel(2);
        let queue = self.config.queue_url.clone();
        let visibility = self.config.visibility_timeout.get();
        let reader = Reader {
            client: client.clone(),
            queue: queue.clone(),
            wait: self.config.wait_time.get(),
            visibility,
            held: held.clone(),
            down: self.down.clone(),
        };
        let keeper = tokio::spawn(keep_invisible(
            client.clone(),
            queue.clone(),
            visibility,
            held.clone(),
            self.parked.clone(),
        ));
        info!(queue = %queue, "Reading the SQS queue.");
        Ok(Box::new(QueueSubscription {
            client,
            queue,
            handed: Handed::new(incoming),
            held,
            parked: self.parked.clone(),
            tasks: [tokio::spawn(reader.run(batches)), keeper],
        }))
    }

    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), BackendError> {
        self.send(&self.config.dlq_url(), &records).await
    }

    /// Peeks at the DLQ: receives its entries, each invisible to others for
    /// [`PEEK_HOLD`], until a receive brings nothing, and makes them visible again.
    async fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<DeadLetter>, BackendError> {
        // Offsets number the entries in the order they were dead-lettered; the first
        // `from` are skipped.
        let max = (from as usize + max).min(MAX_PEEK);
        let client = self.client().await;
        let mut entries = Vec::new();
        let mut receipts = Vec::new();
        let peeked = async {
            while entries.len() < max {
                let output = client
                    .receive_message()
                    .queue_url(self.config.dlq_url())
                    .max_number_of_messages(BATCH as i32)
                    .visibility_timeout(PEEK_HOLD.as_secs() as i32)
                    .wait_time_seconds(1)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                if output.messages().is_empty() {
                    break;
                }
                for message in output.messages() {
                    receipts.extend(message.receipt_handle().map(str::to_string));
                    let id = message.message_id().unwrap_or_default().to_string();
                    entries.push((id, envelope::decode(message.body().unwrap_or_default())?));
                }
            }
            Ok::<_, BackendError>(())
        }
        .await;
        self.make_visible(&receipts).await;
        peeked?;
        entries.sort_by_key(|(_, record)| record.timestamp_ms);
        entries.truncate(max);
        Ok(entries
            .into_iter()
            .enumerate()
            .skip(from as usize)
            .map(|(i, (id, mut record))| {
                record.offset = i as u64;
                DeadLetter {
                    record,
                    replayed: false,
                    id: Some(id),
                }
            })
            .collect())
    }

    fn replays_dead_letters(&self) -> bool {
        true
    }

    async fn begin_replay(&self, selected: &[DeadLetter]) {
        if let Ok(mut replays) = self.replays.lock() {
            replays
                .wanted
                .extend(selected.iter().filter_map(|dead| dead.id.clone()));
        }
    }

    /// Receives DLQ entries, invisible to others for [`REPLAY_CLAIM`], until `entry`
    /// is among them or the DLQ has nothing more to give; keeps those a replay wants
    /// and gives the rest back.
    async fn claim_replay(&self, entry: &DeadLetter) -> Result<bool, BackendError> {
        let id = entry.id.clone().unwrap_or_default();
        let client = self.client().await;
        loop {
            {
                let mut replays = self.replays.lock().map_err(|_| poisoned())?;
                if let Some(receipt) = replays.received.remove(&id) {
                    replays.taken.insert(id, receipt);
                    return Ok(true);
                }
                if replays.exhausted {
                    return Ok(false);
                }
            }
            let output = client
                .receive_message()
                .queue_url(self.config.dlq_url())
                .max_number_of_messages(BATCH as i32)
                .visibility_timeout(REPLAY_CLAIM.as_secs() as i32)
                .wait_time_seconds(1)
                .send()
                .await
                .map_err(sdk_error)?;
            let mut unwanted = Vec::new();
            {
                let mut replays = self.replays.lock().map_err(|_| poisoned())?;
                // Nothing to receive: the DLQ is empty, or a peek holds its entries for
                // a moment, or another replay for longer.
                if output.messages().is_empty() {
                    let since = *replays.empty_since.get_or_insert_with(Instant::now);
                    replays.exhausted = since.elapsed() > PEEK_HOLD;
                } else {
                    replays.empty_since = None;
                }
                for message in output.messages() {
                    let (Some(id), Some(receipt)) =
                        (message.message_id(), message.receipt_handle())
                    else {
                        continue;
                    };
                    if replays.wanted.contains(id) {
                        replays.received.insert(id.to_string(), receipt.to_string());
                    } else {
                        unwanted.push(receipt.to_string());
                    }
                }
            }
            self.make_visible(&unwanted).await;
        }
    }

    /// Deletes the entry from the DLQ.
    async fn mark_replayed(&self, entry: &DeadLetter) -> Result<(), BackendError> {
        let id = entry.id.as_deref().unwrap_or_default();
        let receipt = self
            .replays
            .lock()
            .map_err(|_| poisoned())?
            .taken
            .remove(id);
        let Some(receipt) = receipt else {
            return Err(BackendError::Unavailable(format!(
                "the DLQ entry {id} was not received for this replay"
            )));
        };
        self.client()
            .await
            .delete_message()
            .queue_url(self.config.dlq_url())
            .receipt_handle(receipt)
            .send()
            .await
            .map_err(sdk_error)?;
        Ok(())
    }

    /// Makes what the replay received and did not replay visible again.
    async fn end_replay(&self) {
        let receipts: Vec<String> = match self.replays.lock() {
            Ok(mut replays) => {
                replays.exhausted = false;
                replays.empty_since = None;
                replays.wanted.clear();
                replays
                    .received
                    .drain()
                    .map(|(_, receipt)| receipt)
                    .collect()
            }
            Err(_) => return,
        };
        self.make_visible(&receipts).await;
    }

    /// Makes each message invisible until it is due (12 hours at most), and keeps the
    /// commit from deleting it.
    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), BackendError> {
        let client = self.client().await;
        let now = now_ms();
        for (record, due) in delayed {
            let Some(receipt) = record.header(RECEIPT_HEADER) else {
                return Err(BackendError::Unavailable(
                    "a delayed record without its receipt".into(),
                ));
            };
            let wait = Duration::from_millis(due.saturating_sub(now)).min(MAX_VISIBILITY);
            client
                .change_message_visibility()
                .queue_url(&self.config.queue_url)
                .receipt_handle(receipt)
                .visibility_timeout(wait.as_secs_f64().ceil() as i32)
                .send()
                .await
                .map_err(sdk_error)?;
            if let Ok(mut parked) = self.parked.lock() {
                parked.insert(receipt.to_string());
            }
        }
        Ok(())
    }

    /// SQS holds delayed messages itself: they come back through the subscription.
    async fn due(&self, _now_ms: u64, _max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        Ok(Vec::new())
    }

    async fn complete(&self, _delivered: Vec<StoredRecord>) -> Result<(), BackendError> {
        Ok(())
    }

    async fn next_due(&self) -> Result<Option<u64>, BackendError> {
        Ok(None)
    }

    fn unavailable(&self) -> Option<String> {
        self.down.get()
    }

    /// The queue's and the DLQ's approximate counts (`GetQueueAttributes`).
    async fn positions(&self) -> Result<Option<Positions>, BackendError> {
        let client = self.client().await;
        let counts = |queue: String| {
            let client = client.clone();
            async move {
                let output = client
                    .get_queue_attributes()
                    .queue_url(queue)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessages)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesNotVisible)
                    .attribute_names(QueueAttributeName::ApproximateNumberOfMessagesDelayed)
                    .send()
                    .await
                    .map_err(sdk_error)?;
                let count = |name: QueueAttributeName| {
                    output
                        .attributes()
                        .and_then(|a| a.get(&name))
                        .and_then(|v| v.parse().ok())
                        .unwrap_or(0)
                };
                Ok::<_, BackendError>(QueueCounts {
                    visible: count(QueueAttributeName::ApproximateNumberOfMessages),
                    in_flight: count(QueueAttributeName::ApproximateNumberOfMessagesNotVisible),
                    delayed: count(QueueAttributeName::ApproximateNumberOfMessagesDelayed),
                })
            }
        };
        let (queue, dlq) = tokio::join!(
            counts(self.config.queue_url.clone()),
            counts(self.config.dlq_url())
        );
        let dlq = dlq?;
        Ok(Some(Positions {
            groups: Vec::new(),
            dlq_depth: Some(dlq.visible + dlq.in_flight + dlq.delayed),
            delayed_pending: None,
            queue: Some(queue?),
        }))
    }
}

/// One consumer of the queue.
struct QueueSubscription {
    client: Client,
    queue: String,
    handed: Handed,
    /// Receipt handle of each message read and not yet deleted, by number.
    held: Arc<Mutex<BTreeMap<u64, String>>>,
    parked: Arc<Mutex<HashSet<String>>>,
    tasks: [JoinHandle<()>; 2],
}

impl Drop for QueueSubscription {
    fn drop(&mut self) {
        self.tasks.iter().for_each(JoinHandle::abort);
    }
}

#[async_trait]
impl Subscription for QueueSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        self.handed.next_batch(max).await
    }

    fn position(&self) -> u64 {
        self.handed.position()
    }

    /// Deletes the messages below `next_offset`, except those parked until due. A
    /// message whose delete failed becomes visible again and is delivered again,
    /// which at-least-once allows.
    async fn commit(&mut self, next_offset: u64) -> Result<(), BackendError> {
        let done: Vec<String> = {
            let mut held = self.held.lock().map_err(|_| poisoned())?;
            let rest = held.split_off(&next_offset);
            std::mem::replace(&mut *held, rest).into_values().collect()
        };
        let done: Vec<String> = match self.parked.lock() {
            Ok(mut parked) => done.into_iter().filter(|r| !parked.remove(r)).collect(),
            Err(_) => return Err(poisoned()),
        };
        for chunk in done.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, receipt)| {
                    DeleteMessageBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .build()
                        .ok()
                })
                .collect();
            let deleted = self
                .client
                .delete_message_batch()
                .queue_url(&self.queue)
                .set_entries(Some(entries))
                .send()
                .await;
            match deleted {
                Ok(output) if output.failed().is_empty() => {}
                Ok(output) => {
                    warn!(queue = %self.queue, failed = output.failed().len(), "Messages not deleted; they will be delivered again.")
                }
                Err(e) => {
                    warn!(queue = %self.queue, error = %DisplayErrorContext(e), "Messages not deleted; they will be delivered again.")
                }
            }
        }
        Ok(())
    }
}

/// The task that long-polls the queue for one subscription.
struct Reader {
    client: Client,
    queue: String,
    wait: Duration,
    visibility: Duration,
    held: Arc<Mutex<BTreeMap<u64, String>>>,
    down: LastError,
}

impl Reader {
    async fn run(self, batches: mpsc::Sender<Vec<StoredRecord>>) {
        let mut next_seq = 0u64;
        let mut backoff = Duration::from_millis(100);
        loop {
            let received = self
                .client
                .receive_message()
                .queue_url(&self.queue)
                .max_number_of_messages(BATCH as i32)
                .wait_time_seconds(self.wait.as_secs() as i32)
                .visibility_timeout(self.visibility.as_secs().max(1) as i32)
                .message_system_attribute_names(MessageSystemAttributeName::SentTimestamp)
                .send()
                .await;
            let output = match received {
                Ok(output) => output,
                Err(e) => {
                    let e = DisplayErrorContext(e).to_string();
                    self.down.note(Some(&e));
                    warn!(queue = %self.queue, error = %e, retry_in = ?backoff, "Receiving from SQS failed; trying again.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                    continue;
                }
            };
            self.down.clear();
            backoff = Duration::from_millis(100);
            let mut records = Vec::new();
            for message in output.messages() {
                let (Some(body), Some(receipt)) = (message.body(), message.receipt_handle()) else {
                    continue;
                };
                let mut record = match envelope::decode(body) {
                    Ok(record) => record,
                    Err(e) => {
                        // Not a wald message: left in the queue (SQS's redrive policy,
                        // if any, moves it on), never skipped silently.
                        warn!(queue = %self.queue, message_id = ?message.message_id(), error = %e, "A message that is not a wald record; left in the queue.");
                        continue;
                    }
                };
                if let Some(sent) = message
                    .attributes()
                    .and_then(|a| a.get(&MessageSystemAttributeName::SentTimestamp))
                    .and_then(|t| t.parse().ok())
                {
                    record.timestamp_ms = sent;
                }
                record
                    .headers
                    .push((RECEIPT_HEADER.into(), receipt.as_bytes().to_vec()));
                record.offset = next_seq;
                if let Ok(mut held) = self.held.lock() {
                    held.insert(next_seq, receipt.to_string());
                }
                next_seq += 1;
                records.push(record);
            }
            if !records.is_empty() && batches.send(records).await.is_err() {
                return;
            }
            if batches.is_closed() {
                return;
            }
        }
    }
}

/// Extends, every half `visibility`, the visibility of the messages a subscription
/// holds (parked ones excepted: they wait for their due time).
async fn keep_invisible(
    client: Client,
    queue: String,
    visibility: Duration,
    held: Arc<Mutex<BTreeMap<u64, String>>>,
    parked: Arc<Mutex<HashSet<String>>>,
) {
    loop {
        tokio::time::sleep(visibility / 2).await;
        let receipts: Vec<String> = {
            let parked = parked.lock().map(|p| p.clone()).unwrap_or_default();
            held.lock()
                .map(|h| {
                    h.values()
                        .filter(|r| !parked.contains(*r))
                        .cloned()
                        .collect()
                })
                .unwrap_or_default()
        };
        for chunk in receipts.chunks(BATCH) {
            let entries = chunk
                .iter()
                .enumerate()
                .filter_map(|(i, receipt)| {
                    ChangeMessageVisibilityBatchRequestEntry::builder()
                        .id(i.to_string())
                        .receipt_handle(receipt)
                        .visibility_timeout(visibility.as_secs().max(1) as i32)
                        .build()
                        .ok()
                })
                .collect();
            if let Err(e) = client
                .change_message_visibility_batch()
                .queue_url(&queue)
                .set_entries(Some(entries))
                .send()
                .await
            {
                warn!(queue = %queue, error = %DisplayErrorContext(e), "Visibility not extended; held messages may go to another consumer.");
            }
        }
    }
}

/// An SDK error as a backend error, with its whole chain of causes.
fn sdk_error(e: impl std::error::Error) -> BackendError {
    BackendError::Unavailable(format!("SQS: {}", DisplayErrorContext(e)))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// SQS takes a FIFO message for a duplicate of any sent with the same
    /// deduplication id in the five minutes before, even one deleted since.
    #[test]
    fn replays_and_dead_letters_are_no_duplicates_of_their_original() {
        let record = |headers: &[(&str, &str)]| Record {
            key: Some(b"k".to_vec()),
            headers: headers
                .iter()
                .map(|(name, value)| (name.to_string(), value.as_bytes().to_vec()))
                .collect(),
            payload: b"{}".to_vec(),
        };
        let id = |record: &Record| {
            entry(0, record, true, 0)
                .ok()
                .and_then(|e| e.message_deduplication_id().map(str::to_string))
        };
        let original = record(&[(HEADER_MESSAGE_ID, "m1")]);
        let replayed = record(&[(HEADER_MESSAGE_ID, "m1"), (HEADER_REPLAYS, "1")]);
        let for_hook = record(&[(HEADER_MESSAGE_ID, "m1"), (HEADER_DLQ_TARGET, "hook")]);
        let for_db = record(&[(HEADER_MESSAGE_ID, "m1"), (HEADER_DLQ_TARGET, "db")]);
        let ids: HashSet<_> = [&original, &replayed, &for_hook, &for_db]
            .into_iter()
            .map(id)
            .collect();
        assert_eq!(ids.len(), 4, "{ids:?}");
        assert_eq!(id(&original).as_deref(), Some("m1"));
    }
}
