//! Alerts: a small signed JSON event posted to `[alerts] url` when a message is
//! dead-lettered (or dropped, with the DLQ disabled), a target's circuit opens or
//! closes, or a pipeline file is quarantined.
//!
//! Each alert is posted as a Standard Webhooks payload, `{"type", "timestamp",
//! "data"}`, signed like an `http` target's requests. In each `window` the first
//! `burst` alerts are posted one by one; the rest are counted by type, namespace and
//! target and posted as one `alerts.summary` when the window ends, so that a storm is
//! a few posts. A post that fails is tried again a few times, then counted and
//! reported as the `alerts` part's health. Alerts tell; they are not the record: what
//! happened stays in status, metrics and the DLQ whether an alert got through or not.
//! Nothing waits for an alert: a full queue drops it and counts it.

pub mod config;

use std::collections::{BTreeMap, VecDeque};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use serde::Serialize;
use serde_json::{Value, json};
use tokio::sync::mpsc;
use tokio::time::Instant;
use tracing::warn;

use crate::component::Component;
use crate::config::diagnostic::Diagnostic;
use crate::message::now_ms;
use crate::targets::Message;
use crate::targets::http::HttpTarget;
use config::AlertsConfig;

/// Alerts waiting to be looked at; beyond, new ones are dropped.
const QUEUE: usize = 1024;
/// Posts waiting while one is under way; beyond, new ones are dropped.
const OUTBOX: usize = 100;
/// Tries of one post.
const TRIES: u32 = 3;
/// Held alerts shown as they were in a summary.
const EXAMPLES: usize = 3;

/// Something an operator should hear of.
#[derive(Clone, Debug, Serialize)]
#[serde(tag = "type", content = "data")]
pub enum Alert {
    /// A message failed its last attempt at a target. `kept` is false when the DLQ is
    /// disabled: the message was dropped.
    #[serde(rename = "message.dead_lettered")]
    DeadLettered {
        namespace: String,
        target: String,
        message_id: String,
        transaction_id: String,
        attempts: u32,
        error: String,
        kept: bool,
    },
    /// A target failed again and again: nothing is tried there for `cool_down_ms`.
    #[serde(rename = "target.circuit_opened")]
    CircuitOpened {
        namespace: String,
        target: String,
        error: String,
        cool_down_ms: u64,
    },
    /// A target took a probe delivery after `open_ms` open.
    #[serde(rename = "target.circuit_closed")]
    CircuitClosed {
        namespace: String,
        target: String,
        open_ms: u64,
    },
    /// A reload rejected a pipeline file; the namespace keeps its last good
    /// configuration when `keeps_running`.
    #[serde(rename = "pipeline.quarantined")]
    Quarantined {
        file: String,
        namespace: Option<String>,
        keeps_running: bool,
        errors: Vec<Diagnostic>,
    },
}

impl Alert {
    /// What a summary counts it under: its type, namespace and target.
    fn subject(&self) -> (&'static str, String, String) {
        let (kind, namespace, target) = match self {
            Alert::DeadLettered {
                namespace, target, ..
            } => ("message.dead_lettered", Some(namespace), Some(target)),
            Alert::CircuitOpened {
                namespace, target, ..
            } => ("target.circuit_opened", Some(namespace), Some(target)),
            Alert::CircuitClosed {
                namespace, target, ..
            } => ("target.circuit_closed", Some(namespace), Some(target)),
            Alert::Quarantined { namespace, .. } => {
                ("pipeline.quarantined", namespace.as_ref(), None)
            }
        };
        let text = |s: Option<&String>| s.cloned().unwrap_or_default();
        (kind, text(namespace), text(target))
    }

    /// The body posted: the alert with the time it happened.
    fn body(&self) -> Value {
        let mut body = serde_json::to_value(self).unwrap_or_default();
        body["timestamp"] = json!(rfc3339(now_ms()));
        body
    }
}

fn rfc3339(ms: u64) -> String {
    humantime::format_rfc3339_millis(std::time::UNIX_EPOCH + Duration::from_millis(ms)).to_string()
}

/// Alerts posted, held for a summary, failed and dropped since start.
#[derive(Default)]
pub struct AlertCounts {
    /// Posts the endpoint took (alerts and summaries).
    pub posted: AtomicU64,
    /// Alerts beyond the burst, counted in a summary.
    pub held: AtomicU64,
    /// Posts given up after their last try.
    pub failed: AtomicU64,
    /// Alerts dropped because the queue was full.
    pub dropped: AtomicU64,
}

/// Where alerts are sent: a queue to the task that posts them, or nowhere when
/// `[alerts]` is not configured. Clones share the queue.
#[derive(Clone, Default)]
pub struct Alerts {
    queue: Option<mpsc::Sender<Alert>>,
    pub counts: Arc<AlertCounts>,
}

impl Alerts {
    /// Starts the task that posts alerts to `config.url`, reporting its failures to
    /// `health`. It ends once every clone of the returned [`Alerts`] is dropped.
    pub fn start(config: &AlertsConfig, health: Component) -> Result<Self, String> {
        let webhook = HttpTarget::new(&config.webhook()).map_err(|e| e.message)?;
        let (queue, alerts) = mpsc::channel(QUEUE);
        let counts = Arc::new(AlertCounts::default());
        let poster = Poster {
            webhook,
            counts: counts.clone(),
            health,
        };
        let window = Window::new(config.burst, config.window.get());
        tokio::spawn(poster.run(alerts, window));
        Ok(Self {
            queue: Some(queue),
            counts,
        })
    }

    /// Sends `alert`, without waiting.
    pub fn send(&self, alert: Alert) {
        let Some(queue) = &self.queue else {
            return;
        };
        if queue.try_send(alert).is_err() {
            self.counts.dropped.fetch_add(1, Ordering::Relaxed);
        }
    }
}

/// The first `burst` alerts of a window, and a count of the rest.
struct Window {
    burst: u32,
    length: Duration,
    /// When the current window started; none between windows.
    started: Option<(Instant, u64)>,
    posted: u32,
    /// Alerts beyond the burst, by type, namespace and target.
    held: BTreeMap<(&'static str, String, String), u64>,
    /// The first few of them.
    examples: Vec<Value>,
}

impl Window {
    fn new(burst: u32, length: Duration) -> Self {
        Self {
            burst,
            length,
            started: None,
            posted: 0,
            held: BTreeMap::new(),
            examples: Vec::new(),
        }
    }

    /// Takes `alert`, come at `now`: its body to post into `outbox`, or, beyond the
    /// burst, held for the summary (then true). A window that has ended is closed
    /// first, its summary posted before.
    fn admit(&mut self, alert: &Alert, now: Instant, outbox: &mut Vec<Value>) -> bool {
        if self.started.is_some_and(|(at, _)| now >= at + self.length) {
            outbox.extend(self.close());
        }
        self.started.get_or_insert((now, now_ms()));
        if self.posted < self.burst {
            self.posted += 1;
            outbox.push(alert.body());
            return false;
        }
        *self.held.entry(alert.subject()).or_default() += 1;
        if self.examples.len() < EXAMPLES {
            self.examples.push(alert.body());
        }
        true
    }

    /// When the summary of held alerts is due, if any is held.
    fn summary_due(&self) -> Option<Instant> {
        let (at, _) = self.started?;
        (!self.held.is_empty()).then_some(at + self.length)
    }

    /// Ends the window: the summary of what it held, if anything.
    fn close(&mut self) -> Option<Value> {
        let (_, started_ms) = self.started.take()?;
        self.posted = 0;
        let examples = std::mem::take(&mut self.examples);
        let held = std::mem::take(&mut self.held);
        if held.is_empty() {
            return None;
        }
        let counts: Vec<Value> = held
            .iter()
            .map(|((kind, namespace, target), count)| {
                json!({"type": kind, "namespace": namespace, "target": target, "count": count})
            })
            .collect();
        Some(json!({
            "type": "alerts.summary",
            "timestamp": rfc3339(now_ms()),
            "data": {
                "window_started": rfc3339(started_ms),
                "held": held.values().sum::<u64>(),
                "counts": counts,
                "examples": examples,
            },
        }))
    }
}

/// The task that posts alerts.
struct Poster {
    webhook: HttpTarget,
    counts: Arc<AlertCounts>,
    health: Component,
}

impl Poster {
    /// Takes alerts from `alerts` and posts them one at a time, the summary of a
    /// window when it ends, until every sender is gone.
    async fn run(self, mut alerts: mpsc::Receiver<Alert>, mut window: Window) {
        let mut outbox: VecDeque<Value> = VecDeque::new();
        let mut posting = None;
        loop {
            if posting.is_none()
                && let Some(body) = outbox.pop_front()
            {
                posting = Some(Box::pin(self.post(body)));
            }
            let mut ready = Vec::new();
            let due = window.summary_due();
            tokio::select! {
                alert = alerts.recv() => match alert {
                    Some(alert) => {
                        if window.admit(&alert, Instant::now(), &mut ready) {
                            self.counts.held.fetch_add(1, Ordering::Relaxed);
                        }
                    }
                    None => break,
                },
                () = async { if let Some(post) = posting.as_mut() { post.await } }, if posting.is_some() => {
                    posting = None;
                }
                () = tokio::time::sleep_until(due.unwrap_or_else(Instant::now)), if due.is_some() => {
                    ready.extend(window.close());
                }
            }
            for body in ready {
                if outbox.len() < OUTBOX {
                    outbox.push_back(body);
                } else {
                    self.counts.dropped.fetch_add(1, Ordering::Relaxed);
                }
            }
        }
        if let Some(post) = posting {
            post.await;
        }
        outbox.extend(window.close());
        for body in outbox {
            self.post(body).await;
        }
    }

    /// Posts one body, tried up to [`TRIES`] times.
    async fn post(&self, body: Value) {
        let message = Message {
            namespace: String::new(),
            offset: 0,
            message_id: uuid::Uuid::now_v7().to_string(),
            transaction_id: String::new(),
            key: None,
            timestamp_ms: now_ms(),
            headers: BTreeMap::new(),
            payload: serde_json::to_vec(&body).unwrap_or_default(),
            payload_is_json: true,
            trace: None,
        };
        let mut wait = Duration::from_secs(1);
        for tried in 1..=TRIES {
            match self.webhook.deliver(&message).await {
                Ok(()) => {
                    self.counts.posted.fetch_add(1, Ordering::Relaxed);
                    self.health.recovered();
                    return;
                }
                Err(e) if e.retriable && tried < TRIES => {
                    tokio::time::sleep(e.retry_after.unwrap_or(wait).min(Duration::from_secs(30)))
                        .await;
                    wait *= 2;
                }
                Err(e) => {
                    self.counts.failed.fetch_add(1, Ordering::Relaxed);
                    let kind = body["type"].as_str().unwrap_or_default();
                    warn!(alert = kind, error = %e, "Alert not posted.");
                    self.health.degraded(&format!("posting an alert: {e}"));
                    return;
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn dead(target: &str) -> Alert {
        Alert::DeadLettered {
            namespace: "shop".into(),
            target: target.into(),
            message_id: "m".into(),
            transaction_id: "t".into(),
            attempts: 8,
            error: "answered 500".into(),
            kept: true,
        }
    }

    #[test]
    fn a_storm_is_the_burst_then_one_summary() {
        let mut window = Window::new(3, Duration::from_secs(60));
        let start = Instant::now();
        let mut out = Vec::new();
        for i in 0..10 {
            let target = if i % 2 == 0 { "a" } else { "b" };
            window.admit(&dead(target), start + Duration::from_secs(i), &mut out);
        }
        assert_eq!(out.len(), 3, "the burst is posted one by one");
        assert_eq!(out[0]["type"], "message.dead_lettered");
        assert_eq!(out[0]["data"]["target"], "a");
        assert!(out[0]["timestamp"].is_string());
        assert_eq!(window.summary_due(), Some(start + Duration::from_secs(60)));
        let summary = window.close().expect("a summary");
        assert_eq!(summary["type"], "alerts.summary");
        assert_eq!(summary["data"]["held"], 7);
        let counts = summary["data"]["counts"].as_array().expect("counts");
        assert_eq!(counts.len(), 2);
        assert_eq!(counts[0]["target"], "a");
        assert_eq!(counts[0]["count"], 3);
        assert_eq!(counts[1]["count"], 4);
        assert_eq!(
            summary["data"]["examples"].as_array().map(Vec::len),
            Some(3)
        );
        assert_eq!(window.summary_due(), None);
        assert!(window.close().is_none(), "nothing held twice");
    }

    #[test]
    fn a_new_window_posts_again_after_the_summary_of_the_last() {
        let mut window = Window::new(1, Duration::from_secs(10));
        let start = Instant::now();
        let mut out = Vec::new();
        window.admit(&dead("a"), start, &mut out);
        window.admit(&dead("a"), start + Duration::from_secs(1), &mut out);
        assert_eq!(out.len(), 1);
        window.admit(&dead("a"), start + Duration::from_secs(11), &mut out);
        let kinds: Vec<_> = out.iter().map(|b| b["type"].clone()).collect();
        assert_eq!(
            kinds,
            [
                "message.dead_lettered",
                "alerts.summary",
                "message.dead_lettered"
            ]
        );
    }

    #[test]
    fn a_quiet_window_ends_without_a_summary() {
        let mut window = Window::new(5, Duration::from_secs(10));
        let mut out = Vec::new();
        window.admit(&dead("a"), Instant::now(), &mut out);
        assert_eq!(window.summary_due(), None);
        assert!(window.close().is_none());
    }
}
