//! The policies several tables share: how a failed delivery is retried
//! (`[consumer.retry]`, and a target's `retry` override) and a rate limit
//! (`[source] rate_limit`). Each with its defaults and its checks.

use serde::{Deserialize, Serialize};

use super::checks::Checks;
use super::diagnostic::{Code, KeyPath};
use super::units::HumanDuration;

/// `[consumer.retry]`: exponential backoff between attempts of one target.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct RetryPolicy {
    /// Attempts before the message goes to the DLQ, the first included. Default: 8.
    /// Range: 1..=100.
    pub max_attempts: u32,
    /// Wait before the second attempt. Default: 200ms.
    pub initial_backoff: HumanDuration,
    /// Longest wait between attempts. Default: 1m. At least `initial_backoff`.
    pub max_backoff: HumanDuration,
    /// Growth of the wait per attempt. Default: 2.0. Range: 1.0..=10.0.
    pub multiplier: f64,
    /// `full` (a random wait up to the backoff), `equal` (half fixed, half random) or
    /// `none`. Default: full.
    pub jitter: Jitter,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 8,
            initial_backoff: HumanDuration::from_millis(200),
            max_backoff: HumanDuration::from_secs(60),
            multiplier: 2.0,
            jitter: Jitter::Full,
        }
    }
}

/// A target's `retry = { ... }`: any key given replaces the namespace's policy.
#[derive(Clone, Debug, Default, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RetryOverride {
    pub max_attempts: Option<u32>,
    pub initial_backoff: Option<HumanDuration>,
    pub max_backoff: Option<HumanDuration>,
    pub multiplier: Option<f64>,
    pub jitter: Option<Jitter>,
}

impl RetryOverride {
    /// The policy that applies to a target: the namespace's, with this override on top.
    pub fn apply(&self, base: &RetryPolicy) -> RetryPolicy {
        RetryPolicy {
            max_attempts: self.max_attempts.unwrap_or(base.max_attempts),
            initial_backoff: self.initial_backoff.unwrap_or(base.initial_backoff),
            max_backoff: self.max_backoff.unwrap_or(base.max_backoff),
            multiplier: self.multiplier.unwrap_or(base.multiplier),
            jitter: self.jitter.unwrap_or(base.jitter),
        }
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Jitter {
    Full,
    Equal,
    None,
}

/// `rate_limit = { per_second = 5000, burst = 10000 }`.
#[derive(Clone, Copy, Debug, PartialEq, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct RateLimit {
    /// Sustained messages per second. Required; at least 1.
    pub per_second: u32,
    /// Messages allowed at once above the rate. Default: `per_second`.
    #[serde(default)]
    pub burst: Option<u32>,
}

impl RateLimit {
    /// Checks the limit at `at` (`source.rate_limit`).
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.range(
            Code::InvalidValue,
            &at.key("per_second"),
            self.per_second,
            1,
            10_000_000,
        );
        if let Some(burst) = self.burst {
            checks.range(Code::InvalidValue, &at.key("burst"), burst, 1, 100_000_000);
        }
    }
}

impl RetryPolicy {
    /// Checks the policy at `at` (`consumer.retry`).
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        let retry = self;
        checks.range(
            Code::InvalidRetry,
            &at.key("max_attempts"),
            retry.max_attempts,
            1,
            100,
        );
        if !(1.0..=10.0).contains(&retry.multiplier) {
            checks.error(
                Code::InvalidRetry,
                &at.key("multiplier"),
                format!("`multiplier` is {}, outside 1.0..=10.0", retry.multiplier),
                "set `multiplier` from 1.0 (constant backoff) to 10.0",
            );
        }
        if retry.initial_backoff.get().is_zero() {
            checks.error(
                Code::InvalidRetry,
                &at.key("initial_backoff"),
                "`initial_backoff` is zero: a failing target would be retried in a tight loop",
                "set `initial_backoff` to at least \"1ms\"; \"200ms\" is a good start",
            );
        }
        checks.not_shorter(
            Code::InvalidRetry,
            &at.key("max_backoff"),
            retry.max_backoff,
            "initial_backoff",
            retry.initial_backoff,
        );
        if retry.max_backoff.get() > std::time::Duration::from_secs(24 * 3600) {
            checks.error(
                Code::InvalidRetry,
                &at.key("max_backoff"),
                "`max_backoff` is longer than 24h",
                "set `max_backoff` to at most \"24h\"",
            );
        }
    }
}

impl RetryOverride {
    /// Checks a target's override at `at` (`target[i].retry`): the policy it makes
    /// with `base`, reporting only what the override itself breaks.
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath, base: &RetryPolicy) {
        let retry = self;
        let mut merged = Checks::default();
        retry.apply(base).validate(&mut merged, at);
        // A bound broken by the namespace's own policy is reported there, not again here.
        let mut inherited = Checks::default();
        base.validate(&mut inherited, at);
        checks.findings.extend(
            merged
                .findings
                .into_iter()
                .filter(|f| !inherited.findings.contains(f)),
        );
    }
}

/// A target's `circuit_breaker = { ... }`: when a target fails this many times in a
/// row, no message is tried there for a cool-down, then one probe delivery decides
/// whether it is back.
#[derive(Clone, Debug, PartialEq, Deserialize, Serialize)]
#[serde(default, deny_unknown_fields)]
pub struct BreakerPolicy {
    /// Whether the breaker opens at all. Default: true.
    pub enabled: bool,
    /// Retriable failures in a row (of any messages) that open the breaker. Default: 5.
    /// Range: 1..=1000.
    pub failures: u32,
    /// The first cool-down; each failed probe doubles it. Default: 1s.
    pub cool_down: HumanDuration,
    /// The longest cool-down. Default: 1m. At least `cool_down`.
    pub max_cool_down: HumanDuration,
}

impl Default for BreakerPolicy {
    fn default() -> Self {
        Self {
            enabled: true,
            failures: 5,
            cool_down: HumanDuration::from_secs(1),
            max_cool_down: HumanDuration::from_secs(60),
        }
    }
}

impl BreakerPolicy {
    /// Checks the policy at `at` (`target[i].circuit_breaker`).
    pub fn validate(&self, checks: &mut Checks, at: &KeyPath) {
        checks.range(
            Code::InvalidValue,
            &at.key("failures"),
            self.failures,
            1,
            1000,
        );
        if self.cool_down.get().is_zero() {
            checks.error(
                Code::InvalidValue,
                &at.key("cool_down"),
                "`cool_down` is zero: a target that is down would be probed in a tight loop",
                "set `cool_down` to at least \"10ms\"; \"1s\" is a good start",
            );
        }
        checks.not_shorter(
            Code::InvalidValue,
            &at.key("max_cool_down"),
            self.max_cool_down,
            "cool_down",
            self.cool_down,
        );
    }
}
