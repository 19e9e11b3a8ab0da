//! Scenario 11: replaying a DLQ on each backend. Entries (256-byte payloads) are
//! dead-lettered, then one replay of all of them is timed through the same code as
//! `POST .../dlq/replay` (claim, append again, mark replayed, each entry in turn), with
//! the fastest rate a request may ask for. The embedded log is the baseline; Redis is a
//! private `redis-server` keeping nothing on disk, Kafka librdkafka's mock cluster and
//! SQS moto's server, so the shared backends' figures show their path, not what a
//! cluster would take: no goal.

use std::sync::Arc;
use std::time::Instant;

use wald::consumer::replay::{self, ReplayRequest};
use wald::message::{HEADER_DLQ_ATTEMPTS, HEADER_DLQ_TARGET, HEADER_MESSAGE_ID, Record};
use wald::producer::Backend;
use wald::producer::embedded::{Embedded, NamespaceStore};

use crate::backends::Moto;
use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::servers::PrivateRedis;

/// SQS replays this many entries: moto looks at every message of a queue on each
/// receive, so a replay there grows with the square of the DLQ (500 entries took over
/// three minutes a round).
const SQS_ENTRIES: usize = 100;

/// An entry as delivery parks it: for target `hook`, after 5 attempts.
fn entry(i: usize) -> Record {
    let headers = [
        (HEADER_MESSAGE_ID, format!("m-{i:08}")),
        (HEADER_DLQ_TARGET, "hook".to_string()),
        (HEADER_DLQ_ATTEMPTS, "5".to_string()),
    ];
    Record {
        key: Some(format!("k{}", i % 16).into_bytes()),
        headers: headers
            .into_iter()
            .map(|(name, value)| (name.to_string(), value.into_bytes()))
            .collect(),
        payload: format!("{{\"n\":{i},\"note\":\"{}\"}}", "x".repeat(236)).into_bytes(),
    }
}

/// Parks `entries` entries in `backend`'s DLQ, then replays them all: entries/s.
async fn replay_rate(backend: Arc<dyn Backend>, entries: usize) -> crate::Result<f64> {
    for chunk in (0..entries).collect::<Vec<_>>().chunks(500) {
        backend
            .dead_letter(chunk.iter().map(|&i| entry(i)).collect())
            .await?;
    }
    let request = ReplayRequest {
        rate_per_second: Some(replay::MAX_RATE),
        ..ReplayRequest::default()
    };
    let started = Instant::now();
    let outcome =
        replay::replay("bench", backend.as_ref(), &request, 3, &Default::default()).await?;
    let took = started.elapsed();
    if outcome.replayed.len() != entries {
        return Err(format!(
            "{} of {entries} entries replayed ({} skipped)",
            outcome.replayed.len(),
            outcome.skipped.len()
        )
        .into());
    }
    Ok(entries as f64 / took.as_secs_f64())
}

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let entries = if mode.full { 10_000 } else { 2_000 };
    let scratch = tempfile::tempdir_in(".")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let redis = PrivateRedis::start(scratch.path(), &["--appendonly", "no"])?
        .ok_or("redis-server is missing")?;
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    let moto = Moto::start();
    let mut round = 0;
    let samples = alternate(mode.rounds, 4, |variant| {
        round += 1;
        let name = format!("dlq{round}");
        let backend: Arc<dyn Backend> = match variant {
            0 => {
                let store = NamespaceStore::open(scratch.path(), &name, &Default::default())?;
                Arc::new(Embedded(Arc::new(store)))
            }
            1 => {
                let config: wald::producer::redis_streams::Config = toml::from_str(&format!(
                    "url = \"redis://127.0.0.1:{}\"\nstream = \"{name}\"",
                    redis.port
                ))?;
                Arc::new(wald::producer::redis_streams::RedisStreams::open(
                    "bench", &config,
                )?)
            }
            2 => {
                cluster.create_topic(&name, 1, 1)?;
                cluster.create_topic(&format!("{name}.dlq"), 1, 1)?;
                let config: wald::producer::kafka::Config = toml::from_str(&format!(
                    "brokers = \"{}\"\ntopic = \"{name}\"",
                    cluster.bootstrap_servers()
                ))?;
                Arc::new(wald::producer::kafka::KafkaTopic::open("bench", &config)?)
            }
            _ => match &moto {
                Ok(moto) => {
                    let queue = runtime.block_on(moto.queue(&name))?;
                    return Ok(Sample::of(
                        runtime.block_on(replay_rate(queue, SQS_ENTRIES))?,
                    ));
                }
                Err(_) => return Ok(Sample::default()),
            },
        };
        Ok(Sample::of(runtime.block_on(replay_rate(backend, entries))?))
    })?;
    let mut samples = samples.into_iter();
    let mut next = || samples.next().unwrap_or_default();
    let mut rows = vec![
        Row::new("embedded log", "fdatasync per append", next()),
        Row::new("Redis Streams", "Redis answered", next()),
        Row::new("Kafka (mock cluster)", "delivery report, acks=all", next()),
    ];
    let mut notes = vec![format!(
        "{entries} entries, one replay of all; each entry claimed, appended again and marked replayed in turn"
    )];
    match &moto {
        Ok(_) => rows.push(Row::new(
            format!("SQS (moto), {SQS_ENTRIES} entries"),
            "SendMessageBatch succeeded",
            next(),
        )),
        Err(e) => notes.push(format!("SQS not measured: {e}")),
    }
    Ok(vec![Table {
        id: "11-dlq-replay",
        title: format!(
            "11. DLQ replay of {entries} entries, each backend against the embedded log"
        ),
        unit: "entries/s",
        rows,
        of: 1,
        to: 0,
        goal: Goal::None,
        notes,
    }])
}
