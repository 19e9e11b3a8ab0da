//! How long to wait before the next attempt of a failed delivery: exponential backoff
//! (`initial_backoff * multiplier^(attempt-1)`, capped at `max_backoff`) with jitter,
//! so that many consumers failing together do not retry together. A `Retry-After`
//! from the target is honoured when it asks for longer.

use std::time::Duration;

use crate::config::policy::{Jitter, RetryPolicy};

/// The wait after failed attempt number `attempt` (1 for the first attempt), before
/// jitter; `random` is uniform in 0..1.
pub fn backoff(policy: &RetryPolicy, attempt: u32, random: f64) -> Duration {
    let base = policy.initial_backoff.get().as_secs_f64()
        * policy
            .multiplier
            .powi(attempt.saturating_sub(1).min(1000) as i32);
    let capped = base.min(policy.max_backoff.get().as_secs_f64());
    let jittered = match policy.jitter {
        Jitter::None => capped,
        Jitter::Full => capped * random,
        Jitter::Equal => capped / 2.0 + capped / 2.0 * random,
    };
    Duration::from_secs_f64(jittered.max(0.0))
}

/// The wait before the next attempt: the backoff, or longer if the target asked.
pub fn next_wait(policy: &RetryPolicy, attempt: u32, retry_after: Option<Duration>) -> Duration {
    let wait = backoff(policy, attempt, random_fraction());
    retry_after.map_or(wait, |asked| wait.max(asked))
}

/// Uniform in 0..1.
fn random_fraction() -> f64 {
    // The jitter only spreads retries out: a failed read of randomness means none.
    getrandom::u64().map_or(0.5, |r| (r >> 11) as f64 / (1u64 << 53) as f64)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::units::HumanDuration;

    fn policy(jitter: Jitter) -> RetryPolicy {
        RetryPolicy {
            max_attempts: 8,
            initial_backoff: HumanDuration::from_millis(200),
            max_backoff: HumanDuration::from_secs(1),
            multiplier: 2.0,
            jitter,
        }
    }

    #[test]
    fn backoff_grows_by_the_multiplier_up_to_the_cap() {
        let p = policy(Jitter::None);
        let waits: Vec<u128> = (1..=5).map(|a| backoff(&p, a, 0.3).as_millis()).collect();
        assert_eq!(waits, [200, 400, 800, 1000, 1000]);
    }

    #[test]
    fn jitter_stays_within_its_bounds() {
        let full = policy(Jitter::Full);
        assert_eq!(backoff(&full, 2, 0.0), Duration::ZERO);
        assert_eq!(backoff(&full, 2, 0.5).as_millis(), 200);
        let equal = policy(Jitter::Equal);
        assert_eq!(backoff(&equal, 2, 0.0).as_millis(), 200);
        assert_eq!(backoff(&equal, 2, 1.0).as_millis(), 400);
        for _ in 0..100 {
            let r = random_fraction();
            assert!((0.0..1.0).contains(&r));
        }
    }

    #[test]
    fn a_longer_retry_after_wins() {
        let p = policy(Jitter::None);
        assert_eq!(
            next_wait(&p, 1, Some(Duration::from_secs(3))),
            Duration::from_secs(3)
        );
        assert_eq!(
            next_wait(&p, 1, Some(Duration::from_millis(1))).as_millis(),
            200
        );
    }
}
