//! Counters of one namespace's writes, for its metrics (JSON) and `/metrics`.

use std::collections::BTreeMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

/// Upper bounds (seconds) of the append-latency histogram buckets.
pub const LATENCY_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

#[derive(Debug, Default)]
pub struct WriteCounters {
    /// Messages acknowledged.
    pub accepted: AtomicU64,
    /// Payload bytes acknowledged.
    pub payload_bytes: AtomicU64,
    /// Requests refused, by error code.
    refused: Mutex<BTreeMap<&'static str, u64>>,
    /// Append latency (from admission to the backend's confirmation): counts per bucket
    /// of [`LATENCY_BUCKETS`], then the overflow, the sum in microseconds, the count.
    latency: Mutex<(Vec<u64>, u64, u64)>,
}

impl WriteCounters {
    pub fn accepted(&self, messages: u64, payload_bytes: u64, latency: Duration) {
        self.accepted.fetch_add(messages, Ordering::Relaxed);
        self.payload_bytes
            .fetch_add(payload_bytes, Ordering::Relaxed);
        let mut histogram = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        if histogram.0.is_empty() {
            histogram.0 = vec![0; LATENCY_BUCKETS.len() + 1];
        }
        let seconds = latency.as_secs_f64();
        let bucket = LATENCY_BUCKETS
            .iter()
            .position(|b| seconds <= *b)
            .unwrap_or(LATENCY_BUCKETS.len());
        histogram.0[bucket] += 1;
        histogram.1 += latency.as_micros() as u64;
        histogram.2 += 1;
    }

    pub fn refused(&self, code: &'static str) {
        *self
            .refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .entry(code)
            .or_default() += 1;
    }

    pub fn refused_by_code(&self) -> BTreeMap<&'static str, u64> {
        self.refused
            .lock()
            .unwrap_or_else(|e| e.into_inner())
            .clone()
    }

    /// Cumulative bucket counts (as Prometheus wants them), the sum in seconds, the count.
    pub fn latency(&self) -> (Vec<u64>, f64, u64) {
        let histogram = self.latency.lock().unwrap_or_else(|e| e.into_inner());
        let mut cumulative = Vec::with_capacity(LATENCY_BUCKETS.len() + 1);
        let mut total = 0;
        for i in 0..=LATENCY_BUCKETS.len() {
            total += histogram.0.get(i).copied().unwrap_or(0);
            cumulative.push(total);
        }
        (cumulative, histogram.1 as f64 / 1e6, histogram.2)
    }
}

/// What delivery did per target of one namespace: for its status, the status page and
/// `/metrics`. Kept across reloads, like the write counters.
#[derive(Debug, Default)]
pub struct DeliveryCounters(Mutex<BTreeMap<String, TargetCounters>>);

/// One target's delivery outcomes since start.
#[derive(Clone, Debug, Default, serde::Serialize, utoipa::ToSchema)]
pub struct TargetCounters {
    /// Messages delivered.
    pub delivered: u64,
    /// Failed attempts followed by another attempt (a failed probe of an open circuit
    /// among them).
    pub retried: u64,
    /// Messages sent to the DLQ (or dropped, with the DLQ disabled).
    pub dead_lettered: u64,
    /// Messages kept from the target by a filter.
    pub skipped: u64,
    /// The last error, and when it happened (milliseconds since the epoch).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub last_error_at_ms: Option<u64>,
}

/// An outcome of delivery to a target.
pub enum Outcome<'a> {
    Delivered(u64),
    Retried {
        error: &'a str,
        at_ms: u64,
    },
    DeadLettered {
        error: &'a str,
        at_ms: u64,
    },
    /// Kept from the target by processing.
    Skipped,
}

impl DeliveryCounters {
    pub fn record(&self, target: &str, outcome: Outcome<'_>) {
        let mut all = self.0.lock().unwrap_or_else(|e| e.into_inner());
        let counters = match all.get_mut(target) {
            Some(counters) => counters,
            None => all.entry(target.to_string()).or_default(),
        };
        let (error, at_ms) = match outcome {
            Outcome::Delivered(n) => {
                counters.delivered += n;
                return;
            }
            Outcome::Skipped => {
                counters.skipped += 1;
                return;
            }
            Outcome::Retried { error, at_ms } => {
                counters.retried += 1;
                (error, at_ms)
            }
            Outcome::DeadLettered { error, at_ms } => {
                counters.dead_lettered += 1;
                (error, at_ms)
            }
        };
        counters.last_error = Some(error.to_string());
        counters.last_error_at_ms = Some(at_ms);
    }

    /// Every target's counters, by name.
    pub fn snapshot(&self) -> BTreeMap<String, TargetCounters> {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}
