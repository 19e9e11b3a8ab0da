//! A target's circuit breaker: after `failures` retriable failures in a row the
//! target is *open*: nothing is tried there for a cool-down (at least what the target
//! asked with `Retry-After`), then one lane delivers one message as a probe
//! (*half-open*). Success closes it; failure opens it again for twice the cool-down, up
//! to `max_cool_down`.
//!
//! While a target is open its messages wait in the lanes and in the log: they are not
//! attempts, so their retry count does not grow and none is dead-lettered for it.

use std::sync::Mutex;
use std::time::Duration;

use serde::Serialize;
use tokio::time::Instant;
use tracing::{info, warn};

use crate::alerts::{Alert, Alerts};
use crate::config::policy::BreakerPolicy;
use crate::message::now_ms;

/// How often a lane looks again while another lane's probe is under way.
const PROBE_POLL: Duration = Duration::from_millis(20);

/// What a lane may do with the target now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Deliver as usual.
    Deliver,
    /// Deliver one message: the probe that decides whether the target is back.
    Probe,
    /// Deliver nothing before this time.
    Wait(Instant),
}

/// The breaker's state as status shows it.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Serialize, utoipa::ToSchema)]
#[serde(rename_all = "snake_case")]
pub enum CircuitState {
    #[default]
    Closed,
    Open,
    HalfOpen,
}

/// What status shows of a target's breaker.
#[derive(Clone, Debug, Default, Serialize, utoipa::ToSchema)]
pub struct CircuitStatus {
    pub state: CircuitState,
    /// Since when it is in this state (milliseconds since the epoch); 0 if it never
    /// changed.
    pub since_ms: u64,
    /// The failure that opened it, or the last failed probe.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    /// Times it opened since start (a failed probe keeps it open: not counted).
    pub opened: u64,
}

/// One target's breaker, shared by its lanes.
pub struct Breaker {
    namespace: String,
    target: String,
    policy: BreakerPolicy,
    /// Told when the circuit opens and closes.
    alerts: Alerts,
    state: Mutex<State>,
}

struct State {
    /// Retriable failures in a row while closed.
    failures: u32,
    /// Open until then (closed if `None` and no probe is under way).
    open_until: Option<Instant>,
    /// A probe is under way.
    probing: bool,
    /// The cool-down the next opening waits.
    cool_down: Duration,
    /// Nothing is tried before then: the target answered `Retry-After`.
    not_before: Option<Instant>,
    /// When it last opened (milliseconds since the epoch), for how long it was open.
    opened_at_ms: u64,
    status: CircuitStatus,
}

impl Breaker {
    pub fn new(namespace: &str, target: &str, policy: BreakerPolicy, alerts: Alerts) -> Self {
        Self {
            namespace: namespace.to_string(),
            target: target.to_string(),
            alerts,
            state: Mutex::new(State {
                failures: 0,
                open_until: None,
                probing: false,
                cool_down: policy.cool_down.get(),
                not_before: None,
                opened_at_ms: 0,
                status: CircuitStatus::default(),
            }),
            policy,
        }
    }

    fn state(&self) -> std::sync::MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// What a lane may do now.
    pub fn permit(&self) -> Permit {
        let mut s = self.state();
        let now = Instant::now();
        if s.probing {
            return Permit::Wait(now + PROBE_POLL);
        }
        match s.open_until {
            None => match s.not_before {
                Some(at) if now < at => Permit::Wait(at),
                _ => Permit::Deliver,
            },
            Some(until) if now < until => Permit::Wait(until),
            Some(_) => {
                s.probing = true;
                s.status.state = CircuitState::HalfOpen;
                s.status.since_ms = now_ms();
                Permit::Probe
            }
        }
    }

    /// The target took a delivery, or answered that a message is wrong (a permanent
    /// failure is the message's, not the target's).
    pub fn succeeded(&self) {
        let mut s = self.state();
        s.failures = 0;
        if s.open_until.is_some() || s.probing {
            s.open_until = None;
            s.probing = false;
            s.cool_down = self.policy.cool_down.get();
            s.status.state = CircuitState::Closed;
            let now = now_ms();
            let open_ms = now.saturating_sub(std::mem::replace(&mut s.opened_at_ms, 0));
            s.status.since_ms = now;
            info!(namespace = %self.namespace, target = %self.target, open_ms, "Target is back: circuit closed.");
            self.alerts.send(Alert::CircuitClosed {
                namespace: self.namespace.clone(),
                target: self.target.clone(),
                open_ms,
            });
        }
    }

    /// A retriable failure, with the wait the target asked for. Whether the failure
    /// counts against the message: not when it was a probe (the target is down, not
    /// the message wrong). A message's `last_attempt` sends it to the DLQ: a message
    /// that fails alone, again and again, says nothing of the target, so the run of
    /// failures starts over.
    pub fn failed(&self, error: &str, retry_after: Option<Duration>, last_attempt: bool) -> bool {
        let mut s = self.state();
        let was_probe = std::mem::take(&mut s.probing);
        if !self.policy.enabled {
            return true;
        }
        if last_attempt && !was_probe {
            s.failures = 0;
            return true;
        }
        if !was_probe {
            s.failures += 1;
            if s.failures < self.policy.failures || s.open_until.is_some() {
                return true;
            }
        }
        let cool_down = s.cool_down.max(retry_after.unwrap_or_default());
        s.open_until = Some(Instant::now() + cool_down);
        s.cool_down = (s.cool_down * 2).min(self.policy.max_cool_down.get());
        s.failures = 0;
        s.status.last_error = Some(error.to_string());
        s.status.state = CircuitState::Open;
        s.status.since_ms = now_ms();
        let cool_down_ms = cool_down.as_millis() as u64;
        if was_probe {
            info!(namespace = %self.namespace, target = %self.target, cool_down_ms, error, "Probe failed: circuit stays open.");
        } else {
            s.status.opened += 1;
            s.opened_at_ms = s.status.since_ms;
            warn!(namespace = %self.namespace, target = %self.target, cool_down_ms, error, "Target keeps failing: circuit opened.");
            self.alerts.send(Alert::CircuitOpened {
                namespace: self.namespace.clone(),
                target: self.target.clone(),
                error: error.to_string(),
                cool_down_ms,
            });
        }
        !was_probe
    }

    /// The target asked not to be called for `wait` (`Retry-After`): no lane tries it
    /// before then, whatever the message.
    pub fn asked_to_wait(&self, wait: Duration) {
        let mut s = self.state();
        let until = Instant::now() + wait;
        s.not_before = Some(s.not_before.map_or(until, |at| at.max(until)));
    }

    /// A probe that ended without an answer (the lane stopped): another lane probes.
    pub fn abandoned(&self) {
        self.state().probing = false;
    }

    pub fn status(&self) -> CircuitStatus {
        self.state().status.clone()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::HumanDuration;

    fn breaker() -> Breaker {
        Breaker::new(
            "ns",
            "t",
            BreakerPolicy {
                enabled: true,
                failures: 3,
                cool_down: HumanDuration::from_secs(1),
                max_cool_down: HumanDuration::from_secs(4),
            },
            Alerts::default(),
        )
    }

    #[tokio::test(start_paused = true)]
    async fn opens_after_failures_in_a_row_and_a_success_resets_the_count() {
        let b = breaker();
        assert!(b.failed("e", None, false));
        assert!(b.failed("e", None, false));
        b.succeeded();
        assert!(b.failed("e", None, false));
        assert!(b.failed("e", None, false));
        assert_eq!(b.permit(), Permit::Deliver);
        assert!(
            b.failed("e", None, false),
            "the failure that opens it counts"
        );
        assert_eq!(b.status().state, CircuitState::Open);
        assert_eq!(
            b.permit(),
            Permit::Wait(Instant::now() + Duration::from_secs(1))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn one_probe_after_the_cool_down_which_doubles_up_to_its_cap() -> Result<(), String> {
        let b = breaker();
        for _ in 0..3 {
            b.failed("down", None, false);
        }
        for expected in [1, 2, 4, 4] {
            let Permit::Wait(until) = b.permit() else {
                return Err("open: wait".into());
            };
            let opened = Instant::now();
            tokio::time::sleep_until(until).await;
            assert_eq!(opened.elapsed(), Duration::from_secs(expected));
            assert_eq!(b.permit(), Permit::Probe);
            assert_eq!(b.status().state, CircuitState::HalfOpen);
            assert!(matches!(b.permit(), Permit::Wait(_)), "one probe at a time");
            assert!(
                !b.failed("still down", None, false),
                "a probe is not the message's attempt"
            );
        }
        assert_eq!(b.status().opened, 1);
        let Permit::Wait(until) = b.permit() else {
            return Err("open: wait".into());
        };
        tokio::time::sleep_until(until).await;
        assert_eq!(b.permit(), Permit::Probe);
        b.succeeded();
        assert_eq!(b.status().state, CircuitState::Closed);
        assert_eq!(b.permit(), Permit::Deliver);
        // Closed again, the cool-down starts over.
        for _ in 0..3 {
            b.failed("down", None, false);
        }
        assert_eq!(
            b.permit(),
            Permit::Wait(Instant::now() + Duration::from_secs(1))
        );
        Ok(())
    }

    #[tokio::test(start_paused = true)]
    async fn a_message_dead_lettered_after_its_attempts_starts_the_run_over() {
        let b = breaker();
        assert!(b.failed("e", None, false));
        assert!(b.failed("e", None, false));
        assert!(b.failed("e", None, true), "its last attempt: to the DLQ");
        assert!(b.failed("e", None, false));
        assert!(b.failed("e", None, false));
        assert_eq!(b.permit(), Permit::Deliver);
        assert!(b.failed("e", None, false));
        assert_eq!(b.status().state, CircuitState::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn a_longer_retry_after_is_waited_out() {
        let b = breaker();
        for _ in 0..3 {
            b.failed("429", Some(Duration::from_secs(30)), false);
        }
        assert_eq!(
            b.permit(),
            Permit::Wait(Instant::now() + Duration::from_secs(30))
        );
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_holds_the_whole_target_while_closed() {
        let b = breaker();
        b.asked_to_wait(Duration::from_secs(2));
        assert_eq!(
            b.permit(),
            Permit::Wait(Instant::now() + Duration::from_secs(2))
        );
        tokio::time::sleep(Duration::from_secs(2)).await;
        assert_eq!(b.permit(), Permit::Deliver);
        assert_eq!(b.status().state, CircuitState::Closed);
    }

    #[tokio::test(start_paused = true)]
    async fn a_disabled_breaker_never_opens() {
        let b = Breaker::new(
            "ns",
            "t",
            BreakerPolicy {
                enabled: false,
                ..BreakerPolicy::default()
            },
            Alerts::default(),
        );
        for _ in 0..100 {
            assert!(b.failed("e", None, false));
        }
        assert_eq!(b.permit(), Permit::Deliver);
    }
}
