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
pub mod config;
mod delayed;
mod lane;
mod reader;
mod recorder;
pub mod replay;
pub mod retry;

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::watch;
use tokio::task::JoinHandle;

use crate::component::{Backoff, Component, Components, keep_trying};
use crate::config::policy::RetryPolicy;
use crate::consumer::config::Order;
use crate::pipeline::config::PipelineConfig;
use crate::producer::Backend;
use crate::runtime::counters::DeliveryCounters;
use crate::shutdown::{Shutdown, Stopping};
use crate::status::StatusStore;
use crate::targets::Target;

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

/// A namespace's running delivery.
pub struct Delivery {
    /// Why delivery does not run (a target could not be built), if it does not;
    /// shared with the delivery task.
    failure: Arc<Mutex<Option<String>>>,
    /// Set by the delivery task once the targets are built and it reads the log.
    started: Arc<std::sync::atomic::AtomicBool>,
    stop: Shutdown,
    task: JoinHandle<()>,
}

/// What the delivery task works with.
struct Consumer {
    namespace: String,
    backend: Arc<dyn Backend>,
    /// The consumer group it reads as.
    group: String,
    /// Each target by name, with the retry policy that applies to it.
    targets: BTreeMap<String, (Target, RetryPolicy)>,
    status: Arc<StatusStore>,
    /// How far the status tailer has recorded the log: an update waits for it.
    /// Without a tailer, delivery records each message itself before its update.
    status_indexed: Option<watch::Receiver<u64>>,
    /// Outcomes per target, shared with the namespace.
    counters: Arc<DeliveryCounters>,
    batch_size: usize,
    /// Messages delivered at once (`[consumer] concurrency`).
    lanes: usize,
    /// How long a lane waits for its run to fill (`[consumer] linger`).
    linger: Duration,
    order: Order,
    dlq_enabled: bool,
    stopped: Stopping,
    health: DeliveryHealth,
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
/// applies to it.
pub struct Targets(BTreeMap<String, (Target, RetryPolicy)>);

impl Targets {
    /// Builds every target of `config` (clients, pools, files); the first that cannot
    /// be built is the error. Nothing is delivered yet.
    pub async fn build(config: &PipelineConfig) -> Result<Self, BuildError> {
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
            targets.insert(t.name.clone(), (target, policy));
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
        counters: Arc<DeliveryCounters>,
        components: &Components,
    ) -> Self {
        let failure = Arc::new(Mutex::new(None));
        let stop = Shutdown::new();
        let stopped = stop.stopping();
        let started = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let health = DeliveryHealth::of(components);
        let config = config.clone();
        let (running, failed) = (started.clone(), failure.clone());
        let task = tokio::spawn(async move {
            // Targets that could not be built (a file whose directory cannot be made,
            // a client that cannot be set up) are built again with backoff.
            let Some(Targets(targets)) =
                build_until_done(&config, targets, &failed, &health, &stopped).await
            else {
                return;
            };
            let consumer = Arc::new(Consumer {
                namespace: config.namespace.clone(),
                backend,
                group: config.producer.consumer_group(&config.namespace),
                targets,
                status,
                status_indexed,
                counters,
                batch_size: config.consumer.batch_size as usize,
                lanes: config.consumer.concurrency.max(1) as usize,
                linger: config.consumer.linger.get(),
                order: config.consumer.order,
                dlq_enabled: config.consumer.dlq.enabled,
                stopped,
                health,
            });
            let mut backoff = Backoff::default();
            loop {
                let began = tokio::time::Instant::now();
                let Err(e) = consumer.clone().run(&running).await else {
                    return;
                };
                consumer.health.reading.stalled(&e);
                if began.elapsed() >= HEALTHY_RUN {
                    backoff.reset();
                }
                if consumer.sleep(backoff.wait()).await.is_err() {
                    return;
                }
            }
        });
        Self {
            failure,
            started,
            stop,
            task,
        }
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
                Targets::build(config)
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
