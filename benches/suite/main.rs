//! The benchmark suite: every speed and memory goal of wald with its baseline, measured
//! side by side in the same run, alternately (A B A B ...), medians with their spread.
//!
//! ```text
//! cargo bench                               quick mode, about two minutes
//! cargo bench -- --full                     full mode: longer rounds, more load, larger logs
//! cargo bench -- --only 1-http,5            scenarios whose id starts with one of these
//! cargo bench -- --json results.json        where the JSON goes (default target/bench.json)
//! WALD_BENCH_BINARY=path cargo bench ...     another build of `wald serve` measured
//! ```
//!
//! Scenarios: 1 HTTP writes (against the same server answering without an append; and
//! the real binary against Redis with `appendfsync always` at 64 and 256 connections,
//! beside the ceilings of three designs, etcd and NATS JetStream), 2 the log engine
//! alone, 3 the batch route, 4 end to end to Postgres, 5 the shared backends (Redis
//! Streams against redis-benchmark; Kafka and SQS functional figures), 6 reloads, 7
//! memory, 8 start-up and recovery, 9 a target's health (healing after an outage with
//! and without the breaker; rate limiting), 10 processing (filter and transform at
//! delivery; a schema at ingest), 11 DLQ replay on each backend, 12 a Kafka namespace's
//! memory holding delayed messages.
//! A scenario whose service is missing (Postgres, redis-server) says so and the others
//! go on. Results, with how to read them, are in `docs/benchmarks.md`.

mod backends;
mod ceiling;
mod delays;
mod dlq;
mod http;
mod load;
mod log;
mod memory;
mod peers;
mod postgres;
mod process;
mod processing;
mod reload;
mod report;
mod servers;
mod startup;
#[path = "../../tests/common/tansu.rs"]
mod tansu;
mod targets;

use std::path::PathBuf;
use std::time::Instant;

use report::{Mode, Table};

/// The allocator of the `wald` binary, so that the server measured is the one shipped.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

type Error = Box<dyn std::error::Error + Send + Sync>;
type Result<T = ()> = std::result::Result<T, Error>;

/// A scenario: its tables, measured in `Mode`.
type Scenario = fn(&Mode) -> Result<Vec<Table>>;

/// Each scenario: the ids of the tables it gives, and how to run it.
const SCENARIOS: &[(&str, Scenario)] = &[
    ("1-http 3-batch", http::run),
    ("1-redis-64 1-redis-256", peers::run),
    ("2-log", log::run),
    ("4-postgres", postgres::run),
    ("5-redis-streams 5-kafka-sqs", backends::run),
    ("6-reload", reload::run),
    ("7-memory", memory::run),
    ("8-startup", startup::run),
    ("9-heal 9-rate-limit", targets::run),
    ("10-processing 10-schema", processing::run),
    ("11-dlq-replay", dlq::run),
    ("12-kafka-delays", delays::run),
];

fn main() -> Result {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let value = |flag: &str| {
        args.iter()
            .position(|a| a == flag)
            .and_then(|i| args.get(i + 1))
            .cloned()
    };
    // Child processes of the scenarios.
    if args.first().map(String::as_str) == Some("--fill") {
        return startup::fill(
            &PathBuf::from(&args[1]),
            args.get(2).ok_or("--fill DIR BYTES")?.parse()?,
        );
    }
    if args.first().map(String::as_str) == Some("--ceiling-server") {
        let usage = "--ceiling-server DIR hand|axum|writer-thread";
        return ceiling::serve(
            PathBuf::from(args.get(1).ok_or(usage)?),
            args.get(2).ok_or(usage)?,
        );
    }
    if args.first().map(String::as_str) == Some("--bare-server") {
        return memory::serve_bare();
    }
    let full = args.iter().any(|a| a == "--full");
    let mode = Mode {
        full,
        rounds: if full { 5 } else { 3 },
        seconds: if full { 5 } else { 2 },
    };
    let only: Vec<String> = value("--only")
        .map(|o| o.split(',').map(str::to_string).collect())
        .unwrap_or_default();
    let json_path = PathBuf::from(value("--json").unwrap_or_else(|| "target/bench.json".into()));
    let chosen = |ids: &str| {
        only.is_empty()
            || ids
                .split(' ')
                .any(|id| only.iter().any(|o| id.starts_with(o.as_str())))
    };

    println!(
        "# wald benchmarks, {} mode: {} rounds per variant, alternating\n\n{}",
        if full { "full" } else { "quick" },
        mode.rounds,
        machine()
    );
    let started = Instant::now();
    let mut tables = Vec::new();
    let mut missing = Vec::new();
    for (ids, run) in SCENARIOS {
        if !chosen(ids) {
            continue;
        }
        let at = Instant::now();
        match run(&mode) {
            Ok(done) => {
                for table in done {
                    table.print();
                    tables.push(table);
                }
                eprintln!("({ids}: {:.0} s)", at.elapsed().as_secs_f64());
            }
            Err(e) => {
                println!("\n### {ids}\n\nnot measured: {e}");
                missing.push(serde_json::json!({ "scenario": ids, "reason": e.to_string() }));
            }
        }
    }

    println!("\n### Summary\n");
    println!("| scenario | ratio | value | goal | met |");
    println!("|---|---|---|---|---|");
    for table in &tables {
        let met = match table.met() {
            Some(true) => "yes",
            Some(false) => "**no**",
            None => "-",
        };
        println!(
            "| {} | {} | {:.2} | {} | {met} |",
            table.id,
            table.ratio_label(),
            table.ratio(),
            table.goal_text()
        );
    }
    println!("\n{:.0} s in all", started.elapsed().as_secs_f64());
    let json = serde_json::json!({
        "mode": if full { "full" } else { "quick" },
        "rounds": mode.rounds,
        "seconds_per_sample": mode.seconds,
        "machine": machine(),
        "scenarios": tables.iter().map(Table::json).collect::<Vec<_>>(),
        "not_measured": missing,
    });
    if let Some(dir) = json_path.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&json_path, serde_json::to_string_pretty(&json)?)?;
    println!("JSON: {}", json_path.display());
    Ok(())
}

/// The machine, as far as the figures depend on it.
fn machine() -> String {
    let cpus = std::thread::available_parallelism().map_or(0, usize::from);
    let model = std::fs::read_to_string("/proc/cpuinfo")
        .ok()
        .and_then(|c| {
            c.lines()
                .find_map(|l| l.strip_prefix("model name"))
                .map(|m| m.trim_start_matches([' ', '\t', ':']).to_string())
        })
        .unwrap_or_default();
    let memory = std::fs::read_to_string("/proc/meminfo")
        .ok()
        .and_then(|m| {
            m.lines()
                .find_map(|l| l.strip_prefix("MemTotal:"))
                .and_then(|v| v.split_whitespace().next()?.parse::<u64>().ok())
        })
        .map_or(0, |kib| kib >> 20);
    let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease").unwrap_or_default();
    format!(
        "Machine: {cpus} CPUs ({model}), {memory} GiB, Linux {}.",
        kernel.trim()
    )
}
