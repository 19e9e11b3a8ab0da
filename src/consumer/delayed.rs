//! Delayed messages: held by the backend until due, then delivered one at a time by a
//! task of the consumer's own, and forgotten in the backend's index.

use std::sync::Arc;
use std::time::Duration;

use super::Consumer;
use super::lane::InFlight;
use crate::component::{Stopped, keep_trying};
use crate::message::StoredRecord;
use crate::message::now_ms;
use crate::status::TargetUpdate;

/// Longest wait for new records before the delay index is looked at again.
const IDLE_CHECK: Duration = Duration::from_secs(1);

impl Consumer {
    /// Delivers delayed messages as they come due, until the namespace stops.
    pub(super) async fn deliver_delayed(self: Arc<Self>) {
        let stopped = self.stopped.clone();
        loop {
            if self.deliver_due().await.is_err() {
                return;
            }
            let wait = match self.backend.next_due().await {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())),
                Ok(None) => IDLE_CHECK,
                Err(e) => {
                    self.health
                        .delays
                        .degraded(&format!("looking at delayed messages: {e}"));
                    IDLE_CHECK
                }
            }
            .min(IDLE_CHECK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                () = stopped.wait() => return,
            }
        }
    }

    /// Delivers the delayed messages that are due, and forgets them in the index.
    pub(super) async fn deliver_due(&self) -> Result<(), Stopped> {
        let due = match self.backend.due(now_ms(), self.batch_size).await {
            Ok(due) => due,
            Err(e) => {
                self.health
                    .delays
                    .degraded(&format!("taking due delayed messages: {e}"));
                return Ok(());
            }
        };
        if due.is_empty() {
            return Ok(());
        }
        for record in &due {
            let updates = self.deliver_fully(record.clone()).await?;
            self.record_until_done(&updates, record.offset, &self.accepted(record))
                .await?;
        }
        // Delivered, and their outcomes recorded: until the index forgets them they
        // would be delivered again, so keep trying.
        let what = "marking delayed messages delivered";
        keep_trying(&self.health.delays, false, what, &self.stopped, || {
            self.backend.complete(due.clone())
        })
        .await
    }

    /// Delivers a message until every target of it succeeded or dead-lettered it,
    /// waiting out each retry (the delayed messages' path: one message at a time).
    pub(super) async fn deliver_fully(
        &self,
        record: StoredRecord,
    ) -> Result<Vec<TargetUpdate>, Stopped> {
        let mut run = vec![InFlight::new(record, &self.targets)];
        loop {
            let retry_at = self.deliver(&mut run).await?;
            if run[0].pending.is_empty() {
                return Ok(std::mem::take(&mut run[0].updates));
            }
            let due = retry_at
                .values()
                .min()
                .copied()
                .unwrap_or_else(tokio::time::Instant::now);
            let stopped = self.stopped.clone();
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = stopped.wait() => return Err(Stopped),
            }
        }
    }
}
