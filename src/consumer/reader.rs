//! The consumer's main loop: reads the log as its group, hands each message to a
//! lane (or, when it is delayed, to the backend to hold), and commits the cursor up to
//! the lowest message still in flight.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::info;

use super::recorder::Outcomes;
use super::{COMMIT_EVERY, Consumer, Role};
use crate::component::{Backoff, Stopped, keep_trying, sleep_unless_stopped};
use crate::consumer::config::Order;
use crate::message::now_ms;
use crate::message::{HEADER_DELIVER_AT, StoredRecord};
use crate::producer::BackendError;

/// Messages waiting per lane; with the lanes, bounds what delivery holds in memory.
pub(super) const LANE_DEPTH: usize = 256;

impl Consumer {
    /// Reads the log and hands each message to a lane; commits the cursor up to the
    /// lowest offset still in flight. Delayed messages are scheduled, and delivered by
    /// their own task when due. Ends `Ok` once the namespace stops, after the lanes
    /// finished what they hold and the cursor is committed; or with the error of a read
    /// that failed, abandoning what is in flight (it is delivered again from the
    /// cursor).
    pub(super) async fn run(
        self: Arc<Self>,
        started: &std::sync::atomic::AtomicBool,
    ) -> Result<(), BackendError> {
        let mut subscription = self.backend.subscribe(&self.group).await?;
        started.store(true, std::sync::atomic::Ordering::Release);
        info!(namespace = %self.namespace, from = subscription.position(), lanes = self.lanes, "Delivery started.");
        // Dropped (the tasks aborted) when the run fails.
        let mut helpers = tokio::task::JoinSet::new();
        self.committed.send_replace(subscription.position());
        if self.role != Role::Target {
            helpers.spawn(self.clone().deliver_delayed());
        }
        let (done_tx, mut done) = mpsc::unbounded_channel::<u64>();
        // Lanes hand what they delivered to the recorder, which records it in the
        // status store and only then reports the offsets done: a lane goes on with its
        // next run meanwhile.
        let (outcomes_tx, outcomes_rx) = mpsc::channel::<Outcomes>(self.lanes * 2);
        let mut lanes = Vec::with_capacity(self.lanes);
        let mut lane_tasks = tokio::task::JoinSet::new();
        for _ in 0..self.lanes {
            let (tx, rx) = mpsc::channel::<StoredRecord>(LANE_DEPTH);
            lanes.push(tx);
            let (consumer, outcomes) = (self.clone(), outcomes_tx.clone());
            lane_tasks.spawn(consumer.lane(rx, outcomes));
        }
        drop(outcomes_tx);
        helpers.spawn(self.clone().record_outcomes(outcomes_rx, done_tx));
        let mut in_flight = BTreeSet::new();
        // Whether a message read since the last commit went to a lane or was held as
        // delayed; if not, the reads since only passed messages over, which reading
        // them again after a crash passes over again.
        let mut handed_on = false;
        let mut read_up_to = subscription.position();
        let mut committed = read_up_to;
        let mut last_commit = tokio::time::Instant::now();
        // A commit that failed is tried again no sooner than this.
        let mut commit_backoff = Backoff::default();
        let mut next_commit = last_commit;
        // A read that did not fill a batch waits `linger` before the next one, so that
        // under load each read takes many records rather than one group commit's few.
        let mut next_read = tokio::time::Instant::now();
        let mut next_lane = 0usize;
        let stopped = self.stopped.clone();
        let result = loop {
            let watermark = in_flight.first().copied().unwrap_or(read_up_to);
            let now = tokio::time::Instant::now();
            let commit_due = watermark > committed
                && now >= next_commit
                && ((handed_on && in_flight.is_empty()) || now >= last_commit + COMMIT_EVERY);
            if commit_due {
                // A cursor that cannot be written (a full disk, a broker away) holds
                // delivery to nothing: it goes on, and the commit is tried again.
                match subscription.commit(watermark).await {
                    Ok(()) => {
                        committed = watermark;
                        handed_on = false;
                        self.committed.send_replace(committed);
                        last_commit = tokio::time::Instant::now();
                        next_commit = last_commit;
                        commit_backoff.reset();
                        self.health.cursor.recovered();
                    }
                    Err(e) => {
                        self.health
                            .cursor
                            .degraded(&format!("committing the cursor: {e}"));
                        next_commit = tokio::time::Instant::now() + commit_backoff.wait();
                    }
                }
            }
            tokio::select! {
                biased;
                () = stopped.wait() => break Ok(()),
                Some(offset) = done.recv() => {
                    in_flight.remove(&offset);
                }
                _ = tokio::time::sleep_until(next_commit.max(last_commit + COMMIT_EVERY)), if watermark > committed => {}
                records = async {
                    tokio::time::sleep_until(next_read).await;
                    subscription.next_batch(self.batch_size).await
                } => {
                    let records = match records {
                        Ok(records) => records,
                        Err(e) => break Err(e),
                    };
                    self.health.reading.recovered();
                    next_read = tokio::time::Instant::now()
                        + if records.len() < self.batch_size { self.linger } else { Duration::ZERO };
                    let Some(next) = records.last().map(|r| r.offset + 1) else {
                        continue;
                    };
                    let now = now_ms();
                    let mut delayed = Vec::new();
                    let mut lost_lane = false;
                    // Messages free to go anywhere take one lane per read, so that the
                    // lane's run is the whole read: a full batch for the targets.
                    next_lane = (next_lane + 1) % self.lanes;
                    for record in records {
                        let due = due_ms(&record).filter(|due| *due > now);
                        match (self.role, due) {
                            // The delayed messages' reader holds them and delivers them
                            // to every target; a target's own reader passes them, and
                            // that reader passes every other message.
                            (Role::Target, Some(_)) | (Role::Delays, None) => continue,
                            (_, Some(due)) => {
                                delayed.push((record, due));
                                continue;
                            }
                            (_, None) => {}
                        }
                        let lane = self.lane_of(&record, next_lane);
                        in_flight.insert(record.offset);
                        handed_on = true;
                        // Waits while the lane is full: the backlog stays on disk.
                        if lanes[lane].send(record).await.is_err() {
                            lost_lane = true;
                            break;
                        }
                    }
                    if lost_lane {
                        if self.stopped.is_stopping() {
                            break Ok(());
                        }
                        break Err(BackendError::Unavailable("a delivery lane ended".into()));
                    }
                    if !delayed.is_empty() {
                        if self.schedule(delayed).await.is_err() {
                            break Ok(());
                        }
                        handed_on = true;
                    }
                    read_up_to = next;
                }
            }
        };
        // A failed run abandons what is in flight (the tasks are aborted when
        // `helpers` and `lane_tasks` drop): it is delivered again from the cursor.
        result?;
        // Stopping: the lanes finish or abandon the message in hand; what completed is
        // committed, the rest is delivered again after the next start.
        drop(lanes);
        while lane_tasks.join_next().await.is_some() {}
        while helpers.join_next().await.is_some() {}
        while let Ok(offset) = done.try_recv() {
            in_flight.remove(&offset);
        }
        let watermark = in_flight.first().copied().unwrap_or(read_up_to);
        if watermark > committed {
            match subscription.commit(watermark).await {
                Ok(()) => {
                    self.committed.send_replace(watermark);
                }
                Err(e) => self
                    .health
                    .cursor
                    .degraded(&format!("committing the cursor at stop: {e}")),
            }
        }
        Ok(())
    }

    /// Has the backend hold delayed messages, trying again while it fails. `Stopped`
    /// when the namespace stopped first.
    pub(super) async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), Stopped> {
        let what = "holding delayed messages";
        keep_trying(&self.health.delays, true, what, &self.stopped, || {
            self.backend.schedule(delayed.clone())
        })
        .await
    }

    /// Waits `wait`; `Stopped` at once when the namespace stops meanwhile.
    pub(super) async fn sleep(&self, wait: Duration) -> Result<(), Stopped> {
        sleep_unless_stopped(wait, &self.stopped).await
    }

    /// The lane a message goes to: by its key's hash with `order = "per_key"` (so one
    /// key's messages keep their order), else the lane of the current read.
    pub(super) fn lane_of(&self, record: &StoredRecord, read_lane: usize) -> usize {
        match (&record.key, self.order) {
            // CRC32C: stable across versions and machines, so the lane of a key is too.
            (Some(key), Order::PerKey) => crc32c::crc32c(key) as usize % self.lanes,
            _ => read_lane,
        }
    }
}

/// When a delayed message is due (milliseconds since the epoch), if it is delayed.
fn due_ms(record: &StoredRecord) -> Option<u64> {
    record.header(HEADER_DELIVER_AT)?.parse().ok()
}
