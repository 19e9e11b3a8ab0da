//! Scenario 9: a target's health. Two tables, each through wald's real router and
//! delivery in this process, to an HTTP webhook served by the scenario:
//!
//! - `9-heal`: a webhook answers 503 while 500 messages over 500 keys wait for it;
//!   once it is healed, the time until all 500 have arrived, with the circuit breaker
//!   (defaults) against the breaker disabled (each message retried on its own, as
//!   before breakers). Reported with the attempts the webhook took during the outage;
//!   no goal: the breaker trades attempts for waiting at most one cool-down.
//! - `9-rate-limit`: delivery throughput to a healthy webhook with `rate_limit` set
//!   far above what is achievable, against no rate limit (goal: at least 0.95). The
//!   messages are written while the target is paused, and timed from the first
//!   arrival to the last, so that neither the writes nor the resume are measured.

use std::collections::HashSet;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::extract::State;
use axum::http::StatusCode;
use serde_json::{Value, json};

use crate::Result;
use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::servers;

/// Messages of `9-heal`, one key each.
const HEAL_MESSAGES: u64 = 500;

/// What the webhook saw.
#[derive(Clone, Default)]
struct Hook {
    /// Answers 503 while set.
    down: Arc<AtomicBool>,
    requests: Arc<AtomicU64>,
    /// The distinct messages taken, and when the first and the last new one came.
    taken: Arc<Mutex<Taken>>,
}

#[derive(Default)]
struct Taken {
    seen: HashSet<u64>,
    first: Option<Instant>,
    last: Option<Instant>,
}

async fn hook(State(hook): State<Hook>, body: axum::body::Bytes) -> StatusCode {
    hook.requests.fetch_add(1, Ordering::Relaxed);
    if hook.down.load(Ordering::Relaxed) {
        return StatusCode::SERVICE_UNAVAILABLE;
    }
    let i = serde_json::from_slice::<Value>(&body)
        .ok()
        .and_then(|b| b["i"].as_u64())
        .unwrap_or(u64::MAX);
    let now = Instant::now();
    let mut taken = hook.taken.lock().unwrap_or_else(|e| e.into_inner());
    if taken.seen.insert(i) {
        taken.first.get_or_insert(now);
        taken.last = Some(now);
    }
    StatusCode::OK
}

impl Hook {
    async fn serve(&self) -> Result<SocketAddr> {
        let app = axum::Router::new()
            .route("/hook", axum::routing::post(self::hook))
            .with_state(self.clone());
        servers::serve(app).await
    }

    fn count(&self) -> usize {
        self.taken.lock().map_or(0, |t| t.seen.len())
    }

    /// Waits until `count` distinct messages came; the first and last arrival.
    async fn all(&self, count: usize, limit: Duration) -> Result<(Instant, Instant)> {
        let began = Instant::now();
        while self.count() < count {
            if began.elapsed() > limit {
                return Err(format!("{} of {count} arrived in {limit:?}", self.count()).into());
            }
            tokio::time::sleep(Duration::from_millis(2)).await;
        }
        let taken = self.taken.lock().map_err(|_| "poisoned")?;
        Ok((taken.first.ok_or("none")?, taken.last.ok_or("none")?))
    }
}

fn pipeline(hook: SocketAddr, target_keys: &str) -> String {
    format!(
        "namespace = \"hooks\"\n[source]\ntype = \"http\"\npublic = true\n\
         [consumer]\norder = \"per_key\"\n\
         [[target]]\nname = \"out\"\ntype = \"http\"\nurl = \"http://{hook}/hook\"\n\
         body = \"payload\"\n{target_keys}\n"
    )
}

/// Messages `0..count`, each with its own key.
fn numbered(count: u64) -> impl Iterator<Item = Value> {
    (0..count).map(|i| json!({"key": format!("k{i}"), "payload": {"i": i}}))
}

pub fn run(mode: &Mode) -> Result<Vec<Table>> {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let client = reqwest::Client::new();
    let outage = Duration::from_secs(if mode.full { 8 } else { 4 });
    let mut attempts: [Vec<f64>; 2] = Default::default();
    let mut dead_lettered = [0u64; 2];
    let heal = alternate(mode.rounds, 2, |variant| {
        runtime.block_on(async {
            let scratch = tempfile::tempdir_in(".")?;
            let hook = Hook::default();
            hook.down.store(true, Ordering::Relaxed);
            let at = hook.serve().await?;
            let keys = ["", "circuit_breaker = { enabled = false }"][variant];
            let (state, address, namespace) =
                servers::serve_pipeline(scratch.path(), "hooks", pipeline(at, keys)).await?;
            servers::write_batches(&client, address, "hooks", numbered(HEAL_MESSAGES)).await?;
            tokio::time::sleep(outage).await;
            attempts[variant].push(hook.requests.load(Ordering::Relaxed) as f64);
            let healed = Instant::now();
            hook.down.store(false, Ordering::Relaxed);
            // Every message delivered, or dead-lettered after its last attempt.
            let dead = || -> u64 {
                let counts = namespace.kept.counters.snapshot();
                counts.values().map(|c| c.dead_lettered).sum()
            };
            while (hook.count() as u64) + dead() < HEAL_MESSAGES {
                if healed.elapsed() > Duration::from_secs(180) {
                    return Err(format!("{} of {HEAL_MESSAGES} arrived", hook.count()).into());
                }
                tokio::time::sleep(Duration::from_millis(2)).await;
            }
            let took = healed.elapsed();
            dead_lettered[variant] += dead();
            state.supervisor.close().await;
            Ok(Sample::of(took.as_secs_f64()))
        })
    })?;
    let mut heal = heal.into_iter();
    let (breaker, disabled) = (
        heal.next().unwrap_or_default(),
        heal.next().unwrap_or_default(),
    );
    let median = |v: &[f64]| crate::report::median(v.iter().copied());
    let heal_table = Table {
        id: "9-heal",
        title: format!(
            "9. Time from a webhook healed to {HEAL_MESSAGES} messages (one key each) delivered or dead-lettered, after a {} s outage of 503s",
            outage.as_secs()
        ),
        unit: "s",
        rows: vec![
            Row::new("circuit breaker (defaults)", "at least once", breaker),
            Row::new("breaker disabled", "at least once", disabled),
        ],
        of: 0,
        to: 1,
        goal: Goal::None,
        notes: vec![
            format!(
                "attempts the webhook took during the outage, median: {:.0} with the breaker, {:.0} without",
                median(&attempts[0]),
                median(&attempts[1])
            ),
            format!(
                "dead-lettered over all rounds: {} with the breaker, {} without (8 attempts, 200 ms doubling, full jitter)",
                dead_lettered[0], dead_lettered[1]
            ),
        ],
    };

    let messages: u64 = if mode.full { 20_000 } else { 5_000 };
    let rate = alternate(mode.rounds, 2, |variant| {
        runtime.block_on(async {
            let scratch = tempfile::tempdir_in(".")?;
            let hook = Hook::default();
            let at = hook.serve().await?;
            let keys = ["rate_limit = { per_second = 1000000 }", ""][variant];
            let (state, address, namespace) =
                servers::serve_pipeline(scratch.path(), "hooks", pipeline(at, keys)).await?;
            namespace.kept.pauses.set(Some("out"), true)?;
            servers::write_batches(&client, address, "hooks", numbered(messages)).await?;
            namespace.kept.pauses.set(Some("out"), false)?;
            let (first, last) = hook
                .all(messages as usize, Duration::from_secs(300))
                .await?;
            state.supervisor.close().await;
            Ok(Sample::of(
                messages as f64 / last.duration_since(first).as_secs_f64(),
            ))
        })
    })?;
    let mut rate = rate.into_iter();
    let (limited, unlimited) = (
        rate.next().unwrap_or_default(),
        rate.next().unwrap_or_default(),
    );
    let rate_table = Table {
        id: "9-rate-limit",
        title: format!(
            "9. Delivery throughput to a healthy webhook, {messages} messages, rate limit far above it against none"
        ),
        unit: "messages/s",
        rows: vec![
            Row::new("rate_limit 1,000,000/s", "at least once", limited),
            Row::new("no rate limit", "at least once", unlimited),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtLeast(0.95),
        notes: vec!["timed from the first arrival to the last; written while paused".into()],
    };
    Ok(vec![heal_table, rate_table])
}
