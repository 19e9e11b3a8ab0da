//! The dead-letter queue of a namespace on the embedded log: listing its entries and
//! replaying them.
//!
//! An entry is a copy of the message that failed, with `wald-dlq-*` headers saying for
//! which target, after how many attempts, with which first and last errors and when.
//! Replaying appends the message to the namespace's log again, for that target only,
//! with the same ids (so its transaction status follows), and remembers the entry as
//! replayed. Each replay adds one to the message's `wald-replays` header; a message
//! replayed `max_replays` times is not replayed again, so a message that can never be
//! delivered cannot loop forever.
//!
//! A replay runs in a task of its own ([`Replays::spawn`]): it goes on when the request
//! that started it times out or goes away, and the namespace's status shows how far it
//! got ([`ReplayRun`]).

use std::collections::VecDeque;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;
use tracing::{error, info};

use crate::message::{
    DLQ_PREFIX, HEADER_DELIVER_AT, HEADER_DLQ_ATTEMPTS, HEADER_DLQ_FIRST_ERROR,
    HEADER_DLQ_FIRST_FAILED_MS, HEADER_DLQ_LAST_ERROR, HEADER_DLQ_LAST_FAILED_MS,
    HEADER_DLQ_SOURCE_OFFSET, HEADER_DLQ_TARGET, HEADER_REPLAYS, HEADER_TARGETS, Record,
    StoredRecord, now_ms,
};
use crate::producer::{Backend, BackendError, DeadLetter};
use crate::targets::Message;

/// Most entries one list answer holds.
pub const MAX_LIST: usize = 1000;
/// Replays per second when the request names no rate.
const DEFAULT_RATE: u32 = 1000;
/// The fastest replay rate a request may ask for.
pub const MAX_RATE: u32 = 100_000;

/// One dead-letter entry.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DlqEntry {
    /// Its place in the dead-letter log; `from` of the next page starts after it.
    pub dlq_offset: u64,
    pub message_id: String,
    pub transaction_id: String,
    pub key: Option<String>,
    /// The target that gave up on it.
    pub target: String,
    pub attempts: u32,
    pub first_error: String,
    pub last_error: String,
    pub first_failed_at_ms: u64,
    pub last_failed_at_ms: u64,
    /// Its offset in the namespace's log.
    pub source_offset: u64,
    /// How often it was replayed before it came here.
    pub replays: u32,
    /// Whether this entry has been replayed.
    pub replayed: bool,
    /// The payload (JSON, or a base64 string for a binary payload).
    #[schema(value_type = Object)]
    pub payload: serde_json::Value,
}

/// Which entries a list shows.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum EntryState {
    /// Not replayed yet.
    #[default]
    Parked,
    Replayed,
    All,
}

/// `GET .../dlq` query.
#[derive(Clone, Debug, Default, Deserialize, utoipa::IntoParams)]
#[serde(deny_unknown_fields)]
pub struct ListQuery {
    /// Start at this dead-letter offset. Default: the oldest.
    pub from: Option<u64>,
    /// At most this many entries, up to 1000. Default: 100.
    pub limit: Option<usize>,
    /// Only the entries of this target.
    pub target: Option<String>,
    /// `parked` (default), `replayed` or `all`.
    pub state: Option<EntryState>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct DlqPage {
    pub entries: Vec<DlqEntry>,
    /// `from` of the next page, when there may be more.
    pub next_from: Option<u64>,
}

/// `POST .../dlq/replay` body: which entries to replay. Without `ids` or `target`,
/// every parked entry.
#[derive(Clone, Debug, Default, Deserialize, utoipa::ToSchema)]
#[serde(deny_unknown_fields)]
pub struct ReplayRequest {
    /// Replay only the entries of these message ids.
    #[serde(default)]
    pub ids: Option<Vec<String>>,
    /// Replay only the entries of this target.
    #[serde(default)]
    pub target: Option<String>,
    /// Say what would be replayed, and replay nothing.
    #[serde(default)]
    pub dry_run: bool,
    /// Replays per second, 1 to 100000. Default: 1000.
    #[serde(default)]
    #[schema(minimum = 1, maximum = 100000)]
    pub rate_per_second: Option<u32>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayOutcome {
    pub dry_run: bool,
    /// Appended to the log again (or, with `dry_run`, would be).
    pub replayed: Vec<ReplayedEntry>,
    /// Matched, but not replayed, with why.
    pub skipped: Vec<SkippedEntry>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayedEntry {
    pub dlq_offset: u64,
    pub message_id: String,
    pub target: String,
    /// Its new offset in the namespace's log; absent on a dry run.
    pub offset: Option<u64>,
}

#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct SkippedEntry {
    pub dlq_offset: u64,
    pub message_id: String,
    pub reason: String,
}

/// Header `name` as text, empty when it is missing.
fn header<'r>(record: &'r StoredRecord, name: &str) -> &'r str {
    record.header(name).unwrap_or_default()
}

fn number<T: std::str::FromStr + Default>(record: &StoredRecord, name: &str) -> T {
    header(record, name).parse().unwrap_or_default()
}

fn entry(namespace: &str, dead: &DeadLetter) -> DlqEntry {
    let record = &dead.record;
    let message = Message::of_record(namespace, record);
    DlqEntry {
        dlq_offset: record.offset,
        payload: message.payload_json(),
        message_id: message.message_id,
        transaction_id: message.transaction_id,
        key: message.key,
        target: header(record, HEADER_DLQ_TARGET).to_string(),
        attempts: number(record, HEADER_DLQ_ATTEMPTS),
        first_error: header(record, HEADER_DLQ_FIRST_ERROR).to_string(),
        last_error: header(record, HEADER_DLQ_LAST_ERROR).to_string(),
        first_failed_at_ms: number(record, HEADER_DLQ_FIRST_FAILED_MS),
        last_failed_at_ms: number(record, HEADER_DLQ_LAST_FAILED_MS),
        source_offset: number(record, HEADER_DLQ_SOURCE_OFFSET),
        replays: number(record, HEADER_REPLAYS),
        replayed: dead.replayed,
    }
}

/// Entries read from the DLQ per request to the backend.
const SCAN_BATCH: usize = 256;

/// Reads the dead-letter log from `from` on, a chunk at a time, handing each entry to
/// `visit` until it returns false.
async fn scan(
    backend: &dyn Backend,
    from: u64,
    mut visit: impl FnMut(&DeadLetter) -> bool,
) -> Result<(), BackendError> {
    let mut next = from;
    loop {
        let entries = backend.dead_letters(next, SCAN_BATCH).await?;
        let Some(last) = entries.last().map(|e| e.record.offset) else {
            return Ok(());
        };
        for dead in &entries {
            if !visit(dead) {
                return Ok(());
            }
        }
        next = last + 1;
    }
}

/// One page of entries.
pub async fn list(
    namespace: &str,
    backend: &dyn Backend,
    query: &ListQuery,
) -> Result<DlqPage, BackendError> {
    let limit = query.limit.unwrap_or(100).clamp(1, MAX_LIST);
    let state = query.state.unwrap_or_default();
    let mut entries = Vec::new();
    let mut next_from = None;
    scan(backend, query.from.unwrap_or(0), |dead| {
        if entries.len() == limit {
            next_from = Some(dead.record.offset);
            return false;
        }
        let entry = entry(namespace, dead);
        let wanted = query.target.as_ref().is_none_or(|t| *t == entry.target)
            && match state {
                EntryState::Parked => !entry.replayed,
                EntryState::Replayed => entry.replayed,
                EntryState::All => true,
            };
        if wanted {
            entries.push(entry);
        }
        true
    })
    .await?;
    Ok(DlqPage { entries, next_from })
}

/// Replays the parked entries `request` selects, at most `rate_per_second`, counting
/// them in `run`.
pub async fn replay(
    namespace: &str,
    backend: &dyn Backend,
    request: &ReplayRequest,
    max_replays: u32,
    run: &Run,
) -> Result<ReplayOutcome, BackendError> {
    let mut selected = Vec::new();
    scan(backend, 0, |dead| {
        let entry = entry(namespace, dead);
        let wanted = !entry.replayed
            && request.target.as_ref().is_none_or(|t| *t == entry.target)
            && request
                .ids
                .as_ref()
                .is_none_or(|ids| ids.contains(&entry.message_id));
        if wanted {
            selected.push((entry, dead.clone()));
        }
        true
    })
    .await?;
    run.selected.store(selected.len() as u64, Ordering::Relaxed);
    let mut outcome = ReplayOutcome {
        dry_run: request.dry_run,
        replayed: Vec::new(),
        skipped: Vec::new(),
    };
    if !request.dry_run {
        let entries: Vec<DeadLetter> = selected.iter().map(|(_, dead)| dead.clone()).collect();
        backend.begin_replay(&entries).await;
    }
    let result = replay_selected(backend, request, max_replays, selected, &mut outcome, run).await;
    // What the replay held is given back however it ended.
    if !request.dry_run {
        backend.end_replay().await;
    }
    result.map(|()| outcome)
}

/// Replays (or, on a dry run, tells) each selected entry in turn.
async fn replay_selected(
    backend: &dyn Backend,
    request: &ReplayRequest,
    max_replays: u32,
    selected: Vec<(DlqEntry, DeadLetter)>,
    outcome: &mut ReplayOutcome,
    run: &Run,
) -> Result<(), BackendError> {
    let rate = request
        .rate_per_second
        .unwrap_or(DEFAULT_RATE)
        .clamp(1, MAX_RATE);
    let mut pace = tokio::time::interval(Duration::from_secs_f64(1.0 / f64::from(rate)));
    for (entry, dead) in selected {
        let skip = |reason: String| {
            run.skipped.fetch_add(1, Ordering::Relaxed);
            SkippedEntry {
                dlq_offset: entry.dlq_offset,
                message_id: entry.message_id.clone(),
                reason,
            }
        };
        if entry.replays >= max_replays {
            outcome.skipped.push(skip(format!(
                "replayed {} times already, the namespace's `max_replays`",
                entry.replays
            )));
            continue;
        }
        let offset = if request.dry_run {
            None
        } else {
            pace.tick().await;
            if !backend.claim_replay(&dead).await? {
                outcome.skipped.push(skip(
                    "replayed meanwhile, or being replayed by another request".into(),
                ));
                continue;
            }
            let appended = backend.append(vec![again(&dead.record, &entry)]).await?;
            backend.mark_replayed(&dead).await?;
            appended.first_offset
        };
        run.replayed.fetch_add(1, Ordering::Relaxed);
        outcome.replayed.push(ReplayedEntry {
            dlq_offset: entry.dlq_offset,
            message_id: entry.message_id,
            target: entry.target,
            offset,
        });
    }
    Ok(())
}

/// How many replays a namespace's status shows: the running ones and the latest done.
const SHOWN_RUNS: usize = 5;

/// A namespace's replays, running or lately done (kept across reloads).
#[derive(Default)]
pub struct Replays {
    runs: Mutex<VecDeque<Arc<Run>>>,
}

/// One replay: what it selected and how far it got.
#[derive(Default)]
pub struct Run {
    id: String,
    dry_run: bool,
    started_at_ms: u64,
    selected: AtomicU64,
    replayed: AtomicU64,
    skipped: AtomicU64,
    /// When it ended, and its error if it failed.
    ended: Mutex<Option<(u64, Option<String>)>>,
}

/// A replay as the namespace's status and an unfinished replay request show it.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ReplayRun {
    pub id: String,
    /// `running`, `done` or `failed`.
    pub state: &'static str,
    pub dry_run: bool,
    /// Entries the request selected (counted once the DLQ is read).
    pub selected: u64,
    /// Appended to the log again so far (or, on a dry run, would be).
    pub replayed: u64,
    pub skipped: u64,
    pub started_at_ms: u64,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub finished_at_ms: Option<u64>,
    /// Why it stopped, when it failed; entries not replayed stay parked.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
}

impl Replays {
    /// Starts replaying in a task of its own, which outlives the request.
    pub fn spawn(
        &self,
        namespace: String,
        backend: Arc<dyn Backend>,
        request: ReplayRequest,
        max_replays: u32,
    ) -> (Arc<Run>, JoinHandle<Result<ReplayOutcome, BackendError>>) {
        let run = Arc::new(Run {
            id: uuid::Uuid::now_v7().to_string(),
            dry_run: request.dry_run,
            started_at_ms: now_ms(),
            ..Run::default()
        });
        if let Ok(mut runs) = self.runs.lock() {
            runs.push_front(run.clone());
            // The oldest finished ones make room; running ones are always shown.
            while runs.len() > SHOWN_RUNS {
                match runs.iter().rposition(|r| r.finished()) {
                    Some(at) => runs.remove(at),
                    None => break,
                };
            }
        }
        let task = tokio::spawn({
            let run = run.clone();
            async move {
                let result =
                    replay(&namespace, backend.as_ref(), &request, max_replays, &run).await;
                if let Ok(mut ended) = run.ended.lock() {
                    *ended = Some((now_ms(), result.as_ref().err().map(ToString::to_string)));
                }
                let replayed = run.replayed.load(Ordering::Relaxed);
                let skipped = run.skipped.load(Ordering::Relaxed);
                match &result {
                    Ok(_) => {
                        info!(%namespace, replay = %run.id, replayed, skipped, dry_run = run.dry_run, "DLQ replay done.");
                    }
                    Err(e) => {
                        error!(%namespace, replay = %run.id, replayed, skipped, error = %e, "DLQ replay failed; the entries not replayed stay parked.");
                    }
                }
                result
            }
        });
        (run, task)
    }

    /// The running replays and the latest done, newest first.
    pub fn status(&self) -> Vec<ReplayRun> {
        self.runs
            .lock()
            .map(|runs| runs.iter().map(|r| r.status()).collect())
            .unwrap_or_default()
    }
}

impl Run {
    fn finished(&self) -> bool {
        self.ended.lock().map_or(true, |e| e.is_some())
    }

    pub fn status(&self) -> ReplayRun {
        let ended = self.ended.lock().ok().and_then(|e| e.clone());
        ReplayRun {
            id: self.id.clone(),
            state: match &ended {
                None => "running",
                Some((_, None)) => "done",
                Some((_, Some(_))) => "failed",
            },
            dry_run: self.dry_run,
            selected: self.selected.load(Ordering::Relaxed),
            replayed: self.replayed.load(Ordering::Relaxed),
            skipped: self.skipped.load(Ordering::Relaxed),
            started_at_ms: self.started_at_ms,
            finished_at_ms: ended.as_ref().map(|(at, _)| *at),
            error: ended.and_then(|(_, error)| error),
        }
    }
}

/// The message as it goes back into the log: its own headers and ids, for the target
/// that failed only, due now, with one more replay counted.
fn again(record: &StoredRecord, entry: &DlqEntry) -> Record {
    let mut headers: Vec<(String, Vec<u8>)> = record
        .headers
        .iter()
        .filter(|(name, _)| {
            !name.starts_with(DLQ_PREFIX)
                && name != HEADER_TARGETS
                && name != HEADER_REPLAYS
                && name != HEADER_DELIVER_AT
        })
        .cloned()
        .collect();
    headers.push((
        HEADER_TARGETS.to_string(),
        entry.target.clone().into_bytes(),
    ));
    headers.push((
        HEADER_REPLAYS.to_string(),
        (entry.replays + 1).to_string().into_bytes(),
    ));
    Record {
        key: record.key.clone(),
        headers,
        payload: record.payload.clone(),
    }
}
