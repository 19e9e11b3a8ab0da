//! The status tailer of one namespace: reads the namespace's log as consumer group
//! [`TAILER_GROUP`], records each message in the status store as pending for its
//! targets, and commits its cursor only after the store confirmed. Since the cursor
//! never passes a message the store has not kept, a crash at any point is repaired by
//! reading again from the cursor; recording a message twice changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::{MessageStatus, StatusStore, TAILER_GROUP};
use crate::backend::embedded::{Log, LogError, blocking};

/// Records read from the log per store write.
const BATCH: usize = 1024;
/// Shortest time between two store writes when the tailer has caught up: each costs
/// the store's sync and the cursor's, so it gathers what comes in meanwhile instead of
/// competing with the log's own syncs. A tailer that is behind (its last read was a
/// full batch) does not wait. A lookup waits for the tailer, so this bounds how much
/// longer a lookup of a brand-new write can take.
const PACE: Duration = Duration::from_millis(50);
/// Longest wait between tries when the store fails.
const MAX_BACKOFF: Duration = Duration::from_secs(30);

/// A running tailer: how far it has indexed, and how to stop it.
pub struct Tailer {
    /// The next offset the tailer will index; everything below it is in the store.
    pub indexed: watch::Receiver<u64>,
    stop: watch::Sender<bool>,
    task: JoinHandle<()>,
}

impl Tailer {
    /// Starts tailing `log` of `namespace`, whose messages go to `targets` unless a
    /// message names its own.
    pub fn start(
        log: Log,
        namespace: String,
        targets: Vec<String>,
        store: Arc<StatusStore>,
    ) -> Result<Self, LogError> {
        let subscription = log.subscribe(TAILER_GROUP)?;
        let (indexed_tx, indexed) = watch::channel(subscription.position());
        let (stop, stopped) = watch::channel(false);
        let task = tokio::spawn(run(Run {
            log,
            subscription,
            namespace,
            targets,
            store,
            indexed: indexed_tx,
            stopped,
        }));
        Ok(Self {
            indexed,
            stop,
            task,
        })
    }

    /// Stops after the batch in hand is recorded and committed.
    pub async fn stop(self) {
        let _ = self.stop.send(true);
        let _ = self.task.await;
    }
}

/// What one tailer works with.
struct Run {
    log: Log,
    subscription: crate::backend::embedded::Subscription,
    namespace: String,
    targets: Vec<String>,
    store: Arc<StatusStore>,
    indexed: watch::Sender<u64>,
    stopped: watch::Receiver<bool>,
}

async fn run(mut run: Run) {
    let mut last_write = tokio::time::Instant::now();
    let mut behind = false;
    loop {
        if !behind {
            tokio::select! {
                _ = tokio::time::sleep_until(last_write + PACE) => {}
                _ = run.stopped.wait_for(|stop| *stop) => return,
            }
        }
        let records = tokio::select! {
            records = run.subscription.next_batch(BATCH) => records,
            _ = run.stopped.wait_for(|stop| *stop) => return,
        };
        let records = match records {
            Ok(records) => records,
            Err(e) => {
                // A closed or corrupt log: the namespace reports it; nothing more to index.
                warn!(namespace = %run.namespace, error = %e, "Status tailer stopped reading the log.");
                return;
            }
        };
        behind = records.len() == BATCH;
        let Some(next) = records.last().map(|r| r.offset + 1) else {
            continue;
        };
        let messages: Vec<MessageStatus> = records
            .iter()
            .filter_map(|r| MessageStatus::of_record(r, &run.namespace, &run.targets))
            .collect();
        last_write = tokio::time::Instant::now();
        if !messages.is_empty() && !record(&run, messages).await {
            return;
        }
        let log = run.log.clone();
        if let Err(e) = blocking(move || log.commit(TAILER_GROUP, next)).await {
            warn!(namespace = %run.namespace, error = %e, "Status tailer could not commit its cursor; it will index these messages again after a restart.");
        }
        let _ = run.indexed.send(next);
    }
}

/// Records `messages`, trying again with backoff while the store fails. False when the
/// tailer was stopped first.
async fn record(run: &Run, messages: Vec<MessageStatus>) -> bool {
    let mut backoff = Duration::from_millis(100);
    let mut stopped = run.stopped.clone();
    loop {
        match run.store.record_accepted(messages.clone()).await {
            Ok(()) => return true,
            Err(e) => {
                warn!(namespace = %run.namespace, error = %e, retry_in = ?backoff, "Status store refused messages; trying again.");
                tokio::select! {
                    _ = tokio::time::sleep(backoff) => {}
                    _ = stopped.wait_for(|stop| *stop) => {
                        info!(namespace = %run.namespace, "Status tailer stopped while the store was failing; it resumes from its cursor.");
                        return false;
                    }
                }
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}
