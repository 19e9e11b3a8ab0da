//! The status tailer of one namespace: reads the namespace's log as consumer group
//! [`TAILER_GROUP`], records each message in the status store as pending for its
//! targets, and commits its cursor only after the store confirmed. Since the cursor
//! never passes a message the store has not kept, a crash at any point is repaired by
//! reading again from the cursor; recording a message twice changes nothing.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::info;

use crate::component::{Backoff, Component, Stopped, keep_trying, sleep_unless_stopped};
use crate::message::TAILER_GROUP;
use crate::producer::{Backend, BackendError, Subscription};
use crate::shutdown::{Shutdown, Stopping};
use crate::status::{MessageStatus, StatusStore};

/// Records read from the log per store write.
const BATCH: usize = 1024;
/// Shortest time between two store writes when the tailer has caught up: each costs
/// the store's sync and the cursor's, so it gathers what comes in meanwhile instead of
/// competing with the log's own syncs. A tailer that is behind (its last read was a
/// full batch) does not wait. A lookup waits for the tailer, so this bounds how much
/// longer a lookup of a brand-new write can take.
const PACE: Duration = Duration::from_millis(50);

/// A running tailer: how far it has indexed, and how to stop it.
pub struct Tailer {
    /// The next offset the tailer will index; everything below it is in the store.
    pub indexed: watch::Receiver<u64>,
    stop: Shutdown,
    task: JoinHandle<()>,
}

impl Tailer {
    /// Starts tailing the log of `namespace` on `backend`, whose messages go to
    /// `targets` unless a message names its own; it reports its failures to `health`.
    pub fn start(
        backend: Arc<dyn Backend>,
        namespace: String,
        targets: Vec<String>,
        store: Arc<StatusStore>,
        health: Component,
    ) -> Self {
        // Nothing is indexed until the tailer has subscribed and knows its cursor.
        let (indexed_tx, indexed) = watch::channel(0);
        let stop = Shutdown::new();
        let stopped = stop.stopping();
        let task = tokio::spawn(run(Run {
            backend,
            namespace,
            targets,
            store,
            indexed: indexed_tx,
            stopped,
            health,
        }));
        Self {
            indexed,
            stop,
            task,
        }
    }

    /// Stops after the batch in hand is recorded and committed.
    pub async fn stop(self) {
        self.stop.stop();
        let _ = self.task.await;
    }
}

/// What one tailer works with.
struct Run {
    backend: Arc<dyn Backend>,
    namespace: String,
    targets: Vec<String>,
    store: Arc<StatusStore>,
    indexed: watch::Sender<u64>,
    stopped: Stopping,
    health: Component,
}

/// Tails the log until stopped. A read that fails (a corrupt frame, an I/O error) is
/// tried again with backoff from the tailer's cursor, the failure shown meanwhile.
async fn run(run: Run) {
    let mut backoff = Backoff::default();
    loop {
        let subscribed = tokio::select! {
            subscribed = run.backend.subscribe(TAILER_GROUP) => subscribed,
            () = run.stopped.wait() => return,
        };
        let failed = match subscribed {
            Ok(mut subscription) => {
                run.indexed.send_replace(subscription.position());
                match run.tail(subscription.as_mut(), &mut backoff).await {
                    Ok(()) => return,
                    Err(e) => e,
                }
            }
            Err(e) => e,
        };
        run.health.stalled(&format!("reading the log: {failed}"));
        if sleep_unless_stopped(backoff.wait(), &run.stopped)
            .await
            .is_err()
        {
            return;
        }
    }
}

impl Run {
    /// Reads, records and commits until stopped (`Ok`) or a read fails.
    async fn tail(
        &self,
        subscription: &mut dyn Subscription,
        backoff: &mut Backoff,
    ) -> Result<(), BackendError> {
        let mut last_write = tokio::time::Instant::now();
        let mut behind = false;
        loop {
            if !behind {
                tokio::select! {
                    _ = tokio::time::sleep_until(last_write + PACE) => {}
                    () = self.stopped.wait() => return Ok(()),
                }
            }
            let records = tokio::select! {
                records = subscription.next_batch(BATCH) => records?,
                () = self.stopped.wait() => return Ok(()),
            };
            behind = records.len() == BATCH;
            let Some(next) = records.last().map(|r| r.offset + 1) else {
                self.health.recovered();
                continue;
            };
            let messages: Vec<MessageStatus> = records
                .iter()
                .filter_map(|r| MessageStatus::of_record(r, &self.namespace, &self.targets))
                .collect();
            last_write = tokio::time::Instant::now();
            if !messages.is_empty() && self.record(&messages).await.is_err() {
                return Ok(());
            }
            match subscription.commit(next).await {
                // The messages are in the store: a cursor left behind only means
                // indexing them again after a restart.
                Err(e) => self.health.degraded(&format!("committing its cursor: {e}")),
                Ok(()) => {
                    self.health.recovered();
                    backoff.reset();
                }
            }
            let _ = self.indexed.send(next);
        }
    }

    /// Records `messages`, trying again with backoff while the store fails.
    async fn record(&self, messages: &[MessageStatus]) -> Result<(), Stopped> {
        let what = "recording messages in the status store";
        keep_trying(&self.health, true, what, &self.stopped, || {
            self.store.record_accepted(messages)
        })
        .await
        .inspect_err(|_| {
            info!(namespace = %self.namespace, "Status tailer stopped while the store was failing; it resumes from its cursor.");
        })
    }
}
