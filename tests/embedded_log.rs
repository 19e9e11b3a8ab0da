//! The embedded log against its contract: group commit, recovery of torn tails,
//! detection of corruption, cursors, notification, seeking, retention, a full disk, and
//! a crash loop with SIGKILL.

use std::path::{Path, PathBuf};
use std::time::Duration;

use wald::config::units::{ByteSize, HumanDuration};
use wald::message::{Record, StoredRecord};
use wald::producer::embedded::{Config, Log, LogError, NamespaceStore, Position};

type Result<T = ()> = std::result::Result<T, Box<dyn std::error::Error>>;

fn record(i: u64) -> Record {
    Record {
        key: (i % 3 != 0).then(|| format!("key-{}", i % 5).into_bytes()),
        headers: vec![("n".to_string(), i.to_le_bytes().to_vec())],
        payload: format!(
            "{{\"n\":{i},\"pad\":\"{}\"}}",
            "x".repeat((i % 7) as usize * 10)
        )
        .into_bytes(),
    }
}

fn small_segments() -> Config {
    Config {
        segment_size: ByteSize::kib(4),
        ..Config::default()
    }
}

/// Every record of the log, from the oldest kept.
fn read_all(log: &Log) -> std::result::Result<Vec<StoredRecord>, LogError> {
    log.read(0, usize::MAX, usize::MAX)
}

fn assert_records(records: &[StoredRecord], expected: impl Iterator<Item = u64>) {
    let expected: Vec<u64> = expected.collect();
    let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
    assert_eq!(offsets, expected);
    for r in records {
        let want = record(r.offset);
        assert_eq!(
            (&r.key, &r.headers, &r.payload),
            (&want.key, &want.headers, &want.payload),
            "offset {}",
            r.offset
        );
    }
}

async fn append_range(log: &Log, range: std::ops::Range<u64>) -> Result {
    for i in range {
        log.append(vec![record(i)]).await?;
    }
    Ok(())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrent_appends_share_syncs_and_get_distinct_offsets() -> Result {
    let dir = tempfile::tempdir()?;
    let log = Log::open(dir.path(), Config::default())?;
    let mut tasks = Vec::new();
    for writer in 0..64u64 {
        let log = log.clone();
        tasks.push(tokio::spawn(async move {
            let mut offsets = Vec::new();
            for i in 0..20u64 {
                let appended = log.append(vec![record(writer * 1000 + i)]).await?;
                assert_eq!(appended.durability, wald::message::Durability::Durable);
                offsets.push(appended.first_offset);
            }
            Ok::<_, LogError>(offsets)
        }));
    }
    let mut all = Vec::new();
    for task in tasks {
        all.extend(task.await??);
    }
    all.sort_unstable();
    assert_eq!(all, (0..1280).collect::<Vec<_>>());
    let (appends, records, syncs, _) = log.stats();
    assert_eq!((appends, records), (1280, 1280));
    assert!(
        syncs < appends,
        "group commit should share syncs: {syncs} syncs for {appends} appends"
    );
    Ok(())
}

#[tokio::test]
async fn records_survive_a_reopen_and_offsets_continue() -> Result {
    let dir = tempfile::tempdir()?;
    let log = Log::open(dir.path(), small_segments())?;
    append_range(&log, 0..300).await?;
    log.append((300..310).map(record).collect()).await?;
    assert!(log.segment_paths().len() > 3, "small segments should roll");
    log.close().await;

    let log = Log::open(dir.path(), small_segments())?;
    assert_records(&read_all(&log)?, 0..310);
    let appended = log.append(vec![record(310)]).await?;
    assert_eq!(appended.first_offset, 310);
    assert_records(&log.read(305, 100, usize::MAX)?, 305..311);
    Ok(())
}

/// Reads scan a segment in growing steps (64 KiB first, up to 1 MiB): records of every
/// size, some larger than a step and many crossing one, come back whole, whether a read
/// starts at the log's beginning or in its middle, and after a reopen.
#[tokio::test]
async fn records_larger_than_a_read_step_and_across_steps_come_back_whole() -> Result {
    let dir = tempfile::tempdir()?;
    let sized = |i: u64| Record {
        payload: vec![(i % 251) as u8; [10, 3_000, 70_000, 200, 300_000][i as usize % 5]],
        ..record(i)
    };
    let log = Log::open(dir.path(), Config::default())?;
    for i in 0..60 {
        log.append(vec![sized(i)]).await?;
    }
    let check = |records: Vec<StoredRecord>, from: u64| {
        let offsets: Vec<u64> = records.iter().map(|r| r.offset).collect();
        assert_eq!(offsets, (from..60).collect::<Vec<_>>());
        for r in records {
            assert_eq!(r.payload, sized(r.offset).payload, "offset {}", r.offset);
        }
    };
    for from in [0, 1, 2, 33, 59] {
        check(log.read(from, usize::MAX, usize::MAX)?, from);
    }
    log.close().await;
    let log = Log::open(dir.path(), Config::default())?;
    for from in [0, 17, 42] {
        check(log.read(from, usize::MAX, usize::MAX)?, from);
    }
    Ok(())
}
/// The byte ranges of the last `n` records in the active segment.
fn last_record_spans(path: &Path, n: usize) -> Result<Vec<(u64, u64)>> {
    let bytes = std::fs::read(path)?;
    let mut spans = Vec::new();
    let mut pos = wald::producer::embedded::format::SEGMENT_HEADER_LEN;
    // The records end where the zeros written ahead of them begin.
    while pos < bytes.len() && bytes[pos..].iter().any(|&b| b != 0) {
        let decoded = wald::producer::embedded::format::decode_frame(&bytes[pos..])
            .map_err(|e| e.to_string())?;
        spans.push((pos as u64, (pos + decoded.len) as u64));
        pos += decoded.len;
    }
    Ok(spans[spans.len() - n..].to_vec())
}

/// The segment files in `dir`, oldest first.
fn segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let mut segments: Vec<PathBuf> = std::fs::read_dir(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "log"))
        .collect();
    segments.sort();
    Ok(segments)
}

/// Records 0..120 appended in `dir` over small segments, the log closed: its segment
/// files, oldest first.
async fn closed_log_of_small_segments(dir: &Path) -> Result<Vec<PathBuf>> {
    let log = Log::open(dir, small_segments())?;
    append_range(&log, 0..120).await?;
    log.close().await;
    segments(dir)
}

fn active_segment(dir: &Path) -> Result<PathBuf> {
    Ok(segments(dir)?.pop().ok_or("no segment")?)
}

#[tokio::test]
async fn a_torn_tail_is_cut_back_to_the_last_whole_record_at_every_byte() -> Result {
    let source = tempfile::tempdir()?;
    let log = Log::open(source.path(), Config::default())?;
    append_range(&log, 0..10).await?;
    log.close().await;
    let segment = active_segment(source.path())?;
    let original = std::fs::read(&segment)?;
    let spans = last_record_spans(&segment, 3)?;
    let (start, end) = (spans[0].0, spans[2].1);

    // A crash leaves the file either ending at the cut or, in the space the writer
    // wrote ahead, zeros from the cut on.
    for cut in start..end {
        for zeros_after in [false, true] {
            let dir = tempfile::tempdir()?;
            let copy = dir.path().join(segment.file_name().ok_or("name")?);
            let mut bytes = original[..cut as usize].to_vec();
            if zeros_after {
                bytes.resize(original.len().max(end as usize + 4096), 0);
            }
            std::fs::write(&copy, &bytes)?;
            let log = Log::open(dir.path(), Config::default())?;
            let whole = spans.iter().filter(|(_, e)| *e <= cut).count() as u64;
            let kept = 7 + whole;
            assert_records(&read_all(&log)?, 0..kept);
            let appended = log.append(vec![record(kept)]).await?;
            assert_eq!(appended.first_offset, kept, "cut at {cut}");
            assert_records(&read_all(&log)?, 0..kept + 1);
            log.close().await;
        }
    }
    Ok(())
}

#[tokio::test]
async fn the_active_segment_is_written_ahead_with_zeros_and_a_sealed_one_is_not() -> Result {
    let dir = tempfile::tempdir()?;
    let mut segments = closed_log_of_small_segments(dir.path()).await?;
    let active = segments.pop().ok_or("no segment")?;
    assert!(
        !segments.is_empty(),
        "the appends should have rolled segments"
    );
    for sealed in &segments {
        let bytes = std::fs::read(sealed)?;
        let records_end = last_record_spans(sealed, 1)?[0].1;
        assert_eq!(
            bytes.len() as u64,
            records_end,
            "{} ends in zeros",
            sealed.display()
        );
    }
    let bytes = std::fs::read(&active)?;
    let records_end = last_record_spans(&active, 1)?[0].1 as usize;
    assert!(
        bytes.len() > records_end,
        "the active segment was not written ahead"
    );
    assert!(bytes[records_end..].iter().all(|&b| b == 0));
    // Reopened, the zeros end the log; the next record goes where they begin.
    let log = Log::open(dir.path(), small_segments())?;
    assert_records(&read_all(&log)?, 0..120);
    append_range(&log, 120..121).await?;
    log.close().await;
    let log = Log::open(dir.path(), small_segments())?;
    assert_records(&read_all(&log)?, 0..121);
    Ok(())
}

#[tokio::test]
async fn garbage_after_the_tail_is_cut_off() -> Result {
    let dir = tempfile::tempdir()?;
    let log = Log::open(dir.path(), Config::default())?;
    append_range(&log, 0..5).await?;
    log.close().await;
    let segment = active_segment(dir.path())?;
    for seed in 0..20u64 {
        let mut bytes = std::fs::read(&segment)?;
        let garbage: Vec<u8> = (0..(seed * 37 + 1))
            .map(|i| ((i * 2654435761 + seed * 97) >> 7) as u8)
            .collect();
        let records_end = last_record_spans(&segment, 1)?[0].1;
        bytes.extend_from_slice(&garbage);
        std::fs::write(&segment, &bytes)?;
        let log = Log::open(dir.path(), Config::default())?;
        assert_records(&read_all(&log)?, 0..5);
        log.close().await;
        let after = std::fs::read(&segment)?.split_off(records_end as usize);
        assert!(
            after.iter().all(|&b| b == 0),
            "garbage left after the records"
        );
    }
    Ok(())
}

#[tokio::test]
async fn a_request_is_kept_whole_or_not_at_all() -> Result {
    let dir = tempfile::tempdir()?;
    let log = Log::open(dir.path(), Config::default())?;
    log.append((0..3).map(record).collect()).await?;
    log.append((3..8).map(record).collect()).await?;
    log.close().await;
    let segment = active_segment(dir.path())?;
    let spans = last_record_spans(&segment, 5)?;
    // Cut inside the fourth record of the second request: none of it may remain.
    let bytes = std::fs::read(&segment)?;
    std::fs::write(&segment, &bytes[..spans[3].0 as usize + 3])?;
    let log = Log::open(dir.path(), Config::default())?;
    assert_records(&read_all(&log)?, 0..3);
    Ok(())
}

#[tokio::test]
async fn a_bit_flip_in_any_record_is_detected_and_never_served() -> Result {
    let source = tempfile::tempdir()?;
    let segments = closed_log_of_small_segments(source.path()).await?;
    assert!(segments.len() >= 3);

    // Flip bits spread over a sealed segment and over the active one (all but its last
    // record, which has nothing after it to tell damage from a torn write).
    for (target, limit) in [(&segments[0], 0u64), (segments.last().ok_or("none")?, 1)] {
        let original = std::fs::read(target)?;
        let spans = last_record_spans(target, 1)?;
        let end = if limit == 1 {
            spans[0].0
        } else {
            original.len() as u64
        };
        let header = wald::producer::embedded::format::SEGMENT_HEADER_LEN as u64;
        let mut position = header;
        while position < end {
            for bit in [0u8, 3, 7] {
                let dir = tempfile::tempdir()?;
                for s in &segments {
                    std::fs::copy(s, dir.path().join(s.file_name().ok_or("name")?))?;
                }
                let mut damaged = original.clone();
                damaged[position as usize] ^= 1 << bit;
                std::fs::write(dir.path().join(target.file_name().ok_or("name")?), &damaged)?;
                match Log::open(dir.path(), small_segments()) {
                    Err(LogError::Corrupt { .. }) => {}
                    Err(other) => return Err(format!("unexpected error {other}").into()),
                    Ok(log) => {
                        let read = read_all(&log);
                        assert!(
                            matches!(read, Err(LogError::Corrupt { .. })),
                            "flip at byte {position} bit {bit} of {} was not detected",
                            target.display()
                        );
                        assert!(
                            log.append(vec![record(999)]).await.is_err(),
                            "a corrupt log must refuse appends"
                        );
                        log.close().await;
                    }
                }
            }
            position += 13;
        }
    }
    Ok(())
}

#[tokio::test]
async fn subscribers_are_woken_by_commits_and_resume_from_their_cursor() -> Result {
    let dir = tempfile::tempdir()?;
    let log = Log::open(dir.path(), Config::default())?;
    let mut subscription = log.subscribe("g1")?;
    let reader = tokio::spawn(async move {
        let mut seen = Vec::new();
        while seen.len() < 10 {
            let batch = subscription.next_batch(4).await?;
            assert!(batch.len() <= 4);
            seen.extend(batch.into_iter().map(|r| r.offset));
        }
        Ok::<_, LogError>(seen)
    });
    tokio::time::sleep(Duration::from_millis(20)).await;
    append_range(&log, 0..10).await?;
    let seen = tokio::time::timeout(Duration::from_secs(10), reader).await???;
    assert_eq!(seen, (0..10).collect::<Vec<_>>());

    log.commit("g1", 6)?;
    log.close().await;
    let log = Log::open(dir.path(), Config::default())?;
    let mut subscription = log.subscribe("g1")?;
    assert_eq!(
        subscription
            .next_batch(100)
            .await?
            .first()
            .map(|r| r.offset),
        Some(6)
    );
    assert_eq!(
        log.cursor("other")?,
        0,
        "a new group starts at the oldest record"
    );
    Ok(())
}

#[tokio::test]
async fn groups_seek_by_offset_and_by_time() -> Result {
    let dir = tempfile::tempdir()?;
    let log = Log::open(dir.path(), small_segments())?;
    append_range(&log, 0..50).await?;
    tokio::time::sleep(Duration::from_millis(30)).await;
    let middle = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis() as u64;
    tokio::time::sleep(Duration::from_millis(30)).await;
    append_range(&log, 50..200).await?;

    assert_eq!(log.seek("replay", Position::Offset(42))?, 42);
    assert_eq!(log.cursor("replay")?, 42);
    assert_eq!(log.seek("replay", Position::Time(middle))?, 50);
    assert_eq!(log.seek("replay", Position::Time(0))?, 0);
    assert_eq!(log.seek("replay", Position::Time(u64::MAX))?, 200);
    Ok(())
}

#[tokio::test]
async fn retention_deletes_only_consumed_old_segments() -> Result {
    let dir = tempfile::tempdir()?;
    let config = Config {
        retention: HumanDuration::from_millis(1),
        ..small_segments()
    };
    let log = Log::open(dir.path(), config.clone())?;
    append_range(&log, 0..300).await?;
    let segments = log.segment_paths().len();
    assert!(segments > 4);
    tokio::time::sleep(Duration::from_millis(5)).await;

    // No group has consumed anything: everything stays.
    assert!(log.apply_retention()?.is_empty());
    // The status index read everything, but it only observes: everything stays.
    log.commit(wald::message::TAILER_GROUP, 300)?;
    assert!(log.apply_retention()?.is_empty());
    // One group consumed everything, another only half: only what both passed goes.
    log.commit("fast", 300)?;
    log.commit("slow", 150)?;
    let deleted = log.apply_retention()?;
    assert!(!deleted.is_empty());
    assert!(log.first_offset() <= 150);
    assert_records(&log.read(150, usize::MAX, usize::MAX)?, 150..300);
    log.commit("slow", 300)?;
    log.apply_retention()?;
    assert_eq!(
        log.segment_paths().len(),
        1,
        "the active segment is never deleted"
    );
    assert_records(&read_all(&log)?, log.first_offset()..300);
    log.close().await;

    // A pending delayed message holds retention too.
    let store = NamespaceStore::open(dir.path(), "ns", &config)?;
    append_range(&store.log, 0..300).await?;
    // The delivery group, whose cursor a namespace's storage makes when it opens, has
    // passed everything.
    store.log.commit(wald::message::DELIVERY_GROUP, 300)?;
    store.schedule(&[(10, u64::MAX)])?;
    tokio::time::sleep(Duration::from_millis(5)).await;
    store.log.apply_retention()?;
    assert!(store.log.first_offset() <= 10);
    store.complete(&[10])?;
    store.log.apply_retention()?;
    assert!(store.log.first_offset() > 10);
    Ok(())
}

#[tokio::test]
async fn interval_mode_says_written_and_syncs_later() -> Result {
    let dir = tempfile::tempdir()?;
    let config = Config {
        sync: wald::producer::embedded::SyncMode::Interval,
        sync_interval: HumanDuration::from_millis(5),
        ..Config::default()
    };
    let log = Log::open(dir.path(), config)?;
    let appended = log.append(vec![record(0)]).await?;
    assert_eq!(appended.durability, wald::message::Durability::Written);
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(log.stats().2 >= 1, "the interval sync ran");
    Ok(())
}

/// Mounts a tmpfs of `size` at a new directory, if this machine allows it.
fn small_disk(size: &str) -> Option<tempfile::TempDir> {
    let dir = tempfile::tempdir().ok()?;
    let status = std::process::Command::new("mount")
        .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
        .arg(dir.path())
        .stderr(std::process::Stdio::null())
        .status()
        .ok()?;
    status.success().then_some(dir)
}

#[tokio::test]
async fn a_full_disk_fails_appends_cleanly_and_the_log_recovers_when_space_is_back() -> Result {
    let Some(disk) = small_disk("1m") else {
        eprintln!("skipped: cannot mount a tmpfs here (needs root)");
        return Ok(());
    };
    let result = async {
        let filler = disk.path().join("filler");
        let config = Config {
            segment_size: ByteSize::kib(256),
            ..Config::default()
        };
        let log = Log::open(&disk.path().join("log"), config.clone())?;
        let mut acked = Vec::new();
        let mut failures = 0;
        let mut i = 0u64;
        let big = |i: u64| Record {
            payload: vec![(i % 251) as u8; 4000],
            ..record(i)
        };
        // Fill the disk with another file, then append until appends fail.
        std::fs::write(&filler, vec![0u8; 700 * 1024])?;
        while failures < 5 && i < 2000 {
            match log.append(vec![big(i)]).await {
                Ok(appended) => acked.push((appended.first_offset, i)),
                Err(e) => {
                    assert!(e.is_storage_full() || e.is_retriable(), "{e}");
                    failures += 1;
                }
            }
            i += 1;
        }
        assert!(failures > 0, "the disk never filled");
        // Space is back: appends work again, and nothing acknowledged was lost.
        std::fs::remove_file(&filler)?;
        let appended = log.append(vec![big(i)]).await?;
        acked.push((appended.first_offset, i));
        log.close().await;
        let log = Log::open(&disk.path().join("log"), config)?;
        let records = read_all(&log)?;
        assert_eq!(records.len(), acked.len());
        for (record, (offset, i)) in records.iter().zip(&acked) {
            assert_eq!(record.offset, *offset);
            assert_eq!(record.payload, big(*i).payload);
        }
        log.close().await;
        Ok::<_, Box<dyn std::error::Error>>(())
    }
    .await;
    let _ = std::process::Command::new("umount")
        .arg(disk.path())
        .status();
    result
}

/// The child side of the crash loop: appends from many tasks and prints each
/// acknowledged offset and record number, until it is killed.
#[test]
#[ignore = "run by crash_loop_keeps_every_acknowledged_record as a child process"]
fn crash_loop_child() -> Result {
    let Some(dir) = std::env::var_os("WALD_CRASH_DIR") else {
        return Ok(());
    };
    let start: u64 = std::env::var("WALD_CRASH_START")?.parse()?;
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    runtime.block_on(async move {
        let log = Log::open(Path::new(&dir), small_segments())?;
        let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<String>();
        for writer in 0..16u64 {
            let log = log.clone();
            let tx = tx.clone();
            tokio::spawn(async move {
                for n in 0.. {
                    let i = start + writer * 1_000_000 + n;
                    let records = vec![record(i), record(i)];
                    if let Ok(appended) = log.append(records).await {
                        let _ = tx.send(format!("{} {i}", appended.first_offset));
                    }
                }
            });
        }
        use std::io::Write;
        let mut out = std::io::stdout();
        while let Some(line) = rx.recv().await {
            writeln!(out, "{line}")?;
            out.flush()?;
        }
        Ok::<_, Box<dyn std::error::Error>>(())
    })
}

#[test]
fn crash_loop_keeps_every_acknowledged_record() -> Result {
    use std::io::BufRead;
    let dir = tempfile::tempdir()?;
    let mut acked: Vec<(u64, u64)> = Vec::new();
    for round in 0..12u64 {
        let mut child = std::process::Command::new(std::env::current_exe()?)
            .args([
                "--exact",
                "crash_loop_child",
                "--ignored",
                "--nocapture",
                "--test-threads=1",
            ])
            .env("WALD_CRASH_DIR", dir.path())
            .env("WALD_CRASH_START", (round * 100_000_000).to_string())
            .stdout(std::process::Stdio::piped())
            .stderr(std::process::Stdio::null())
            .spawn()?;
        let stdout = child.stdout.take().ok_or("stdout")?;
        let lines = std::thread::spawn(move || {
            std::io::BufReader::new(stdout)
                .lines()
                .map_while(|l| l.ok())
                .filter_map(|l| {
                    let (offset, i) = l.split_once(' ')?;
                    Some((offset.parse().ok()?, i.parse().ok()?))
                })
                .collect::<Vec<(u64, u64)>>()
        });
        std::thread::sleep(Duration::from_millis(150 + (round * 53) % 200));
        child.kill()?;
        child.wait()?;
        acked.extend(lines.join().map_err(|_| "reader panicked")?);

        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        runtime.block_on(async {
            let log = Log::open(dir.path(), small_segments())?;
            let records = read_all(&log)?;
            for (position, r) in records.iter().enumerate() {
                assert_eq!(r.offset, position as u64, "offsets are contiguous");
            }
            for &(offset, i) in &acked {
                let expected = record(i);
                for k in 0..2 {
                    let r = records
                        .get((offset + k) as usize)
                        .ok_or(format!("acknowledged offset {offset} lost"))?;
                    assert_eq!(r.payload, expected.payload, "offset {}", offset + k);
                }
            }
            log.close().await;
            Ok::<_, Box<dyn std::error::Error>>(())
        })?;
    }
    assert!(
        acked.len() > 100,
        "only {} appends acknowledged",
        acked.len()
    );
    Ok(())
}
