//! Delivery of one namespace, whichever its backend: reads the log as consumer group
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

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::{mpsc, watch};
use tokio::task::JoinHandle;
use tokio::time::sleep_until;
use tracing::{error, info, warn};

use crate::component::{Backoff, Component, Components, Stopped, retry, sleep_unless_stopped};
use crate::config::policy::RetryPolicy;
use crate::consumer::config::Order;
use crate::message::now_ms;
use crate::message::{
    HEADER_DELIVER_AT, HEADER_DLQ_ATTEMPTS, HEADER_DLQ_FIRST_ERROR, HEADER_DLQ_FIRST_FAILED_MS,
    HEADER_DLQ_LAST_ERROR, HEADER_DLQ_LAST_FAILED_MS, HEADER_DLQ_SOURCE_OFFSET, HEADER_DLQ_TARGET,
    HEADER_TARGETS, Record, StoredRecord,
};
use crate::pipeline::config::PipelineConfig;
use crate::producer::{Backend, BackendError};
use crate::runtime::counters::{DeliveryCounters, Outcome};
use crate::runtime::retry;
use crate::shutdown::{Shutdown, Stopping};
use crate::status::{
    DeliveryState, MessageStatus, StatusError, StatusStore, TargetStatus, TargetUpdate,
};
use crate::targets::{DeliveryError, Message, Target};

/// Longest wait for new records before the delay index is looked at again.
const IDLE_CHECK: Duration = Duration::from_secs(1);
/// Messages waiting per lane; with the lanes, bounds what delivery holds in memory.
const LANE_DEPTH: usize = 256;
/// Messages a lane holds back behind keys being retried; once it holds that many it
/// takes nothing new until a retry is done, so that memory stays bounded.
const HELD_MAX: usize = LANE_DEPTH / 2;
/// Longest time completed deliveries wait for their cursor commit while others are
/// still in flight (each commit costs two syncs).
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// Shortest time between two writes of delivery outcomes to the status store.
const STATUS_PACE: Duration = Duration::from_millis(50);
/// Longest wait for the status tailer before a status update is written anyway.
const STATUS_WAIT: Duration = Duration::from_secs(5);
/// Longest time a target may take to be built (a reload or a start waits for it).
const BUILD_DEADLINE: Duration = Duration::from_secs(30);
/// A run of the consumer that lasted this long before it failed was healthy: the next
/// failure is retried after the shortest backoff again.
const HEALTHY_RUN: Duration = Duration::from_secs(60);

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

/// A message in a lane, with what is left to do for it.
struct InFlight {
    record: StoredRecord,
    /// The targets it has still to reach, with the tries so far.
    pending: BTreeMap<String, Tries>,
    /// Its final state at each target reached so far, for the status store.
    updates: Vec<TargetUpdate>,
}

#[derive(Default)]
struct Tries {
    attempts: u32,
    /// The first error and when it happened (milliseconds since the epoch).
    first_error: Option<(String, u64)>,
}

impl InFlight {
    fn new(record: StoredRecord, targets: &BTreeMap<String, (Target, RetryPolicy)>) -> Self {
        let pending = targets
            .keys()
            .filter(|name| goes_to(&record, name))
            .map(|name| (name.clone(), Tries::default()))
            .collect();
        Self {
            record,
            pending,
            updates: Vec::new(),
        }
    }
}

/// What a failed message holds back: its key, or only itself.
#[derive(Clone, PartialEq, Eq, Hash)]
enum LaneKey {
    Key(Vec<u8>),
    Offset(u64),
}

/// The messages a lane holds back, by key, in log order, each key with the time its
/// retry is due. At most [`HELD_MAX`].
#[derive(Default)]
struct Held {
    keys: HashMap<LaneKey, (VecDeque<InFlight>, tokio::time::Instant)>,
    count: usize,
}

impl Held {
    fn len(&self) -> usize {
        self.count
    }

    fn is_empty(&self) -> bool {
        self.count == 0
    }

    fn holds(&self, key: &LaneKey) -> bool {
        self.keys.contains_key(key)
    }

    /// Holds `message` behind its key, which is tried again no sooner than `due`.
    fn push(&mut self, key: LaneKey, message: InFlight, due: tokio::time::Instant) {
        let (queue, at) = self
            .keys
            .entry(key)
            .or_insert_with(|| (VecDeque::new(), due));
        *at = (*at).max(due);
        queue.push_back(message);
        self.count += 1;
    }

    /// The messages of every key whose retry is due, each key in order.
    fn take_due(&mut self, now: tokio::time::Instant) -> Vec<InFlight> {
        let due: Vec<LaneKey> = self
            .keys
            .iter()
            .filter(|(_, (_, at))| *at <= now)
            .map(|(key, _)| key.clone())
            .collect();
        let mut run = Vec::new();
        for key in due {
            if let Some((queue, _)) = self.keys.remove(&key) {
                self.count -= queue.len();
                run.extend(queue);
            }
        }
        run.sort_by_key(|m| m.record.offset);
        run
    }

    fn next_retry(&self) -> tokio::time::Instant {
        self.keys
            .values()
            .map(|(_, at)| *at)
            .min()
            .unwrap_or_else(tokio::time::Instant::now)
    }
}

/// What a lane delivered: the final state per target of each message of a run, the
/// messages themselves when delivery records them (no status tailer), and the run's
/// offsets.
struct Outcomes {
    updates: Vec<TargetUpdate>,
    accepted: Vec<MessageStatus>,
    offsets: Vec<u64>,
}

/// A namespace's targets, built and ready, each by name with the retry policy that
/// applies to it.
pub struct Targets(BTreeMap<String, (Target, RetryPolicy)>);

impl Targets {
    /// Builds every target of `config` (clients, pools, files); the first that cannot
    /// be built is the error. Nothing is delivered yet.
    pub async fn build(config: &PipelineConfig) -> Result<Self, String> {
        let mut targets = BTreeMap::new();
        for t in &config.targets {
            let policy = t.retry.as_ref().map_or_else(
                || config.consumer.retry.clone(),
                |o| o.apply(&config.consumer.retry),
            );
            let target = match tokio::time::timeout(BUILD_DEADLINE, Target::build(t)).await {
                Ok(built) => built.map_err(|e| format!("target `{}`: {e}", t.name))?,
                Err(_) => {
                    return Err(format!(
                        "target `{}`: building it took longer than {} s",
                        t.name,
                        BUILD_DEADLINE.as_secs()
                    ));
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
        targets: Result<Targets, String>,
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
    built: Result<Targets, String>,
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
            set(Some(e));
            retry(&health.reading, true, what, stopped, || async {
                Targets::build(config)
                    .await
                    .inspect_err(|e| set(Some(e.clone())))
            })
            .await
            .ok()?
        }
    };
    set(None);
    Some(targets)
}

impl Consumer {
    /// Reads the log and hands each message to a lane; commits the cursor up to the
    /// lowest offset still in flight. Delayed messages are scheduled, and delivered by
    /// their own task when due. Ends `Ok` once the namespace stops, after the lanes
    /// finished what they hold and the cursor is committed; or with the error of a read
    /// that failed, abandoning what is in flight (it is delivered again from the
    /// cursor).
    async fn run(
        self: Arc<Self>,
        started: &std::sync::atomic::AtomicBool,
    ) -> Result<(), BackendError> {
        let mut subscription = self.backend.subscribe(&self.group).await?;
        started.store(true, std::sync::atomic::Ordering::Release);
        info!(namespace = %self.namespace, from = subscription.position(), lanes = self.lanes, "Delivery started.");
        // Dropped (the tasks aborted) when the run fails.
        let mut helpers = tokio::task::JoinSet::new();
        helpers.spawn(self.clone().deliver_delayed());
        let (done_tx, mut done) = mpsc::unbounded_channel::<u64>();
        // Lanes hand what they delivered to the recorder, which records it in the
        // status store and only then reports the offsets done: a lane goes on with its
        // next run meanwhile.
        let (outcomes_tx, outcomes_rx) = mpsc::channel::<Outcomes>(self.lanes * 2);
        let mut lanes = Vec::with_capacity(self.lanes);
        let mut lane_tasks = tokio::task::JoinSet::new();
        for _ in 0..self.lanes {
            let (tx, rx) = mpsc::channel::<StoredRecord>(LANE_DEPTH);
            lanes.push(tx);
            let (consumer, outcomes) = (self.clone(), outcomes_tx.clone());
            lane_tasks.spawn(consumer.lane(rx, outcomes));
        }
        drop(outcomes_tx);
        helpers.spawn(self.clone().record_outcomes(outcomes_rx, done_tx));
        let mut in_flight = BTreeSet::new();
        let mut read_up_to = subscription.position();
        let mut committed = read_up_to;
        let mut last_commit = tokio::time::Instant::now();
        // A commit that failed is tried again no sooner than this.
        let mut commit_backoff = Backoff::default();
        let mut next_commit = last_commit;
        // A read that did not fill a batch waits `linger` before the next one, so that
        // under load each read takes many records rather than one group commit's few.
        let mut next_read = tokio::time::Instant::now();
        let mut next_lane = 0usize;
        let stopped = self.stopped.clone();
        let result = loop {
            let watermark = in_flight.first().copied().unwrap_or(read_up_to);
            let now = tokio::time::Instant::now();
            let commit_due = watermark > committed
                && now >= next_commit
                && (in_flight.is_empty() || now >= last_commit + COMMIT_EVERY);
            if commit_due {
                // A cursor that cannot be written (a full disk, a broker away) holds
                // delivery to nothing: it goes on, and the commit is tried again.
                match subscription.commit(watermark).await {
                    Ok(()) => {
                        committed = watermark;
                        last_commit = tokio::time::Instant::now();
                        next_commit = last_commit;
                        commit_backoff.reset();
                        self.health.cursor.recovered();
                    }
                    Err(e) => {
                        self.health
                            .cursor
                            .degraded(&format!("committing the cursor: {e}"));
                        next_commit = tokio::time::Instant::now() + commit_backoff.wait();
                    }
                }
            }
            tokio::select! {
                biased;
                () = stopped.wait() => break Ok(()),
                Some(offset) = done.recv() => {
                    in_flight.remove(&offset);
                }
                _ = tokio::time::sleep_until(next_commit.max(last_commit + COMMIT_EVERY)), if watermark > committed => {}
                records = async {
                    tokio::time::sleep_until(next_read).await;
                    subscription.next_batch(self.batch_size).await
                } => {
                    let records = match records {
                        Ok(records) => records,
                        Err(e) => break Err(e),
                    };
                    self.health.reading.recovered();
                    next_read = tokio::time::Instant::now()
                        + if records.len() < self.batch_size { self.linger } else { Duration::ZERO };
                    let Some(next) = records.last().map(|r| r.offset + 1) else {
                        continue;
                    };
                    let now = now_ms();
                    let mut delayed = Vec::new();
                    let mut lost_lane = false;
                    // Messages free to go anywhere take one lane per read, so that the
                    // lane's run is the whole read: a full batch for the targets.
                    next_lane = (next_lane + 1) % self.lanes;
                    for record in records {
                        if let Some(due) = due_ms(&record).filter(|due| *due > now) {
                            delayed.push((record, due));
                            continue;
                        }
                        let lane = self.lane_of(&record, next_lane);
                        in_flight.insert(record.offset);
                        // Waits while the lane is full: the backlog stays on disk.
                        if lanes[lane].send(record).await.is_err() {
                            lost_lane = true;
                            break;
                        }
                    }
                    if lost_lane {
                        if self.stopped.is_stopping() {
                            break Ok(());
                        }
                        break Err(BackendError::Unavailable("a delivery lane ended".into()));
                    }
                    if !delayed.is_empty() && self.schedule(delayed).await.is_err() {
                        break Ok(());
                    }
                    read_up_to = next;
                }
            }
        };
        // A failed run abandons what is in flight (the tasks are aborted when
        // `helpers` and `lane_tasks` drop): it is delivered again from the cursor.
        result?;
        // Stopping: the lanes finish or abandon the message in hand; what completed is
        // committed, the rest is delivered again after the next start.
        drop(lanes);
        while lane_tasks.join_next().await.is_some() {}
        while helpers.join_next().await.is_some() {}
        while let Ok(offset) = done.try_recv() {
            in_flight.remove(&offset);
        }
        let watermark = in_flight.first().copied().unwrap_or(read_up_to);
        if watermark > committed
            && let Err(e) = subscription.commit(watermark).await
        {
            self.health
                .cursor
                .degraded(&format!("committing the cursor at stop: {e}"));
        }
        Ok(())
    }

    /// Has the backend hold delayed messages, trying again while it fails. `Stopped`
    /// when the namespace stopped first.
    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), Stopped> {
        let what = "holding delayed messages";
        retry(&self.health.delays, true, what, &self.stopped, || {
            self.backend.schedule(delayed.clone())
        })
        .await
    }

    /// Waits `wait`; `Stopped` at once when the namespace stops meanwhile.
    async fn sleep(&self, wait: Duration) -> Result<(), Stopped> {
        sleep_unless_stopped(wait, &self.stopped).await
    }

    /// The lane a message goes to: by its key's hash with `order = "per_key"` (so one
    /// key's messages keep their order), else the lane of the current read.
    fn lane_of(&self, record: &StoredRecord, read_lane: usize) -> usize {
        match (&record.key, self.order) {
            // CRC32C: stable across versions and machines, so the lane of a key is too.
            (Some(key), Order::PerKey) => crc32c::crc32c(key) as usize % self.lanes,
            _ => read_lane,
        }
    }

    /// Delivers delayed messages as they come due, until the namespace stops.
    async fn deliver_delayed(self: Arc<Self>) {
        let stopped = self.stopped.clone();
        loop {
            if self.deliver_due().await.is_err() {
                return;
            }
            let wait = match self.backend.next_due().await {
                Ok(Some(due)) => Duration::from_millis(due.saturating_sub(now_ms())),
                Ok(None) => IDLE_CHECK,
                Err(e) => {
                    self.health
                        .delays
                        .degraded(&format!("looking at delayed messages: {e}"));
                    IDLE_CHECK
                }
            }
            .min(IDLE_CHECK);
            tokio::select! {
                _ = tokio::time::sleep(wait) => {}
                () = stopped.wait() => return,
            }
        }
    }

    /// Delivers the delayed messages that are due, and forgets them in the index.
    async fn deliver_due(&self) -> Result<(), Stopped> {
        let due = match self.backend.due(now_ms(), self.batch_size).await {
            Ok(due) => due,
            Err(e) => {
                self.health
                    .delays
                    .degraded(&format!("taking due delayed messages: {e}"));
                return Ok(());
            }
        };
        if due.is_empty() {
            return Ok(());
        }
        for record in &due {
            let updates = self.deliver_fully(record.clone()).await?;
            self.record_until_done(&updates, record.offset, &self.accepted(record))
                .await?;
        }
        // Delivered, and their outcomes recorded: until the index forgets them they
        // would be delivered again, so keep trying.
        let what = "marking delayed messages delivered";
        retry(&self.health.delays, false, what, &self.stopped, || {
            self.backend.complete(due.clone())
        })
        .await
    }

    /// One lane: takes the messages handed to it in runs (what comes within `linger`
    /// of the first, up to `batch_size`) and delivers each run. A message that fails
    /// and will be retried holds back its key alone: its key's messages wait in the
    /// lane, in order, until the retry is due, while every other key goes on. Messages
    /// without a key, or with `order = "none"`, hold back only themselves.
    async fn lane(
        self: Arc<Self>,
        mut incoming: mpsc::Receiver<StoredRecord>,
        outcomes: mpsc::Sender<Outcomes>,
    ) {
        let mut held = Held::default();
        let mut open = true;
        let stopped = self.stopped.clone();
        loop {
            // Stopping: a lane delivers what it was handed, but does not wait out a
            // retry. What is held is not done, so it is delivered again after the next
            // start.
            if !held.is_empty() && stopped.is_stopping() {
                return;
            }
            let mut run = held.take_due(tokio::time::Instant::now());
            if run.is_empty() {
                if !open {
                    return;
                }
                tokio::select! {
                    record = incoming.recv(), if held.len() < HELD_MAX => match record {
                        Some(record) => self.admit(record, &mut run, &mut held),
                        None => open = false,
                    },
                    () = sleep_until(held.next_retry()), if !held.is_empty() => {}
                    () = stopped.wait(), if !held.is_empty() => return,
                }
                if run.is_empty() {
                    continue;
                }
            }
            let until = tokio::time::Instant::now() + self.linger;
            while open && run.len() < self.batch_size && held.len() < HELD_MAX {
                let record = match incoming.try_recv() {
                    Ok(record) => Some(record),
                    Err(mpsc::error::TryRecvError::Empty) => {
                        match tokio::time::timeout_at(until, incoming.recv()).await {
                            Ok(record) => record,
                            Err(_) => break,
                        }
                    }
                    Err(mpsc::error::TryRecvError::Disconnected) => None,
                };
                match record {
                    Some(record) => self.admit(record, &mut run, &mut held),
                    None => open = false,
                }
            }
            let Ok(retry_at) = self.deliver(&mut run).await else {
                return;
            };
            let mut done = Outcomes {
                updates: Vec::new(),
                accepted: Vec::new(),
                offsets: Vec::new(),
            };
            for message in run {
                if message.pending.is_empty() {
                    done.offsets.push(message.record.offset);
                    done.accepted.extend(self.accepted(&message.record));
                    done.updates.extend(message.updates);
                } else {
                    let key = self.lane_key(&message.record);
                    let due = retry_at
                        .get(&key)
                        .copied()
                        .unwrap_or_else(tokio::time::Instant::now);
                    held.push(key, message, due);
                }
            }
            if !done.offsets.is_empty() && outcomes.send(done).await.is_err() {
                return;
            }
        }
    }

    /// A new message joins the run, or waits behind its key if that key is held.
    fn admit(&self, record: StoredRecord, run: &mut Vec<InFlight>, held: &mut Held) {
        let message = InFlight::new(record, &self.targets);
        let key = self.lane_key(&message.record);
        if held.holds(&key) {
            held.push(key, message, tokio::time::Instant::now());
        } else {
            run.push(message);
        }
    }

    /// What holds a message back when another fails: its key with `order = "per_key"`,
    /// else nothing but itself.
    fn lane_key(&self, record: &StoredRecord) -> LaneKey {
        match (&record.key, self.order) {
            (Some(key), Order::PerKey) => LaneKey::Key(key.clone()),
            _ => LaneKey::Offset(record.offset),
        }
    }

    /// Delivers a message until every target of it succeeded or dead-lettered it,
    /// waiting out each retry (the delayed messages' path: one message at a time).
    async fn deliver_fully(&self, record: StoredRecord) -> Result<Vec<TargetUpdate>, Stopped> {
        let mut run = vec![InFlight::new(record, &self.targets)];
        loop {
            let retry_at = self.deliver(&mut run).await?;
            if run[0].pending.is_empty() {
                return Ok(std::mem::take(&mut run[0].updates));
            }
            let due = retry_at
                .values()
                .min()
                .copied()
                .unwrap_or_else(tokio::time::Instant::now);
            let stopped = self.stopped.clone();
            tokio::select! {
                () = tokio::time::sleep_until(due) => {}
                () = stopped.wait() => return Err(Stopped),
            }
        }
    }

    /// One pass over a run: each target gets its pending messages as one batch, in log
    /// order. A message the target refuses for good, or that used its last attempt,
    /// goes to the DLQ; one that will be retried holds back the rest of its key for
    /// that target, and the batch goes on without them. Returns when each held key may
    /// be tried again.
    async fn deliver(
        &self,
        run: &mut [InFlight],
    ) -> Result<HashMap<LaneKey, tokio::time::Instant>, Stopped> {
        let mut retry_at: HashMap<LaneKey, tokio::time::Instant> = HashMap::new();
        for (name, (target, policy)) in &self.targets {
            let mut blocked: HashSet<LaneKey> = HashSet::new();
            loop {
                let chosen: Vec<usize> = (0..run.len())
                    .filter(|&i| run[i].pending.contains_key(name))
                    .filter(|&i| !blocked.contains(&self.lane_key(&run[i].record)))
                    .collect();
                if chosen.is_empty() {
                    break;
                }
                let batch: Vec<Message> = chosen
                    .iter()
                    .map(|&i| Message::of_record(&self.namespace, &run[i].record))
                    .collect();
                let result = target.deliver_batch(&batch).await;
                let reached = match &result {
                    Ok(()) => batch.len(),
                    Err(failed) => failed.delivered,
                };
                if reached > 0 {
                    self.counters
                        .record(name, Outcome::Delivered(reached as u64));
                }
                for (&i, message) in chosen[..reached].iter().zip(&batch) {
                    let tries = run[i].pending.remove(name).map_or(0, |t| t.attempts);
                    let update =
                        self.update(message, name, DeliveryState::Delivered, tries + 1, None);
                    run[i].updates.push(update);
                }
                let Err(failed) = result else {
                    break;
                };
                let (i, message, e) = (chosen[reached], &batch[reached], &failed.error);
                let failed_at = now_ms();
                let Some(tries) = run[i].pending.get_mut(name) else {
                    break;
                };
                tries.attempts += 1;
                let attempts = tries.attempts;
                let first = tries
                    .first_error
                    .get_or_insert_with(|| (e.message.clone(), failed_at))
                    .clone();
                let (error, at_ms) = (e.message.as_str(), failed_at);
                if !e.retriable || attempts >= policy.max_attempts {
                    self.counters
                        .record(name, Outcome::DeadLettered { error, at_ms });
                    self.dead_letter(&run[i].record, name, attempts, &first, e, failed_at)
                        .await?;
                    run[i].pending.remove(name);
                    let update = self.update(
                        message,
                        name,
                        DeliveryState::DeadLettered,
                        attempts,
                        Some(e),
                    );
                    run[i].updates.push(update);
                    continue;
                }
                warn!(namespace = %self.namespace, target = %name, message_id = %message.message_id, attempt = attempts, error = %e, "Delivery failed; retrying.");
                self.counters
                    .record(name, Outcome::Retried { error, at_ms });
                let update = self.update(message, name, DeliveryState::Retrying, attempts, Some(e));
                let accepted = self.accepted(&run[i].record);
                // What a retry shows is not kept at any cost: the final state is.
                let _ = self
                    .record_status(&[update], message.offset, &accepted)
                    .await;
                let key = self.lane_key(&run[i].record);
                let due =
                    tokio::time::Instant::now() + retry::next_wait(policy, attempts, e.retry_after);
                retry_at
                    .entry(key.clone())
                    .and_modify(|at| *at = (*at).max(due))
                    .or_insert(due);
                blocked.insert(key);
                // A target that is down fails every key in turn: stopping does not
                // wait for the rest of the pass.
                if self.stopped.is_stopping() {
                    return Err(Stopped);
                }
            }
        }
        Ok(retry_at)
    }

    /// Records what the lanes delivered in the status store, at most one write per
    /// [`STATUS_PACE`], then reports those offsets done so that the cursor may pass
    /// them.
    async fn record_outcomes(
        self: Arc<Self>,
        mut outcomes: mpsc::Receiver<Outcomes>,
        done: mpsc::UnboundedSender<u64>,
    ) {
        let mut last_write = tokio::time::Instant::now();
        while let Some(first) = outcomes.recv().await {
            let mut gathered = vec![first];
            // Each write costs the store a sync: gather what comes in for a while.
            while let Ok(Some(more)) =
                tokio::time::timeout_at(last_write + STATUS_PACE, outcomes.recv()).await
            {
                gathered.push(more);
            }
            let up_to = gathered
                .iter()
                .flat_map(|o| o.offsets.last())
                .max()
                .copied()
                .unwrap_or(0);
            let updates: Vec<TargetUpdate> = gathered
                .iter_mut()
                .flat_map(|o| std::mem::take(&mut o.updates))
                .collect();
            let accepted: Vec<MessageStatus> = gathered
                .iter_mut()
                .flat_map(|o| std::mem::take(&mut o.accepted))
                .collect();
            // Stopping with outcomes unrecorded: their offsets are not done, so they
            // are delivered again after the next start.
            if self
                .record_until_done(&updates, up_to, &accepted)
                .await
                .is_err()
            {
                return;
            }
            last_write = tokio::time::Instant::now();
            for offset in gathered.into_iter().flat_map(|o| o.offsets) {
                let _ = done.send(offset);
            }
        }
    }

    /// Appends the message to the dead-letter log with why it is there. Keeps trying
    /// while the DLQ fails: the message must not be lost.
    async fn dead_letter(
        &self,
        record: &StoredRecord,
        target: &str,
        attempts: u32,
        first: &(String, u64),
        last: &DeliveryError,
        last_ms: u64,
    ) -> Result<(), Stopped> {
        if !self.dlq_enabled {
            error!(namespace = %self.namespace, target, offset = record.offset, error = %last, "Message dropped after its last attempt: the DLQ is disabled.");
            return Ok(());
        }
        error!(namespace = %self.namespace, target, offset = record.offset, attempts, error = %last, "Message sent to the DLQ.");
        let mut headers = record.headers.clone();
        headers.extend([
            (HEADER_DLQ_TARGET.to_string(), target.as_bytes().to_vec()),
            (
                HEADER_DLQ_ATTEMPTS.to_string(),
                attempts.to_string().into_bytes(),
            ),
            (
                HEADER_DLQ_FIRST_ERROR.to_string(),
                first.0.clone().into_bytes(),
            ),
            (
                HEADER_DLQ_FIRST_FAILED_MS.to_string(),
                first.1.to_string().into_bytes(),
            ),
            (
                HEADER_DLQ_LAST_ERROR.to_string(),
                last.message.clone().into_bytes(),
            ),
            (
                HEADER_DLQ_LAST_FAILED_MS.to_string(),
                last_ms.to_string().into_bytes(),
            ),
            (
                HEADER_DLQ_SOURCE_OFFSET.to_string(),
                record.offset.to_string().into_bytes(),
            ),
        ]);
        let entry = Record {
            key: record.key.clone(),
            headers,
            payload: record.payload.clone(),
        };
        retry(
            &self.health.dlq,
            true,
            "appending to the DLQ",
            &self.stopped,
            || self.backend.dead_letter(vec![entry.clone()]),
        )
        .await
    }

    fn update(
        &self,
        message: &Message,
        target: &str,
        state: DeliveryState,
        attempts: u32,
        error: Option<&DeliveryError>,
    ) -> TargetUpdate {
        TargetUpdate {
            transaction_id: message.transaction_id.clone(),
            message_id: message.message_id.clone(),
            target: target.to_string(),
            status: TargetStatus {
                state,
                attempts,
                last_error: error.map(|e| e.message.clone()),
                updated_at_ms: now_ms(),
            },
        }
    }

    /// The status of `record` as accepted, for delivery to record before its
    /// updates when no status tailer does (an update of a message the store does not
    /// have is lost); none with a tailer.
    fn accepted(&self, record: &StoredRecord) -> Vec<MessageStatus> {
        if self.status_indexed.is_some() {
            return Vec::new();
        }
        MessageStatus::of_record(record, &self.namespace, self.targets.keys())
            .into_iter()
            .collect()
    }

    /// [`Consumer::record_status`], tried again with backoff until the store took it:
    /// a message's final state is never lost, and the cursor does not pass it before.
    /// `Stopped` when the namespace stops first.
    async fn record_until_done(
        &self,
        updates: &[TargetUpdate],
        offset: u64,
        accepted: &[MessageStatus],
    ) -> Result<(), Stopped> {
        let what = "recording outcomes in the status store";
        retry(&self.health.reading, true, what, &self.stopped, || {
            self.record_status(updates, offset, accepted)
        })
        .await
    }

    /// Records target states once the message itself is in the status store: the
    /// status tailer recorded it, or `accepted` records it here (a no-op for a
    /// message already there).
    async fn record_status(
        &self,
        updates: &[TargetUpdate],
        offset: u64,
        accepted: &[MessageStatus],
    ) -> Result<(), StatusError> {
        if updates.is_empty() {
            return Ok(());
        }
        if !accepted.is_empty() {
            self.status.record_accepted(accepted).await?;
        }
        if let Some(mut indexed) = self.status_indexed.clone() {
            let stopped = self.stopped.clone();
            tokio::select! {
                _ = indexed.wait_for(|i| *i > offset) => {}
                () = stopped.wait() => {}
                _ = tokio::time::sleep(STATUS_WAIT) => {
                    warn!(namespace = %self.namespace, offset, "The status tailer is behind; recording delivery status anyway.");
                }
            }
        }
        self.status.update_targets(updates).await
    }
}

/// Whether `record` goes to the target `name`: it names its targets, or goes to all.
fn goes_to(record: &StoredRecord, name: &str) -> bool {
    record
        .header(HEADER_TARGETS)
        .is_none_or(|named| named.split(',').any(|t| t == name))
}

/// When a delayed message is due (milliseconds since the epoch), if it is delayed.
fn due_ms(record: &StoredRecord) -> Option<u64> {
    record.header(HEADER_DELIVER_AT)?.parse().ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::policy::Jitter;
    use crate::config::units::HumanDuration;
    use tokio::time::Instant;

    fn message(offset: u64, key: &str) -> InFlight {
        let record = StoredRecord {
            offset,
            timestamp_ms: 0,
            key: Some(key.as_bytes().to_vec()),
            headers: Vec::new(),
            payload: Vec::new(),
        };
        InFlight::new(record, &BTreeMap::new())
    }

    fn offsets(run: &[InFlight]) -> Vec<u64> {
        run.iter().map(|m| m.record.offset).collect()
    }

    #[tokio::test(start_paused = true)]
    async fn a_held_key_waits_out_each_backoff_exactly_and_keeps_its_order() {
        let policy = RetryPolicy {
            max_attempts: 8,
            initial_backoff: HumanDuration::from_millis(200),
            max_backoff: HumanDuration::from_secs(1),
            multiplier: 2.0,
            jitter: Jitter::None,
        };
        let key = || LaneKey::Key(b"k".to_vec());
        let mut held = Held::default();
        let mut run = vec![message(1, "k"), message(2, "k")];
        for (attempt, expected_ms) in [(1, 200), (2, 400), (3, 800), (4, 1000), (5, 1000)] {
            let failed_at = Instant::now();
            let due = failed_at + retry::next_wait(&policy, attempt, None);
            for m in run.drain(..) {
                held.push(key(), m, due);
            }
            // Another key is not held back, and a later message of the held key
            // waits behind it.
            assert!(!held.holds(&LaneKey::Key(b"other".to_vec())));
            held.push(key(), message(10 + attempt as u64, "k"), Instant::now());
            assert!(
                held.take_due(Instant::now()).is_empty(),
                "attempt {attempt}: early"
            );
            tokio::time::sleep_until(held.next_retry()).await;
            assert_eq!(
                failed_at.elapsed(),
                Duration::from_millis(expected_ms),
                "attempt {attempt}"
            );
            run = held.take_due(Instant::now());
            assert_eq!(offsets(&run)[..2], [1, 2], "attempt {attempt}: order");
            assert!(held.is_empty());
            run.truncate(2);
        }
    }

    #[tokio::test(start_paused = true)]
    async fn retry_after_from_the_target_is_waited_out_when_longer() {
        let policy = RetryPolicy {
            jitter: Jitter::None,
            ..RetryPolicy::default()
        };
        let mut held = Held::default();
        let failed_at = Instant::now();
        let due = failed_at + retry::next_wait(&policy, 1, Some(Duration::from_secs(3)));
        held.push(LaneKey::Offset(1), message(1, "k"), due);
        tokio::time::sleep_until(held.next_retry()).await;
        assert_eq!(failed_at.elapsed(), Duration::from_secs(3));
        assert_eq!(offsets(&held.take_due(Instant::now())), [1]);
    }
}
