//! One pass of a run over the targets: each target gets its messages as one batch; a
//! failure is retried after its backoff or, permanent or the last attempt, parked in
//! the DLQ.

use std::collections::{HashMap, HashSet};

use tracing::{error, warn};

use super::Consumer;
use super::breaker::Permit;
use super::lane::{InFlight, LaneKey};
use super::retry;
use crate::alerts::Alert;
use crate::component::{Stopped, keep_trying};
use crate::message::now_ms;
use crate::message::{
    HEADER_DLQ_ATTEMPTS, HEADER_DLQ_FIRST_ERROR, HEADER_DLQ_FIRST_FAILED_MS, HEADER_DLQ_LAST_ERROR,
    HEADER_DLQ_LAST_FAILED_MS, HEADER_DLQ_SOURCE_OFFSET, HEADER_DLQ_TARGET, HEADER_MESSAGE_ID,
    HEADER_TRANSACTION_ID, Record, StoredRecord,
};
use crate::processing::Processed;
use crate::runtime::counters::Outcome;
use crate::status::{DeliveryState, TargetStatus, TargetUpdate};
use crate::targets::{DeliveryError, Message};
use crate::telemetry::traces;

/// How often a paused target's lanes look whether it was resumed.
const PAUSE_POLL: std::time::Duration = std::time::Duration::from_millis(100);

impl Consumer {
    /// One pass over a run: each target gets its pending messages as one batch, in log
    /// order. A message the target refuses for good, or that used its last attempt,
    /// goes to the DLQ; one that will be retried holds back the rest of its key for
    /// that target, and the batch goes on without them. Returns when each held key may
    /// be tried again.
    pub(super) async fn deliver(
        &self,
        run: &mut [InFlight],
    ) -> Result<HashMap<LaneKey, tokio::time::Instant>, Stopped> {
        let mut retry_at: HashMap<LaneKey, tokio::time::Instant> = HashMap::new();
        let mut hold = |key: LaneKey, due: tokio::time::Instant| {
            retry_at
                .entry(key)
                .and_modify(|at| *at = (*at).max(due))
                .or_insert(due);
        };
        for (name, route) in &self.targets {
            let mut blocked: HashSet<LaneKey> = HashSet::new();
            loop {
                let ready: Vec<usize> = (0..run.len())
                    .filter(|&i| run[i].pending.contains_key(name))
                    .filter(|&i| !blocked.contains(&self.lane_key(&run[i].record)))
                    .collect();
                if ready.is_empty() {
                    break;
                }
                // What the target receives, if anything: a message filtered out is
                // done with; one its processing fails on goes to the DLQ.
                let mut chosen = Vec::with_capacity(ready.len());
                for i in ready {
                    let message = || Message::of_record(&self.namespace, &run[i].record);
                    match route.processing.apply(message()) {
                        Processed::Deliver(processed) => chosen.push((i, processed)),
                        Processed::Skipped(by) => {
                            let message = message();
                            self.counters.record(name, Outcome::Skipped);
                            run[i].pending.remove(name);
                            let mut update =
                                self.update(&message, name, DeliveryState::Skipped, 0, None);
                            update.status.last_error = Some(format!("skipped by {by}"));
                            run[i].updates.push(update);
                        }
                        Processed::Failed(error) => {
                            let message = message();
                            let e = DeliveryError::permanent(error);
                            let at_ms = now_ms();
                            let tries = run[i].pending.get(name);
                            let attempts = tries.map_or(0, |t| t.attempts);
                            let first = tries
                                .and_then(|t| t.first_error.clone())
                                .unwrap_or_else(|| (e.message.clone(), at_ms));
                            self.give_up(&mut run[i], name, &message, attempts, &first, &e, at_ms)
                                .await?;
                        }
                    }
                }
                if chosen.is_empty() {
                    continue;
                }
                // Paused, or an open circuit: nothing is tried, and what waits is no
                // attempt.
                let permit = if self.pauses.holds(name) {
                    Permit::Wait(tokio::time::Instant::now() + PAUSE_POLL)
                } else {
                    route.breaker.permit()
                };
                let probe = match permit {
                    Permit::Deliver => false,
                    Permit::Probe => {
                        chosen.truncate(1);
                        true
                    }
                    Permit::Wait(until) => {
                        for (i, _) in &chosen {
                            hold(self.lane_key(&run[*i].record), until);
                        }
                        break;
                    }
                };
                // The target's own bounds: at most `max_in_flight` messages at once
                // over its lanes, at most `rate_limit` a second.
                let _in_flight = match &route.in_flight {
                    Some(bound) => {
                        chosen.truncate(bound.available_permits().max(1));
                        let permits = chosen.len() as u32;
                        Some(
                            bound
                                .clone()
                                .acquire_many_owned(permits)
                                .await
                                .map_err(|_| Stopped)?,
                        )
                    }
                    None => None,
                };
                if let Some(rate) = &route.rate {
                    chosen.truncate(rate.burst().max(1) as usize);
                    while let Err(wait) = rate.take(chosen.len() as u32, std::time::Instant::now())
                    {
                        self.sleep(wait).await?;
                    }
                }
                let (chosen, mut batch): (Vec<usize>, Vec<Message>) = chosen.into_iter().unzip();
                let spans: Vec<traces::Span> = chosen
                    .iter()
                    .zip(&mut batch)
                    .map(|(&i, message)| {
                        let attempt = run[i].pending.get(name).map_or(0, |t| t.attempts) + 1;
                        let (span, trace) = traces::delivery(
                            &message.namespace,
                            name,
                            route.target.kind(),
                            &message.message_id,
                            message.trace.take(),
                        );
                        span.attribute("wald.attempt", i64::from(attempt));
                        message.trace = trace;
                        span
                    })
                    .collect();
                let result = tokio::select! {
                    result = route.target.deliver_batch(&batch) => result,
                    // A probe that cannot end lets another lane probe.
                    () = self.stopped.wait(), if probe => {
                        route.breaker.abandoned();
                        return Err(Stopped);
                    }
                };
                let reached = match &result {
                    Ok(()) => batch.len(),
                    Err(failed) => failed.delivered,
                };
                for (k, span) in spans.into_iter().enumerate() {
                    match (&result, k.cmp(&reached)) {
                        (Err(failed), std::cmp::Ordering::Equal) => {
                            span.end(Some(&failed.error.message));
                        }
                        (_, std::cmp::Ordering::Greater) => {
                            span.attribute("wald.outcome", "not_attempted");
                            span.end(None);
                        }
                        _ => span.end(None),
                    }
                }
                if reached > 0 {
                    route.breaker.succeeded();
                    self.counters
                        .record(name, Outcome::Delivered(reached as u64));
                }
                for (&i, message) in chosen[..reached].iter().zip(&batch) {
                    let tries = run[i].pending.remove(name).map_or(0, |t| t.attempts);
                    let update =
                        self.update(message, name, DeliveryState::Delivered, tries + 1, None);
                    run[i].updates.push(update);
                }
                let Err(failed) = result else {
                    break;
                };
                let (i, message, e) = (chosen[reached], &batch[reached], &failed.error);
                let key = self.lane_key(&run[i].record);
                if let (true, Some(wait)) = (e.retriable, e.retry_after) {
                    route.breaker.asked_to_wait(wait);
                }
                // A retriable failure is the target's as much as the message's: the
                // breaker counts it; one while the target is known to be down (a
                // probe) is not the message's attempt. The message's last attempt is
                // its own failure: it goes to the DLQ and counts toward no opening.
                let last = run[i]
                    .pending
                    .get(name)
                    .is_some_and(|t| t.attempts + 1 >= route.policy.max_attempts);
                if e.retriable && !route.breaker.failed(&e.message, e.retry_after, last) {
                    let (error, at_ms) = (e.message.as_str(), now_ms());
                    self.counters
                        .record(name, Outcome::Retried { error, at_ms });
                    if let Permit::Wait(until) = route.breaker.permit() {
                        hold(key.clone(), until);
                    }
                    blocked.insert(key);
                    continue;
                }
                if !e.retriable {
                    route.breaker.succeeded();
                }
                let failed_at = now_ms();
                let Some(tries) = run[i].pending.get_mut(name) else {
                    break;
                };
                tries.attempts += 1;
                let attempts = tries.attempts;
                let first = tries
                    .first_error
                    .get_or_insert_with(|| (e.message.clone(), failed_at))
                    .clone();
                let (error, at_ms) = (e.message.as_str(), failed_at);
                if !e.retriable || last {
                    self.give_up(&mut run[i], name, message, attempts, &first, e, failed_at)
                        .await?;
                    continue;
                }
                warn!(namespace = %self.namespace, target = %name, message_id = %message.message_id, attempt = attempts, error = %e, "Delivery failed; retrying.");
                self.counters
                    .record(name, Outcome::Retried { error, at_ms });
                let update = self.update(message, name, DeliveryState::Retrying, attempts, Some(e));
                let accepted = self.accepted(&run[i].record);
                // What a retry shows is not kept at any cost: the final state is.
                let _ = self
                    .record_status(&[update], message.offset, &accepted)
                    .await;
                let due = tokio::time::Instant::now()
                    + retry::next_wait(&route.policy, attempts, e.retry_after);
                hold(key.clone(), due);
                blocked.insert(key);
                // A target that is down fails every key in turn: stopping does not
                // wait for the rest of the pass.
                if self.stopped.is_stopping() {
                    return Err(Stopped);
                }
            }
        }
        Ok(retry_at)
    }

    /// Gives up on `flight` at target `name`: it goes to the DLQ with `e`, and its
    /// final state is recorded.
    #[allow(clippy::too_many_arguments)]
    async fn give_up(
        &self,
        flight: &mut InFlight,
        name: &str,
        message: &Message,
        attempts: u32,
        first: &(String, u64),
        e: &DeliveryError,
        at_ms: u64,
    ) -> Result<(), Stopped> {
        let error = e.message.as_str();
        self.counters
            .record(name, Outcome::DeadLettered { error, at_ms });
        self.dead_letter(&flight.record, name, attempts, first, e, at_ms)
            .await?;
        flight.pending.remove(name);
        let update = self.update(
            message,
            name,
            DeliveryState::DeadLettered,
            attempts,
            Some(e),
        );
        flight.updates.push(update);
        Ok(())
    }

    /// Appends the message to the dead-letter log with why it is there. Keeps trying
    /// while the DLQ fails: the message must not be lost.
    pub(super) async fn dead_letter(
        &self,
        record: &StoredRecord,
        target: &str,
        attempts: u32,
        first: &(String, u64),
        last: &DeliveryError,
        last_ms: u64,
    ) -> Result<(), Stopped> {
        let text = |name| record.header(name).unwrap_or_default().to_string();
        self.alerts.send(Alert::DeadLettered {
            namespace: self.namespace.clone(),
            target: target.to_string(),
            message_id: text(HEADER_MESSAGE_ID),
            transaction_id: text(HEADER_TRANSACTION_ID),
            attempts,
            error: last.message.clone(),
            kept: self.dlq_enabled,
        });
        if !self.dlq_enabled {
            error!(namespace = %self.namespace, target, offset = record.offset, error = %last, "Message dropped after its last attempt: the DLQ is disabled.");
            return Ok(());
        }
        error!(namespace = %self.namespace, target, offset = record.offset, attempts, error = %last, "Message sent to the DLQ.");
        let mut headers = record.headers.clone();
        headers.extend([
            (HEADER_DLQ_TARGET.to_string(), target.as_bytes().to_vec()),
            (
                HEADER_DLQ_ATTEMPTS.to_string(),
                attempts.to_string().into_bytes(),
            ),
            (
                HEADER_DLQ_FIRST_ERROR.to_string(),
                first.0.clone().into_bytes(),
            ),
            (
                HEADER_DLQ_FIRST_FAILED_MS.to_string(),
                first.1.to_string().into_bytes(),
            ),
            (
                HEADER_DLQ_LAST_ERROR.to_string(),
                last.message.clone().into_bytes(),
            ),
            (
                HEADER_DLQ_LAST_FAILED_MS.to_string(),
                last_ms.to_string().into_bytes(),
            ),
            (
                HEADER_DLQ_SOURCE_OFFSET.to_string(),
                record.offset.to_string().into_bytes(),
            ),
        ]);
        let entry = Record {
            key: record.key.clone(),
            headers,
            payload: record.payload.clone(),
        };
        keep_trying(
            &self.health.dlq,
            true,
            "appending to the DLQ",
            &self.stopped,
            || self.backend.dead_letter(vec![entry.clone()]),
        )
        .await
    }

    pub(super) fn update(
        &self,
        message: &Message,
        target: &str,
        state: DeliveryState,
        attempts: u32,
        error: Option<&DeliveryError>,
    ) -> TargetUpdate {
        TargetUpdate {
            transaction_id: message.transaction_id.clone(),
            message_id: message.message_id.clone(),
            target: target.to_string(),
            status: TargetStatus {
                state,
                attempts,
                last_error: error.map(|e| e.message.clone()),
                updated_at_ms: now_ms(),
            },
        }
    }
}
