//! Scenario 5: the shared backends' write path. Writes through the Redis Streams
//! backend against `redis-benchmark` XADD, at equal concurrency (one request in flight
//! per writer or client, no pipelining: `-P 1`), to the same private `redis-server`
//! keeping nothing on disk, so that the figures measure the client path. wald's path is
//! the backend's append: an `XADD` with the record's fields (key, message and
//! transaction ids, payload), Redis's answer awaited. Then Kafka (librdkafka's mock
//! cluster, in process) and SQS (moto's server) for functional figures only: neither is
//! a real broker, so they have no goal.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wald::message::Record;
use wald::producer::Backend;
use wald::producer::redis_streams::{Config, RedisStreams};

use crate::report::{Goal, Mode, Row, Sample, Table, alternate};
use crate::servers::PrivateRedis;

const RECORD_BYTES: usize = 256;

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let concurrency = 50;
    let scratch = tempfile::tempdir_in(".")?;
    let redis = PrivateRedis::start(scratch.path(), &["--appendonly", "no"])?
        .ok_or("redis-server or redis-benchmark is missing")?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let _entered = runtime.enter();
    let config: Config = toml::from_str(&format!(
        "url = \"redis://127.0.0.1:{}\"\nstream = \"wald-bench-backend\"",
        redis.port
    ))?;
    let backend: Arc<dyn Backend> = Arc::new(RedisStreams::open("bench", &config)?);
    let period = Duration::from_secs(mode.seconds);
    let samples = alternate(mode.rounds, 2, |variant| {
        let sample = match variant {
            0 => Sample::of(runtime.block_on(appends(&backend, concurrency, period))?),
            _ => redis.xadd(concurrency, RECORD_BYTES, mode.seconds)?,
        };
        redis.flush()?;
        Ok(sample)
    })?;
    let mut samples = samples.into_iter();
    let redis_row = Row::new(
        "wald backend append",
        "Redis answered XADD",
        samples.next().unwrap_or_default(),
    );
    let functional = functional(&runtime, mode, concurrency, &redis_row)?;
    Ok(vec![Table {
        id: "5-redis-streams",
        title: format!("5. Redis Streams backend writes, {concurrency} concurrent writers, {RECORD_BYTES}-byte payloads"),
        unit: "writes/s",
        rows: vec![
            redis_row,
            Row::new("redis-benchmark XADD -P 1", "Redis answered XADD", samples.next().unwrap_or_default()),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtLeast(0.8),
        notes: vec![
            "wald's writers share one multiplexed connection, which pipelines what they have in flight; redis-benchmark uses one connection per client".into(),
        ],
    }, functional])
}

/// Kafka on the mock cluster and SQS on moto, each appended to like Redis above,
/// alternately; the Redis figure is repeated for scale.
fn functional(
    runtime: &tokio::runtime::Runtime,
    mode: &Mode,
    concurrency: usize,
    redis: &Row,
) -> crate::Result<Table> {
    let period = Duration::from_secs(mode.seconds);
    let cluster = rdkafka::mocking::MockCluster::new(1)?;
    cluster.create_topic("bench", 4, 1)?;
    let kafka: wald::producer::kafka::Config = toml::from_str(&format!(
        "brokers = \"{}\"\ntopic = \"bench\"",
        cluster.bootstrap_servers()
    ))?;
    let kafka: Arc<dyn Backend> =
        Arc::new(wald::producer::kafka::KafkaTopic::open("bench", &kafka)?);
    let moto = Moto::start();
    let sqs = match &moto {
        Ok(moto) => Some(runtime.block_on(moto.queue("bench"))?),
        Err(_) => None,
    };
    let samples = alternate(mode.rounds, if sqs.is_some() { 2 } else { 1 }, |variant| {
        let backend = if variant == 0 {
            &kafka
        } else {
            sqs.as_ref().ok_or("no SQS")?
        };
        Ok(Sample::of(runtime.block_on(appends(
            backend,
            concurrency,
            period,
        ))?))
    })?;
    let mut samples = samples.into_iter();
    let mut rows = vec![Row::new(
        "wald on Kafka (mock cluster)",
        "delivery report, acks=all",
        samples.next().unwrap_or_default(),
    )];
    let mut notes = vec!["the mock cluster and moto are not real brokers: these figures show the path works under load, not what a cluster would take".into()];
    match (samples.next(), &moto) {
        (Some(sqs), _) => rows.push(Row::new(
            "wald on SQS (moto)",
            "SendMessageBatch succeeded",
            sqs,
        )),
        (None, Err(e)) => notes.push(format!("SQS not measured: {e}")),
        (None, Ok(_)) => {}
    }
    rows.push(Row::new(
        "wald on Redis Streams (above)",
        "Redis answered XADD",
        redis.samples.clone(),
    ));
    Ok(Table {
        id: "5-kafka-sqs",
        title: format!(
            "5. Kafka and SQS backend writes, {concurrency} concurrent writers (functional figures)"
        ),
        unit: "writes/s",
        to: rows.len() - 1,
        rows,
        of: 0,
        goal: Goal::None,
        notes,
    })
}

/// moto's SQS server on a free port, stopped when dropped.
pub struct Moto {
    child: std::process::Child,
    endpoint: String,
}

impl Moto {
    pub fn start() -> crate::Result<Self> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let mut child = std::process::Command::new("python3")
            .args([
                "-m",
                "moto.server",
                "-H",
                "127.0.0.1",
                "-p",
                &port.to_string(),
            ])
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if child.try_wait()?.is_some() {
                return Err("moto's server is not installed (pip install 'moto[server]')".into());
            }
            if started.elapsed() > Duration::from_secs(20) {
                return Err("moto's server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        Ok(Self {
            child,
            endpoint: format!("http://127.0.0.1:{port}"),
        })
    }

    /// A new standard queue `name` on this server, with its DLQ `<name>-dlq`, as a
    /// backend.
    pub async fn queue(&self, name: &str) -> crate::Result<Arc<dyn Backend>> {
        use aws_sdk_sqs::config::{BehaviorVersion, Credentials, Region};
        let client = aws_sdk_sqs::Client::from_conf(
            aws_sdk_sqs::Config::builder()
                .behavior_version(BehaviorVersion::latest())
                .region(Region::new("us-east-1"))
                .endpoint_url(&self.endpoint)
                .credentials_provider(Credentials::new("bench", "bench", None, None, "bench"))
                .build(),
        );
        let created = client.create_queue().queue_name(name).send().await?;
        client
            .create_queue()
            .queue_name(format!("{name}-dlq"))
            .send()
            .await?;
        let config: wald::producer::sqs::Config = toml::from_str(&format!(
            "queue_url = \"{}\"\nendpoint = \"{}\"\naccess_key_id = \"bench\"\nsecret_access_key = \"bench\"",
            created.queue_url().unwrap_or_default(),
            self.endpoint
        ))?;
        Ok(Arc::new(wald::producer::sqs::SqsQueue::open(
            "bench", &config,
        )?))
    }
}

impl Drop for Moto {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Appends from `concurrency` tasks for `period`: writes per second.
async fn appends(
    backend: &Arc<dyn Backend>,
    concurrency: usize,
    period: Duration,
) -> crate::Result<f64> {
    let done = Arc::new(AtomicU64::new(0));
    let started = Instant::now();
    let deadline = started + period;
    let mut tasks = tokio::task::JoinSet::new();
    for task in 0..concurrency {
        let (backend, done) = (backend.clone(), done.clone());
        tasks.spawn(async move {
            let mut n = 0u64;
            while Instant::now() < deadline {
                let record = Record {
                    key: Some(format!("key-{task}").into_bytes()),
                    headers: vec![
                        (
                            "wald-message-id".into(),
                            uuid::Uuid::now_v7().to_string().into_bytes(),
                        ),
                        (
                            "wald-transaction-id".into(),
                            uuid::Uuid::now_v7().to_string().into_bytes(),
                        ),
                    ],
                    payload: vec![b'x'; RECORD_BYTES],
                };
                backend.append(vec![record]).await?;
                n += 1;
            }
            done.fetch_add(n, Ordering::Relaxed);
            Ok::<_, wald::producer::BackendError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}
