//! A namespace's log on a Redis stream.
//!
//! - Append: `XADD` (several records in one `MULTI`, so that they are durable together),
//!   then `WAIT` when the pipeline asks for replicas. Fields: `k` the key, `p` the
//!   payload, `h:<name>` each header; the entry id gives the timestamp.
//! - Read: each subscription is one consumer of the group (`<host>-<uuid>`); a task reads
//!   with `XREADGROUP` and hands batches over, so a cancelled read loses nothing. Every
//!   `claim_idle / 2` it takes over, with `XAUTOCLAIM`, entries that some consumer has
//!   held unacknowledged for `claim_idle` (an instance that died), and refreshes the
//!   idle time of the entries it holds itself (`XCLAIM ... JUSTID`) so that no live
//!   instance loses them, and deletes the consumers that left (nothing pending, idle
//!   for three `claim_idle`). A commit is an `XACK`.
//! - Trim: with `maxlen`, once the stream is longer, entries that every group has
//!   acknowledged are trimmed (`XTRIM MINID`); unacknowledged entries never are.
//! - DLQ: `XADD` to the DLQ stream, which is never trimmed, so an entry's offset (its
//!   place from the first) never changes. Replayed entries are remembered in the set
//!   `<dlq stream>:replayed`; an instance replaying an entry first claims it with a
//!   key `<dlq stream>:replayed:claim:<id>` that lapses after a minute, so two
//!   instances replaying at once append each entry once. Delays: a sorted set `<stream>:delayed` by due time,
//!   whose members are the records themselves (`envelope`); taking due members leases them for
//!   `claim_idle`, so an instance that dies while delivering them leaves them to another.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use async_trait::async_trait;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use redis::streams::StreamInfoGroupsReply;
use redis::{RedisError, Value};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::config::Config;
use crate::message::{Durability, Record, StoredRecord};
use crate::producer::backend::{
    Backend, BackendError, DeadLetter, Durable, GroupPosition, Handed, LastError, Positions,
    REPLAY_CLAIM, Subscription, poisoned,
};
use crate::producer::envelope;

/// Entries read per `XREADGROUP` or `XAUTOCLAIM`.
const READ_COUNT: usize = 512;
/// How long one `XREADGROUP` blocks waiting for entries.
const BLOCK: Duration = Duration::from_secs(1);
/// How long a command may take before its outcome counts as unknown.
const RESPONSE_TIMEOUT: Duration = Duration::from_secs(10);
/// Longest wait between reconnection attempts of a reader.
const MAX_BACKOFF: Duration = Duration::from_secs(5);

/// A namespace's Redis stream, its DLQ stream and its delayed set.
pub struct RedisStreams {
    client: redis::Client,
    /// Shared by appends, acknowledgements and delays; reconnects by itself.
    connection: ConnectionManager,
    stream: String,
    dlq_stream: String,
    /// The DLQ entries replayed: a set of their ids.
    replayed: String,
    /// Where some DLQ entries are, by offset: the id of each page's last entry, so that
    /// the next page is read from there.
    dlq_pages: Mutex<BTreeMap<u64, String>>,
    delayed: String,
    wait_replicas: u32,
    wait_timeout: Duration,
    maxlen: Option<u64>,
    claim_idle: Duration,
    /// The last error of a request to Redis, cleared by the next success.
    down: LastError,
}

impl RedisStreams {
    /// The stream of `namespace` as `config` names it. Connects lazily: a Redis that is
    /// down makes requests fail (503) until it is back, never the namespace.
    pub fn open(namespace: &str, config: &Config) -> Result<Self, BackendError> {
        let client = redis::Client::open(config.url.expose().as_str()).map_err(unavailable)?;
        let connection = client
            .get_connection_manager_lazy(
                ConnectionManagerConfig::new()
                    .set_connection_timeout(Some(Duration::from_secs(2)))
                    .set_response_timeout(Some(RESPONSE_TIMEOUT))
                    .set_number_of_retries(1)
                    .set_max_delay(Duration::from_secs(1)),
            )
            .map_err(unavailable)?;
        let stream = config.stream_key(namespace);
        let dlq_stream = config
            .dlq_stream
            .clone()
            .unwrap_or_else(|| format!("{stream}:dlq"));
        Ok(Self {
            client,
            connection,
            replayed: format!("{dlq_stream}:replayed"),
            dlq_pages: Mutex::default(),
            dlq_stream,
            delayed: format!("{stream}:delayed"),
            stream,
            wait_replicas: config.wait_replicas,
            wait_timeout: config.wait_timeout.get(),
            maxlen: config.maxlen,
            claim_idle: config.claim_idle.get(),
            down: LastError::new("Redis"),
        })
    }

    /// Runs `request` on the shared connection, noting whether Redis answered.
    async fn request<T: redis::FromRedisValue>(
        &self,
        request: impl FnOnce(&mut redis::Pipeline),
    ) -> Result<T, BackendError> {
        let mut pipe = redis::pipe();
        request(&mut pipe);
        let result = pipe.query_async(&mut self.connection.clone()).await;
        self.down.note(result.as_ref().err());
        result.map_err(|e| {
            if e.is_timeout() {
                BackendError::Unknown(format!("Redis did not answer in time: {e}"))
            } else {
                unavailable(e)
            }
        })
    }
}

#[async_trait]
impl Backend for RedisStreams {
    async fn append(&self, records: Vec<Record>) -> Result<Durable, BackendError> {
        let atomic = records.len() > 1;
        let _: Value = self
            .request(|pipe| {
                if atomic {
                    pipe.atomic();
                }
                for record in &records {
                    pipe.add_command(xadd(&self.stream, record)).ignore();
                }
            })
            .await?;
        if self.wait_replicas > 0 {
            let (replicas,): (u32,) = self
                .request(|pipe| {
                    pipe.cmd("WAIT")
                        .arg(self.wait_replicas)
                        .arg(self.wait_timeout.as_millis() as u64);
                })
                .await?;
            if replicas < self.wait_replicas {
                return Err(BackendError::Unknown(format!(
                    "{replicas} of {} replicas confirmed the write within {:?}",
                    self.wait_replicas, self.wait_timeout
                )));
            }
        }
        Ok(Durability::Durable.into())
    }

    async fn subscribe(&self, group: &str) -> Result<Box<dyn Subscription>, BackendError> {
        let consumer = consumer_name();
        let held = Arc::new(Mutex::new(BTreeMap::new()));
        let (batches, incoming) = mpsc::channel(2);
        let reader = Reader {
            client: self.client.clone(),
            stream: self.stream.clone(),
            group: group.to_string(),
            consumer: consumer.clone(),
            claim_idle: self.claim_idle,
            maxlen: self.maxlen,
            held: held.clone(),
            down: self.down.clone(),
            next_seq: 0,
        };
        info!(stream = %self.stream, group, consumer = %consumer, "Reading the Redis stream.");
        Ok(Box::new(StreamSubscription {
            connection: self.connection.clone(),
            stream: self.stream.clone(),
            group: group.to_string(),
            handed: Handed::new(incoming),
            held,
            unacked: Vec::new(),
            task: tokio::spawn(reader.run(batches)),
        }))
    }

    async fn dead_letter(&self, records: Vec<Record>) -> Result<(), BackendError> {
        self.request(|pipe| {
            pipe.atomic();
            for record in &records {
                pipe.add_command(xadd(&self.dlq_stream, record)).ignore();
            }
        })
        .await
    }

    /// Offsets number the DLQ stream's entries from its first, which never changes:
    /// the stream is only appended to. A page is read from the nearest entry before it
    /// whose id an earlier page found.
    async fn dead_letters(&self, from: u64, max: usize) -> Result<Vec<DeadLetter>, BackendError> {
        let known = self
            .dlq_pages
            .lock()
            .map_err(|_| poisoned())?
            .range(..from)
            .next_back()
            .map(|(offset, id)| (*offset, id.clone()));
        let (start, first) = match known {
            Some((offset, id)) => (format!("({id}"), offset + 1),
            None => ("-".to_string(), 0),
        };
        let skip = (from - first) as usize;
        let (list,): (Value,) = self
            .request(|pipe| {
                pipe.cmd("XRANGE")
                    .arg(&self.dlq_stream)
                    .arg(&start)
                    .arg("+")
                    .arg("COUNT")
                    .arg(skip + max);
            })
            .await?;
        let page: Vec<(String, StoredRecord)> = entries(list).into_iter().skip(skip).collect();
        let Some((last_id, _)) = page.last() else {
            return Ok(Vec::new());
        };
        if let Ok(mut pages) = self.dlq_pages.lock()
            && pages.len() < MAX_DLQ_PAGES
        {
            pages.insert(from + page.len() as u64 - 1, last_id.clone());
        }
        let (replayed,): (Vec<bool>,) = self
            .request(|pipe| {
                pipe.cmd("SMISMEMBER")
                    .arg(&self.replayed)
                    .arg(page.iter().map(|(id, _)| id).collect::<Vec<_>>());
            })
            .await?;
        Ok(page
            .into_iter()
            .zip(replayed)
            .enumerate()
            .map(|(i, ((id, mut record), replayed))| {
                record.offset = from + i as u64;
                DeadLetter {
                    record,
                    replayed,
                    id: Some(id),
                }
            })
            .collect())
    }

    fn replays_dead_letters(&self) -> bool {
        true
    }

    /// A claim is a key of its own that lapses after [`REPLAY_CLAIM`]; taken only
    /// while the entry is not in the replayed set.
    async fn claim_replay(&self, entry: &DeadLetter) -> Result<bool, BackendError> {
        let id = entry.id.as_deref().unwrap_or_default();
        let (claimed,): (bool,) = self
            .request(|pipe| {
                pipe.cmd("EVAL")
                    .arg(CLAIM_REPLAY)
                    .arg(2)
                    .arg(&self.replayed)
                    .arg(format!("{}:claim:{id}", self.replayed))
                    .arg(id)
                    .arg(REPLAY_CLAIM.as_millis() as u64);
            })
            .await?;
        Ok(claimed)
    }

    async fn mark_replayed(&self, entry: &DeadLetter) -> Result<(), BackendError> {
        let id = entry.id.as_deref().unwrap_or_default();
        self.request(|pipe| {
            pipe.sadd(&self.replayed, id).ignore();
        })
        .await
    }

    async fn schedule(&self, delayed: Vec<(StoredRecord, u64)>) -> Result<(), BackendError> {
        if delayed.is_empty() {
            return Ok(());
        }
        self.request(|pipe| {
            for (record, due) in &delayed {
                pipe.zadd(&self.delayed, envelope::encode(record), *due)
                    .ignore();
            }
        })
        .await
    }

    async fn due(&self, now_ms: u64, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        let lease_until = now_ms + self.claim_idle.as_millis() as u64;
        let (members,): (Vec<String>,) = self
            .request(|pipe| {
                pipe.cmd("EVAL")
                    .arg(TAKE_DUE)
                    .arg(1)
                    .arg(&self.delayed)
                    .arg(now_ms)
                    .arg(max)
                    .arg(lease_until);
            })
            .await?;
        members
            .iter()
            .map(|m| envelope::decode(m))
            .collect::<Result<_, _>>()
    }

    async fn complete(&self, delivered: Vec<StoredRecord>) -> Result<(), BackendError> {
        if delivered.is_empty() {
            return Ok(());
        }
        self.request(|pipe| {
            for record in &delivered {
                pipe.zrem(&self.delayed, envelope::encode(record)).ignore();
            }
        })
        .await
    }

    async fn next_due(&self) -> Result<Option<u64>, BackendError> {
        let (first,): (Vec<(String, f64)>,) = self
            .request(|pipe| {
                pipe.zrange_withscores(&self.delayed, 0, 0);
            })
            .await?;
        Ok(first.first().map(|(_, due)| *due as u64))
    }

    fn unavailable(&self) -> Option<String> {
        self.down.get()
    }

    /// `XINFO GROUPS`: a group's lag is what it was not handed yet and what it was
    /// handed and did not acknowledge; the DLQ's depth, its entries not replayed.
    /// `XREVRANGE`, numbered by the stream's `entries-added` (trimming keeps it).
    async fn recent(&self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        let (reply,): ((u64, Value),) = self
            .request(|pipe| {
                pipe.cmd("EVAL")
                    .arg(RECENT)
                    .arg(1)
                    .arg(&self.stream)
                    .arg(max);
            })
            .await?;
        let (added, list) = reply;
        Ok(entries(list)
            .into_iter()
            .enumerate()
            .map(|(i, (_, mut record))| {
                record.offset = added.saturating_sub(1 + i as u64);
                record
            })
            .collect())
    }

    async fn positions(&self) -> Result<Option<Positions>, BackendError> {
        let (exists, dlq, replayed, delayed): (bool, u64, u64, u64) = self
            .request(|pipe| {
                pipe.exists(&self.stream)
                    .xlen(&self.dlq_stream)
                    .scard(&self.replayed)
                    .zcard(&self.delayed);
            })
            .await?;
        let groups = if exists {
            let (info,): (StreamInfoGroupsReply,) = self
                .request(|pipe| {
                    pipe.cmd("XINFO").arg("GROUPS").arg(&self.stream);
                })
                .await?;
            info.groups
                .into_iter()
                .map(|g| GroupPosition {
                    next_offset: g.entries_read.unwrap_or(0) as u64,
                    lag: g.lag.map(|lag| (lag + g.pending) as u64),
                    group: g.name,
                    commits: None,
                })
                .collect()
        } else {
            Vec::new()
        };
        Ok(Some(Positions {
            groups,
            dlq_depth: Some(dlq.saturating_sub(replayed)),
            delayed_pending: Some(delayed),
            queue: None,
        }))
    }
}

/// Most page starts of the DLQ stream remembered; past it, later pages are read from
/// the nearest one known.
const MAX_DLQ_PAGES: usize = 4096;

/// Claims the replay of DLQ entry ARGV[1] (claim key KEYS[2], for ARGV[2] ms) unless
/// it is in the replayed set KEYS[1] or claimed already.
const CLAIM_REPLAY: &str = r"
if redis.call('SISMEMBER', KEYS[1], ARGV[1]) == 1 then
  return 0
end
if redis.call('SET', KEYS[2], '1', 'NX', 'PX', ARGV[2]) then
  return 1
end
return 0
";

/// The ARGV[1] newest entries of stream KEYS[1] and how many entries it was ever
/// given, read at one moment.
const RECENT: &str = r"
local entries = redis.call('XREVRANGE', KEYS[1], '+', '-', 'COUNT', ARGV[1])
if #entries == 0 then
  return {0, entries}
end
local info = redis.call('XINFO', 'STREAM', KEYS[1])
for i = 1, #info, 2 do
  if info[i] == 'entries-added' then
    return {info[i + 1], entries}
  end
end
return {0, entries}
";

/// Takes up to ARGV[2] members due at ARGV[1] and leases them until ARGV[3].
const TAKE_DUE: &str = r"
local due = redis.call('ZRANGEBYSCORE', KEYS[1], '-inf', ARGV[1], 'LIMIT', 0, ARGV[2])
for _, member in ipairs(due) do
  redis.call('ZADD', KEYS[1], ARGV[3], member)
end
return due
";

/// One consumer of the group: what its reader task read, numbered in order.
struct StreamSubscription {
    connection: ConnectionManager,
    stream: String,
    group: String,
    handed: Handed,
    /// Entry id of each record read and not yet acknowledged, by number.
    held: Arc<Mutex<BTreeMap<u64, String>>>,
    /// Entries whose `XACK` failed, acknowledged with the next commit.
    unacked: Vec<String>,
    task: JoinHandle<()>,
}

impl Drop for StreamSubscription {
    fn drop(&mut self) {
        self.task.abort();
    }
}

#[async_trait]
impl Subscription for StreamSubscription {
    async fn next_batch(&mut self, max: usize) -> Result<Vec<StoredRecord>, BackendError> {
        self.handed.next_batch(max).await
    }

    fn position(&self) -> u64 {
        self.handed.position()
    }

    /// Acknowledges the entries below `next_offset`. A failed `XACK` is tried again
    /// with the next commit: until then another instance may claim the entries and
    /// deliver them again, which at-least-once allows.
    async fn commit(&mut self, next_offset: u64) -> Result<(), BackendError> {
        if let Ok(mut held) = self.held.lock() {
            let rest = held.split_off(&next_offset);
            self.unacked
                .extend(std::mem::replace(&mut *held, rest).into_values());
        }
        if self.unacked.is_empty() {
            return Ok(());
        }
        let acked: Result<(), RedisError> = redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.unacked)
            .query_async(&mut self.connection)
            .await;
        match acked {
            Ok(()) => self.unacked.clear(),
            Err(e) => {
                warn!(stream = %self.stream, entries = self.unacked.len(), error = %e, "Entries not acknowledged; trying again with the next commit.")
            }
        }
        Ok(())
    }
}

/// The task that reads the stream for one subscription.
struct Reader {
    client: redis::Client,
    stream: String,
    group: String,
    consumer: String,
    claim_idle: Duration,
    maxlen: Option<u64>,
    held: Arc<Mutex<BTreeMap<u64, String>>>,
    down: LastError,
    next_seq: u64,
}

impl Reader {
    /// Reads until the subscription is dropped, reconnecting with backoff while Redis
    /// is unreachable.
    async fn run(mut self, batches: mpsc::Sender<Vec<StoredRecord>>) {
        let mut backoff = Duration::from_millis(100);
        loop {
            let result = self.read(&batches, &mut backoff).await;
            self.down.note(result.as_ref().err());
            match result {
                Ok(()) => return,
                Err(e) => {
                    warn!(stream = %self.stream, error = %e, retry_in = ?backoff, "Reading the Redis stream failed; trying again.");
                    tokio::time::sleep(backoff).await;
                    backoff = (backoff * 2).min(MAX_BACKOFF);
                }
            }
        }
    }

    /// Reads over one connection until it fails (`Err`) or the subscription is gone.
    async fn read(
        &mut self,
        batches: &mpsc::Sender<Vec<StoredRecord>>,
        backoff: &mut Duration,
    ) -> Result<(), RedisError> {
        let config = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(Some(Duration::from_secs(2)))
            .set_response_timeout(Some(BLOCK + RESPONSE_TIMEOUT));
        let mut conn = self
            .client
            .get_multiplexed_async_connection_with_config(&config)
            .await?;
        let created: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(&self.stream)
            .arg(&self.group)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() != Some("BUSYGROUP") => return Err(e),
            _ => {}
        }
        self.down.clear();
        *backoff = Duration::from_millis(100);
        let mut next_claim = tokio::time::Instant::now();
        loop {
            if tokio::time::Instant::now() >= next_claim {
                self.refresh_held(&mut conn).await?;
                let claimed = self.claim(&mut conn).await?;
                if !claimed.is_empty() {
                    info!(stream = %self.stream, entries = claimed.len(), "Took over entries left unacknowledged by another consumer.");
                    if !self.hand_over(batches, claimed).await {
                        return Ok(());
                    }
                }
                self.trim(&mut conn).await?;
                self.forget_departed(&mut conn).await?;
                next_claim = tokio::time::Instant::now() + self.claim_idle / 2;
            }
            let reply: Value = redis::cmd("XREADGROUP")
                .arg("GROUP")
                .arg(&self.group)
                .arg(&self.consumer)
                .arg("COUNT")
                .arg(READ_COUNT)
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.stream)
                .arg(">")
                .query_async(&mut conn)
                .await?;
            let entries = match reply {
                Value::Array(streams) => streams
                    .into_iter()
                    .filter_map(|s| match s {
                        Value::Array(mut pair) if pair.len() == 2 => pair.pop(),
                        _ => None,
                    })
                    .flat_map(entries)
                    .collect(),
                _ => Vec::new(),
            };
            if batches.is_closed() || !self.hand_over(batches, entries).await {
                return Ok(());
            }
        }
    }

    /// Numbers `entries`, remembers their ids, and passes them on. False when the
    /// subscription is gone.
    async fn hand_over(
        &mut self,
        batches: &mpsc::Sender<Vec<StoredRecord>>,
        entries: Vec<(String, StoredRecord)>,
    ) -> bool {
        if entries.is_empty() {
            return true;
        }
        let mut records = Vec::with_capacity(entries.len());
        if let Ok(mut held) = self.held.lock() {
            for (id, mut record) in entries {
                record.offset = self.next_seq;
                self.next_seq += 1;
                held.insert(record.offset, id);
                records.push(record);
            }
        }
        batches.send(records).await.is_ok()
    }

    /// Claims entries idle for `claim_idle` in other consumers (or left by this one's
    /// predecessor), skipping those this subscription holds.
    async fn claim(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> Result<Vec<(String, StoredRecord)>, RedisError> {
        let mut claimed = Vec::new();
        let mut cursor = "0-0".to_string();
        loop {
            let reply: Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(self.claim_idle.as_millis() as u64)
                .arg(&cursor)
                .arg("COUNT")
                .arg(READ_COUNT)
                .query_async(conn)
                .await?;
            let Value::Array(mut parts) = reply else {
                break;
            };
            if parts.len() < 2 {
                break;
            }
            let found = parts.swap_remove(1);
            cursor = text(&parts[0]).unwrap_or_else(|| "0-0".into());
            claimed.extend(entries(found));
            if cursor == "0-0" || claimed.len() >= READ_COUNT {
                break;
            }
        }
        let held: std::collections::HashSet<String> = self
            .held
            .lock()
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        claimed.retain(|(id, _)| !held.contains(id));
        Ok(claimed)
    }

    /// Resets the idle time of the entries this subscription holds, so that other
    /// instances do not take them over while they wait for a retry.
    async fn refresh_held(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), RedisError> {
        let ids: Vec<String> = self
            .held
            .lock()
            .map(|h| h.values().cloned().collect())
            .unwrap_or_default();
        for chunk in ids.chunks(READ_COUNT) {
            let _: Value = redis::cmd("XCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(0)
                .arg(chunk)
                .arg("JUSTID")
                .query_async(conn)
                .await?;
        }
        Ok(())
    }

    /// Deletes from the group the consumers that hold nothing and have not read for
    /// three `claim_idle` periods: instances that stopped or died and whose entries
    /// were taken over (each start is a new consumer, so they would pile up). A live
    /// consumer deleted by mistake loses nothing: its next read creates it again.
    async fn forget_departed(
        &self,
        conn: &mut redis::aio::MultiplexedConnection,
    ) -> Result<(), RedisError> {
        let consumers: Vec<Value> = redis::cmd("XINFO")
            .arg("CONSUMERS")
            .arg(&self.stream)
            .arg(&self.group)
            .query_async(conn)
            .await?;
        let departed_after = 3 * self.claim_idle.as_millis() as u64;
        for consumer in consumers {
            let info = fields(consumer);
            let number = |key: &str| info.get(key).and_then(|v| v.parse::<u64>().ok());
            let Some(name) = info.get("name") else {
                continue;
            };
            if *name != self.consumer
                && number("pending") == Some(0)
                && number("idle").is_some_and(|idle| idle > departed_after)
            {
                let _: u64 = redis::cmd("XGROUP")
                    .arg("DELCONSUMER")
                    .arg(&self.stream)
                    .arg(&self.group)
                    .arg(name)
                    .query_async(conn)
                    .await?;
                info!(stream = %self.stream, consumer = %name, "Forgot a consumer that left.");
            }
        }
        Ok(())
    }

    /// With `maxlen`, once the stream is longer, trims the entries every group has
    /// acknowledged.
    async fn trim(&self, conn: &mut redis::aio::MultiplexedConnection) -> Result<(), RedisError> {
        let Some(maxlen) = self.maxlen else {
            return Ok(());
        };
        let len: u64 = redis::cmd("XLEN")
            .arg(&self.stream)
            .query_async(conn)
            .await?;
        if len <= maxlen {
            return Ok(());
        }
        let groups: Vec<Value> = redis::cmd("XINFO")
            .arg("GROUPS")
            .arg(&self.stream)
            .query_async(conn)
            .await?;
        let mut floor: Option<(u64, u64)> = None;
        for group in groups {
            let info = fields(group);
            let (Some(name), Some(last)) = (info.get("name"), info.get("last-delivered-id")) else {
                continue;
            };
            // Everything up to the last delivered id was read; what is pending was
            // not acknowledged.
            let pending: Value = redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(name)
                .query_async(conn)
                .await?;
            let oldest_pending = match pending {
                Value::Array(summary) if summary.len() >= 2 => text(&summary[1]),
                _ => None,
            };
            let group_floor = match oldest_pending.as_deref().and_then(parse_id) {
                Some(id) => id,
                None => parse_id(last).map_or((0, 0), |(ms, seq)| (ms, seq + 1)),
            };
            floor = Some(floor.map_or(group_floor, |f| f.min(group_floor)));
        }
        if let Some((ms, seq)) = floor {
            let _: u64 = redis::cmd("XTRIM")
                .arg(&self.stream)
                .arg("MINID")
                .arg(format!("{ms}-{seq}"))
                .query_async(conn)
                .await?;
        }
        Ok(())
    }
}

/// `XADD stream * k <key> h:<name> <value>... p <payload>`.
fn xadd(stream: &str, record: &Record) -> redis::Cmd {
    let mut cmd = redis::cmd("XADD");
    cmd.arg(stream).arg("*");
    if let Some(key) = &record.key {
        cmd.arg("k").arg(key.as_slice());
    }
    for (name, value) in &record.headers {
        cmd.arg(format!("h:{name}")).arg(value.as_slice());
    }
    cmd.arg("p").arg(record.payload.as_slice());
    cmd
}

/// The entries of an `XREADGROUP` or `XAUTOCLAIM` reply, with their ids. Entries
/// trimmed away meanwhile come as nil and are left out.
fn entries(list: Value) -> Vec<(String, StoredRecord)> {
    let Value::Array(list) = list else {
        return Vec::new();
    };
    list.into_iter()
        .filter_map(|entry| {
            let Value::Array(mut entry) = entry else {
                return None;
            };
            if entry.len() != 2 {
                return None;
            }
            let Value::Array(body) = entry.pop()? else {
                return None;
            };
            let id = text(&entry[0])?;
            let mut record = StoredRecord {
                timestamp_ms: parse_id(&id).map_or(0, |(ms, _)| ms),
                ..StoredRecord::default()
            };
            let mut body = body.into_iter();
            while let (Some(name), Some(Value::BulkString(value))) = (body.next(), body.next()) {
                match text(&name)?.as_str() {
                    "k" => record.key = Some(value),
                    "p" => record.payload = value,
                    name => {
                        if let Some(header) = name.strip_prefix("h:") {
                            record.headers.push((header.to_string(), value));
                        }
                    }
                }
            }
            Some((id, record))
        })
        .collect()
}

/// An `XINFO` reply as name and value pairs.
fn fields(value: Value) -> BTreeMap<String, String> {
    let pairs: Vec<Value> = match value {
        Value::Array(items) => items,
        Value::Map(pairs) => pairs.into_iter().flat_map(|(k, v)| [k, v]).collect(),
        _ => Vec::new(),
    };
    pairs
        .chunks(2)
        .filter_map(|pair| Some((text(&pair[0])?, text(pair.get(1)?)?)))
        .collect()
}

fn text(value: &Value) -> Option<String> {
    match value {
        Value::BulkString(bytes) => String::from_utf8(bytes.clone()).ok(),
        Value::SimpleString(s) => Some(s.clone()),
        Value::Int(i) => Some(i.to_string()),
        _ => None,
    }
}

/// A stream entry id `<ms>-<seq>`.
fn parse_id(id: &str) -> Option<(u64, u64)> {
    let (ms, seq) = id.split_once('-')?;
    Some((ms.parse().ok()?, seq.parse().ok()?))
}

/// This process's consumer name: the host and a fresh id, so that every start is a new
/// consumer and a dead one's entries are claimed by whoever comes.
fn consumer_name() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_string())
        .unwrap_or_else(|_| "wald".into());
    format!("{host}-{}", uuid::Uuid::now_v7().simple())
}

fn unavailable(e: RedisError) -> BackendError {
    BackendError::Unavailable(format!("Redis: {e}"))
}
