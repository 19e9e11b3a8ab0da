//! Scenario 12: what delayed messages cost a Kafka namespace in memory. The real
//! `wald serve` (a child process) on a Kafka topic of tansu (a Kafka-protocol broker,
//! PostgreSQL storage; librdkafka's mock cluster keeps at most 5 MB per partition, so it
//! drops delayed records), delivering to a file: N messages written with a one-hour
//! delay, held in the delay topic, against the same N written without delay and
//! delivered. Resident memory once all are held (or delivered); goal: at most 1.25.

use std::time::{Duration, Instant};

use serde_json::{Value, json};

use crate::process::Wald;
use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::servers;
use crate::tansu::Tansu;

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let messages: u64 = if mode.full { 100_000 } else { 20_000 };
    let scratch = tempfile::tempdir_in(".")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let tansu = runtime
        .block_on(Tansu::start())
        .map_err(|e| e.to_string())?
        .ok_or("tansu is not installed (cargo install tansu --version 0.6.0 --locked --features postgres --root ~/.cache/wald/tansu)")?;
    let brokers = tansu.brokers.clone();
    let mut round = 0;
    // Resident memory varies little from round to round, and a full round writes
    // 100,000 messages through tansu twice: two rounds a variant in full mode.
    let rounds = if mode.full { 2 } else { mode.rounds };
    let samples = alternate(rounds, 2, |variant| {
        round += 1;
        let topic = format!("held{round}");
        runtime
            .block_on(async {
                tansu.create_topic(&topic, 4).await?;
                tansu.create_topic(&format!("{topic}.dlq"), 1).await?;
                tansu.create_topic(&format!("{topic}.delays"), 7).await
            })
            .map_err(|e| e.to_string())?;
        let dir = scratch.path().join(&topic);
        let pipelines = dir.join("pipelines");
        std::fs::create_dir_all(&pipelines)?;
        std::fs::write(
            pipelines.join("held.toml"),
            format!(
                "namespace = \"held\"\n[source]\ntype = \"http\"\npublic = true\nmax_delay = \"2h\"\n\
                 [producer]\ntype = \"kafka\"\nbrokers = \"{brokers}\"\ntopic = \"{topic}\"\n\
                 [producer.options]\n{}\
                 [[target]]\nname = \"out\"\ntype = \"file\"\npath = \"{}\"\n",
                Tansu::OPTIONS,
                dir.join("out.jsonl").display()
            ),
        )?;
        let mut wald = Wald::start(&pipelines, &dir.join("data"))?;
        wald.wait_ready(Duration::from_secs(60))?;
        let delayed = variant == 0;
        let writes = (0..messages).map(|n| match delayed {
            true => json!({"payload": {"n": n}, "delay": "1h"}),
            false => json!({"payload": {"n": n}}),
        });
        let client = reqwest::Client::new();
        let address = wald.address.parse()?;
        runtime.block_on(servers::write_batches(&client, address, "held", writes))?;
        // Held in the delay topic, or delivered.
        let field = if delayed {
            "delayed_pending"
        } else {
            "delivered"
        };
        let deadline = Instant::now() + Duration::from_secs(600);
        loop {
            let status = runtime.block_on(status(&wald.address))?;
            let count = match delayed {
                true => status["delayed_pending"].as_u64(),
                false => status["targets"][0]["delivery"]["delivered"].as_u64(),
            };
            if count >= Some(messages) {
                break;
            }
            if Instant::now() > deadline {
                return Err(format!("{field} stayed at {count:?} of {messages}").into());
            }
            std::thread::sleep(Duration::from_millis(200));
        }
        // Settled: what the writes allocated and freed is gone.
        std::thread::sleep(Duration::from_secs(2));
        Ok(Sample::of(wald.rss_mib()?))
    })?;
    let mut samples = samples.into_iter();
    Ok(vec![Table {
        id: "12-kafka-delays",
        title: format!(
            "12. Resident memory of a Kafka namespace after {messages} writes, held an hour against delivered"
        ),
        unit: "MiB",
        rows: vec![
            Row::new(
                format!("{messages} delayed, held"),
                "in the delay topic",
                samples.next().unwrap_or_default(),
            ),
            Row::new(
                format!("{messages} undelayed, delivered"),
                "delivered to a file",
                samples.next().unwrap_or_default(),
            ),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtMost(1.25),
        notes: vec!["the real binary; tansu 0.6.0 as the broker, its own process".into()],
    }])
}

async fn status(address: &str) -> crate::Result<Value> {
    Ok(
        reqwest::get(format!("http://{address}/api/v1/wal/namespace/held/status"))
            .await?
            .json()
            .await?,
    )
}
