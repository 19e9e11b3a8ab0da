//! One lane: takes the messages handed to it in runs and delivers each run; a message
//! to be retried holds back its key alone, in order, until its retry is due.

use std::collections::{BTreeMap, HashMap, VecDeque};
use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::time::sleep_until;

use super::reader::LANE_DEPTH;
use super::recorder::Outcomes;
use super::{Consumer, Route};
use crate::consumer::config::Order;
use crate::message::{HEADER_TARGETS, StoredRecord};
use crate::status::TargetUpdate;

/// Messages a lane holds back behind keys being retried; once it holds that many it
/// takes nothing new until a retry is done, so that memory stays bounded.
const HELD_MAX: usize = LANE_DEPTH / 2;

/// A message in a lane, with what is left to do for it.
pub(super) struct InFlight {
    pub(super) record: StoredRecord,
    /// The targets it has still to reach, with the tries so far.
    pub(super) pending: BTreeMap<String, Tries>,
    /// Its final state at each target reached so far, for the status store.
    pub(super) updates: Vec<TargetUpdate>,
}

#[derive(Default)]
pub(super) struct Tries {
    pub(super) attempts: u32,
    /// The first error and when it happened (milliseconds since the epoch).
    pub(super) first_error: Option<(String, u64)>,
}

impl InFlight {
    pub(super) fn new(record: StoredRecord, targets: &BTreeMap<String, Arc<Route>>) -> Self {
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
pub(super) enum LaneKey {
    Key(Vec<u8>),
    Offset(u64),
}

/// The messages a lane holds back, by key, in log order, each key with the time its
/// retry is due. At most [`HELD_MAX`].
#[derive(Default)]
pub(super) struct Held {
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

impl Consumer {
    /// One lane: takes the messages handed to it in runs (what comes within `linger`
    /// of the first, up to `batch_size`) and delivers each run. A message that fails
    /// and will be retried holds back its key alone: its key's messages wait in the
    /// lane, in order, until the retry is due, while every other key goes on. Messages
    /// without a key, or with `order = "none"`, hold back only themselves.
    pub(super) async fn lane(
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
    pub(super) fn admit(&self, record: StoredRecord, run: &mut Vec<InFlight>, held: &mut Held) {
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
    pub(super) fn lane_key(&self, record: &StoredRecord) -> LaneKey {
        match (&record.key, self.order) {
            (Some(key), Order::PerKey) => LaneKey::Key(key.clone()),
            _ => LaneKey::Offset(record.offset),
        }
    }
}

/// Whether `record` goes to the target `name`: it names its targets, or goes to all.
fn goes_to(record: &StoredRecord, name: &str) -> bool {
    record
        .header(HEADER_TARGETS)
        .is_none_or(|named| named.split(',').any(|t| t == name))
}

#[cfg(test)]
mod tests {
    use std::time::Duration;

    use super::*;
    use crate::config::policy::{Jitter, RetryPolicy};
    use crate::config::units::HumanDuration;
    use crate::consumer::retry;
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
