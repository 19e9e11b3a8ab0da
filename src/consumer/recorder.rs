//! Outcomes into the status store: what the lanes delivered is recorded, at most one
//! write every `STATUS_PACE`, and only then may the cursor pass it.

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;
use tracing::warn;

use super::Consumer;
use crate::component::{Stopped, keep_trying};
use crate::message::StoredRecord;
use crate::status::{MessageStatus, StatusError, TargetUpdate};

/// Shortest time between two writes of delivery outcomes to the status store.
const STATUS_PACE: Duration = Duration::from_millis(50);
/// Longest wait for the status tailer before a status update is written anyway.
const STATUS_WAIT: Duration = Duration::from_secs(5);

/// What a lane delivered: the final state per target of each message of a run, the
/// messages themselves when delivery records them (no status tailer), and the run's
/// offsets.
pub(super) struct Outcomes {
    pub(super) updates: Vec<TargetUpdate>,
    pub(super) accepted: Vec<MessageStatus>,
    pub(super) offsets: Vec<u64>,
}

impl Consumer {
    /// Records what the lanes delivered in the status store, at most one write per
    /// [`STATUS_PACE`], then reports those offsets done so that the cursor may pass
    /// them.
    pub(super) async fn record_outcomes(
        self: Arc<Self>,
        mut outcomes: mpsc::Receiver<Outcomes>,
        done: mpsc::UnboundedSender<u64>,
    ) {
        let mut last_write = tokio::time::Instant::now();
        while let Some(first) = outcomes.recv().await {
            let mut gathered = vec![first];
            // Each write costs the store a sync: gather what comes in for a while.
            while let Ok(Some(more)) =
                tokio::time::timeout_at(last_write + STATUS_PACE, outcomes.recv()).await
            {
                gathered.push(more);
            }
            let up_to = gathered
                .iter()
                .flat_map(|o| o.offsets.last())
                .max()
                .copied()
                .unwrap_or(0);
            let updates: Vec<TargetUpdate> = gathered
                .iter_mut()
                .flat_map(|o| std::mem::take(&mut o.updates))
                .collect();
            let accepted: Vec<MessageStatus> = gathered
                .iter_mut()
                .flat_map(|o| std::mem::take(&mut o.accepted))
                .collect();
            // Stopping with outcomes unrecorded: their offsets are not done, so they
            // are delivered again after the next start.
            if self
                .record_until_done(&updates, up_to, &accepted)
                .await
                .is_err()
            {
                return;
            }
            last_write = tokio::time::Instant::now();
            for offset in gathered.into_iter().flat_map(|o| o.offsets) {
                let _ = done.send(offset);
            }
        }
    }

    /// The status of `record` as accepted, for delivery to record before its
    /// updates when no status tailer does (an update of a message the store does not
    /// have is lost); none with a tailer.
    pub(super) fn accepted(&self, record: &StoredRecord) -> Vec<MessageStatus> {
        if self.status_indexed.is_some() {
            return Vec::new();
        }
        MessageStatus::of_record(record, &self.namespace, &self.all_targets)
            .into_iter()
            .collect()
    }

    /// [`Consumer::record_status`], tried again with backoff until the store took it:
    /// a message's final state is never lost, and the cursor does not pass it before.
    /// `Stopped` when the namespace stops first.
    pub(super) async fn record_until_done(
        &self,
        updates: &[TargetUpdate],
        offset: u64,
        accepted: &[MessageStatus],
    ) -> Result<(), Stopped> {
        let what = "recording outcomes in the status store";
        keep_trying(&self.health.reading, true, what, &self.stopped, || {
            self.record_status(updates, offset, accepted)
        })
        .await
    }

    /// Records target states once the message itself is in the status store: the
    /// status tailer recorded it, or `accepted` records it here (a no-op for a
    /// message already there).
    pub(super) async fn record_status(
        &self,
        updates: &[TargetUpdate],
        offset: u64,
        accepted: &[MessageStatus],
    ) -> Result<(), StatusError> {
        if updates.is_empty() {
            return Ok(());
        }
        if !accepted.is_empty() {
            self.status.record_accepted(accepted).await?;
        }
        if let Some(mut indexed) = self.status_indexed.clone() {
            let stopped = self.stopped.clone();
            tokio::select! {
                _ = indexed.wait_for(|i| *i > offset) => {}
                () = stopped.wait() => {}
                _ = tokio::time::sleep(STATUS_WAIT) => {
                    warn!(namespace = %self.namespace, offset, "The status tailer is behind; recording delivery status anyway.");
                }
            }
        }
        self.status.update_targets(updates).await
    }
}
