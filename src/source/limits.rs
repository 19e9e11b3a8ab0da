//! Per-namespace admission: a token-bucket rate limit and a bound on writes waiting for
//! durability, so that a burst is refused early (429, 503 with `Retry-After`) instead
//! of queueing without bound.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::config::policy::RateLimit;

/// A token bucket: `per_second` tokens flow in, at most `burst` are kept.
pub struct TokenBucket {
    per_second: f64,
    burst: f64,
    state: Mutex<(f64, Instant)>,
}

impl TokenBucket {
    pub fn new(limit: RateLimit) -> Self {
        let burst = f64::from(limit.burst.unwrap_or(limit.per_second));
        Self {
            per_second: f64::from(limit.per_second),
            burst,
            state: Mutex::new((burst, Instant::now())),
        }
    }

    /// The most tokens it keeps: more are never there at once.
    pub fn burst(&self) -> u32 {
        self.burst as u32
    }

    /// Takes `n` tokens, or says how long until they would be there.
    pub fn take(&self, n: u32, now: Instant) -> Result<(), Duration> {
        let n = f64::from(n);
        let mut state = self.state.lock().unwrap_or_else(|e| e.into_inner());
        let (tokens, last) = *state;
        let tokens = (tokens + now.saturating_duration_since(last).as_secs_f64() * self.per_second)
            .min(self.burst);
        if tokens >= n {
            *state = (tokens - n, now);
            Ok(())
        } else {
            *state = (tokens, now);
            Err(Duration::from_secs_f64((n - tokens) / self.per_second))
        }
    }
}

/// What a namespace admits at once.
pub struct Admission {
    rate: Option<TokenBucket>,
    in_flight: Arc<Semaphore>,
    max_in_flight: u32,
}

/// Why a write was not admitted.
#[derive(Debug, PartialEq)]
pub enum Refusal {
    /// Over the rate limit; retry after this long.
    RateLimited(Duration),
    /// Too many writes are waiting for durability already.
    Overloaded,
}

impl Admission {
    pub fn new(rate: Option<RateLimit>, max_in_flight: u32) -> Self {
        Self {
            rate: rate.map(TokenBucket::new),
            in_flight: Arc::new(Semaphore::new(max_in_flight as usize)),
            max_in_flight,
        }
    }

    /// Admits `messages` messages, holding their place until the permit is dropped.
    pub fn admit(&self, messages: u32) -> Result<OwnedSemaphorePermit, Refusal> {
        let permit = self
            .in_flight
            .clone()
            .try_acquire_many_owned(messages.min(self.max_in_flight))
            .map_err(|_| Refusal::Overloaded)?;
        if let Some(rate) = &self.rate {
            rate.take(messages, Instant::now())
                .map_err(Refusal::RateLimited)?;
        }
        Ok(permit)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_bucket_allows_a_burst_then_the_rate() {
        let bucket = TokenBucket::new(RateLimit {
            per_second: 10,
            burst: Some(20),
        });
        let start = Instant::now();
        assert_eq!(bucket.take(20, start), Ok(()));
        let wait = bucket.take(1, start).unwrap_err();
        assert!((wait.as_secs_f64() - 0.1).abs() < 1e-6, "{wait:?}");
        assert_eq!(bucket.take(5, start + Duration::from_millis(500)), Ok(()));
        assert!(bucket.take(1, start + Duration::from_millis(500)).is_err());
        // The bucket never holds more than the burst.
        assert!(bucket.take(21, start + Duration::from_secs(100)).is_err());
    }

    #[test]
    fn in_flight_writes_are_bounded() {
        let admission = Admission::new(None, 3);
        let first = admission.admit(2).unwrap();
        assert!(admission.admit(2).is_err());
        drop(first);
        assert!(admission.admit(3).is_ok());
    }
}
