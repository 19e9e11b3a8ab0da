//! Scenario 8: start-up and recovery against log size. A child process fills a
//! namespace's log to 1 MiB, 100 MiB (and 1 GiB in full mode) and is killed with
//! SIGKILL while appending; then the real `wald serve` is started on it and timed from
//! its spawn until it is ready and has acknowledged a write, alternately with the same
//! start on an empty data directory. The server is killed with SIGKILL after each
//! start, so every start recovers from a crash.

use std::io::{BufRead, Write};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

use wald::message::Record;
use wald::producer::embedded::{Config, Log};

use crate::log::payload;
use crate::process::{Wald, idle_pipeline, request};
use crate::report::{Goal, Mode, Row, Sample, Table, alternate};

pub fn run(mode: &Mode) -> crate::Result<Vec<Table>> {
    let sizes: &[(u64, &str)] = if mode.full {
        &[
            (1 << 20, "1 MiB"),
            (100 << 20, "100 MiB"),
            (1 << 30, "1 GiB"),
        ]
    } else {
        &[(1 << 20, "1 MiB"), (100 << 20, "100 MiB")]
    };
    let scratch = tempfile::tempdir_in(".")?;
    let pipelines = scratch.path().join("pipelines");
    std::fs::create_dir_all(&pipelines)?;
    std::fs::write(pipelines.join("orders.toml"), idle_pipeline("orders"))?;
    for (bytes, _) in sizes {
        let data = scratch.path().join(format!("data-{bytes}"));
        fill_after_crash(&data.join("orders").join("log"), *bytes)?;
    }
    let mut round = 0;
    let samples = alternate(mode.rounds, sizes.len() + 1, |variant| {
        round += 1;
        let data = match sizes.get(variant) {
            Some((bytes, _)) => scratch.path().join(format!("data-{bytes}")),
            None => scratch.path().join(format!("empty-{round}")),
        };
        Ok(Sample::of(
            start_to_first_write(&pipelines, &data)?.as_secs_f64() * 1000.0,
        ))
    })?;
    let mut samples = samples.into_iter();
    let mut rows: Vec<Row> = sizes
        .iter()
        .map(|(_, label)| {
            Row::new(
                format!("log of {label}, after SIGKILL"),
                "fdatasync before 202",
                samples.next().unwrap_or_default(),
            )
        })
        .collect();
    rows.push(Row::new(
        "empty data directory",
        "fdatasync before 202",
        samples.next().unwrap_or_default(),
    ));
    let largest = sizes.len() - 1;
    Ok(vec![Table {
        id: "8-startup",
        title: "8. Start-up and recovery: spawn to ready and a first acknowledged write, against log size".into(),
        unit: "ms",
        to: rows.len() - 1,
        rows,
        of: largest,
        goal: Goal::Below(1000.0),
        notes: vec![
            "opening a log reads the segment headers and recovers the last segment only (at most `segment_size`, 64 MiB by default), so start-up grows with the last segment, not with the log".into(),
        ],
    }])
}

/// Starts `wald serve` on `data` and times it to ready and a first 202.
fn start_to_first_write(pipelines: &Path, data: &Path) -> crate::Result<Duration> {
    let started = Instant::now();
    let mut wald = Wald::start(pipelines, data)?;
    wald.wait_ready(Duration::from_secs(120))?;
    let status = request(
        &wald.address,
        "POST",
        "/api/v1/wal/write",
        "{\"namespace\":\"orders\",\"payload\":1}",
    )?;
    if status != 202 {
        return Err(format!("the first write was answered {status}").into());
    }
    Ok(started.elapsed())
}

/// Fills a log at `dir` to `bytes` in a child process and kills it with SIGKILL while
/// it appends.
fn fill_after_crash(dir: &Path, bytes: u64) -> crate::Result {
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
    Ok(())
}

/// Child process: fills a log in `dir` to `bytes`, says so, and goes on appending
/// until it is killed.
pub fn fill(dir: &Path, bytes: u64) -> crate::Result {
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?;
    runtime.block_on(async {
        let log = Log::open(dir, Config::default())?;
        for writer in 0..8u64 {
            let log = log.clone();
            tokio::spawn(async move {
                let mut i = writer << 40;
                loop {
                    let batch = (0..16)
                        .map(|k| Record {
                            key: None,
                            headers: Vec::new(),
                            payload: payload(i + k),
                        })
                        .collect();
                    if log.append(batch).await.is_err() {
                        return;
                    }
                    i += 16;
                }
            });
        }
        loop {
            tokio::time::sleep(Duration::from_millis(5)).await;
            let (_, _, _, written) = log.stats();
            if written >= bytes {
                println!("filled");
                std::io::stdout().flush()?;
                std::future::pending::<()>().await;
            }
        }
    })
}
