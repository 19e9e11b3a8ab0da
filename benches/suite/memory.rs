//! Scenario 7: memory. Resident size of the real `wald serve` idle with 1, 100 and 1000
//! namespaces, against a bare axum server process (this binary, serving a handler that
//! answers 202); and under a slow target with a growing backlog, which must stay
//! bounded: resident size with 4 (full: 10) times the backlog against the first.

use std::path::Path;
use std::time::Duration;

use crate::process::{Wald, idle_pipeline, request, rss_mib};
use crate::report::{Goal, Mode, Row, Sample, Table, alternate};

/// Messages per request when filling a backlog.
const BATCH: usize = 500;

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let scratch = tempfile::tempdir_in(".")?;
    let counts = [1usize, 100, 1000];
    for &count in &counts {
        let dir = scratch.path().join(format!("pipelines-{count}"));
        std::fs::create_dir_all(&dir)?;
        for i in 0..count {
            std::fs::write(
                dir.join(format!("ns{i}.toml")),
                idle_pipeline(&format!("ns{i}")),
            )?;
        }
    }
    let mut round = 0;
    let idle = alternate(mode.rounds, counts.len() + 1, |variant| {
        round += 1;
        let Some(&count) = counts.get(variant) else {
            return Ok(Sample::of(bare_rss()?));
        };
        let data = scratch.path().join(format!("data-{round}"));
        let mut wald = Wald::start(&scratch.path().join(format!("pipelines-{count}")), &data)?;
        wald.wait_ready(Duration::from_secs(300))?;
        // Settled: what start-up allocated and freed is gone.
        std::thread::sleep(Duration::from_millis(500));
        let rss = wald.rss_mib()?;
        drop(wald);
        std::fs::remove_dir_all(&data)?;
        Ok(Sample::of(rss))
    })?;
    let names = counts
        .iter()
        .map(|count| format!("wald, {count} idle namespaces"))
        .chain(["bare axum server".to_string()]);
    let rows: Vec<Row> = names
        .zip(idle)
        .map(|(name, samples)| Row::new(name, "-", samples))
        .collect();
    let per_namespace = (rows[2].median() - rows[0].median()) / 999.0;
    let idle_table = Table {
        id: "7-memory-idle",
        title: "7. Resident memory idle, against a bare axum server".into(),
        unit: "MiB",
        rows,
        of: 0,
        to: 3,
        goal: Goal::None,
        notes: vec![format!(
            "each namespace beyond the first costs {:.2} MiB",
            per_namespace
        )],
    };

    // The first measure is taken once the process has warmed up (its allocator's and
    // the status store's caches filled): what grows after it grows with the backlog.
    let (first, backlog) = if mode.full {
        (100_000, 1_000_000)
    } else {
        (50_000, 200_000)
    };
    let mut at_start = Vec::new();
    let mut at_end = Vec::new();
    for _ in 0..mode.rounds {
        round += 1;
        let (start, end) = slow_target(scratch.path(), round, first, backlog)?;
        at_start.push(Sample::of(start));
        at_end.push(Sample::of(end));
    }
    let backlog_table = Table {
        id: "7-memory-backlog",
        title: format!("7. Resident memory under a slow target, backlog of {first} and of {backlog} messages"),
        unit: "MiB",
        rows: vec![
            Row::new(format!("wald, backlog {backlog}"), "fdatasync before 202", at_end),
            Row::new(format!("wald, backlog {first}"), "fdatasync before 202", at_start),
        ],
        of: 0,
        to: 1,
        goal: Goal::AtMost(1.25),
        notes: vec![
            "the target is an HTTP server that answers after 30 s; delivery holds a few hundred messages per lane and the backlog waits on disk".into(),
        ],
    };
    Ok(vec![idle_table, backlog_table])
}

/// Resident size of this binary serving the bare handler in a child process.
fn bare_rss() -> crate::Result<f64> {
    let (mut child, address) = crate::process::start_server(&["--bare-server".as_ref()])?;
    // One request, so that the server has served like wald had by its readiness.
    crate::process::request(&address, "POST", "/api/v1/wal/write", "{}")?;
    std::thread::sleep(Duration::from_millis(500));
    let rss = rss_mib(child.id());
    let _ = child.kill();
    let _ = child.wait();
    rss
}

/// Child process: serves the bare handler, prints its address, runs until killed.
pub fn serve_bare() -> crate::Result {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let address = crate::servers::serve(crate::servers::bare_router()).await?;
        println!("{address}");
        std::future::pending::<()>().await;
        Ok(())
    })
}

/// One namespace whose target answers after 30 s: resident size once `first` messages
/// wait, and once `total` do.
fn slow_target(
    scratch: &Path,
    round: usize,
    first: usize,
    total: usize,
) -> crate::Result<(f64, f64)> {
    let hook = std::net::TcpListener::bind("127.0.0.1:0")?;
    let hook_address = hook.local_addr()?;
    // Accepts and never answers within the target's timeout.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in hook.incoming().flatten() {
            held.push(stream);
        }
    });
    let pipelines = scratch.join(format!("slow-{round}"));
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(
        pipelines.join("slow.toml"),
        format!(
            "{}[[target]]\nname = \"slow\"\ntype = \"http\"\nurl = \"http://{hook_address}/\"\ntimeout = \"30s\"\n",
            idle_pipeline("slow")
        ),
    )?;
    let data = scratch.join(format!("slow-data-{round}"));
    let mut wald = Wald::start(&pipelines, &data)?;
    wald.wait_ready(Duration::from_secs(60))?;
    let body = format!(
        "{{\"namespace\":\"slow\",\"messages\":[{}]}}",
        vec![format!("{{\"payload\":\"{}\"}}", "x".repeat(254)); BATCH].join(",")
    );
    let mut written = 0;
    let mut fill = |up_to: usize| -> crate::Result {
        while written < up_to {
            let status = request(&wald.address, "POST", "/api/v1/wal/write/batch", &body)?;
            if status != 202 {
                return Err(format!("a backlog write was answered {status}").into());
            }
            written += BATCH;
        }
        Ok(())
    };
    fill(first)?;
    std::thread::sleep(Duration::from_millis(500));
    let start = wald.rss_mib()?;
    fill(total)?;
    std::thread::sleep(Duration::from_millis(500));
    let end = wald.rss_mib()?;
    drop(wald);
    std::fs::remove_dir_all(&data)?;
    Ok((start, end))
}
