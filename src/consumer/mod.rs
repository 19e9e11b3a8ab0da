//! `[consumer]`: delivery of one namespace, whichever its backend: reads the log as consumer group
//! [`DELIVERY_GROUP`], holds delayed messages until they are due, delivers each message
//! to each of its targets with retries, parks what keeps failing in the dead-letter log,
//! records every outcome in the status store, and only then commits its cursor.
//!
//! # Guarantees
//!
//! - At least once: the cursor passes a message only once every target of it has
//!   succeeded or the message is in the DLQ (or, for a delayed message, once it is in
//!   the durable delay index). A crash or a stop before that delivers it again.
//! - A target that succeeded is not tried again because another target of the same
//!   message failed (within one run; after a crash the message goes to all its
//!   targets again, each delivery carrying the message id for idempotency).
//! - Never early: a message with `wald-deliver-at` in the future waits in the delay
//!   index, which survives restarts.
//! - Order: `[consumer] concurrency` lanes deliver at once. With `order = "per_key"` a
//!   key's messages all go to one lane, in log order, so each key's order holds; a
//!   key being retried holds back only itself (its later messages wait behind it)
//!   while the lane delivers the other keys. With `order = "none"` messages go to the
//!   lanes in turn and a retried message holds back nothing else. The cursor moves up
//!   to the lowest message still in flight.
//! - Bounded: each lane holds at most a few hundred messages; the backlog waits on disk.

//!
//! # Where each job is
//!
//! - this file: [`Delivery`] (start, stop, what it reports), building the [`Targets`];
//! - [`config`]: the `[consumer]` table;
//! - `reader.rs`: the main loop (read, hand to lanes, commit the cursor);
//! - `lane.rs`: a lane (runs, messages held back behind a key being retried);
//! - `attempts.rs`: one pass of a run over the targets (retry, DLQ);
//! - `recorder.rs`: outcomes into the status store before the cursor passes them;
//! - `delayed.rs`: delayed messages, delivered when due;
//! - [`retry`]: the wait before the next attempt; [`replay`]: listing and replaying
//!   the DLQ.

mod attempts;
pub mod breaker;
pub mod config;
mod delayed;
mod lane;
pub mod pause;
mod reader;
mod recorder;
pub mod replay;
pub mod retry;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::alerts::Alerts;
use crate::component::{Backoff, Component, Components, keep_trying};
use crate::config::policy::RetryPolicy;
use crate::consumer::config::Order;
use crate::message::{DELAYS_GROUP, DELIVERY_GROUP, target_group, target_of_group};
use crate::pipeline::config::PipelineConfig;
use crate::processing::Processing;
use crate::producer::{Backend, BackendError};
use crate::runtime::counters::DeliveryCounters;
use crate::shutdown::{Shutdown, Stopping};
use crate::source::limits::TokenBucket;
use crate::status::StatusStore;
use crate::targets::Target;
use breaker::{Breaker, CircuitStatus};
use pause::Pauses;

/// Longest time completed deliveries wait for their cursor commit while others are
/// still in flight, and reads that only passed messages over (a target's reader
/// passing delayed ones, the delayed messages' reader the rest) wait for theirs. Each
/// commit costs two syncs; a read that handed messages on commits as soon as nothing
/// is in flight.
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// Longest time a target may take to be built (a reload or a start waits for it).
const BUILD_DEADLINE: Duration = Duration::from_secs(30);
/// A run of the consumer that lasted this long before it failed was healthy: the next
/// failure is retried after the shortest backoff again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

/// Why the targets of a namespace could not be built.
#[derive(Clone, Debug, thiserror::Error)]
pub enum BuildError {
    #[error("target `{target}`: {error}")]
    Failed {
        target: String,
        #[source]
        error: crate::targets::DeliveryError,
    },
    #[error("target `{target}`: building it took longer than {} s", BUILD_DEADLINE.as_secs())]
    TimedOut { target: String },
}

/// What delivery shares with its namespace, kept across its restarts: the outcome
/// counters, the pauses, the health of its parts, where alerts go.
#[derive(Clone)]
pub struct Kept {
    pub counters: Arc<DeliveryCounters>,
    /// DLQ replays running or lately done.
    pub replays: Arc<replay::Replays>,
    pub pauses: Arc<Pauses>,
    pub components: Arc<Components>,
    pub alerts: Alerts,
}

/// A namespace's running delivery.
pub struct Delivery {
    /// Why delivery does not run (a target could not be built), if it does not;
    /// shared with the delivery task.
    failure: Arc<Mutex<Option<String>>>,
    /// Set by the delivery task once the targets are built and it reads the log.
    started: Arc<std::sync::atomic::AtomicBool>,
    /// The targets, once built: their breakers are shown in status.
    routes: Arc<Mutex<BTreeMap<String, Arc<Route>>>>,
    stop: Shutdown,
    task: JoinHandle<()>,
}

/// What one consumer of a namespace reads the log for.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Role {
    /// Every message for every target: one reader for the namespace (the shared
    /// backends).
    Everything,
    /// One target's messages, as that target's own consumer group: a slow or failing
    /// target holds back no other. Delayed messages are the [`Role::Delays`] reader's.
    Target,
    /// Delayed messages: holds them until due and delivers them to every target.
    Delays,
}

/// What one consumer task works with.
struct Consumer {
    namespace: String,
    backend: Arc<dyn Backend>,
    /// The consumer group it reads as.
    group: String,
    role: Role,
    /// The targets it delivers to, by name.
    targets: BTreeMap<String, Arc<Route>>,
    /// Every target of the namespace, for a message's status as accepted.
    all_targets: Vec<String>,
    status: Arc<StatusStore>,
    /// How far the status tailer has recorded the log: an update waits for it.
    /// Without a tailer, delivery records each message itself before its update.
    status_indexed: Option<watch::Receiver<u64>>,
    /// Outcomes per target, shared with the namespace.
    counters: Arc<DeliveryCounters>,
    /// What an operator paused.
    pauses: Arc<Pauses>,
    /// Where a dead-lettered message is told of.
    alerts: Alerts,
    batch_size: usize,
    /// Messages delivered at once (`[consumer] concurrency`).
    lanes: usize,
    /// How long a lane waits for its run to fill (`[consumer] linger`).
    linger: Duration,
    order: Order,
    dlq_enabled: bool,
    /// Where its group's cursor stands, once committed: the delivery group's cursor
    /// follows the lowest of the per-target consumers'.
    committed: watch::Sender<u64>,
    stopped: Stopping,
    health: DeliveryHealth,
}

/// A target as delivery drives it: the built target, the retry policy that applies to
/// it, and its circuit breaker.
pub struct Route {
    pub target: Target,
    pub policy: RetryPolicy,
    pub breaker: Breaker,
    /// `rate_limit`: the most messages a second, over all lanes.
    pub rate: Option<TokenBucket>,
    /// `max_in_flight`: the most messages in delivery at once, over all lanes.
    pub in_flight: Option<Arc<tokio::sync::Semaphore>>,
    /// The namespace's `[[processor]]` steps, then the target's `filter` and
    /// `transform`.
    pub processing: Processing,
}

/// The parts of delivery that report their health on their own.
#[derive(Clone)]
struct DeliveryHealth {
    /// Reading the log and handing messages to the lanes.
    reading: Component,
    /// Committing the consumer group's cursor.
    cursor: Component,
    /// Holding delayed messages and delivering them when due.
    delays: Component,
    /// Appending to the dead-letter log.
    dlq: Component,
}

impl DeliveryHealth {
    fn of(components: &Components) -> Self {
        Self {
            reading: components.get("delivery"),
            cursor: components.get("delivery_cursor"),
            delays: components.get("delay_runner"),
            dlq: components.get("dlq"),
        }
    }
}

/// A namespace's targets, built and ready, each by name with the retry policy that
/// applies to it and its breaker.
pub struct Targets(BTreeMap<String, Arc<Route>>);

impl Targets {
    /// Builds every target of `config` (clients, pools, files), each breaker telling
    /// `alerts` when it opens and closes; the first target that cannot be built is the
    /// error. Nothing is delivered yet.
    pub async fn build(config: &PipelineConfig, alerts: &Alerts) -> Result<Self, BuildError> {
        let mut targets = BTreeMap::new();
        for t in &config.targets {
            let policy = t.retry.as_ref().map_or_else(
                || config.consumer.retry.clone(),
                |o| o.apply(&config.consumer.retry),
            );
            let target = match tokio::time::timeout(BUILD_DEADLINE, Target::build(t)).await {
                Ok(built) => built.map_err(|error| BuildError::Failed {
                    target: t.name.clone(),
                    error,
                })?,
                Err(_) => {
                    return Err(BuildError::TimedOut {
                        target: t.name.clone(),
                    });
                }
            };
            let breaker = Breaker::new(
                &config.namespace,
                &t.name,
                t.circuit_breaker.clone(),
                alerts.clone(),
            );
            targets.insert(
                t.name.clone(),
                Arc::new(Route {
                    target,
                    policy,
                    breaker,
                    rate: t.rate_limit.map(TokenBucket::new),
                    in_flight: t
                        .max_in_flight
                        .map(|max| Arc::new(tokio::sync::Semaphore::new(max as usize))),
                    processing: Processing::new(&config.processors, t),
                }),
            );
        }
        Ok(Self(targets))
    }
}

impl Delivery {
    /// Starts delivering to `targets`. Targets that could not be built keep delivery
    /// down (the messages wait in the log) and are built again with backoff, the
    /// reason reported meanwhile. A run of the
    /// consumer that fails (the log cannot be read) is started again with backoff from
    /// the group's cursor, its parts reporting to `components` meanwhile.
    pub fn start(
        config: &PipelineConfig,
        targets: Result<Targets, BuildError>,
        backend: Arc<dyn Backend>,
        status: Arc<StatusStore>,
        status_indexed: Option<watch::Receiver<u64>>,
        kept: &Kept,
    ) -> Self {
        let failure = Arc::new(Mutex::new(None));
        let stop = Shutdown::new();
        let stopped = stop.stopping();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let health = DeliveryHealth::of(&kept.components);
        let (counters, pauses, alerts) = (
            kept.counters.clone(),
            kept.pauses.clone(),
            kept.alerts.clone(),
        );
        let config = config.clone();
        let (running, failed) = (started.clone(), failure.clone());
        let routes = Arc::new(Mutex::new(BTreeMap::new()));
        let shown = routes.clone();
        let task = tokio::spawn(async move {
            // Targets that could not be built (a file whose directory cannot be made,
            // a client that cannot be set up) are built again with backoff.
            let Some(Targets(targets)) =
                build_until_done(&config, targets, &alerts, &failed, &health, &stopped).await
            else {
                return;
            };
            if let Ok(mut shown) = shown.lock() {
                shown.clone_from(&targets);
            }
            let base = Consumer {
                namespace: config.namespace.clone(),
                backend,
                group: config.producer.consumer_group(&config.namespace),
                role: Role::Everything,
                all_targets: targets.keys().cloned().collect(),
                targets,
                status,
                status_indexed,
                counters,
                pauses,
                alerts,
                batch_size: config.consumer.batch_size as usize,
                lanes: config.consumer.concurrency.max(1) as usize,
                linger: config.consumer.linger.get(),
                order: config.consumer.order,
                dlq_enabled: config.consumer.dlq.enabled,
                committed: watch::channel(0).0,
                stopped,
                health,
            };
            let Some(consumers) = base.split_per_target().await else {
                return;
            };
            let cursor = (consumers.len() > 1).then(|| {
                let positions = consumers.iter().map(|c| c.committed.subscribe()).collect();
                let first = &consumers[0];
                let (backend, health) = (first.backend.clone(), first.health.cursor.clone());
                follow_lowest(backend, health, positions, first.stopped.clone())
            });
            let runs = consumers
                .into_iter()
                .map(|consumer| Arc::new(consumer).run_until_stopped(&running));
            tokio::join!(futures::future::join_all(runs), async {
                if let Some(cursor) = cursor {
                    cursor.await;
                }
            });
        });
        Self {
            failure,
            started,
            routes,
            stop,
            task,
        }
    }

    /// Each target's circuit breaker, once the targets are built.
    pub fn circuits(&self) -> BTreeMap<String, CircuitStatus> {
        self.routes
            .lock()
            .map(|routes| {
                routes
                    .iter()
                    .map(|(name, route)| (name.clone(), route.breaker.status()))
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Why delivery does not run, if it does not.
    pub fn failure(&self) -> Option<String> {
        self.failure.lock().ok().and_then(|f| f.clone())
    }

    /// Whether the targets are built and the consumer reads the log.
    pub fn started(&self) -> bool {
        self.started.load(std::sync::atomic::Ordering::Acquire)
    }

    /// Stops after the message in hand; what was not committed is delivered again
    /// after the next start.
    pub async fn stop(self) {
        self.stop.stop();
        let _ = self.task.await;
    }
}

/// The targets `built` holds, or, if they could not be built, built again with backoff
/// until they are (reported as why delivery does not run meanwhile); none if the
/// namespace stops first.
async fn build_until_done(
    config: &PipelineConfig,
    built: Result<Targets, BuildError>,
    alerts: &Alerts,
    failure: &Mutex<Option<String>>,
    health: &DeliveryHealth,
    stopped: &Stopping,
) -> Option<Targets> {
    let set = |reason: Option<String>| {
        if let Ok(mut failure) = failure.lock() {
            *failure = reason;
        }
    };
    let targets = match built {
        Ok(targets) => targets,
        Err(e) => {
            let what = "building the targets (messages wait in the log)";
            health.reading.stalled(&format!("{what}: {e}"));
            set(Some(e.to_string()));
            keep_trying(&health.reading, true, what, stopped, || async {
                Targets::build(config, alerts)
                    .await
                    .inspect_err(|e| set(Some(e.to_string())))
            })
            .await
            .ok()?
        }
    };
    set(None);
    Some(targets)
}

impl Consumer {
    /// The consumers that deliver what `self` would: itself, or, where the backend
    /// gives each target a consumer group of its own, one per target and one for
    /// delayed messages. A new group starts where the delivery group stands; the groups
    /// of targets no longer there are forgotten. None if the namespace stops first.
    async fn split_per_target(self) -> Option<Vec<Consumer>> {
        if !self.backend.reads_per_target() {
            return Some(vec![self]);
        }
        let what = "making each target's consumer group";
        let groups = keep_trying(&self.health.reading, true, what, &self.stopped, || async {
            let groups = self.targets.keys().map(|name| target_group(name));
            for group in groups.chain([DELAYS_GROUP.to_string()]) {
                self.backend.branch_group(&group, &self.group).await?;
            }
            let stale = self.backend.positions().await?.map(|p| p.groups);
            for stale in stale.unwrap_or_default() {
                let group = stale.group;
                if target_of_group(&group).is_some_and(|t| !self.targets.contains_key(t)) {
                    self.backend.forget_group(&group).await?;
                }
            }
            Ok::<_, BackendError>(())
        })
        .await;
        groups.ok()?;
        let mut consumers = Vec::with_capacity(self.targets.len() + 1);
        for (name, route) in &self.targets {
            consumers.push(Consumer {
                group: target_group(name),
                role: Role::Target,
                targets: BTreeMap::from([(name.clone(), route.clone())]),
                ..self.clone_settings()
            });
        }
        consumers.push(Consumer {
            group: DELAYS_GROUP.to_string(),
            role: Role::Delays,
            ..self
        });
        Some(consumers)
    }

    /// A copy of what every consumer of the namespace shares, to build another from.
    fn clone_settings(&self) -> Consumer {
        Consumer {
            namespace: self.namespace.clone(),
            backend: self.backend.clone(),
            group: self.group.clone(),
            role: self.role,
            targets: self.targets.clone(),
            all_targets: self.all_targets.clone(),
            status: self.status.clone(),
            status_indexed: self.status_indexed.clone(),
            counters: self.counters.clone(),
            pauses: self.pauses.clone(),
            alerts: self.alerts.clone(),
            batch_size: self.batch_size,
            lanes: self.lanes,
            linger: self.linger,
            order: self.order,
            dlq_enabled: self.dlq_enabled,
            committed: watch::channel(0).0,
            stopped: self.stopped.clone(),
            health: self.health.clone(),
        }
    }

    /// Runs the consumer; a run that fails (the log cannot be read) starts again with
    /// backoff from the group's cursor, until the namespace stops.
    async fn run_until_stopped(self: Arc<Self>, running: &std::sync::atomic::AtomicBool) {
        let mut backoff = Backoff::default();
        loop {
            let began = tokio::time::Instant::now();
            let Err(e) = self.clone().run(running).await else {
                return;
            };
            self.health.reading.stalled(&e);
            if began.elapsed() >= HEALTHY_RUN {
                backoff.reset();
            }
            if self.sleep(backoff.wait()).await.is_err() {
                return;
            }
        }
    }
}

/// Keeps the delivery group's cursor at the lowest of the per-target consumers' (and
/// the delayed messages' reader's), so that retention and status see the namespace's
/// delivery as far as its slowest target; until every consumer has stopped, with
/// their last positions committed.
async fn follow_lowest(
    backend: Arc<dyn Backend>,
    health: Component,
    mut positions: Vec<watch::Receiver<u64>>,
    stopped: Stopping,
) {
    let what = "reading the delivery cursor";
    let Ok(mut cursor) = keep_trying(&health, true, what, &stopped, || {
        backend.subscribe(DELIVERY_GROUP)
    })
    .await
    else {
        return;
    };
    // The consumers' groups start at or past it: it never moves back.
    let mut committed = cursor.position();
    let mut backoff = Backoff::default();
    loop {
        let all_stopped = positions.iter().all(|p| p.has_changed().is_err());
        let lowest = positions.iter().map(|p| *p.borrow()).min().unwrap_or(0);
        let mut retry = None;
        if lowest > committed {
            match cursor.commit(lowest).await {
                Ok(()) => {
                    committed = lowest;
                    backoff.reset();
                    health.recovered();
                }
                Err(e) => {
                    health.degraded(&format!("committing the delivery cursor: {e}"));
                    retry = Some(backoff.wait());
                }
            }
        }
        if all_stopped {
            return;
        }
        let changes: Vec<_> = positions
            .iter_mut()
            .filter(|p| p.has_changed().is_ok())
            .map(|p| Box::pin(p.changed()))
            .collect();
        if changes.is_empty() {
            continue;
        }
        tokio::select! {
            _ = futures::future::select_all(changes) => {}
            () = tokio::time::sleep(retry.unwrap_or_default()), if retry.is_some() => {}
        }
        // Commits cost syncs: one at most every so often.
        tokio::time::sleep(COMMIT_EVERY).await;
    }
}
