//! Benchmark of the embedded log, with its baselines measured side by side in the same
//! run, alternating (A B A B ...), medians reported with their spread:
//!
//! - wald: N concurrent appenders of 256-byte records, each waiting for its record to be
//!   durable (group commit, `sync = "always"`);
//! - (a) one `write` plus `fdatasync` per record, the naive durable log;
//! - (b) Redis with `appendonly yes` and `appendfsync always` (a private server on a
//!   free port, its files in the same temporary directory), driven by
//!   `redis-benchmark` XADD with the same number of clients and 256-byte values.
//!
//! Then recovery: a child process fills a log to the target size and is killed with
//! SIGKILL while appending; the time from `Log::open` to the first acknowledged append
//! is measured.
//!
//! `cargo bench --bench embedded_log` (quick: 3 rounds of 3 s, recovery with 256 MiB)
//! `cargo bench --bench embedded_log -- --full` (5 rounds of 5 s, recovery with 1 GiB)
//! `--concurrency N` sets the number of appenders and Redis clients (default 64).

use std::io::{BufRead, Write};
use std::os::unix::fs::FileExt;
use std::path::Path;
use std::process::{Command, Stdio};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use wald::backend::Record;
use wald::backend::embedded::{Config, Log};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

const RECORD_BYTES: usize = 256;

struct Settings {
    rounds: usize,
    seconds: u64,
    concurrency: usize,
    recovery_bytes: u64,
}

/// One measurement: throughput and per-record commit latency.
#[derive(Clone, Debug, Default)]
struct Sample {
    records_per_sec: f64,
    p50_ms: f64,
    p99_ms: f64,
    records_per_sync: f64,
}

fn main() -> Result {
    let args: Vec<String> = std::env::args().collect();
    if let Some(i) = args.iter().position(|a| a == "--fill") {
        return fill(Path::new(&args[i + 1]), args[i + 2].parse()?);
    }
    let full = args.iter().any(|a| a == "--full");
    let concurrency = match args.iter().position(|a| a == "--concurrency") {
        Some(i) => args
            .get(i + 1)
            .ok_or("--concurrency needs a number")?
            .parse()?,
        None => 64,
    };
    let settings = Settings {
        rounds: if full { 5 } else { 3 },
        seconds: if full { 5 } else { 3 },
        concurrency,
        recovery_bytes: if full { 1 << 30 } else { 256 << 20 },
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    let scratch = tempfile::tempdir_in(".")?;
    println!(
        "embedded log: {} concurrent appenders, {RECORD_BYTES}-byte records, {} rounds of {} s, alternating",
        settings.concurrency, settings.rounds, settings.seconds
    );

    let redis = RedisAof::start(scratch.path())?;
    let mut wald = Vec::new();
    let mut naive = Vec::new();
    let mut redis_samples = Vec::new();
    for round in 0..settings.rounds {
        let dir = scratch.path().join(format!("wald-{round}"));
        wald.push(runtime.block_on(bench_wald(&dir, &settings))?);
        naive.push(bench_fdatasync_per_record(
            &scratch.path().join(format!("naive-{round}")),
            &settings,
        )?);
        if let Some(redis) = &redis {
            redis_samples.push(redis.bench(&settings)?);
        }
        eprintln!("round {} done", round + 1);
    }
    drop(redis);

    println!();
    println!(
        "| candidate | durability | records/s (median) | spread | MB/s | commit p50 ms | commit p99 ms | records per sync | ratio |"
    );
    println!("|---|---|---|---|---|---|---|---|---|");
    let base = median(&wald, |s| s.records_per_sec);
    row(
        "wald embedded log (group commit)",
        "fdatasync before ack",
        &wald,
        base,
    );
    row(
        "(a) write + fdatasync per record",
        "fdatasync before ack",
        &naive,
        base,
    );
    if redis_samples.is_empty() {
        println!(
            "| (b) redis appendfsync always | not measured: redis-server or redis-benchmark missing | | | | | | | |"
        );
    } else {
        row(
            "(b) redis XADD, appendfsync always",
            "fsync before reply",
            &redis_samples,
            base,
        );
    }
    println!();
    let vs_naive = base / median(&naive, |s| s.records_per_sec);
    println!("wald / (a) = {vs_naive:.1}x (goal: at least 30x)");
    if !redis_samples.is_empty() {
        let vs_redis = base / median(&redis_samples, |s| s.records_per_sec);
        println!("wald / (b) = {vs_redis:.2}x (goal: at least 1x, stretch 2x)");
    }

    let recovery = recovery_time(
        &scratch.path().join("recovery"),
        settings.recovery_bytes,
        &runtime,
    )?;
    println!(
        "recovery after SIGKILL with {} MiB of log: {:.0} ms from open to the first acknowledged append (goal: under 1000 ms)",
        settings.recovery_bytes >> 20,
        recovery.as_secs_f64() * 1000.0
    );
    Ok(())
}

fn row(name: &str, durability: &str, samples: &[Sample], base: f64) {
    let rate = median(samples, |s| s.records_per_sec);
    let (low, high) = spread(samples, |s| s.records_per_sec);
    println!(
        "| {name} | {durability} | {rate:.0} | {low:.0}..{high:.0} | {:.2} | {:.2} | {:.2} | {:.1} | {:.3} |",
        rate * RECORD_BYTES as f64 / 1e6,
        median(samples, |s| s.p50_ms),
        median(samples, |s| s.p99_ms),
        median(samples, |s| s.records_per_sync),
        rate / base
    );
}

fn median(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> f64 {
    let mut values: Vec<f64> = samples.iter().map(f).collect();
    values.sort_by(f64::total_cmp);
    values.get(values.len() / 2).copied().unwrap_or(0.0)
}

fn spread(samples: &[Sample], f: impl Fn(&Sample) -> f64) -> (f64, f64) {
    let values: Vec<f64> = samples.iter().map(f).collect();
    let low = values.iter().copied().fold(f64::INFINITY, f64::min);
    let high = values.iter().copied().fold(0.0, f64::max);
    (low, high)
}

fn percentile(sorted_micros: &[u32], p: f64) -> f64 {
    if sorted_micros.is_empty() {
        return 0.0;
    }
    let i = ((sorted_micros.len() as f64 * p) as usize).min(sorted_micros.len() - 1);
    sorted_micros[i] as f64 / 1000.0
}

fn payload(i: u64) -> Vec<u8> {
    let mut payload = vec![b'x'; RECORD_BYTES];
    payload[..8].copy_from_slice(&i.to_le_bytes());
    payload
}

async fn bench_wald(dir: &Path, settings: &Settings) -> Result<Sample> {
    let log = Log::open(dir, Config::default())?;
    let stop = Arc::new(AtomicBool::new(false));
    let (_, _, syncs_before, _) = log.stats();
    let started = Instant::now();
    let mut tasks = Vec::new();
    for writer in 0..settings.concurrency as u64 {
        let log = log.clone();
        let stop = stop.clone();
        tasks.push(tokio::spawn(async move {
            let mut latencies = Vec::new();
            let mut i = writer << 40;
            while !stop.load(Ordering::Relaxed) {
                let t = Instant::now();
                log.append(vec![Record {
                    key: None,
                    headers: Vec::new(),
                    payload: payload(i),
                }])
                .await?;
                latencies.push(t.elapsed().as_micros() as u32);
                i += 1;
            }
            Ok::<_, wald::backend::embedded::LogError>(latencies)
        }));
    }
    tokio::time::sleep(Duration::from_secs(settings.seconds)).await;
    stop.store(true, Ordering::Relaxed);
    let mut latencies = Vec::new();
    for task in tasks {
        latencies.extend(task.await??);
    }
    let elapsed = started.elapsed().as_secs_f64();
    let (_, records, syncs, _) = log.stats();
    log.close().await;
    std::fs::remove_dir_all(dir)?;
    latencies.sort_unstable();
    Ok(Sample {
        records_per_sec: records as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        records_per_sync: records as f64 / (syncs - syncs_before).max(1) as f64,
    })
}

/// The naive durable log: every record is written and synced on its own.
fn bench_fdatasync_per_record(path: &Path, settings: &Settings) -> Result<Sample> {
    let file = std::fs::OpenOptions::new()
        .create(true)
        .truncate(true)
        .write(true)
        .open(path)?;
    let record = payload(0);
    let deadline = Instant::now() + Duration::from_secs(settings.seconds);
    let started = Instant::now();
    let mut latencies = Vec::new();
    let mut position = 0u64;
    while Instant::now() < deadline {
        let t = Instant::now();
        file.write_all_at(&record, position)?;
        file.sync_data()?;
        position += record.len() as u64;
        latencies.push(t.elapsed().as_micros() as u32);
    }
    let elapsed = started.elapsed().as_secs_f64();
    std::fs::remove_file(path)?;
    latencies.sort_unstable();
    Ok(Sample {
        records_per_sec: latencies.len() as f64 / elapsed,
        p50_ms: percentile(&latencies, 0.50),
        p99_ms: percentile(&latencies, 0.99),
        records_per_sync: 1.0,
    })
}

/// A private Redis with every write fsynced before its reply.
struct RedisAof {
    port: u16,
    child: std::process::Child,
}

impl RedisAof {
    fn start(dir: &Path) -> Result<Option<Self>> {
        let port = std::net::TcpListener::bind("127.0.0.1:0")?
            .local_addr()?
            .port();
        let redis_dir = dir.join("redis");
        std::fs::create_dir_all(&redis_dir)?;
        let child = match Command::new("redis-server")
            .args([
                "--port",
                &port.to_string(),
                "--bind",
                "127.0.0.1",
                "--save",
                "",
                "--appendonly",
                "yes",
            ])
            .args(["--appendfsync", "always", "--dir"])
            .arg(&redis_dir)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
        {
            Ok(child) => child,
            Err(e) => {
                eprintln!("redis-server not started: {e}");
                return Ok(None);
            }
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

    fn bench(&self, settings: &Settings) -> Result<Sample> {
        // Sized so that one run lasts about as long as the others.
        let probe = self.run(settings.concurrency, 2000)?;
        let requests = ((probe.records_per_sec * settings.seconds as f64) as u64).max(2000);
        self.run(settings.concurrency, requests)
    }

    fn run(&self, clients: usize, requests: u64) -> Result<Sample> {
        let value = "x".repeat(RECORD_BYTES);
        let output = Command::new("redis-benchmark")
            .args([
                "-h",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-c",
                &clients.to_string(),
            ])
            .args([
                "-n",
                &requests.to_string(),
                "--csv",
                "XADD",
                "wald-bench",
                "*",
                "v",
                &value,
            ])
            .output()?;
        let text = String::from_utf8_lossy(&output.stdout);
        let line = text
            .lines()
            .last()
            .ok_or("redis-benchmark printed nothing")?;
        let fields: Vec<f64> = line
            .split(',')
            .skip(1)
            .filter_map(|f| f.trim_matches('"').parse().ok())
            .collect();
        // "test","rps","avg_latency_ms","min_latency_ms","p50_latency_ms","p95_latency_ms","p99_latency_ms","max_latency_ms"
        if fields.len() < 6 {
            return Err(format!("unexpected redis-benchmark output: {text}").into());
        }
        Ok(Sample {
            records_per_sec: fields[0],
            p50_ms: fields[3],
            p99_ms: fields[5],
            records_per_sync: f64::NAN,
        })
    }
}

impl Drop for RedisAof {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// Child process (default configuration: 64 MiB segments): fills a log in `dir` to `bytes`, says so, and goes on appending until
/// it is killed.
fn fill(dir: &Path, bytes: u64) -> Result {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let log = Log::open(dir, Config::default())?;
        let mut said = false;
        let mut tasks = tokio::task::JoinSet::new();
        for writer in 0..8u64 {
            let log = log.clone();
            tasks.spawn(async move {
                let mut i = writer << 40;
                loop {
                    let batch = (0..256)
                        .map(|k| Record {
                            key: None,
                            headers: Vec::new(),
                            payload: payload(i + k),
                        })
                        .collect();
                    if log.append(batch).await.is_err() {
                        return;
                    }
                    i += 256;
                }
            });
        }
        loop {
            tokio::time::sleep(Duration::from_millis(100)).await;
            let (_, _, _, written) = log.stats();
            if written >= bytes && !said {
                println!("filled");
                std::io::stdout().flush()?;
                said = true;
            }
        }
    })
}

fn recovery_time(dir: &Path, bytes: u64, runtime: &tokio::runtime::Runtime) -> Result<Duration> {
    std::fs::create_dir_all(dir)?;
    let mut child = Command::new(std::env::current_exe()?)
        .arg("--fill")
        .arg(dir)
        .arg(bytes.to_string())
        .stdout(Stdio::piped())
        .spawn()?;
    let stdout = child.stdout.take().ok_or("no stdout")?;
    let filled = std::io::BufReader::new(stdout).lines().next().transpose()?;
    child.kill()?;
    child.wait()?;
    if filled.as_deref() != Some("filled") {
        return Err("the filling process stopped early".into());
    }
    // Drop what the page cache holds of the log, so that open reads from disk.
    let _ = Command::new("sh")
        .args(["-c", "sync; echo 1 > /proc/sys/vm/drop_caches"])
        .status();
    let started = Instant::now();
    runtime.block_on(async {
        let log = Log::open(dir, Config::default())?;
        log.append(vec![Record {
            key: None,
            headers: Vec::new(),
            payload: payload(0),
        }])
        .await?;
        log.close().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    })?;
    let elapsed = started.elapsed();
    std::fs::remove_dir_all(dir)?;
    Ok(elapsed)
}
