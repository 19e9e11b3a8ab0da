//! Benchmark of the Redis Streams backend's write path against `redis-benchmark` XADD,
//! side by side in the same run, alternating (A B A B ...), medians with their spread:
//!
//! - wald: `--concurrency` tasks, each appending one 256-byte record at a time through
//!   the backend (`XADD` with its fields: key, message and transaction ids, payload)
//!   and waiting for Redis's answer before the next (`wait_replicas = 0`);
//! - baseline: `redis-benchmark -c <concurrency> -P 1` XADD of a 256-byte value, to the
//!   same private `redis-server` (on a free port, nothing persisted, so that the
//!   figures measure the client path and not the disk).
//!
//! `cargo bench --bench redis_streams` (3 rounds of 3 s), `-- --full` (5 rounds of 5 s),
//! `--concurrency N` (default 50, redis-benchmark's own default).

use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use wald::backend::redis_streams::{Config, RedisStreams};
use wald::backend::{Backend, Record};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const RECORD_BYTES: usize = 256;

fn main() -> Result {
    let args: Vec<String> = std::env::args().collect();
    let full = args.iter().any(|a| a == "--full");
    let concurrency: usize = match args.iter().position(|a| a == "--concurrency") {
        Some(i) => args
            .get(i + 1)
            .ok_or("--concurrency needs a number")?
            .parse()?,
        None => 50,
    };
    let (rounds, seconds) = if full { (5, 5) } else { (3, 3) };
    let Some(server) = PrivateRedis::start()? else {
        println!("redis-server or redis-benchmark is missing: nothing measured");
        return Ok(());
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let config: Config = toml::from_str(&format!(
        "url = \"redis://127.0.0.1:{}\"\nstream = \"wald-bench-backend\"",
        server.port
    ))?;
    let _entered = runtime.enter();
    let backend: Arc<dyn Backend> = Arc::new(RedisStreams::open("bench", &config)?);
    println!(
        "Redis Streams writes, {concurrency} concurrent writers, {RECORD_BYTES}-byte payloads, \
         {rounds} rounds of {seconds} s, alternating"
    );
    let (mut wald, mut baseline) = (Vec::new(), Vec::new());
    for round in 0..rounds {
        let w = runtime.block_on(append_for(
            &backend,
            concurrency,
            Duration::from_secs(seconds),
        ))?;
        let b = server.redis_benchmark(concurrency, seconds)?;
        println!(
            "round {}: wald {w:.0}/s, redis-benchmark {b:.0}/s",
            round + 1
        );
        wald.push(w);
        baseline.push(b);
        server.flush()?;
    }
    let (w, b) = (median(&wald), median(&baseline));
    println!();
    println!("| path | durability | writes/s (median) | spread | ratio |");
    println!("|---|---|---|---|---|");
    println!(
        "| wald backend append (XADD) | Redis answered | {w:.0} | {} | {:.2} |",
        spread(&wald),
        w / b
    );
    println!(
        "| redis-benchmark XADD -P 1 | Redis answered | {b:.0} | {} | 1.00 |",
        spread(&baseline)
    );
    println!();
    println!("wald / redis-benchmark = {:.2} (goal: at least 0.8)", w / b);
    Ok(())
}

/// Appends from `concurrency` tasks for `period`; writes per second.
async fn append_for(
    backend: &Arc<dyn Backend>,
    concurrency: usize,
    period: Duration,
) -> Result<f64> {
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
            Ok::<_, wald::backend::BackendError>(())
        });
    }
    while let Some(result) = tasks.join_next().await {
        result??;
    }
    Ok(done.load(Ordering::Relaxed) as f64 / started.elapsed().as_secs_f64())
}

fn median(values: &[f64]) -> f64 {
    let mut sorted = values.to_vec();
    sorted.sort_by(f64::total_cmp);
    sorted[sorted.len() / 2]
}

fn spread(values: &[f64]) -> String {
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    format!("{low:.0}–{high:.0}")
}

/// A `redis-server` of the benchmark's own on a free port, keeping nothing on disk.
struct PrivateRedis {
    port: u16,
    child: std::process::Child,
}

impl PrivateRedis {
    fn start() -> Result<Option<Self>> {
        if Command::new("redis-benchmark")
            .arg("--version")
            .output()
            .is_err()
        {
            return Ok(None);
        }
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let Ok(child) = Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &port.to_string(),
                "--save",
                "",
                "--appendonly",
                "no",
            ])
            .stdout(Stdio::null())
            .spawn()
        else {
            return Ok(None);
        };
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
            if started.elapsed() > Duration::from_secs(10) {
                return Err("redis-server did not start".into());
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        Ok(Some(Self { port, child }))
    }

    /// XADD from `clients` connections for about `seconds`; writes per second.
    fn redis_benchmark(&self, clients: usize, seconds: u64) -> Result<f64> {
        let probe = self.run(clients, 5000)?;
        self.run(clients, ((probe * seconds as f64) as u64).max(5000))
    }

    fn run(&self, clients: usize, requests: u64) -> Result<f64> {
        let value = "x".repeat(RECORD_BYTES);
        let output = Command::new("redis-benchmark")
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args([
                "-c",
                &clients.to_string(),
                "-n",
                &requests.to_string(),
                "-P",
                "1",
                "--csv",
            ])
            .args(["XADD", "wald-bench-baseline", "*", "p", &value])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        // "test","rps",...
        text.lines()
            .last()
            .and_then(|line| line.split(',').nth(1))
            .and_then(|rps| rps.trim_matches('"').parse().ok())
            .ok_or_else(|| format!("unexpected redis-benchmark output: {text}").into())
    }

    /// Empties the streams between rounds, so that each starts alike.
    fn flush(&self) -> Result {
        Command::new("redis-cli")
            .args(["-p", &self.port.to_string(), "FLUSHALL"])
            .stdout(Stdio::null())
            .status()?;
        Ok(())
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
