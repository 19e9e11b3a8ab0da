//! The health of the service's background parts: each consumer, status tailer, delay
//! runner, cursor writer, idempotency journal, the status store and the watcher.
//!
//! A background part never ends silently: when a step fails it reports the failure
//! here and tries again with backoff, and once a step succeeds again it reports that
//! too. Namespace status, health, readiness and `/metrics` read these reports, so an
//! operator sees "the delivery cursor cannot be written: no space left on device" while
//! it lasts, and sees it clear by itself once the cause is gone.
//!
//! A failure is logged at ERROR when the part starts failing (and again at most every
//! [`LOG_EVERY`] while it goes on), and at INFO when it recovers.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use serde::Serialize;
use tracing::{error, info};

use crate::message::now_ms;
use crate::shutdown::Stopping;

/// Longest time between two ERROR lines of a part that keeps failing.
const LOG_EVERY: Duration = Duration::from_secs(30);

/// Where a background part stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum ComponentState {
    /// Working.
    Running,
    /// Working around a failure that it retries (a cursor or a status entry that
    /// cannot be written): it makes progress, but something is not kept.
    Degraded,
    /// Making no progress: it fails and retries with backoff (a log that cannot be
    /// read, a store that cannot be written).
    Stalled,
}

/// A part's state for status and metrics.
#[derive(Clone, Debug, Serialize, utoipa::ToSchema)]
pub struct ComponentStatus {
    pub state: ComponentState,
    /// The last failure's error, while it is not running.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub error: Option<String>,
    /// Since when it is not running (milliseconds since the Unix epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub since_ms: Option<u64>,
    /// Failures since start.
    pub failures: u64,
}

/// One background part's health, shared by the part (which reports) and status (which
/// reads). Clones share it.
#[derive(Clone)]
pub struct Component(Arc<Inner>);

struct Inner {
    /// The namespace it belongs to, for the log; none for the service's own parts.
    namespace: Option<String>,
    name: &'static str,
    state: Mutex<Reported>,
    failures: AtomicU64,
}

struct Reported {
    state: ComponentState,
    error: Option<String>,
    since_ms: Option<u64>,
    /// When the last ERROR line was logged.
    logged: Option<Instant>,
}

impl Component {
    pub fn new(namespace: Option<&str>, name: &'static str) -> Self {
        Self(Arc::new(Inner {
            namespace: namespace.map(str::to_string),
            name,
            state: Mutex::new(Reported {
                state: ComponentState::Running,
                error: None,
                since_ms: None,
                logged: None,
            }),
            failures: AtomicU64::new(0),
        }))
    }

    pub fn name(&self) -> &'static str {
        self.0.name
    }

    /// A failure it works around and retries.
    pub fn degraded(&self, error: &dyn std::fmt::Display) {
        self.failed(ComponentState::Degraded, error);
    }

    /// A failure that stops its progress until a retry succeeds.
    pub fn stalled(&self, error: &dyn std::fmt::Display) {
        self.failed(ComponentState::Stalled, error);
    }

    fn failed(&self, state: ComponentState, error: &dyn std::fmt::Display) {
        self.0.failures.fetch_add(1, Ordering::Relaxed);
        let error = error.to_string();
        let mut reported = self.lock();
        let starts = reported.state == ComponentState::Running;
        let log = starts || reported.logged.is_none_or(|at| at.elapsed() >= LOG_EVERY);
        if starts {
            reported.since_ms = Some(now_ms());
        }
        // Stalled outranks degraded until the part recovers.
        if starts || state == ComponentState::Stalled {
            reported.state = state;
        }
        reported.error = Some(error.clone());
        if log {
            reported.logged = Some(Instant::now());
        }
        drop(reported);
        if log {
            let namespace = self.0.namespace.as_deref().unwrap_or("-");
            error!(namespace, component = self.0.name, state = ?state, error = %error, "A background part is failing; it retries by itself.");
        }
    }

    /// A step succeeded: back to running, if it was not.
    pub fn recovered(&self) {
        let mut reported = self.lock();
        if reported.state == ComponentState::Running {
            return;
        }
        let since = reported.since_ms.unwrap_or_default();
        *reported = Reported {
            state: ComponentState::Running,
            error: None,
            since_ms: None,
            logged: None,
        };
        drop(reported);
        let namespace = self.0.namespace.as_deref().unwrap_or("-");
        info!(
            namespace,
            component = self.0.name,
            failing_for_ms = now_ms().saturating_sub(since),
            "A background part recovered."
        );
    }

    /// Reports the outcome of a step: a failure (`stalled` or degraded) or a success.
    pub fn report<T, E: std::fmt::Display>(&self, result: &Result<T, E>, stalled: bool) {
        match result {
            Ok(_) => self.recovered(),
            Err(e) if stalled => self.stalled(e),
            Err(e) => self.degraded(e),
        }
    }

    pub fn status(&self) -> ComponentStatus {
        let reported = self.lock();
        ComponentStatus {
            state: reported.state,
            error: reported.error.clone(),
            since_ms: reported.since_ms,
            failures: self.0.failures.load(Ordering::Relaxed),
        }
    }

    pub fn is_running(&self) -> bool {
        self.lock().state == ComponentState::Running
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, Reported> {
        self.0.state.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// The background parts of one namespace (or of the service), by name. A part keeps
/// its health across a restart of its task (a reload, a retry): the new task reports
/// to the same entry.
#[derive(Default)]
pub struct Components {
    namespace: Option<String>,
    parts: Mutex<BTreeMap<&'static str, Component>>,
}

impl Components {
    pub fn new(namespace: Option<&str>) -> Self {
        Self {
            namespace: namespace.map(str::to_string),
            parts: Mutex::default(),
        }
    }

    /// The part called `name`, registered on first use.
    pub fn get(&self, name: &'static str) -> Component {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(name)
            .or_insert_with(|| Component::new(self.namespace.as_deref(), name))
            .clone()
    }

    /// Adds a part made elsewhere (one the service shares, such as the status store).
    pub fn add(&self, component: Component) {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .insert(component.name(), component);
    }

    /// Every part, by name.
    pub fn all(&self) -> Vec<Component> {
        self.parts
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .values()
            .cloned()
            .collect()
    }

    /// Every part with its status, by name.
    pub fn statuses(&self) -> BTreeMap<&'static str, ComponentStatus> {
        self.all().iter().map(|c| (c.name(), c.status())).collect()
    }

    /// The parts that are not running.
    pub fn failing(&self) -> Vec<Component> {
        self.all().into_iter().filter(|c| !c.is_running()).collect()
    }
}

/// The part's owner asked it to stop before its step succeeded.
#[derive(Debug)]
pub struct Stopped;

/// Runs `step` until it succeeds: each failure is reported to `part` (`stalled` or
/// degraded, its error after `what`) and tried again after a backoff; the success
/// marks `part` running. `Stopped` once the task is asked to stop, even while waiting.
pub async fn keep_trying<T, E, Fut>(
    part: &Component,
    stalled: bool,
    what: &str,
    stop: &Stopping,
    mut step: impl FnMut() -> Fut,
) -> Result<T, Stopped>
where
    E: std::fmt::Display,
    Fut: std::future::Future<Output = Result<T, E>>,
{
    let mut backoff = Backoff::default();
    loop {
        match step().await {
            Ok(done) => {
                part.recovered();
                return Ok(done);
            }
            Err(e) if stalled => part.stalled(&format!("{what}: {e}")),
            Err(e) => part.degraded(&format!("{what}: {e}")),
        }
        sleep_unless_stopped(backoff.wait(), stop).await?;
    }
}

/// Waits `wait`; `Stopped` at once if the task is or gets asked to stop meanwhile.
pub async fn sleep_unless_stopped(wait: Duration, stop: &Stopping) -> Result<(), Stopped> {
    tokio::select! {
        () = tokio::time::sleep(wait) => Ok(()),
        () = stop.wait() => Err(Stopped),
    }
}

/// Waits before a failed step is tried again: doubles from 100 ms up to 30 s.
pub struct Backoff {
    wait: Duration,
}

impl Default for Backoff {
    fn default() -> Self {
        Self { wait: Self::FIRST }
    }
}

impl Backoff {
    const FIRST: Duration = Duration::from_millis(100);
    const MAX: Duration = Duration::from_secs(30);

    /// The wait before the next try; each call doubles the next.
    pub fn wait(&mut self) -> Duration {
        let wait = self.wait;
        self.wait = (self.wait * 2).min(Self::MAX);
        wait
    }

    /// After a success: the next failure waits the shortest time again.
    pub fn reset(&mut self) {
        self.wait = Self::FIRST;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_part_is_degraded_then_stalled_then_running_again() {
        let part = Component::new(Some("ns"), "delivery");
        assert_eq!(part.status().state, ComponentState::Running);
        part.degraded(&"disk full");
        let status = part.status();
        assert_eq!(status.state, ComponentState::Degraded);
        assert_eq!(status.error.as_deref(), Some("disk full"));
        let since = status.since_ms;
        part.stalled(&"still full");
        part.degraded(&"better");
        let status = part.status();
        assert_eq!(
            status.state,
            ComponentState::Stalled,
            "stalled until it recovers"
        );
        assert_eq!(status.since_ms, since, "failing since the first failure");
        assert_eq!(status.failures, 3);
        part.recovered();
        let status = part.status();
        assert_eq!(status.state, ComponentState::Running);
        assert_eq!(status.error, None);
        assert_eq!(status.failures, 3);
    }

    #[test]
    fn backoff_doubles_up_to_its_cap_and_resets() {
        let mut backoff = Backoff::default();
        let waits: Vec<u128> = (0..11).map(|_| backoff.wait().as_millis()).collect();
        assert_eq!(
            waits,
            [
                100, 200, 400, 800, 1600, 3200, 6400, 12800, 25600, 30000, 30000
            ]
        );
        backoff.reset();
        assert_eq!(backoff.wait(), Duration::from_millis(100));
    }
}
